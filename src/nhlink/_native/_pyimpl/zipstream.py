"""Push parser over a .fw byte stream: local headers, inflate, CRC-32, data descriptors.

The stream reads only local headers front to back, the way libarchive's
streaming reader does for fwup; the central directory marks the end.
"""

from __future__ import annotations

import enum
import re
import zlib
from collections.abc import Sequence

from nhlink._native._pyimpl import ziprecords as zr
from nhlink._native._pyimpl.cache import BlockCache
from nhlink._native._pyimpl.sinks import (
    ChunksSink,
    CollectSink,
    HashSink,
    RawWriteSink,
    Sink,
    SkipSink,
)
from nhlink._native.events import ArchiveEnd, DataChunk, EntryEnd, EntryStart, Event
from nhlink.errors import ArchiveError, NHLinkError

# At most this much compressed input per inflate call (zlib copies what it cannot use yet).
_INPUT_PIECE = 64 * 1024
# At most this much uncompressed output per inflate call, and per DataChunk.
_OUTPUT_CHUNK = 256 * 1024

_Z_BUF_ERROR = -5
_Z_DATA_ERROR = -3
_ZLIB_CODE = re.compile(r"Error (-?\d+)")


class _State(enum.Enum):
    HEADER = enum.auto()  # at an entry boundary, reading a local header
    SINK = enum.auto()  # EntryStart returned, the caller may choose a sink
    DATA = enum.auto()  # reading the entry's data
    DESCRIPTOR = enum.auto()  # reading the data descriptor
    CHECK = enum.auto()  # everything read, checks and EntryEnd pending
    END = enum.auto()  # central directory reached or end of input


def _decompression_failed(exc: zlib.error) -> ArchiveError:
    match = _ZLIB_CODE.search(str(exc))
    code = int(match.group(1)) if match else _Z_DATA_ERROR
    return ArchiveError(f"ZIP decompression failed ({code})")


def _output_before_error(inflater: zlib._Decompress, piece: bytes, max_out: int) -> bytes:
    """What inflating ``piece`` made before zlib failed (zlib's exception drops it).

    ``inflater`` is a copy taken before the failed call. The piece is replayed a byte of
    input at a time; the byte that fails once more a byte of output at a time, so the
    result is exactly the output before the corrupt point (what native inflate returns).
    """
    out = bytearray()
    for at in range(len(piece)):
        room = max_out - len(out)
        before = inflater.copy()
        try:
            made = inflater.decompress(piece[at : at + 1], room)
        except zlib.error:
            out += _output_by_byte(before, piece[at : at + 1], room)
            break
        out += made
        if len(made) == room:
            break  # the failed call stopped here too
    return bytes(out)


def _output_by_byte(inflater: zlib._Decompress, data: bytes, room: int) -> bytes:
    """Inflate ``data`` one output byte per call until zlib fails, stalls or ``room`` is full."""
    out = bytearray()
    while len(out) < room:
        try:
            made = inflater.decompress(data, 1)
        except zlib.error:
            break
        data = inflater.unconsumed_tail
        if not made and not data:
            break
        out += made
    return bytes(out)


class _Entry:
    """Progress through one entry."""

    def __init__(self, header: zr.LocalHeader) -> None:
        self.header = header
        self.name = header.name
        self.shown_name = header.shown_name  # for error messages
        self.consumed = 0  # compressed bytes read
        self.produced = 0  # uncompressed bytes delivered
        self.crc32 = 0
        self.descriptor: zr.DataDescriptor | None = None
        self.inflater: zlib._Decompress | None = None
        # Stored: exact data length. Deflate without descriptor: compressed length.
        self.input_limit: int | None = None
        # Upper bound on the uncompressed size (a non-zero header size, or any size without bit 3).
        self.bound: int | None = None
        if header.method == zr.METHOD_STORED:
            self.input_limit = self._stored_size()
            self.bound = self.input_limit
        else:
            self.inflater = zlib.decompressobj(-15)
            if not header.has_descriptor:
                self.input_limit = header.compressed_size
            if not header.has_descriptor or header.uncompressed_size:
                self.bound = header.uncompressed_size

    def _stored_size(self) -> int:
        h = self.header
        csize, usize = h.compressed_size, h.uncompressed_size
        if csize and usize and csize != usize:
            raise ArchiveError(f"ZIP: size mismatch for '{h.shown_name}'")
        size = csize or usize
        if h.has_descriptor and not size:
            raise ArchiveError(f"ZIP: stored entry '{h.shown_name}' has no size")
        return size


