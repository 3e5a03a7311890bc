"""What identifies an archive: FWUP_META_UUID, the nickname and the fwup ``-m`` metadata.

The UUID is fwup's (spec 2.2): BLAKE2b-256 over fwup's namespace UUID followed
by the exact meta.conf bytes, first 16 bytes, version nibble 5, no variant
bits. It survives re-signing and recompression.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping

# fwup's namespace UUID for meta-uuid (interop constant).
FWUP_UUID_NAMESPACE = bytes.fromhex("2053dffbd51e4310b93b956da89f9f34")

# fwup's nickname table (256 words, indexed by UUID bytes 0 and 1) is interop
# data from fwup's src/util.c (fwup >= 1.16, PR #270). It could not be
# obtained while writing this module, so nicknames are unavailable (None)
# until the table is filled in here; see meta_nickname().
NICKNAME_WORDS: tuple[str, ...] = ()

# Order of ``fwup -m`` output lines; keys not set in meta.conf are left out.
METADATA_ORDER = (
    "meta-product",
    "meta-description",
    "meta-version",
    "meta-author",
    "meta-platform",
    "meta-architecture",
    "meta-vcs-identifier",
    "meta-misc",
    "meta-creation-date",
    "meta-fwup-version",
    "meta-uuid",
    "meta-nickname",
)


def meta_uuid_bytes(meta_conf: bytes) -> bytes:
    digest = bytearray(
        hashlib.blake2b(FWUP_UUID_NAMESPACE + meta_conf, digest_size=32).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50
    return bytes(digest)


def meta_uuid(meta_conf: bytes) -> str:
    """FWUP_META_UUID of an archive whose meta.conf is ``meta_conf``."""
    h = meta_uuid_bytes(meta_conf).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def meta_nickname(meta_conf: bytes) -> str | None:
    """FWUP_META_NICKNAME (two words chosen by UUID bytes 0 and 1), or None without the table."""
    if len(NICKNAME_WORDS) != 256:
        return None
    uuid = meta_uuid_bytes(meta_conf)
    return f"{NICKNAME_WORDS[uuid[0]]}-{NICKNAME_WORDS[uuid[1]]}"


def creation_date(mtime: int) -> str:
    """meta-creation-date from meta.conf's zip modification time (seconds, UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))


def archive_metadata(
    meta_conf: bytes, declared: Mapping[str, str], mtime: int | None
) -> dict[str, str]:
    """The metadata ``fwup -m`` prints: meta.conf's meta-* keys plus the computed ones.

    ``mtime`` (meta.conf's zip mtime) gives meta-creation-date; without it a
    meta-creation-date written in meta.conf by older fwup versions is used.
    """
    values = dict(declared)
    if mtime is not None:
        values["meta-creation-date"] = creation_date(mtime)
    values["meta-uuid"] = meta_uuid(meta_conf)
    nickname = meta_nickname(meta_conf)
    if nickname is not None:
        values["meta-nickname"] = nickname
    ordered = {key: values[key] for key in METADATA_ORDER if key in values}
    ordered.update((key, value) for key, value in values.items() if key not in ordered)
    return ordered


def format_metadata(metadata: Mapping[str, str]) -> str:
    """``key="value"`` lines as fwup prints them (``"`` and ``\\`` escaped)."""
    lines = []
    for key, value in metadata.items():
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{key}="{escaped}"\n')
    return "".join(lines)
