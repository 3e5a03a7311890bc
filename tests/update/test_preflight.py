"""Preflight end to end: the real link and Updater against the LocalHub over TLS.

Each check that fails before the first firmware byte is reported ``failed``
(or ``rescheduled``) with its reason code, and the firmware server's request
log shows that at most the archive head was served: no download started.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import email.utils
import json
import logging
import os
import re
import ssl
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nhlink import _native
from nhlink.aio.preflight import check_not_running_device, staging_problem
from nhlink.aio.updater import Updater
from nhlink.fwup import apply_file
from nhlink.fwup import tasks as tasks_module
from nhlink.fwup.create import create_archive
from nhlink.fwup.engine import Engine
from nhlink.fwup.identity import meta_uuid
from nhlink.fwup.keys import read_private_key_file
from nhlink.fwup.metaconf import Call, MetaConf
from nhlink.testing import Fault, FirmwareServer, LocalHub, Pki, RequestRecord
from nhlink.testing.firmware_server import https_server_context
from nhlink.testing.pki import _issue_server
from nhlink.update.journal import JOURNAL_NAME
from nhlink.update.preflight import (
    DECIDABLE_REQUIREMENTS,
    HeadReader,
    PreflightError,
    ReadOnlyDestination,
    RunningPartition,
    WriteRange,
    check_running_slot,
    check_signature,
    choose_task,
    clock_skew,
    clock_warning,
    parse_head,
    running_root_partitions,
    task_extent,
    task_write_ranges,
)
from tests.helpers.loop import attached_loop_device, require_loop_devices
from tests.helpers.vectors import vector, vectors_dir
from tests.link.support import run
from tests.update.firmware import (
    SLOT_A_BLOCK,
    Firmware,
    conf_text,
    digest,
    install,
    public_key,
    raw_public_key,
    read_env,
    slot_digest,
    write_fw_env_config,
)
from tests.update.support import install_fake_fwup
from tests.update.test_updater import (
    Device,
    Outcome,
    assert_applied,
    assert_untouched,
    downloads,
    is_head,
    update_on_hub,
    updating_device,
)

FIRST_HEAD = 16 * 1024
ONE_DAY = datetime.timedelta(days=1)
ONE_MONTH = datetime.timedelta(days=30)


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


async def refused_on_hub(
    pki: Pki, tmp_path: Path, running: Firmware, firmware: Firmware, **settings: Any
) -> tuple[Device, dict[str, Any], list[RequestRecord]]:
    """:func:`refused_before_download` on a device set up with ``settings``.

    Returns the device, its ``failed`` status and the firmware server's requests.
    """
    async with LocalHub(pki=pki) as hub:
        async with updating_device(hub, tmp_path, running, **settings) as device:
            failed = await refused_before_download(device, hub, firmware)
        requests = hub.firmware.requests
    return device, failed, requests


Updating = Callable[..., Outcome]
Refusing = Callable[..., tuple[Device, dict[str, Any], list[RequestRecord]]]


@pytest.fixture
def update(pki: Pki, tmp_path: Path, fw_v1: Firmware) -> Updating:
    """:func:`update_on_hub` from ``fw_v1``, run to the end (at most 40 s)."""

    def update(firmware: Firmware, until: str, **options: Any) -> Outcome:
        return run(update_on_hub(pki, tmp_path, fw_v1, firmware, until, **options), timeout=40)

    return update


@pytest.fixture
def refused(pki: Pki, tmp_path: Path, fw_v1: Firmware) -> Refusing:
    """:func:`refused_on_hub` from ``fw_v1``, run to the end (at most 40 s)."""

    def refused(
        firmware: Firmware, **settings: Any
    ) -> tuple[Device, dict[str, Any], list[RequestRecord]]:
        return run(refused_on_hub(pki, tmp_path, fw_v1, firmware, **settings), timeout=40)

    return refused


def assert_no_download(device: Device, requests: list[RequestRecord], heads: int) -> None:
    """Only ``heads`` head requests reached the server, and no more than the head was sent."""
    assert downloads(requests) == []
    assert len(requests) == heads and all(is_head(r) for r in requests)
    assert served(requests) <= heads * FIRST_HEAD
    assert device.status_names() == ["received", "failed"]  # never ``started``


# -- the archive head ----------------------------------------------------------------------


def test_a_wrong_key_fails_on_the_signature_before_the_download(
    fw_v2: Firmware, refused: Refusing
) -> None:
    device, failed, requests = refused(fw_v2, keys=False, fwup_public_keys=[public_key("b")])
    assert failed["reason"] == (
        "signature: Firmware archive's meta.conf fails digital signature verification."
    )
    assert_no_download(device, requests, heads=1)
    assert requests[0].range == f"bytes=0-{FIRST_HEAD - 1}"
    assert device.image.read_bytes() == device.image_before


def test_no_applicable_task_fails_before_the_download(
    fw_v1: Firmware, fw_v2: Firmware, refused: Refusing
) -> None:
    device, failed, requests = refused(fw_v2, fwup_task="nosuchtask")
    assert failed["reason"] == (
        "preflight:task: Couldn't find applicable task 'nosuchtask'. "
        "If task is available, the task's requirements may not be met."
    )
    assert_no_download(device, requests, heads=1)
    assert_untouched(device, fw_v1)


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
    tmp_path: Path, fw_v1: Firmware, action: str, reason: str, refused: Refusing
) -> None:
    slot_b_write = f"raw_write({SLOT_A_BLOCK + fw_v1.slot_blocks})"

    def edit(conf: str) -> str:
        if action.startswith("ubi"):  # a data consumer: only in on-resource
            assert conf.count(slot_b_write) == 1
            return conf.replace(slot_b_write, action)
        return conf.replace('info("Upgrading partition B")', action)

    firmware = variant(tmp_path / "fw", fw_v1, "3.0.0", edit)

    device, failed, requests = refused(firmware)
    assert failed["reason"] == reason
    assert_no_download(device, requests, heads=1)
    assert_untouched(device, fw_v1)


def test_a_long_meta_conf_grows_the_range_and_the_update_applies(
    tmp_path: Path, fw_v1: Firmware, update: Updating
) -> None:
    misc = base64.b64encode(os.urandom(24_000)).decode()  # meta.conf: ~24 KiB deflated
    firmware = variant(
        tmp_path / "fw",
        fw_v1,
        "3.1.0",
        lambda conf: conf.replace('meta-author = "nhlink tests"', f'meta-misc = "{misc}"'),
    )

    outcome = update(firmware, "completed", name="fw/long.fw")
    device, hosted, requests = outcome.device, outcome.hosted, outcome.requests
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


class RangeRewritingServer(FirmwareServer):
    """Answers each request as if its Range were :meth:`answered_range` of the one asked
    (None: no Range); the request log keeps the Range asked."""

    def answered_range(self, asked: str | None) -> str | None:
        raise NotImplementedError

    async def _respond(self, record: RequestRecord, writer: Any) -> bool:
        asked = record.headers.pop("range", None)
        answered = self.answered_range(asked)
        if answered is not None:
            record.headers["range"] = answered
        try:
            return await super()._respond(record, writer)
        finally:
            if asked is not None:
                record.headers["range"] = asked


class RangeIgnoringServer(RangeRewritingServer):
    """Answers every request with the whole file (``200``), as if Range were unknown."""

    def answered_range(self, asked: str | None) -> str | None:
        return None


def test_a_server_ignoring_range_sends_the_head_only_once(
    fw_v1: Firmware, fw_v2: Firmware, update: Updating
) -> None:
    outcome = update(
        fw_v2,
        "completed",
        name="v2.fw",
        # paced, so that what the server pushes before the client hangs up stays small
        fault=Fault(rate=200_000),
        server_class=RangeIgnoringServer,
    )
    device, hosted, requests = outcome.device, outcome.hosted, outcome.requests
    head, download = requests
    assert is_head(head) and head.status == 200 and head.content_length == hosted.size
    assert head.dropped is False and not head.completed  # we hung up after the head
    assert head.bytes_sent < 4 * FIRST_HEAD
    assert download.status == 200 and download.bytes_sent == hosted.size
    assert served(requests) < hosted.size + 4 * FIRST_HEAD
    assert_applied(device, fw_v1, fw_v2)


def test_an_unreachable_head_reschedules(
    fw_v1: Firmware, fw_v2: Firmware, update: Updating
) -> None:
    outcome = update(fw_v2, "rescheduled", fault=Fault(drop_after=0, times=None))
    device, rescheduled, requests = outcome.device, outcome.status, outcome.requests
    assert rescheduled["delay_for"] == 5
    assert rescheduled["reason"].startswith(
        "network: cannot read the archive head: connection closed"
    )
    assert len(requests) == 3 and all(is_head(r) for r in requests)
    assert served(requests) == 0
    assert device.status_names() == ["received", "rescheduled"]
    assert device.updater.state == "idle"
    assert_untouched(device, fw_v1)


# -- the clock -------------------------------------------------------------------------------


def test_a_clock_days_off_the_server_date_only_warns_and_the_update_applies(
    fw_v1: Firmware, fw_v2: Firmware, caplog: pytest.LogCaptureFixture, update: Updating
) -> None:
    # nothing in applying firmware depends on the clock (RTC-less devices are often
    # off before NTP): a warning, never a failure
    updater = Updater(wall_clock=lambda: time.time() + 3 * 86400)

    with caplog.at_level(logging.WARNING, logger="nhlink.aio.updater"):
        outcome = update(fw_v2, "completed", updater=updater)
    device = outcome.device
    assert device.status_names() == ["received", "started", "completed"]
    assert_applied(device, fw_v1, fw_v2)
    warnings = [r.getMessage() for r in caplog.records if r.name == "nhlink.aio.updater"]
    assert any(
        m.startswith("preflight: the local clock is 72.0 h ahead of the firmware server's Date (")
        and m.endswith("; updating anyway")
        for m in warnings
    ), warnings


def expired_server_context(pki: Pki, directory: Path) -> ssl.SSLContext:
    """A firmware server certificate from the device's CA that expired yesterday."""
    now = datetime.datetime.now(datetime.UTC)
    issued = _issue_server(
        pki.ca, directory, ("localhost", "127.0.0.1"), 30, (now - ONE_MONTH, now - ONE_DAY)
    )
    return https_server_context(issued.cert_path, issued.key_path)


