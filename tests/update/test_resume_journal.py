"""The resume journal file and the resume arithmetic (part alignment, verifier for the rest)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from nhlink.fwup.engine import Checkpoint
from nhlink.update.errors import VerificationError
from nhlink.update.journal import OfferIdentity, UpdateJournal, resume_point, verifier_from
from nhlink.update.verify import PART_SIZE, PartMismatch

DATA = os.urandom(3 * PART_SIZE + 12345)
PARTS = tuple(
    hashlib.sha256(DATA[i : i + PART_SIZE]).hexdigest().upper()
    for i in range(0, len(DATA), PART_SIZE)
)
CHECKSUM = hashlib.sha256(DATA).hexdigest().upper()
CHECKPOINT = Checkpoint(2 * PART_SIZE + 777, b"head bytes", "upgrade.b", ("r0.img",), 42)


def offer(partials: bool = True, uuid: str = "u-1") -> OfferIdentity:
    return OfferIdentity(uuid, len(DATA), CHECKSUM, PARTS if partials else None)


def test_resume_point_aligns_to_a_part_only_with_partials() -> None:
    with_parts = resume_point(offer(), CHECKPOINT)
    assert (with_parts.start, with_parts.skip) == (2 * PART_SIZE, 777)
    without = resume_point(offer(partials=False), CHECKPOINT)
    assert (without.start, without.skip) == (CHECKPOINT.offset, 0)


def test_verifier_for_the_rest_checks_the_remaining_parts() -> None:
    start = 2 * PART_SIZE
    verifier = verifier_from(offer(), start)
    out = verifier.push(DATA[start:], 0) + verifier.finish()
    assert b"".join(out) == DATA[start:]
    bad = bytearray(DATA[start:])
    bad[PART_SIZE + 5] ^= 1  # in the last part
    with pytest.raises(PartMismatch) as caught:
        verifier_from(offer(), start).push(bytes(bad), 0)
    assert caught.value.offset == PART_SIZE  # relative to start: the caller adds it
    without = verifier_from(offer(partials=False), CHECKPOINT.offset)
    assert without.push(DATA[CHECKPOINT.offset :]) + without.finish()
    short = verifier_from(offer(partials=False), CHECKPOINT.offset)
    short.push(DATA[CHECKPOINT.offset : -1])
    with pytest.raises(VerificationError):
        short.finish()


def test_journal_round_trip_and_discards(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 1024)
    journal = UpdateJournal(tmp_path / "data" / "journal.json")
    assert journal.load(offer(), str(image)) is None  # none yet
    journal.save(offer(), str(image), CHECKPOINT)
    assert journal.load(offer(), str(image)) == CHECKPOINT
    assert not list((tmp_path / "data").glob("*.tmp"))
    caplog.set_level(logging.WARNING, "nhlink.update.journal")

    def discarded(load_offer: OfferIdentity, destination: Path, why: str) -> None:
        caplog.clear()
        assert journal.load(load_offer, str(destination)) is None
        assert not journal.path.exists()
        assert "discarded" in caplog.text and why in caplog.text, caplog.text
        journal.save(offer(), str(image), CHECKPOINT)

    discarded(offer(uuid="u-2"), image, "another firmware")
    discarded(OfferIdentity("u-1", len(DATA), CHECKSUM, (*PARTS[:-1], "00")), image, "another")
    other = tmp_path / "other.img"
    other.write_bytes(b"\0" * 1024)
    discarded(offer(), other, "destination changed")
    os.replace(other, image)  # the same path, another file
    journal.save(offer(), str(tmp_path / "disk.img"), CHECKPOINT)
    (tmp_path / "disk2.img").write_bytes(b"")
    os.replace(tmp_path / "disk2.img", image)
    discarded(offer(), image, "destination changed")
    for garbage in (b"{", b"[]", b'{"format": 1}', json.dumps({"head": "***"}).encode()):
        journal.path.write_bytes(garbage)
        discarded(offer(), image, "corrupt")
    record = json.loads(journal.path.read_text())
    record["offset"] = len(DATA) + 5
    journal.path.write_text(json.dumps(record))
    discarded(offer(), image, "outside the file")
    journal.remove()
    journal.remove()  # idempotent
    assert not journal.path.exists()


def test_journal_keeps_a_checkpoint_inside_an_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Format 2 stores the entry's local header, state and extent; a format 1 journal (an
    older nhlink's) or one with a header but no state is discarded."""
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 1024)
    journal = UpdateJournal(tmp_path / "data" / "journal.json")
    inside = Checkpoint(
        2 * PART_SIZE + 777,
        b"head bytes",
        "upgrade.b",
        (),
        42,
        entry_header=b"PK\x03\x04 local header",
        entry_state=os.urandom(33186),
        entry_extent=123456,
    )
    journal.save(offer(), str(image), inside)
    assert journal.load(offer(), str(image)) == inside
    caplog.set_level(logging.WARNING, "nhlink.update.journal")
    record = json.loads(journal.path.read_text())
    for spoil in ({"format": 1}, {"entry_state": None}, {"entry_extent": "7"}):
        journal.path.write_text(json.dumps({**record, **spoil}))
        caplog.clear()
        assert journal.load(offer(), str(image)) is None
        assert "discarded" in caplog.text and "corrupt" in caplog.text, caplog.text
        assert not journal.path.exists()
