"""Delta updates: an on-resource entry holding an xdelta3 (VCDIFF) patch instead of the resource.

NervesHub's delta .fw files keep meta.conf's ``length`` and ``blake2b-256``
of the full (target) resource while the archive entry holds a patch against
the ``delta-source-*`` region of the destination: ``delta-source-raw-offset``
/ ``-count`` (a block range, normally the active slot) or
``delta-source-fat-offset`` / ``-path`` (a file in the FAT filesystem at that
block offset). fwup treats an entry as a patch exactly when the handler has a
delta source and the entry's size differs from ``length``. The decoded
bytes go to the handler's data consumer as a full resource would, and the
size and BLAKE2b-256 checks apply to them.

Source reads go through the block cache, so they see pending writes; a raw
source overlapping the raw_write target is refused (decoding would read bytes
it already overwrote). A FAT source file is read whole before the target
file is opened (fat_write may replace it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

from nhlink._native._pyimpl.sinks import RawWriteSink
from nhlink._native.events import EntryEnd
from nhlink.errors import ArchiveError, TaskError
from nhlink.fwup.actions import ActionContext, DataConsumer, RawWrite
from nhlink.fwup.metaconf import Call, DeltaSource
from nhlink.fwup.partitions import BLOCK_SIZE
from nhlink.fwup.primitives import BlockCacheAPI, ZipStreamAPI

log = logging.getLogger("nhlink.fwup.delta")


class _Reader(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...


class _Decoder(Protocol):
    @property
    def target_size(self) -> int: ...
    def feed(self, data: bytes | bytearray | memoryview) -> None: ...
    def finish(self) -> None: ...


_DecoderFactory = Callable[..., _Decoder]
PRE_DELTA_FWUP_VERSION = "1.5.0"  # fwup added xdelta3 delta updates in 1.6.0
_SUPPORTED = ("raw_write", "fat_write", "path_write", "pipe_write")
_ADLER_MISMATCH = "VCDIFF: adler32 mismatch"
MAX_SOURCE_END = 1 << 63
"""A raw delta source must end below this (byte offsets stay far from uint64 wrap-around)."""


def delta_supported(primitives: object | None = None) -> bool:
    """Whether the backend (default: the loaded one) can decode delta resources."""
    if primitives is None:
        import nhlink._native

        primitives = nhlink._native
    return callable(getattr(primitives, "VcdiffDecoder", None))


class _BytesReader:
    """A FAT source file held in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def _raw_source(delta: DeltaSource, ctx: ActionContext, name: str) -> tuple[_Reader, int, int]:
    if delta.raw_options:
        raise TaskError(f"delta-source-raw-options '{delta.raw_options}' are not supported")
    if delta.raw_offset is None or delta.raw_count is None:
        raise TaskError("delta-source-raw-offset and delta-source-raw-count must both be set")
    if delta.raw_offset < 0 or delta.raw_count < 0:
        raise TaskError("delta-source-raw-offset and delta-source-raw-count must not be negative")
    offset, size = delta.raw_offset * BLOCK_SIZE, delta.raw_count * BLOCK_SIZE
    end = _destination_end(ctx.cache)
    if offset + size > (MAX_SOURCE_END if end is None else min(end, MAX_SOURCE_END)):
        raise TaskError(
            f"delta source of '{name}' lies beyond the destination "
            f"(bytes {offset}..{offset + size}, destination size {ctx.cache.size})"
        )
    return ctx.cache, offset, size


def _destination_end(cache: BlockCacheAPI) -> int | None:
    """Where the destination ends for sure: a block device's size (a regular file reads zeros
    past its end, and fwup-made images stop after their last written segment)."""
    return cache.size if cache.is_block_device else None


def _fat_source(delta: DeltaSource, ctx: ActionContext) -> tuple[_Reader, int, int]:
    if delta.fat_offset is None or delta.fat_path is None:
        raise TaskError("delta-source-fat-offset and delta-source-fat-path must both be set")
    volume = ctx.fat_sessions().open(delta.fat_offset)
    entry = volume.lookup(delta.fat_path)
    if entry is None or entry.is_dir:
        raise TaskError(f"delta source file '{delta.fat_path}' not found in the FAT filesystem")
    data = volume.read_file(entry)
    return _BytesReader(data), 0, len(data)


