"""create_archive against the golden archives made by fwup 1.16.0."""

from __future__ import annotations

import hashlib
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from nhlink.fwup import keys
from nhlink.fwup.create import create_archive
from tests.create.vector_resources import seeded_bytes, spec_entries
from tests.helpers.vectors import vectors_dir

VECTORS = spec_entries()


def _signing_key(entry: dict[str, Any]) -> bytes | None:
    if entry["sign"] is None:
        return None
    return keys.read_private_key_file(vectors_dir() / f"keys/testkey-{entry['sign']}.priv")


def _golden(entry: dict[str, Any]) -> Path:
    return vectors_dir() / "fw" / f"{entry['id']}.fw"


def _create(
    entry: dict[str, Any], tmp_path: Path, env: dict[str, str], sparse_layout_ok: bool
) -> Path:
    if not sparse_layout_ok and any("layout" in r for r in entry["resources"]):
        pytest.skip("the filesystem under the test directory does not keep holes")
    output = tmp_path / f"{entry['id']}.fw"
    create_archive(
        vectors_dir() / entry["conf"], output, signing_key=_signing_key(entry), environ=env
    )
    return output


def _resource_data(entry: dict[str, Any], resource: dict[str, Any]) -> bytes:
    if "text" in resource:
        return str(resource["text"]).encode()
    if "layout" in resource:
        total = sum(int(n) for _, n in resource["layout"])
        content = seeded_bytes(resource["seed"], total)
        data, offset = bytearray(), 0
        for kind, length in resource["layout"]:
            if kind == "data":
                data += content[offset : offset + int(length)]
            offset += int(length)
        return bytes(data)
    return seeded_bytes(resource["seed"], int(resource["size"]))


def test_every_conf_has_a_vector() -> None:
    confs = {path.name for path in (vectors_dir() / "conf").glob("*.conf")}
    covered = {Path(entry["conf"]).name for entry in VECTORS}
    assert confs and confs <= covered


@pytest.mark.parametrize("entry", VECTORS, ids=[entry["id"] for entry in VECTORS])
def test_meta_conf_and_signature_match_fwup(
    entry: dict[str, Any], tmp_path: Path, create_env: dict[str, str], sparse_layout_ok: bool
) -> None:
    output = _create(entry, tmp_path, create_env, sparse_layout_ok)
    with zipfile.ZipFile(_golden(entry)) as golden, zipfile.ZipFile(output) as created:
        assert created.read("meta.conf") == golden.read("meta.conf")
        if entry["sign"] is None:
            assert "meta.conf.ed25519" not in created.namelist()
        else:
            assert created.read("meta.conf.ed25519") == golden.read("meta.conf.ed25519")


@pytest.mark.parametrize("entry", VECTORS, ids=[entry["id"] for entry in VECTORS])
def test_created_archive_is_a_valid_zip_with_fwups_entries(
    entry: dict[str, Any], tmp_path: Path, create_env: dict[str, str], sparse_layout_ok: bool
) -> None:
    output = _create(entry, tmp_path, create_env, sparse_layout_ok)
    with zipfile.ZipFile(output) as created, zipfile.ZipFile(_golden(entry)) as golden:
        assert created.testzip() is None  # every CRC-32 and size checks out
        names = created.namelist()
        assert names == golden.namelist()
        assert names[0] == ("meta.conf" if entry["sign"] is None else "meta.conf.ed25519")
        for info in created.infolist():
            expected = 0 if info.filename == "meta.conf.ed25519" else 8
            assert info.compress_type == expected
            assert info.flag_bits & 0x8
        archived = [r for r in entry["resources"] if r.get("archive", True)]
        assert len(names) - (1 if entry["sign"] is None else 2) == len(archived)
        for name, resource in zip(names[-len(archived) :], archived, strict=True):
            data = created.read(name)
            assert data == _resource_data(entry, resource)
            if entry.get("post", {}).get("kind") != "flip_byte":
                assert data == golden.read(name)


def _same_zlib_as_fwup(golden: Path) -> bool:
    """Whether this zlib compresses the golden meta.conf to the golden's bytes."""
    with zipfile.ZipFile(golden) as archive:
        info = archive.getinfo("meta.conf")
        meta = archive.read(info)
    raw = golden.read_bytes()
    name_length, extra_length = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + name_length + extra_length
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15, 8)
    return raw[start : start + info.compress_size] == deflater.compress(meta) + deflater.flush()


UNCHANGED = [entry for entry in VECTORS if "post" not in entry]


@pytest.mark.parametrize("entry", UNCHANGED, ids=[entry["id"] for entry in UNCHANGED])
def test_whole_archive_is_byte_identical(
    entry: dict[str, Any], tmp_path: Path, create_env: dict[str, str], sparse_layout_ok: bool
) -> None:
    golden = _golden(entry)
    if not _same_zlib_as_fwup(golden):
        pytest.skip(f"zlib {zlib.ZLIB_RUNTIME_VERSION} deflates differently from fwup's zlib")
    output = _create(entry, tmp_path, create_env, sparse_layout_ok)
    created = output.read_bytes()
    expected = golden.read_bytes()
    assert hashlib.sha256(created).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_lower_compression_level_keeps_meta_conf(
    tmp_path: Path, create_env: dict[str, str]
) -> None:
    entry = next(e for e in VECTORS if e["id"] == "02_ab_uboot")
    fast = tmp_path / "fast.fw"
    create_archive(
        vectors_dir() / entry["conf"],
        fast,
        signing_key=_signing_key(entry),
        environ=create_env,
        level=1,
    )
    best = _create(entry, tmp_path, create_env, True)
    with zipfile.ZipFile(fast) as f, zipfile.ZipFile(best) as b:
        assert f.testzip() is None
        assert f.read("meta.conf") == b.read("meta.conf")
        assert f.read("meta.conf.ed25519") == b.read("meta.conf.ed25519")
        assert [i.compress_size for i in f.infolist()] != [i.compress_size for i in b.infolist()]
        for name in f.namelist():
            assert f.read(name) == b.read(name)
