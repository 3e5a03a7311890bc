"""Apply throughput: native and pure-Python applies of the same 256 MiB random-payload
archive, next to the bare libsodium BLAKE2b-256 rate over the same payload, in one run.

Target (issue 2): native apply >= 0.85x the bare BLAKE2b rate. The ratio is checked
by scripts/check_benchmarks.py on the saved JSON (the CI benchmark job), not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.conftest import apply_archive
from nhlink import _native

CHUNK = 1 << 20


def _apply(primitives: object, archive: Path, image: Path, key: bytes) -> None:
    apply_archive(archive, image, key, image_size=512 << 20, primitives=primitives, chunk=CHUNK)


def _blake2b_file(path: Path) -> bytes:
    import nacl.hashlib

    digest = nacl.hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.digest()


def test_bare_blake2b(benchmark, archive_256: tuple[Path, Path]) -> None:  # type: ignore[no-untyped-def]
    _, payload = archive_256
    benchmark.extra_info["bytes"] = payload.stat().st_size
    benchmark.pedantic(_blake2b_file, args=(payload,), rounds=3, iterations=1)


@pytest.mark.parametrize("backend_name", ["native", "python"])
def test_apply(
    benchmark, backend_name: str, archive_256: tuple[Path, Path], public_key: bytes, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    try:
        primitives = _native.load(backend_name)
    except ImportError:
        pytest.skip(f"{backend_name} backend not built")
    archive, payload = archive_256
    benchmark.extra_info["bytes"] = payload.stat().st_size
    image = tmp_path / "image.img"
    benchmark.pedantic(
        _apply, args=(primitives, archive, image, public_key), rounds=3, iterations=1
    )
