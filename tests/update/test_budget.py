"""``max_download_bytes`` (every body byte received counts, re-fetches and retries too) and
the metered-link mode (no download from byte 0 again, one download at a time), over real
TLS against the firmware server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from pathlib import Path

import pytest

from nhlink.aio.downloader import Downloader, RetryPolicy, download_limits
from nhlink.config import Config, UpdateConfig
from nhlink.testing import Fault, FirmwareServer, Pki
from nhlink.testing.firmware_server import https_server_context
from nhlink.update.errors import DownloadError
from tests.link.support import run
from tests.update.support import client_context, collect, firmware_server

FAST = RetryPolicy(time_between_retries=0.01, idle_timeout=2.0)
SIZE = 2 * 1024 * 1024 + 4321


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


class NoRangeServer(FirmwareServer):
    """A server that ignores Range: every answer is the whole file (200)."""

    async def _respond(self, record, writer):  # type: ignore[no-untyped-def]
        record.headers.pop("range", None)
        return await super()._respond(record, writer)


@contextlib.asynccontextmanager
async def no_range_server(pki: Pki, directory: Path):  # type: ignore[no-untyped-def]
    context = https_server_context(pki.server.cert_path, pki.server.key_path)
    async with NoRangeServer(ssl_context=context, directory=directory) as server:
        yield server


def make(url: str, pki: Pki, **kwargs: object) -> Downloader:
    return Downloader(url, ssl_context=client_context(pki), policy=FAST, **kwargs)  # type: ignore[arg-type]


def test_an_offer_larger_than_the_budget_fails_before_any_request(
    pki: Pki, tmp_path: Path, payload: bytes
) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            d = make(hosted.url, pki, expected_size=SIZE, max_bytes=SIZE - 1)
            with pytest.raises(DownloadError) as failure:
                await collect(d)
            assert server.requests == []
        assert failure.value.code == "budget"
        assert failure.value.reason == (
            f"budget: download: data budget exceeded: {SIZE} more bytes needed, "
            f"{SIZE - 1} of max_download_bytes {SIZE - 1} left"
        )

    run(scenario())


def test_a_resume_by_range_fits_a_budget_just_above_the_size(
    pki: Pki, tmp_path: Path, payload: bytes
) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(drop_after=1_000_000))
            d = make(url, pki, expected_size=SIZE, max_bytes=SIZE)
            assert await collect(d) == payload
            assert d.received_bytes == SIZE
            assert [r.range_start for r in server.requests] == [None, 1_000_000]

    run(scenario())


def test_a_second_full_download_counts_and_is_refused_before_its_body(
    pki: Pki, tmp_path: Path, payload: bytes
) -> None:
    async def scenario() -> None:
        async with no_range_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(drop_after=1_000_000))
            d = make(url, pki, max_bytes=SIZE + 500_000)
            with pytest.raises(DownloadError) as failure:
                await collect(d)
            assert [r.status for r in server.requests] == [200, 200]
            assert d.received_bytes == 1_000_000  # nothing of the refused second body
        assert failure.value.code == "budget"
        assert "data budget exceeded" in str(failure.value)

    run(scenario())


def test_re_fetched_parts_count(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            # 256 KiB reads: the re-fetch decisions below happen at known byte counts
            d = make(hosted.url, pki, max_bytes=3_300_000, read_size=256 * 1024)
            received = 0
            refetched = 0
            with pytest.raises(DownloadError) as failure:
                async with contextlib.aclosing(d.chunks()) as chunks:
                    async for chunk in chunks:
                        received += len(chunk)
                        if received > 1_200_000 and refetched < 2:  # a part failed its hash
                            refetched += 1
                            received = 500_000
                            d.restart_at(500_000)
            # the first re-fetch fits; the second would not, and is refused before its request
            assert [r.range_start for r in server.requests] == [None, 500_000]
            assert 1_900_000 < d.received_bytes < 3_300_000
        assert failure.value.code == "budget"

    run(scenario())


def test_a_body_of_unknown_length_is_cut_at_the_budget(payload: bytes) -> None:
    body = payload[:1_000_000]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/fw.bin"
        async with server:
            d = Downloader(url, ssl_context=None, allow_http=True, policy=FAST, max_bytes=300_000)
            consumed = bytearray()
            with pytest.raises(DownloadError) as failure:
                async with contextlib.aclosing(d.chunks()) as chunks:
                    async for chunk in chunks:
                        consumed += chunk
        assert failure.value.code == "budget"
        assert len(consumed) <= 300_000
        assert d.received_bytes == 300_001  # one byte over is how it knows
        assert consumed == body[: len(consumed)]

    run(scenario())


def test_metered_refuses_to_start_over_when_the_server_ignores_range(
    pki: Pki, tmp_path: Path, payload: bytes
) -> None:
    async def scenario() -> None:
        async with no_range_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(drop_after=600_000))
            d = make(url, pki, metered=True)
            with pytest.raises(DownloadError) as failure:
                await collect(d)
            assert [r.status for r in server.requests] == [200, 200]
            assert d.received_bytes == 600_000
            # the same server without metered: skips ahead and completes (a second full body)
            unmetered = make(server.url("fw.bin", Fault(drop_after=600_000)), pki)
            assert await collect(unmetered) == payload
            assert unmetered.received_bytes == 600_000 + SIZE
        assert failure.value.code == "metered"
        assert "metered link" in str(failure.value)

    run(scenario())


def test_metered_downloads_never_run_in_parallel(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def both(metered: bool) -> list[tuple[float, float]]:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload[:400_000])
            slow = Fault(rate=2_000_000, times=None)
            urls = [server.url("fw.bin", slow), server.url("fw.bin", slow)]
            results = await asyncio.gather(*(collect(make(u, pki, metered=metered)) for u in urls))
            assert results == [payload[:400_000]] * 2
            spans = []
            for r in server.requests:
                assert r.finished_at is not None
                spans.append((r.at, r.finished_at))
            return sorted(spans)

    (a, b) = run(both(metered=True))
    assert b[0] >= a[1] - 0.01  # the second request starts after the first body ended
    (a, b) = run(both(metered=False))
    assert b[0] < a[1]  # without metered they overlap


def test_the_limits_come_from_the_update_config(pki: Pki) -> None:
    update = UpdateConfig(max_download_bytes=1234, download_rate_limit=5678, metered=True)
    config = dataclasses.replace(Config(), update=update)
    assert download_limits(config) == {"rate_limit": 5678, "max_bytes": 1234, "metered": True}
    d = Downloader.from_config("https://example.com/fw.bin", config, expected_size=99)
    assert d.rate is not None and d.rate.rate == 5678
    assert d.budget.limit == 1234 and d.metered and d.expected_size == 99
    plain = Downloader.from_config("https://example.com/fw.bin", Config())
    assert plain.rate is None and plain.budget.remaining is None and not plain.metered
