"""The sans-I/O update state machine over a recording channel, and the transfer meter."""

from __future__ import annotations

import pytest

from nhlink.client import Apply, Ignore, Reschedule
from nhlink.protocol import FirmwareMetadata, UpdateInfo
from nhlink.update.machine import (
    NO_PUBLIC_KEYS,
    NOT_VALIDATED,
    NOT_VALIDATED_RESCHEDULE_MINUTES,
    UpdateMachine,
    running_uuid_decision,
)
from nhlink.update.meter import TransferMeter
from tests.update.support import RecordingChannel

INFO = UpdateInfo("https://fw.example/v2.fw", FirmwareMetadata(uuid="new-uuid"), size=1000)


def machine() -> tuple[UpdateMachine, RecordingChannel]:
    channel = RecordingChannel()
    return UpdateMachine(channel), channel


def test_received_then_the_decision() -> None:
    m, channel = machine()
    assert m.offer(INFO)
    assert channel.statuses() == [{"status": "received"}]
    assert m.decide(Ignore("later"), have_public_keys=True) is None
    assert channel.statuses()[-1] == {"status": "ignored", "reason": "later"}
    assert m.state == "idle"
    assert m.offer(INFO)
    m.decide(Reschedule(1, "busy"), have_public_keys=True)
    assert channel.statuses()[-1] == {"status": "rescheduled", "delay_for": 5, "reason": "busy"}
    assert m.offer(INFO)
    assert m.decide(Apply(), have_public_keys=True) is INFO
    assert m.state == "updating" and m.downloading_uuid == "new-uuid"
    assert channel.downloading == ["new-uuid"]


def test_offers_while_deciding_or_updating_are_dropped_silently() -> None:
    m, channel = machine()
    assert m.offer(INFO)
    assert not m.offer(INFO)  # the client is still deciding
    m.decide(Apply(), have_public_keys=True)
    assert not m.offer(INFO)
    assert channel.statuses() == [{"status": "received"}]


def test_no_public_key_refuses_to_start() -> None:
    m, channel = machine()
    m.offer(INFO)
    assert m.decide(Apply(), have_public_keys=False) is None
    assert channel.statuses()[-1] == {
        "status": "failed",
        "reason": f"refused:no_keys: {NO_PUBLIC_KEYS}",
    }
    assert m.state == "idle" and channel.downloading == []
    m.offer(INFO)  # an ignore does not need keys
    assert m.decide(Ignore(), have_public_keys=False) is None
    assert channel.statuses()[-1] == {"status": "ignored", "reason": ""}


def test_an_unvalidated_firmware_reschedules_instead_of_starting() -> None:
    m, channel = machine()
    m.offer(INFO)
    assert m.decide(Apply(), have_public_keys=True, firmware_validated=False) is None
    # rescheduled, not failed: a failure would block the device for a day on the hub
    assert channel.statuses()[-1] == {
        "status": "rescheduled",
        "delay_for": NOT_VALIDATED_RESCHEDULE_MINUTES,
        "reason": f"not_validated: {NOT_VALIDATED}",
    }
    assert NOT_VALIDATED_RESCHEDULE_MINUTES == 5
    assert m.state == "idle" and channel.downloading == []
    m.offer(INFO)  # no keys is the first refusal
    m.decide(Apply(), have_public_keys=False, firmware_validated=False)
    assert channel.statuses()[-1]["reason"].startswith("refused:no_keys: ")
    m.offer(INFO)  # a reschedule needs neither
    m.decide(Reschedule(10), have_public_keys=True, firmware_validated=False)
    assert channel.statuses()[-1] == {"status": "rescheduled", "delay_for": 10}


def test_progress_is_throttled_and_the_end_is_always_reported() -> None:
    m, channel = machine()
    m.offer(INFO)
    m.decide(Apply(), have_public_keys=True)
    m.connected("eth0")
    for percent, now in [(0, 10.0), (5, 10.2), (7, 10.5), (7, 11.5), (50, 11.9), (90, 12.1)]:
        m.progress(percent, now)
    m.succeeded(12.2)
    pushes = [(e, p.get("status", p.get("value"))) for e, p in channel.pushes]
    assert pushes == [
        ("status_update", "received"),
        ("status_update", "started"),
        ("fwup_progress", 0),
        ("fwup_progress", 7),
        ("fwup_progress", 50),
        ("fwup_progress", 100),
        ("status_update", "completed"),
    ]
    assert channel.statuses()[1]["downloader_network_interface"] == "eth0"
    assert m.state == "idle" and channel.downloading[-1] is None


def test_failure_reports_the_reason_and_goes_idle() -> None:
    m, channel = machine()
    m.offer(INFO)
    m.decide(Apply(), have_public_keys=True)
    m.failed("http:403", "download: http 403")
    assert channel.statuses()[-1] == {"status": "failed", "reason": "http:403: download: http 403"}
    assert m.state == "idle" and channel.downloading[-1] is None
    with pytest.raises(RuntimeError):
        m.failed("internal", "again")
    m.progress(10, 1.0)  # ignored when idle
    assert [e for e, _ in channel.pushes].count("fwup_progress") == 0


def test_failed_with_needs_a_coded_reason() -> None:
    m, channel = machine()
    m.offer(INFO)
    m.decide(Apply(), have_public_keys=True)
    with pytest.raises(ValueError):
        m.failed_with("no code here")
    assert m.state == "updating"
    m.failed_with("hash: checksum mismatch")
    assert channel.statuses()[-1] == {"status": "failed", "reason": "hash: checksum mismatch"}


def test_a_started_update_can_be_rescheduled_before_its_first_byte() -> None:
    m, channel = machine()
    m.offer(INFO)
    m.decide(Apply(), have_public_keys=True)
    m.rescheduled(5, "network: cannot read the archive head: refused")
    assert channel.statuses()[-1] == {
        "status": "rescheduled",
        "delay_for": 5,
        "reason": "network: cannot read the archive head: refused",
    }
    assert m.state == "idle" and channel.downloading == ["new-uuid", None]
    with pytest.raises(RuntimeError):
        m.rescheduled(5, "again")


def test_default_decision_ignores_the_running_uuid() -> None:
    assert running_uuid_decision(INFO, "new-uuid") == Ignore("firmware is already installed")
    assert running_uuid_decision(INFO, "old-uuid") == Apply()
    assert running_uuid_decision(INFO, None) == Apply()


def test_meter_rate_and_eta() -> None:
    meter = TransferMeter(10_000, now=0.0, window=2.0)
    assert meter.rate is None and meter.eta is None
    meter.update(1000, 1.0)
    assert meter.rate == 1000 and meter.eta == 9.0
    meter.update(5000, 2.0)
    meter.update(9000, 3.0)  # the window drops the oldest sample
    assert meter.rate == 4000
    message = meter.message("progress", 90)
    assert (message.kind, message.value, message.bytes_done, message.bytes_total) == (
        "progress",
        90,
        9000,
        10_000,
    )
    assert message.eta == 0.25
