"""The ATECC 72-byte compressed certificate and the NervesKey X.509 templates.

A compressed certificate keeps only what varies: the signature R‖S, the
issue date and lifetime (3 bytes), signer id, template/chain ids, serial
source and format. The rest is a fixed template. The TBSCertificate is built
with ``cryptography`` (signed with a throw-away key, only its TBS bytes are
kept) and the certificate DER is assembled around it with the chip's R‖S.
Every rebuilt certificate is verified; a mismatch is a hard error.

The key identifiers are SHA-1 over the whole SubjectPublicKeyInfo DER (as
Elixir ``x509`` computes them), not RFC 5280 method 1 over the point.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nhlink.nerves_key.errors import CertificateError

COMPRESSED_SIZE = 72
SN_SOURCE_PUBLIC_KEY = 0xA
SN_SOURCE_DEVICE_SN = 0xB
DEVICE_TEMPLATE_ID = 0
SIGNER_TEMPLATE_ID = 1
SIGNER_CN = "Signer"
NO_EXPIRY = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_THROWAWAY_KEY = ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class CompressedCertificate:
    """The decoded fields of a 72-byte compressed certificate."""

    r: bytes
    s: bytes
    encoded_dates: bytes
    signer_id: int
    template_id: int
    chain_id: int
    sn_source: int
    format_version: int
    reserved: int = 0

    @classmethod
    def parse(cls, data: bytes) -> CompressedCertificate:
        if len(data) != COMPRESSED_SIZE:
            raise CertificateError(f"compressed certificate is {len(data)} bytes, not 72")
        return cls(
            r=data[0:32],
            s=data[32:64],
            encoded_dates=data[64:67],
            signer_id=int.from_bytes(data[67:69], "big"),
            template_id=data[69] >> 4,
            chain_id=data[69] & 0x0F,
            sn_source=data[70] >> 4,
            format_version=data[70] & 0x0F,
            reserved=data[71],
        )

    def to_bytes(self) -> bytes:
        return (
            self.r
            + self.s
            + self.encoded_dates
            + self.signer_id.to_bytes(2, "big")
            + bytes(
                (
                    (self.template_id << 4) | self.chain_id,
                    (self.sn_source << 4) | self.format_version,
                    self.reserved,
                )
            )
        )

    @property
    def signature_der(self) -> bytes:
        """R‖S as a DER ECDSA-Sig-Value."""
        return encode_dss_signature(int.from_bytes(self.r, "big"), int.from_bytes(self.s, "big"))

    def check(self, template_id: int, sn_source: int) -> None:
        """Only format 0 with NervesKey's ids is supported."""
        if self.format_version != 0 or self.reserved != 0:
            raise CertificateError(
                f"compressed certificate format {self.format_version} is not supported"
            )
        if self.template_id != template_id or self.chain_id != 0 or self.signer_id != 0:
            raise CertificateError(
                f"compressed certificate template {self.template_id}/chain {self.chain_id}/"
                f"signer {self.signer_id:04x} is not a NervesKey one"
            )
        if self.sn_source != sn_source:
            raise CertificateError(
                f"compressed certificate serial source 0x{self.sn_source:x} is unexpected"
            )


@dataclass(frozen=True)
class Validity:
    """Issue date (to the hour) and lifetime in whole years; 0 years = no expiry."""

    year: int
    month: int
    day: int
    hour: int
    expire_years: int

    @property
    def not_before(self) -> datetime.datetime:
        return datetime.datetime(
            2000 + self.year, self.month, self.day, self.hour, tzinfo=datetime.UTC
        )

    @property
    def not_after(self) -> datetime.datetime:
        if self.expire_years == 0:
            return NO_EXPIRY
        return self.not_before.replace(year=2000 + self.year + self.expire_years)


