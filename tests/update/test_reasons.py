"""Reason codes: the applier's real ER texts (golden vectors and engine runs), download
errors, cancellation and bugs each map to a stable code of the catalogue."""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from pathlib import Path

import pytest

from nhlink.clock import ClockCheck, ClockFloor
from nhlink.fwup import apply_file
from nhlink.update.errors import DownloadError, UpdateError, VerificationError
from nhlink.update.preflight import PreflightError
from nhlink.update.reasons import (
    CATALOGUE,
    INTERRUPTED_TEXT,
    applier_code,
    code_of,
    download_code,
    exception_code,
    failure_reason,
    tls_kind,
)
from nhlink.update.verify import StreamVerifier
from tests.helpers.vectors import manifest, vectors_dir
from tests.update.firmware import raw_public_key

# the failing steps of the golden vectors and the code each must get
VECTOR_CODES = {
    ("01_minimal_raw", "complete_wrongkey"): "signature",
    ("02_ab_uboot", "upgrade_2_unvalidated"): "not_validated",
    ("02_ab_uboot", "upgrade_blank"): "applier:0",
    ("04_mbr", "check_blank"): "applier:0",
    ("06_unsigned", "complete_key_a"): "signature",
    ("07a_tampered_flip", "complete"): "hash",
    ("07a_tampered_flip", "complete_stdin_framed"): "hash",
    ("07b_tampered_crcfixed", "complete"): "hash",
    ("08_other_key", "complete_key_a"): "signature",
}


def in_catalogue(code: str) -> bool:
    """Whether ``code`` is a catalogue code (``<...>`` parts match anything without ': ')."""
    for entry in CATALOGUE:
        parts = re.split(r"<[a-z]+>", entry)
        if re.fullmatch(r"[^ :]+".join(re.escape(part) for part in parts), code):
            return True
    return False


def failing_steps() -> list[tuple[str, str, str]]:
    steps = []
    for vector in manifest()["vectors"]:
        for step in vector["steps"]:
            expected = step["expected"]
            if expected.get("exit_status"):
                steps.append((vector["id"], step["name"], expected["error_text"]))
    return steps


def test_every_failing_golden_step_has_a_code() -> None:
    steps = failing_steps()
    assert {(vector, step) for vector, step, _ in steps} == set(VECTOR_CODES)
    for vector, step, text in steps:
        code = applier_code(text)
        assert code == VECTOR_CODES[(vector, step)], (vector, step, text)
        assert in_catalogue(code)


def test_the_frame_code_names_an_unclassified_applier_error() -> None:
    assert applier_code("Expecting platform=vectors and architecture=any", 7) == "applier:7"
    assert applier_code("ZIP bad CRC: 0x1 should be 0x2", 7) == "hash"


def engine_error(fw: str, tmp_path: Path, **options: object) -> str:
    frames = apply_file(
        vectors_dir() / "fw" / fw, tmp_path / "out.img", "complete", [raw_public_key()], **options
    )
    assert frames[-1].type == "ER", frames[-1]
    return frames[-1].text


def test_a_destination_too_small_is_no_space(tmp_path: Path) -> None:
    text = engine_error("01_minimal_raw.fw", tmp_path, max_size=4096)
    assert "past the end" in text
    assert applier_code(text) == "no_space"


