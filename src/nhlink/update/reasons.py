"""Stable reason codes of ``status_update {"status": "failed"}`` (sans-I/O).

A failed update is reported as ``"<code>: <human text>"``; fleets group
failures by the code (everything before the first ``": "``). :data:`CATALOGUE`
lists the codes; :func:`failure_reason` turns whatever ended an update (an
:class:`~nhlink.update.errors.UpdateError`, the applier's ``ER`` frame,
cancellation, an unexpected exception) into that string.
"""

from __future__ import annotations

import asyncio
import re
import ssl

from nhlink.clock import CLOCK_CODE, ClockCheck, tls_failure_code
from nhlink.update.errors import DownloadError, UpdateError

CATALOGUE: dict[str, str] = {
    "network": "the firmware server could not be reached or the transfer broke for good",
    "tls:certificate": "the firmware server's certificate does not verify (unknown issuer)",
    "tls:expired": "the firmware server's certificate has expired (or the clock is late)",
    "tls:not_yet_valid": "the firmware server's certificate is not valid yet (clock early?)",
    "tls:hostname": "the firmware server's certificate names another host",
    "tls:handshake": "the TLS handshake with the firmware server failed otherwise",
    "http:<status>": "the firmware server answered an HTTP error status (e.g. http:403)",
    "signature": "meta.conf is unsigned or no configured key verifies it",
    "hash": "the bytes do not match a checksum, CRC or BLAKE2b digest (tampered or corrupt)",
    "size": "the archive's size differs from the offer, or it is truncated",
    "no_space": "not enough room: the destination or data_path is too small or full",
    "not_validated": "the running firmware is not validated yet (rescheduled, not failed)",
    "applier:<code>": "the applier (engine or fwup) failed; <code> is its ER frame's code",
    "budget": "the update would exceed max_download_bytes",
    "metered": "the metered-link policy forbids this download",
    "clock": "a certificate date check failed while the local clock is known to be wrong",
    "io:read": "reading the destination failed (e.g. a read beyond the end of the device)",
    "preflight:action": "the archive's task uses an action this applier cannot run",
    "preflight:task": "no task of the archive applies to the destination",
    "preflight:slot": "the archive would write the slot the device runs from",
    "preflight:archive": "the archive head (meta.conf) is malformed or unreadable",
    "preflight:destination": "the destination cannot be read",
    "preflight:version": "the archive requires a newer fwup than the engine implements",
    "interrupted": "the client stopped while the update ran",
    "refused:no_keys": "no fwup public key is configured: unverified firmware is refused",
    "refused:url": "the firmware URL is not an https URL we may fetch",
    "refused:redirect": "a redirect went off https, to another host, or too many times",
    "refused:config": "the update settings are incomplete (devpath, fwup_env, fwup binary)",
    "internal": "an unexpected error in nhlink (a bug)",
}
"""Every reason code with its one-line meaning (``<...>`` parts vary)."""

INTERRUPTED_TEXT = "update interrupted (the client is stopping)"

# applier (engine / fwup) ER texts -> codes, first match wins
_APPLIER_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "signature",
        re.compile(
            r"signature verification|Expecting signed firmware|meta\.conf\.ed25519 size"
            r"|bad signature|signature check",
            re.IGNORECASE,
        ),
    ),
    ("not_validated", re.compile(r"validate the running firmware", re.IGNORECASE)),
    ("io:read", re.compile(r"read beyond the addressable range", re.IGNORECASE)),
    (
        "no_space",
        re.compile(
            r"No space left on device|ENOSPC|past the end|past end|not enough space"
            r"|larger than the destination",
            re.IGNORECASE,
        ),
    ),
    (
        "hash",
        re.compile(
            r"blake2b|bad CRC|CRC32 mismatch|size mismatch|larger than declared"
            r"|larger than its declared length|decompression failed \(-3\)",
            re.IGNORECASE,
        ),
    ),
    ("size", re.compile(r"decompression failed \(-5\)|Unexpected end of archive")),
)

# download texts (DownloadError without a more precise code) -> codes
_HTTP_STATUS = re.compile(r"\bhttp (\d{3})\b")
_REFUSED_URL = re.compile(r"refusing a non-https URL|bad URL:")
_REFUSED_REDIRECT = re.compile(
    r"refusing a redirect|more than \d+ redirects|bad redirect|without a Location"
)
_SIZE = re.compile(
    r"the server has \d+ bytes, the offer said|sent more than the expected|the file changed size"
)


