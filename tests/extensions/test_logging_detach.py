"""logging (rate limit, never blocking), the hub's detach reply, and hostile messages."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from nhlink.extensions import LoggingExtension, TokenBucket
from nhlink.testing import Pki
from tests.extensions.support import DEVICE, attached, pushed, send, wait_pushed
from tests.link.support import Records, run

APP_LOGGER = "nhlink.test.app"


def test_token_bucket_allows_a_burst_of_10_then_5_per_second() -> None:
    bucket = TokenBucket(5.0, 10, now=100.0)
    assert [bucket.take(100.0) for _ in range(11)] == [True] * 10 + [False]
    assert bucket.wait_time(100.0) == 0.2
    assert not bucket.take(100.1)
    assert bucket.take(100.2) and not bucket.take(100.2)
    # one second later: exactly five more
    assert sum(bucket.take(101.2) for _ in range(10)) == 5
    # a long pause refills to the burst, not beyond
    assert sum(bucket.take(200.0) for _ in range(20)) == 10
    # time going backwards adds nothing
    assert not bucket.take(150.0)


def test_log_records_are_forwarded_at_the_rate_limit(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Any], list[float]]:
        async with attached(pki, tmp_path, ["logging"]) as (hub, _link):
            await asyncio.sleep(2.2)  # the bucket is full again
            mark = hub.frame_mark()
            app = logging.getLogger(APP_LOGGER)
            for index in range(20):
                app.warning("record %d", index)
            app.debug("below the level: not forwarded")

            def mine() -> list[Any]:
                return [
                    f
                    for f in hub.frames(DEVICE, "extensions", "logging:send", since=mark)
                    if f.payload["meta"]["logger"] == APP_LOGGER
                ]

            frames = await hub.wait_until(lambda: mine() if len(mine()) >= 20 else None, 10, "20")
            return [f.payload for f in frames], [f.at for f in frames]

    payloads, times = run(scenario())
    assert [p["message"] for p in payloads] == [f"record {i}" for i in range(20)]
    assert {p["level"] for p in payloads} == {"warning"}
    assert payloads[0]["meta"]["function"] == "scenario"
    burst_end = times[9] - times[0]
    assert burst_end < 0.5  # the first 10 at once
    assert 1.6 <= times[19] - times[0] <= 3.5  # the other 10 at 5/s


def test_logging_never_blocks_and_drops_beyond_its_queue(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> int:
        async with attached(pki, tmp_path, ["logging"]) as (_hub, link):
            extension = link.extensions.extensions["logging"]
            assert isinstance(extension, LoggingExtension)
            app = logging.getLogger(APP_LOGGER)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for index in range(5000):
                app.warning("flood %d", index)
            assert loop.time() - started < 2.0
            return extension.dropped

    assert run(scenario()) >= 5000 - 200


def test_the_hubs_detach_reply_detaches_the_extension(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Any], dict[str, Any]]:
        async with attached(pki, tmp_path, ["health", "geo"]) as (hub, link):
            await wait_pushed(hub, "health:report")
            hub.devices[DEVICE].attached_extensions.remove("health")
            await send(hub, "health:check", {})
            detached = await wait_pushed(hub, "health:detached")
            return detached, dict(link.extensions.channel.attached)

    detached, still_attached = run(scenario())
    assert detached == [{}]
    assert list(still_attached) == ["geo"]


def test_hostile_messages_are_logged_never_fatal(
    pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    hostile: list[tuple[str, Any]] = [
        ("local_shell:window_size", {"rows": "x", "cols": -1}),
        ("local_shell:shell_input", {"data": 5}),
        ("local_shell:shell_input", {"data": "no shell yet\n"}),
        ("local_shell:kill_shell", {"signal": 99999}),
        ("local_shell:no_such_action", {}),
        ("health:check", {"unexpected": [1, 2, {"deep": None}]}),
        ("attach", {"extensions": {"a": 1}}),
        ("detach", {"extensions": 7}),
        ("attach", {"extensions": ["../../etc", "health"]}),
        ("bogus", {}),
        ("geo:location:request", {}),
    ]

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with attached(pki, tmp_path, ["local_shell", "health", "geo"]) as (hub, link):
            await wait_pushed(hub, "health:report")
            for event, payload in hostile:
                await send(hub, event, payload)
            await hub.send_raw(DEVICE, '[null,null,"extensions","health:check",[1,2]]')
            await hub.send_raw(DEVICE, "not json at all")
            reports = await wait_pushed(hub, "health:report", count=2)
            assert link.is_connected
            return reports, pushed(hub, "../../etc:error")

    reports, errors = run(scenario())
    assert len(reports) >= 2
    assert errors == [{"reason": "unknown_extension"}]
    messages = " | ".join(r.getMessage() for r in nhlink_log.at_least(logging.WARNING))
    assert "window_size" in messages and "kill_shell" in messages
    assert "no shell running" in messages
