"""FWUP_META_UUID, the nickname and the -m metadata formatting."""

from __future__ import annotations

import zipfile
from typing import Any

import pytest

from nhlink.fwup.identity import (
    NICKNAME_WORDS,
    archive_metadata,
    creation_date,
    format_metadata,
    meta_nickname,
    meta_uuid,
)
from tests.helpers import vectors as v

VECTORS = v.manifest()["vectors"]


def _meta_conf(entry: dict[str, Any]) -> bytes:
    return zipfile.ZipFile(v.vectors_dir() / entry["fw"]).read("meta.conf")


@pytest.mark.parametrize("entry", VECTORS, ids=[e["id"] for e in VECTORS])
def test_uuid_matches_fwup(entry: dict[str, Any]) -> None:
    assert meta_uuid(_meta_conf(entry)) == entry["metadata"]["meta-uuid"]


@pytest.mark.parametrize("entry", VECTORS, ids=[e["id"] for e in VECTORS])
def test_nickname_matches_fwup(entry: dict[str, Any]) -> None:
    if len(NICKNAME_WORDS) != 256:
        assert meta_nickname(_meta_conf(entry)) is None
        pytest.skip("fwup's nickname word table is not available yet")
    assert meta_nickname(_meta_conf(entry)) == entry["metadata"]["meta-nickname"]


def test_uuid_depends_on_every_byte() -> None:
    assert meta_uuid(b"meta-product=a\n") != meta_uuid(b"meta-product=b\n")
    assert meta_uuid(b"x")[14] == "5"  # version nibble


def test_creation_date_from_zip_mtime() -> None:
    assert creation_date(1700000000) == "2023-11-14T22:13:20Z"
    assert creation_date(315532800) == "1980-01-01T00:00:00Z"


def test_metadata_order_and_escaping() -> None:
    declared = {"meta-version": "1", "meta-product": 'say "hi" \\o/', "meta-vendor-x": "y"}
    metadata = archive_metadata(b"meta.conf bytes", declared, 1700000000)
    keys = list(metadata)
    assert keys[:4] == ["meta-product", "meta-version", "meta-creation-date", "meta-uuid"]
    assert keys[-1] == "meta-vendor-x"
    text = format_metadata(metadata)
    assert text.splitlines()[0] == 'meta-product="say \\"hi\\" \\\\o/"'
    assert text.endswith("\n")