def reason(code: str, text: str) -> str:
    """``"<code>: <text>"``."""
    return f"{code}: {text}"


def code_of(reason_text: str) -> str:
    """The code of a reason string (what a fleet groups by)."""
    return reason_text.split(": ", 1)[0]


def applier_code(text: str, frame_code: int = 0) -> str:
    """The code of an applier ``ER`` frame (the engine's or an external fwup's)."""
    for code, pattern in _APPLIER_PATTERNS:
        if pattern.search(text):
            return code
    return f"applier:{frame_code}"


NAME_MISMATCH_CODES = (62, 63, 64)
"""OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_MISMATCH, _IP_ADDRESS_MISMATCH."""


def tls_kind(text: str, verify_code: int | None = None) -> str:
    """``tls:<kind>`` for a TLS failure described by ``text`` (and OpenSSL's verify code)."""
    lowered = text.lower()
    if verify_code == 10 or "certificate has expired" in lowered:
        return "tls:expired"
    if verify_code == 9 or "not yet valid" in lowered:
        return "tls:not_yet_valid"
    if (
        verify_code in NAME_MISMATCH_CODES
        or "hostname mismatch" in lowered
        or "doesn't match" in lowered
    ):
        return "tls:hostname"
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return "tls:certificate"
    return "tls:handshake"


def download_code(text: str) -> str:
    """The code of a download failure from its text (when no precise code was set)."""
    if "[SSL" in text or "SSL:" in text or "certificate verify" in text:
        return tls_kind(text)
    if _REFUSED_URL.search(text):
        return "refused:url"
    if _REFUSED_REDIRECT.search(text):
        return "refused:redirect"
    if _SIZE.search(text):
        return "size"
    status = _HTTP_STATUS.search(text)
    if status is not None and int(status.group(1)) >= 400:
        return f"http:{status.group(1)}"
    return "network"


def exception_code(exc: BaseException) -> str:
    """The code of an exception raised while talking to the firmware server."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return tls_kind(str(exc), exc.verify_code)
    if isinstance(exc, ssl.SSLError):
        return tls_kind(str(exc))
    if isinstance(exc, DownloadError) and exc.code == DownloadError.code:
        return download_code(exc.why)
    if isinstance(exc, UpdateError):
        return exc.code
    return "network"


def clock_caused(exc: BaseException, clock: ClockCheck) -> bool:
    """Whether a TLS failure (``exc`` or an SSL error in its cause/context chain) is a
    certificate date check that failed because ``clock`` says the clock is wrong."""
    return tls_failure_code(exc, clock) == CLOCK_CODE


def failure_reason(
    exc: BaseException,
    *,
    applier_error: tuple[int, str] | None = None,
    clock: ClockCheck | None = None,
) -> str:
    """The ``failed`` reason for whatever ended an update.

    ``applier_error`` is the applier's ``ER`` frame ``(code, text)`` when there
    was one: an ``UpdateError("fwup: ...")`` is classified by that frame.
    ``clock`` is the link's clock check: a certificate date failure (expired,
    not yet valid) while it says the clock is wrong becomes ``clock``
    (:func:`nhlink.clock.tls_failure_code`).
    """
    if isinstance(exc, asyncio.CancelledError):
        return reason("interrupted", INTERRUPTED_TEXT)
    if isinstance(exc, DownloadError):
        code = exception_code(exc)
        if code.startswith("tls:") and clock is not None and clock_caused(exc, clock):
            code = CLOCK_CODE
        return reason(code, str(exc))
    if isinstance(exc, UpdateError):
        code = exc.code
        text = str(exc)
        if code == UpdateError.code:  # no precise code: classify by what happened
            if applier_error is not None and text.startswith("fwup: "):
                code = applier_code(applier_error[1], applier_error[0])
            elif text.startswith("fwup: "):
                code = applier_code(text[len("fwup: ") :])
            else:
                code = "internal"
        return reason(code, text)
    return reason("internal", f"unexpected error: {type(exc).__name__}: {exc}")
