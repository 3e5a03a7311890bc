"""Fixtures of the extension tests: one PKI for the session, a log collector."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from nhlink.testing import Pki
from tests.link.support import Records


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    Pki.create(directory)
    return directory


@pytest.fixture
def pki(pki_dir: Path) -> Pki:
    return Pki.load(pki_dir)


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
