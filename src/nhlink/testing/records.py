"""What the local hub remembers: frames, devices, upgrade attempts, TLS failures.

Times named ``at`` are ``time.monotonic()`` seconds (compare them with each
other); times named ``*_until`` / ``*_at_wall`` are hub-clock unix seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = [
    "DeviceRecord",
    "Direction",
    "FrameRecord",
    "InflightUpdate",
    "Notifier",
    "Release",
    "TlsFailureRecord",
    "UpgradeRecord",
]

Direction = Literal["from_device", "to_device"]
_T = TypeVar("_T")

FIRMWARE_META_KEYS = (
    "architecture",
    "author",
    "description",
    "misc",
    "platform",
    "product",
    "uuid",
    "vcs_identifier",
    "version",
)


@dataclass(frozen=True)
class FrameRecord:
    """One websocket message, decoded as a Phoenix V2 frame when possible."""

    index: int
    at: float
    direction: Direction
    identifier: str
    connection_id: int
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any
    raw: str | bytes
    malformed: bool = False

    def as_list(self) -> list[Any]:
        return [self.join_ref, self.ref, self.topic, self.event, self.payload]


@dataclass
class InflightUpdate:
    """An update the hub sent and has not seen finish."""

    uuid: str
    deployment_id: int | None
    firmware_url: str
    sent_at_wall: float
    last_progress_at_wall: float
    state: Literal["requested", "in_progress"] = "requested"


@dataclass(frozen=True)
class Release:
    """A deployment's firmware, offered by the orchestrator to eligible devices."""

    firmware_url: str
    firmware_meta: dict[str, str]
    size: int | None = None
    checksum: str | None = None
    partials_checksums: list[str] | None = None
    deployment_id: int = 1

    @property
    def uuid(self) -> str:
        return self.firmware_meta.get("uuid", "")


@dataclass
class DeviceRecord:
    """The hub's view of one device (mutable; tests may read and adjust it)."""

    identifier: str
    deleted: bool = False
    shared_key: str | None = None
    shared_secret: str | None = None
    # connection
    auth: str | None = None  # "certificate" | "shared_secret" | "product_key"
    connection_count: int = 0
    connected: bool = False
    current_connection_id: int | None = None
    # channels
    join_count: int = 0
    join_params: dict[str, Any] | None = None
    device_joined: bool = False
    console_join_params: dict[str, Any] | None = None
    extensions_join_params: dict[str, Any] | None = None
    attached_extensions: list[str] = field(default_factory=list)
    extension_errors: list[dict[str, Any]] = field(default_factory=list)
    health_reports: list[Any] = field(default_factory=list)
    locations: list[Any] = field(default_factory=list)
    console_output: list[str] = field(default_factory=list)
    script_results: list[dict[str, Any]] = field(default_factory=list)
    # firmware and updates
    firmware_uuid: str | None = None
    firmware_validated: bool | None = None
    network_interface: str | None = None
    statuses: list[dict[str, Any]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    rebooting_count: int = 0
    updates_enabled: bool = True
    updates_blocked_until: float = 0.0
    update_attempts: list[float] = field(default_factory=list)
    inflight: InflightUpdate | None = None
    successful_updates: int = 0

    @property
    def last_status(self) -> dict[str, Any] | None:
        return self.statuses[-1] if self.statuses else None

    @property
    def status_names(self) -> list[str]:
        return [str(s.get("status")) for s in self.statuses]

    @property
    def api_version(self) -> tuple[int, int, int]:
        return parse_version((self.join_params or {}).get("device_api_version"))


@dataclass(frozen=True)
class UpgradeRecord:
    """One websocket upgrade request and the hub's answer."""

    at: float
    path: str
    query: str
    headers: dict[str, str]
    status: int
    identifier: str | None
    auth: str | None
    reason: str


@dataclass(frozen=True)
class TlsFailureRecord:
    """A failed TLS handshake on the device socket (the client got an alert)."""

    at: float
    peer: Any
    reason: str


def strict_version(value: object) -> tuple[int, int, int] | None:
    """``"2.3.0"`` (pre-release/build suffixes allowed) -> (2, 3, 0); None if it does not parse."""
    if not isinstance(value, str):
        return None
    core = value.split("-", 1)[0].split("+", 1)[0]
    parts = core.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def parse_version(value: object) -> tuple[int, int, int]:
    """Like `strict_version`, but missing or unparsable gives (1, 0, 0), as the hub does."""
    return strict_version(value) or (1, 0, 0)


class Notifier:
    """Wake coroutines waiting for a condition on hub state."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait_for(self, check: Callable[[], _T | None], timeout: float, what: str) -> _T:
        """Return check()'s first non-None value; TimeoutError naming `what` after `timeout` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = check()
            if value is not None:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(waiter)


def monotonic() -> float:
    return time.monotonic()
