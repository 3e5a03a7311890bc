"""Idle cost of a connected device client, and the import time of ``nhlink``.

``nhlink run`` runs as a subprocess against a LocalHub in this process and
idles over heartbeats (every 5 s, six times NervesHubLink's rate) for
``NHLINK_BENCH_IDLE_SECONDS`` (default 60). Measured from ``/proc``: the
client's CPU time over the idle window divided by its wall time, and its RSS
at the end. Targets (issue 3): under 1% of a core, under 40 MiB.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nhlink.testing import LocalHub

SRC = str(Path(__file__).resolve().parents[1] / "src")
CPU_PERCENT_LIMIT = 1.0
RSS_MIB_LIMIT = 40.0
HEARTBEAT_MSEC = 5000


def _environment() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=SRC + (os.pathsep + path if path else ""))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _idle_client(directory: Path, idle_seconds: float) -> dict[str, float]:
    async with LocalHub(directory=directory / "hub") as hub:
        config = hub.write_device_config(
            "bench-idle",
            directory / "device.toml",
            extra={"data_path": str(directory / "data"), "heartbeat_interval_msec": HEARTBEAT_MSEC},
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from nhlink.cli.run import main; sys.exit(main())",
            "--config",
            str(config),
            env=_environment(),
            stderr=subprocess.DEVNULL,
        )
        try:
            await hub.wait_for_device("bench-idle", timeout=30)
            await asyncio.sleep(1.0)  # let the join's follow-ups settle
            beats_before = len(hub.frames("bench-idle", "phoenix", "heartbeat"))
            cpu_start, wall_start = _cpu_seconds(process.pid), time.monotonic()
            await asyncio.sleep(idle_seconds)
            cpu_end, wall_end = _cpu_seconds(process.pid), time.monotonic()
            rss = _rss_mib(process.pid)
            beats = len(hub.frames("bench-idle", "phoenix", "heartbeat")) - beats_before
            device = hub.devices["bench-idle"]
            assert device.connected and device.connection_count == 1
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 15) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    return {
        "cpu_percent": 100 * (cpu_end - cpu_start) / (wall_end - wall_start),
        "rss_mib": rss,
        "heartbeats": beats,
        "idle_seconds": wall_end - wall_start,
    }


def _import_ms(module: str, runs: int = 5) -> float:
    """Median time to import ``module`` in a fresh interpreter, in milliseconds."""
    code = (
        "import time; t = time.perf_counter(); "
        f"import {module}; print((time.perf_counter() - t) * 1000)"
    )
    samples = []
    for _ in range(runs):
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=_environment(),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        samples.append(float(result.stdout))
    return statistics.median(samples)


def test_idle_client_cpu_rss_and_import_time(
    benchmark: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    idle_seconds = float(os.environ.get("NHLINK_BENCH_IDLE_SECONDS", "60"))
    directory = tmp_path_factory.mktemp("idle")
    figures: dict[str, float] = {}

    def measure() -> None:
        figures.update(asyncio.run(_idle_client(directory, idle_seconds)))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    figures["import_ms"] = _import_ms("nhlink")
    figures["import_link_ms"] = _import_ms("nhlink.aio.link")
    benchmark.extra_info.update(figures)
    print(
        f"\nidle {figures['idle_seconds']:.0f} s, {figures['heartbeats']:.0f} heartbeats: "
        f"CPU {figures['cpu_percent']:.3f}% of a core, RSS {figures['rss_mib']:.1f} MiB; "
        f"import nhlink {figures['import_ms']:.1f} ms, "
        f"nhlink.aio.link {figures['import_link_ms']:.1f} ms"
    )
    assert figures["heartbeats"] >= idle_seconds // (HEARTBEAT_MSEC / 1000) - 1
    assert figures["cpu_percent"] < CPU_PERCENT_LIMIT
    assert figures["rss_mib"] < RSS_MIB_LIMIT
