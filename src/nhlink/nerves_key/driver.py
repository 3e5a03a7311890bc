"""ATECC508A/608A over raw I2C (``smbus2`` ``i2c_rdwr``), the way NervesKey uses it.

Every exchange is a *transaction*: wake, one or more commands, sleep (the
sleep is sent even after a failure, so the chip ends in a known state). A
transaction that fails with a retryable error (I2C NAK, no response in time,
bad CRC, status 0x03/0x05/0x11/0xEE/0xFF) is redone from the wake after
``retry_delay`` until ``retry_budget`` seconds have passed or ``max_attempts``
were made: the caller never hangs. One lock per driver serialises
transactions, so a certificate read never lands between a Nonce and its Sign.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from smbus2 import i2c_msg

from nhlink.nerves_key.crc import crc16_bytes
from nhlink.nerves_key.errors import AteccCommunicationError, AteccStatusError

logger = logging.getLogger("nhlink.nerves_key.driver")

DEFAULT_ADDRESS = 0x60
WAKE_REPLY = bytes.fromhex("04113343")
WAKE_LOW_TIME = 0.0015  # tWHI after the wake pulse
POLL_INTERVAL = 0.001

WORD_RESET, WORD_SLEEP, WORD_IDLE, WORD_COMMAND = 0x00, 0x01, 0x02, 0x03

OP_READ, OP_WRITE, OP_NONCE, OP_RANDOM = 0x02, 0x12, 0x16, 0x1B
OP_INFO, OP_GENKEY, OP_SIGN, OP_LOCK = 0x30, 0x40, 0x41, 0x17

ZONE_CONFIG, ZONE_OTP, ZONE_DATA = 0, 1, 2
READ_32 = 0x80

NONCE_PASSTHROUGH_TEMPKEY = 0x03
NONCE_PASSTHROUGH_MSGDIGEST = 0x43
SIGN_EXTERNAL_TEMPKEY = 0x80
SIGN_EXTERNAL_MSGDIGEST = 0xA0

SLOT_SIZES = (36,) * 8 + (416,) + (72,) * 7
CONFIG_SIZE, OTP_SIZE = 128, 64

STATUS_MEANINGS = {
    0x00: "success",
    0x01: "checkmac or verify miscompare",
    0x03: "parse error",
    0x05: "ECC fault",
    0x07: "self-test error",
    0x08: "health-test error",
    0x0F: "execution error",
    0x11: "woke unexpectedly (no command yet)",
    0xEE: "watchdog about to expire",
    0xFF: "CRC or communication error",
}
RETRIED_STATUSES = frozenset({0x03, 0x05, 0x11, 0xEE, 0xFF})


class I2CBus(Protocol):
    """What the driver needs from ``smbus2.SMBus``."""

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None: ...


@dataclass(frozen=True)
class Command:
    """One ATECC command: the request and how long the chip may take to run it."""

    name: str
    opcode: int
    param1: int
    param2: int
    data: bytes = b""
    typical_time: float = 0.0001
    max_time: float = 0.05
    response_size: int = 4

    @property
    def request(self) -> bytes:
        """``opcode p1 p2(LE) data`` (the packet without count and CRC)."""
        return encode_request(self.opcode, self.param1, self.param2, self.data)


class ChipRetryableStatus(AteccCommunicationError):
    """A status byte that calls for redoing the transaction."""

    def __init__(self, command: str, status: int) -> None:
        meaning = STATUS_MEANINGS.get(status, "unknown status")
        super().__init__(f"ATECC {command}: status 0x{status:02x} ({meaning})")
        self.status = status


def cacheable_request(request: bytes) -> bool:
    """Reads and GenKey public-key mode never change after provisioning: cache them."""
    return bool(request) and (
        request[0] == OP_READ or (request[0] == OP_GENKEY and len(request) > 1 and request[1] == 0)
    )


def encode_request(opcode: int, param1: int, param2: int, data: bytes = b"") -> bytes:
    """The command bytes ``opcode | param1 | param2 (little-endian) | data``."""
    return bytes((opcode, param1)) + param2.to_bytes(2, "little") + data


def package(request: bytes) -> bytes:
    """The wire packet ``03 | count | request | CRC16(count..request)``."""
    body = bytes((len(request) + 3,)) + request
    return bytes((WORD_COMMAND,)) + body + crc16_bytes(body)


def unpackage(raw: bytes) -> bytes:
    """The payload of a response ``count | payload | CRC``; bytes after the CRC are ignored."""
    if len(raw) < 4 or raw[0] < 4 or raw[0] > len(raw):
        raise AteccCommunicationError(f"ATECC response too short ({raw[:8].hex()})")
    count = raw[0]
    if crc16_bytes(raw[: count - 2]) != raw[count - 2 : count]:
        raise AteccCommunicationError(f"ATECC response has a bad CRC ({raw[:count].hex()})")
    return raw[1 : count - 2]


def read_command(zone: int, address: int, size: int) -> Command:
    """Read 4 or 32 bytes of a zone at a word ``address``."""
    if size not in (4, 32):
        raise ValueError("ATECC reads are 4 or 32 bytes")
    param1 = zone | (READ_32 if size == 32 else 0)
    return Command(
        f"Read zone {zone} @0x{address:04x}",
        OP_READ,
        param1,
        address,
        typical_time=0.0001,
        max_time=0.05,
        response_size=size + 3,
    )


def slot_read_plan(slot: int) -> list[Command]:
    """32-byte blocks then 4-byte words covering a data slot exactly."""
    size = SLOT_SIZES[slot]
    commands = [
        read_command(ZONE_DATA, (block << 8) | (slot << 3), 32) for block in range(size // 32)
    ]
    tail_block, tail = divmod(size, 32)
    commands += [
        read_command(ZONE_DATA, (tail_block << 8) | (slot << 3) | word, 4)
        for word in range(tail // 4)
    ]
    return commands


def zone_read_plan(zone: int, size: int) -> list[Command]:
    """32-byte reads of the config (128 B) or OTP (64 B) zone."""
    return [read_command(zone, block * 8, 32) for block in range(size // 32)]


def info_command(mode: int = 0) -> Command:
    return Command(f"Info mode {mode}", OP_INFO, mode, 0, max_time=0.05, response_size=7)


def genkey_public_command(slot: int) -> Command:
    return Command(
        f"GenKey public key of slot {slot}",
        OP_GENKEY,
        0x00,
        slot,
        typical_time=0.011,
        max_time=0.7,
        response_size=67,
    )


def nonce_passthrough_command(digest: bytes, mode: int = NONCE_PASSTHROUGH_TEMPKEY) -> Command:
    if len(digest) != 32:
        raise ValueError("a pass-through nonce is 32 bytes")
    return Command("Nonce", OP_NONCE, mode, 0, digest, max_time=0.05)


def sign_external_command(slot: int, mode: int = SIGN_EXTERNAL_TEMPKEY) -> Command:
    return Command(
        f"Sign with slot {slot}",
        OP_SIGN,
        mode,
        slot,
        typical_time=0.042,
        max_time=0.7,
        response_size=67,
    )


def random_command() -> Command:
    return Command("Random", OP_RANDOM, 0, 0, typical_time=0.001, max_time=0.05, response_size=35)


@dataclass(frozen=True)
class LockStatus:
    """Config-zone bytes 84..95: the zone locks and the per-slot lock mask."""

    config_locked: bool
    data_locked: bool
    slot_locked_mask: int

    def slot_locked(self, slot: int) -> bool:
        return not (self.slot_locked_mask >> slot) & 1


class Atecc:
    """An ATECC on an I2C bus; thread-safe, every call is one bounded transaction."""

    def __init__(
        self,
        bus: I2CBus,
        address: int = DEFAULT_ADDRESS,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        retry_budget: float = 1.0,
        retry_delay: float = 0.1,
        max_attempts: int = 10,
        wake_attempts: int = 2,
    ) -> None:
        self.bus = bus
        self.address = address
        self._clock = clock
        self._sleep = sleep
        self.retry_budget = retry_budget
        self.retry_delay = retry_delay
        self.max_attempts = max_attempts
        self.wake_attempts = wake_attempts
        self.lock = threading.RLock()
        self._cache: dict[bytes, bytes] = {}
        self.stats = {"transactions": 0, "retries": 0}

    # -- high level ---------------------------------------------------------

    def detected(self) -> bool:
        """A wake gets the ``04 11 33 43`` reply (tries once, no retries)."""
        with self.lock:
            try:
                self._wake()
                return True
            except AteccCommunicationError:
                return False
            finally:
                self._send_sleep()

    def info(self, mode: int = 0) -> bytes:
        return self.run([info_command(mode)])[0]

    def read(self, zone: int, address: int, size: int) -> bytes:
        return self.run([read_command(zone, address, size)])[0]

    def read_config_zone(self) -> bytes:
        return b"".join(self.run(zone_read_plan(ZONE_CONFIG, CONFIG_SIZE)))

    def read_otp_zone(self) -> bytes:
        return b"".join(self.run(zone_read_plan(ZONE_OTP, OTP_SIZE)))

    def read_slot(self, slot: int) -> bytes:
        return b"".join(self.run(slot_read_plan(slot)))

    def lock_status(self) -> LockStatus:
        """Read config block 2 (bytes 64..95) and decode the lock bytes."""
        block = self.read(ZONE_CONFIG, 2 * 8, 32)
        return LockStatus(
            config_locked=block[87 - 64] != 0x55,
            data_locked=block[86 - 64] != 0x55,
            slot_locked_mask=int.from_bytes(block[88 - 64 : 90 - 64], "little"),
        )

    def genkey_public(self, slot: int = 0) -> bytes:
        """The 64-byte public key X‖Y of the private key in ``slot``."""
        return self.run([genkey_public_command(slot)])[0]

    def random(self) -> bytes:
        return self.run([random_command()])[0]

    def sign_digest(
        self, digest: bytes, slot: int = 0, *, message_digest_buffer: bool = False
    ) -> bytes:
        """Sign a 32-byte digest with ``slot``'s key: Nonce + Sign in one wake, R‖S out."""
        nonce_mode, sign_mode = (
            (NONCE_PASSTHROUGH_MSGDIGEST, SIGN_EXTERNAL_MSGDIGEST)
            if message_digest_buffer
            else (NONCE_PASSTHROUGH_TEMPKEY, SIGN_EXTERNAL_TEMPKEY)
        )
        results = self.run(
            [nonce_passthrough_command(digest, nonce_mode), sign_external_command(slot, sign_mode)]
        )
        return results[1]

    # -- transactions -------------------------------------------------------

    def run(self, commands: Sequence[Command]) -> list[bytes]:
        """Run ``commands`` within one wake, retrying the whole transaction when allowed."""
        with self.lock:
            if all(c.request in self._cache for c in commands):
                return [self._cache[c.request] for c in commands]
            started = self._clock()
            attempt = 0
            while True:
                attempt += 1
                self.stats["transactions"] += 1
                try:
                    results = self._transaction(commands)
                except AteccCommunicationError as exc:
                    elapsed = self._clock() - started
                    if (
                        attempt >= self.max_attempts
                        or elapsed + self.retry_delay > self.retry_budget
                    ):
                        raise AteccCommunicationError(
                            f"{exc} (gave up after {attempt} attempts in {elapsed:.2f} s)"
                        ) from None
                    logger.debug("ATECC attempt %d failed: %s; retrying", attempt, exc)
                    self.stats["retries"] += 1
                    self._sleep(self.retry_delay)
                    continue
                for command, result in zip(commands, results, strict=True):
                    if cacheable_request(command.request) and len(result) > 1:
                        self._cache[command.request] = result
                return results

    def _transaction(self, commands: Sequence[Command]) -> list[bytes]:
        try:
            self._wake()
            return [self._execute(command) for command in commands]
        finally:
            self._send_sleep()

    def _execute(self, command: Command) -> bytes:
        try:
            self.bus.i2c_rdwr(i2c_msg.write(self.address, package(command.request)))
        except OSError as exc:
            raise AteccCommunicationError(f"ATECC {command.name}: write NAKed ({exc})") from None
        raw = self._poll(command)
        payload = unpackage(raw)
        if len(payload) == 1 and not (command.response_size == 4 and payload[0] == 0):
            self._raise_status(command.name, payload[0])
        if len(payload) != command.response_size - 3:
            raise AteccCommunicationError(
                f"ATECC {command.name}: {len(payload)}-byte answer, expected "
                f"{command.response_size - 3}"
            )
        return payload

    def _raise_status(self, name: str, status: int) -> None:
        if status in RETRIED_STATUSES:
            raise ChipRetryableStatus(name, status)
        raise AteccStatusError(name, status, STATUS_MEANINGS.get(status, "unknown status"))

    def _poll(self, command: Command) -> bytes:
        """Read the response, polling while the chip NAKs (busy) until ``max_time``."""
        start = self._clock()
        self._sleep(command.typical_time)
        while True:
            message = i2c_msg.read(self.address, command.response_size)
            try:
                self.bus.i2c_rdwr(message)
                return bytes(message)
            except OSError:
                if self._clock() - start >= command.max_time:
                    raise AteccCommunicationError(
                        f"ATECC {command.name}: no response within {command.max_time * 1000:.0f} ms"
                    ) from None
                self._sleep(POLL_INTERVAL)

    def _wake(self) -> None:
        reply = "nothing"
        for attempt in range(self.wake_attempts):
            if attempt:
                self._send_sleep()
            with contextlib.suppress(OSError):  # the wake pulse: address 0 always NAKs
                self.bus.i2c_rdwr(i2c_msg.write(0x00, [0x00]))
            self._sleep(WAKE_LOW_TIME)
            message = i2c_msg.read(self.address, 4)
            try:
                self.bus.i2c_rdwr(message)
            except OSError:
                reply = "a NAK"
                continue
            if bytes(message) == WAKE_REPLY:
                return
            reply = bytes(message).hex()
        raise AteccCommunicationError(f"ATECC at 0x{self.address:02x} did not wake (got {reply})")

    def _send_sleep(self) -> None:
        try:
            self.bus.i2c_rdwr(i2c_msg.write(self.address, [WORD_SLEEP]))
        except OSError as exc:
            logger.debug("ATECC sleep NAKed: %s", exc)

    def clear_cache(self) -> None:
        with self.lock:
            self._cache.clear()
