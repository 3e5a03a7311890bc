"""Fixtures of the update tests: one PKI and two firmware versions per session."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from nhlink.testing import Pki
from tests.link.support import Records
from tests.update.firmware import Firmware, make_firmware

ROOTFS_SIZE = 3 * 1024 * 1024 + 12345  # four 1 MiB parts, the last one short


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    Pki.create(directory)
    return directory


@pytest.fixture
def pki(pki_dir: Path) -> Pki:
    return Pki.load(pki_dir)


@pytest.fixture(scope="session")
def firmware_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("firmware")


@pytest.fixture(scope="session")
def fw_v1(firmware_dir: Path) -> Firmware:
    return make_firmware(firmware_dir, "1.0.0", ROOTFS_SIZE)


@pytest.fixture(scope="session")
def fw_v2(firmware_dir: Path, fw_v1: Firmware) -> Firmware:
    return make_firmware(firmware_dir, "2.0.0", ROOTFS_SIZE, slot_blocks=fw_v1.slot_blocks)


@pytest.fixture
def nhlink_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("nhlink")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
