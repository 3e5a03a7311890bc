"""Shared drivers for the atheris harnesses and tests/test_fuzz_regressions.py.

Each driver runs one input through one backend and returns a comparable
trace; only :class:`nhlink.errors.NHLinkError` may escape a backend, and it
is recorded in the trace as ``(class name, message)``. Input layouts and the
split generator match the C harnesses (fuzz/c/fuzz_split.h), so one corpus
serves both.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from nhlink import _native
from nhlink._native.events import ArchiveEnd, DataChunk, EntryEnd, EntryStart
from nhlink.errors import NHLinkError

PREFIX_LEN = 5
SCRATCH_MAX_SIZE = 8 * 1024 * 1024
MASK32 = 0xFFFFFFFF

Trace = list[Any]


def backends() -> list[tuple[str, ModuleType]]:
    """The backends that load here: python always, native when it is built."""
    found = [("python", _native.load("python"))]
    try:
        found.insert(0, ("native", _native.load("native")))
    except ImportError:
        if os.environ.get("NHLINK_REQUIRE_NATIVE", "") not in ("", "0"):
            raise
    return found


class Rng:
    """xorshift32, the same generator as fuzz_split.h."""

    def __init__(self, seed: int) -> None:
        self.state = (seed & MASK32) or 0x9E3779B9

    def next(self) -> int:
        x = self.state
        x ^= (x << 13) & MASK32
        x ^= x >> 17
        x ^= (x << 5) & MASK32
        self.state = x
        return x

    def piece(self) -> int:
        shift = self.next() % 17
        return 1 + self.next() % (1 << shift)


def pieces(data: bytes, seed: int) -> Iterator[bytes]:
    """``data`` cut into the pieces the C harnesses feed for ``seed``."""
    rng = Rng(seed)
    pos = 0
    while pos < len(data):
        size = rng.piece()
        yield data[pos : pos + size]
        pos += size


def _failure(exc: NHLinkError) -> tuple[str, str]:
    return (type(exc).__name__, str(exc))


# ----------------------------------------------------------------------------- zip


def _choose_sink(zs: Any, cache: Any, rng: Rng, event: EntryStart) -> None:
    choice = rng.next() % 5
    if choice == 0:
        zs.sink_skip()
    elif choice == 1:
        limit = event.size if event.size is not None else 1 << 20
        if rng.next() & 1:
            limit //= 2
        zs.sink_collect(limit)
    elif choice == 2:
        zs.sink_hash()
    elif choice == 3:
        zs.sink_chunks()
    elif cache is not None and event.size is not None and event.size <= SCRATCH_MAX_SIZE:
        offset = (rng.next() % 64) * 512
        if rng.next() & 1:
            half = event.size // 2
            hole = 1024 + rng.next() % 4096
            zs.sink_raw_write(cache, offset, [half, hole, event.size - half], event.size)
        else:
            zs.sink_raw_write(cache, offset, None, event.size)


def _append(trace: Trace, event: Any) -> None:
    """Consecutive DataChunks are merged: only their bytes are part of the contract."""
    if isinstance(event, DataChunk) and trace and isinstance(trace[-1], DataChunk):
        trace[-1] = DataChunk(trace[-1].data + event.data)
    else:
        trace.append(event)


def zip_trace(backend: ModuleType, data: bytes) -> tuple[Trace, bytes]:
    """Feed ``data`` (split prefix + archive) to ``backend.ZipStream``.

    Returns the events (with ``units`` after each completed feed and entry)
    ending in the outcome, and the scratch image the raw_write sinks wrote.
    """
    if len(data) < PREFIX_LEN:
        return [], b""
    seed = int.from_bytes(data[:4], "little")
    sink_rng = Rng((0x01000193 * (data[4] + 1)) & MASK32)
    archive = data[PREFIX_LEN:]
    trace: Trace = []
    with tempfile.TemporaryDirectory(prefix="nhlink-fuzz-") as tmp:
        path = os.path.join(tmp, "image")
        open(path, "wb").close()
        cache = backend.BlockCache(
            path, cache_size=1 << 20, verify_writes=False, max_size=SCRATCH_MAX_SIZE
        )
        zs = backend.ZipStream()
        failed = ended = False
        try:
            for piece in pieces(archive, seed):
                view = piece
                while True:
                    consumed, event = zs.feed(view)
                    view = view[consumed:]
                    if event is None:
                        trace.append(("units", zs.units))
                        break
                    _append(trace, event)
                    if isinstance(event, EntryStart):
                        _choose_sink(zs, cache, sink_rng, event)
                    elif isinstance(event, EntryEnd):
                        trace.append(("units", zs.units))
                    elif isinstance(event, ArchiveEnd):
                        ended = True
                        break
                if ended:
                    break
            if not ended:
                trace.append(zs.end_of_input())
        except NHLinkError as exc:
            failed = True
            trace.append(_failure(exc))
        try:
            if failed:
                cache.discard()
            else:
                cache.flush()
        except NHLinkError as exc:
            trace.append(("flush", *_failure(exc)))
        cache.close()
        with open(path, "rb") as image:
            written = image.read()
    return trace, written


# ----------------------------------------------------------------------------- framing


def packet_trace(backend: ModuleType, data: bytes) -> Trace:
    """Input layout: u32 LE split seed | bytes, fed to a PacketDecoder."""
    if len(data) < 4:
        return []
    decoder = backend.PacketDecoder()
    payload = bytearray()
    trace: Trace = []
    for piece in pieces(data[4:], int.from_bytes(data[:4], "little")):
        for part in decoder.feed(piece):
            payload += part
    trace.append(bytes(payload))
    trace.append(decoder.finished)
    try:
        decoder.check_eof()
    except NHLinkError as exc:
        trace.append(_failure(exc))
    return trace


def frame_trace(backend: ModuleType, data: bytes) -> Trace:
    """Input layout: u32 LE split seed | bytes, fed to a FrameDecoder."""
    if len(data) < 4:
        return []
    decoder = backend.FrameDecoder()
    trace: Trace = []
    seed = int.from_bytes(data[:4], "little") ^ 0x5BD1E995
    try:
        for piece in pieces(data[4:], seed):
            trace.extend(decoder.feed(piece))
        trace.append(("pending", decoder.pending))
    except NHLinkError as exc:
        trace.append(_failure(exc))
    return trace


# ----------------------------------------------------------------------------- U-Boot


def uboot_trace(backend: ModuleType, data: bytes) -> Trace:
    """Input layout: u8 mode | block; decode, then re-encode.

    Mode bit 0: redundant; bit 1: recompute the CRC first (to reach the parser).
    """
    if not data:
        return []
    redundant = bool(data[0] & 1)
    block = data[1:]
    header = 5 if redundant else 4
    if data[0] & 2 and len(block) >= header:
        block = zlib.crc32(block[header:]).to_bytes(4, "little") + block[4:]
    try:
        variables, flags = backend.uboot_env_decode(block, redundant)
    except NHLinkError as exc:
        return [_failure(exc)]
    trace: Trace = [sorted(variables.items()), flags]
    try:
        again = backend.uboot_env_encode(variables, len(block), redundant, flags)
    except NHLinkError as exc:
        trace.append(_failure(exc))
    else:
        trace.append(backend.uboot_env_decode(again, redundant) == (variables, flags))
    return trace


# ----------------------------------------------------------------------------- parsers


def metaconf_outcome(data: bytes) -> Trace:
    """Parse ``data`` as meta.conf text (the engine's UTF-8 step included)."""
    from nhlink.fwup.metaconf import parse_meta_conf

    try:
        conf = parse_meta_conf(data.decode("utf-8"), {"FWUP_META_UUID": "u"})
    except UnicodeDecodeError:
        return ["not utf-8"]
    except NHLinkError as exc:
        return [_failure(exc)]
    return [len(conf.resources), len(conf.tasks)]


def phoenix_outcome(data: bytes) -> Trace:
    """Decode ``data`` as a Phoenix frame; a decoded frame must re-encode to an equal one."""
    from nhlink.protocol.frames import decode_frame, encode_frame

    try:
        frame = decode_frame(data)
    except NHLinkError as exc:
        return [_failure(exc)]
    if decode_frame(encode_frame(frame)) != frame:
        raise AssertionError(f"Phoenix frame does not survive a round trip: {frame!r}")
    return [frame.topic, frame.event]
