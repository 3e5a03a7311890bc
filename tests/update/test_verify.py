"""StreamVerifier: parts held until verified, the end held until size and checksum pass."""

from __future__ import annotations

import hashlib
import os

import pytest

from nhlink.update.errors import VerificationError
from nhlink.update.verify import PART_SIZE, PartMismatch, StreamVerifier

DATA = os.urandom(3 * PART_SIZE + 4321)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest().upper()


PARTIALS = [sha(DATA[i : i + PART_SIZE]) for i in range(0, len(DATA), PART_SIZE)]


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def join(pieces: list[memoryview]) -> bytes:
    return b"".join(bytes(p) for p in pieces)


@pytest.mark.parametrize("chunk", [1000, 65536, 300_000, PART_SIZE, 5 * PART_SIZE])
def test_parts_are_released_once_verified_and_the_last_one_at_finish(chunk: int) -> None:
    verifier = StreamVerifier(size=len(DATA), checksum=sha(DATA), partials=PARTIALS)
    released = b""
    for piece in chunks(DATA, chunk):
        released += join(verifier.push(piece))
        assert len(released) % PART_SIZE == 0  # only whole verified parts
        assert len(released) <= 2 * PART_SIZE  # the last MiB is always held
    assert released == DATA[: 2 * PART_SIZE]
    assert verifier.held_bytes == PART_SIZE + 4321
    assert released + join(verifier.finish()) == DATA


def test_a_corrupt_part_is_forgotten_and_asked_for_again() -> None:
    corrupt = bytearray(DATA)
    corrupt[PART_SIZE + 10] ^= 0xFF
    verifier = StreamVerifier(size=len(DATA), checksum=sha(DATA), partials=PARTIALS)
    released = join(verifier.push(bytes(corrupt[:PART_SIZE])))
    assert released == DATA[:PART_SIZE]  # part 0 is verified but not the final part
    with pytest.raises(PartMismatch) as caught:
        verifier.push(bytes(corrupt[PART_SIZE : 2 * PART_SIZE + 5]))
    assert (caught.value.index, caught.value.offset, caught.value.attempt) == (1, PART_SIZE, 1)
    assert caught.value.ready == []
    assert verifier.received == PART_SIZE
    released += join(verifier.push(DATA[PART_SIZE:]))
    assert released + join(verifier.finish()) == DATA


def test_pieces_verified_before_a_mismatch_in_the_same_push_are_handed_over() -> None:
    corrupt = bytearray(DATA)
    corrupt[PART_SIZE + 10] ^= 0xFF
    verifier = StreamVerifier(size=len(DATA), partials=PARTIALS)
    with pytest.raises(PartMismatch) as caught:
        verifier.push(bytes(corrupt[: 2 * PART_SIZE]))
    assert join(caught.value.ready) == DATA[:PART_SIZE]


def test_a_part_that_keeps_failing_fails_the_update() -> None:
    corrupt = bytearray(DATA[:PART_SIZE])
    corrupt[0] ^= 1
    verifier = StreamVerifier(size=len(DATA), partials=PARTIALS, max_part_attempts=3)
    for attempt in (1, 2):
        with pytest.raises(PartMismatch) as caught:
            verifier.push(bytes(corrupt))
        assert caught.value.attempt == attempt
    with pytest.raises(VerificationError, match=r"part 0 .* after 3 attempts") as final:
        verifier.push(bytes(corrupt))
    assert not isinstance(final.value, PartMismatch)


def test_whole_checksum_mismatch_keeps_the_end_back() -> None:
    verifier = StreamVerifier(size=len(DATA), checksum="0" * 64)
    released = join(verifier.push(DATA))
    assert len(DATA) - len(released) >= PART_SIZE
    with pytest.raises(VerificationError, match="checksum mismatch: sha256"):
        verifier.finish()


def test_partials_covering_the_size_replace_the_whole_file_hash() -> None:
    """Every byte is checked part by part, so the whole-file SHA-256 is not computed again
    (an offer whose checksum contradicts its own partials is the server's inconsistency)."""
    verifier = StreamVerifier(size=len(DATA), checksum="0" * 64, partials=PARTIALS)
    released = join(verifier.push(DATA))
    assert released == DATA[: 2 * PART_SIZE]
    assert released + join(verifier.finish()) == DATA


def test_partials_without_a_size_still_check_the_whole_file() -> None:
    verifier = StreamVerifier(checksum="0" * 64, partials=PARTIALS)
    verifier.push(DATA)
    with pytest.raises(VerificationError, match="checksum mismatch: sha256"):
        verifier.finish()


def test_without_partials_the_last_mebibyte_is_held_until_the_checksum_passes() -> None:
    verifier = StreamVerifier(size=len(DATA), checksum=sha(DATA))
    released = b""
    for piece in chunks(DATA, 100_000):
        released += join(verifier.push(piece))
    assert len(DATA) - len(released) >= PART_SIZE
    assert released == DATA[: len(released)]
    assert released + join(verifier.finish()) == DATA
    bad = StreamVerifier(checksum=sha(b"other"))
    assert join(bad.push(DATA)) == b""
    with pytest.raises(VerificationError, match="checksum mismatch"):
        bad.finish()


def test_size_is_enforced_both_ways() -> None:
    verifier = StreamVerifier(size=1000)
    with pytest.raises(VerificationError, match="more data than the offered 1000 bytes"):
        verifier.push(b"x" * 1001)
    short = StreamVerifier(size=1000, partials=[sha(b"x" * 1000)])
    short.push(b"x" * 999)
    with pytest.raises(VerificationError):
        short.finish()


def test_unknown_size_with_partials_checks_the_short_last_part_at_finish() -> None:
    verifier = StreamVerifier(partials=PARTIALS)
    released = join(verifier.push(DATA))
    assert released == DATA[: 2 * PART_SIZE]  # the last two parts: at least 1 MiB
    assert join(verifier.finish()) == DATA[2 * PART_SIZE :]
    more = StreamVerifier(partials=PARTIALS[:2])
    with pytest.raises(VerificationError, match="more data than the 2 parts"):
        more.push(DATA)


def test_partials_that_do_not_fit_the_size_are_not_used() -> None:
    verifier = StreamVerifier(size=len(DATA), checksum=sha(DATA), partials=PARTIALS[:2])
    assert not verifier.uses_partials
    released = join(verifier.push(DATA))
    assert released + join(verifier.finish()) == DATA


def test_lower_case_digests_are_accepted() -> None:
    verifier = StreamVerifier(
        size=len(DATA), checksum=sha(DATA).lower(), partials=[p.lower() for p in PARTIALS]
    )
    assert join(verifier.push(DATA)) + join(verifier.finish()) == DATA


def test_data_received_after_a_mismatch_is_dropped_until_the_part_comes_again() -> None:
    corrupt = bytearray(DATA)
    corrupt[10] ^= 0xFF
    verifier = StreamVerifier(size=len(DATA), checksum=sha(DATA), partials=PARTIALS)
    with pytest.raises(PartMismatch):
        verifier.push(bytes(corrupt[:PART_SIZE]), 0)
    # what the network had already delivered behind the bad part is stale
    assert verifier.push(DATA[PART_SIZE : PART_SIZE + 5000], PART_SIZE) == []
    released = join(verifier.push(DATA[:PART_SIZE], 0))
    released += join(verifier.push(DATA[PART_SIZE:], PART_SIZE))
    assert released + join(verifier.finish()) == DATA
    with pytest.raises(VerificationError, match="data at byte 5, expected byte 0"):
        StreamVerifier(partials=PARTIALS).push(b"x", 5)
