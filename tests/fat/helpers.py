"""Helpers for the FAT tests: walking an image's files, slack masking, dosfstools and mtools."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import nhlink._native
from nhlink.fwup.fat import Volume
from nhlink.fwup.fat.layout import SECTOR
from nhlink.fwup.fat.volume import Directory

BOOT_BLOCK = 2048  # 05_fat's FAT starts here


def need_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install dosfstools mtools)")
    return path


def open_volume(image: Path, block: int) -> Volume:
    cache = nhlink._native.load("python").BlockCache(str(image))
    return Volume(cache, block * SECTOR)


def _walk(volume: Volume, directory: Directory, prefix: str) -> Iterator[tuple[str, int, int]]:
    for entry in volume.entries(directory):
        if entry.name in (".", "..") or entry.attr & 0x08:
            continue
        path = f"{prefix}/{entry.name}"
        if entry.is_dir:
            yield from _walk(volume, volume.directory(entry.cluster), path)
        else:
            yield path, entry.cluster, entry.size


def files(image: Path, block: int) -> dict[str, tuple[int, int]]:
    """path -> (first cluster, size) of every file."""
    volume = open_volume(image, block)
    return {path: (cluster, size) for path, cluster, size in _walk(volume, volume.root(), "")}


def slack_ranges(image: Path, block: int) -> list[tuple[int, int]]:
    """(offset, length) of the bytes after each file's end in its last sector."""
    volume = open_volume(image, block)
    ranges = []
    for _path, cluster, size in _walk(volume, volume.root(), ""):
        if size % SECTOR == 0 or cluster == 0:
            continue
        chain = volume.table.chain(cluster)
        g = volume.geometry
        last = chain[(size - 1) // g.cluster_size]
        end = g.cluster_offset(last) + (size - 1) % g.cluster_size + 1
        ranges.append((end, SECTOR - size % SECTOR))
    return ranges


def mask(data: bytes, ranges: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for offset, length in ranges:
        out[offset : offset + length] = bytes(length)
    return bytes(out)


def mtools_env() -> dict[str, str]:
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def mdir(image: Path, offset: int) -> list[str]:
    tool = need_tool("mdir")
    result = subprocess.run(
        [tool, "-/", "-a", "-i", f"{image}@@{offset}", "::"],
        capture_output=True,
        text=True,
        check=True,
        env=mtools_env(),
    )
    return result.stdout.split("\n")


def mtype(image: Path, offset: int, path: str) -> bytes:
    tool = need_tool("mtype")
    return subprocess.run(
        [tool, "-i", f"{image}@@{offset}", f"::{path}"],
        capture_output=True,
        check=True,
        env=mtools_env(),
    ).stdout


def fsck(image: Path, offset: int = 0) -> subprocess.CompletedProcess[str]:
    """``fsck.fat -n`` over the filesystem at ``offset`` (copied out when not at 0)."""
    tool = need_tool("fsck.fat")
    target = image
    if offset:
        target = image.with_suffix(".part")
        with image.open("rb") as src, target.open("wb") as dst:
            src.seek(offset)
            shutil.copyfileobj(src, dst)
    return subprocess.run([tool, "-n", str(target)], capture_output=True, text=True, check=False)


_LABEL_NOTE = "There is no label in boot sector, but there is volume label"
_FSCK_CHATTER = (
    "fsck.fat ",
    _LABEL_NOTE,
    "  Auto-copying volume label from root directory to boot sector.",
    "Leaving filesystem unchanged.",
)


def assert_fsck_clean(image: Path, offset: int = 0) -> None:
    """``fsck.fat -n`` finds nothing wrong, except (like on fwup's own images) a label that
    fat_setlabel put only in the root directory, as FatFs does."""
    result = fsck(image, offset)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    problems = [
        line
        for line in lines[:-1]  # the last line is the summary
        if not line.startswith(_FSCK_CHATTER)
    ]
    label_only = result.returncode == 1 and _LABEL_NOTE in result.stdout
    assert result.returncode == 0 or label_only, result.stdout + result.stderr
    assert not problems, result.stdout + result.stderr
