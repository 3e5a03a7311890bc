"""Resume across restarts: a device process applying a multi-resource update from the local
firmware server over real TLS is killed with SIGKILL at random points and started again
with the same offer. It continues from its journal with a Range request; the image ends up
exactly as after one uninterrupted apply, and the bytes downloaded in total stay close to
the archive size. A journal that does not fit is discarded and the update starts over.
Set NHLINK_TEST_SEED to replay a run."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nhlink.aio.link import NervesHubLink
from nhlink.aio.updater import Updater, default_engine
from nhlink.client import Client
from nhlink.fwup import apply_file
from nhlink.fwup.engine import MID_ENTRY_MIN_INTERVAL
from nhlink.testing import Fault, FirmwareServer, LocalHub, Pki
from nhlink.update.journal import JOURNAL_NAME
from nhlink.update.verify import PART_SIZE
from tests.conftest import backend_params
from tests.link.support import device_config, run, running
from tests.update.firmware import BLOCK, SLOT_A_BLOCK, public_key, raw_public_key, read_env
from tests.update.resume_support import MultiFirmware, image_size, make_multi_firmware
from tests.update.support import firmware_server

REPO = Path(__file__).resolve().parents[2]
RATE = 2_000_000  # bytes/s: one archive streams in about 2 s
SEED = int(os.environ.get("NHLINK_TEST_SEED", str(time.time_ns() % 1_000_000)))
SLACK = 512 * 1024
DEVICE = "dev-resume"
INTERVAL = 0  # a checkpoint after every resource of these small archives (default: 4 MiB)
SINGLE_SIZE = 16 << 20
DEFLATE_BLOCK_SLACK = 256 * 1024  # a checkpoint inside an entry waits for a block boundary


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> tuple[MultiFirmware, MultiFirmware]:
    directory = tmp_path_factory.mktemp("multi-fw")
    return make_multi_firmware(directory, "1.0.0"), make_multi_firmware(directory, "2.0.0")


def install_v1(image: Path, v1: MultiFirmware) -> None:
    image.unlink(missing_ok=True)
    frames = apply_file(v1.path, image, "complete", [raw_public_key()])
    assert frames[-1].type == "OK", frames
    slot_b = (SLOT_A_BLOCK + v1.slot_blocks) * BLOCK
    with open(image, "r+b") as f:
        f.truncate(slot_b)
        f.seek(slot_b)
        f.write(b"\xa5" * (image_size(v1) - slot_b))


@dataclass
class Device:
    """One device: its image, data directory and the offer it keeps getting."""

    tmp: Path
    server: FirmwareServer
    backend: str
    image: Path
    offer: dict[str, object] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @property
    def journal(self) -> Path:
        return self.tmp / "data" / JOURNAL_NAME

    async def start(self) -> asyncio.subprocess.Process:
        path = self.tmp / "offer.json"
        path.write_text(json.dumps(self.offer))
        env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}")
        env["NHLINK_IMPORT_POLICY"] = self.backend
        if self.backend == "python":  # the suite's native-required pass must not forbid it
            env.pop("NHLINK_REQUIRE_NATIVE", None)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.update.resume_support",
            str(path),
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        mode = (await child.stdout.readline()).decode().strip()
        self.runs.append(mode)
        assert (await child.stdout.readline()).strip() == b"READY", mode
        return child

    async def kill_when(
        self, child: asyncio.subprocess.Process, ready: Callable[[], bool]
    ) -> str | None:
        """Kill ``child`` once ``ready()``; returns its output instead if it ended first."""
        assert child.stdout is not None and child.stderr is not None

        async def ended() -> str:
            out, err = await child.communicate()
            self.stderr.append(err.decode())
            assert child.returncode == 0, (out, err.decode()[-2000:])
            return out.decode()

        while not ready():
            if child.returncode is not None:
                return await ended()
            await asyncio.sleep(0.01)
        try:
            child.send_signal(signal.SIGKILL)
        except ProcessLookupError:  # it ended right at the kill point
            return await ended()
        assert await child.wait() == -signal.SIGKILL
        self.stderr.append((await child.stderr.read()).decode())
        return None

    async def complete(self) -> str:
        child = await self.start()
        assert child.stdout is not None and child.stderr is not None
        out, err = await child.communicate()
        self.stderr.append(err.decode())
        assert child.returncode == 0, (out, err.decode()[-2000:])
        return out.decode()


async def new_device(
    tmp: Path, server: FirmwareServer, backend: str, v1: MultiFirmware, v2: MultiFirmware, pki: Pki
) -> Device:
    image = tmp / "disk.img"
    install_v1(image, v1)
    hosted = server.add_file("v2.fw", v2.path)
    offer = {
        "url": server.url("v2.fw", Fault(rate=RATE, times=None)),
        "cafile": str(pki.ca.cert_path),
        "image": str(image),
        "task": "upgrade",
        "public_key": public_key(),
        "uuid": v2.uuid,
        "size": hosted.size,
        "checksum": hosted.checksum,
        "partials_checksums": hosted.partials_checksums,
        "data_path": str(tmp / "data"),
        "checkpoint_interval": INTERVAL,
    }
    return Device(tmp, server, backend, image, offer)


def reference_image(tmp: Path, v1: MultiFirmware, v2: MultiFirmware) -> bytes:
    image = tmp / "reference.img"
    install_v1(image, v1)
    frames = apply_file(v2.path, image, "upgrade", [raw_public_key()])
    assert frames[-1].type == "OK", frames
    return image.read_bytes()


def _stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _after_bytes(server: FirmwareServer, since: int, count: float) -> Callable[[], bool]:
    """True once the requests from ``since`` on sent ``count`` bytes."""
    return lambda: sum(r.bytes_sent for r in server.requests[since:]) >= count


def _after_checkpoint(journal: Path, delay: float) -> Callable[[], bool]:
    """True ``delay`` seconds after ``journal`` changed (a checkpoint was written)."""
    stamp = _stamp(journal)
    changed: list[float] = []

    def ready() -> bool:
        if not changed:
            if _stamp(journal) in (stamp, None):
                return False
            changed.append(time.monotonic())
        return time.monotonic() - changed[0] >= delay

    return ready


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[MultiFirmware, MultiFirmware]:
    """One big resource (a rootfs): v2 is 16 MiB of compressible random data, deflated."""
    directory = tmp_path_factory.mktemp("single-fw")
    return (
        make_multi_firmware(directory, "1.0.0", (SINGLE_SIZE,)),
        make_multi_firmware(directory, "2.0.0", (SINGLE_SIZE,), compress=True),
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params())
def test_sigkill_and_resume_equals_one_apply(
    backend: str, pki: Pki, tmp_path: Path, multi: tuple[MultiFirmware, MultiFirmware]
) -> None:
    v1, v2 = multi
    # per kill after a checkpoint, at most what was fetched past the checkpoint: up to the
    # checkpoint interval and a resource, the part before the checkpoint, and what the
    # socket buffers and the pipeline held
    waste = INTERVAL + v2.largest_resource + PART_SIZE + SLACK
    sigkill_and_resume(backend, pki, tmp_path, v1, v2, waste)


@pytest.mark.slow
@pytest.mark.parametrize("backend", [p for p in backend_params() if "native" in str(p)])
def test_sigkill_inside_one_big_resource_downloads_it_about_once(
    backend: str, pki: Pki, tmp_path: Path, single: tuple[MultiFirmware, MultiFirmware]
) -> None:
    """A one-resource archive: checkpoints inside the entry (native backend) keep what a
    kill costs to the checkpoint spacing and a part, not the resource."""
    v1, v2 = single
    waste = MID_ENTRY_MIN_INTERVAL + PART_SIZE + SLACK + DEFLATE_BLOCK_SLACK
    total, size, kills = sigkill_and_resume(backend, pki, tmp_path, v1, v2, waste)
    assert v2.largest_resource > 4 * waste  # a resource boundary checkpoint would waste more
    print(f"single resource: {total / size:.3f} x the archive downloaded with {kills} kills")


def sigkill_and_resume(
    backend: str, pki: Pki, tmp_path: Path, v1: MultiFirmware, v2: MultiFirmware, waste: int
) -> tuple[int, int, int]:
    """Kill the device process at random points, start it again until the update is done;
    returns the bytes sent since the first checkpointing run, the archive size and the
    kills after a checkpoint."""
    expected = reference_image(tmp_path, v1, v2)
    rng = random.Random(SEED)
    size = v2.path.stat().st_size

    async def scenario() -> tuple[Device, int, int, int]:
        async with firmware_server(pki, tmp_path / "srv") as server:
            device = await new_device(tmp_path, server, backend, v1, v2, pki)
            after_first = 0
            kills = 0
            for kill in range(4):
                since = len(server.requests)
                if kill == 1:
                    after_first = since
                child = await device.start()
                # first kill: anywhere early (maybe before any checkpoint); later ones:
                # a moment after this run wrote a new checkpoint
                if kill == 0:
                    far_enough = _after_bytes(server, since, rng.uniform(0.05, 0.4) * size)
                else:
                    far_enough = _after_checkpoint(device.journal, rng.uniform(0.0, 0.3))
                out = await device.kill_when(child, far_enough)
                if out is not None:
                    assert out.split("\n")[-2].startswith("OK"), out
                    break  # it finished before the kill point
                kills += kill > 0
                env = read_env(device.image)
                if env["nerves_fw_active"] == "b":
                    break  # killed after on-finish: the update was complete (and committed)
                assert env["a.nerves_fw_version"] == "1.0.0", f"seed {SEED}"  # the old slot boots
            else:
                out = await device.complete()
                assert out.split("\n")[-2].startswith("OK"), out
            later = sum(r.bytes_sent for r in server.requests[after_first:])
            overall = sum(r.bytes_sent for r in server.requests)
            return device, later, kills, overall

    device, total, kills, overall = run(scenario(), timeout=180)
    print(
        f"seed {SEED} {backend}: runs {device.runs}; since the first checkpointing run "
        f"{total} bytes sent for a {size}-byte archive, {kills} kills after a checkpoint; "
        f"{overall} bytes in all ({overall / size:.3f} x the archive)"
    )
    assert device.image.read_bytes() == expected, f"seed {SEED}"
    assert read_env(device.image)["nerves_fw_active"] == "b"
    assert not device.journal.exists()
    assert any(mode.startswith("RESUME") for mode in device.runs), (device.runs, device.stderr)
    # everything once, plus `waste` for each kill after a checkpoint (a kill between the
    # commit, where the journal goes, and the end of on-finish restarts from scratch:
    # that kill may cost the whole archive)
    fresh_after_checkpoint = device.runs[2:].count("FRESH")
    allowance = (kills - fresh_after_checkpoint) * waste + fresh_after_checkpoint * (size + SLACK)
    assert total <= size + allowance, (total, kills, device.runs)
    resumed = [int(mode.split()[1]) for mode in device.runs if mode.startswith("RESUME")]
    assert all(start % (1 << 20) == 0 for start in resumed), device.runs
    return total, size, kills


def _other_uuid(record: dict[str, object], device: Device) -> None:
    offer = record["offer"]
    assert isinstance(offer, dict)
    offer["uuid"] = "00000000-0000-0000-0000-000000000000"
    device.journal.write_text(json.dumps(record))


def _replaced_destination(record: dict[str, object], device: Device) -> None:
    copy = device.image.with_suffix(".copy")
    shutil.copy(device.image, copy)
    os.replace(copy, device.image)  # same bytes, another inode


def _corrupt(record: dict[str, object], device: Device) -> None:
    device.journal.write_bytes(device.journal.read_bytes()[:-7] + b"\x00garbage")


def _tampered_head(record: dict[str, object], device: Device) -> None:
    head = bytearray(base64.b64decode(str(record["head"])))
    head[-40] ^= 0x01
    record["head"] = base64.b64encode(bytes(head)).decode()
    device.journal.write_text(json.dumps(record))


MISMATCHES = {
    "other-uuid": (_other_uuid, "another firmware"),
    "destination-replaced": (_replaced_destination, "destination changed"),
    "corrupt": (_corrupt, "corrupt"),
    "tampered-head": (_tampered_head, "does not fit"),
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("mismatch", sorted(MISMATCHES))
def test_a_journal_that_does_not_fit_is_discarded(
    backend: str,
    mismatch: str,
    pki: Pki,
    tmp_path: Path,
    multi: tuple[MultiFirmware, MultiFirmware],
) -> None:
    v1, v2 = multi
    expected = reference_image(tmp_path, v1, v2)
    spoil, log_text = MISMATCHES[mismatch]

    async def scenario() -> Device:
        async with firmware_server(pki, tmp_path / "srv") as server:
            device = await new_device(tmp_path, server, backend, v1, v2, pki)
            child = await device.start()
            await device.kill_when(child, device.journal.exists)
            record = json.loads(device.journal.read_text())
            spoil(record, device)
            since = len(server.requests)
            await device.complete()
            assert all(r.range_start in (None, 0) for r in server.requests[since:])
            return device

    device = run(scenario(), timeout=120)
    assert device.runs == ["FRESH", "FRESH"]
    assert "discarded" in device.stderr[-1] and log_text in device.stderr[-1], device.stderr[-1]
    assert device.image.read_bytes() == expected
    assert not device.journal.exists()


class _Client(Client):
    def __init__(self) -> None:
        super().__init__()
        self.reboots = 0

    def reboot(self) -> None:
        self.reboots += 1


@pytest.mark.slow
def test_updater_resumes_an_update_whose_download_failed(
    pki: Pki, tmp_path: Path, multi: tuple[MultiFirmware, MultiFirmware]
) -> None:
    """Through the real link and Updater: the first offer's download breaks for good after
    a checkpoint (``failed``), the same offer again continues by Range from the journal."""
    v1, v2 = multi
    expected = reference_image(tmp_path, v1, v2)
    image = tmp_path / "disk.img"
    install_v1(image, v1)
    meta = {"uuid": v2.uuid, "version": "2.0.0", "product": "nhlink-resume-tests"}

    async def scenario() -> list[int | None]:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", v2.path)
            config = device_config(
                hub,
                DEVICE,
                tmp_path,
                fwup_devpath=str(image),
                fwup_public_keys=[public_key()],
                retry={"time_between_retries_msec": 50, "idle_timeout_msec": 2000},
                update={"preflight": False},  # its head request would take the first fault
            )
            journal = Path(config.data_path) / JOURNAL_NAME
            client = _Client()
            factory = functools.partial(default_engine, checkpoint_interval=INTERVAL)
            updater = Updater(engine_factory=factory, checkpoint_period=0)  # byte spacing only
            link = NervesHubLink(config, client, update_handler=updater)
            async with running(link):
                await hub.wait_for_device(DEVICE)
                broken = hub.firmware.url(
                    "fw/v2.fw",
                    Fault(rate=RATE, drop_after=3_000_000),
                    Fault(status=403, times=None),
                )
                await hub.push_update(DEVICE, broken, meta, **hosted.update_kwargs())
                await hub.wait_for_status(DEVICE, "failed", 30)
                assert journal.exists()
                assert read_env(image)["nerves_fw_active"] == "a"
                since = len(hub.firmware.requests)
                url = hub.firmware.url("fw/v2.fw", Fault(rate=RATE))
                await hub.push_update(DEVICE, url, meta, **hosted.update_kwargs())
                await hub.wait_for_status(DEVICE, "completed", 30)
                await hub.wait_until(lambda: client.reboots or None, 5, "a reboot")
                assert not journal.exists()
                return [r.range_start for r in hub.firmware.requests[since:]]

    starts = run(scenario(), timeout=90)
    assert starts and starts[0] is not None and starts[0] > 0 and starts[0] % PART_SIZE == 0
    assert image.read_bytes() == expected


@pytest.mark.slow
def test_resume_without_partials_starts_at_the_checkpoint(
    pki: Pki, tmp_path: Path, multi: tuple[MultiFirmware, MultiFirmware]
) -> None:
    """An offer without ``partials_checksums``: the download restarts exactly at the
    checkpoint (only the size is checked; the signed resource digests still are)."""
    v1, v2 = multi
    expected = reference_image(tmp_path, v1, v2)

    async def scenario() -> tuple[Device, list[int | None]]:
        async with firmware_server(pki, tmp_path / "srv") as server:
            device = await new_device(tmp_path, server, "default", v1, v2, pki)
            device.offer["partials_checksums"] = None
            child = await device.start()
            assert await device.kill_when(child, _after_checkpoint(device.journal, 0.0)) is None
            checkpoint = json.loads(device.journal.read_text())["offset"]
            since = len(server.requests)
            out = await device.complete()
            assert out.split("\n")[-2].startswith("OK"), out
            starts = [r.range_start for r in server.requests[since:]]
            assert starts[0] == checkpoint, (starts, checkpoint)
            return device, starts

    device, _ = run(scenario(), timeout=60)
    assert device.runs[1].startswith("RESUME") and device.runs[1].endswith(" 0"), device.runs
    assert device.image.read_bytes() == expected
