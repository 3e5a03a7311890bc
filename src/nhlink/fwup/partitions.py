"""MBR (with EBR chains) and GPT images, byte for byte as fwup's mbr_write / gpt_write.

Both return ``(block number, bytes)`` runs to write; block numbers are 512-byte
LBAs. ``destination_blocks`` is the size of the output (image file or device)
and drives ``expand = true``.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

from nhlink.errors import TaskError
from nhlink.fwup.metaconf import Gpt, GptPartition, Mbr

BLOCK_SIZE = 512
MBR_PRIMARY = 4
MBR_MAX_LOGICAL = 16
EXTENDED_TYPES = (0x05, 0x0F)
GPT_ENTRY_SIZE = 128
GPT_ENTRY_BLOCKS = 32
GPT_ENTRIES = GPT_ENTRY_BLOCKS * BLOCK_SIZE // GPT_ENTRY_SIZE
GPT_SIZE_BLOCKS = GPT_ENTRY_BLOCKS + 1  # entry array + header
_U32 = 0xFFFFFFFF
_INT32_MAX = 0x7FFFFFFF
_CHS_LIMIT = 63 * 255 * 0x3FF

Blocks = list[tuple[int, bytes]]


@dataclass(slots=True)
class _Slot:
    type: int = 0
    boot: bool = False
    offset: int = 0
    count: int = 0
    expand: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.count


# --------------------------------------------------------------------------- MBR


def _chs(lba: int) -> bytes:
    if lba > _CHS_LIMIT:
        return bytes(3)
    cylinder = lba // (63 * 255)
    head = (lba // 63) % 255
    sector = lba % 63 + 1
    return bytes((head, ((cylinder & 0x300) >> 2) | sector, cylinder & 0xFF))


def _mbr_entry(slot: _Slot) -> bytes:
    entry = bytearray(16)
    if slot.type > 0:
        entry[0] = 0x80 if slot.boot else 0
        entry[1:4] = _chs(slot.offset & _U32)
        entry[4] = slot.type
        entry[5:8] = _chs((slot.offset + slot.count - 1) & _U32)
    # Offset and count are copied even for unused entries, as fwup does.
    struct.pack_into("<II", entry, 8, slot.offset & _U32, slot.count & _U32)
    return bytes(entry)


def _mbr_slots(mbr: Mbr) -> tuple[list[_Slot], list[_Slot]]:
    slots = [_Slot() for _ in range(MBR_PRIMARY + MBR_MAX_LOGICAL)]
    for part in mbr.partitions:
        index = part.index
        if not 0 <= index < len(slots):
            raise TaskError(f"partition must be numbered 0 through {len(slots) - 1}")
        if part.type is None or not 0 <= part.type <= 0xFF:
            raise TaskError(f"partition {index}'s type must be between 0 and 255")
        if part.block_offset is None:
            raise TaskError(f"partition {index}'s block_offset is required")
        if not 0 <= part.block_offset < _U32:
            raise TaskError(
                f"partition {index}'s block_offset must be positive and less than 2^32 - 1"
            )
        slot = slots[index]
        slot.type, slot.offset = part.type, part.block_offset
        count = part.block_count
        if part.type in EXTENDED_TYPES:
            if index != 3:
                raise TaskError("only partition 3 may be specified as the extended partition")
            slot.expand = True
            slot.count = 1 if count is None or count >= _INT32_MAX else count
        else:
            if count is None or not 0 <= count < _INT32_MAX:
                raise TaskError(
                    f"partition {index}'s block-count must be specified and less than 2^31 - 1"
                )
            slot.boot, slot.expand, slot.count = part.boot, part.expand, count
    logical: list[_Slot] = []
    for slot in slots[MBR_PRIMARY:]:
        if slot.type == 0:
            break
        logical.append(slot)
    if any(s.type for s in slots[MBR_PRIMARY:]) and slots[3].type not in EXTENDED_TYPES:
        raise TaskError(
            "to use more than 4 partitions with MBR, partition 3 must have extended partition type 0xf or 0x5"
        )
    return slots[:MBR_PRIMARY], logical


def _check_overlaps(slots: list[_Slot]) -> None:
    expanding = False
    for i, slot in enumerate(slots):
        if slot.type == 0 or (slot.count == 0 and not slot.expand):
            continue
        if expanding:
            raise TaskError('a partition can\'t be specified after the one with "expand = true"')
        expanding = slot.expand
        for j, other in enumerate(slots):
            if j == i or other.type == 0 or other.count == 0:
                continue
            if other.offset <= slot.offset < other.end or other.offset < slot.end <= other.end:
                raise TaskError(
                    f"partitions {i} (blocks {slot.offset} to {slot.end}) and "
                    f"{j} (blocks {other.offset} to {other.end}) overlap"
                )


def _expanded(slot: _Slot, num_blocks: int) -> _Slot:
    count = num_blocks - slot.offset if slot.expand and num_blocks > slot.end else slot.count
    return _Slot(slot.type, slot.boot, slot.offset, count, False)


def _bootstrap(mbr: Mbr) -> bytes:
    if mbr.include_osip:
        raise TaskError("mbr include-osip is not supported")
    if mbr.bootstrap_code is None:
        return bytes(440)
    try:
        code = bytes.fromhex(mbr.bootstrap_code)
    except ValueError:
        raise TaskError("Invalid character in hex string") from None
    if len(code) != 440:
        raise TaskError("bootstrap-code should be exactly 440 bytes")
    return code


def mbr_blocks(mbr: Mbr, destination_blocks: int) -> Blocks:
    """The MBR at block 0 and, with an extended partition, one EBR per logical partition."""
    primary, logical = _mbr_slots(mbr)
    if not mbr.partitions:
        raise TaskError("empty partition table?")
    _check_overlaps(primary)
    num_blocks = max([destination_blocks] + [s.end for s in primary + logical])
    record = bytearray(_bootstrap(mbr) + struct.pack("<IH", mbr.signature & _U32, 0))
    for slot in primary:
        record += _mbr_entry(_expanded(slot, num_blocks))
    record += b"\x55\xaa"
    blocks: Blocks = [(0, bytes(record))]
    extended_start = primary[3].offset
    for i, slot in enumerate(logical):
        block = extended_start + i
        data = _expanded(slot, num_blocks)
        data.boot, data.offset = False, (slot.offset - block) & _U32
        link = _Slot(0x0F, False, i + 1, 1) if i + 1 < len(logical) else _Slot()
        ebr = bytes(446) + _mbr_entry(data) + (_mbr_entry(link) if link.type else bytes(16))
        blocks.append((block, ebr + bytes(32) + b"\x55\xaa"))
    return blocks


def mbr_partition_offset(block0: bytes, index: int) -> int:
    """The start block of primary partition ``index`` in an MBR (block 0 of a device)."""
    if len(block0) < BLOCK_SIZE or block0[510:512] != b"\x55\xaa":
        raise TaskError("MBR signature missing")
    if not 0 <= index < MBR_PRIMARY:
        raise TaskError("partition must be numbered 0 through 3")
    (offset,) = struct.unpack_from("<I", block0, 446 + 16 * index + 8)
    return int(offset)


# --------------------------------------------------------------------------- GPT


def _guid(text: str | None, what: str) -> bytes:
    try:
        return uuid.UUID(text or "").bytes_le
    except ValueError:
        raise TaskError(what) from None


def _gpt_entries(gpt: Gpt, num_blocks: int) -> bytes:
    entries = bytearray(GPT_ENTRIES * GPT_ENTRY_SIZE)
    seen: set[int] = set()
    for part in gpt.partitions:
        i = part.index
        if not 0 <= i < GPT_ENTRIES or i in seen:
            raise TaskError(f"invalid or duplicate partition number found for {i}")
        seen.add(i)
        struct.pack_into("128s", entries, i * GPT_ENTRY_SIZE, _gpt_entry(part, num_blocks))
    return bytes(entries)


def _gpt_entry(part: GptPartition, num_blocks: int) -> bytes:
    i = part.index
    type_guid = _guid(part.type, f"partition {i}'s type must set to a UUID")
    guid = _guid(part.guid, f"partition {i} must have a valid guid")
    if part.block_offset is None or not 0 <= part.block_offset < _U32:
        raise TaskError(f"partition {i}'s block_offset is required")
    count = part.block_count
    if count is None or not 0 <= count < _INT32_MAX:
        raise TaskError(f"partition {i}'s block-count must be specified and less than 2^31 - 1")
    offset = part.block_offset
    if part.expand and num_blocks > offset + count + GPT_SIZE_BLOCKS:
        count = num_blocks - GPT_SIZE_BLOCKS - 1 - offset
    flags = part.flags | (1 << 2 if part.boot else 0)
    name = part.name[:36].encode("utf-16-le")
    return type_guid + guid + struct.pack("<QQQ72s", offset, offset + count - 1, flags, name)


def _gpt_header(
    disk_guid: bytes, current: int, backup: int, entries_lba: int, num_blocks: int, entries_crc: int
) -> bytes:
    fields = struct.pack(
        "<8sIIIIQQQQ16sQIII",
        b"EFI PART",
        0x00010000,
        92,
        0,
        0,
        current,
        backup,
        1 + GPT_SIZE_BLOCKS,
        num_blocks - GPT_SIZE_BLOCKS - 1,
        disk_guid,
        entries_lba,
        GPT_ENTRIES,
        GPT_ENTRY_SIZE,
        entries_crc,
    )
    header = bytearray(fields + bytes(BLOCK_SIZE - len(fields)))
    struct.pack_into("<I", header, 16, zlib.crc32(fields))
    return bytes(header)


def _protective_mbr(num_blocks: int) -> bytes:
    record = bytearray(BLOCK_SIZE)
    record[446 + 2] = 0x02
    record[446 + 4] = 0xEE
    record[446 + 5 : 446 + 8] = b"\xff\xff\xff"
    struct.pack_into("<II", record, 446 + 8, 1, min(num_blocks - 1, _U32))
    record[510:512] = b"\x55\xaa"
    return bytes(record)


def _check_gpt_overlaps(gpt: Gpt) -> None:
    slots = [
        _Slot(1, False, p.block_offset or 0, p.block_count or 0, p.expand)
        for p in sorted(gpt.partitions, key=lambda p: p.index)
    ]
    _check_overlaps(slots)


def gpt_blocks(gpt: Gpt, destination_blocks: int) -> Blocks:
    """Protective MBR + primary GPT at block 0, backup GPT in the last 33 blocks."""
    if not gpt.partitions:
        raise TaskError("empty partition table?")
    disk_guid = _guid(gpt.guid, "GPT must have a valid disk guid")
    num_blocks = destination_blocks
    if num_blocks == 0:
        ends = [(p.block_offset or 0) + (p.block_count or 0) for p in gpt.partitions]
        num_blocks = max(ends) + GPT_SIZE_BLOCKS + 1
    entries = _gpt_entries(gpt, num_blocks)
    _check_gpt_overlaps(gpt)
    crc = zlib.crc32(entries)
    backup_entries = num_blocks - GPT_SIZE_BLOCKS
    primary = (
        _protective_mbr(num_blocks)
        + _gpt_header(disk_guid, 1, num_blocks - 1, 2, num_blocks, crc)
        + entries
    )
    backup = entries + _gpt_header(disk_guid, num_blocks - 1, 1, backup_entries, num_blocks, crc)
    return [(0, primary), (backup_entries, backup)]
