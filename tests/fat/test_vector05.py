"""Vector 05_fat through the Engine on both backends: images equal fwup's but for file slack."""

from __future__ import annotations

import base64
import hashlib
import lzma
from pathlib import Path
from types import ModuleType

import pytest

import nhlink._native
from nhlink.fwup import Engine, Frame
from tests.conftest import backend_params
from tests.fat import helpers as h
from tests.helpers import vectors as v

VECTOR = "05_fat"


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> ModuleType:
    return nhlink._native.load(request.param)


def _step(name: str) -> dict[str, object]:
    return next(s for s in v.vector(VECTOR)["steps"] if s["name"] == name)


def _expected(name: str, tmp_path: Path) -> Path:
    step = _step(name)
    path = tmp_path / f"expected-{name}.img"
    path.write_bytes(lzma.decompress((v.vectors_dir() / step["expected"]["image_xz"]).read_bytes()))  # type: ignore[index,operator]
    return path


def _apply(backend: ModuleType, image: Path, task: str, chunk: int) -> list[Frame]:
    fw = (v.vectors_dir() / v.vector(VECTOR)["fw"]).read_bytes()
    engine = Engine(
        mode="apply",
        destination=image,
        task=task,
        public_keys=[base64.b64decode(v.key_base64("a"))],
        primitives=backend,
    )
    frames: list[Frame] = []
    for start in range(0, len(fw), chunk):
        frames += engine.feed(fw[start : start + chunk])
    frames += engine.finish()
    return frames


def _check_step(image: Path, expected: Path) -> None:
    block = h.BOOT_BLOCK
    ranges = h.slack_ranges(expected, block) + h.slack_ranges(image, block)
    got, want = image.read_bytes(), expected.read_bytes()
    assert len(got) == len(want)
    assert h.mask(got, ranges) == h.mask(want, ranges)
    assert h.files(image, block) == h.files(expected, block)


@pytest.mark.parametrize("chunk", [4096, 1 << 20])
def test_complete_then_upgrade(backend: ModuleType, tmp_path: Path, chunk: int) -> None:
    image = tmp_path / "image.img"
    image.write_bytes(bytes(16 << 20))
    for name in ("complete", "upgrade"):
        frames = _apply(backend, image, name, chunk)
        step = _step(name)
        expected = step["expected"]
        assert isinstance(expected, dict)
        assert frames[-1] == ("OK", 0, ""), frames[-3:]
        progress = [f[1] for f in frames if f[0] == "PR"]
        assert progress[0] == 0 and progress[-1] == 100
        assert progress == sorted(progress)
        _check_step(image, _expected(name, tmp_path))


def test_slack_is_zero(backend: ModuleType, tmp_path: Path) -> None:
    """Whatever the chunking, the bytes after each file's end in its last sector are zeros."""
    image = tmp_path / "image.img"
    image.write_bytes(bytes(16 << 20))
    _apply(backend, image, "complete", 777)
    data = image.read_bytes()
    ranges = h.slack_ranges(image, h.BOOT_BLOCK)
    assert ranges
    assert all(data[o : o + n] == bytes(n) for o, n in ranges)


def _normal(lines: list[str]) -> list[str]:
    """Lines without trailing blanks, trailing empty lines dropped."""
    out = [line.rstrip() for line in lines]
    while out and not out[-1]:
        out.pop()
    return out


def test_mdir_listing_matches(tmp_path: Path) -> None:
    image = tmp_path / "image.img"
    image.write_bytes(bytes(16 << 20))
    backend = nhlink._native.load("python")
    for name in ("complete", "upgrade"):
        assert _apply(backend, image, name, 4096)[-1] == ("OK", 0, "")
        expected = _step(name)["expected"]
        assert isinstance(expected, dict)
        listing = h.mdir(image, h.BOOT_BLOCK * 512)
        assert _normal(listing) == _normal(expected["fat_listing_mdir"])


def test_upgrade_from_fwups_image_is_exact(backend: ModuleType, tmp_path: Path) -> None:
    """Started from fwup's own ``complete`` image, ``upgrade`` reproduces fwup's sha256."""
    image = _expected("complete", tmp_path)
    frames = _apply(backend, image, "upgrade", 16384)
    assert frames[-1] == ("OK", 0, "")
    expected = _step("upgrade")["expected"]
    assert isinstance(expected, dict)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == expected["image_sha256"]
