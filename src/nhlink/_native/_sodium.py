"""Addresses of the libsodium functions inside PyNaCl's own cffi module.

The native core is compiled without libsodium headers; it calls these
function pointers instead (see src/native/nh_crypto.h).
"""

from __future__ import annotations

from typing import Any


def function_table() -> dict[str, int]:
    """Return the addresses (as ints) of the functions nh_crypto needs."""
    import nacl.bindings  # noqa: F401  (runs sodium_init, which picks the fast code paths)
    from nacl._sodium import ffi, lib

    def address(name: str) -> int:
        pointer: Any = ffi.addressof(lib, name)
        return int(ffi.cast("uintptr_t", pointer))

    return {
        "blake2b_init": address("crypto_generichash_blake2b_init_salt_personal"),
        "blake2b_update": address("crypto_generichash_blake2b_update"),
        "blake2b_final": address("crypto_generichash_blake2b_final"),
        "blake2b_state_size": int(lib.crypto_generichash_statebytes()),
        "sign_open": address("crypto_sign_open"),
    }
