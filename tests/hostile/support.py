"""A tiny hostile HTTPS server: each connection is handed to a coroutine that
misbehaves in its own way once it has read the request head."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

from nhlink.aio.downloader import RetryPolicy
from nhlink.testing import Pki
from nhlink.testing.firmware_server import https_server_context

Behaviour = Callable[[asyncio.StreamWriter], Awaitable[None]]

FAST = RetryPolicy(time_between_retries=0.05, idle_timeout=2.0, max_disconnects=3)


class HostileServer:
    """Counts the connections it served; ``url`` names a file on it."""

    def __init__(self, server: asyncio.Server, scheme: str) -> None:
        self.server = server
        self.connections = 0
        self.url = f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}/fw.bin"


@contextlib.asynccontextmanager
async def hostile_server(
    behaviour: Behaviour, pki: Pki | None = None, context: ssl.SSLContext | None = None
) -> AsyncIterator[HostileServer]:
    """Serve ``behaviour`` over TLS (the PKI's server certificate, or ``context``)."""
    if context is None and pki is not None:
        context = https_server_context(pki.server.cert_path, pki.server.key_path)
    holder: list[HostileServer] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        holder[0].connections += 1
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            await behaviour(writer)
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    holder.append(HostileServer(server, "https" if context else "http"))
    async with server:
        yield holder[0]
        server.close()
