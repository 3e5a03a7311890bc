"""U-Boot environment access through the block cache: plain and redundant (spec 5)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from nhlink.errors import UBootEnvError
from nhlink.fwup.metaconf import UBootEnvironment
from nhlink.fwup.primitives import BlockCacheAPI
from nhlink.fwup.ubootenv import UBootEnv

PRIMARY, REDUND, COUNT = 16, 32, 2
SIZE = COUNT * 512


@pytest.fixture
def cache(tmp_path: Path, backend: ModuleType) -> Iterator[BlockCacheAPI]:
    image = tmp_path / "image"
    image.write_bytes(bytes(64 * 512))
    cache: BlockCacheAPI = backend.BlockCache(str(image))
    yield cache
    cache.close()


def _env(cache: BlockCacheAPI, backend: ModuleType, redundant: bool) -> UBootEnv:
    definition = UBootEnvironment("env", PRIMARY, COUNT, REDUND if redundant else None)
    return UBootEnv(definition, cache, backend)


def _copy(cache: BlockCacheAPI, block: int) -> bytes:
    return cache.read(block * 512, SIZE)


def _flags(cache: BlockCacheAPI) -> tuple[int, int]:
    return _copy(cache, PRIMARY)[4], _copy(cache, REDUND)[4]


def _raw_copy(variables: bytes, flags: int) -> bytes:
    body = bytearray(b"\xff" * (SIZE - 5))
    body[: len(variables)] = variables
    return struct.pack("<IB", zlib.crc32(body), flags) + bytes(body)


def test_blank_media_reads_as_crc_error(cache: BlockCacheAPI, backend: ModuleType) -> None:
    with pytest.raises(UBootEnvError) as info:
        _env(cache, backend, False).read()
    assert str(info.value) == (
        f"U-boot environment (block {PRIMARY}) CRC32 mismatch (expected 0x00000000; "
        f"got 0x{zlib.crc32(bytes(SIZE - 4)):08x})"
    )


def test_plain_clear_set_unset(cache: BlockCacheAPI, backend: ModuleType) -> None:
    env = _env(cache, backend, False)
    assert env.units == SIZE
    env.clearenv()
    env.setenv("b", "2")
    env.setenv("a", "1")
    env.unsetenv("b")
    assert env.read().variables == {"a": "1"}
    raw = _copy(cache, PRIMARY)
    assert raw[4:9] == b"a=1\0\0" and raw[9:] == b"\xff" * (SIZE - 9)
    assert _copy(cache, REDUND) == bytes(SIZE)  # not redundant: nothing else written


def test_redundant_copies_alternate(cache: BlockCacheAPI, backend: ModuleType) -> None:
    env = _env(cache, backend, True)
    assert env.units == 2 * SIZE
    env.clearenv()
    assert _flags(cache) == (1, 1)
    env.setenv("x", "1")  # equal flags: primary read, redundant written with 2
    assert _flags(cache) == (1, 2)
    assert env.read().copy == 1
    env.setenv("y", "2")  # redundant newer: read it, write primary with 3
    assert _flags(cache) == (3, 2)
    contents = env.read()
    assert (contents.copy, contents.flags, contents.variables) == (0, 3, {"x": "1", "y": "2"})


def test_redundant_prefers_newer_and_handles_wrap(
    cache: BlockCacheAPI, backend: ModuleType
) -> None:
    env = _env(cache, backend, True)
    cache.write(PRIMARY * 512, _raw_copy(b"v=old\0\0", 255))
    cache.write(REDUND * 512, _raw_copy(b"v=new\0\0", 0))  # (0 - 255) mod 256 == 1: newer
    assert env.get("v") == "new"
    cache.write(REDUND * 512, _raw_copy(b"v=stale\0\0", 127))  # 127 - 255 wraps to 128: older
    assert env.get("v") == "old"


def test_redundant_falls_back_to_the_valid_copy(cache: BlockCacheAPI, backend: ModuleType) -> None:
    env = _env(cache, backend, True)
    cache.write(PRIMARY * 512, _raw_copy(b"v=primary\0\0", 5))
    corrupt = bytearray(_raw_copy(b"v=redund\0\0", 6))
    corrupt[10] ^= 1
    cache.write(REDUND * 512, bytes(corrupt))
    contents = env.read()
    assert (contents.copy, contents.variables) == (0, {"v": "primary"})
    env.setenv("w", "1")  # written to the other copy, flags 5 + 1
    assert _flags(cache) == (5, 6)
    assert env.read().variables == {"v": "primary", "w": "1"}


def test_recover_only_rewrites_an_invalid_environment(
    cache: BlockCacheAPI, backend: ModuleType
) -> None:
    env = _env(cache, backend, False)
    env.recover()
    assert env.read().variables == {}
    env.setenv("keep", "me")
    env.recover()
    assert env.read().variables == {"keep": "me"}


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (UBootEnvironment("e", None, 2, None), "block-offset"),
        (UBootEnvironment("e", 0, 0, None), "between 1 and 65534"),
        (UBootEnvironment("e", 0, 65535, None), "between 1 and 65534"),
        (UBootEnvironment("e", 10, 4, 12), "overlaps"),
    ],
)
def test_bad_definitions(
    definition: UBootEnvironment, message: str, cache: BlockCacheAPI, backend: ModuleType
) -> None:
    with pytest.raises(UBootEnvError, match=message):
        UBootEnv(definition, cache, backend)
