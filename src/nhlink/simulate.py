"""A fleet simulator: many nhlink device clients in one process against one hub.

Each simulated device is a real :class:`~nhlink.aio.link.NervesHubLink` with
its own identity (a certificate from the local hub's PKI, or a per-device
shared secret), its own key=value KV file and its own seeded jitter source,
so that runs are repeatable. Against the built-in :class:`~nhlink.testing.LocalHub`
the simulator can restart the hub (stop, then start on the same ports with
the same PKI) and measure how the fleet comes back; against a user's hub it
renders a config template per device and reports connects and reconnects.

Times are ``time.monotonic()`` seconds. Reconnect latencies are measured on
the device side, from the moment a device learns it was disconnected
(``Client.handle_error``) to its next ``Client.connected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nhlink.aio.link import NervesHubLink
from nhlink.client import Client
from nhlink.config import Config, KVConfig, load_config
from nhlink.protocol.backoff import DEFAULT_BASE_DELAYS_MS, DEFAULT_JITTER, round_half_up
from nhlink.testing import LocalHub
from nhlink.testing.config_file import write_device_config

__all__ = [
    "DeviceSample",
    "Fleet",
    "FleetOptions",
    "FleetReport",
    "LatencySummary",
    "RecordingRandom",
    "SimulatedClient",
    "backoff_bounds",
    "restart_local_hub",
    "run_fleet",
]

logger = logging.getLogger("nhlink.simulate")

Auth = Literal["certificate", "shared-secret"]
IDENTIFIER_PLACEHOLDER = "{identifier}"
CONNECT_OVERHEAD_ALLOWANCE = 5.0
"""Seconds a connect may take on top of the backoff delay (TLS under load) in bound checks."""


@dataclass(frozen=True)
class FleetOptions:
    """What to simulate. Durations are seconds."""

    count: int = 10
    ramp_up: float = 0.0
    """Devices are started evenly over this many seconds."""
    duration: float = 0.0
    """Keep the fleet up this long after everything connected (and reconnected)."""
    restart_hub_after: float | None = None
    """Restart the local hub this long after the whole fleet connected (None: never)."""
    restart_downtime: float = 5.0
    """How long the restarted hub stays down."""
    auth: Auth = "certificate"
    config_template: Path | None = None
    """A device TOML for a user's hub, with ``{identifier}`` where each device's id goes."""
    directory: Path | None = None
    prefix: str = "sim"
    seed: int | None = 1
    """Seeds the devices' jitter sources (None: crypto randomness, as a real device)."""
    heartbeat_interval_msec: int = 30_000
    connect_timeout: float = 120.0
    """How long to wait for the whole fleet to (re)connect."""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("count must be at least 1")
        for name in ("ramp_up", "duration", "restart_downtime", "connect_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.restart_hub_after is not None and self.config_template is not None:
            raise ValueError("--restart-hub-after needs the local hub (no --config-template)")


class RecordingRandom:
    """A jitter source that remembers when it was asked and what it answered."""

    def __init__(self, seed: int | None) -> None:
        self._rng: random.Random = random.SystemRandom() if seed is None else random.Random(seed)
        self.draws: list[tuple[float, float]] = []

    def random(self) -> float:
        value = self._rng.random()
        self.draws.append((time.monotonic(), value))
        return value


class SimulatedClient(Client):
    """Records connects and errors; never reboots anything."""

    def __init__(self, fleet_changed: asyncio.Event) -> None:
        super().__init__()
        self.connects: list[float] = []
        self.errors: list[tuple[float, str]] = []
        self.reboots: list[float] = []
        self._changed = fleet_changed

    def connected(self) -> None:
        self.connects.append(time.monotonic())
        self._changed.set()

    def handle_error(self, reason: str) -> None:
        self.errors.append((time.monotonic(), reason))
        self._changed.set()

    def reboot(self) -> None:
        self.reboots.append(time.monotonic())
        self._changed.set()

    def firmware_validated(self) -> bool:
        return True


@dataclass
class SimulatedDevice:
    identifier: str
    config: Config
    client: SimulatedClient
    rng: RecordingRandom
    link: NervesHubLink | None = None
    task: asyncio.Task[None] | None = None
    started_at: float = 0.0


@dataclass(frozen=True)
class DeviceSample:
    """One device's way back after a disconnect."""

    identifier: str
    disconnected_at: float
    reconnected_at: float
    delays: tuple[float, ...]
    """The jittered delays (seconds) the link chose between the two, in order."""

    @property
    def latency(self) -> float:
        return self.reconnected_at - self.disconnected_at


def jittered_delay(attempt: int, draw: float) -> float:
    """Spec 1.4: the ``attempt``-th (0-based) default delay for jitter draw ``draw``, in seconds."""
    base = DEFAULT_BASE_DELAYS_MS[min(attempt, len(DEFAULT_BASE_DELAYS_MS) - 1)]
    return round_half_up(base * (1 + DEFAULT_JITTER * draw)) / 1000


def backoff_bounds(attempts: int) -> tuple[float, float]:
    """Spec 1.4: the least and most total wait (seconds) over the first ``attempts`` delays."""
    bases = [
        DEFAULT_BASE_DELAYS_MS[min(i, len(DEFAULT_BASE_DELAYS_MS) - 1)] / 1000
        for i in range(attempts)
    ]
    return sum(bases), sum(bases) * (1 + DEFAULT_JITTER)


@dataclass(frozen=True)
class LatencySummary:
    """Distribution of a set of latencies (seconds)."""

    values: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.values)

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile (p in 0..100)."""
        if not self.values:
            return math.nan
        ordered = sorted(self.values)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]

    @property
    def minimum(self) -> float:
        return min(self.values) if self.values else math.nan

    @property
    def maximum(self) -> float:
        return max(self.values) if self.values else math.nan

    @property
    def stdev(self) -> float:
        return statistics.pstdev(self.values) if len(self.values) > 1 else 0.0

    def histogram(self, bucket: float = 1.0) -> dict[float, int]:
        """How many values fall in each ``[k*bucket, (k+1)*bucket)``, keyed by the bucket start."""
        counts = Counter(math.floor(v / bucket) for v in self.values)
        return {round(k * bucket, 6): counts[k] for k in sorted(counts)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "min": self.minimum,
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "max": self.maximum,
            "stdev": self.stdev,
            "histogram_1s": {str(k): v for k, v in self.histogram(1.0).items()},
        }

    def describe(self, title: str, *, fine_bucket: float | None = None) -> str:
        if not self.values:
            return f"{title}: none"
        lines = [
            f"{title}: n={self.count} min={self.minimum:.3f} p50={self.percentile(50):.3f} "
            f"p90={self.percentile(90):.3f} max={self.maximum:.3f} stdev={self.stdev:.3f} s"
        ]
        buckets = [(1.0, "s")] + ([(fine_bucket, "s")] if fine_bucket else [])
        for width, unit in buckets:
            histogram = self.histogram(width)
            peak = max(histogram.values())
            lines.append(f"  histogram by {width:g} {unit}:")
            for start, number in histogram.items():
                bar = "#" * max(1, round(40 * number / peak))
                lines.append(f"    [{start:7.2f}, {start + width:7.2f}) {number:5d} {bar}")
        return "\n".join(lines)


@dataclass
class FleetReport:
    """What a fleet run measured."""

    count: int
    connect: LatencySummary
    """Start of each device to its first connect."""
    reconnects: list[DeviceSample] = field(default_factory=list)
    restart_at: float | None = None
    never_connected: list[str] = field(default_factory=list)
    never_reconnected: list[str] = field(default_factory=list)
    bound_violations: list[str] = field(default_factory=list)

    @property
    def reconnect(self) -> LatencySummary:
        return LatencySummary(tuple(s.latency for s in self.reconnects))

    @property
    def since_restart(self) -> LatencySummary:
        """Restart start to each device's reconnect."""
        if self.restart_at is None:
            return LatencySummary(())
        return LatencySummary(tuple(s.reconnected_at - self.restart_at for s in self.reconnects))

    @property
    def ok(self) -> bool:
        return not (self.never_connected or self.never_reconnected or self.bound_violations)

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "connect": self.connect.as_dict(),
            "reconnect": self.reconnect.as_dict(),
            "since_restart": self.since_restart.as_dict(),
            "attempts": dict(Counter(len(s.delays) for s in self.reconnects)),
            "never_connected": self.never_connected,
            "never_reconnected": self.never_reconnected,
            "bound_violations": self.bound_violations,
        }

    def describe(self) -> str:
        parts = [self.connect.describe("connect latency (start -> first connect)")]
        if self.reconnects:
            attempts = Counter(len(s.delays) for s in self.reconnects)
            parts.append(
                self.reconnect.describe(
                    "reconnect latency (disconnect -> connected)", fine_bucket=0.25
                )
            )
            parts.append(
                "backoff attempts per reconnect: "
                + ", ".join(f"{k}: {v}" for k, v in sorted(attempts.items()))
            )
        if self.never_connected:
            parts.append(f"never connected: {len(self.never_connected)}")
        if self.never_reconnected:
            parts.append(f"never reconnected: {len(self.never_reconnected)}")
        if self.bound_violations:
            parts.append("outside spec 1.4 bounds:\n  " + "\n  ".join(self.bound_violations[:20]))
        return "\n".join(parts)


