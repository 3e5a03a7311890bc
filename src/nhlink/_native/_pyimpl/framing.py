"""fwup's --framing formats: stdin packets in, typed frames out (spec 4.1)."""

from __future__ import annotations

import struct

from nhlink.errors import FramingError

_LENGTH = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">2sH")
_MAX_FRAME = 1024 * 1024
_MAX_PACKET = 0xFFFFFFFF


def encode_packet(data: bytes) -> bytes:
    """One input packet: u32 BE length, then the bytes (empty data = end of input)."""
    if len(data) > _MAX_PACKET:
        raise ValueError("packet too large")
    return _LENGTH.pack(len(data)) + bytes(data)


def encode_frame(type: str, code: int, text: str) -> bytes:
    """One output frame: u32 BE length | 2-byte type | u16 BE code | text."""
    raw_type = type.encode("latin-1")
    if len(raw_type) != 2:
        raise ValueError("a frame type is two latin-1 characters")
    if not 0 <= code <= 0xFFFF:
        raise ValueError("a frame code fits in 16 bits")
    raw_text = text.encode("utf-8")
    if len(raw_text) > _MAX_FRAME - _FRAME_HEAD.size:
        raise FramingError(f"Frame text too long ({len(raw_text)} bytes)")
    return (
        _LENGTH.pack(_FRAME_HEAD.size + len(raw_text)) + _FRAME_HEAD.pack(raw_type, code) + raw_text
    )


class PacketDecoder:
    """Decode stdin packets; a zero-length packet ends the input (later bytes are ignored)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once the zero-length packet arrived."""
        return self._finished

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Return the payloads completed by ``data``."""
        if self._finished:
            return []
        buffer = self._buffer
        buffer += data
        payloads: list[bytes] = []
        pos = 0
        while len(buffer) - pos >= _LENGTH.size:
            length = _LENGTH.unpack_from(buffer, pos)[0]
            if length == 0:
                self._finished = True
                buffer.clear()
                return payloads
            end = pos + _LENGTH.size + length
            if end > len(buffer):
                break
            payloads.append(bytes(buffer[pos + _LENGTH.size : end]))
            pos = end
        del buffer[:pos]
        return payloads

    def check_eof(self) -> None:
        """The input ended: an error when it ended inside a packet."""
        if not self._finished and self._buffer:
            raise FramingError("Received EOF even though framing indicated more bytes")


class FrameDecoder:
    """Decode fwup's framed output into ``(type, code, text)`` tuples."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: str | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[str, int, str]]:
        """Return the frames completed by ``data``."""
        if self._error is not None:
            raise FramingError(self._error)
        buffer = self._buffer
        buffer += data
        frames: list[tuple[str, int, str]] = []
        pos = 0
        while len(buffer) - pos >= _LENGTH.size:
            length = _LENGTH.unpack_from(buffer, pos)[0]
            if not _FRAME_HEAD.size <= length <= _MAX_FRAME:
                self._error = f"Invalid frame length {length}"
                raise FramingError(self._error)
            end = pos + _LENGTH.size + length
            if end > len(buffer):
                break
            raw_type, code = _FRAME_HEAD.unpack_from(buffer, pos + _LENGTH.size)
            text = bytes(buffer[pos + _LENGTH.size + _FRAME_HEAD.size : end])
            frames.append((raw_type.decode("latin-1"), code, text.decode("utf-8", "replace")))
            pos = end
        del buffer[:pos]
        return frames
