"""Fixtures of the extension tests: one PKI for the session, a log collector."""

from __future__ import annotations
