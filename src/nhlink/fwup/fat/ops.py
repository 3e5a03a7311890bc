"""fwup's FAT operations over volumes opened from the block cache.

``FatSessions`` remembers, per volume offset, where the last cluster was
allocated (FatFs keeps this while a volume stays mounted), so consecutive
actions allocate the way fwup does.
"""

from __future__ import annotations

import logging

from nhlink.errors import TaskError
from nhlink.fwup.fat.layout import SECTOR, boot_sector, fsinfo_sector, plan_mkfs
from nhlink.fwup.fat.volume import (
    ATTR_ARC,
    ATTR_DIR,
    ATTR_HID,
    ATTR_RO,
    ATTR_SYS,
    ATTR_VOL,
    FileWriter,
    Volume,
    set_cluster,
    short_entry,
)
from nhlink.fwup.primitives import BlockCacheAPI

log = logging.getLogger("nhlink.fwup.fat")

_LABEL_INVALID = set('"*+,./:;<=>?[\\]|\x7f')


class FatSessions:
    """The FAT volumes of one apply, keyed by byte offset."""

    def __init__(self, cache: BlockCacheAPI) -> None:
        self.cache = cache
        self.hints: dict[int, int] = {}

    def open(self, block: int) -> Volume:
        base = block * SECTOR
        return Volume(self.cache, base, self.hints.get(base))

    def close(self, volume: Volume) -> None:
        volume.commit()
        self.hints[volume.geometry.base] = volume.table.next_hint

    def unmount_all(self) -> None:
        """Forget allocation hints (fwup unmounts its FAT volumes before on-finish)."""
        self.hints.clear()

    # ------------------------------------------------------------------ operations

    def mkfs(self, block: int, count: int) -> None:
        plan = plan_mkfs(block * SECTOR, count)
        g = plan.geometry
        log.debug("fat_mkfs: FAT%d with %d clusters at %d", g.fat_type, g.cluster_count, g.base)
        # as fwup: the volume's last block is filled with 0xff (it sizes regular files)
        self.cache.write(g.base + (count - 1) * SECTOR, b"\xff" * SECTOR)
        self.cache.write(g.base, boot_sector(plan))
        fat = bytearray(g.fat_sectors * SECTOR)
        if g.fat_type == 32:
            fat[0:12] = b"\xf8\xff\xff\x0f\xff\xff\xff\xff\xff\xff\xff\x0f"
            info = fsinfo_sector(g.cluster_count - 1, 2)
            self.cache.write(g.base + 6 * SECTOR, boot_sector(plan))
            self.cache.write(g.base + 7 * SECTOR, info)
            self.cache.write(g.base + SECTOR, info)
        elif g.fat_type == 16:
            fat[0:4] = b"\xf8\xff\xff\xff"
        else:
            fat[0:3] = b"\xf8\xff\xff"
        for copy in range(g.fat_count):
            self.cache.write(g.fat_offset + copy * len(fat), bytes(fat))
        root_size = g.root_entries * 32 if g.fat_type != 32 else g.cluster_size
        self.cache.write(
            g.root_offset if g.fat_type != 32 else g.cluster_offset(2), bytes(root_size)
        )
        self.hints.pop(g.base, None)

    def write_file(self, block: int, path: str, size: int) -> tuple[Volume, FileWriter]:
        """Truncate/create ``path`` with room for ``size`` bytes; the caller feeds the writer."""
        volume = self.open(block)
        self._remove(volume, path, must_exist=False, action="fat_write")
        directory, name = volume.parent_of(path)
        entry = volume.add_entry(directory, name, ATTR_ARC, 0, size)
        clusters = -(-size // volume.geometry.cluster_size)
        runs = volume.table.allocate_runs(clusters)
        if runs:
            set_cluster(entry.short, runs[0][0], size)
            volume.write_short(entry)
        return volume, FileWriter(volume, path, size, runs)

    def finish_file(self, volume: Volume, writer: FileWriter) -> None:
        writer.finish()
        self.close(volume)

    def touch(self, block: int, path: str) -> None:
        volume = self.open(block)
        if volume.lookup(path) is None:
            directory, name = volume.parent_of(path)
            volume.add_entry(directory, name, ATTR_ARC, 0, 0)
        self.close(volume)

    def mkdir(self, block: int, path: str) -> None:
        volume = self.open(block)
        directory, name = volume.parent_of(path)
        if volume.find(directory, name) is not None:
            return
        g = volume.geometry
        (cluster,) = volume.table.allocate(1)
        parent = directory.cluster if directory.cluster != g.root_cluster else 0
        block_data = bytearray(g.cluster_size)
        block_data[0:32] = short_entry(b".          ", 0, ATTR_DIR, cluster, 0, False)
        block_data[32:64] = short_entry(b"..         ", 0, ATTR_DIR, parent, 0, False)
        volume.cache.write(g.cluster_offset(cluster), bytes(block_data))
        volume.add_entry(directory, name, ATTR_DIR, cluster, 0, created=False)
        self.close(volume)

    def _remove(self, volume: Volume, path: str, *, must_exist: bool, action: str) -> bool:
        entry = volume.lookup(path)
        if entry is None:
            if must_exist:
                raise TaskError(f"{action}: '{path}' not found")
            return False
        if entry.attr & ATTR_RO:
            raise TaskError(f"{action}: '{path}' is read-only")
        if entry.is_dir and entry.cluster:
            content = volume.entries(volume.directory(entry.cluster))
            if any(e.name not in (".", "..") for e in content):
                raise TaskError(f"{action}: directory '{path}' is not empty")
        volume.table.release(entry.cluster)
        volume.remove_entry(entry)
        return True

    def rm(self, block: int, path: str, must_exist: bool) -> None:
        volume = self.open(block)
        action = "fat_rm!" if must_exist else "fat_rm"
        self._remove(volume, path, must_exist=must_exist, action=action)
        self.close(volume)

    def mv(self, block: int, old: str, new: str, force: bool) -> None:
        action = "fat_mv!" if force else "fat_mv"
        volume = self.open(block)
        entry = volume.lookup(old)
        if entry is None:
            raise TaskError(f"{action}: '{old}' not found")
        target = volume.lookup(new)
        if target is not None and target.slots != entry.slots:
            if not force:
                raise TaskError(f"{action}: '{new}' already exists")
            self._remove(volume, new, must_exist=True, action=action)
        directory, name = volume.parent_of(new)
        raw, flags, long = volume.unique_short(directory, name)
        short = bytearray(entry.short)
        short[0:11], short[12] = raw, flags
        if not entry.is_dir:
            short[11] |= ATTR_ARC
        volume.place_entry(directory, name if long else "", short)
        volume.remove_entry(entry)
        self.close(volume)

    def copy(self, from_block: int, source: str, to_block: int, target: str) -> None:
        volume = self.open(from_block)
        entry = volume.lookup(source)
        if entry is None or entry.is_dir:
            raise TaskError(f"fat_cp: '{source}' not found")
        data = volume.read_file(entry)
        self.close(volume)
        out, writer = self.write_file(to_block, target, len(data))
        writer.feed(data)
        self.finish_file(out, writer)

    def setlabel(self, block: int, label: str) -> None:
        text = label.upper()
        if len(text.encode("latin-1", errors="replace")) > 11 or any(
            c in _LABEL_INVALID or ord(c) < 0x20 for c in text
        ):
            raise TaskError(f"fat_setlabel: invalid label '{label}'")
        volume = self.open(block)
        root = volume.root()
        existing = [e for e in volume.entries(root) if e.attr & ATTR_VOL and not e.is_dir]
        raw = text.encode("latin-1").ljust(11, b" ")
        if existing:
            entry = existing[0]
            if text:
                entry.short[0:11] = raw
                volume.write_short(entry)
            else:
                volume.remove_entry(entry)
        elif text:
            short = bytearray(32)
            short[0:11], short[11] = raw, ATTR_VOL
            volume.place_entry(root, "", short)
        self.close(volume)

    def attrib(self, block: int, path: str, attributes: str) -> None:
        volume = self.open(block)
        entry = volume.lookup(path)
        if entry is None:
            raise TaskError(f"fat_attrib: '{path}' not found")
        bits = {"R": ATTR_RO, "H": ATTR_HID, "S": ATTR_SYS}
        value = 0
        for char in attributes.upper():
            value |= bits.get(char, 0)
        entry.short[11] = (entry.short[11] & ~(ATTR_RO | ATTR_HID | ATTR_SYS)) | value
        volume.write_short(entry)
        self.close(volume)

    def exists(self, block: int, path: str) -> bool:
        return self.open(block).lookup(path) is not None

    def contains(self, block: int, path: str, pattern: str) -> bool:
        volume = self.open(block)
        entry = volume.lookup(path)
        if entry is None or entry.is_dir:
            return False
        return pattern.encode("utf-8") in volume.read_file(entry)
