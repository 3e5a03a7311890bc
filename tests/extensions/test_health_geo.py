"""health and geo against the local hub: reports checked against this machine's real values."""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path
from typing import Any

import psutil

from nhlink.client import Client
from nhlink.extensions import Check, GeoError, Location
from nhlink.extensions.health import cpu_temperature
from nhlink.testing import Pki
from tests.extensions.support import attached, send, wait_pushed
from tests.link.support import run


def meminfo_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


class HealthyClient(Client):
    def health_metadata(self) -> dict[str, str]:
        return {"role": "gateway"}

    async def health_metrics(self) -> dict[str, Any]:
        return {"queue_depth": 7, "bogus": "not a number"}

    def health_checks(self) -> dict[str, Check]:
        return {"sensor": Check(True, "ok"), "uplink": Check(False, "down")}


def test_health_report_holds_the_machines_values(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        async with attached(
            pki, tmp_path, ["health"], client=HealthyClient(), metadata=["site=lab"]
        ) as (hub, _link):
            (report,) = await wait_pushed(hub, "health:report")  # health:check on attach
            return dict(report["value"])

    before = os.getloadavg()
    status = run(scenario())
    after = os.getloadavg()
    metrics = status["metrics"]
    assert metrics["mem_size_mb"] == meminfo_total_mb() == psutil.virtual_memory().total // 2**20
    assert 0 < metrics["mem_used_mb"] < metrics["mem_size_mb"]
    assert 0 <= metrics["mem_used_percent"] <= 100
    for key, low, high in zip(("load_1min", "load_5min", "load_15min"), before, after, strict=True):
        assert min(low, high) - 0.5 <= metrics[key] <= max(low, high) + 0.5
    disk = shutil.disk_usage("/")
    assert metrics["disk_total_kb"] == disk.total // 1024
    assert abs(metrics["disk_available_kb"] - disk.free // 1024) < 200 * 1024
    assert 0 <= metrics["cpu_usage_percent"] <= 100
    for name, counters in psutil.net_io_counters(pernic=True).items():
        if name != "lo":
            assert 0 <= metrics[f"{name}_bytes_received_total"] <= counters.bytes_recv
            assert 0 <= metrics[f"{name}_bytes_sent_total"] <= counters.bytes_sent
    assert ("cpu_temp" in metrics) == (cpu_temperature() is not None)
    assert metrics["queue_depth"] == 7 and "bogus" not in metrics
    assert status["metadata"] == {"site": "lab", "role": "gateway"}
    assert status["checks"] == {
        "sensor": {"pass": True, "note": "ok"},
        "uplink": {"pass": False, "note": "down"},
    }
    assert status["alarms"] == {} and status["connectivity"] == {}
    stamp = datetime.datetime.fromisoformat(status["timestamp"])
    assert abs(datetime.datetime.now(datetime.UTC) - stamp) < datetime.timedelta(minutes=1)


def test_a_second_health_check_gets_a_second_report(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        async with attached(pki, tmp_path, ["health"]) as (hub, _link):
            await wait_pushed(hub, "health:report")
            await send(hub, "health:check", {})
            return await wait_pushed(hub, "health:report", count=2)

    reports = run(scenario())
    assert len(reports) == 2 and reports[1]["value"]["metadata"] == {}


def test_geo_reports_the_configured_location(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        async with attached(pki, tmp_path, ["geo"], geo_location="48.8584, 2.2945, 25") as (
            hub,
            _link,
        ):
            await wait_pushed(hub, "geo:location:update")
            return list(hub.devices["dev-ext"].locations)

    assert run(scenario()) == [
        {"source": "manual", "latitude": 48.8584, "longitude": 2.2945, "accuracy": 25}
    ]


class NoFixClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def geo_location(self) -> Location:
        self.calls += 1
        if self.calls == 1:
            raise GeoError("no_fix", "the GPS has no fix yet")
        raise RuntimeError("GPS unplugged")


def test_geo_errors_are_reported_with_a_code(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        async with attached(pki, tmp_path, ["geo"], client=NoFixClient()) as (hub, _link):
            await wait_pushed(hub, "geo:location:update")
            await send(hub, "geo:location:request", {})
            return await wait_pushed(hub, "geo:location:update", count=2)

    first, second = run(scenario())
    assert first == {"error_code": "no_fix", "error_description": "the GPS has no fix yet"}
    assert second == {"error_code": "resolver_failed", "error_description": "RuntimeError"}


def test_geo_without_a_resolver_says_so(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        async with attached(pki, tmp_path, ["geo"]) as (hub, _link):
            return await wait_pushed(hub, "geo:location:update")

    ((update,),) = [run(scenario())]
    assert update["error_code"] == "unavailable"
