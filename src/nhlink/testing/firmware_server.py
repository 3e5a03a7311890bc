"""An HTTPS static file server for firmware and archives, with Range support and faults.

Real HTTP/1.1 on asyncio streams (one request per connection, always
``Connection: close``): ``GET``/``HEAD``, ``Accept-Ranges: bytes``, single
byte ranges answered ``206`` with ``Content-Range`` (an end past the last
byte is clamped, as spec 7 requires), ``416`` with ``Content-Range: bytes */N``
when the start is past the end; multi-range or malformed ``Range`` headers
are ignored (full ``200``), as RFC 9110 allows. Every request is logged with
its headers for assertions; `Fault` objects change how matching requests
are answered.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import itertools
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from nhlink.testing.errors import HubError
from nhlink.testing.faults import Fault, FaultQueue
from nhlink.testing.records import Notifier
from nhlink.testing.tls import TlsServerProtocol

__all__ = [
    "PART_SIZE",
    "FirmwareServer",
    "HostedFile",
    "RequestRecord",
    "file_digests",
    "https_server_context",
    "parse_range",
]

log = logging.getLogger("nhlink.testing.firmware_server")

PART_SIZE = 1024 * 1024
TOKEN_PARAM = "token"
_MAX_HEAD = 64 * 1024
_HEADER_TIMEOUT = 10.0
_EXPIRED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>\n"
)


@dataclass(frozen=True)
class HostedFile:
    """A file served by the firmware server, with the digests an ``update`` payload carries."""

    name: str
    path: Path
    url: str
    size: int
    checksum: str
    partials_checksums: list[str]

    def update_kwargs(self) -> dict[str, Any]:
        """``size``, ``checksum`` and ``partials`` keyword arguments for `LocalHub.push_update`."""
        return {
            "size": self.size,
            "checksum": self.checksum,
            "partials": list(self.partials_checksums),
        }


@dataclass
class RequestRecord:
    """One HTTP request and how it was answered (updated while the body streams)."""

    at: float
    peer: Any
    method: str
    target: str
    path: str
    query: str
    headers: dict[str, str]
    status: int = 0
    content_range: str | None = None
    content_length: int | None = None
    bytes_sent: int = 0
    completed: bool = False
    dropped: bool = False
    fault: Fault | None = None
    error: str | None = None
    finished_at: float | None = None

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def range_start(self) -> int | None:
        """The first byte asked for by a ``bytes=N-...`` Range header."""
        match = re.match(r"\s*bytes\s*=\s*(\d+)\s*-", self.range or "")
        return int(match.group(1)) if match else None

    @property
    def retry_number(self) -> int | None:
        value = self.headers.get("x-retry-number")
        return int(value) if value is not None and value.strip().isdigit() else None

    @property
    def user_agent(self) -> str | None:
        return self.headers.get("user-agent")


def file_digests(path: str | os.PathLike[str]) -> tuple[int, str, list[str]]:
    """(size, upper-hex SHA-256, upper-hex SHA-256 of each 1 MiB part) of a file."""
    whole = hashlib.sha256()
    parts: list[str] = []
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(PART_SIZE):
            whole.update(chunk)
            parts.append(hashlib.sha256(chunk).hexdigest().upper())
            size += len(chunk)
    return size, whole.hexdigest().upper(), parts


RangeResult = tuple[int, int] | Literal["unsatisfiable"] | None


def parse_range(value: str, size: int) -> RangeResult:
    """Interpret a Range header for a resource of `size` bytes.

    Returns (first, last) inclusive, "unsatisfiable", or None when the header
    is to be ignored (multiple ranges, bad syntax, last < first).
    """
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        return "unsatisfiable"
    last = min(int(last_text), size - 1) if last_text else size - 1
    return first, last


def https_server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


class FirmwareServer:
    """Serves registered files (and optionally a directory) over HTTPS."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        host: str = "127.0.0.1",
        port: int = 0,
        directory: str | os.PathLike[str] | None = None,
        chunk_size: int = 64 * 1024,
    ) -> None:
        self._ssl_context = ssl_context
        self._host = host
        self._requested_port = port
        self._directory = Path(directory) if directory is not None else None
        self._chunk_size = chunk_size
        self._server: asyncio.Server | None = None
        self._files: dict[str, Path] = {}
        self._path_faults: dict[str, FaultQueue] = {}
        self._token_faults: dict[str, FaultQueue] = {}
        self._tokens = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._notifier = Notifier()
        self.requests: list[RequestRecord] = []

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make_protocol, self._host, self._requested_port
        )

    def _make_protocol(self) -> asyncio.Protocol:
        # TLS through TlsServerProtocol rather than asyncio's: its write buffer
        # size is the ciphertext still queued on the socket, so a fault can
        # flush exactly what it sent before dropping the connection.
        reader = asyncio.StreamReader(limit=_MAX_HEAD)
        streams = asyncio.StreamReaderProtocol(reader, self._on_connection)
        if self._ssl_context is None:
            return streams
        return TlsServerProtocol(self._ssl_context, streams)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FirmwareServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise HubError("the firmware server is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port}"

    # -- content and faults -----------------------------------------------

    def add_file(self, name: str, source: bytes | str | os.PathLike[str]) -> HostedFile:
        """Serve `source` at ``/<name>``: a path is served in place, bytes are
        written under the server's `directory` first."""
        path = "/" + name.lstrip("/")
        if isinstance(source, bytes):
            if self._directory is None:
                raise HubError("add_file with bytes needs a FirmwareServer directory")
            target = self._directory / name.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source)
            file_path = target
        else:
            file_path = Path(source)
        if not file_path.is_file():
            raise HubError(f"no such file: {file_path}")
        self._files[path] = file_path
        size, checksum, partials = file_digests(file_path)
        return HostedFile(name.lstrip("/"), file_path, self.url(name), size, checksum, partials)

    def url(self, name: str, *faults: Fault) -> str:
        """The URL of ``/<name>``; with faults, a URL carrying a fresh token they apply to."""
        url = f"{self.base_url}/{quote(name.lstrip('/'))}"
        if not faults:
            return url
        token = f"t{next(self._tokens)}"
        self._token_faults[token] = FaultQueue(list(faults))
        return f"{url}?{TOKEN_PARAM}={token}"

    def set_faults(self, name: str, *faults: Fault) -> None:
        """Apply `faults` (in order) to every URL of ``/<name>``; replaces earlier ones."""
        self._path_faults["/" + name.lstrip("/")] = FaultQueue(list(faults))

    def clear_faults(self) -> None:
        self._path_faults.clear()
        self._token_faults.clear()

    def _take_fault(self, path: str, query: str) -> Fault | None:
        for token in parse_qs(query).get(TOKEN_PARAM, []):
            queue = self._token_faults.get(token)
            if queue is not None:
                fault = queue.take()
                if fault is not None:
                    return fault
        queue = self._path_faults.get(path)
        return queue.take() if queue is not None else None

    def _lookup(self, path: str) -> Path | None:
        registered = self._files.get(path)
        if registered is not None:
            return registered
        if self._directory is None:
            return None
        root = self._directory.resolve()
        candidate = (root / path.lstrip("/")).resolve()
        if candidate.is_relative_to(root) and candidate.is_file():
            return candidate
        return None

    # -- request log ----------------------------------------------------------

    def requests_for(self, name: str) -> list[RequestRecord]:
        path = "/" + name.lstrip("/")
        return [r for r in self.requests if r.path == path]

    async def wait_for_request(
        self,
        predicate: Callable[[RequestRecord], bool],
        timeout: float = 10.0,
        *,
        since: int = 0,
    ) -> RequestRecord:
        """The first request (index >= `since`) matching `predicate`, waiting up to `timeout` s."""

        def check() -> RequestRecord | None:
            return next((r for r in self.requests[since:] if predicate(r)), None)

        return await self._notifier.wait_for(check, timeout, "a matching firmware request")

    async def wait_for_finished_request(
        self, predicate: Callable[[RequestRecord], bool], timeout: float = 10.0, *, since: int = 0
    ) -> RequestRecord:
        """Like `wait_for_request`, once the response is over (finished, dropped or failed)."""
        return await self.wait_for_request(
            lambda r: r.finished_at is not None and predicate(r), timeout, since=since
        )

    # -- HTTP -----------------------------------------------------------------

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record: RequestRecord | None = None
        aborted = False
        try:
            try:
                async with asyncio.timeout(_HEADER_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            record = self._parse_head(head, writer.get_extra_info("peername"))
            self.requests.append(record)
            self._notifier.notify()
            aborted = await self._respond(record, writer)
        except (ConnectionError, ssl.SSLError, TimeoutError) as exc:
            if record is not None:
                record.error = str(exc) or type(exc).__name__
            aborted = True
            writer.transport.abort()
        finally:
            if record is not None:
                record.finished_at = time.monotonic()
                self._notifier.notify()
            if not aborted:
                writer.close()
                try:
                    async with asyncio.timeout(5.0):
                        await writer.wait_closed()
                except (ConnectionError, ssl.SSLError, TimeoutError):
                    pass

    @staticmethod
    def _parse_head(head: bytes, peer: Any) -> RequestRecord:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        method, target = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                method = ""  # malformed header line: answer 400
                continue
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        split = urlsplit(target)
        return RequestRecord(
            at=time.monotonic(),
            peer=peer,
            method=method,
            target=target,
            path=unquote(split.path),
            query=split.query,
            headers=headers,
        )

    async def _respond(self, record: RequestRecord, writer: asyncio.StreamWriter) -> bool:
        """Answer the request; True when the connection was aborted."""
        if not record.method or not record.target.startswith("/"):
            await self._simple(writer, record, HTTPStatus.BAD_REQUEST)
            return False
        if record.method not in ("GET", "HEAD"):
            await self._simple(
                writer, record, HTTPStatus.METHOD_NOT_ALLOWED, [("Allow", "GET, HEAD")]
            )
            return False
        fault = self._take_fault(record.path, record.query)
        record.fault = fault
        if fault is not None and fault.status is not None:
            body = _EXPIRED_BODY if fault.status == 403 else None
            await self._simple(writer, record, HTTPStatus(fault.status), body=body)
            return False
        if fault is not None and fault.redirect_to is not None:
            location = fault.redirect_to
            if location.startswith("/"):
                location = self.base_url + location
            await self._simple(
                writer, record, HTTPStatus(fault.redirect_status), [("Location", location)]
            )
            return False
        file_path = self._lookup(record.path)
        if file_path is None:
            await self._simple(writer, record, HTTPStatus.NOT_FOUND)
            return False
        with open(file_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            wanted = parse_range(record.range, size) if record.range is not None else None
            if wanted == "unsatisfiable":
                await self._simple(
                    writer,
                    record,
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    [("Content-Range", f"bytes */{size}"), ("Accept-Ranges", "bytes")],
                )
                return False
            headers = [("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes")]
            if wanted is None:
                status, first, length = HTTPStatus.OK, 0, size
            else:
                first, last = wanted
                status, length = HTTPStatus.PARTIAL_CONTENT, last - first + 1
                record.content_range = f"bytes {first}-{last}/{size}"
                headers.append(("Content-Range", record.content_range))
            headers.append(("Content-Length", str(length)))
            record.status = status.value
            record.content_length = length
            await self._write_head(writer, status, headers)
            if record.method == "HEAD":
                record.completed = True
                return False
            f.seek(first)
            return await self._send_body(writer, f, length, fault, record)

    async def _send_body(
        self,
        writer: asyncio.StreamWriter,
        f: BinaryIO,
        length: int,
        fault: Fault | None,
        record: RequestRecord,
    ) -> bool:
        loop = asyncio.get_running_loop()
        sent = 0
        stalled = False
        pace_start, pace_sent = loop.time(), 0
        while sent < length:
            n = min(self._chunk_size, length - sent)
            if fault is not None:
                if fault.drop_after is not None:
                    if sent >= fault.drop_after:
                        await _flush_all(writer)
                        record.dropped = True
                        writer.transport.abort()
                        log.debug("dropped %s after %d bytes", record.target, sent)
                        return True
                    n = min(n, fault.drop_after - sent)
                if fault.stall_after is not None and not stalled:
                    if sent >= fault.stall_after:
                        await _flush_all(writer)
                        await asyncio.sleep(fault.stall_seconds)
                        stalled = True
                        pace_start, pace_sent = loop.time(), sent
                        continue
                    n = min(n, fault.stall_after - sent)
                if fault.rate is not None:
                    n = min(n, max(1, int(fault.rate / 20)))
                    delay = pace_start + (sent - pace_sent) / fault.rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
            data = f.read(n)
            if not data:
                break
            writer.write(data)
            await writer.drain()
            sent += len(data)
            record.bytes_sent = sent
        record.completed = sent == length
        return False

    async def _simple(
        self,
        writer: asyncio.StreamWriter,
        record: RequestRecord,
        status: HTTPStatus,
        headers: list[tuple[str, str]] | None = None,
        *,
        body: bytes | None = None,
    ) -> None:
        if body is None:
            body = b"" if status.value in (304, 416) else f"{status.phrase}\n".encode()
        all_headers = [*(headers or [])]
        if body:
            all_headers.append(
                (
                    "Content-Type",
                    "text/plain" if not body.startswith(b"<?xml") else "application/xml",
                )
            )
        all_headers.append(("Content-Length", str(len(body))))
        record.status = status.value
        record.content_length = len(body)
        await self._write_head(writer, status, all_headers)
        if record.method != "HEAD" and body:
            writer.write(body)
            await writer.drain()
        record.completed = True

    @staticmethod
    async def _write_head(
        writer: asyncio.StreamWriter, status: HTTPStatus, headers: list[tuple[str, str]]
    ) -> None:
        lines = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            "Server: nhlink-testing",
            "Connection: close",
            *(f"{name}: {value}" for name, value in headers),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()


async def _flush_all(writer: asyncio.StreamWriter, timeout: float = 10.0) -> None:
    """Wait (up to `timeout` s) until everything written so far is in the kernel's hands."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while writer.transport.get_write_buffer_size() > 0 and loop.time() < deadline:
        await asyncio.sleep(0.002)
