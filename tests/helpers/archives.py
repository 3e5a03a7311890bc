"""Build small fwup-style archives for tests, including deliberately broken ones.

Uses Python's zipfile (sizes in local headers, no data descriptors) and signs
meta.conf with a test key through PyNaCl.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from nacl.signing import SigningKey

from tests.helpers.vectors import vectors_dir


def test_signing_key(name: str = "a") -> SigningKey:
    raw = base64.b64decode((vectors_dir() / "keys" / f"testkey-{name}.priv").read_text())
    return SigningKey(raw[:32])


def blake2b_hex(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def resource_block(name: str, data: bytes, length: int | None = None) -> str:
    return (
        f'file-resource "{name}" {{\n'
        f"length={len(data) if length is None else length}\n"
        f"blake2b-256={blake2b_hex(data)}\n}}\n"
    )


def raw_write_meta(resources: dict[str, bytes], offset_blocks: int = 2048, extra: str = "") -> str:
    """A meta.conf with one raw_write task ``complete`` writing each resource in turn."""
    text = 'meta-product="test"\nmeta-version=1.0.0\n'
    for name, data in resources.items():
        text += resource_block(name, data)
    text += 'task "complete" {\n' + extra
    block = offset_blocks
    for name, data in resources.items():
        text += f'on-resource "{name}" {{\nfunlist={{2,raw_write,{block}}}\n}}\n'
        block += (len(data) + 511) // 512
    text += "}\n"
    return text


@dataclass
class Entry:
    name: str
    data: bytes
    method: int = zipfile.ZIP_DEFLATED
    flag_bits: int = 0


@dataclass
class ArchiveSpec:
    meta_conf: bytes
    resources: list[Entry] = field(default_factory=list)
    sign_with: str | None = "a"
    signature: bytes | None = None  # overrides the computed signature
    leading: list[Entry] = field(default_factory=list)  # entries before the signature

    def build(self) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            for entry in self.leading:
                _write(archive, entry)
            if self.signature is not None or self.sign_with is not None:
                signature = self.signature
                if signature is None:
                    assert self.sign_with is not None
                    signature = test_signing_key(self.sign_with).sign(self.meta_conf).signature
                _write(archive, Entry("meta.conf.ed25519", signature, zipfile.ZIP_STORED))
            _write(archive, Entry("meta.conf", self.meta_conf))
            for entry in self.resources:
                _write(archive, entry)
        return out.getvalue()


def _write(archive: zipfile.ZipFile, entry: Entry) -> None:
    info = zipfile.ZipInfo(entry.name, date_time=(2023, 11, 14, 22, 13, 20))
    info.compress_type = entry.method
    info.flag_bits |= entry.flag_bits
    archive.writestr(info, entry.data)


def simple_archive(
    payload: bytes, *, name: str = "payload.bin", offset_blocks: int = 2048
) -> bytes:
    meta = raw_write_meta({name: payload}, offset_blocks).encode()
    return ArchiveSpec(meta, [Entry(f"data/{name}", payload)]).build()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
