"""A provisioned NervesKey: detection, OTP identity and the certificate pairs.

Detection follows NervesKey: the chip wakes, the data zone is locked
(config byte 86 = 0x00), the OTP starts with ``Nrvs`` and the configuration
matches the NervesKey slot layout. The private key (slot 0) never leaves the
chip; :meth:`NervesKeyDevice.sign_digest` signs on it.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from nhlink.nerves_key.certs import (
    public_key_from_xy,
    rebuild_device_certificate,
    rebuild_signer_certificate,
)
from nhlink.nerves_key.driver import Atecc
from nhlink.nerves_key.errors import NervesKeyError, NotProvisionedError

OTP_MAGIC = b"Nrvs"
BOARD_NAME_SIZE = 10
SHORT_SN_SIZE = 16
LONG_SN_SIZE = 48
UNLOCKED = 0x55
REV_NUMS = {
    "00005000": "ATECC508A",
    "00006001": "ATECC608A rev 1",
    "00006002": "ATECC608A rev 2",
    "00006003": "ATECC608B",
}

CertificatePairName = Literal["primary", "aux"]
PAIR_SLOTS: dict[str, tuple[int, int, int]] = {
    # device cert, signer public key, signer cert
    "primary": (10, 11, 12),
    "aux": (9, 14, 15),
}


@dataclass(frozen=True)
class OtpInfo:
    """The NervesKey OTP zone: board name, manufacturer serial number, user data."""

    board_name: str
    manufacturer_sn: str
    flags: int
    user_data: bytes


def trim_zeros(data: bytes) -> bytes:
    """Drop trailing zero bytes (how OTP strings are stored)."""
    return data.rstrip(b"\x00")


def pad_zeros(data: bytes, size: int) -> bytes:
    """Zero-pad or cut ``data`` to exactly ``size`` bytes."""
    return data[:size].ljust(size, b"\x00")


def decode_otp(otp: bytes) -> OtpInfo:
    """Decode the 64-byte OTP zone; NotProvisionedError when the magic is wrong."""
    if otp[:4] != OTP_MAGIC:
        raise NotProvisionedError(f"OTP magic is {otp[:4].hex()}, not 'Nrvs': not a NervesKey")
    flags = int.from_bytes(otp[4:6], "big")
    board = trim_zeros(otp[6:16]).decode("ascii", "replace")
    if flags & 1:
        serial, user = otp[16:64], b""
    else:
        serial, user = otp[16:32], otp[32:64]
    return OtpInfo(board, trim_zeros(serial).decode("ascii", "replace"), flags, user)


def encode_otp(board_name: str, manufacturer_sn: str, user_data: bytes = b"") -> bytes:
    """The 64-byte OTP image NervesKey provisioning writes."""
    board = board_name.encode()
    serial = manufacturer_sn.encode()
    if len(board) > BOARD_NAME_SIZE or len(serial) > LONG_SN_SIZE:
        raise NervesKeyError("board name or manufacturer serial number is too long")
    if len(serial) <= SHORT_SN_SIZE:
        head = OTP_MAGIC + b"\x00\x00" + pad_zeros(board, BOARD_NAME_SIZE)
        return head + pad_zeros(serial, SHORT_SN_SIZE) + pad_zeros(user_data, 32)
    return (
        OTP_MAGIC
        + b"\x00\x01"
        + pad_zeros(board, BOARD_NAME_SIZE)
        + pad_zeros(serial, LONG_SN_SIZE)
    )


def default_manufacturer_sn(device_sn: bytes) -> str:
    """NervesKey's default serial: Base32 of the 9-byte device SN, no padding."""
    return base64.b32encode(device_sn).decode().rstrip("=")


def device_sn_from_config(config: bytes) -> bytes:
    """Config bytes 0..3 and 8..12."""
    return config[0:4] + config[8:13]


def config_compatible(config: bytes) -> bool:
    """The NervesKey slot layout (the Elixir ``config_compatible?`` check)."""
    return (
        config[87] == 0
        and config[19] == 0
        and config[20:22] == b"\x87\x20"
        and config[40:48] == bytes.fromhex("0f2f0f2f0f2f0f2f")
        and config[96:98] in (b"\x33\x00", b"\x33\x10")
        and config[116:124] == bytes.fromhex("3c0030003c003c00")
    )


def key_mode(config: bytes) -> str:
    """``regular``, ``volatile`` (608 PersistentDisable) or ``unrecognized``."""
    if config[20:22] != b"\x87\x20":
        return "unrecognized"
    return {b"\x33\x00": "regular", b"\x33\x10": "volatile"}.get(config[96:98], "unrecognized")


@dataclass(frozen=True)
class CertificatePair:
    device: x509.Certificate
    signer: x509.Certificate

    def chain_pem(self) -> bytes:
        """Device then signer certificate, PEM (what the TLS client sends)."""
        return self.device.public_bytes(serialization.Encoding.PEM) + self.signer.public_bytes(
            serialization.Encoding.PEM
        )


