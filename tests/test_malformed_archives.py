"""Hostile and broken archives: each must exit 1 with one clear line and no traceback.

Failures found before the first write (framing, zip structure of the head,
signature, meta.conf, task selection) must leave the destination untouched; a
destination that did not exist must not be created.
"""

from __future__ import annotations

import hashlib
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_nhlink
from tests.helpers import archives as a
from tests.helpers.vectors import framed_packets, key_file, vectors_dir

PAYLOAD = bytes(range(256)) * 700  # 179200 bytes: more than one 128 KiB segment
GOLDEN = vectors_dir() / "fw" / "01_minimal_raw.fw"


def golden() -> bytes:
    return GOLDEN.read_bytes()


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def local_header_offset(data: bytes, name: str) -> int:
    marker = b"PK\x03\x04"
    pos = 0
    while (pos := data.find(marker, pos)) >= 0:
        name_len, _extra_len = struct.unpack_from("<HH", data, pos + 26)
        if data[pos + 30 : pos + 30 + name_len] == name.encode():
            return pos
        pos += 4
    raise KeyError(name)


def data_offset(data: bytes, name: str) -> int:
    pos = local_header_offset(data, name)
    name_len, extra_len = struct.unpack_from("<HH", data, pos + 26)
    return pos + 30 + name_len + extra_len


def set_flag(data: bytes, name: str, bit: int) -> bytes:
    """Set a general-purpose flag bit in an entry's local header."""
    pos = local_header_offset(data, name) + 6
    (flags,) = struct.unpack_from("<H", data, pos)
    return data[:pos] + struct.pack("<H", flags | bit) + data[pos + 2 :]


def patch_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4 :]


def bomb_archive() -> bytes:
    """A resource that declares 4096 bytes and inflates to 256 MiB of zeros."""
    declared = bytes(4096)
    meta = a.raw_write_meta({"payload.bin": declared}).encode()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    compressed = b"".join(compressor.compress(chunk) for _ in range(256)) + compressor.flush()
    out = a.ArchiveSpec(meta, [a.Entry("data/payload.bin", b"placeholder")]).build()
    # Rebuild by hand: the tiny entry replaced with the bomb's raw deflate stream.
    pos = local_header_offset(out, "data/payload.bin")
    header = bytearray(out[pos : pos + 30 + len("data/payload.bin")])
    struct.pack_into("<III", header, 14, 0, len(compressed), 4096)  # crc, csize, usize (lies)
    struct.pack_into("<H", header, 28, 0)
    return out[:pos] + bytes(header) + compressed + b"PK\x05\x06" + bytes(18)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], bytes]
    untouched: bool  # the failure happens before anything may be written
    message: str | None = None  # a substring of the error line, when we know it
    extra_args: tuple[str, ...] = ()
    task: str = "complete"
    framed: bool = False


def _meta_only(meta: str, signed: bool = True) -> bytes:
    return a.ArchiveSpec(meta.encode(), [], sign_with="a" if signed else None).build()


def _payload_archive(**kwargs: object) -> bytes:
    meta = a.raw_write_meta({"payload.bin": PAYLOAD}).encode()
    return a.ArchiveSpec(meta, [a.Entry("data/payload.bin", PAYLOAD)], **kwargs).build()  # type: ignore[arg-type]


