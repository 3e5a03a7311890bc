"""Ed25519 verification and BLAKE2b-256 against the golden archives."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest
from backend_support import Vectors, vector_ids


@pytest.mark.parametrize("vector_id", vector_ids())
def test_signatures_verify_with_the_signing_key_only(
    backend: Any, vectors: Vectors, vector_id: str
) -> None:
    vector = vectors.vector(vector_id)
    with zipfile.ZipFile(io.BytesIO(vectors.fw(vector_id))) as archive:
        names = archive.namelist()
        meta_conf = archive.read("meta.conf")
        signature = archive.read("meta.conf.ed25519") if "meta.conf.ed25519" in names else None
    if vector["signed_with_key"] is None:
        assert signature is None
        return
    assert signature is not None
    for key in ("a", "b"):
        expected = key == vector["signed_with_key"]
        assert backend.verify_ed25519(signature, meta_conf, vectors.public_key(key)) is expected
    signer = vectors.public_key(vector["signed_with_key"])
    assert backend.verify_ed25519(signature, meta_conf + b"\n", signer) is False
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert backend.verify_ed25519(flipped, meta_conf, signer) is False
    assert backend.verify_ed25519(signature[:63], meta_conf, signer) is False
    assert backend.verify_ed25519(signature, meta_conf, signer[:31]) is False


def test_blake2b_256_matches_meta_conf(backend: Any, vectors: Vectors) -> None:
    with zipfile.ZipFile(io.BytesIO(vectors.fw("01_minimal_raw"))) as archive:
        payload = archive.read("data/payload.bin")
    digest = backend.blake2b_256(payload)
    assert digest == vectors.resources("01_minimal_raw")["payload.bin"].blake2b
    assert backend.blake2b_256(payload[:-1]) != digest
