"""The ``logging`` extension: log records forwarded as ``logging:send`` (spec 4).

Records of the ``nhlink`` logger (and, with ``forward_app_logs``, the root
logger's) are taken by a handler that never blocks: it appends to a bounded
queue and drops what does not fit. A worker sends them at most 5 per second
with bursts of 10 (:class:`TokenBucket`). Records logged while a record is
being pushed are not forwarded, so forwarding cannot feed itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import logging
from collections import deque
from typing import Any

from nhlink.extensions.base import Extension, ExtensionContext
from nhlink.protocol.frames import JSONObject

logger = logging.getLogger("nhlink.extensions.logging")

RATE_PER_SECOND = 5.0
BURST = 10
QUEUE_SIZE = 200
MAX_MESSAGE = 8 * 1024
_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
_forwarding: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "nhlink_forwarding", default=False
)


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; times are seconds, passed in."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate


def record_payload(record: logging.LogRecord) -> JSONObject:
    """The ``logging:send`` payload of one record."""
    try:
        message = record.getMessage()
    except Exception as exc:  # a bad %-format in someone's log call
        message = f"{record.msg!r} (unformattable: {type(exc).__name__})"
    if record.exc_info and record.exc_info[0] is not None:
        message += f" ({record.exc_info[0].__name__}: {record.exc_info[1]})"
    stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return {
        "timestamp": stamp.isoformat().replace("+00:00", "Z"),
        "level": _LEVELS.get(record.levelno, record.levelname.lower()),
        "message": message[:MAX_MESSAGE],
        "meta": {
            "logger": record.name,
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
        },
    }


class _QueueHandler(logging.Handler):
    """Appends records to a bounded deque and wakes the worker; never blocks, never raises."""

    def __init__(self, level: int, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        super().__init__(level)
        self.records: deque[logging.LogRecord] = deque()
        self.dropped = 0
        self._loop = loop
        self._wake = wake

    def emit(self, record: logging.LogRecord) -> None:
        if _forwarding.get():
            return
        if len(self.records) >= QUEUE_SIZE:
            self.dropped += 1
            return
        self.records.append(record)
        try:
            if self._on_loop_thread():
                self._wake.set()
            else:
                self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed
            pass

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False


class LoggingExtension(Extension):
    """Forwards log records to the hub, rate-limited."""

    name = "logging"

    def __init__(
        self,
        *,
        forward_app_logs: bool = False,
        level: int = logging.INFO,
        rate: float = RATE_PER_SECOND,
        burst: int = BURST,
    ) -> None:
        super().__init__()
        self.forward_app_logs = forward_app_logs
        self.level = level
        self.rate = rate
        self.burst = burst
        self._handler: _QueueHandler | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loggers: list[logging.Logger] = []

    @property
    def dropped(self) -> int:
        """Records dropped because the queue was full."""
        return self._handler.dropped if self._handler is not None else 0

    async def start(self, context: ExtensionContext) -> None:
        await super().start(context)
        wake = asyncio.Event()
        handler = _QueueHandler(self.level, asyncio.get_running_loop(), wake)
        self._handler = handler
        # with the application's logs, the root logger gets nhlink's records by propagation
        self._loggers = [logging.getLogger("" if self.forward_app_logs else "nhlink")]
        for target in self._loggers:
            target.addHandler(handler)
        self._worker = asyncio.get_running_loop().create_task(self._send(handler, wake, context))

    async def stop(self) -> None:
        if self._handler is not None:
            for target in self._loggers:
                target.removeHandler(self._handler)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._handler = self._worker = None
        await super().stop()

    async def _send(
        self, handler: _QueueHandler, wake: asyncio.Event, context: ExtensionContext
    ) -> None:
        bucket = TokenBucket(self.rate, self.burst, context.now())
        while True:
            if not handler.records:
                wake.clear()
                await wake.wait()
                continue
            delay = bucket.wait_time(context.now())
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            bucket.take(context.now())
            payload = record_payload(handler.records.popleft())
            token = _forwarding.set(True)
            try:
                context.push("send", payload)
            finally:
                _forwarding.reset(token)


def level_number(name: str) -> int:
    """A level name (``info``, ``WARNING``...) as its number; INFO when unknown."""
    value: Any = logging.getLevelName(name.upper())
    return value if isinstance(value, int) else logging.INFO
