"""The join's ``fwup_version`` reports delta support only when the backend has the decoder."""

from __future__ import annotations

import types

import pytest

import nhlink._native
from nhlink.aio.link import fwup_version
from nhlink.fwup import delta
from nhlink.fwup.engine import FWUP_VERSION, version_tuple


def test_fwup_version_with_delta_support() -> None:
    assert delta.delta_supported()
    assert fwup_version() == FWUP_VERSION
    assert version_tuple(FWUP_VERSION) >= (1, 6, 0)  # NervesHub's minimum for delta updates


def test_fwup_version_without_the_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(nhlink._native, "VcdiffDecoder")
    assert not delta.delta_supported()
    assert fwup_version() == delta.PRE_DELTA_FWUP_VERSION
    assert version_tuple(fwup_version()) < (1, 6, 0)


@pytest.mark.parametrize("backend", ["native", "python"])
def test_both_backends_have_the_decoder(backend: str) -> None:
    assert delta.delta_supported(nhlink._native.load(backend))
    assert not delta.delta_supported(types.SimpleNamespace())
