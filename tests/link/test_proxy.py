"""Proxy selection and CONNECT tunnels."""

from __future__ import annotations

import asyncio

import pytest

from nhlink.aio.proxy import ProxyError, bypasses_proxy, connect_request, open_tunnel, select_proxy
from nhlink.errors import ConfigError
from tests.link.support import run

TARGET = "wss://hub.example.com/socket/websocket"


def test_configured_proxy_wins() -> None:
    env = {"HTTPS_PROXY": "http://env:3128"}
    assert select_proxy(TARGET, "http://cfg:8080", env) == "http://cfg:8080"
    with pytest.raises(ConfigError, match="must be an http:// or https:// URL"):
        select_proxy(TARGET, "socks5://x:1", env)


def test_environment_proxy_by_scheme() -> None:
    env = {"HTTPS_PROXY": "proxy.corp:3128", "http_proxy": "http://plain:80"}
    assert select_proxy(TARGET, None, env) == "http://proxy.corp:3128"
    assert select_proxy("ws://hub.example.com/socket", None, env) == "http://plain:80"
    assert select_proxy(TARGET, None, {}) is None
    assert select_proxy(TARGET, None, {"https_proxy": "https://p:1"}) == "https://p:1"


@pytest.mark.parametrize(
    ("no_proxy", "bypassed"),
    [
        ("*", True),
        ("hub.example.com", True),
        ("example.com", True),
        (".example.com", True),
        ("ample.com", False),
        ("other.org, hub.example.com:443", True),
        ("hub.example.com:8443", False),
        ("", False),
    ],
)
def test_no_proxy(no_proxy: str, bypassed: bool) -> None:
    assert bypasses_proxy("hub.example.com", 443, no_proxy) is bypassed
    env = {"HTTPS_PROXY": "http://p:1", "NO_PROXY": no_proxy}
    assert (select_proxy(TARGET, None, env) is None) is bypassed


def test_connect_request_with_credentials() -> None:
    assert connect_request("h", 443) == b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"
    assert b"Proxy-Authorization: Basic dTpwQHNz\r\n" in connect_request("h", 1, "u", "p%40ss")
    assert connect_request("::1", 443).startswith(b"CONNECT [::1]:443 ")


def test_open_tunnel_through_a_proxy_and_a_refusal() -> None:
    async def scenario() -> None:
        seen: list[bytes] = []

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head)
            if b"forbidden" in head:
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                writer.close()
                return
            port = int(head.split(b" ")[1].rsplit(b":", 1)[1])
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
            up_writer.write(await reader.readexactly(5))
            writer.write(await up_reader.readexactly(5))
            await writer.drain()
            writer.close()
            up_writer.close()

        target = await asyncio.start_server(echo, "127.0.0.1", 0)
        relay = await asyncio.start_server(proxy, "127.0.0.1", 0)
        target_port = target.sockets[0].getsockname()[1]
        proxy_url = f"http://user:pw@127.0.0.1:{relay.sockets[0].getsockname()[1]}"
        try:
            reader, writer = await open_tunnel(proxy_url, "127.0.0.1", target_port)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            writer.close()
            assert seen[0].startswith(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\n".encode())
            assert b"Proxy-Authorization: Basic dXNlcjpwdw==" in seen[0]
            with pytest.raises(ProxyError, match=r"refused CONNECT to forbidden:443: HTTP/1.1 403"):
                await open_tunnel(proxy_url, "forbidden", 443)
        finally:
            target.close()
            relay.close()

    run(scenario(), timeout=10)
