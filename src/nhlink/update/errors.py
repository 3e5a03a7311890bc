"""Errors of the update flow (download, verification); their ``str()`` is the one-line
reason reported to the hub in ``status_update {"status": "failed"}``."""

from __future__ import annotations

from nhlink.errors import NHLinkError


class UpdateError(NHLinkError):
    """An update cannot go on; ``str()`` is the reason pushed to the hub."""


class DownloadError(UpdateError):
    """The download failed for good (no more retries): ``download: <why>``."""

    def __init__(self, why: str) -> None:
        super().__init__(f"download: {why}")
        self.why = why


class VerificationError(UpdateError):
    """The downloaded bytes do not match the offer's size or checksums."""
