"""The clock floor against the local hub: a device clock ten years behind (injected, the
machine's clock is never touched) and a hub certificate that is only valid in the future."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from nhlink.aio.link import NervesHubLink
from nhlink.aio.tls import client_context
from nhlink.aio.transport import (
    ClockConnectError,
    ConnectError,
    SocketSettings,
    open_websocket,
    socket_url,
)
from nhlink.clock import ClockError, build_time, read_last_good, tls_failure_code
from nhlink.config import Config, load_config
from nhlink.testing import LocalHub, Pki
from tests.link.support import Records, device_config, run, running

TEN_YEARS = 10 * 365 * 86400.0
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def shared_secret_config(hub: LocalHub, directory: Path, identifier: str, **top: Any) -> Config:
    lines = [
        f'host = "{hub.host}"',
        f'data_path = "{directory / "data"}"',
        "reconnect_after_msec = [50]",
    ]
    lines += [f"{key} = {value}" for key, value in top.items()]
    lines += [
        "[ssl]",
        f'cacertfile = "{hub.pki.ca.cert_path}"',
        "[shared_secret]",
        f'key = "nhd_{identifier}"',
        f'secret = "{identifier}-secret"',
        f'identifier = "{identifier}"',
    ]
    path = directory / f"{identifier}.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path, environ={})


class DeviceClock:
    """The device's idea of the time: the real time plus an offset that a setter can change."""

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self.set_calls: list[float] = []

    def now(self) -> float:
        return time.time() + self.offset

    def set(self, when: float) -> None:
        self.set_calls.append(when)
        self.offset = when - time.time()