def check_sample(sample: DeviceSample) -> str | None:
    """Why ``sample`` is inconsistent with the spec 1.4 backoff, or None."""
    if not sample.delays:
        return f"{sample.identifier}: reconnected without a backoff delay"
    low, high = backoff_bounds(len(sample.delays))
    total = sum(sample.delays)
    if not low - 1e-9 <= total <= high + 1e-9:
        return f"{sample.identifier}: delays {sample.delays} outside [{low}, {high}]"
    if sample.latency < total - 0.05:
        return (
            f"{sample.identifier}: back after {sample.latency:.3f} s, before its {total:.3f} s wait"
        )
    if sample.latency > high + CONNECT_OVERHEAD_ALLOWANCE * len(sample.delays):
        return (
            f"{sample.identifier}: back after {sample.latency:.3f} s (waits at most {high:.3f} s)"
        )
    return None


async def restart_local_hub(hub: LocalHub, downtime: float) -> LocalHub:
    """Stop ``hub`` and start a new one on the same ports, directory and PKI after ``downtime``.

    The hub must have been given a ``directory`` (a hub that owns its temporary
    directory deletes it, PKI included, when it stops).
    """
    port = hub.port
    host = hub.host.rsplit(":", 1)[0].strip("[]")
    firmware_port = hub.firmware.port
    directory, pki = hub.directory, hub.pki
    await hub.stop()
    await asyncio.sleep(downtime)
    restarted = LocalHub(
        pki=pki,
        directory=directory,
        host=host,
        port=port,
        firmware_port=firmware_port,
        tls13=hub.tls13,
        fwup_public_keys=hub.fwup_public_keys,
    )
    for identifier, device in hub.devices.items():
        if device.shared_key is not None and device.shared_secret is not None:
            restarted.add_device(
                identifier, shared_key=device.shared_key, shared_secret=device.shared_secret
            )
    await restarted.start()
    return restarted


