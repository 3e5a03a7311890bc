"""The clock floor: parsing, build time, last known good time, checks and the connect policy."""

from __future__ import annotations

import datetime
import email.utils
import logging
import os
import ssl
from pathlib import Path

import pytest

from nhlink.aio.shared_secret import HeaderSigner
from nhlink.clock import (
    BUILD_TIME_MARGIN,
    LAST_GOOD_FILE,
    RECORD_INTERVAL,
    SOURCE_DATE,
    ClockError,
    ClockFloor,
    ClockGuard,
    TrustedClock,
    build_time,
    check_clock,
    floor_for,
    format_utc,
    package_build_time,
    parse_clock_floor,
    read_last_good,
    tls_failure_code,
    trusted_now,
    validate_clock_config,
    write_last_good,
)
from nhlink.config import Config, SharedSecretConfig
from nhlink.errors import ConfigError
from tests.link.support import Records

MAY_2026 = datetime.datetime(2026, 5, 1, tzinfo=datetime.UTC).timestamp()
FAR_FUTURE = datetime.datetime(2031, 1, 1, tzinfo=datetime.UTC).timestamp()


class FakeClocks:
    """A wall clock, a monotonic clock and a clock setter that never touch the machine."""

    def __init__(self, wall: float, *, fail: OSError | None = None) -> None:
        self.wall_value = wall
        self.mono_value = 1000.0
        self.set_calls: list[float] = []
        self.fail = fail

    def wall(self) -> float:
        return self.wall_value

    def mono(self) -> float:
        return self.mono_value

    def advance(self, seconds: float) -> None:
        self.wall_value += seconds
        self.mono_value += seconds

    def setter(self, when: float) -> None:
        self.set_calls.append(when)
        if self.fail is not None:
            raise self.fail
        self.wall_value = when


def guard(clocks: FakeClocks, tmp_path: Path, **config: object) -> ClockGuard:
    settings = Config(data_path=str(tmp_path / "data"), **config)  # type: ignore[arg-type]
    return ClockGuard(settings, wall_clock=clocks.wall, monotonic=clocks.mono, setter=clocks.setter)


# -- parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1777593600", 1777593600.0),
        (" 1777593600.5 ", 1777593600.5),
        ("2026-05-01", MAY_2026),
        ("2026-05-01T00:00:00Z", MAY_2026),
        ("2026-05-01T02:00:00+02:00", MAY_2026),
        ("2026-05-01 00:00:00", MAY_2026),  # no zone: UTC
        (1777593600, 1777593600.0),  # TOML integer
        (datetime.date(2026, 5, 1), MAY_2026),  # TOML date
        (datetime.datetime(2026, 5, 1), MAY_2026),  # TOML local date-time
        (None, None),
    ],
)
def test_clock_floor_forms(value: object, expected: float | None) -> None:
    assert parse_clock_floor(value) == expected


@pytest.mark.parametrize("value", ["", "yesterday", "-5", "0", "nan", "2026-13-01", True, [1]])
def test_unreadable_clock_floor_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^clock_floor .* is not an ISO 8601 date/time"):
        parse_clock_floor(value)


def test_validate_clock_config() -> None:
    validate_clock_config(Config(clock_floor="2026-05-01"))
    validate_clock_config(Config())
    with pytest.raises(ConfigError, match="clock_floor 'soon'"):
        validate_clock_config(Config(clock_floor="soon"))


def test_format_utc() -> None:
    assert format_utc(5) == "1970-01-01T00:00:05Z"
    assert format_utc(MAY_2026) == "2026-05-01T00:00:00Z"


# -- the sources of the floor ---------------------------------------------------------------


