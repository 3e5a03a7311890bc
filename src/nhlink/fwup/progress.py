"""fwup's progress: ``percent = low + floor(units * (high - low) / total)``.

The percent is clamped to ``high - 1`` until the apply succeeded and a frame is
emitted only when it increased; with a total of 0 nothing is emitted until the
final ``high``.
"""

from __future__ import annotations

from nhlink.fwup import frames
from nhlink.fwup.frames import Frame


class Progress:
    """Counts finished units against the task's total and turns them into PR frames."""

    def __init__(self, low: int = 0, high: int = 100) -> None:
        if not 0 <= low <= high <= 0xFFFF:
            raise ValueError(f"bad progress range {low}..{high}")
        self.low = low
        self.high = high
        self.total = 0
        self.done = 0
        self._last = low

    def start(self) -> Frame:
        """The first frame of an apply: ``PR low``."""
        return frames.progress(self.low)

    def add(self, units: int) -> None:
        """Record ``units`` of finished work."""
        self.done += units

    def percent(self, units: int) -> int:
        if self.total <= 0:
            return self.low
        value = self.low + units * (self.high - self.low) // self.total
        return max(self.low, min(value, self.high - 1))

    def update(self, in_flight: int = 0) -> Frame | None:
        """A PR frame if finished units plus ``in_flight`` ones raised the percent."""
        percent = self.percent(self.done + in_flight)
        if percent <= self._last:
            return None
        self._last = percent
        return frames.progress(percent)

    def finish(self) -> Frame:
        """The last PR of a successful apply: ``PR high``."""
        self._last = self.high
        return frames.progress(self.high)
