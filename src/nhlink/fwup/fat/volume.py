"""A mounted FAT volume: directories, entries and file data, all through the block cache."""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from typing import cast

from nhlink.errors import TaskError
from nhlink.fwup.fat import names
from nhlink.fwup.fat.layout import (
    DIR_ENTRY,
    FAT_DATE_1980,
    FSINFO_LEAD,
    FSINFO_STRUCT,
    SECTOR,
    Geometry,
    parse_boot_sector,
)
from nhlink.fwup.fat.table import FatTable
from nhlink.fwup.primitives import BlockCacheAPI

ATTR_RO, ATTR_HID, ATTR_SYS, ATTR_VOL, ATTR_DIR, ATTR_ARC = 1, 2, 4, 8, 0x10, 0x20
ATTR_LFN = 0x0F
DELETED, END = 0xE5, 0x00


@dataclass(slots=True)
class Entry:
    """One file, directory or label: its name, its short entry and where its slots are."""

    name: str
    short: bytearray  # the 32-byte short entry
    slots: list[int]  # absolute offsets of the LFN slots and (last) the short entry

    @property
    def attr(self) -> int:
        return self.short[11]

    @property
    def cluster(self) -> int:
        return int(struct.unpack_from("<H", self.short, 26)[0]) | (
            int(struct.unpack_from("<H", self.short, 20)[0]) << 16
        )

    @property
    def size(self) -> int:
        return int(struct.unpack_from("<I", self.short, 28)[0])

    @property
    def is_dir(self) -> bool:
        return bool(self.attr & ATTR_DIR)


@dataclass(slots=True)
class Directory:
    cluster: int  # 0: the fixed FAT12/16 root
    slots: list[int] = field(default_factory=list)  # absolute offset of every 32-byte slot
    data: bytearray = field(default_factory=bytearray)


def short_entry(
    raw: bytes, nt_flags: int, attr: int, cluster: int, size: int, created: bool
) -> bytearray:
    out = bytearray(DIR_ENTRY)
    out[0:11] = raw
    out[11], out[12] = attr, nt_flags
    if created:
        struct.pack_into("<H", out, 16, FAT_DATE_1980)
    struct.pack_into("<HHHHI", out, 20, cluster >> 16, 0, FAT_DATE_1980, cluster & 0xFFFF, size)
    return out


def set_cluster(entry: bytearray, cluster: int, size: int) -> None:
    struct.pack_into("<H", entry, 20, cluster >> 16)
    struct.pack_into("<HI", entry, 26, cluster & 0xFFFF, size)


