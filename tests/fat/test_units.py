"""FAT building blocks against bytes taken from the golden 05_fat image."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from nhlink.errors import TaskError
from nhlink.fwup.fat import names
from nhlink.fwup.fat.layout import SECTOR, boot_sector, plan_mkfs
from nhlink.fwup.fat.table import FatTable
from tests.fat import helpers as h
from tests.helpers import vectors as v


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    step = v.vector("05_fat")["steps"][0]
    path = tmp_path_factory.mktemp("golden") / "complete.img"
    path.write_bytes(lzma.decompress((v.vectors_dir() / step["expected"]["image_xz"]).read_bytes()))
    return path


def test_mkfs_boot_sector_is_fwups(golden: Path) -> None:
    base = h.BOOT_BLOCK * SECTOR
    plan = plan_mkfs(base, 16384)
    assert plan.geometry.fat_type == 16
    assert boot_sector(plan) == golden.read_bytes()[base : base + SECTOR]


def test_mkfs_picks_the_fat_type_by_size() -> None:
    assert plan_mkfs(0, 4000).geometry.fat_type == 12
    assert plan_mkfs(0, 60000).geometry.fat_type == 16
    fat32 = plan_mkfs(0, 140000).geometry
    assert (fat32.fat_type, fat32.reserved, fat32.root_entries) == (32, 32, 0)
    with pytest.raises(TaskError, match="too small"):
        plan_mkfs(0, 40)


def test_long_name_entries_are_fwups(golden: Path) -> None:
    volume = h.open_volume(golden, h.BOOT_BLOCK)
    overlays = volume.lookup("overlays")
    assert overlays is not None
    entry = volume.find(volume.directory(overlays.cluster), "overlay.dtbo")
    assert entry is not None and len(entry.slots) == 2
    raw_lfn = golden.read_bytes()[entry.slots[0] : entry.slots[0] + 32]
    assert names.checksum(b"OVERLA~1DTB") == raw_lfn[13]
    assert names.lfn_entries("overlay.dtbo", raw_lfn[13]) == [raw_lfn]
    assert names.lfn_part(raw_lfn) == "overlay.dtbo"


@pytest.mark.parametrize(
    ("name", "raw", "flags", "lfn", "lossy"),
    [
        ("config.txt", b"CONFIG  TXT", 0x18, False, False),
        ("overlays", b"OVERLAYS   ", 0x08, False, False),
        ("KERNEL.IMG", b"KERNEL  IMG", 0, False, False),
        ("Mixed.txt", b"MIXED   TXT", 0, True, False),
        ("overlay.dtbo", b"OVERLAY DTB", 0, True, True),
        ("a b+c.txt", b"AB_C    TXT", 0, True, True),
    ],
)
def test_short_names(name: str, raw: bytes, flags: int, lfn: bool, lossy: bool) -> None:
    short = names.short_name(name)
    assert (short.raw, short.nt_flags, short.needs_lfn, short.lossy) == (raw, flags, lfn, lossy)


def test_numbered_tail() -> None:
    assert names.numbered(b"OVERLAY DTB", 1) == b"OVERLA~1DTB"
    assert names.numbered(b"AB      TXT", 12) == b"AB~12   TXT"


@pytest.mark.parametrize("bad", ["a:b", "..", "y?", "tab\there"])
def test_invalid_names(bad: str) -> None:
    with pytest.raises(TaskError, match="invalid file name"):
        names.check_name(bad)


class _Memory:
    """A BlockCache stand-in over a bytearray."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.size = size
        self.is_block_device = False

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data: bytes, streamed: bool = False) -> None:
        self.data[offset : offset + len(data)] = data


def test_fat12_entries_round_trip() -> None:
    plan = plan_mkfs(0, 4000)
    memory = _Memory(4000 * SECTOR)
    table = FatTable(memory, plan.geometry)  # type: ignore[arg-type]
    values = {c: (c * 37) & 0xFFF for c in range(2, 300)}
    for cluster, value in values.items():
        table.set(cluster, value)
    assert all(table.get(c) == value for c, value in values.items())
    table.commit()
    again = FatTable(memory, plan.geometry)  # type: ignore[arg-type]
    assert all(again.get(c) == value for c, value in values.items())


def test_allocation_is_next_fit_and_wraps() -> None:
    plan = plan_mkfs(0, 60000)
    table = FatTable(_Memory(60000 * SECTOR), plan.geometry)  # type: ignore[arg-type]
    first = table.allocate(10)
    assert first == list(range(2, 12))
    table.set(5, 0)  # a hole before the hint is not reused while the volume stays mounted
    assert table.allocate(2) == [12, 13]
    table.next_hint = table.limit - 2
    assert table.allocate(3) == [table.limit - 1, 5, 14]
    assert table.chain(table.limit - 1) == [table.limit - 1, 5, 14]