def test_build_time_is_the_newest_file_less_the_margin(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a")
    (tmp_path / "b.py").write_text("b")
    (tmp_path / "sub").mkdir()
    os.utime(tmp_path / "a.py", (FAR_FUTURE, FAR_FUTURE))
    os.utime(tmp_path / "b.py", (MAY_2026, MAY_2026))
    assert package_build_time(tmp_path) == FAR_FUTURE - BUILD_TIME_MARGIN
    os.utime(tmp_path / "a.py", (0, 0))  # reproducible builds may zero the mtimes
    assert package_build_time(tmp_path) == SOURCE_DATE
    assert package_build_time(tmp_path / "missing") == SOURCE_DATE


def test_build_time_of_the_installed_package() -> None:
    import nhlink.clock

    package = Path(nhlink.clock.__file__).parent
    assert build_time() == package_build_time(package)
    newest = max(p.stat().st_mtime for p in package.iterdir() if p.is_file())
    assert build_time() == max(SOURCE_DATE, newest - BUILD_TIME_MARGIN)


def test_last_good_time_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert read_last_good(data) is None
    write_last_good(data, 1_800_000_000.7)
    assert (data / LAST_GOOD_FILE).read_text() == "1800000000\n"
    assert read_last_good(data) == 1_800_000_000
    assert sorted(p.name for p in data.iterdir()) == [LAST_GOOD_FILE]  # no temp file left
    (data / LAST_GOOD_FILE).write_text("garbage\n")
    assert read_last_good(data) is None
    with pytest.raises(FileNotFoundError):  # parents are not created
        write_last_good(tmp_path / "no" / "such", 1)


def test_floor_is_the_latest_source(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert floor_for(Config(data_path=str(data))) == ClockFloor(build_time(), "build time")
    assert floor_for(Config(data_path=str(data), clock_floor="2031-01-01")) == ClockFloor(
        FAR_FUTURE, "clock_floor"
    )
    write_last_good(data, FAR_FUTURE + 60)
    assert floor_for(Config(data_path=str(data), clock_floor="2031-01-01")) == ClockFloor(
        FAR_FUTURE + 60, "last connection"
    )
    old = floor_for(Config(data_path=str(data), clock_floor="2000-01-01"))
    assert old.source == "last connection"


# -- checks ------------------------------------------------------------------------------


def test_trusted_now_and_check() -> None:
    floor = ClockFloor(MAY_2026, "clock_floor")
    assert trusted_now(5, MAY_2026) == MAY_2026
    assert trusted_now(MAY_2026 + 9, MAY_2026) == MAY_2026 + 9
    behind = check_clock(5, floor)
    assert not behind.ok and behind.behind == MAY_2026 - 5
    assert behind.problem() == (
        "clock wrong: system time 1970-01-01T00:00:05Z is before the floor "
        "2026-05-01T00:00:00Z (clock_floor)"
    )
    fine = check_clock(MAY_2026 + 1, floor)
    assert fine.ok and fine.behind == 0 and fine.problem() == ""
    near_hub = check_clock(MAY_2026 + 1, floor, server_now=MAY_2026 + 500)
    assert near_hub.ok and near_hub.server_skew == -499
    far_from_hub = check_clock(MAY_2026 + 1, floor, server_now=MAY_2026 + 3601)
    assert not far_from_hub.ok and far_from_hub.behind == 0
    assert far_from_hub.problem() == (
        "clock wrong: system time 2026-05-01T00:00:01Z is 3600 s behind the hub's time "
        "2026-05-01T01:00:01Z"
    )


def test_trusted_clock_floor_advances_with_the_monotonic_clock() -> None:
    clocks = FakeClocks(5.0)
    trusted = TrustedClock(
        ClockFloor(MAY_2026, "build time"), wall_clock=clocks.wall, monotonic=clocks.mono
    )
    assert trusted.now() == MAY_2026
    clocks.advance(30)
    assert trusted.now() == MAY_2026 + 30
    assert trusted.check().floor == ClockFloor(MAY_2026 + 30, "build time")
    clocks.wall_value = MAY_2026 + 1000  # the clock got set meanwhile
    assert trusted.now() == MAY_2026 + 1000 and trusted.check().ok


def test_header_signer_never_signs_before_the_floor() -> None:
    clocks = FakeClocks(5.0)
    trusted = TrustedClock(
        ClockFloor(MAY_2026, "clock_floor"), wall_clock=clocks.wall, monotonic=clocks.mono
    )
    settings = SharedSecretConfig(key="k", secret="s", identifier="d")
    signer = HeaderSigner(settings, wall_clock=trusted.now, monotonic=clocks.mono)
    assert signer.headers()["x-nh-time"] == str(int(MAY_2026))
    signer.note_refusal(email.utils.formatdate(MAY_2026 + 600, usegmt=True))  # the hub's Date
    clocks.advance(10)
    assert signer.signing_time() == int(MAY_2026 + 610)


# -- the connect policy ---------------------------------------------------------------------


def test_wrong_clock_warns_once(tmp_path: Path, nhlink_log: Records) -> None:
    clocks = FakeClocks(5.0)
    policy = guard(clocks, tmp_path, clock_floor="2031-01-01")
    assert not policy.before_connect().ok
    assert not policy.before_connect().ok
    warnings = [r.getMessage() for r in nhlink_log.at_least(logging.WARNING)]
    assert warnings == [
        "clock wrong: system time 1970-01-01T00:00:05Z is before the floor "
        "2031-01-01T00:00:00Z (clock_floor): set_clock = true lets nhlink move it forward"
    ]
    assert clocks.set_calls == []
    assert policy.now() == FAR_FUTURE
    assert policy.certificate_problem() == (
        "clock wrong: system time 1970-01-01T00:00:05Z is before the floor "
        "2031-01-01T00:00:00Z (clock_floor); certificates cannot be checked "
        "(set_clock = true lets nhlink move it forward)"
    )


def test_set_clock_moves_the_clock_forward(tmp_path: Path, nhlink_log: Records) -> None:
    clocks = FakeClocks(5.0)
    policy = guard(clocks, tmp_path, clock_floor="2031-01-01", set_clock=True)
    clocks.advance(7)  # the floor advances with the monotonic clock
    assert policy.before_connect().ok
    assert clocks.set_calls == [FAR_FUTURE + 7]
    assert clocks.wall_value == FAR_FUTURE + 7
    assert policy.certificate_problem() is None
    warnings = [r for r in nhlink_log.at_least(logging.WARNING)]
    assert [r.getMessage() for r in warnings] == [
        "system clock was 1970-01-01T00:00:12Z, before the floor 2031-01-01T00:00:07Z "
        "(clock_floor): set it to 2031-01-01T00:00:07Z"
    ]
    assert policy.before_connect().ok and len(clocks.set_calls) == 1


def test_set_clock_without_permission(tmp_path: Path, nhlink_log: Records) -> None:
    clocks = FakeClocks(5.0, fail=PermissionError(1, "Operation not permitted"))
    policy = guard(clocks, tmp_path, clock_floor="2031-01-01", set_clock=True)
    assert not policy.before_connect().ok
    assert not policy.before_connect().ok
    assert len(clocks.set_calls) == 1  # not retried at every attempt
    advice = "set_clock could not move it: Operation not permitted; needs root or CAP_SYS_TIME"
    assert [r.getMessage() for r in nhlink_log.at_least(logging.WARNING)] == [
        "clock wrong: system time 1970-01-01T00:00:05Z is before the floor "
        f"2031-01-01T00:00:00Z (clock_floor): {advice}"
    ]
    problem = policy.certificate_problem()
    assert problem is not None and problem.endswith(f"certificates cannot be checked ({advice})")


def test_hub_time_far_from_the_clock_is_a_clock_problem(tmp_path: Path) -> None:
    clocks = FakeClocks(FAR_FUTURE + 1, fail=PermissionError(1, "must not be called"))
    policy = guard(clocks, tmp_path, clock_floor="2031-01-01", set_clock=True)
    assert policy.certificate_problem() is None
    policy.note_server_date("not a date")
    assert policy.server_now() is None
    policy.note_server_date(email.utils.formatdate(FAR_FUTURE + 7201, usegmt=True))
    clocks.advance(5)
    assert policy.server_now() == FAR_FUTURE + 7206
    assert policy.before_connect().behind == 0 and clocks.set_calls == []
    assert policy.certificate_problem() == (
        "clock wrong: system time 2031-01-01T00:00:06Z is 7200 s behind the hub's time "
        "2031-01-01T02:00:06Z; certificates cannot be checked (set the system clock, e.g. "
        "with NTP)"
    )


def test_last_good_time_is_recorded_at_most_hourly(tmp_path: Path) -> None:
    clocks = FakeClocks(FAR_FUTURE)
    policy = guard(clocks, tmp_path, clock_floor="2031-01-01")
    assert policy.good_time_to_record() is None  # no Date from the hub: nothing to trust
    policy.note_server_date(email.utils.formatdate(FAR_FUTURE, usegmt=True))
    assert policy.good_time_to_record() == FAR_FUTURE
    policy.record_good_time(FAR_FUTURE)
    assert read_last_good(tmp_path / "data") == FAR_FUTURE
    clocks.advance(RECORD_INTERVAL - 1)
    assert policy.good_time_to_record() is None
    policy.note_server_date(email.utils.formatdate(FAR_FUTURE + RECORD_INTERVAL + 50, usegmt=True))
    assert policy.good_time_to_record() == FAR_FUTURE + RECORD_INTERVAL + 50  # the hub's time
    policy.record_good_time(FAR_FUTURE + RECORD_INTERVAL + 50)
    # A new process reads the stored time back: nothing is due until an hour later.
    again = guard(FakeClocks(FAR_FUTURE + 60), tmp_path, clock_floor="2031-01-01")
    again.note_server_date(email.utils.formatdate(FAR_FUTURE + RECORD_INTERVAL + 60, usegmt=True))
    assert again.good_time_to_record() is None
    assert again.trusted.floor == ClockFloor(FAR_FUTURE + RECORD_INTERVAL + 50, "last connection")


def test_recording_into_a_missing_directory_only_logs(tmp_path: Path, nhlink_log: Records) -> None:
    policy = guard(FakeClocks(FAR_FUTURE), tmp_path / "missing")
    policy.record_good_time(FAR_FUTURE)
    assert not (tmp_path / "missing").exists()
    assert any(
        "cannot store the last known good time" in r.getMessage() for r in nhlink_log.records
    )


# -- reason codes ------------------------------------------------------------------------


def _verify_error(code: int) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = code
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    return error


def test_tls_failure_codes() -> None:
    floor = ClockFloor(MAY_2026, "build time")
    wrong = check_clock(5, floor)
    right = check_clock(MAY_2026 + 1, floor)
    not_yet_valid, expired, unknown_ca = _verify_error(9), _verify_error(10), _verify_error(20)
    assert tls_failure_code(not_yet_valid, wrong) == "clock"
    assert tls_failure_code(expired, wrong) == "clock"
    assert tls_failure_code(not_yet_valid, right) == "tls:not_yet_valid"
    assert tls_failure_code(expired) == "tls:expired"
    assert tls_failure_code(unknown_ca, wrong) == "tls:unknown_ca"
    assert tls_failure_code(_verify_error(62)) == "tls:hostname"
    rejected = ssl.SSLError(1, "alert")
    rejected.reason = "TLSV1_ALERT_UNKNOWN_CA"
    assert tls_failure_code(rejected, wrong) == "tls:rejected"
    try:  # wrapped, as a download error would carry it
        try:
            raise expired
        except ssl.SSLError:
            raise OSError("download failed") from None
    except OSError as wrapped:
        assert tls_failure_code(wrapped, wrong) == "clock"
    assert tls_failure_code(ClockError("clock wrong: ...")) == "clock"
    assert tls_failure_code(ValueError("no TLS here"), wrong) is None
