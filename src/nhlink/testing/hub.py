"""`LocalHub`: a NervesHub-compatible device endpoint for tests, the demo and users.

Real parts only: a websockets server (permessage-deflate on) behind TLS with
client-certificate verification against the device signer CA (TLS 1.2 pinned
unless ``tls13=True``), shared-secret ``x-nh-*`` authentication, Phoenix V2
JSON channels, and an HTTPS firmware server (`FirmwareServer`) on a second port.

Typical use::

    async with LocalHub() as hub:
        cert = hub.device_certificate("dev-1")
        ...start a client against hub.url with hub.client_ssl_context("dev-1")...
        device = await hub.wait_for_device("dev-1")
        fw = hub.firmware.add_file("fw/v2.fw", path_to_fw)
        await hub.push_update("dev-1", fw.url, meta, **fw.update_kwargs())
        await hub.wait_for_status("dev-1", "completed")
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import os
import shutil
import ssl
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs

from cryptography import x509
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from nhlink.testing import orchestrator
from nhlink.testing.channels import DeviceSession
from nhlink.testing.config_file import write_device_config
from nhlink.testing.errors import HubError
from nhlink.testing.firmware_server import FirmwareServer, https_server_context
from nhlink.testing.orchestrator import HubPolicy
from nhlink.testing.pki import IssuedCertificate, Pki, common_name
from nhlink.testing.records import (
    DeviceRecord,
    Direction,
    FrameRecord,
    Notifier,
    Release,
    TlsFailureRecord,
    UpgradeRecord,
)
from nhlink.testing.shared_secret import (
    PRODUCT_KEY_PREFIX,
    SharedSecretRejected,
    verify_headers,
)
from nhlink.testing.tls import TlsServerProtocol

__all__ = ["SOCKET_PATHS", "LocalHub"]

log = logging.getLogger("nhlink.testing.hub")

SOCKET_PATHS = ("/socket/websocket", "/device-socket/websocket")
NO_CREDENTIALS_REASON = "no certificate pair or shared secrets connection settings were provided"

_T = TypeVar("_T")


@dataclass(frozen=True)
class _UpgradeAnswer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: str
    reason: str


@dataclass(frozen=True)
class _Accepted:
    identifier: str
    auth: str


class LocalHub:
    """A local NervesHub device endpoint (async context manager)."""

    def __init__(
        self,
        *,
        pki: Pki | None = None,
        directory: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls13: bool = False,
        shared_secrets_enabled: bool = True,
        allow_unknown_devices: bool = True,
        inactivity_timeout: float = 180.0,
        policy: HubPolicy | None = None,
        enabled_extensions: Iterable[str] = ("health", "geo"),
        fwup_public_keys: Iterable[str] = (),
        archive_public_keys: Iterable[str] = (),
        connecting_code: str | None = None,
        firmware_server: bool = True,
        firmware_port: int = 0,
        compression: bool = True,
        clock_offset: float = 0.0,
    ) -> None:
        self._pki = pki
        self._directory = Path(directory) if directory is not None else None
        self._owns_directory = False
        self._host = host
        self._requested_port = port
        self.tls13 = tls13
        self.shared_secrets_enabled = shared_secrets_enabled
        self.allow_unknown_devices = allow_unknown_devices
        self.inactivity_timeout = inactivity_timeout
        self.policy = policy or HubPolicy()
        self.enabled_extensions = list(enabled_extensions)
        self.fwup_public_keys = list(fwup_public_keys)
        self.archive_public_keys = list(archive_public_keys)
        self.connecting_code = connecting_code
        self.clock_offset = clock_offset
        self.device_join_response: Any = {}  # e.g. an old hub's update payload (spec 2.2)
        self.release: Release | None = None
        self.archive: dict[str, Any] | None = None
        self._want_firmware_server = firmware_server
        self._firmware_port = firmware_port
        self._compression = compression

        self.devices: dict[str, DeviceRecord] = {}
        self.upgrades: list[UpgradeRecord] = []
        self.tls_failures: list[TlsFailureRecord] = []
        self._frames: list[FrameRecord] = []
        self._sessions: dict[str, DeviceSession] = {}
        self._device_keys: dict[str, tuple[str, str]] = {}
        self._product_keys: dict[str, str] = {}
        self._device_certs: dict[str, IssuedCertificate] = {}
        self._upgrade_answers: collections.deque[_UpgradeAnswer] = collections.deque()
        self._join_failures: dict[str, collections.deque[Any]] = {}
        self._accepted: dict[ServerConnection, _Accepted] = {}
        self._upgrade_notes: dict[ServerConnection, tuple[str | None, str | None, str]] = {}
        self._tls_protocols: weakref.WeakSet[TlsServerProtocol] = weakref.WeakSet()
        self._connection_ids = 0
        self._notifier = Notifier()
        self._ssl_context: ssl.SSLContext | None = None
        self._crl_state: frozenset[int] | None = None
        self._crl_generation = 0
        self._server: Server | None = None
        self._firmware: FirmwareServer | None = None
        self._orchestrator_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Create the PKI if needed and start listening (ephemeral ports by default)."""
        if self._server is not None:
            return
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="nhlink-hub-"))
            self._owns_directory = True
        if self._pki is None:
            self._pki = Pki.load_or_create(self._directory / "pki")
        self._ssl_context = self._device_socket_context()
        self._refresh_revocations()
        self._server = await serve(
            self._handle_connection,
            self._host,
            self._requested_port,
            create_connection=cast(Any, self._make_protocol),
            process_request=self._process_request,
            process_response=self._process_response,
            compression="deflate" if self._compression else None,
            server_header="nhlink-testing",
            ping_interval=None,
            max_size=16 * 1024 * 1024,
        )
        if self._want_firmware_server:
            self._firmware = FirmwareServer(
                ssl_context=https_server_context(
                    self.pki.server.cert_path, self.pki.server.key_path
                ),
                host=self._host,
                port=self._firmware_port,
                directory=self._directory / "firmware",
            )
            await self._firmware.start()
        if self.policy.orchestrator_interval is not None:
            self._spawn(self._orchestrator_loop(self.policy.orchestrator_interval))
        log.info("local hub listening on %s", self.url)

    async def stop(self) -> None:
        """Close every socket and both servers; remove the temporary directory if we made it."""
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            for protocol in list(self._tls_protocols):
                if protocol.handshaking:
                    protocol.abort()
            await self._server.wait_closed()
            self._server = None
        if self._firmware is not None:
            await self._firmware.stop()
            self._firmware = None
        if self._owns_directory and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
            self._owns_directory = False

    async def __aenter__(self) -> LocalHub:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- where things are -----------------------------------------------------

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            raise HubError("the hub has no PKI yet (call start())")
        return self._pki

    @property
    def directory(self) -> Path:
        if self._directory is None:
            raise HubError("the hub is not started")
        return self._directory

    @property
    def port(self) -> int:
        if self._server is None:
            raise HubError("the hub is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def host(self) -> str:
        """``host:port`` as the device config's ``host`` key wants it."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The certificate-auth socket URL (clients add ``?vsn=2.0.0``)."""
        return f"wss://{self.host}{SOCKET_PATHS[0]}"

    @property
    def shared_secret_url(self) -> str:
        """The shared-secret socket URL (either path accepts either auth)."""
        return f"wss://{self.host}{SOCKET_PATHS[1]}"

    @property
    def firmware(self) -> FirmwareServer:
        if self._firmware is None:
            raise HubError("the hub runs no firmware server (firmware_server=False or not started)")
        return self._firmware

    def now(self) -> float:
        """The hub's clock: unix seconds plus `clock_offset`."""
        return time.time() + self.clock_offset

    # -- devices and credentials ------------------------------------------------

    def add_device(
        self, identifier: str, *, shared_key: str | None = None, shared_secret: str | None = None
    ) -> DeviceRecord:
        """Register a device (optionally with a per-device shared-secret key)."""
        device = self._device(identifier)
        if (shared_key is None) != (shared_secret is None):
            raise HubError("give both shared_key and shared_secret, or neither")
        if shared_key is not None and shared_secret is not None:
            if shared_key.startswith(PRODUCT_KEY_PREFIX):
                raise HubError(f"device keys must not start with {PRODUCT_KEY_PREFIX!r}")
            device.shared_key, device.shared_secret = shared_key, shared_secret
            self._device_keys[shared_key] = (shared_secret, identifier)
        return device

    def add_product_key(self, key: str, secret: str) -> None:
        """Register a product shared secret (``nhp_...``): any identifier may connect with it."""
        if not key.startswith(PRODUCT_KEY_PREFIX):
            raise HubError(f"product keys start with {PRODUCT_KEY_PREFIX!r}")
        self._product_keys[key] = secret

    async def delete_device(self, identifier: str) -> None:
        """Delete a device: its certificates fail the TLS handshake, its secrets get 401."""
        self._device(identifier).deleted = True
        session = self._sessions.get(identifier)
        if session is not None:
            await session.close(1000, "")

    def restore_device(self, identifier: str) -> None:
        self._device(identifier).deleted = False

    def device_certificate(self, identifier: str) -> IssuedCertificate:
        """The device's client certificate from the signer CA (reused from the PKI
        directory when a valid devices/<identifier>.pem exists, else issued)."""
        cert = self._device_certs.get(identifier)
        if cert is None:
            cert = self.pki.find_device_certificate(identifier)
        if cert is None:
            cert = self.pki.issue_device_certificate(identifier)
            self._device_certs[identifier] = cert
        return cert

    def client_ssl_context(
        self, identifier: str | None = None, *, tls13: bool | None = None
    ) -> ssl.SSLContext:
        """A client context trusting the hub (with `identifier`'s certificate if given)."""
        cert = self.device_certificate(identifier) if identifier is not None else None
        return self.pki.client_ssl_context(cert, tls13=self.tls13 if tls13 is None else tls13)

    def write_device_config(
        self,
        identifier: str,
        path: str | os.PathLike[str] | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a ready-to-use TOML config for `identifier` (``fwup_public_keys`` via `extra`)."""
        cert = self.device_certificate(identifier)
        target = Path(path) if path is not None else self.directory / f"{identifier}.toml"
        return write_device_config(
            target,
            host=self.host,
            certfile=cert.cert_path.resolve(),
            keyfile=cert.key_path.resolve(),
            cacertfile=self.pki.ca.cert_path.resolve(),
            extra=extra,
        )

    def _device(self, identifier: str) -> DeviceRecord:
        device = self.devices.get(identifier)
        if device is None:
            device = DeviceRecord(identifier)
            self.devices[identifier] = device
        return device

    # -- test controls for the upgrade and joins ------------------------------------

    def fail_next_upgrades(
        self,
        count: int = 1,
        *,
        status: int = 503,
        headers: Mapping[str, str] | None = None,
        body: str = "",
    ) -> None:
        """Answer the next `count` upgrade requests with `status` (before authentication)."""
        answer = _UpgradeAnswer(status, tuple((headers or {}).items()), body, f"injected {status}")
        self._upgrade_answers.extend([answer] * count)

    def redirect_next_upgrades(self, location: str, count: int = 1, *, status: int = 302) -> None:
        """Answer the next `count` upgrade requests with a redirect to `location`."""
        answer = _UpgradeAnswer(
            status, (("Location", location),), "", f"injected redirect {status}"
        )
        self._upgrade_answers.extend([answer] * count)

    def fail_next_joins(
        self, topic: str = "device", count: int = 1, *, response: Any = None
    ) -> None:
        """Answer the next `count` joins of `topic` with ``{"status":"error"}``."""
        queue = self._join_failures.setdefault(topic, collections.deque())
        value = {"error": "could not connect"} if response is None else response
        queue.extend([value] * count)

    def take_join_failure(self, topic: str) -> Any:
        queue = self._join_failures.get(topic)
        return queue.popleft() if queue else None

    # -- frames and waiting -----------------------------------------------------

    def frames(
        self,
        identifier: str | None = None,
        topic: str | None = None,
        event: str | None = None,
        *,
        direction: Direction | None = None,
        since: int = 0,
    ) -> list[FrameRecord]:
        """Recorded frames (both directions, oldest first), filtered."""
        return [
            f
            for f in self._frames[since:]
            if (identifier is None or f.identifier == identifier)
            and (topic is None or f.topic == topic)
            and (event is None or f.event == event)
            and (direction is None or f.direction == direction)
        ]

    def frame_mark(self) -> int:
        """The index the next frame will get: pass it as `since` to look only at newer frames."""
        return len(self._frames)

    async def wait_until(self, check: Callable[[], _T | None], timeout: float, what: str) -> _T:
        """Wait until `check()` returns something other than None (re-checked on every hub event)."""
        return await self._notifier.wait_for(check, timeout, what)

    async def wait_for_frame(
        self, predicate: Callable[[FrameRecord], bool], timeout: float = 10.0, *, since: int = 0
    ) -> FrameRecord:
        """The first frame with index >= `since` matching `predicate`."""

        def check() -> FrameRecord | None:
            return next((f for f in self._frames[since:] if predicate(f)), None)

        return await self.wait_until(check, timeout, "a matching frame")

    async def wait_for_event(
        self,
        identifier: str,
        event: str,
        *,
        topic: str = "device",
        timeout: float = 10.0,
        since: int = 0,
    ) -> FrameRecord:
        """The first frame from the device with this topic and event."""
        return await self.wait_for_frame(
            lambda f: (
                f.direction == "from_device"
                and f.identifier == identifier
                and f.topic == topic
                and f.event == event
            ),
            timeout,
            since=since,
        )

    async def wait_for_device(
        self, identifier: str, timeout: float = 10.0, *, connections: int = 1
    ) -> DeviceRecord:
        """Wait until the device is connected with ``device`` joined, on its `connections`-th socket or later."""

        def check() -> DeviceRecord | None:
            device = self.devices.get(identifier)
            if (
                device is not None
                and device.connected
                and device.device_joined
                and device.connection_count >= connections
            ):
                return device
            return None

        return await self.wait_until(check, timeout, f"device {identifier} to join")

    async def wait_for_disconnect(self, identifier: str, timeout: float = 10.0) -> DeviceRecord:
        def check() -> DeviceRecord | None:
            device = self.devices.get(identifier)
            return device if device is not None and not device.connected else None

        return await self.wait_until(check, timeout, f"device {identifier} to disconnect")

    async def wait_for_status(
        self, identifier: str, status: str, timeout: float = 10.0, *, since: int = 0
    ) -> dict[str, Any]:
        """The first ``status_update`` payload (index >= `since` in the device's statuses) with this status."""

        def check() -> dict[str, Any] | None:
            device = self.devices.get(identifier)
            if device is None:
                return None
            return next((s for s in device.statuses[since:] if s.get("status") == status), None)

        return await self.wait_until(check, timeout, f"status {status!r} from {identifier}")

    def notify(self) -> None:
        self._notifier.notify()

    def record_frame(
        self,
        session: DeviceSession,
        direction: Direction,
        join_ref: str | None,
        ref: str | None,
        topic: str,
        event: str,
        payload: Any,
        raw: str | bytes,
        malformed: bool = False,
    ) -> FrameRecord:
        record = FrameRecord(
            index=len(self._frames),
            at=time.monotonic(),
            direction=direction,
            identifier=session.identifier,
            connection_id=session.connection_id,
            join_ref=join_ref,
            ref=ref,
            topic=topic,
            event=event,
            payload=payload,
            raw=raw,
            malformed=malformed,
        )
        self._frames.append(record)
        log.debug("%s %s %r", session.identifier, direction, raw)
        self._notifier.notify()
        return record

    # -- pushes -------------------------------------------------------------------

    def _session(self, identifier: str) -> DeviceSession:
        session = self._sessions.get(identifier)
        if session is None:
            raise HubError(f"device {identifier} is not connected")
        return session

    async def push(
        self,
        identifier: str,
        topic: str,
        event: str,
        payload: Any,
        *,
        fastlane: bool | None = None,
    ) -> None:
        """Send a server push on a joined topic.

        `fastlane` None: ``[null,null,...]`` for the hub's fastlaned device events
        (update, reboot, identify, archive, *_public_keys, extensions:get,
        scripts/run), else the channel's join_ref with a null ref.
        """
        session = self._session(identifier)
        try:
            await session.push(topic, event, payload, fastlane=fastlane)
        except ConnectionClosed:
            raise HubError(f"device {identifier} disconnected") from None

    async def send_raw(self, identifier: str, data: str | bytes) -> None:
        """Send any websocket message (for malformed-frame tests)."""
        try:
            await self._session(identifier).send_raw(data)
        except ConnectionClosed:
            raise HubError(f"device {identifier} disconnected") from None

    async def push_update(
        self,
        identifier: str,
        firmware_url: str,
        meta: Mapping[str, Any],
        size: int | None = None,
        checksum: str | None = None,
        partials: list[str] | None = None,
        *,
        deployment_id: int | None = None,
    ) -> dict[str, Any]:
        """Push ``update`` and record it as the device's in-flight update; returns the payload.

        Like the hub's manual push, ``deployment_id=None`` also turns the
        device's automatic (deployment) updates off.
        """
        payload = orchestrator.update_payload(
            firmware_url,
            meta,
            size=size,
            checksum=checksum,
            partials_checksums=partials,
            deployment_id=deployment_id,
        )
        device = self._device(identifier)
        await self.push(identifier, "device", "update", payload)
        orchestrator.apply_update_sent(device, firmware_url, payload, self.now())
        if deployment_id is None:
            device.updates_enabled = False
        self.notify()
        return payload

    async def push_reboot(self, identifier: str) -> None:
        await self.push(identifier, "device", "reboot", {})

    async def push_identify(self, identifier: str) -> None:
        await self.push(identifier, "device", "identify", {})

    async def push_archive(
        self,
        identifier: str,
        url: str,
        *,
        size: int,
        uuid: str,
        version: str,
        description: str = "",
        platform: str = "",
        architecture: str = "",
        uploaded_at: str | None = None,
    ) -> dict[str, Any]:
        """Push ``archive`` (spec 2.3); `uploaded_at` is a naive ISO-8601 string."""
        payload = {
            "size": size,
            "uuid": uuid,
            "version": version,
            "description": description,
            "platform": platform,
            "architecture": architecture,
            "uploaded_at": uploaded_at
            or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.now())),
            "url": url,
        }
        await self.push(identifier, "device", "archive", payload)
        return payload

    async def push_public_keys(
        self, identifier: str, keys: list[str], *, kind: str = "fwup"
    ) -> None:
        """Push ``fwup_public_keys`` (kind "fwup") or ``archive_public_keys`` (kind "archive")."""
        if kind not in ("fwup", "archive"):
            raise HubError(f"unknown key kind {kind!r}")
        await self.push(identifier, "device", f"{kind}_public_keys", {"keys": list(keys)})

    async def push_script(
        self, identifier: str, text: str, *, ref: str | None = None, timeout_ms: int | None = None
    ) -> str:
        """Push ``scripts/run``; returns the ref the device must answer with."""
        ref = ref or os.urandom(4).hex()
        payload: dict[str, Any] = {"text": text, "ref": ref}
        if timeout_ms is not None:
            payload["timeout"] = timeout_ms
        await self.push(identifier, "device", "scripts/run", payload)
        return ref

    async def push_console(self, identifier: str, data: str) -> None:
        """Console input (``dn``) on the joined console channel."""
        await self.push(identifier, "console", "dn", {"data": data})

    async def close_channel(
        self, identifier: str, topic: str = "device", *, event: str = "phx_close"
    ) -> None:
        """End a channel from the server (``phx_close`` or ``phx_error``); the device must rejoin."""
        if event not in ("phx_close", "phx_error"):
            raise HubError("event must be phx_close or phx_error")
        await self._session(identifier).close_channel(topic, event)
        self.notify()

    async def kick(self, identifier: str) -> None:
        """Close the device's socket cleanly (as the hub's ``disconnect`` broadcast does)."""
        await self._session(identifier).close(1000, "")

    def close_socket_abruptly(self, identifier: str) -> None:
        """Drop the device's TCP connection without a close frame or TLS close_notify."""
        self._session(identifier).abort()

    # -- deployments and the orchestrator ---------------------------------------

    async def deploy(self, release: Release, *, archive: Mapping[str, Any] | None = None) -> None:
        """Make `release` the deployment's firmware (and optionally an archive) and resolve now."""
        self.release = release
        self.archive = dict(archive) if archive is not None else None
        await self.run_orchestrator()

    def undeploy(self) -> None:
        self.release = None
        self.archive = None

    async def run_orchestrator(self) -> list[str]:
        """Send the release to every eligible device (spec 2.6 step 3); returns their identifiers."""
        sent: list[str] = []
        async with self._orchestrator_lock:
            release = self.release
            if release is None:
                return sent
            now = self.now()
            inflight = sum(1 for d in self.devices.values() if d.inflight is not None)
            for device in list(self.devices.values()):
                orchestrator.expire_inflight(device, now, self.policy)
                orchestrator.penalty_check(device, now, self.policy)
                if inflight >= self.policy.concurrent_updates:
                    break
                session = self._sessions.get(device.identifier)
                if session is None or not orchestrator.eligible_for_release(device, release, now):
                    continue
                payload = orchestrator.update_payload(
                    release.firmware_url,
                    release.firmware_meta,
                    size=release.size,
                    checksum=release.checksum,
                    partials_checksums=release.partials_checksums,
                    deployment_id=release.deployment_id,
                )
                try:
                    await session.push("device", "update", payload)
                except (ConnectionClosed, HubError):
                    continue
                orchestrator.apply_update_sent(device, release.firmware_url, payload, now)
                inflight += 1
                sent.append(device.identifier)
        if sent:
            self.notify()
        return sent

    async def _orchestrator_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.run_orchestrator()
            except Exception:
                log.exception("orchestrator run failed")

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- TLS ----------------------------------------------------------------------

    def _device_socket_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3 if self.tls13 else ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.pki.server.cert_path), str(self.pki.server.key_path))
        ctx.verify_mode = ssl.CERT_OPTIONAL  # fail_if_no_peer_cert: false
        ctx.load_verify_locations(cadata=self.pki.signer.cert_pem.decode())
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return ctx

    def _refused_identifier(self, identifier: str) -> bool:
        device = self.devices.get(identifier)
        if device is None:
            return not self.allow_unknown_devices
        return device.deleted

    def _refresh_revocations(self) -> None:
        """Keep the signer CA's CRL in step with deleted (and, without JITP, unknown) devices."""
        assert self._ssl_context is not None
        revoked = frozenset(
            cert.serial
            for cert in self.pki.issued_device_certificates
            if self._refused_identifier(cert.common_name)
        )
        if revoked == self._crl_state:
            return
        self._crl_generation += 1
        crl_path = self.pki.directory / "crl" / "signer-ca.crl.pem"
        crl_path.parent.mkdir(parents=True, exist_ok=True)
        crl_path.write_bytes(self.pki.crl_pem(revoked, generation=self._crl_generation))
        self._ssl_context.load_verify_locations(cafile=str(crl_path))
        self._crl_state = revoked

    def _on_tls_failure(self, reason: str, peer: Any) -> None:
        self.tls_failures.append(TlsFailureRecord(time.monotonic(), peer, reason))
        self.notify()

    def _make_protocol(
        self, protocol: ServerProtocol, server: Server, **kwargs: Any
    ) -> TlsServerProtocol:
        assert self._ssl_context is not None
        connection = ServerConnection(protocol, server, **kwargs)
        tls = TlsServerProtocol(
            self._ssl_context,
            connection,
            before_handshake=self._refresh_revocations,
            on_failure=self._on_tls_failure,
        )
        self._tls_protocols.add(tls)
        return tls

    # -- the upgrade ----------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        headers = {k.lower(): v for k, v in request.headers.raw_items()}

        def answer(
            status: int,
            reason: str,
            extra: Iterable[tuple[str, str]] = (),
            body: str = "",
            identifier: str | None = None,
        ) -> Response:
            response = connection.respond(status, body)
            for name, value in extra:
                response.headers[name] = value
            self._upgrade_notes[connection] = (identifier, None, reason)
            return response

        if path not in SOCKET_PATHS:
            return answer(301, "not a socket path", [("Location", "/")])
        vsn = parse_qs(query).get("vsn", ["1.0.0"])[0]
        if not vsn.startswith("2."):
            return answer(403, f"unsupported vsn {vsn}")
        if self._upgrade_answers:
            injected = self._upgrade_answers.popleft()
            return answer(injected.status, injected.reason, injected.headers, injected.body)

        identifier: str | None = None
        auth: str
        sslobj = connection.transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        has_secret_headers = any(name.startswith("x-nh-") for name in headers)
        if der:
            identifier = common_name(x509.load_der_x509_certificate(der))
            if not identifier:
                return answer(401, "certificate has no CN")
            auth = "certificate"
        elif has_secret_headers and self.shared_secrets_enabled:
            try:
                result = verify_headers(headers, self._lookup_secret, now=self.now())
            except SharedSecretRejected as exc:
                return answer(401, f"shared secret: {exc.reason}")
            identifier = result.identifier
            auth = "product_key" if result.product else "shared_secret"
        else:
            return answer(
                401,
                "no credentials",
                [("nh-connection-error-reason", NO_CREDENTIALS_REASON)],
            )
        known = self.devices.get(identifier)
        if known is not None and known.deleted:
            return answer(401, "device deleted", identifier=identifier)
        if known is None and auth == "certificate" and not self.allow_unknown_devices:
            return answer(401, "unknown device", identifier=identifier)
        self._device(identifier)
        self._accepted[connection] = _Accepted(identifier, auth)
        self._upgrade_notes[connection] = (identifier, auth, "accepted")
        return None

    def _lookup_secret(self, key: str) -> tuple[str, str | None] | None:
        if key.startswith(PRODUCT_KEY_PREFIX):
            secret = self._product_keys.get(key)
            return (secret, None) if secret is not None else None
        found = self._device_keys.get(key)
        if found is None:
            return None
        secret, identifier = found
        return secret, identifier

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> Response | None:
        del response.headers["Date"]
        response.headers["Date"] = email.utils.formatdate(self.now(), usegmt=True)
        identifier, auth, reason = self._upgrade_notes.pop(connection, (None, None, "rejected"))
        if response.status_code != 101:
            self._accepted.pop(connection, None)
        path, _, query = request.path.partition("?")
        self.upgrades.append(
            UpgradeRecord(
                at=time.monotonic(),
                path=path,
                query=query,
                headers={k.lower(): v for k, v in request.headers.raw_items()},
                status=response.status_code,
                identifier=identifier,
                auth=auth,
                reason=reason,
            )
        )
        self.notify()
        return None

    # -- connections ----------------------------------------------------------------

    async def _handle_connection(self, ws: ServerConnection) -> None:
        accepted = self._accepted.pop(ws, None)
        if accepted is None:
            await ws.close(1011, "not authenticated")
            return
        device = self._device(accepted.identifier)
        self._connection_ids += 1
        session = DeviceSession(self, ws, device, self._connection_ids)
        previous = self._sessions.get(device.identifier)
        self._sessions[device.identifier] = session
        device.auth = accepted.auth
        device.connection_count += 1
        device.connected = True
        device.device_joined = False
        device.current_connection_id = session.connection_id
        log.info(
            "device %s connected (%s, connection %d)",
            device.identifier,
            accepted.auth,
            session.connection_id,
        )
        self.notify()
        if previous is not None:
            # A new connection kicks the older socket of the same device (spec 1.7).
            self._spawn(previous.close(1000, ""))
        try:
            await session.run()
        finally:
            if self._sessions.get(device.identifier) is session:
                del self._sessions[device.identifier]
                device.connected = False
                device.device_joined = False
                device.current_connection_id = None
            log.info(
                "device %s disconnected (connection %d)", device.identifier, session.connection_id
            )
            self.notify()
