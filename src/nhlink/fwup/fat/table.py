"""The file allocation table, held in memory and written back sector by sector to every copy."""

from __future__ import annotations

import array
import re
import sys

from nhlink.errors import TaskError
from nhlink.fwup.fat.layout import SECTOR, Geometry
from nhlink.fwup.primitives import BlockCacheAPI

FREE = 0
_NONZERO = re.compile(rb"[^\x00]")


class FatTable:
    """Entries 0..cluster_count+1 of the first FAT; ``commit`` mirrors dirty sectors to all FATs."""

    def __init__(self, cache: BlockCacheAPI, geometry: Geometry) -> None:
        self.cache = cache
        self.geometry = geometry
        self.raw = bytearray(cache.read(geometry.fat_offset, geometry.fat_sectors * SECTOR))
        self.limit = geometry.cluster_count + 2  # valid cluster numbers are 2..limit-1
        self.width = {12: 0, 16: 2, 32: 4}[geometry.fat_type]  # 0: FAT12, scanned in Python
        self.eoc = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}[geometry.fat_type]
        self.dirty: set[int] = set()
        self.next_hint = 1  # the search starts after it: cluster 2 first
        self.free_delta = 0  # change of the free cluster count since loading

    def get(self, cluster: int) -> int:
        raw, kind = self.raw, self.geometry.fat_type
        if kind == 16:
            return raw[cluster * 2] | raw[cluster * 2 + 1] << 8
        if kind == 32:
            return int.from_bytes(raw[cluster * 4 : cluster * 4 + 4], "little") & 0x0FFFFFFF
        pos = cluster * 3 // 2
        pair = raw[pos] | raw[pos + 1] << 8
        return pair >> 4 if cluster & 1 else pair & 0xFFF

    def set(self, cluster: int, value: int) -> None:
        raw, kind = self.raw, self.geometry.fat_type
        if kind == 16:
            pos = cluster * 2
            raw[pos : pos + 2] = value.to_bytes(2, "little")
            self.dirty.add(pos // SECTOR)
        elif kind == 32:
            pos = cluster * 4
            old = int.from_bytes(raw[pos : pos + 4], "little")
            raw[pos : pos + 4] = ((old & 0xF0000000) | (value & 0x0FFFFFFF)).to_bytes(4, "little")
            self.dirty.add(pos // SECTOR)
        else:
            pos = cluster * 3 // 2
            pair = raw[pos] | raw[pos + 1] << 8
            pair = (pair & 0xF) | value << 4 if cluster & 1 else (pair & 0xF000) | value
            raw[pos : pos + 2] = pair.to_bytes(2, "little")
            self.dirty.update((pos // SECTOR, (pos + 1) // SECTOR))

    def is_end(self, value: int) -> bool:
        return value >= (self.eoc & ~7)

    def chain(self, start: int) -> list[int]:
        """The clusters of a chain; a bad link or a loop is an error."""
        clusters: list[int] = []
        cluster = start
        while True:
            if not 2 <= cluster < self.limit:
                raise TaskError(f"FAT: bad cluster {cluster} in chain starting at {start}")
            clusters.append(cluster)
            if len(clusters) > self.limit:
                raise TaskError(f"FAT: cyclic cluster chain starting at {start}")
            value = self.get(cluster)
            if self.is_end(value):
                return clusters
            cluster = value

    def allocate(self, count: int, after: int = 0) -> list[int]:
        """``count`` free clusters (next fit after the last allocated one), linked after ``after``."""
        return [
            c
            for start, length in self.allocate_runs(count, after)
            for c in range(start, start + length)
        ]

    def allocate_runs(self, count: int, after: int = 0) -> list[tuple[int, int]]:
        """Like ``allocate``, as runs of consecutive clusters ``(first, length)``."""
        if count <= 0:
            return []
        runs = self._find_free(count)
        previous = after
        for start, length in runs:
            if previous:
                self.set(previous, start)
            self._link_run(start, length)
            previous = start + length - 1
        self.set(previous, self.eoc)
        self.free_delta -= count
        self.next_hint = previous
        return runs

    def _find_free(self, count: int) -> list[tuple[int, int]]:
        """Free clusters in next-fit order, grouped in runs; the byte scans run in C."""
        runs: list[tuple[int, int]] = []
        wanted = count
        cluster = self.next_hint + 1 if 2 <= self.next_hint + 1 < self.limit else 2
        first = cluster
        wrapped = False
        while wanted:
            start = self._next_free(cluster)
            if start is None or (wrapped and start >= first):
                if wrapped or first == 2:
                    raise TaskError("FAT: no space left on the filesystem")
                wrapped, cluster = True, 2
                continue
            end = min(self._free_end(start), start + wanted)
            if wrapped:
                end = min(end, first)
            runs.append((start, end - start))
            wanted -= end - start
            cluster = end
            if cluster >= self.limit:
                if wrapped:
                    raise TaskError("FAT: no space left on the filesystem")
                wrapped, cluster = True, 2
            if wrapped and cluster >= first and wanted:
                raise TaskError("FAT: no space left on the filesystem")
        return runs

    def _next_free(self, cluster: int) -> int | None:
        if self.width == 0:
            while cluster < self.limit:
                if self.get(cluster) == FREE:
                    return cluster
                cluster += 1
            return None
        width, raw, zero = self.width, self.raw, b"\x00" * self.width
        position = cluster * width
        end = self.limit * width
        while position < end:
            found = raw.find(zero, position, end)
            if found < 0:
                return None
            if found % width == 0:
                return found // width
            position = found + width - found % width
        return None

    def _free_end(self, start: int) -> int:
        """The first cluster after ``start`` that is not free (or ``limit``)."""
        if self.width == 0:
            cluster = start
            while cluster < self.limit and self.get(cluster) == FREE:
                cluster += 1
            return cluster
        match = _NONZERO.search(self.raw, start * self.width, self.limit * self.width)
        return self.limit if match is None else match.start() // self.width

    def _link_run(self, start: int, length: int) -> None:
        """Entries start..start+length-2 point to their successor (the last is set by the caller)."""
        if self.width == 0:
            for cluster in range(start, start + length - 1):
                self.set(cluster, cluster + 1)
            return
        code = "H" if self.width == 2 else "I"
        values = array.array(code, range(start + 1, start + length + 1))
        if sys.byteorder != "little":
            values.byteswap()
        self.raw[start * self.width : (start + length) * self.width] = values.tobytes()
        self.dirty.update(
            range(start * self.width // SECTOR, ((start + length) * self.width - 1) // SECTOR + 1)
        )

    def release(self, start: int) -> None:
        if start:
            for cluster in self.chain(start):
                self.set(cluster, FREE)
                self.free_delta += 1

    def commit(self) -> None:
        """Write the changed FAT sectors into every FAT copy in the cache."""
        g = self.geometry
        for sector in sorted(self.dirty):
            data = bytes(self.raw[sector * SECTOR : (sector + 1) * SECTOR])
            for copy in range(g.fat_count):
                self.cache.write(g.fat_offset + (copy * g.fat_sectors + sector) * SECTOR, data)
        self.dirty.clear()
