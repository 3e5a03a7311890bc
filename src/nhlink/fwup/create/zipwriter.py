"""A streaming ZIP writer producing the byte layout of fwup's archives.

Every local header has flag bit 3 and is followed by the data and a data
descriptor with its signature. Local headers carry a 0x5455 (extended
timestamp) and a 0x7875 (Unix uid/gid = 0/0) extra field; the central
directory repeats them. Entries without a modification time get the DOS date
1980-01-01 00:00 and a timestamp extra without a time. Deflated entries are
raw deflate streams (zlib, window 15, memLevel 8). An entry of 4 GiB or more
is written as zip64 (version 45, 0xFFFFFFFF sizes in the local header, a
zip64 extra with the sizes, a 24-byte data descriptor); a zip64 end of
central directory is added only when the archive itself needs one.
DOS times are UTC.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

STORED = 0
DEFLATED = 8
ZIP32_LIMIT = 0xFFFFFFFF

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_END_OF_CENTRAL_DIR = struct.Struct("<IHHHHIIH")
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_DESCRIPTOR32 = struct.Struct("<IIII")
_DESCRIPTOR64 = struct.Struct("<IIQQ")

_SIG_LOCAL = 0x04034B50
_SIG_CENTRAL = 0x02014B50
_SIG_DESCRIPTOR = 0x08074B50
_SIG_END = 0x06054B50
_SIG_ZIP64_END = 0x06064B50
_SIG_ZIP64_LOCATOR = 0x07064B50

_FLAG_DESCRIPTOR = 0x0008
_FLAG_UTF8 = 0x0800
_MADE_BY_UNIX = 3 << 8
_REGULAR_FILE_0644 = 0o100644 << 16
_UNIX_IDS_EXTRA = struct.pack("<HHBBIBI", 0x7875, 11, 1, 4, 0, 4, 0)
_DOS_EPOCH = (0, 0x21)  # 1980-01-01 00:00:00


@dataclass(frozen=True)
class EntryInfo:
    """What was written for one entry."""

    name: str
    method: int
    crc32: int
    compressed_size: int
    size: int
    header_offset: int


@dataclass
class _CentralRecord:
    info: EntryInfo
    name: bytes
    flags: int
    version: int
    dos_time: int
    dos_date: int
    common_extra: bytes
    zip64: bool


class ZipWriter:
    """Write entries one after another to a binary file object."""

    def __init__(self, output: BinaryIO, *, zip64_limit: int = ZIP32_LIMIT) -> None:
        # zip64_limit exists so tests can exercise the zip64 paths with small data.
        self._out = output
        self._offset = 0
        self._limit = zip64_limit
        self._records: list[_CentralRecord] = []
        self._closed = False

    def add_stored(self, name: str, data: bytes, *, mtime: int | None = None) -> EntryInfo:
        """Add *data* uncompressed (sizes also in the local header, like fwup's signature)."""
        return self._add(name, STORED, [data], len(data), mtime=mtime, level=0)

    def add_deflated(
        self,
        name: str,
        chunks: Iterable[bytes],
        size: int,
        *,
        level: int = 9,
        mtime: int | None = None,
    ) -> EntryInfo:
        """Add *size* bytes coming from *chunks*, deflated at *level* (1..9)."""
        if not 1 <= level <= 9:
            raise ValueError(f"compression level must be 1..9, got {level}")
        return self._add(name, DEFLATED, chunks, size, mtime=mtime, level=level)

    def close(self) -> None:
        """Write the central directory and the end records."""
        if self._closed:
            return
        self._closed = True
        start = self._offset
        for record in self._records:
            self._write(self._central_header(record))
        size = self._offset - start
        count = len(self._records)
        needs_zip64 = start >= self._limit or size >= self._limit or count >= 0xFFFF
        if needs_zip64:
            zip64_end = self._offset
            self._write(
                _ZIP64_END.pack(
                    _SIG_ZIP64_END, 44, _MADE_BY_UNIX | 45, 45, 0, 0, count, count, size, start
                )
            )
            self._write(_ZIP64_LOCATOR.pack(_SIG_ZIP64_LOCATOR, 0, zip64_end, 1))
        self._write(
            _END_OF_CENTRAL_DIR.pack(
                _SIG_END,
                0,
                0,
                min(count, 0xFFFF),
                min(count, 0xFFFF),
                min(size, ZIP32_LIMIT),
                min(start, ZIP32_LIMIT),
                0,
            )
        )

    # -- internals -------------------------------------------------------------

    def _add(
        self,
        name: str,
        method: int,
        chunks: Iterable[bytes],
        size: int,
        *,
        mtime: int | None,
        level: int,
    ) -> EntryInfo:
        if self._closed:
            raise ValueError("ZipWriter is closed")
        encoded_name = name.encode("utf-8")
        flags = _FLAG_DESCRIPTOR | (0 if encoded_name.isascii() else _FLAG_UTF8)
        zip64 = size >= self._limit
        version = 45 if zip64 else (20 if method == DEFLATED else 10)
        dos_time, dos_date = _DOS_EPOCH if mtime is None else dos_date_time(mtime)
        common_extra = _timestamp_extra(mtime) + _UNIX_IDS_EXTRA

        if zip64:
            local_sizes = (ZIP32_LIMIT, ZIP32_LIMIT)
            local_extra = common_extra + struct.pack("<HHQQ", 0x0001, 16, size, 0)
        elif method == STORED:
            local_sizes = (size, size)
            local_extra = common_extra
        else:
            local_sizes = (0, size)
            local_extra = common_extra

        header_offset = self._offset
        self._write(
            _LOCAL_HEADER.pack(
                _SIG_LOCAL,
                version,
                flags,
                method,
                dos_time,
                dos_date,
                0,
                local_sizes[0],
                local_sizes[1],
                len(encoded_name),
                len(local_extra),
            )
        )
        self._write(encoded_name)
        self._write(local_extra)

        crc, written, compressed = self._write_data(method, chunks, level)
        if written != size:
            raise ValueError(f"zip entry '{name}': expected {size} bytes, got {written}")
        if zip64:
            self._write(_DESCRIPTOR64.pack(_SIG_DESCRIPTOR, crc, compressed, written))
        else:
            if compressed >= ZIP32_LIMIT:
                raise ValueError(f"zip entry '{name}': compressed data exceeds 4 GiB")
            self._write(_DESCRIPTOR32.pack(_SIG_DESCRIPTOR, crc, compressed, written))

        info = EntryInfo(name, method, crc, compressed, written, header_offset)
        self._records.append(
            _CentralRecord(
                info, encoded_name, flags, version, dos_time, dos_date, common_extra, zip64
            )
        )
        return info

    def _write_data(self, method: int, chunks: Iterable[bytes], level: int) -> tuple[int, int, int]:
        crc = 0
        written = 0
        start = self._offset
        if method == STORED:
            for chunk in chunks:
                crc = zlib.crc32(chunk, crc)
                written += len(chunk)
                self._write(chunk)
            return crc, written, self._offset - start
        deflater = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            written += len(chunk)
            self._write(deflater.compress(chunk))
        self._write(deflater.flush())
        return crc, written, self._offset - start

    def _central_header(self, record: _CentralRecord) -> bytes:
        info = record.info
        zip64_fields: list[int] = []
        size, compressed, offset = info.size, info.compressed_size, info.header_offset
        if record.zip64 or size >= self._limit:
            zip64_fields.append(size)
            size = ZIP32_LIMIT
        if compressed >= self._limit:
            zip64_fields.append(compressed)
            compressed = ZIP32_LIMIT
        if offset >= self._limit:
            zip64_fields.append(offset)
            offset = ZIP32_LIMIT
        extra = record.common_extra
        version = record.version
        if zip64_fields:
            extra += struct.pack(
                f"<HH{len(zip64_fields)}Q", 1, 8 * len(zip64_fields), *zip64_fields
            )
            version = 45
        header = _CENTRAL_HEADER.pack(
            _SIG_CENTRAL,
            _MADE_BY_UNIX | version,
            version,
            record.flags,
            info.method,
            record.dos_time,
            record.dos_date,
            info.crc32,
            compressed,
            size,
            len(record.name),
            len(extra),
            0,
            0,
            0,
            _REGULAR_FILE_0644,
            offset,
        )
        return header + record.name + extra

    def _write(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self._offset += len(data)


def dos_date_time(timestamp: int) -> tuple[int, int]:
    """Return (DOS time, DOS date) for a Unix time, in UTC, clamped to 1980..2107."""
    parts = time.gmtime(max(timestamp, 315532800))
    if parts.tm_year > 2107:
        return (0xBF7D, 0xFF9F)  # 2107-12-31 23:59:58
    dos_time = (parts.tm_hour << 11) | (parts.tm_min << 5) | (parts.tm_sec // 2)
    dos_date = ((parts.tm_year - 1980) << 9) | (parts.tm_mon << 5) | parts.tm_mday
    return dos_time, dos_date


def _timestamp_extra(mtime: int | None) -> bytes:
    if mtime is None:
        return struct.pack("<HHB", 0x5455, 1, 0)
    return struct.pack("<HHBI", 0x5455, 5, 1, mtime & 0xFFFFFFFF)