class Volume:
    """A FAT filesystem at byte ``base`` of the destination; ``commit`` writes the FAT back."""

    def __init__(self, cache: BlockCacheAPI, base: int, hint: int | None = None) -> None:
        self.cache = cache
        self.geometry: Geometry = parse_boot_sector(base, cache.read(base, SECTOR))
        self.table = FatTable(cache, self.geometry)
        self.fsinfo_free: int | None = None
        g = self.geometry
        if g.fsinfo_sector:
            info = cache.read(base + g.fsinfo_sector * SECTOR, SECTOR)
            (lead,) = struct.unpack_from("<I", info, 0)
            sig, free, next_free = struct.unpack_from("<III", info, 484)
            if lead == FSINFO_LEAD and sig == FSINFO_STRUCT:
                if free <= g.cluster_count:
                    self.fsinfo_free = free
                if hint is None and 2 <= next_free < self.table.limit:
                    hint = next_free
        if hint is not None:
            self.table.next_hint = hint

    # ------------------------------------------------------------------ directories

    def root(self) -> Directory:
        g = self.geometry
        if g.fat_type == 32:
            return self.directory(g.root_cluster)
        size = g.root_entries * DIR_ENTRY
        data = bytearray(self.cache.read(g.root_offset, size))
        return Directory(0, [g.root_offset + i * DIR_ENTRY for i in range(g.root_entries)], data)

    def directory(self, cluster: int) -> Directory:
        directory = Directory(cluster)
        for c in self.table.chain(cluster):
            self._append_cluster(directory, c)
        return directory

    def _append_cluster(self, directory: Directory, cluster: int) -> None:
        g = self.geometry
        offset = g.cluster_offset(cluster)
        directory.data += self.cache.read(offset, g.cluster_size)
        directory.slots += [offset + i * DIR_ENTRY for i in range(g.cluster_size // DIR_ENTRY)]

    def entries(self, directory: Directory) -> list[Entry]:
        found: list[Entry] = []
        long_parts: list[str] = []
        long_slots: list[int] = []
        data = directory.data
        for index, slot in enumerate(directory.slots):
            raw = data[index * DIR_ENTRY : (index + 1) * DIR_ENTRY]
            if raw[0] == END:
                break
            if raw[0] == DELETED:
                long_parts, long_slots = [], []
                continue
            if raw[11] & 0x3F == ATTR_LFN:
                if raw[0] & 0x40:
                    long_parts, long_slots = [], []
                long_parts.insert(0, names.lfn_part(raw))
                long_slots.append(slot)
                continue
            short_name = names.display_short(bytes(raw[:11]), raw[12])
            name = "".join(long_parts) if long_parts else short_name
            found.append(Entry(name, bytearray(raw), [*long_slots, slot]))
            long_parts, long_slots = [], []
        return found

    def find(self, directory: Directory, name: str) -> Entry | None:
        for entry in self.entries(directory):
            if entry.attr & ATTR_VOL:
                continue
            short = names.display_short(bytes(entry.short[:11]), entry.short[12])
            if names.same_name(entry.name, name) or names.same_name(short, name):
                return entry
        return None

    def parent_of(self, path: str) -> tuple[Directory, str]:
        parts = names.split_path(path)
        if not parts:
            raise TaskError(f"FAT: invalid path '{path}'")
        directory = self.root()
        for part in parts[:-1]:
            entry = self.find(directory, part)
            if entry is None or not entry.is_dir:
                raise TaskError(f"FAT: no directory '{part}' in path '{path}'")
            directory = self.directory(entry.cluster) if entry.cluster else self.root()
        return directory, parts[-1]

    def lookup(self, path: str) -> Entry | None:
        directory, name = self.parent_of(path)
        return self.find(directory, name)

    # ------------------------------------------------------------------ entries

    def _free_run(self, directory: Directory, count: int) -> int:
        """Index of the first ``count`` consecutive free slots, growing a cluster directory."""
        run = 0
        index = 0
        while True:
            while index < len(directory.slots):
                if directory.data[index * DIR_ENTRY] in (END, DELETED):
                    run += 1
                    if run == count:
                        return index - count + 1
                else:
                    run = 0
                index += 1
            if directory.cluster == 0:
                raise TaskError("FAT: root directory is full")
            last = self.table.chain(directory.cluster)[-1]
            (cluster,) = self.table.allocate(1, after=last)
            self.cache.write(
                self.geometry.cluster_offset(cluster), bytes(self.geometry.cluster_size)
            )
            self._append_cluster(directory, cluster)

    def unique_short(self, directory: Directory, name: str) -> tuple[bytes, int, bool]:
        """Short name, NT case flags and whether long-name entries are needed."""
        basis = names.short_name(name)
        if not basis.lossy:
            return basis.raw, basis.nt_flags, basis.needs_lfn
        taken = {bytes(e.short[:11]) for e in self.entries(directory)}
        number = 1
        while True:
            raw = names.numbered(basis.raw, number)
            if raw not in taken:
                return raw, 0, True
            number += 1

    def add_entry(
        self,
        directory: Directory,
        name: str,
        attr: int,
        cluster: int,
        size: int,
        *,
        created: bool = True,
    ) -> Entry:
        raw, flags, long = self.unique_short(directory, name)
        short = short_entry(raw, flags, attr, cluster, size, created)
        return self.place_entry(directory, name if long else "", short)

    def place_entry(self, directory: Directory, long_name: str, short: bytearray) -> Entry:
        slots_data = (
            names.lfn_entries(long_name, names.checksum(bytes(short[:11]))) if long_name else []
        )
        slots_data.append(bytes(short))
        start = self._free_run(directory, len(slots_data))
        slots = directory.slots[start : start + len(slots_data)]
        for index, (slot, data) in enumerate(zip(slots, slots_data, strict=True)):
            self.cache.write(slot, data)
            directory.data[(start + index) * DIR_ENTRY : (start + index + 1) * DIR_ENTRY] = data
        return Entry(long_name or names.display_short(bytes(short[:11]), short[12]), short, slots)

    def write_short(self, entry: Entry) -> None:
        self.cache.write(entry.slots[-1], bytes(entry.short))

    def remove_entry(self, entry: Entry) -> None:
        for slot in entry.slots:
            self.cache.write(slot, b"\xe5")

    # ------------------------------------------------------------------ files

    def read_file(self, entry: Entry) -> bytes:
        if not entry.cluster or not entry.size:
            return b""
        g = self.geometry
        chain = self.table.chain(entry.cluster)
        if len(chain) * g.cluster_size < entry.size:
            raise TaskError(f"FAT: cluster chain of '{entry.name}' is shorter than the file")
        parts = [self.cache.read(g.cluster_offset(c), g.cluster_size) for c in chain]
        return b"".join(parts)[: entry.size]

    def commit(self) -> None:
        """Write the FAT (every copy) and FSInfo into the cache."""
        if self.table.dirty and self.fsinfo_free is not None:
            g = self.geometry
            free = self.fsinfo_free + self.table.free_delta
            offset = g.base + g.fsinfo_sector * SECTOR
            info = bytearray(self.cache.read(offset, SECTOR))
            struct.pack_into("<II", info, 488, free, self.table.next_hint)
            self.cache.write(offset, bytes(info))
        self.table.commit()


class FileWriter:
    """Sequential file data into a preallocated chain, whole sectors at a time, slack zeroed."""

    def __init__(self, volume: Volume, name: str, size: int, runs: list[tuple[int, int]]) -> None:
        self.volume = volume
        self.name = name
        self.size = size
        self.cache = volume.cache
        g = volume.geometry
        self.run_starts: list[int] = []
        self.runs: list[tuple[int, int, int]] = []  # file start, media offset, length
        position = 0
        for first, count in runs:
            self.runs.append((position, g.cluster_offset(first), count * g.cluster_size))
            self.run_starts.append(position)
            position += count * g.cluster_size
        self.capacity = position
        self.written = 0  # bytes emitted to the cache (a multiple of SECTOR)
        self.pending = bytearray()
        self.position = 0  # file bytes taken

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self.position += len(view)
        if self.position > self.size:
            raise TaskError(f"fat_write: '{self.name}' is larger than its declared length")
        pending = self.pending
        if pending:
            need = SECTOR - len(pending)
            pending += view[:need]
            view = view[need:]
            if len(pending) < SECTOR:
                return
            self._emit(pending)
            self.pending = bytearray()
        tail = len(view) % SECTOR
        if len(view) > tail:
            self._emit(view[: len(view) - tail])
        if tail:
            self.pending = bytearray(view[len(view) - tail :])

    def zeros(self, count: int) -> None:
        while count > 0:
            piece = min(count, 1 << 20)
            self.feed(bytes(piece))
            count -= piece

    def finish(self) -> None:
        """Fill up to the file size with zeros and write the last sector with zeroed slack."""
        self.zeros(self.size - self.position)
        if self.pending:
            self._emit(self.pending + bytes(SECTOR - len(self.pending)))
            self.pending = bytearray()

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        position = self.written
        while view:
            index = bisect.bisect_right(self.run_starts, position) - 1
            start, media, length = self.runs[index]
            take = min(len(view), start + length - position)
            # the backends take any contiguous buffer; the protocol only says bytes
            self.cache.write(media + position - start, cast(bytes, view[:take]))
            view = view[take:]
            position += take
        self.written = position
