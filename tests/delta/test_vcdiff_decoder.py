"""VcdiffDecoder of both backends: real xdelta3 patches, hand-made windows, corrupt input."""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhlink._native import load
from nhlink.errors import ArchiveError
from tests.delta import support

BACKENDS = {name: load(name) for name in ("native", "python")}


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        assert offset >= 0 and offset + length <= len(self.data)
        return self.data[offset : offset + length]


def decode(
    backend: ModuleType,
    patch: bytes,
    source: bytes,
    pieces: list[int] | None = None,
    source_offset: int = 0,
) -> tuple[list[bytes], str | None]:
    """(pieces given to the sink, error text or None)."""
    out: list[bytes] = []
    padded = bytes(source_offset) + source
    decoder = backend.VcdiffDecoder(out.append, Reader(padded), source_offset, len(source))
    position = 0
    try:
        for size in pieces or [len(patch)]:
            decoder.feed(patch[position : position + size])
            position += size
        decoder.feed(patch[position:])
        decoder.finish()
    except ArchiveError as error:
        return out, str(error)
    assert decoder.target_size == sum(map(len, out))
    return out, None


def derived_target(source: bytes, seed: int) -> bytes:
    """A target sharing runs of the source, with repeats (target copies) and fresh bytes."""
    rng = random.Random(seed)
    parts: list[bytes] = []
    while sum(map(len, parts)) < len(source) + 1000:
        kind = rng.randrange(4)
        if kind == 0 and source:
            at = rng.randrange(len(source))
            parts.append(source[at : at + rng.randrange(1, 5000)])
        elif kind == 1:
            parts.append(rng.randbytes(rng.randrange(1, 300)))
        elif kind == 2:
            parts.append(bytes([rng.randrange(256)]) * rng.randrange(1, 2000))
        elif parts:
            parts.append(parts[rng.randrange(len(parts))])
    return b"".join(parts)


@pytest.fixture(scope="module")
def xd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    support.xdelta3()
    return tmp_path_factory.mktemp("xd")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32),
    source_size=st.integers(0, 60000),
    window=st.sampled_from([None, "16384"]),
    pieces=st.lists(st.integers(1, 3000), max_size=8),
)
def test_xdelta3_patches_decode_identically(
    xd_dir: Path, seed: int, source_size: int, window: str | None, pieces: list[int]
) -> None:
    source = random.Random(seed).randbytes(source_size)
    target = derived_target(source, seed)
    flags = support.NERVESHUB_FLAGS + (("-W", window) if window else ())
    patch = support.make_patch(xd_dir / "h", source, target, flags)
    results = {
        name: decode(b, patch, source, pieces, source_offset=seed % 700)
        for name, b in BACKENDS.items()
    }
    out, error = results["native"]
    assert error is None
    assert b"".join(out) == target
    assert results["python"] == results["native"]
    assert all(len(piece) <= 1 << 20 for piece in out)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32),
    mutation=st.sampled_from(["truncate", "flip", "insert", "delete"]),
    where=st.floats(0, 1, exclude_max=True),
)
def test_corrupt_patches_fail_the_same_way(
    xd_dir: Path, seed: int, mutation: str, where: float
) -> None:
    rng = random.Random(seed)
    source = rng.randbytes(rng.randrange(1, 20000))
    target = derived_target(source, seed)
    patch = bytearray(
        support.make_patch(xd_dir / "c", source, target, (*support.NERVESHUB_FLAGS, "-W", "16384"))
    )
    at = int(where * len(patch))
    if mutation == "truncate":
        del patch[at:]
    elif mutation == "flip":
        patch[at] ^= 1 << rng.randrange(8)
    elif mutation == "insert":
        patch[at:at] = bytes([rng.randrange(256)])
    else:
        del patch[at]
    results = {
        name: decode(b, bytes(patch), source, [rng.randrange(1, 999)] * 5)
        for name, b in BACKENDS.items()
    }
    assert results["python"] == results["native"]
    out, error = results["native"]
    if (
        error is None
    ):  # a harmless change (e.g. inside the adler32-free padding): output still whole
        assert len(b"".join(out)) <= len(target) * 2
    else:
        assert error.startswith("VCDIFF: ")
        assert b"".join(out) == target[: len(b"".join(out))] or mutation != "truncate"


