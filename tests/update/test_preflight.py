"""Preflight end to end: the real link and Updater against the LocalHub over TLS.

Each check that fails before the first firmware byte is reported ``failed``
(or ``rescheduled``) with its reason code, and the firmware server's request
log shows that at most the archive head was served: no download started.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nhlink import _native
from nhlink.aio.preflight import check_not_running_device
from nhlink.aio.updater import Updater
from nhlink.fwup.create import create_archive
from nhlink.fwup.identity import meta_uuid
from nhlink.fwup.keys import read_private_key_file
from nhlink.testing import Fault, FirmwareServer, LocalHub, Pki, RequestRecord
from nhlink.testing.firmware_server import https_server_context
from nhlink.update.preflight import (
    HeadReader,
    PreflightError,
    check_clock,
    check_signature,
    check_slot,
    clock_skew,
    parse_head,
    target_slot,
    task_extent,
)
from tests.helpers.vectors import vector, vectors_dir
from tests.link.support import run
from tests.update.firmware import (
    SLOT_A_BLOCK,
    Firmware,
    conf_text,
    install,
    public_key,
    raw_public_key,
    write_fw_env_config,
)
from tests.update.test_updater import (
    Device,
    assert_applied,
    assert_untouched,
    downloads,
    is_head,
    updating_device,
)

FIRST_HEAD = 16 * 1024


def served(requests: list[RequestRecord]) -> int:
    """Body bytes the firmware server sent."""
    return sum(r.bytes_sent for r in requests)


def variant(
    directory: Path, base: Firmware, name: str, edit: Callable[[str], str], size: int = 256 * 1024
) -> Firmware:
    """A signed archive like the test firmware, with its fwup.conf changed by ``edit``."""
    directory.mkdir(parents=True, exist_ok=True)
    rootfs = os.urandom(size)
    rootfs_path = directory / f"rootfs-{name}.img"
    rootfs_path.write_bytes(rootfs)
    conf = directory / f"{name}.conf"
    conf.write_text(edit(conf_text(rootfs_path, name, base.slot_blocks)))
    archive = directory / f"{name}.fw"
    key = read_private_key_file(str(vectors_dir() / "keys" / "testkey-a.priv"))
    created = create_archive(
        conf, archive, signing_key=key, level=1, environ={"SOURCE_DATE_EPOCH": "1700000000"}
    )
    return Firmware(archive, rootfs, meta_uuid(created.meta_conf), name, base.slot_blocks)


async def refused_before_download(
    device: Device, hub: LocalHub, firmware: Firmware, url: str | None = None
) -> dict[str, Any]:
    hosted = hub.firmware.add_file(f"fw/{firmware.version}.fw", firmware.path)
    await device.push(hosted, firmware, url)
    failed = await device.wait_for("failed")
    await device.settle()
    return failed


def assert_no_download(device: Device, requests: list[RequestRecord], heads: int) -> None:
    """Only ``heads`` head requests reached the server, and no more than the head was sent."""
    assert downloads(requests) == []
    assert len(requests) == heads and all(is_head(r) for r in requests)
    assert served(requests) <= heads * FIRST_HEAD
    assert device.status_names() == ["received", "failed"]  # never ``started``


# -- the archive head ----------------------------------------------------------------------


def test_a_wrong_key_fails_on_the_signature_before_the_download(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            async with updating_device(
                hub, tmp_path, fw_v1, keys=False, fwup_public_keys=[public_key("b")]
            ) as device:
                failed = await refused_before_download(device, hub, fw_v2)
            requests = hub.firmware.requests
        assert failed["reason"] == (
            "signature: Firmware archive's meta.conf fails digital signature verification."
        )
        assert_no_download(device, requests, heads=1)
        assert requests[0].range == f"bytes=0-{FIRST_HEAD - 1}"
        assert device.image.read_bytes() == device.image_before

    run(scenario(), timeout=40)


def test_no_applicable_task_fails_before_the_download(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            async with updating_device(hub, tmp_path, fw_v1, fwup_task="nosuchtask") as device:
                failed = await refused_before_download(device, hub, fw_v2)
            requests = hub.firmware.requests
        assert failed["reason"] == (
            "preflight:task: Couldn't find applicable task 'nosuchtask'. "
            "If task is available, the task's requirements may not be met."
        )
        assert_no_download(device, requests, heads=1)
        assert_untouched(device, fw_v1)

    run(scenario(), timeout=40)


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        (
            'ubi_volume_write("ubi0")',
            "preflight:action: task upgrade.b uses ubi_volume_write, which this applier does not "
            "implement",
        ),
        ('execute("true")', "preflight:action: task upgrade.b uses execute, which needs --unsafe"),
    ],
    ids=["not-implemented", "unsafe"],
)
def test_an_action_the_applier_cannot_run_fails_before_the_download(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, action: str, reason: str
) -> None:
    slot_b_write = f"raw_write({SLOT_A_BLOCK + fw_v1.slot_blocks})"

    def edit(conf: str) -> str:
        if action.startswith("ubi"):  # a data consumer: only in on-resource
            assert conf.count(slot_b_write) == 1
            return conf.replace(slot_b_write, action)
        return conf.replace('info("Upgrading partition B")', action)

    firmware = variant(tmp_path / "fw", fw_v1, "3.0.0", edit)

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            async with updating_device(hub, tmp_path, fw_v1) as device:
                failed = await refused_before_download(device, hub, firmware)
            requests = hub.firmware.requests
        assert failed["reason"] == reason
        assert_no_download(device, requests, heads=1)
        assert_untouched(device, fw_v1)

    run(scenario(), timeout=40)


def test_a_long_meta_conf_grows_the_range_and_the_update_applies(
    pki: Pki, tmp_path: Path, fw_v1: Firmware
) -> None:
    misc = base64.b64encode(os.urandom(24_000)).decode()  # meta.conf: ~24 KiB deflated
    firmware = variant(
        tmp_path / "fw",
        fw_v1,
        "3.1.0",
        lambda conf: conf.replace('meta-author = "nhlink tests"', f'meta-misc = "{misc}"'),
    )

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/long.fw", firmware.path)
            async with updating_device(hub, tmp_path, fw_v1) as device:
                await device.push(hosted, firmware)
                await device.wait_for("completed")
                await device.wait_for_reboot()
            requests = hub.firmware.requests
        heads = [r for r in requests if is_head(r)]
        # the second request continues where the first ended: no byte twice
        assert [r.range for r in heads] == [
            f"bytes=0-{FIRST_HEAD - 1}",
            f"bytes={FIRST_HEAD}-{4 * FIRST_HEAD - 1}",
        ]
        assert served(heads) <= 4 * FIRST_HEAD
        (download,) = downloads(requests)
        assert download.range is None and download.bytes_sent == hosted.size
        assert_applied(device, fw_v1, firmware)

    run(scenario(), timeout=40)


class RangeIgnoringServer(FirmwareServer):
    """Answers every request with the whole file (``200``), as if Range were unknown."""

    async def _respond(self, record: RequestRecord, writer: Any) -> bool:
        asked = record.headers.pop("range", None)
        try:
            return await super()._respond(record, writer)
        finally:
            if asked is not None:
                record.headers["range"] = asked


def test_a_server_ignoring_range_sends_the_head_only_once(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        context = https_server_context(pki.server.cert_path, pki.server.key_path)
        async with (
            LocalHub(pki=pki) as hub,
            RangeIgnoringServer(ssl_context=context, directory=tmp_path / "s") as server,
        ):
            hosted = server.add_file("v2.fw", fw_v2.path)
            # paced, so that what the server pushes before the client hangs up stays small
            url = server.url("v2.fw", Fault(rate=200_000))
            async with updating_device(hub, tmp_path, fw_v1) as device:
                await device.push(hosted, fw_v2, url)
                await device.wait_for("completed")
                await device.wait_for_reboot()
            requests = list(server.requests)
        head, download = requests
        assert is_head(head) and head.status == 200 and head.content_length == hosted.size
        assert head.dropped is False and not head.completed  # we hung up after the head
        assert head.bytes_sent < 4 * FIRST_HEAD
        assert download.status == 200 and download.bytes_sent == hosted.size
        assert served(requests) < hosted.size + 4 * FIRST_HEAD
        assert_applied(device, fw_v1, fw_v2)

    run(scenario(), timeout=40)


def test_an_unreachable_head_reschedules(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            url = hub.firmware.url("fw/v2.fw", Fault(drop_after=0, times=None))
            async with updating_device(hub, tmp_path, fw_v1) as device:
                await device.push(hosted, fw_v2, url)
                rescheduled = await device.wait_for("rescheduled")
                await device.settle()
            requests = hub.firmware.requests
        assert rescheduled["delay_for"] == 5
        assert rescheduled["reason"].startswith(
            "network: cannot read the archive head: connection closed"
        )
        assert len(requests) == 3 and all(is_head(r) for r in requests)
        assert served(requests) == 0
        assert device.status_names() == ["received", "rescheduled"]
        assert device.updater.state == "idle"
        assert_untouched(device, fw_v1)

    run(scenario(), timeout=40)


# -- the clock -------------------------------------------------------------------------------


def test_a_clock_days_off_the_hub_date_fails_before_the_download(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    updater = Updater(wall_clock=lambda: time.time() + 3 * 86400)

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            async with updating_device(hub, tmp_path, fw_v1, updater=updater) as device:
                failed = await refused_before_download(device, hub, fw_v2)
            requests = hub.firmware.requests
        assert failed["reason"].startswith(
            "clock: the local clock is 72.0 h ahead of the firmware server's Date ("
        )
        assert_no_download(device, requests, heads=1)

    run(scenario(), timeout=40)


# -- the device ------------------------------------------------------------------------------


def test_an_unvalidated_firmware_is_not_updated(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    kv = tmp_path / "kv.txt"
    kv.write_text("nerves_fw_active=a\na.nerves_fw_validated=0\n")

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            async with updating_device(hub, tmp_path, fw_v1, kv={"file": str(kv)}) as device:
                failed = await refused_before_download(device, hub, fw_v2)
            requests = hub.firmware.requests
        assert failed["reason"] == (
            "not_validated: the running firmware is not validated yet; "
            "refusing to update on top of it"
        )
        assert requests == []
        assert device.status_names() == ["received", "failed"]
        assert_untouched(device, fw_v1)

    run(scenario(), timeout=40)


def test_a_task_writing_the_running_slot_fails_before_the_download(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    # The device runs slot B (its KV says so) while the destination's environment
    # says A: upgrade.b would be selected and would overwrite the running slot.
    kv = tmp_path / "kv.txt"
    kv.write_text("nerves_fw_active=b\nb.nerves_fw_validated=1\n")

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            async with updating_device(hub, tmp_path, fw_v1, kv={"file": str(kv)}) as device:
                failed = await refused_before_download(device, hub, fw_v2)
            requests = hub.firmware.requests
        assert failed["reason"] == (
            "preflight:slot: task upgrade.b writes slot b, the slot the device runs from"
        )
        assert_no_download(device, requests, heads=1)
        assert_untouched(device, fw_v1)

    run(scenario(), timeout=40)


@pytest.mark.parametrize("problem", ["not-a-directory", "too-little-space"])
def test_no_room_in_data_path_fails_before_any_request(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, problem: str
) -> None:
    data_path = tmp_path / "data"
    updater = Updater()
    if problem == "not-a-directory":
        data_path.write_text("a file where the data directory should be")
    else:  # the real free space of the file system, against an impossible need
        updater = Updater(staging_min_free=1 << 62)

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            async with updating_device(
                hub, tmp_path, fw_v1, updater=updater, data_path=str(data_path)
            ) as device:
                failed = await refused_before_download(device, hub, fw_v2)
            requests = hub.firmware.requests
        assert failed["reason"].startswith(f"no_space: data_path {data_path} ")
        if problem == "too-little-space":
            assert f"at least {1 << 62} are needed" in failed["reason"]
        assert requests == []
        assert_untouched(device, fw_v1)

    run(scenario(), timeout=40)


def test_preflight_off_goes_straight_to_the_download(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware
) -> None:
    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            hosted = hub.firmware.add_file("fw/v2.fw", fw_v2.path)
            async with updating_device(hub, tmp_path, fw_v1, update={"preflight": False}) as device:
                await device.push(hosted, fw_v2)
                await device.wait_for("completed")
            requests = hub.firmware.requests
        (download,) = requests
        assert not is_head(download) and download.bytes_sent == hosted.size

    run(scenario(), timeout=40)


# -- a block device too small ----------------------------------------------------------------


@pytest.fixture
def small_loop_device(tmp_path: Path, fw_v1: Firmware) -> Iterator[tuple[str, Path]]:
    """A loop device over an image running ``fw_v1`` that ends inside slot B."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup")
    backing = tmp_path / "small.img"
    install(backing, fw_v1)
    with open(backing, "r+b") as f:
        f.truncate((SLOT_A_BLOCK + fw_v1.slot_blocks + 100) * 512)
    attach = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if attach.returncode != 0:
        pytest.skip(f"losetup failed: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


@pytest.mark.root
def test_a_block_device_too_small_for_the_task_fails_before_the_download(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, small_loop_device: tuple[str, Path]
) -> None:
    device_path, backing = small_loop_device
    before = backing.read_bytes()
    (tmp_path / "env").mkdir()
    fw_env = write_fw_env_config(tmp_path / "env", Path(device_path))

    async def scenario() -> None:
        async with LocalHub(pki=pki) as hub:
            async with updating_device(
                hub, tmp_path, fw_v1, fwup_devpath=device_path, kv={"fw_env_config": str(fw_env)}
            ) as device:
                failed = await refused_before_download(device, hub, fw_v2)
            requests = hub.firmware.requests
        end = (SLOT_A_BLOCK + fw_v1.slot_blocks) * 512 + -(-len(fw_v2.rootfs) // 512) * 512
        assert failed["reason"] == (
            f"no_space: task upgrade.b writes up to byte {end} but {device_path} "
            f"has {len(before)} bytes"
        )
        assert_no_download(device, requests, heads=1)

    run(scenario(), timeout=40)
    assert backing.read_bytes() == before


# -- the sans-I/O parts ----------------------------------------------------------------------


def vector_fw(name: str) -> bytes:
    return (vectors_dir() / "fw" / f"{name}.fw").read_bytes()


@pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 20])
def test_the_head_reader_finds_meta_conf_however_the_bytes_arrive(piece: int) -> None:
    data = vector_fw("02_ab_uboot")
    reader = HeadReader()
    head = None
    offset = 0
    while head is None:
        head = reader.feed(data[offset : offset + piece])
        offset += piece
    assert reader.consumed < 16 * 1024  # no more than the head was needed
    assert meta_uuid(head.meta_conf) == vector("02_ab_uboot")["metadata"]["meta-uuid"]
    check_signature(head, [raw_public_key("a")], _native)
    with pytest.raises(PreflightError) as wrong:
        check_signature(head, [raw_public_key("b")], _native)
    assert wrong.value.code == "signature"


