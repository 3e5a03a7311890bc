"""Transfer rate and time left for people watching an update (sans-I/O; times passed in)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from nhlink.client import FwupMessage

RATE_WINDOW = 5.0
MessageKind = Literal["progress", "ok", "warning", "error"]


@dataclass(frozen=True, slots=True)
class UpdateMessage(FwupMessage):
    """A :class:`~nhlink.client.FwupMessage` plus where the transfer stands.

    ``bytes_done`` counts bytes downloaded, ``bytes_total`` is the file size
    when known, ``rate`` is in bytes per second over the last few seconds and
    ``eta`` the seconds left at that rate (None until they can be estimated).
    """

    bytes_done: int = 0
    bytes_total: int | None = None
    rate: float | None = None
    eta: float | None = None


class TransferMeter:
    """Bytes done against the total, with a sliding-window rate."""

    def __init__(self, total: int | None, now: float, window: float = RATE_WINDOW) -> None:
        self.total = total
        self.done = 0
        self._window = window
        self._samples: deque[tuple[float, int]] = deque([(now, 0)])

    def update(self, done: int, now: float) -> None:
        """``done`` bytes are in at ``now``."""
        self.done = done
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()

    @property
    def rate(self) -> float | None:
        """Bytes per second over the window, or None before any time has passed."""
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return max(0.0, (d1 - d0) / (t1 - t0))

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, or None when unknown."""
        rate = self.rate
        if self.total is None or not rate:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def message(self, kind: MessageKind, value: int, text: str = "") -> UpdateMessage:
        """An :class:`UpdateMessage` carrying the current figures."""
        return UpdateMessage(
            kind,
            value,
            text,
            bytes_done=self.done,
            bytes_total=self.total,
            rate=self.rate,
            eta=self.eta,
        )
