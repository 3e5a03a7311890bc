"""The U-Boot environment block codec (spec section 5).

Layout: CRC-32 (little-endian) | [flags byte, redundant form only] |
``name=value\\0``... ``\\0`` | 0xFF fill. The CRC covers everything after the header.
Names and values are UTF-8; bytes that are not UTF-8 round-trip through "surrogateescape".
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

from nhlink.errors import UBootEnvCRCError, UBootEnvError

_CRC = struct.Struct("<I")
_MIN_SIZE = 8


def _header_length(redundant: bool) -> int:
    return 5 if redundant else 4


def _shown(raw_name: bytes) -> str:
    """A variable name as the native codec prints it: up to 200 bytes, cut at a NUL."""
    return raw_name[:200].split(b"\0", 1)[0].decode("utf-8", "replace")


def uboot_env_decode(block: bytes, redundant: bool) -> tuple[dict[str, str], int]:
    """Return ``(variables, flags)``; flags is 0 unless redundant. Bad CRC: UBootEnvCRCError."""
    data = bytes(block)
    header = _header_length(redundant)
    if len(data) <= header:
        raise UBootEnvError(f"U-boot environment too small ({len(data)} bytes)")
    stored = _CRC.unpack_from(data)[0]
    computed = zlib.crc32(memoryview(data)[header:])
    if stored != computed:
        raise UBootEnvCRCError(expected=stored, got=computed)
    flags = data[4] if redundant else 0
    variables: dict[str, str] = {}
    pos = header
    while pos < len(data) and data[pos] != 0:
        # As fwup: a name has at least one byte before its '=' and ends at the first '=' after it.
        equals = data.find(b"=", pos + 1)
        nul = data.find(b"\0", pos + 1)
        if equals < 0 or (0 <= nul < equals):
            raise UBootEnvError("Invalid U-boot environment")
        end = data.find(b"\0", equals + 1)
        if end < 0:
            raise UBootEnvError("Invalid U-boot environment")
        name = data[pos:equals].decode("utf-8", "surrogateescape")
        variables[name] = data[equals + 1 : end].decode("utf-8", "surrogateescape")
        pos = end + 1
    return variables, flags


def uboot_env_encode(variables: Mapping[str, str], size: int, redundant: bool, flags: int) -> bytes:
    """Build a ``size``-byte block: variables sorted by name (bytewise), extra NUL, 0xFF fill."""
    if size < _MIN_SIZE:
        raise UBootEnvError("u-boot environment block size too small")
    if redundant and not 0 <= flags <= 0xFF:
        raise ValueError("flags must fit in one byte")
    pairs: list[tuple[bytes, bytes]] = []
    for name, value in variables.items():
        raw_name = name.encode("utf-8", "surrogateescape")
        raw_value = value.encode("utf-8", "surrogateescape")
        if not raw_name or b"=" in raw_name or b"\0" in raw_name:
            raise UBootEnvError(f"Invalid U-boot variable name '{_shown(raw_name)}'")
        if b"\0" in raw_value:
            raise UBootEnvError(f"Invalid value for U-boot variable '{_shown(raw_name)}'")
        pairs.append((raw_name, raw_value))
    pairs.sort()
    body = b"".join(name + b"=" + value + b"\0" for name, value in pairs)
    header = _header_length(redundant)
    # Each variable's terminating NUL must lie before size - 2 (fwup's rule).
    if header + len(body) > size - 2:
        raise UBootEnvError("Not enough room in U-boot environment")
    block = bytearray(b"\xff" * size)
    block[header : header + len(body) + 1] = body + b"\0"
    if redundant:
        block[4] = flags
    _CRC.pack_into(block, 0, zlib.crc32(memoryview(block)[header:]))
    return bytes(block)
