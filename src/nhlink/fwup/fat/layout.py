"""The FAT boot sector: parsing an existing one and the layout ``fat_mkfs`` formats.

The mkfs layout is fwup's (FatFs with a single-FAT-volume partition, two FATs,
512-byte clusters): FAT12/16 get 1 reserved sector and 512 root entries,
FAT32 32 reserved sectors with the FSInfo sector at 1 and the backup boot
sector at 6; no data-area alignment; the volume serial is the fixed FAT time
of 1980-01-01 00:00 plus the volume size in sectors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nhlink.errors import TaskError

SECTOR = 512
DIR_ENTRY = 32
MAX_FAT12 = 0xFF5
MAX_FAT16 = 0xFFF5
MAX_FAT32 = 0x0FFFFFF5
FAT_TIME_1980 = 0x00210000  # date 1980-01-01 (0x0021) << 16 | time 00:00
FAT_DATE_1980 = 0x0021
FSINFO_LEAD, FSINFO_STRUCT, FSINFO_TRAIL = 0x41615252, 0x61417272, 0xAA550000


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where everything is, in bytes from the start of the destination."""

    base: int
    fat_type: int  # 12, 16 or 32
    cluster_size: int
    reserved: int  # sectors
    fat_count: int
    fat_sectors: int
    root_entries: int  # FAT12/16 fixed root; 0 on FAT32
    total_sectors: int
    root_cluster: int  # FAT32
    fsinfo_sector: int  # FAT32, 0 when absent

    @property
    def fat_offset(self) -> int:
        return self.base + self.reserved * SECTOR

    @property
    def root_offset(self) -> int:
        return self.fat_offset + self.fat_count * self.fat_sectors * SECTOR

    @property
    def data_offset(self) -> int:
        return self.root_offset + self.root_entries * DIR_ENTRY

    @property
    def cluster_count(self) -> int:
        data_bytes = self.total_sectors * SECTOR - (self.data_offset - self.base)
        return data_bytes // self.cluster_size

    def cluster_offset(self, cluster: int) -> int:
        return self.data_offset + (cluster - 2) * self.cluster_size


def _bad(reason: str) -> TaskError:
    return TaskError(f"FAT: not a valid FAT filesystem ({reason})")


def parse_boot_sector(base: int, sector: bytes) -> Geometry:
    """Validate a boot sector (512-byte sectors only, like fwup) and return its geometry."""
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
        raise _bad("no boot signature")
    (bps, spc, reserved, fats, root_entries, total16, _media, fat16) = struct.unpack_from(
        "<HBHBHHBH", sector, 11
    )
    (total32,) = struct.unpack_from("<I", sector, 32)
    (fat32, _flags, _version, root_cluster, fsinfo) = struct.unpack_from("<IHHIH", sector, 36)
    if bps != SECTOR:
        raise _bad(f"{bps} bytes per sector")
    if spc == 0 or spc & (spc - 1):
        raise _bad(f"{spc} sectors per cluster")
    if reserved == 0 or fats not in (1, 2):
        raise _bad("reserved sectors or FAT count")
    fat_sectors = fat16 or fat32
    total = total16 or total32
    if fat_sectors == 0 or total == 0:
        raise _bad("zero FAT size or volume size")
    if root_entries * DIR_ENTRY % SECTOR:
        raise _bad("root directory size")
    geometry = Geometry(
        base, 0, spc * SECTOR, reserved, fats, fat_sectors, root_entries, total, 0, 0
    )
    if geometry.data_offset >= base + total * SECTOR:
        raise _bad("metadata larger than the volume")
    clusters = geometry.cluster_count
    fat_type = 12 if clusters <= MAX_FAT12 else 16 if clusters <= MAX_FAT16 else 32
    if fat_type == 32:
        if fat16 != 0 or root_entries != 0 or root_cluster < 2 or clusters > MAX_FAT32:
            raise _bad("inconsistent FAT32 parameters")
    elif root_entries == 0:
        raise _bad("no root directory")
    needed = clusters + 2
    entry_bits = fat_type if fat_type != 32 else 32
    if fat_sectors * SECTOR * 8 < needed * entry_bits:
        raise _bad("FAT too small for the volume")
    return Geometry(
        base,
        fat_type,
        spc * SECTOR,
        reserved,
        fats,
        fat_sectors,
        root_entries,
        total,
        root_cluster if fat_type == 32 else 0,
        fsinfo if fat_type == 32 and 0 < fsinfo < reserved else 0,
    )