def _check_no_overlap(consumer: RawWrite, offset: int, size: int) -> None:
    start = consumer.offset * BLOCK_SIZE
    end = start + max(consumer.resource.total_size, 1)
    if offset < end and start < offset + size:
        raise TaskError(f"delta source overlaps the raw_write target of '{consumer.resource.name}'")


class DeltaConsumer:
    """Feeds the entry's patch bytes to a VCDIFF decoder; the decoded bytes go to the action.

    ``open_inner`` makes the action's own consumer; it is called after the
    source was resolved (a FAT source is read before fat_write opens its target).
    """

    def __init__(
        self,
        call: Call,
        ctx: ActionContext,
        open_inner: Callable[[], DataConsumer],
        delta: DeltaSource,
    ) -> None:
        if call.name not in _SUPPORTED:
            raise TaskError(f"delta updates are not supported by {call.name}")
        resource = ctx.require_resource(call)
        if delta.raw_offset is not None or delta.raw_count is not None:
            reader, offset, size = _raw_source(delta, ctx, resource.name)
        elif delta.fat_offset is not None or delta.fat_path is not None:
            reader, offset, size = _fat_source(delta, ctx)
        else:
            raise TaskError(f"delta source of '{resource.name}' is incomplete")
        inner = open_inner()
        self.resource = resource
        self.action = call.name
        self.inner = inner
        self.raw_sink: RawWriteSink | None = None
        self.hasher = hashlib.blake2b(digest_size=32)
        if isinstance(inner, RawWrite):
            if reader is ctx.cache:
                _check_no_overlap(inner, offset, size)
            self.raw_sink = RawWriteSink(
                "data/" + resource.name,
                cast(Any, inner.cache),
                inner.offset * BLOCK_SIZE,
                resource.sparse_map,
                resource.data_size,
            )
        factory = cast(_DecoderFactory, ctx.primitives.VcdiffDecoder)  # type: ignore[attr-defined]
        self.decoder = factory(self._target, reader, offset, size)
        log.info(
            "delta update of %s: source %d bytes at %d, target %d bytes",
            resource.name,
            size,
            offset,
            resource.data_size,
        )

    def _target(self, data: bytes) -> None:
        if self.raw_sink is not None:
            self.raw_sink.consume(memoryview(data))
            return
        if self.decoder.target_size + len(data) > self.resource.data_size:
            raise TaskError(
                f"{self.action}: '{self.resource.name}' is larger than its declared length"
            )
        self.hasher.update(data)
        self.inner.chunk(data)

    def begin(self, zs: ZipStreamAPI) -> None:
        zs.sink_chunks()

    def chunk(self, data: bytes) -> None:
        try:
            self.decoder.feed(data)
        except ArchiveError as error:
            self._checksum_is_digest(error)
            raise

    def progress(self, zs: ZipStreamAPI) -> int:
        return self.decoder.target_size

    def _checksum_is_digest(self, error: ArchiveError) -> None:
        """A window checksum mismatch means the target will not match its BLAKE2b: say so now."""
        if str(error).startswith(_ADLER_MISMATCH):
            log.warning(
                "%s: %s (is the delta source the expected firmware?)", self.resource.name, error
            )
            raise TaskError(
                f"{self.action} detected blake2b mismatch on '{self.resource.name}'"
            ) from error

    def end(self, entry: EntryEnd) -> None:
        try:
            self.decoder.finish()
        except ArchiveError as error:
            self._checksum_is_digest(error)
            raise
        size = self.decoder.target_size
        if self.raw_sink is not None:
            self.raw_sink.finish()
            digest = self.raw_sink.digest()
        else:
            digest = self.hasher.digest()
        self.inner.end(EntryEnd(entry.name, size, entry.crc32, digest, None))

    def abort(self) -> None:
        self.inner.abort()
