"""Fault storm: many updates in a row against the local hub with injected faults.

One device (a real :class:`NervesHubLink` with the :class:`Updater`, applying
to an A/B image with a U-Boot environment) is offered ``updates`` updates.
A seeded RNG picks a fault for each: none, dropped connections (resumed, or
so many that the downloader gives up), a stall past the idle timeout, a slow
link, an HTTP error, or a hub restart (the socket and the firmware server)
mid-download. Every update must end ``completed`` or ``failed`` with the
reason its fault explains; after each one the image must boot what it should
(env + slot bytes). Around the run: open file descriptors, threads and RSS
are sampled after every update.

Run the full storm: ``PYTHONPATH=src:. python -m tests.storm.fault_storm --updates 200``
(``scripts/storm.sh`` does it). Exit status 0 when every check held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import re
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhlink.aio.link import NervesHubLink
from nhlink.aio.updater import Updater
from nhlink.client import Client
from nhlink.protocol.backoff import DEFAULT_STABLE_AFTER
from nhlink.simulate import restart_local_hub
from nhlink.testing import Fault, HostedFile, LocalHub
from tests.update.firmware import (
    Firmware,
    digest,
    install,
    make_firmware,
    public_key,
    read_env,
    slot_digest,
    write_fw_env_config,
)

DEVICE = "storm-0001"
ROOTFS_SIZE = 256 * 1024 + 777
MAX_DISCONNECTS = 6
RETRY = {
    "max_disconnects": MAX_DISCONNECTS,
    "time_between_retries_msec": 150,
    "idle_timeout_msec": 400,
}
UPDATE_TIMEOUT = 60.0
SCENARIOS = ("clean", "drops", "drops_exhaust", "stall", "slow", "http_error", "hub_restart")
WEIGHTS = (2, 2, 2, 2, 2, 2, 1)
"""Hub restarts are rarer: each may first wait for the link's backoff to reset (below)."""
RECONNECT_TIMEOUT = 100.0
"""Longest reconnect wait: spec 1.4's largest delay is 90 s."""
RSS_SLOPE_LIMIT_KIB = 64.0
"""RSS growth per update (least-squares slope over the second half) above which a long
run is flagged."""
RSS_SLOPE_MIN_SAMPLES = 40
"""Second-half samples the slope needs to judge a run: over a few updates one step (a
buffer or pool allocated once, late) looks like a steep slope."""
RSS_SHORT_RUN_GROWTH_LIMIT_KIB = 16 * 1024
"""What a shorter run may grow over its second half before it is flagged."""


class StormClient(Client):
    """Accepts every update; records reboots instead of rebooting."""

    def __init__(self) -> None:
        super().__init__()
        self.reboots = 0
        self.connects: list[float] = []

    def connected(self) -> None:
        self.connects.append(time.monotonic())

    def reboot(self) -> None:
        """A simulated reboot: the device comes back reading the switched env."""
        self.reboots += 1
        if self.kv is not None:
            self.kv = self.kv.reload()

    def firmware_validated(self) -> bool:
        return True


class OutcomeRecorder:
    """Sits between the update machine and the device channel; keeps the final statuses."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.outcomes: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def _end(self, status: str, reason: str) -> None:
        self.outcomes.append((status, reason))
        self.changed.set()

    def status_received(self) -> bool:
        return bool(self.inner.status_received())

    def status_started(self, network_interface: str | None) -> bool:
        return bool(self.inner.status_started(network_interface))

    def status_completed(self) -> bool:
        self._end("completed", "")
        return bool(self.inner.status_completed())

    def status_ignored(self, reason: str = "") -> bool:
        self._end("ignored", reason)
        return bool(self.inner.status_ignored(reason))

    def status_rescheduled(self, minutes: float, reason: str | None = None) -> bool:
        self._end("rescheduled", reason or "")
        return bool(self.inner.status_rescheduled(minutes, reason))

    def status_failed(self, reason: str) -> bool:
        self._end("failed", reason)
        return bool(self.inner.status_failed(reason))

    def fwup_progress(self, stage: Any, value: float, now: float, *, force: bool = False) -> bool:
        return bool(self.inner.fwup_progress(stage, value, now, force=force))

    def set_downloading(self, uuid: str | None) -> None:
        self.inner.set_downloading(uuid)


@dataclass(frozen=True)
class Plan:
    """One update's fault and what it may end with."""

    scenario: str
    faults: tuple[Fault, ...]
    allowed: frozenset[str]
    reason: str | None = None
    """A regex the failure reason must match (None: no failure expected)."""
    restart_after: float | None = None


