"""fat_write vs raw_write throughput: the same random payload applied with each, native backend.

Target (issue 5): the FAT path within 10% of raw_write per byte written, checked by
scripts/check_benchmarks.py (``test_apply_fat[native]`` vs ``test_apply_raw_write[native]``).
The FAT run writes into an already formatted FAT32 partition (the BeagleBone case);
formatting happens in the untimed setup.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from benchmarks.conftest import apply_complete
from nhlink import _native

MIB = 1 << 20
PAYLOAD_MIB = 64
PART, PART_BLOCKS = 2048, 163840  # an 80 MiB FAT32 at 1 MiB
IMAGE_SIZE = (PART + PART_BLOCKS) * 512


@pytest.fixture(scope="module")
def fat_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nhlink.fwup.create import create_archive

    directory = tmp_path_factory.mktemp("fat-bench")
    payload = directory / "kernel.img"
    with open(payload, "wb") as out:
        for _ in range(PAYLOAD_MIB):
            out.write(os.urandom(MIB))
    tasks = {
        "raw": "raw_write(2048)",
        "fat": f'fat_write({PART}, "zImage.a")',
        "mkfs": None,
    }
    archives: dict[str, Path] = {}
    for name, action in tasks.items():
        conf = directory / f"{name}.conf"
        if action is None:
            conf.write_text(f"task complete {{ on-init {{ fat_mkfs({PART}, {PART_BLOCKS}) }} }}\n")
        else:
            conf.write_text(
                f'file-resource kernel.img {{ host-path = "{payload}" }}\n'
                f"task complete {{ on-resource kernel.img {{ {action} }} }}\n"
            )
        archives[name] = directory / f"{name}.fw"
        create_archive(str(conf), str(archives[name]), level=1)
    archives["payload"] = payload
    return archives


def _native_backend() -> object:
    try:
        return _native.load("native")
    except ImportError:
        pytest.skip("native backend not built")


def _blank(image: Path) -> None:
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(IMAGE_SIZE)


@pytest.mark.parametrize("backend_name", ["native"])
def test_apply_raw_write(
    benchmark, backend_name: str, fat_archives: dict[str, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    primitives = _native_backend()
    image = tmp_path / "raw.img"
    benchmark.extra_info["bytes"] = fat_archives["payload"].stat().st_size
    benchmark.pedantic(
        apply_complete,
        args=(fat_archives["raw"], image, primitives),
        setup=lambda: _blank(image),
        rounds=5,
        iterations=1,
    )


@pytest.mark.parametrize("backend_name", ["native"])
def test_apply_fat(
    benchmark, backend_name: str, fat_archives: dict[str, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    primitives = _native_backend()
    template, image = tmp_path / "formatted.img", tmp_path / "fat.img"
    _blank(template)
    apply_complete(fat_archives["mkfs"], template, primitives)

    def fresh() -> None:
        image.unlink(missing_ok=True)
        shutil.copyfile(template, image)

    benchmark.extra_info["bytes"] = fat_archives["payload"].stat().st_size
    benchmark.pedantic(
        apply_complete,
        args=(fat_archives["fat"], image, primitives),
        setup=fresh,
        rounds=5,
        iterations=1,
    )
