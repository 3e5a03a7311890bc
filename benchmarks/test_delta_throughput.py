"""Delta apply vs full apply of the same target, native backend (issue 9 "delta apply throughput").

The device holds a random ``NHLINK_BENCH_DELTA_MIB`` (default 48) MiB image in
slot A; the new image differs in 64 bytes of every MiB. The full archive
raw_writes the new image into slot B; the delta archive holds an xdelta3 patch
(NervesHub's flags ``-A -S -f``) against slot A instead. Both report target
bytes written per second (``extra_info["target_mib_s"]``); the delta run must
produce the same slot B. Needs ``xdelta3``.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from benchmarks.conftest import apply_complete
from nhlink import _native

MIB = 1 << 20
SIZE_MIB = int(os.environ.get("NHLINK_BENCH_DELTA_MIB", "48"))
SLOT_A = 2048
SLOT_BLOCKS = (SIZE_MIB + 1) * MIB // 512
SLOT_B = SLOT_A + SLOT_BLOCKS
IMAGE_SIZE = (SLOT_B + SLOT_BLOCKS) * 512


@pytest.fixture(scope="module")
def delta_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nhlink.fwup.create import create_archive

    xdelta3 = shutil.which("xdelta3")
    if xdelta3 is None:
        pytest.skip("xdelta3 is not installed")
    directory = tmp_path_factory.mktemp("delta-bench")
    rng = random.Random(9)
    old = rng.randbytes(SIZE_MIB * MIB)
    new = bytearray(old)
    for at in range(0, len(new), MIB):
        new[at + 4096 : at + 4160] = rng.randbytes(64)
    (directory / "old.img").write_bytes(old)
    (directory / "new.img").write_bytes(new)
    conf = directory / "upgrade.conf"
    conf.write_text(
        f'file-resource rootfs.img {{ host-path = "{directory / "new.img"}" }}\n'
        "task complete { on-resource rootfs.img {\n"
        f"    delta-source-raw-offset = {SLOT_A}\n"
        f"    delta-source-raw-count = {SLOT_BLOCKS}\n"
        f"    raw_write({SLOT_B})\n"
        "} }\n"
    )
    full = directory / "full.fw"
    create_archive(str(conf), str(full), level=1)
    patch = directory / "rootfs.patch"
    subprocess.run(
        [
            xdelta3,
            "-A",
            "-S",
            "-f",
            "-e",
            "-s",
            directory / "old.img",
            directory / "new.img",
            patch,
        ],
        check=True,
    )
    delta = directory / "delta.fw"
    with zipfile.ZipFile(full) as source, zipfile.ZipFile(delta, "w") as target:
        for info in source.infolist():
            body = patch.read_bytes() if info.filename == "data/rootfs.img" else source.read(info)
            target.writestr(
                zipfile.ZipInfo(info.filename, info.date_time), body, zipfile.ZIP_DEFLATED
            )
    template = directory / "device.img"
    with open(template, "wb") as f:
        f.truncate(IMAGE_SIZE)
        f.seek(SLOT_A * 512)
        f.write(old)
    return {"full": full, "delta": delta, "template": template, "new": directory / "new.img"}


def _slot_b(image: Path) -> bytes:
    with open(image, "rb") as f:
        f.seek(SLOT_B * 512)
        return f.read(SIZE_MIB * MIB)


@pytest.mark.parametrize("kind", ["full", "delta"])
def test_delta_vs_full_apply(
    benchmark, kind: str, delta_setup: dict[str, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    try:
        primitives = _native.load("native")
    except ImportError:
        pytest.skip("native backend not built")
    image = tmp_path / "device.img"

    def fresh() -> None:
        image.unlink(missing_ok=True)
        shutil.copyfile(delta_setup["template"], image)

    benchmark.extra_info["target_bytes"] = SIZE_MIB * MIB
    benchmark.extra_info["archive_bytes"] = delta_setup[kind].stat().st_size
    benchmark.pedantic(
        apply_complete,
        args=(delta_setup[kind], image, primitives),
        setup=fresh,
        rounds=3,
        iterations=1,
    )
    if benchmark.stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["target_mib_s"] = round(SIZE_MIB / benchmark.stats.stats.min, 1)
    assert _slot_b(image) == delta_setup["new"].read_bytes()
