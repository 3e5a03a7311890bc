"""Fixtures of the console tests (shared with the link tests)."""

from __future__ import annotations

from tests.link.conftest import nhlink_log, pki, pki_dir

__all__ = ["nhlink_log", "pki", "pki_dir"]
