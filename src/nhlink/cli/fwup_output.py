"""How ``nhlink fwup`` shows frames: framed packets, a progress bar, numbers, or nothing."""

from __future__ import annotations

import enum
import struct
import time
from typing import BinaryIO

BAR_WIDTH = 36


class OutputMode(enum.Enum):
    """fwup's progress modes without ``--framing``."""

    NORMAL = "normal"
    NUMERIC = "numeric"
    QUIET = "quiet"


def encode_frame(kind: str, code: int, text: str) -> bytes:
    """One fwup output packet: u32 BE length, 2-byte type, u16 BE code, text."""
    body = text.encode("utf-8")
    return struct.pack(">I2sH", 4 + len(body), kind.encode("ascii"), code) + body


def _scaled(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.2f} {unit}" if unit != "bytes" else f"{count} bytes"
        value /= 1000
    raise AssertionError("unreachable")


class ProgressPrinter:
    """Renders engine frames on stdout the way fwup does."""

    def __init__(self, stream: BinaryIO, *, mode: OutputMode, framing: bool) -> None:
        self._stream = stream
        self._mode = mode
        self._framing = framing
        self._started = time.monotonic()
        self._last_percent = -1
        self.bytes_in = 0
        self.bytes_out = 0

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._stream.flush()

    def frame(self, kind: str, code: int, text: str) -> None:
        """Show one frame (``PR``, ``WN``, ``ER`` or ``OK``)."""
        if self._framing:
            self._write(encode_frame(kind, code, text))
            return
        if kind == "PR":
            self._progress(code)
        elif kind == "WN" or kind == "ER":
            self._message(text)
        elif kind == "OK":
            self._ok(text)

    def error(self, text: str) -> None:
        """Report a failure that happened outside the engine."""
        self.frame("ER", 0, text)

    def ok(self, text: str = "") -> None:
        """Report success of a command that has no engine."""
        self.frame("OK", 0, text)

    def _progress(self, percent: int) -> None:
        if percent <= self._last_percent:
            return
        self._last_percent = percent
        if self._mode is OutputMode.NUMERIC:
            self._write(f"{percent}\n".encode())
        elif self._mode is OutputMode.NORMAL:
            filled = BAR_WIDTH * percent // 100
            bar = "=" * filled + " " * (BAR_WIDTH - filled)
            line = (
                f"\r{percent:3d}% [{bar}] {_scaled(self.bytes_in)} in / "
                f"{_scaled(self.bytes_out)} out     \b\b\b\b\b"
            )
            self._write(line.encode())

    def _message(self, text: str) -> None:
        prefix = "\r\033[K" if self._mode is OutputMode.NORMAL and self._last_percent >= 0 else ""
        self._write(f"{prefix}fwup: {text}\n".encode())

    def _ok(self, text: str) -> None:
        if text:
            self._write(f"{text}\n".encode() if not text.endswith("\n") else text.encode())
            return
        if self._mode is OutputMode.NORMAL and self._last_percent >= 0:
            elapsed = time.monotonic() - self._started
            if elapsed < 60:
                spent = f"{elapsed:.3f} s"
            else:
                spent = f"{int(elapsed // 60)} min {int(elapsed % 60):02d} s"
            self._write(f"\nSuccess!\nElapsed time: {spent}\n".encode())
