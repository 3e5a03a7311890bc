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
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from nhlink import _native
from nhlink._native.events import ArchiveEnd, DataChunk, EntryEnd, EntryStart
from nhlink.errors import NHLinkError

PREFIX_LEN = 5
VCDIFF_PREFIX_LEN = 9
VCDIFF_OUTPUT_CAP = 64 << 20
VCDIFF_CACHE_OFFSET = 1000
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


def first_difference(a: Sequence[object], b: Sequence[object]) -> str:
    """Where two traces part: the first differing item, else their lengths."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"item {i}: {x!r:.300} != {y!r:.300}"
    return f"lengths {len(a)} != {len(b)}"


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


# ----------------------------------------------------------------------------- NervesKey

NERVESKEY_SIGNER = 1
"""Mode bit 0: rebuild the signer certificate (slots 12 + 11), else the device one (slot 10)."""
NERVESKEY_OWN_KEYS = 2
"""Mode bit 1: public keys, device SN and OTP serial come from the input, not the fixture."""
NERVESKEY_TEMPLATE_HEADER = 4
"""Mode bit 2: force bytes 67..71 to the template's ids, so dates and R‖S are exercised."""
NERVESKEY_OVERRIDE = 8
"""Mode bit 3 (device only): the fixture PEM's serial and validity override the slot's."""
NERVESKEY_OTP_SERIAL = 16
"""Mode bit 4 (device, fixture keys): the OTP serial bytes are the rest of the input."""
OTP_SERIAL_SIZE = 48


def _vectors_dir() -> str:
    env = os.environ.get("NHLINK_VECTORS")
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(os.path.dirname(repo), "shared", "vectors")


_FIXTURE: dict[str, Any] = {}


def nerveskey_fixture() -> dict[str, Any]:
    """The NervesKey provisioning fixture (vectors/nerveskey), read once at run time."""
    if not _FIXTURE:
        import datetime
        import json

        path = os.path.join(_vectors_dir(), "nerveskey", "vectors.json")
        with open(path, encoding="utf-8") as file:
            fixture = json.load(file)["nerveskey_certificates"]
        device = fixture["derived"]["device_cert"]

        def when(text: str) -> datetime.datetime:
            return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))

        _FIXTURE.update(
            slots={int(k): bytes.fromhex(v) for k, v in fixture["expected_slots"].items()},
            device_xy=bytes.fromhex(fixture["derived"]["device_public_key_xy_genkey"]),
            signer_xy=bytes.fromhex(fixture["expected_slots"]["11"])[:64],
            device_sn=bytes.fromhex(fixture["inputs"]["device_sn"]),
            manufacturer_sn=fixture["inputs"]["manufacturer_sn"],
            serial=int(device["serial_hex"], 16),
            validity=(when(device["not_before"]), when(device["not_after"])),
        )
    return _FIXTURE


def _template_header(signer: bool) -> bytes:
    from nhlink.nerves_key import certs

    if signer:
        return bytes((0, 0, certs.SIGNER_TEMPLATE_ID << 4, certs.SN_SOURCE_PUBLIC_KEY << 4, 0))
    return bytes((0, 0, certs.DEVICE_TEMPLATE_ID << 4, certs.SN_SOURCE_DEVICE_SN << 4, 0))


def nerveskey_outcome(data: bytes) -> Trace:
    """Rebuild a certificate from a 72-byte compressed one (nhlink.nerves_key.certs).

    Input layout: u8 mode | 72 compressed bytes | with NERVESKEY_OWN_KEYS: signer
    X‖Y (64) for a signer; device X‖Y (64) | signer X‖Y (64) | device SN (9) | OTP
    serial bytes (<= 48, decoded as decode_otp does) for a device; with
    NERVESKEY_OTP_SERIAL and the fixture's keys, just the OTP serial bytes. Only
    CertificateError may come out; decoded dates must re-encode to the same
    bytes, and a rebuilt certificate (slot dates) must compress back to the input.
    """
    from nhlink.nerves_key import certs
    from nhlink.nerves_key.errors import CertificateError
    from nhlink.nerves_key.nerves_key import trim_zeros

    if len(data) < 1 + certs.COMPRESSED_SIZE:
        return []
    mode, compressed, rest = data[0], bytearray(data[1:73]), data[73:]
    signer = bool(mode & NERVESKEY_SIGNER)
    if mode & NERVESKEY_TEMPLATE_HEADER:
        compressed[67:72] = _template_header(signer)
    compressed_bytes = bytes(compressed)
    trace: Trace = []
    try:
        dates = certs.decode_dates(compressed_bytes[64:67])
    except CertificateError as exc:
        trace.append(_failure(exc))
    else:
        again = certs.encode_dates(dates.not_before, dates.expire_years)
        if again != compressed_bytes[64:67]:
            raise AssertionError(
                f"dates {compressed_bytes[64:67].hex()} re-encode as {again.hex()}"
            )
        trace.append(("dates", dates.not_before.isoformat(), dates.not_after.isoformat()))
    fixture = nerveskey_fixture()
    own = bool(mode & NERVESKEY_OWN_KEYS)
    override = not signer and bool(mode & NERVESKEY_OVERRIDE)
    try:
        if signer:
            signer_xy = rest[:64] if own else fixture["signer_xy"]
            certificate = certs.rebuild_signer_certificate(compressed_bytes, signer_xy)
        else:
            if own:
                device_xy, signer_xy, device_sn = rest[:64], rest[64:128], rest[128:137]
                serial_bytes = trim_zeros(rest[137 : 137 + OTP_SERIAL_SIZE])
                manufacturer_sn = serial_bytes.decode("ascii", "replace")
            else:
                device_xy, signer_xy = fixture["device_xy"], fixture["signer_xy"]
                device_sn, manufacturer_sn = fixture["device_sn"], fixture["manufacturer_sn"]
                if mode & NERVESKEY_OTP_SERIAL:
                    serial_bytes = trim_zeros(rest[:OTP_SERIAL_SIZE])
                    manufacturer_sn = serial_bytes.decode("ascii", "replace")
            certificate = certs.rebuild_device_certificate(
                compressed_bytes,
                device_xy,
                device_sn,
                manufacturer_sn,
                signer_xy,
                serial=fixture["serial"] if override else None,
                validity=fixture["validity"] if override else None,
            )
    except CertificateError as exc:
        trace.append(_failure(exc))
        return trace
    if not override:
        template = certs.SIGNER_TEMPLATE_ID if signer else certs.DEVICE_TEMPLATE_ID
        source = certs.SN_SOURCE_PUBLIC_KEY if signer else certs.SN_SOURCE_DEVICE_SN
        back = certs.compress_certificate(
            certificate,
            template_id=template,
            sn_source=source,
            expire_years=certs.decode_dates(compressed_bytes[64:67]).expire_years,
        )
        if back != compressed_bytes:
            raise AssertionError(f"rebuilt certificate compresses to {back.hex()}")
    trace.append(("rebuilt", certificate.serial_number))
    return trace


