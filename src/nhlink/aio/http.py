"""A small HTTP/1.1 client on asyncio streams: one GET per connection, TLS, CONNECT proxies
(tunnels from :mod:`nhlink.aio.proxy`).

Only what firmware downloads need: a request with custom headers, the status
line and headers of the answer, and the body read in bounded pieces
(``Content-Length``, chunked, or up to the close). The stream reader's buffer
is bounded (``limit``), so a body nobody reads stops the socket reads and TCP
flow control holds the server back instead of memory filling up.

``get(..., threaded=True)`` serves a direct connection (no proxy) from a worker
thread on a blocking socket (:mod:`nhlink.aio.threaded`): the same requests,
limits and errors, at a fraction of the event loop's CPU for large bodies.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import urljoin, urlsplit

from nhlink.aio.proxy import open_tunnel
from nhlink.aio.threaded import ThreadedStream
from nhlink.aio.transport import local_interface

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_LINE = 8 * 1024
MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
MAX_INTERIM = 10
STREAM_LIMIT = 256 * 1024


class HTTPStreamError(ConnectionError):
    """The server or proxy broke HTTP/1.1, or the connection ended early (worth a retry)."""


class HTTPLimitError(HTTPStreamError):
    """The response exceeds a size or count limit of this client (a hostile or broken
    server: not worth a retry)."""


@dataclass(frozen=True, slots=True)
class URL:
    """An absolute ``http``/``https`` URL split into what a request needs."""

    scheme: str
    host: str
    port: int
    target: str

    @classmethod
    def parse(cls, text: str) -> URL:
        """Parse an absolute URL; ValueError when it is not a usable http(s) URL."""
        parts = urlsplit(text.strip())
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"unsupported URL scheme {parts.scheme!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the URL port is not a number between 0 and 65535") from None
        if not parts.hostname or port == 0:
            raise ValueError("the URL has no host")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], target)

    def join(self, location: str) -> URL:
        """The URL a ``Location`` header names, relative to this one."""
        return URL.parse(urljoin(str(self), location.strip()))

    @property
    def authority(self) -> str:
        """``host[:port]`` as the ``Host`` header wants it (default port left out)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def redacted(self) -> str:
        """The URL without its query (presigned URLs carry credentials there)."""
        return f"{self.scheme}://{self.authority}{self.target.split('?', 1)[0]}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"


class ByteStream(Protocol):
    """What a response is read from: an ``asyncio.StreamReader`` or a ThreadedStream."""

    async def read(self, n: int) -> bytes: ...

    async def readuntil(self, separator: bytes = b"\n") -> bytes: ...


