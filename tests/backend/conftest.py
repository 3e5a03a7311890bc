"""Fixtures for the backend primitive tests: the backend under test and the golden vectors."""

from __future__ import annotations

from types import ModuleType

import pytest
from backend_support import Vectors, vectors_root
from tests.conftest import backend_params

import nhlink._native


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> ModuleType:
    """The backend module under test: every test runs on both backends."""
    return nhlink._native.load(request.param)


@pytest.fixture(scope="session")
def vectors() -> Vectors:
    """The golden vectors (the tests using them are skipped when they are missing)."""
    root = vectors_root()
    if not (root / "MANIFEST.json").is_file():
        pytest.skip(f"golden vectors not found at {root}")
    return Vectors(root)
