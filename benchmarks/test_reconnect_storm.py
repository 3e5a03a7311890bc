"""Reconnect storm: ``NHLINK_BENCH_STORM_DEVICES`` devices (default 300) ride out a hub restart.

The fleet (``nhlink.simulate``) connects to a LocalHub in this process; the
hub is stopped and, after ``NHLINK_BENCH_STORM_DOWNTIME`` seconds (default 5),
started again on the same port with the same PKI. Each device's reconnect
latency (disconnect seen -> connected again) is reported as min/p50/p90/max
and histograms; spec 1.4's jittered backoff must spread them: a 5 s outage
costs every device three delays (1-1.5, 2-3, 4-6 s), so they come back
between 7 and 10.5 s, spread over that window rather than all at once.

The spread is asserted on what the devices' jitter chose (each device's total
wait, from the delays its own link drew), which a loaded host cannot change;
the measured latencies must follow those waits (every device back no sooner
than its wait and within the connect allowance after it, correlation > 0.9).
How bunched the measured returns are also depends on how fast this host
finishes 300 TLS handshakes (on a busy 2-core CI host the fullest quarter
second once held 69 devices against 60 planned), so that histogram is
reported and only checked for a thundering herd (half the fleet at once).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from nhlink.simulate import (
    FleetOptions,
    FleetReport,
    LatencySummary,
    backoff_bounds,
    run_fleet,
    summarize_spread,
)

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
    waits = LatencySummary(tuple(sum(s.delays) for s in report.reconnects))
    overheads = LatencySummary(tuple(s.latency - sum(s.delays) for s in report.reconnects))
    correlation = summarize_spread(report.reconnects)
    print(
        f"jitter-chosen waits: fullest 0.25 s holds {fullest(waits)}, "
        f"p10-p90 {waits.percentile(10):.2f}-{waits.percentile(90):.2f} s; "
        f"measured returns: fullest 0.25 s holds {fullest(latencies)}; "
        f"connect overhead p50 {overheads.percentile(50):.3f} s, "
        f"p90 {overheads.percentile(90):.3f} s; correlation wait/latency {correlation:.3f}"
    )
    benchmark.extra_info.update(
        {
            "devices": DEVICES,
            "downtime_s": DOWNTIME,
            "reconnect": latencies.as_dict(),
            "jitter_waits": waits.as_dict(),
            "connect_overhead": overheads.as_dict(),
            "fullest_quarter_second": {"waits": fullest(waits), "returns": fullest(latencies)},
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
    # Spread, as the jitter chose it: no quarter second holds more than a fifth
    # of the fleet's waits, and the middle 80 % span a quarter of the window.
    assert fullest(waits) <= max(5, DEVICES // 5)
    assert waits.percentile(90) - waits.percentile(10) >= 0.25 * (high - low)
    # The devices came back when their own jitter said (bound_violations above
    # checks each one against its wait), in that order, and not as one herd.
    assert correlation > 0.9
    assert latencies.percentile(90) - latencies.percentile(10) >= 0.25 * (high - low)
    assert fullest(latencies) <= max(5, DEVICES // 2)


def fullest(summary: LatencySummary) -> int:
    """How many values the fullest 0.25 s bucket holds."""
    return max(summary.histogram(0.25).values())
