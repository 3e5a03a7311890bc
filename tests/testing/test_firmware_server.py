"""The HTTPS firmware server: Range semantics and fault injection, checked with http.client."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import http.client
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pytest

from nhlink.testing import Fault, FirmwareServer, Pki
from nhlink.testing.firmware_server import file_digests, https_server_context, parse_range
from tests.testing.support import run

SIZE = 300_000
DATA = random.Random(7).randbytes(SIZE)
T = TypeVar("T")


@dataclass
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes
    error: BaseException | None
    elapsed: float


def fetch_blocking(
    url: str, ctx: ssl.SSLContext, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> Fetched:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    started = time.monotonic()
    conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, context=ctx, timeout=10)
    try:
        conn.request(method, target, headers=dict(headers or {}))
        response = conn.getresponse()
        received = bytearray()
        error: BaseException | None = None
        try:
            while chunk := response.read(65536):
                received += chunk
        except (http.client.IncompleteRead, OSError) as exc:
            error = exc
        expected = response.getheader("content-length")
        if (
            error is None
            and method != "HEAD"
            and expected is not None
            and int(expected) != len(received)
        ):
            # read(amt) returns b"" on an early close instead of raising
            error = http.client.IncompleteRead(bytes(received), int(expected) - len(received))
        return Fetched(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            bytes(received),
            error,
            time.monotonic() - started,
        )
    finally:
        conn.close()


def with_server(
    tmp_path: Path,
    body: Callable[[FirmwareServer, Callable[..., Awaitable[Fetched]]], Awaitable[T]],
) -> T:
    pki = Pki.create(tmp_path / "pki")
    client_ctx = pki.client_ssl_context()

    async def scenario() -> T:
        server = FirmwareServer(
            ssl_context=https_server_context(pki.server.cert_path, pki.server.key_path),
            directory=tmp_path / "files",
        )
        async with server:
            server.add_file("fw/app.fw", DATA)
            server.add_file("other.fw", b"other firmware")

            async def fetch(
                url: str, headers: Mapping[str, str] | None = None, method: str = "GET"
            ) -> Fetched:
                return await asyncio.to_thread(fetch_blocking, url, client_ctx, headers, method)

            return await body(server, fetch)

    return run(scenario(), timeout=20)


def test_parse_range() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=5-", 10) == (5, 9)
    assert parse_range("bytes=5-10", 10) == (5, 9)  # one past the last index is clamped
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    assert parse_range("bytes=10-", 10) == "unsatisfiable"
    assert parse_range("bytes=-0", 10) == "unsatisfiable"
    assert parse_range("bytes=0-1,3-4", 10) is None
    assert parse_range("bytes=4-2", 10) is None
    assert parse_range("items=0-1", 10) is None


def test_hosted_file_digests(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = random.Random(1).randbytes(2 * 1024 * 1024 + 5)
    path.write_bytes(data)
    size, checksum, parts = file_digests(path)
    assert size == len(data)
    assert checksum == hashlib.sha256(data).hexdigest().upper()
    assert parts == [
        hashlib.sha256(data[i : i + 1024 * 1024]).hexdigest().upper()
        for i in range(0, len(data), 1024 * 1024)
    ]


def test_full_and_ranged_gets(tmp_path: Path) -> None:
    async def body(server: FirmwareServer, fetch: Callable[..., Awaitable[Fetched]]) -> None:
        url = server.url("fw/app.fw")
        full = await fetch(url, {"User-Agent": "NHL/test", "X-Retry-Number": "0"})
        assert (full.status, full.body, full.error) == (200, DATA, None)
        assert full.headers["content-length"] == str(SIZE)
        assert full.headers["accept-ranges"] == "bytes"
        assert (
            abs(email.utils.parsedate_to_datetime(full.headers["date"]).timestamp() - time.time())
            < 5
        )

        cases = {
            "bytes=100-199": (206, "bytes 100-199/300000", DATA[100:200]),
            "bytes=299990-": (206, "bytes 299990-299999/300000", DATA[-10:]),
            "bytes=-10": (206, "bytes 299990-299999/300000", DATA[-10:]),
            f"bytes=1000-{SIZE}": (206, f"bytes 1000-{SIZE - 1}/{SIZE}", DATA[1000:]),
            f"bytes={SIZE}-": (416, f"bytes */{SIZE}", b""),
            "bytes=0-1,5-6": (200, None, DATA),
        }
        for value, (status, content_range, expected) in cases.items():
            got = await fetch(url, {"Range": value, "X-Retry-Number": "3"})
            assert (got.status, got.headers.get("content-range"), got.body) == (
                status,
                content_range,
                expected,
            ), value
            assert got.headers["content-length"] == str(len(expected))

        head = await fetch(url, method="HEAD")
        assert (head.status, head.headers["content-length"], head.body) == (200, str(SIZE), b"")
        assert (await fetch(server.url("missing.fw"))).status == 404
        assert (await fetch(url, method="POST")).status == 405

        log = server.requests_for("fw/app.fw")
        assert log[0].user_agent == "NHL/test" and log[0].retry_number == 0
        assert log[0].completed and log[0].bytes_sent == SIZE
        assert (log[1].range, log[1].range_start, log[1].retry_number) == ("bytes=100-199", 100, 3)
        assert log[1].content_range == "bytes 100-199/300000"

    with_server(tmp_path, body)


def test_drop_after_n_bytes_once_then_resume(tmp_path: Path) -> None:
    async def body(server: FirmwareServer, fetch: Callable[..., Awaitable[Fetched]]) -> None:
        url = server.url("fw/app.fw", Fault(drop_after=100_000))
        first = await fetch(url)
        assert first.status == 200 and first.error is not None
        assert first.body == DATA[:100_000]
        record = await server.wait_for_finished_request(lambda r: True, 5)
        assert record.dropped and record.bytes_sent == 100_000
        rest = await fetch(url, {"Range": f"bytes={len(first.body)}-{SIZE}"})
        assert (rest.status, rest.error) == (206, None)
        assert first.body + rest.body == DATA
        assert server.requests[-1].range_start == 100_000

    with_server(tmp_path, body)


def test_drop_every_time_only_on_the_faulty_url(tmp_path: Path) -> None:
    async def body(server: FirmwareServer, fetch: Callable[..., Awaitable[Fetched]]) -> None:
        faulty = server.url("fw/app.fw", Fault(drop_after=50_000, times=None))
        got = b""
        for _ in range(2):
            part = await fetch(faulty, {"Range": f"bytes={len(got)}-"} if got else None)
            assert part.error is not None and len(part.body) == 50_000
            got += part.body
        assert got == DATA[:100_000]
        clean = await fetch(server.url("fw/app.fw"))
        assert (clean.error, clean.body) == (None, DATA)

    with_server(tmp_path, body)


def test_stall_and_rate_limit(tmp_path: Path) -> None:
    async def body(server: FirmwareServer, fetch: Callable[..., Awaitable[Fetched]]) -> None:
        stalled = await fetch(server.url("fw/app.fw", Fault(stall_after=1000, stall_seconds=0.5)))
        assert (stalled.body, stalled.error) == (DATA, None)
        assert stalled.elapsed >= 0.5
        slow = await fetch(server.url("fw/app.fw", Fault(rate=200_000)), {"Range": "bytes=0-59999"})
        assert slow.body == DATA[:60_000]
        assert 0.25 <= slow.elapsed < 3
        fast = await fetch(server.url("fw/app.fw"), {"Range": "bytes=0-59999"})
        assert fast.elapsed < slow.elapsed

    with_server(tmp_path, body)


def test_status_faults_and_redirects(tmp_path: Path) -> None:
    async def body(server: FirmwareServer, fetch: Callable[..., Awaitable[Fetched]]) -> None:
        expired = server.url("fw/app.fw", Fault(status=403, times=None))
        for _ in range(2):
            got = await fetch(expired)
            assert got.status == 403 and b"Request has expired" in got.body
        assert (await fetch(server.url("fw/app.fw"))).status == 200

        server.set_faults("fw/app.fw", Fault(status=404), Fault(redirect_to="/other.fw"))
        assert (await fetch(server.url("fw/app.fw"))).status == 404
        moved = await fetch(server.url("fw/app.fw"))
        assert moved.status == 302
        assert moved.headers["location"] == server.base_url + "/other.fw"
        assert (await fetch(moved.headers["location"])).body == b"other firmware"
        assert (await fetch(server.url("fw/app.fw"))).body == DATA
        assert [r.status for r in server.requests_for("fw/app.fw")] == [
            403,
            403,
            200,
            404,
            302,
            200,
        ]

    with_server(tmp_path, body)


def test_add_file_rejects_missing_files(tmp_path: Path) -> None:
    async def body(server: FirmwareServer, fetch: Callable[..., Awaitable[Fetched]]) -> None:
        from nhlink.testing import HubError

        with pytest.raises(HubError):
            server.add_file("nope.fw", tmp_path / "does-not-exist.fw")
        hosted = server.add_file("copy.fw", tmp_path / "files" / "other.fw")
        assert hosted.update_kwargs() == {
            "size": 14,
            "checksum": hashlib.sha256(b"other firmware").hexdigest().upper(),
            "partials": [hashlib.sha256(b"other firmware").hexdigest().upper()],
        }
        assert (await fetch(hosted.url)).body == b"other firmware"

    with_server(tmp_path, body)
