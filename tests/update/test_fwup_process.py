"""The external fwup backend against a fake ``fwup`` replaying the golden framed outputs."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from nhlink._native import FrameDecoder
from nhlink.aio.fwup_process import FwupProcessApplier, fwup_command, fwup_environment
from nhlink.fwup.frames import Frame
from tests.helpers.vectors import vectors_dir
from tests.link.support import run
from tests.update.support import install_fake_fwup


def replay_frames(name: str) -> list[Frame]:
    data = (vectors_dir() / "expected" / name).read_bytes()
    return [Frame(*frame) for frame in FrameDecoder().feed(data)]


def environment(tmp_path: Path, replay: str, **extra: str) -> tuple[dict[str, str], Path]:
    bindir = install_fake_fwup(tmp_path)
    log = tmp_path / "log.json"
    env = dict(os.environ)
    env.update(
        PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        FAKE_FWUP_LOG=str(log),
        FAKE_FWUP_REPLAY=str(vectors_dir() / "expected" / replay),
        **extra,
    )
    return env, log


def test_command_line_is_the_reference_one() -> None:
    assert fwup_command(
        devpath="/dev/mmcblk0",
        task="upgrade",
        public_keys=["K1", "K2"],
        extra_options=["--unsafe", "-q"],
    ) == [
        "fwup",
        "--framing",
        "--exit-handshake",
        "--apply",
        "--no-unmount",
        "-d",
        "/dev/mmcblk0",
        "--task",
        "upgrade",
        "--unsafe",
        "-q",
        "--public-key",
        "K1",
        "--public-key",
        "K2",
    ]
    env = fwup_environment(["A=1", "B=x=y"], {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "A": "1", "B": "x=y"}
    with pytest.raises(ValueError, match="NAME=value"):
        fwup_environment(["nope"], {})


async def apply(
    env: dict[str, str], data: bytes, chunk: int = 65536
) -> tuple[FwupProcessApplier, list[Frame]]:
    frames: list[Frame] = []
    command = fwup_command(devpath="/tmp/x.img", task="upgrade", public_keys=["KEY"])
    applier = await FwupProcessApplier.start(command, env=env, on_frame=frames.append)
    await applier.feed([data[i : i + chunk] for i in range(0, len(data), chunk)])
    await applier.finish()
    return applier, frames


def test_success_replays_every_frame_and_passes_the_archive_through(tmp_path: Path) -> None:
    env, log = environment(tmp_path, "02_ab_uboot/upgrade_1.framed.bin")
    data = (vectors_dir() / "fw" / "02_ab_uboot.fw").read_bytes()

    async def scenario() -> None:
        applier, frames = await apply(env, data)
        assert frames == replay_frames("02_ab_uboot/upgrade_1.framed.bin")
        assert applier.outcome == Frame("OK", 0, "")
        assert applier.returncode == 0

    run(scenario())
    record = json.loads(log.read_text())
    assert record["received"] == len(data)
    assert record["argv"][-2:] == ["--public-key", "KEY"]


def test_an_error_mid_stream_stops_feeding_without_deadlock(tmp_path: Path) -> None:
    env, log = environment(
        tmp_path,
        "07a_tampered_flip/complete.framed.bin",
        FAKE_FWUP_FAIL_AFTER="200000",
        FAKE_FWUP_NO_DRAIN="1",
        FAKE_FWUP_STATUS="1",
    )
    data = os.urandom(16 * 1024 * 1024)  # far more than the pipe holds

    async def scenario() -> None:
        applier, frames = await asyncio.wait_for(apply(env, data), 20)
        assert applier.outcome == Frame("ER", 0, "ZIP bad CRC: 0x8bcd523 should be 0xb45d8721")
        assert frames[-2:] == replay_frames("07a_tampered_flip/complete.framed.bin")[-2:]
        assert applier.returncode == 1

    run(scenario())
    assert json.loads(log.read_text())["received"] < len(data)


def test_an_exit_without_result_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.framed.bin"
    empty.write_bytes(b"")
    env, _ = environment(tmp_path, "02_ab_uboot/upgrade_1.framed.bin", FAKE_FWUP_STATUS="3")
    env["FAKE_FWUP_REPLAY"] = str(empty)

    async def scenario() -> None:
        applier, frames = await apply(env, b"x" * 1000)
        assert applier.outcome == Frame("ER", 0, "fwup exited with status 3 without a result")
        assert frames == [applier.outcome]

    run(scenario())


def test_a_missing_fwup_cannot_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(FileNotFoundError):
            await FwupProcessApplier.start(
                ["fwup-does-not-exist", "--apply"], env={"PATH": str(tmp_path)}, on_frame=print
            )

    run(scenario())


def test_abort_ends_the_process(tmp_path: Path) -> None:
    env, _ = environment(tmp_path, "02_ab_uboot/upgrade_1.framed.bin")

    async def scenario() -> None:
        frames: list[Frame] = []
        command = fwup_command(devpath="/tmp/x.img", task="upgrade", public_keys=[])
        applier = await FwupProcessApplier.start(command, env=env, on_frame=frames.append)
        await applier.feed([b"x" * 100_000])
        await asyncio.wait_for(applier.abort("download failed"), 20)
        assert applier.returncode is not None

    run(scenario())
