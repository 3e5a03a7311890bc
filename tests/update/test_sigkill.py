"""Power cut during an update: a device process applying an update is killed with SIGKILL
at random points; afterwards the device still boots the old slot (U-Boot env unchanged,
old slot bytes intact). Set NHLINK_TEST_SEED to replay a run."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from nhlink.testing import Fault, Pki
from tests.link.support import run
from tests.update.firmware import (
    BLOCK,
    SLOT_A_BLOCK,
    Firmware,
    digest,
    install,
    public_key,
    read_env,
    slot_digest,
)
from tests.update.support import firmware_server

REPO = Path(__file__).resolve().parents[2]
RATE = 2_000_000  # bytes/s: the stream lasts about 1.6 s
SEED = int(os.environ.get("NHLINK_TEST_SEED", str(time.time_ns() % 1_000_000)))


def kill_points(count: int) -> list[tuple[str, float]]:
    """``("bytes", fraction of the file sent)`` and ``("time", seconds after start)``."""
    rng = random.Random(SEED)
    points: list[tuple[str, float]] = [("time", rng.uniform(0.0, 0.4))]
    points += [("bytes", rng.uniform(0.05, 0.9)) for _ in range(count - 1)]
    return points


def slot_b(image: Path, firmware: Firmware) -> bytes:
    with open(image, "rb") as f:
        f.seek((SLOT_A_BLOCK + firmware.slot_blocks) * BLOCK)
        return f.read(firmware.slot_blocks * BLOCK)


@pytest.mark.slow
def test_sigkill_at_random_points_leaves_the_old_slot_booting(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    results: list[tuple[str, float, int, bool]] = []

    async def one_run(server_dir: Path, kind: str, at: float, index: int) -> None:
        image = tmp_path / f"disk-{index}.img"
        install(image, fw_v1)
        env_before = read_env(image)
        slot_b_before = slot_b(image, fw_v1)
        async with firmware_server(pki, server_dir) as server:
            hosted = server.add_file("v2.fw", fw_v2.path)
            offer = {
                "url": server.url("v2.fw", Fault(rate=RATE)),
                "cafile": str(pki.ca.cert_path),
                "image": str(image),
                "task": "upgrade",
                "public_key": public_key(),
                "size": hosted.size,
                "checksum": hosted.checksum,
                "partials_checksums": hosted.partials_checksums,
            }
            offer_path = tmp_path / f"offer-{index}.json"
            offer_path.write_text(json.dumps(offer))
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.update.apply_child",
                str(offer_path),
                cwd=REPO,
                env=dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}"),
                stdout=asyncio.subprocess.PIPE,
            )
            assert child.stdout is not None
            assert (await child.stdout.readline()).strip() == b"READY"
            if kind == "time":
                await asyncio.sleep(at)
            else:
                threshold = int(at * hosted.size)
                await server.wait_for_request(lambda r: r.bytes_sent >= threshold, timeout=20)
            child.send_signal(signal.SIGKILL)
            status = await child.wait()
        assert status == -signal.SIGKILL, f"seed {SEED}: the child ended before the kill"
        assert read_env(image) == env_before, f"seed {SEED}: env changed ({kind} {at:.3f})"
        assert slot_digest(image, fw_v1, "a") == digest(fw_v1.rootfs), f"seed {SEED}"
        results.append((kind, at, index, slot_b(image, fw_v1) != slot_b_before))

    async def scenario() -> None:
        for index, (kind, at) in enumerate(kill_points(6)):
            await one_run(tmp_path / f"srv-{index}", kind, at, index)

    run(scenario(), timeout=120)
    # the kills did land in the middle of applies: slot B was being written
    print(SEED, results)
    assert any(wrote for *_, wrote in results), f"seed {SEED}: {results}"
