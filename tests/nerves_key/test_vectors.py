"""The golden NervesKey vectors: CRC, packets, requests, dates, serials, OTP, certificates."""

from __future__ import annotations

import base64
import datetime
import hashlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nhlink.nerves_key import certs
from nhlink.nerves_key.crc import crc16, crc16_bytes
from nhlink.nerves_key.driver import (
    RETRIED_STATUSES,
    STATUS_MEANINGS,
    cacheable_request,
    encode_request,
    genkey_public_command,
    info_command,
    nonce_passthrough_command,
    package,
    random_command,
    read_command,
    sign_external_command,
    slot_read_plan,
    unpackage,
    zone_read_plan,
)
from nhlink.nerves_key.errors import AteccCommunicationError, CertificateError
from nhlink.nerves_key.nerves_key import (
    REV_NUMS,
    config_compatible,
    decode_otp,
    default_manufacturer_sn,
    device_sn_from_config,
    encode_otp,
    pad_zeros,
    trim_zeros,
)


def _utc(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_crc16(nk_vectors: dict[str, Any]) -> None:
    for vector in nk_vectors["crc16"]["vectors"]:
        assert crc16_bytes(bytes.fromhex(vector["input"])).hex() == vector["crc"]


def test_package_and_unpackage(nk_vectors: dict[str, Any]) -> None:
    transport = nk_vectors["i2c_transport"]
    for vector in transport["package"]:
        assert package(bytes.fromhex(vector["message"])).hex() == vector["packet"]
    for vector in transport["unpackage"]:
        raw = bytes.fromhex(vector["raw"])
        if vector["result"] == "ok":
            assert unpackage(raw).hex() == vector["payload"]
        else:
            match = "CRC" if vector["error"] == "bad_crc" else "too short"
            with pytest.raises(AteccCommunicationError, match=match):
                unpackage(raw)


def test_request_encodings(nk_vectors: dict[str, Any]) -> None:
    for vector in nk_vectors["request_encoding"]["vectors"]:
        prefix = bytes.fromhex(vector["request_prefix"])
        param2 = int.from_bytes(prefix[2:4], "little")
        request = encode_request(prefix[0], prefix[1], param2, bytes(vector["data_len"]))
        assert request[:4] == prefix, vector["name"]
        if vector["packet"]:
            assert package(request).hex() == vector["packet"], vector["name"]


def test_driver_commands_match_the_vector_packets(nk_vectors: dict[str, Any]) -> None:
    packets = {v["name"]: v["packet"] for v in nk_vectors["command_packets"]["vectors"]}
    ours = {
        "Info (revision)": info_command(),
        "Read config block 0, 32 B": read_command(0, 0, 32),
        "Read config word 21 (bytes 84-87), 4 B": read_command(0, 21, 4),
        "Read OTP block 0, 32 B": read_command(1, 0, 32),
        "Read slot 10 block 0, 32 B": slot_read_plan(10)[0],
        "Read slot 10 block 2 offset 1, 4 B": slot_read_plan(10)[3],
        "GenKey public key of slot 0": genkey_public_command(0),
        "Random": random_command(),
        "Sign external, TempKey, slot 0": sign_external_command(0),
        "Sign external, Msg-Digest-Buffer, slot 0": sign_external_command(0, 0xA0),
        "Nonce pass-through of 32 zero bytes": nonce_passthrough_command(bytes(32)),
    }
    assert set(ours) == set(packets)
    for name, command in ours.items():
        assert package(command.request).hex() == packets[name], name
    for response in nk_vectors["command_packets"]["responses"]:
        assert unpackage(bytes.fromhex(response["raw"])).hex() == response["payload"]


def test_read_plans(nk_vectors: dict[str, Any]) -> None:
    plans = nk_vectors["data_zone"]["derived_read_plans"]
    for slot in range(5, 16):
        if str(slot) in plans:
            assert [c.request.hex() for c in slot_read_plan(slot)] == plans[str(slot)]
    assert [c.request.hex() for c in zone_read_plan(1, 64)] == plans["otp"]
    assert [c.request.hex() for c in zone_read_plan(0, 128)] == plans["config"]
    assert [c.request.hex() for c in zone_read_plan(0, 128)] == nk_vectors["configuration"][
        "read_requests"
    ]


def test_validity(nk_vectors: dict[str, Any]) -> None:
    for vector in nk_vectors["validity"]["vectors"]:
        validity = certs.decode_dates(bytes.fromhex(vector["encoded_dates"]))
        assert validity.not_before == _utc(vector["not_before"])
        assert validity.not_after == _utc(vector["not_after"])
        years = vector["decoded"]["expire_years"]
        assert certs.encode_dates(validity.not_before, years).hex() == vector["encoded_dates"]


def test_serial_numbers(nk_vectors: dict[str, Any]) -> None:
    for vector in nk_vectors["serial_numbers"]["vectors"]:
        data = bytes.fromhex(vector["input_hash_data"])
        dates = bytes.fromhex(vector["encoded_dates"])
        serial = (
            certs.serial_from_device_sn(data, dates)
            if vector["sn_source"] == "0xB"
            else certs.serial_from_public_key(data, dates)
        )
        assert serial == int(vector["serial_dec"])
        assert f"{serial:032x}" == vector["serial_hex"]


def test_otp(nk_vectors: dict[str, Any]) -> None:
    assert nk_vectors["otp"]["magic"] == b"Nrvs".hex()
    for vector in nk_vectors["otp"]["vectors"]:
        user = bytes.fromhex(vector["user_hex"]) if vector["user_hex"] else b""
        image = encode_otp(vector["board_name"], vector["manufacturer_sn"], user)
        assert image.hex() == vector["otp_hex"], vector["name"]
        decoded = decode_otp(image)
        assert decoded.board_name == vector["board_name"]
        assert decoded.manufacturer_sn == vector["manufacturer_sn"]
        assert decoded.flags == vector["flags"]
    derived = nk_vectors["nerveskey_certificates"]["derived"]
    assert encode_otp("NervesKey", "1234").hex() == derived["otp_for_board_NervesKey_and_sn_1234"]


def test_default_manufacturer_sn(nk_vectors: dict[str, Any]) -> None:
    for vector in nk_vectors["default_manufacturer_sn"]["vectors"]:
        assert (
            default_manufacturer_sn(bytes.fromhex(vector["device_sn"])) == vector["manufacturer_sn"]
        )
        assert base64.b32decode(vector["manufacturer_sn"] + "=") == bytes.fromhex(
            vector["device_sn"]
        )


def test_configuration_zone(nk_vectors: dict[str, Any]) -> None:
    configuration = nk_vectors["configuration"]
    config = bytes.fromhex(configuration["raw_config_zone"])
    expected = configuration["expected_decoded"]
    assert len(config) == 128
    assert device_sn_from_config(config).hex() == expected["serial_number"]
    assert config[4:8].hex() == expected["rev_num"].split()[0]
    assert config[16] == int(expected["i2c_address"], 16)
    assert config[18] == int(expected["otp_mode"], 16)
    assert config[19] == expected["chip_mode"]
    assert config[86] == int(expected["lock_value"], 16)
    assert config[87] == int(expected["lock_config"], 16)
    assert config[88:90] == int(expected["slot_locked"], 16).to_bytes(2, "little")
    assert config[20:52].hex() == expected["slot_config"]
    assert config[96:128].hex() == expected["key_config"]
    assert not config_compatible(config)  # an unlocked, non-NervesKey 508A configuration
    lock = bytes.fromhex(configuration["derived_lock_config_request"])
    assert encode_request(0x17, 0x00, crc16(config)) == lock


def _fixture(nk_vectors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    fixture = nk_vectors["nerveskey_certificates"]
    slots = {key: bytes.fromhex(value) for key, value in fixture["expected_slots"].items()}
    return fixture, slots


def test_compressed_slot_fields(nk_vectors: dict[str, Any]) -> None:
    fixture, slots = _fixture(nk_vectors)
    derived = fixture["derived"]
    for slot, name in (("10", "slot10"), ("12", "slot12")):
        fields = certs.CompressedCertificate.parse(slots[slot])
        expected = derived[f"{name}_fields"]
        assert fields.r.hex() == expected["signature_r"]
        assert fields.s.hex() == expected["signature_s"]
        assert fields.encoded_dates.hex() == expected["encoded_dates"]
        assert f"{fields.signer_id:04x}" == expected["signer_id"]
        assert fields.template_id == expected["template_id"]
        assert fields.sn_source == int(expected["sn_source"], 16)
        assert fields.to_bytes() == slots[slot]
        dates = certs.decode_dates(fields.encoded_dates)
        assert dates.not_before == _utc(derived[f"{name}_dates_decoded"]["not_before"])
        assert dates.not_after == _utc(derived[f"{name}_dates_decoded"]["not_after"])


def test_signer_certificate_rebuilt_byte_for_byte(nk_vectors: dict[str, Any]) -> None:
    fixture, slots = _fixture(nk_vectors)
    derived = fixture["derived"]
    assert slots["11"][64:] == bytes(8)
    signer = certs.rebuild_signer_certificate(slots["12"], slots["11"][:64])
    der = signer.public_bytes(serialization.Encoding.DER)
    assert der.hex() == derived["signer_cert_der"]
    pem = x509.load_pem_x509_certificate(fixture["inputs"]["signer_cert_pem"].encode())
    assert der == pem.public_bytes(serialization.Encoding.DER)
    assert f"{signer.serial_number:032x}" == derived["signer_serial_from_slot11_and_dates_hex"]
    public_key = signer.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert certs.key_identifier(public_key).hex() == derived["ski_sha1_of_spki_der"]
    point = bytes.fromhex("04") + slots["11"][:64]
    assert hashlib.sha1(point).hexdigest() == derived["sha1_of_65_byte_point_WRONG_for_nerveskey"]


def test_device_certificate_rebuilt_with_pem_validity(nk_vectors: dict[str, Any]) -> None:
    fixture, slots = _fixture(nk_vectors)
    derived = fixture["derived"]
    device = derived["device_cert"]
    rebuilt = certs.rebuild_device_certificate(
        slots["10"],
        bytes.fromhex(derived["device_public_key_xy_genkey"]),
        bytes.fromhex(fixture["inputs"]["device_sn"]),
        fixture["inputs"]["manufacturer_sn"],
        slots["11"][:64],
        serial=int(device["serial_hex"], 16),
        validity=(_utc(device["not_before"]), _utc(device["not_after"])),
    )
    assert rebuilt.public_bytes(serialization.Encoding.DER).hex() == derived["device_cert_der"]
    extensions = [(e.oid.dotted_string, e.critical) for e in rebuilt.extensions]
    assert extensions == [(e["oid"], e["critical"]) for e in device["extensions_in_order"]]


def test_device_certificate_from_slot_alone_fails_loudly(nk_vectors: dict[str, Any]) -> None:
    fixture, slots = _fixture(nk_vectors)
    derived = fixture["derived"]
    fields = certs.CompressedCertificate.parse(slots["10"])
    serial = certs.serial_from_device_sn(
        bytes.fromhex(fixture["inputs"]["device_sn"]), fields.encoded_dates
    )
    assert f"{serial:032x}" == derived["device_serial_from_device_sn_and_slot10_dates_hex"]
    with pytest.raises(CertificateError, match="does not verify"):
        certs.rebuild_device_certificate(
            slots["10"],
            bytes.fromhex(derived["device_public_key_xy_genkey"]),
            bytes.fromhex(fixture["inputs"]["device_sn"]),
            "1234",
            slots["11"][:64],
        )


def test_compression_of_the_fixture_certificates(nk_vectors: dict[str, Any]) -> None:
    fixture, slots = _fixture(nk_vectors)
    signer = x509.load_pem_x509_certificate(fixture["inputs"]["signer_cert_pem"].encode())
    device = x509.load_pem_x509_certificate(fixture["inputs"]["device_cert_pem"].encode())
    assert (
        certs.compress_certificate(signer, template_id=1, sn_source=0xA, expire_years=1)
        == slots["12"]
    )
    # 1970 is read as 2070 upstream and clamped to 2031, with expire_years clamped to 1.
    compressed = certs.compress_certificate(device, template_id=0, sn_source=0xB, expire_years=1)
    assert compressed[:64] == slots["10"][:64]
    assert compressed[67:] == slots["10"][67:]
    assert slots["10"][64:67] == certs.encode_dates(
        datetime.datetime(2070, 1, 1, tzinfo=datetime.UTC), 1
    )


def test_corrupt_slot_is_a_certificate_error(nk_vectors: dict[str, Any]) -> None:
    _, slots = _fixture(nk_vectors)
    corrupt = bytearray(slots["12"])
    corrupt[5] ^= 0x01
    with pytest.raises(CertificateError):
        certs.rebuild_signer_certificate(bytes(corrupt), slots["11"][:64])
    wrong_format = bytearray(slots["12"])
    wrong_format[70] = 0xA1
    with pytest.raises(CertificateError, match="format 1"):
        certs.rebuild_signer_certificate(bytes(wrong_format), slots["11"][:64])


def test_trust_and_go_primitives(nk_vectors: dict[str, Any]) -> None:
    tng = nk_vectors["trust_and_go"]
    inputs, derived = tng["inputs"], tng["derived"]
    slot10 = certs.CompressedCertificate.parse(
        bytes.fromhex(inputs["slot10_compressed_device_cert"])
    )
    assert slot10.signer_id == 0x2C00 and slot10.template_id == 3
    dates = certs.decode_dates(slot10.encoded_dates)
    assert dates.not_before == _utc(derived["slot10_dates_decoded"]["not_before"])
    assert dates.not_after == _utc(derived["slot10_dates_decoded"]["not_after"])
    public_xy = bytes.fromhex(inputs["genkey_slot0_public_key_xy"])
    serial = certs.serial_from_public_key(public_xy, slot10.encoded_dates)
    assert f"{serial:032x}" == derived["device_serial_from_public_key_and_dates_hex"]
    padded = bytes.fromhex(inputs["slot11_signer_public_key_padded"])
    signer_key = certs.public_key_from_xy(padded[4:36] + padded[40:72])
    device = x509.load_der_x509_certificate(bytes.fromhex(tng["expected_device_cert_der"]))
    certs.verify_signed_by(device, signer_key, "Trust&Go device")
    assert device.serial_number == serial
    assert certs.public_key_xy(device.public_key()) == public_xy  # type: ignore[arg-type]
    assert device.signature_hash_algorithm is not None
    assert isinstance(device.signature_hash_algorithm, hashes.SHA256)


def test_status_codes_and_retry_policy(nk_vectors: dict[str, Any]) -> None:
    for row in nk_vectors["request_encoding"]["status_codes"]["table"]:
        status = int(row["status"], 16)
        assert (status in RETRIED_STATUSES) is row["retried"], row
        assert status in STATUS_MEANINGS


def test_cache_rules(nk_vectors: dict[str, Any]) -> None:
    for vector in nk_vectors["transport_cache"]["vectors"]:
        request = bytes.fromhex(vector["request"])
        payload = bytes.fromhex(vector["response_payload"])
        would_cache = cacheable_request(request) and len(payload) > 1
        assert would_cache is vector["cached"], vector


def test_zero_padding_rules(nk_vectors: dict[str, Any]) -> None:
    zeros = nk_vectors["util_zeros"]
    for vector in zeros["pad_zeros"]:
        assert pad_zeros(bytes.fromhex(vector["input"]), vector["len"]).hex() == vector["output"]
    for vector in zeros["trim_zeros"]:
        assert trim_zeros(bytes.fromhex(vector["input"])).hex() == vector["output"]


def test_rev_num_table(nk_vectors: dict[str, Any]) -> None:
    table = nk_vectors["rev_num"]["table"]
    for rev, chip in REV_NUMS.items():
        assert table[rev] == chip
