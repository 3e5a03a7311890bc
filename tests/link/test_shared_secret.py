"""Shared-secret headers: the spec 14 vector, the ETF encoding and the Date hint."""

from __future__ import annotations

import email.utils

import pytest

from nhlink.aio.shared_secret import (
    HeaderSigner,
    algorithm,
    connect_salt,
    etf_integer,
    etf_payload,
    signed_headers,
)
from nhlink.config import SharedSecretConfig
from nhlink.errors import ConfigError
from nhlink.testing.shared_secret import decode_etf

VECTOR = SharedSecretConfig(key="nhp_exampleKey", secret="s3cr3t", identifier="nh-1234")


def test_known_vector_of_spec_section_14() -> None:
    payload = etf_payload("nh-1234", 1700000000 * 1000)
    assert payload.hex() == "8368036d000000076e682d313233346e06000068e5cf8b016200015180"
    assert signed_headers(VECTOR, 1700000000) == {
        "x-nh-alg": "NH1-HMAC-sha256-1000-32",
        "x-nh-key": "nhp_exampleKey",
        "x-nh-time": "1700000000",
        "x-nh-signature": (
            "SFMyNTY.g2gDbQAAAAduaC0xMjM0bgYAAGjlz4sBYgABUYA."
            "CoR0ttWofmINcemoDrRkfBhZ9vB6SoClztqt8VIZdgk"
        ),
    }


def test_salt_is_exactly_the_spec_text() -> None:
    assert connect_salt("NH1-HMAC-sha256-1000-32", "k", 5) == (
        b"NH1:device-socket:shared-secret:connect\n\n"
        b"x-nh-alg=NH1-HMAC-sha256-1000-32\nx-nh-key=k\nx-nh-time=5\n"
    )


@pytest.mark.parametrize("value", [0, 255, 256, -1, 2**31 - 1, -(2**31), 2**31, 2**47, -(2**40)])
def test_etf_integers_decode_back(value: int) -> None:
    assert decode_etf(b"\x83" + etf_integer(value)) == value


def test_etf_payload_decodes_as_the_hub_reads_it() -> None:
    assert decode_etf(etf_payload("dév", 123)) == ("dév".encode(), 123, 86400)


def test_algorithm_options_and_validation() -> None:
    settings = SharedSecretConfig(
        key="k", secret="s", key_digest="sha512", key_iterations=5, key_length=64
    )
    assert algorithm(settings) == "NH1-HMAC-sha512-5-64"
    assert signed_headers(settings, 1)["x-nh-alg"] == "NH1-HMAC-sha512-5-64"
    with pytest.raises(ConfigError, match="key_digest"):
        algorithm(SharedSecretConfig(key_digest="md5"))
    with pytest.raises(ConfigError, match="needs a key and a secret"):
        signed_headers(SharedSecretConfig(key="k"), 1)


def test_signer_uses_the_later_of_device_clock_and_server_date() -> None:
    wall = [1_000_000.0]
    mono = [50.0]
    signer = HeaderSigner(VECTOR, wall_clock=lambda: wall[0], monotonic=lambda: mono[0])
    assert signer.headers()["x-nh-time"] == "1000000"
    signer.note_refusal(None)  # no Date: nothing changes
    signer.note_refusal("garbage")
    assert signer.signing_time() == 1_000_000
    signer.note_refusal(email.utils.formatdate(1_000_600, usegmt=True))  # clock 10 min behind
    mono[0] += 30  # the reconnect delay passes
    wall[0] += 30
    assert signer.signing_time() == 1_000_630
    wall[0] = 2_000_000  # the clock got fixed meanwhile: it wins again
    assert signer.signing_time() == 2_000_000
