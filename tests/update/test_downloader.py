"""The downloader over real TLS against the test firmware server and its faults."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from nhlink import __version__
from nhlink.aio import http
from nhlink.aio.downloader import Connected, Downloader, RetryPolicy, download_ssl_context
from nhlink.testing import Fault, FirmwareServer, Pki
from nhlink.update.errors import DownloadError
from tests.link.support import run
from tests.update.support import ConnectProxy, client_context, collect, firmware_server

FAST = RetryPolicy(time_between_retries=0.05, idle_timeout=1.0)
SIZE = 3 * 1024 * 1024 + 777


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


def downloader(
    server: FirmwareServer, pki: Pki, url: str, *, policy: RetryPolicy = FAST, **kwargs: object
) -> Downloader:
    return Downloader(url, ssl_context=client_context(pki), policy=policy, **kwargs)  # type: ignore[arg-type]


def test_plain_download_sends_the_documented_headers(
    pki: Pki, tmp_path: Path, payload: bytes
) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            connects: list[Connected] = []
            d = downloader(server, pki, hosted.url, expected_size=SIZE, on_connect=connects.append)
            assert await collect(d) == payload
            (request,) = server.requests
        assert request.user_agent == f"nhlink/{__version__}"
        assert request.retry_number == 0
        assert request.range is None
        assert request.completed
        assert connects == [Connected(hosted.url, 0, 0, "lo")]
        assert d.total == SIZE and d.position == SIZE

    run(scenario())


@pytest.mark.parametrize("drops", [[700_001], [65_536, 1_000_000, 5]])
def test_drops_resume_with_range_from_the_exact_byte_received(
    pki: Pki, tmp_path: Path, payload: bytes, drops: list[int]
) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            url = server.url("fw.bin", *(Fault(drop_after=n) for n in drops))
            connects: list[Connected] = []
            d = downloader(server, pki, url, expected_size=SIZE, on_connect=connects.append)
            assert await collect(d) == payload
            requests = server.requests_for("fw.bin")
        received = [0]
        for n in drops:
            received.append(received[-1] + n)
        assert [r.range_start or 0 for r in requests] == received
        assert [r.retry_number for r in requests] == list(range(len(drops) + 1))
        assert [r.dropped for r in requests] == [True] * len(drops) + [False]
        assert [c.range_start for c in connects] == received
        assert hosted.size == SIZE

    run(scenario())


def test_idle_stall_is_retried(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(stall_after=500_000, stall_seconds=3))
            policy = RetryPolicy(time_between_retries=0.05, idle_timeout=0.3)
            d = downloader(server, pki, url, policy=policy, expected_size=SIZE)
            assert await collect(d) == payload
            requests = server.requests_for("fw.bin")
        assert len(requests) == 2
        assert requests[1].range_start == 500_000
        assert requests[1].retry_number == 1

    run(scenario())


@pytest.mark.parametrize("status", [403, 404, 500])
def test_http_errors_fail_at_once(pki: Pki, tmp_path: Path, payload: bytes, status: int) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(status=status, times=None))
            d = downloader(server, pki, url)
            with pytest.raises(DownloadError) as caught:
                await collect(d)
            assert str(caught.value) == f"download: http {status}"
            assert caught.value.reason == f"http:{status}: download: http {status}"
            assert len(server.requests) == 1

    run(scenario())


def test_expired_url_after_a_drop_fails_without_more_retries(
    pki: Pki, tmp_path: Path, payload: bytes
) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(drop_after=100_000), Fault(status=403, times=None))
            with pytest.raises(DownloadError, match="http 403"):
                await collect(downloader(server, pki, url))
            assert [r.status for r in server.requests] == [200, 403]
            assert server.requests[1].range_start == 100_000

    run(scenario())


def test_max_disconnects_bounds_the_attempts(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(drop_after=1000, times=None))
            policy = RetryPolicy(max_disconnects=3, time_between_retries=0.01)
            with pytest.raises(DownloadError, match="max disconnects reached") as caught:
                await collect(downloader(server, pki, url, policy=policy))
            assert caught.value.code == "network"
            assert [r.retry_number for r in server.requests] == [0, 1, 2]
            assert [r.range_start or 0 for r in server.requests] == [0, 1000, 2000]

    run(scenario())


def test_time_between_retries_is_respected(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(drop_after=1000, times=2))
            policy = RetryPolicy(time_between_retries=0.4)
            assert await collect(downloader(server, pki, url, policy=policy)) == payload
            starts = [r.at for r in server.requests]
        assert all(b - a >= 0.4 for a, b in itertools.pairwise(starts))

    run(scenario())


def test_redirects_are_followed_and_reported_as_connects(
    pki: Pki, tmp_path: Path, payload: bytes
) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            server.add_file("real/fw.bin", payload)
            url = server.url("fw.bin", Fault(redirect_to="/real/fw.bin", redirect_status=307))
            connects: list[Connected] = []
            d = downloader(server, pki, url, on_connect=connects.append)
            assert await collect(d) == payload
            base = server.base_url
        assert [(c.url, c.retry_number) for c in connects] == [
            (f"{base}/fw.bin", 0),
            (f"{base}/real/fw.bin", 0),
        ]

    run(scenario())


def test_too_many_redirects_fail(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            server.set_faults("fw.bin", Fault(redirect_to="/fw.bin", times=None))
            with pytest.raises(DownloadError, match="more than 5 redirects") as caught:
                await collect(downloader(server, pki, server.url("fw.bin")))
            assert caught.value.code == "refused:redirect"
            assert len(server.requests) == 6

    run(scenario())


def test_plain_http_is_refused_unless_allowed(tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with FirmwareServer(ssl_context=None, directory=tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            with pytest.raises(DownloadError, match="refusing a non-https URL") as caught:
                Downloader(hosted.url, ssl_context=None)
            assert caught.value.code == "refused:url"
            d = Downloader(hosted.url, ssl_context=None, allow_http=True, policy=FAST)
            assert await collect(d) == payload

    run(scenario())


def test_redirect_to_plain_http_is_refused(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with (
            firmware_server(pki, tmp_path / "s") as server,
            FirmwareServer(ssl_context=None, directory=tmp_path / "p") as plain,
        ):
            server.add_file("fw.bin", payload)
            target = plain.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(redirect_to=target.url))
            with pytest.raises(DownloadError, match="non-https") as caught:
                await collect(downloader(server, pki, url))
            assert caught.value.code == "refused:redirect"
            assert plain.requests == []

    run(scenario())


def test_the_server_certificate_is_verified(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            policy = RetryPolicy(max_disconnects=2, time_between_retries=0.01)
            d = Downloader(hosted.url, ssl_context=ssl.create_default_context(), policy=policy)
            with pytest.raises(DownloadError, match="CERTIFICATE_VERIFY_FAILED") as caught:
                await collect(d)
            assert caught.value.code == "tls:certificate"
            assert server.requests == []

    run(scenario())


def test_size_differing_from_the_offer_fails(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            d = downloader(server, pki, hosted.url, expected_size=SIZE - 1)
            with pytest.raises(DownloadError, match=f"server has {SIZE} bytes") as caught:
                await collect(d)
            assert caught.value.code == "size"

    run(scenario())


def test_server_ignoring_range_is_skipped_ahead(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    class NoRangeServer(FirmwareServer):
        async def _respond(self, record, writer):  # type: ignore[no-untyped-def]
            record.headers.pop("range", None)
            return await super()._respond(record, writer)

    async def scenario() -> None:
        context = client_context(pki)
        from nhlink.testing.firmware_server import https_server_context

        server_context = https_server_context(pki.server.cert_path, pki.server.key_path)
        async with NoRangeServer(ssl_context=server_context, directory=tmp_path) as server:
            server.add_file("fw.bin", payload)
            url = server.url("fw.bin", Fault(drop_after=300_000))
            d = Downloader(url, ssl_context=context, policy=FAST)
            assert await collect(d) == payload
            assert [r.status for r in server.requests] == [200, 200]

    run(scenario())


def test_restart_at_fetches_from_another_offset(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            d = downloader(server, pki, hosted.url)
            out = bytearray()
            restarted = False
            async with contextlib.aclosing(d.chunks()) as chunks:
                async for chunk in chunks:
                    out += chunk
                    if not restarted and len(out) > 1_500_000:
                        restarted = True
                        del out[1_000_000:]
                        d.restart_at(1_000_000)
            assert bytes(out) == payload
            assert [r.range_start for r in server.requests] == [None, 1_000_000]
            assert server.requests[1].retry_number == 0  # a re-fetch is not a retry

    run(scenario())


def test_a_slow_consumer_is_not_an_idle_timeout(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload[:600_000])
            policy = RetryPolicy(idle_timeout=0.2, time_between_retries=0.01)
            d = Downloader(
                hosted.url, ssl_context=client_context(pki), policy=policy, read_size=65536
            )
            out = bytearray()
            async with contextlib.aclosing(d.chunks()) as chunks:
                async for chunk in chunks:
                    out += chunk
                    await asyncio.sleep(0.3)  # a slow flash: longer than the idle timeout
            assert bytes(out) == payload[:600_000]
            assert len(server.requests) == 1

    run(scenario())


def test_back_pressure_bounds_what_the_server_gets_ahead(pki: Pki, tmp_path: Path) -> None:
    big = os.urandom(48 * 1024 * 1024)

    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("big.bin", big)
            d = downloader(server, pki, hosted.url)
            received = 0
            ahead: list[int] = []
            async with contextlib.aclosing(d.chunks()) as chunks:
                async for chunk in chunks:
                    received += len(chunk)
                    if received > 2 * 1024 * 1024 and len(ahead) < 20:
                        await asyncio.sleep(0.05)  # stop reading for a while
                        ahead.append(server.requests[0].bytes_sent - received)
                    if len(ahead) >= 20:
                        break
        # without back-pressure the server would be tens of MiB ahead by now;
        # what remains is the kernel's socket buffers plus the bounded reader buffer
        assert max(ahead) < 16 * 1024 * 1024, ahead

    run(scenario())


def test_worst_case_speed_and_max_timeout(pki: Pki, tmp_path: Path, payload: bytes) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", payload)
            slow = server.url("fw.bin", Fault(rate=200_000, times=None))
            policy = RetryPolicy(worst_case_download_speed=10**9, min_speed_window=0.5)
            with pytest.raises(DownloadError, match="worst case download speed reached"):
                await collect(downloader(server, pki, slow, policy=policy))
            policy = RetryPolicy(max_timeout=0.5, time_between_retries=0.01)
            with pytest.raises(DownloadError, match="max timeout reached"):
                await collect(downloader(server, pki, slow, policy=policy))

    run(scenario())


def test_proxy_connect_tunnel_from_config_and_environment(
    pki: Pki, tmp_path: Path, payload: bytes
) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server, ConnectProxy() as proxy:
            hosted = server.add_file("fw.bin", payload)
            authority = f"127.0.0.1:{server.port}"
            d = downloader(server, pki, hosted.url, proxy=proxy.url, environ={})
            assert await collect(d) == payload
            assert proxy.requests == [f"CONNECT {authority} HTTP/1.1"]
            d = downloader(server, pki, hosted.url, environ={"HTTPS_PROXY": proxy.url})
            assert await collect(d) == payload
            assert len(proxy.requests) == 2
            environ = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"}
            d = downloader(server, pki, hosted.url, environ=environ)
            assert await collect(d) == payload
            assert len(proxy.requests) == 2  # bypassed
            assert len(server.requests) == 3

    run(scenario())


async def serve_raw(answer: bytes) -> tuple[asyncio.Server, str]:
    """A plain-HTTP server that answers every request with ``answer`` and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/fw.bin"


