"""Opening the hub websocket: URL, TLS, proxy, auth headers, redirects, clear failures.

One call of :func:`open_websocket` is one connect attempt. It follows at most
two upgrade redirects (spec 1.4; ``http``/``https`` locations become
``ws``/``wss``) and turns every failure into a :class:`ConnectError` whose
message is one line saying what went wrong and what to check.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import socket
import ssl
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    InvalidHandshake,
    InvalidProxy,
    InvalidProxyMessage,
    InvalidProxyStatus,
    InvalidStatus,
    InvalidURI,
    SecurityError,
)

from nhlink.aio.tls import (
    DATE_KINDS,
    describe_handshake_failure,
    find_ssl_error,
    tls_kind,
    uses_chip_key,
)
from nhlink.clock import CLOCK_CODE, ClockError
from nhlink.config import Config
from nhlink.errors import NHLinkError

logger = logging.getLogger("nhlink.aio.transport")

_SECRET_HEADERS = frozenset({"x-nh-signature", "authorization", "proxy-authorization"})


class _RedactSecretHeaders(logging.Filter):
    """Hides the values of secret upgrade headers, which websockets logs at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
            record.args = (args[0], "<redacted>")
        return True


websocket_logger = logging.getLogger("nhlink.aio.transport.websocket")
"""The logger websockets writes the hub connection's handshake and frames to."""
websocket_logger.addFilter(_RedactSecretHeaders())

CERTIFICATE_PATH = "/socket/websocket"
SHARED_SECRET_PATH = "/device-socket/websocket"
PHOENIX_VSN = "2.0.0"
MAX_REDIRECTS = 2
DEFAULT_OPEN_TIMEOUT = 30.0
MAX_MESSAGE_SIZE = 1 << 20
_REDIRECT_STATUSES = frozenset({300, 301, 302, 303, 307, 308})


class ConnectError(NHLinkError):
    """A connect attempt failed; ``status``/``date`` come from a refused upgrade.

    ``kind`` names the failure without its changing details (times), so a
    link can tell a repeated failure from a new one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        date: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.date = date
        self.kind = kind or message


class ClockConnectError(ConnectError, ClockError):
    """A certificate date check failed because the system clock is wrong (kind ``clock``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind=CLOCK_CODE)


ClockProblem = Callable[[], str | None]
"""Returns the ``clock wrong: ...`` line when the clock is wrong, else None."""


@dataclass(frozen=True, slots=True)
class SocketSettings:
    """Everything one connect attempt needs except the (freshly signed) headers."""

    url: str
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    proxy: str | None
    compress: bool = True
    open_timeout: float = DEFAULT_OPEN_TIMEOUT
    max_redirects: int = MAX_REDIRECTS