class Fleet:
    """``count`` simulated devices. Use :meth:`start`, the waits, then :meth:`stop`."""

    def __init__(self, options: FleetOptions, directory: Path, hub: LocalHub | None) -> None:
        self.options = options
        self.directory = directory
        self.hub = hub
        self.changed = asyncio.Event()
        self.devices: list[SimulatedDevice] = []

    def identifiers(self) -> list[str]:
        width = max(4, len(str(self.options.count)))
        return [f"{self.options.prefix}-{i:0{width}d}" for i in range(self.options.count)]

    def prepare(self) -> None:
        """Write each device's config and KV file (issuing certificates as needed)."""
        for index, identifier in enumerate(self.identifiers()):
            config = self._device_config(identifier)
            seed = None if self.options.seed is None else self.options.seed * 1_000_003 + index
            client = SimulatedClient(self.changed)
            self.devices.append(SimulatedDevice(identifier, config, client, RecordingRandom(seed)))

    def _device_config(self, identifier: str) -> Config:
        home = self.directory / "devices" / identifier
        home.mkdir(parents=True, exist_ok=True)
        kv_file = home / "kv.txt"
        uuid = hashlib.sha256(identifier.encode()).hexdigest()
        kv_file.write_text(
            "nerves_fw_active=a\n"
            f"nerves_serial_number={identifier}\n"
            f"a.nerves_fw_uuid={uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:32]}\n"
            "a.nerves_fw_version=0.0.1\na.nerves_fw_product=nhlink-simulate\n"
            "a.nerves_fw_platform=sim\na.nerves_fw_architecture=any\n"
        )
        extra: dict[str, Any] = {
            "data_path": str(home / "data"),
            "heartbeat_interval_msec": self.options.heartbeat_interval_msec,
            "kv": {"file": str(kv_file)},
        }
        path = home / "device.toml"
        if self.options.config_template is not None:
            text = self.options.config_template.read_text()
            path.write_text(text.replace(IDENTIFIER_PLACEHOLDER, identifier))
            return load_config(path, environ={}).with_changes(kv=KVConfig(file=str(kv_file)))
        assert self.hub is not None
        if self.options.auth == "certificate":
            self.hub.write_device_config(identifier, path, extra=extra)
        else:
            key = f"nhd_{identifier}"
            secret = hashlib.sha256(f"{self.options.seed}:{identifier}".encode()).hexdigest()
            self.hub.add_device(identifier, shared_key=key, shared_secret=secret)
            extra["shared_secret"] = {"key": key, "secret": secret, "identifier": identifier}
            write_device_config(
                path,
                host=self.hub.host,
                certfile=None,
                keyfile=None,
                cacertfile=self.hub.pki.ca.cert_path.resolve(),
                extra=extra,
            )
        return load_config(path, environ={})

    async def start(self) -> None:
        """Start every device, spread evenly over ``ramp_up`` seconds."""
        if not self.devices:
            self.prepare()
        loop = asyncio.get_running_loop()
        step = self.options.ramp_up / len(self.devices)
        begin = time.monotonic()
        for index, device in enumerate(self.devices):
            wait = begin + index * step - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            device.link = NervesHubLink(device.config, device.client, rng=device.rng)
            device.started_at = time.monotonic()
            device.task = loop.create_task(
                device.link.run(), name=f"nhlink-sim-{device.identifier}"
            )

    async def wait_connected(self, after: float, timeout: float) -> list[str]:
        """Wait until every device connected at or after ``after``; returns those that did not."""
        deadline = time.monotonic() + timeout
        while True:
            self.changed.clear()
            missing = [
                d.identifier for d in self.devices if not any(t >= after for t in d.client.connects)
            ]
            remaining = deadline - time.monotonic()
            if not missing or remaining <= 0:
                return missing
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))

    def first_connects(self) -> LatencySummary:
        return LatencySummary(
            tuple(d.client.connects[0] - d.started_at for d in self.devices if d.client.connects)
        )

    def reconnect_samples(self, after: float) -> list[DeviceSample]:
        """Each device's first disconnect at or after ``after`` and the connect that followed."""
        samples: list[DeviceSample] = []
        for device in self.devices:
            lost = next((t for t, _ in device.client.errors if t >= after), None)
            if lost is None:
                continue
            back = next((t for t in device.client.connects if t > lost), None)
            if back is None:
                continue
            delays = [v for t, v in device.rng.draws if lost <= t <= back]
            samples.append(
                DeviceSample(
                    device.identifier,
                    lost,
                    back,
                    tuple(jittered_delay(i, v) for i, v in enumerate(delays)),
                )
            )
        return samples

    async def stop(self) -> None:
        links = [d.link for d in self.devices if d.link is not None]
        await asyncio.gather(*(link.stop() for link in links), return_exceptions=True)
        tasks = [d.task for d in self.devices if d.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_fleet(
    options: FleetOptions, *, say: Any = None, hub: LocalHub | None = None
) -> FleetReport:
    """Run a whole simulation and return its report (``say`` gets progress lines)."""
    tell = say or (lambda _text: None)
    with contextlib.ExitStack() as stack:
        directory = options.directory
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nhlink-sim-")))
        directory.mkdir(parents=True, exist_ok=True)
        owned_hub = hub is None and options.config_template is None
        if owned_hub:
            hub = LocalHub(directory=directory / "hub")
            await hub.start()
            tell(f"local hub on wss://{hub.host}")
        fleet = Fleet(options, directory, hub)
        try:
            await asyncio.to_thread(fleet.prepare)
            tell(f"starting {options.count} devices over {options.ramp_up:g} s")
            started = time.monotonic()
            await fleet.start()
            missing = await fleet.wait_connected(started, options.connect_timeout)
            report = FleetReport(options.count, fleet.first_connects(), never_connected=missing)
            tell(f"{options.count - len(missing)}/{options.count} connected")
            if options.restart_hub_after is not None and hub is not None and not missing:
                await asyncio.sleep(options.restart_hub_after)
                tell(f"restarting the hub ({options.restart_downtime:g} s down)")
                report.restart_at = time.monotonic()
                hub = await restart_local_hub(hub, options.restart_downtime)
                fleet.hub = hub
                report.never_reconnected = await fleet.wait_connected(
                    report.restart_at, options.connect_timeout
                )
                report.reconnects = fleet.reconnect_samples(report.restart_at)
            if options.duration:
                tell(f"keeping the fleet up for {options.duration:g} s")
                await asyncio.sleep(options.duration)
            if options.restart_hub_after is None:
                report.reconnects = fleet.reconnect_samples(started)
            report.bound_violations = [
                problem
                for problem in (check_sample(s) for s in report.reconnects)
                if problem is not None
            ]
            return report
        finally:
            await fleet.stop()
            if owned_hub and hub is not None:
                await hub.stop()


def summarize_spread(samples: Sequence[DeviceSample]) -> float:
    """Pearson correlation between each device's chosen backoff and its reconnect latency."""
    if len(samples) < 3:
        return math.nan
    waits = [sum(s.delays) for s in samples]
    latencies = [s.latency for s in samples]
    try:
        return statistics.correlation(waits, latencies)
    except statistics.StatisticsError:
        return math.nan
