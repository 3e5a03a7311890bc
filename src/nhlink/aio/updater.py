"""`Updater`: the link's update handler, offer -> decision -> download -> apply -> report -> reboot.

Give it to :class:`~nhlink.aio.link.NervesHubLink` as ``update_handler``.
An offer is reported ``received`` and put to the client
(``Client.update_available``); an accepted one streams from the firmware
URL through the verifier into the applier (the built-in engine, or an
installed ``fwup`` when ``fwup_backend = "fwup"``), with ``started`` on each
HTTP (re)connect and throttled ``fwup_progress``; then ``completed`` and a
reboot through the client, or ``failed`` with ``"<code>: <text>"`` (the codes
of :mod:`nhlink.update.reasons`). People watching get
``Client.handle_fwup_message`` calls with bytes, rate and time left.

With ``[update] preflight`` (the default) an accepted offer is checked before
the first firmware byte: the running firmware is validated (else the offer is
rescheduled), and the archive head (meta.conf, read by Range request) is signed
by a configured key, has a task for the destination that writes nothing of the
partition the running root filesystem is on and uses only actions the applier
runs (:mod:`nhlink.update.preflight`, :mod:`nhlink.aio.preflight`). A
``data_path`` without room for the resume journal turns resume off for the
update (a warning; a failure, ``no_space``, only with ``[update] metered``,
where a lost resume means a second full download); a local clock far from the
firmware server's ``Date`` is only logged.

Archives (spec 6.4) are downloaded into ``<data_path>/archives/``, verified
as they stream (signature and resource digests, with the archive keys, else
the fwup keys) and handed to ``Client.archive_ready``; a ``.download`` left by
an interrupted run is resumed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import nhlink._native
from nhlink.aio.downloader import USER_AGENT, Downloader, RetryPolicy, download_ssl_context
from nhlink.aio.fwup_process import FwupProcessApplier, fwup_command, fwup_environment
from nhlink.aio.preflight import (
    STAGING_MIN_FREE,
    HeadSettings,
    HeadUnavailable,
    check_not_running_device,
    drop_journal,
    fetch_head,
    staging_problem,
)
from nhlink.client import (
    Apply,
    ArchiveDecision,
    Download,
    FwupMessage,
    Ignore,
    Reschedule,
    UpdateDecision,
    call_client,
    normalize_archive_decision,
    normalize_update_decision,
)
from nhlink.fwup.engine import CHECKPOINT_PERIOD, Engine
from nhlink.fwup.frames import Frame
from nhlink.fwup.primitives import Primitives
from nhlink.protocol.payloads import ArchiveInfo, UpdateInfo
from nhlink.update.errors import DownloadError, UpdateError, VerificationError
from nhlink.update.journal import JOURNAL_NAME, OfferIdentity, UpdateJournal, verifier_from
from nhlink.update.machine import NOT_VALIDATED_RESCHEDULE_MINUTES, UpdateMachine
from nhlink.update.meter import MessageKind, TransferMeter, UpdateMessage
from nhlink.update.pipeline import Applier, EngineApplier, EngineLike, prepare_resume, stream_update
from nhlink.update.preflight import (
    SYSFS,
    ArchiveHead,
    HeadReader,
    PreflightError,
    ReadOnlyDestination,
    check_actions,
    check_room,
    check_running_slot,
    check_signature,
    choose_task,
    clock_warning,
    parse_head,
    running_root_partitions,
)
from nhlink.update.reasons import code_of, failure_reason

if TYPE_CHECKING:
    from nhlink.aio.link import NervesHubLink

logger = logging.getLogger("nhlink.aio.updater")

EngineFactory = Callable[..., EngineLike]
"""Makes the apply engine: called with ``destination``, ``task``, ``public_keys`` (raw
32-byte keys) and ``environ`` keyword arguments."""

REBOOT_DELAY = 0.2
"""Seconds between the ``completed`` push and the reboot, so the push leaves first."""
CALLBACK_FAILED = "update_available failed"
PREFLIGHT_RESCHEDULE_MINUTES = 5
"""Minutes to wait when the archive head cannot be fetched for now."""
_MESSAGE_KINDS: dict[str, MessageKind] = {
    "PR": "progress",
    "OK": "ok",
    "WN": "warning",
    "ER": "error",
}


def default_engine(**kwargs: Any) -> EngineLike:
    """The built-in applier engine in apply mode."""
    return Engine(mode="apply", **kwargs)


def decode_public_keys(keys: Sequence[str]) -> list[bytes]:
    """The raw 32-byte Ed25519 keys among base64 ``keys`` (invalid entries left out)."""
    raw: list[bytes] = []
    for key in keys:
        try:
            value = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            value = b""
        if len(value) == 32:
            raw.append(value)
        else:
            logger.warning("fwup public key %r is not a base64 Ed25519 key; left out", key)
    return raw


class Updater:
    """The update flow (implements the link's ``UpdateHandler``).

    ``engine_factory`` replaces the built-in engine (tests use a slow one);
    ``allow_http`` permits plain-http firmware URLs (tests only); ``environ``
    is where ``HTTPS_PROXY``/``NO_PROXY`` are read (default: the process's);
    ``wall_clock`` is compared with the firmware server's ``Date`` in preflight;
    ``staging_min_free`` is the free space the resume journal needs in ``data_path``;
    ``sysfs`` and ``root_device`` (``st_dev`` of ``/``) locate the partition of the
    running root filesystem for the slot check (tests use a fake tree);
    ``checkpoint_period`` is the least time between two resume checkpoints.
    """

    def __init__(
        self,
        *,
        engine_factory: EngineFactory = default_engine,
        allow_http: bool = False,
        environ: Mapping[str, str] | None = None,
        fwup_executable: str = "fwup",
        wall_clock: Callable[[], float] = time.time,
        staging_min_free: int = STAGING_MIN_FREE,
        sysfs: str = SYSFS,
        root_device: Callable[[], int] | None = None,
        checkpoint_period: float = CHECKPOINT_PERIOD,
    ) -> None:
        self.currently_downloading_uuid: str | None = None
        self._checkpoint_period = checkpoint_period
        self._wall_clock = wall_clock
        self._staging_min_free = staging_min_free
        self._sysfs = sysfs
        self._root_device = root_device
        self._resume = True
        """Whether this update may keep a resume journal (preflight turns it off when
        ``data_path`` cannot hold one)."""
        self._engine_factory = engine_factory
        self._allow_http = allow_http
        self._environ = environ
        self._fwup_executable = fwup_executable
        self._link: NervesHubLink | None = None
        self._machine: UpdateMachine | None = None

    # -- UpdateHandler ------------------------------------------------------------

    def attach(self, link: NervesHubLink) -> None:
        self._link = link
        self._machine = UpdateMachine(link.device)

    @property
    def link(self) -> NervesHubLink:
        if self._link is None:
            raise RuntimeError("the Updater is not attached to a NervesHubLink")
        return self._link

    @property
    def machine(self) -> UpdateMachine:
        if self._machine is None:
            raise RuntimeError("the Updater is not attached to a NervesHubLink")
        return self._machine

    @property
    def state(self) -> str:
        """``idle`` or ``updating``."""
        return self.machine.state

    async def offer(self, info: UpdateInfo) -> None:
        """Handle an ``update`` offer from start to finish."""
        link, machine = self.link, self.machine
        if not machine.offer(info):
            return
        failed: UpdateDecision = Ignore(CALLBACK_FAILED)
        answer = await call_client(link.client.update_available, info, default=failed)
        decision = normalize_update_decision(answer)
        keys = decode_public_keys(link.fwup_public_keys)
        preflight = link.config.update.preflight
        validated = True
        if preflight and isinstance(decision, Apply) and keys:
            validated = await call_client(link.client.firmware_validated, default=True) is not False
        started = machine.decide(
            decision, have_public_keys=bool(keys), firmware_validated=validated
        )
        if started is None:
            return
        self.currently_downloading_uuid = machine.downloading_uuid
        self._resume = True
        passed = False
        try:
            passed = not preflight or await self._preflight_passed(info, keys)
        finally:
            if not passed:
                self.currently_downloading_uuid = None
        if not passed:
            return
        logger.info(
            "updating to %s %s", info.firmware_meta.version or "", info.firmware_meta.uuid or ""
        )
        messages = _MessageQueue(link)
        try:
            await self._update(info, keys, messages)
        except asyncio.CancelledError as exc:
            logger.warning("update %s interrupted", info.firmware_meta.uuid)
            machine.failed_with(failure_reason(exc))
            raise
        except UpdateError as exc:
            self._report_failure(self._failure_reason(exc, messages))
            return
        except Exception as exc:
            logger.exception("update failed unexpectedly")
            machine.failed_with(failure_reason(exc))
            return
        else:
            machine.succeeded(link.now())
            logger.warning("update %s applied; rebooting", info.firmware_meta.uuid)
        finally:
            self.currently_downloading_uuid = None
            await messages.close()
        await asyncio.sleep(REBOOT_DELAY)
        await link.reboot()

    async def archive_offer(self, info: ArchiveInfo) -> None:
        """Handle an ``archive`` offer: ask the client, download, verify, hand it over."""
        link = self.link
        while True:
            ignore: ArchiveDecision = Ignore()
            answer = await call_client(link.client.archive_available, info, default=ignore)
            decision = normalize_archive_decision(answer)
            if isinstance(decision, Download):
                break
            if isinstance(decision, Reschedule):
                logger.info("archive %s: asking again in %g min", info.uuid, decision.minutes)
                await asyncio.sleep(max(0.0, decision.minutes) * 60)
                continue
            logger.info("archive %s ignored", info.uuid or info.url)
            return
        try:
            path = await self._download_archive(info)
        except UpdateError as exc:
            logger.error("archive %s: %s", info.uuid or info.url, exc)
            return
        await call_client(link.client.archive_ready, info, str(path), default=None)

    # -- the update -----------------------------------------------------------------

    async def _update(self, info: UpdateInfo, keys: list[bytes], messages: _MessageQueue) -> None:
        link, machine = self.link, self.machine
        loop = asyncio.get_running_loop()
        meter = TransferMeter(info.size, loop.time())

        def on_frame(frame: Frame) -> None:
            if frame.type == "PR":
                machine.progress(frame.code, link.now())
            messages.put(
                meter.message(_MESSAGE_KINDS.get(frame.type, "warning"), frame.code, frame.text)
            )

        offer = OfferIdentity(
            info.firmware_meta.uuid or "",
            info.size,
            info.checksum,
            tuple(info.partials_checksums) if info.partials_checksums else None,
        )
        journal = None
        if link.config.update.resume and self._resume and offer.uuid:
            journal = UpdateJournal(Path(link.config.data_path) / JOURNAL_NAME)
        applier, point = await prepare_resume(
            journal,
            offer,
            await self._applier(on_frame, keys),
            lambda: self._applier(on_frame, keys),
            checkpoint_period=self._checkpoint_period,
        )
        downloader = self._downloader(
            info.firmware_url,
            info.size,
            on_connect=lambda connected: machine.connected(connected.network_interface),
        )
        start = point.start if point is not None else 0
        try:
            outcome = await stream_update(
                downloader,
                verifier_from(offer, start),
                applier,
                on_received=lambda done: meter.update(done, loop.time()),
                start=start,
                skip=point.skip if point is not None else 0,
            )
        except VerificationError:
            if journal is not None:  # these bytes will not do: the next offer starts over
                await asyncio.to_thread(journal.remove)
            raise
        # a download error or a stop keeps the journal: the next offer resumes
        if journal is not None:  # completed, or failed for good
            await asyncio.to_thread(journal.remove)
        if outcome.type != "OK":
            raise UpdateError(f"fwup: {outcome.text}")

    async def _applier(self, on_frame: Callable[[Frame], None], keys: list[bytes]) -> Applier:
        link = self.link
        config = link.config
        devpath = self._devpath()
        environ = self._fwup_environ()
        if config.fwup_backend == "fwup":
            command = fwup_command(
                devpath=devpath,
                task=config.fwup_task,
                public_keys=[base64.b64encode(key).decode() for key in keys],
                extra_options=config.fwup_extra_options,
                executable=self._fwup_executable,
            )
            try:
                return await FwupProcessApplier.start(command, env=environ, on_frame=on_frame)
            except OSError as exc:
                raise UpdateError(
                    f"fwup: cannot run {command[0]}: {exc}", code="refused:config"
                ) from None
        engine = self._engine_factory(
            destination=devpath,
            task=config.fwup_task,
            public_keys=keys,
            environ=environ,
        )
        return EngineApplier(engine, on_frame)

    def _devpath(self) -> str:
        devpath = self.link.config.fwup_devpath or self.link.kv.get("nerves_fw_devpath")
        if not devpath:
            raise UpdateError(
                "no fwup_devpath configured (nor nerves_fw_devpath in the KV)",
                code="refused:config",
            )
        return devpath

    def _fwup_environ(self) -> dict[str, str]:
        try:
            return fwup_environment(self.link.config.fwup_env, self._environ)
        except ValueError as exc:
            raise UpdateError(str(exc), code="refused:config") from None

    def _failure_reason(self, exc: BaseException, messages: _MessageQueue | None = None) -> str:
        """:func:`failure_reason` with the applier's ER frame and the link's clock check
        (a certificate date failure while the clock is wrong is ``clock``)."""
        try:
            clock = self.link.clock.check()
        except Exception:  # the check is advice: never let it hide the failure
            logger.debug("no clock check for the failure reason", exc_info=True)
            clock = None
        error = messages.last_error if messages is not None else None
        return failure_reason(exc, applier_error=error, clock=clock)

    def _report_failure(self, reason_text: str) -> None:
        """``failed``, except ``not_validated`` (the applier's own refusal): the running
        firmware is usually validated shortly after boot, so ``rescheduled``."""
        if code_of(reason_text) == "not_validated":
            self.machine.rescheduled(NOT_VALIDATED_RESCHEDULE_MINUTES, reason_text)
        else:
            self.machine.failed_with(reason_text)

    # -- preflight ------------------------------------------------------------------

    async def _preflight_passed(self, info: UpdateInfo, keys: list[bytes]) -> bool:
        """Run the preflight checks; on a failure report it (``failed`` or
        ``rescheduled``) and return False."""
        machine = self.machine
        try:
            await self._preflight(info, keys)
        except asyncio.CancelledError as exc:
            machine.failed_with(failure_reason(exc))
            raise
        except HeadUnavailable as exc:
            machine.rescheduled(PREFLIGHT_RESCHEDULE_MINUTES, exc.reason)
            return False
        except UpdateError as exc:
            self._report_failure(self._failure_reason(exc))
            return False
        except Exception as exc:
            logger.exception("preflight failed unexpectedly")
            machine.failed_with(failure_reason(exc))
            return False
        return True

    async def _preflight(self, info: UpdateInfo, keys: list[bytes]) -> None:
        """Journal room, slot, archive head (signature, task, actions, size) and a clock
        warning, before the first firmware byte (see :mod:`nhlink.update.preflight`)."""
        link = self.link
        config = link.config
        devpath = self._devpath()
        environ = self._fwup_environ()
        external = config.fwup_backend == "fwup"
        if config.update.resume and not external:  # an external fwup keeps no journal
            await self._check_staging()
        await asyncio.to_thread(check_not_running_device, devpath)
        policy = RetryPolicy.from_config(config.retry)
        settings = HeadSettings(
            ssl_context=download_ssl_context(config),
            proxy=config.proxy,
            environ=self._environ,
            allow_http=self._allow_http,
            allow_cross_host_redirects=config.allow_cross_host_redirects,
            timeout=policy.idle_timeout,
            retry_delay=policy.time_between_retries,
            user_agent=USER_AGENT,
        )
        fetched = await fetch_head(
            info.firmware_url, settings, HeadReader(), expected_size=info.size
        )
        logger.debug("preflight: archive head of %d bytes", fetched.bytes_read)
        warning = clock_warning(self._wall_clock(), fetched.date, fetched.age)
        if warning is not None:  # applying does not depend on the clock: go on
            logger.warning("preflight: %s; updating anyway", warning)
        unsafe = external and "--unsafe" in config.fwup_extra_options
        root_device = self._root_device() if self._root_device is not None else None
        await asyncio.to_thread(
            _check_archive, fetched.head, keys, environ, devpath, config.fwup_task,
            unsafe=unsafe, external=external, sysfs=self._sysfs, root_device=root_device,
        )  # fmt: skip

    async def _check_staging(self) -> None:
        """A ``data_path`` that cannot hold the resume journal costs only the resume:
        it is turned off for this update (with a warning), except on a metered link,
        where losing it means downloading everything again (``no_space``)."""
        config = self.link.config
        problem = await asyncio.to_thread(staging_problem, config.data_path, self._staging_min_free)
        if problem is None:
            return
        if config.update.metered:
            raise PreflightError(
                f"{problem} (a metered link needs the resume journal)", code="no_space"
            )
        logger.warning("preflight: %s: this update runs without resume", problem)
        self._resume = False
        await asyncio.to_thread(drop_journal, str(Path(config.data_path) / JOURNAL_NAME))

    # -- archives -------------------------------------------------------------------

    def _downloader(self, url: str, size: int | None, **options: Any) -> Downloader:
        """A downloader configured from the link's config (TLS, retries, proxy, redirects)."""
        return Downloader.from_config(
            url,
            self.link.config,
            expected_size=size,
            environ=self._environ,
            allow_http=self._allow_http,
            **options,
        )

    async def _download_archive(self, info: ArchiveInfo) -> Path:
        link = self.link
        config = link.config
        keys = decode_public_keys(link.archive_public_keys or link.fwup_public_keys)
        if not keys:
            raise UpdateError("refusing an unverified archive: no public keys are configured")
        directory = Path(config.data_path) / "archives"
        name = os.path.basename(info.url.split("?", 1)[0].rstrip("/")) or (info.uuid or "archive")
        target = directory / name
        partial = directory / f"{name}.download"
        verifier = Engine(mode="verify", public_keys=keys)
        downloader = self._downloader(info.url, info.size)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        frames: list[Frame] = []
        # a .download left by an interrupted run is resumed: re-verify its bytes, fetch the rest
        resume_from = await asyncio.to_thread(_resumable_size, partial, info.size)
        if resume_from:
            logger.info("archive %s: resuming from byte %d", info.uuid or info.url, resume_from)
            try:
                frames += await asyncio.to_thread(_feed_file, verifier, partial, resume_from)
            except Exception:
                await asyncio.to_thread(partial.unlink, missing_ok=True)
                raise
            downloader.restart_at(resume_from)
        with open(partial, "ab" if resume_from else "wb") as out:
            try:
                async with contextlib.aclosing(downloader.chunks()) as chunks:
                    async for chunk in chunks:
                        await asyncio.to_thread(out.write, chunk)
                        frames += await asyncio.to_thread(verifier.feed, chunk)
                frames += await asyncio.to_thread(verifier.finish)
            except (DownloadError, asyncio.CancelledError):
                raise  # keep the .download: the next offer resumes it
            except BaseException:
                await asyncio.to_thread(partial.unlink, missing_ok=True)
                raise
        outcome = next((f for f in frames if f.type in ("OK", "ER")), None)
        if outcome is None or outcome.type != "OK":
            partial.unlink(missing_ok=True)
            text = outcome.text if outcome is not None else "no result"
            raise VerificationError(f"archive verification failed: {text}")
        await asyncio.to_thread(os.replace, partial, target)
        logger.info("archive %s stored at %s", info.uuid or info.url, target)
        return target


def _check_archive(
    head: ArchiveHead,
    keys: list[bytes],
    environ: Mapping[str, str],
    devpath: str,
    task_prefix: str,
    *,
    unsafe: bool,
    external: bool,
    sysfs: str = SYSFS,
    root_device: int | None = None,
) -> None:
    """The archive-head checks of preflight (blocking: reads the destination and sysfs).
    With an external fwup whose task choice preflight cannot know, the task checks
    are left to fwup."""
    primitives = cast(Primitives, nhlink._native)
    check_signature(head, keys, primitives)
    conf = parse_head(head, environ, check_version=not external)
    destination = ReadOnlyDestination(devpath)
    try:
        task = choose_task(
            conf, task_prefix, destination, primitives, unsafe=unsafe, external=external
        )
        if task is None:
            return
        check_actions(task, unsafe=unsafe, fwup_actions=external)
        if destination.is_block_device:
            running = running_root_partitions(sysfs, root_device)
            check_running_slot(conf, task, destination, running)
        check_room(conf, task, destination)
    finally:
        destination.close()


def _resumable_size(partial: Path, size: int | None) -> int:
    """Bytes of an earlier ``.download`` worth resuming (0: start over)."""
    try:
        have = partial.stat().st_size
    except OSError:
        return 0
    return have if size is not None and 0 < have < size else 0


def _feed_file(verifier: Engine, path: Path, length: int) -> list[Frame]:
    """Feed the first ``length`` bytes of ``path`` to ``verifier``."""
    frames: list[Frame] = []
    with open(path, "rb") as source:
        while length > 0 and (chunk := source.read(min(length, 1 << 20))):
            frames += verifier.feed(chunk)
            length -= len(chunk)
    return frames


class _MessageQueue:
    """Delivers applier messages to ``Client.handle_fwup_message`` in order, off the pipeline."""

    def __init__(self, link: NervesHubLink) -> None:
        self._link = link
        self._queue: asyncio.Queue[FwupMessage | None] = asyncio.Queue()
        self.last_error: tuple[int, str] | None = None
        """The applier's ``ER`` frame ``(code, text)``, once there is one."""
        self._task = asyncio.ensure_future(self._run())

    def put(self, message: UpdateMessage) -> None:
        if message.kind == "error":
            self.last_error = (message.value, message.text)
        self._queue.put_nowait(message)

    async def close(self) -> None:
        """Deliver what is queued, then stop."""
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while (message := await self._queue.get()) is not None:
            await call_client(self._link.client.handle_fwup_message, message, default=None)
