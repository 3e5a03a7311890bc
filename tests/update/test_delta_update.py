"""Delta updates end to end: the hub offers a NervesHub-style delta .fw (the rootfs entry
is an xdelta3 patch against the running slot) and the device applies it over real TLS."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nhlink.testing import LocalHub, Pki
from tests.delta import support as delta_support
from tests.link.support import run
from tests.update.firmware import BLOCK, SLOT_A_BLOCK, Firmware, make_firmware, slot_digest
from tests.update.test_updater import HEAD, assert_applied, updating_device


def next_rootfs(rootfs: bytes, seed: int = 7) -> bytes:
    """A plausible next build: scattered rewrites, an insertion and a longer tail."""
    rng = random.Random(seed)
    data = bytearray(rootfs)
    for _ in range(30):
        at = rng.randrange(len(data) - 1000)
        data[at : at + rng.randrange(1, 1000)] = rng.randbytes(rng.randrange(1, 1000))
    at = rng.randrange(len(data))
    data[at:at] = rng.randbytes(5000)
    return bytes(data[: len(rootfs) - 8192]) + rng.randbytes(8192)


@pytest.fixture(scope="module")
def delta_release(
    tmp_path_factory: pytest.TempPathFactory, fw_v1: Firmware
) -> tuple[Firmware, Path]:
    """v2 (full archive, delta-capable tasks) and its delta twin against v1's rootfs."""
    delta_support.xdelta3()
    directory = tmp_path_factory.mktemp("delta-release")
    full = make_firmware(
        directory,
        "2.0.0",
        len(fw_v1.rootfs),
        slot_blocks=fw_v1.slot_blocks,
        rootfs=next_rootfs(fw_v1.rootfs),
        delta=True,
    )
    patch = delta_support.make_patch(directory / "xd", fw_v1.rootfs, full.rootfs)
    delta = directory / "fw-2.0.0-delta.fw"
    delta_support.replace_entries(full.path, delta, {"data/rootfs.img": patch})
    return full, delta


def test_a_delta_update_applies_the_new_rootfs(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, delta_release: tuple[Firmware, Path]
) -> None:
    full, delta = delta_release

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/delta.fw", delta)
            async with updating_device(hub, tmp_path, fw_v1) as device:
                await device.push(hosted, full)
                await device.wait_for("completed")
                await device.wait_for_reboot()
                served = sum(r.bytes_sent for r in hub.firmware.requests_for("fw/delta.fw"))
            assert_applied(device, fw_v1, full)
            # the whole delta once, plus the preflight's 16 KiB head request
            assert served <= delta.stat().st_size + 16384
            assert delta.stat().st_size < full.path.stat().st_size // 10

    run(scenario(), timeout=60)


def test_a_delta_against_the_wrong_running_slot_fails_on_the_hash(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, delta_release: tuple[Firmware, Path]
) -> None:
    """Slot A was changed on the device (not the build the patch was made against)."""
    full, delta = delta_release

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/delta.fw", delta)
            async with updating_device(hub, tmp_path, fw_v1) as device:
                with open(device.image, "r+b") as image:  # one byte per 4 KiB differs
                    for at in range(100, len(fw_v1.rootfs), 4096):
                        image.seek(SLOT_A_BLOCK * BLOCK + at)
                        image.write(bytes([fw_v1.rootfs[at] ^ 0x5A]))
                changed_slot_a = slot_digest(device.image, fw_v1, "a")
                await device.push(hosted, full, hub.firmware.url("fw/delta.fw", HEAD))
                failed = await device.wait_for("failed")
                await device.settle()
            assert failed["reason"].startswith("hash: "), failed
            env = device.env()
            assert env["nerves_fw_active"] == "a" and "b.nerves_fw_uuid" not in env
            assert slot_digest(device.image, fw_v1, "a") == changed_slot_a
            assert device.client.reboots == []

    run(scenario(), timeout=60)
