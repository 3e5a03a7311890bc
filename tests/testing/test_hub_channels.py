"""Channel behaviour of the local hub, driven by a real websocket client."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from nhlink.testing import HubError, LocalHub
from tests.testing.support import DEVICE_PARAMS, device_socket, run

META = {
    "architecture": "arm",
    "author": "The Nerves Team",
    "description": "",
    "misc": "",
    "platform": "rpi4",
    "product": "my_app",
    "uuid": "3c9f2f2e-1c55-5d3b-9a4e-0b1f0e6a7c11",
    "vcs_identifier": "",
    "version": "0.2.0",
}
OLD_API = {**DEVICE_PARAMS, "device_api_version": "2.0.0"}  # no extensions:get after join


async def _closed(client_ws: object, timeout: float = 5.0) -> ConnectionClosed:
    from websockets.asyncio.client import ClientConnection

    assert isinstance(client_ws, ClientConnection)
    try:
        async with asyncio.timeout(timeout):
            while True:
                await client_ws.recv()
    except ConnectionClosed as closed:
        return closed
    raise AssertionError("unreachable")


def test_a_second_connection_kicks_the_first() -> None:
    async def scenario() -> None:
        async with (
            LocalHub() as hub,
            device_socket(hub, "dev-1", join=OLD_API) as first,
            device_socket(hub, "dev-1", join=OLD_API) as second,
        ):
            closed = await _closed(first.ws)
            assert closed.rcvd is not None and closed.rcvd.code == 1000
            await second.heartbeat()
            device = hub.devices["dev-1"]
            assert (device.connected, device.connection_count, device.join_count) == (True, 2, 2)
            assert device.current_connection_id == 2

    run(scenario())


def test_push_helpers_send_fastlane_frames() -> None:
    async def scenario() -> None:
        async with LocalHub() as hub, device_socket(hub, "dev-1", join=OLD_API) as client:
            with pytest.raises(HubError, match="not joined"):
                await hub.push("dev-1", "console", "dn", {"data": "x"})
            with pytest.raises(HubError, match="not connected"):
                await hub.push_reboot("dev-2")
            payload = await hub.push_update(
                "dev-1",
                "https://files.example.test/fw.fw",
                {**META, "extra": "dropped"},
                size=31457280,
                checksum="9F86D0",
                partials=["AA", "BB"],
            )
            assert await client.recv() == [None, None, "device", "update", payload]
            assert payload == {
                "update_available": True,
                "firmware_url": "https://files.example.test/fw.fw",
                "firmware_meta": META,
                "size": 31457280,
                "checksum": "9F86D0",
                "partials_checksums": ["AA", "BB"],
                "deployment_id": None,
            }
            device = hub.devices["dev-1"]
            assert device.inflight is not None and device.inflight.uuid == META["uuid"]
            assert device.updates_enabled is False  # a manual push turns deployments off
            await hub.push_reboot("dev-1")
            await hub.push_identify("dev-1")
            ref = await hub.push_script("dev-1", "1 + 1", ref="abc")
            archive = await hub.push_archive(
                "dev-1",
                "https://a/x",
                size=3,
                uuid="u",
                version="1",
                uploaded_at="2026-01-01T00:00:00",
            )
            assert [await client.recv() for _ in range(4)] == [
                [None, None, "device", "reboot", {}],
                [None, None, "device", "identify", {}],
                [None, None, "device", "scripts/run", {"text": "1 + 1", "ref": ref}],
                [None, None, "device", "archive", archive],
            ]
            await client.join("console", {"console_version": "2.0.0"})
            await hub.push_console("dev-1", "ls\n")
            join_ref = client.join_refs["console"]
            assert await client.recv() == [join_ref, None, "console", "dn", {"data": "ls\n"}]
            await client.push("device", "rebooting", {})
            await client.push("device", "status_update", {"status": "received"})
            await client.push("device", "report_network_interface", {"interface": "eth0"})
            await client.push("console", "up", {"data": "iex> "})
            await hub.wait_for_status("dev-1", "received", 2)
            await hub.wait_until(lambda: device.console_output or None, 2, "console output")
            assert (device.rebooting_count, device.network_interface) == (1, "eth0")
            assert device.console_output == ["iex> "]
            # the hub never replies to device pushes
            await client.heartbeat()
            assert not [f for f in hub.frames("dev-1", "device", "phx_reply") if f.ref != "1"]

    run(scenario())


def test_extensions_join_attach_and_detach() -> None:
    async def scenario() -> None:
        async with (
            LocalHub(enabled_extensions=["health", "geo"]) as hub,
            device_socket(hub, "dev-1", join=DEVICE_PARAMS) as client,
        ):
            assert await client.recv() == [None, None, "device", "extensions:get", {}]
            reply = await client.join(
                "extensions", {"health": "0.0.1", "geo": "0.0.1", "local_shell": "0.0.1"}
            )
            assert reply[4] == {"status": "ok", "response": ["health", "geo"]}
            join_ref = client.join_refs["extensions"]
            ref = await client.push("extensions", "geo:location:update", {"source": "geoip"})
            assert await client.reply_to(ref) == [
                join_ref,
                ref,
                "extensions",
                "phx_reply",
                {"status": "error", "response": "detach"},
            ]
            await client.push("extensions", "health:attached", {})
            assert await client.recv() == [join_ref, None, "extensions", "health:check", {}]
            await client.push(
                "extensions", "health:report", {"value": {"metrics": {"cpu_temp": 48.2}}}
            )
            device = hub.devices["dev-1"]
            await hub.wait_until(lambda: device.health_reports or None, 2, "a health report")
            assert device.health_reports == [{"metrics": {"cpu_temp": 48.2}}]
            assert device.attached_extensions == ["health"]

    run(scenario())


def test_unmatched_topics_and_join_errors() -> None:
    async def scenario() -> None:
        async with LocalHub() as hub:
            hub.fail_next_joins("device")
            async with device_socket(hub, "dev-1") as client:
                ref = await client.push("device", "status_update", {"status": "received"})
                assert (await client.reply_to(ref))[4] == {
                    "status": "error",
                    "response": {"reason": "unmatched topic"},
                }
                assert (await client.join("bogus", {}))[4]["status"] == "error"
                assert (await client.join("device", OLD_API))[4] == {
                    "status": "error",
                    "response": {"error": "could not connect"},
                }
                assert not hub.devices["dev-1"].device_joined
                hub.device_join_response = {"update_available": False}
                assert (await client.join("device", OLD_API))[4] == {
                    "status": "ok",
                    "response": {"update_available": False},
                }
                # a second join of a joined topic closes the first channel
                old_ref = client.join_refs["device"]
                assert (await client.join("device", OLD_API))[4]["status"] == "ok"
                closes = hub.frames("dev-1", "device", "phx_close")
                assert [f.as_list() for f in closes] == [
                    [old_ref, old_ref, "device", "phx_close", {}]
                ]

    run(scenario())


def test_server_side_channel_close_and_error() -> None:
    async def scenario() -> None:
        async with LocalHub() as hub, device_socket(hub, "dev-1", join=OLD_API) as client:
            join_ref = client.join_refs["device"]
            await hub.close_channel("dev-1", "device", event="phx_error")
            assert await client.recv() == [join_ref, join_ref, "device", "phx_error", {}]
            assert not hub.devices["dev-1"].device_joined
            with pytest.raises(HubError):
                await hub.push_identify("dev-1")
            await client.join("device", OLD_API)
            device = await hub.wait_for_device("dev-1", 2)
            assert device.join_count == 2

    run(scenario())


def test_kick_and_abrupt_close() -> None:
    async def scenario() -> None:
        async with LocalHub() as hub:
            async with device_socket(hub, "dev-1", join=OLD_API) as client:
                await hub.kick("dev-1")
                closed = await _closed(client.ws)
                assert closed.rcvd is not None and closed.rcvd.code == 1000
            await hub.wait_for_disconnect("dev-1", 2)
            async with device_socket(hub, "dev-1", join=OLD_API) as client:
                hub.close_socket_abruptly("dev-1")
                closed = await _closed(client.ws)
                assert closed.rcvd is None  # no close frame
            assert not (await hub.wait_for_disconnect("dev-1", 2)).connected

    run(scenario())


def test_inactive_socket_is_closed_and_heartbeats_keep_it_open() -> None:
    async def scenario() -> None:
        async with (
            LocalHub(inactivity_timeout=0.4) as hub,
            device_socket(hub, "dev-1", join=OLD_API) as client,
        ):
            for _ in range(6):  # 0.6 s of heartbeats every 0.1 s
                await asyncio.sleep(0.1)
                await client.heartbeat()
            loop = asyncio.get_running_loop()
            silent_since = loop.time()
            closed = await _closed(client.ws, timeout=3)
            waited = loop.time() - silent_since
            assert closed.rcvd is not None and closed.rcvd.code == 1000
            assert 0.3 <= waited <= 1.5

    run(scenario())


def test_upgrade_redirects_and_injected_failures() -> None:
    async def scenario() -> None:
        async with LocalHub() as hub:
            hub.redirect_next_upgrades("/device-socket/websocket?vsn=2.0.0")
            async with device_socket(hub, "dev-1", join=OLD_API) as client:
                await client.heartbeat()
            assert [(u.status, u.path) for u in hub.upgrades] == [
                (302, "/socket/websocket"),
                (101, "/device-socket/websocket"),
            ]
            hub.fail_next_upgrades(status=503)
            with pytest.raises(InvalidStatus) as caught:
                async with device_socket(hub, "dev-1"):
                    pass
            assert caught.value.response.status_code == 503
            async with device_socket(hub, "dev-1", join=OLD_API):
                pass

    run(scenario())


def test_malformed_frames_close_the_socket_and_raw_frames_reach_the_device() -> None:
    async def scenario() -> None:
        async with LocalHub() as hub, device_socket(hub, "dev-1", join=OLD_API) as client:
            await hub.send_raw("dev-1", '[null,null,"device","nonsense"')
            assert await client.ws.recv() == '[null,null,"device","nonsense"'
            mark = hub.frame_mark()
            await client.ws.send("{not json")
            closed = await _closed(client.ws)
            assert closed.rcvd is not None and closed.rcvd.code == 1011
            record = await hub.wait_for_frame(lambda f: f.malformed, 2, since=mark)
            assert (record.direction, record.raw) == ("from_device", "{not json")
            assert [f.malformed for f in hub.frames("dev-1", direction="to_device")][-1] is True

    run(scenario())


def test_wait_for_frame_since_mark_ignores_older_frames() -> None:
    async def scenario() -> None:
        async with LocalHub() as hub, device_socket(hub, "dev-1", join=OLD_API) as client:
            await client.heartbeat()
            mark = hub.frame_mark()

            def is_heartbeat(f: object) -> bool:
                return getattr(f, "event", None) == "heartbeat"

            with pytest.raises(TimeoutError):
                await hub.wait_for_frame(is_heartbeat, 0.2, since=mark)
            waiter = asyncio.ensure_future(hub.wait_for_frame(is_heartbeat, 2, since=mark))
            await client.heartbeat()
            frame = await waiter
            assert frame.index >= mark and frame.ref == "3"
            assert json.loads(frame.raw) == [None, "3", "phoenix", "heartbeat", {}]

    run(scenario())
