"""Delta updates end to end: the hub offers a NervesHub-style delta .fw (the rootfs entry
is an xdelta3 patch against the running slot) and the device applies it over real TLS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nhlink.testing import HostedFile, LocalHub, Pki
from tests.delta import support as delta_support
from tests.link.support import run
from tests.update.firmware import BLOCK, SLOT_A_BLOCK, Firmware, make_firmware, slot_digest
from tests.update.test_updater import HEAD, Device, assert_applied, updating_device


def next_rootfs(rootfs: bytes) -> bytes:
    """A plausible next build: scattered rewrites, an insertion and a new 8 KiB tail."""
    return delta_support.modified(
        rootfs, 7, edits=30, max_edit=1000, insertion=5000, tail=8192, tail_at=len(rootfs) - 8192
    )


@contextlib.asynccontextmanager
async def offered(
    pki: Pki, tmp_path: Path, running: Firmware, archive: Path
) -> AsyncIterator[tuple[LocalHub, HostedFile, Device]]:
    """A device running ``running`` on a hub that hosts ``archive`` as ``fw/delta.fw``."""
    async with LocalHub(pki=pki) as hub:
        hosted = hub.firmware.add_file("fw/delta.fw", archive)
        async with updating_device(hub, tmp_path, running) as device:
            yield hub, hosted, device


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
        async with offered(pki, tmp_path, fw_v1, delta) as (hub, hosted, device):
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
        async with offered(pki, tmp_path, fw_v1, delta) as (hub, hosted, device):
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
