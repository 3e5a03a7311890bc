"""The exception hierarchy: every error nhlink raises derives from NHLinkError.

``str(error)`` is always a single line meant for people (and, for applier
errors, worded as fwup words them).
"""

from __future__ import annotations


class NHLinkError(Exception):
    """Root of every nhlink error."""


class ArchiveError(NHLinkError):
    """The .fw archive is malformed, truncated or fails an integrity check."""


class SignatureError(ArchiveError):
    """meta.conf is unsigned when keys were given, or no key verifies it."""


class MetaConfError(ArchiveError):
    """meta.conf (or a fwup.conf) cannot be parsed or is inconsistent."""


class FramingError(NHLinkError):
    """Malformed fwup framing (length-prefixed packets)."""


class DestinationError(NHLinkError):
    """The output file or block device cannot be opened, read or written."""


class UBootEnvError(NHLinkError):
    """A U-Boot environment cannot be read or written."""


class UBootEnvCRCError(UBootEnvError):
    """A U-Boot environment block has a bad CRC-32."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"CRC32 mismatch (expected 0x{expected:08x}; got 0x{got:08x})")
        self.expected = expected
        self.got = got


class TaskError(NHLinkError):
    """A task cannot be selected or one of its actions failed."""


class KeyFileError(NHLinkError):
    """A key is malformed or a key file cannot be read or written."""


class ConfigError(NHLinkError):
    """The configuration is invalid."""
