"""Suite-wide fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.vectors import vectors_dir

if TYPE_CHECKING:
    from nhlink.testing import Pki
    from tests.link.support import Records


def pytest_configure(config: pytest.Config) -> None:
    if not (vectors_dir() / "MANIFEST.json").is_file():
        raise pytest.UsageError(f"golden vectors not found at {vectors_dir()} (set NHLINK_VECTORS)")


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One throwaway hub PKI for the whole session (link, update, extension tests)."""
    from nhlink.testing import Pki

    directory = tmp_path_factory.mktemp("pki")
    Pki.create(directory)
    return directory


@pytest.fixture
def pki(pki_dir: Path) -> Pki:
    from nhlink.testing import Pki

    return Pki.load(pki_dir)


@pytest.fixture
def nhlink_log() -> Iterator[Records]:
    """Every record of the ``nhlink`` loggers, at DEBUG, for the test's duration."""
    import logging

    from tests.link.support import Records

    handler = Records()
    logger = logging.getLogger("nhlink")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture(scope="session")
def vectors() -> Path:
    return vectors_dir()


def run_nhlink(
    args: list[str], *, stdin: bytes = b"", timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run the nhlink command in a subprocess with the suite's backend policy."""
    return subprocess.run(
        [sys.executable, "-m", "nhlink", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=dict(os.environ),
        check=False,
    )


def backend_params() -> list[object]:
    """``native`` and ``python`` as pytest params; native is skipped when it isn't built
    (and fails instead when NHLINK_REQUIRE_NATIVE=1)."""
    import nhlink._native

    params: list[object] = []
    try:
        nhlink._native.load("native")
    except ImportError as exc:
        if os.environ.get("NHLINK_REQUIRE_NATIVE", "") not in ("", "0"):
            raise
        params.append(
            pytest.param("native", marks=pytest.mark.skip(reason=f"native backend: {exc}"))
        )
    else:
        params.append("native")
    params.append("python")
    return params
