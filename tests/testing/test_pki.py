"""The throwaway PKI: what it issues and that it reloads."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from nhlink.testing import Pki
from nhlink.testing.pki import common_name


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def test_create_writes_ca_signer_server_and_private_keys(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    for name in ("ca", "signer-ca", "server"):
        assert (tmp_path / f"{name}.pem").is_file()
        key = tmp_path / f"{name}-key.pem"
        assert key.read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server = pki.server.certificate
    server.verify_directly_issued_by(pki.ca.certificate)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    # The signer CA is a separate root: it must not validate the server, nor the CA the devices.
    assert pki.signer.certificate.issuer == pki.signer.certificate.subject
    assert pki.signer.certificate.subject != pki.ca.certificate.subject


def test_device_certificates_and_their_broken_variants(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    good = pki.issue_device_certificate("dev-1")
    assert common_name(good.certificate) == "dev-1"
    good.certificate.verify_directly_issued_by(pki.signer.certificate)
    eku = good.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert good.cert_path == tmp_path / "devices" / "dev-1.pem"

    expired = pki.expired_device_certificate("dev-1")
    assert expired.certificate.not_valid_after_utc < _now()
    future = pki.not_yet_valid_device_certificate("dev-1")
    assert future.certificate.not_valid_before_utc > _now()
    rogue = pki.unknown_ca_device_certificate("dev-1")
    rogue.certificate.verify_directly_issued_by(pki.unregistered_ca.certificate)
    assert rogue.serial not in {c.serial for c in pki.issued_device_certificates}
    assert {good.serial, expired.serial, future.serial} <= {
        c.serial for c in pki.issued_device_certificates
    }


def test_load_finds_the_same_certificates(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    device = pki.issue_device_certificate("dev-9")
    again = Pki.load_or_create(tmp_path)
    assert again.ca.certificate == pki.ca.certificate
    assert again.server.certificate == pki.server.certificate
    found = again.find_device_certificate("dev-9")
    assert found is not None and found.serial == device.serial
    assert again.find_device_certificate("dev-10") is None


def test_crl_lists_the_revoked_serials(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    device = pki.issue_device_certificate("dev-1")
    crl = x509.load_pem_x509_crl(pki.crl_pem([device.serial], generation=3))
    assert crl.is_signature_valid(pki.signer.private_key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(device.serial) is not None
    older = x509.load_pem_x509_crl(pki.crl_pem([], generation=1))
    assert older.last_update_utc < crl.last_update_utc <= _now()
