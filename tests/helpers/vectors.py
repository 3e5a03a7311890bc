"""Access to the golden fwup vectors in ../shared/vectors (made with the real fwup 1.16.0)."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def vectors_dir() -> Path:
    """Where the golden vectors live: $NHLINK_VECTORS or <repo>/../shared/vectors."""
    env = os.environ.get("NHLINK_VECTORS")
    return Path(env) if env else REPO.parent / "shared" / "vectors"


@cache
def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir() / "MANIFEST.json").read_text())
    return data


@cache
def spec() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir() / "spec.json").read_text())
    return data


def spec_vector(vector_id: str) -> dict[str, Any]:
    for entry in spec()["vectors"]:
        if entry["id"] == vector_id:
            return dict(entry)
    raise KeyError(vector_id)


def vector(vector_id: str) -> dict[str, Any]:
    for entry in manifest()["vectors"]:
        if entry["id"] == vector_id:
            return dict(entry)
    raise KeyError(vector_id)


def key_file(name: str) -> Path:
    return vectors_dir() / manifest()["keys"][name]["public_key_file"]


def key_base64(name: str) -> str:
    return str(manifest()["keys"][name]["public_key_base64"])


@dataclass(frozen=True)
class Step:
    vector_id: str
    index: int
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def expected(self) -> dict[str, Any]:
        return dict(self.data["expected"])

    @property
    def test_id(self) -> str:
        return f"{self.vector_id}/{self.name}"


def steps(include_fat: bool = False) -> Iterator[Step]:
    for entry in manifest()["vectors"]:
        if entry["id"].startswith("05_fat") and not include_fat:
            continue
        for index, data in enumerate(entry["steps"]):
            yield Step(entry["id"], index, data)


def make_base_image(
    base: dict[str, Any], path: Path, outputs: dict[str, Path], vector_id: str | None = None
) -> None:
    """Create the step's base image as the MANIFEST describes it."""
    kind = base["kind"]
    if kind == "zero":
        with open(path, "wb") as f:
            f.truncate(base["size"])
    elif kind == "fill":
        path.write_bytes(bytes([base["byte"]]) * base["size"])
    elif kind == "step":
        source = outputs[base["step"]]
        data = source.read_bytes()
        if hashlib.sha256(data).hexdigest() != base["sha256"]:
            # FAT steps differ from fwup's output only in slack bytes (see the vectors
            # README); start from fwup's own image, which the MANIFEST ships.
            golden = golden_step_image(vector_id, base["step"]) if vector_id else None
            assert golden is not None, "base step image differs"
            data = golden
        assert hashlib.sha256(data).hexdigest() == base["sha256"], "base step image differs"
        path.write_bytes(data)
    else:
        raise ValueError(f"unknown base image kind {kind!r}")


def golden_step_image(vector_id: str, step_name: str) -> bytes | None:
    """fwup's own output image of a vector's step, when the MANIFEST ships it."""
    for step in vector(vector_id)["steps"]:
        if step["name"] == step_name and step["expected"].get("image_xz"):
            return image_xz(step["expected"])
    return None


def framed_packets(data: bytes, packet_size: int = 4096) -> bytes:
    """The archive as fwup --framing stdin: 4096-byte packets, then a zero-length packet."""
    out = bytearray()
    for i in range(0, len(data), packet_size):
        chunk = data[i : i + packet_size]
        out += struct.pack(">I", len(chunk)) + chunk
    out += b"\0\0\0\0"
    return bytes(out)


def parse_frames(data: bytes) -> list[tuple[str, int, str]]:
    frames = []
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 6].decode("ascii")
        (code,) = struct.unpack_from(">H", data, pos + 6)
        text = data[pos + 8 : pos + 4 + length].decode("utf-8", "replace")
        frames.append((kind, code, text))
        pos += 4 + length
    assert pos == len(data), "trailing bytes after the last frame"
    return frames


def expected_frames(expected: dict[str, Any]) -> list[tuple[str, int, str]]:
    path = vectors_dir() / expected["framed_output"]
    return parse_frames(path.read_bytes())


def frame_shape(frames: list[tuple[str, int, str]]) -> list[tuple[str, str]]:
    """Frame types and texts with runs of PR collapsed (intermediate PRs may differ)."""
    shape: list[tuple[str, str]] = []
    for kind, _code, text in frames:
        item = (kind, "" if kind == "PR" else text)
        if kind == "PR" and shape and shape[-1][0] == "PR":
            continue
        shape.append(item)
    return shape


def image_xz(expected: dict[str, Any]) -> bytes | None:
    name = expected.get("image_xz")
    if not name:
        return None
    return lzma.decompress((vectors_dir() / name).read_bytes())


_BLOCK_UNCHANGED = re.compile(r"block (\d+) \(byte (\d+)\) is unchanged \(zero\)")
_BLOCK_FILLED = re.compile(r"block (\d+) \(byte (\d+)\) is all 0x([0-9a-f]{2})")
_WARNING = re.compile(r"WN '([^']*)'")


def check_must_hold(
    facts: list[str], image: bytes, frames: list[tuple[str, int, str]], status: int
) -> None:
    """Check the prose facts of an informational step."""
    for fact in facts:
        checked = False
        if fact.startswith("exit_status == 1 and an ER frame is the last frame"):
            assert status == 1, fact
            assert frames and frames[-1][0] == "ER", fact
            assert ("OK", 0, "") not in frames and ("PR", 100, "") not in frames, fact
            checked = True
        for match in _BLOCK_UNCHANGED.finditer(fact):
            offset = int(match.group(2))
            assert image[offset : offset + 512] == bytes(512), fact
            checked = True
        for match in _BLOCK_FILLED.finditer(fact):
            offset = int(match.group(2))
            byte = int(match.group(3), 16)
            assert image[offset : offset + 512] == bytes([byte]) * 512, fact
            checked = True
        for match in _WARNING.finditer(fact):
            assert ("WN", 0, match.group(1)) in frames, fact
            checked = True
        assert checked, f"don't know how to check {fact!r}"


def decode_uboot_env(
    image: bytes, block_offset: int, block_count: int
) -> tuple[bool, dict[str, str]]:
    """Decode a non-redundant U-Boot env independently of nhlink (CRC ok?, variables)."""
    import zlib

    raw = image[block_offset * 512 : (block_offset + block_count) * 512]
    (stored,) = struct.unpack_from("<I", raw, 0)
    if zlib.crc32(raw[4:]) != stored:
        return False, {}
    variables: dict[str, str] = {}
    for item in raw[4:].split(b"\0"):
        if not item:
            break
        name, _, value = item.partition(b"=")
        variables[name.decode()] = value.decode()
    return True, variables
