"""Events produced by ``ZipStream.feed`` (shared by both backends)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EntryStart:
    """A local file header was parsed; no data of the entry consumed yet."""

    name: str
    method: int
    size: int | None
    mtime: int | None = None
    """Unix time from the 0x5455 extra field, else the DOS date/time read as UTC."""


@dataclass(frozen=True, slots=True)
class DataChunk:
    """Uncompressed bytes of the current entry (``chunks`` sink only)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EntryEnd:
    """The entry's data and data descriptor were consumed and checked."""

    name: str
    size: int
    crc32: int
    blake2b: bytes | None
    data: bytes | None


@dataclass(frozen=True, slots=True)
class ArchiveEnd:
    """The central directory (or the end of input at an entry boundary) was reached."""


@dataclass(frozen=True, slots=True)
class CheckpointReady:
    """An armed deflate block boundary inside a raw_write entry (native backend only,
    ``ZipStream.checkpoint_after``): the state can be exported now."""


Event = EntryStart | DataChunk | EntryEnd | ArchiveEnd | CheckpointReady