# Hand-assembled windows (RFC 3284 default code table), as in tests/native/test_vcdiff.c.
SOURCE = b"0123456789AB"
TARGET1 = b"HIxxxx2345HIxxxxxxxx2345"


def hand_patch(second_window: bool = True, adler: int | None = None) -> bytes:
    data, inst, addr = b"HIx", bytes([3, 0, 4, 20, 38, 68, 116]), bytes([0, 10, 2, 0])
    checksum = zlib.adler32(TARGET1) if adler is None else adler
    window = bytes([0x05, 8, 2, 1 + 1 + 3 + 4 + len(data) + len(inst) + len(addr), 24, 0, 3, 7, 4])
    window += checksum.to_bytes(4, "big") + data + inst + addr
    second = bytes([0x02, 4, 0, 7, 4, 0, 0, 1, 1, 20, 0]) if second_window else b""
    return b"\xd6\xc3\xc4\x00\x00" + window + second


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_instruction_kind_address_mode_and_target_window(backend: str) -> None:
    out: list[bytes] = []
    decoded = bytearray()

    def sink(piece: bytes) -> None:
        out.append(piece)
        decoded.extend(piece)

    class TargetReader:
        def read(self, offset: int, length: int) -> bytes:
            return bytes(decoded[offset : offset + length])

    decoder = BACKENDS[backend].VcdiffDecoder(sink, Reader(SOURCE), 0, len(SOURCE), TargetReader())
    patch = hand_patch()
    for byte in range(len(patch)):
        decoder.feed(patch[byte : byte + 1])
    decoder.finish()
    assert bytes(decoded) == TARGET1 + b"HIxx"
    assert decoder.target_size == 28


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_target_window_without_a_target_reader(backend: str) -> None:
    assert decode(BACKENDS[backend], hand_patch(), SOURCE) == (
        [TARGET1],
        "VCDIFF: VCD_TARGET windows are not supported here",
    )


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_adler32_is_verified(backend: str) -> None:
    bad = zlib.adler32(TARGET1) ^ 0x10000
    assert decode(BACKENDS[backend], hand_patch(False, bad), SOURCE) == (
        [],
        "VCDIFF: adler32 mismatch in window 0",
    )


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_errors_are_sticky(backend: str) -> None:
    decoder = BACKENDS[backend].VcdiffDecoder(lambda b: None, Reader(SOURCE), 0, len(SOURCE))
    with pytest.raises(ArchiveError, match="bad magic"):
        decoder.feed(b"PK\x03\x04")
    with pytest.raises(ArchiveError, match="bad magic"):
        decoder.feed(hand_patch())
    with pytest.raises(ArchiveError, match="bad magic"):
        decoder.finish()


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_sink_exceptions_propagate(backend: str) -> None:
    def sink(piece: bytes) -> None:
        raise OSError("disk full")

    decoder = BACKENDS[backend].VcdiffDecoder(sink, Reader(SOURCE), 0, len(SOURCE))
    with pytest.raises(OSError, match="disk full"):
        decoder.feed(hand_patch(False))
    with pytest.raises(ArchiveError, match="disk full"):
        decoder.finish()


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_large_target_streams_in_bounded_pieces(backend: str, xd_dir: Path) -> None:
    """A 20 MiB target in 8 MiB xdelta3 windows: pieces of at most 1 MiB reach the sink."""
    rng = random.Random(7)
    source = rng.randbytes(4 << 20) * 5
    target = bytearray(source)
    for at in range(0, len(target), 1 << 20):
        target[at : at + 64] = rng.randbytes(64)
    patch = support.make_patch(xd_dir / "big", source, bytes(target))
    sizes: list[int] = []
    digest = zlib.crc32(b"")

    def sink(piece: bytes) -> None:
        nonlocal digest
        sizes.append(len(piece))
        digest = zlib.crc32(piece, digest)

    reader = Reader(source)
    decoder = BACKENDS[backend].VcdiffDecoder(sink, reader, 0, len(source))
    for at in range(0, len(patch), 65536):
        decoder.feed(patch[at : at + 65536])
    decoder.finish()
    assert sum(sizes) == len(target) and max(sizes) <= 1 << 20
    assert digest == zlib.crc32(target)
