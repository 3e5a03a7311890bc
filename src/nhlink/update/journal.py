"""The resume journal: where an interrupted update continues after a restart.

One small JSON file in ``data_path``, rewritten atomically (temporary file,
fsync, rename, fsync of the directory) at each engine checkpoint. It names
the offer (firmware uuid, size, checksum, partials), the destination (path,
device and inode), and the :class:`~nhlink.fwup.engine.Checkpoint`: archive
offset of the next entry or of a deflate block boundary inside one, the raw
signature and meta.conf entries (checked again on resume), the task, the
finished resources and the progress done; inside an entry also its local
header and the ZipStream state (inflate window, CRC-32, BLAKE2b state).
A journal that does not match the offer and the destination, or cannot be
read, is removed and the update starts over.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhlink.fwup.engine import Checkpoint
from nhlink.update.verify import PART_SIZE, StreamVerifier

logger = logging.getLogger("nhlink.update.journal")

JOURNAL_NAME = "update-journal.json"
FORMAT = 2  # 2: mid-entry checkpoints (entry_header, entry_state, entry_extent)


@dataclass(frozen=True, slots=True)
class OfferIdentity:
    """What identifies the bytes of an offer: the same identity means the same file."""

    uuid: str
    size: int | None
    checksum: str | None
    partials: tuple[str, ...] | None = None

    @property
    def partials_digest(self) -> str | None:
        if self.partials is None:
            return None
        return hashlib.sha256("\n".join(p.upper() for p in self.partials).encode()).hexdigest()

    @property
    def part_aligned(self) -> bool:
        """Whether the partials cover the file, so a resume can re-verify from a part boundary."""
        if self.partials is None or self.size is None:
            return False
        return len(self.partials) == -(-self.size // PART_SIZE)

    def fields(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "size": self.size,
            "checksum": (self.checksum or "").upper() or None,
            "partials": self.partials_digest,
        }


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """How to continue: download and verify from ``start`` (a part boundary), drop the
    first ``skip`` verified bytes (applied before the checkpoint), feed the rest."""

    checkpoint: Checkpoint
    start: int
    skip: int


def resume_point(offer: OfferIdentity, checkpoint: Checkpoint) -> ResumePoint:
    offset = checkpoint.offset
    start = offset - offset % PART_SIZE if offer.part_aligned else offset
    return ResumePoint(checkpoint, start, offset - start)


def verifier_from(offer: OfferIdentity, start: int) -> StreamVerifier:
    """A verifier for the bytes from ``start`` on (a part boundary when partials are used).

    Resuming without partials, the whole-file SHA-256 cannot be checked (the hash
    state of the first run is gone): the size is, and every resource is still
    checked against its signed BLAKE2b-256 by the engine.
    """
    if start == 0:
        return StreamVerifier(size=offer.size, checksum=offer.checksum, partials=offer.partials)
    size = None if offer.size is None else offer.size - start
    if offer.part_aligned and offer.partials is not None:
        return StreamVerifier(size=size, partials=offer.partials[start // PART_SIZE :])
    return StreamVerifier(size=size)


def destination_identity(path: str) -> dict[str, int]:
    """Device and inode (and the device number of a block device) of ``path``."""
    info = os.stat(path)
    return {"dev": info.st_dev, "ino": info.st_ino, "rdev": info.st_rdev}


class UpdateJournal:
    """The journal file at ``path`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.writes = 0

    def save(self, offer: OfferIdentity, destination: str, checkpoint: Checkpoint) -> None:
        """Record ``checkpoint`` durably (called after the destination was synced)."""
        record = {
            "format": FORMAT,
            "offer": offer.fields(),
            "destination": {"path": destination, **destination_identity(destination)},
            "task": checkpoint.task,
            "head": base64.b64encode(checkpoint.head).decode("ascii"),
            "offset": checkpoint.offset,
            "completed": list(checkpoint.completed),
            "units": checkpoint.units,
            "entry_header": _b64(checkpoint.entry_header),
            "entry_state": _b64(checkpoint.entry_state),
            "entry_extent": checkpoint.entry_extent,
        }
        data = json.dumps(record, separators=(",", ":")).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        _sync_directory(self.path.parent)
        self.writes += 1
        logger.info("checkpoint at archive byte %d (%s)", checkpoint.offset, checkpoint.task)

    def record(self, offer: OfferIdentity, destination: str, checkpoint: Checkpoint) -> None:
        """:meth:`save`, where a failure (a full or read-only ``data_path``) only costs the
        resume: the previous journal stays whole, the update goes on."""
        try:
            self.save(offer, destination, checkpoint)
        except OSError as exc:
            logger.warning("cannot write the update journal %s: %s", self.path, exc)

    def load(self, offer: OfferIdentity, destination: str) -> Checkpoint | None:
        """The checkpoint to resume ``offer`` into ``destination``, or None (a journal that
        does not fit is removed)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._discard(f"cannot read it ({exc})")
            return None
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise TypeError("not a JSON object")
            checkpoint = _checkpoint(record)
        except (ValueError, TypeError, KeyError) as exc:
            self._discard(f"it is corrupt ({type(exc).__name__}: {exc})")
            return None
        mismatch = _mismatch(record, checkpoint, offer, destination)
        if mismatch is not None:
            self._discard(mismatch)
            return None
        return checkpoint

    def discard(self, why: str) -> None:
        """Remove the journal, saying why."""
        self._discard(why)

    def remove(self) -> None:
        """Remove the journal (the update completed, failed for good, or starts over).
        A failure is logged: a stale journal is refused later by its checks."""
        try:
            self.path.unlink()
            _sync_directory(self.path.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove the update journal %s: %s", self.path, exc)

    def _discard(self, why: str) -> None:
        logger.warning("update journal %s discarded: %s; starting over", self.path, why)
        self.remove()


def _mismatch(
    record: dict[str, Any], checkpoint: Checkpoint, offer: OfferIdentity, destination: str
) -> str | None:
    """Why the journal ``record`` does not fit ``offer`` and ``destination`` (None: it fits)."""
    if record.get("format") != FORMAT:
        return f"unknown format {record.get('format')!r}"
    if record.get("offer") != offer.fields():
        return "it is for another firmware or offer"
    try:
        current = {"path": destination, **destination_identity(destination)}
    except OSError as exc:
        return f"the destination is not there ({exc})"
    if record.get("destination") != current:
        return "the destination changed"
    if offer.size is not None and not 0 < checkpoint.offset < offer.size:
        return f"its offset {checkpoint.offset} is outside the file"
    return None


def _checkpoint(record: dict[str, Any]) -> Checkpoint:
    if record.get("format") != FORMAT:  # e.g. an older nhlink's journal: start over
        raise ValueError(f"unknown format {record.get('format')!r}")
    completed: Sequence[Any] = record["completed"]
    offset, units, task = record["offset"], record["units"], record["task"]
    if not (isinstance(offset, int) and isinstance(units, int) and isinstance(task, str)):
        raise TypeError("bad offset, units or task")
    if not isinstance(completed, list) or not all(isinstance(n, str) for n in completed):
        raise TypeError("bad completed list")
    head = base64.b64decode(record["head"], validate=True)
    entry_header, entry_state = _unb64(record["entry_header"]), _unb64(record["entry_state"])
    entry_extent = record["entry_extent"]
    if not isinstance(entry_extent, int) or (entry_header is None) != (entry_state is None):
        raise TypeError("bad entry checkpoint")
    return Checkpoint(
        offset=offset,
        head=head,
        task=task,
        completed=tuple(completed),
        units=units,
        entry_header=entry_header,
        entry_state=entry_state,
        entry_extent=entry_extent,
    )


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError("not base64 text")
    return base64.b64decode(text, validate=True)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
