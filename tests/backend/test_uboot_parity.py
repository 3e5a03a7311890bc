"""U-Boot environment edge cases on which both backends must agree with fwup's reader."""

from __future__ import annotations

import struct
import zlib
from types import ModuleType

import pytest

from nhlink.errors import UBootEnvError


def block(body: bytes, size: int = 64) -> bytes:
    data = body + b"\0" + b"\xff" * (size - 4 - len(body) - 1)
    return struct.pack("<I", zlib.crc32(data)) + data


def test_a_name_may_start_with_an_equals_sign(backend: ModuleType) -> None:
    variables, _ = backend.uboot_env_decode(block(b"==x\0a=b\0"), False)
    assert variables == {"=": "x", "a": "b"}


@pytest.mark.parametrize("body", [b"=\0", b"abc\0", b"=\0x=1\0"])
def test_entries_without_a_name_and_an_equals_sign_are_invalid(
    backend: ModuleType, body: bytes
) -> None:
    with pytest.raises(UBootEnvError, match="Invalid U-boot environment"):
        backend.uboot_env_decode(block(body), False)
