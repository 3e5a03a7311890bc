"""resign_archive (fwup -S) on the golden archives."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nacl.exceptions
import nacl.signing
import pytest

from nhlink.errors import ArchiveError
from nhlink.fwup import keys
from nhlink.fwup.create import resign_archive
from tests.helpers.vectors import vectors_dir


def _key(name: str) -> bytes:
    return keys.read_private_key_file(vectors_dir() / f"keys/testkey-{name}.priv")


def _public(name: str) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(
        keys.read_public_key_file(vectors_dir() / f"keys/testkey-{name}.pub")
    )


ENV = {"SOURCE_DATE_EPOCH": "1700000000"}


@pytest.mark.parametrize("vector_id", ["01_minimal_raw", "02_ab_uboot", "10_zip64"])
def test_resign_with_other_key_keeps_meta_conf_and_entries(tmp_path: Path, vector_id: str) -> None:
    golden = vectors_dir() / "fw" / f"{vector_id}.fw"
    output = tmp_path / "resigned.fw"
    result = resign_archive(golden, output, _key("b"), environ=ENV)

    with zipfile.ZipFile(golden) as before, zipfile.ZipFile(output) as after:
        assert after.testzip() is None
        meta = after.read("meta.conf")
        assert meta == before.read("meta.conf") == result.meta_conf
        signature = after.read("meta.conf.ed25519")
        assert signature == result.signature
        _public("b").verify(meta, signature)
        with pytest.raises(nacl.exceptions.BadSignatureError):
            _public("a").verify(meta, signature)
        assert after.namelist() == before.namelist()
        assert after.namelist()[:2] == ["meta.conf.ed25519", "meta.conf"]
        for name in before.namelist()[2:]:
            assert after.read(name) == before.read(name)


def test_resign_with_same_key_reproduces_golden_signature(tmp_path: Path) -> None:
    golden = vectors_dir() / "fw" / "02_ab_uboot.fw"
    output = tmp_path / "resigned.fw"
    resign_archive(golden, output, _key("a"), environ=ENV)
    with zipfile.ZipFile(golden) as before, zipfile.ZipFile(output) as after:
        assert after.read("meta.conf.ed25519") == before.read("meta.conf.ed25519")


def test_resign_unsigned_archive_adds_signature(tmp_path: Path) -> None:
    golden = vectors_dir() / "fw" / "06_unsigned.fw"
    output = tmp_path / "signed.fw"
    resign_archive(golden, output, _key("a"), environ=ENV)
    with zipfile.ZipFile(golden) as before, zipfile.ZipFile(output) as after:
        assert after.namelist() == ["meta.conf.ed25519", *before.namelist()]
        _public("a").verify(after.read("meta.conf"), after.read("meta.conf.ed25519"))
        assert after.read("data/data.bin") == before.read("data/data.bin")


def test_resign_rejects_archive_without_meta_conf_first(tmp_path: Path) -> None:
    bad = tmp_path / "bad.fw"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("data/x.bin", b"x" * 100)
        archive.writestr("meta.conf", b"meta-product=x\n")
    with pytest.raises(ArchiveError, match=r"meta\.conf must be at the beginning"):
        resign_archive(bad, tmp_path / "out.fw", _key("a"))
    assert not (tmp_path / "out.fw").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fw"]


def test_resign_rejects_non_zip(tmp_path: Path) -> None:
    bad = tmp_path / "bad.fw"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ArchiveError, match="Cannot open archive"):
        resign_archive(bad, tmp_path / "out.fw", _key("a"))
