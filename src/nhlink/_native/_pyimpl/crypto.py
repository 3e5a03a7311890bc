"""Ed25519 verification (libsodium through PyNaCl) and BLAKE2b-256."""

from __future__ import annotations

import hashlib

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

_SIGNATURE_LEN = 64
_PUBLIC_KEY_LEN = 32


def verify_ed25519(signature: bytes, message: bytes, public_key: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    if len(signature) != _SIGNATURE_LEN or len(public_key) != _PUBLIC_KEY_LEN:
        return False
    try:
        crypto_sign_open(bytes(signature) + bytes(message), bytes(public_key))
    except BadSignatureError:
        return False
    return True


def blake2b_256(data: bytes) -> bytes:
    """Unkeyed BLAKE2b with a 32-byte digest."""
    return hashlib.blake2b(data, digest_size=32).digest()