@pytest.mark.parametrize("clock_wrong", [False, True], ids=["clock-right", "clock-behind-floor"])
def test_an_expired_server_certificate_is_a_clock_failure_only_when_the_clock_is_wrong(
    pki: Pki, tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, clock_wrong: bool, update: Updating
) -> None:
    # the reason code ``clock`` is kept for certificate date failures the link's clock
    # check explains (here: the system time is behind the configured clock floor)
    settings: dict[str, Any] = {}
    if clock_wrong:
        floor = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)
        settings["clock_floor"] = floor.strftime("%Y-%m-%dT%H:%M:%SZ")
    (tmp_path / "expired").mkdir()

    outcome = update(
        fw_v2,
        "failed",
        name="v2.fw",
        server_class=FirmwareServer,
        server_ssl=expired_server_context(pki, tmp_path / "expired"),
        **settings,
    )
    device, failed, requests = outcome.device, outcome.status, outcome.requests
    code = "clock" if clock_wrong else "tls:expired"
    assert failed["reason"].startswith(f"{code}: download: [SSL: CERTIFICATE_VERIFY_FAILED]")
    assert "certificate has expired" in failed["reason"]
    assert requests == []
    assert device.status_names() == ["received", "failed"]
    assert_untouched(device, fw_v1)


# -- the device ------------------------------------------------------------------------------


