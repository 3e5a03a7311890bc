"""Fault injection for the firmware server.

A `Fault` changes how one matching request is answered. Faults are queued per
path or per URL token; each applies to ``times`` requests (None: every
request from then on) and then the next queued fault, or normal service,
takes over.

Byte counts (``drop_after``, ``stall_after``) count body bytes of *that*
response, so a resumed request starting at byte R and dropped after N bytes
leaves the client at R + N.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Fault", "FaultQueue"]


@dataclass(frozen=True)
class Fault:
    """How to misbehave for a request.

    status:        answer this status with a short body instead of the file
                   (403 mimics an expired presigned URL, 404 a missing file)
    redirect_to:   answer `redirect_status` with ``Location`` set to this path
                   (on this server) or absolute URL
    drop_after:    abort the TCP connection (no TLS close_notify) after this
                   many body bytes
    stall_after / stall_seconds:
                   stop sending for `stall_seconds` after `stall_after` body bytes
    rate:          send at most this many body bytes per second
    times:         how many requests this fault applies to (None: all)
    """

    status: int | None = None
    redirect_to: str | None = None
    redirect_status: int = 302
    drop_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    rate: float | None = None
    times: int | None = 1

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 1:
            raise ValueError("Fault.times must be >= 1 or None")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("Fault.rate must be positive")
        for name in ("drop_after", "stall_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"Fault.{name} must be >= 0")


@dataclass
class _Entry:
    fault: Fault
    remaining: int | None


class FaultQueue:
    """Faults for one path or token, consumed in order."""

    def __init__(self, faults: list[Fault]) -> None:
        self._entries = [_Entry(fault, fault.times) for fault in faults]

    def take(self) -> Fault | None:
        """The fault for the next request (consuming one use), or None."""
        if not self._entries:
            return None
        entry = self._entries[0]
        if entry.remaining is not None:
            entry.remaining -= 1
            if entry.remaining <= 0:
                self._entries.pop(0)
        return entry.fault

    def __bool__(self) -> bool:
        return bool(self._entries)