def socket_url(config: Config, *, shared_secret: bool) -> str:
    """``<host>/socket/websocket?vsn=2.0.0`` (``/device-socket/...`` for shared secrets).

    The path is always set, as NervesHubLink sets it; an existing query is kept.
    """
    parts = urlsplit(config.socket_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = SHARED_SECRET_PATH if shared_secret else CERTIFICATE_PATH
    query = "&".join(q for q in (parts.query, f"vsn={PHOENIX_VSN}") if q)
    return urlunsplit((scheme, parts.netloc, path, query, ""))


class _HubConnection(ClientConnection):
    """Keeps the error the transport died of: with TLS 1.3 the hub's alert about our
    certificate arrives after the TLS handshake, during the websocket upgrade."""

    lost_with: Exception | None = None
    chip_bridge: Any = None  # the NervesKey TLS bridge under a chip-signed connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_with = exc
        super().connection_lost(exc)
        if self.chip_bridge is not None:
            self.chip_bridge.close()

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().handshake(*args, **kwargs)
        except InvalidHandshake as exc:
            if isinstance(self.lost_with, ssl.SSLError):
                raise self.lost_with from exc
            raise


class _HubConnect(connect):
    """websockets' connect, following at most ``max_redirects`` upgrade redirects."""

    def __init__(self, uri: str, *, max_redirects: int, **kwargs: Any) -> None:
        super().__init__(uri, **kwargs)
        self.redirects_left = max_redirects

    def process_redirect(self, exc: Exception) -> Exception | str:
        if not (
            isinstance(exc, InvalidStatus)
            and exc.response.status_code in _REDIRECT_STATUSES
            and "Location" in exc.response.headers
        ):
            return exc
        target = urljoin(self.uri, exc.response.headers["Location"])
        parts = urlsplit(target)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        target = urlunsplit((scheme, *parts[1:]))
        if self.redirects_left <= 0:
            return ConnectError(
                f"the hub redirected more than {MAX_REDIRECTS} times (last to {target}): check host"
            )
        self.redirects_left -= 1
        logger.info("upgrade redirected (HTTP %d) to %s", exc.response.status_code, target)
        headers = exc.response.headers
        del headers["Location"]
        headers["Location"] = target
        return super().process_redirect(exc)


async def open_websocket(
    settings: SocketSettings,
    headers: Mapping[str, str],
    config: Config,
    clock_problem: ClockProblem | None = None,
) -> ClientConnection:
    """Open the hub websocket or raise :class:`ConnectError` with a one-line reason.

    A certificate date failure while ``clock_problem()`` reports a wrong clock
    raises :class:`ClockConnectError` with that line instead of the TLS one.
    """
    if uses_chip_key(config):
        return await _open_chip_websocket(settings, headers, config)
    kwargs: dict[str, Any] = {}
    if settings.ssl is not None:
        kwargs["ssl"] = settings.ssl
        if settings.server_hostname is not None:
            kwargs["server_hostname"] = settings.server_hostname
    attempt = _HubConnect(
        settings.url,
        max_redirects=settings.max_redirects,
        compression="deflate" if settings.compress else None,
        additional_headers=dict(headers),
        user_agent_header="nhlink",
        proxy=settings.proxy,
        open_timeout=settings.open_timeout,
        ping_interval=None,
        close_timeout=5,
        max_size=MAX_MESSAGE_SIZE,
        create_connection=_HubConnection,
        logger=websocket_logger,
        **kwargs,
    )
    try:
        return await attempt
    except ConnectError:
        raise
    except Exception as exc:
        raise describe_connect_failure(exc, settings, config, clock_problem) from None


async def _open_chip_websocket(
    settings: SocketSettings, headers: Mapping[str, str], config: Config
) -> ClientConnection:
    """The websocket over a TLS session whose handshake the NervesKey signs.

    Python's ssl cannot use a key it cannot read, so the TLS runs in
    nhlink.nerves_key.tls (tlslite-ng with a chip-backed key) behind a socket
    pair; websockets speaks plain ws:// on the other end. No proxy on this route.
    """
    from nhlink.nerves_key.tls import ChipTlsError, open_bridge

    if settings.proxy:
        raise ConnectError("a NervesKey connection cannot go through an HTTP proxy yet")
    try:
        bridge, ws_uri = await open_bridge(config, settings.url, timeout=settings.open_timeout)
    except ChipTlsError as exc:
        raise ConnectError(str(exc), kind="tls:nerves_key") from None
    try:
        connection = await connect(
            ws_uri,
            sock=bridge.socket,
            compression="deflate" if settings.compress else None,
            additional_headers=dict(headers),
            user_agent_header="nhlink",
            open_timeout=settings.open_timeout,
            ping_interval=None,
            close_timeout=5,
            max_size=MAX_MESSAGE_SIZE,
            create_connection=_HubConnection,
            logger=websocket_logger,
        )
    except Exception as exc:
        bridge.close()
        raise describe_connect_failure(exc, settings, config) from None
    assert isinstance(connection, _HubConnection)
    connection.chip_bridge = bridge
    return connection


def describe_connect_failure(
    exc: Exception,
    settings: SocketSettings,
    config: Config,
    clock_problem: ClockProblem | None = None,
) -> ConnectError:
    """Map anything a connect attempt raised to a one-line :class:`ConnectError`."""
    parts = urlsplit(settings.url)
    host = parts.hostname or "?"
    where = f"{host}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
    if isinstance(exc, ConnectError):
        return exc
    ssl_error = find_ssl_error(exc)
    if ssl_error is not None:
        hostname = settings.server_hostname or host
        if clock_problem is not None and tls_kind(ssl_error) in DATE_KINDS:
            problem = clock_problem()
            if problem:
                return ClockConnectError(problem)
        kind = f"tls:{getattr(ssl_error, 'verify_code', None)}:{ssl_error.reason}"
        return ConnectError(describe_handshake_failure(ssl_error, config, hostname), kind=kind)
    if isinstance(exc, InvalidStatus):
        return _refused_upgrade(exc, where, settings)
    if isinstance(exc, InvalidProxyStatus):
        return ConnectError(
            f"proxy {settings.proxy} refused to tunnel to {where}: HTTP {exc.response.status_code}"
        )
    if isinstance(exc, InvalidProxyMessage | InvalidProxy):
        return ConnectError(f"proxy {settings.proxy} failed: {exc}")
    if isinstance(exc, InvalidURI | SecurityError):
        return ConnectError(f"cannot connect to {settings.url}: {exc}")
    if isinstance(exc, InvalidHandshake):
        return ConnectError(f"websocket upgrade with {where} failed: {exc}")
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot resolve {host!r}: {exc.strerror}: check host and DNS")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"cannot connect to {where}: connection refused (is the hub up?)")
    if isinstance(exc, TimeoutError):
        return ConnectError(f"cannot connect to {where}: timed out")
    if isinstance(exc, OSError):
        return ConnectError(f"cannot connect to {where}: {exc.strerror or exc}")
    return ConnectError(f"cannot connect to {where}: {type(exc).__name__}: {exc}")


def _refused_upgrade(exc: InvalidStatus, where: str, settings: SocketSettings) -> ConnectError:
    response = exc.response
    status = response.status_code
    date = response.headers.get("Date")
    reason = response.headers.get("nh-connection-error-reason")
    if status == 401 and reason:
        message = f"the hub refused the connection (HTTP 401): {reason}"
    elif status == 401 and urlsplit(settings.url).path == SHARED_SECRET_PATH:
        message = (
            "the hub refused the shared-secret signature (HTTP 401): check the key, the "
            "secret, the identifier and the system clock"
        )
    elif status == 401:
        message = "the hub refused the connection (HTTP 401): is the device registered?"
    elif status == 503:
        message = f"the hub at {where} is unavailable (HTTP 503); retrying"
    elif status in _REDIRECT_STATUSES:
        message = f"the hub at {where} redirected without a usable Location (HTTP {status})"
    else:
        message = f"the hub at {where} refused the websocket upgrade: HTTP {status}"
    return ConnectError(message, status=status, date=date)


# -- the network interface of a connection ------------------------------------------

_SIOCGIFADDR = 0x8915


def local_interface(connection: ClientConnection) -> str | None:
    """The name of the interface the connection leaves through, or None if unknown."""
    sockname = connection.transport.get_extra_info("sockname")
    peername = connection.transport.get_extra_info("peername")
    if not sockname:
        return None
    try:
        local = ipaddress.ip_address(str(sockname[0]).split("%")[0])
    except ValueError:
        return None
    found = _interface_with_address(local)
    if found is None and peername and isinstance(local, ipaddress.IPv4Address):
        found = _ipv4_route_interface(str(peername[0]))
    return found


def _interface_with_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return _interface_with_address(address.ipv4_mapped)
        try:
            with open("/proc/net/if_inet6") as table:
                for line in table:
                    fields = line.split()
                    if len(fields) >= 6 and ipaddress.IPv6Address(int(fields[0], 16)) == address:
                        return fields[5]
        except (OSError, ValueError):
            return None
        return None
    try:
        names = [name for _, name in socket.if_nameindex()]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            for name in names:
                request = struct.pack("256s", name.encode()[:15])
                try:
                    answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
                except OSError:
                    continue
                if socket.inet_ntoa(answer[20:24]) == str(address):
                    return name
    except OSError:
        return None
    return None


def _ipv4_route_interface(destination: str) -> str | None:
    """Longest-prefix match of ``destination`` in ``/proc/net/route``."""
    try:
        target = int(ipaddress.IPv4Address(destination))
        best: tuple[int, str] | None = None
        with open("/proc/net/route") as table:
            next(table, None)
            for line in table:
                fields = line.split()
                if len(fields) < 8:
                    continue
                network = int.from_bytes(bytes.fromhex(fields[1]), sys.byteorder)
                mask = int.from_bytes(bytes.fromhex(fields[7]), sys.byteorder)
                if target & mask == network and (best is None or mask.bit_count() > best[0]):
                    best = (mask.bit_count(), fields[0])
        return best[1] if best else None
    except (OSError, ValueError):
        return None
