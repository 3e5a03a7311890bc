"""Fixtures of the update tests: one PKI and two firmware versions per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.update.firmware import Firmware, make_firmware

ROOTFS_SIZE = 3 * 1024 * 1024 + 12345  # four 1 MiB parts, the last one short


@pytest.fixture(scope="session")
def firmware_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("firmware")


@pytest.fixture(scope="session")
def fw_v1(firmware_dir: Path) -> Firmware:
    return make_firmware(firmware_dir, "1.0.0", ROOTFS_SIZE)


@pytest.fixture(scope="session")
def fw_v2(firmware_dir: Path, fw_v1: Firmware) -> Firmware:
    return make_firmware(firmware_dir, "2.0.0", ROOTFS_SIZE, slot_blocks=fw_v1.slot_blocks)
