"""Replay every input in fuzz/regressions/ (fuzzer finds, kept forever).

Each file goes through every harness's driver (fuzz/python/fuzz_drivers.py),
whatever it was found by: the zip walker with its split/sink prefix, the
packet and frame decoders, the VCDIFF decoder, the U-Boot env codec, the
meta.conf parser, the Phoenix frame decoder and the NervesKey
compressed-certificate decoder (which may raise only CertificateError). Only clean NHLinkErrors may come out, and the native
and python backends must produce identical traces and raw_write images.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
REGRESSIONS = sorted(p for p in (REPO / "fuzz" / "regressions").iterdir() if p.suffix == ".bin")
sys.path.insert(0, str(REPO / "fuzz" / "python"))

import fuzz_drivers  # noqa: E402

BACKENDS = fuzz_drivers.backends()
IDS = [p.name for p in REGRESSIONS]


def _agree(name: str, results: list[tuple[str, Any]]) -> None:
    first_name, first = results[0]
    for other_name, other in results[1:]:
        assert other == first, f"{name}: {first_name} and {other_name} disagree"


def test_there_are_regressions() -> None:
    assert REGRESSIONS, "fuzz/regressions/ holds no *.bin inputs"


@pytest.mark.parametrize("path", REGRESSIONS, ids=IDS)
def test_zip_stream(path: Path) -> None:
    data = path.read_bytes()
    _agree("ZipStream", [(n, fuzz_drivers.zip_trace(m, data)) for n, m in BACKENDS])


@pytest.mark.parametrize("path", REGRESSIONS, ids=IDS)
def test_framing(path: Path) -> None:
    data = path.read_bytes()
    _agree("PacketDecoder", [(n, fuzz_drivers.packet_trace(m, data)) for n, m in BACKENDS])
    _agree("FrameDecoder", [(n, fuzz_drivers.frame_trace(m, data)) for n, m in BACKENDS])


@pytest.mark.parametrize("path", REGRESSIONS, ids=IDS)
def test_uboot_env(path: Path) -> None:
    data = path.read_bytes()
    _agree("uboot_env", [(n, fuzz_drivers.uboot_trace(m, data)) for n, m in BACKENDS])


@pytest.mark.parametrize("path", REGRESSIONS, ids=IDS)
def test_vcdiff_decoder(path: Path) -> None:
    data = path.read_bytes()
    _agree("VcdiffDecoder", [(n, fuzz_drivers.vcdiff_trace(m, data)) for n, m in BACKENDS])


@pytest.mark.parametrize("path", REGRESSIONS, ids=IDS)
def test_parsers(path: Path) -> None:
    data = path.read_bytes()
    fuzz_drivers.metaconf_outcome(data)
    fuzz_drivers.phoenix_outcome(data)


@pytest.mark.parametrize("path", REGRESSIONS, ids=IDS)
def test_nerveskey_certificate(path: Path) -> None:
    fuzz_drivers.nerveskey_outcome(path.read_bytes())


def test_nerveskey_feb29_issue_with_expiry_that_does_not_exist() -> None:
    """Issued 2024-02-29, one-year lifetime: 2025-02-29 does not exist (a clean refusal)."""
    from nhlink.nerves_key.errors import CertificateError

    data = REPO / "fuzz" / "regressions" / "nerveskey-feb29-issue-expiry-does-not-exist.bin"
    outcome = fuzz_drivers.nerveskey_outcome(data.read_bytes())
    assert outcome[0] == (
        CertificateError.__name__,
        "compressed certificate dates c17541: day is out of range for month",
    )


def test_nerveskey_otp_without_a_manufacturer_serial_is_a_certificate_error() -> None:
    """An all-zero OTP serial decodes to "", which X.509 cannot take as the CN."""
    data = REPO / "fuzz" / "regressions" / "nerveskey-otp-without-manufacturer-serial.bin"
    outcome = fuzz_drivers.nerveskey_outcome(data.read_bytes())
    assert outcome[-1][0] == "CertificateError"
    assert outcome[-1][1].startswith("device certificate cannot be rebuilt: ")


def test_nerveskey_non_ascii_otp_serial_too_long_for_a_cn_is_a_certificate_error() -> None:
    """48 non-ASCII OTP serial bytes decode to 48 U+FFFD: 144 UTF-8 bytes, over X.509's 64."""
    data = REPO / "fuzz" / "regressions" / "nerveskey-otp-serial-non-ascii-too-long-for-cn.bin"
    outcome = fuzz_drivers.nerveskey_outcome(data.read_bytes())
    assert outcome[-1][0] == "CertificateError"
    assert "144" in outcome[-1][1]


def test_vcdiff_finish_inside_a_window_body() -> None:
    """finish() while a window's body is incomplete: a clean error in both backends (the C
    decoder used to do arithmetic on finish's NULL data pointer, caught by UBSan)."""
    data = REPO / "fuzz" / "regressions" / "vcdiff-finish-inside-a-body-null-data.bin"
    for _, backend in BACKENDS:
        trace = fuzz_drivers.vcdiff_trace(backend, data.read_bytes())
        assert ("ArchiveError", "VCDIFF: patch ends inside window 0") in trace
