"""TLS strictness of the firmware downloader and the hub socket: the CA and the hostname
are always verified, and a server offering only TLS 1.0/1.1 is refused with a clear line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from nhlink.aio.downloader import Downloader, RetryPolicy, download_ssl_context
from nhlink.aio.link import NervesHubLink
from nhlink.aio.tls import client_context as hub_client_context
from nhlink.testing import LocalHub, Pki
from nhlink.testing.firmware_server import https_server_context
from nhlink.update.errors import DownloadError
from tests.hostile.support import hostile_server
from tests.link.support import Records, device_config, run, running
from tests.update.support import client_context, collect

TWO_TRIES = RetryPolicy(time_between_retries=0.01, idle_timeout=2.0, max_disconnects=2)


async def serve_a_file(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    await writer.drain()


def legacy_server_context(pki: Pki) -> ssl.SSLContext:
    """A server speaking only TLS 1.0 and 1.1 (OpenSSL 3 needs security level 0 for them)."""
    context = https_server_context(pki.server.cert_path, pki.server.key_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@contextlib.contextmanager
def legacy_tls_server(pki: Pki) -> Iterator[tuple[str, list[str]]]:
    """A blocking TLS 1.0/1.1-only server in a thread (it closes with a FIN after its
    handshake alert, as real servers do); yields ``host:port`` and each connection's
    outcome."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    context = legacy_server_context(pki)
    outcomes: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            try:
                tls.do_handshake()
                tls.recv(65536)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                outcomes.append(tls.version() or "?")
            except (ssl.SSLError, OSError) as exc:
                outcomes.append(type(exc).__name__)
            finally:
                tls.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", outcomes
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def legacy_client_context(pki: Pki) -> ssl.SSLContext:
    context = client_context(pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.mark.parametrize("problem", ["unknown-ca", "other-hostname"])
def test_the_firmware_server_certificate_is_verified(
    pki: Pki, tmp_path: Path, problem: str
) -> None:
    if problem == "unknown-ca":
        other = Pki.create(tmp_path / "other")  # the same names, another root CA
        trusted = client_context(pki)
        detail = "unable to get local issuer certificate"
    else:
        other = Pki.create(tmp_path / "other", server_hosts=["firmware.example.com"])
        trusted = client_context(other)  # the CA is trusted: only the name is wrong
        detail = "IP address mismatch, certificate is not valid for '127.0.0.1'"
    cert, key = other.server.cert_path, other.server.key_path

    async def scenario() -> None:
        async with hostile_server(serve_a_file, context=https_server_context(cert, key)) as server:
            d = Downloader(server.url, ssl_context=trusted, policy=TWO_TRIES)
            with pytest.raises(DownloadError) as failure:
                await collect(d)
            assert d.connections == 0
        message = str(failure.value)
        assert message.startswith(
            "download: max disconnects reached (last: [SSL: CERTIFICATE_VERIFY_FAILED]"
        )
        assert detail in message

    run(scenario())


def test_a_firmware_server_with_only_tls_1_1_is_refused(pki: Pki) -> None:
    async def scenario() -> None:
        with legacy_tls_server(pki) as (host, outcomes):
            url = f"https://{host}/fw.bin"
            # the server really does speak TLS 1.1 to a client that allows it
            legacy = Downloader(url, ssl_context=legacy_client_context(pki), policy=TWO_TRIES)
            assert await collect(legacy) == b"hello"
            assert outcomes == ["TLSv1.1"]
            d = Downloader(url, ssl_context=client_context(pki), policy=TWO_TRIES)
            assert d._ssl_context is not None
            d._ssl_context.minimum_version = download_ssl_context().minimum_version
            with pytest.raises(DownloadError) as failure:
                await collect(d)
            assert d.connections == 0
        assert str(failure.value).startswith(
            "download: max disconnects reached (last: [SSL: TLSV1_ALERT_PROTOCOL_VERSION]"
        )

    run(scenario())


def test_every_client_context_verifies_and_requires_tls_1_2(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            config = device_config(hub, "dev-ctx", tmp_path)
        for context in (
            hub_client_context(config),
            download_ssl_context(config),
            download_ssl_context(),
        ):
            assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
            assert context.verify_mode == ssl.CERT_REQUIRED
            assert context.check_hostname

    run(scenario())


def test_a_hub_with_only_tls_1_1_is_one_clear_line(
    pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    async def scenario() -> None:
        with legacy_tls_server(pki) as (host, outcomes):
            async with LocalHub(pki=pki) as hub:
                config = device_config(
                    hub, "dev-old", tmp_path, host=host, reconnect_after_msec=[50]
                )
            async with running(NervesHubLink(config)):
                await asyncio.sleep(0.6)
            assert len(outcomes) >= 2 and "TLSv1.1" not in outcomes

    run(scenario())
    errors = {r.getMessage() for r in nhlink_log.at_least(logging.ERROR)}
    assert errors == {
        "TLS handshake failed: the hub refused it (handshake_failure: usually no TLS version "
        "or cipher suite in common; device allows tlsv1.2): check that the hub speaks TLS 1.2 "
        "or newer, and [ssl] versions"
    }
