"""Server-side check of NervesHub shared-secret (``x-nh-*``) upgrade headers (spec 1.6).

The signature is a ``Plug.Crypto.sign`` token::

    "SFMyNTY." + b64url(payload) + "." + b64url(HMAC-SHA256(key, "SFMyNTY." + b64url(payload)))

where ``payload`` is the Erlang external term ``{identifier, signed_at_ms, max_age}``
and ``key = PBKDF2-HMAC-<digest>(secret, salt, iterations, length)`` with the
salt rebuilt from the other headers. The hub ignores the max age inside the
token and uses 90 s; a ``signed_at`` in the future is invalid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "MAX_AGE_SECONDS",
    "Atom",
    "SharedSecretAuth",
    "SharedSecretRejected",
    "connect_salt",
    "decode_etf",
    "derive_key",
    "parse_alg",
    "verify_headers",
    "verify_token",
]

MAX_AGE_SECONDS = 90
TOKEN_PROTECTED = "SFMyNTY"  # base64url("HS256")
PRODUCT_KEY_PREFIX = "nhp_"


class SharedSecretRejected(Exception):
    """The headers do not authenticate a device; `reason` says why (for assertions/logs)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SharedSecretAuth:
    """A successful shared-secret authentication."""

    identifier: str
    key: str
    product: bool
    signed_at_ms: int


class Atom(str):
    """An Erlang atom decoded from ETF."""


# -- Erlang external term format (the subset Plug.Crypto tokens use) ----------


def decode_etf(data: bytes) -> object:
    """Decode one ETF term (version byte 131). Raises ValueError on anything malformed."""
    if not data or data[0] != 131:
        raise ValueError("not an external term (version byte)")
    value, end = _decode_term(data, 1)
    if end != len(data):
        raise ValueError("trailing bytes after the term")
    return value


