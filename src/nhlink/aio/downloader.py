"""Resumable firmware download (spec 7, with the reference client's weak spots fixed).

:class:`Downloader` yields the body of one URL as chunks, over as many HTTP
connections as it takes: a dropped, stalled or short connection is resumed
with ``Range`` from the exact byte reached, after ``time_between_retries``,
up to ``max_disconnects`` attempts; a status >= 400 fails at once; redirects
are followed (at most ``max_redirects`` in a row, never from https to http, and
to another host only with ``allow_cross_host_redirects``). A response over the
limits of :mod:`nhlink.aio.http` (header sizes and counts) or a body longer
than the offered ``size`` fails at once. The consumer's work is not
on the clock: the next socket read starts only after the consumer asked for
the next chunk, and the idle and worst-case-speed timers count only the time
spent waiting for the network, so a slow writer never times a download out.

``[update]`` limits (:meth:`Downloader.from_config`, :func:`download_limits`):
``rate_limit`` paces the reads to that many bytes/s by sleeping between them
(:mod:`nhlink.aio.rate`; the event loop stays free); ``max_bytes`` bounds every
body byte received, re-fetches and retries included (``DownloadError`` with
code ``budget``, before the bytes are spent when their number is known);
``metered`` never starts over from byte 0 once bytes were received (a server
ignoring ``Range`` fails with code ``metered``) and runs one metered download
at a time per event loop. Every final :class:`DownloadError` carries a reason
code (:mod:`nhlink.update.reasons`): ``network``, ``tls:<kind>``,
``http:<status>``, ``size``, ``budget``, ``metered``, ``refused:redirect``,
``refused:url``, ``refused:config``.

Direct connections are read by a worker thread (``threaded``, the default; see
:mod:`nhlink.aio.threaded`), which costs the event loop far less CPU per byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nhlink import __version__
from nhlink.aio import http
from nhlink.aio.http import URL, HTTPLimitError, HTTPStreamError, Response
from nhlink.aio.proxy import ProxyError, select_proxy
from nhlink.aio.rate import DataBudget, TokenBucket
from nhlink.aio.tls import load_trust
from nhlink.config import Config, RetryConfig
from nhlink.errors import ConfigError
from nhlink.update.errors import DownloadError
from nhlink.update.reasons import exception_code

logger = logging.getLogger("nhlink.aio.downloader")

USER_AGENT = f"nhlink/{__version__}"
READ_SIZE = 1024 * 1024
MIN_SPEED_WINDOW = 300.0
_REDIRECTS = (301, 302, 303, 307, 308)
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
RETRYABLE = (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, ProxyError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The ``[retry]`` numbers (spec 7) in seconds, plus the redirect limit."""

    max_disconnects: int = 10
    idle_timeout: float = 60.0
    max_timeout: float = 86_400.0
    time_between_retries: float = 15.0
    worst_case_download_speed: int = 30_000
    """Bits per second (the reference client's unit, despite its documentation)."""
    max_redirects: int = 5
    min_speed_window: float = MIN_SPEED_WINDOW

    @classmethod
    def from_config(cls, retry: RetryConfig) -> RetryPolicy:
        return cls(
            max_disconnects=max(1, retry.max_disconnects),
            idle_timeout=retry.idle_timeout_msec / 1000,
            max_timeout=retry.max_timeout_msec / 1000,
            time_between_retries=retry.time_between_retries_msec / 1000,
            worst_case_download_speed=max(1, retry.worst_case_download_speed),
        )

    def speed_window(self, length: int | None) -> float:
        """Network time a response of ``length`` bytes may take (at least 5 minutes)."""
        if length is None:
            return float("inf")
        return max(length * 8 / self.worst_case_download_speed, self.min_speed_window)


@dataclass(frozen=True, slots=True)
class Connected:
    """One HTTP (re)connect, reported through ``on_connect``."""

    url: str
    """The URL without its query string."""
    retry_number: int
    range_start: int
    network_interface: str | None


_CONTEXTS: dict[tuple[object, ...], ssl.SSLContext] = {}
_MAX_CONTEXTS = 8
_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.\d+")


def download_ssl_context(config: Config | None = None) -> ssl.SSLContext:
    """A verifying TLS context for firmware servers: the OS trust store (presigned
    S3-style URLs) plus the configured ``cacertfile`` and ``cacerts``.

    Contexts are made once per trust configuration and process (loading the OS
    store costs ~20 ms of CPU, on the path of every update and of its preflight):
    the context returned is shared, do not change it.
    """
    key = _trust_key(config)
    context = _CONTEXTS.get(key)
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and name
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_os_trust(context)
        if config is not None:
            load_trust(context, config)
        if len(_CONTEXTS) >= _MAX_CONTEXTS:
            _CONTEXTS.clear()
        _CONTEXTS[key] = context
    return context