@dataclass(frozen=True, slots=True)
class MkfsPlan:
    geometry: Geometry
    serial: int


def plan_mkfs(base: int, sectors: int) -> MkfsPlan:
    """fwup's layout for a ``sectors``-long volume at byte ``base``."""
    fats, root_entries = 2, 512
    fat_type = 16  # FAT12 when the estimate is small, FAT32 when FAT16 overflows
    for _ in range(2):
        if fat_type == 32:
            reserved, root = 32, 0
            fat_sectors = (sectors * 4 + 8 + SECTOR - 1) // SECTOR
        else:
            reserved, root = 1, root_entries
            estimate = sectors
            if estimate > MAX_FAT12:
                size = estimate * 2 + 4
            else:
                fat_type = 12
                size = (estimate * 3 + 1) // 2 + 3
            fat_sectors = (size + SECTOR - 1) // SECTOR
        meta = reserved + fats * fat_sectors + root * DIR_ENTRY // SECTOR
        if sectors < meta + 16:
            raise TaskError(f"fat_mkfs: volume of {sectors} blocks is too small")
        clusters = sectors - meta
        if fat_type == 16 and clusters > MAX_FAT16:
            fat_type = 32
            continue
        if fat_type == 16 and clusters <= MAX_FAT12:
            raise TaskError(f"fat_mkfs: can't format {sectors} blocks as FAT")
        if fat_type == 32 and (clusters <= MAX_FAT16 or clusters > MAX_FAT32):
            raise TaskError(f"fat_mkfs: can't format {sectors} blocks as FAT32")
        if fat_type == 12 and clusters > MAX_FAT12:
            raise TaskError(f"fat_mkfs: can't format {sectors} blocks as FAT12")
        geometry = Geometry(
            base,
            fat_type,
            SECTOR,
            reserved,
            fats,
            fat_sectors,
            root,
            sectors,
            2 if fat_type == 32 else 0,
            1 if fat_type == 32 else 0,
        )
        return MkfsPlan(geometry, (FAT_TIME_1980 + sectors) & 0xFFFFFFFF)
    raise TaskError(f"fat_mkfs: can't format {sectors} blocks")


def boot_sector(plan: MkfsPlan) -> bytes:
    g = plan.geometry
    out = bytearray(SECTOR)
    out[0:11] = b"\xeb\xfe\x90MSDOS5.0"
    struct.pack_into(
        "<HBHBHHBHHHI",
        out,
        11,
        SECTOR,
        g.cluster_size // SECTOR,
        g.reserved,
        g.fat_count,
        g.root_entries,
        g.total_sectors if g.total_sectors < 0x10000 else 0,
        0xF8,
        g.fat_sectors if g.fat_type != 32 else 0,
        63,
        255,
        0,
    )
    if g.total_sectors >= 0x10000:
        struct.pack_into("<I", out, 32, g.total_sectors)
    if g.fat_type == 32:
        struct.pack_into("<IHHIHH", out, 36, g.fat_sectors, 0, 0, 2, 1, 6)
        struct.pack_into("<BBBI", out, 64, 0x80, 0, 0x29, plan.serial)
        out[71:90] = b"NO NAME    FAT32   "
    else:
        struct.pack_into("<BBBI", out, 36, 0x80, 0, 0x29, plan.serial)
        out[43:62] = b"NO NAME    " + (b"FAT12   " if g.fat_type == 12 else b"FAT16   ")
    out[510:512] = b"\x55\xaa"
    return bytes(out)


def fsinfo_sector(free: int, next_free: int) -> bytes:
    out = bytearray(SECTOR)
    struct.pack_into("<I", out, 0, FSINFO_LEAD)
    struct.pack_into("<III", out, 484, FSINFO_STRUCT, free, next_free)
    struct.pack_into("<I", out, 508, FSINFO_TRAIL)
    return bytes(out)
