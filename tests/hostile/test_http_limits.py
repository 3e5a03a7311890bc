"""Hostile HTTPS servers against the downloader: endless or oversized response heads
and framing fail with one clear ``download: ...`` reason, in bounded memory and time."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from nhlink.aio.downloader import Downloader, RetryPolicy
from nhlink.aio.http import MAX_HEAD, MAX_HEADERS, MAX_INTERIM, MAX_LINE
from nhlink.testing import Pki
from nhlink.update.errors import DownloadError
from tests.hostile.support import FAST, Behaviour, hostile_server
from tests.link.support import run
from tests.update.support import client_context, collect


async def endless_headers(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n")
    for n in range(1_000_000):
        writer.write(b"X-Filler-%d: %s\r\n" % (n, b"y" * 40))
        await writer.drain()


async def one_endless_line(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nX-Huge: ")
    for _ in range(100_000):
        writer.write(b"z" * 1024)
        await writer.drain()


async def endless_status_line(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 ")
    for _ in range(100_000):
        writer.write(b"O" * 1024)
        await writer.drain()


async def wide_headers(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for n in range(MAX_HEADERS - 10):
        writer.write(b"X-Wide-%d: %s\r\n" % (n, b"w" * (MAX_LINE - 100)))
    writer.write(b"Content-Length: 10\r\n\r\n0123456789")
    await writer.drain()
    await asyncio.sleep(5)


async def endless_continues(writer: asyncio.StreamWriter) -> None:
    for _ in range(100_000):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()


async def endless_trailers(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
    for n in range(1_000_000):
        writer.write(b"X-Trailer-%d: t\r\n" % n)
        await writer.drain()


async def dripping_headers(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for n in range(1_000_000):
        writer.write(b"X-Drip-%d: d\r\n" % n)
        await writer.drain()
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (endless_headers, f"download: more than {MAX_HEADERS} response headers"),
        (one_endless_line, f"download: response header line over {MAX_LINE} bytes"),
        (endless_status_line, f"download: response status line over {MAX_LINE} bytes"),
        (wide_headers, f"download: response headers over {MAX_HEAD} bytes"),
        (endless_continues, f"download: more than {MAX_INTERIM} interim (1xx) responses"),
        (endless_trailers, f"download: chunked trailers over {MAX_HEAD} bytes"),
    ],
    ids=["many-headers", "long-header-line", "long-status-line", "big-head", "1xx", "trailers"],
)
def test_an_oversized_response_head_fails_at_once_in_bounded_memory(
    pki: Pki, behaviour: Behaviour, reason: str
) -> None:
    async def scenario() -> None:
        async with hostile_server(behaviour, pki) as server:
            d = Downloader(server.url, ssl_context=client_context(pki), policy=FAST)
            tracemalloc.start()
            try:
                with pytest.raises(DownloadError) as failure:
                    await collect(d)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert str(failure.value) == reason
        assert server.connections == 1  # a limit is not worth a retry
        assert peak < 4 << 20

    run(scenario(), timeout=20)


def test_headers_dripping_forever_hit_the_idle_timeout_not_a_hang(pki: Pki) -> None:
    policy = RetryPolicy(time_between_retries=0.05, idle_timeout=0.5, max_disconnects=2)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        async with hostile_server(dripping_headers, pki) as server:
            d = Downloader(server.url, ssl_context=client_context(pki), policy=policy)
            started = loop.time()
            with pytest.raises(
                DownloadError, match=r"^download: max disconnects reached \(last: idle timeout\)$"
            ):
                await collect(d)
            assert server.connections == 2
            return loop.time() - started

    assert run(scenario(), timeout=20) < 5
