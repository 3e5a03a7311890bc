"""The destination's file descriptor: positioned reads and writes, O_DIRECT, device size."""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat
import struct

from nhlink._native._pyimpl.layout import SEGMENT_SIZE
from nhlink.errors import DestinationError

_log = logging.getLogger("nhlink.native.media")

_BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t) on Linux
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_RDWR | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DestinationError(f"cannot open {path}: {exc.strerror}") from exc


class Media:
    """Positioned I/O on a regular file (created if missing) or a block device.

    ``direct=None`` uses O_DIRECT exactly for block devices; with O_DIRECT every
    transfer goes through a page-aligned (mmap) bounce buffer of one segment, and
    a kernel that refuses O_DIRECT (EINVAL) gets buffered I/O instead.
    """

    def __init__(self, path: str, direct: bool | None = None) -> None:
        self.path = path
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            mode = 0
        self.is_block_device = stat.S_ISBLK(mode)
        want_direct = self.is_block_device if direct is None else direct
        self._direct = False
        if want_direct and _O_DIRECT:
            try:
                self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | _O_DIRECT)
                self._direct = True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise DestinationError(f"cannot open {path}: {exc.strerror}") from exc
                _log.info("%s refuses O_DIRECT; using buffered I/O", path)
                self._fd = _open(path, 0)
        else:
            self._fd = _open(path, 0 if self.is_block_device else os.O_CREAT)
        self._bounce = mmap.mmap(-1, SEGMENT_SIZE) if self._direct else None
        self._device_size = self._query_device_size() if self.is_block_device else 0
        self._closed = False

    @property
    def direct(self) -> bool:
        """True while transfers bypass the page cache."""
        return self._direct

    def _query_device_size(self) -> int:
        try:
            raw = fcntl.ioctl(self._fd, _BLKGETSIZE64, bytes(8))
            size: int = struct.unpack("=Q", raw)[0]
            return size
        except OSError:
            return os.lseek(self._fd, 0, os.SEEK_END)

    def size(self) -> int:
        """Device size, or the regular file's current size."""
        self._check_open()
        if self.is_block_device:
            return self._device_size
        return os.fstat(self._fd).st_size

    def _check_open(self) -> None:
        if self._closed:
            raise DestinationError(f"{self.path} is closed")

    def _drop_direct(self) -> None:
        """The kernel refused an O_DIRECT transfer: continue with buffered I/O."""
        _log.info("%s refused an O_DIRECT transfer; using buffered I/O", self.path)
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
        self._direct = False

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes; whatever lies beyond the end reads as zeros."""
        self._check_open()
        out = bytearray(length)
        done = 0
        while done < length:
            want = min(length - done, SEGMENT_SIZE) if self._direct else length - done
            try:
                got = self._read_into(out, done, offset + done, want)
            except OSError as exc:
                if self._direct and exc.errno == errno.EINVAL:
                    self._drop_direct()
                    continue
                raise DestinationError(
                    f"unexpected error reading {length} bytes at offset {offset}: {exc.strerror}"
                ) from exc
            if got == 0:
                break
            done += got
        return bytes(out)

    def _read_into(self, out: bytearray, at: int, offset: int, want: int) -> int:
        if self._bounce is None or not self._direct:
            return os.preadv(self._fd, [memoryview(out)[at : at + want]], offset)
        got = os.preadv(self._fd, [memoryview(self._bounce)[:want]], offset)
        out[at : at + got] = self._bounce[:got]
        return got

    def write(self, offset: int, data: memoryview) -> None:
        """Write all of ``data`` at ``offset``."""
        self._check_open()
        done = 0
        while done < len(data):
            want = min(len(data) - done, SEGMENT_SIZE) if self._direct else len(data) - done
            try:
                wrote = self._write_from(data[done : done + want], offset + done)
            except OSError as exc:
                if self._direct and exc.errno == errno.EINVAL:
                    self._drop_direct()
                    continue
                raise DestinationError(
                    f"write failed at offset {offset + done}: {exc.strerror}"
                ) from exc
            if wrote == 0:
                raise DestinationError(f"write failed at offset {offset + done}: no space written")
            done += wrote

    def _write_from(self, data: memoryview, offset: int) -> int:
        if self._bounce is None or not self._direct:
            return os.pwrite(self._fd, data, offset)
        self._bounce[: len(data)] = data
        return os.pwritev(self._fd, [memoryview(self._bounce)[: len(data)]], offset)

    def sync(self) -> None:
        """fsync the destination."""
        self._check_open()
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise DestinationError(f"fsync of {self.path} failed: {exc.strerror}") from exc

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self._closed:
            return
        self._closed = True
        os.close(self._fd)
        if self._bounce is not None:
            self._bounce.close()