def _trust_key(config: Config | None) -> tuple[object, ...]:
    """What a download context's trust depends on (files by identity and change time)."""
    files: list[object] = []
    paths = ssl.get_default_verify_paths()
    names = [paths.cafile, paths.capath]
    if config is not None and config.ssl.cacertfile:
        names.append(config.ssl.cacertfile)
    for name in names:
        try:
            info = os.stat(name) if name else None
        except OSError:
            info = None
        files.append((name, info and (info.st_ino, info.st_size, info.st_mtime_ns)))
    cacerts = tuple(config.ssl.cacerts or ()) if config is not None else ()
    return (*files, cacerts)


def _load_os_trust(context: ssl.SSLContext) -> None:
    """The OS trust store. Where the CA bundle sits in a hashed certificate directory
    (Debian, Alpine, Buildroot: both made from the same list by update-ca-certificates
    or c_rehash), only the directory is given to OpenSSL, which then reads a CA when a
    chain needs it instead of parsing the whole bundle up front."""
    paths = ssl.get_default_verify_paths()
    capath, cafile = paths.capath, paths.cafile
    if (
        capath
        and cafile
        and os.path.dirname(os.path.realpath(cafile)) == os.path.realpath(capath)
        and _is_hashed_dir(capath)
    ):
        context.load_verify_locations(capath=capath)
        return
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)


