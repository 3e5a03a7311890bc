"""The real link against the real LocalHub over real TLS: join, heartbeats, hub events."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest

import nhlink.aio.link as link_module
from nhlink.aio.link import NervesHubLink
from nhlink.client import Client
from nhlink.fwup.engine import FWUP_VERSION
from nhlink.kv import KV
from nhlink.protocol import DEVICE_API_VERSION
from nhlink.testing import LocalHub, Pki
from tests.link.support import (
    ACTIVE_FIRMWARE,
    Records,
    device_config,
    run,
    running,
    slot_env,
    write_env_image,
)

KEY_A = "pUJ3Rd1bH3HI6NNaF1p2pP2zMyWX8PJ1g8Qh9a+TxKE="
KEY_B = "A" * 43 + "="


class RecordingClient(Client):
    """Records identify/reboot calls with the loop time they happened at."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float]] = []
        self.errors: list[str] = []

    def identify(self) -> None:
        self.calls.append(("identify", asyncio.get_running_loop().time()))

    async def reboot(self) -> None:
        self.calls.append(("reboot", asyncio.get_running_loop().time()))

    def handle_error(self, reason: str) -> None:
        self.errors.append(reason)


def test_join_params_come_from_the_uboot_env_image(pki: Pki, tmp_path: Path) -> None:
    fw_env = write_env_image(tmp_path, slot_env("b", **{"b.nerves_fw_validated": "1"}))

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            config = device_config(hub, "dev-join", tmp_path, kv={"fw_env_config": str(fw_env)})
            link = NervesHubLink(config)
            async with running(link):
                device = await hub.wait_for_device("dev-join")
                join = hub.frames("dev-join", "device", "phx_join")[0]
                await hub.wait_for_event("dev-join", "report_network_interface")
            upgrade = hub.upgrades[0]

        expected: dict[str, Any] = dict(ACTIVE_FIRMWARE)
        expected["nerves_fw_validated"] = "1"
        expected.update(
            {
                "fwup_version": FWUP_VERSION,
                "device_api_version": "2.3.0",
                "console_version": "2.0.0",
                "fwup_public_keys": "on_connect",
                "archive_public_keys": "on_connect",
                "currently_downloading_uuid": None,
                "meta": {"firmware_auto_revert_detected": False, "firmware_validated": True},
            }
        )
        assert join.join_ref == join.ref == "1"
        assert join.payload == expected
        assert device.join_params == expected
        assert device.firmware_uuid == ACTIVE_FIRMWARE["nerves_fw_uuid"]
        assert device.network_interface == "lo"  # the route to 127.0.0.1
        assert upgrade.path == "/socket/websocket" and upgrade.query == "vsn=2.0.0"
        assert "permessage-deflate" in upgrade.headers["sec-websocket-extensions"]
        assert DEVICE_API_VERSION == "2.3.0"

    run(scenario())


def test_configured_keys_and_unvalidated_firmware_in_join(pki: Pki, tmp_path: Path) -> None:
    env = slot_env(
        "a",
        nerves_fw_validated="0",
        **{
            "b.nerves_fw_validated": "0",
            "b.nerves_fw_platform": "rpi4",
            "b.nerves_fw_architecture": "arm",
        },
    )
    fw_env = write_env_image(tmp_path, env)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "devkey.pub").write_text(KEY_A)

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            config = device_config(
                hub,
                "dev-keys",
                tmp_path,
                kv={"fw_env_config": str(fw_env)},
                fwup_public_keys=["devkey", KEY_B],
                fwup_key_dir=str(keys),
            )
            link = NervesHubLink(config)
            assert link.fwup_public_keys == [KEY_A, KEY_B]
            async with running(link):
                await hub.wait_for_device("dev-keys")
                join = hub.frames("dev-keys", "device", "phx_join")[0]
        assert "fwup_public_keys" not in join.payload
        assert "archive_public_keys" not in join.payload  # fwup keys stand in for archive keys
        assert join.payload["meta"] == {
            "firmware_auto_revert_detected": True,
            "firmware_validated": False,
        }

    run(scenario())


