"""Helpers for the link tests: U-Boot env images, device configs, running a link."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from nhlink._native import uboot_env_encode
from nhlink.aio.link import NervesHubLink
from nhlink.config import Config, load_config
from nhlink.testing import LocalHub

T = TypeVar("T")

ENV_SIZE = 8192
ENV_OFFSET = 16 * 512

ACTIVE_FIRMWARE = {
    "nerves_fw_uuid": "8a8b902c-d1a9-58aa-6111-04ab57c2f2a8",
    "nerves_fw_product": "my_app",
    "nerves_fw_architecture": "arm",
    "nerves_fw_version": "0.1.0",
    "nerves_fw_platform": "rpi4",
    "nerves_fw_author": "The Nerves Team",
    "nerves_fw_description": "",
    "nerves_fw_misc": "",
    "nerves_fw_vcs_identifier": "",
}


def slot_env(active: str = "a", **extra: str) -> dict[str, str]:
    """A Nerves-like env: the active slot's firmware keys, an older firmware in the
    other slot, and global keys."""
    other = "b" if active == "a" else "a"
    env = {f"{active}.{key}": value for key, value in ACTIVE_FIRMWARE.items()}
    env.update(
        {
            f"{other}.nerves_fw_uuid": "00000000-0000-0000-0000-000000000000",
            f"{other}.nerves_fw_version": "0.0.9",
            "nerves_fw_active": active,
            "nerves_fw_devpath": "/dev/mmcblk0",
            "nerves_serial_number": "SN-0042",
        }
    )
    env.update(extra)
    return env


def write_env_image(
    directory: Path,
    variables: Mapping[str, str],
    *,
    redundant_flags: tuple[int, int] | None = None,
    second: Mapping[str, str] | None = None,
) -> Path:
    """An image holding the env at ENV_OFFSET (and, redundant, the copy right after it);
    returns the fw_env.config naming it."""
    image = directory / "disk.img"
    with open(image, "wb") as out:
        out.truncate(ENV_OFFSET + 2 * ENV_SIZE + 4096)
        if redundant_flags is None:
            out.seek(ENV_OFFSET)
            out.write(uboot_env_encode(dict(variables), ENV_SIZE, False, 0))
        else:
            out.seek(ENV_OFFSET)
            out.write(uboot_env_encode(dict(variables), ENV_SIZE, True, redundant_flags[0]))
            out.write(
                uboot_env_encode(dict(second or variables), ENV_SIZE, True, redundant_flags[1])
            )
    config = directory / "fw_env.config"
    lines = [f"# device offset size\n{image} 0x{ENV_OFFSET:x} 0x{ENV_SIZE:x}\n"]
    if redundant_flags is not None:
        lines.append(f"{image} {ENV_OFFSET + ENV_SIZE} {ENV_SIZE} 512 16\n")
    config.write_text("".join(lines))
    return config


def device_config(hub: LocalHub, identifier: str, directory: Path, **extra: Any) -> Config:
    """The config ``hub`` writes for ``identifier`` plus ``extra`` keys, with fast timers."""
    settings: dict[str, Any] = {
        "data_path": str(directory / "data"),
        "heartbeat_interval_msec": 1000,
    }
    settings.update(extra)
    path = hub.write_device_config(identifier, directory / f"{identifier}.toml", extra=settings)
    return load_config(path, environ={})


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run a test scenario, bounded by ``timeout`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def running(link: NervesHubLink) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``link`` in a task for the duration of the block, then stop it."""
    task = asyncio.get_running_loop().create_task(link.run())
    try:
        yield task
    finally:
        await asyncio.wait_for(link.stop(), 10)
        await asyncio.wait_for(task, 10)


class Records(logging.Handler):
    """Collects the records of one logger tree."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at_least(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno >= level]
