"""Streaming VCDIFF (RFC 3284) decoder for xdelta3 patches; the reference for src/native/nh_vcdiff.c.

Patch bytes are fed in any pieces; each complete window (at most 16 MiB of
target) is decoded and handed to ``sink`` in pieces of at most 1 MiB.
``source`` (VCD_SOURCE windows) and ``target`` (VCD_TARGET windows: the
target written so far) are readers with ``read(offset, length) -> bytes``,
read at ``source_offset`` / ``target_offset`` through a small block cache.
Supported: the default code table, the near/same address cache, xdelta3's
application header (skipped) and adler32 window checksum (verified).
Not supported: secondary compression (``xdelta3 -S none`` makes patches
without it) and custom code tables.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Protocol

from nhlink.errors import ArchiveError

MAX_WINDOW = 16 << 20
_MAX_APPHEADER = 1 << 20
_MAX_BODY = 4 * MAX_WINDOW
_WRITE_PIECE = 1 << 20
_SEG_BLOCK = 64 * 1024
_SEG_SLOTS = 16
_NEAR, _SAME = 4, 3
_NOOP, _ADD, _RUN, _COPY = 0, 1, 2, 3
_HEADER, _WINDOW, _BODY, _FAILED = 0, 1, 2, 3
_MAGIC = b"\xd6\xc3\xc4"
_UINT64_MAX = (1 << 64) - 1
_MAX_OFFSET = 1 << 63  # as in the native binding: offset + position never wraps in uint64
_SECONDARY = "VCDIFF: secondary compression is not supported (make the patch with xdelta3 -S none)"
_NEED_MORE = -1

Instruction = tuple[int, int, int]  # type, size, mode


class Reader(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...


def _build_table() -> list[tuple[Instruction, Instruction]]:
    noop: Instruction = (_NOOP, 0, 0)
    table: list[tuple[Instruction, Instruction]] = [((_RUN, 0, 0), noop)]
    table += [((_ADD, size, 0), noop) for size in range(18)]
    for mode in range(9):
        table += [((_COPY, size, mode), noop) for size in (0, *range(4, 19))]
    for mode in range(9):
        copy_sizes = range(4, 7) if mode < 6 else range(4, 5)
        table += [
            ((_ADD, add, 0), (_COPY, copy, mode)) for add in range(1, 5) for copy in copy_sizes
        ]
    table += [((_COPY, 4, mode), (_ADD, 1, 0)) for mode in range(9)]
    assert len(table) == 256
    return table


_TABLE = _build_table()


class _Corrupt(Exception):
    pass


def _get_int(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int]:
    """(value, new position); position ``_NEED_MORE`` if incomplete; ArchiveError if over-long."""
    value = 0
    for _ in range(9):
        if pos >= end:
            return 0, _NEED_MORE
        byte = buf[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos
    raise ArchiveError("VCDIFF: bad integer")


class VcdiffDecoder:
    """Decode one xdelta3/VCDIFF patch; see the module docstring."""

    def __init__(
        self,
        sink: Callable[[bytes], object],
        source: Reader | None = None,
        source_offset: int = 0,
        source_size: int = 0,
        target: Reader | None = None,
        target_offset: int = 0,
    ) -> None:
        if source_offset < 0 or source_size < 0 or target_offset < 0:
            raise ValueError("offsets and sizes must not be negative")
        if source_offset + source_size > _MAX_OFFSET or target_offset > _MAX_OFFSET:
            raise ValueError("offsets and sizes must not exceed 2**63")
        self._sink = sink
        self._source, self._source_offset, self._source_size = source, source_offset, source_size
        self._target, self._target_offset = target, target_offset
        self._stage = _HEADER
        self._failure = ""
        self._buf = bytearray()
        self._index = 0
        self._target_total = 0
        self._slots: list[tuple[int, int, bytes]] = []  # (kind, block, data)
        self._victim = 0
        self._win: tuple[int, int, int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0, 0, 0)

    @property
    def target_size(self) -> int:
        """Target bytes decoded (and handed to the sink) so far."""
        return self._target_total

    # ------------------------------------------------------------------ driving

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume ``data``, decoding (and sinking) every window it completes."""
        self._check_failed()
        self._buf += data
        try:
            while self._step():
                pass
        except ArchiveError as error:
            self._stage, self._failure = _FAILED, str(error)
            raise
        except BaseException as error:
            self._stage, self._failure = _FAILED, str(error) or type(error).__name__
            raise

    def finish(self) -> None:
        """The patch ended: fail unless it ended between windows."""
        self.feed(b"")
        if self._stage == _HEADER:
            self._fail("VCDIFF: patch ends inside its header")
        if self._stage != _WINDOW or self._buf:
            self._fail(f"VCDIFF: patch ends inside window {self._index}")

    def _check_failed(self) -> None:
        if self._stage == _FAILED:
            raise ArchiveError(self._failure)

    def _fail(self, message: str) -> None:
        self._stage, self._failure = _FAILED, message
        raise ArchiveError(message)

    def _step(self) -> bool:
        if self._stage == _HEADER:
            if self._parse_header():
                self._stage = _WINDOW
                return True
            return False
        if self._stage == _WINDOW:
            if self._buf and self._parse_window():
                self._stage = _BODY
                return True
            return False
        body = self._win[5] + self._win[6] + self._win[7]
        if len(self._buf) < body:
            return False
        self._decode_window()
        del self._buf[:body]
        self._stage = _WINDOW
        return True

    # ------------------------------------------------------------------ headers

    def _parse_header(self) -> bool:
        buf, end = self._buf, len(self._buf)
        if end < 5:
            if buf[: min(end, 3)] != _MAGIC[: min(end, 3)]:
                raise ArchiveError("VCDIFF: not a VCDIFF patch (bad magic)")
            return False
        if buf[:3] != _MAGIC or buf[3] != 0:
            raise ArchiveError("VCDIFF: not a VCDIFF patch (bad magic)")
        indicator = buf[4]
        pos = 5
        if indicator & ~7:
            raise ArchiveError(f"VCDIFF: bad header indicator 0x{indicator:02x}")
        if indicator & 1:
            raise ArchiveError(_SECONDARY)
        if indicator & 2:
            raise ArchiveError("VCDIFF: custom code tables are not supported")
        if indicator & 4:
            length, pos = _get_int(buf, pos, end)
            if pos == _NEED_MORE:
                return False
            if length > _MAX_APPHEADER:
                raise ArchiveError("VCDIFF: application header too large")
            if end - pos < length:
                return False
            pos += length
        del self._buf[:pos]
        return True

    def _parse_window(self) -> bool:
        buf, end = self._buf, len(self._buf)
        indicator = buf[0]
        pos = 1
        if indicator & ~7 or indicator & 3 == 3:
            raise ArchiveError(f"VCDIFF: bad window indicator 0x{indicator:02x}")
        seg_len = seg_pos = 0
        if indicator & 3:
            seg_len, pos = _get_int(buf, pos, end)
            if pos == _NEED_MORE:
                return False
            seg_pos, pos = _get_int(buf, pos, end)
            if pos == _NEED_MORE:
                return False
        enc_len, pos = _get_int(buf, pos, end)
        if pos == _NEED_MORE:
            return False
        enc_start = pos
        fields: list[int] = []
        for index in range(4):
            if index == 1:
                if pos >= end:
                    return False
                delta_indicator = buf[pos]
                pos += 1
                if delta_indicator & ~7:
                    raise ArchiveError(f"VCDIFF: bad delta indicator 0x{delta_indicator:02x}")
                if delta_indicator:
                    raise ArchiveError(_SECONDARY)
            value, pos = _get_int(buf, pos, end)
            if pos == _NEED_MORE:
                return False
            fields.append(value)
        adler = 0
        if indicator & 4:
            if end - pos < 4:
                return False
            adler = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
        target_len, data_len, inst_len, addr_len = fields
        if target_len > MAX_WINDOW:
            raise ArchiveError(f"VCDIFF: window too large ({target_len} bytes)")
        body = data_len + inst_len + addr_len
        if max(data_len, inst_len, addr_len, body) > _MAX_BODY or enc_len != pos - enc_start + body:
            raise ArchiveError(
                "VCDIFF: window section lengths do not match the delta encoding length"
            )
        if indicator & 1:
            if seg_pos > self._source_size or seg_len > self._source_size - seg_pos:
                raise ArchiveError(
                    f"VCDIFF: source segment outside the source (position {seg_pos}, "
                    f"size {seg_len}, source size {self._source_size})"
                )
        elif indicator & 2:
            if self._target is None:
                raise ArchiveError("VCDIFF: VCD_TARGET windows are not supported here")
            if seg_pos > self._target_total or seg_len > self._target_total - seg_pos:
                raise ArchiveError(
                    f"VCDIFF: target segment outside the decoded target (position {seg_pos}, "
                    f"size {seg_len}, decoded {self._target_total})"
                )
        self._win = (indicator, seg_len, seg_pos, target_len, adler, data_len, inst_len, addr_len)
        del self._buf[:pos]
        return True

    # ------------------------------------------------------------------ windows

    def _segment(self, kind: int, offset: int, length: int) -> bytes:
        out = bytearray()
        limit = self._source_size if kind == 0 else self._target_total
        while length > 0:
            block = offset // _SEG_BLOCK
            data = next((d for k, b, d in self._slots if k == kind and b == block), None)
            if data is None:
                start = block * _SEG_BLOCK
                reader, base = (
                    (self._source, self._source_offset)
                    if kind == 0
                    else (self._target, self._target_offset)
                )
                assert reader is not None
                want = min(_SEG_BLOCK, limit - start)
                data = bytes(reader.read(base + start, want))
                if len(data) != want:
                    what = "source" if kind == 0 else "target"
                    raise ArchiveError(f"VCDIFF: short read from the {what}")
                entry = (kind, block, data)
                if len(self._slots) < _SEG_SLOTS:
                    self._slots.append(entry)
                else:
                    self._slots[self._victim] = entry
                self._victim = (self._victim + 1) % _SEG_SLOTS
            inside = offset - block * _SEG_BLOCK
            if inside >= len(data):
                raise _Corrupt("bad copy address")
            piece = data[inside : inside + length]
            out += piece
            offset += len(piece)
            length -= len(piece)
        return bytes(out)

    def _decode_window(self) -> None:
        try:
            target = self._decode_instructions()
        except _Corrupt as error:
            raise ArchiveError(f"VCDIFF: corrupt window {self._index} ({error})") from None
        indicator, adler = self._win[0], self._win[4]
        if indicator & 4 and zlib.adler32(target) != adler:
            raise ArchiveError(f"VCDIFF: adler32 mismatch in window {self._index}")
        view = memoryview(target)
        for offset in range(0, len(target), _WRITE_PIECE):
            piece = bytes(view[offset : offset + _WRITE_PIECE])
            self._sink(piece)
            self._target_total += len(piece)
        self._index += 1

    def _decode_instructions(self) -> bytearray:
        indicator, seg_len, seg_pos, target_len, _, data_len, inst_len, addr_len = self._win
        kind = 1 if indicator & 2 else 0
        if kind == 1:  # the target grew since the last window: drop its cached blocks
            self._slots = [slot for slot in self._slots if slot[0] != 1]
            self._victim %= max(len(self._slots), 1)
        buf = bytes(self._buf[: data_len + inst_len + addr_len])
        data, data_end = 0, data_len
        inst, inst_end = data_end, data_end + inst_len
        addr, addr_end = inst_end, inst_end + addr_len
        near = [0] * _NEAR
        next_near = 0
        same = [0] * (_SAME * 256)
        out = bytearray(target_len)
        pos = 0
        while inst < inst_end:
            opcode = buf[inst]
            inst += 1
            for kind_, table_size, mode in _TABLE[opcode]:
                if kind_ == _NOOP:
                    continue
                size = table_size
                if size == 0:
                    try:
                        size, inst = _get_int(buf, inst, inst_end)
                    except ArchiveError:
                        inst = _NEED_MORE
                    if inst == _NEED_MORE:
                        raise _Corrupt("instruction section overrun")
                if size > target_len - pos:
                    raise _Corrupt("instruction overruns the target window")
                if kind_ == _ADD:
                    if size > data_end - data:
                        raise _Corrupt("data section overrun")
                    out[pos : pos + size] = buf[data : data + size]
                    data += size
                elif kind_ == _RUN:
                    if data >= data_end:
                        raise _Corrupt("data section overrun")
                    out[pos : pos + size] = bytes([buf[data]]) * size
                    data += 1
                else:
                    here = seg_len + pos
                    if mode < 2 + _NEAR:
                        try:
                            value, addr = _get_int(buf, addr, addr_end)
                        except ArchiveError:
                            addr = _NEED_MORE
                        if addr == _NEED_MORE:
                            raise _Corrupt("address section overrun")
                        if mode == 0:
                            address = value
                        elif mode == 1:
                            if value > here:
                                raise _Corrupt("bad copy address")
                            address = here - value
                        else:
                            if value > _UINT64_MAX - near[mode - 2]:
                                raise _Corrupt("bad copy address")
                            address = near[mode - 2] + value
                    else:
                        if addr >= addr_end:
                            raise _Corrupt("address section overrun")
                        address = same[(mode - 2 - _NEAR) * 256 + buf[addr]]
                        addr += 1
                    if address >= here:
                        raise _Corrupt("bad copy address")
                    near[next_near] = address
                    next_near = (next_near + 1) % _NEAR
                    same[address % (_SAME * 256)] = address
                    self._copy(out, pos, size, address, seg_len, seg_pos, kind)
                pos += size
        if pos != target_len:
            raise _Corrupt("target window incomplete")
        if data != data_end or addr != addr_end:
            raise _Corrupt("unused data or addresses")
        return out

    def _copy(
        self,
        out: bytearray,
        pos: int,
        size: int,
        address: int,
        seg_len: int,
        seg_pos: int,
        kind: int,
    ) -> None:
        if address < seg_len:
            count = min(seg_len - address, size)
            out[pos : pos + count] = self._segment(kind, seg_pos + address, count)
            pos, size, address = pos + count, size - count, address + count
        if size <= 0:
            return
        start = address - seg_len
        if start + size <= pos:
            out[pos : pos + size] = out[start : start + size]
            return
        # Overlapping copy: out[start:] repeats with period pos - start, so copying from the
        # fixed start doubles the copied run each round (byte-by-byte semantics, log(n) steps).
        while size > 0:
            count = min(size, pos - start)
            out[pos : pos + count] = out[start : start + count]
            pos, size = pos + count, size - count
