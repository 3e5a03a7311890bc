"""Fixtures of the hostile-server tests: the update tests' firmware (PKI and log
collector come from tests/conftest.py)."""

from __future__ import annotations

from tests.update.conftest import firmware_dir, fw_v1, fw_v2

__all__ = ["firmware_dir", "fw_v1", "fw_v2"]
