"""fwup's block cache: 128 KiB segments at absolute offsets, LRU, per-block valid/dirty bits.

What reaches the media, and when, follows fwup (spec 6.3, 6.4):

* a segment that has only seen *streamed* writes (raw_write, raw_memset) since it
  entered the cache is written as soon as every one of its blocks is dirty;
* everything else waits for eviction (least recently used first) or ``flush()``;
  a partly written segment is then read-modify-written (blocks never written
  come from the media, or are zeros when the segment was trimmed);
* ``trim`` marks whole segments as zero without writing them; ``discard`` drops
  everything pending (what an error does before on-error runs).
"""

from __future__ import annotations

import os
from collections import OrderedDict

from nhlink._native._pyimpl.layout import (
    BLOCK_SIZE,
    BLOCKS_PER_SEGMENT,
    DEFAULT_CACHE_SIZE,
    SEGMENT_SIZE,
)
from nhlink._native._pyimpl.media import Media
from nhlink._native._pyimpl.segmentset import SegmentSet
from nhlink.errors import DestinationError

_ALL_BLOCKS = (1 << BLOCKS_PER_SEGMENT) - 1
_ZERO_SEGMENT = bytes(SEGMENT_SIZE)

Buffer = bytes | bytearray | memoryview


def _block_mask(first: int, end: int) -> int:
    """Bits for blocks ``[first, end)`` of a segment."""
    return ((1 << (end - first)) - 1) << first


def _missing_runs(valid: int) -> list[tuple[int, int]]:
    """Runs ``[first, end)`` of blocks whose valid bit is clear."""
    runs: list[tuple[int, int]] = []
    block = 0
    while block < BLOCKS_PER_SEGMENT:
        if valid >> block & 1:
            block += 1
            continue
        first = block
        while block < BLOCKS_PER_SEGMENT and not valid >> block & 1:
            block += 1
        runs.append((first, block))
    return runs


class _Segment:
    """One cached 128 KiB segment."""

    __slots__ = ("data", "dirty", "offset", "streamed", "valid")

    def __init__(self, offset: int, data: bytearray) -> None:
        self.offset = offset
        self.data = data
        self.valid = 0
        self.dirty = 0
        # Cleared by the first non-streamed write: such a segment is never written early.
        self.streamed = True


