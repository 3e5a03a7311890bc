"""NervesKey errors (all NHLinkError, one-line messages)."""

from __future__ import annotations

from nhlink.errors import NHLinkError


class NervesKeyError(NHLinkError):
    """Something about the secure element or its contents is wrong."""


class AteccCommunicationError(NervesKeyError):
    """The chip did not answer, NAKed, or its answer was corrupt (retryable)."""


class AteccStatusError(NervesKeyError):
    """The chip answered a command with an error status byte."""

    def __init__(self, command: str, status: int, meaning: str) -> None:
        super().__init__(f"ATECC {command}: status 0x{status:02x} ({meaning})")
        self.status = status


class NotProvisionedError(NervesKeyError):
    """The chip answers but holds no provisioned NervesKey."""


class CertificateError(NervesKeyError):
    """A compressed certificate cannot be decoded or the rebuilt one does not verify."""
