"""Errors of the local hub."""

from __future__ import annotations

from nhlink.errors import NHLinkError

__all__ = ["HubError"]


class HubError(NHLinkError):
    """A misuse of the local hub (unknown device, topic not joined, bad file...)."""