# ----------------------------------------------------------------------------- vcdiff


class _SourceReader:
    """The fuzz input's source bytes; a read outside them is a decoder bug."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > len(self.data):
            raise AssertionError(f"source read {offset}+{length} outside {len(self.data)} bytes")
        return self.data[offset : offset + length]


class _TargetSink:
    """Collects the decoded target (refusing more than VCDIFF_OUTPUT_CAP) and reads it back."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.pieces: list[int] = []

    def __call__(self, piece: bytes) -> None:
        if not 0 < len(piece) <= 1 << 20:
            raise AssertionError(f"sink piece of {len(piece)} bytes")
        if len(self.data) + len(piece) > VCDIFF_OUTPUT_CAP:
            raise NHLinkError("output cap reached")
        self.data += piece
        self.pieces.append(len(piece))

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > len(self.data):
            raise AssertionError(f"target read {offset}+{length} outside {len(self.data)} bytes")
        return bytes(self.data[offset : offset + length])


def vcdiff_trace(backend: ModuleType, data: bytes) -> Trace:
    """Input layout (fuzz/c/fuzz_vcdiff.c): u32 LE split seed | u8 flags (bit 0: a target
    reader; bit 1: the source is read through a BlockCache, here only) | u32 LE source
    length | source | patch. The patch goes to
    ``backend.VcdiffDecoder`` in the split seed's pieces; the trace holds the sizes of the
    sink's pieces and ``target_size`` after each feed, then the outcome and the target."""
    if len(data) < VCDIFF_PREFIX_LEN:
        return []
    seed = int.from_bytes(data[:4], "little") | 1
    rest = data[VCDIFF_PREFIX_LEN:]
    source_len = min(int.from_bytes(data[5:9], "little"), len(rest))
    source, patch = rest[:source_len], rest[source_len:]
    flags = data[4]
    if flags & 2:  # the source in a BlockCache (the native decoder reads it without the GIL)
        with tempfile.TemporaryDirectory(prefix="nhlink-fuzz-") as tmp:
            path = os.path.join(tmp, "device")
            with open(path, "wb") as f:
                f.write(b"\xee" * VCDIFF_CACHE_OFFSET + source)
            cache = backend.BlockCache(path, cache_size=1 << 20, verify_writes=False)
            try:
                return _vcdiff_run(backend, cache, VCDIFF_CACHE_OFFSET, source, patch, seed, flags)
            finally:
                cache.close()
    return _vcdiff_run(backend, _SourceReader(source), 0, source, patch, seed, flags)


def _vcdiff_run(
    backend: ModuleType,
    reader: Any,
    offset: int,
    source: bytes,
    patch: bytes,
    seed: int,
    flags: int,
) -> Trace:
    sink = _TargetSink()
    decoder = backend.VcdiffDecoder(sink, reader, offset, len(source), sink if flags & 1 else None)
    trace: Trace = []
    try:
        for piece in pieces(patch, seed):
            decoder.feed(piece)
            trace.append(("fed", decoder.target_size, len(sink.pieces)))
        decoder.finish()
        trace.append(("ok", decoder.target_size))
    except NHLinkError as exc:
        trace.append(_failure(exc))
        try:  # errors are sticky
            decoder.finish()
        except NHLinkError as again:
            if str(again) != str(exc):
                raise AssertionError(f"not sticky: {again} after {exc}") from None
        else:
            raise AssertionError("finish() succeeded after an error") from None
    if decoder.target_size != len(sink.data):
        raise AssertionError(f"target_size {decoder.target_size} != {len(sink.data)} written")
    trace.append(("pieces", sink.pieces))
    trace.append(("target", bytes(sink.data)))
    return trace
