"""Preflight I/O: the archive head by Range request, and the local disks.

:func:`fetch_head` reads just the start of the firmware archive (until
``meta.conf`` is complete) with ``Range: bytes=0-N`` requests, growing N when
meta.conf is longer, and never more than
:data:`~nhlink.update.preflight.HEAD_LIMIT` bytes: a server that ignores
Range answers ``200`` with the whole file, of which only the head is read
before the connection is dropped. Redirects follow the downloader's rules.
A network failure that waiting may cure ends in :class:`HeadUnavailable`
(the update is rescheduled); an HTTP error status, a refused URL or an
unverifiable certificate is final. :func:`staging_problem` and
:func:`check_not_running_device` look at ``data_path`` and the destination.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import stat
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from nhlink.aio import http
from nhlink.aio.http import URL, HTTPLimitError, Response
from nhlink.aio.proxy import ProxyError, select_proxy
from nhlink.errors import ConfigError
from nhlink.update.errors import DownloadError, UpdateError
from nhlink.update.preflight import HEAD_LIMIT, ArchiveHead, HeadReader, PreflightError
from nhlink.update.reasons import exception_code

logger = logging.getLogger("nhlink.aio.preflight")

FIRST_HEAD = 16 * 1024
"""Bytes asked for first; meta.conf of typical firmware fits."""
STAGING_MIN_FREE = 1024 * 1024
"""Free bytes ``data_path`` must offer for the resume journal."""
ATTEMPTS = 3
MAX_REDIRECTS = 5
MAX_REQUESTS = 32
"""Requests (redirects included) for one archive head at most (a server may answer a
Range with fewer bytes than asked)."""
_REDIRECTS = (301, 302, 303, 307, 308)
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_TRANSIENT = (OSError, TimeoutError, asyncio.IncompleteReadError, ProxyError)


class HeadUnavailable(UpdateError):
    """The archive head could not be fetched for now (network); waiting may help."""

    code = "network"


@dataclass(frozen=True, slots=True)
class HeadSettings:
    """How to reach the firmware server (the downloader's settings)."""

    ssl_context: ssl.SSLContext | None
    proxy: str | None = None
    environ: Mapping[str, str] | None = None
    allow_http: bool = False
    allow_cross_host_redirects: bool = False
    timeout: float = 60.0
    retry_delay: float = 15.0
    attempts: int = ATTEMPTS
    user_agent: str = "nhlink"


@dataclass(frozen=True, slots=True)
class HeadFetch:
    """The archive head and what the server said along the way."""

    head: ArchiveHead
    date: str | None
    bytes_read: int
    requests: int
    age: str | None = None
    """The ``Age`` header sent with ``date`` (a cache's copy: the Date is that old)."""


async def fetch_head(
    url: str,
    settings: HeadSettings,
    reader: HeadReader | None = None,
    *,
    expected_size: int | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> HeadFetch:
    """Read the archive at ``url`` just far enough to have its meta.conf; a server
    whose file is not the offered ``expected_size`` fails (as the download would)."""
    reader = reader if reader is not None else HeadReader()
    fetch = _HeadFetcher(url, settings, reader, expected_size)
    try:
        return await fetch.run(sleep)
    finally:
        reader.close()


class _HeadFetcher:
    def __init__(
        self, url: str, settings: HeadSettings, reader: HeadReader, expected_size: int | None
    ) -> None:
        self.settings = settings
        self.expected_size = expected_size
        self.reader = reader
        self.url = _checked(url, settings.allow_http)
        self.have = 0
        self.want = FIRST_HEAD
        self.date: str | None = None
        self.age: str | None = None
        self.requests = 0

    async def run(self, sleep: Callable[[float], Awaitable[object]]) -> HeadFetch:
        failures = 0
        while True:
            try:
                head = await self._attempt()
            except HTTPLimitError as exc:
                raise DownloadError(str(exc)) from None
            except ssl.SSLCertVerificationError as exc:  # kept as the cause: a clock check
                raise DownloadError(str(exc), code=exception_code(exc)) from exc
            except _TRANSIENT as exc:
                failures += 1
                why = str(exc) or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    why = "timeout"
                if failures >= self.settings.attempts:
                    raise HeadUnavailable(
                        f"cannot read the archive head: {why}", code=exception_code(exc)
                    ) from None
                logger.info("archive head: attempt %d failed (%s); retrying", failures, why)
                await sleep(self.settings.retry_delay)
                continue
            if head is not None:
                return HeadFetch(head, self.date, self.have, self.requests, self.age)
            if self.have >= HEAD_LIMIT:
                raise PreflightError(f"archive head: no complete meta.conf in {HEAD_LIMIT} bytes")
            if self.requests >= MAX_REQUESTS:
                raise DownloadError(
                    f"the archive head took more than {MAX_REQUESTS} requests "
                    f"({self.have} bytes so far)"
                )
            if self.have >= self.want:  # else the server sent less: ask for the rest
                self.want = min(HEAD_LIMIT, self.want * 4)

    async def _attempt(self) -> ArchiveHead | None:
        """One request for the bytes ``have..want-1``; the head once complete."""
        async with asyncio.timeout(self.settings.timeout):
            response = await self._open()
            try:
                return await self._read(response)
            finally:
                response.close()

    async def _open(self) -> Response:
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                proxy = select_proxy(str(url), self.settings.proxy, self.settings.environ)
            except ConfigError as exc:
                raise DownloadError(str(exc)) from None
            headers = [
                ("User-Agent", self.settings.user_agent),
                ("Accept", "application/octet-stream"),
                ("Range", f"bytes={self.have}-{self.want - 1}"),
            ]
            response = await http.get(
                url, headers, ssl_context=self.settings.ssl_context, proxy=proxy
            )
            self.requests += 1
            if self.date is None and response.headers.get("date"):
                self.date = response.headers.get("date")
                self.age = response.headers.get("age")
            status = response.status
            if status in _REDIRECTS:
                response.close()
                location = response.headers.get("location")
                if not location:
                    raise DownloadError(f"http {status} without a Location")
                url = self._redirect(url, location)
                continue
            if status >= 400:
                response.close()
                raise DownloadError(f"http {status}", code=f"http:{status}")
            if status not in (200, 206):
                response.close()
                raise DownloadError(f"unexpected http {status}")
            self.url = url
            return response
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects")

    def _redirect(self, url: URL, location: str) -> URL:
        try:
            target = url.join(location)
        except ValueError as exc:
            raise DownloadError(f"bad redirect: {exc}") from None
        if url.scheme == "https" and target.scheme != "https":
            raise DownloadError(f"refusing a redirect to a non-https URL ({target.redacted})")
        if target.host.lower() != url.host.lower() and not self.settings.allow_cross_host_redirects:
            raise DownloadError(
                f"refusing a redirect from {url.host} to another host ({target.redacted}); "
                "allow_cross_host_redirects permits it"
            )
        return _checked(str(target), self.settings.allow_http)

    async def _read(self, response: Response) -> ArchiveHead | None:
        skip = 0
        total: int | None
        limit = self.want
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if match is None or int(match.group(1)) != self.have:
                raise http.HTTPStreamError("206 without the asked Content-Range")
            total = None if match.group(3) == "*" else int(match.group(3))
            end = int(match.group(2))
            if end < self.have:
                raise http.HTTPStreamError("206 with an empty Content-Range")
            limit = min(limit, end + 1)  # a server may send less than asked
        else:  # the server ignored Range: skip what we have, read no further than the head
            skip = self.have
            total = response.content_length
        if total is not None and self.expected_size is not None and total != self.expected_size:
            raise DownloadError(
                f"the server has {total} bytes, the offer said {self.expected_size}", code="size"
            )
        while self.have < limit:
            data = await response.read(min(64 * 1024, skip + limit - self.have))
            if not data:
                break
            if skip:
                dropped = min(skip, len(data))
                skip -= dropped
                data = data[dropped:]
            if data:
                self.have += len(data)
                head = self.reader.feed(data)
                if head is not None:
                    return head
        # a body ends early only when complete (a broken connection raises): a 200 then
        # held the whole file; a 206 only its Content-Range's total tells
        whole = response.status == 200 and self.have < limit
        if whole or (total is not None and self.have >= total):
            raise PreflightError("archive head: the archive ends before meta.conf")
        if self.have < limit:
            raise http.HTTPStreamError("a 206 body shorter than its Content-Range")
        return None  # not yet: the next range follows


def _checked(text: str, allow_http: bool) -> URL:
    try:
        url = URL.parse(text)
    except ValueError as exc:
        raise DownloadError(f"bad URL: {exc}") from None
    if url.scheme != "https" and not allow_http:
        raise DownloadError(f"refusing a non-https URL ({url.redacted})")
    return url


# ------------------------------------------------------------------------- local disks


def staging_problem(data_path: str, min_free: int = STAGING_MIN_FREE) -> str | None:
    """Why ``data_path`` cannot hold the resume journal now (not a writable directory, or
    less than ``min_free`` bytes free), or None. A missing ``data_path`` is judged by
    the directory it would be made in; nothing is created."""
    path = os.path.abspath(data_path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        return f"data_path {data_path} is not a writable directory"
    try:
        fs = os.statvfs(path)
    except OSError as exc:
        return f"data_path {data_path} cannot be examined: {exc.strerror or exc}"
    free = fs.f_bavail * fs.f_frsize
    if free < min_free:
        return f"data_path {data_path} has {free} bytes free, at least {min_free} are needed"
    return None


def drop_journal(path: str) -> None:
    """Remove a journal left by an earlier run (resume is off for this update: it must
    not be resumed after it); a failure is logged."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("cannot remove the update journal %s: %s", path, exc.strerror or exc)


def check_not_running_device(devpath: str, root: str = "/") -> None:
    """The destination is not the partition the running root filesystem is on
    (``preflight:slot``); a whole disk holding it is fine (the task picks a slot)."""
    try:
        st = os.stat(devpath)
        root_dev = os.stat(root).st_dev
    except OSError:
        return
    if stat.S_ISBLK(st.st_mode) and st.st_rdev == root_dev:
        raise PreflightError(f"{devpath} holds the running root filesystem", code="preflight:slot")
