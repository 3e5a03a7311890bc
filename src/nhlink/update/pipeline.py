"""The streaming pipeline: download -> verify -> apply, with no temporary file.

Two coroutines joined by a small bounded queue: the *receiver* pulls chunks
from the :class:`~nhlink.aio.downloader.Downloader`, passes them through the
:class:`~nhlink.update.verify.StreamVerifier` (which holds unverified parts
and asks for corrupt ones again; hashlib releases the GIL while it hashes)
and queues what may be applied; the *applier side* hands queued pieces to an
:class:`Applier`. When the queue is
full the receiver stops reading the socket, so a slow writer slows the
server down instead of filling memory (at most ``queue_depth`` batches plus
the verifier's held parts are in memory).

:class:`EngineApplier` runs the built-in engine in a worker thread: the
native backend releases the GIL, so the event loop (websocket heartbeats,
the download itself) keeps running while the flash is written.

Resume (see docs/architecture.md, "Resume across restarts"): :func:`prepare_resume`
turns a matching :class:`~nhlink.update.journal.UpdateJournal` into an engine
resumed at its checkpoint and hooks the engine's checkpoints to the journal;
``stream_update(start=, skip=)`` then downloads and verifies from ``start`` and
drops the ``skip`` bytes that were applied before the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from nhlink.errors import NHLinkError
from nhlink.fwup.engine import CHECKPOINT_PERIOD, Checkpoint, CheckpointCallback
from nhlink.fwup.frames import Frame
from nhlink.update.errors import UpdateError
from nhlink.update.journal import OfferIdentity, ResumePoint, UpdateJournal, resume_point
from nhlink.update.verify import PartMismatch, StreamVerifier

if TYPE_CHECKING:
    from nhlink.aio.downloader import Downloader

logger = logging.getLogger("nhlink.update.pipeline")

QUEUE_DEPTH = 2
FrameCallback = Callable[[Frame], None]
Piece = bytes | bytearray | memoryview
T = TypeVar("T")


class Applier(Protocol):
    """Where the verified bytes go. Frames (``PR``/``WN``/``ER``/``OK``) are reported
    through a callback given when the applier is made; ``outcome`` is the ``OK`` or
    ``ER`` frame once there is one."""

    @property
    def outcome(self) -> Frame | None: ...

    async def feed(self, pieces: Sequence[Piece]) -> None:
        """Apply the next pieces; returns when they are consumed (or an outcome arrived)."""

    async def finish(self) -> None:
        """The input is complete: wait for the outcome."""

    async def abort(self, reason: str) -> None:
        """Stop without finishing (never reaches on-finish) because of ``reason``;
        safe to call more than once."""


class EngineLike(Protocol):
    """What :class:`EngineApplier` uses of :class:`nhlink.fwup.engine.Engine`."""

    done: bool

    def feed(self, data: Piece) -> list[Frame]: ...

    def finish(self) -> list[Frame]: ...

    def abort(self, message: str) -> list[Frame]: ...


@runtime_checkable
class ResumableEngine(Protocol):
    """What resuming needs of :class:`nhlink.fwup.engine.Engine`."""

    on_checkpoint: CheckpointCallback | None
    on_commit: Callable[[], None] | None
    checkpoint_period: float

    @property
    def destination(self) -> str | None: ...

    def resume(self, checkpoint: Checkpoint, *, expected_uuid: str | None = None) -> None: ...


class EngineApplier:
    """The built-in engine, fed in its own worker thread."""

    def __init__(self, engine: EngineLike, on_frame: FrameCallback) -> None:
        self._engine = engine
        self._on_frame = on_frame
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nhlink-apply")
        self._running: asyncio.Future[list[Frame]] | None = None
        self._outcome: Frame | None = None
        self._closed = False

    @property
    def outcome(self) -> Frame | None:
        return self._outcome

    @property
    def engine(self) -> EngineLike:
        return self._engine

    async def feed(self, pieces: Sequence[Piece]) -> None:
        if self._outcome is None and not self._closed:
            await self._deliver(self._run(lambda: self._feed_all(pieces)))

    async def finish(self) -> None:
        if self._outcome is None and not self._closed:
            await self._deliver(self._run(self._engine.finish))
        self._close()

    async def abort(self, reason: str) -> None:
        if self._closed:
            return
        await self._settle()
        if not self._engine.done:
            logger.info("aborting the apply (%s): pending writes dropped, on-error runs", reason)
            await self._deliver(self._run(lambda: self._engine.abort(reason)))
        self._close()

    def _feed_all(self, pieces: Sequence[Piece]) -> list[Frame]:
        frames: list[Frame] = []
        for piece in pieces:
            if self._engine.done:
                break
            frames += self._engine.feed(piece)
        return frames

    def _run(self, work: Callable[[], T]) -> asyncio.Future[T]:
        future = asyncio.get_running_loop().run_in_executor(self._executor, work)
        self._running = future  # type: ignore[assignment]
        return future

    async def _deliver(self, future: asyncio.Future[list[Frame]]) -> None:
        # shield: a cancelled caller must not lose track of the thread's work
        frames = await asyncio.shield(future)
        for frame in frames:
            if frame.type in ("OK", "ER") and self._outcome is None:
                self._outcome = frame
            self._on_frame(frame)

    async def _settle(self) -> None:
        """Wait for work still running in the thread (after a cancellation)."""
        if self._running is not None and not self._running.done():
            with contextlib.suppress(Exception):
                await asyncio.wait([self._running])

    def _close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False)


async def stream_update(
    downloader: Downloader,
    verifier: StreamVerifier,
    applier: Applier,
    *,
    on_received: Callable[[int], None] | None = None,
    queue_depth: int = QUEUE_DEPTH,
    start: int = 0,
    skip: int = 0,
) -> Frame:
    """Run the pipeline to its end; returns the applier's ``OK`` or ``ER`` frame.

    ``start``: the file offset the download (and ``verifier``, made for the bytes
    from there) begins at; ``skip``: verified bytes after it not to apply (a resume).

    Raises :class:`~nhlink.update.errors.DownloadError` or
    :class:`~nhlink.update.errors.VerificationError` when the bytes cannot be
    had or do not verify; the applier is then aborted (never finished), so
    the device keeps booting what it booted.
    """
    queue: asyncio.Queue[list[Piece] | None] = asyncio.Queue(queue_depth)
    if start:
        downloader.restart_at(start)
    to_skip = skip

    def drop_skipped(ready: list[Piece]) -> list[Piece]:
        nonlocal to_skip
        while to_skip and ready:
            first = memoryview(ready[0])
            if len(first) <= to_skip:
                to_skip -= len(first)
                ready.pop(0)
            else:
                ready[0], to_skip = first[to_skip:], 0
        return ready

    async def receive() -> None:
        async with contextlib.aclosing(downloader.chunks()) as chunks:
            async for chunk in chunks:
                if applier.outcome is not None:
                    return
                try:
                    ready: list[Piece] = list(
                        verifier.push(chunk, downloader.position - len(chunk) - start)
                    )
                except PartMismatch as mismatch:
                    logger.warning("%s; fetching it again", mismatch)
                    ready = list(mismatch.ready)
                    downloader.restart_at(start + mismatch.offset)
                ready = drop_skipped(ready)
                if on_received is not None:
                    on_received(downloader.position)
                if ready:
                    await queue.put(ready)
        final: list[Piece] = drop_skipped(list(verifier.finish()))
        if final:
            await queue.put(final)
        await queue.put(None)

    async def apply() -> None:
        while True:
            batch = await queue.get()
            if batch is None:
                await applier.finish()
                return
            while not queue.empty():  # coalesce what is already waiting
                more = queue.get_nowait()
                if more is None:
                    await applier.feed(batch)
                    if applier.outcome is None:
                        await applier.finish()
                    return
                batch += more
            await applier.feed(batch)
            if applier.outcome is not None:
                return

    receiver = asyncio.ensure_future(receive())
    writer = asyncio.ensure_future(apply())
    try:
        done, _ = await asyncio.wait([receiver, writer], return_when=asyncio.FIRST_COMPLETED)
        if receiver in done:
            receiver.result()  # raises the download or verification error
            await writer
        else:
            writer.result()
            if not receiver.done():  # the applier stopped early (ER): no more bytes needed
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiver
    except BaseException as exc:
        for task in (receiver, writer):
            task.cancel()
        await asyncio.gather(receiver, writer, return_exceptions=True)
        await applier.abort(str(exc) or type(exc).__name__)
        raise
    outcome = applier.outcome
    if outcome is None:
        await applier.abort("the applier ended without a result")
        raise UpdateError("the applier ended without a result")
    return outcome


async def prepare_resume(
    journal: UpdateJournal | None,
    offer: OfferIdentity,
    applier: Applier,
    make_applier: Callable[[], Awaitable[Applier]],
    *,
    checkpoint_period: float = CHECKPOINT_PERIOD,
) -> tuple[Applier, ResumePoint | None]:
    """Resume the built-in engine of ``applier`` from a matching journal, and journal its
    checkpoints from now on (at most one per ``checkpoint_period`` seconds). Returns the applier to use (a new one from ``make_applier``
    when the journal's head or task was rejected) and the resume point, if any.
    Without a journal, or with an applier that cannot resume, an old journal is removed.
    """
    if journal is None:
        return applier, None
    engine = _resumable(applier)
    if engine is None or engine.destination is None:
        await asyncio.to_thread(journal.remove)
        return applier, None
    destination = engine.destination
    point: ResumePoint | None = None
    checkpoint = await asyncio.to_thread(journal.load, offer, destination)
    if checkpoint is not None:
        try:
            await asyncio.to_thread(
                functools.partial(engine.resume, checkpoint, expected_uuid=offer.uuid)
            )
        except NHLinkError as exc:
            await asyncio.to_thread(
                journal.discard, f"the archive or the task does not fit ({exc})"
            )
            await applier.abort("resume rejected")
            applier = await make_applier()
            engine = _resumable(applier)
        else:
            point = resume_point(offer, checkpoint)
            logger.info(
                "resuming update %s at archive byte %d (download from byte %d, %d resources done)",
                offer.uuid,
                checkpoint.offset,
                point.start,
                len(checkpoint.completed),
            )
    if point is None:
        await asyncio.to_thread(journal.remove)
    if engine is not None and engine.destination is not None:
        engine.on_checkpoint = functools.partial(journal.record, offer, engine.destination)
        engine.checkpoint_period = checkpoint_period
        engine.on_commit = journal.remove  # on-finish may switch slots: never resume past it
    return applier, point


def _resumable(applier: Applier) -> ResumableEngine | None:
    if isinstance(applier, EngineApplier) and isinstance(applier.engine, ResumableEngine):
        return applier.engine
    return None
