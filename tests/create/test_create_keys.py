"""Key files as fwup -g writes them, and the loaders."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import nacl.exceptions
import nacl.signing
import pytest

from nhlink.errors import KeyFileError
from nhlink.fwup import keys
from tests.helpers.vectors import vectors_dir


def test_generate_keypair_writes_fwup_key_files(tmp_path: Path) -> None:
    public_path, private_path = keys.generate_keypair(tmp_path / "fwup-key")
    assert public_path == tmp_path / "fwup-key.pub"
    assert private_path == tmp_path / "fwup-key.priv"

    public_text = public_path.read_bytes()
    private_text = private_path.read_bytes()
    assert len(public_text) == 44 and len(private_text) == 88
    assert not public_text.endswith(b"\n") and not private_text.endswith(b"\n")
    for path in (public_path, private_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    public_key = base64.b64decode(public_text, validate=True)
    private_key = base64.b64decode(private_text, validate=True)
    assert private_key[32:] == public_key
    assert bytes(nacl.signing.SigningKey(private_key[:32]).verify_key) == public_key
    assert keys.read_public_key_file(public_path) == public_key
    assert keys.read_private_key_file(private_path) == private_key


def test_generate_keypair_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        public_path, private_path = keys.generate_keypair(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600


@pytest.mark.parametrize("existing", [".pub", ".priv"])
def test_generate_keypair_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / f"fwup-key{existing}").write_text("keep me")
    with pytest.raises(KeyFileError, match="already exists"):
        keys.generate_keypair(tmp_path / "fwup-key")
    assert (tmp_path / f"fwup-key{existing}").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"fwup-key{existing}"]


def test_golden_keys_load_and_match() -> None:
    for name in ("a", "b"):
        public_key = keys.read_public_key_file(vectors_dir() / f"keys/testkey-{name}.pub")
        private_key = keys.read_private_key_file(vectors_dir() / f"keys/testkey-{name}.priv")
        assert len(public_key) == 32 and len(private_key) == 64
        assert keys.public_key_of(private_key) == public_key
        text = (vectors_dir() / f"keys/testkey-{name}.pub").read_text()
        assert keys.load_public_key(text) == public_key
        assert keys.encode_key(public_key) == text


def test_raw_key_files_are_accepted(tmp_path: Path) -> None:
    signing_key = nacl.signing.SigningKey.generate()
    private_key = bytes(signing_key) + bytes(signing_key.verify_key)
    (tmp_path / "raw.pub").write_bytes(bytes(signing_key.verify_key))
    (tmp_path / "raw.priv").write_bytes(private_key)
    assert keys.read_public_key_file(tmp_path / "raw.pub") == bytes(signing_key.verify_key)
    assert keys.read_private_key_file(tmp_path / "raw.priv") == private_key


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not base64 at all!", "Invalid base64"),
        (base64.b64encode(bytes(31)), "Expecting a 32-byte public key"),
        (base64.b64encode(bytes(64)), "Expecting a 32-byte public key"),
        (b"", "Expecting a 32-byte public key"),
    ],
)
def test_bad_public_key_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pub"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=message):
        keys.read_public_key_file(path)


def test_bad_private_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="Expecting a 64-byte private key"):
        keys.load_private_key(base64.b64encode(bytes(32)).decode())
    with pytest.raises(KeyFileError, match="Invalid base64"):
        keys.load_private_key("####")
    mismatched = bytes(nacl.signing.SigningKey.generate()) + bytes(32)
    with pytest.raises(KeyFileError, match="does not match its seed"):
        keys.load_private_key(base64.b64encode(mismatched).decode())
    with pytest.raises(KeyFileError, match="Error reading private key file"):
        keys.read_private_key_file(tmp_path / "missing.priv")


def test_signature_is_deterministic_and_verifies() -> None:
    private_key = keys.read_private_key_file(vectors_dir() / "keys/testkey-a.priv")
    public_key = keys.read_public_key_file(vectors_dir() / "keys/testkey-a.pub")
    first = keys.sign(b"meta.conf bytes", private_key)
    assert first == keys.sign(b"meta.conf bytes", private_key[:32])
    assert len(first) == 64
    nacl.signing.VerifyKey(public_key).verify(b"meta.conf bytes", first)
    with pytest.raises(nacl.exceptions.BadSignatureError):
        nacl.signing.VerifyKey(public_key).verify(b"other bytes", first)
