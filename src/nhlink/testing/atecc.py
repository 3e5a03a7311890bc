"""A simulated ATECC608A behind a fake ``smbus2`` bus, provisioned as a NervesKey.

:class:`SimulatedAtecc` has the chip's bus behaviour: asleep it NAKs
everything but the wake pulse (a write to address 0), awake it answers the
wake with ``04 11 33 43``, a command keeps it busy (reads NAK) for its
execution time, sleep clears TempKey, and the watchdog puts it back to sleep
1.3 s after a wake. Commands are checked (count, CRC → status 0xFF) and
executed on a memory image (config, OTP, data slots) with a P-256 key in
slot 0. ``faults`` injects NAK storms, corrupt CRCs, error statuses, bad wake
replies and silence. Time comes from ``clock``: :class:`VirtualClock` makes
tests instant, ``time.monotonic`` makes the timing real.

:func:`provisioned_image` builds a fresh NervesKey with real keys;
:func:`fixture_image` loads the upstream test fixture (no private key, so Sign
fails with an execution error).
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import json
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from smbus2 import i2c_msg

from nhlink.nerves_key.certs import (
    DEVICE_TEMPLATE_ID,
    SIGNER_TEMPLATE_ID,
    SN_SOURCE_DEVICE_SN,
    SN_SOURCE_PUBLIC_KEY,
    compress_certificate,
    issue_device_certificate,
    issue_signer_certificate,
    public_key_xy,
)
from nhlink.nerves_key.crc import crc16_bytes
from nhlink.nerves_key.driver import SLOT_SIZES
from nhlink.nerves_key.nerves_key import encode_otp
from nhlink.testing.hub import LocalHub

I2C_M_RD = 0x0001
WAKE_REPLY = bytes.fromhex("04113343")
WATCHDOG = 1.3
REV_608A = bytes.fromhex("00006001")

STATUS_OK, STATUS_PARSE, STATUS_EXECUTION, STATUS_CRC = 0x00, 0x03, 0x0F, 0xFF

# Simulated execution times (s): the typical figures of a 608 at ChipMode 0.
EXECUTION_TIMES = {
    0x02: 0.0002,  # Read
    0x16: 0.0005,  # Nonce
    0x41: 0.040,  # Sign
    0x40: 0.011,  # GenKey
    0x1B: 0.010,  # Random
    0x30: 0.0005,  # Info
}

SLOT_CONFIG = bytes.fromhex("8720" + "0f0f" * 9 + "0f2f" * 4 + "0f0f" * 2)
KEY_CONFIG = bytes.fromhex("3300" + "1c00" * 7 + "3c00" * 3 + "3000" + "3c00" * 4)


class VirtualClock:
    """A clock whose ``sleep`` advances time instantly (for fast, deterministic tests)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


@dataclass
class Faults:
    """Counters of faults to inject; each fires on that many occasions, then stops."""

    nak_accesses: int = 0
    """Bus accesses to the chip address (reads and writes) that NAK."""
    corrupt_crc: int = 0
    """Responses sent with a flipped CRC byte."""
    statuses: list[int] = field(default_factory=list)
    """Status bytes returned instead of executing the next commands."""
    bad_wake_replies: int = 0
    """Wakes answered with something other than 04 11 33 43."""
    silent: bool = False
    """Never answer a command (every poll NAKs); the wake still answers."""


@dataclass
class AteccImage:
    """The chip's memory: config (128 B), OTP (64 B), 16 data slots and the slot-0 key."""

    config: bytearray
    otp: bytearray
    slots: list[bytearray]
    private_key: ec.EllipticCurvePrivateKey | None
    public_key: bytes  # X‖Y returned by GenKey for slot 0

    def lock(self) -> None:
        self.config[86] = 0x00
        self.config[87] = 0x00


def nerves_key_config(
    device_sn: bytes, rev_num: bytes = REV_608A, *, locked: bool = True
) -> bytearray:
    """A NervesKey configuration zone for the 9-byte ``device_sn``."""
    config = bytearray(128)
    config[0:4] = device_sn[0:4]
    config[4:8] = rev_num
    config[8:13] = device_sn[4:9]
    config[14] = 0x01
    config[16] = 0xC0
    config[18] = 0xAA
    config[19] = 0x00
    config[20:52] = SLOT_CONFIG
    config[52:68] = bytes.fromhex("ffffffff00000000" * 2)
    config[68:84] = b"\xff" * 16
    config[86] = 0x00 if locked else 0x55
    config[87] = 0x00 if locked else 0x55
    config[88:90] = b"\x00\x00" if locked else b"\xff\xff"
    config[96:128] = KEY_CONFIG
    return config