def decode_dates(encoded: bytes) -> Validity:
    """Decode ``year-2000(5) month(4) day(5) hour(5) expire_years(5)``."""
    value = int.from_bytes(encoded, "big")
    validity = Validity(
        year=value >> 19,
        month=(value >> 15) & 0x0F,
        day=(value >> 10) & 0x1F,
        hour=(value >> 5) & 0x1F,
        expire_years=value & 0x1F,
    )
    try:
        validity.not_before  # noqa: B018 - validates the calendar fields
        validity.not_after  # noqa: B018 - a 29 February issue + N years may not exist
    except ValueError as exc:
        raise CertificateError(f"compressed certificate dates {encoded.hex()}: {exc}") from None
    return validity


def encode_dates(not_before: datetime.datetime, expire_years: int) -> bytes:
    """Encode issue date and lifetime; years are clamped to 2000..2031 as NervesKey does."""
    year = min(max(not_before.year - 2000, 0), 31)
    years = min(max(expire_years, 0), 31)
    value = (
        (year << 19)
        | (not_before.month << 15)
        | (not_before.day << 10)
        | (not_before.hour << 5)
        | years
    )
    return value.to_bytes(3, "big")


def serial_from_hash(data: bytes) -> int:
    """First 16 bytes of SHA-256(data) with the top two bits forced to 01."""
    digest = bytearray(hashlib.sha256(data).digest()[:16])
    digest[0] = (digest[0] & 0x3F) | 0x40
    return int.from_bytes(digest, "big")


def serial_from_device_sn(device_sn: bytes, encoded_dates: bytes) -> int:
    """Serial source 0xB."""
    return serial_from_hash(device_sn + encoded_dates)


def serial_from_public_key(public_key_xy: bytes, encoded_dates: bytes) -> int:
    """Serial source 0xA."""
    return serial_from_hash(public_key_xy + encoded_dates)


def public_key_from_xy(xy: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from the chip's 64-byte X‖Y."""
    if len(xy) != 64:
        raise CertificateError(f"public key is {len(xy)} bytes, not 64")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)
    except ValueError:
        raise CertificateError("public key is not a point on P-256") from None


def public_key_xy(key: ec.EllipticCurvePublicKey) -> bytes:
    """The 64-byte X‖Y of a P-256 public key."""
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]


def key_identifier(key: ec.EllipticCurvePublicKey) -> bytes:
    """SHA-1 of the whole SubjectPublicKeyInfo DER (the NervesKey/Elixir rule)."""
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(spki).digest()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def signer_tbs(
    public_key: ec.EllipticCurvePublicKey,
    serial: int,
    validity: tuple[datetime.datetime, datetime.datetime],
) -> bytes:
    """The signer certificate's TBSCertificate (template 1)."""
    ski = key_identifier(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(SIGNER_CN))
        .issuer_name(_name(SIGNER_CN))
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(ski, None, None), critical=False)
    )
    return builder.sign(_THROWAWAY_KEY, hashes.SHA256()).tbs_certificate_bytes


