"""Byte layouts of the zip records a streaming reader meets: local headers and data descriptors."""

from __future__ import annotations

import calendar
import struct
from dataclasses import dataclass

from nhlink.errors import ArchiveError

LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"
DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
# Central directory header, end of central directory, zip64 end of central directory.
END_SIGNATURES = (b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06")

SIGNATURE_LEN = 4
LOCAL_HEADER_LEN = 30
MAX_NAME_LEN = 512

METHOD_STORED = 0
METHOD_DEFLATE = 8

_FLAG_ENCRYPTED = 0x0001
_FLAG_DESCRIPTOR = 0x0008
_ZIP64_EXTRA_ID = 0x0001
_TIMESTAMP_EXTRA_ID = 0x5455
_U32_MAX = 0xFFFFFFFF

# signature, version, flags, method, time, date, crc32, csize, usize, name length, extra length
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_EXTRA_HEADER = struct.Struct("<HH")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class LocalHeader:
    """A parsed local file header; sizes already taken from the zip64 extra when present."""

    name: str  # UTF-8 with replacement, for events
    shown_name: str  # printable ASCII with '?' per other byte, for error messages
    flags: int
    method: int
    crc32: int
    compressed_size: int
    uncompressed_size: int
    zip64: bool
    mtime: int | None  # the 0x5455 extra's time, else the DOS date/time as UTC

    @property
    def has_descriptor(self) -> bool:
        """Flag bit 3: the CRC and sizes follow the data in a data descriptor."""
        return bool(self.flags & _FLAG_DESCRIPTOR)


@dataclass(frozen=True, slots=True)
class DataDescriptor:
    """The CRC-32 and sizes that follow an entry's data when flag bit 3 is set."""

    crc32: int
    compressed_size: int
    uncompressed_size: int


def local_header_length(fixed_part: bytes | bytearray) -> int:
    """Total header length (fixed part, name and extra) from its first 30 bytes."""
    fields = _LOCAL_HEADER.unpack_from(fixed_part)
    name_len: int = fields[9]
    extra_len: int = fields[10]
    return LOCAL_HEADER_LEN + name_len + extra_len


def printable_name(raw: bytes) -> str:
    """The entry name for an error message: bytes outside printable ASCII become '?'."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in raw)


def resource_name(entry_name: str) -> str:
    """fwup's mapping from entry name to resource name: strip ``data/``, else prepend ``/``."""
    return entry_name[len("data/") :] if entry_name.startswith("data/") else "/" + entry_name


def _check_name(raw: bytes) -> None:
    """Reject empty, over-long, NUL-holding, ``..``-component and absolute-after-mapping names."""
    bad = (
        not raw
        or len(raw) > MAX_NAME_LEN
        or b"\x00" in raw
        or raw.startswith((b"/", b"data//"))
        or any(part == b".." for part in raw.split(b"/"))
    )
    if bad:
        raise ArchiveError(f"ZIP: bad entry name '{printable_name(raw)}'")


def _dos_mtime(time: int, date: int) -> int | None:
    """The DOS date and time read as UTC; None when they are not a date."""
    second, minute, hour = (time & 0x1F) * 2, (time >> 5) & 0x3F, time >> 11
    day, month, year = date & 0x1F, (date >> 5) & 0x0F, 1980 + (date >> 9)
    if not 1 <= month <= 12 or day < 1 or hour > 23 or minute > 59 or second > 59:
        return None
    # Day numbers past the month's end count on into the next month, as plain arithmetic.
    return calendar.timegm((year, month, day, hour, minute, second))


@dataclass(frozen=True, slots=True)
class _Extra:
    uncompressed_size: int
    compressed_size: int
    zip64: bool
    mtime: int | None


def _parse_extra(extra: bytes, usize: int, csize: int, shown_name: str) -> _Extra:
    """Read the first zip64 extra and the first extended timestamp (0x5455).

    The zip64 extra holds 8-byte sizes for the header fields that were 0xFFFFFFFF;
    the timestamp gives the mtime when its flags say it carries one.
    """
    zip64 = seen_time = False
    mtime = None
    pos = 0
    while pos + _EXTRA_HEADER.size <= len(extra):
        field_id, field_len = _EXTRA_HEADER.unpack_from(extra, pos)
        body = extra[pos + _EXTRA_HEADER.size : pos + _EXTRA_HEADER.size + field_len]
        pos += _EXTRA_HEADER.size + field_len
        if field_id == _ZIP64_EXTRA_ID and not zip64:
            needed = 8 * ((usize == _U32_MAX) + (csize == _U32_MAX))
            if len(body) < needed:
                raise ArchiveError(f"ZIP: bad zip64 extra field for '{shown_name}'")
            at = 0
            if usize == _U32_MAX:
                usize = _U64.unpack_from(body, at)[0]
                at += 8
            if csize == _U32_MAX:
                csize = _U64.unpack_from(body, at)[0]
            zip64 = True
        elif field_id == _TIMESTAMP_EXTRA_ID and not seen_time:
            seen_time = True
            if len(body) >= 5 and body[0] & 1:
                mtime = _U32.unpack_from(body, 1)[0]
    return _Extra(usize, csize, zip64, mtime)


def parse_local_header(raw: bytes) -> LocalHeader:
    """Parse a complete local header (signature included) and reject what we cannot read."""
    fields = _LOCAL_HEADER.unpack_from(raw)
    flags, method, crc32, csize, usize, name_len = (
        fields[2],
        fields[3],
        fields[6],
        fields[7],
        fields[8],
        fields[9],
    )
    raw_name = raw[LOCAL_HEADER_LEN : LOCAL_HEADER_LEN + name_len]
    extra = raw[LOCAL_HEADER_LEN + name_len :]
    _check_name(raw_name)
    shown = printable_name(raw_name)
    if flags & _FLAG_ENCRYPTED:
        raise ArchiveError(f"ZIP: encrypted entries are not supported ('{shown}')")
    if method not in (METHOD_STORED, METHOD_DEFLATE):
        raise ArchiveError(f"ZIP: unsupported compression method {method} for '{shown}'")
    parsed = _parse_extra(extra, usize, csize, shown)
    mtime = parsed.mtime if parsed.mtime is not None else _dos_mtime(fields[4], fields[5])
    return LocalHeader(
        raw_name.decode("utf-8", "replace"),
        shown,
        flags,
        method,
        crc32,
        parsed.compressed_size,
        parsed.uncompressed_size,
        parsed.zip64,
        mtime,
    )


def descriptor_length(first_four: bytes | bytearray, zip64: bool) -> int:
    """Length of a data descriptor given its first 4 bytes (signature optional)."""
    body = 4 + (16 if zip64 else 8)
    return body + 4 if bytes(first_four[:4]) == DESCRIPTOR_SIGNATURE else body


def parse_descriptor(raw: bytes, zip64: bool) -> DataDescriptor:
    """Parse a complete data descriptor, with or without its signature."""
    pos = 4 if raw[:4] == DESCRIPTOR_SIGNATURE else 0
    crc32 = _U32.unpack_from(raw, pos)[0]
    size = _U64 if zip64 else _U32
    csize = size.unpack_from(raw, pos + 4)[0]
    usize = size.unpack_from(raw, pos + 4 + size.size)[0]
    return DataDescriptor(crc32, csize, usize)
