# VcdiffDecoder: streaming xdelta3/VCDIFF decoder (src/native/nh_vcdiff.c). Included by
# _core.pyx after _cache.pxi. feed() releases the GIL; a native BlockCache source is read
# in C without it, other readers and the sink take the GIL for their Python calls.

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, strncpy
from cpython.bytes cimport PyBytes_FromStringAndSize

from nhlink.errors import ArchiveError as _VcdiffArchiveError

_VCDIFF_MAX_OFFSET = 1 << 63  # offset + position never wraps in uint64


cdef extern from "nh_vcdiff.h":
    ctypedef struct nh_vcdiff:
        pass
    ctypedef int (*nh_vcdiff_read_fn)(void *ctx, uint64_t offset, uint8_t *buf, size_t len,
                                      nh_err *err) noexcept nogil
    ctypedef int (*nh_vcdiff_write_fn)(void *ctx, const uint8_t *data, size_t len,
                                       nh_err *err) noexcept nogil

    int nh_vcdiff_new(nh_vcdiff **out, uint64_t source_size, nh_vcdiff_read_fn read_source,
                      nh_vcdiff_read_fn read_target, nh_vcdiff_write_fn write, void *ctx,
                      nh_err *err) nogil
    int nh_vcdiff_feed(nh_vcdiff *d, const uint8_t *data, size_t len, nh_err *err) nogil
    int nh_vcdiff_finish(nh_vcdiff *d, nh_err *err) nogil
    uint64_t nh_vcdiff_target_size(const nh_vcdiff *d) nogil
    void nh_vcdiff_free(nh_vcdiff *d) nogil


cdef struct _vcdiff_ctx:
    void *owner                 # the VcdiffDecoder (borrowed: it owns the decoder)
    nh_cache *source_cache      # set when the source is a native BlockCache
    uint64_t source_offset


cdef int _vcdiff_set_err(nh_err *err, object error) noexcept:
    cdef bytes text = (str(error) or type(error).__name__).encode("utf-8", "replace")[:500]
    strncpy(err.msg, text, 511)
    err.msg[511] = 0
    return -1


cdef int _vcdiff_read(VcdiffDecoder self, object reader, str what, uint64_t offset,
                      uint8_t *buf, size_t n, nh_err *err) noexcept:
    cdef bytes data
    try:
        if isinstance(reader, BlockCache):
            if nh_cache_read((<BlockCache>reader)._open(), offset, buf, n, err) != 0:
                return -1
            return 0
        data = bytes(reader.read(offset, n))
        if <size_t>len(data) != n:
            raise _VcdiffArchiveError(f"VCDIFF: short read from the {what}")
        memcpy(buf, <const char *>data, n)
        return 0
    except BaseException as error:
        self._error = error
        return _vcdiff_set_err(err, error)


cdef int _vcdiff_read_source(void *ctx, uint64_t offset, uint8_t *buf, size_t n,
                             nh_err *err) noexcept nogil:
    cdef _vcdiff_ctx *c = <_vcdiff_ctx *>ctx
    if c.source_cache is not NULL:
        return nh_cache_read(c.source_cache, c.source_offset + offset, buf, n, err)
    with gil:
        self = <VcdiffDecoder>c.owner
        return _vcdiff_read(self, self._source, "source", self._source_offset + offset, buf, n,
                            err)


cdef int _vcdiff_read_target(void *ctx, uint64_t offset, uint8_t *buf, size_t n,
                             nh_err *err) noexcept nogil:
    cdef _vcdiff_ctx *c = <_vcdiff_ctx *>ctx
    with gil:
        self = <VcdiffDecoder>c.owner
        return _vcdiff_read(self, self._target, "target", self._target_offset + offset, buf, n,
                            err)


cdef int _vcdiff_write(void *ctx, const uint8_t *data, size_t n, nh_err *err) noexcept nogil:
    cdef _vcdiff_ctx *c = <_vcdiff_ctx *>ctx
    with gil:
        self = <VcdiffDecoder>c.owner
        try:
            self._sink(PyBytes_FromStringAndSize(<const char *>data, n))
            return 0
        except BaseException as error:
            self._error = error
            return _vcdiff_set_err(err, error)


