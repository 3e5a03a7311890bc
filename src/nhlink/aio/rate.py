"""Bandwidth and data-budget bookkeeping for downloads (sans-I/O: the caller sleeps).

:class:`TokenBucket` paces a byte stream to ``rate`` bytes per second: each
received piece is paid for with tokens that refill at ``rate``; when the
bucket is in debt, :meth:`TokenBucket.take` says how long to wait before
reading more. The caller waits with ``asyncio.sleep``, so the event loop
(websocket heartbeats) keeps running, and the socket is simply not read
meanwhile, so TCP flow control slows the server down. The bucket starts
empty and holds at most ``burst`` bytes, so over any stretch of a few
seconds the average stays within ``burst / duration`` of ``rate``.

:class:`DataBudget` counts every byte received for one update (re-fetches
and retries included) against ``max_download_bytes``.
"""

from __future__ import annotations

from nhlink.update.errors import DownloadError

MIN_PIECE = 4096
PIECES_PER_SECOND = 20
"""With a rate limit, reads are cut to about 1/20 s worth of bytes (smooth pacing)."""


class TokenBucket:
    """A token bucket of ``rate`` bytes/s holding at most ``burst`` bytes (starts empty)."""

    def __init__(self, rate: float, *, burst: float | None = None, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(MIN_PIECE, rate / 10))
        self._tokens = 0.0
        self._last = now

    def start(self, now: float) -> None:
        """Begin (or begin again after a pause such as a retry) at ``now``, empty."""
        self._tokens = min(self._tokens, 0.0)
        self._last = now

    def take(self, size: int, now: float) -> float:
        """Pay for ``size`` bytes received at ``now``; seconds to wait before the next read."""
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate) - size
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def piece_size(self, read_size: int) -> int:
        """The read size to use under this limit (about 1/20 s of data, at most ``read_size``)."""
        return max(1, min(read_size, max(MIN_PIECE, int(self.rate / PIECES_PER_SECOND))))


class DataBudget:
    """Bytes received against ``limit`` (0: no limit); raises ``DownloadError(code="budget")``."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("the data budget must be 0 (none) or positive")
        self.limit = limit
        self.used = 0

    @property
    def remaining(self) -> int | None:
        """Bytes still allowed (None without a limit)."""
        return None if not self.limit else max(0, self.limit - self.used)

    def check_needed(self, needed: int) -> None:
        """Fail now if ``needed`` more bytes cannot fit (before spending any of them)."""
        remaining = self.remaining
        if remaining is not None and needed > remaining:
            raise DownloadError(
                f"data budget exceeded: {needed} more bytes needed, {remaining} of "
                f"max_download_bytes {self.limit} left",
                code="budget",
            )

    def spend(self, size: int) -> None:
        """Count ``size`` received bytes; fails once more than the limit was received."""
        self.used += size
        if self.limit and self.used > self.limit:
            raise DownloadError(
                f"data budget exceeded: {self.used} bytes received, max_download_bytes is "
                f"{self.limit}",
                code="budget",
            )