class NervesKeyDevice:
    """A NervesKey on an :class:`Atecc`."""

    def __init__(self, atecc: Atecc) -> None:
        self.atecc = atecc
        self._config: bytes | None = None

    @property
    def config_zone(self) -> bytes:
        if self._config is None:
            self._config = self.atecc.read_config_zone()
        return self._config

    @property
    def device_sn(self) -> bytes:
        return device_sn_from_config(self.config_zone)

    @property
    def chip_name(self) -> str:
        rev = self.config_zone[4:8].hex()
        return REV_NUMS.get(rev, f"unknown ATECC (RevNum {rev})")

    def provisioned(self) -> bool:
        """The data zone is locked (NervesKey's only ``provisioned?`` check)."""
        return self.config_zone[86] == 0

    def check(self) -> OtpInfo:
        """Raise NotProvisionedError unless this is a provisioned, regular NervesKey."""
        config = self.config_zone
        if config[86] == UNLOCKED:
            raise NotProvisionedError(
                "ATECC data zone is unlocked: the NervesKey is not provisioned"
            )
        otp = decode_otp(self.atecc.read_otp_zone())
        if not config_compatible(config):
            raise NotProvisionedError("ATECC configuration is not the NervesKey layout")
        if key_mode(config) == "volatile":
            raise NotProvisionedError(
                "NervesKey uses a volatile key (KeyConfig 33 10): signing needs the persistent "
                "latch, which nhlink does not set"
            )
        return otp

    def otp(self) -> OtpInfo:
        return decode_otp(self.atecc.read_otp_zone())

    @property
    def manufacturer_sn(self) -> str:
        return self.otp().manufacturer_sn

    def has_aux_certificates(self) -> bool:
        return any(self.atecc.read_slot(PAIR_SLOTS["aux"][0]))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return public_key_from_xy(self.atecc.genkey_public(0))

    def signer_certificate(self, pair: str = "primary") -> x509.Certificate:
        _, key_slot, cert_slot = _slots(pair)
        signer_xy = self.atecc.read_slot(key_slot)[:64]
        return rebuild_signer_certificate(self.atecc.read_slot(cert_slot), signer_xy)

    def certificate_pair(self, pair: str = "primary") -> CertificatePair:
        """Rebuild and verify the device and signer certificates of ``pair``."""
        device_slot, key_slot, _ = _slots(pair)
        otp = self.check()
        compressed = self.atecc.read_slot(device_slot)
        if not any(compressed):
            raise NotProvisionedError(f"the NervesKey has no {pair} certificate pair")
        signer = self.signer_certificate(pair)
        signer_xy = self.atecc.read_slot(key_slot)[:64]
        device = rebuild_device_certificate(
            compressed,
            self.atecc.genkey_public(0),
            self.device_sn,
            otp.manufacturer_sn,
            signer_xy,
        )
        return CertificatePair(device, signer)

    def sign_digest(self, digest: bytes) -> bytes:
        """DER ECDSA signature of a SHA-256 ``digest`` by the slot-0 key."""
        rs = self.atecc.sign_digest(digest, 0)
        return encode_dss_signature(int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big"))

    def sign(self, data: bytes) -> bytes:
        """DER ECDSA-SHA256 signature of ``data`` by the slot-0 key."""
        return self.sign_digest(hashlib.sha256(data).digest())


def _slots(pair: str) -> tuple[int, int, int]:
    try:
        return PAIR_SLOTS[pair]
    except KeyError:
        raise NervesKeyError(f"certificate pair {pair!r} is not 'primary' or 'aux'") from None


_CHIPS: dict[int, Atecc] = {}
_CHIPS_LOCK = threading.Lock()


def open_atecc(bus: int) -> Atecc:
    """The process-wide driver for ``/dev/i2c-<bus>`` (one per bus, so one lock per chip)."""
    with _CHIPS_LOCK:
        atecc = _CHIPS.get(bus)
        if atecc is None:
            try:
                from smbus2 import SMBus

                atecc = Atecc(SMBus(bus))
            except (OSError, ImportError) as exc:
                raise NervesKeyError(f"cannot open I2C bus /dev/i2c-{bus}: {exc}") from None
            _CHIPS[bus] = atecc
        return atecc


def register_atecc(bus: int, atecc: Atecc | None) -> None:
    """Use ``atecc`` (e.g. on a simulated chip) for ``bus``; None forgets it."""
    with _CHIPS_LOCK:
        if atecc is None:
            _CHIPS.pop(bus, None)
        else:
            _CHIPS[bus] = atecc


def nerves_key_answers(bus: int) -> bool:
    """A provisioned NervesKey answers on ``bus`` (for choosing the configurator at run time)."""
    try:
        atecc = open_atecc(bus)
        if not atecc.detected():
            return False
        NervesKeyDevice(atecc).check()
    except NervesKeyError:
        return False
    return True
