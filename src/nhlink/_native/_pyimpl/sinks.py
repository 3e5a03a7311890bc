"""Where a ZipStream entry's uncompressed bytes go: skip, collect, hash, chunks or raw_write."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from nhlink._native._pyimpl.cache import BlockCache
from nhlink._native._pyimpl.layout import BLOCK_SIZE
from nhlink._native._pyimpl.ziprecords import resource_name
from nhlink.errors import ArchiveError


class Sink:
    """Base sink: sees every chunk of one entry, then ``finish()`` once its checks passed."""

    #: The stream hands each chunk to the caller as a ``DataChunk``.
    emits_chunks = False

    def __init__(self) -> None:
        #: Bytes this sink counts as written (``ZipStream.units``).
        self.units = 0

    def consume(self, chunk: memoryview) -> None:
        """Take the next chunk of uncompressed data."""

    def finish(self) -> None:
        """The entry ended and its CRC and sizes are right."""

    def digest(self) -> bytes | None:
        """BLAKE2b-256 of the data, for the sinks that hash."""
        return None

    def collected(self) -> bytes | None:
        """The data, for the collect sink."""
        return None


class SkipSink(Sink):
    """Inflate and CRC only."""


class CollectSink(Sink):
    """Keep the bytes in memory, up to ``limit``; ``name`` is the entry's printable name."""

    def __init__(self, name: str, limit: int) -> None:
        super().__init__()
        self._name = name
        self._limit = limit
        self._data = bytearray()

    def consume(self, chunk: memoryview) -> None:
        if len(self._data) + len(chunk) > self._limit:
            raise ArchiveError(f"ZIP: '{self._name}' is larger than {self._limit} bytes")
        self._data += chunk

    def collected(self) -> bytes | None:
        return bytes(self._data)


class HashSink(Sink):
    """BLAKE2b-256 over the data (fwup -V)."""

    def __init__(self) -> None:
        super().__init__()
        self._hash = hashlib.blake2b(digest_size=32)

    def consume(self, chunk: memoryview) -> None:
        self._hash.update(chunk)

    def digest(self) -> bytes | None:
        return self._hash.digest()


class ChunksSink(HashSink):
    """Hash, and hand every chunk to the caller (path_write, pipe_write, fat_write)."""

    emits_chunks = True

    def consume(self, chunk: memoryview) -> None:
        super().consume(chunk)
        self.units += len(chunk)


class BlockPadder:
    """Turn increasing (offset, bytes) writes into whole 512-byte blocks, like fwup's pad-to-block writer.

    Every block that receives at least one data byte is written whole; the bytes
    of it that no write covered are zeros. Writes reach the cache as
    ``streamed`` writes of whole, aligned blocks only, so what the cache sees
    does not depend on how the data was chunked.
    """

    def __init__(self, cache: BlockCache) -> None:
        self._cache = cache
        self._block = bytearray(BLOCK_SIZE)
        self._block_offset = 0
        self._fill = 0  # bytes of self._block in use (gaps already zeroed)

    def write(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset``; offsets never go backwards."""
        if self._fill:
            block_end = self._block_offset + BLOCK_SIZE
            if offset >= block_end:
                self.flush()
            else:
                data, offset = self._add_to_block(offset, data)
                if not data:
                    return
        head = offset % BLOCK_SIZE
        if head:
            self._block_offset = offset - head
            self._fill = 0
            data, offset = self._add_to_block(offset, data)
            if not data:
                return
        whole = len(data) - len(data) % BLOCK_SIZE
        if whole:
            self._cache.write(offset, data[:whole], streamed=True)
        if whole < len(data):
            self._block_offset = offset + whole
            self._fill = 0
            self._add_to_block(offset + whole, data[whole:])

    def _add_to_block(self, offset: int, data: memoryview) -> tuple[memoryview, int]:
        """Copy what fits into the pending block; write the block when full; return the rest."""
        at = offset - self._block_offset
        self._block[self._fill : at] = bytes(at - self._fill)
        take = min(BLOCK_SIZE - at, len(data))
        self._block[at : at + take] = data[:take]
        self._fill = at + take
        if self._fill == BLOCK_SIZE:
            self._cache.write(self._block_offset, self._block, streamed=True)
            self._fill = 0
        return data[take:], offset + take

    def flush(self) -> None:
        """Write the pending partial block, zero padded."""
        if self._fill:
            self._block[self._fill :] = bytes(BLOCK_SIZE - self._fill)
            self._cache.write(self._block_offset, self._block, streamed=True)
            self._fill = 0


class RawWriteSink(HashSink):
    """fwup's raw_write: data runs of the sparse map at ``offset + position``, holes skipped.

    ``name`` is the entry's printable name (``ziprecords.printable_name``).
    """

    def __init__(
        self,
        name: str,
        cache: BlockCache,
        offset: int,
        sparse_map: Sequence[int] | None,
        expected_size: int,
    ) -> None:
        super().__init__()
        runs = list(sparse_map) if sparse_map else [expected_size]
        if any(r < 0 for r in runs) or sum(runs[0::2]) != expected_size:
            raise ValueError("the sparse map's data runs must add up to expected_size")
        self._name = name
        self._expected = expected_size
        self._offset = offset
        self._padder = BlockPadder(cache)
        # (start in the resource, length) of each data run, empty ones dropped.
        self._data_runs: list[tuple[int, int]] = []
        position = 0
        for index, length in enumerate(runs):
            if index % 2 == 0 and length:
                self._data_runs.append((position, length))
            position += length
        self._extent = position
        self._ending_hole = runs[-1] if len(runs) % 2 == 0 else 0
        self._run = 0
        self._in_run = 0

    def consume(self, chunk: memoryview) -> None:
        room = self._expected - self.units
        if len(chunk) > room:
            self._place(chunk[:room])
            raise ArchiveError(
                f"raw_write: '{resource_name(self._name)}' is larger than its declared length"
            )
        self._place(chunk)

    def _place(self, chunk: memoryview) -> None:
        super().consume(chunk)
        self.units += len(chunk)
        while chunk:
            start, length = self._data_runs[self._run]
            take = min(length - self._in_run, len(chunk))
            self._padder.write(self._offset + start + self._in_run, chunk[:take])
            chunk = chunk[take:]
            self._in_run += take
            if self._in_run == length:
                self._run += 1
                self._in_run = 0

    def finish(self) -> None:
        if self._ending_hole:
            zeros = min(BLOCK_SIZE, self._ending_hole)
            self._padder.write(self._offset + self._extent - zeros, memoryview(bytes(zeros)))
        self._padder.flush()
