"""A set of segment indexes kept as sorted, disjoint ranges (trim marks can span terabytes)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right


class SegmentSet:
    """Set of non-negative integers stored as sorted, disjoint, non-adjacent ``[start, end)`` ranges."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add_range(self, start: int, end: int) -> None:
        """Add every index in ``[start, end)``."""
        if start >= end:
            return
        first = bisect_left(self._ends, start)  # first range ending at or after start
        past = bisect_right(self._starts, end)  # ranges starting at or before end
        if first < past:
            start = min(start, self._starts[first])
            end = max(end, self._ends[past - 1])
        self._starts[first:past] = [start]
        self._ends[first:past] = [end]

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        at = bisect_right(self._starts, index) - 1
        return at >= 0 and index < self._ends[at]

    def discard(self, index: int) -> None:
        """Remove ``index`` if present, splitting its range."""
        at = bisect_right(self._starts, index) - 1
        if at < 0 or index >= self._ends[at]:
            return
        start, end = self._starts[at], self._ends[at]
        pieces = [(s, e) for s, e in ((start, index), (index + 1, end)) if s < e]
        self._starts[at : at + 1] = [s for s, _ in pieces]
        self._ends[at : at + 1] = [e for _, e in pieces]

    def clear(self) -> None:
        """Remove everything."""
        self._starts.clear()
        self._ends.clear()

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges, in order (for tests and debugging)."""
        return list(zip(self._starts, self._ends, strict=True))
