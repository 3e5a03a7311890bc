"""Reconnect backoff (spec 1.4): jitter bounds, repetition, user lists, resets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nhlink.errors import ConfigError
from nhlink.protocol import ReconnectBackoff

# delay_list(1000, 60000, 0.5) before jitter, from the spec: ~1-1.5 s ... 60-90 s.
BASE_MS = [1000, 2000, 4000, 8000, 16000, 32000, 60000]


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=30))
def test_default_delays_stay_within_the_jitter_bounds(seed: int, attempts: int) -> None:
    backoff = ReconnectBackoff(random.Random(seed))
    for n in range(attempts):
        base = BASE_MS[min(n, len(BASE_MS) - 1)]
        delay_ms = backoff.next_delay(0.0) * 1000
        assert base <= delay_ms <= base * 1.5
        assert abs(delay_ms - round(delay_ms)) < 1e-6  # whole milliseconds
    assert backoff.attempt == attempts


def test_jitter_extremes_and_rounding() -> None:
    low = ReconnectBackoff(FixedRandom(0.0))
    assert [low.next_delay(0.0) for _ in range(9)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
        60.0,
    ]
    high = ReconnectBackoff(FixedRandom(0.999999))
    assert [high.next_delay(0.0) for _ in range(8)] == [1.5, 3.0, 6.0, 12.0, 24.0, 48.0, 90.0, 90.0]
    # 1000 * (1 + 0.5 * 0.001) = 1000.5 ms rounds half up, like Elixir's round/1.
    assert ReconnectBackoff(FixedRandom(0.001)).next_delay(0.0) == 1.001


def test_jitter_is_drawn_per_attempt() -> None:
    backoff = ReconnectBackoff(random.Random(7))
    delays = [backoff.next_delay(0.0) for _ in range(12)]
    assert len(set(delays[6:])) > 1  # the repeated 60 s entry is re-jittered each time


def test_user_list_is_used_as_is_and_its_last_entry_repeats() -> None:
    backoff = ReconnectBackoff(FixedRandom(0.9), [500, 2500])
    assert [backoff.next_delay(0.0) for _ in range(4)] == [0.5, 2.5, 2.5, 2.5]
    assert ReconnectBackoff(FixedRandom(0.9), [0]).next_delay(0.0) == 0.0


@pytest.mark.parametrize("bad", [[], [-1], [1000, float("inf")], [True], ["1000"]])
def test_bad_user_lists_are_config_errors(bad: list[object]) -> None:
    with pytest.raises(ConfigError, match=r"^reconnect backoff must be a non-empty list"):
        ReconnectBackoff(FixedRandom(0.0), bad)  # type: ignore[arg-type]


def test_resets_only_after_a_stable_connection() -> None:
    backoff = ReconnectBackoff(FixedRandom(0.0), stable_after=30.0)
    assert backoff.next_delay(0.0) == 1.0
    assert backoff.next_delay(1.0) == 2.0
    backoff.connected(10.0)
    assert backoff.next_delay(39.9) == 4.0  # up 29.9 s: not stable, keep backing off
    backoff.connected(100.0)
    assert backoff.next_delay(130.0) == 1.0  # up 30 s: start over
    assert backoff.next_delay(500.0) == 2.0  # a failed attempt is no connection
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay(501.0) == 1.0


def test_stable_after_zero_resets_on_every_connect_like_nerves_hub_link() -> None:
    backoff = ReconnectBackoff(FixedRandom(0.0), stable_after=0.0)
    backoff.next_delay(0.0)
    backoff.next_delay(0.0)
    backoff.connected(5.0)
    assert backoff.next_delay(5.0) == 1.0
