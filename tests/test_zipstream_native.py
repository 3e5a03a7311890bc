"""Native ZipStream specifics: the GIL, buffer handling, the cache link and error classes.

The behaviour shared with the pure-Python backend is covered by the backend and
differential tests; these check what only the Cython binding can get wrong.
"""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from nhlink import _native
from nhlink._native.events import ArchiveEnd, DataChunk, EntryEnd, EntryStart
from nhlink.errors import ArchiveError, DestinationError
from tests.helpers.vectors import vectors_dir

try:
    NATIVE: ModuleType | None = _native.load("native")
except ImportError:  # pragma: no cover - depends on the build
    NATIVE = None

pytestmark = pytest.mark.skipif(NATIVE is None, reason="native backend not built")

PAYLOAD = bytes(range(256)) * 1200 + b"end"  # 307203 bytes: crosses a 256 KiB ring buffer


def native() -> Any:
    assert NATIVE is not None
    return NATIVE


def stored_entry(name: bytes, payload: bytes) -> bytes:
    """One stored entry with its sizes and CRC in the local header."""
    size = len(payload)
    header = struct.pack(
        "<4sHHHHHIIIHH",
        b"PK\x03\x04",
        20,
        0,
        0,
        0,
        0x21,
        zlib.crc32(payload),
        size,
        size,
        len(name),
        0,
    )
    return header + name + payload


def golden(name: str) -> bytes:
    return (vectors_dir() / "fw" / name).read_bytes()


def test_feed_releases_the_gil() -> None:
    data = golden("03_large_8mib.fw")
    counter = 0
    stop = False

    def spin() -> None:
        nonlocal counter
        while not stop:
            counter += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        stream = native().ZipStream()
        view = memoryview(data)
        progressed = []
        while True:
            before = counter
            consumed, event = stream.feed(view)
            progressed.append(counter - before)
            view = view[consumed:]
            if event is None:
                break
            if isinstance(event, EntryStart):
                stream.sink_hash()
    finally:
        stop = True
        spinner.join()
    # The 8 MiB entry is inflated and hashed inside one feed call; Python code ran meanwhile.
    assert max(progressed) > 100


def test_feed_keeps_no_reference_to_the_input() -> None:
    buffer = bytearray(stored_entry(b"data/a", PAYLOAD) + b"PK\x05\x06" + bytes(18))
    stream = native().ZipStream()
    consumed, event = stream.feed(buffer)
    assert isinstance(event, EntryStart)
    stream.sink_chunks()
    del buffer[:consumed]  # resizing fails with BufferError while an export is alive
    received = bytearray()
    while True:
        consumed, event = stream.feed(buffer)
        del buffer[:consumed]
        if isinstance(event, DataChunk):
            received += event.data
        elif isinstance(event, ArchiveEnd):
            break
    assert received == PAYLOAD
    assert stream.units == len(PAYLOAD)
    broken = bytearray(b"XXXX")
    with pytest.raises(ArchiveError, match="unexpected data at archive offset"):
        stream = native().ZipStream()
        stream.feed(broken)
    broken.extend(b"more")  # released on the error path too


def raw_write_until_error(stream: Any, cache: Any, archive: bytes, size: int) -> None:
    view = memoryview(archive)
    while True:
        consumed, event = stream.feed(view[:4096])
        view = view[consumed:]
        if isinstance(event, EntryStart):
            stream.sink_raw_write(cache, 0, None, size)
        if isinstance(event, EntryEnd):
            return


def test_cache_errors_raise_destination_error(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(bytes(65536))
    cache = native().BlockCache(str(image), max_size=65536)
    stream = native().ZipStream()
    with pytest.raises(DestinationError, match="past the end"):
        raw_write_until_error(stream, cache, stored_entry(b"data/a", PAYLOAD), len(PAYLOAD))
    with pytest.raises(DestinationError, match="past the end"):  # the stream stays dead
        stream.feed(b"")
    cache.close()


def test_a_cache_closed_during_raw_write_is_noticed(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(bytes(1 << 20))
    cache = native().BlockCache(str(image))
    archive = stored_entry(b"data/a", PAYLOAD)
    stream = native().ZipStream()
    consumed, event = stream.feed(archive[:100])
    assert isinstance(event, EntryStart)
    stream.sink_raw_write(cache, 0, None, len(PAYLOAD))
    cache.close()
    with pytest.raises(DestinationError):
        stream.feed(archive[consumed:])
    closed = native().ZipStream()
    _, event = closed.feed(archive[:100])
    with pytest.raises(DestinationError):
        closed.sink_raw_write(cache, 0, None, len(PAYLOAD))


def test_sink_arguments_are_checked(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(bytes(4096))
    cache = native().BlockCache(str(image))
    stream = native().ZipStream()
    archive = stored_entry(b"data/a", b"abc")
    consumed, event = stream.feed(archive)
    assert isinstance(event, EntryStart)
    with pytest.raises(ValueError):
        stream.sink_raw_write(cache, 0, [2, 10, 2], 3)  # data runs add up to 4
    with pytest.raises(ValueError):
        stream.sink_raw_write(cache, -512, None, 3)
    with pytest.raises(TypeError):
        stream.sink_raw_write(str(image), 0, None, 3)
    with pytest.raises(ValueError):
        stream.sink_collect(-1)
    stream.sink_raw_write(cache, 512, [3, 509], 3)
    _, end = stream.feed(archive[consumed:])
    assert isinstance(end, EntryEnd) and end.size == 3
    cache.flush()
    cache.close()
    assert image.read_bytes()[512:1024] == b"abc" + bytes(509)


def test_crypto_helpers_use_pynacl() -> None:
    import hashlib

    import nacl.signing

    key = nacl.signing.SigningKey(bytes(range(32)))
    signed = key.sign(b"meta.conf bytes")
    public = bytes(key.verify_key)
    assert native().verify_ed25519(signed.signature, b"meta.conf bytes", public)
    assert not native().verify_ed25519(signed.signature, b"meta.conf bytez", public)
    assert not native().verify_ed25519(signed.signature[:63], b"meta.conf bytes", public)
    for size in (0, 1, 200_000):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        assert (
            native().blake2b_256(memoryview(data)) == hashlib.blake2b(data, digest_size=32).digest()
        )
