"""Applying to a real block device: a loop device over an image file.

Block devices are opened with O_DIRECT, written in aligned segments and read
back for verification; the result must be the same bytes as the golden image.
Skipped (with the reason) where loop devices cannot be set up.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_nhlink
from tests.helpers import vectors as v
from tests.helpers.loop import attached_loop_device, require_loop_devices


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    require_loop_devices()
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(16 << 20)
    with attached_loop_device(backing) as device:
        yield device, backing


@pytest.mark.root
@pytest.mark.parametrize("vector_id", ["01_minimal_raw", "02_ab_uboot", "03_large_8mib"])
def test_apply_complete_to_loop_device(vector_id: str, loop_device: tuple[str, Path]) -> None:
    device, backing = loop_device
    entry = v.vector(vector_id)
    step = entry["steps"][0]
    assert step["base_image"] == {"kind": "zero", "size": 16 << 20}
    result = run_nhlink(
        [
            "fwup",
            "-a",
            "-q",
            "-d",
            device,
            "-t",
            step["task"],
            "-p",
            str(v.key_file("a")),
            "-i",
            str(v.vectors_dir() / entry["fw"]),
        ]
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    subprocess.run(["sync"], check=True)
    with open(device, "rb") as f:
        from_device = f.read()
    assert hashlib.sha256(from_device).hexdigest() == step["expected"]["image_sha256"]
    assert hashlib.sha256(backing.read_bytes()).hexdigest() == step["expected"]["image_sha256"]


@pytest.mark.root
def test_write_past_the_end_of_a_block_device_fails(loop_device: tuple[str, Path]) -> None:
    from tests.helpers.archives import simple_archive

    device, backing = loop_device
    archive = backing.parent / "past-end.fw"
    archive.write_bytes(simple_archive(b"\x5a" * 4096, offset_blocks=(16 << 20) // 512))
    result = run_nhlink(
        [
            "fwup",
            "-a",
            "-q",
            "-d",
            device,
            "-t",
            "complete",
            "-p",
            str(v.key_file("a")),
            "-i",
            str(archive),
        ]
    )
    assert result.returncode == 1
    assert "past the end" in result.stdout.decode()
    assert backing.read_bytes() == bytes(16 << 20)
