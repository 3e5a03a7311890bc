"""Shared-secret token checks against the known vector of spec section 14.

The signer here is written independently of nhlink.testing.shared_secret,
straight from spec 1.6, so the two meet only at the vector.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from nhlink.testing.shared_secret import (
    SharedSecretRejected,
    decode_etf,
    verify_headers,
    verify_token,
)

VECTOR_KEY = "nhp_exampleKey"
VECTOR_SECRET = "s3cr3t"
VECTOR_IDENTIFIER = "nh-1234"
VECTOR_TIME = 1700000000
VECTOR_ALG = "NH1-HMAC-sha256-1000-32"
VECTOR_PAYLOAD_HEX = "8368036d000000076e682d313233346e06000068e5cf8b016200015180"
VECTOR_SIGNATURE = (
    "SFMyNTY.g2gDbQAAAAduaC0xMjM0bgYAAGjlz4sBYgABUYA.CoR0ttWofmINcemoDrRkfBhZ9vB6SoClztqt8VIZdgk"
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def etf_payload(identifier: str, signed_at_ms: int) -> bytes:
    ident = identifier.encode()
    if signed_at_ms < 2**31:
        stamp = b"\x62" + signed_at_ms.to_bytes(4, "big")
    else:
        stamp = b"\x6e\x06\x00" + signed_at_ms.to_bytes(6, "little")
    return (
        b"\x83\x68\x03\x6d"
        + len(ident).to_bytes(4, "big")
        + ident
        + stamp
        + b"\x62\x00\x01\x51\x80"
    )


def sign_headers(
    key: str, secret: str, identifier: str, t: int, alg: str = VECTOR_ALG
) -> dict[str, str]:
    """The x-nh-* headers for a connect at unix time `t` (spec 1.6)."""
    _nh1, _hmac, digest, iterations, length = alg.split("-")
    salt = f"NH1:device-socket:shared-secret:connect\n\nx-nh-alg={alg}\nx-nh-key={key}\nx-nh-time={t}\n"
    derived = hashlib.pbkdf2_hmac(
        digest, secret.encode(), salt.encode(), int(iterations), int(length)
    )
    plain = "SFMyNTY." + b64url(etf_payload(identifier, t * 1000))
    mac = hmac.new(derived, plain.encode(), hashlib.sha256).digest()
    return {
        "x-nh-alg": alg,
        "x-nh-key": key,
        "x-nh-time": str(t),
        "x-nh-signature": plain + "." + b64url(mac),
    }


def vector_lookup(key: str) -> tuple[str, str | None] | None:
    return (VECTOR_SECRET, None) if key == VECTOR_KEY else None


def test_independent_signer_reproduces_the_vector() -> None:
    assert etf_payload(VECTOR_IDENTIFIER, VECTOR_TIME * 1000).hex() == VECTOR_PAYLOAD_HEX
    headers = sign_headers(VECTOR_KEY, VECTOR_SECRET, VECTOR_IDENTIFIER, VECTOR_TIME)
    assert headers["x-nh-signature"] == VECTOR_SIGNATURE


def test_decode_etf_reads_the_vector_payload() -> None:
    assert decode_etf(bytes.fromhex(VECTOR_PAYLOAD_HEX)) == (b"nh-1234", 1700000000000, 86400)
    with pytest.raises(ValueError):
        decode_etf(bytes.fromhex(VECTOR_PAYLOAD_HEX)[:-1])
    with pytest.raises(ValueError):
        decode_etf(bytes.fromhex(VECTOR_PAYLOAD_HEX) + b"\x00")


def test_vector_accepted_within_90_seconds() -> None:
    headers = sign_headers(VECTOR_KEY, VECTOR_SECRET, VECTOR_IDENTIFIER, VECTOR_TIME)
    auth = verify_headers(headers, vector_lookup, now=VECTOR_TIME + 90)
    assert (auth.identifier, auth.product, auth.signed_at_ms) == (
        "nh-1234",
        True,
        VECTOR_TIME * 1000,
    )


@pytest.mark.parametrize(
    ("now", "reason"),
    [(VECTOR_TIME + 90.001, "expired"), (VECTOR_TIME - 0.001, "invalid (signed in the future)")],
)
def test_vector_rejected_when_too_old_or_from_the_future(now: float, reason: str) -> None:
    headers = sign_headers(VECTOR_KEY, VECTOR_SECRET, VECTOR_IDENTIFIER, VECTOR_TIME)
    with pytest.raises(SharedSecretRejected) as caught:
        verify_headers(headers, vector_lookup, now=now)
    assert caught.value.reason == reason


def test_tampering_is_rejected() -> None:
    headers = sign_headers(VECTOR_KEY, VECTOR_SECRET, VECTOR_IDENTIFIER, VECTOR_TIME)
    cases = {
        "wrong secret": sign_headers(VECTOR_KEY, "other", VECTOR_IDENTIFIER, VECTOR_TIME),
        # the salt covers x-nh-time: changing it breaks the derived key
        "time header changed": {**headers, "x-nh-time": str(VECTOR_TIME + 1)},
        "unknown key": sign_headers("nhp_other", VECTOR_SECRET, VECTOR_IDENTIFIER, VECTOR_TIME),
    }
    for bad in cases.values():
        with pytest.raises(SharedSecretRejected):
            verify_headers(bad, vector_lookup, now=VECTOR_TIME + 1)


def test_device_key_must_match_its_identifier() -> None:
    def lookup(key: str) -> tuple[str, str | None] | None:
        return ("devsecret", "dev-1") if key == "dk_1" else None

    good = sign_headers("dk_1", "devsecret", "dev-1", VECTOR_TIME)
    assert verify_headers(good, lookup, now=VECTOR_TIME).product is False
    other = sign_headers("dk_1", "devsecret", "dev-2", VECTOR_TIME)
    with pytest.raises(SharedSecretRejected, match="identifier"):
        verify_headers(other, lookup, now=VECTOR_TIME)


def test_verify_token_respects_other_algorithms() -> None:
    headers = sign_headers(
        VECTOR_KEY, VECTOR_SECRET, VECTOR_IDENTIFIER, VECTOR_TIME, "NH1-HMAC-sha512-10-64"
    )
    assert verify_headers(headers, vector_lookup, now=VECTOR_TIME).identifier == VECTOR_IDENTIFIER
    with pytest.raises(SharedSecretRejected, match="malformed"):
        verify_token("nonsense", b"k", now_ms=0)