def test_an_unvalidated_firmware_is_rescheduled_not_failed(
    tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, update: Updating
) -> None:
    # ``failed`` would block the device for a day on the hub; validation usually comes
    # minutes after boot
    kv = tmp_path / "kv.txt"
    kv.write_text("nerves_fw_active=a\na.nerves_fw_validated=0\n")

    outcome = update(fw_v2, "rescheduled", kv={"file": str(kv)})
    device, rescheduled, requests = outcome.device, outcome.status, outcome.requests
    assert rescheduled["delay_for"] == 5
    assert rescheduled["reason"] == (
        "not_validated: the running firmware is not validated yet; refusing to update on top of it"
    )
    assert requests == []
    assert device.status_names() == ["received", "rescheduled"]
    assert_untouched(device, fw_v1)


def test_the_applier_refusing_an_unvalidated_firmware_reschedules_too(
    tmp_path: Path, fw_v1: Firmware, update: Updating
) -> None:
    # the archive's own check (fwup's usual wording, as in the golden vector 02_ab_uboot)
    firmware = variant(
        tmp_path / "fw",
        fw_v1,
        "3.3.0",
        lambda conf: conf.replace(
            'info("Upgrading partition B")',
            'error("Please validate the running firmware before upgrading it.")',
        ),
    )

    outcome = update(firmware, "rescheduled", name="fw/v3.fw")
    device, rescheduled = outcome.device, outcome.status
    assert rescheduled["delay_for"] == 5
    assert rescheduled["reason"] == (
        "not_validated: fwup: Please validate the running firmware before upgrading it."
    )
    assert device.status_names() == ["received", "started", "rescheduled"]
    assert_untouched(device, fw_v1)


