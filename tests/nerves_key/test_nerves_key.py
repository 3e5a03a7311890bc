"""The NervesKey layer on simulated chips: detection, identity, certificate pairs, signing."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from nhlink.nerves_key.certs import public_key_xy
from nhlink.nerves_key.errors import NervesKeyError, NotProvisionedError
from nhlink.nerves_key.nerves_key import NervesKeyDevice, key_mode
from nhlink.testing.atecc import fixture_image, provisioned_image, unprovisioned_image
from tests.nerves_key.conftest import ChipFactory


def test_provisioned_chip_gives_a_verified_pair(make_chip: ChipFactory) -> None:
    image, signer_key = provisioned_image("device-42", aux=True)
    _, atecc = make_chip(image)
    device = NervesKeyDevice(atecc)
    otp = device.check()
    assert (otp.board_name, otp.manufacturer_sn) == ("NervesKey", "device-42")
    assert device.device_sn.hex() == "0123b908c68e16ffee"
    for pair_name in ("primary", "aux"):
        pair = device.certificate_pair(pair_name)
        assert pair.device.subject.rfc4514_string() == "CN=device-42"
        signer_public = pair.signer.public_key()
        assert isinstance(signer_public, ec.EllipticCurvePublicKey)
        assert public_key_xy(signer_public) == public_key_xy(signer_key.public_key())
        pem = pair.chain_pem()
        loaded = x509.load_pem_x509_certificates(pem)
        assert [c.subject for c in loaded] == [pair.device.subject, pair.signer.subject]
    assert device.has_aux_certificates()
    signature = device.sign(b"to be signed")
    public_key = pair.device.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(signature, b"to be signed", ec.ECDSA(hashes.SHA256()))


def test_missing_aux_pair(make_chip: ChipFactory) -> None:
    image, _ = provisioned_image()
    _, atecc = make_chip(image)
    device = NervesKeyDevice(atecc)
    assert not device.has_aux_certificates()
    with pytest.raises(NotProvisionedError, match="no aux certificate pair"):
        device.certificate_pair("aux")
    with pytest.raises(NervesKeyError, match="'primary' or 'aux'"):
        device.certificate_pair("backup")


def test_fixture_chip_identity(make_chip: ChipFactory) -> None:
    _, atecc = make_chip(fixture_image())
    device = NervesKeyDevice(atecc)
    assert device.check().manufacturer_sn == "1234"
    assert device.chip_name == "ATECC608A rev 1"
    assert device.signer_certificate().subject.rfc4514_string() == "CN=Signer"


def test_unprovisioned_chip_is_a_clean_error(make_chip: ChipFactory) -> None:
    simulator, atecc = make_chip(unprovisioned_image())
    device = NervesKeyDevice(atecc)
    assert not device.provisioned()
    with pytest.raises(NotProvisionedError, match="not provisioned"):
        device.certificate_pair()
    assert atecc.stats["retries"] == 0
    assert simulator.state == "asleep"


def test_wrong_otp_magic(make_chip: ChipFactory) -> None:
    image, _ = provisioned_image()
    image.otp[0:4] = b"Xrvs"
    _, atecc = make_chip(image)
    with pytest.raises(NotProvisionedError, match="not a NervesKey"):
        NervesKeyDevice(atecc).check()


def test_volatile_key_is_reported(make_chip: ChipFactory) -> None:
    image, _ = provisioned_image()
    image.config[96:98] = b"\x33\x10"
    assert key_mode(bytes(image.config)) == "volatile"
    _, atecc = make_chip(image)
    with pytest.raises(NotProvisionedError, match="volatile key"):
        NervesKeyDevice(atecc).check()


def test_corrupt_certificate_slot_fails_loudly(make_chip: ChipFactory) -> None:
    image, _ = provisioned_image()
    image.slots[10][3] ^= 0x40
    _, atecc = make_chip(image)
    with pytest.raises(NervesKeyError, match="does not verify"):
        NervesKeyDevice(atecc).certificate_pair()


def test_sign_digest_is_der(make_chip: ChipFactory) -> None:
    image, _ = provisioned_image()
    _, atecc = make_chip(image)
    device = NervesKeyDevice(atecc)
    digest = hashlib.sha256(b"x").digest()
    signature = device.sign_digest(digest)
    assert signature[0] == 0x30
    device.public_key().verify(signature, b"x", ec.ECDSA(hashes.SHA256()))


def test_nerves_key_answers() -> None:
    from nhlink.nerves_key.driver import Atecc
    from nhlink.nerves_key.nerves_key import nerves_key_answers, register_atecc
    from nhlink.testing.atecc import SimulatedAtecc

    for image, expected in ((provisioned_image()[0], True), (unprovisioned_image(), False)):
        register_atecc(98, Atecc(SimulatedAtecc(image)))
        try:
            assert nerves_key_answers(98) is expected
        finally:
            register_atecc(98, None)
    assert not nerves_key_answers(251)  # no such bus
