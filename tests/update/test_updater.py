"""Updates end to end: the real link and Updater against the LocalHub over real TLS,
applying signed A/B firmware to an image file with a U-Boot environment."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nhlink.aio.link import NervesHubLink
from nhlink.aio.updater import Updater
from nhlink.client import Client, FwupMessage, Ignore, Reschedule, UpdateDecision
from nhlink.fwup.engine import Engine
from nhlink.protocol import UpdateInfo
from nhlink.testing import Fault, FirmwareServer, HostedFile, LocalHub, Pki, RequestRecord
from nhlink.testing.firmware_server import https_server_context
from nhlink.update.machine import NO_PUBLIC_KEYS
from nhlink.update.meter import UpdateMessage
from nhlink.update.verify import PART_SIZE
from tests.helpers.vectors import vectors_dir
from tests.link.support import device_config, run, running
from tests.update.firmware import (
    Firmware,
    digest,
    install,
    public_key,
    read_env,
    slot_digest,
    write_fw_env_config,
)
from tests.update.support import install_fake_fwup, install_nhlink_fwup

DEVICE = "dev-update"
FAST_RETRY = {"time_between_retries_msec": 50, "idle_timeout_msec": 2000}
HEAD = Fault()
"""Passes the preflight head request untouched, so that the next fault hits the download."""
NO_PREFLIGHT = {"update": {"preflight": False}}


def is_head(request: RequestRecord) -> bool:
    """A preflight request for the archive head (``Range: bytes=N-M``, both ends given)."""
    return re.fullmatch(r"bytes=\d+-\d+", request.range or "") is not None


def downloads(requests: list[RequestRecord]) -> list[RequestRecord]:
    """The firmware download requests (the preflight head requests left out)."""
    return [r for r in requests if not is_head(r)]


class UpdateClient(Client):
    """Answers offers with ``decision`` (or the default), records messages and reboots."""

    def __init__(self, decision: UpdateDecision | None = None) -> None:
        super().__init__()
        self.decision = decision
        self.offers: list[UpdateInfo] = []
        self.messages: list[FwupMessage] = []
        self.reboots: list[float] = []

    def update_available(self, info: UpdateInfo) -> UpdateDecision:
        self.offers.append(info)
        return self.decision if self.decision is not None else super().update_available(info)

    def handle_fwup_message(self, message: FwupMessage) -> None:
        self.messages.append(message)

    def reboot(self) -> None:
        self.reboots.append(time.monotonic())


@dataclass
class Device:
    hub: LocalHub
    link: NervesHubLink
    client: UpdateClient
    updater: Updater
    image: Path
    image_before: bytes

    def statuses(self) -> list[dict[str, Any]]:
        return self.hub.devices[DEVICE].statuses

    def status_names(self) -> list[str]:
        return self.hub.devices[DEVICE].status_names

    def env(self) -> dict[str, str]:
        return read_env(self.image)

    async def push(self, hosted: HostedFile, firmware: Firmware, url: str | None = None) -> None:
        await self.hub.push_update(
            DEVICE, url or hosted.url, firmware.meta, **hosted.update_kwargs()
        )

    async def wait_for(self, status: str, timeout: float = 20.0) -> dict[str, Any]:
        return await self.hub.wait_for_status(DEVICE, status, timeout)

    async def wait_for_reboot(self, timeout: float = 5.0) -> None:
        await self.hub.wait_until(lambda: self.client.reboots or None, timeout, "a reboot")

    async def settle(self) -> None:
        """Let in-flight pushes arrive, and wait until the updater is idle."""
        await self.hub.wait_until(
            lambda: True if self.updater.state == "idle" else None, 20, "the updater to be idle"
        )
        await asyncio.sleep(0.3)


@contextlib.asynccontextmanager
async def updating_device(
    hub: LocalHub,
    tmp_path: Path,
    installed: Firmware,
    *,
    client: UpdateClient | None = None,
    updater: Updater | None = None,
    keys: bool = True,
    **settings: Any,
) -> AsyncIterator[Device]:
    image = tmp_path / "disk.img"
    install(image, installed)
    fw_env = write_fw_env_config(tmp_path, image)
    extra: dict[str, Any] = {
        "kv": {"fw_env_config": str(fw_env)},
        "fwup_devpath": str(image),
        "retry": dict(FAST_RETRY),
    }
    if keys:
        extra["fwup_public_keys"] = [public_key()]
    extra.update(settings)
    config = device_config(hub, DEVICE, tmp_path, **extra)
    client = client or UpdateClient()
    updater = updater or Updater()
    link = NervesHubLink(config, client, update_handler=updater)
    async with running(link):
        await hub.wait_for_device(DEVICE)
        yield Device(hub, link, client, updater, image, image.read_bytes())


@dataclass
class Outcome:
    """What one update pushed through a LocalHub left behind."""

    device: Device
    hosted: HostedFile
    status: dict[str, Any]
    requests: list[RequestRecord]


async def update_on_hub(
    pki: Pki,
    tmp_path: Path,
    running: Firmware,
    firmware: Firmware,
    until: str,
    *,
    name: str = "fw/v2.fw",
    fault: Fault | None = None,
    wait_timeout: float = 20.0,
    server_class: type[FirmwareServer] | None = None,
    server_ssl: ssl.SSLContext | None = None,
    **settings: Any,
) -> Outcome:
    """Push ``firmware`` (hosted as ``name``) to a device running ``running``; wait for ``until``.

    After ``completed`` the device's reboot is awaited too, after anything else it settles.
    With ``server_class``, the firmware is hosted on a server of its own (in ``tmp_path/s``,
    with ``server_ssl`` or the test PKI's server certificate) instead of the hub's.
    """
    async with contextlib.AsyncExitStack() as stack:
        hub = await stack.enter_async_context(LocalHub(pki=pki))
        server = hub.firmware
        if server_class is not None:
            context = server_ssl or https_server_context(pki.server.cert_path, pki.server.key_path)
            server = await stack.enter_async_context(
                server_class(ssl_context=context, directory=tmp_path / "s")
            )
        hosted = server.add_file(name, firmware.path)
        url = None if fault is None else server.url(name, fault)
        async with updating_device(hub, tmp_path, running, **settings) as device:
            await device.push(hosted, firmware, url)
            status = await device.wait_for(until, wait_timeout)
            if until == "completed":
                await device.wait_for_reboot()
            else:
                await device.settle()
        requests = server.requests
    return Outcome(device, hosted, status, requests)


def assert_applied(device: Device, old: Firmware, new: Firmware) -> None:
    env = device.env()
    assert env["nerves_fw_active"] == "b"
    assert env["b.nerves_fw_uuid"] == new.uuid
    assert env["a.nerves_fw_uuid"] == old.uuid
    assert slot_digest(device.image, new, "b") == digest(new.rootfs)
    assert slot_digest(device.image, old, "a") == digest(old.rootfs)


def assert_untouched(device: Device, old: Firmware) -> None:
    """The device still boots the old slot: env unchanged, slot A intact."""
    env = device.env()
    assert env["nerves_fw_active"] == "a"
    assert env["a.nerves_fw_uuid"] == old.uuid
    assert "b.nerves_fw_uuid" not in env
    assert slot_digest(device.image, old, "a") == digest(old.rootfs)
    assert device.client.reboots == []


# -- the happy path ----------------------------------------------------------------------


def test_apply_reports_progress_completes_and_reboots(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            # ~2.5 s of download so that the progress throttle shows
            url = hub.firmware.url("fw/v2.fw", HEAD, Fault(rate=1_300_000))
            async with updating_device(hub, tmp_path, fw_v1) as device:
                await device.push(hosted, fw_v2, url)
                await device.wait_for("completed")
                await device.wait_for_reboot()
                assert device.link.device.join_info  # the link is still up
            frames = hub.frames(DEVICE, "device", direction="from_device")
            requests = hub.firmware.requests_for("fw/v2.fw")

        statuses = device.statuses()
        assert [s["status"] for s in statuses] == ["received", "started", "completed"]
        assert statuses[1]["downloader_network_interface"] == "lo"
        progress = [f for f in frames if f.event == "fwup_progress"]
        values = [f.payload["value"] for f in progress]
        assert all(f.payload["stage"] == "updating" for f in progress)
        assert values == sorted(set(values)) and values[-1] == 100 and len(values) >= 3
        gaps = [b.at - a.at for a, b in itertools.pairwise(progress[:-1])]
        assert all(gap >= 0.45 for gap in gaps), gaps  # the 500 ms throttle
        order = [f.event if f.event != "status_update" else f.payload["status"] for f in frames]
        assert order.index("completed") > max(
            i for i, e in enumerate(order) if e == "fwup_progress"
        )
        assert device.client.reboots and device.client.reboots[0] >= progress[-1].at
        head, request = requests  # preflight read meta.conf first, with a Range request
        assert is_head(head) and head.range == "bytes=0-16383" and head.status == 206
        assert head.bytes_sent == 16384 and head.at < request.at
        assert request.user_agent and request.user_agent.startswith("nhlink/")
        assert request.retry_number == 0 and request.range is None
        assert_applied(device, fw_v1, fw_v2)
        messages = device.client.messages
        assert messages[-1].kind == "ok"
        assert any(m.kind == "warning" and m.text == "Upgrading partition B" for m in messages)
        people = [m for m in messages if isinstance(m, UpdateMessage) and m.kind == "progress"]
        assert people and people[-1].value == 100
        assert people[-1].bytes_total == hosted.size
        assert people[-1].bytes_done == hosted.size
        rated = [m for m in people if m.rate]
        assert rated and 300_000 < rated[-1].rate < 5_000_000  # type: ignore[operator]
        assert any(m.eta is not None and m.eta > 0 for m in people)

    run(scenario(), timeout=40)


# -- decisions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (Ignore("not now"), {"status": "ignored", "reason": "not now"}),
        (Reschedule(2, "busy"), {"status": "rescheduled", "delay_for": 5, "reason": "busy"}),
        (Reschedule(30), {"status": "rescheduled", "delay_for": 30}),
    ],
)
def test_client_decisions_are_reported_and_nothing_is_downloaded(
    pki: Pki,
    tmp_path: Path,
    fw_v1: Firmware,
    fw_v2: Firmware,
    decision: UpdateDecision,
    expected: dict[str, Any],
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            client = UpdateClient(decision)
            async with updating_device(hub, tmp_path, fw_v1, client=client) as device:
                await device.push(hosted, fw_v2)
                await device.wait_for(expected["status"])
                await device.settle()
            assert hub.firmware.requests == []
        assert device.statuses() == [{"status": "received"}, expected]
        assert client.offers[0].firmware_meta.uuid == fw_v2.uuid
        assert client.offers[0].partials_checksums == tuple(hosted.partials_checksums)
        assert_untouched(device, fw_v1)

    run(scenario())


def test_the_running_firmware_is_ignored_by_default(
    pki: Pki, tmp_path: Path, fw_v1: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v1.fw", fw_v1.path)
            async with updating_device(hub, tmp_path, fw_v1) as device:
                assert device.link.kv.get_active("nerves_fw_uuid") == fw_v1.uuid
                await device.push(hosted, fw_v1)
                await device.wait_for("ignored")
                await device.settle()
            assert hub.firmware.requests == []
        assert device.statuses() == [
            {"status": "received"},
            {"status": "ignored", "reason": "firmware is already installed"},
        ]

    run(scenario())


def test_no_public_key_refuses_to_apply(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            async with updating_device(hub, tmp_path, fw_v1, keys=False) as device:
                join = hub.frames(DEVICE, "device", "phx_join")[0]
                assert join.payload["fwup_public_keys"] == "on_connect"  # none came
                await device.push(hosted, fw_v2)
                await device.wait_for("failed")
                await device.settle()
            assert hub.firmware.requests == []
        assert device.statuses() == [
            {"status": "received"},
            {"status": "failed", "reason": f"refused:no_keys: {NO_PUBLIC_KEYS}"},
        ]
        assert_untouched(device, fw_v1)
        assert device.image.read_bytes() == device.image_before

    run(scenario())


def test_a_second_update_while_updating_is_dropped(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            other = hub.firmware.add_file("fw/other.fw", fw_v2.path)
            slow = hub.firmware.url("fw/v2.fw", HEAD, Fault(rate=2_000_000))
            async with updating_device(hub, tmp_path, fw_v1) as device:
                await device.push(hosted, fw_v2, slow)
                await device.wait_for("started")
                await device.push(other, fw_v2)
                await device.wait_for("completed")
                await device.settle()
            paths = [r.path for r in downloads(hub.firmware.requests)]
        assert device.status_names() == ["received", "started", "completed"]
        assert paths == ["/fw/v2.fw"]
        assert_applied(device, fw_v1, fw_v2)

    run(scenario())


# -- network trouble -------------------------------------------------------------------


def test_a_drop_mid_download_resumes_with_range_from_the_bytes_received(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    drop = 1_234_567

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            url = hub.firmware.url("fw/v2.fw", HEAD, Fault(drop_after=drop))
            async with updating_device(hub, tmp_path, fw_v1) as device:
                await device.push(hosted, fw_v2, url)
                await device.wait_for("completed")
                await device.wait_for_reboot()
            requests = downloads(hub.firmware.requests_for("fw/v2.fw"))
        assert [r.dropped for r in requests] == [True, False]
        assert requests[0].bytes_sent == drop
        assert requests[1].range_start == drop == requests[0].bytes_sent
        assert requests[1].retry_number == 1
        assert device.status_names() == ["received", "started", "started", "completed"]
        assert_applied(device, fw_v1, fw_v2)

    run(scenario())


def test_an_idle_stall_is_retried(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            url = hub.firmware.url("fw/v2.fw", HEAD, Fault(stall_after=1_000_000, stall_seconds=5))
            retry = {"time_between_retries_msec": 50, "idle_timeout_msec": 400}
            async with updating_device(hub, tmp_path, fw_v1, retry=retry) as device:
                await device.push(hosted, fw_v2, url)
                await device.wait_for("completed")
            requests = downloads(hub.firmware.requests_for("fw/v2.fw"))
        assert len(requests) == 2
        assert requests[1].range_start == 1_000_000
        assert device.status_names() == ["received", "started", "started", "completed"]
        assert_applied(device, fw_v1, fw_v2)

    run(scenario())


@pytest.mark.parametrize("preflight", [True, False], ids=["preflight", "no-preflight"])
def test_an_expired_url_fails_at_once_without_retries(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, preflight: bool
) -> None:
    settings = {} if preflight else NO_PREFLIGHT

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            url = hub.firmware.url("fw/v2.fw", Fault(status=403, times=None))
            async with updating_device(hub, tmp_path, fw_v1, **settings) as device:
                await device.push(hosted, fw_v2, url)
                await device.wait_for("failed")
                await device.settle()
            requests = hub.firmware.requests_for("fw/v2.fw")
        assert [r.status for r in requests] == [403]
        assert [is_head(r) for r in requests] == [preflight]
        assert device.statuses()[-1] == {
            "status": "failed",
            "reason": "http:403: download: http 403",
        }
        # the preflight head request is not the download: no ``started`` for it
        started = [] if preflight else ["started"]
        assert device.status_names() == ["received", *started, "failed"]
        assert_untouched(device, fw_v1)
        assert device.image.read_bytes() == device.image_before

    run(scenario())


def test_the_download_survives_a_hub_reconnect(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            url = hub.firmware.url("fw/v2.fw", HEAD, Fault(rate=1_500_000))
            async with updating_device(hub, tmp_path, fw_v1, reconnect_after_msec=[100]) as device:
                await device.push(hosted, fw_v2, url)
                await device.wait_for("started")
                hub.close_socket_abruptly(DEVICE)
                await hub.wait_for_device(DEVICE, connections=2, timeout=10)
                rejoin = hub.frames(DEVICE, "device", "phx_join")[-1]
                await device.wait_for("completed")
            requests = downloads(hub.firmware.requests_for("fw/v2.fw"))
        assert rejoin.payload["currently_downloading_uuid"] == fw_v2.uuid
        assert len(requests) == 1  # the download did not depend on the socket
        assert_applied(device, fw_v1, fw_v2)

    run(scenario(), timeout=40)


# -- bad bytes -----------------------------------------------------------------------------


def tampered_copy(firmware: Firmware, directory: Path) -> Path:
    """The archive with one byte of the rootfs entry flipped (meta.conf still signed)."""
    data = bytearray(firmware.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path = directory / "tampered.fw"
    path.write_bytes(bytes(data))
    return path


def test_a_tampered_archive_fails_and_the_old_slot_still_boots(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            # the hub's size and checksums describe the tampered file: only fwup can tell
            hosted = hub.firmware.add_file("fw/v2.fw", tampered_copy(fw_v2, tmp_path))
            async with updating_device(hub, tmp_path, fw_v1) as device:
                await device.push(hosted, fw_v2)
                failed = await device.wait_for("failed")
                await device.settle()
        assert failed["reason"].startswith("hash: fwup: ")
        # Where the flipped byte lands (data or a deflate block header of the random
        # payload) decides which check catches it first; each is a detection.
        caught_by = ("ZIP bad CRC", "blake2b mismatch", "ZIP decompression failed (-3)")
        assert any(check in failed["reason"] for check in caught_by), failed["reason"]
        assert device.status_names() == ["received", "started", "failed"]
        assert device.client.messages[-1].kind == "error"
        assert_untouched(device, fw_v1)

    run(scenario())


class CorruptingServer(FirmwareServer):
    """Serves ``corrupt`` instead of the real file to the first ``times`` requests."""

    def __init__(self, corrupt: Path, times: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.corrupt = corrupt
        self.times = times

    def _lookup(self, path: str) -> Path | None:
        if self.times > 0:
            self.times -= 1
            return self.corrupt
        return super()._lookup(path)


@pytest.mark.parametrize("bad_part", [1, 3])
def test_a_corrupt_part_is_fetched_again_by_range(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, bad_part: int
) -> None:
    corrupt = bytearray(fw_v2.path.read_bytes())
    corrupt[bad_part * PART_SIZE + 1000] ^= 0x40
    corrupt_path = tmp_path / "corrupt.fw"
    corrupt_path.write_bytes(bytes(corrupt))

    async def scenario() -> None:
        from nhlink.testing.firmware_server import https_server_context

        context = https_server_context(pki.server.cert_path, pki.server.key_path)
        async with (
            LocalHub(pki=pki) as hub,
            # the preflight head request and the download get the corrupt file
            CorruptingServer(corrupt_path, 2, ssl_context=context, directory=tmp_path) as server,
        ):
            hosted = server.add_file("v2.fw", fw_v2.path)
            async with updating_device(hub, tmp_path, fw_v1) as device:
                await device.push(hosted, fw_v2)
                await device.wait_for("completed")
            requests = downloads(server.requests)
        assert [r.range_start for r in requests] == [None, bad_part * PART_SIZE]
        assert [r.retry_number for r in requests] == [0, 0]
        assert device.status_names() == ["received", "started", "started", "completed"]
        assert_applied(device, fw_v1, fw_v2)

    run(scenario())


def test_a_checksum_mismatch_never_reaches_on_finish(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            async with updating_device(hub, tmp_path, fw_v1) as device:
                await hub.push_update(
                    DEVICE, hosted.url, fw_v2.meta, size=hosted.size, checksum="AB" * 32
                )
                failed = await device.wait_for("failed")
                await device.settle()
        assert failed["reason"].startswith("hash: checksum mismatch: sha256 ")
        assert_untouched(device, fw_v1)

    run(scenario())


# -- slow flash ----------------------------------------------------------------------------


class SlowEngine(Engine):
    """An engine whose writes take ``seconds_per_mib`` (a slow eMMC)."""

    seconds_per_mib = 1.0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        time.sleep(len(data) / PART_SIZE * self.seconds_per_mib)
        return super().feed(data)


def test_heartbeats_continue_and_nothing_times_out_during_a_slow_apply(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            updater = Updater(engine_factory=lambda **kw: SlowEngine(mode="apply", **kw))
            retry = {"time_between_retries_msec": 50, "idle_timeout_msec": 500}
            async with updating_device(
                hub, tmp_path, fw_v1, updater=updater, retry=retry
            ) as device:
                await device.push(hosted, fw_v2)
                started = await hub.wait_for_event(DEVICE, "status_update")
                await device.wait_for("completed", timeout=30)
                completed = hub.frames(DEVICE, "device", "status_update")[-1]
                beats = hub.frames(DEVICE, "phoenix", "heartbeat", direction="from_device")
            requests = downloads(hub.firmware.requests_for("fw/v2.fw"))
        during = [b.at for b in beats if started.at < b.at < completed.at]
        assert completed.at - started.at > 3.0  # the flash really was slow
        assert len(during) >= 2
        gaps = [b - a for a, b in itertools.pairwise(during)]
        assert all(gap < 1.6 for gap in gaps), gaps  # 1 s heartbeats kept flowing
        assert len(requests) == 1 and requests[0].completed  # no idle timeout, no retry
        assert_applied(device, fw_v1, fw_v2)

    run(scenario(), timeout=45)


# -- the external fwup backend -------------------------------------------------------------


def fake_fwup_settings(tmp_path: Path, replay: str, **env: str) -> tuple[Updater, Path]:
    bindir = install_fake_fwup(tmp_path)
    log = tmp_path / "fwup-log.json"
    environ = dict(os.environ)
    environ.update(
        PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        FAKE_FWUP_LOG=str(log),
        FAKE_FWUP_REPLAY=str(vectors_dir() / "expected" / replay),
        **env,
    )
    return Updater(environ=environ), log


def test_external_fwup_success_is_driven_as_section_8_says(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    updater, log = fake_fwup_settings(tmp_path, "02_ab_uboot/upgrade_1.framed.bin")

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            async with updating_device(
                hub,
                tmp_path,
                fw_v1,
                updater=updater,
                fwup_backend="fwup",
                fwup_extra_options=["--unsafe"],
            ) as device:
                await device.push(hosted, fw_v2)
                await device.wait_for("completed")
                await device.wait_for_reboot()
            progress = hub.frames(DEVICE, "device", "fwup_progress")
        record = json.loads(log.read_text())
        assert record["argv"] == [
            "--framing",
            "--exit-handshake",
            "--apply",
            "--no-unmount",
            "-d",
            str(device.image),
            "--task",
            "upgrade",
            "--unsafe",
            "--public-key",
            public_key(),
        ]
        assert record["received"] == fw_v2.path.stat().st_size
        assert record["sha256"] == hashlib.sha256(fw_v2.path.read_bytes()).hexdigest()
        assert progress[0].payload == {"stage": "updating", "value": 0}
        assert progress[-1].payload == {"stage": "updating", "value": 100}
        kinds = [(m.kind, m.text) for m in device.client.messages if m.kind != "progress"]
        assert kinds == [("warning", "Upgrading partition B"), ("ok", "")]
        assert device.status_names() == ["received", "started", "completed"]

    run(scenario())


def test_external_fwup_error_fails_the_update(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    updater, log = fake_fwup_settings(
        tmp_path,
        "07a_tampered_flip/complete.framed.bin",
        FAKE_FWUP_FAIL_AFTER="100000",
        FAKE_FWUP_STATUS="1",
    )

    outcome = run(
        update_on_hub(pki, tmp_path, fw_v1, fw_v2, "failed", updater=updater, fwup_backend="fwup")
    )
    device, failed = outcome.device, outcome.status
    assert failed["reason"] == "hash: fwup: ZIP bad CRC: 0x8bcd523 should be 0xb45d8721"
    assert json.loads(log.read_text())["received"] >= 100_000
    assert device.client.reboots == []
    assert [m.kind for m in device.client.messages if m.kind != "progress"] == [
        "warning",
        "error",
    ]


def test_external_fwup_that_is_the_nhlink_applier_really_applies(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    bindir = install_nhlink_fwup(tmp_path)
    environ = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")

    outcome = run(
        update_on_hub(
            pki,
            tmp_path,
            fw_v1,
            fw_v2,
            "completed",
            wait_timeout=30,
            updater=Updater(environ=environ),
            fwup_backend="fwup",
        ),
        timeout=40,
    )
    device = outcome.device
    assert_applied(device, fw_v1, fw_v2)


# -- reason codes of failures the applier finds --------------------------------------------


def test_a_wrong_key_without_preflight_fails_in_the_applier_on_the_signature(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    outcome = run(
        update_on_hub(
            pki,
            tmp_path,
            fw_v1,
            fw_v2,
            "failed",
            keys=False,
            fwup_public_keys=[public_key("b")],
            **NO_PREFLIGHT,
        )
    )
    device, failed = outcome.device, outcome.status
    assert failed["reason"] == (
        "signature: fwup: Firmware archive's meta.conf fails digital signature verification."
    )
    assert device.status_names() == ["received", "started", "failed"]
    assert_untouched(device, fw_v1)
    assert device.image.read_bytes() == device.image_before


def test_a_destination_too_small_fails_with_no_space(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    # A hard end (as a block device has) before slot B ends; the image file itself
    # could grow, so preflight cannot know: the applier finds it.
    limit = (4096 + fw_v1.slot_blocks + 100) * 512
    updater = Updater(engine_factory=lambda **kw: Engine(mode="apply", max_size=limit, **kw))

    outcome = run(update_on_hub(pki, tmp_path, fw_v1, fw_v2, "failed", updater=updater))
    device, failed = outcome.device, outcome.status
    assert failed["reason"].startswith(
        f"no_space: fwup: write past the end of {device.image} (offset "
    )
    assert device.client.messages[-1].kind == "error"
    assert_untouched(device, fw_v1)
