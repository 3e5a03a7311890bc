"""The device channel: join params, hub events and device pushes, on spec frames."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from nhlink.protocol import (
    ArchiveInfo,
    ArchiveOffered,
    ArchivePublicKeysUpdated,
    ChannelJoined,
    ChannelLogic,
    Connection,
    DeviceChannel,
    DeviceJoinInfo,
    ExtensionsRequested,
    FirmwareMetadata,
    FwupPublicKeysUpdated,
    IdentifyRequested,
    PayloadRejected,
    RebootRequested,
    ScriptRunRequested,
    UnknownEvent,
    UpdateInfo,
    UpdateOffered,
    build_join_params,
    reschedule_minutes,
)
from tests.helpers.vectors import vectors_dir
from tests.protocol.harness import (
    FIXTURE_ACTIVE_KV,
    FIXTURE_DEVICE_JOIN,
    FIXTURE_DEVICE_JOIN_REPLY,
    Harness,
)

FIXTURE_INFO = DeviceJoinInfo(active_kv=FIXTURE_ACTIVE_KV, fwup_version="1.13.0")
CONSOLE_JOIN_MAIN = (
    '["2","2","console","phx_join",{"console_version":"2.0.0","device_api_version":"2.3.0"}]'
)
PARTIALS = [f"{i:064X}" for i in range(30)]
UPDATE_PAYLOAD: dict[str, Any] = {
    "update_available": True,
    "firmware_url": "https://files.example.test/fw/1/3c9f.fw?X-Amz-Signature=abc",
    "firmware_meta": {
        "architecture": "arm",
        "author": "The Nerves Team",
        "description": "",
        "misc": "",
        "platform": "rpi4",
        "product": "my_app",
        "uuid": "3c9f2f2e-1c55-5d3b-9a4e-0b1f0e6a7c11",
        "vcs_identifier": "",
        "version": "0.2.0",
    },
    "size": 31457280,
    "checksum": "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
    "partials_checksums": PARTIALS,
    "deployment_id": 7,
}
ARCHIVE_PAYLOAD: dict[str, Any] = {
    "size": 1024,
    "uuid": "0b7c3f1e-5d2a-4e6b-9f10-2c3d4e5f6a7b",
    "version": "1.0.0",
    "description": "maps",
    "platform": "rpi4",
    "architecture": "arm",
    "uploaded_at": "2026-01-01T00:00:00",
    "url": "https://files.example.test/archives/maps.fw",
}


def public_key(name: str) -> str:
    return (vectors_dir() / "keys" / f"{name}.pub").read_text().strip()


def device_connection(info: DeviceJoinInfo = FIXTURE_INFO) -> tuple[Harness, DeviceChannel]:
    conn = Connection(heartbeat_interval=30.0)
    device = DeviceChannel(info)
    conn.add_channel(device)
    return Harness(conn), device


def joined_device(info: DeviceJoinInfo = FIXTURE_INFO) -> tuple[Harness, DeviceChannel]:
    h, device = device_connection(info)
    h.connect()
    h.receive(FIXTURE_DEVICE_JOIN_REPLY)
    return h, device


def fastlaned(event: str, payload: dict[str, Any]) -> list[Any]:
    return [None, None, "device", event, payload]


# -- join ----------------------------------------------------------------------


def test_join_frame_matches_the_spec_fixture_byte_for_byte() -> None:
    h, _ = device_connection()
    h.conn.add_channel(
        ChannelLogic("console", {"console_version": "2.0.0", "device_api_version": "2.3.0"})
    )
    assert h.connect() == [FIXTURE_DEVICE_JOIN, CONSOLE_JOIN_MAIN]
    assert h.receive(FIXTURE_DEVICE_JOIN_REPLY) == [ChannelJoined("device", {})]


@pytest.mark.parametrize(
    ("fwup_keys", "archive_keys", "request_fwup", "request_archive", "expected"),
    [
        (False, False, False, False, {"fwup_public_keys", "archive_public_keys"}),
        (True, False, False, False, set()),  # archive keys fall back to fwup keys
        (False, True, False, False, {"fwup_public_keys"}),
        (True, True, False, False, set()),
        (True, True, True, False, {"fwup_public_keys"}),
        (True, True, False, True, {"archive_public_keys"}),
        (True, True, True, True, {"fwup_public_keys", "archive_public_keys"}),
    ],
)
def test_public_key_requests(
    fwup_keys: bool,
    archive_keys: bool,
    request_fwup: bool,
    request_archive: bool,
    expected: set[str],
) -> None:
    info = replace(
        FIXTURE_INFO,
        fwup_keys_configured=fwup_keys,
        archive_keys_configured=archive_keys,
        request_fwup_public_keys=request_fwup,
        request_archive_public_keys=request_archive,
    )
    params = build_join_params(info)
    requested = {key for key in ("fwup_public_keys", "archive_public_keys") if key in params}
    assert requested == expected
    assert all(params[key] == "on_connect" for key in requested)


def test_protocol_keys_win_over_kv_keys() -> None:
    info = DeviceJoinInfo(
        active_kv={"nerves_fw_uuid": "u", "fwup_version": "0.0.1"}, fwup_version="1.16.0"
    )
    assert build_join_params(info)["fwup_version"] == "1.16.0"


def test_rejoin_reports_the_current_download_and_validation() -> None:
    info = replace(FIXTURE_INFO, firmware_validated=False, firmware_auto_revert_detected=True)
    h, device = joined_device(info)
    assert device.validation_pending
    device.set_downloading("3c9f2f2e-1c55-5d3b-9a4e-0b1f0e6a7c11")
    h.receive('["1",null,"device","phx_close",{}]')
    h.advance(5.0)
    [join] = h.sent_frames()
    assert join[3] == "phx_join"
    assert join[4]["currently_downloading_uuid"] == "3c9f2f2e-1c55-5d3b-9a4e-0b1f0e6a7c11"
    assert join[4]["meta"] == {"firmware_auto_revert_detected": True, "firmware_validated": False}


def test_firmware_validated_is_pushed_once_and_remembered() -> None:
    info = replace(FIXTURE_INFO, firmware_validated=False)
    h, device = device_connection(info)
    h.connect()
    assert not device.validation_pending  # not joined yet
    assert device.firmware_validated() is False  # dropped: not joined
    h.receive(FIXTURE_DEVICE_JOIN_REPLY)
    assert device.validation_pending
    assert device.firmware_validated() is True
    assert h.sent() == ['["1","2","device","firmware_validated",{}]']
    assert not device.validation_pending
    assert device.join_info.firmware_validated
    h.conn.connection_lost()
    [join] = [json.loads(f) for f in h.connect()]
    assert join[4]["meta"]["firmware_validated"] is True
    h.receive(FIXTURE_DEVICE_JOIN_REPLY)
    assert not device.validation_pending


# -- hub -> device events ------------------------------------------------------


def test_fastlaned_update_becomes_update_offered() -> None:
    h, _ = joined_device()
    [event] = h.receive(fastlaned("update", UPDATE_PAYLOAD))
    assert event == UpdateOffered(
        UpdateInfo(
            firmware_url="https://files.example.test/fw/1/3c9f.fw?X-Amz-Signature=abc",
            firmware_meta=FirmwareMetadata(
                uuid="3c9f2f2e-1c55-5d3b-9a4e-0b1f0e6a7c11",
                version="0.2.0",
                product="my_app",
                platform="rpi4",
                architecture="arm",
                author="The Nerves Team",
                description="",
                misc="",
                vcs_identifier="",
            ),
            size=31457280,
            checksum="9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
            partials_checksums=tuple(PARTIALS),
            deployment_id=7,
        )
    )
    assert h.sent() == []


def test_minimal_update_of_v2_12_servers_and_in_channel_pushes() -> None:
    h, _ = joined_device()
    payload = {
        "firmware_url": "http://hub.local/fw.fw",
        "firmware_meta": {"uuid": "u", "fwup_version": "1.16.0"},
        "deployment_id": None,
    }
    [event] = h.receive(["1", None, "device", "update", payload])
    assert event == UpdateOffered(
        UpdateInfo("http://hub.local/fw.fw", FirmwareMetadata(uuid="u", fwup_version="1.16.0"))
    )


def test_deployment_id_other_than_an_integer_reads_as_none() -> None:
    h, _ = joined_device()
    for odd in ("7", True, 1.5):
        [event] = h.receive(fastlaned("update", {**UPDATE_PAYLOAD, "deployment_id": odd}))
        assert isinstance(event, UpdateOffered) and event.update.deployment_id is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"firmware_url": None}, "update payload has no firmware_url string"),
        ({"firmware_url": ""}, "update payload has no firmware_url string"),
        ({"firmware_url": 5}, "update payload has no firmware_url string"),
        ({"firmware_meta": None}, "update payload firmware_meta is not an object"),
        ({"firmware_meta": ["uuid"]}, "update payload firmware_meta is not an object"),
        ({"firmware_meta": {"uuid": 5}}, "firmware_meta uuid is not a string"),
        ({"update_available": False}, "update payload says update_available is false"),
        ({"size": -1}, "update payload size is not a non-negative integer"),
        ({"size": "10"}, "update payload size is not a non-negative integer"),
        ({"size": True}, "update payload size is not a non-negative integer"),
        ({"checksum": "abc"}, "update payload checksum is not a SHA-256 hex string"),
        ({"checksum": 12}, "update payload checksum is not a SHA-256 hex string"),
        ({"partials_checksums": "x"}, "update payload partials_checksums is not a list"),
        (
            {"partials_checksums": ["G" * 64]},
            "update payload partials_checksums entry is not a SHA-256 hex string",
        ),
    ],
)
def test_unusable_updates_are_rejected_and_ignored(change: dict[str, Any], reason: str) -> None:
    h, _ = joined_device()
    assert h.receive(fastlaned("update", {**UPDATE_PAYLOAD, **change})) == [
        PayloadRejected("device", "update", reason)
    ]
    assert h.sent() == []


def test_optional_update_fields_may_be_absent_or_null() -> None:
    h, _ = joined_device()
    payload = {**UPDATE_PAYLOAD, "size": None, "checksum": None, "partials_checksums": None}
    del payload["deployment_id"]
    [event] = h.receive(fastlaned("update", payload))
    assert isinstance(event, UpdateOffered)
    update = event.update
    assert (update.size, update.checksum, update.partials_checksums, update.deployment_id) == (
        None,
        None,
        None,
        None,
    )


def test_reboot_queues_rebooting_before_reporting() -> None:
    h, _ = joined_device()
    assert h.receive(fastlaned("reboot", {})) == [RebootRequested()]
    assert h.sent() == ['["1","2","device","rebooting",{}]']


def test_identify_and_extensions_get() -> None:
    h, _ = joined_device()
    assert h.receive(fastlaned("identify", {})) == [IdentifyRequested()]
    assert h.receive('[null,null,"device","extensions:get",{}]') == [ExtensionsRequested()]
    assert h.sent() == []


def test_public_key_updates() -> None:
    h, _ = joined_device()
    a, b = public_key("testkey-a"), public_key("testkey-b")
    assert h.receive(fastlaned("fwup_public_keys", {"keys": [a, b]})) == [
        FwupPublicKeysUpdated((a, b))
    ]
    assert h.receive(fastlaned("archive_public_keys", {"keys": [b]})) == [
        ArchivePublicKeysUpdated((b,))
    ]
    # Invalid entries are left out; the valid rest still replaces the keys.
    junk = [a[:-4], "pUJ3...base64...=", 42, None, "é" * 44, a + a]
    assert h.receive(fastlaned("fwup_public_keys", {"keys": [*junk, b]})) == [
        FwupPublicKeysUpdated((b,))
    ]


@pytest.mark.parametrize("event", ["fwup_public_keys", "archive_public_keys"])
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"keys": []}, "payload has no valid key; keeping the current keys"),
        ({"keys": ["pUJ3...base64...="]}, "payload has no valid key; keeping the current keys"),
        ({}, "payload keys is not a list; keeping the current keys"),
        ({"keys": "abc"}, "payload keys is not a list; keeping the current keys"),
    ],
)
def test_empty_or_invalid_key_lists_never_clear_keys(
    event: str, payload: dict[str, Any], reason: str
) -> None:
    h, _ = joined_device()
    assert h.receive(fastlaned(event, payload)) == [
        PayloadRejected("device", event, f"{event} {reason}")
    ]


def test_archive_offer() -> None:
    h, _ = joined_device()
    assert h.receive(fastlaned("archive", ARCHIVE_PAYLOAD)) == [
        ArchiveOffered(ArchiveInfo(**ARCHIVE_PAYLOAD))
    ]
    assert h.receive(fastlaned("archive", {"url": "https://x.test/a.fw"})) == [
        ArchiveOffered(ArchiveInfo(url="https://x.test/a.fw"))
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"url": None}, "archive payload has no url string"),
        ({"version": 1}, "archive payload version is not a string"),
        ({"size": -5}, "archive payload size is not a non-negative integer"),
    ],
)
def test_unusable_archives_are_rejected(change: dict[str, Any], reason: str) -> None:
    h, _ = joined_device()
    assert h.receive(fastlaned("archive", {**ARCHIVE_PAYLOAD, **change})) == [
        PayloadRejected("device", "archive", reason)
    ]


def test_scripts_run_is_answered_with_an_error() -> None:
    h, _ = joined_device()
    payload = {"text": "IO.puts(:hi)", "ref": "connecting_code", "timeout": 10000}
    assert h.receive(fastlaned("scripts/run", payload)) == [
        ScriptRunRequested("connecting_code", "IO.puts(:hi)")
    ]
    assert h.sent_frames() == [
        [
            "1",
            "2",
            "device",
            "scripts/run",
            {
                "ref": "connecting_code",
                "result": "error",
                "reason": "nhlink cannot run Elixir scripts",
                "output": "Error running script: nhlink cannot run Elixir scripts",
                "return": "",
            },
        ]
    ]
    assert h.receive(fastlaned("scripts/run", {"ref": "r2", "text": None})) == [
        ScriptRunRequested("r2", "")
    ]
    assert h.sent_frames()[0][4]["ref"] == "r2"


def test_scripts_run_without_a_ref_cannot_be_answered() -> None:
    h, _ = joined_device()
    assert h.receive(fastlaned("scripts/run", {"text": "1 + 1"})) == [
        PayloadRejected("device", "scripts/run", "scripts/run payload has no ref string")
    ]
    assert h.sent() == []


def test_unknown_events_are_reported_and_ignored() -> None:
    h, _ = joined_device()
    assert h.receive(fastlaned("teleport", {"where": "mars"})) == [
        UnknownEvent("device", "teleport", {"where": "mars"})
    ]
    assert h.sent() == []


# -- device -> hub pushes ------------------------------------------------------


def test_update_pushes_match_the_spec_fixture() -> None:
    h, device = device_connection()
    h.conn.add_channel(
        ChannelLogic("console", {"console_version": "2.0.0", "device_api_version": "2.3.0"})
    )
    h.connect()
    h.receive(FIXTURE_DEVICE_JOIN_REPLY)
    h.advance(30.0)
    assert h.sent() == ['[null,"3","phoenix","heartbeat",{}]']
    assert device.status_received()
    assert device.status_started("wlan0")
    assert device.fwup_progress("updating", 0, h.now)
    assert device.fwup_progress("updating", 100, h.now, force=True)
    assert device.status_completed()
    assert h.sent() == [
        '["1","4","device","status_update",{"status":"received"}]',
        '["1","5","device","status_update",{"status":"started","downloader_network_interface":"wlan0"}]',
        '["1","6","device","fwup_progress",{"stage":"updating","value":0}]',
        '["1","7","device","fwup_progress",{"stage":"updating","value":100}]',
        '["1","8","device","status_update",{"status":"completed"}]',
    ]
    assert device.status_rescheduled(5, "busy")
    assert device.status_failed("Download failed : :max_disconnects_reached")
    assert h.sent() == [
        '["1","9","device","status_update",{"status":"rescheduled","delay_for":5,"reason":"busy"}]',
        '["1","10","device","status_update",{"status":"failed","reason":"Download failed : :max_disconnects_reached"}]',
    ]


def test_other_pushes() -> None:
    h, device = joined_device()
    assert device.status_started(None)
    assert device.status_ignored()
    assert device.status_ignored("same firmware")
    assert device.status_rescheduled(2.4)
    assert device.status_rescheduled_ms(390_000)
    assert device.rebooting()
    assert device.report_network_interface("eth0")
    assert device.status_update("custom", extra=[1, 2])
    assert h.sent_frames() == [
        [
            "1",
            "2",
            "device",
            "status_update",
            {"status": "started", "downloader_network_interface": None},
        ],
        ["1", "3", "device", "status_update", {"status": "ignored", "reason": ""}],
        ["1", "4", "device", "status_update", {"status": "ignored", "reason": "same firmware"}],
        ["1", "5", "device", "status_update", {"status": "rescheduled", "delay_for": 5}],
        ["1", "6", "device", "status_update", {"status": "rescheduled", "delay_for": 7}],
        ["1", "7", "device", "rebooting", {}],
        ["1", "8", "device", "report_network_interface", {"interface": "eth0"}],
        ["1", "9", "device", "status_update", {"status": "custom", "extra": [1, 2]}],
    ]


@pytest.mark.parametrize(
    ("milliseconds", "minutes"),
    [
        (0, 5),
        (-60_000, 5),
        (299_999, 5),
        (330_000, 6),
        (390_000, 7),
        (600_000, 10),
        (3_600_000, 60),
    ],
)
def test_reschedule_is_reported_in_minutes_at_least_five(milliseconds: int, minutes: int) -> None:
    # 5.5 and 6.5 minutes round half up (Elixir round/1), not to even.
    assert reschedule_minutes(milliseconds) == minutes


def test_pushes_are_dropped_while_not_joined() -> None:
    h, device = device_connection()
    assert not device.status_received()
    h.connect()
    h.sent()
    assert not device.status_completed()
    assert not device.fwup_progress("updating", 10, h.now)
    assert h.sent() == []
    h.receive(FIXTURE_DEVICE_JOIN_REPLY)
    # The dropped progress was not recorded: the next one is still the "first".
    assert device.fwup_progress("updating", 5, h.now)


def test_progress_throttle() -> None:
    h, device = joined_device()
    t = h.now

    def progress(value: float, at: float, stage: str = "updating", force: bool = False) -> bool:
        return device.fwup_progress(stage, value, t + at, force=force)  # type: ignore[arg-type]

    assert progress(41.5, 0.0)  # first always; 41.5 rounds half up to 42
    assert not progress(42.4, 1.0)  # round(p) == last sent
    assert not progress(50, 0.4)  # higher, but within 500 ms
    assert progress(50, 0.5)
    assert not progress(49, 5.0)  # lower
    assert progress(130, 5.0)  # clamped to 100
    assert progress(100, 5.1, force=True)  # forced, even equal and early
    assert progress(3, 5.1, "downloading")  # each stage has its own throttle
    assert not progress(4, 5.2, "downloading")
    assert device.status_received()  # a new update starts a fresh throttle
    assert progress(-2, 5.2)
    values = [(f[4]["stage"], f[4]["value"]) for f in h.sent_frames() if f[3] == "fwup_progress"]
    assert values == [
        ("updating", 42),
        ("updating", 50),
        ("updating", 100),
        ("updating", 100),
        ("downloading", 3),
        ("updating", 0),
    ]
    device.reset_progress()
    assert progress(1, 5.2)
    with pytest.raises(ValueError, match="unknown progress stage 'applying'"):
        progress(1, 6.0, "applying")
