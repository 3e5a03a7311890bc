"""Reconnect delays (spec 1.4): jittered doubling from 1 s to 60 s."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from nhlink.errors import ConfigError

DEFAULT_BASE_DELAYS_MS = (1000, 2000, 4000, 8000, 16000, 32000, 60000)
"""``delay_list(1000, 60000, 0.5)`` before jitter: doubling while below 60 s, then 60 s."""

DEFAULT_JITTER = 0.5
DEFAULT_STABLE_AFTER = 30.0


class RandomSource(Protocol):
    """What the backoff needs from :class:`random.Random`."""

    def random(self) -> float: ...


def round_half_up(value: float) -> int:
    """Round like Elixir's ``round/1`` does for non-negative numbers."""
    return math.floor(value + 0.5)


class ReconnectBackoff:
    """Delays between reconnect attempts.

    The n-th consecutive attempt waits ``base[n-1] * (1 + jitter * U[0,1))``
    milliseconds (rounded); past the end of the list the last entry repeats.
    A user list (``Client.reconnect_backoff()``, in ms) is used as is, without
    jitter. The attempt counter resets when the previous connection stayed up
    for ``stable_after`` seconds (0 resets on every successful connect, as
    NervesHubLink does; the default keeps a hub that accepts and then drops
    us at once from being hammered every second).
    """

    def __init__(
        self,
        rng: RandomSource,
        delays_ms: Sequence[float] | None = None,
        *,
        stable_after: float = DEFAULT_STABLE_AFTER,
    ) -> None:
        if delays_ms is not None:
            if not delays_ms or any(
                isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d < math.inf
                for d in delays_ms
            ):
                raise ConfigError("reconnect backoff must be a non-empty list of milliseconds >= 0")
            self._base: tuple[float, ...] = tuple(delays_ms)
            self._jitter = 0.0
        else:
            self._base = DEFAULT_BASE_DELAYS_MS
            self._jitter = DEFAULT_JITTER
        self._rng = rng
        self._stable_after = stable_after
        self._attempt = 0
        self._connected_at: float | None = None

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def connected(self, now: float) -> None:
        """Record that a connection was established at ``now``."""
        self._connected_at = now

    def reset(self) -> None:
        """Start again from the first delay."""
        self._attempt = 0

    def next_delay(self, now: float) -> float:
        """Seconds to wait before the next connect attempt, asked at disconnect time ``now``."""
        if self._connected_at is not None and now - self._connected_at >= self._stable_after:
            self.reset()
        self._connected_at = None
        base = self._base[min(self._attempt, len(self._base) - 1)]
        self._attempt += 1
        if self._jitter:
            return round_half_up(base * (1 + self._jitter * self._rng.random())) / 1000
        return base / 1000