def empty_slots() -> list[bytearray]:
    return [bytearray(size) for size in SLOT_SIZES]


def provisioned_image(
    manufacturer_sn: str = "nhlink-sim-0001",
    *,
    device_sn: bytes = bytes.fromhex("0123b908c68e16ffee"),
    board_name: str = "NervesKey",
    signer_key: ec.EllipticCurvePrivateKey | None = None,
    device_key: ec.EllipticCurvePrivateKey | None = None,
    not_before: datetime.datetime | None = None,
    aux: bool = False,
) -> tuple[AteccImage, ec.EllipticCurvePrivateKey]:
    """A freshly provisioned NervesKey and its signer's private key."""
    signer_key = signer_key or ec.generate_private_key(ec.SECP256R1())
    device_key = device_key or ec.generate_private_key(ec.SECP256R1())
    start = (not_before or datetime.datetime.now(datetime.UTC)).replace(
        minute=0, second=0, microsecond=0
    )
    signer = issue_signer_certificate(signer_key, start, years=1)
    device = issue_device_certificate(
        device_key.public_key(), device_sn, manufacturer_sn, signer_key, start, years=31
    )
    slots = empty_slots()
    pairs = [(10, 11, 12)] + ([(9, 14, 15)] if aux else [])
    for device_slot, key_slot, cert_slot in pairs:
        slots[device_slot][:] = compress_certificate(
            device, template_id=DEVICE_TEMPLATE_ID, sn_source=SN_SOURCE_DEVICE_SN, expire_years=31
        )
        slots[key_slot][:] = public_key_xy(signer_key.public_key()) + bytes(8)
        slots[cert_slot][:] = compress_certificate(
            signer, template_id=SIGNER_TEMPLATE_ID, sn_source=SN_SOURCE_PUBLIC_KEY, expire_years=1
        )
    image = AteccImage(
        config=nerves_key_config(device_sn),
        otp=bytearray(encode_otp(board_name, manufacturer_sn)),
        slots=slots,
        private_key=device_key,
        public_key=public_key_xy(device_key.public_key()),
    )
    return image, signer_key


def vectors_path() -> Path:
    """``$NHLINK_VECTORS/nerveskey/vectors.json`` (default ``<repo>/../shared/vectors``)."""
    base = os.environ.get("NHLINK_VECTORS") or str(
        Path(__file__).resolve().parents[3].parent / "shared" / "vectors"
    )
    return Path(base) / "nerveskey" / "vectors.json"


def fixture_image(path: Path | None = None) -> AteccImage:
    """The upstream NervesKey fixture (device SN 01..09, mfg SN "1234"); no private key."""
    vectors = json.loads((path or vectors_path()).read_text())["nerveskey_certificates"]
    slots = empty_slots()
    for slot, value in vectors["expected_slots"].items():
        slots[int(slot)][:] = bytes.fromhex(value)
    derived = vectors["derived"]
    return AteccImage(
        config=nerves_key_config(bytes.fromhex(vectors["inputs"]["device_sn"])),
        otp=bytearray(bytes.fromhex(derived["otp_for_board_NervesKey_and_sn_1234"])),
        slots=slots,
        private_key=None,
        public_key=bytes.fromhex(derived["device_public_key_xy_genkey"]),
    )


def unprovisioned_image() -> AteccImage:
    """A factory-fresh chip: nothing locked, blank OTP and slots."""
    return AteccImage(
        config=nerves_key_config(bytes.fromhex("0123000000000000ee"), locked=False),
        otp=bytearray(64),
        slots=empty_slots(),
        private_key=None,
        public_key=bytes(64),
    )


def _nak(what: str) -> OSError:
    return OSError(errno.EREMOTEIO, f"Remote I/O error ({what})")


