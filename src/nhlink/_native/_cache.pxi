# BlockCache: fwup's 128 KiB-segment block cache and writer (src/native/nh_cache.c).
# Included by _core.pyx; _zip.pxi reaches the C pointer as `cache.c`.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

import os as _cache_os

from nhlink.errors import DestinationError as _CacheDestinationError


cdef extern from "nh_common.h":
    ctypedef struct nh_err:
        char msg[512]


cdef extern from "nh_cache.h":
    ctypedef struct nh_cache:
        pass

    ctypedef struct nh_cache_options:
        uint64_t cache_size
        int verify_writes
        uint64_t max_size

    int nh_cache_open(nh_cache **out, const char *path, const nh_cache_options *opts, nh_err *err) nogil
    uint64_t nh_cache_size(const nh_cache *c) nogil
    int nh_cache_is_block_device(const nh_cache *c) nogil
    int nh_cache_write(nh_cache *c, uint64_t offset, const void *buf, size_t len, int streamed,
                       nh_err *err) nogil
    int nh_cache_read(nh_cache *c, uint64_t offset, void *buf, size_t len, nh_err *err) nogil
    int nh_cache_trim(nh_cache *c, uint64_t offset, uint64_t len, nh_err *err) nogil
    int nh_cache_flush(nh_cache *c, nh_err *err) nogil
    void nh_cache_discard(nh_cache *c) nogil
    void nh_cache_close(nh_cache *c) nogil


cdef inline str _cache_err_text(nh_err *err):
    return err.msg.decode("utf-8", "replace")


cdef uint64_t _cache_non_negative(object value, str name) except? 0:
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


cdef class BlockCache:
    """fwup's block cache over a regular file or block device (spec 6.3, 6.4)."""

    cdef nh_cache *c
    cdef object _path
    cdef int _busy  # a call is running without the GIL: others are refused

    def __cinit__(self, path, *, cache_size=8 * 1024 * 1024, verify_writes=None, max_size=None):
        cdef nh_cache_options opts
        cdef nh_err err
        cdef bytes bpath = _cache_os.fsencode(path)
        cdef const char *cpath = bpath
        cdef int rc
        self.c = NULL
        self._busy = 0
        self._path = path
        if cache_size <= 0:
            raise ValueError("cache_size must be positive")
        opts.cache_size = cache_size
        opts.verify_writes = -1 if verify_writes is None else (1 if verify_writes else 0)
        opts.max_size = 0 if max_size is None else _cache_non_negative(max_size, "max_size")
        with nogil:
            rc = nh_cache_open(&self.c, cpath, &opts, &err)
        if rc != 0:
            raise _CacheDestinationError(_cache_err_text(&err))

    def __dealloc__(self):
        if self.c is not NULL:
            nh_cache_close(self.c)
            self.c = NULL

    cdef nh_cache *_open(self) except NULL:
        if self.c is NULL:
            raise _CacheDestinationError(f"{self._path}: block cache is closed")
        if self._busy:
            raise _CacheDestinationError(f"{self._path}: block cache is in use by another thread")
        return self.c

    @property
    def size(self) -> int:
        """Destination size: max_size, the block device size or the file's current size."""
        return nh_cache_size(self._open())

    @property
    def is_block_device(self) -> bool:
        return nh_cache_is_block_device(self._open()) != 0

    def write(self, offset, data, streamed=False):
        """Writes through the cache; streamed segments go out as soon as complete."""
        cdef nh_cache *c = self._open()
        cdef uint64_t off = _cache_non_negative(offset, "offset")
        cdef const uint8_t[::1] view = data
        cdef size_t n = view.shape[0]
        cdef const uint8_t *buf = &view[0] if n else NULL
        cdef int s = 1 if streamed else 0
        cdef nh_err err
        cdef int rc
        self._busy = 1
        try:
            with nogil:
                rc = nh_cache_write(c, off, buf, n, s, &err)
        finally:
            self._busy = 0
        if rc != 0:
            raise _CacheDestinationError(_cache_err_text(&err))

    def read(self, offset, length) -> bytes:
        """Reads through the cache (trimmed segments and bytes past a file's end are zeros)."""
        cdef nh_cache *c = self._open()
        cdef uint64_t off = _cache_non_negative(offset, "offset")
        cdef size_t n = _cache_non_negative(length, "length")
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        cdef char *buf = PyBytes_AS_STRING(out)
        cdef nh_err err
        cdef int rc
        self._busy = 1
        try:
            with nogil:
                rc = nh_cache_read(c, off, buf, n, &err)
        finally:
            self._busy = 0
        if rc != 0:
            raise _CacheDestinationError(_cache_err_text(&err))
        return out

    def trim(self, offset, length):
        """Segments wholly inside become zeros that are never written."""
        cdef nh_cache *c = self._open()
        cdef uint64_t off = _cache_non_negative(offset, "offset")
        cdef uint64_t n = _cache_non_negative(length, "length")
        cdef nh_err err
        cdef int rc
        self._busy = 1
        try:
            with nogil:
                rc = nh_cache_trim(c, off, n, &err)
        finally:
            self._busy = 0
        if rc != 0:
            raise _CacheDestinationError(_cache_err_text(&err))

    def flush(self):
        """Writes every dirty segment, least recently used first (fsync on block devices)."""
        cdef nh_cache *c = self._open()
        cdef nh_err err
        cdef int rc
        self._busy = 1
        try:
            with nogil:
                rc = nh_cache_flush(c, &err)
        finally:
            self._busy = 0
        if rc != 0:
            raise _CacheDestinationError(_cache_err_text(&err))

    def discard(self):
        """Drops everything pending (dirty segments and trims)."""
        nh_cache_discard(self._open())

    def close(self):
        """Closes the destination without flushing. Closing twice is allowed."""
        if self.c is not NULL:
            self._open()  # refuses while another thread is using it
        cdef nh_cache *c = self.c
        self.c = NULL
        if c is not NULL:
            with nogil:
                nh_cache_close(c)

    @property
    def closed(self) -> bool:
        return self.c is NULL

    def __enter__(self):
        self._open()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def __repr__(self):
        state = "closed" if self.c is NULL else "open"
        return f"<BlockCache {self._path!r} {state}>"
