"""Reconnect storm: ``NHLINK_BENCH_STORM_DEVICES`` devices (default 300) ride out a hub restart.

The fleet (``nhlink.simulate``) connects to a LocalHub in this process; the
hub is stopped and, after ``NHLINK_BENCH_STORM_DOWNTIME`` seconds (default 5),
started again on the same port with the same PKI. Each device's reconnect
latency (disconnect seen -> connected again) is reported as min/p50/p90/max
and histograms; spec 1.4's jittered backoff must spread them: a 5 s outage
costs every device three delays (1-1.5, 2-3, 4-6 s), so they come back
between 7 and 10.5 s, spread over that window rather than all at once.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from nhlink.simulate import FleetOptions, FleetReport, backoff_bounds, run_fleet, summarize_spread

DEVICES = int(os.environ.get("NHLINK_BENCH_STORM_DEVICES", "300"))
DOWNTIME = float(os.environ.get("NHLINK_BENCH_STORM_DOWNTIME", "5"))


def test_reconnect_storm_spread(benchmark: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    directory: Path = tmp_path_factory.mktemp("storm")
    reports: list[FleetReport] = []

    def measure() -> None:
        options = FleetOptions(
            count=DEVICES,
            restart_hub_after=1.0,
            restart_downtime=DOWNTIME,
            directory=directory,
            seed=300,
        )
        reports.append(asyncio.run(run_fleet(options)))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    report = reports[0]
    print("\n" + report.describe())
    latencies = report.reconnect
    correlation = summarize_spread(report.reconnects)
    benchmark.extra_info.update(
        {
            "devices": DEVICES,
            "downtime_s": DOWNTIME,
            "reconnect": latencies.as_dict(),
            "connect": report.connect.as_dict(),
            "backoff_latency_correlation": correlation,
        }
    )
    assert report.never_connected == [] and report.never_reconnected == []
    assert report.bound_violations == []
    attempts = {len(s.delays) for s in report.reconnects}
    low = min(backoff_bounds(n)[0] for n in attempts)
    high = max(backoff_bounds(n)[1] for n in attempts)
    assert latencies.minimum >= low
    assert latencies.maximum <= high + 5.0  # TLS for the whole fleet on two shared cores
    # Spread: no quarter-second holds more than a fifth of the fleet, and the
    # order of return follows each device's own jitter.
    assert max(latencies.histogram(0.25).values()) <= max(5, DEVICES // 5)
    assert latencies.percentile(90) - latencies.percentile(10) >= 0.25 * (high - low)
    assert correlation > 0.9
