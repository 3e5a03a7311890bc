"""The task interpreter: fwup's apply (``-a``), verify (``-V``), list (``-l``) and metadata (``-m``).

Push driven: the caller feeds the .fw bytes as they arrive and forwards the
returned frames; the ZipStream of the backend does the byte work. Order of an
apply (spec 2.4): signature and meta.conf, open the destination, select the
task, on-init, each archive entry through its on-resource handler, the
missing-resource check, on-finish, flush, ``PR high``, ``OK``. After an error
once the destination is open, pending cache writes are discarded and on-error
runs on a clean cache.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from nhlink._native.events import (
    ArchiveEnd,
    CheckpointReady,
    DataChunk,
    EntryEnd,
    EntryStart,
    Event,
)
from nhlink.errors import ArchiveError, MetaConfError, NHLinkError, SignatureError, TaskError
from nhlink.fwup import actions, frames
from nhlink.fwup.actions import ActionContext, DataConsumer, RawWrite
from nhlink.fwup.frames import Frame
from nhlink.fwup.identity import archive_metadata, format_metadata, meta_nickname, meta_uuid
from nhlink.fwup.metaconf import (
    Call,
    FileResource,
    MetaConf,
    ResourceHandler,
    Task,
    parse_int,
    parse_meta_conf,
)
from nhlink.fwup.primitives import BlockCacheAPI, Primitives
from nhlink.fwup.progress import Progress
from nhlink.fwup.tasks import RequirementContext, select_task

log = logging.getLogger("nhlink.fwup.engine")

FWUP_VERSION = "1.16.0"  # the fwup release whose behaviour the engine reproduces
MODES = ("apply", "verify", "list", "metadata")
SIGNATURE_ENTRY = "meta.conf.ed25519"
SIGNATURE_SIZE = 64
META_CONF_ENTRY = "meta.conf"
META_CONF_MIN, META_CONF_MAX = 10, 50000

_NOT_FIRST = "Expecting meta.conf to be at the beginning of the archive"
_VERIFY_TEXT = {
    "good": "Valid archive with a good signature",
    "unverified": "Valid archive with an unverified signature. Specify a public key to authenticate.",
    "none": "Valid archive without a signature",
}


def resource_name(entry_name: str) -> str:
    """Archive path -> resource name: ``data/x`` is ``x``, anything else gets a leading ``/``."""
    return entry_name[5:] if entry_name.startswith("data/") else "/" + entry_name


def version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in text.strip().split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits or 0))
        if len(digits) < len(part):
            break
    return tuple(parts)


def check_fwup_version(required: str) -> None:
    """Fail when meta.conf's ``require-fwup-version`` is newer than what the engine implements."""
    if version_tuple(required) > version_tuple(FWUP_VERSION):
        raise MetaConfError(
            f"Firmware archive requires fwup version {required} or later "
            f"(this applier implements fwup {FWUP_VERSION})"
        )


