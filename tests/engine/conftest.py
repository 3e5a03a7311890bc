"""Fixtures for the engine tests: the backend under test and small archive builders."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import nhlink._native
from nhlink.fwup import Engine, Frame
from tests.conftest import backend_params


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> ModuleType:
    """The primitives the engine runs on: every engine test runs on both backends."""
    return nhlink._native.load(request.param)


def make_fw(
    meta_conf: str,
    resources: Mapping[str, bytes] | None = None,
    *,
    signature: bytes | None = None,
) -> bytes:
    """A .fw archive written by Python zipfile: [signature,] meta.conf, then ``data/`` entries.

    Resource names starting with ``/`` are stored at the archive root, as fwup does.
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        if signature is not None:
            archive.writestr("meta.conf.ed25519", signature, zipfile.ZIP_STORED)
        archive.writestr("meta.conf", meta_conf)
        for name, data in (resources or {}).items():
            archive.writestr(name[1:] if name.startswith("/") else f"data/{name}", data)
    return out.getvalue()


def run(
    backend: ModuleType, fw: bytes, *, chunk: int = 4096, **kw: Any
) -> tuple[Engine, list[Frame]]:
    """Feed ``fw`` to a new Engine in ``chunk``-sized pieces, then finish it."""
    engine = Engine(primitives=backend, **{"mode": "apply", **kw})
    frames: list[Frame] = []
    for start in range(0, len(fw), chunk):
        frames += engine.feed(fw[start : start + chunk])
        if engine.done:
            break
    frames += engine.finish()
    return engine, frames


def blank_image(path: Path, size: int = 4 << 20, fill: int = 0) -> Path:
    path.write_bytes(bytes([fill]) * size)
    return path
