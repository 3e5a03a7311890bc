"""Client callbacks: defaults, decisions, the safe caller and loading a user client."""

from __future__ import annotations

import logging
import stat
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from nhlink.client import (
    Apply,
    Client,
    Download,
    FwupMessage,
    Ignore,
    Reschedule,
    call_client,
    load_client,
    normalize_archive_decision,
    normalize_update_decision,
)
from nhlink.errors import ConfigError
from nhlink.kv import KV
from nhlink.protocol import ArchiveInfo, FirmwareMetadata, UpdateInfo
from tests.link.support import ACTIVE_FIRMWARE, Records, run, slot_env


def offer(uuid: str) -> UpdateInfo:
    return UpdateInfo("https://x/fw", FirmwareMetadata(uuid=uuid))


def test_default_update_decision_compares_with_the_running_uuid() -> None:
    client = Client(KV(slot_env("a")))
    assert client.update_available(offer(ACTIVE_FIRMWARE["nerves_fw_uuid"])) == Ignore(
        "firmware is already installed"
    )
    assert client.update_available(offer("another")) == Apply()
    assert Client().update_available(offer("x")) == Apply()
    assert client.archive_available(ArchiveInfo("https://x/a")) == Ignore()


def test_decisions_are_frozen_values() -> None:
    assert Reschedule(10, "busy") == Reschedule(minutes=10, reason="busy")
    with pytest.raises(AttributeError):
        Reschedule(1).minutes = 2  # type: ignore[misc]
    assert normalize_update_decision(Ignore("x")) == Ignore("x")
    assert normalize_update_decision("apply please") == Apply()  # unrecognised counts as apply
    assert normalize_archive_decision(Download()) == Download()
    assert normalize_archive_decision(None) == Ignore()


def test_validation_defaults_reread_the_kv(tmp_path: Path) -> None:
    path = tmp_path / "kv.txt"
    path.write_text("nerves_fw_active=a\nnerves_fw_validated=0\n")
    from nhlink.config import KVConfig

    client = Client(KV.load(KVConfig(file=str(path))))
    assert client.firmware_validated() is False
    path.write_text("nerves_fw_active=a\nnerves_fw_validated=1\n")
    assert client.firmware_validated() is True
    assert client.firmware_auto_revert_detected() is False
    assert Client().firmware_validated() is True


def test_call_client_runs_sync_and_async_and_contains_errors(nhlink_log: Records) -> None:
    class Mine(Client):
        def identify(self) -> None:
            raise RuntimeError("boom")

        async def firmware_validated(self) -> bool:
            return False

        async def reconnect_backoff(self) -> list[float]:
            raise OSError("no")

    client = Mine()

    async def scenario() -> None:
        await call_client(client.identify, default=None)  # logged, not raised
        assert await call_client(client.firmware_validated, default=True) is False
        assert await call_client(client.reconnect_backoff, default=[1.0]) == [1.0]
        assert await call_client(lambda x: x * 2, 21, default=0) == 42

    run(scenario(), timeout=5)
    errors = [r.getMessage() for r in nhlink_log.at_least(logging.ERROR)]
    assert errors == [
        "client callback test_call_client_runs_sync_and_async_and_contains_errors.<locals>"
        ".Mine.identify failed: RuntimeError: boom",
        "client callback test_call_client_runs_sync_and_async_and_contains_errors.<locals>"
        ".Mine.reconnect_backoff failed: OSError: no",
    ]


@pytest.fixture
def plugin() -> Iterator[types.ModuleType]:
    module = types.ModuleType("nhlink_test_clients")
    sys.modules[module.__name__] = module
    try:
        yield module
    finally:
        del sys.modules[module.__name__]


def test_load_client(plugin: types.ModuleType) -> None:
    class MyClient(Client):
        def __init__(self) -> None:  # no super().__init__: kv still works
            self.custom = True

    plugin.MyClient = MyClient  # type: ignore[attr-defined]
    plugin.NotAClient = object  # type: ignore[attr-defined]
    kv = KV({})
    client = load_client("nhlink_test_clients:MyClient", kv)
    assert isinstance(client, MyClient) and client.kv is kv
    assert type(load_client(None, kv)) is Client
    with pytest.raises(ConfigError, match=r"is not a subclass of nhlink\.Client"):
        load_client("nhlink_test_clients:NotAClient")
    with pytest.raises(ConfigError, match=r"package\.module:Name"):
        load_client("nocolon")


def test_default_reboot_runs_reboot_from_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nhlink_log: Records
) -> None:
    marker = tmp_path / "rebooted"
    script = tmp_path / "reboot"
    script.write_text(f"#!/bin/sh\necho called > {marker}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    Client().reboot()
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.read_text() == "called\n"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    Client().reboot()
    assert "cannot reboot: no `reboot` executable on PATH" in [
        r.getMessage() for r in nhlink_log.at_least(logging.ERROR)
    ]


def test_fwup_messages_are_logged(nhlink_log: Records) -> None:
    client = Client()
    client.handle_fwup_message(FwupMessage("error", 1, "bad"))
    client.handle_fwup_message(FwupMessage("progress", 42))
    messages = [(r.levelno, r.getMessage()) for r in nhlink_log.records]
    assert (logging.ERROR, "fwup error: bad") in messages
    assert (logging.DEBUG, "fwup progress 42%") in messages
