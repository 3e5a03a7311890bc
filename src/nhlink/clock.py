"""A floor for the system time, so boards without an RTC can check certificates and sign.

A device that boots without a real-time clock starts at 1970 (or at whatever its
last image said). Certificates then look "not yet valid" and shared-secret
signatures look decades old. nhlink therefore keeps a *floor*: the earliest time
that can possibly be true now. It is the latest of

* ``clock_floor`` from the configuration (ISO 8601 date/time or Unix seconds),
* the **build time** of the installed package: the newest modification time of
  the files in the ``nhlink`` package directory (an image build or ``pip
  install`` writes them; reproducible builds clamp them to the source date),
  less :data:`BUILD_TIME_MARGIN` because the build host's clock may be a little
  ahead, and never earlier than :data:`SOURCE_DATE` (this code cannot run
  before it was written, even where mtimes are zeroed),
* the **last known good time**: the hub's ``Date`` at the latest successful
  connection (the hub is the reference the signatures and certificates are
  checked against; the device's own clock is never recorded, so a clock that
  runs ahead cannot raise the floor), kept in ``<data_path>/last_good_time``
  (one decimal line, replaced atomically, at most once per
  :data:`RECORD_INTERVAL`).

The floor advances with the monotonic clock while the process runs
(:class:`TrustedClock`): a lower bound at start plus the time since is still a
lower bound. :class:`ClockGuard` is what the link runs before each connect: it
moves the system clock forward (``set_clock``) or warns once, and words the
``clock wrong`` error that replaces a certificate date failure.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nhlink.errors import ConfigError, NHLinkError

if TYPE_CHECKING:  # nhlink.config may import this module (validate_clock_config)
    from nhlink.config import Config

logger = logging.getLogger("nhlink.clock")

SOURCE_DATE = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC).timestamp()
"""No nhlink release containing this module can run before this date."""
BUILD_TIME_MARGIN = 86400.0
"""Seconds taken off the package files' mtime (the build host's clock may be ahead)."""
RECORD_INTERVAL = 3600.0
"""The last known good time is rewritten at most this often (seconds)."""
SERVER_SKEW_LIMIT = 600.0
"""A system clock further than this from the hub's is called wrong (seconds)."""
LAST_GOOD_FILE = "last_good_time"
CLOCK_CODE = "clock"
"""The reason code of a failure caused by a wrong clock."""

ClockSetter = Callable[[float], None]

_write_lock = threading.Lock()  # links of one process may share a data_path


class ClockError(NHLinkError):
    """The system clock is wrong (behind the floor or far from the hub's), so a check failed."""


# -- parsing -------------------------------------------------------------------


def parse_clock_floor(value: object) -> float | None:
    """``clock_floor`` as Unix seconds (None when unset); ConfigError when unreadable.

    Accepts Unix seconds (``"1777593600"``), an ISO 8601 date or date/time
    (``"2026-05-01"``, ``"2026-05-01T00:00:00Z"``, ``"...+02:00"``; no zone
    means UTC), and the TOML equivalents (integer, date, date-time).
    """
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, datetime.datetime):
        seconds = _utc(value).timestamp()
    elif isinstance(value, datetime.date):
        seconds = _utc(datetime.datetime(value.year, value.month, value.day)).timestamp()
    elif isinstance(value, str):
        seconds = _parse_text(value.strip())
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(
            f"clock_floor {value!r} is not an ISO 8601 date/time (e.g. 2026-05-01 or "
            "2026-05-01T00:00:00Z) or a positive number of Unix seconds"
        )
    return seconds


def validate_clock_config(config: Config) -> None:
    """Raise ConfigError when ``clock_floor`` cannot be read (called from config.validate)."""
    parse_clock_floor(config.clock_floor)


