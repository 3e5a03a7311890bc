"""fat_* actions on FAT filesystems made by mkfs.vfat and by fat_mkfs, checked with dosfstools and mtools."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

import nhlink._native
from tests.conftest import backend_params
from tests.engine.conftest import make_fw, run
from tests.fat import helpers as h

PART = 2048  # the FAT starts at this block of the image
PAYLOAD = bytes((i * 7 + i // 511) % 251 for i in range(300_001))
SMALL = b"hello from nhlink\n"


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> ModuleType:
    return nhlink._native.load(request.param)


def _resource(name: str, data: bytes) -> str:
    digest = hashlib.blake2b(data, digest_size=32).hexdigest()
    return f'file-resource "{name}" {{\n  length = {len(data)}\n  blake2b-256 = "{digest}"\n}}\n'


def _conf(body: str, resources: dict[str, bytes]) -> str:
    head = 'meta-product = "fat test"\n'
    return head + "".join(_resource(n, d) for n, d in resources.items()) + body


def _vfat_image(tmp_path: Path, fat_bits: int, size_mib: int) -> Path:
    tool = h.need_tool("mkfs.vfat")
    part = tmp_path / "part.img"
    part.write_bytes(bytes(size_mib << 20))
    subprocess.run(
        [tool, "-F", str(fat_bits), "-n", "OTHER", str(part)], check=True, capture_output=True
    )
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(PART * 512) + part.read_bytes())
    return image


WRITE_TASK = f"""
task complete {{
  on-init {{
    fat_mkdir({PART}, "boot")
    fat_touch({PART}, "boot/Mixed Case Name.txt")
  }}
  on-resource kernel {{
    fat_write({PART}, "boot/zImage.a-long-file-name")
  }}
  on-resource small {{
    fat_write({PART}, "cmdline.txt")
  }}
  on-finish {{
    fat_cp({PART}, "cmdline.txt", "boot/cmdline.bak")
    fat_attrib({PART}, "cmdline.txt", "S")
  }}
}}
"""


def _write_into(backend: ModuleType, image: Path) -> None:
    resources = {"kernel": PAYLOAD, "small": SMALL}
    fw = make_fw(_conf(WRITE_TASK, resources), resources)
    _, frames = run(backend, fw, destination=image, task="complete")
    assert frames[-1] == ("OK", 0, ""), frames[-3:]


def _check_with_tools(image: Path) -> None:
    offset = PART * 512
    h.assert_fsck_clean(image, offset)
    assert h.mtype(image, offset, "/boot/zImage.a-long-file-name") == PAYLOAD
    assert h.mtype(image, offset, "/cmdline.txt") == SMALL
    assert h.mtype(image, offset, "/boot/cmdline.bak") == SMALL
    listing = "\n".join(h.mdir(image, offset))
    assert "zImage.a-long-file-name" in listing
    assert "Mixed Case Name.txt" in listing


@pytest.mark.parametrize(("fat_bits", "size_mib"), [(16, 16), (32, 40)])
def test_write_into_mkfs_vfat(
    backend: ModuleType, tmp_path: Path, fat_bits: int, size_mib: int
) -> None:
    image = _vfat_image(tmp_path, fat_bits, size_mib)
    _write_into(backend, image)
    _check_with_tools(image)
    # a second apply replaces the files in place and stays consistent
    _write_into(backend, image)
    _check_with_tools(image)


@pytest.mark.parametrize("blocks", [4000, 16384, 140_000])  # FAT12, FAT16, FAT32
def test_fat_mkfs_is_clean(backend: ModuleType, tmp_path: Path, blocks: int) -> None:
    conf = f'task complete {{\n on-init {{\n fat_mkfs({PART}, {blocks})\n fat_setlabel({PART}, "BOOT")\n }}\n}}\n'
    image = tmp_path / "disk.img"
    image.write_bytes(bytes((PART + blocks) * 512))
    fw = make_fw(_conf(conf, {}), {})
    assert run(backend, fw, destination=image, task="complete")[1][-1] == ("OK", 0, "")
    _write_into(backend, image)
    _check_with_tools(image)
    assert "Volume in drive : is BOOT" in "\n".join(h.mdir(image, PART * 512))


# --------------------------------------------------------------------------- malformed images


def _apply_fails(backend: ModuleType, image: Path, message: str) -> None:
    before = image.read_bytes()
    resources = {"kernel": PAYLOAD, "small": SMALL}
    fw = make_fw(_conf(WRITE_TASK, resources), resources)
    _, frames = run(backend, fw, destination=image, task="complete")
    assert frames[-1][0] == "ER"
    assert message in frames[-1][2]
    assert "\n" not in frames[-1][2]
    assert image.read_bytes() == before


def test_bad_bpb_fails_cleanly(backend: ModuleType, tmp_path: Path) -> None:
    image = _vfat_image(tmp_path, 16, 16)
    data = bytearray(image.read_bytes())
    data[PART * 512 + 11 : PART * 512 + 13] = (1000).to_bytes(2, "little")  # bytes per sector
    image.write_bytes(bytes(data))
    _apply_fails(backend, image, "not a valid FAT filesystem")


def test_cyclic_chain_fails_cleanly(backend: ModuleType, tmp_path: Path) -> None:
    image = _vfat_image(tmp_path, 16, 16)
    _write_into(backend, image)
    volume = h.open_volume(image, PART)
    entry = volume.lookup("cmdline.txt")
    assert entry is not None
    fat = volume.geometry.fat_offset
    data = bytearray(image.read_bytes())
    data[fat + entry.cluster * 2 : fat + entry.cluster * 2 + 2] = entry.cluster.to_bytes(
        2, "little"
    )
    image.write_bytes(bytes(data))
    _apply_fails(backend, image, "cyclic cluster chain")


def test_full_disk_fails_cleanly(backend: ModuleType, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes((PART + 600) * 512))
    conf = f"task complete {{\n on-init {{\n fat_mkfs({PART}, 600)\n }}\n}}\n"
    assert (
        run(backend, make_fw(_conf(conf, {}), {}), destination=image, task="complete")[1][-1][0]
        == "OK"
    )
    _apply_fails(backend, image, "no space left")