def test_ten_years_behind_without_a_configured_floor_signs_at_the_build_time(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hub.add_device(
                "clk-build", shared_key="nhd_clk-build", shared_secret="clk-build-secret"
            )
            config = shared_secret_config(hub, tmp_path, "clk-build")
            link = NervesHubLink(config, wall_clock=DeviceClock(-TEN_YEARS).now)
            async with running(link):
                await hub.wait_for_device("clk-build", timeout=8)
        first, second = hub.upgrades[0], hub.upgrades[1]
        # Not 2016: the build time (more than 90 s old), so the hub still says expired ...
        assert first.status == 401 and "expired" in first.reason
        assert 0 <= int(first.headers["x-nh-time"]) - int(build_time()) < 10
        # ... and the hub's Date fixes the next attempt.
        assert second.status == 101
        assert abs(int(second.headers["x-nh-time"]) - time.time()) < 10

    run(scenario())


def test_ten_years_behind_with_a_floor_is_accepted_at_once(
    pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    floor = time.time() - 5

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hub.add_device(
                "clk-floor", shared_key="nhd_clk-floor", shared_secret="clk-floor-secret"
            )
            config = shared_secret_config(hub, tmp_path, "clk-floor", clock_floor=f'"{iso(floor)}"')
            clock = DeviceClock(-TEN_YEARS)
            link = NervesHubLink(config, wall_clock=clock.now, clock_setter=clock.set)
            async with running(link):
                device = await hub.wait_for_device("clk-floor", timeout=8)
                await hub.wait_until(
                    lambda: read_last_good(tmp_path / "data"), 5, "the last known good time"
                )
            assert clock.set_calls == []  # set_clock is off
        assert device.auth == "shared_secret"
        first = hub.upgrades[0]
        assert first.status == 101
        assert abs(int(first.headers["x-nh-time"]) - time.time()) < 10
        stored = read_last_good(tmp_path / "data")
        assert stored is not None and abs(stored - time.time()) < 10  # the hub's Date

    run(scenario())
    warnings = [r.getMessage() for r in nhlink_log.at_least(logging.WARNING)]
    clock_lines = [m for m in warnings if m.startswith("clock wrong")]
    assert len(clock_lines) == 1, warnings
    assert re.fullmatch(
        rf"clock wrong: system time {STAMP} is before the floor {STAMP} \(clock_floor\): "
        r"set_clock = true lets nhlink move it forward",
        clock_lines[0],
    )


def test_after_a_restart_the_last_good_time_is_the_floor(pki: Pki, tmp_path: Path) -> None:
    """A board without an RTC reboots into 2016: the time stored at the last connection
    (no clock_floor configured) is recent enough for the hub to accept the signature."""

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hub.add_device(
                "clk-restart", shared_key="nhd_clk-restart", shared_secret="clk-restart-secret"
            )
            config = shared_secret_config(hub, tmp_path, "clk-restart")
            before = NervesHubLink(config)  # the clock is right before the reboot
            async with running(before):
                await hub.wait_for_device("clk-restart", timeout=8)
                await hub.wait_until(
                    lambda: read_last_good(tmp_path / "data"), 5, "the last known good time"
                )
            rebooted = NervesHubLink(config, wall_clock=DeviceClock(-TEN_YEARS).now)
            assert rebooted.clock.trusted.floor.source == "last connection"
            async with running(rebooted):
                await hub.wait_until(lambda: len(hub.upgrades) >= 2 or None, 8, "the reconnect")
        after = hub.upgrades[1]
        assert after.status == 101
        assert abs(int(after.headers["x-nh-time"]) - time.time()) < 10

    run(scenario())


def test_set_clock_moves_a_clock_ten_years_behind_forward(
    pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    floor = time.time() - 5

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hub.add_device("clk-set", shared_key="nhd_clk-set", shared_secret="clk-set-secret")
            config = shared_secret_config(
                hub, tmp_path, "clk-set", clock_floor=f'"{iso(floor)}"', set_clock="true"
            )
            clock = DeviceClock(-TEN_YEARS)
            link = NervesHubLink(config, wall_clock=clock.now, clock_setter=clock.set)
            async with running(link):
                await hub.wait_for_device("clk-set", timeout=8)
        assert len(clock.set_calls) == 1 and 0 <= clock.set_calls[0] - int(floor) < 10
        assert abs(clock.now() - floor) < 15  # the device clock now runs from the floor
        assert hub.upgrades[0].status == 101

    run(scenario())
    warnings = [r.getMessage() for r in nhlink_log.at_least(logging.WARNING)]
    assert not [m for m in warnings if m.startswith("clock wrong")], warnings
    assert [m for m in warnings if m.startswith("system clock was")]


# -- TLS with a hub certificate that is only valid from the day after tomorrow ------------


@pytest.fixture(scope="module")
def future_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    return Pki.create(
        tmp_path_factory.mktemp("future-pki"),
        server_validity=(now + datetime.timedelta(days=2), now + datetime.timedelta(days=30)),
    )


def _failing_link_errors(
    future_pki: Pki, tmp_path: Path, log: Records, identifier: str, **extra: Any
) -> tuple[str, str | None]:
    """Run a link against the future-certificate hub; its only ERROR line and last_error."""
    last_error: list[str | None] = []

    async def scenario() -> None:
        async with LocalHub(pki=future_pki) as hub:
            config = device_config(hub, identifier, tmp_path, reconnect_after_msec=[50], **extra)
            link = NervesHubLink(config)
            async with running(link):
                await asyncio.sleep(0.6)
            last_error.append(link.last_error)
            assert not hub.devices.get(identifier) or not hub.devices[identifier].connection_count

    run(scenario())
    errors = [r.getMessage() for r in log.at_least(logging.ERROR) if r.name.startswith("nhlink")]
    attempts = [r for r in log.records if r.getMessage().startswith("connecting to")]
    assert len(attempts) >= 3, "a clock error goes through the reconnect backoff like others"
    assert len(errors) == 1, errors
    return errors[0], last_error[0]


def test_future_hub_certificate_with_a_floor_after_it_is_a_clock_error(
    future_pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    floor = time.time() + 3 * 86400  # after the certificate's start: the clock must be wrong
    message, last_error = _failing_link_errors(
        future_pki, tmp_path, nhlink_log, "clk-tls", clock_floor=iso(floor)
    )
    assert last_error is not None and last_error.startswith("clock wrong: system time ")
    assert re.fullmatch(
        rf"clock wrong: system time {STAMP} is before the floor {STAMP} \(clock_floor\); "
        r"certificates cannot be checked \(set_clock = true lets nhlink move it forward\)",
        message,
    ), message


def test_future_hub_certificate_without_a_wrong_clock_stays_a_tls_error(
    future_pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    message, _ = _failing_link_errors(future_pki, tmp_path, nhlink_log, "clk-tls-plain")
    assert re.fullmatch(
        r"TLS: system clock is \S+ \S+ UTC, before the hub certificate's start: set the clock",
        message,
    ), message


@pytest.mark.parametrize("floor_days", [3, None])
def test_connect_error_classes_and_codes(
    future_pki: Pki, tmp_path: Path, floor_days: int | None
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=future_pki) as hub:
            extra = (
                {} if floor_days is None else {"clock_floor": iso(time.time() + floor_days * 86400)}
            )
            config = device_config(hub, "clk-codes", tmp_path, **extra)
            link = NervesHubLink(config)
            settings = SocketSettings(
                url=socket_url(config, shared_secret=False),
                ssl=client_context(link.config),
                server_hostname=None,
                proxy=None,
            )
            with pytest.raises(ConnectError) as caught:
                await open_websocket(settings, {}, link.config, link.clock.certificate_problem)
        error = caught.value
        if floor_days is None:
            assert not isinstance(error, ClockError)
            assert error.kind.startswith("tls:9:")
            assert tls_failure_code(error, link.clock.check()) == "tls:not_yet_valid"
        else:
            assert isinstance(error, ClockConnectError) and isinstance(error, ClockError)
            assert error.kind == "clock"
            assert tls_failure_code(error) == "clock"

    run(scenario())