CASES = [
    Case("empty input", lambda: b"", True),
    Case("four bytes", lambda: b"PK\x03\x04", True),
    Case("not a zip", lambda: b"hello, this is not a firmware archive\n" * 20, True, "ZIP"),
    Case("truncated in first header", lambda: golden()[:20], True),
    Case("truncated in signature", lambda: golden()[:120], True),
    Case(
        "truncated in meta.conf", lambda: golden()[: data_offset(golden(), "meta.conf") + 40], True
    ),
    Case(
        "truncated after meta.conf",
        lambda: golden()[: local_header_offset(golden(), "data/payload.bin") + 10],
        False,
    ),
    Case(
        "truncated in data",
        lambda: golden()[: data_offset(golden(), "data/payload.bin") + 30000],
        False,
        "ZIP decompression failed",
    ),
    Case("bad first signature", lambda: flip(golden(), 0), True, "ZIP"),
    Case(
        "flip in signature bytes",
        lambda: flip(golden(), data_offset(golden(), "meta.conf.ed25519") + 5),
        True,
        "bad CRC",
    ),
    Case(
        "flip in meta.conf data",
        lambda: flip(golden(), data_offset(golden(), "meta.conf") + 50),
        True,
    ),
    Case(
        "flip in resource data, stale CRC",
        lambda: (vectors_dir() / "fw" / "07a_tampered_flip.fw").read_bytes(),
        False,
        "ZIP bad CRC",
    ),
    Case(
        "flip in resource data, CRC fixed",
        lambda: (vectors_dir() / "fw" / "07b_tampered_crcfixed.fw").read_bytes(),
        False,
        "blake2b mismatch",
    ),
    Case(
        "unsigned archive with a key",
        lambda: (vectors_dir() / "fw" / "06_unsigned.fw").read_bytes(),
        True,
        "Expecting signed firmware archive.",
    ),
    Case(
        "signed with another key",
        lambda: (vectors_dir() / "fw" / "08_other_key.fw").read_bytes(),
        True,
        "fails digital signature verification",
    ),
    Case(
        "signature of 63 bytes",
        lambda: a.ArchiveSpec(b'meta-product="x"\n', signature=bytes(63)).build(),
        True,
        "meta.conf.ed25519",
    ),
    Case(
        "resource before meta.conf",
        lambda: a.ArchiveSpec(b'meta-product="x"\n', leading=[a.Entry("data/x.bin", b"x")]).build(),
        True,
        "meta.conf",
    ),
    Case(
        "meta.conf too large",
        lambda: _meta_only('meta-misc="' + "x" * 60000 + '"\n'),
        True,
        "meta.conf",
    ),
    Case(
        "meta.conf garbage",
        lambda: _meta_only('task "complete" { on-init { funlist={2,info\n'),
        True,
    ),
    Case("meta.conf binary junk", lambda: a.ArchiveSpec(bytes(range(256)) * 4).build(), True),
    Case(
        "task not found",
        lambda: _payload_archive(),
        True,
        "Couldn't find applicable task",
        task="nosuchtask",
    ),
    Case(
        "newer fwup required",
        lambda: _meta_only('require-fwup-version="99.0.0"\ntask "complete" {\n}\n'),
        True,
        "99.0.0",
    ),
    Case(
        "unknown action",
        lambda: _meta_only('task "complete" {\non-init {\nfunlist={2,frobnicate,1}\n}\n}\n'),
        True,
        "frobnicate",
    ),
    Case(
        "resource missing from archive",
        lambda: a.ArchiveSpec(a.raw_write_meta({"payload.bin": PAYLOAD}).encode(), []).build(),
        False,
        "payload.bin",
    ),
    Case(
        "entry longer than declared",
        lambda: a.ArchiveSpec(
            a.raw_write_meta({"payload.bin": PAYLOAD[:1000]}).encode(),
            [a.Entry("data/payload.bin", PAYLOAD)],
        ).build(),
        False,
        "payload.bin",
    ),
    Case(
        "entry shorter than declared",
        lambda: a.ArchiveSpec(
            a.raw_write_meta({"payload.bin": PAYLOAD}).encode(),
            [a.Entry("data/payload.bin", PAYLOAD[:1000])],
        ).build(),
        False,
        "payload.bin",
    ),
    Case("inflate bomb", bomb_archive, False),
    Case(
        "path traversal name",
        lambda: a.ArchiveSpec(
            a.raw_write_meta({"payload.bin": PAYLOAD}).encode(),
            [a.Entry("data/../../etc/passwd", b"root::0:0")],
        ).build(),
        False,
        "bad entry name",
    ),
    Case(
        "unsupported compression",
        lambda: a.ArchiveSpec(
            a.raw_write_meta({"payload.bin": PAYLOAD}).encode(),
            [a.Entry("data/payload.bin", PAYLOAD, zipfile.ZIP_BZIP2)],
        ).build(),
        False,
        "compression method",
    ),
    Case(
        "encrypted entry",
        lambda: set_flag(_payload_archive(), "data/payload.bin", 0x0001),
        False,
        "encrypted",
    ),
    Case(
        "junk after the last entry",
        lambda: _payload_archive()[: _payload_archive().find(b"PK\x01\x02")] + b"JUNKJUNKJUNK",
        False,
        "unexpected data",
    ),
    Case(
        "write past the end of the destination",
        lambda: a.simple_archive(PAYLOAD, offset_blocks=8192),
        False,
        "past the end",
        extra_args=("--max-size", "4096"),
    ),
    Case(
        "framed input cut inside a packet",
        lambda: framed_packets(golden())[:-1000],
        False,
        "framing",
        framed=True,
    ),
    Case(
        "framed input with a lying length",
        lambda: struct.pack(">I", 1 << 30) + golden(),
        True,
        "framing",
        framed=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_archive(case: Case, tmp_path: Path) -> None:
    data = case.build()
    image = tmp_path / "image.img"
    image.write_bytes(b"\xa5" * (4 << 20))
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    args = [
        "fwup",
        "-a",
        "-q",
        "-d",
        str(image),
        "-t",
        case.task,
        "-p",
        str(key_file("a")),
        *case.extra_args,
    ]
    if case.framed:
        result = run_nhlink([*args, "--framing", "-i", "-"], stdin=data)
    else:
        archive = a.write(tmp_path / "broken.fw", data)
        result = run_nhlink([*args, "-i", str(archive)])
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr and b"Traceback" not in result.stdout
    if case.framed:
        frames = _frames(result.stdout)
        assert frames[-1][0] == "ER"
        line = frames[-1][2]
    else:
        text = result.stdout.decode()
        # info() messages (e.g. from on-error) may come first; the error is the last line.
        lines = text.splitlines()
        assert text.endswith("\n") and all(x.startswith("fwup: ") for x in lines), text
        line = lines[-1][len("fwup: ") :]
    assert line and "\n" not in line
    if case.message is not None:
        assert case.message.lower() in line.lower(), line
    if case.untouched:
        assert hashlib.sha256(image.read_bytes()).hexdigest() == before


def _frames(data: bytes) -> list[tuple[str, int, str]]:
    from tests.helpers.vectors import parse_frames

    return parse_frames(data)


OPENS_DESTINATION = {"task not found", "unknown action"}


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.untouched and not c.framed and c.name not in OPENS_DESTINATION],
    ids=lambda c: c.name,
)
def test_failure_before_writing_creates_no_destination(case: Case, tmp_path: Path) -> None:
    archive = a.write(tmp_path / "broken.fw", case.build())
    missing = tmp_path / "does-not-exist.img"
    result = run_nhlink(
        [
            "fwup",
            "-a",
            "-q",
            "-d",
            str(missing),
            "-t",
            case.task,
            "-p",
            str(key_file("a")),
            "-i",
            str(archive),
        ]
    )
    assert result.returncode == 1
    assert not missing.exists()
