"""``download_rate_limit``: the downloader paces itself to the asked bytes/s over real TLS,
by sleeping (the event loop stays responsive), and the token bucket's arithmetic."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from nhlink.aio.downloader import RetryPolicy
from nhlink.aio.rate import TokenBucket
from nhlink.testing import Fault, Pki
from tests.link.support import run
from tests.update.support import firmware_server, timed_drain, tls_downloader

FAST = RetryPolicy(time_between_retries=0.05, idle_timeout=2.0)
RATE = 1_000_000
SIZE = 2_500_000


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


def test_the_bucket_starts_empty_and_makes_each_piece_wait_its_share() -> None:
    bucket = TokenBucket(1000, burst=500, now=10.0)
    assert bucket.take(250, 10.0) == pytest.approx(0.25)
    assert bucket.take(250, 10.25) == pytest.approx(0.25)  # paid the first 250, owes these
    assert bucket.take(100, 20.0) == 0.0  # idle time refills up to the burst only...
    assert bucket.take(400, 20.0) == 0.0
    assert bucket.take(1000, 20.0) == pytest.approx(1.0)  # ...not ten seconds' worth
    assert bucket.piece_size(1 << 20) == 4096
    assert TokenBucket(8_000_000).piece_size(1 << 20) == 400_000
    with pytest.raises(ValueError):
        TokenBucket(0)


@pytest.mark.parametrize("rate", [RATE])
def test_a_limited_download_keeps_to_the_rate_and_the_loop_responsive(
    pki: Pki, tmp_path: Path, payload: bytes, rate: int
) -> None:
    async def scenario() -> tuple[float, float, int]:
        loop = asyncio.get_running_loop()
        lateness: list[float] = []

        async def ticker() -> None:  # stands in for the websocket heartbeat
            while True:
                before = loop.time()
                await asyncio.sleep(0.01)
                lateness.append(loop.time() - before - 0.01)

        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            d = tls_downloader(pki, hosted.url, FAST, expected_size=SIZE, rate_limit=rate)
            tick = asyncio.ensure_future(ticker())
            received, elapsed = await timed_drain(d)
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
        return elapsed, max(lateness), received

    elapsed, worst_lateness, received = run(scenario())
    assert received == SIZE
    measured = SIZE / elapsed
    assert 0.9 * rate < measured < 1.05 * rate, f"{measured:.0f} B/s for {rate} B/s asked"
    assert worst_lateness < 0.1, f"the loop was blocked for {worst_lateness:.3f} s"


def test_the_limit_holds_across_a_resume(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> tuple[float, int]:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(drop_after=700_000))
            received, elapsed = await timed_drain(tls_downloader(pki, url, FAST, rate_limit=RATE))
            assert [r.range_start for r in server.requests] == [None, 700_000]
            return elapsed, received

    elapsed, received = run(scenario())
    assert received == SIZE
    # the retry pause (0.05 s) adds to the time but never lets a burst through
    assert SIZE / elapsed < 1.05 * RATE


def test_without_a_limit_nothing_is_paced(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> float:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            _, elapsed = await timed_drain(tls_downloader(pki, hosted.url, FAST))
            return elapsed

    assert SIZE / run(scenario()) > 3 * RATE
