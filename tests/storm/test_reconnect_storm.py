"""Reconnect storm (short version): a fleet restarts with the local hub, spread by the jitter.

``NHLINK_STORM_DEVICES`` sets the fleet size (default 30); the full 300-device
run is ``benchmarks/test_reconnect_storm.py`` / ``scripts/storm.sh``.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from nhlink.cli.simulate import main as simulate_main
from nhlink.simulate import (
    DeviceSample,
    FleetOptions,
    FleetReport,
    LatencySummary,
    backoff_bounds,
    check_sample,
    jittered_delay,
    run_fleet,
    summarize_spread,
)
from nhlink.testing import LocalHub

DEVICES = int(os.environ.get("NHLINK_STORM_DEVICES", "30"))


def test_latency_summary_percentiles_and_histogram() -> None:
    summary = LatencySummary((1.2, 1.4, 3.1, 3.9, 3.95, 7.0))
    assert summary.minimum == 1.2 and summary.maximum == 7.0
    assert summary.percentile(50) == 3.1
    assert summary.percentile(90) == 7.0
    assert summary.histogram(1.0) == {1.0: 2, 3.0: 3, 7.0: 1}
    assert summary.as_dict()["histogram_1s"] == {"1.0": 2, "3.0": 3, "7.0": 1}


def test_spec_backoff_bounds() -> None:
    # spec 1.4: 1000 doubling to 60000 ms, each times 1 + 0.5 * U[0,1)
    assert backoff_bounds(1) == (1.0, 1.5)
    assert backoff_bounds(3) == (7.0, 10.5)
    assert backoff_bounds(8) == (183.0, 274.5)  # 60 s repeats
    assert jittered_delay(0, 0.0) == 1.0
    assert jittered_delay(1, 0.999) == 2.999
    assert jittered_delay(9, 0.5) == 75.0


def test_check_sample_catches_early_reconnects_and_bad_delays() -> None:
    assert check_sample(DeviceSample("d", 10.0, 13.2, (1.2, 2.0))) is None
    early = check_sample(DeviceSample("d", 10.0, 10.5, (1.2,)))
    assert early is not None and "before its" in early
    too_long = check_sample(DeviceSample("d", 10.0, 11.0, (1.6,)))
    assert too_long is not None and "outside" in too_long
    assert check_sample(DeviceSample("d", 10.0, 11.0, ())) is not None


def test_fleet_reconnects_after_a_hub_restart_spread_by_the_jitter(tmp_path: Path) -> None:
    options = FleetOptions(
        count=DEVICES, restart_hub_after=0.2, restart_downtime=2.0, directory=tmp_path, seed=7
    )
    report = asyncio.run(asyncio.wait_for(run_fleet(options), 120))
    print("\n" + report.describe())
    assert report.never_connected == [] and report.never_reconnected == []
    assert report.bound_violations == []
    assert len(report.reconnects) == DEVICES
    # Down for 2 s: the first attempt (after 1-1.5 s) is refused, the second
    # (2-3 s later) gets in, so every device waits two delays: 3-4.5 s.
    assert {len(s.delays) for s in report.reconnects} == {2}
    latencies = report.reconnect
    assert latencies.minimum >= 3.0
    assert latencies.maximum <= 4.5 + 2.0  # plus connect time on a busy machine
    # Spread, not a thundering herd: the jitter alone spans up to 1.5 s here.
    assert latencies.maximum - latencies.minimum >= 0.4
    fine = latencies.histogram(0.25)
    assert max(fine.values()) <= 0.5 * DEVICES
    # Each device came back when its own jittered delays said it would.
    assert summarize_spread(report.reconnects) > 0.9


def test_shared_secret_fleet_reconnects(tmp_path: Path) -> None:
    options = FleetOptions(
        count=5,
        auth="shared-secret",
        restart_hub_after=0.1,
        restart_downtime=0.0,
        directory=tmp_path,
    )
    report = asyncio.run(asyncio.wait_for(run_fleet(options), 60))
    assert report.ok, report.describe()
    assert {len(s.delays) for s in report.reconnects} == {1}
    assert all(s.latency >= 1.0 for s in report.reconnects)


def test_simulate_command_writes_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    status = simulate_main(
        [
            "--count",
            "4",
            "--ramp-up",
            "0.2",
            "--restart-hub-after",
            "0.1",
            "--restart-downtime",
            "0",
            "--directory",
            str(tmp_path / "fleet"),
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert status == 0, text
    assert "reconnect latency" in text and "histogram by 1 s" in text
    data = json.loads(out.read_text())
    assert data["count"] == 4 and data["reconnect"]["count"] == 4
    assert data["reconnect"]["min"] >= 1.0
    assert (tmp_path / "fleet" / "devices" / "sim-0000" / "kv.txt").is_file()


def test_simulate_command_refuses_a_restart_of_someone_elses_hub(tmp_path: Path) -> None:
    template = tmp_path / "device.toml"
    template.write_text('host = "hub.example.com"\n')
    args = ["--config-template", str(template), "--restart-hub-after", "1"]
    assert simulate_main(args) == 2


def test_fleet_from_a_config_template_with_a_product_key(tmp_path: Path) -> None:
    async def scenario() -> FleetReport:
        async with LocalHub(directory=tmp_path / "hub") as hub:
            hub.add_product_key("nhp_fleet", "product-secret")
            template = tmp_path / "template.toml"
            template.write_text(
                f'host = "{hub.host}"\n'
                "[shared_secret]\n"
                'product_key = "nhp_fleet"\n'
                'product_secret = "product-secret"\n'
                'identifier = "{identifier}"\n'
                "[ssl]\n"
                f'cacertfile = "{hub.pki.ca.cert_path}"\n'
            )
            options = FleetOptions(
                count=3, config_template=template, directory=tmp_path / "fleet", prefix="tpl"
            )
            report = await run_fleet(options, hub=hub)
            assert {d.auth for d in hub.devices.values()} == {"product_key"}
            assert sorted(hub.devices) == ["tpl-0000", "tpl-0001", "tpl-0002"]
            return report

    report = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert report.ok and report.connect.count == 3
