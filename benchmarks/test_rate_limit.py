"""Rate-limit accuracy (issue 9): a firmware download over loopback HTTPS with
``download_rate_limit`` set, asked vs measured bytes/s, and the round-trip time of
websocket pings sent on the same event loop during the download (the control channel
must stay responsive: the limit sleeps, it never blocks the loop).

The firmware server and the websocket server run on their own event loop in a thread;
the downloader and the pinging client share the measured loop. Recorded in extra_info:
``asked_bps``, ``measured_bps``, ``error_percent``, ``ping_p50_ms``, ``ping_max_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import statistics
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
SECONDS = 2.5
PING_EVERY = 0.1
MAX_ERROR_PERCENT = 5.0
MAX_PING_MS = 100.0


class _ServerThread:
    """A firmware server and a websocket echo server on their own loop in a thread."""

    def __init__(self, directory: Path) -> None:
        from nhlink.testing import FirmwareServer, Pki
        from nhlink.testing.firmware_server import https_server_context

        self.pki = Pki.create(directory / "pki")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        context = https_server_context(self.pki.server.cert_path, self.pki.server.key_path)
        self.firmware = FirmwareServer(ssl_context=context, directory=directory / "files")
        self.call(self.firmware.start())
        self.ws_url = self.call(self._start_ws())

    async def _start_ws(self) -> str:
        from websockets.asyncio.server import ServerConnection, serve

        async def echo(connection: ServerConnection) -> None:
            async for message in connection:
                await connection.send(message)

        self._ws = await serve(echo, "127.0.0.1", 0)
        port = next(iter(self._ws.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def close(self) -> None:
        self._ws.close()
        self.call(self.firmware.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_ServerThread]:
    server = _ServerThread(tmp_path_factory.mktemp("rate"))
    try:
        yield server
    finally:
        server.close()


async def _limited_download(servers: _ServerThread, url: str, rate: int) -> dict[str, float]:
    from websockets.asyncio.client import connect

    from nhlink.aio.downloader import Downloader, RetryPolicy

    loop = asyncio.get_running_loop()
    rtts: list[float] = []
    async with connect(servers.ws_url) as websocket:

        async def pinger() -> None:
            while True:
                sent = loop.time()
                pong = await websocket.ping()
                await pong
                rtts.append(loop.time() - sent)
                await asyncio.sleep(PING_EVERY)

        pings = asyncio.ensure_future(pinger())
        downloader = Downloader(
            url,
            ssl_context=ssl.create_default_context(cafile=str(servers.pki.ca.cert_path)),
            policy=RetryPolicy(),
            rate_limit=rate,
        )
        received = 0
        started = loop.time()
        async with contextlib.aclosing(downloader.chunks()) as chunks:
            async for chunk in chunks:
                received += len(chunk)
        elapsed = loop.time() - started
        pings.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pings
    measured = received / elapsed
    return {
        "asked_bps": rate,
        "measured_bps": round(measured),
        "error_percent": round(100 * (measured - rate) / rate, 2),
        "ping_p50_ms": round(1000 * statistics.median(rtts), 2),
        "ping_max_ms": round(1000 * max(rtts), 2),
        "pings": len(rtts),
    }


@pytest.mark.parametrize("rate", [2_000_000, 8_000_000], ids=["2MBps", "8MBps"])
def test_rate_limit_accuracy(benchmark, servers: _ServerThread, rate: int) -> None:  # type: ignore[no-untyped-def]
    hosted = servers.firmware.add_file(f"fw-{rate}.bin", os.urandom(int(rate * SECONDS)))
    figures: list[dict[str, float]] = []

    def download() -> None:
        figures.append(asyncio.run(_limited_download(servers, hosted.url, rate)))

    benchmark.extra_info["bytes"] = hosted.size
    benchmark.pedantic(download, rounds=1, iterations=1)
    result = figures[-1]
    benchmark.extra_info.update(result)
    assert abs(result["error_percent"]) < MAX_ERROR_PERCENT, result
    assert result["ping_max_ms"] < MAX_PING_MS, result
