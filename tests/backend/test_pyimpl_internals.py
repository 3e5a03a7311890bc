"""Internals of the pure-Python backend that the shared API tests cannot reach."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from nhlink._native._pyimpl.media import Media
from nhlink._native._pyimpl.segmentset import SegmentSet

SEGMENT = 128 * 1024


def test_direct_io_media_round_trip(tmp_path: Path) -> None:
    """O_DIRECT through the aligned bounce buffer (or the buffered fallback where refused)."""
    path = tmp_path / "direct.img"
    path.write_bytes(b"\xaa" * 4 * SEGMENT)
    media = Media(str(path), direct=True)
    data = bytes(range(256)) * (SEGMENT // 256)
    media.write(SEGMENT, memoryview(data))
    assert media.read(SEGMENT, SEGMENT) == data
    assert media.read(3 * SEGMENT + SEGMENT // 2, SEGMENT) == b"\xaa" * (SEGMENT // 2) + bytes(
        SEGMENT // 2
    )
    # An unaligned transfer is refused by O_DIRECT: the media falls back to buffered I/O.
    media.write(100, memoryview(b"\x01\x02\x03"))
    assert media.read(99, 5) == b"\xaa\x01\x02\x03\xaa"
    assert not media.direct
    media.sync()
    media.close()
    media.close()
    content = path.read_bytes()
    assert content[SEGMENT : 2 * SEGMENT] == data
    assert len(content) == 4 * SEGMENT


def test_segment_set_matches_a_plain_set() -> None:
    rng = random.Random(1234)
    ranges = SegmentSet()
    plain: set[int] = set()
    for _ in range(2000):
        if rng.random() < 0.6:
            start = rng.randrange(200)
            end = start + rng.randrange(20)
            ranges.add_range(start, end)
            plain.update(range(start, end))
        else:
            index = rng.randrange(220)
            ranges.discard(index)
            plain.discard(index)
        spans = ranges.ranges()
        assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))
        assert {i for s, e in spans for i in range(s, e)} == plain
        probe = rng.randrange(220)
        assert (probe in ranges) == (probe in plain)
    ranges.clear()
    assert ranges.ranges() == []