@dataclass(slots=True)
class _ActiveEntry:
    """A resource entry being processed by its on-resource handler."""

    name: str
    resource: FileResource
    handler: ResourceHandler | None
    consumer: DataConsumer | None = None
    after: list[Call] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where an interrupted apply can continue: an archive entry boundary, or a deflate
    block boundary inside a raw_write entry (native backend).

    Everything before ``offset`` is applied and on the media (the cache was
    flushed and the destination fsynced). ``head`` holds the raw archive bytes
    of the signature and meta.conf entries, so a resume checks the signature
    again; ``units`` is the progress done by the finished resources and calls.
    Inside an entry, ``entry_header`` is its local header (fed again on resume),
    ``entry_state`` the ZipStream's state (``ZipStream.checkpoint_state``) and
    ``entry_extent`` the bytes of the resource's extent written so far.
    """

    offset: int
    head: bytes
    task: str
    completed: tuple[str, ...]
    units: int
    entry_header: bytes | None = None
    entry_state: bytes | None = None
    entry_extent: int = 0


CheckpointCallback = Callable[[Checkpoint], None]
CHECKPOINT_INTERVAL = 4 << 20
"""Archive bytes at least between two checkpoints: each flushes and fsyncs (a few ms to
tens of ms), and a resume fetches again at most this plus one resource plus a part."""
CHECKPOINT_PERIOD = 2.0
"""Seconds at least between the checkpoints of an update (set by the update pipeline;
the engine's default is 0, bytes only): a fast update loses little when cut and should
not pay a flush + fsync per ``checkpoint_interval``; a slow one still checkpoints often."""
MID_ENTRY_MIN_INTERVAL = 1 << 20
"""Archive bytes at least between checkpoints inside an entry (whatever ``checkpoint_interval``):
each also writes the 32 KiB inflate window into the journal."""
BLOCK = 512
SEGMENT_SIZE = 128 * 1024  # the block cache's segment: trim works on whole ones
_RESUMABLE_INIT = frozenset(
    {
        "info",
        "trim",
        "raw_memset",
        "mbr_write",
        "gpt_write",
        "uboot_clearenv",
        "uboot_setenv",
        "uboot_unsetenv",
        "uboot_recover",
        "reboot_param",
    }
)
_RESUMABLE_RESOURCE = frozenset(
    {"raw_write", "raw_memset", "info", "uboot_setenv", "uboot_unsetenv", "uboot_clearenv"}
)


def task_is_resumable(task: Task) -> bool:
    """Whether an apply of ``task`` can continue from a checkpoint: on-init and the
    on-resource handlers only use actions whose effects are all on the media after
    a flush (no FAT sessions, files, pipes or programs; delta resources are not covered yet)."""
    if any(call.name not in _RESUMABLE_INIT for call in task.on_init):
        return False
    return all(
        call.name in _RESUMABLE_RESOURCE and handler.delta is None
        for handler in task.on_resource.values()
        for call in handler.calls
    )


def _default_primitives() -> Primitives:
    import nhlink._native

    return cast(Primitives, nhlink._native)


class Engine:
    """One fwup run over one archive; see the module docstring.

    ``mode``: ``apply`` (needs ``destination`` and the ``task`` prefix),
    ``verify``, ``list`` or ``metadata`` (``metadata_key`` prints one value).
    ``public_keys``: raw 32-byte Ed25519 keys; any one verifying suffices.
    ``unsafe`` allows path_write, pipe_write, execute and require-execute.
    ``environ`` (default ``os.environ``) feeds ``${...}`` in meta.conf.
    ``verify_writes`` and ``max_size`` go to the BlockCache; progress runs
    from ``progress_low`` to ``progress_high``; ``primitives`` is the backend
    module (default ``nhlink._native``).

    ``feed``/``finish``/``abort`` return frames; the first of an apply is
    ``PR low``. Success ends with ``PR high``, ``OK``; failure with ``ER``.
    Once ``done``, nothing more is consumed or emitted.
    """

    def __init__(
        self,
        *,
        mode: str,
        destination: str | os.PathLike[str] | None = None,
        task: str | None = None,
        public_keys: Sequence[bytes] = (),
        unsafe: bool = False,
        environ: Mapping[str, str] | None = None,
        verify_writes: bool | None = None,
        max_size: int | None = None,
        reboot_param_path: str | None = None,
        progress_low: int = 0,
        progress_high: int = 100,
        metadata_key: str | None = None,
        primitives: object | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        checkpoint_interval: int = CHECKPOINT_INTERVAL,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "apply" and (destination is None or task is None):
            raise ValueError("apply needs a destination and a task")
        self.mode = mode
        self.done = False
        self.succeeded = False
        self.task_name: str | None = None
        self._destination = None if destination is None else os.fspath(destination)
        self._task_prefix = task or ""
        self._public_keys = tuple(bytes(key) for key in public_keys)
        self._unsafe = unsafe
        self._environ = dict(os.environ if environ is None else environ)
        self._verify_writes = verify_writes
        self._max_size = max_size
        self._reboot_param_path = reboot_param_path
        self._metadata_key = metadata_key
        self._p = cast(Primitives, primitives) if primitives is not None else _default_primitives()
        self._zs = self._p.ZipStream()
        self._progress = Progress(progress_low, progress_high)
        self._out: list[Frame] = [self._progress.start()] if mode == "apply" else []
        # header: "first" -> ["signature" -> "after-signature"] -> "meta" -> "body"
        self._stage = "first"
        self._buffer = bytearray()
        self._signature: bytes | None = None
        self._signature_status = "none"
        self._meta_mtime: int | None = None
        self._conf: MetaConf | None = None
        self._cache: BlockCacheAPI | None = None
        self._task: Task | None = None
        self._ctx: ActionContext | None = None
        self._entry: _ActiveEntry | None = None
        self._seen: set[str] = set()
        self._stream_failed = False
        self.on_checkpoint = on_checkpoint
        """Called (in the feeding thread) at each checkpoint; see :class:`Checkpoint`."""
        self.checkpoint_interval = checkpoint_interval
        self.mid_entry_min_interval = MID_ENTRY_MIN_INTERVAL
        """Archive bytes at least between checkpoints inside an entry (tests lower it)."""
        self.checkpoint_period = 0.0
        """Seconds at least between checkpoints (0: the byte spacing alone decides)."""
        self.clock: Callable[[], float] = time.monotonic
        self._last_checkpoint_at: float | None = None  # clock() of the last checkpoint
        self.on_commit: Callable[[], None] | None = None
        """Called right before on-finish, the commit point: from there on a checkpoint must
        not be resumed (on-finish may switch the active slot); the journal is dropped."""
        self.meta_uuid: str | None = None
        self._position = 0  # archive bytes consumed by the ZipStream
        self._head = bytearray()  # raw archive bytes of the signature and meta.conf entries
        self._resume: Checkpoint | None = None
        self._last_checkpoint = 0
        self._due_checkpoint: Checkpoint | None = None
        self._completed: list[str] = []
        self._entry_state: bytes | None = None  # a mid-entry state to restore (resume)

    @property
    def destination(self) -> str | None:
        return self._destination

    def resume(self, checkpoint: Checkpoint, *, expected_uuid: str | None = None) -> None:
        """Continue an interrupted apply from ``checkpoint`` (call before any ``feed``).

        The saved head is parsed again (signature, meta.conf), the requirements must
        still select the saved task, on-init does not run again, the on-init trims
        are replayed in the cache outside what the finished resources wrote, and
        the next ``feed`` must start at ``checkpoint.offset``. A head or task that
        does not fit raises :class:`~nhlink.errors.NHLinkError` and leaves the
        engine done, with nothing written.
        """
        if self.mode != "apply" or self._position or self._stage != "first":
            raise RuntimeError("resume() must come before any feed of an apply")
        self._resume = checkpoint
        try:
            self._pump(memoryview(checkpoint.head))
            if self.done or self._stage != "body" or self._task is None:
                raise ArchiveError("the saved archive head is incomplete")
            if expected_uuid is not None and self.meta_uuid != expected_uuid:
                raise ArchiveError(
                    f"the saved archive head is firmware {self.meta_uuid}, not {expected_uuid}"
                )
            self._position = self._last_checkpoint = checkpoint.offset
            if checkpoint.entry_header is not None:
                self._resume_entry(checkpoint)
        except (NHLinkError, OSError) as error:
            self._abandon()
            self._out = []
            if isinstance(error, NHLinkError):
                raise
            raise ArchiveError(f"cannot resume: {error}") from None
        self._position = self._last_checkpoint = checkpoint.offset

    def _resume_entry(self, checkpoint: Checkpoint) -> None:
        """Feed the saved local header again; its raw_write restores the saved state."""
        assert checkpoint.entry_header is not None
        if checkpoint.entry_state is None:
            raise ArchiveError("the saved checkpoint has an entry header without its state")
        self._entry_state = checkpoint.entry_state
        self._pump(memoryview(checkpoint.entry_header))
        if self.done or self._entry is None or self._entry_state is not None:
            raise ArchiveError("the saved entry header does not fit the checkpoint")
        self._position = checkpoint.offset  # the header is before it: arm from here
        self._arm_mid_entry_checkpoint()

    # ------------------------------------------------------------------ driving

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Process the next piece of the archive; returns the frames it produced."""
        if self.done:
            return []
        view = memoryview(data)
        self._guarded(lambda: self._pump(view))
        return self._take_frames()

    def finish(self) -> list[Frame]:
        """The input ended: complete (or fail) the run."""
        if not self.done:
            self._guarded(lambda: self._handle(self._zs.end_of_input()))
        if not self.done:  # defensive: the archive end always finishes a run
            self._fail("Unexpected end of archive")
        return self._take_frames()

    def abort(self, message: str) -> list[Frame]:
        """Fail the run for a reason outside the archive (e.g. broken input framing)."""
        if not self.done:
            self._guarded(lambda: self._fail(message))
        return self._take_frames()

    def _pump(self, view: memoryview) -> None:
        while not self.done:
            try:
                consumed, event = self._zs.feed(view)
            except NHLinkError:
                # fwup never writes the chunk its archive reader failed on, so the
                # progress of this feed is not reported (spec 3, 07a_tampered_flip).
                self._stream_failed = True
                raise
            if self._stage != "body":
                self._head += view[:consumed]
            self._position += consumed
            view = view[consumed:]
            if event is None:
                break
            self._handle(event)
        self._report_progress()

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except (NHLinkError, OSError) as error:
            self._fail(str(error) or type(error).__name__)
        except BaseException:
            self._abandon()
            raise

    def _take_frames(self) -> list[Frame]:
        out, self._out = self._out, []
        return out

    def _handle(self, event: Event) -> None:
        if isinstance(event, EntryStart):
            self._entry_start(event)
        elif isinstance(event, DataChunk):
            self._data(event.data)
        elif isinstance(event, EntryEnd):
            self._entry_end(event)
        elif isinstance(event, ArchiveEnd):
            self._archive_end()
        elif isinstance(event, CheckpointReady):
            self._mid_entry_checkpoint()

    # ------------------------------------------------------------------ outcome

    def _succeed(self, text: str) -> None:
        self._out.append(frames.success(text))
        self.done = self.succeeded = True
        self._release_stream()

    def _release_stream(self) -> None:
        """Free the stream's buffers and helper thread now, not whenever the engine is
        collected; and drop the action context, whose ``warn`` points back at the engine
        (a cycle that kept every finished engine alive until a full GC pass)."""
        self._zs.close()
        self._ctx = None
        self._entry = None

    def _fail(self, message: str) -> None:
        log.debug("failing: %s", message)
        if not self._stream_failed:
            self._report_progress()  # what was done before the error, as fwup reports it
        if self._entry is not None and self._entry.consumer is not None:
            self._entry.consumer.abort()
        self._entry = None
        if self._cache is not None:
            self._cache.discard()
            if self._task is not None:
                self._run_on_error(self._task)
            try:
                self._cache.flush()
            except (NHLinkError, OSError) as error:
                log.warning("flushing after on-error failed: %s", error)
            self._close_cache()
        self._out.append(frames.error(message))
        self.done = True
        self._release_stream()

    def _run_on_error(self, task: Task) -> None:
        assert self._ctx is not None
        self._ctx.resource = None
        for call in task.on_error:
            try:
                actions.run(call, self._ctx)
            except (NHLinkError, OSError) as error:
                log.warning("on-error %s failed: %s", call.name, error)

    def _abandon(self) -> None:
        """An unexpected exception: drop pending writes and close, then let it propagate."""
        self.done = True
        if self._entry is not None and self._entry.consumer is not None:
            self._entry.consumer.abort()
        if self._cache is not None:
            self._cache.discard()
            self._close_cache()
        self._release_stream()

    def _close_cache(self) -> None:
        assert self._cache is not None
        cache, self._cache = self._cache, None
        cache.close()

    def _warn(self, text: str) -> None:
        self._out.append(frames.warning(text))

    # ------------------------------------------------------------------ header: signature, meta.conf

    def _header_start(self, start: EntryStart) -> None:
        if self._stage == "first" and start.name == SIGNATURE_ENTRY:
            if start.size is not None and start.size != SIGNATURE_SIZE:
                raise ArchiveError(f"Unexpected meta.conf.ed25519 size: {start.size}")
            self._stage = "signature"
        elif self._stage in ("first", "after-signature") and start.name == META_CONF_ENTRY:
            if start.size is not None and not META_CONF_MIN <= start.size < META_CONF_MAX:
                raise ArchiveError(f"Unexpected meta.conf size: {start.size}")
            self._stage = "meta"
            self._meta_mtime = start.mtime
        else:
            raise ArchiveError(_NOT_FIRST)
        self._buffer = bytearray()
        self._zs.sink_chunks()

    def _header_data(self, data: bytes) -> None:
        self._buffer += data
        if self._stage == "signature" and len(self._buffer) > SIGNATURE_SIZE:
            raise ArchiveError(f"Unexpected meta.conf.ed25519 size: {len(self._buffer)}")
        if self._stage == "meta" and len(self._buffer) >= META_CONF_MAX:
            raise ArchiveError(f"Unexpected meta.conf size: {len(self._buffer)}")

    def _header_end(self) -> None:
        data = bytes(self._buffer)
        self._buffer = bytearray()
        if self._stage == "signature":
            if len(data) != SIGNATURE_SIZE:
                raise ArchiveError(f"Unexpected meta.conf.ed25519 size: {len(data)}")
            self._signature = data
            self._stage = "after-signature"
            return
        if len(data) < META_CONF_MIN:
            raise ArchiveError(f"Unexpected meta.conf size: {len(data)}")
        self._stage = "body"
        self._meta_conf_ready(data)

    def _check_signature(self, meta: bytes) -> None:
        if not self._public_keys:
            self._signature_status = "none" if self._signature is None else "unverified"
            return
        if self._signature is None:
            raise SignatureError("Expecting signed firmware archive.")
        signature = self._signature
        if not any(self._p.verify_ed25519(signature, meta, key) for key in self._public_keys):
            raise SignatureError(
                "Firmware archive's meta.conf fails digital signature verification."
            )
        self._signature_status = "good"

    def _meta_conf_ready(self, meta: bytes) -> None:
        self._check_signature(meta)
        environ = dict(self._environ)
        environ["FWUP_META_UUID"] = self.meta_uuid = meta_uuid(meta)
        nickname = meta_nickname(meta)
        if nickname is not None:
            environ["FWUP_META_NICKNAME"] = nickname
        try:
            text = meta.decode("utf-8")
        except UnicodeDecodeError:
            raise MetaConfError("meta.conf is not valid UTF-8") from None
        conf = self._conf = parse_meta_conf(text, environ)
        check_fwup_version(conf.require_fwup_version)
        if self.mode == "list":
            self._succeed("".join(f"{task.name}\n" for task in conf.tasks))
        elif self.mode == "metadata":
            metadata = archive_metadata(meta, conf.metadata, self._meta_mtime)
            key = self._metadata_key
            if key is None:
                self._succeed(format_metadata(metadata))
            elif key in metadata:
                self._succeed(metadata[key] + "\n")
            else:
                raise MetaConfError(f"Metadata key '{key}' not found")
        elif self.mode == "apply":
            self._start_apply(conf)

    # ------------------------------------------------------------------ apply

    def _start_apply(self, conf: MetaConf) -> None:
        assert self._destination is not None
        self._last_checkpoint_at = self.clock()  # the checkpoint period counts from here
        self._cache = self._p.BlockCache(
            self._destination,
            cache_size=conf.block_cache_size_mb << 20,
            verify_writes=self._verify_writes,
            max_size=self._max_size,
        )
        if self._resume is not None:
            task = self._task = self._resumed_task(conf, self._resume)
        else:
            requirements = RequirementContext(conf, self._cache, self._p, self._unsafe)
            task = self._task = select_task(self._task_prefix, requirements)
        self.task_name = task.name
        self._ctx = ActionContext(
            conf,
            self._cache,
            self._p,
            warn=self._warn,
            unsafe=self._unsafe,
            reboot_param_path=self._reboot_param_path,
        )
        self._progress.total = self._total_units(conf, task, self._ctx)
        if self._resume is None:
            self._run_calls(task.on_init)
            return
        # on-init ran before the checkpoint and its writes are on the media
        self._seen = set(self._resume.completed)
        self._completed = list(self._resume.completed)
        self._progress.done = self._resume.units
        self._replay_trims(conf, task, self._resume)

    def _resumed_task(self, conf: MetaConf, checkpoint: Checkpoint) -> Task:
        """The saved task, if the requirements still select it: they are what keeps the
        write away from the running slot (on-init edits only the target's variables)."""
        assert self._cache is not None
        requirements = RequirementContext(conf, self._cache, self._p, self._unsafe)
        task = select_task(self._task_prefix, requirements)
        if task.name != checkpoint.task:
            raise TaskError(f"the saved task '{checkpoint.task}' is now '{task.name}'")
        if not task_is_resumable(task):
            raise TaskError(f"task '{task.name}' cannot be resumed")
        return task

    def _replay_trims(self, conf: MetaConf, task: Task, checkpoint: Checkpoint) -> None:
        """Mark again what on-init trimmed where the remaining resources will write, so their
        partly written segments get zeros around the data as in one run; never on segments
        the finished resources, the written part of the resource in progress or on-init's
        own writes hold (on the media since then)."""
        assert self._cache is not None
        completed = checkpoint.completed
        kept = [_segments(extent) for extent in _init_extents(conf, task)]
        partial = _partial_extent(conf, task, checkpoint)
        if partial is not None:
            kept.append(_segments(partial))
        remaining: list[tuple[int, int]] = []
        for name, handler in task.on_resource.items():
            resource = conf.resources.get(name)
            if resource is None:
                continue
            for call in handler.calls:
                extent = _written_extent(call, resource)
                if extent is not None:
                    (kept if name in completed else remaining).append(_segments(extent))
        for call in task.on_init:
            if call.name != "trim" or len(call.args) != 2:
                continue
            offset, count = (parse_int(arg) * BLOCK for arg in call.args)
            for target_start, target_end in remaining:
                span = (max(offset, target_start), min(offset + count, target_end))
                for start, end in _subtract(span, kept):
                    self._cache.trim(start, end - start)

    def _total_units(self, conf: MetaConf, task: Task, ctx: ActionContext) -> int:
        total = sum(actions.units(call, ctx) for call in task.on_init + task.on_finish)
        for name, handler in task.on_resource.items():
            ctx.resource = conf.resources.get(name)
            if ctx.resource is None:
                log.info("no file-resource for on-resource %s", name)
                continue
            total += sum(actions.units(call, ctx) for call in handler.calls)
        ctx.resource = None
        return total

    def _run_calls(self, calls: Sequence[Call]) -> None:
        assert self._ctx is not None
        for call in calls:
            actions.run(call, self._ctx)
            self._progress.add(actions.units(call, self._ctx))
            self._report_progress()

    def _report_progress(self) -> None:
        if self.mode != "apply" or self._task is None or self.done:
            return
        in_flight = 0
        if self._entry is not None and self._entry.consumer is not None:
            in_flight = self._entry.consumer.progress(self._zs)
        frame = self._progress.update(in_flight)
        if frame is not None:
            self._out.append(frame)

    def _apply_start(self, name: str, start: EntryStart) -> None:
        assert self._task is not None and self._conf is not None and self._ctx is not None
        handler = self._task.on_resource.get(name)
        if handler is None:
            return
        resource = self._conf.resources.get(name)
        if resource is None:
            raise TaskError(f"file-resource '{name}' is missing from meta.conf")
        self._seen.add(name)
        # an xdelta3 patch entry is decoded by fwup/delta.py
        self._ctx.delta = actions.patch_delta(handler.delta, start.size, resource)
        entry = self._entry = _ActiveEntry(name, resource, handler)
        self._ctx.resource = resource
        calls = list(handler.calls)
        while calls:
            call = calls.pop(0)
            if actions.is_consumer(call):
                entry.consumer = actions.open_consumer(call, self._ctx)
                entry.consumer.begin(self._zs)
                break
            self._run_calls([call])
        entry.after = calls
        mid_entry = start.method == 8 and self._mid_entry_resumable(entry)
        if self._entry_state is not None:
            if not mid_entry:
                raise ArchiveError(f"cannot resume inside resource '{name}'")
            self._entry_state, state = None, self._entry_state
            extent = self._zs.restore_checkpoint(state)  # type: ignore[attr-defined]
            if self._resume is None or extent != self._resume.entry_extent:
                # the replayed trims kept exactly the saved extent out
                raise ArchiveError("the saved checkpoint does not fit the entry")
        if mid_entry:  # armed even without a callback yet: a resume gets it afterwards
            self._arm_mid_entry_checkpoint()

    def _mid_entry_resumable(self, entry: _ActiveEntry) -> bool:
        """A raw_write that is its handler's first call (nothing before it runs twice), in a
        resumable task, with a ZipStream that can checkpoint inside an entry (native)."""
        return (
            isinstance(entry.consumer, RawWrite)
            and entry.handler is not None
            and entry.handler.calls[0].name == "raw_write"
            and self._task is not None
            and task_is_resumable(self._task)
            and hasattr(self._zs, "checkpoint_after")
        )

    def _arm_mid_entry_checkpoint(self) -> None:
        spacing = max(self.checkpoint_interval, self.mid_entry_min_interval)
        remaining = max(0, self._last_checkpoint + spacing - self._position)
        self._zs.checkpoint_after(remaining)  # type: ignore[attr-defined]

    def _period_elapsed(self) -> bool:
        """Whether ``checkpoint_period`` has passed since the last checkpoint (or the
        first call, which starts the count)."""
        if self.checkpoint_period <= 0:
            return True
        now = self.clock()
        if self._last_checkpoint_at is None:
            self._last_checkpoint_at = now
        return now - self._last_checkpoint_at >= self.checkpoint_period

    def _mid_entry_checkpoint(self) -> None:
        """A deflate block boundary inside a raw_write entry: checkpoint there (when the
        period allows), re-arm."""
        if self._entry is None:
            return
        if self.on_checkpoint is not None and self._period_elapsed():
            assert self._task is not None
            header, state, extent = self._zs.checkpoint_state()  # type: ignore[attr-defined]
            self._put_on_media()
            checkpoint = Checkpoint(
                offset=self._position,
                head=bytes(self._head),
                task=self._task.name,
                completed=tuple(self._completed),
                units=self._progress.done,
                entry_header=header,
                entry_state=state,
                entry_extent=extent,
            )
            self._last_checkpoint = self._position
            self._last_checkpoint_at = self.clock()
            self.on_checkpoint(checkpoint)
        else:
            self._last_checkpoint = self._position
        self._arm_mid_entry_checkpoint()

    def _apply_end(self, end: EntryEnd) -> None:
        entry, self._entry = self._entry, None
        if entry is None:
            return
        if entry.consumer is not None:
            assert entry.handler is not None
            if (
                entry.handler.delta is not None
                and end.size != entry.resource.data_size
                and (self._ctx is None or self._ctx.delta is None)
            ):  # a patch whose local header had no size: already written as a full resource
                raise TaskError(f"delta entry '{entry.name}' has no size in its local header")
            self._entry = entry  # still in flight while its checks run
            units = entry.consumer.progress(self._zs)
            entry.consumer.end(end)
            self._entry = None
            self._progress.add(units)
        self._run_calls(entry.after)
        assert self._ctx is not None
        self._ctx.resource = None
        self._completed.append(entry.name)
        if (
            self.on_checkpoint is not None
            and self._position - self._last_checkpoint >= self.checkpoint_interval
            and self._task is not None
            and task_is_resumable(self._task)
            and self._period_elapsed()
        ):
            # taken when the next entry starts: after the last one only on-finish is
            # left, and a flush + fsync there would cost time and protect nothing
            self._due_checkpoint = Checkpoint(
                offset=self._position,
                head=bytes(self._head),
                task=self._task.name,
                completed=tuple(self._completed),
                units=self._progress.done,
            )

    def _take_due_checkpoint(self) -> None:
        """Put everything applied so far on the media, then report the entry boundary
        recorded when the previous entry ended."""
        checkpoint, self._due_checkpoint = self._due_checkpoint, None
        if checkpoint is None or self.on_checkpoint is None:
            return
        self._put_on_media()
        self._last_checkpoint = checkpoint.offset
        self._last_checkpoint_at = self.clock()
        self.on_checkpoint(checkpoint)

    def _put_on_media(self) -> None:
        """Flush the block cache and fsync the destination."""
        assert self._cache is not None and self._destination
        self._cache.flush()
        fd = os.open(self._destination, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _apply_finish(self) -> None:
        assert self._task is not None and self._cache is not None
        for name in self._task.on_resource:
            if name not in self._seen:
                raise TaskError(f"Resource {name} not found in archive")
        if self._ctx is not None and self._ctx.fat is not None:
            self._ctx.fat.unmount_all()  # fwup closes its FAT volumes before on-finish
        if self.on_commit is not None:
            self.on_commit()
        self._run_calls(self._task.on_finish)
        self._cache.flush()
        self._close_cache()
        self._out.append(self._progress.finish())
        self._succeed("")

    # ------------------------------------------------------------------ verify

    def _verify_start(self, name: str) -> None:
        assert self._conf is not None
        resource = self._conf.resources.get(name)
        if resource is None:
            return
        self._entry = _ActiveEntry(name, resource, None)
        self._zs.sink_hash()

    def _verify_end(self, end: EntryEnd) -> None:
        entry, self._entry = self._entry, None
        if entry is None:
            return
        resource = entry.resource
        if end.size != resource.data_size:
            raise ArchiveError(
                f"Detected size mismatch for {resource.name} (expected {resource.data_size}, got {end.size})"
            )
        expected = resource.blake2b_256
        if end.blake2b is None or expected is None or end.blake2b.hex() != expected:
            raise ArchiveError(f"Detected blake2b digest mismatch for {resource.name}")
        self._seen.add(entry.name)

    def _verify_finish(self) -> None:
        assert self._conf is not None
        for task in self._conf.tasks:
            for name in task.on_resource:
                if name not in self._seen:
                    raise ArchiveError(f"Resource {name} not found in archive")
        self._succeed(_VERIFY_TEXT[self._signature_status])

    # ------------------------------------------------------------------ events

    def _entry_start(self, start: EntryStart) -> None:
        if self._stage != "body":
            self._header_start(start)
            return
        name = resource_name(start.name)
        if name in ("", "/"):
            return
        if self.mode == "verify":
            self._verify_start(name)
        else:
            self._take_due_checkpoint()
            self._apply_start(name, start)

    def _data(self, data: bytes) -> None:
        if self._stage != "body":
            self._header_data(data)
        elif self._entry is not None and self._entry.consumer is not None:
            self._entry.consumer.chunk(data)

    def _entry_end(self, end: EntryEnd) -> None:
        if self._stage != "body":
            self._header_end()
        elif self.mode == "verify":
            self._verify_end(end)
        else:
            self._apply_end(end)

    def _archive_end(self) -> None:
        if self._stage != "body":
            raise ArchiveError(_NOT_FIRST)
        if self.mode == "verify":
            self._verify_finish()
        else:
            self._apply_finish()


def _written_extent(call: Call, resource: FileResource) -> tuple[int, int] | None:
    """The destination bytes a finished on-resource action wrote (None: not a media write)."""
    if call.name == "raw_write" and call.args:
        start = parse_int(call.args[0]) * BLOCK
        return start, start + -(-resource.total_size // BLOCK) * BLOCK
    if call.name == "raw_memset" and len(call.args) == 3:
        start = parse_int(call.args[0]) * BLOCK
        return start, start + parse_int(call.args[1]) * BLOCK
    return None


def _partial_extent(conf: MetaConf, task: Task, checkpoint: Checkpoint) -> tuple[int, int] | None:
    """The destination bytes the raw_write of a mid-entry checkpoint's resource wrote."""
    header = checkpoint.entry_header
    if header is None or len(header) < 30:
        return None
    name_length = int.from_bytes(header[26:28], "little")
    name = resource_name(header[30 : 30 + name_length].decode("utf-8", "replace"))
    handler = task.on_resource.get(name)
    if handler is None or name not in conf.resources or not handler.calls:
        return None
    call = handler.calls[0]
    if call.name != "raw_write" or not call.args:
        return None
    start = parse_int(call.args[0]) * BLOCK
    return start, start + -(-checkpoint.entry_extent // BLOCK) * BLOCK


def _init_extents(conf: MetaConf, task: Task) -> list[tuple[int, int]]:
    """Destination bytes on-init's own writes may hold: memsets, partition tables (their
    primary copies) and the U-Boot environments."""
    extents: list[tuple[int, int]] = []
    for call in task.on_init:
        if call.name == "raw_memset" and len(call.args) == 3:
            start = parse_int(call.args[0]) * BLOCK
            extents.append((start, start + parse_int(call.args[1]) * BLOCK))
        elif call.name in ("mbr_write", "gpt_write"):
            extents.append((0, 34 * BLOCK))
    for env in conf.uboot_environments.values():
        count = (env.block_count or 0) * BLOCK
        for block in (env.block_offset, env.block_offset_redund):
            if block is not None:
                extents.append((block * BLOCK, block * BLOCK + count))
    return extents


def _segments(extent: tuple[int, int]) -> tuple[int, int]:
    """``extent`` widened to whole block cache segments."""
    start, end = extent
    return start - start % SEGMENT_SIZE, -(-end // SEGMENT_SIZE) * SEGMENT_SIZE


def _subtract(span: tuple[int, int], holes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``span`` outside every range in ``holes`` (half-open ranges)."""
    pieces = [span]
    for hole_start, hole_end in holes:
        next_pieces: list[tuple[int, int]] = []
        for start, end in pieces:
            if hole_end <= start or hole_start >= end:
                next_pieces.append((start, end))
                continue
            if start < hole_start:
                next_pieces.append((start, hole_start))
            if hole_end < end:
                next_pieces.append((hole_end, end))
        pieces = next_pieces
    return [(start, end) for start, end in pieces if end > start]
