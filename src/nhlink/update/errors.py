"""Errors of the update flow (download, verification, preflight).

Every error carries a stable reason ``code`` (``network``, ``tls:<kind>``,
``http:<status>``, ``signature``, ``hash``, ``no_space``, ``not_validated``,
``applier:<code>``, ...; the catalogue is :mod:`nhlink.update.reasons`) and a
one-line human text. ``reason`` is what ``status_update {"status": "failed"}``
reports: ``"<code>: <text>"``, so a fleet's failures group by the part before
the first ``": "`` (codes never contain ``": "``).
"""

from __future__ import annotations

from nhlink.errors import NHLinkError


class UpdateError(NHLinkError):
    """An update cannot go on; ``str()`` is the human text, ``reason`` adds the code."""

    code: str = "update"

    def __init__(self, text: str, *, code: str | None = None) -> None:
        super().__init__(text)
        if code is not None:
            self.code = code

    @property
    def reason(self) -> str:
        """``"<code>: <text>"``: the reason pushed to the hub."""
        return f"{self.code}: {self}"


class DownloadError(UpdateError):
    """The download failed for good (no more retries): ``download: <why>``."""

    code = "network"

    def __init__(self, why: str, *, code: str | None = None) -> None:
        super().__init__(f"download: {why}", code=code)
        self.why = why


class VerificationError(UpdateError):
    """The downloaded bytes do not match the offer's size or checksums."""

    code = "hash"