cdef class VcdiffDecoder:
    """Decode one xdelta3/VCDIFF patch fed in pieces; decoded target bytes go to ``sink``.

    ``source``/``target`` are readers (``read(offset, length) -> bytes``, e.g. a
    BlockCache) for VCD_SOURCE windows and for VCD_TARGET windows (the target
    written so far), read at ``source_offset``/``target_offset``.
    """

    cdef nh_vcdiff *d
    cdef _vcdiff_ctx ctx
    cdef BlockCache _source_cache  # keeps a native source alive while ctx points into it
    cdef object _sink
    cdef object _source
    cdef object _target
    cdef uint64_t _source_offset
    cdef uint64_t _target_offset
    cdef object _error
    cdef bint _busy

    def __cinit__(self, sink, source=None, source_offset=0, source_size=0, target=None,
                  target_offset=0):
        cdef nh_err err
        cdef nh_vcdiff_read_fn read_target = NULL
        if source_offset < 0 or source_size < 0 or target_offset < 0:
            raise ValueError("offsets and sizes must not be negative")
        if source_offset + source_size > _VCDIFF_MAX_OFFSET or target_offset > _VCDIFF_MAX_OFFSET:
            raise ValueError("offsets and sizes must not exceed 2**63")
        self.d = NULL
        self._sink = sink
        self._source = source
        self._target = target
        self._source_offset = source_offset
        self._target_offset = target_offset
        self._error = None
        self._busy = False
        self.ctx.owner = <void *>self
        self.ctx.source_cache = NULL
        self.ctx.source_offset = source_offset
        if isinstance(source, BlockCache):
            self._source_cache = source
            self.ctx.source_cache = self._source_cache._open()
        if target is not None:
            read_target = _vcdiff_read_target
        if nh_vcdiff_new(&self.d, source_size, _vcdiff_read_source, read_target,
                         _vcdiff_write, <void *>&self.ctx, &err) != 0:
            raise MemoryError(err.msg.decode("utf-8", "replace"))

    def __dealloc__(self):
        if self.d is not NULL:
            nh_vcdiff_free(self.d)
            self.d = NULL

    @property
    def target_size(self) -> int:
        """Target bytes decoded (and handed to the sink) so far."""
        return nh_vcdiff_target_size(self.d)

    cdef _check_source(self):
        """A native source read without the GIL must still be the open cache it was."""
        if self._source_cache is not None and self._source_cache._open() != self.ctx.source_cache:
            raise _VcdiffArchiveError("VCDIFF: the source block cache was closed")

    cdef _raise(self, nh_err *err):
        error, self._error = self._error, None
        if error is not None:
            raise error
        raise _VcdiffArchiveError(err.msg.decode("utf-8", "replace"))

    def feed(self, data):
        """Consume ``data``, decoding (and sinking) every window it completes."""
        cdef const uint8_t[::1] view = data
        cdef size_t n = view.shape[0]
        cdef const uint8_t *p = &view[0] if n else NULL
        cdef nh_err err
        cdef int rc
        if self._busy:
            raise RuntimeError("VcdiffDecoder is already decoding")
        self._check_source()
        self._busy = True
        try:
            with nogil:
                rc = nh_vcdiff_feed(self.d, p, n, &err)
        finally:
            self._busy = False
        if rc != 0:
            self._raise(&err)

    def finish(self):
        """The patch ended: fail unless it ended between windows."""
        cdef nh_err err
        cdef int rc
        if self._busy:
            raise RuntimeError("VcdiffDecoder is already decoding")
        self._check_source()
        self._busy = True
        try:
            with nogil:
                rc = nh_vcdiff_finish(self.d, &err)
        finally:
            self._busy = False
        if rc != 0:
            self._raise(&err)
