"""Fault storm (short version): ``NHLINK_STORM_UPDATES`` updates (default 10) in a row."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from tests.storm.fault_storm import (
    MAX_DISCONNECTS,
    SCENARIOS,
    WARMUP,
    Resources,
    StormReport,
    plan_update,
    run_storm,
)

UPDATES = int(os.environ.get("NHLINK_STORM_UPDATES", "10"))
SEED = int(os.environ.get("NHLINK_STORM_SEED", "3"))


def test_plans_cover_every_scenario_with_a_reason_for_each_failure() -> None:
    rng = random.Random(1)
    plans = [plan_update(rng, 300_000) for _ in range(200)]
    assert {p.scenario for p in plans} == set(SCENARIOS)
    for plan in plans:
        if "failed" in plan.allowed:
            assert plan.reason
        if plan.scenario == "drops":
            assert plan.faults[0].times is not None and plan.faults[0].times < MAX_DISCONNECTS


def test_updates_in_a_row_with_faults_end_precisely_and_leave_the_image_bootable(
    tmp_path: Path,
) -> None:
    report = asyncio.run(asyncio.wait_for(run_storm(tmp_path, UPDATES, SEED), 60 + 15 * UPDATES))
    print("\n" + report.describe())
    assert report.problems == []
    assert sum(report.outcomes.values()) == UPDATES
    assert set(report.outcomes) <= {"completed", "failed"}
    assert report.outcomes["completed"] >= 1 and report.outcomes["failed"] >= 1
    assert report.leaks == []
    assert report.after is not None and report.before is not None
    assert report.after.fds <= report.before.fds


def test_report_flags_descriptor_thread_and_rss_growth() -> None:
    steady = [Resources(12, 2, 1, 50_000) for _ in range(WARMUP + 12)]
    report = StormReport(len(steady), 1, samples=list(steady))
    report.before = report.after = Resources(9, 2, 1, 40_000)
    assert report.leaks == [] and not report.rss_flagged and report.rss_late_slope_kib == 0
    report.after = Resources(10, 3, 1, 40_000)
    assert len(report.leaks) == 2
    growing = [Resources(12 + i, 2, 1, 50_000 + 100 * i) for i in range(WARMUP + 12)]
    report = StormReport(len(growing), 1, samples=growing)
    assert any("grow during the run" in leak for leak in report.leaks)
    pool = [Resources(12, 2 + i // 8, 1 + i // 8, 50_000) for i in range(WARMUP + 12)]
    assert StormReport(len(pool), 1, samples=pool).leaks == []  # the executor's pool
    own = [Resources(12, 2 + i // 8, 1, 50_000) for i in range(WARMUP + 12)]
    assert StormReport(len(own), 1, samples=own).leaks == ["threads grow during the run"]
    # a short run: the slope is steep (100 KiB/update) but 1.2 MiB of growth is no leak
    assert report.rss_late_slope_kib == 100 and not report.rss_flagged
    step = [Resources(12, 2, 1, 50_000 + (1_500 if i > 15 else 0)) for i in range(20)]
    assert not StormReport(len(step), 1, samples=step).rss_flagged  # one late 1.5 MiB step
    steep = [Resources(12, 2, 1, 50_000 + 2_048 * i) for i in range(20)]
    assert StormReport(len(steep), 1, samples=steep).rss_flagged  # 2 MiB per update
    long_run = [Resources(12, 2, 1, 50_000 + 100 * i) for i in range(100)]
    long_report = StormReport(len(long_run), 1, samples=long_run)
    assert long_report.rss_late_slope_kib == 100 and long_report.rss_flagged
    flat = [Resources(12, 2, 1, 50_000 + (i % 3) * 30) for i in range(100)]
    assert not StormReport(len(flat), 1, samples=flat).rss_flagged
