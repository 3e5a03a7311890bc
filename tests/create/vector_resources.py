"""Regenerate the golden vectors' resource files from spec.json."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any

from tests.helpers.vectors import spec

SOURCE_DATE_EPOCH = "1700000000"


def spec_entries() -> list[dict[str, Any]]:
    """The vectors of spec.json."""
    return [dict(entry) for entry in spec()["vectors"]]


def seeded_bytes(seed: str, size: int) -> bytes:
    """concat(SHA256(seed || i as u64 little endian)) for i = 0, 1, ... cut to *size*."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed.encode() + struct.pack("<Q", counter)).digest()
        counter += 1
    return bytes(out[:size])


def write_resource(directory: Path, resource: dict[str, Any]) -> Path:
    """Write one spec.json resource (sparse layouts as real files with holes)."""
    path = directory / resource["file"]
    if "text" in resource:
        path.write_text(resource["text"])
    elif "layout" in resource:
        write_sparse(path, resource["seed"], [(kind, int(n)) for kind, n in resource["layout"]])
    else:
        path.write_bytes(seeded_bytes(resource["seed"], int(resource["size"])))
    return path


def write_sparse(path: Path, seed: str, layout: list[tuple[str, int]]) -> bytes:
    """Write the data runs of *layout* at their offsets, leave holes; return the data bytes."""
    total = sum(length for _, length in layout)
    content = seeded_bytes(seed, total)
    data = bytearray()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        offset = 0
        for kind, length in layout:
            if kind == "data":
                os.pwrite(fd, content[offset : offset + length], offset)
                data += content[offset : offset + length]
            offset += length
        os.ftruncate(fd, total)
    finally:
        os.close(fd)
    return bytes(data)


def reported_layout(path: Path) -> list[tuple[str, int]]:
    """The (kind, length) runs the filesystem reports for *path* (SEEK_DATA/SEEK_HOLE)."""
    runs: list[tuple[str, int]] = []
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while offset < size:
            try:
                data = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                data = size
            if data > offset:
                runs.append(("hole", data - offset))
                offset = data
            if offset >= size:
                break
            hole = os.lseek(fd, offset, os.SEEK_HOLE)
            runs.append(("data", hole - offset))
            offset = hole
    finally:
        os.close(fd)
    return runs
