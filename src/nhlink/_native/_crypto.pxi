# Crypto primitives over the libsodium inside PyNaCl (src/native/nh_crypto.h, nh_hash.h).
# Included first by _core.pyx: importing the module installs PyNaCl's function table.

from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

from nhlink._native._sodium import function_table as _sodium_function_table


cdef extern from "nh_common.h":
    ctypedef struct nh_err:
        char msg[512]


ctypedef int (*_blake2b_init_fn)(void *state, const unsigned char *key, size_t keylen, size_t outlen,
                                 const unsigned char *salt, const unsigned char *personal) noexcept nogil
ctypedef int (*_blake2b_update_fn)(void *state, const unsigned char *data,
                                   unsigned long long inlen) noexcept nogil
ctypedef int (*_blake2b_final_fn)(void *state, unsigned char *out, size_t outlen) noexcept nogil
ctypedef int (*_sign_open_fn)(unsigned char *m, unsigned long long *mlen, const unsigned char *sm,
                              unsigned long long smlen, const unsigned char *pk) noexcept nogil


cdef extern from "nh_crypto.h":
    ctypedef struct nh_crypto:
        _blake2b_init_fn blake2b_init
        _blake2b_update_fn blake2b_update
        _blake2b_final_fn blake2b_final
        size_t blake2b_state_size
        _sign_open_fn sign_open

    int nh_crypto_set(const nh_crypto *table) nogil
    const nh_crypto *nh_crypto_get() nogil


cdef extern from "nh_hash.h":
    int nh_blake2b_256(const void *data, size_t len, unsigned char *out, nh_err *err) nogil


# Inputs at least this long are hashed without the GIL.
cdef size_t _CRYPTO_NOGIL_MIN = 64 * 1024


cdef void _install_sodium() except *:
    """Copies the addresses of PyNaCl's libsodium functions into nh_crypto."""
    table = _sodium_function_table()
    cdef nh_crypto c
    c.blake2b_init = <_blake2b_init_fn><uintptr_t>table["blake2b_init"]
    c.blake2b_update = <_blake2b_update_fn><uintptr_t>table["blake2b_update"]
    c.blake2b_final = <_blake2b_final_fn><uintptr_t>table["blake2b_final"]
    c.blake2b_state_size = table["blake2b_state_size"]
    c.sign_open = <_sign_open_fn><uintptr_t>table["sign_open"]
    if nh_crypto_set(&c) != 0:
        raise ImportError("PyNaCl's libsodium does not provide what nhlink needs")


_install_sodium()


def blake2b_256(data) -> bytes:
    """BLAKE2b with a 32-byte digest and no key over a bytes-like object."""
    cdef Py_buffer view
    cdef unsigned char out[32]
    cdef nh_err err
    cdef int rc
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if <size_t>view.len >= _CRYPTO_NOGIL_MIN:
            with nogil:
                rc = nh_blake2b_256(view.buf, <size_t>view.len, out, &err)
        else:
            rc = nh_blake2b_256(view.buf, <size_t>view.len, out, &err)
    finally:
        PyBuffer_Release(&view)
    if rc != 0:
        raise RuntimeError(err.msg.decode("utf-8", "replace"))
    return PyBytes_FromStringAndSize(<const char *>out, 32)


def verify_ed25519(signature, message, public_key) -> bool:
    """True when ``signature`` (64 bytes) is a valid Ed25519 signature of ``message``
    under ``public_key`` (32 bytes); wrong lengths are simply not valid."""
    cdef bytes sig = bytes(signature)
    cdef bytes pk = bytes(public_key)
    cdef bytes msg = bytes(message)
    if len(sig) != 64 or len(pk) != 32:
        return False
    cdef const nh_crypto *crypto = nh_crypto_get()
    cdef size_t mlen_in = len(msg)
    cdef size_t smlen = 64 + mlen_in
    cdef unsigned char *sm = <unsigned char *>malloc(smlen)
    cdef unsigned char *m = <unsigned char *>malloc(smlen)
    cdef unsigned long long mlen = 0
    cdef const unsigned char *cpk = <const unsigned char *>PyBytes_AS_STRING(pk)
    cdef int rc
    if sm == NULL or m == NULL:
        free(sm)
        free(m)
        raise MemoryError()
    memcpy(sm, PyBytes_AS_STRING(sig), 64)
    memcpy(sm + 64, PyBytes_AS_STRING(msg), mlen_in)
    with nogil:
        rc = crypto.sign_open(m, &mlen, sm, smlen, cpk)
    free(sm)
    free(m)
    return rc == 0