def test_a_kv_naming_another_active_slot_does_not_block_a_file_destination(
    tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, update: Updating
) -> None:
    # The KV (a key=value file, not the destination's environment) says B is active
    # while the image's environment says A: the KV says nothing about the running
    # slot of this destination, and a regular file is never the running disk.
    kv = tmp_path / "kv.txt"
    kv.write_text("nerves_fw_active=b\nb.nerves_fw_validated=1\n")

    outcome = update(fw_v2, "completed", kv={"file": str(kv)})
    device = outcome.device
    assert device.status_names() == ["received", "started", "completed"]
    assert_applied(device, fw_v1, fw_v2)


class RecordingEngines:
    """An engine factory that keeps the engines it made (to see whether a journal was hooked)."""

    def __init__(self) -> None:
        self.engines: list[Engine] = []

    def __call__(self, **kwargs: Any) -> Engine:
        engine = Engine(mode="apply", **kwargs)
        self.engines.append(engine)
        return engine


@pytest.mark.parametrize("problem", ["not-a-directory", "too-little-space"])
def test_no_room_for_the_journal_turns_resume_off_and_the_update_applies(
    tmp_path: Path,
    fw_v1: Firmware,
    fw_v2: Firmware,
    problem: str,
    caplog: pytest.LogCaptureFixture,
    update: Updating,
) -> None:
    data_path = tmp_path / "data"
    engines = RecordingEngines()
    updater = Updater(engine_factory=engines)
    if problem == "not-a-directory":
        data_path.write_text("a file where the data directory should be")
    else:  # the real free space of the file system, against an impossible need
        updater = Updater(engine_factory=engines, staging_min_free=1 << 62)
        data_path.mkdir()
        (data_path / JOURNAL_NAME).write_text("{}")  # left by an earlier run

    with caplog.at_level(logging.WARNING, logger="nhlink.aio.updater"):
        outcome = update(fw_v2, "completed", updater=updater, data_path=str(data_path))
    device = outcome.device
    assert device.status_names() == ["received", "started", "completed"]
    assert_applied(device, fw_v1, fw_v2)
    (engine,) = engines.engines
    assert engine.on_checkpoint is None and engine.on_commit is None  # no journal hooked
    warnings = [r.getMessage() for r in caplog.records if r.name == "nhlink.aio.updater"]
    assert any(
        m.startswith(f"preflight: data_path {data_path} ")
        and m.endswith(": this update runs without resume")
        for m in warnings
    ), warnings
    if problem == "too-little-space":
        assert not (data_path / JOURNAL_NAME).exists()  # never resumed after this update
    else:
        assert data_path.is_file()  # nothing was made in its place


def test_a_metered_link_needs_the_journal_room_before_any_request(
    tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, refused: Refusing
) -> None:
    # metered: a lost resume would mean a second full download, so no room fails
    updater = Updater(staging_min_free=1 << 62)
    data_path = tmp_path / "data"

    device, failed, requests = refused(
        fw_v2, updater=updater, data_path=str(data_path), update={"metered": True}
    )
    assert failed["reason"].startswith(f"no_space: data_path {data_path} has ")
    assert failed["reason"].endswith(
        f"at least {1 << 62} are needed (a metered link needs the resume journal)"
    )
    assert requests == []
    assert_untouched(device, fw_v1)


def test_staging_problem_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "yet"
    assert staging_problem(str(missing)) is None  # judged by tmp_path, where it would go
    assert not (tmp_path / "not").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert staging_problem(str(blocker / "data")) == (
        f"data_path {blocker / 'data'} is not a writable directory"
    )
    assert staging_problem(str(tmp_path), min_free=1 << 62) is not None
    assert staging_problem(str(tmp_path), min_free=1) is None


def test_preflight_off_goes_straight_to_the_download(fw_v2: Firmware, update: Updating) -> None:
    outcome = update(fw_v2, "completed", update={"preflight": False})
    (download,) = outcome.requests
    assert not is_head(download) and download.bytes_sent == outcome.hosted.size


# -- a block device too small ----------------------------------------------------------------


@pytest.fixture
def small_loop_device(tmp_path: Path, fw_v1: Firmware) -> Iterator[tuple[str, Path]]:
    """A loop device over an image running ``fw_v1`` that ends inside slot B."""
    require_loop_devices()
    backing = tmp_path / "small.img"
    install(backing, fw_v1)
    with open(backing, "r+b") as f:
        f.truncate((SLOT_A_BLOCK + fw_v1.slot_blocks + 100) * 512)
    with attached_loop_device(backing) as device:
        yield device, backing


