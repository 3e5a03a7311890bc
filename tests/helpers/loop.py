"""Loop devices over image files, for tests that apply to a real block device."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def require_loop_devices() -> None:
    """Skip the test (saying why) where loop devices cannot be set up."""
    if os.geteuid() != 0:
        pytest.skip("needs root for losetup")
    if shutil.which("losetup") is None:
        pytest.skip("losetup not installed")


@contextlib.contextmanager
def attached_loop_device(backing: Path) -> Iterator[str]:
    """The path of a loop device over ``backing``, detached on exit; skips if losetup fails."""
    attach = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if attach.returncode != 0:
        pytest.skip(f"losetup failed: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)
