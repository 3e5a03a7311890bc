"""Names in FAT directories: 8.3 short names (with the NT lower-case flags) and VFAT long names."""

from __future__ import annotations

from dataclasses import dataclass

from nhlink.errors import TaskError

LFN_CHARS = 13
NT_LOWER_BODY, NT_LOWER_EXT = 0x08, 0x10
_INVALID = set('"*/:<>?\\|\x7f') | {chr(c) for c in range(0x20)}
_SFN_REPLACED = set("+,;=[]")


@dataclass(frozen=True, slots=True)
class ShortName:
    raw: bytes  # 11 bytes, space padded
    nt_flags: int
    needs_lfn: bool
    lossy: bool  # the 8.3 form lost characters: it gets a numeric tail ``~N``


def checksum(raw: bytes) -> int:
    """The VFAT checksum of an 11-byte short name, stored in each long-name entry."""
    total = 0
    for byte in raw:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def split_path(path: str) -> list[str]:
    parts = [part for part in path.replace("\\", "/").split("/") if part]
    for part in parts:
        check_name(part)
    return parts


def check_name(name: str) -> None:
    if name in (".", "..") or not name.rstrip(". ") or len(name) > 255:
        raise TaskError(f"FAT: invalid file name '{name}'")
    if any(char in _INVALID for char in name):
        raise TaskError(f"FAT: invalid file name '{name}'")


def _sfn_char(char: str) -> tuple[bytes, bool]:
    """The short-name byte for ``char`` and whether the mapping lost information."""
    if char in _SFN_REPLACED or char == " " or ord(char) > 0x7E:
        return (b"" if char == " " else b"_"), True
    return char.upper().encode("ascii"), False


def _case(part: str) -> int:
    """0 = no letters, 1 = all lower, 2 = all upper, 3 = mixed."""
    lower = any(c.islower() for c in part)
    upper = any(c.isupper() for c in part)
    return (1 if lower else 0) | (2 if upper else 0) if lower or upper else 0


def short_name(name: str) -> ShortName:
    """The basis short name of ``name`` (before any ``~N`` tail) and whether it needs an LFN."""
    stripped = name.lstrip(".").rstrip(". ")
    lossy = stripped != name.rstrip(". ") or name != name.rstrip(". ")
    dot = stripped.rfind(".")
    body, ext = (stripped[:dot], stripped[dot + 1 :]) if dot > 0 else (stripped, "")
    body_bytes, ext_bytes = bytearray(), bytearray()
    for target, part, limit in ((body_bytes, body.replace(".", ""), 8), (ext_bytes, ext, 3)):
        if part != (body if target is body_bytes else ext):
            lossy = True
        for char in part:
            mapped, lost = _sfn_char(char)
            lossy |= lost
            if len(target) + len(mapped) > limit:
                lossy = True
                break
            target += mapped
    if not body_bytes:
        body_bytes, lossy = bytearray(b"_"), True
    raw = bytes(body_bytes.ljust(8, b" ") + ext_bytes.ljust(3, b" "))
    if raw[0] == 0xE5:
        raw = b"\x05" + raw[1:]
    body_case, ext_case = _case(body), _case(ext)
    if lossy or body_case == 3 or ext_case == 3:
        return ShortName(raw, 0, True, lossy)
    flags = (NT_LOWER_BODY if body_case == 1 else 0) | (NT_LOWER_EXT if ext_case == 1 else 0)
    return ShortName(raw, flags, False, False)


def numbered(raw: bytes, number: int) -> bytes:
    """``raw`` with the numeric tail ``~number`` (BODY~N.EXT)."""
    tail = f"~{number}".encode("ascii")
    body = raw[:8].rstrip(b" ")
    keep = min(len(body), 8 - len(tail))
    return (body[:keep] + tail).ljust(8, b" ") + raw[8:]


def lfn_entries(name: str, sum_: int) -> list[bytes]:
    """The long-name directory entries for ``name``, in on-disk order (last part first)."""
    units = name.encode("utf-16-le")
    chars = [units[i : i + 2] for i in range(0, len(units), 2)]
    count = (len(chars) + LFN_CHARS - 1) // LFN_CHARS
    if len(chars) % LFN_CHARS:
        chars.append(b"\x00\x00")
    chars += [b"\xff\xff"] * (count * LFN_CHARS - len(chars))
    entries = []
    for index in range(count, 0, -1):
        part = chars[(index - 1) * LFN_CHARS : index * LFN_CHARS]
        order = index | (0x40 if index == count else 0)
        entries.append(
            bytes([order])
            + b"".join(part[0:5])
            + bytes([0x0F, 0, sum_])
            + b"".join(part[5:11])
            + b"\x00\x00"
            + b"".join(part[11:13])
        )
    return entries


def lfn_part(entry: bytes | bytearray) -> str:
    data = entry[1:11] + entry[14:26] + entry[28:32]
    text = data.decode("utf-16-le", errors="replace")
    end = text.find("\x00")
    return text if end < 0 else text[:end]


def display_short(raw: bytes, nt_flags: int) -> str:
    body = raw[:8].rstrip(b" ").decode("latin-1")
    ext = raw[8:11].rstrip(b" ").decode("latin-1")
    if body.startswith("\x05"):
        body = "\xe5" + body[1:]
    if nt_flags & NT_LOWER_BODY:
        body = body.lower()
    if nt_flags & NT_LOWER_EXT:
        ext = ext.lower()
    return f"{body}.{ext}" if ext else body


def same_name(a: str, b: str) -> bool:
    return a.upper() == b.upper()
