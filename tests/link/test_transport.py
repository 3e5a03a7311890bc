"""Connect failures as one line each, socket URLs, and the interface of a connection."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage, InvalidProxyStatus, InvalidStatus
from websockets.http11 import Response

from nhlink.aio.link import NervesHubLink
from nhlink.aio.transport import (
    SocketSettings,
    _interface_with_address,
    _ipv4_route_interface,
    describe_connect_failure,
    socket_url,
)
from nhlink.config import Config
from nhlink.testing import LocalHub, Pki
from tests.link.support import device_config, run, running

SETTINGS = SocketSettings(
    url="wss://hub.example.com/socket/websocket?vsn=2.0.0",
    ssl=None,
    server_hostname=None,
    proxy="http://proxy:3128",
)


def response(status: int, **headers: str) -> Response:
    return Response(status, "x", Headers(headers), b"")


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            socket.gaierror(-2, "Name or service not known"),
            "cannot resolve 'hub.example.com': Name or service not known: check host and DNS",
        ),
        (
            ConnectionRefusedError(111, "refused"),
            "cannot connect to hub.example.com:443: connection refused (is the hub up?)",
        ),
        (
            TimeoutError("timed out during opening handshake"),
            "cannot connect to hub.example.com:443: timed out",
        ),
        (
            OSError(113, "No route to host"),
            "cannot connect to hub.example.com:443: No route to host",
        ),
        (
            InvalidStatus(response(503)),
            "the hub at hub.example.com:443 is unavailable (HTTP 503); retrying",
        ),
        (
            InvalidStatus(response(403)),
            "the hub at hub.example.com:443 refused the websocket upgrade: HTTP 403",
        ),
        (
            InvalidStatus(response(401)),
            "the hub refused the connection (HTTP 401): is the device registered?",
        ),
        (
            InvalidStatus(response(401, **{"nh-connection-error-reason": "no certificate pair"})),
            "the hub refused the connection (HTTP 401): no certificate pair",
        ),
        (
            InvalidStatus(response(302)),
            "the hub at hub.example.com:443 redirected without a usable Location (HTTP 302)",
        ),
        (
            InvalidProxyStatus(response(407)),
            "proxy http://proxy:3128 refused to tunnel to hub.example.com:443: HTTP 407",
        ),
        (
            InvalidMessage("did not receive a valid HTTP response"),
            "websocket upgrade with hub.example.com:443 failed: did not receive a valid HTTP response",
        ),
        (RuntimeError("odd"), "cannot connect to hub.example.com:443: RuntimeError: odd"),
    ],
)
def test_connect_failures_are_one_line(exc: Exception, message: str) -> None:
    error = describe_connect_failure(exc, SETTINGS, Config())
    assert str(error) == message


def test_refused_upgrade_keeps_status_and_date() -> None:
    error = describe_connect_failure(
        InvalidStatus(response(401, Date="Thu, 01 Jan 2026 00:00:00 GMT")), SETTINGS, Config()
    )
    assert (error.status, error.date) == (401, "Thu, 01 Jan 2026 00:00:00 GMT")


def test_ssl_errors_are_found_in_the_cause_chain() -> None:
    alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
    wrapped = InvalidMessage("did not receive a valid HTTP response")
    wrapped.__cause__ = EOFError()
    wrapped.__cause__.__context__ = alert
    error = describe_connect_failure(wrapped, SETTINGS, Config())
    assert str(error).startswith("TLS: the hub demands a device certificate (unknown CA)")
    assert error.kind == "tls:None:TLSV1_ALERT_UNKNOWN_CA"


def test_socket_urls() -> None:
    assert socket_url(Config(host="hub.example.com"), shared_secret=False) == (
        "wss://hub.example.com/socket/websocket?vsn=2.0.0"
    )
    assert socket_url(Config(host="https://hub.example.com:8443/x?a=1"), shared_secret=True) == (
        "wss://hub.example.com:8443/device-socket/websocket?a=1&vsn=2.0.0"
    )
    assert socket_url(Config(host="ws://localhost:4000"), shared_secret=False) == (
        "ws://localhost:4000/socket/websocket?vsn=2.0.0"
    )


def test_interfaces_of_local_addresses() -> None:
    assert _interface_with_address(ipaddress.ip_address("127.0.0.1")) == "lo"
    assert _interface_with_address(ipaddress.ip_address("::ffff:127.0.0.1")) == "lo"
    if Path("/proc/net/if_inet6").exists() and "lo" in Path("/proc/net/if_inet6").read_text():
        assert _interface_with_address(ipaddress.ip_address("::1")) == "lo"
    assert _interface_with_address(ipaddress.ip_address("192.0.2.77")) is None  # TEST-NET-1


def test_route_lookup_matches_the_routing_table() -> None:
    lines = Path("/proc/net/route").read_text().splitlines()[1:]
    routes = [line.split() for line in lines if line.split()]
    if not routes:
        pytest.skip("no IPv4 routes")
    default = [route[0] for route in routes if route[1] == "00000000"]
    if default:
        assert _ipv4_route_interface("192.0.2.1") == default[0]
    else:
        assert _ipv4_route_interface("192.0.2.1") is None


def test_connection_refused_through_the_link(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> tuple[int, str | None]:
        async with LocalHub(pki=pki) as hub:
            config = device_config(hub, "dev-refused", tmp_path)
            port = hub.port
        link = NervesHubLink(config.with_changes(host=f"127.0.0.1:{port}"))
        async with running(link):
            for _ in range(200):
                if link.last_error:
                    break
                await asyncio.sleep(0.01)
        return port, link.last_error

    port, error = run(scenario())
    assert error == f"cannot connect to 127.0.0.1:{port}: connection refused (is the hub up?)"