def test_chunked_and_close_delimited_bodies(payload: bytes) -> None:
    body = payload[:300_000]
    chunked = b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + 70_000]), body[i : i + 70_000])
        for i in range(0, len(body), 70_000)
    )
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + body,
    ]

    async def scenario() -> None:
        for answer in answers:
            server, url = await serve_raw(answer)
            async with server:
                d = Downloader(url, ssl_context=None, allow_http=True, policy=FAST)
                assert await collect(d) == body
                assert d.connections == 1

    run(scenario())


def test_a_truncated_chunked_body_is_retried(payload: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n" + payload[:5000]
    policy = RetryPolicy(max_disconnects=2, time_between_retries=0.01)

    async def scenario() -> None:
        server, url = await serve_raw(answer)
        async with server:
            d = Downloader(url, ssl_context=None, allow_http=True, policy=policy)
            with pytest.raises(DownloadError, match=r"max disconnects reached .*inside a chunk"):
                await collect(d)
            assert d.connections == 2

    run(scenario())


def test_a_certificate_for_another_name_is_a_hostname_failure(
    tmp_path: Path, payload: bytes
) -> None:
    other = Pki.create(tmp_path / "pki", server_hosts=["firmware.example.com"])

    async def scenario() -> None:
        async with firmware_server(other, tmp_path / "files") as server:
            hosted = server.add_file("fw.bin", payload)
            policy = RetryPolicy(max_disconnects=1)
            d = Downloader(hosted.url, ssl_context=client_context(other), policy=policy)
            with pytest.raises(DownloadError) as caught:
                await collect(d)
            assert caught.value.code == "tls:hostname"
            assert caught.value.reason.startswith("tls:hostname: download: max disconnects")

    run(scenario())


def _hashed_trust_dir(pki: Pki, directory: Path, *, with_hash_link: bool) -> Path:
    """An OS-style trust directory: a CA bundle file and (optionally) its hash link."""
    directory.mkdir()
    bundle = directory / "ca-certificates.crt"
    bundle.write_bytes(pki.ca.cert_path.read_bytes())
    if with_hash_link:
        digest = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(bundle)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        (directory / f"{digest}.0").symlink_to(bundle.name)
    return bundle


@pytest.mark.parametrize("with_hash_link", [True, False])
def test_the_os_trust_store_is_read_lazily_from_a_hashed_directory(
    pki: Pki, tmp_path: Path, payload: bytes, monkeypatch: pytest.MonkeyPatch, with_hash_link: bool
) -> None:
    bundle = _hashed_trust_dir(pki, tmp_path / "certs", with_hash_link=with_hash_link)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(bundle.parent))
    context = download_ssl_context()
    # lazily: no CA parsed up front; else the bundle was loaded whole
    assert context.cert_store_stats()["x509_ca"] == (0 if with_hash_link else 1)
    assert download_ssl_context() is context  # made once per trust configuration

    async def scenario() -> None:
        async with firmware_server(pki, tmp_path / "files") as server:
            hosted = server.add_file("fw.bin", payload)
            d = Downloader(hosted.url, ssl_context=context, policy=FAST)
            assert await collect(d) == payload

    run(scenario())
    bundle.write_bytes(bundle.read_bytes() + b"\n")  # the store changed: a new context
    assert download_ssl_context() is not context


