"""Redirects (count, scheme, host) and bodies larger than the offered ``size``, against
the real firmware server over TLS and hostile servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from nhlink.aio.downloader import Downloader
from nhlink.testing import Fault, FirmwareServer, Pki
from nhlink.update.errors import DownloadError
from tests.hostile.support import FAST, hostile_server
from tests.link.support import run
from tests.update.support import client_context, collect, firmware_server

SIZE = 300_000


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


def test_a_redirect_to_another_host_is_refused_unless_allowed(
    pki: Pki, tmp_path: Path, payload: bytes
) -> None:
    async def scenario() -> None:
        async with (
            firmware_server(pki, tmp_path / "a") as origin,
            firmware_server(pki, tmp_path / "b", host="localhost") as storage,
        ):
            origin.add_file("fw.bin", payload)
            target = storage.add_file("fw.bin", payload)
            assert target.url.startswith("https://localhost:")
            url = origin.url("fw.bin", Fault(redirect_to=target.url, times=None))
            d = Downloader(url, ssl_context=client_context(pki), policy=FAST)
            with pytest.raises(DownloadError) as refused:
                await collect(d)
            assert storage.requests == []
            allowed = Downloader(
                url,
                ssl_context=client_context(pki),
                policy=FAST,
                allow_cross_host_redirects=True,
                expected_size=SIZE,
            )
            assert await collect(allowed) == payload
            assert len(storage.requests) == 1
        assert str(refused.value) == (
            f"download: refusing a redirect from 127.0.0.1 to another host ({target.url}); "
            "allow_cross_host_redirects permits it"
        )

    run(scenario())


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://127.0.0.1:1/fw.bin", "refusing a redirect to a non-https URL"),
        ("ftp://127.0.0.1/fw.bin", "bad redirect: unsupported URL scheme 'ftp'"),
        ("file:///etc/passwd", "bad redirect: unsupported URL scheme 'file'"),
    ],
)
def test_a_redirect_off_https_is_refused(
    pki: Pki, tmp_path: Path, payload: bytes, location: str, reason: str
) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(redirect_to=location))
            d = Downloader(
                url, ssl_context=client_context(pki), policy=FAST, allow_cross_host_redirects=True
            )
            with pytest.raises(DownloadError, match=f"^download: {reason}"):
                await collect(d)
            assert len(server.requests) == 1

    run(scenario())


def test_more_redirects_than_the_limit_fail(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            for hop in range(7):
                server.add_file(f"hop{hop}.bin", payload)
            for hop in range(6):
                server.set_faults(
                    f"hop{hop}.bin", Fault(redirect_to=f"/hop{hop + 1}.bin", times=None)
                )
            six = Downloader(server.url("hop0.bin"), ssl_context=client_context(pki), policy=FAST)
            with pytest.raises(DownloadError, match=r"^download: more than 5 redirects$"):
                await collect(six)
            assert len(server.requests) == 6
            five = Downloader(server.url("hop1.bin"), ssl_context=client_context(pki), policy=FAST)
            assert await collect(five) == payload
            assert len(server.requests) == 12

    run(scenario())


class _Consumer:
    """Collects chunks until the downloader fails; what reached the applier."""

    def __init__(self) -> None:
        self.received = bytearray()

    async def drain(self, downloader: Downloader) -> DownloadError:
        with pytest.raises(DownloadError) as failure:
            async with contextlib.aclosing(downloader.chunks()) as chunks:
                async for chunk in chunks:
                    self.received += chunk
        return failure.value


def test_a_content_length_over_the_offer_is_refused_before_the_body(
    pki: Pki, tmp_path: Path, payload: bytes
) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            d = Downloader(
                hosted.url, ssl_context=client_context(pki), policy=FAST, expected_size=SIZE - 1
            )
            consumer = _Consumer()
            failure = await consumer.drain(d)
        assert str(failure) == f"download: the server has {SIZE} bytes, the offer said {SIZE - 1}"
        assert consumer.received == b""

    run(scenario())


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
def test_a_body_longer_than_the_offer_never_reaches_the_consumer(
    pki: Pki, payload: bytes, framing: str
) -> None:
    offered = SIZE - 1000

    async def send(writer: asyncio.StreamWriter) -> None:
        if framing == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, SIZE, 50_000):
                piece = payload[i : i + 50_000]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + payload)
        await writer.drain()

    async def scenario() -> None:
        async with hostile_server(send, pki) as server:
            d = Downloader(
                server.url,
                ssl_context=client_context(pki),
                policy=FAST,
                expected_size=offered,
                read_size=30_000,
            )
            consumer = _Consumer()
            failure = await consumer.drain(d)
            assert server.connections == 1
        assert str(failure) == f"download: the server sent more than the expected {offered} bytes"
        assert len(consumer.received) <= offered
        assert consumer.received == payload[: len(consumer.received)]

    run(scenario())


def test_bytes_past_the_content_length_are_never_read(pki: Pki, payload: bytes) -> None:
    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (SIZE - 5000) + payload)
        await writer.drain()
        await asyncio.sleep(5)

    async def scenario() -> None:
        async with hostile_server(send, pki) as server:
            d = Downloader(
                server.url, ssl_context=client_context(pki), policy=FAST, expected_size=SIZE - 5000
            )
            assert await collect(d) == payload[: SIZE - 5000]
            assert d.position == d.total == SIZE - 5000

    run(scenario())


def test_plain_servers_stay_refused(tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with FirmwareServer(ssl_context=None, directory=tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            with pytest.raises(DownloadError, match=r"^download: refusing a non-https URL"):
                Downloader(hosted.url, ssl_context=None)
            assert server.requests == []

    run(scenario())
