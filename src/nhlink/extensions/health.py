"""The ``health`` extension: ``health:report {"value": DeviceStatus}`` on ``health:check`` (spec 4).

Metrics come from the running system through psutil (CPU usage, memory,
network counters, temperatures), ``os.getloadavg`` and ``shutil.disk_usage``;
the CPU temperature falls back to ``/sys/class/thermal``. Metadata, extra
metrics and checks come from the configuration and from an optional
:class:`HealthProvider` (the client, when it has such methods).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhlink.client import call_client
from nhlink.extensions.base import Extension, ExtensionContext
from nhlink.protocol.frames import JSONObject, JSONValue

logger = logging.getLogger("nhlink.extensions.health")

MIB = 1024 * 1024
CPU_SAMPLE_SECONDS = 0.2
THERMAL_ROOT = Path("/sys/class/thermal")
_CPU_SENSORS = ("coretemp", "k10temp", "cpu_thermal", "cpu-thermal", "soc_thermal", "acpitz")


@dataclass(frozen=True)
class Check:
    """One named check of a report."""

    passed: bool
    note: str = ""


@dataclass
class HealthSources:
    """Where user data comes from: fixed values plus optional callables (plain or async)."""

    metadata: Mapping[str, str] = field(default_factory=dict)
    metadata_callback: Callable[[], Any] | None = None
    """Returns ``{str: str}`` merged over ``metadata``."""
    metrics_callback: Callable[[], Any] | None = None
    """Returns ``{str: number}`` merged over the system metrics."""
    checks_callback: Callable[[], Any] | None = None
    """Returns ``{name: Check}``."""


def cpu_temperature(thermal_root: Path = THERMAL_ROOT) -> float | None:
    """The CPU temperature in °C: psutil's sensors, else the first thermal zone; None if unknown."""
    try:
        import psutil

        sensors = psutil.sensors_temperatures() if hasattr(psutil, "sensors_temperatures") else {}
    except Exception:
        sensors = {}
    for name in _CPU_SENSORS:
        readings = sensors.get(name)
        if readings:
            return float(readings[0].current)
    try:
        zones = sorted(thermal_root.glob("thermal_zone*"))
    except OSError:
        return None
    for zone in zones:
        try:
            return int((zone / "temp").read_text().strip()) / 1000
        except (OSError, ValueError):
            continue
    return None


def system_metrics(disk_path: str = "/") -> dict[str, float]:
    """The default metrics of spec 4 read from this machine (blocking: run it in a thread)."""
    import psutil

    metrics: dict[str, float] = {}
    temperature = cpu_temperature()
    if temperature is not None:
        metrics["cpu_temp"] = round(temperature, 1)
    metrics["cpu_usage_percent"] = float(psutil.cpu_percent(interval=CPU_SAMPLE_SECONDS))
    load_1, load_5, load_15 = os.getloadavg()
    metrics.update(load_1min=load_1, load_5min=load_5, load_15min=load_15)
    memory = psutil.virtual_memory()
    used = memory.total - memory.available
    metrics["mem_size_mb"] = memory.total // MIB
    metrics["mem_used_mb"] = used // MIB
    metrics["mem_used_percent"] = round(used * 100 / memory.total) if memory.total else 0
    try:
        disk = shutil.disk_usage(disk_path)
    except OSError as exc:
        logger.warning("disk usage of %s unavailable: %s", disk_path, exc)
    else:
        metrics["disk_total_kb"] = disk.total // 1024
        metrics["disk_available_kb"] = disk.free // 1024
        metrics["disk_used_percentage"] = round(disk.used * 100 / disk.total) if disk.total else 0
    try:
        counters = psutil.net_io_counters(pernic=True)
    except Exception as exc:
        logger.debug("network counters unavailable: %s", exc)
        counters = {}
    for interface, counter in counters.items():
        if interface == "lo":
            continue
        metrics[f"{interface}_bytes_received_total"] = counter.bytes_recv
        metrics[f"{interface}_bytes_sent_total"] = counter.bytes_sent
    return metrics


def _utc_timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _string_map(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        if value is not None:
            logger.warning("health %s %r is not a mapping; left out", what, value)
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _number_map(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        if value is not None:
            logger.warning("health metrics %r are not a mapping; left out", value)
        return {}
    numbers: dict[str, float] = {}
    for key, item in value.items():
        if isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item):
            numbers[str(key)] = item
        else:
            logger.warning("health metric %r = %r is not a finite number; left out", key, item)
    return numbers


def _checks(value: object) -> dict[str, JSONValue]:
    if not isinstance(value, Mapping):
        if value is not None:
            logger.warning("health checks %r are not a mapping; left out", value)
        return {}
    checks: dict[str, JSONValue] = {}
    for name, check in value.items():
        if isinstance(check, Check):
            checks[str(name)] = {"pass": check.passed, "note": check.note}
        else:
            logger.warning("health check %r is not a Check; left out", name)
    return checks


class HealthExtension(Extension):
    """Answers ``health:check`` with a DeviceStatus built from the system and ``sources``."""

    name = "health"

    def __init__(self, sources: HealthSources | None = None, *, disk_path: str = "/") -> None:
        super().__init__()
        self.sources = sources or HealthSources()
        self.disk_path = disk_path

    async def start(self, context: ExtensionContext) -> None:
        import psutil  # a missing dependency is a start failure, reported to the hub

        psutil.cpu_percent(interval=None)
        await super().start(context)

    async def handle(self, action: str, payload: JSONObject) -> None:
        if action != "check":
            await super().handle(action, payload)
            return
        self.context.push("report", {"value": await self.device_status()})

    async def device_status(self) -> JSONObject:
        """The DeviceStatus of spec 4, as JSON."""
        sources = self.sources
        metrics: dict[str, JSONValue] = dict(
            await asyncio.to_thread(system_metrics, self.disk_path)
        )
        metadata: dict[str, JSONValue] = dict(_string_map(sources.metadata, "metadata"))
        if sources.metadata_callback is not None:
            extra = await call_client(sources.metadata_callback, default=None)
            metadata.update(_string_map(extra, "metadata"))
        if sources.metrics_callback is not None:
            metrics.update(_number_map(await call_client(sources.metrics_callback, default=None)))
        checks: dict[str, JSONValue] = {}
        if sources.checks_callback is not None:
            checks = _checks(await call_client(sources.checks_callback, default=None))
        return {
            "timestamp": _utc_timestamp(),
            "metadata": metadata,
            "alarms": {},
            "metrics": metrics,
            "checks": checks,
            "connectivity": {},
        }