@pytest.mark.root
def test_a_block_device_too_small_for_the_task_fails_before_the_download(
    tmp_path: Path,
    fw_v1: Firmware,
    fw_v2: Firmware,
    small_loop_device: tuple[str, Path],
    refused: Refusing,
) -> None:
    device_path, backing = small_loop_device
    before = backing.read_bytes()
    (tmp_path / "env").mkdir()
    fw_env = write_fw_env_config(tmp_path / "env", Path(device_path))

    device, failed, requests = refused(
        fw_v2, fwup_devpath=device_path, kv={"fw_env_config": str(fw_env)}
    )
    end = (SLOT_A_BLOCK + fw_v1.slot_blocks) * 512 + -(-len(fw_v2.rootfs) // 512) * 512
    assert failed["reason"] == (
        f"no_space: task upgrade.b writes up to byte {end} but {device_path} "
        f"has {len(before)} bytes"
    )
    assert_no_download(device, requests, heads=1)
    assert backing.read_bytes() == before


# -- the running slot on a real block device ----------------------------------------------


@pytest.fixture
def loop_device(tmp_path: Path, fw_v1: Firmware) -> Iterator[tuple[str, Path]]:
    """A loop device over an image running ``fw_v1`` with room for slot B."""
    require_loop_devices()
    backing = tmp_path / "disk-backing.img"
    install(backing, fw_v1)
    with open(backing, "r+b") as f:
        f.truncate((SLOT_A_BLOCK + 2 * fw_v1.slot_blocks + 64) * 512)
    with attached_loop_device(backing) as device:
        yield device, backing


@pytest.mark.root
@pytest.mark.parametrize("running", ["real", "fake-slot-a", "fake-slot-b"])
def test_the_running_root_partition_on_the_destination_disk_is_never_written(
    tmp_path: Path,
    fw_v1: Firmware,
    fw_v2: Firmware,
    loop_device: tuple[str, Path],
    running: str,
    update: Updating,
) -> None:
    # real: "/" is not on the loop device, the update applies. fake-*: a sysfs tree says
    # the running root filesystem is the loop device's partition at slot A (upgrade.b
    # writes B: fine) or at slot B (as after an update that switched nerves_fw_active
    # without a reboot yet): refused before the download.
    device_path, backing = loop_device
    before = backing.read_bytes()
    (tmp_path / "env").mkdir()
    fw_env = write_fw_env_config(tmp_path / "env", Path(device_path))
    updater = Updater()
    slot_b = SLOT_A_BLOCK + fw_v1.slot_blocks
    if running != "real":
        start = SLOT_A_BLOCK if running == "fake-slot-a" else slot_b
        disk = os.stat(device_path).st_rdev
        sysfs = fake_sysfs(tmp_path / "sys", disk, (259, 77), start, fw_v1.slot_blocks)
        updater = Updater(sysfs=str(sysfs), root_device=lambda: os.makedev(259, 77))

    outcome = update(
        fw_v2,
        "failed" if running == "fake-slot-b" else "completed",
        updater=updater,
        fwup_devpath=device_path,
        kv={"fw_env_config": str(fw_env)},
    )
    device = outcome.device
    if running == "fake-slot-b":
        end = (slot_b + fw_v1.slot_blocks) * 512 - 1
        assert outcome.status["reason"] == (
            f"preflight:slot: task upgrade.b trim writes bytes {slot_b * 512}-{end} "
            f"of {device_path}, where the running root filesystem is "
            f"(partition 259:77, bytes {slot_b * 512}-{end})"
        )
        assert_no_download(device, outcome.requests, heads=1)
    else:
        assert device.status_names() == ["received", "started", "completed"]
    after = backing.read_bytes()
    if running == "fake-slot-b":
        assert after == before
    else:
        assert read_env(backing)["nerves_fw_active"] == "b"
        assert slot_digest(backing, fw_v2, "b") == digest(fw_v2.rootfs)
        assert after[SLOT_A_BLOCK * 512 : slot_b * 512] == before[SLOT_A_BLOCK * 512 : slot_b * 512]


# -- the archive head in short pieces -----------------------------------------------------


class ShortRangeServer(RangeRewritingServer):
    """Answers a ``bytes=N-M`` Range with at most ``piece`` bytes (a 206 shorter than asked,
    as HTTP allows)."""

    piece = 256

    def answered_range(self, asked: str | None) -> str | None:
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", asked or "")
        if match is None:
            return asked
        first, last = int(match.group(1)), int(match.group(2))
        return f"bytes={first}-{min(last, first + self.piece - 1)}"


def test_a_206_shorter_than_asked_continues_with_the_next_range(
    fw_v1: Firmware, fw_v2: Firmware, update: Updating
) -> None:
    outcome = update(fw_v2, "completed", name="v2.fw", server_class=ShortRangeServer)
    device, hosted, requests = outcome.device, outcome.hosted, outcome.requests
    heads = [r for r in requests if is_head(r)]
    assert len(heads) >= 2 and all(r.status == 206 for r in heads)
    # each request starts where the previous short answer ended: no byte twice
    assert [r.range for r in heads] == [
        f"bytes={i * 256}-{FIRST_HEAD - 1}" for i in range(len(heads))
    ]
    assert all(r.bytes_sent == 256 for r in heads)
    (download,) = downloads(requests)
    assert download.bytes_sent == hosted.size
    assert_applied(device, fw_v1, fw_v2)


# -- an external fwup -----------------------------------------------------------------------


def test_an_external_fwup_runs_require_execute_itself(
    tmp_path: Path, fw_v1: Firmware, update: Updating
) -> None:
    # upgrade.b gains a require-execute: preflight does not run it (fwup runs it, with
    # --unsafe) and leaves the choice to fwup (here the fake fwup, which replays a
    # successful upgrade). Unknown requirement names are covered below, sans-I/O: the
    # archive creator refuses to write them.
    counter = tmp_path / "require-execute-ran"
    marker = 'require-uboot-variable(uboot-env, "nerves_fw_active", "a")'

    def edit(conf: str) -> str:
        assert conf.count(marker) == 1
        return conf.replace(
            marker,
            f'{marker}\n    require-execute("echo ran >> {counter}")',
        )

    firmware = variant(tmp_path / "fw", fw_v1, "3.2.0", edit)
    bindir = install_fake_fwup(tmp_path)
    log = tmp_path / "fake-fwup.json"
    environ = dict(
        os.environ,
        PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        FAKE_FWUP_LOG=str(log),
        FAKE_FWUP_REPLAY=str(vectors_dir() / "expected" / "02_ab_uboot/upgrade_1.framed.bin"),
    )

    outcome = update(
        firmware,
        "completed",
        name="fw/v3.fw",
        updater=Updater(environ=environ),
        fwup_backend="fwup",
        fwup_extra_options=["--unsafe"],
    )
    device, requests = outcome.device, outcome.requests
    assert device.status_names() == ["received", "started", "completed"]
    assert [is_head(r) for r in requests] == [True, False]  # preflight ran
    assert json.loads(log.read_text())["received"] == firmware.path.stat().st_size
    assert not counter.exists()  # preflight never ran the command


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


def test_extent_and_clock_skew_with_age() -> None:
    head = HeadReader().feed(vector_fw("02_ab_uboot"))
    assert head is not None
    conf = parse_head(head, {}, check_version=True)
    tasks = {task.name: task for task in conf.tasks}
    assert task_extent(conf, tasks["upgrade.b"]) > task_extent(conf, tasks["upgrade.a"]) > 0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now, usegmt=True)
    assert clock_skew(now + 60, date) == 60
    assert clock_skew(now + 60, date, "50") == 10  # a cached copy: its Date is 50 s old
    assert clock_skew(now + 60, date, "junk") == 60
    assert clock_skew(now, "not a date") is None and clock_skew(now, None) is None
    assert clock_warning(now + 23 * 3600, date) is None
    assert clock_warning(now + 25 * 3600, date, str(2 * 3600)) is None  # Age explains it
    late = clock_warning(now - 25 * 3600, date)
    assert late == f"the local clock is 25.0 h behind the firmware server's Date ({date})"