def _is_hashed_dir(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return any(_HASHED_NAME.fullmatch(entry.name) for entry in entries)
    except OSError:
        return False


def download_limits(config: Config) -> dict[str, Any]:
    """The ``[update]`` download limits as :class:`Downloader` keyword arguments."""
    update = config.update
    return {
        "rate_limit": update.download_rate_limit,
        "max_bytes": update.max_download_bytes,
        "metered": update.metered,
    }


_METERED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


@contextlib.asynccontextmanager
async def _metered_turn(metered: bool) -> AsyncIterator[None]:
    """Hold the event loop's metered-download lock (no two metered downloads at once)."""
    if not metered:
        yield
        return
    loop = asyncio.get_running_loop()
    lock = _METERED.setdefault(loop, asyncio.Lock())
    if lock.locked():
        logger.info("metered link: waiting for the download in progress to end")
    async with lock:
        yield


class Downloader:
    """The body of ``url`` as an async iterator of chunks; see the module docstring.

    ``position`` is the absolute offset of the next byte; :meth:`restart_at`
    (called between chunks) makes the next chunk come from another offset
    over a new connection, which is how a corrupt part is fetched again.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        policy: RetryPolicy | None = None,
        proxy: str | None = None,
        environ: Mapping[str, str] | None = None,
        expected_size: int | None = None,
        allow_http: bool = False,
        allow_cross_host_redirects: bool = False,
        read_size: int = READ_SIZE,
        on_connect: Callable[[Connected], None] | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rate_limit: int = 0,
        max_bytes: int = 0,
        metered: bool = False,
        threaded: bool = True,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.rate = TokenBucket(rate_limit) if rate_limit > 0 else None
        self.budget = DataBudget(max_bytes)
        self.metered = metered
        self._threaded = threaded
        self._allow_http = allow_http
        self._allow_cross_host = allow_cross_host_redirects
        self._url = self._checked(url)
        self._ssl_context = ssl_context
        self._proxy = proxy
        self._environ = dict(os.environ if environ is None else environ)
        self.expected_size = expected_size
        self.total: int | None = expected_size
        self.position = 0
        self.retry_number = 0
        self.connections = 0
        self._read_size = read_size
        self._on_connect = on_connect
        self._sleep = sleep
        self._restart: int | None = None
        self._started = 0.0
        self._skip = 0
        self._unsized_body_ended = False
        self._wake_at = 0.0

    @classmethod
    def from_config(
        cls,
        url: str,
        config: Config,
        *,
        expected_size: int | None = None,
        environ: Mapping[str, str] | None = None,
        allow_http: bool = False,
        **options: Any,
    ) -> Downloader:
        """A downloader set up from ``config``: TLS trust, ``[retry]``, proxy, redirects
        and the ``[update]`` limits (rate, data budget, metered link)."""
        return cls(
            url,
            ssl_context=download_ssl_context(config),
            policy=RetryPolicy.from_config(config.retry),
            proxy=config.proxy,
            environ=environ,
            expected_size=expected_size,
            allow_http=allow_http,
            allow_cross_host_redirects=config.allow_cross_host_redirects,
            **{**download_limits(config), **options},
        )

    @property
    def received_bytes(self) -> int:
        """Body bytes received so far over every connection (what the budget counts)."""
        return self.budget.used

    def _checked(self, text: str) -> URL:
        try:
            url = URL.parse(text)
        except ValueError as exc:
            raise DownloadError(f"bad URL: {exc}", code="refused:url") from None
        if url.scheme != "https" and not self._allow_http:
            raise DownloadError(f"refusing a non-https URL ({url.redacted})", code="refused:url")
        return url

    def restart_at(self, offset: int) -> None:
        """Continue from ``offset`` over a new connection (not counted as a retry)."""
        if offset < 0 or (self.total is not None and offset > self.total):
            raise ValueError(f"restart offset {offset} is outside the download")
        self._restart = offset

    @property
    def complete(self) -> bool:
        return self.total is not None and self.position >= self.total

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body, chunk by chunk, resuming after failures until it is complete."""
        async with _metered_turn(self.metered), contextlib.aclosing(self._chunks()) as chunks:
            async for data in chunks:
                yield data

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        if self.rate is not None:
            self.rate.start(self._started)
        url = self._url
        while True:
            if self._restart is not None:
                self.position, self._restart = self._restart, None
            if self.complete or self._unsized_body_ended:
                return
            self._check_lifetime(loop)
            if self.total is not None:
                self.budget.check_needed(self.total - self.position)
            try:
                response, url = await self._open(url, loop)
            except HTTPLimitError as exc:
                raise DownloadError(str(exc)) from None
            except RETRYABLE as exc:
                await self._retry(exc)
                continue
            try:
                async with contextlib.aclosing(self._body(response, loop)) as body:
                    async for data in body:
                        yield data
            except HTTPLimitError as exc:
                raise DownloadError(str(exc)) from None
            except RETRYABLE as exc:
                await self._retry(exc)
            finally:
                response.close()

    async def _body(
        self, response: Response, loop: asyncio.AbstractEventLoop
    ) -> AsyncGenerator[bytes, None]:
        skip = self._skip
        window = self.policy.speed_window(response.content_length)
        waited = 0.0
        read_size = self.rate.piece_size(self._read_size) if self.rate else self._read_size
        while True:
            allowed = self.budget.remaining
            size = read_size if allowed is None else min(read_size, allowed + 1)
            await self._pace(loop)
            self._check_lifetime(loop)
            before = loop.time()
            try:
                async with asyncio.timeout(min(self.policy.idle_timeout, window - waited)):
                    data = await response.read(size)
            finally:
                waited += loop.time() - before
                if waited >= window:
                    raise DownloadError("worst case download speed reached")
            if not data:
                self._unsized_body_ended = self.total is None
                break
            self.budget.spend(len(data))
            if self.rate is not None:
                now = loop.time()
                self._wake_at = now + self.rate.take(len(data), now)
            if skip:
                dropped = min(skip, len(data))
                skip -= dropped
                data = data[dropped:]
                if not data:
                    continue
            if self.total is not None and self.position + len(data) > self.total:
                raise DownloadError(
                    f"the server sent more than the expected {self.total} bytes", code="size"
                )
            self.position += len(data)
            yield data
            if self._restart is not None:
                return
        if self.total is not None and self.position < self.total:
            raise HTTPStreamError(f"body ended at byte {self.position} of {self.total}")

    async def _pace(self, loop: asyncio.AbstractEventLoop) -> None:
        """Under a rate limit, sleep until the bytes received so far are paid for."""
        delay = self._wake_at - loop.time()
        if self.rate is not None and delay > 0:
            await asyncio.sleep(delay)

    async def _open(self, url: URL, loop: asyncio.AbstractEventLoop) -> tuple[Response, URL]:
        """Connect and get response headers, following redirects; returns the final URL."""
        for _ in range(self.policy.max_redirects + 1):
            self._check_lifetime(loop)
            async with asyncio.timeout(self.policy.idle_timeout):
                response = await self._request(url)
            try:
                location = self._check_status(response)
            except BaseException:
                response.close()
                raise
            if location is None:
                return response, url
            response.close()
            url = self._redirect(url, location)
            logger.info("redirected to %s", url.redacted)
        raise DownloadError(
            f"more than {self.policy.max_redirects} redirects", code="refused:redirect"
        )

    def _redirect(self, url: URL, location: str) -> URL:
        """The URL a redirect names, if it may be followed (DownloadError otherwise)."""
        try:
            target = url.join(location)
        except ValueError as exc:
            raise DownloadError(f"bad redirect: {exc}", code="refused:redirect") from None
        if url.scheme == "https" and target.scheme != "https":
            raise DownloadError(
                f"refusing a redirect to a non-https URL ({target.redacted})",
                code="refused:redirect",
            )
        if target.host.lower() != url.host.lower() and not self._allow_cross_host:
            raise DownloadError(
                f"refusing a redirect from {url.host} to another host ({target.redacted}); "
                "allow_cross_host_redirects permits it",
                code="refused:redirect",
            )
        try:
            return self._checked(str(target))
        except DownloadError as exc:
            raise DownloadError(exc.why, code="refused:redirect") from None

    async def _request(self, url: URL) -> Response:
        try:
            proxy = select_proxy(str(url), self._proxy, self._environ)
        except ConfigError as exc:
            raise DownloadError(str(exc), code="refused:config") from None
        headers = [
            ("User-Agent", USER_AGENT),
            ("X-Retry-Number", str(self.retry_number)),
            ("Accept", "application/octet-stream"),
        ]
        if self.position:
            headers.append(("Range", f"bytes={self.position}-"))
        logger.debug(
            "GET %s (retry %d, from byte %d%s)",
            url.redacted,
            self.retry_number,
            self.position,
            f" via proxy {URL.parse(proxy).redacted}" if proxy else "",
        )
        response = await http.get(
            url,
            headers,
            ssl_context=self._ssl_context,
            proxy=proxy,
            timeout=self.policy.idle_timeout,
            threaded=self._threaded,
        )
        self.connections += 1
        if self._on_connect is not None:
            self._on_connect(
                Connected(
                    url.redacted,
                    self.retry_number,
                    self.position,
                    http.network_interface(response),
                )
            )
        return response

    def _check_status(self, response: Response) -> str | None:
        """Validate the answer; the Location to follow for a redirect, else None."""
        status = response.status
        if status in _REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise DownloadError(f"http {status} without a Location", code="refused:redirect")
            return location
        if status >= 400:
            raise DownloadError(f"http {status}", code=f"http:{status}")
        self._skip = 0
        if status == 206:
            first, total = self._content_range(response)
            if first != self.position:
                raise HTTPStreamError(f"asked for byte {self.position}, got byte {first}")
            self._set_total(total)
        elif status == 200:
            if self.position and self.metered:
                raise DownloadError(
                    f"the server ignored the Range request for byte {self.position}; a metered "
                    "link does not download the file again from byte 0",
                    code="metered",
                )
            self._skip = self.position  # the server ignored Range: skip what we have
            self._set_total(response.content_length)
        else:
            raise DownloadError(f"unexpected http {status}")
        if response.content_length is not None:
            self.budget.check_needed(response.content_length)
        return None

    @staticmethod
    def _content_range(response: Response) -> tuple[int, int | None]:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if match is None:
            raise HTTPStreamError("206 without a usable Content-Range")
        total = None if match.group(3) == "*" else int(match.group(3))
        return int(match.group(1)), total

    def _set_total(self, total: int | None) -> None:
        if total is None:
            return
        if self.expected_size is not None and total != self.expected_size:
            raise DownloadError(
                f"the server has {total} bytes, the offer said {self.expected_size}", code="size"
            )
        if self.total is not None and total != self.total:
            raise DownloadError(
                f"the file changed size ({self.total} -> {total} bytes)", code="size"
            )
        self.total = total

    def _check_lifetime(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.time() - self._started > self.policy.max_timeout:
            raise DownloadError("max timeout reached")

    async def _retry(self, exc: BaseException) -> None:
        why = _describe(exc)
        self.retry_number += 1
        if self.retry_number >= self.policy.max_disconnects:
            logger.warning("download attempt failed (%s); no attempts left", why)
            raise DownloadError(f"max disconnects reached (last: {why})", code=_code_of(exc))
        logger.warning(
            "download attempt failed at byte %d (%s); retry %d in %gs",
            self.position,
            why,
            self.retry_number,
            self.policy.time_between_retries,
        )
        await self._sleep(self.policy.time_between_retries)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "idle timeout"
    return str(exc) or type(exc).__name__


def _code_of(exc: BaseException) -> str:
    """The reason code of a connection failure: ``tls:<kind>`` or ``network``."""
    return exception_code(exc) if isinstance(exc, ssl.SSLError) else "network"