@pytest.mark.parametrize("threaded", [True, False], ids=["thread", "asyncio"])
def test_both_connection_kinds_read_the_same_bytes(
    pki: Pki, tmp_path: Path, payload: bytes, threaded: bool
) -> None:
    async def scenario() -> None:
        async with firmware_server(pki, tmp_path) as server:
            hosted = server.add_file("fw.bin", payload)
            url = http.URL.parse(hosted.url)
            response = await http.get(
                url, [("Range", "bytes=1000-")], ssl_context=client_context(pki), threaded=threaded
            )
            body = bytearray()
            while data := await response.read(1 << 20):
                body += data
                await asyncio.sleep(0)  # let a collected stream writer close things, if it could
            response.close()
            assert response.status == 206
            assert body == payload[1000:]
            d = downloader(server, pki, hosted.url, threaded=threaded)
            assert await collect(d) == payload

    run(scenario())


def test_a_cancelled_threaded_read_stops_its_thread_at_once(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        async with firmware_server(pki, tmp_path) as server:
            server.add_file("fw.bin", b"x" * 100_000)
            url = server.url("fw.bin", Fault(stall_after=50_000, stall_seconds=30))
            response = await http.get(
                http.URL.parse(url), [], ssl_context=client_context(pki), threaded=True
            )
            read = 0
            while read < 50_000:
                read += len(await response.read(65536))
            stalled = asyncio.ensure_future(response.read(65536))
            await asyncio.sleep(0.1)
            started = loop.time()
            stalled.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stalled
            threads = [t for t in threading.enumerate() if t.name.startswith("nhlink-http")]
            for thread in threads:
                thread.join(2)
            assert not any(t.is_alive() for t in threads)
            return loop.time() - started

    assert run(scenario()) < 1.0