def conf_of(firmware: Firmware) -> MetaConf:
    head = HeadReader().feed(firmware.path.read_bytes()[:FIRST_HEAD])
    assert head is not None
    return parse_head(head, {}, check_version=True)


def test_the_write_ranges_of_a_task_cover_every_media_write(fw_v1: Firmware) -> None:
    conf = conf_of(fw_v1)
    tasks = {task.name: task for task in conf.tasks}
    destination = ReadOnlyDestination(str(fw_v1.path))  # any file: only its size is used
    try:
        ranges = task_write_ranges(conf, tasks["upgrade.b"], destination)
    finally:
        destination.close()
    slot_b = (SLOT_A_BLOCK + fw_v1.slot_blocks) * 512
    rootfs = -(-len(fw_v1.rootfs) // 512) * 512
    env = WriteRange(256 * 512, 272 * 512, "uboot_unsetenv")
    assert ranges[:3] == [env, env, WriteRange(slot_b, slot_b + fw_v1.slot_blocks * 512, "trim")]
    assert set(ranges[3:]) == {
        WriteRange(256 * 512, 272 * 512, "uboot_setenv"),
        WriteRange(slot_b, slot_b + rootfs, "raw_write"),
    }


def test_a_fat_write_range_comes_from_mkfs_or_the_boot_sector(tmp_path: Path) -> None:
    conf_path = tmp_path / "fat.conf"
    conf_path.write_text(
        """
file-resource a.txt { host-path = "${TEXT}" }
task complete {
    on-init { fat_mkfs(63, 8192) }
    on-resource a.txt { fat_write(63, "a.txt") }
}
task upgrade {
    on-resource a.txt { fat_write(63, "a.txt") }
}
"""
    )
    text = tmp_path / "a.txt"
    text.write_text("hello")
    archive = tmp_path / "fat.fw"
    create_archive(
        conf_path, archive, environ={"SOURCE_DATE_EPOCH": "1700000000", "TEXT": str(text)}
    )
    image = tmp_path / "fat.img"
    frames = apply_file(archive, image, "complete")
    assert frames[-1].type == "OK", frames[-1]
    head = HeadReader().feed(archive.read_bytes())
    assert head is not None
    conf = parse_head(head, {}, check_version=True)
    tasks = {task.name: task for task in conf.tasks}
    destination = ReadOnlyDestination(str(image))
    try:
        made = task_write_ranges(conf, tasks["complete"], destination)
        updated = task_write_ranges(conf, tasks["upgrade"], destination)
    finally:
        destination.close()
    fat = (63 * 512, (63 + 8192) * 512)
    assert {(r.start, r.end) for r in made} == {fat}
    assert [(r.start, r.end, r.action) for r in updated] == [(*fat, "fat_write")]  # boot sector


def fake_sysfs(root: Path, disk: int, partition: tuple[int, int], start: int, size: int) -> Path:
    """A sysfs tree where ``partition`` (MAJ, MIN) is a partition of ``disk`` at ``start``
    (512-byte sectors), like /sys/dev/block/MAJ:MIN -> ../../devices/.../disk/part."""
    disk_dir = root / "devices" / "virtual" / "block" / "fakedisk"
    part_dir = disk_dir / "fakedisk2"
    part_dir.mkdir(parents=True)
    (disk_dir / "dev").write_text(f"{os.major(disk)}:{os.minor(disk)}\n")
    (part_dir / "dev").write_text(f"{partition[0]}:{partition[1]}\n")
    (part_dir / "start").write_text(f"{start}\n")
    (part_dir / "size").write_text(f"{size}\n")
    block = root / "dev" / "block"
    block.mkdir(parents=True)
    (block / f"{partition[0]}:{partition[1]}").symlink_to(
        Path("..") / ".." / "devices" / "virtual" / "block" / "fakedisk" / "fakedisk2"
    )
    return root


def test_the_running_root_partition_is_found_in_sysfs(tmp_path: Path) -> None:
    disk = os.makedev(179, 0)
    sysfs = fake_sysfs(tmp_path / "sys", disk, (179, 2), 4096, 2048)
    found = running_root_partitions(sysfs, os.makedev(179, 2))
    assert found == [RunningPartition("179:2", disk, 4096 * 512, 6144 * 512)]
    assert running_root_partitions(sysfs, os.makedev(0, 27)) == []  # overlay, tmpfs, ...
    # a whole disk (no ``start``): the running root is all of it
    whole = sysfs / "devices" / "virtual" / "block" / "fakedisk"
    (whole / "size").write_text("8192\n")
    (sysfs / "dev" / "block" / "179:0").symlink_to(whole)
    assert running_root_partitions(sysfs, disk) == [RunningPartition("179:0", disk, 0, 8192 * 512)]
    # device mapper (e.g. dm-verity): followed through ``slaves`` to the partition
    dm = sysfs / "devices" / "virtual" / "block" / "dm-0"
    (dm / "slaves" / "fakedisk2").mkdir(parents=True)
    (dm / "slaves" / "fakedisk2" / "dev").write_text("179:2\n")
    (dm / "size").write_text("2000\n")
    (sysfs / "dev" / "block" / "253:0").symlink_to(dm)
    assert running_root_partitions(sysfs, os.makedev(253, 0)) == found


def test_the_running_slot_check_compares_byte_ranges(fw_v1: Firmware, tmp_path: Path) -> None:
    conf = conf_of(fw_v1)
    tasks = {task.name: task for task in conf.tasks}
    destination = ReadOnlyDestination(str(fw_v1.path))
    disk = os.makedev(179, 0)
    slot_b = (SLOT_A_BLOCK + fw_v1.slot_blocks) * 512
    slot_a = SLOT_A_BLOCK * 512
    on_a = [RunningPartition("179:2", disk, slot_a, slot_b)]
    on_b = [RunningPartition("179:3", disk, slot_b, slot_b + fw_v1.slot_blocks * 512)]
    try:
        check_running_slot(conf, tasks["upgrade.b"], destination, on_b)  # a file: never
        destination.is_block_device, destination.rdev = True, disk  # as a block device would
        check_running_slot(conf, tasks["upgrade.b"], destination, on_a)
        check_running_slot(conf, tasks["upgrade.a"], destination, on_b)
        other_disk = [RunningPartition("8:3", os.makedev(8, 0), slot_b, slot_b + 512)]
        check_running_slot(conf, tasks["upgrade.b"], destination, other_disk)
        with pytest.raises(PreflightError) as refused:
            check_running_slot(conf, tasks["upgrade.b"], destination, on_b)
        with pytest.raises(PreflightError):
            check_running_slot(conf, tasks["upgrade.a"], destination, on_a)
    finally:
        destination.close()
    end = slot_b + fw_v1.slot_blocks * 512 - 1
    assert refused.value.reason == (
        f"preflight:slot: task upgrade.b trim writes bytes {slot_b}-{end} of {fw_v1.path}, "
        f"where the running root filesystem is (partition 179:3, bytes {slot_b}-{end})"
    )


def test_an_external_fwup_decides_requirements_nhlink_does_not_know(
    fw_v1: Firmware, tmp_path: Path
) -> None:
    assert DECIDABLE_REQUIREMENTS | {"require-execute"} == set(tasks_module._REQUIREMENTS)
    conf = conf_of(fw_v1)
    image = tmp_path / "disk.img"
    install(image, fw_v1)
    destination = ReadOnlyDestination(str(image))  # the env says A is active
    try:
        chosen = choose_task(conf, "upgrade", destination, _native, unsafe=True, external=True)
        assert chosen is not None and chosen.name == "upgrade.b"
        future = Call("require-some-future-thing", ("x",))
        execute = Call("require-execute", ("exit 1",))
        for extra in (future, execute):
            edited = edit_requirements(conf, "upgrade.b", extra)
            # upgrade.a is ruled out by what nhlink knows; upgrade.b is fwup's call
            assert (
                choose_task(edited, "upgrade", destination, _native, unsafe=True, external=True)
                is None
            )
            with pytest.raises(PreflightError) as none:  # the built-in engine: not met
                choose_task(edited, "upgrade", destination, _native, unsafe=False)
            assert none.value.code == "preflight:task"
        # an undecided requirement on a task the known ones rule out changes nothing
        edited = edit_requirements(conf, "upgrade.a", future)
        chosen = choose_task(edited, "upgrade", destination, _native, unsafe=True, external=True)
        assert chosen is not None and chosen.name == "upgrade.b"
    finally:
        destination.close()


def edit_requirements(conf: MetaConf, task_name: str, extra: Call) -> MetaConf:
    tasks = tuple(
        dataclasses.replace(t, requirements=(*t.requirements, extra)) if t.name == task_name else t
        for t in conf.tasks
    )
    return dataclasses.replace(conf, tasks=tasks)


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
    tmp_path: Path, fw_v1: Firmware, fw_v2: Firmware, preflight: bool, update: Updating
) -> None:
    stranger = Pki.create(tmp_path / "other-pki")  # a CA the device does not trust

    settings: dict[str, Any] = {} if preflight else {"update": {"preflight": False}}
    outcome = update(
        fw_v2,
        "failed",
        name="v2.fw",
        server_class=FirmwareServer,
        server_ssl=https_server_context(stranger.server.cert_path, stranger.server.key_path),
        **settings,
    )
    device, failed, requests = outcome.device, outcome.status, outcome.requests
    # preflight fails at once; the downloader retries (a handshake may break) and
    # gives up after max_disconnects: the same code either way
    prefix = "tls:certificate: download: " + ("" if preflight else "max disconnects reached")
    assert failed["reason"].startswith(prefix)
    assert "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed" in failed["reason"]
    assert requests == []  # the handshake failed: no request was ever made
    assert "completed" not in device.status_names()
    assert_untouched(device, fw_v1)