class BlockCache:
    """Write-back cache in front of a regular file or block device (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        verify_writes: bool | None = None,
        max_size: int | None = None,
    ) -> None:
        if max_size is not None and max_size < 0:
            raise ValueError("max_size must not be negative")
        self._path = os.fspath(path)
        self._capacity = max(1, cache_size // SEGMENT_SIZE)
        self._max_size = max_size
        self._media = Media(self._path)
        self._verify = self._media.is_block_device if verify_writes is None else verify_writes
        self._segments: OrderedDict[int, _Segment] = OrderedDict()  # least recently used first
        self._trimmed = SegmentSet()
        self._closed = False

    # -- properties --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """``max_size`` if given, else the device size, else the file's current size."""
        if self._max_size is not None:
            return self._max_size
        self._check_open()
        return self._media.size()

    @property
    def is_block_device(self) -> bool:
        """True when the destination is a block device."""
        return self._media.is_block_device

    def _hard_end(self) -> int | None:
        if self._max_size is not None:
            return self._max_size
        if self._media.is_block_device:
            return self._media.size()
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise DestinationError(f"{self._path} is closed")

    # -- public operations -------------------------------------------------------------------

    def write(self, offset: int, data: Buffer, streamed: bool = False) -> None:
        """Write through the cache; ``streamed`` lets complete segments go to the media at once."""
        self._check_open()
        view = memoryview(data).cast("B")
        if offset < 0:
            raise ValueError("offset must not be negative")
        if not view:
            return
        hard_end = self._hard_end()
        if hard_end is not None and offset + len(view) > hard_end:
            raise DestinationError(
                f"write past the end of {self._path} (offset {offset}, size {hard_end})"
            )
        pos = 0
        while pos < len(view):
            at = offset + pos
            start = at % SEGMENT_SIZE
            take = min(len(view) - pos, SEGMENT_SIZE - start)
            segment = self._segment(at - start)
            self._write_into(segment, start, view[pos : pos + take], streamed)
            pos += take

    def read(self, offset: int, length: int) -> bytes:
        """Read through the cache: pending data first, then the media (zeros when trimmed)."""
        self._check_open()
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        out = bytearray(length)
        pos = 0
        while pos < length:
            at = offset + pos
            start = at % SEGMENT_SIZE
            take = min(length - pos, SEGMENT_SIZE - start)
            segment = self._segment(at - start)
            self._make_valid(segment)
            out[pos : pos + take] = segment.data[start : start + take]
            pos += take
        return bytes(out)

    def trim(self, offset: int, length: int) -> None:
        """Mark the segments wholly inside the range as zero; drop pending data in them."""
        self._check_open()
        first = -(-offset // SEGMENT_SIZE)
        end = (offset + length) // SEGMENT_SIZE
        if length <= 0 or end <= first:
            return
        self._trimmed.add_range(first, end)
        for seg_offset in [o for o in self._segments if first <= o // SEGMENT_SIZE < end]:
            del self._segments[seg_offset]

    def flush(self) -> None:
        """Write every dirty segment, least recently used first; fsync block devices."""
        self._check_open()
        for segment in list(self._segments.values()):
            self._flush_segment(segment)
        if self._media.is_block_device:
            self._media.sync()

    def discard(self) -> None:
        """Drop every pending write and every trim mark."""
        self._segments.clear()
        self._trimmed.clear()

    def close(self) -> None:
        """Close the destination without flushing."""
        if self._closed:
            return
        self._closed = True
        self._segments.clear()
        self._media.close()

    def __del__(self) -> None:
        media = getattr(self, "_media", None)
        if media is not None:
            media.close()

    # -- segments ----------------------------------------------------------------------------

    def _segment(self, offset: int) -> _Segment:
        """The cached segment at ``offset``, loading it (and evicting the LRU one) if needed."""
        segment = self._segments.get(offset)
        if segment is not None:
            self._segments.move_to_end(offset)
            return segment
        if len(self._segments) >= self._capacity:
            _, victim = self._segments.popitem(last=False)
            self._flush_segment(victim)
            buffer = victim.data  # every block starts invalid, so the old bytes never show
        else:
            buffer = bytearray(SEGMENT_SIZE)
        segment = _Segment(offset, buffer)
        self._segments[offset] = segment
        return segment

    def _write_into(self, segment: _Segment, start: int, piece: memoryview, streamed: bool) -> None:
        end = start + len(piece)
        first_block = start // BLOCK_SIZE
        end_block = -(-end // BLOCK_SIZE)
        partial_head = start % BLOCK_SIZE and not segment.valid >> first_block & 1
        partial_tail = end % BLOCK_SIZE and not segment.valid >> (end_block - 1) & 1
        if partial_head or partial_tail:
            self._make_valid(segment)
        segment.data[start:end] = piece
        mask = _block_mask(first_block, end_block)
        segment.valid |= mask
        segment.dirty |= mask
        if not streamed:
            segment.streamed = False
        elif segment.streamed and segment.dirty == _ALL_BLOCKS:
            self._write_out(segment)

    def _make_valid(self, segment: _Segment) -> None:
        """Fill the blocks never written or read from the media (zeros if trimmed)."""
        if segment.valid == _ALL_BLOCKS:
            return
        if segment.offset // SEGMENT_SIZE in self._trimmed:
            media: bytes = _ZERO_SEGMENT
        else:
            media = self._media.read(segment.offset, SEGMENT_SIZE)
        if segment.valid == 0:
            segment.data[:] = media
        else:
            for first, end in _missing_runs(segment.valid):
                segment.data[first * BLOCK_SIZE : end * BLOCK_SIZE] = media[
                    first * BLOCK_SIZE : end * BLOCK_SIZE
                ]
        segment.valid = _ALL_BLOCKS

    def _flush_segment(self, segment: _Segment) -> None:
        if segment.dirty:
            self._make_valid(segment)
            self._write_out(segment)

    def _write_out(self, segment: _Segment) -> None:
        """Write a complete segment (cut at a hard end), verify it if asked, mark it clean."""
        length = SEGMENT_SIZE
        hard_end = self._hard_end()
        if hard_end is not None:
            length = max(0, min(SEGMENT_SIZE, hard_end - segment.offset))
        data = memoryview(segment.data)[:length]
        self._media.write(segment.offset, data)
        if self._verify and self._media.read(segment.offset, length) != data:
            raise DestinationError(f"write verification failed at offset {segment.offset}")
        segment.dirty = 0
        segment.valid = _ALL_BLOCKS
        self._trimmed.discard(segment.offset // SEGMENT_SIZE)