def test_an_unsigned_archive_is_a_signature_failure() -> None:
    head = HeadReader().feed(vector_fw("06_unsigned"))
    assert head is not None and head.signature is None
    with pytest.raises(PreflightError) as refused:
        check_signature(head, [raw_public_key("a")], _native)
    assert refused.value.reason == "signature: Expecting signed firmware archive."


def test_an_archive_not_starting_with_meta_conf_is_refused() -> None:
    data = bytearray(vector_fw("01_minimal_raw"))
    data[:4] = b"XXXX"
    with pytest.raises(PreflightError) as refused:
        HeadReader().feed(bytes(data))
    assert refused.value.code == "preflight:archive"


def test_target_slot_extent_and_clock() -> None:
    head = HeadReader().feed(vector_fw("02_ab_uboot"))
    assert head is not None
    conf = parse_head(head, {}, check_version=True)
    tasks = {task.name: task for task in conf.tasks}
    assert {name: target_slot(task) for name, task in tasks.items()} == {
        "complete": "a",  # sets nerves_fw_active in on-init
        "upgrade.a": "a",
        "upgrade.b": "b",
        "upgrade.unvalidated": None,
        "upgrade.wrongplatform": None,
        "validate": None,
    }
    check_slot(tasks["upgrade.a"], "b")
    with pytest.raises(PreflightError):
        check_slot(tasks["upgrade.a"], "a")
    assert task_extent(conf, tasks["upgrade.b"]) > task_extent(conf, tasks["upgrade.a"]) > 0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now, usegmt=True)
    assert clock_skew(now + 60, date) == 60
    assert clock_skew(now, "not a date") is None and clock_skew(now, None) is None
    check_clock(now + 23 * 3600, date)
    with pytest.raises(PreflightError) as late:
        check_clock(now - 25 * 3600, date)
    assert late.value.code == "clock" and "25.0 h behind" in str(late.value)


