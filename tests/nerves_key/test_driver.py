"""The driver against the simulated chip: transactions, timing, retries and faults."""

from __future__ import annotations

import hashlib
import threading

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from smbus2 import i2c_msg

from nhlink.nerves_key.certs import public_key_from_xy
from nhlink.nerves_key.driver import Atecc, unpackage
from nhlink.nerves_key.errors import AteccCommunicationError, AteccStatusError
from nhlink.testing.atecc import (
    SimulatedAtecc,
    VirtualClock,
    fixture_image,
    provisioned_image,
    unprovisioned_image,
)
from tests.nerves_key.conftest import ChipFactory


def _verify(public_xy: bytes, rs: bytes, digest: bytes) -> None:
    signature = encode_dss_signature(int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big"))
    public_key_from_xy(public_xy).verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def test_reads_info_and_lock_status(make_chip: ChipFactory) -> None:
    image = fixture_image()
    simulator, atecc = make_chip(image)
    assert atecc.detected()
    assert atecc.info() == bytes.fromhex("00006001")
    assert atecc.read_config_zone() == bytes(image.config)
    assert atecc.read_otp_zone() == bytes(image.otp)
    assert atecc.read_slot(10) == bytes(image.slots[10])
    assert atecc.read_slot(8) == bytes(416)
    status = atecc.lock_status()
    assert status.config_locked and status.data_locked and status.slot_locked(10)
    # every transaction ends with a sleep, so TempKey never outlives it
    assert simulator.log[-1] == "sleep" and simulator.state == "asleep"


def test_sign_is_nonce_then_sign_in_one_wake(make_chip: ChipFactory, clock: VirtualClock) -> None:
    image, _ = provisioned_image()
    simulator, atecc = make_chip(image)
    digest = hashlib.sha256(b"handshake").digest()
    start = clock.now
    rs = atecc.sign_digest(digest)
    assert simulator.log[-4:] == ["wake", "command 16", "command 41", "sleep"]
    assert clock.now - start >= simulator.execution_times[0x41]  # polled for the Sign time
    _verify(atecc.genkey_public(0), rs, digest)
    rs2 = atecc.sign_digest(digest, message_digest_buffer=True)
    _verify(image.public_key, rs2, digest)
    assert simulator.commands[-2][2] == 0x43 and simulator.commands[-1][2] == 0xA0


def test_reads_are_cached_but_signatures_are_not(make_chip: ChipFactory) -> None:
    image, _ = provisioned_image()
    simulator, atecc = make_chip(image)
    atecc.read_slot(10)
    atecc.genkey_public(0)
    count = len(simulator.commands)
    atecc.read_slot(10)
    atecc.genkey_public(0)
    assert len(simulator.commands) == count
    atecc.sign_digest(bytes(32))
    atecc.sign_digest(bytes(32))
    assert len(simulator.commands) == count + 4


def test_recovers_from_a_nak_storm(make_chip: ChipFactory, clock: VirtualClock) -> None:
    image, _ = provisioned_image()
    simulator, atecc = make_chip(image)
    simulator.faults.nak_accesses = 12
    digest = hashlib.sha256(b"storm").digest()
    rs = atecc.sign_digest(digest)
    _verify(image.public_key, rs, digest)
    assert simulator.faults.nak_accesses == 0
    assert atecc.stats["retries"] >= 1
    assert clock.now < atecc.retry_budget + 1


def test_endless_naks_give_a_clean_bounded_error(
    make_chip: ChipFactory, clock: VirtualClock
) -> None:
    simulator, atecc = make_chip(fixture_image())
    simulator.faults.nak_accesses = 10**9
    with pytest.raises(AteccCommunicationError, match="gave up after"):
        atecc.read_slot(10)
    assert clock.now <= atecc.retry_budget + 1.0
    assert atecc.stats["transactions"] <= atecc.max_attempts


def test_silent_chip_times_out(make_chip: ChipFactory, clock: VirtualClock) -> None:
    simulator, atecc = make_chip(fixture_image())
    simulator.faults.silent = True
    with pytest.raises(AteccCommunicationError, match="no response within"):
        atecc.info()
    assert clock.now <= atecc.retry_budget + 1.0


def test_bad_crc_and_retryable_statuses_are_retried(make_chip: ChipFactory) -> None:
    image = fixture_image()
    simulator, atecc = make_chip(image)
    simulator.faults.corrupt_crc = 2
    assert atecc.read(1, 0, 32) == bytes(image.otp[:32])
    assert atecc.stats["retries"] == 2
    simulator.faults.statuses = [0xEE, 0x11, 0xFF]
    assert atecc.read(1, 8, 32) == bytes(image.otp[32:])
    assert atecc.stats["retries"] == 5
    simulator.faults.bad_wake_replies = 3
    assert atecc.info() == bytes(image.config[4:8])


def test_non_retryable_status_is_an_error_at_once(make_chip: ChipFactory) -> None:
    simulator, atecc = make_chip(fixture_image())
    simulator.faults.statuses = [0x0F]
    with pytest.raises(AteccStatusError, match=r"0x0f \(execution error"):
        atecc.info()
    assert atecc.stats["retries"] == 0
    # the fixture has no private key: Sign fails with an execution error
    with pytest.raises(AteccStatusError, match="execution error"):
        atecc.sign_digest(bytes(32))


def test_corrupted_command_gets_crc_status(make_chip: ChipFactory) -> None:
    simulator, _ = make_chip(fixture_image())
    with pytest.raises(OSError):
        simulator.i2c_rdwr(i2c_msg.write(0x00, [0]))
    wake = i2c_msg.read(0x60, 4)
    simulator.i2c_rdwr(wake)
    assert bytes(wake) == bytes.fromhex("04113343")
    simulator.i2c_rdwr(i2c_msg.write(0x60, bytes.fromhex("030730000000035e")))
    reply = i2c_msg.read(0x60, 7)
    simulator.i2c_rdwr(reply)
    assert unpackage(bytes(reply)) == b"\xff"


def test_watchdog_sends_the_chip_to_sleep(clock: VirtualClock) -> None:
    simulator = SimulatedAtecc(fixture_image(), clock=clock)
    with pytest.raises(OSError):
        simulator.i2c_rdwr(i2c_msg.write(0x00, [0]))
    clock.sleep(1.5)
    with pytest.raises(OSError):
        simulator.i2c_rdwr(i2c_msg.read(0x60, 4))
    assert simulator.log[-1] == "watchdog"


def test_unprovisioned_chip_refuses_data_reads(make_chip: ChipFactory) -> None:
    _, atecc = make_chip(unprovisioned_image())
    assert not atecc.lock_status().data_locked
    with pytest.raises(AteccStatusError, match="execution error"):
        atecc.read_slot(10)
    assert atecc.random()[:4] == b"\xff\xff\x00\x00"


def test_absent_chip(clock: VirtualClock) -> None:
    simulator = SimulatedAtecc(fixture_image(), clock=clock, address=0x35)
    atecc = Atecc(simulator, clock=clock, sleep=clock.sleep)
    assert not atecc.detected()
    with pytest.raises(AteccCommunicationError, match="did not wake"):
        atecc.info()


def test_lock_serialises_threads(make_chip: ChipFactory) -> None:
    image, _ = provisioned_image()
    _simulator, atecc = make_chip(image)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            digest = hashlib.sha256(bytes([index])).digest()
            for _ in range(3):
                _verify(image.public_key, atecc.sign_digest(digest), digest)
                atecc.read(0, 0, 4)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert atecc.stats["retries"] == 0


def test_polls_while_the_chip_is_busy(clock: VirtualClock) -> None:
    image, _ = provisioned_image()
    slow = dict(SimulatedAtecc(image).execution_times)
    slow[0x41] = 0.6  # slower than typical, within the 700 ms limit
    simulator = SimulatedAtecc(image, clock=clock, execution_times=slow)
    atecc = Atecc(simulator, clock=clock, sleep=clock.sleep)
    digest = bytes(range(32))
    _verify(image.public_key, atecc.sign_digest(digest), digest)
    assert atecc.stats["retries"] == 0


def test_command_slower_than_its_limit_times_out(clock: VirtualClock) -> None:
    image, _ = provisioned_image()
    slow = dict(SimulatedAtecc(image).execution_times)
    slow[0x02] = 0.2  # a Read may take at most 50 ms
    simulator = SimulatedAtecc(image, clock=clock, execution_times=slow)
    atecc = Atecc(simulator, clock=clock, sleep=clock.sleep)
    with pytest.raises(AteccCommunicationError, match="no response within 50 ms"):
        atecc.read(0, 0, 4)
