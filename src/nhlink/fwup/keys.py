"""Ed25519 key files exactly as fwup writes and reads them.

fwup stores keys as standard base64 (with ``=`` padding, no trailing
newline): ``<prefix>.pub`` holds the raw 32-byte public key (44 characters),
``<prefix>.priv`` the 64-byte NaCl secret key, i.e. the 32-byte seed followed
by the public key (88 characters). Both files are created with mode 0600 and
never overwritten. The loaders also accept files holding exactly the raw 32
(public) or 64 (private) bytes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path

import nacl.signing

from nhlink.errors import KeyFileError

PUBLIC_KEY_SIZE = 32
SEED_SIZE = 32
PRIVATE_KEY_SIZE = 64
SIGNATURE_SIZE = 64
DEFAULT_KEY_PREFIX = "fwup-key"

log = logging.getLogger("nhlink.fwup.keys")

StrPath = str | os.PathLike[str]


def encode_key(key: bytes) -> str:
    """Return *key* as fwup writes it: base64 with padding, no newline."""
    return base64.b64encode(key).decode("ascii")


def public_key_of(private_key: bytes) -> bytes:
    """Return the 32-byte public key that belongs to a 32-byte seed or 64-byte key."""
    return bytes(_signing_key(private_key).verify_key)


def generate_keypair(prefix: StrPath = DEFAULT_KEY_PREFIX) -> tuple[Path, Path]:
    """Create ``<prefix>.pub`` and ``<prefix>.priv`` like ``fwup -g``.

    Returns the two paths (public, private). Refuses to overwrite either file.
    """
    base = os.fspath(prefix)
    public_path = Path(base + ".pub")
    private_path = Path(base + ".priv")
    for path in (public_path, private_path):
        if path.exists() or path.is_symlink():
            raise KeyFileError(f"Key file '{path}' already exists; not overwriting it")

    signing_key = nacl.signing.SigningKey.generate()
    public_key = bytes(signing_key.verify_key)
    private_key = bytes(signing_key) + public_key

    _write_new_key_file(public_path, encode_key(public_key))
    try:
        _write_new_key_file(private_path, encode_key(private_key))
    except KeyFileError:
        public_path.unlink(missing_ok=True)
        raise
    log.info("wrote %s and %s", public_path, private_path)
    return public_path, private_path


def load_public_key(text: str | bytes) -> bytes:
    """Decode a base64 public key (``--public-key``) into its 32 raw bytes."""
    return _decode_key(text, PUBLIC_KEY_SIZE, "public key", "public key")


def load_private_key(text: str | bytes) -> bytes:
    """Decode a base64 private key (``--private-key``) into its 64 raw bytes."""
    return _checked_private_key(_decode_key(text, PRIVATE_KEY_SIZE, "private key", "private key"))


def read_public_key_file(path: StrPath) -> bytes:
    """Load a public key file: base64 text or exactly 32 raw bytes."""
    data = _read_key_file(path, "public key")
    if len(data) == PUBLIC_KEY_SIZE:
        return data
    source = f"public key file '{os.fspath(path)}'"
    return _decode_key(data, PUBLIC_KEY_SIZE, "public key", source)


def read_private_key_file(path: StrPath) -> bytes:
    """Load a private key file: base64 text or exactly 64 raw bytes (seed || public key)."""
    data = _read_key_file(path, "private key")
    if len(data) != PRIVATE_KEY_SIZE:
        source = f"private key file '{os.fspath(path)}'"
        data = _decode_key(data, PRIVATE_KEY_SIZE, "private key", source)
    return _checked_private_key(data)


def sign(message: bytes, private_key: bytes) -> bytes:
    """Return the 64-byte Ed25519 signature of *message* (deterministic)."""
    signature = _signing_key(private_key).sign(message).signature
    return bytes(signature)


def _signing_key(private_key: bytes) -> nacl.signing.SigningKey:
    if len(private_key) == PRIVATE_KEY_SIZE:
        private_key = _checked_private_key(private_key)[:SEED_SIZE]
    elif len(private_key) != SEED_SIZE:
        raise KeyFileError(
            f"Ed25519 private key must be {PRIVATE_KEY_SIZE} bytes (or a {SEED_SIZE}-byte seed), "
            f"got {len(private_key)}"
        )
    return nacl.signing.SigningKey(private_key)


def _checked_private_key(private_key: bytes) -> bytes:
    derived = bytes(nacl.signing.SigningKey(private_key[:SEED_SIZE]).verify_key)
    if derived != private_key[SEED_SIZE:]:
        raise KeyFileError("Private key is corrupt: its public half does not match its seed")
    return private_key


def _decode_key(text: str | bytes, size: int, label: str, source: str) -> bytes:
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"Invalid base64 in {source}") from None
    if len(key) != size:
        raise KeyFileError(f"Expecting a {size}-byte {label} in {source}, got {len(key)} bytes")
    return key


def _read_key_file(path: StrPath, what: str) -> bytes:
    try:
        with open(path, "rb") as key_file:
            return key_file.read(4096)
    except OSError as error:
        raise KeyFileError(
            f"Error reading {what} file '{os.fspath(path)}': {error.strerror}"
        ) from None


def _write_new_key_file(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"Key file '{path}' already exists; not overwriting it") from None
    except OSError as error:
        raise KeyFileError(f"Error creating key file '{path}': {error.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        data = text.encode("ascii")
        while data:
            data = data[os.write(fd, data) :]
    except OSError as error:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise KeyFileError(f"Error writing key file '{path}': {error.strerror}") from None
    os.close(fd)
