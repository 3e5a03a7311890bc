# U-Boot environment codec (src/native/nh_uboot.c). Included by _core.pyx.
# Names and values are UTF-8; bytes that are not UTF-8 round-trip through
# "surrogateescape".

from libc.stdint cimport uint8_t, uint32_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc

from nhlink.errors import UBootEnvCRCError as _UBootEnvCRCError
from nhlink.errors import UBootEnvError as _UBootEnvError


cdef extern from "nh_common.h":
    ctypedef struct nh_err:
        char msg[512]


cdef extern from "nh_uboot.h":
    ctypedef struct nh_uboot_var:
        const char *name
        size_t name_len
        const char *value
        size_t value_len

    ctypedef struct nh_uboot_env:
        nh_uboot_var *vars
        size_t count
        uint8_t flags
        uint32_t stored_crc
        uint32_t computed_crc
        int crc_mismatch
        size_t used_bytes
        char *storage

    int nh_uboot_decode(const uint8_t *block, size_t size, int redundant, nh_uboot_env *env,
                        nh_err *err) nogil
    void nh_uboot_env_free(nh_uboot_env *env) nogil
    int nh_uboot_encode(const nh_uboot_var *vars, size_t count, uint8_t *out, size_t size,
                        int redundant, uint8_t flags, nh_err *err) nogil


def uboot_env_decode(block, bint redundant):
    """Decodes one copy of an environment: ``(variables, flags)``.

    A bad CRC-32 raises UBootEnvCRCError(expected=stored, got=computed).
    """
    cdef const uint8_t[::1] view = block
    cdef size_t n = view.shape[0]
    cdef const uint8_t *buf = &view[0] if n else <const uint8_t *>b""
    cdef nh_uboot_env env
    cdef nh_err err
    cdef int rc
    cdef size_t i
    with nogil:
        rc = nh_uboot_decode(buf, n, redundant, &env, &err)
    if rc != 0:
        if env.crc_mismatch:
            raise _UBootEnvCRCError(env.stored_crc, env.computed_crc)
        raise _UBootEnvError(err.msg.decode("utf-8", "replace"))
    variables = {}
    flags = env.flags
    try:
        for i in range(env.count):
            name = env.vars[i].name[:env.vars[i].name_len].decode("utf-8", "surrogateescape")
            value = env.vars[i].value[:env.vars[i].value_len].decode("utf-8", "surrogateescape")
            variables[name] = value
    finally:
        nh_uboot_env_free(&env)
    return variables, flags


def uboot_env_encode(variables, size, bint redundant, flags):
    """Encodes ``variables`` (sorted by name) into one ``size``-byte copy."""
    if size < 0:
        raise ValueError("size must not be negative")
    if not 0 <= flags <= 255:
        raise ValueError("flags must be 0..255")
    cdef list keep = []
    cdef Py_ssize_t count = len(variables)
    cdef nh_uboot_var *vars = <nh_uboot_var *>PyMem_Malloc((count if count else 1) * sizeof(nh_uboot_var))
    if vars is NULL:
        raise MemoryError()
    cdef Py_ssize_t i = 0
    cdef bytes name, value
    cdef bytes out
    cdef size_t csize = size
    cdef uint8_t cflags = flags
    cdef nh_err err
    cdef int rc
    try:
        for key, val in variables.items():
            if i >= count:
                raise RuntimeError("variables changed size during encoding")
            name = key.encode("utf-8", "surrogateescape")
            value = val.encode("utf-8", "surrogateescape")
            keep.append(name)
            keep.append(value)
            vars[i].name = name
            vars[i].name_len = len(name)
            vars[i].value = value
            vars[i].value_len = len(value)
            i += 1
        out = PyBytes_FromStringAndSize(NULL, csize)
        rc = nh_uboot_encode(vars, <size_t>i, <uint8_t *>PyBytes_AS_STRING(out), csize, redundant,
                             cflags, &err)
        if rc != 0:
            raise _UBootEnvError(err.msg.decode("utf-8", "replace"))
        return out
    finally:
        PyMem_Free(vars)
