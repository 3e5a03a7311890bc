"""`NervesHubLink`: the device's connection to the hub, driven over asyncio.

The link owns one websocket at a time and drives the sans-I/O core
(:class:`~nhlink.protocol.Connection` + :class:`~nhlink.protocol.DeviceChannel`):
frames received go to the core, frames the core queues are sent before its
events are handled, timers run at ``next_deadline()``. Around that it adds
what needs I/O: connecting (TLS, shared-secret headers, proxy, redirects),
jittered reconnects, the 10 s firmware-validation poll,
``report_network_interface``, and the client callbacks, which run in tasks
so that no callback delays frames or heartbeats.

Updates are delegated to an :class:`UpdateHandler`. The link calls
``handler.attach(link)`` once in its constructor; the handler then uses
``link.device`` (pushes such as ``status_update`` / ``fwup_progress``, which
are sent at once), ``link.client``, ``link.config``, ``link.kv``,
``link.fwup_public_keys``, ``link.now()`` and ``await link.reboot()``, all from
the event loop's thread. Every offer runs ``handler.offer(info)`` in its own
task; the handler's ``currently_downloading_uuid`` goes into every device join.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from nhlink.aio.proxy import select_proxy
from nhlink.aio.shared_secret import HeaderSigner
from nhlink.aio.tls import client_context, server_hostname
from nhlink.aio.transport import (
    ConnectError,
    SocketSettings,
    local_interface,
    open_websocket,
    socket_url,
)
from nhlink.client import Client, call_client, load_client
from nhlink.clock import ClockGuard, ClockSetter, set_system_clock
from nhlink.config import Config
from nhlink.configurators import prepare_config
from nhlink.kv import KV
from nhlink.protocol import (
    ArchiveInfo,
    ArchiveOffered,
    ArchivePublicKeysUpdated,
    ChannelInterrupted,
    ChannelJoined,
    ChannelJoinFailed,
    Connection,
    ConnectionLost,
    DeviceChannel,
    DeviceJoinInfo,
    Event,
    ExtensionsRequested,
    FwupPublicKeysUpdated,
    IdentifyRequested,
    JSONObject,
    JSONValue,
    RandomSource,
    RebootRequested,
    ReconnectBackoff,
    ScriptRunRequested,
    UnknownEvent,
    UpdateInfo,
    UpdateOffered,
)

if TYPE_CHECKING:
    from nhlink.console.remote import RemoteConsole
    from nhlink.extensions.manager import ExtensionsManager

logger = logging.getLogger("nhlink.aio.link")

VALIDATION_POLL_INTERVAL = 10.0
NETWORK_INTERFACE_RETRY = 60.0
UPDATES_NOT_ENABLED = "updates not enabled"


class UpdateHandler(Protocol):
    """What the link needs from the update flow (the real one lives in the update module)."""

    currently_downloading_uuid: str | None
    """The uuid of the firmware being downloaded or applied, reported in every join."""

    def attach(self, link: NervesHubLink) -> None:
        """Called once by the link's constructor, before anything else."""

    async def offer(self, info: UpdateInfo) -> None:
        """The hub offers ``info`` (runs in its own task; may take as long as it needs)."""

    async def archive_offer(self, info: ArchiveInfo) -> None:
        """The hub offers an archive (runs in its own task)."""


class IgnoreUpdates:
    """The default handler: every update is declined with ``ignored``; archives are logged."""

    currently_downloading_uuid: str | None = None

    def __init__(self) -> None:
        self._link: NervesHubLink | None = None

    def attach(self, link: NervesHubLink) -> None:
        self._link = link

    async def offer(self, info: UpdateInfo) -> None:
        assert self._link is not None
        logger.warning(
            "update to %s offered but %s",
            info.firmware_meta.uuid or info.firmware_url,
            UPDATES_NOT_ENABLED,
        )
        self._link.device.status_received()
        self._link.device.status_ignored(UPDATES_NOT_ENABLED)

    async def archive_offer(self, info: ArchiveInfo) -> None:
        logger.info("archive %s offered; archives are not enabled", info.uuid or info.url)


