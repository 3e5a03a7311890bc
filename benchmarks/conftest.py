"""Benchmark fixtures: large random-payload archives, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

KEY_DIR = (
    Path(
        os.environ.get("NHLINK_VECTORS")
        or Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
    )
    / "keys"
)
MIB = 1 << 20


def make_archive(directory: Path, payload_mib: int) -> tuple[Path, Path]:
    """A signed archive with one random resource raw_write'n at block 2048.

    Returns (archive, payload). Compression level 1: random data is stored
    either way, and the benchmark measures applying, not creating.
    """
    from nhlink.fwup.create import create_archive
    from nhlink.fwup.keys import read_private_key_file

    directory.mkdir(parents=True, exist_ok=True)
    payload = directory / f"payload-{payload_mib}.bin"
    archive = directory / f"bench-{payload_mib}.fw"
    if archive.exists() and payload.exists():
        return archive, payload
    with open(payload, "wb") as out:
        for _ in range(payload_mib):
            out.write(os.urandom(MIB))
    conf = directory / f"bench-{payload_mib}.conf"
    conf.write_text(
        f'file-resource rootfs.img {{ host-path = "{payload}" }}\n'
        "task complete { on-resource rootfs.img { raw_write(2048) } }\n"
    )
    key = read_private_key_file(str(KEY_DIR / "testkey-a.priv"))
    create_archive(str(conf), str(archive), signing_key=key, level=1)
    return archive, payload


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def archive_256(bench_dir: Path) -> tuple[Path, Path]:
    return make_archive(bench_dir, int(os.environ.get("NHLINK_BENCH_MIB", "256")))


@pytest.fixture(scope="session")
def public_key() -> bytes:
    from nhlink.fwup.keys import read_public_key_file

    return read_public_key_file(str(KEY_DIR / "testkey-a.pub"))
