"""HTTP(S) proxies: which one to use, and CONNECT tunnels through it.

The configuration's ``proxy`` wins; otherwise ``HTTPS_PROXY`` (secure
targets) or ``HTTP_PROXY`` (plain ones) — lower-case names too — unless
``NO_PROXY`` lists the host (``*``, exact names, domain suffixes with or
without a leading dot, and ``host:port`` entries).

The hub socket hands the chosen URL to websockets, which tunnels with
CONNECT itself; :func:`open_tunnel` does the same for plain asyncio streams
(downloads).
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from nhlink.errors import ConfigError, NHLinkError

_MAX_RESPONSE_HEAD = 16 * 1024


class ProxyError(NHLinkError):
    """The proxy refused or broke the CONNECT tunnel."""


def select_proxy(
    target_url: str, configured: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The proxy URL to reach ``target_url`` through, or None to connect directly."""
    if configured:
        check_proxy_url(configured)
        return configured
    env = os.environ if environ is None else environ
    parts = urlsplit(target_url)
    secure = parts.scheme in ("wss", "https")
    names = ("HTTPS_PROXY", "https_proxy") if secure else ("HTTP_PROXY", "http_proxy")
    proxy = next((env[name] for name in names if env.get(name)), None)
    if proxy is None:
        return None
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    no_proxy = env.get("NO_PROXY") or env.get("no_proxy") or ""
    if bypasses_proxy(host, port, no_proxy):
        return None
    if "://" not in proxy:
        proxy = f"http://{proxy}"
    check_proxy_url(proxy)
    return proxy


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts ``host:port``."""
    host = host.lower().strip("[]")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.strip("[]").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def check_proxy_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"proxy {url!r} must be an http:// or https:// URL")


async def open_tunnel(
    proxy_url: str,
    host: str,
    port: int,
    *,
    proxy_ssl: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``proxy_url`` and open a CONNECT tunnel to ``host:port``.

    Returns the streams of the tunnel (start TLS to the target on them with
    ``writer.start_tls``). Raises :class:`ProxyError` when the proxy answers
    anything but 2xx, OSError when it cannot be reached.
    """
    check_proxy_url(proxy_url)
    parts = urlsplit(proxy_url)
    assert parts.hostname is not None
    secure = parts.scheme == "https"
    context = proxy_ssl or (ssl.create_default_context() if secure else None)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            parts.hostname,
            parts.port or (443 if secure else 80),
            ssl=context if secure else None,
            limit=_MAX_RESPONSE_HEAD,
        )
        try:
            writer.write(connect_request(host, port, parts.username, parts.password))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            raise ProxyError(f"proxy {parts.hostname} sent no valid answer to CONNECT") from None
        except BaseException:
            writer.close()
            raise
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        writer.close()
        raise ProxyError(f"proxy {parts.hostname} sent a malformed answer: {status_line!r}")
    if not 200 <= int(fields[1]) < 300:
        writer.close()
        raise ProxyError(f"proxy {parts.hostname} refused CONNECT to {host}:{port}: {status_line}")
    return reader, writer


def connect_request(
    host: str, port: int, username: str | None = None, password: str | None = None
) -> bytes:
    """The CONNECT request head (with Basic credentials when the proxy URL has them)."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if username is not None:
        credentials = f"{unquote(username)}:{unquote(password or '')}".encode()
        lines.append(f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
