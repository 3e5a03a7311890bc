"""A direct HTTP(S) connection served by its own worker thread, for bulk bodies.

asyncio's TLS reads cost the event loop a Python round trip per record plus
three copies per byte (SSL object -> stream buffer -> ``bytes``); a firmware
download is CPU-bound on small devices, and the loop also runs the checksum
work and the control channel. :class:`ThreadedStream` instead connects,
handshakes and reads on a blocking socket (with a timeout) in a thread:
OpenSSL decrypts straight into the chunk handed to the loop, the GIL is
released while the thread waits and decrypts, and a read takes what is
already there (up to ``size``) in one call, so a fast link gives big chunks.

It offers what :class:`nhlink.aio.http.Response` uses of an
``asyncio.StreamReader`` (``read``, ``readuntil`` with the same exceptions),
plus ``write``. The thread only reads when asked (back-pressure: TCP holds
the server back). :meth:`ThreadedStream.abort` (also on cancellation) shuts
the socket down, so a thread blocked in ``recv`` returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
HEAD_READ = 64 * 1024
FILL_WINDOW = 0.02
"""Seconds a read keeps collecting bytes after the first ones arrived."""


class ThreadedStream:
    """One connection, read and written by one worker thread; see the module docstring."""

    def __init__(self, limit: int, timeout: float) -> None:
        self._limit = limit
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nhlink-http")
        self._sock: socket.socket | None = None
        self._control: socket.socket | None = None  # a dup, to shut down from the loop
        self._buffer = bytearray()
        self._scratch = bytearray()  # reused by every read: the loop gets a copy
        self._eof = False
        self._error: BaseException | None = None
        self._closed = False
        self.transport = _ThreadedTransport(self)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        limit: int,
        timeout: float,
    ) -> ThreadedStream:
        """Connect to ``host:port`` (and handshake TLS when ``ssl_context`` is given)."""
        stream = cls(limit, timeout)
        try:
            await stream._call(stream._connect, host, port, ssl_context)
        except BaseException:
            stream.abort()
            raise
        return stream

    # -- the loop side ------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        await self._call(self._sendall, data)

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (at least one unless the peer closed: then ``b""``)."""
        if self._buffer:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            return data
        return await self._call(self._receive, size)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator``, like ``StreamReader.readuntil``."""
        while True:
            end = self._buffer.find(separator)
            if end >= 0:
                end += len(separator)
                if end > self._limit:
                    raise asyncio.LimitOverrunError("separator found after the limit", end)
                line = bytes(self._buffer[:end])
                del self._buffer[:end]
                return line
            if len(self._buffer) > self._limit:
                raise asyncio.LimitOverrunError("separator not found within the limit", 0)
            more = await self._call(self._receive, HEAD_READ)
            if not more:
                partial, self._buffer = bytes(self._buffer), bytearray()
                raise asyncio.IncompleteReadError(partial, None)
            self._buffer += more

    def abort(self) -> None:
        """Drop the connection now; a read blocked in the thread returns at once."""
        if self._closed:
            return
        self._closed = True
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.shutdown(socket.SHUT_RDWR)
        self._executor.submit(self._release)
        self._executor.shutdown(wait=False)

    def extra_info(self, name: str) -> Any:
        control = self._control
        if control is None:
            return None
        with contextlib.suppress(OSError):
            if name == "sockname":
                return control.getsockname()
            if name == "peername":
                return control.getpeername()
            if name == "socket":
                return control
        return None

    async def _call(self, work: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise ConnectionAbortedError("the connection was closed")
        future = asyncio.get_running_loop().run_in_executor(self._executor, work, *args)
        try:
            return await future
        except asyncio.CancelledError:
            self.abort()
            raise

    # -- the thread side ------------------------------------------------------------

    def _connect(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        sock = socket.create_connection((host, port), timeout=self._timeout)
        self._control = sock.dup()
        self._sock = sock
        if self._closed:
            raise ConnectionAbortedError("the connection was closed")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            self._sock = tls
            tls.do_handshake()

    def _sendall(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def _receive(self, size: int) -> bytes:
        """Wait for some bytes, then keep reading for up to :data:`FILL_WINDOW` seconds
        while more arrive, up to ``size``: a fast link hands the loop few, big chunks
        (each hand-over costs the loop a wake-up), a slow one is not held back long."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._eof:
            return b""
        sock = self._sock
        assert sock is not None
        if len(self._scratch) < size:
            self._scratch = bytearray(size)
        view = memoryview(self._scratch)
        got = sock.recv_into(view, size)
        if got == 0:
            view.release()
            self._eof = True
            return b""
        deadline = time.monotonic() + FILL_WINDOW
        try:
            while got < size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(remaining)
                count = sock.recv_into(view[got:], size - got)
                if count == 0:
                    self._eof = True
                    break
                got += count
        except TimeoutError:
            pass  # nothing more within the window: hand over what is here
        except (OSError, ssl.SSLError) as exc:  # report it after the bytes already here
            self._error = exc
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self._timeout)
        data = bytes(view[:got])
        view.release()
        return data

    def _release(self) -> None:
        for sock in (self._sock, self._control):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class _ThreadedTransport(asyncio.Transport):
    """The transport-like handle :class:`nhlink.aio.http.Response` closes and inspects."""

    def __init__(self, stream: ThreadedStream) -> None:
        super().__init__()
        self._stream = stream

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        value = self._stream.extra_info(name)
        return default if value is None else value

    def is_closing(self) -> bool:
        return self._stream._closed

    def close(self) -> None:
        self._stream.abort()

    def abort(self) -> None:
        self._stream.abort()