class _LinkConnection(Connection):
    """The core's connection, waking the link whenever something is pushed."""

    def __init__(self, wake: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wake = wake

    def push(
        self,
        topic: str,
        event: str,
        payload: Mapping[str, JSONValue],
        *,
        want_reply: bool = False,
    ) -> str | None:
        ref = super().push(topic, event, payload, want_reply=want_reply)
        if ref is not None:
            self._wake()
        return ref


class _LinkDeviceChannel(DeviceChannel):
    """The device channel, reading ``currently_downloading_uuid`` at every join."""

    def __init__(self, join_info: DeviceJoinInfo, downloading: Callable[[], str | None]) -> None:
        super().__init__(join_info)
        self._downloading = downloading

    def join_params(self) -> JSONObject:
        self.join_info = replace(self.join_info, currently_downloading_uuid=self._downloading())
        return super().join_params()


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def fwup_version() -> str:
    """The fwup release whose features the applier implements (the join's ``fwup_version``).

    NervesHub sends delta updates only to fwup >= 1.6.0, so a backend without
    the VCDIFF decoder (e.g. a stale native build) reports the last release
    before delta support instead.
    """
    from nhlink.fwup.delta import PRE_DELTA_FWUP_VERSION, delta_supported
    from nhlink.fwup.engine import FWUP_VERSION

    return FWUP_VERSION if delta_supported() else PRE_DELTA_FWUP_VERSION


class NervesHubLink:
    """A NervesHub device connection. ``await run()`` keeps it up until ``await stop()``.

    ``config`` is run through its configurator (see :mod:`nhlink.configurators`)
    here, so credential problems raise :class:`~nhlink.errors.ConfigError` at
    once. ``client`` defaults to the configured ``client`` class (or
    :class:`~nhlink.client.Client`); ``kv`` to the ``[kv]`` source;
    ``update_handler`` to :class:`IgnoreUpdates`. ``rng`` and ``wall_clock``
    replace the randomness of the reconnect jitter and the system clock as the
    link sees it (shared-secret signing, the clock floor checks of
    :mod:`nhlink.clock`); ``clock_setter`` replaces setting ``CLOCK_REALTIME``
    for ``set_clock`` (tests, simulations).
    """

    def __init__(
        self,
        config: Config,
        client: Client | None = None,
        *,
        kv: KV | None = None,
        update_handler: UpdateHandler | None = None,
        rng: RandomSource | None = None,
        wall_clock: Callable[[], float] | None = None,
        clock_setter: ClockSetter | None = None,
    ) -> None:
        self.kv = kv if kv is not None else KV.load(config.kv)
        self.config = prepare_config(config, self.kv)
        self.client = client if client is not None else load_client(self.config.client, self.kv)
        if self.client.kv is None:
            self.client.kv = self.kv
        self.fwup_public_keys: list[str] = list(self.config.fwup_public_keys)
        """The fwup keys in use: the configured ones until the hub sends others."""
        self.archive_public_keys: list[str] = list(self.config.archive_public_keys)
        self.connected = asyncio.Event()
        """Set while the socket is open (the device channel may still be joining)."""
        self.last_error: str | None = None
        """The latest connection failure, one line."""
        self._last_error_kind: str | None = None
        self.event_listeners: list[Callable[[Event], None]] = []
        """Called with every core event after the link handled it (console, extensions...)."""

        self.update_handler: UpdateHandler = update_handler or IgnoreUpdates()
        self._rng: RandomSource = rng if rng is not None else random.SystemRandom()
        self._wall_clock = wall_clock or time.time
        self.clock = ClockGuard(
            self.config, wall_clock=self._wall_clock, setter=clock_setter or set_system_clock
        )
        """The clock floor policy (checks before each connect, the trusted time)."""
        self._settings = self._socket_settings()
        self._signer = (
            HeaderSigner(self.config.shared_secret, wall_clock=self.clock.now)
            if self.uses_shared_secret
            else None
        )
        self._wake_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._done = asyncio.Event()
        self._done.set()
        self._ws: ClientConnection | None = None
        self._connect_task: asyncio.Task[ClientConnection] | None = None
        self._lost_reason: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connection_tasks: set[asyncio.Task[Any]] = set()
        self.connection = _LinkConnection(
            self._wake,
            heartbeat_interval=self.config.heartbeat_interval_msec / 1000,
            rejoin_after=self.config.rejoin_after_msec / 1000,
        )
        self.device: DeviceChannel = _LinkDeviceChannel(
            self._join_info(firmware_validated=True, auto_revert=False),
            lambda: self.update_handler.currently_downloading_uuid,
        )
        self.connection.add_channel(self.device)
        self.console: RemoteConsole | None = None
        """The remote console (``console`` channel), when ``remote_console`` is set."""
        if self.config.remote_console:
            from nhlink.console.remote import RemoteConsole

            self.console = RemoteConsole(self)
        from nhlink.extensions.manager import ExtensionsManager

        self.extensions: ExtensionsManager = ExtensionsManager(self)
        """The extensions (``extensions`` channel), joined when the hub asks."""
        self.update_handler.attach(self)

    # -- public API --------------------------------------------------------------

    @property
    def uses_shared_secret(self) -> bool:
        """Whether the link authenticates with ``x-nh-*`` headers instead of a certificate."""
        return not (self.config.ssl.certfile and self.config.ssl.keyfile)

    @property
    def url(self) -> str:
        return self._settings.url

    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()

    @staticmethod
    def now() -> float:
        """The monotonic clock the protocol core runs on."""
        return time.monotonic()

    def push(self, event: str, payload: Mapping[str, JSONValue], *, topic: str = "device") -> bool:
        """Push ``event`` on a joined channel now; False when it is not joined (dropped)."""
        return self.connection.push(topic, event, payload) is not None

    async def reboot(self) -> None:
        """Reboot through the client (``Client.reboot``; the default runs ``reboot``)."""
        await call_client(self.client.reboot, default=None)

    def reconnect(self) -> None:
        """Close the socket; the link reconnects after the usual backoff."""
        if self._ws is not None:
            self._lost_reason = "reconnect requested"
            self._wake()

    async def run(self) -> None:
        """Connect, and reconnect after every disconnect, until :meth:`stop`."""
        if not self._done.is_set():
            raise RuntimeError("NervesHubLink.run() is already running")
        self._done.clear()
        self._stop_event.clear()
        try:
            backoff = ReconnectBackoff(self._rng, await self._backoff_delays())
            while not self._stop_event.is_set():
                await self._refresh_join_info()
                try:
                    ws = await self._connect()
                except asyncio.CancelledError:
                    if self._stop_event.is_set() and not _cancelling():
                        break  # stop() cancelled the attempt
                    raise
                except ConnectError as exc:
                    await self._failed(str(exc), connected=False, kind=exc.kind)
                    if exc.status is not None:
                        self.clock.note_server_date(exc.date)
                    if exc.status is not None and self._signer is not None:
                        self._signer.note_refusal(exc.date)
                else:
                    backoff.connected(self.now())
                    self._note_good_clock(ws)
                    reason = await self._serve(ws)
                    if self._stop_event.is_set():
                        break
                    await self._failed(reason, connected=True)
                if self._stop_event.is_set():
                    break
                delay = backoff.next_delay(self.now())
                logger.info("reconnecting in %.1f s", delay)
                await self._sleep_unless_stopped(delay)
        finally:
            await self._cancel(self._tasks)
            await self.extensions.close()
            if self.console is not None:
                self.console.close()
            self.connected.clear()
            self._done.set()

    async def stop(self) -> None:
        """Close the socket and make :meth:`run` return (waits for it)."""
        self._stop_event.set()
        self._wake()
        if self._connect_task is not None:
            self._connect_task.cancel()
        await self._done.wait()

    # -- connecting ----------------------------------------------------------------

    def _socket_settings(self) -> SocketSettings:
        url = socket_url(self.config, shared_secret=self.uses_shared_secret)
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        context = client_context(self.config) if secure else None
        sni = server_hostname(self.config, parts.hostname or "")
        return SocketSettings(
            url=url,
            ssl=context,
            server_hostname=sni if secure and sni != parts.hostname else None,
            proxy=select_proxy(url, self.config.proxy),
            compress=self.config.compress,
        )

    async def _connect(self) -> ClientConnection:
        """One attempt, in a task that :meth:`stop` can cancel."""
        self.clock.before_connect()
        headers = self._signer.headers() if self._signer is not None else {}
        logger.debug("connecting to %s", self._settings.url)
        attempt = open_websocket(
            self._settings, headers, self.config, self.clock.certificate_problem
        )
        self._connect_task = asyncio.get_running_loop().create_task(attempt)
        try:
            return await self._connect_task
        finally:
            self._connect_task = None

    def _note_good_clock(self, ws: ClientConnection) -> None:
        """A connect worked: learn the hub's time; store a last known good time when due."""
        response = ws.response
        self.clock.note_server_date(response.headers.get("Date") if response else None)
        when = self.clock.good_time_to_record()
        if when is not None:
            self._spawn(asyncio.to_thread(self.clock.record_good_time, when))

    async def _backoff_delays(self) -> Sequence[float] | None:
        delays = await call_client(self.client.reconnect_backoff, default=None)
        if delays is None and self.config.reconnect_after_msec:
            delays = self.config.reconnect_after_msec
        return delays

    def _join_info(self, *, firmware_validated: bool, auto_revert: bool) -> DeviceJoinInfo:
        return DeviceJoinInfo(
            active_kv=self.kv.get_all_active(),
            fwup_version=fwup_version(),
            currently_downloading_uuid=self.update_handler.currently_downloading_uuid,
            fwup_keys_configured=bool(self.fwup_public_keys),
            archive_keys_configured=bool(self.archive_public_keys),
            request_fwup_public_keys=self.config.request_fwup_public_keys,
            request_archive_public_keys=self.config.request_archive_public_keys,
            firmware_validated=firmware_validated,
            firmware_auto_revert_detected=auto_revert,
        )

    async def _refresh_join_info(self) -> None:
        validated = await call_client(self.client.firmware_validated, default=True)
        reverted = await call_client(self.client.firmware_auto_revert_detected, default=False)
        self.device.join_info = self._join_info(
            firmware_validated=validated is not False, auto_revert=reverted is True
        )

    async def _failed(self, reason: str, *, connected: bool, kind: str | None = None) -> None:
        """Log a failure (a repeat of the previous kind only at DEBUG) and tell the client."""
        kind = kind or reason
        if connected or kind != self._last_error_kind:
            log = logger.warning if connected else logger.error
            log("%s", reason)
        else:
            logger.debug("again: %s", reason)
        self.last_error = reason
        self._last_error_kind = None if connected else kind
        await call_client(self.client.handle_error, reason, default=None)

    async def _sleep_unless_stopped(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)

    # -- one connection --------------------------------------------------------------

    async def _serve(self, ws: ClientConnection) -> str:
        """Drive the core over ``ws`` until it closes; returns why it ended."""
        self._ws = ws
        self._lost_reason = None
        self.connection.connection_made(self.now())
        self.connected.set()
        self.last_error = None
        self._last_error_kind = None
        logger.info("connected to %s", self._settings.url)
        self._spawn(call_client(self.client.connected, default=None))
        reader = asyncio.get_running_loop().create_task(self._read(ws))
        try:
            return await self._drive(ws, reader)
        finally:
            await self._cancel({reader})
            await self._cancel(self._connection_tasks)
            self.connected.clear()
            self.connection.connection_lost()
            self._ws = None
            await self._close(ws)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                self.connection.receive_text(message, self.now())
                self._wake()
        except ConnectionClosed:
            pass
        finally:
            self._wake()

    async def _drive(self, ws: ClientConnection, reader: asyncio.Task[None]) -> str:
        while True:
            self._wake_event.clear()
            if self._stop_event.is_set():
                return "stopped"
            self.connection.on_timer(self.now())
            try:
                await self._flush(ws)
            except ConnectionClosed:
                return self._close_reason(ws)
            if self._lost_reason is not None:
                return self._lost_reason
            if reader.done():
                return self._close_reason(ws)
            deadline = self.connection.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_event.wait(), timeout)

    async def _flush(self, ws: ClientConnection) -> None:
        """Send what the core queued, then handle its events; repeat until both are empty."""
        while True:
            frames = self.connection.data_to_send()
            events = self.connection.events_received()
            if not frames and not events:
                return
            for frame in frames:
                await ws.send(frame)
            for event in events:
                self._handle(event)

    @staticmethod
    def _close_reason(ws: ClientConnection) -> str:
        code = ws.close_code
        if code is None or code == 1006:
            return "connection to the hub lost"
        reason = f": {ws.close_reason}" if ws.close_reason else ""
        return f"the hub closed the connection (code {code}{reason})"

    async def _close(self, ws: ClientConnection) -> None:
        try:
            await asyncio.wait_for(ws.close(), 5)
        except (TimeoutError, ConnectionClosed, OSError):
            ws.transport.abort()

    # -- events ------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        match event:
            case ConnectionLost(reason=reason):
                self._lost_reason = reason
            case ChannelJoined(topic="device"):
                logger.info("joined the device channel")
                self._report_network_interface()
                if self.device.validation_pending:
                    self._spawn_for_connection(self._poll_validation())
            case ChannelJoinFailed(topic="device", response=response):
                self._spawn(
                    call_client(
                        self.client.handle_error, f"device join refused: {response}", default=None
                    )
                )
            case ChannelInterrupted(topic="device", reason=reason):
                self._spawn(
                    call_client(self.client.handle_error, f"device channel {reason}", default=None)
                )
            case UpdateOffered(update=info):
                self._spawn(self._guarded("update handler", self.update_handler.offer(info)))
            case ArchiveOffered(archive=info):
                self._spawn(
                    self._guarded("archive handler", self.update_handler.archive_offer(info))
                )
            case RebootRequested():
                logger.warning("the hub requested a reboot")
                self._spawn(self.reboot())
            case IdentifyRequested():
                self._spawn(call_client(self.client.identify, default=None))
            case FwupPublicKeysUpdated(keys=keys):
                logger.info("the hub sent %d fwup public key(s)", len(keys))
                self.fwup_public_keys = list(keys)
            case ArchivePublicKeysUpdated(keys=keys):
                logger.info("the hub sent %d archive public key(s)", len(keys))
                self.archive_public_keys = list(keys)
            case ScriptRunRequested(ref=ref):
                logger.info("scripts/run %s answered with an error (nhlink cannot run Elixir)", ref)
            case ExtensionsRequested():
                logger.debug("the hub offers extensions")  # joined by self.extensions
            case UnknownEvent(topic=topic, event=name):
                logger.debug("unknown %s event %r ignored", topic, name)
            case _:
                logger.debug("event %r", event)
        for listener in list(self.event_listeners):
            try:
                listener(event)
            except Exception as exc:
                logger.error("event listener %r failed: %s: %s", listener, type(exc).__name__, exc)

    def _report_network_interface(self) -> None:
        ws = self._ws
        interface = local_interface(ws) if ws is not None else None
        if interface is not None:
            self.device.report_network_interface(interface)
            return
        logger.info(
            "network interface to the hub unknown; retrying in %.0f s", NETWORK_INTERFACE_RETRY
        )
        self._spawn_for_connection(self._retry_network_interface())

    async def _retry_network_interface(self) -> None:
        await asyncio.sleep(NETWORK_INTERFACE_RETRY)
        self._report_network_interface()

    async def _poll_validation(self) -> None:
        while self.device.validation_pending:
            await asyncio.sleep(VALIDATION_POLL_INTERVAL)
            validated = await call_client(self.client.firmware_validated, default=False)
            if validated is not False and self.device.firmware_validated():
                logger.info("firmware validated; told the hub")
                return

    # -- tasks -------------------------------------------------------------------

    def _wake(self) -> None:
        self._wake_event.set()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_for_connection(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._connection_tasks.add(task)
        task.add_done_callback(self._connection_tasks.discard)

    @staticmethod
    async def _guarded(what: str, coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error("%s failed: %s: %s", what, type(exc).__name__, exc)

    @staticmethod
    async def _cancel(tasks: set[asyncio.Task[Any]]) -> None:
        pending = list(tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
