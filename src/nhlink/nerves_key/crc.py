"""The ATECC CRC-16: polynomial 0x8005, init 0, data bits fed LSB first, sent low byte first."""

from __future__ import annotations

POLYNOMIAL = 0x8005


def _table() -> tuple[int, ...]:
    """CRC contributions of each byte value, bits taken MSB first (index by the reversed byte)."""
    table = []
    for byte in range(256):
        crc = 0
        for bit in range(8):
            feedback = ((byte >> (7 - bit)) & 1) ^ (crc >> 15)
            crc = (crc << 1) & 0xFFFF
            if feedback:
                crc ^= POLYNOMIAL
        table.append(crc)
    return tuple(table)


_TABLE = _table()


def crc16(data: bytes) -> int:
    """The 16-bit CRC of ``data`` as an integer."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ _reverse(byte)) & 0xFF]
    return crc


def crc16_bytes(data: bytes) -> bytes:
    """The CRC of ``data`` as it goes on the wire (low byte first)."""
    return crc16(data).to_bytes(2, "little")


def _reverse_table() -> tuple[int, ...]:
    return tuple(int(f"{value:08b}"[::-1], 2) for value in range(256))


_REVERSED = _reverse_table()


def _reverse(byte: int) -> int:
    return _REVERSED[byte]
