"""Helpers for the update tests: TLS contexts, a CONNECT proxy, a recording channel."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhlink.aio.downloader import Downloader, RetryPolicy
from nhlink.protocol.device import ProgressThrottle
from nhlink.testing import Fault, FirmwareServer, Pki
from nhlink.testing.firmware_server import https_server_context


def client_context(pki: Pki) -> ssl.SSLContext:
    return ssl_context_for(str(pki.ca.cert_path))


def ssl_context_for(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


@contextlib.asynccontextmanager
async def firmware_server(
    pki: Pki,
    directory: Path,
    *,
    server_class: type[FirmwareServer] = FirmwareServer,
    **kwargs: Any,
) -> AsyncIterator[FirmwareServer]:
    context = https_server_context(pki.server.cert_path, pki.server.key_path)
    async with server_class(ssl_context=context, directory=directory, **kwargs) as server:
        yield server


@contextlib.asynccontextmanager
async def serving(
    pki: Pki,
    directory: Path,
    payload: bytes,
    *faults: Fault,
    server_class: type[FirmwareServer] = FirmwareServer,
) -> AsyncIterator[tuple[FirmwareServer, str]]:
    """A TLS firmware server hosting ``payload`` as ``fw.bin``, and the URL to fetch it by.

    With ``faults``, the URL carries a fresh token they apply to.
    """
    async with firmware_server(pki, directory, server_class=server_class) as server:
        hosted = server.add_file("fw.bin", payload)
        yield server, server.url("fw.bin", *faults) if faults else hosted.url


def tls_downloader(pki: Pki, url: str, policy: RetryPolicy, **kwargs: Any) -> Downloader:
    """A downloader of ``url`` that trusts the test PKI's CA."""
    return Downloader(url, ssl_context=client_context(pki), policy=policy, **kwargs)


async def collect(downloader: Downloader) -> bytes:
    out = bytearray()
    async with contextlib.aclosing(downloader.chunks()) as chunks:
        async for chunk in chunks:
            out += chunk
    return bytes(out)


async def timed_drain(downloader: Downloader) -> tuple[int, float]:
    """Read ``downloader`` to its end: the bytes received and the seconds it took."""
    loop = asyncio.get_running_loop()
    received = 0
    started = loop.time()
    async with contextlib.aclosing(downloader.chunks()) as chunks:
        async for chunk in chunks:
            received += len(chunk)
    return received, loop.time() - started


class ConnectProxy:
    """A minimal HTTP CONNECT proxy that records the CONNECT lines it served."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode()
        self.requests.append(line)
        _, authority, _ = line.split(" ")
        host, port = authority.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@dataclass
class RecordingChannel:
    """Stands in for the device channel: records every push, with the real throttle."""

    pushes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    downloading: list[str | None] = field(default_factory=list)
    throttles: dict[str, ProgressThrottle] = field(default_factory=dict)

    def statuses(self) -> list[dict[str, Any]]:
        return [payload for event, payload in self.pushes if event == "status_update"]

    def status_update(self, status: str, **fields: Any) -> bool:
        self.pushes.append(("status_update", {"status": status, **fields}))
        return True

    def status_received(self) -> bool:
        self.throttles.clear()
        return self.status_update("received")

    def status_started(self, network_interface: str | None) -> bool:
        return self.status_update("started", downloader_network_interface=network_interface)

    def status_completed(self) -> bool:
        return self.status_update("completed")

    def status_ignored(self, reason: str = "") -> bool:
        return self.status_update("ignored", reason=reason)

    def status_rescheduled(self, minutes: float, reason: str | None = None) -> bool:
        fields: dict[str, Any] = {"delay_for": max(5, round(minutes))}
        if reason is not None:
            fields["reason"] = reason
        return self.status_update("rescheduled", **fields)

    def status_failed(self, reason: str) -> bool:
        return self.status_update("failed", reason=reason)

    def fwup_progress(self, stage: str, value: float, now: float, *, force: bool = False) -> bool:
        throttle = self.throttles.setdefault(stage, ProgressThrottle())
        percent = round(value)
        if not (force or throttle.allows(percent, now)):
            return False
        throttle.record(percent, now)
        self.pushes.append(("fwup_progress", {"stage": stage, "value": percent}))
        return True

    def set_downloading(self, uuid: str | None) -> None:
        self.downloading.append(uuid)


def install_fake_fwup(directory: Path) -> Path:
    """Write the fake ``fwup`` (tests/update/fake_fwup.py) into ``directory/bin``; returns the dir."""
    import sys

    bindir = directory / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "fwup"
    source = (Path(__file__).parent / "fake_fwup.py").read_text()
    script.write_text(f"#!{sys.executable}\n{source}")
    script.chmod(0o755)
    return bindir


def install_nhlink_fwup(directory: Path) -> Path:
    """A ``fwup`` on PATH that is ``python -m nhlink fwup`` (the real applier as a process)."""
    import sys

    bindir = directory / "nhlink-bin"
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "fwup"
    src = Path(__file__).resolve().parents[2] / "src"
    script.write_text(
        f'#!/bin/sh\nPYTHONPATH="{src}" exec "{sys.executable}" -m nhlink fwup "$@"\n'
    )
    script.chmod(0o755)
    return bindir
