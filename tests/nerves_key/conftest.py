"""Fixtures for the NervesKey tests: the vectors and simulated chips on a virtual clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from nhlink.nerves_key.driver import Atecc
from nhlink.testing.atecc import AteccImage, SimulatedAtecc, VirtualClock
from tests.helpers.vectors import vectors_dir


@pytest.fixture(scope="session")
def nk_vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir() / "nerveskey" / "vectors.json").read_text())
    return data


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


ChipFactory = Callable[[AteccImage], tuple[SimulatedAtecc, Atecc]]


@pytest.fixture
def make_chip(clock: VirtualClock) -> ChipFactory:
    def make(image: AteccImage) -> tuple[SimulatedAtecc, Atecc]:
        simulator = SimulatedAtecc(image, clock=clock)
        return simulator, Atecc(simulator, clock=clock, sleep=clock.sleep)

    return make
