"""``nhlink nerves-key`` against the simulator."""

from __future__ import annotations

import pytest
from cryptography import x509

from nhlink.nerves_key.cli import main


def test_info_on_a_fresh_chip(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--simulate", "fresh"]) == 0
    out = capsys.readouterr().out
    assert "ATECC608A rev 1" in out
    assert "0123b908c68e16ffee" in out
    assert "data/OTP zones:          locked" in out
    assert "manufacturer serial:     nhlink-sim-0001" in out
    assert "primary device subject:  CN=nhlink-sim-0001" in out


def test_info_on_the_vector_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--simulate", "vectors"]) == 0
    out = capsys.readouterr().out
    assert "010203040506070809" in out
    assert "primary signer serial:   5e3d6d0a3e9471e6d6f4acf2310b96a3" in out
    # the fixture's device certificate was made with an unset clock: it cannot be rebuilt
    assert "device certificate: rebuilt device certificate does not verify" in out


def test_certs_prints_a_verified_chain(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--simulate", "fresh"]) == 0
    chain = x509.load_pem_x509_certificates(capsys.readouterr().out.encode())
    assert [c.subject.rfc4514_string() for c in chain] == ["CN=nhlink-sim-0001", "CN=Signer"]
    chain[0].verify_directly_issued_by(chain[1])


def test_serial(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serial", "--simulate", "vectors"]) == 0
    assert capsys.readouterr().out == "1234\n"


def test_blank_chip(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--simulate", "blank"]) == 0
    assert "not provisioned" in capsys.readouterr().out
    assert main(["certs", "--simulate", "blank"]) == 1
    assert "not provisioned" in capsys.readouterr().err


def test_missing_bus(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serial", "--bus", "250"]) == 1
    assert "/dev/i2c-250" in capsys.readouterr().err


def test_bad_usage() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["erase"])
    assert exc.value.code == 2
