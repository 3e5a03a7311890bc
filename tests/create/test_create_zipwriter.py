"""The ZIP writer's byte layout, including the zip64 paths (with a lowered limit)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest

from nhlink.fwup.create.zipwriter import ZipWriter, dos_date_time
from tests.create.vector_resources import seeded_bytes


def _local_header(raw: bytes, offset: int) -> tuple[tuple[int, ...], bytes, bytes, int]:
    fields = struct.unpack_from("<IHHHHHIIIHH", raw, offset)
    name_end = offset + 30 + fields[9]
    extra_end = name_end + fields[10]
    return fields, raw[offset + 30 : name_end], raw[name_end:extra_end], extra_end


def _extras(extra: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    position = 0
    while position < len(extra):
        tag, size = struct.unpack_from("<HH", extra, position)
        found[tag] = extra[position + 4 : position + 4 + size]
        position += 4 + size
    return found


def test_plain_layout() -> None:
    buffer = io.BytesIO()
    writer = ZipWriter(buffer)
    signature = writer.add_stored("sig", bytes(range(64)))
    payload = seeded_bytes("payload", 5000)
    deflated = writer.add_deflated("data/x", [payload[:1000], payload[1000:]], 5000, mtime=1)
    writer.close()
    raw = buffer.getvalue()

    fields, name, extra, data_start = _local_header(raw, signature.header_offset)
    assert name == b"sig"
    assert fields[1:4] == (10, 0x8, 0)  # version 10, bit 3, stored
    assert fields[6:9] == (0, 64, 64)  # no CRC, sizes in the header
    assert _extras(extra) == {0x5455: b"\0", 0x7875: bytes([1, 4, 0, 0, 0, 0, 4, 0, 0, 0, 0])}
    descriptor = struct.unpack_from("<IIII", raw, data_start + 64)
    assert descriptor == (0x08074B50, zlib.crc32(bytes(range(64))), 64, 64)

    fields, name, extra, data_start = _local_header(raw, deflated.header_offset)
    assert fields[1:4] == (20, 0x8, 8)
    assert fields[6:9] == (0, 0, 5000)
    assert _extras(extra)[0x5455] == b"\x01" + struct.pack("<I", 1)
    assert fields[4:6] == (0, 0x21)  # mtime 1 is before 1980: clamped to 1980-01-01
    compressed = raw[data_start : data_start + deflated.compressed_size]
    assert zlib.decompress(compressed, -15) == payload
    assert struct.unpack_from("<IIII", raw, data_start + deflated.compressed_size) == (
        0x08074B50,
        zlib.crc32(payload),
        deflated.compressed_size,
        5000,
    )
    assert b"PK\x06\x06" not in raw

    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        assert archive.testzip() is None
        assert archive.read("data/x") == payload
        assert [i.external_attr >> 16 for i in archive.infolist()] == [0o100644, 0o100644]


def test_zip64_entries_offsets_and_end_records() -> None:
    buffer = io.BytesIO()
    writer = ZipWriter(buffer, zip64_limit=1000)
    small = writer.add_stored("small", b"s" * 100)
    payload = seeded_bytes("zip64", 5000)
    big = writer.add_deflated("big", [payload], len(payload), level=1)
    late = writer.add_deflated("late", [b"late entry"], 10)
    writer.close()
    raw = buffer.getvalue()

    fields, _, extra, data_start = _local_header(raw, big.header_offset)
    assert fields[1] == 45
    assert fields[7:9] == (0xFFFFFFFF, 0xFFFFFFFF)
    assert _extras(extra)[0x0001] == struct.pack("<QQ", 5000, 0)
    descriptor = struct.unpack_from("<IIQQ", raw, data_start + big.compressed_size)
    assert descriptor == (0x08074B50, zlib.crc32(payload), big.compressed_size, 5000)

    fields, _, extra, _ = _local_header(raw, small.header_offset)
    assert fields[1] == 10 and 0x0001 not in _extras(extra)
    assert late.header_offset >= 1000

    assert b"PK\x06\x06" in raw and b"PK\x06\x07" in raw
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["small", "big", "late"]
        assert archive.read("big") == payload
        assert archive.read("late") == b"late entry"
        assert archive.getinfo("late").header_offset == late.header_offset


def test_size_mismatch_is_an_error() -> None:
    writer = ZipWriter(io.BytesIO())
    with pytest.raises(ValueError, match="expected 10 bytes, got 3"):
        writer.add_deflated("x", [b"abc"], 10)
    with pytest.raises(ValueError, match="compression level"):
        writer.add_deflated("y", [b"abc"], 3, level=0)


def test_dos_date_time_is_utc() -> None:
    assert dos_date_time(1700000000) == (0xB1AA, 0x576E)  # values of the golden meta.conf
    assert dos_date_time(0) == (0, 0x21)
