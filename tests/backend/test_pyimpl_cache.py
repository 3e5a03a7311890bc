"""BlockCache: what reaches the media and when (fwup spec 6.3, 6.4), on real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nhlink.errors import DestinationError

BLOCK = 512
SEGMENT = 128 * 1024


def media(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A 1 MiB file of 0xAA: eight segments."""
    path = tmp_path / "image.img"
    path.write_bytes(b"\xaa" * (8 * SEGMENT))
    return path


def pattern(length: int, seed: int) -> bytes:
    return bytes((seed + i * 7) % 251 for i in range(length))


def test_size_and_kind(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image)
    assert cache.size == 8 * SEGMENT
    assert cache.is_block_device is False
    cache.close()
    limited = backend.BlockCache(image, max_size=3 * SEGMENT)
    assert limited.size == 3 * SEGMENT
    limited.close()


def test_streamed_complete_segment_is_written_at_once(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image)
    data = pattern(SEGMENT, 1)
    cache.write(SEGMENT, data[: SEGMENT // 2], streamed=True)
    assert media(image, SEGMENT, SEGMENT) == b"\xaa" * SEGMENT
    cache.write(SEGMENT + SEGMENT // 2, data[SEGMENT // 2 :], streamed=True)
    assert media(image, SEGMENT, SEGMENT) == data  # before any flush
    cache.discard()
    cache.close()
    assert media(image, SEGMENT, SEGMENT) == data


def test_streamed_write_spanning_segments(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image)
    data = pattern(2 * SEGMENT + 4 * BLOCK, 2)
    cache.write(SEGMENT - 2 * BLOCK, data, streamed=True)
    # Only segment 1 is completely covered; segments 0 and 3 are partial and wait.
    assert media(image, SEGMENT, SEGMENT) == data[2 * BLOCK : 2 * BLOCK + SEGMENT]
    assert media(image, 0, SEGMENT) == b"\xaa" * SEGMENT
    assert media(image, 2 * SEGMENT, SEGMENT) == data[2 * BLOCK + SEGMENT : 2 * BLOCK + 2 * SEGMENT]
    assert media(image, 3 * SEGMENT, BLOCK) == b"\xaa" * BLOCK
    cache.flush()
    cache.close()
    assert media(image, SEGMENT - 2 * BLOCK, len(data)) == data


def test_partial_and_non_streamed_writes_wait_for_flush(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image)
    cache.write(0, pattern(SEGMENT, 3))  # a whole segment, but not streamed
    cache.write(2 * SEGMENT, pattern(BLOCK, 4), streamed=True)  # streamed, but partial
    assert media(image, 0, 3 * SEGMENT) == b"\xaa" * 3 * SEGMENT
    cache.flush()
    cache.close()
    assert media(image, 0, SEGMENT) == pattern(SEGMENT, 3)
    assert media(image, 2 * SEGMENT, 2 * BLOCK) == pattern(BLOCK, 4) + b"\xaa" * BLOCK


def test_metadata_write_keeps_its_segment_out_of_streaming(backend: Any, image: Path) -> None:
    """A segment that saw a non-streamed write is never written early, even when completed."""
    cache = backend.BlockCache(image)
    cache.write(0, b"\x01" * BLOCK)  # e.g. an MBR update
    cache.write(BLOCK, b"\x02" * (SEGMENT - BLOCK), streamed=True)
    assert media(image, 0, SEGMENT) == b"\xaa" * SEGMENT
    cache.discard()
    cache.flush()
    cache.close()
    assert media(image, 0, SEGMENT) == b"\xaa" * SEGMENT


def test_discard_leaves_the_media_untouched(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image)
    cache.write(0, pattern(3 * SEGMENT + 100, 5))
    cache.write(5 * SEGMENT, pattern(BLOCK, 6), streamed=True)
    cache.trim(6 * SEGMENT, SEGMENT)
    cache.discard()
    assert cache.read(6 * SEGMENT, BLOCK) == b"\xaa" * BLOCK  # trim marks dropped as well
    cache.flush()
    cache.close()
    assert image.read_bytes() == b"\xaa" * 8 * SEGMENT


def test_reads_see_pending_data_merged_with_the_media(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image)
    cache.write(SEGMENT + 3 * BLOCK, b"\x55" * BLOCK)
    got = cache.read(SEGMENT + 2 * BLOCK, 3 * BLOCK)
    assert got == b"\xaa" * BLOCK + b"\x55" * BLOCK + b"\xaa" * BLOCK
    # A write after the segment was read (and so became valid) still merges correctly.
    cache.write(SEGMENT + 4 * BLOCK, b"\x66" * BLOCK)
    cache.flush()
    cache.close()
    assert media(image, SEGMENT + 2 * BLOCK, 4 * BLOCK) == (
        b"\xaa" * BLOCK + b"\x55" * BLOCK + b"\x66" * BLOCK + b"\xaa" * BLOCK
    )


def test_unaligned_writes_keep_the_surrounding_bytes(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image)
    cache.write(SEGMENT - 10, b"\x01" * 30)
    cache.write(3 * SEGMENT + 700, b"\x02" * 5, streamed=True)
    assert cache.read(SEGMENT - 12, 34) == b"\xaa\xaa" + b"\x01" * 30 + b"\xaa\xaa"
    cache.flush()
    cache.close()
    content = image.read_bytes()
    assert content[SEGMENT - 12 : SEGMENT + 22] == b"\xaa\xaa" + b"\x01" * 30 + b"\xaa\xaa"
    assert content[3 * SEGMENT + 698 : 3 * SEGMENT + 707] == b"\xaa\xaa" + b"\x02" * 5 + b"\xaa\xaa"
    assert len(content) == 8 * SEGMENT


def test_lru_eviction_order_with_a_tiny_cache(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image, cache_size=2 * SEGMENT)
    a, b, c, d = (pattern(BLOCK, seed) for seed in range(10, 14))
    cache.write(0, a)
    cache.write(SEGMENT, b)
    cache.read(0, 1)  # segment 0 becomes the most recently used
    cache.write(2 * SEGMENT, c)  # evicts segment 1, the least recently used
    assert media(image, SEGMENT, BLOCK) == b
    assert media(image, 0, BLOCK) == b"\xaa" * BLOCK
    cache.write(3 * SEGMENT, d)  # evicts segment 0 (segment 2 is newer)
    assert media(image, 0, BLOCK) == a
    assert media(image, 2 * SEGMENT, BLOCK) == b"\xaa" * BLOCK
    cache.discard()
    cache.close()
    assert media(image, 2 * SEGMENT, BLOCK) == b"\xaa" * BLOCK
    assert media(image, 3 * SEGMENT, BLOCK) == b"\xaa" * BLOCK


def test_eviction_of_a_clean_segment_writes_nothing(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image, cache_size=SEGMENT)
    assert cache.read(0, BLOCK) == b"\xaa" * BLOCK
    image.write_bytes(b"\xbb" * 8 * SEGMENT)  # someone else changes the media meanwhile
    cache.write(SEGMENT, b"\x01" * BLOCK)  # evicts the clean segment 0
    cache.flush()
    cache.close()
    assert media(image, 0, BLOCK) == b"\xbb" * BLOCK


def test_trimmed_segments_read_as_zeros_and_are_never_written_unless_touched(
    backend: Any, image: Path
) -> None:
    cache = backend.BlockCache(image)
    cache.write(2 * SEGMENT, pattern(BLOCK, 7))  # pending, dropped by the trim
    # Covers segments 2..5 wholly, 1 and 6 partly (partial segments are left alone).
    cache.trim(SEGMENT + BLOCK, 5 * SEGMENT)
    assert cache.read(SEGMENT, BLOCK) == b"\xaa" * BLOCK
    assert cache.read(2 * SEGMENT, 4 * SEGMENT) == bytes(4 * SEGMENT)
    assert cache.read(6 * SEGMENT, BLOCK) == b"\xaa" * BLOCK
    cache.write(3 * SEGMENT + BLOCK, b"\x77" * BLOCK)  # a partial write into a trimmed segment
    cache.flush()
    cache.close()
    content = image.read_bytes()
    # The written segment is read-modify-written with zeros, not the old bytes...
    assert content[3 * SEGMENT : 4 * SEGMENT] == bytes(BLOCK) + b"\x77" * BLOCK + bytes(
        SEGMENT - 2 * BLOCK
    )
    # ...and untouched trimmed segments keep their old bytes on a regular file.
    assert content[2 * SEGMENT : 3 * SEGMENT] == b"\xaa" * SEGMENT
    assert content[4 * SEGMENT : 6 * SEGMENT] == b"\xaa" * 2 * SEGMENT


def test_flushing_a_trimmed_segment_clears_its_trim_mark(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image, cache_size=SEGMENT)
    cache.trim(0, SEGMENT)
    cache.write(0, b"\x01" * BLOCK)
    cache.flush()  # segment 0 is now zeros + data on the media, no longer "trimmed"
    with image.open("r+b") as f:  # an outside change shows up when segment 0 is reloaded
        f.seek(BLOCK)
        f.write(b"\x99" * BLOCK)
    cache.read(SEGMENT, 1)  # evicts segment 0 (clean: nothing written)
    assert cache.read(0, 2 * BLOCK) == b"\x01" * BLOCK + b"\x99" * BLOCK
    cache.close()


def test_missing_file_is_created_and_grows_in_whole_segments(backend: Any, tmp_path: Path) -> None:
    path = tmp_path / "sub-none" / "new.img"
    with pytest.raises(DestinationError):
        backend.BlockCache(path)  # the directory does not exist
    path = tmp_path / "new.img"
    cache = backend.BlockCache(path)
    assert path.exists() and cache.size == 0
    assert cache.read(5 * SEGMENT, BLOCK) == bytes(BLOCK)  # beyond the end reads zeros
    cache.write(2 * SEGMENT + 1000, b"\x42" * 100)
    assert path.stat().st_size == 0
    cache.flush()
    assert path.stat().st_size == 3 * SEGMENT
    assert cache.size == 3 * SEGMENT
    cache.close()
    content = path.read_bytes()
    assert content == bytes(2 * SEGMENT + 1000) + b"\x42" * 100 + bytes(SEGMENT - 1100)


def test_max_size_is_a_hard_end(backend: Any, image: Path) -> None:
    end = 2 * SEGMENT + 3 * BLOCK
    cache = backend.BlockCache(image, max_size=end)
    cache.write(2 * SEGMENT, b"\x01" * 3 * BLOCK)
    with pytest.raises(DestinationError) as caught:
        cache.write(2 * SEGMENT + 2 * BLOCK, b"\x02" * 2 * BLOCK)
    # The size is the destination's (its hard end).
    assert str(caught.value) == (
        f"write past the end of {image} (offset {2 * SEGMENT + 2 * BLOCK}, size {end})"
    )
    cache.flush()
    cache.close()
    content = image.read_bytes()
    assert len(content) == 8 * SEGMENT  # the last segment is written only up to the hard end
    assert content[2 * SEGMENT : 2 * SEGMENT + 4 * BLOCK] == b"\x01" * 3 * BLOCK + b"\xaa" * BLOCK


def test_max_size_cuts_segment_writes_on_a_growing_file(backend: Any, tmp_path: Path) -> None:
    path = tmp_path / "limited.img"
    cache = backend.BlockCache(path, max_size=SEGMENT + 4 * BLOCK)
    cache.write(SEGMENT, b"\x03" * 4 * BLOCK, streamed=True)
    cache.flush()
    cache.close()
    assert path.stat().st_size == SEGMENT + 4 * BLOCK


def test_verify_writes_on_a_regular_file(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image, verify_writes=True)
    data = pattern(SEGMENT, 9)
    cache.write(4 * SEGMENT, data, streamed=True)
    cache.write(0, b"\x01" * BLOCK)
    cache.flush()
    cache.close()
    assert media(image, 4 * SEGMENT, SEGMENT) == data


def test_closed_cache_refuses_work(backend: Any, image: Path) -> None:
    cache = backend.BlockCache(image)
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(DestinationError):
        cache.flush()