class Response:
    """The answer to a GET: status, headers, and a body read with :meth:`read`."""

    def __init__(
        self,
        reader: ByteStream,
        transport: asyncio.Transport,
        status: int,
        reason: str,
        headers: Mapping[str, str],
        *,
        writer: asyncio.StreamWriter | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = dict(headers)
        self._reader = reader
        self._transport = transport
        self._writer = writer  # referenced: a collected StreamWriter closes its transport
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.content_length = None if self._chunked else _content_length(headers)
        self._remaining = self.content_length
        self._chunk_left = 0
        self._finished = status in (204, 304) or self.content_length == 0

    @property
    def transport(self) -> asyncio.BaseTransport:
        """The connection's transport (addresses, interface)."""
        return self._transport

    async def read(self, size: int) -> bytes:
        """Up to ``size`` body bytes; ``b""`` once the body is complete.

        Raises :class:`HTTPStreamError` when the connection ends before the
        declared length (or inside a chunk).
        """
        if self._finished:
            return b""
        if self._chunked:
            return await self._read_chunked(size)
        want = size if self._remaining is None else min(size, self._remaining)
        data = await self._reader.read(want)
        if not data:
            if self._remaining is not None:
                raise HTTPStreamError(
                    f"connection closed {self._remaining} bytes before the end of the body"
                )
            self._finished = True
            return b""
        if self._remaining is not None:
            self._remaining -= len(data)
            self._finished = self._remaining == 0
        return data

    async def _read_chunked(self, size: int) -> bytes:
        if self._chunk_left == 0:
            line = await self._line()
            try:
                self._chunk_left = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPStreamError(f"bad chunk size line {line[:40]!r}") from None
            if self._chunk_left == 0:
                trailers = 0
                while line := await self._line():  # trailers end with an empty line
                    trailers += len(line) + 2
                    if trailers > MAX_HEAD:
                        raise HTTPLimitError(f"chunked trailers over {MAX_HEAD} bytes")
                self._finished = True
                return b""
        data = await self._reader.read(min(size, self._chunk_left))
        if not data:
            raise HTTPStreamError("connection closed inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and await self._line():
            raise HTTPStreamError("chunk data not followed by CRLF")
        return data

    async def _line(self) -> bytes:
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise HTTPStreamError("connection closed inside the chunked framing") from None
        except asyncio.LimitOverrunError:
            raise HTTPLimitError("chunked framing line too long") from None
        if len(line) > MAX_LINE:
            raise HTTPLimitError(f"chunked framing line over {MAX_LINE} bytes")
        return line.rstrip(b"\r\n")

    def close(self) -> None:
        """Drop the connection at once (no TLS close_notify wait)."""
        self._transport.abort()


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    values = {item.strip() for item in value.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise HTTPStreamError(f"bad Content-Length {value!r}")
    return int(values.pop())


async def open_stream(
    url: URL,
    *,
    ssl_context: ssl.SSLContext | None,
    proxy: str | None = None,
    limit: int = STREAM_LIMIT,
    timeout: float = 60.0,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``url``'s host (through a CONNECT tunnel of ``proxy`` if given),
    with TLS for https."""
    if url.scheme == "https" and ssl_context is None:
        raise ValueError("an https URL needs an SSL context")
    tls = ssl_context if url.scheme == "https" else None
    if proxy is None:
        return await asyncio.open_connection(
            url.host, url.port, ssl=tls, server_hostname=url.host if tls else None, limit=limit
        )
    reader, writer = await open_tunnel(proxy, url.host, url.port, timeout=timeout)
    if tls is not None:
        try:
            await writer.start_tls(tls, server_hostname=url.host)
        except BaseException:
            writer.transport.abort()
            raise
    return reader, writer


async def get(
    url: URL,
    headers: Sequence[tuple[str, str]],
    *,
    ssl_context: ssl.SSLContext | None,
    proxy: str | None = None,
    limit: int = STREAM_LIMIT,
    timeout: float = 60.0,
    threaded: bool = False,
) -> Response:
    """Send ``GET url`` with ``headers`` (plus Host and ``Connection: close``); return
    the response once its headers are in. Callers bound the time with asyncio.timeout.
    ``threaded``: serve a direct connection from a worker thread (see the module
    docstring; with a proxy the tunnel's asyncio streams are used either way)."""
    lines = [f"GET {url.target} HTTP/1.1", f"Host: {url.authority}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Connection: close")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    reader: ByteStream
    transport: asyncio.Transport
    writer: asyncio.StreamWriter | None = None
    if threaded and proxy is None:
        if url.scheme == "https" and ssl_context is None:
            raise ValueError("an https URL needs an SSL context")
        stream = await ThreadedStream.connect(
            url.host,
            url.port,
            ssl_context=ssl_context if url.scheme == "https" else None,
            limit=limit,
            timeout=timeout,
        )
        reader, transport = stream, stream.transport
        send = stream.write
    else:
        reader, writer = await open_stream(
            url, ssl_context=ssl_context, proxy=proxy, limit=limit, timeout=timeout
        )
        transport = cast("asyncio.Transport", writer.transport)

        async def send(data: bytes) -> None:
            writer.write(data)

    try:
        await send(request)
        for _ in range(MAX_INTERIM + 1):
            status, reason, fields = await _read_head(reader)
            if not 100 <= status < 200:
                return Response(reader, transport, status, reason, fields, writer=writer)
        raise HTTPLimitError(f"more than {MAX_INTERIM} interim (1xx) responses")
    except BaseException:
        transport.abort()
        raise


async def _read_head(reader: ByteStream) -> tuple[int, str, dict[str, str]]:
    """Status line and headers, each line at most MAX_LINE bytes, at most MAX_HEADERS
    headers and MAX_HEAD bytes in all (HTTPLimitError beyond)."""
    status_line = await _head_line(reader, "status line")
    if not status_line:
        raise HTTPStreamError("empty status line")
    total = len(status_line)
    lines: list[str] = []
    while line := await _head_line(reader, "header line"):
        total += len(line) + 2
        if total > MAX_HEAD:
            raise HTTPLimitError(f"response headers over {MAX_HEAD} bytes")
        if len(lines) == MAX_HEADERS:
            raise HTTPLimitError(f"more than {MAX_HEADERS} response headers")
        lines.append(line)
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HTTPStreamError(f"bad status line {status_line[:80]!r}")
    fields: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HTTPStreamError(f"bad header line {line[:80]!r}")
        key = name.strip().lower()
        fields[key] = f"{fields[key]}, {value.strip()}" if key in fields else value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", fields


async def _head_line(reader: ByteStream, what: str) -> str:
    """One CRLF-terminated line of the response head, without its line end."""
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        raise HTTPStreamError(
            "connection closed before the response headers"
            if not exc.partial and what == "status line"
            else "connection closed inside the response headers"
        ) from None
    except asyncio.LimitOverrunError:
        raise HTTPLimitError(f"response {what} over {MAX_LINE} bytes") from None
    if len(raw) > MAX_LINE:
        raise HTTPLimitError(f"response {what} over {MAX_LINE} bytes")
    return raw.rstrip(b"\r\n").decode("latin-1")


class _TransportOwner:
    """What :func:`nhlink.aio.transport.local_interface` reads from a connection."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


def network_interface(response: Response) -> str | None:
    """The name of the interface the response's connection uses, if it can be found."""
    owner = _TransportOwner(response.transport)
    return local_interface(cast("ClientConnection", owner))
