"""VcdiffDecoder of both backends: real xdelta3 patches, hand-made windows, corrupt input."""

from __future__ import annotations

import random
import time
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


# ---------------------------------------------------------------------------- review findings

EMPTY_WINDOW = bytes([0x00, 5, 0, 0, 0, 0, 0])  # target length 0, no sections
EMPTY_WINDOW_ADLER = bytes([0x04, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1])  # adler32(b"") == 1


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("flags", [support.NERVESHUB_FLAGS, ("-S", "-0", "-f")])
def test_patch_of_an_empty_target(backend: str, flags: tuple[str, ...], xd_dir: Path) -> None:
    """xdelta3 ends the patch of an empty target with an empty window: a valid, empty target."""
    source = random.Random(5).randbytes(3000)
    patch = support.make_patch(xd_dir / "empty", source, b"", flags)
    assert patch.endswith(EMPTY_WINDOW_ADLER[1:])  # the window this test is about
    for pieces in ([len(patch)], [1] * len(patch), [len(patch) - 3]):
        assert decode(BACKENDS[backend], patch, source, pieces) == ([], None)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("empty", [EMPTY_WINDOW, EMPTY_WINDOW_ADLER])
def test_empty_windows_between_and_after_windows(backend: str, empty: bytes) -> None:
    header, window = hand_patch(False)[:5], hand_patch(False)[5:]
    for patch in (header + empty, header + window + empty, header + empty + window):
        for pieces in ([len(patch)], [1] * len(patch)):
            out, error = decode(BACKENDS[backend], patch, SOURCE, pieces)
            assert error is None
            assert b"".join(out) == (TARGET1 if window in patch else b"")


class ShortReader(Reader):
    """Returns one byte less than asked for."""

    def read(self, offset: int, length: int) -> bytes:
        return super().read(offset, length)[:-1]


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_short_source_read_is_reported_the_same_way(backend: str) -> None:
    decoder = BACKENDS[backend].VcdiffDecoder(lambda b: None, ShortReader(SOURCE), 0, len(SOURCE))
    with pytest.raises(ArchiveError) as error:
        decoder.feed(hand_patch(False))
    assert str(error.value) == "VCDIFF: short read from the source"
    with pytest.raises(ArchiveError, match=r"^VCDIFF: short read from the source$"):
        decoder.finish()


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_short_target_read_is_reported_the_same_way(backend: str) -> None:
    decoded = bytearray()

    class ShortTarget:
        def read(self, offset: int, length: int) -> bytes:
            return bytes(decoded[offset : offset + length - 1])

    decoder = BACKENDS[backend].VcdiffDecoder(
        decoded.extend, Reader(SOURCE), 0, len(SOURCE), ShortTarget()
    )
    with pytest.raises(ArchiveError) as error:
        decoder.feed(hand_patch())
    assert str(error.value) == "VCDIFF: short read from the target"
    assert bytes(decoded) == TARGET1


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize(
    ("source_offset", "source_size", "target_offset"),
    [(1 << 63, 1, 0), (1, 1 << 63, 0), (1 << 64, 0, 0), (0, 1 << 64, 0), (0, 0, (1 << 63) + 1)],
)
def test_offsets_past_2_63_are_refused(
    backend: str, source_offset: int, source_size: int, target_offset: int
) -> None:
    with pytest.raises(ValueError, match=r"^offsets and sizes must not exceed 2\*\*63$"):
        BACKENDS[backend].VcdiffDecoder(
            lambda b: None, Reader(b""), source_offset, source_size, None, target_offset
        )
    BACKENDS[backend].VcdiffDecoder(lambda b: None, Reader(b""), (1 << 63) - 5, 5, None, 1 << 63)


def _varint(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def overlap_patch(length: int, seed: bytes) -> bytes:
    """ADD ``seed``, then one COPY (VCD_HERE mode) of ``length - len(seed)`` bytes from the
    start of the window: it overlaps itself, so the target repeats ``seed``."""
    period = len(seed)
    inst = bytes([1]) + _varint(period) + bytes([35]) + _varint(length - period)
    addr = _varint(period)
    body = _varint(length) + b"\x00" + _varint(period) + _varint(len(inst)) + _varint(len(addr))
    sections = seed + inst + addr
    return b"\xd6\xc3\xc4\x00\x00" + b"\x00" + _varint(len(body) + len(sections)) + body + sections


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("period", [1, 2, 3, 7, 64, 1000, 70000])
def test_overlapping_copies_repeat_their_period(backend: str, period: int) -> None:
    seed = random.Random(period).randbytes(period)
    length = 300_007
    out, error = decode(BACKENDS[backend], overlap_patch(length, seed), b"")
    assert error is None
    assert b"".join(out) == (seed * (length // period + 1))[:length]


def test_python_overlapping_copies_are_fast() -> None:
    """16 MiB of a one-byte run (the worst case): one period per step took ~4 s."""
    length = 16 << 20
    started = time.perf_counter()
    out, error = decode(BACKENDS["python"], overlap_patch(length, b"\xa5"), b"")
    elapsed = time.perf_counter() - started
    assert error is None and sum(map(len, out)) == length and out[-1][-1] == 0xA5
    assert elapsed < 1.5, f"{elapsed:.2f}s"
