"""Shared-secret (HMAC) upgrade headers, exactly as spec 1.6 defines them.

``x-nh-signature`` is a ``Plug.Crypto.sign`` token over the Erlang term
``{identifier, signed_at_ms, 86400}``, keyed with PBKDF2-HMAC of the secret
over a salt built from the other headers. Headers are signed immediately
before each connect attempt. After a refused upgrade whose response carried
a ``Date``, the signing time is ``max(device clock, server Date + time since
it arrived)`` (``main``, #434; advancing the ``Date`` by the elapsed time keeps
it valid through the reconnect delay). The link passes its trusted clock
(:class:`nhlink.clock.ClockGuard`) as ``wall_clock``, so a device clock behind
the clock floor signs with the floor instead (a board without an RTC at 1970).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import logging
import struct
import time
from collections.abc import Callable

from nhlink.config import SharedSecretConfig
from nhlink.errors import ConfigError

logger = logging.getLogger("nhlink.aio.shared_secret")

TOKEN_MAX_AGE = 86400
TOKEN_PREFIX = "SFMyNTY"  # base64url of "HS256"
_SUPPORTED_DIGESTS = ("sha256", "sha384", "sha512")


def algorithm(settings: SharedSecretConfig) -> str:
    """The ``x-nh-alg`` value, e.g. ``NH1-HMAC-sha256-1000-32``."""
    if settings.key_digest not in _SUPPORTED_DIGESTS:
        raise ConfigError(
            f"[shared_secret] key_digest must be one of {', '.join(_SUPPORTED_DIGESTS)}"
        )
    if settings.key_iterations < 1 or settings.key_length < 1:
        raise ConfigError("[shared_secret] key_iterations and key_length must be positive")
    return (
        f"{settings.signature_version}-HMAC-{settings.key_digest}"
        f"-{settings.key_iterations}-{settings.key_length}"
    )


def connect_salt(alg: str, key: str, signed_at: int) -> bytes:
    """The PBKDF2 salt of a connect signature (trailing LF included)."""
    return (
        f"NH1:device-socket:shared-secret:connect\n\n"
        f"x-nh-alg={alg}\nx-nh-key={key}\nx-nh-time={signed_at}\n"
    ).encode()


def etf_integer(value: int) -> bytes:
    """An integer in Erlang's external term format (small, 32-bit or small-big)."""
    if 0 <= value < 256:
        return b"a" + bytes([value])
    if -(2**31) <= value < 2**31:
        return b"b" + struct.pack(">i", value)
    magnitude = abs(value)
    digits = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
    return b"n" + bytes([len(digits), 1 if value < 0 else 0]) + digits


def etf_payload(identifier: str, signed_at_ms: int, max_age: int = TOKEN_MAX_AGE) -> bytes:
    """``term_to_binary({identifier, signed_at_ms, max_age})``."""
    raw = identifier.encode()
    return (
        b"\x83h\x03m"
        + struct.pack(">I", len(raw))
        + raw
        + etf_integer(signed_at_ms)
        + etf_integer(max_age)
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_token(key: bytes, payload: bytes) -> str:
    """``Plug.Crypto.sign``: ``SFMyNTY.<payload>.<HMAC-SHA256>`` in base64url without padding."""
    plain = f"{TOKEN_PREFIX}.{_b64url(payload)}"
    mac = hmac.new(key, plain.encode("ascii"), hashlib.sha256).digest()
    return f"{plain}.{_b64url(mac)}"


def signed_headers(settings: SharedSecretConfig, signed_at: int) -> dict[str, str]:
    """The four ``x-nh-*`` headers for a connect at unix time ``signed_at``."""
    if not settings.key or not settings.secret:
        raise ConfigError("shared-secret authentication needs a key and a secret")
    alg = algorithm(settings)
    salt = connect_salt(alg, settings.key, signed_at)
    derived = hashlib.pbkdf2_hmac(
        settings.key_digest,
        settings.secret.encode(),
        salt,
        settings.key_iterations,
        settings.key_length,
    )
    identifier = settings.identifier or "unconfigured"
    token = sign_token(derived, etf_payload(identifier, signed_at * 1000))
    return {
        "x-nh-alg": alg,
        "x-nh-key": settings.key,
        "x-nh-time": str(signed_at),
        "x-nh-signature": token,
    }


class HeaderSigner:
    """Signs the headers of each attempt; remembers the hub's clock after a refusal."""

    def __init__(
        self,
        settings: SharedSecretConfig,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        algorithm(settings)  # validate early
        self.settings = settings
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._server_time: tuple[float, float] | None = None

    def signing_time(self) -> int:
        """Unix seconds to sign with now."""
        now = self._wall_clock()
        if self._server_time is not None:
            date, received_at = self._server_time
            now = max(now, date + (self._monotonic() - received_at))
        return int(now)

    def headers(self) -> dict[str, str]:
        return signed_headers(self.settings, self.signing_time())

    def note_refusal(self, date_header: str | None) -> None:
        """An upgrade was refused; a ``Date`` in the answer corrects later signatures."""
        if not date_header:
            return
        try:
            date = email.utils.parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            logger.debug("ignoring unparsable Date header %r", date_header)
            return
        skew = date - self._wall_clock()
        if abs(skew) > 30:
            logger.warning(
                "the hub's clock is %+.0f s from the device clock; signing with the hub's time",
                skew,
            )
        self._server_time = (date, self._monotonic())