def _parse_text(text: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return _utc(parsed).timestamp()


def _utc(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def format_utc(timestamp: float) -> str:
    """``2026-05-01T00:00:00Z``."""
    try:
        moment = datetime.datetime.fromtimestamp(int(timestamp), datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:.0f} (Unix seconds)"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_http_date(header: str | None) -> float | None:
    """An HTTP ``Date`` header as Unix seconds, or None."""
    if not header:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


# -- the floor -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockFloor:
    """The earliest believable time and where it comes from."""

    value: float
    source: str  # "clock_floor", "build time" or "last connection"


@functools.cache
def build_time() -> float:
    """When the installed package was built or installed (see the module docstring)."""
    return package_build_time(Path(__file__).parent)


def package_build_time(directory: Path) -> float:
    """The newest mtime of the files in ``directory`` less the margin, at least SOURCE_DATE."""
    newest = 0.0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except OSError as exc:
        logger.debug("cannot read the package's file times: %s", exc)
    return max(SOURCE_DATE, newest - BUILD_TIME_MARGIN)


def read_last_good(data_path: str | os.PathLike[str]) -> float | None:
    """The last known good time kept in ``data_path``, or None."""
    path = Path(data_path) / LAST_GOOD_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
        value = int(text)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        logger.debug("ignoring %s: %s", path, exc)
        return None
    return float(value) if value > 0 else None


def write_last_good(data_path: str | os.PathLike[str], when: float) -> None:
    """Store ``when`` as the last known good time (atomically; OSError on failure)."""
    directory = Path(data_path)
    directory.mkdir(exist_ok=True)  # not its parents: no stray /data on a workstation
    path = directory / LAST_GOOD_FILE
    tmp = directory / (LAST_GOOD_FILE + ".tmp")
    with _write_lock:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{int(when)}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)


def floor_for(config: Config) -> ClockFloor:
    """The floor: the latest of ``clock_floor``, the build time and the last known good time."""
    candidates = [ClockFloor(build_time(), "build time")]
    configured = parse_clock_floor(config.clock_floor)
    if configured is not None:
        candidates.append(ClockFloor(configured, "clock_floor"))
    last_good = read_last_good(config.data_path)
    if last_good is not None:
        candidates.append(ClockFloor(last_good, "last connection"))
    return max(candidates, key=lambda floor: floor.value)


# -- checks --------------------------------------------------------------------


def trusted_now(system_now: float, floor: float) -> float:
    """The time to believe: the system's, but never earlier than the floor."""
    return max(system_now, floor)


@dataclass(frozen=True, slots=True)
class ClockCheck:
    """The system clock compared with the floor and, when known, the hub's clock."""

    system_now: float
    floor: ClockFloor
    server_now: float | None = None

    @property
    def behind(self) -> float:
        """How many seconds the system clock is behind the floor (0 when it is not)."""
        return max(0.0, self.floor.value - self.system_now)

    @property
    def server_skew(self) -> float | None:
        """System minus hub time in seconds, when the hub's time is known."""
        return None if self.server_now is None else self.system_now - self.server_now

    @property
    def disagrees_with_server(self) -> bool:
        skew = self.server_skew
        return skew is not None and abs(skew) > SERVER_SKEW_LIMIT

    @property
    def ok(self) -> bool:
        return self.behind == 0 and not self.disagrees_with_server

    def problem(self) -> str:
        """``clock wrong: ...`` (one line, without the advice), or "" when the clock is fine."""
        system = format_utc(self.system_now)
        if self.behind > 0:
            return (
                f"clock wrong: system time {system} is before the floor "
                f"{format_utc(self.floor.value)} ({self.floor.source})"
            )
        skew = self.server_skew
        if skew is not None and self.disagrees_with_server and self.server_now is not None:
            side = "behind" if skew < 0 else "ahead of"
            return (
                f"clock wrong: system time {system} is {abs(skew):.0f} s {side} the hub's "
                f"time {format_utc(self.server_now)}"
            )
        return ""


def check_clock(
    system_now: float, floor: ClockFloor, server_now: float | None = None
) -> ClockCheck:
    return ClockCheck(system_now, floor, server_now)


class TrustedClock:
    """The system time, never earlier than a floor that advances with the monotonic clock."""

    def __init__(
        self,
        floor: ClockFloor,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.floor = floor
        self.wall_clock = wall_clock
        self._monotonic = monotonic
        self._anchor = monotonic()

    def current_floor(self) -> ClockFloor:
        """The floor now: its start value plus the time this process has run since."""
        elapsed = max(0.0, self._monotonic() - self._anchor)
        return ClockFloor(self.floor.value + elapsed, self.floor.source)

    def now(self) -> float:
        return trusted_now(self.wall_clock(), self.current_floor().value)

    def check(self, server_now: float | None = None) -> ClockCheck:
        return check_clock(self.wall_clock(), self.current_floor(), server_now)


# -- what the link does at connect ------------------------------------------------


def set_system_clock(when: float) -> None:
    """Set CLOCK_REALTIME (needs root or CAP_SYS_TIME; OSError otherwise)."""
    time.clock_settime(time.CLOCK_REALTIME, when)


class ClockGuard:
    """The clock policy of a link: check before each connect, word errors, record good times.

    ``wall_clock``, ``monotonic`` and ``setter`` are injectable so tests never
    touch the machine's clock.
    """

    def __init__(
        self,
        config: Config,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        setter: ClockSetter = set_system_clock,
    ) -> None:
        self.trusted = TrustedClock(floor_for(config), wall_clock=wall_clock, monotonic=monotonic)
        self.set_clock = config.set_clock
        self.data_path = config.data_path
        self._monotonic = monotonic
        self._setter = setter
        self._set_failure: str | None = None
        self._warned = False
        self._server: tuple[float, float] | None = None
        self._recorded = read_last_good(config.data_path) or 0.0

    def now(self) -> float:
        """The trusted time (what shared-secret headers are signed with)."""
        return self.trusted.now()

    def server_now(self) -> float | None:
        """The hub's time, from the latest ``Date`` it sent, advanced since; None if unknown."""
        if self._server is None:
            return None
        date, received_at = self._server
        return date + (self._monotonic() - received_at)

    def note_server_date(self, header: str | None) -> None:
        """Remember the hub's ``Date`` header (refused or accepted upgrade)."""
        date = parse_http_date(header)
        if date is not None:
            self._server = (date, self._monotonic())

    def check(self) -> ClockCheck:
        return self.trusted.check(self.server_now())

    def before_connect(self) -> ClockCheck:
        """Move the clock forward to the floor (``set_clock``) or warn once that it is wrong."""
        check = self.trusted.check()  # only the floor: the hub's time may be stale
        if check.behind == 0:
            self._warned = False
            return self.check()
        if self.set_clock and self._set_failure is None:
            target = check.floor.value
            try:
                self._setter(target)
            except OSError as exc:
                self._set_failure = exc.strerror or str(exc)
            else:
                logger.warning(
                    "system clock was %s, before the floor %s (%s): set it to %s",
                    format_utc(check.system_now),
                    format_utc(check.floor.value),
                    check.floor.source,
                    format_utc(target),
                )
                return self.check()
        if not self._warned:
            self._warned = True
            logger.warning("%s: %s", check.problem(), self._advice(check))
        return check

    def certificate_problem(self) -> str | None:
        """The ``clock wrong`` line for a certificate date failure, or None if the clock is fine."""
        check = self.check()
        if check.ok:
            return None
        return f"{check.problem()}; certificates cannot be checked ({self._advice(check)})"

    def _advice(self, check: ClockCheck) -> str:
        if check.behind == 0:
            return "set the system clock, e.g. with NTP"
        if not self.set_clock:
            return "set_clock = true lets nhlink move it forward"
        if self._set_failure is not None:
            return f"set_clock could not move it: {self._set_failure}; needs root or CAP_SYS_TIME"
        return "set the system clock"

    def good_time_to_record(self) -> float | None:
        """After a successful connect: the hub's time to store as last known good, if due."""
        when = self.server_now()
        if when is None or when < self._recorded + RECORD_INTERVAL:
            return None
        self._recorded = when
        return when

    def record_good_time(self, when: float) -> None:
        """Store ``when`` in ``data_path`` (blocking I/O; run it off the event loop)."""
        try:
            write_last_good(self.data_path, when)
        except OSError as exc:
            logger.info("cannot store the last known good time in %s: %s", self.data_path, exc)
        else:
            logger.debug("last known good time %s stored", format_utc(when))


def tls_failure_code(exc: BaseException, check: ClockCheck | None = None) -> str | None:
    """The reason code of a TLS failure: ``clock`` or ``tls:<kind>``; None if not TLS.

    A certificate that is expired or not yet valid counts as ``clock`` when
    ``check`` says the clock is wrong (and always for a :class:`ClockError`).
    """
    from nhlink.aio.tls import DATE_KINDS, find_ssl_error, tls_kind

    if isinstance(exc, ClockError):
        return CLOCK_CODE
    error = find_ssl_error(exc)
    if error is None:
        return None
    kind = tls_kind(error)
    if kind in DATE_KINDS and check is not None and not check.ok:
        return CLOCK_CODE
    return f"tls:{kind}"