def device_tbs(
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    signer_key: ec.EllipticCurvePublicKey,
    serial: int,
    validity: tuple[datetime.datetime, datetime.datetime],
) -> bytes:
    """The device certificate's TBSCertificate (template 0, no SKI)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(SIGNER_CN))
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(key_identifier(signer_key), None, None), critical=False
        )
    )
    return builder.sign(_THROWAWAY_KEY, hashes.SHA256()).tbs_certificate_bytes


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    size = (length.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + length.to_bytes(size, "big")


def _der(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _der_length(len(content)) + content


def assemble_certificate(tbs: bytes, signature_der: bytes) -> x509.Certificate:
    """``SEQUENCE { tbs, ecdsa-with-SHA256, BIT STRING(signature) }`` as a certificate."""
    der = _der(0x30, tbs + _ECDSA_SHA256 + _der(0x03, b"\x00" + signature_der))
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError(f"rebuilt certificate does not parse: {exc}") from None


def verify_signed_by(
    certificate: x509.Certificate, issuer_key: ec.EllipticCurvePublicKey, what: str
) -> None:
    """Raise CertificateError unless ``issuer_key`` signed ``certificate``."""
    try:
        issuer_key.verify(
            certificate.signature,
            certificate.tbs_certificate_bytes,
            ec.ECDSA(hashes.SHA256()),
        )
    except InvalidSignature:
        raise CertificateError(
            f"rebuilt {what} certificate does not verify (template mismatch or corrupt slot)"
        ) from None


def rebuild_signer_certificate(compressed: bytes, signer_public_xy: bytes) -> x509.Certificate:
    """The self-signed signer certificate from its slot (12/15) and public key (11/14)."""
    fields = CompressedCertificate.parse(compressed)
    fields.check(SIGNER_TEMPLATE_ID, SN_SOURCE_PUBLIC_KEY)
    key = public_key_from_xy(signer_public_xy)
    validity = decode_dates(fields.encoded_dates)
    serial = serial_from_public_key(signer_public_xy, fields.encoded_dates)
    tbs = signer_tbs(key, serial, (validity.not_before, validity.not_after))
    certificate = assemble_certificate(tbs, fields.signature_der)
    verify_signed_by(certificate, key, "signer")
    return certificate


def rebuild_device_certificate(
    compressed: bytes,
    device_public_xy: bytes,
    device_sn: bytes,
    manufacturer_sn: str,
    signer_public_xy: bytes,
    *,
    serial: int | None = None,
    validity: tuple[datetime.datetime, datetime.datetime] | None = None,
) -> x509.Certificate:
    """The device certificate from its slot (10/9); ``serial``/``validity`` override the slot's."""
    fields = CompressedCertificate.parse(compressed)
    fields.check(DEVICE_TEMPLATE_ID, SN_SOURCE_DEVICE_SN)
    if validity is None:
        dates = decode_dates(fields.encoded_dates)
        validity = (dates.not_before, dates.not_after)
    if serial is None:
        serial = serial_from_device_sn(device_sn, fields.encoded_dates)
    signer_key = public_key_from_xy(signer_public_xy)
    device_key = public_key_from_xy(device_public_xy)
    try:
        tbs = device_tbs(device_key, manufacturer_sn, signer_key, serial, validity)
    except ValueError as exc:  # e.g. an empty manufacturer serial (OTP without one) as CN
        raise CertificateError(f"device certificate cannot be rebuilt: {exc}") from None
    certificate = assemble_certificate(tbs, fields.signature_der)
    verify_signed_by(certificate, signer_key, "device")
    return certificate


def compress_certificate(
    certificate: x509.Certificate, *, template_id: int, sn_source: int, expire_years: int
) -> bytes:
    """The 72-byte compressed form of a NervesKey certificate (for provisioning and tests)."""
    r, s = decode_dss_signature(certificate.signature)
    return CompressedCertificate(
        r=r.to_bytes(32, "big"),
        s=s.to_bytes(32, "big"),
        encoded_dates=encode_dates(certificate.not_valid_before_utc, expire_years),
        signer_id=0,
        template_id=template_id,
        chain_id=0,
        sn_source=sn_source,
        format_version=0,
    ).to_bytes()


def issue_signer_certificate(
    signer_key: ec.EllipticCurvePrivateKey, not_before: datetime.datetime, years: int = 1
) -> x509.Certificate:
    """A fresh signer certificate in the NervesKey template (test/provisioning helper)."""
    encoded = encode_dates(not_before, years)
    dates = decode_dates(encoded)
    xy = public_key_xy(signer_key.public_key())
    tbs = signer_tbs(
        signer_key.public_key(),
        serial_from_public_key(xy, encoded),
        (dates.not_before, dates.not_after),
    )
    return assemble_certificate(tbs, signer_key.sign(tbs, ec.ECDSA(hashes.SHA256())))


def issue_device_certificate(
    device_key: ec.EllipticCurvePublicKey,
    device_sn: bytes,
    manufacturer_sn: str,
    signer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    years: int = 31,
) -> x509.Certificate:
    """A fresh device certificate in the NervesKey template (test/provisioning helper)."""
    encoded = encode_dates(not_before, years)
    dates = decode_dates(encoded)
    tbs = device_tbs(
        device_key,
        manufacturer_sn,
        signer_key.public_key(),
        serial_from_device_sn(device_sn, encoded),
        (dates.not_before, dates.not_after),
    )
    return assemble_certificate(tbs, signer_key.sign(tbs, ec.ECDSA(hashes.SHA256())))