@dataclass
class Resources:
    fds: int
    threads: int
    pool_threads: int
    rss_kib: int


@dataclass
class StormReport:
    updates: int
    seed: int
    outcomes: Counter[str] = field(default_factory=Counter)
    by_scenario: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    samples: list[Resources] = field(default_factory=list)
    growth: list[str] = field(default_factory=list)
    """With tracemalloc: the ten allocation sites that grew most after warm-up."""
    before: Resources | None = None
    after: Resources | None = None
    elapsed: float = 0.0
    hub_restarts: int = 0
    stability_wait: float = 0.0
    """Seconds spent letting the link's backoff reset before hub restarts."""

    @property
    def rss_slope_kib(self) -> float:
        """Least-squares RSS slope (KiB per update) over the run after warm-up."""
        return _slope([s.rss_kib for s in self.samples[WARMUP:]])

    @property
    def rss_late_slope_kib(self) -> float:
        """The slope over the second half: growth that has stopped is not a leak."""
        return _slope([s.rss_kib for s in self.samples[len(self.samples) // 2 :]])

    @property
    def leaks(self) -> list[str]:
        """Descriptors or threads left behind: after teardown compared with before the run,
        and during the run the late updates' lowest count against the early ones' highest."""
        found: list[str] = []
        if self.before is not None and self.after is not None:
            if self.after.fds > self.before.fds:
                found.append(f"file descriptors {self.before.fds} before, {self.after.fds} after")
            own_before = self.before.threads - self.before.pool_threads
            if self.after.threads - self.after.pool_threads > own_before:
                found.append(f"threads {self.before.threads} before, {self.after.threads} after")
        steady = self.samples[WARMUP:]
        if len(steady) >= 8:
            quarter = len(steady) // 4
            early, late = steady[:quarter], steady[-quarter:]
            if min(s.fds for s in late) > max(s.fds for s in early):
                found.append(
                    f"file descriptors grow during the run ({max(s.fds for s in early)} -> "
                    f"{min(s.fds for s in late)})"
                )
            # The asyncio executor starts its (bounded) pool lazily: not a leak.
            if min(s.threads - s.pool_threads for s in late) > max(
                s.threads - s.pool_threads for s in early
            ):
                found.append("threads grow during the run")
        return found

    @property
    def rss_flagged(self) -> bool:
        late = self.samples[len(self.samples) // 2 :]
        if len(late) >= RSS_SLOPE_MIN_SAMPLES:
            return self.rss_late_slope_kib > RSS_SLOPE_LIMIT_KIB
        growth = late[-1].rss_kib - late[0].rss_kib if late else 0
        return growth > RSS_SHORT_RUN_GROWTH_LIMIT_KIB

    @property
    def ok(self) -> bool:
        return not (self.problems or self.leaks or self.rss_flagged)

    def as_dict(self) -> dict[str, Any]:
        rss = [s.rss_kib for s in self.samples]
        return {
            "updates": self.updates,
            "seed": self.seed,
            "elapsed_s": round(self.elapsed, 1),
            "hub_restarts": self.hub_restarts,
            "stability_wait_s": round(self.stability_wait, 1),
            "outcomes": dict(self.outcomes),
            "scenarios": dict(self.by_scenario),
            "failure_reasons": dict(self.reasons),
            "problems": self.problems,
            "fds": {
                "before": self.before and self.before.fds,
                "during_min": min(s.fds for s in self.samples),
                "during_max": max(s.fds for s in self.samples),
                "after": self.after and self.after.fds,
            },
            "threads": {
                "before": self.before and self.before.threads,
                "during_max": max(s.threads for s in self.samples),
                "after": self.after and self.after.threads,
                "after_executor": self.after and self.after.pool_threads,
            },
            "rss_kib": {
                "first": rss[0],
                "max": max(rss),
                "last": rss[-1],
                "slope_per_update": round(self.rss_slope_kib, 2),
                "second_half_slope_per_update": round(self.rss_late_slope_kib, 2),
                "every_10th": rss[::10],
                "first_50_mean": round(sum(rss[:50]) / len(rss[:50])),
                "last_50_mean": round(sum(rss[-50:]) / len(rss[-50:])),
                "all": rss,
                "flagged": self.rss_flagged,
            },
            "leaks": self.leaks,
        }

    def describe(self) -> str:
        data = self.as_dict()
        lines = [
            f"fault storm: {self.updates} updates (seed {self.seed}) in {self.elapsed:.1f} s "
            f"({self.hub_restarts} hub restarts, {self.stability_wait:.0f} s waiting for the "
            "backoff to reset before them)",
            "  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            "  scenarios: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_scenario.items())),
        ]
        for reason, count in self.reasons.most_common():
            lines.append(f"  failed x{count}: {reason}")
        fds, threads = data["fds"], data["threads"]
        lines.append(
            f"  fds before {fds['before']}, during {fds['during_min']}..{fds['during_max']}, "
            f"after {fds['after']}; threads before {threads['before']}, during max "
            f"{threads['during_max']}, after {threads['after']} "
            f"({threads['after_executor']} in the asyncio executor)"
        )
        rss = data["rss_kib"]
        lines.append(
            f"  RSS {rss['first'] / 1024:.1f} -> {rss['last'] / 1024:.1f} MiB "
            f"(max {rss['max'] / 1024:.1f}), slope {rss['slope_per_update']:+.1f} KiB/update, "
            f"second half {rss['second_half_slope_per_update']:+.1f} KiB/update"
            + (" FLAGGED" if rss["flagged"] else "")
        )
        lines += [f"  leak: {leak}" for leak in self.leaks]
        lines += [f"  grew: {line}" for line in self.growth]
        lines += [f"  problem: {p}" for p in self.problems[:30]]
        return "\n".join(lines)


WARMUP = 3


def _slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against their index (0 for fewer than 3)."""
    n = len(values)
    if n < 3:
        return 0.0
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return num / sum((i - mean_x) ** 2 for i in range(n))


def sample_resources() -> Resources:
    rss = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    threads = threading.enumerate()
    pool = sum(1 for t in threads if t.name.startswith("asyncio_"))
    return Resources(len(os.listdir("/proc/self/fd")), len(threads), pool, rss)


def plan_update(rng: random.Random, size: int) -> Plan:
    """Pick a fault for one update."""
    scenario = rng.choices(SCENARIOS, WEIGHTS)[0]
    done = frozenset({"completed"})
    match scenario:
        case "clean":
            return Plan(scenario, (), done)
        case "drops":
            times = rng.randint(1, MAX_DISCONNECTS - 2)
            return Plan(scenario, (Fault(drop_after=rng.randrange(1, size), times=times),), done)
        case "drops_exhaust":
            fault = Fault(drop_after=rng.randrange(0, size // (2 * MAX_DISCONNECTS)), times=None)
            return Plan(scenario, (fault,), frozenset({"failed"}), r"max disconnects reached")
        case "stall":
            fault = Fault(stall_after=rng.randrange(0, size), stall_seconds=2.0)
            return Plan(scenario, (fault,), done)
        case "slow":
            rate = size / rng.uniform(0.3, 1.0)
            return Plan(scenario, (Fault(rate=rate, times=None),), done)
        case "http_error":
            status = rng.choice((403, 404, 500))
            return Plan(
                scenario,
                (Fault(status=status, times=None),),
                frozenset({"failed"}),
                rf"http {status}",
            )
        case _:
            rate = size / 1.5
            return Plan(
                scenario,
                (Fault(rate=rate, times=None),),
                frozenset({"completed", "failed"}),
                r"max disconnects reached|connection|refused|http",
                restart_after=rng.uniform(0.1, 0.8),
            )


class Storm:
    """One device, one hub, ``updates`` updates."""

    def __init__(self, directory: Path, firmwares: Sequence[Firmware], hub: LocalHub) -> None:
        self.directory = directory
        self.firmwares = list(firmwares)
        self.hub = hub
        self.image = directory / "disk.img"
        self.client = StormClient()
        self.updater = Updater()
        self.link: NervesHubLink | None = None
        self.recorder: OutcomeRecorder | None = None
        self.active = 0  # index into firmwares of what the active slot holds
        self.hosted: list[HostedFile] = []
        self.restarts = 0
        self.stability_waits = 0.0

    async def start(self) -> None:
        install(self.image, self.firmwares[0])
        fw_env = write_fw_env_config(self.directory, self.image)
        config_path = self.hub.write_device_config(
            DEVICE,
            self.directory / "device.toml",
            extra={
                "data_path": str(self.directory / "data"),
                "kv": {"fw_env_config": str(fw_env)},
                "fwup_devpath": str(self.image),
                "fwup_public_keys": [public_key()],
                "retry": RETRY,
            },
        )
        from nhlink.config import load_config

        self.link = NervesHubLink(
            load_config(config_path, environ={}), self.client, update_handler=self.updater
        )
        self.recorder = OutcomeRecorder(self.updater.machine.reporter)
        self.updater.machine.reporter = self.recorder
        self._task = asyncio.get_running_loop().create_task(self.link.run())
        self._host()
        await self.hub.wait_for_device(DEVICE, timeout=RECONNECT_TIMEOUT)

    def _host(self) -> None:
        self.hosted = [
            self.hub.firmware.add_file(f"fw/{fw.version}.fw", fw.path) for fw in self.firmwares
        ]

    async def stop(self) -> None:
        if self.link is not None:
            await self.link.stop()
            await self._task

    async def one_update(self, number: int, plan: Plan) -> list[str]:
        """Run one update; returns what went wrong (empty when all held)."""
        assert self.recorder is not None
        target = 1 - self.active
        firmware, hosted = self.firmwares[target], self.hosted[target]
        old = self.firmwares[self.active]
        env_before = read_env(self.image)
        old_slot = env_before["nerves_fw_active"]
        old_bytes = slot_digest(self.image, old, old_slot)
        reboots = self.client.reboots
        ends = len(self.recorder.outcomes)
        self.recorder.changed.clear()
        url = self.hub.firmware.url(hosted.name, *plan.faults) if plan.faults else hosted.url
        await self.hub.wait_for_device(DEVICE, timeout=RECONNECT_TIMEOUT)
        requests_before = len(self.hub.firmware.requests)
        await self.hub.push_update(DEVICE, url, firmware.meta, **hosted.update_kwargs())
        restarted = False
        if plan.restart_after is not None:
            await self._backoff_reset()
            await self.hub.firmware.wait_for_request(lambda r: True, 20, since=requests_before)
            await asyncio.sleep(plan.restart_after)
            self.hub = await restart_local_hub(self.hub, 0.3)
            self._host()
            self.restarts += 1
            restarted = True
        status, reason = await self._outcome(ends)
        await self._idle()
        problems: list[str] = []
        tag = f"update {number} ({plan.scenario})"
        if status not in plan.allowed:
            problems.append(f"{tag}: ended {status} {reason!r}, expected {sorted(plan.allowed)}")
        if status == "failed" and not (
            reason and plan.reason and re.search(plan.reason, reason, re.IGNORECASE)
        ):
            problems.append(f"{tag}: failure reason {reason!r} is not /{plan.reason}/")
        env = read_env(self.image)
        if status == "completed":
            await self._wait(lambda: self.client.reboots > reboots, "the reboot")
            new_slot = env["nerves_fw_active"]
            if new_slot == old_slot or env.get(f"{new_slot}.nerves_fw_uuid") != firmware.uuid:
                problems.append(f"{tag}: completed but the env boots {new_slot} {env}")
            elif slot_digest(self.image, firmware, new_slot) != digest(firmware.rootfs):
                problems.append(f"{tag}: completed but slot {new_slot} does not hold the rootfs")
            if slot_digest(self.image, old, old_slot) != old_bytes:
                problems.append(f"{tag}: the previous slot {old_slot} changed")
            self.active = target
        else:
            if env.get("nerves_fw_active") != old_slot or env.get(
                f"{old_slot}.nerves_fw_uuid"
            ) != env_before.get(f"{old_slot}.nerves_fw_uuid"):
                problems.append(f"{tag}: {status} but the active slot changed: {env}")
            if slot_digest(self.image, old, old_slot) != old_bytes:
                problems.append(f"{tag}: {status} but active slot {old_slot}'s bytes changed")
            if self.client.reboots != reboots:
                problems.append(f"{tag}: {status} but the device rebooted")
        if not restarted:
            seen = await self._hub_status(status)
            if not seen:
                problems.append(f"{tag}: the hub never saw {status!r}")
        self.last = (status, reason)
        return problems

    async def _backoff_reset(self) -> None:
        """Before a second hub restart, let the connection be up for the link's
        ``stable_after`` (30 s): until then its backoff keeps climbing
        (1, 2, 4 ... 60 s) from one restart to the next."""
        if self.restarts == 0:
            return
        up_since = self.client.connects[-1] if self.client.connects else 0.0
        wait = up_since + DEFAULT_STABLE_AFTER + 0.5 - time.monotonic()
        if wait > 0:
            self.stability_waits += wait
            await asyncio.sleep(wait)

    async def _outcome(self, ends: int) -> tuple[str, str]:
        assert self.recorder is not None
        recorder = self.recorder
        await self._wait(lambda: len(recorder.outcomes) > ends, "the update's outcome")
        return recorder.outcomes[ends]

    async def _idle(self) -> None:
        await self._wait(lambda: self.updater.state == "idle", "the updater to be idle")

    async def _hub_status(self, status: str) -> bool:
        device = self.hub.devices.get(DEVICE)
        with contextlib.suppress(Exception):
            await self.hub.wait_until(
                lambda: (
                    True
                    if device and device.last_status and device.last_status.get("status") == status
                    else None
                ),
                5,
                f"status {status}",
            )
            return True
        return False

    async def _wait(self, check: Any, what: str) -> None:
        deadline = time.monotonic() + UPDATE_TIMEOUT
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


async def run_storm(
    directory: Path, updates: int, seed: int, *, say: Any = None, trace: bool = False
) -> StormReport:
    """Build two firmware versions, then run ``updates`` updates with seeded faults.

    ``trace`` runs tracemalloc and reports the allocation sites that grew most
    between the end of the warm-up and the end of the run.
    """
    tell = say or (lambda _text: None)
    if trace:
        tracemalloc.start(8)
    snapshot: tracemalloc.Snapshot | None = None
    rng = random.Random(seed)
    firmwares = await asyncio.to_thread(
        lambda: [
            make_firmware(directory / "firmware", "1.0.0", ROOTFS_SIZE),
            make_firmware(directory / "firmware", "2.0.0", ROOTFS_SIZE, slot_blocks=None),
        ]
    )
    report = StormReport(updates, seed)
    report.before = sample_resources()
    started = time.monotonic()
    hub = LocalHub(directory=directory / "hub")
    await hub.start()
    storm = Storm(directory, firmwares, hub)
    try:
        await storm.start()
        size = firmwares[0].path.stat().st_size
        for number in range(1, updates + 1):
            plan = plan_update(rng, size)
            report.by_scenario[plan.scenario] += 1
            try:
                problems = await storm.one_update(number, plan)
            except TimeoutError as exc:
                report.problems.append(f"update {number} ({plan.scenario}): {exc}")
                report.outcomes["stuck"] += 1
                break
            status, reason = storm.last
            report.outcomes[status] += 1
            if status == "failed":
                report.reasons[re.sub(r"\d{4,}", "N", reason)] += 1
            report.problems += problems
            report.samples.append(sample_resources())
            if trace and number == WARMUP:
                gc.collect()  # compare live objects, not cyclic garbage awaiting collection
                snapshot = tracemalloc.take_snapshot()
            if number % 10 == 0 or problems:
                tell(f"update {number}/{updates}: {plan.scenario} -> {status} {reason}")
    finally:
        await storm.stop()
        await storm.hub.stop()
        report.elapsed = time.monotonic() - started
        report.hub_restarts = storm.restarts
        report.stability_wait = storm.stability_waits
        await asyncio.sleep(0.1)  # let closed transports finish
        report.after = sample_resources()
        if snapshot is not None:
            gc.collect()
            growth = tracemalloc.take_snapshot().compare_to(snapshot, "lineno")
            report.growth = [str(stat) for stat in growth[:10]]
            tracemalloc.stop()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.storm.fault_storm", description=__doc__)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--tracemalloc", action="store_true", help="report allocation growth")
    parser.add_argument("--directory", metavar="DIR", help="work here (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    with contextlib.ExitStack() as stack:
        directory = Path(args.directory or stack.enter_context(tempfile.TemporaryDirectory()))
        report = asyncio.run(
            run_storm(directory, args.updates, args.seed, say=print, trace=args.tracemalloc)
        )
    print(report.describe())
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