def test_a_truncated_archive_is_size(tmp_path: Path) -> None:
    data = (vectors_dir() / "fw" / "03_large_8mib.fw").read_bytes()
    cut = tmp_path / "cut.fw"
    cut.write_bytes(data[: len(data) // 2])
    text = engine_error(str(cut), tmp_path)
    assert text == "ZIP decompression failed (-5)"
    assert applier_code(text) == "size"


@pytest.mark.parametrize(
    ("why", "code"),
    [
        ("http 403", "http:403"),
        ("http 404", "http:404"),
        ("http 302 without a Location", "refused:redirect"),
        ("refusing a non-https URL (http://127.0.0.1:9/fw/v2.fw)", "refused:url"),
        ("bad URL: unsupported URL scheme 'ftp'", "refused:url"),
        ("refusing a redirect from a to another host (https://b/x); ...", "refused:redirect"),
        ("more than 5 redirects", "refused:redirect"),
        ("the server has 10 bytes, the offer said 9", "size"),
        ("the server sent more than the expected 9 bytes", "size"),
        ("max disconnects reached (last: connection refused)", "network"),
        ("worst case download speed reached", "network"),
        (
            "max disconnects reached (last: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
            "failed: self-signed certificate (_ssl.c:1000))",
            "tls:certificate",
        ),
        (
            "max disconnects reached (last: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
            "failed: certificate has expired (_ssl.c:1000))",
            "tls:expired",
        ),
        (
            "max disconnects reached (last: [SSL: WRONG_VERSION_NUMBER] wrong version)",
            "tls:handshake",
        ),
    ],
)
def test_download_errors_are_classified_by_their_text(why: str, code: str) -> None:
    assert download_code(why) == code
    assert failure_reason(DownloadError(why)) == f"{code}: download: {why}"
    assert in_catalogue(code)


def test_a_precise_code_wins_over_the_text() -> None:
    error = DownloadError("http 403", code="budget")
    assert failure_reason(error) == "budget: download: http 403"


def test_tls_kinds_from_openssl_verify_codes() -> None:
    assert tls_kind("whatever", 10) == "tls:expired"
    assert tls_kind("whatever", 9) == "tls:not_yet_valid"
    assert tls_kind("whatever", 62) == "tls:hostname"
    assert tls_kind("certificate verify failed: unable to get local issuer") == "tls:certificate"


def test_what_ended_an_update_becomes_one_reason() -> None:
    crc = "ZIP bad CRC: 0x8bcd523 should be 0xb45d8721"
    assert (
        failure_reason(UpdateError(f"fwup: {crc}"), applier_error=(0, crc)) == f"hash: fwup: {crc}"
    )
    assert failure_reason(UpdateError("fwup: Expecting platform=x"), applier_error=(3, "x")) == (
        "applier:3: fwup: Expecting platform=x"
    )
    assert failure_reason(UpdateError("fwup: odd")) == "applier:0: fwup: odd"
    assert failure_reason(VerificationError("checksum mismatch: sha256 AB")) == (
        "hash: checksum mismatch: sha256 AB"
    )
    assert failure_reason(PreflightError("x", code="preflight:slot")) == "preflight:slot: x"
    assert failure_reason(UpdateError("the applier ended without a result")) == (
        "internal: the applier ended without a result"
    )
    assert failure_reason(asyncio.CancelledError()) == f"interrupted: {INTERRUPTED_TEXT}"
    assert failure_reason(ZeroDivisionError("division by zero")) == (
        "internal: unexpected error: ZeroDivisionError: division by zero"
    )


def test_codes_never_contain_the_separator() -> None:
    for code in CATALOGUE:
        assert ": " not in code
        assert code_of(f"{code}: some text: with colons") == code


def test_a_wrong_sized_download_is_size_not_hash() -> None:
    longer = StreamVerifier(size=10)
    with pytest.raises(VerificationError) as more:
        longer.push(b"x" * 11)
    assert failure_reason(more.value) == "size: more data than the offered 10 bytes"
    shorter = StreamVerifier(size=10, checksum="00")
    shorter.push(b"x" * 4)
    with pytest.raises(VerificationError) as short:
        shorter.finish()
    assert failure_reason(short.value) == "size: size mismatch: got 4 bytes, the offer said 10"
    parts = StreamVerifier(partials=[hashlib.sha256(b"xxxx").hexdigest()], part_size=4)
    with pytest.raises(VerificationError) as extra:
        parts.push(b"x" * 8)
    assert failure_reason(extra.value) == (
        "size: more data than the 1 parts partials_checksums covers"
    )
    # a wrong digest stays ``hash``
    digest = StreamVerifier(size=4, checksum="00")
    digest.push(b"abcd")
    with pytest.raises(VerificationError) as mismatch:
        digest.finish()
    assert code_of(failure_reason(mismatch.value)) == "hash"


def test_a_read_beyond_the_addressable_range_is_a_read_error() -> None:
    # the native block cache's text (nh_cache_read): not a full destination
    text = "read beyond the addressable range of /dev/mmcblk0 (offset 18446744073709551615)"
    assert applier_code(text) == "io:read"
    assert in_catalogue("io:read")
    assert applier_code("write past the end of /dev/mmcblk0 (offset 1, size 1)") == "no_space"


def certificate_failure(verify_code: int, message: str) -> DownloadError:
    """A DownloadError raised while handling an SSL certificate error, as the downloader
    and preflight raise it (the SSL error stays in the cause/context chain)."""
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code = verify_code
    error.verify_message = message
    try:
        raise error
    except ssl.SSLError as exc:
        try:
            raise DownloadError(str(exc), code=exception_code(exc)) from exc
        except DownloadError as download:
            return download


def test_a_certificate_date_failure_is_clock_when_the_clock_check_says_so() -> None:
    floor = ClockFloor(2_000_000_000.0, "clock_floor")
    wrong = ClockCheck(system_now=1_000_000_000.0, floor=floor)
    right = ClockCheck(system_now=2_000_000_100.0, floor=floor)
    expired = certificate_failure(10, "certificate has expired")
    assert failure_reason(expired).startswith("tls:expired: download: ")
    assert failure_reason(expired, clock=right).startswith("tls:expired: download: ")
    assert failure_reason(expired, clock=wrong).startswith("clock: download: ")
    early = certificate_failure(9, "certificate is not yet valid")
    assert failure_reason(early, clock=wrong).startswith("clock: download: ")
    # not a date failure: the clock does not explain it
    unknown = certificate_failure(20, "unable to get local issuer certificate")
    assert failure_reason(unknown, clock=wrong).startswith("tls:certificate: download: ")
    # no SSL error in the chain at all
    assert failure_reason(DownloadError("http 403"), clock=wrong) == "http:403: download: http 403"