def test_the_running_root_device_is_refused() -> None:
    root = os.stat("/").st_dev
    nodes = []
    for entry in os.scandir("/dev"):
        with contextlib.suppress(OSError):
            st = os.stat(entry.path)
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == root:
                nodes.append(entry.path)
    if not nodes:
        pytest.skip("no device node for the root file system here")
    with pytest.raises(PreflightError) as refused:
        check_not_running_device(nodes[0])
    assert refused.value.code == "preflight:slot"
    check_not_running_device(__file__)  # a regular file is never the running slot


@pytest.mark.parametrize("preflight", [True, False], ids=["preflight", "no-preflight"])
def test_an_untrusted_firmware_server_fails_with_a_tls_code(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, preflight: bool
) -> None:
    stranger = Pki.create(tmp_path / "other-pki")  # a CA the device does not trust

    async def scenario() -> None:
        context = https_server_context(stranger.server.cert_path, stranger.server.key_path)
        async with (
            LocalHub(pki=pki) as hub,
            FirmwareServer(ssl_context=context, directory=tmp_path / "s") as server,
        ):
            hosted = server.add_file("v2.fw", fw_v2.path)
            settings: dict[str, Any] = {} if preflight else {"update": {"preflight": False}}
            async with updating_device(hub, tmp_path, fw_v1, **settings) as device:
                await device.push(hosted, fw_v2)
                failed = await device.wait_for("failed")
                await device.settle()
            requests = server.requests
        # preflight fails at once; the downloader retries (a handshake may break) and
        # gives up after max_disconnects: the same code either way
        prefix = "tls:certificate: download: " + ("" if preflight else "max disconnects reached")
        assert failed["reason"].startswith(prefix)
        assert "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed" in failed["reason"]
        assert requests == []  # the handshake failed: no request was ever made
        assert "completed" not in device.status_names()
        assert_untouched(device, fw_v1)

    run(scenario(), timeout=40)