class SimulatedAtecc:
    """The chip and the fake bus in one: pass it where an ``smbus2.SMBus`` goes."""

    def __init__(
        self,
        image: AteccImage,
        *,
        address: int = 0x60,
        clock: Callable[[], float] = time.monotonic,
        execution_times: dict[int, float] | None = None,
    ) -> None:
        self.image = image
        self.address = address
        self.clock = clock
        self.execution_times = dict(EXECUTION_TIMES if execution_times is None else execution_times)
        self.faults = Faults()
        self.state = "asleep"
        self.woke_at = 0.0
        self.ready_at = 0.0
        self.response: bytes | None = None
        self.tempkey: bytes | None = None
        self.message_digest: bytes | None = None
        self.log: list[str] = []
        self.commands: list[bytes] = []
        self._lock = threading.Lock()

    # -- smbus2 interface ------------------------------------------------------

    def i2c_rdwr(self, *msgs: i2c_msg) -> None:
        with self._lock:
            for message in msgs:
                if message.flags & I2C_M_RD:
                    data = self._read(message.addr, message.len)
                    ctypes.memmove(message.buf, data, message.len)
                else:
                    self._write(message.addr, ctypes.string_at(message.buf, message.len))

    def close(self) -> None:
        pass

    # -- bus behaviour ---------------------------------------------------------

    def _check_watchdog(self) -> None:
        if self.state != "asleep" and self.clock() - self.woke_at > WATCHDOG:
            self.log.append("watchdog")
            self._go_to_sleep()

    def _go_to_sleep(self) -> None:
        self.state = "asleep"
        self.response = None
        self.tempkey = None
        self.message_digest = None

    def _write(self, address: int, data: bytes) -> None:
        if address == 0x00:
            self._check_watchdog()
            if self.state != "awake":
                self.state = "awake"
                self.woke_at = self.clock()
                self.response = WAKE_REPLY
                if self.faults.bad_wake_replies:
                    self.faults.bad_wake_replies -= 1
                    self.response = bytes.fromhex("04073ec4")
                self.ready_at = self.woke_at
                self.log.append("wake")
            raise _nak("wake pulse")
        if address != self.address:
            raise _nak(f"no device at 0x{address:02x}")
        self._check_watchdog()
        if self.state == "asleep":
            raise _nak("asleep")
        if self.faults.nak_accesses:
            self.faults.nak_accesses -= 1
            raise _nak("injected")
        if not data:
            return
        word = data[0]
        if word == 0x01:
            self.log.append("sleep")
            self._go_to_sleep()
        elif word == 0x02:
            self.log.append("idle")
            self.state = "idle"
            self.response = None
        elif word == 0x00:
            self.response = None
        elif word == 0x03:
            if self.clock() < self.ready_at:
                raise _nak("busy")
            self._command(data[1:])

    def _read(self, address: int, length: int) -> bytes:
        if address != self.address:
            raise _nak(f"no device at 0x{address:02x}")
        self._check_watchdog()
        if self.state != "awake":
            raise _nak("asleep")
        if self.faults.nak_accesses:
            self.faults.nak_accesses -= 1
            raise _nak("injected")
        if self.clock() < self.ready_at or self.response is None:
            raise _nak("busy")
        data, self.response = self.response, None
        return data.ljust(length, b"\xff")[:length]

    # -- commands ---------------------------------------------------------------

    def _respond(self, payload: bytes, execution_time: float) -> None:
        body = bytes((len(payload) + 3,)) + payload
        crc = crc16_bytes(body)
        if self.faults.corrupt_crc:
            self.faults.corrupt_crc -= 1
            crc = bytes((crc[0] ^ 0xFF, crc[1]))
        self.response = None if self.faults.silent else body + crc
        self.ready_at = self.clock() + execution_time

    def _command(self, packet: bytes) -> None:
        self.commands.append(packet)
        self.log.append(f"command {packet[1]:02x}" if len(packet) > 1 else "command")
        if len(packet) < 7 or packet[0] != len(packet):
            self._respond(bytes((STATUS_PARSE,)), 0.0)
            return
        if crc16_bytes(packet[:-2]) != packet[-2:]:
            self._respond(bytes((STATUS_CRC,)), 0.0)
            return
        opcode, param1 = packet[1], packet[2]
        param2 = int.from_bytes(packet[3:5], "little")
        data = packet[5:-2]
        busy = self.execution_times.get(opcode, 0.001)
        if self.faults.statuses:
            self._respond(bytes((self.faults.statuses.pop(0),)), busy)
            return
        if self.clock() + busy - self.woke_at > WATCHDOG:
            self._respond(b"\xee", 0.0)
            return
        handler = {
            0x02: self._read_zone,
            0x30: self._info,
            0x40: self._genkey,
            0x16: self._nonce,
            0x41: self._sign,
            0x1B: self._random,
        }.get(opcode)
        payload = handler(param1, param2, data) if handler else bytes((STATUS_PARSE,))
        self._respond(payload, busy)

    def _read_zone(self, param1: int, address: int, data: bytes) -> bytes:
        zone, size = param1 & 0x03, 32 if param1 & 0x80 else 4
        if data:
            return bytes((STATUS_PARSE,))
        if zone in (0, 1):
            memory = self.image.config if zone == 0 else self.image.otp
            start = ((address >> 3) & 0x1F) * 32 + (address & 0x07) * 4
            if size == 32 and address & 0x07:
                return bytes((STATUS_PARSE,))
            if start + size > len(memory):
                return bytes((STATUS_PARSE,))
            if zone == 1 and self.image.config[86] == 0x55:
                return bytes((STATUS_EXECUTION,))
            return bytes(memory[start : start + size])
        if zone == 2:
            if self.image.config[86] == 0x55:
                return bytes((STATUS_EXECUTION,))
            slot, block, word = (address >> 3) & 0x0F, address >> 8, address & 0x07
            if slot == 0:
                return bytes((STATUS_EXECUTION,))  # the private key is secret
            start = block * 32 + word * 4
            memory = self.image.slots[slot]
            if (size == 32 and word) or start + size > len(memory):
                return bytes((STATUS_PARSE,))
            return bytes(memory[start : start + size])
        return bytes((STATUS_PARSE,))

    def _info(self, param1: int, _param2: int, _data: bytes) -> bytes:
        if param1 == 0x00:
            return bytes(self.image.config[4:8])
        if param1 == 0x04:
            return b"\x00\x00\x00\x00"
        return bytes((STATUS_PARSE,))

    def _genkey(self, param1: int, slot: int, _data: bytes) -> bytes:
        if param1 != 0x00 or slot != 0:
            return bytes((STATUS_EXECUTION,))
        if self.image.config[86] == 0x55:
            return bytes((STATUS_EXECUTION,))
        return self.image.public_key

    def _nonce(self, param1: int, _param2: int, data: bytes) -> bytes:
        if len(data) != 32 or param1 not in (0x03, 0x43):
            return bytes((STATUS_PARSE,))
        if param1 == 0x03:
            self.tempkey = data
        else:
            self.message_digest = data
        return bytes((STATUS_OK,))

    def _sign(self, param1: int, slot: int, _data: bytes) -> bytes:
        message = {0x80: self.tempkey, 0xA0: self.message_digest}.get(param1)
        if param1 not in (0x80, 0xA0) or slot != 0:
            return bytes((STATUS_PARSE,))
        if message is None or self.image.private_key is None:
            return bytes((STATUS_EXECUTION,))
        if self.image.config[96:98] == b"\x33\x10":
            return bytes((STATUS_EXECUTION,))  # volatile key without the persistent latch
        self.tempkey = None
        self.message_digest = None
        der = self.image.private_key.sign(message, ec.ECDSA(Prehashed(hashes.SHA256())))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def _random(self, _param1: int, _param2: int, _data: bytes) -> bytes:
        if self.image.config[87] == 0x55:
            return b"\xff\xff\x00\x00" * 8
        return os.urandom(32)


