"""Fixtures for the archive creation tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.create.vector_resources import (
    SOURCE_DATE_EPOCH,
    reported_layout,
    write_resource,
)
from tests.helpers.vectors import spec


@pytest.fixture(scope="session")
def resource_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every resource of spec.json, regenerated once per session."""
    directory = tmp_path_factory.mktemp("vector-resources")
    for entry in spec()["vectors"]:
        for resource in entry["resources"]:
            write_resource(directory, resource)
    return directory


@pytest.fixture(scope="session")
def sparse_layout_ok(resource_dir: Path) -> bool:
    """Whether the filesystem kept 09_sparse.img's holes as holes."""
    for entry in spec()["vectors"]:
        for resource in entry["resources"]:
            if "layout" in resource:
                wanted = [(kind, int(n)) for kind, n in resource["layout"]]
                if reported_layout(resource_dir / resource["file"]) != wanted:
                    return False
    return True


@pytest.fixture
def create_env(resource_dir: Path) -> dict[str, str]:
    """The environment the golden archives were created with."""
    return {"RES_DIR": str(resource_dir), "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}


@pytest.fixture
def sparse_files_supported(tmp_path: Path) -> None:
    """Skip unless tmp_path's filesystem reports holes with SEEK_DATA."""
    probe = tmp_path / "sparse-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * 65536, 1 << 20)
        os.ftruncate(fd, (1 << 20) + 2 * 65536)
    finally:
        os.close(fd)
    layout = reported_layout(probe)
    probe.unlink()
    if layout != [("hole", 1 << 20), ("data", 65536), ("hole", 65536)]:
        pytest.skip(f"{tmp_path} does not report holes with SEEK_DATA/SEEK_HOLE ({layout})")
