"""Differential test: the native and pure-Python backends, fed the same archives split
into the same random chunks (and the same random corruptions), must produce identical
images, frames and errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhlink import _native
from tests.helpers import vectors as v

try:
    NATIVE = _native.load("native")
except ImportError:  # pragma: no cover - depends on the build
    NATIVE = None
PYTHON = _native.load("python")

pytestmark = pytest.mark.skipif(NATIVE is None, reason="native backend not built")

# Steps whose base image doesn't depend on an earlier step, FAT excluded.
STANDALONE = [s for s in v.steps() if s.data["base_image"]["kind"] != "step"]
MAX_EXAMPLES = int(os.environ.get("NHLINK_DIFF_EXAMPLES", "150"))


def _public_keys(step: v.Step) -> list[bytes]:
    import base64

    return [base64.b64decode(v.key_base64(name)) for name in step.data["public_keys"]]


def _run(
    backend: Any, step: v.Step, archive: bytes, cuts: list[int], image: Path
) -> tuple[list[Any], str]:
    from nhlink.fwup.engine import Engine

    v.make_base_image(step.data["base_image"], image, {})
    engine = Engine(
        mode="apply",
        destination=str(image),
        task=step.data["task"],
        public_keys=_public_keys(step),
        primitives=backend,
    )
    frames: list[Any] = []
    start = 0
    for end in [*cuts, len(archive)]:
        if engine.done:
            break
        frames += engine.feed(archive[start:end])
        start = end
    if not engine.done:
        frames += engine.finish()
    return [tuple(f) for f in frames], hashlib.sha256(image.read_bytes()).hexdigest()


@st.composite
def cases(draw: st.DrawFn) -> tuple[v.Step, bytes, list[int]]:
    step = draw(st.sampled_from(STANDALONE))
    archive = (v.vectors_dir() / v.vector(step.vector_id)["fw"]).read_bytes()
    mutation = draw(st.sampled_from(["none", "none", "flip", "truncate"]))
    if mutation == "flip":
        offset = draw(st.integers(0, len(archive) - 1))
        bit = draw(st.integers(0, 7))
        archive = archive[:offset] + bytes([archive[offset] ^ (1 << bit)]) + archive[offset + 1 :]
    elif mutation == "truncate":
        archive = archive[: draw(st.integers(0, len(archive) - 1))]
    count = draw(st.integers(0, 12))
    cuts = sorted(draw(st.lists(st.integers(0, len(archive)), min_size=count, max_size=count)))
    return step, archive, cuts


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(case=cases())
def test_backends_agree(case: tuple[v.Step, bytes, list[int]], tmp_path: Path) -> None:
    step, archive, cuts = case
    native = _run(NATIVE, step, archive, cuts, tmp_path / "native.img")
    python = _run(PYTHON, step, archive, cuts, tmp_path / "python.img")
    assert native == python


@pytest.mark.parametrize("step", STANDALONE, ids=[s.test_id for s in STANDALONE])
def test_backends_agree_on_byte_by_byte_feeding_of_the_head(step: v.Step, tmp_path: Path) -> None:
    """The first 4 KiB one byte at a time (headers split everywhere), the rest whole."""
    archive = (v.vectors_dir() / v.vector(step.vector_id)["fw"]).read_bytes()
    cuts = list(range(1, min(4096, len(archive))))
    native = _run(NATIVE, step, archive, cuts, tmp_path / "native.img")
    python = _run(PYTHON, step, archive, cuts, tmp_path / "python.img")
    assert native == python
    if step.expected["image_match"] == "exact":
        assert native[1] == step.expected["image_sha256"]