def signer_trust_pem(
    signer_certificate: x509.Certificate, signer_key: ec.EllipticCurvePrivateKey
) -> bytes:
    """The NervesKey signer certificate and an empty CRL from it, PEM (what a hub trusts).

    The local hub checks leaf CRLs, so a trusted signer needs a CRL too.
    """
    now = datetime.datetime.now(datetime.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(signer_certificate.subject)
        .last_update(now - datetime.timedelta(hours=1))
        .next_update(now + datetime.timedelta(days=7))
        .sign(signer_key, hashes.SHA256())
    )
    return signer_certificate.public_bytes(serialization.Encoding.PEM) + crl.public_bytes(
        serialization.Encoding.PEM
    )


class NervesKeyLocalHub(LocalHub):
    """A :class:`LocalHub` that also trusts a NervesKey signer CA for device certificates.

    LocalHub has no public hook for extra signer CAs; this extends its
    device-socket context (the lead may replace it with a ``trusted_signers``
    option on LocalHub).
    """

    def __init__(self, signer_trust: bytes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._signer_trust = signer_trust

    def _device_socket_context(self) -> ssl.SSLContext:
        context = super()._device_socket_context()
        trust = self.directory / "nerves-key-signer.pem"
        trust.write_bytes(self._signer_trust)
        context.load_verify_locations(cafile=str(trust))
        return context