class ZipStream:
    """Push parser: ``feed(data) -> (consumed, event)``; see docs/architecture.md."""

    def __init__(self) -> None:
        self._state = _State.HEADER
        self._buffer = bytearray()  # header or descriptor bytes read so far
        self._record_offset = 0  # archive offset where the buffered record starts
        self._offset = 0  # archive bytes consumed
        self._entry: _Entry | None = None
        self._sink: Sink = SkipSink()
        self._units_done = 0
        self._error: NHLinkError | None = None

    def close(self) -> None:
        """Drop the stream's state now (idempotent); later calls raise."""
        if self._error is None:
            self._error = ArchiveError("ZipStream is closed")
        self._buffer = bytearray()
        self._entry = None
        self._sink = SkipSink()

    @property
    def units(self) -> int:
        """Bytes written by sinks so far (raw_write data bytes and chunks handed out)."""
        return self._units_done + (self._sink.units if self._entry is not None else 0)

    # -- sinks -------------------------------------------------------------------------------

    def _choose(self) -> _Entry:
        if self._state is not _State.SINK or self._entry is None:
            raise RuntimeError("a sink can only be chosen right after EntryStart")
        return self._entry

    def sink_skip(self) -> None:
        """Inflate and check the CRC only (the default)."""
        self._choose()
        self._sink = SkipSink()

    def sink_collect(self, limit: int) -> None:
        """Keep the data (returned in ``EntryEnd.data``); more than ``limit`` bytes raises."""
        entry = self._choose()
        self._sink = CollectSink(entry.shown_name, limit)

    def sink_hash(self) -> None:
        """BLAKE2b-256 over the data (``EntryEnd.blake2b``)."""
        self._choose()
        self._sink = HashSink()

    def sink_chunks(self) -> None:
        """Hash, and return the data as ``DataChunk`` events."""
        self._choose()
        self._sink = ChunksSink()

    def sink_raw_write(
        self,
        cache: BlockCache,
        offset: int,
        sparse_map: Sequence[int] | None,
        expected_size: int,
    ) -> None:
        """Hash, and write the data into ``cache`` the way fwup's raw_write does."""
        entry = self._choose()
        self._sink = RawWriteSink(entry.shown_name, cache, offset, sparse_map, expected_size)

    # -- input -------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[int, Event | None]:
        """Consume a prefix of ``data``; return how much and the next event (None: need more)."""
        self._raise_if_dead()
        view = memoryview(data).cast("B")
        start = self._offset
        try:
            event = self._run(view, start)
        except NHLinkError as exc:
            self._error = exc
            raise
        return self._offset - start, event

    def end_of_input(self) -> ArchiveEnd:
        """The input ended: fine at an entry boundary, an error inside an entry."""
        self._raise_if_dead()
        if self._state is _State.HEADER and not self._buffer:
            self._state = _State.END
        if self._state is _State.END:
            return ArchiveEnd()
        self._error = ArchiveError(f"ZIP decompression failed ({_Z_BUF_ERROR})")
        raise self._error

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise type(self._error)(str(self._error))

    def _run(self, view: memoryview, start: int) -> Event | None:
        """Advance through the states until an event is due or the input is used up."""
        while True:
            pos = self._offset - start
            state = self._state
            if state is _State.HEADER:
                event = self._read_header(view, pos)
                if event is not None or self._state is _State.HEADER:
                    return event
            elif state is _State.SINK:
                self._state = _State.DATA
            elif state is _State.DATA:
                chunk = self._read_data(view, pos)
                if chunk is not None:
                    return chunk
                if self._state is _State.DATA:
                    return None
            elif state is _State.DESCRIPTOR:
                self._read_descriptor(view, pos)
                if self._state is _State.DESCRIPTOR:
                    return None
            elif state is _State.CHECK:
                return self._finish_entry()
            else:
                self._offset += len(view) - pos
                return None

    def _fill(self, view: memoryview, pos: int, target: int) -> int:
        """Append input to the record buffer until it holds ``target`` bytes; return the new pos."""
        if not self._buffer:
            self._record_offset = self._offset
        take = min(target - len(self._buffer), len(view) - pos)
        if take > 0:
            self._buffer += view[pos : pos + take]
            self._offset += take
            pos += take
        return pos

    # -- records -----------------------------------------------------------------------------

    def _read_header(self, view: memoryview, pos: int) -> Event | None:
        buffer = self._buffer
        pos = self._fill(view, pos, zr.SIGNATURE_LEN)
        if len(buffer) < zr.SIGNATURE_LEN:
            return None
        signature = bytes(buffer[: zr.SIGNATURE_LEN])
        if signature in zr.END_SIGNATURES:
            buffer.clear()
            self._state = _State.END
            return ArchiveEnd()
        if signature != zr.LOCAL_HEADER_SIGNATURE:
            raise ArchiveError(f"ZIP: unexpected data at archive offset {self._record_offset}")
        pos = self._fill(view, pos, zr.LOCAL_HEADER_LEN)
        if len(buffer) < zr.LOCAL_HEADER_LEN:
            return None
        total = zr.local_header_length(buffer)
        pos = self._fill(view, pos, total)
        if len(buffer) < total:
            return None
        header = zr.parse_local_header(bytes(buffer))
        buffer.clear()
        entry = _Entry(header)
        self._entry = entry
        self._sink = SkipSink()
        self._state = _State.SINK
        size = entry.input_limit if header.method == zr.METHOD_STORED else entry.bound
        return EntryStart(header.name, header.method, size, header.mtime)

    def _read_descriptor(self, view: memoryview, pos: int) -> None:
        entry = self._current()
        pos = self._fill(view, pos, zr.SIGNATURE_LEN)
        if len(self._buffer) < zr.SIGNATURE_LEN:
            return
        total = zr.descriptor_length(self._buffer, entry.header.zip64)
        pos = self._fill(view, pos, total)
        if len(self._buffer) < total:
            return
        entry.descriptor = zr.parse_descriptor(bytes(self._buffer), entry.header.zip64)
        self._buffer.clear()
        self._state = _State.CHECK

    def _current(self) -> _Entry:
        assert self._entry is not None
        return self._entry

    # -- data --------------------------------------------------------------------------------

    def _data_done(self) -> None:
        self._state = _State.DESCRIPTOR if self._current().header.has_descriptor else _State.CHECK

    def _read_data(self, view: memoryview, pos: int) -> DataChunk | None:
        entry = self._current()
        if entry.inflater is None:
            return self._read_stored(entry, view, pos)
        return self._inflate(entry, entry.inflater, view, pos)

    def _read_stored(self, entry: _Entry, view: memoryview, pos: int) -> DataChunk | None:
        assert entry.input_limit is not None
        while True:
            take = min(entry.input_limit - entry.consumed, len(view) - pos, _OUTPUT_CHUNK)
            chunk = view[pos : pos + take]
            pos += take
            self._offset += take
            entry.consumed += take
            if entry.consumed == entry.input_limit:
                self._data_done()
            event = self._deliver(entry, chunk) if take else None
            if event is not None or self._state is not _State.DATA or pos == len(view):
                return event

    def _inflate(
        self, entry: _Entry, inflater: zlib._Decompress, view: memoryview, pos: int
    ) -> DataChunk | None:
        while True:
            available = len(view) - pos
            if entry.input_limit is not None:
                available = min(available, entry.input_limit - entry.consumed)
            piece = view[pos : pos + min(available, _INPUT_PIECE)]
            max_out = _OUTPUT_CHUNK
            if entry.bound is not None:
                # Never cross the bound inside a chunk; probe one byte past it at the end.
                max_out = min(max_out, entry.bound - entry.produced) or 1
            before = inflater.copy()
            try:
                out = inflater.decompress(piece, max_out)
            except zlib.error as exc:
                # As native: the output made before the corrupt point goes to the sink first.
                made = _output_before_error(before, bytes(piece), max_out)
                if made:
                    self._deliver(entry, made)
                raise _decompression_failed(exc) from None
            rest = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            used = len(piece) - len(rest)
            pos += used
            self._offset += used
            entry.consumed += used
            # As native: the output is delivered (and checked) before the size at the stream end.
            event = self._deliver(entry, out) if out else None
            if inflater.eof:
                if entry.input_limit is not None and entry.consumed != entry.input_limit:
                    raise ArchiveError(f"ZIP: size mismatch for '{entry.shown_name}'")
                self._data_done()
                return event
            if event is not None:
                return event
            if not out and not used:
                if entry.input_limit is not None and entry.consumed == entry.input_limit:
                    raise ArchiveError(f"ZIP: size mismatch for '{entry.shown_name}'")
                return None

    def _deliver(self, entry: _Entry, chunk: bytes | memoryview) -> DataChunk | None:
        """Check and count a chunk of uncompressed data and pass it to the sink."""
        entry.produced += len(chunk)
        if entry.bound is not None and entry.produced > entry.bound:
            raise ArchiveError(f"ZIP: '{entry.shown_name}' is larger than declared")
        entry.crc32 = zlib.crc32(chunk, entry.crc32)
        self._sink.consume(memoryview(chunk))
        if not self._sink.emits_chunks:
            return None
        return DataChunk(chunk if isinstance(chunk, bytes) else bytes(chunk))

    def _finish_entry(self) -> EntryEnd:
        entry = self._current()
        header = entry.header
        if entry.descriptor is not None:
            descriptor = entry.descriptor
            if (
                descriptor.compressed_size != entry.consumed
                or descriptor.uncompressed_size != entry.produced
            ):
                raise ArchiveError(f"ZIP: size mismatch for '{entry.shown_name}'")
            expected_crc = descriptor.crc32
        else:
            # Stored entries too: a zero usize beside a non-zero csize is a mismatch (as native).
            if entry.produced != header.uncompressed_size:
                raise ArchiveError(f"ZIP: size mismatch for '{entry.shown_name}'")
            expected_crc = header.crc32
        if entry.crc32 != expected_crc:
            raise ArchiveError(f"ZIP bad CRC: 0x{entry.crc32:x} should be 0x{expected_crc:x}")
        sink = self._sink
        sink.finish()
        self._units_done += sink.units
        self._entry = None
        self._sink = SkipSink()
        self._state = _State.HEADER
        return EntryEnd(entry.name, entry.produced, entry.crc32, sink.digest(), sink.collected())
