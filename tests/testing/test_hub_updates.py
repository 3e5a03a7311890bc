"""Update bookkeeping: in-flight updates, penalty box, reschedules, the deployment orchestrator."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import ssl
import urllib.request
from pathlib import Path

import pytest

from nhlink.testing import DeviceRecord, Fault, HubPolicy, LocalHub, Release
from nhlink.testing import orchestrator as orch
from tests.testing.support import DEVICE_PARAMS, device_socket, run

NOW = 1_800_000_000.0
POLICY = HubPolicy()
RELEASE = Release(
    "https://files.example.test/v2.fw",
    {"uuid": "new-uuid", "version": "0.2.0", "product": "my_app"},
    size=10,
    checksum="AB",
    partials_checksums=["AB"],
    deployment_id=7,
)
OLD_API = {**DEVICE_PARAMS, "device_api_version": "2.0.0"}


def _device_with_update(deployment_id: int | None = 7) -> DeviceRecord:
    device = DeviceRecord("dev-1", firmware_uuid="old-uuid")
    payload = orch.update_payload("https://x/fw", {"uuid": "new-uuid"}, deployment_id=deployment_id)
    orch.apply_update_sent(device, "https://x/fw", payload, NOW)
    return device


@pytest.mark.parametrize("status", ["failed", "ignored", "fwup error bad", "update failed"])
def test_failures_of_deployment_updates_block_for_the_penalty_time(status: str) -> None:
    device = _device_with_update()
    orch.apply_status(device, {"status": "received"}, NOW, POLICY)
    assert device.update_attempts == [NOW]
    assert device.inflight is not None and device.inflight.state == "in_progress"
    orch.apply_status(device, {"status": status, "reason": "x"}, NOW + 1, POLICY)
    assert device.inflight is None
    assert device.updates_blocked_until == NOW + 1 + 1440 * 60


def test_failure_of_a_manual_push_does_not_block() -> None:
    device = _device_with_update(deployment_id=None)
    orch.apply_status(device, {"status": "failed", "reason": "x"}, NOW, POLICY)
    assert (device.inflight, device.updates_blocked_until) == (None, 0.0)


def test_reschedule_blocks_for_delay_for_in_the_hubs_unit() -> None:
    device = _device_with_update()
    orch.apply_status(device, {"status": "rescheduled", "delay_for": 5}, NOW, POLICY)
    assert device.inflight is None
    assert device.updates_blocked_until == pytest.approx(NOW + 0.005)  # milliseconds, as the hub
    minutes = HubPolicy(reschedule_unit_seconds=60)
    device = _device_with_update()
    orch.apply_status(
        device, {"status": "rescheduled", "delay_for": 5, "reason": "busy"}, NOW, minutes
    )
    assert device.updates_blocked_until == NOW + 300


def test_penalty_box_by_count_and_by_rate() -> None:
    device = DeviceRecord("dev-1", update_attempts=[NOW - 1000, NOW - 900])
    orch.penalty_check(device, NOW, POLICY)
    assert device.updates_blocked_until == 0.0
    device.update_attempts.append(NOW - 800)
    orch.penalty_check(device, NOW, POLICY)
    assert (device.updates_blocked_until, device.update_attempts) == (NOW + 1440 * 60, [])
    rate = HubPolicy(device_failure_threshold=100)
    device = DeviceRecord("dev-2", update_attempts=[NOW - 200] + [NOW - 10] * 4)
    orch.penalty_check(device, NOW, rate)
    assert device.updates_blocked_until == 0.0
    device.update_attempts.append(NOW - 5)
    orch.penalty_check(device, NOW, rate)
    assert device.updates_blocked_until == NOW + 1440 * 60


def test_join_with_new_firmware_counts_the_update_as_successful() -> None:
    device = _device_with_update()
    orch.apply_status(device, {"status": "received"}, NOW, POLICY)
    orch.apply_join(
        device, {"nerves_fw_uuid": "old-uuid", "currently_downloading_uuid": "new-uuid"}, NOW
    )
    kept = device.inflight
    assert kept is not None  # reconnect during the download keeps it
    orch.apply_join(device, {"nerves_fw_uuid": "new-uuid", "currently_downloading_uuid": None}, NOW)
    after = (device.inflight, device.update_attempts, device.successful_updates)
    assert after == (None, [], 1)
    assert device.firmware_uuid == "new-uuid"


def test_inflight_updates_expire_after_30_minutes_without_progress() -> None:
    device = _device_with_update()
    orch.apply_progress(device, {"stage": "updating", "value": 3}, NOW + 100)
    orch.expire_inflight(device, NOW + 100 + 1800, POLICY)
    assert device.inflight is not None
    orch.expire_inflight(device, NOW + 100 + 1801, POLICY)
    assert device.inflight is None


def test_eligibility() -> None:
    ready = DeviceRecord("d", connected=True, device_joined=True, firmware_uuid="old-uuid")
    assert orch.eligible_for_release(ready, RELEASE, NOW)
    for change in (
        {"firmware_uuid": "new-uuid"},
        {"firmware_validated": False},
        {"updates_enabled": False},
        {"updates_blocked_until": NOW + 1},
        {"connected": False},
        {"firmware_uuid": None},
    ):
        device = DeviceRecord("d", connected=True, device_joined=True, firmware_uuid="old-uuid")
        for key, value in change.items():
            setattr(device, key, value)
        assert not orch.eligible_for_release(device, RELEASE, NOW), change


def test_deployment_offers_the_release_and_failures_penalise() -> None:
    async def scenario() -> None:
        async with LocalHub(policy=HubPolicy(orchestrator_interval=None)) as hub:
            await hub.deploy(RELEASE)
            async with device_socket(hub, "dev-1", join=OLD_API) as client:
                update = await client.recv()
                assert update[:4] == [None, None, "device", "update"]
                assert update[4]["deployment_id"] == 7
                assert update[4]["firmware_meta"]["uuid"] == "new-uuid"
                assert update[4]["size"] == 10
                await client.push("device", "status_update", {"status": "received"})
                await client.push("device", "status_update", {"status": "failed", "reason": "boom"})
                await hub.wait_for_status("dev-1", "failed", 2)
                device = hub.devices["dev-1"]
                assert device.updates_blocked_until > hub.now() + 1439 * 60
                assert await hub.run_orchestrator() == []
                device.updates_blocked_until = 0
                assert await hub.run_orchestrator() == ["dev-1"]
                assert (await client.recv())[3] == "update"
            # a device already running the release gets nothing
            async with device_socket(
                hub, "dev-2", join={**OLD_API, "nerves_fw_uuid": "new-uuid"}
            ) as client:
                await client.heartbeat()
                assert not hub.frames("dev-2", event="update")

    run(scenario())


def test_reschedule_is_offered_again_once_the_block_expires() -> None:
    async def scenario() -> None:
        policy = HubPolicy(orchestrator_interval=0.05, reschedule_unit_seconds=0.03)
        async with (
            LocalHub(policy=policy) as hub,
            device_socket(hub, "dev-1", join=OLD_API) as client,
        ):
            await hub.deploy(RELEASE)
            assert (await client.recv())[3] == "update"
            await client.push("device", "status_update", {"status": "received"})
            await client.push("device", "status_update", {"status": "rescheduled", "delay_for": 5})
            await hub.wait_for_status("dev-1", "rescheduled", 2)
            blocked_until = hub.devices["dev-1"].updates_blocked_until
            again = await client.recv(timeout=3)  # the periodic resolve resends after 0.15 s
            assert again[3] == "update"
            assert hub.now() >= blocked_until

    run(scenario())


def test_pushed_firmware_downloads_from_the_hubs_firmware_server(tmp_path: Path) -> None:
    data = bytes(range(256)) * 8000  # 2 MB: two 1 MiB parts
    (tmp_path / "v2.fw").write_bytes(data)

    def download(url: str, ctx: ssl.SSLContext, start: int) -> bytes:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers={"Range": f"bytes={start}-"}),
            context=ctx,
            timeout=5,
        ) as response:
            return bytes(response.read())

    async def scenario() -> None:
        async with LocalHub() as hub, device_socket(hub, "dev-1", join=OLD_API) as client:
            hosted = hub.firmware.add_file("fw/v2.fw", tmp_path / "v2.fw")
            url = hub.firmware.url("fw/v2.fw", Fault(drop_after=700_000))
            await hub.push_update("dev-1", url, RELEASE.firmware_meta, **hosted.update_kwargs())
            payload = (await client.recv())[4]
            assert payload["size"] == len(data)
            assert payload["checksum"] == hashlib.sha256(data).hexdigest().upper()
            assert len(payload["partials_checksums"]) == 2
            ctx = hub.client_ssl_context()
            with pytest.raises(http.client.IncompleteRead) as dropped:
                await asyncio.to_thread(download, payload["firmware_url"], ctx, 0)
            got = dropped.value.partial
            assert len(got) == 700_000
            got += await asyncio.to_thread(download, payload["firmware_url"], ctx, len(got))
            assert got == data
            ranges = [r.range_start for r in hub.firmware.requests_for("fw/v2.fw")]
            assert ranges == [0, 700_000]

    run(scenario())
