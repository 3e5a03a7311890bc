"""Fixtures of the hostile-server tests: the update tests' PKI, firmware and log collector."""

from __future__ import annotations

from tests.update.conftest import firmware_dir, fw_v1, fw_v2, nhlink_log, pki, pki_dir

__all__ = ["firmware_dir", "fw_v1", "fw_v2", "nhlink_log", "pki", "pki_dir"]