def test_firmware_validated_is_pushed_once_validation_happens(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link_module, "VALIDATION_POLL_INTERVAL", 0.1)
    fw_env = write_env_image(tmp_path, slot_env("a", nerves_fw_validated="0"))

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            config = device_config(hub, "dev-valid", tmp_path, kv={"fw_env_config": str(fw_env)})
            link = NervesHubLink(config)
            async with running(link):
                device = await hub.wait_for_device("dev-valid")
                assert device.firmware_validated is False
                await asyncio.sleep(0.35)
                assert not hub.frames("dev-valid", "device", "firmware_validated")
                link.kv.put({"nerves_fw_validated": "1"})  # what the system does on validation
                await hub.wait_for_event("dev-valid", "firmware_validated", timeout=5)
                await hub.wait_until(lambda: device.firmware_validated or None, 5, "validated")
                await asyncio.sleep(0.3)
                assert len(hub.frames("dev-valid", "device", "firmware_validated")) == 1
                hub.close_socket_abruptly("dev-valid")
                await hub.wait_for_device("dev-valid", connections=2, timeout=5)
                rejoin = hub.frames("dev-valid", "device", "phx_join")[-1]
                assert rejoin.payload["meta"]["firmware_validated"] is True

    run(scenario())


def test_heartbeats_flow_with_fresh_refs(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-hb", tmp_path))
            async with running(link):
                await hub.wait_for_device("dev-hb")
                await asyncio.sleep(3.4)
                beats = hub.frames("dev-hb", "phoenix", "heartbeat", direction="from_device")
                replies = hub.frames("dev-hb", "phoenix", "phx_reply", direction="to_device")
                assert link.is_connected
        assert len(beats) >= 3
        assert all(beat.join_ref is None and beat.payload == {} for beat in beats)
        refs = [int(beat.ref or 0) for beat in beats]
        assert refs == sorted(set(refs))
        assert {reply.ref for reply in replies} >= {beat.ref for beat in beats[:-1]}
        gaps = [b.at - a.at for a, b in itertools.pairwise(beats)]
        assert all(0.8 < gap < 1.5 for gap in gaps), gaps

    run(scenario())


def test_identify_and_reboot_reach_the_client(pki: Pki, tmp_path: Path) -> None:
    client = RecordingClient()

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-ir", tmp_path), client)
            async with running(link):
                await hub.wait_for_device("dev-ir")
                await hub.push_identify("dev-ir")
                await hub.wait_until(lambda: client.calls or None, 5, "identify")
                assert client.calls[0][0] == "identify"
                assert not hub.frames("dev-ir", event="identify", direction="from_device")
                await hub.push_reboot("dev-ir")
                rebooting = await hub.wait_for_event("dev-ir", "rebooting")
                await hub.wait_until(lambda: len(client.calls) > 1 or None, 5, "reboot")
        assert client.calls[1][0] == "reboot"
        assert rebooting.payload == {} and rebooting.join_ref == "1"
        assert rebooting.at <= client.calls[1][1] + 0.05  # pushed before the reboot ran

    run(scenario())


def test_unknown_and_malformed_frames_do_not_break_the_connection(
    pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    client = RecordingClient()

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-bad", tmp_path), client)
            async with running(link):
                device = await hub.wait_for_device("dev-bad")
                for garbage in (
                    "not json",
                    '{"an": "object"}',
                    '[null, null, "device"]',
                    '[1, null, "device", "identify", {}]',
                    '[null, null, "device", "identify", "not an object"]',
                    "[" * 200 + "]" * 200,
                    b"\xff\xfe binary",
                ):
                    await hub.send_raw("dev-bad", garbage)
                await hub.push("dev-bad", "device", "brand_new_event", {"x": 1})
                await hub.push("dev-bad", "device", "update", {"firmware_url": 42})
                await hub.send_raw("dev-bad", '[null, null, "nonexistent", "something", {}]')
                mark = hub.frame_mark()
                await hub.push_identify("dev-bad")
                await hub.wait_until(lambda: client.calls or None, 5, "identify after garbage")
                await hub.wait_for_frame(
                    lambda f: f.event == "heartbeat" and f.direction == "from_device",
                    5,
                    since=mark,
                )
        assert device.connection_count == 1
        assert client.errors == []
        messages = [r.getMessage() for r in nhlink_log.records]
        assert sum("malformed frame dropped" in m for m in messages) == 7
        assert any("unknown device event 'brand_new_event'" in m for m in messages)
        assert not [r for r in nhlink_log.records if r.exc_info]

    run(scenario())


def test_reconnect_after_a_socket_drop_waits_within_the_backoff_bounds(
    pki: Pki, tmp_path: Path
) -> None:
    import random

    from nhlink.protocol.backoff import round_half_up

    seed = 20261127
    expected = round_half_up(1000 * (1 + 0.5 * random.Random(seed).random())) / 1000
    client = RecordingClient()

    async def scenario() -> float:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(
                device_config(hub, "dev-drop", tmp_path), client, rng=random.Random(seed)
            )
            async with running(link):
                await hub.wait_for_device("dev-drop")
                dropped_at = asyncio.get_running_loop().time()
                hub.close_socket_abruptly("dev-drop")
                await hub.wait_for_device("dev-drop", connections=2, timeout=5)
                reconnected_at = hub.upgrades[-1].at
                assert hub.frames("dev-drop", "device", "phx_join")[-1].ref == "1"
        assert client.errors and "lost" in client.errors[0]
        return reconnected_at - dropped_at

    measured = run(scenario())
    assert 1.0 <= expected <= 1.5
    assert expected <= measured <= expected + 0.25, (measured, expected)


def test_server_close_and_rejoin_after_phx_close(pki: Pki, tmp_path: Path) -> None:
    client = RecordingClient()

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            config = device_config(hub, "dev-rejoin", tmp_path, rejoin_after_msec=200)
            link = NervesHubLink(config, client)
            async with running(link):
                await hub.wait_for_device("dev-rejoin")
                await hub.close_channel("dev-rejoin", "device", event="phx_error")
                await hub.wait_until(
                    lambda: len(hub.frames("dev-rejoin", "device", "phx_join")) > 1 or None,
                    5,
                    "rejoin",
                )
                rejoin = hub.frames("dev-rejoin", "device", "phx_join")[-1]
                assert rejoin.join_ref == rejoin.ref and rejoin.ref != "1"
                await hub.kick("dev-rejoin")
                await hub.wait_for_device("dev-rejoin", connections=2, timeout=5)
        assert client.errors[0] == "device channel phx_error"
        assert "closed the connection (code 1000)" in client.errors[1]

    run(scenario())


def test_public_keys_from_the_hub_replace_but_never_clear(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-pk", tmp_path, fwup_public_keys=[KEY_B]))
            async with running(link):
                await hub.wait_for_device("dev-pk")
                await hub.push_public_keys("dev-pk", [KEY_A])
                await hub.push_public_keys("dev-pk", [KEY_B], kind="archive")
                await hub.push_public_keys("dev-pk", [])
                await hub.push_public_keys("dev-pk", ["not a key"])
                await hub.push_identify("dev-pk")  # a marker: everything before it is handled
                await hub.wait_until(lambda: link.archive_public_keys or None, 5, "archive keys")
                await asyncio.sleep(0.1)
        assert link.fwup_public_keys == [KEY_A]
        assert link.archive_public_keys == [KEY_B]

    run(scenario())


def test_scripts_run_is_refused_and_updates_are_ignored_by_default(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-sc", tmp_path))
            async with running(link):
                device = await hub.wait_for_device("dev-sc")
                ref = await hub.push_script("dev-sc", "IO.puts(:hi)")
                answer = await hub.wait_for_event("dev-sc", "scripts/run")
                await hub.push_update(
                    "dev-sc",
                    "https://example.test/fw.fw",
                    {"uuid": "3c9f2f2e-1c55-5d3b-9a4e-0b1f0e6a7c11", "version": "0.2.0"},
                )
                ignored = await hub.wait_for_status("dev-sc", "ignored")
        assert answer.payload["ref"] == ref and answer.payload["result"] == "error"
        assert answer.payload["reason"]
        assert device.status_names == ["received", "ignored"]
        assert ignored == {"status": "ignored", "reason": "updates not enabled"}

    run(scenario())


class FakeUpdateHandler:
    """Records offers; reports a download in progress."""

    def __init__(self) -> None:
        self.currently_downloading_uuid: str | None = "11111111-2222-3333-4444-555555555555"
        self.link: NervesHubLink | None = None
        self.offers: list[Any] = []

    def attach(self, link: NervesHubLink) -> None:
        self.link = link

    async def offer(self, info: Any) -> None:
        self.offers.append(info)
        assert self.link is not None
        self.link.device.status_received()
        await asyncio.sleep(3)  # a long update must not stall frames or heartbeats

    async def archive_offer(self, info: Any) -> None:
        self.offers.append(info)


def test_update_handler_gets_offers_in_a_task_and_reports_downloads(
    pki: Pki, tmp_path: Path
) -> None:
    handler = FakeUpdateHandler()

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-up", tmp_path), update_handler=handler)
            assert handler.link is link
            async with running(link):
                await hub.wait_for_device("dev-up")
                join = hub.frames("dev-up", "device", "phx_join")[0]
                mark = hub.frame_mark()
                await hub.push_update(
                    "dev-up", "https://example.test/fw.fw", {"uuid": "3c9f", "version": "0.2.0"}
                )
                await hub.wait_for_status("dev-up", "received")
                await hub.wait_for_frame(lambda f: f.event == "heartbeat", 3, since=mark)
                await hub.wait_for_frame(
                    lambda f: f.event == "heartbeat" and f.index > mark + 3, 3, since=mark
                )
        assert join.payload["currently_downloading_uuid"] == handler.currently_downloading_uuid
        assert handler.offers[0].firmware_url == "https://example.test/fw.fw"

    run(scenario())


def test_push_helper_and_stop_while_waiting_to_reconnect(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-push", tmp_path))
            assert link.push("status_update", {"status": "x"}) is False  # not joined: dropped
            task = asyncio.get_running_loop().create_task(link.run())
            await hub.wait_for_device("dev-push")
            assert link.push("connection_types", {"values": ["ethernet"]})
            frame = await hub.wait_for_event("dev-push", "connection_types")
            assert frame.payload == {"values": ["ethernet"]}
            hub.fail_next_upgrades(50, status=503)
            hub.close_socket_abruptly("dev-push")
            await hub.wait_until(lambda: len(hub.upgrades) > 1 or None, 5, "a refused attempt")
            for _ in range(100):
                if link.last_error and "HTTP 503" in link.last_error:
                    break
                await asyncio.sleep(0.01)
            started = asyncio.get_running_loop().time()
            await link.stop()
            await asyncio.wait_for(task, 2)
            assert asyncio.get_running_loop().time() - started < 1.0
            assert not link.is_connected
            assert link.last_error is not None and "HTTP 503" in link.last_error

    run(scenario())


def test_kv_given_directly_is_used_for_the_join(pki: Pki, tmp_path: Path) -> None:
    kv = KV({"nerves_fw_uuid": "abc", "nerves_fw_devpath": "/dev/sda", "other": "x"})

    async def scenario() -> dict[str, Any]:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-kv", tmp_path), kv=kv)
            async with running(link):
                device = await hub.wait_for_device("dev-kv")
        assert device.join_params is not None
        return device.join_params

    params = run(scenario())
    assert params["nerves_fw_uuid"] == "abc"
    assert "nerves_fw_devpath" not in params and "other" not in params
    json.dumps(params)


def test_callback_exceptions_are_logged_and_harmless(
    pki: Pki, tmp_path: Path, nhlink_log: Records
) -> None:
    class Broken(Client):
        def identify(self) -> None:
            raise RuntimeError("led on fire")

        async def connected(self) -> None:
            raise ValueError("nope")

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            link = NervesHubLink(device_config(hub, "dev-cb", tmp_path), Broken())
            async with running(link):
                device = await hub.wait_for_device("dev-cb")
                await hub.push_identify("dev-cb")
                mark = hub.frame_mark()
                await hub.wait_for_frame(lambda f: f.event == "heartbeat", 3, since=mark)
                assert device.connection_count == 1 and link.is_connected

    run(scenario())
    errors = [r.getMessage() for r in nhlink_log.at_least(logging.ERROR)]
    assert any("Broken.identify failed: RuntimeError: led on fire" in m for m in errors)
    assert any("Broken.connected failed: ValueError: nope" in m for m in errors)


def test_unanswered_heartbeat_closes_and_reconnects(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The LocalHub always answers heartbeats; swallow them in its dispatcher instead.
    from nhlink.testing.channels import DeviceSession

    mute = {"on": False}
    original = DeviceSession._dispatch

    async def dispatch(self: DeviceSession, frame: Any) -> None:
        if mute["on"] and frame[3] == "heartbeat":
            return
        await original(self, frame)

    monkeypatch.setattr(DeviceSession, "_dispatch", dispatch)
    client = RecordingClient()

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            config = device_config(hub, "dev-hbto", tmp_path, reconnect_after_msec=[100])
            link = NervesHubLink(config, client)
            async with running(link):
                await hub.wait_for_device("dev-hbto")
                mute["on"] = True
                await hub.wait_for_disconnect("dev-hbto", timeout=5)
                mute["on"] = False
                await hub.wait_for_device("dev-hbto", connections=2, timeout=5)
        beats = hub.frames("dev-hbto", "phoenix", "heartbeat", direction="from_device")
        assert client.errors == ["heartbeat timeout"]
        assert beats[-1].ref is not None

    run(scenario())