def _need(data: bytes, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise ValueError("truncated term")


def _decode_term(data: bytes, pos: int) -> tuple[object, int]:
    _need(data, pos, 1)
    tag = data[pos]
    pos += 1
    if tag == 97:  # SMALL_INTEGER_EXT
        _need(data, pos, 1)
        return data[pos], pos + 1
    if tag == 98:  # INTEGER_EXT
        _need(data, pos, 4)
        return struct.unpack_from(">i", data, pos)[0], pos + 4
    if tag in (110, 111):  # SMALL_BIG_EXT, LARGE_BIG_EXT
        size_len = 1 if tag == 110 else 4
        _need(data, pos, size_len + 1)
        n = data[pos] if tag == 110 else struct.unpack_from(">I", data, pos)[0]
        pos += size_len
        sign = data[pos]
        pos += 1
        _need(data, pos, n)
        magnitude = int.from_bytes(data[pos : pos + n], "little")
        return (-magnitude if sign else magnitude), pos + n
    if tag in (104, 105):  # SMALL_TUPLE_EXT, LARGE_TUPLE_EXT
        arity_len = 1 if tag == 104 else 4
        _need(data, pos, arity_len)
        arity = data[pos] if tag == 104 else struct.unpack_from(">I", data, pos)[0]
        pos += arity_len
        items: list[object] = []
        for _ in range(arity):
            item, pos = _decode_term(data, pos)
            items.append(item)
        return tuple(items), pos
    if tag == 109:  # BINARY_EXT
        _need(data, pos, 4)
        length = struct.unpack_from(">I", data, pos)[0]
        pos += 4
        _need(data, pos, length)
        return bytes(data[pos : pos + length]), pos + length
    if tag == 106:  # NIL_EXT
        return [], pos
    if tag == 107:  # STRING_EXT (list of bytes)
        _need(data, pos, 2)
        length = struct.unpack_from(">H", data, pos)[0]
        pos += 2
        _need(data, pos, length)
        return list(data[pos : pos + length]), pos + length
    if tag == 108:  # LIST_EXT
        _need(data, pos, 4)
        count = struct.unpack_from(">I", data, pos)[0]
        pos += 4
        elements: list[object] = []
        for _ in range(count):
            element, pos = _decode_term(data, pos)
            elements.append(element)
        tail, pos = _decode_term(data, pos)
        if tail != []:
            raise ValueError("improper lists are not supported")
        return elements, pos
    if tag in (100, 115, 118, 119):  # ATOM_EXT, SMALL_ATOM_EXT, ATOM_UTF8_EXT, SMALL_ATOM_UTF8_EXT
        len_size = 1 if tag in (115, 119) else 2
        _need(data, pos, len_size)
        length = data[pos] if len_size == 1 else struct.unpack_from(">H", data, pos)[0]
        pos += len_size
        _need(data, pos, length)
        encoding = "latin-1" if tag in (100, 115) else "utf-8"
        return Atom(data[pos : pos + length].decode(encoding)), pos + length
    raise ValueError(f"unsupported term tag {tag}")


# -- the algorithm -------------------------------------------------------------


def parse_alg(alg: str) -> tuple[str, int, int]:
    """``NH1-HMAC-<digest>-<iterations>-<length>`` -> (digest, iterations, length)."""
    parts = alg.split("-")
    if len(parts) != 5 or parts[0] != "NH1" or parts[1] != "HMAC":
        raise SharedSecretRejected(f"unsupported x-nh-alg {alg!r}")
    digest = parts[2]
    if digest not in ("sha256", "sha384", "sha512", "sha224", "sha"):
        raise SharedSecretRejected(f"unsupported digest {digest!r}")
    try:
        iterations = int(parts[3])
        length = int(parts[4])
    except ValueError:
        raise SharedSecretRejected(f"bad x-nh-alg {alg!r}") from None
    if not (1 <= iterations <= 1_000_000 and 1 <= length <= 1024):
        raise SharedSecretRejected(f"bad x-nh-alg {alg!r}")
    return ("sha1" if digest == "sha" else digest), iterations, length


def connect_salt(alg: str, key: str, time: str) -> bytes:
    """The PBKDF2 salt for a socket connect (trailing LF included)."""
    return (
        f"NH1:device-socket:shared-secret:connect\n\nx-nh-alg={alg}\nx-nh-key={key}\nx-nh-time={time}\n"
    ).encode()


def derive_key(secret: str, salt: bytes, digest: str, iterations: int, length: int) -> bytes:
    return hashlib.pbkdf2_hmac(digest, secret.encode(), salt, iterations, length)


def _b64url_decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.urlsafe_b64decode(padded.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise SharedSecretRejected("bad base64 in token") from None


def verify_token(
    token: str, key: bytes, *, now_ms: int, max_age_seconds: float = MAX_AGE_SECONDS
) -> tuple[str, int]:
    """Check a ``SFMyNTY.`` token; return (identifier, signed_at_ms)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PROTECTED:
        raise SharedSecretRejected("malformed token")
    plain = f"{parts[0]}.{parts[1]}".encode()
    expected = hmac.new(key, plain, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _b64url_decode(parts[2])):
        raise SharedSecretRejected("bad signature")
    try:
        term = decode_etf(_b64url_decode(parts[1]))
    except ValueError as exc:
        raise SharedSecretRejected(f"bad token payload: {exc}") from None
    if not (isinstance(term, tuple) and len(term) == 3):
        raise SharedSecretRejected("bad token payload: not a 3-tuple")
    data, signed_at, _token_max_age = term
    if not isinstance(data, bytes) or not isinstance(signed_at, int):
        raise SharedSecretRejected("bad token payload: wrong types")
    if signed_at + int(max_age_seconds * 1000) < now_ms:
        raise SharedSecretRejected("expired")
    if signed_at > now_ms:
        raise SharedSecretRejected("invalid (signed in the future)")
    try:
        return data.decode("utf-8"), signed_at
    except UnicodeDecodeError:
        raise SharedSecretRejected("bad token payload: identifier not UTF-8") from None


SecretLookup = Callable[[str], tuple[str, str | None] | None]
"""key -> (secret, identifier bound to a device key or None for product keys), or None."""


def verify_headers(
    headers: Mapping[str, str],
    lookup: SecretLookup,
    *,
    now: float,
    max_age_seconds: float = MAX_AGE_SECONDS,
) -> SharedSecretAuth:
    """Authenticate upgrade headers; raise `SharedSecretRejected` with the reason otherwise."""
    alg = headers.get("x-nh-alg")
    key = headers.get("x-nh-key")
    time = headers.get("x-nh-time")
    signature = headers.get("x-nh-signature")
    if not (alg and key and time and signature):
        raise SharedSecretRejected("missing x-nh-* headers")
    digest, iterations, length = parse_alg(alg)
    found = lookup(key)
    if found is None:
        raise SharedSecretRejected(f"unknown key {key!r}")
    secret, bound_identifier = found
    derived = derive_key(secret, connect_salt(alg, key, time), digest, iterations, length)
    identifier, signed_at = verify_token(
        signature, derived, now_ms=int(now * 1000), max_age_seconds=max_age_seconds
    )
    product = key.startswith(PRODUCT_KEY_PREFIX)
    if not product and bound_identifier is not None and identifier != bound_identifier:
        raise SharedSecretRejected("identifier does not match the device key")
    return SharedSecretAuth(identifier, key, product, signed_at)
