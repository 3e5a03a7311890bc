"""Suite-wide fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.vectors import vectors_dir


def pytest_configure(config: pytest.Config) -> None:
    if not (vectors_dir() / "MANIFEST.json").is_file():
        raise pytest.UsageError(f"golden vectors not found at {vectors_dir()} (set NHLINK_VECTORS)")


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
