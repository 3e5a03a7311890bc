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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from nhlink import __version__
from nhlink.aio import http
from nhlink.aio.http import URL, HTTPLimitError, HTTPStreamError, Response
from nhlink.aio.proxy import ProxyError, select_proxy
from nhlink.aio.tls import load_trust
from nhlink.config import Config, RetryConfig
from nhlink.errors import ConfigError
from nhlink.update.errors import DownloadError

logger = logging.getLogger("nhlink.aio.downloader")

USER_AGENT = f"nhlink/{__version__}"
READ_SIZE = 256 * 1024
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


def download_ssl_context(config: Config | None = None) -> ssl.SSLContext:
    """A verifying TLS context for firmware servers: the OS trust store (presigned
    S3-style URLs) plus the configured ``cacertfile`` and ``cacerts``."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config is not None:
        load_trust(context, config)
    return context


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
    ) -> None:
        self.policy = policy or RetryPolicy()
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

    def _checked(self, text: str) -> URL:
        try:
            url = URL.parse(text)
        except ValueError as exc:
            raise DownloadError(f"bad URL: {exc}") from None
        if url.scheme != "https" and not self._allow_http:
            raise DownloadError(f"refusing a non-https URL ({url.redacted})")
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
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        url = self._url
        while True:
            if self._restart is not None:
                self.position, self._restart = self._restart, None
            if self.complete or self._unsized_body_ended:
                return
            self._check_lifetime(loop)
            try:
                response, url = await self._open(url, loop)
            except HTTPLimitError as exc:
                raise DownloadError(str(exc)) from None
            except RETRYABLE as exc:
                await self._retry(_describe(exc))
                continue
            try:
                async with contextlib.aclosing(self._body(response, loop)) as body:
                    async for data in body:
                        yield data
            except HTTPLimitError as exc:
                raise DownloadError(str(exc)) from None
            except RETRYABLE as exc:
                await self._retry(_describe(exc))
            finally:
                response.close()

    async def _body(
        self, response: Response, loop: asyncio.AbstractEventLoop
    ) -> AsyncGenerator[bytes, None]:
        skip = self._skip
        window = self.policy.speed_window(response.content_length)
        waited = 0.0
        while True:
            self._check_lifetime(loop)
            before = loop.time()
            try:
                async with asyncio.timeout(min(self.policy.idle_timeout, window - waited)):
                    data = await response.read(self._read_size)
            finally:
                waited += loop.time() - before
                if waited >= window:
                    raise DownloadError("worst case download speed reached")
            if not data:
                self._unsized_body_ended = self.total is None
                break
            if skip:
                dropped = min(skip, len(data))
                skip -= dropped
                data = data[dropped:]
                if not data:
                    continue
            if self.total is not None and self.position + len(data) > self.total:
                raise DownloadError(f"the server sent more than the expected {self.total} bytes")
            self.position += len(data)
            yield data
            if self._restart is not None:
                return
        if self.total is not None and self.position < self.total:
            raise HTTPStreamError(f"body ended at byte {self.position} of {self.total}")

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
        raise DownloadError(f"more than {self.policy.max_redirects} redirects")

    def _redirect(self, url: URL, location: str) -> URL:
        """The URL a redirect names, if it may be followed (DownloadError otherwise)."""
        try:
            target = url.join(location)
        except ValueError as exc:
            raise DownloadError(f"bad redirect: {exc}") from None
        if url.scheme == "https" and target.scheme != "https":
            raise DownloadError(f"refusing a redirect to a non-https URL ({target.redacted})")
        if target.host.lower() != url.host.lower() and not self._allow_cross_host:
            raise DownloadError(
                f"refusing a redirect from {url.host} to another host ({target.redacted}); "
                "allow_cross_host_redirects permits it"
            )
        return self._checked(str(target))

    async def _request(self, url: URL) -> Response:
        try:
            proxy = select_proxy(str(url), self._proxy, self._environ)
        except ConfigError as exc:
            raise DownloadError(str(exc)) from None
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
                raise DownloadError(f"http {status} without a Location")
            return location
        if status >= 400:
            raise DownloadError(f"http {status}")
        self._skip = 0
        if status == 206:
            first, total = self._content_range(response)
            if first != self.position:
                raise HTTPStreamError(f"asked for byte {self.position}, got byte {first}")
            self._set_total(total)
        elif status == 200:
            self._skip = self.position  # the server ignored Range: skip what we have
            self._set_total(response.content_length)
        else:
            raise DownloadError(f"unexpected http {status}")
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
                f"the server has {total} bytes, the offer said {self.expected_size}"
            )
        if self.total is not None and total != self.total:
            raise DownloadError(f"the file changed size ({self.total} -> {total} bytes)")
        self.total = total

    def _check_lifetime(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.time() - self._started > self.policy.max_timeout:
            raise DownloadError("max timeout reached")

    async def _retry(self, why: str) -> None:
        self.retry_number += 1
        if self.retry_number >= self.policy.max_disconnects:
            logger.warning("download attempt failed (%s); no attempts left", why)
            raise DownloadError(f"max disconnects reached (last: {why})")
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
