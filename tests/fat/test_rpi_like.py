"""A Raspberry-Pi-like tryboot update: the boot FAT is rebuilt in on-init, three boot files are
written with fat_write, the rootfs with raw_write, and U-Boot's env switches slots in on-finish."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest

import nhlink._native
from nhlink.fwup import Engine, Frame
from nhlink.fwup.create import create_archive
from tests.conftest import backend_params
from tests.fat import helpers as h

ENV_BLOCK, ENV_BLOCKS = 16, 16
BOOT = {"a": 2048, "b": 34816}
BOOT_BLOCKS = 32768  # 16 MiB: FAT16 with 512-byte clusters
ROOTFS = {"a": 67584, "b": 79872}
ROOTFS_BLOCKS = 12288
IMAGE_BLOCKS = ROOTFS["b"] + ROOTFS_BLOCKS

BOOT_FILES = {"config.txt": 77, "kernel8.img": 1_000_003, "bcm2711-rpi-4-b.dtb": 52_000}


def _slot_task(name: str, slot: str, requirement: str, init_extra: str = "") -> str:
    boot = BOOT[slot]
    writes = "".join(
        f'  on-resource {res} {{\n    fat_write({boot}, "{"overlays/" if res.endswith(".dtb") else ""}{res}")\n  }}\n'
        for res in BOOT_FILES
    )
    return f"""
task {name} {{
  {requirement}
  on-init {{
    {init_extra}
    fat_mkfs({boot}, {BOOT_BLOCKS})
    fat_setlabel({boot}, "BOOT-{slot.upper()}")
    fat_mkdir({boot}, "overlays")
  }}
{writes}
  on-resource rootfs.img {{
    raw_write({ROOTFS[slot]})
  }}
  on-finish {{
    uboot_setenv(uboot-env, "nerves_fw_active", "{slot}")
    uboot_setenv(uboot-env, "{slot}.nerves_fw_version", "${{VERSION}}")
  }}
}}
"""


def _conf(resources: Path) -> str:
    files = "".join(
        f'file-resource {name} {{\n  host-path = "{resources / name}"\n}}\n'
        for name in [*BOOT_FILES, "rootfs.img"]
    )
    return (
        'meta-product = "rpi-like"\nmeta-version = "${VERSION}"\n'
        + files
        + f"""
mbr mbr {{
  partition 0 {{ block-offset = {BOOT["a"]}  block-count = {BOOT_BLOCKS}  type = 0xc  boot = true }}
  partition 1 {{ block-offset = {ROOTFS["a"]}  block-count = {ROOTFS_BLOCKS}  type = 0x83 }}
}}
uboot-environment uboot-env {{
  block-offset = {ENV_BLOCK}
  block-count = {ENV_BLOCKS}
}}
"""
        + _slot_task("complete", "a", "", "mbr_write(mbr)\n    uboot_clearenv(uboot-env)")
        + _slot_task("upgrade.b", "b", 'require-uboot-variable(uboot-env, "nerves_fw_active", "a")')
        + _slot_task("upgrade.a", "a", 'require-uboot-variable(uboot-env, "nerves_fw_active", "b")')
    )


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> ModuleType:
    return nhlink._native.load(request.param)


def _firmware(tmp_path: Path, version: str) -> tuple[Path, dict[str, bytes]]:
    resources = tmp_path / f"res-{version}"
    resources.mkdir()
    contents = {name: os.urandom(size) for name, size in BOOT_FILES.items()}
    contents["rootfs.img"] = os.urandom(3_000_000)
    for name, data in contents.items():
        (resources / name).write_bytes(data)
    conf = tmp_path / f"fwup-{version}.conf"
    conf.write_text(_conf(resources))
    archive = tmp_path / f"{version}.fw"
    create_archive(
        conf, archive, level=1, environ={"VERSION": version, "SOURCE_DATE_EPOCH": "1700000000"}
    )
    return archive, contents


def _apply(backend: ModuleType, archive: Path, image: Path, task: str) -> list[Frame]:
    engine = Engine(mode="apply", destination=image, task=task, primitives=backend)
    frames: list[Frame] = []
    data = archive.read_bytes()
    for start in range(0, len(data), 16384):
        frames += engine.feed(data[start : start + 16384])
    return frames + engine.finish()


def _check_slot(backend: ModuleType, image: Path, slot: str, contents: dict[str, bytes]) -> None:
    offset = BOOT[slot] * 512
    h.assert_fsck_clean(image, offset)
    for name in BOOT_FILES:
        path = f"/overlays/{name}" if name.endswith(".dtb") else f"/{name}"
        assert h.mtype(image, offset, path) == contents[name]
    assert f"Volume in drive : is BOOT-{slot.upper()}" in "\n".join(h.mdir(image, offset))
    with image.open("rb") as f:
        f.seek(ROOTFS[slot] * 512)
        assert f.read(len(contents["rootfs.img"])) == contents["rootfs.img"]


def _active(backend: ModuleType, image: Path) -> str:
    with image.open("rb") as f:
        f.seek(ENV_BLOCK * 512)
        env, _ = backend.uboot_env_decode(f.read(ENV_BLOCKS * 512), False)
    return str(env["nerves_fw_active"])


def test_complete_then_upgrade(backend: ModuleType, tmp_path: Path) -> None:
    image = tmp_path / "sd.img"
    image.write_bytes(bytes(IMAGE_BLOCKS * 512))
    first, first_contents = _firmware(tmp_path, "1.0.0")
    frames = _apply(backend, first, image, "complete")
    assert frames[-1] == ("OK", 0, ""), frames[-3:]
    _check_slot(backend, image, "a", first_contents)
    assert _active(backend, image) == "a"

    second, second_contents = _firmware(tmp_path, "2.0.0")
    frames = _apply(backend, second, image, "upgrade")
    assert frames[-1] == ("OK", 0, ""), frames[-3:]
    _check_slot(backend, image, "b", second_contents)
    _check_slot(backend, image, "a", first_contents)  # the old slot is intact
    assert _active(backend, image) == "b"

    progress = [f[1] for f in frames if f[0] == "PR"]
    assert progress == sorted(progress) and progress[-1] == 100
