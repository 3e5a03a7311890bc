# ZipStream: the streaming .fw walker (src/native/nh_zip.c). Included by _core.pyx
# after _crypto.pxi and _cache.pxi (BlockCache and its `c` pointer).

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize

from nhlink._native.events import ArchiveEnd as _ArchiveEnd
from nhlink._native.events import CheckpointReady as _CheckpointReady
from nhlink._native.events import DataChunk as _DataChunk
from nhlink._native.events import EntryEnd as _EntryEnd
from nhlink._native.events import EntryStart as _EntryStart
from nhlink.errors import ArchiveError as _ArchiveError
from nhlink.errors import DestinationError as _ZipDestinationError


cdef extern from "nh_zip.h":
    ctypedef struct nh_zip:
        pass

    ctypedef enum nh_zip_event_type:
        NH_ZIP_NEED_INPUT
        NH_ZIP_ENTRY_START
        NH_ZIP_DATA_CHUNK
        NH_ZIP_ENTRY_END
        NH_ZIP_ARCHIVE_END
        NH_ZIP_CHECKPOINT

    ctypedef enum nh_zip_error_kind:
        NH_ZIP_OK
        NH_ZIP_ERR_ARCHIVE
        NH_ZIP_ERR_DESTINATION

    ctypedef struct nh_zip_event:
        nh_zip_event_type type
        const char *name
        size_t name_len
        int method
        int size_known
        uint64_t size
        int mtime_known
        int64_t mtime
        uint32_t crc32
        int has_blake2b
        unsigned char blake2b[32]
        const unsigned char *data
        size_t data_len

    int nh_zip_new(nh_zip **out, nh_err *err) nogil
    void nh_zip_free(nh_zip *z) nogil
    int nh_zip_feed(nh_zip *z, const void *data, size_t len, size_t *consumed, nh_zip_event *ev,
                    nh_err *err) nogil
    int nh_zip_end_of_input(nh_zip *z, nh_err *err) nogil
    int nh_zip_can_choose_sink(const nh_zip *z) nogil
    int nh_zip_sink_skip(nh_zip *z, nh_err *err) nogil
    int nh_zip_sink_collect(nh_zip *z, uint64_t limit, nh_err *err) nogil
    int nh_zip_sink_hash(nh_zip *z, nh_err *err) nogil
    int nh_zip_sink_chunks(nh_zip *z, nh_err *err) nogil
    int nh_zip_sink_raw_write(nh_zip *z, nh_cache *cache, uint64_t offset, const uint64_t *sparse_map,
                              size_t map_len, uint64_t expected_size, nh_err *err) nogil
    int nh_zip_checkpoint_after(nh_zip *z, uint64_t n, nh_err *err) nogil
    int nh_zip_checkpoint_export(nh_zip *z, unsigned char **header, size_t *header_len,
                                 unsigned char **state, size_t *state_len, uint64_t *extent_done,
                                 nh_err *err) nogil
    int nh_zip_checkpoint_restore(nh_zip *z, const void *state, size_t len, uint64_t *extent_done,
                                  nh_err *err) nogil
    uint64_t nh_zip_units(const nh_zip *z) nogil
    nh_zip_error_kind nh_zip_error(const nh_zip *z) nogil
    const char *nh_zip_error_message(const nh_zip *z) nogil


cdef class ZipStream:
    """Push parser over a .fw byte stream; see docs/architecture.md ("ZipStream").

    ``feed(data)`` returns ``(consumed, event)``; ``event`` is None once all of
    ``data`` was consumed. Right after an ``EntryStart`` the caller may choose a
    sink (default: skip). After an error every later call raises it again.
    """

    cdef nh_zip *z
    cdef bint _busy
    cdef BlockCache _cache      # the raw_write destination of the current entry
    cdef nh_cache *_cache_c     # its pointer when chosen (to notice a close)

    def __cinit__(self):
        cdef nh_err err
        if nh_zip_new(&self.z, &err) != 0:
            raise MemoryError(err.msg.decode("utf-8", "replace"))

    def __dealloc__(self):
        if self.z is not NULL:
            with nogil:
                nh_zip_free(self.z)  # joins the hash thread
            self.z = NULL

    cdef void _enter(self) except *:
        if self._busy:
            raise RuntimeError("ZipStream is already in use by another thread")
        if self.z is NULL:
            raise _ArchiveError("ZipStream is closed")
        self._busy = True

    def close(self):
        """Release the buffers and join the hash thread now (idempotent); later calls raise."""
        if self._busy:
            raise RuntimeError("ZipStream is already in use by another thread")
        self._cache = None
        self._cache_c = NULL
        if self.z is not NULL:
            with nogil:
                nh_zip_free(self.z)
            self.z = NULL

    cdef object _raise(self, nh_err *err):
        cdef const char *full = nh_zip_error_message(self.z)
        message = (full if full != NULL else err.msg).decode("utf-8", "replace")
        if nh_zip_error(self.z) == NH_ZIP_ERR_DESTINATION:
            raise _ZipDestinationError(message)
        raise _ArchiveError(message)

    cdef object _event(self, nh_zip_event *ev):
        if ev.type == NH_ZIP_NEED_INPUT:
            return None
        if ev.type == NH_ZIP_DATA_CHUNK:
            return _DataChunk(PyBytes_FromStringAndSize(<const char *>ev.data, ev.data_len))
        if ev.type == NH_ZIP_ENTRY_START:
            name = ev.name[:ev.name_len].decode("utf-8", "replace")
            return _EntryStart(
                name,
                ev.method,
                ev.size if ev.size_known else None,
                ev.mtime if ev.mtime_known else None,
            )
        if ev.type == NH_ZIP_ENTRY_END:
            name = ev.name[:ev.name_len].decode("utf-8", "replace")
            digest = PyBytes_FromStringAndSize(<const char *>ev.blake2b, 32) if ev.has_blake2b else None
            data = None
            if ev.data != NULL:
                data = PyBytes_FromStringAndSize(<const char *>ev.data, ev.data_len)
            self._cache = None
            self._cache_c = NULL
            return _EntryEnd(name, ev.size, ev.crc32, digest, data)
        if ev.type == NH_ZIP_CHECKPOINT:
            return _CheckpointReady()
        return _ArchiveEnd()

    def feed(self, data):
        """Consumes a prefix of ``data``; returns ``(consumed, event or None)``."""
        cdef Py_buffer view
        cdef size_t consumed = 0
        cdef nh_zip_event ev
        cdef nh_err err
        cdef int rc
        if self._cache is not None and self._cache.c != self._cache_c:
            raise _ZipDestinationError("raw_write: the block cache was closed")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._enter()
            try:
                with nogil:
                    rc = nh_zip_feed(self.z, view.buf, <size_t>view.len, &consumed, &ev, &err)
                if rc != 0:
                    self._raise(&err)
                return consumed, self._event(&ev)
            finally:
                self._busy = False
        finally:
            PyBuffer_Release(&view)

    def end_of_input(self):
        """No more input: ``ArchiveEnd()`` at an entry boundary, else ArchiveError (-5)."""
        cdef nh_err err
        self._enter()
        try:
            if nh_zip_end_of_input(self.z, &err) != 0:
                self._raise(&err)
            return _ArchiveEnd()
        finally:
            self._busy = False

    cdef void _check_choosable(self) except *:
        if self._busy:
            raise RuntimeError("ZipStream is already in use by another thread")
        if self.z is NULL:
            raise _ArchiveError("ZipStream is closed")
        if not nh_zip_can_choose_sink(self.z):
            raise RuntimeError("a sink can only be chosen right after EntryStart")
        self._cache = None
        self._cache_c = NULL

    cdef void _chosen(self, int rc, nh_err *err) except *:
        if rc != 0:
            raise RuntimeError(err.msg.decode("utf-8", "replace"))

    def sink_skip(self):
        """Inflate and CRC only (the default)."""
        cdef nh_err err
        self._check_choosable()
        self._chosen(nh_zip_sink_skip(self.z, &err), &err)

    def sink_collect(self, limit):
        """Keep the bytes for ``EntryEnd.data``; more than ``limit`` raises ArchiveError."""
        cdef nh_err err
        if limit < 0:
            raise ValueError("limit must not be negative")
        self._check_choosable()
        self._chosen(nh_zip_sink_collect(self.z, limit, &err), &err)

    def sink_hash(self):
        """BLAKE2b-256 over the data (``EntryEnd.blake2b``)."""
        cdef nh_err err
        self._check_choosable()
        self._chosen(nh_zip_sink_hash(self.z, &err), &err)

    def sink_chunks(self):
        """Hash, and hand the bytes over as ``DataChunk`` events."""
        cdef nh_err err
        self._check_choosable()
        self._chosen(nh_zip_sink_chunks(self.z, &err), &err)

    def sink_raw_write(self, BlockCache cache not None, offset, sparse_map, expected_size):
        """Hash, and write into ``cache`` at ``offset`` like fwup's raw_write.

        ``sparse_map`` alternates data and hole run lengths starting with data
        (None or empty: one data run); its data runs must add up to ``expected_size``.
        """
        cdef nh_err err
        cdef uint64_t *runs = NULL
        cdef size_t n = 0, i
        cdef int rc
        if offset < 0 or expected_size < 0:
            raise ValueError("offset and expected_size must not be negative")
        if sparse_map:  # None or empty: one data run of expected_size
            values = [int(v) for v in sparse_map]
            if any(v < 0 for v in values):
                raise ValueError("sparse map runs must not be negative")
            if sum(values[0::2]) != expected_size:
                raise ValueError("the sparse map's data runs do not add up to expected_size")
            n = len(values)
        self._check_choosable()
        cdef nh_cache *c = cache._open()
        if n:
            runs = <uint64_t *>malloc(n * sizeof(uint64_t))
            if runs == NULL:
                raise MemoryError()
            for i in range(n):
                runs[i] = values[i]
        try:
            rc = nh_zip_sink_raw_write(self.z, c, offset, runs, n, expected_size, &err)
        finally:
            free(runs)
        if rc != 0:
            raise ValueError(err.msg.decode("utf-8", "replace"))
        self._cache = cache
        self._cache_c = c

    def checkpoint_after(self, count):
        """Arm a mid-entry checkpoint: inside the current raw_write of a deflated entry,
        stop at the first deflate block boundary after ``count`` more archive bytes with
        a ``CheckpointReady`` event (once; a new entry disarms)."""
        cdef nh_err err
        if count < 0:
            raise ValueError("count must not be negative")
        self._enter()
        try:
            if nh_zip_checkpoint_after(self.z, count, &err) != 0:
                self._raise(&err)
        finally:
            self._busy = False

    def checkpoint_state(self):
        """Right after ``CheckpointReady``: ``(local_header, state, extent_done)``.

        The block being assembled is written into the cache (flush it before
        relying on the checkpoint); ``extent_done`` is how many bytes of the
        resource's extent (holes included) the data so far covers.
        """
        cdef nh_err err
        cdef unsigned char *header = NULL
        cdef unsigned char *state = NULL
        cdef size_t header_len = 0, state_len = 0
        cdef uint64_t extent_done = 0
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = nh_zip_checkpoint_export(self.z, &header, &header_len, &state, &state_len,
                                              &extent_done, &err)
            if rc != 0:
                if nh_zip_error(self.z) != NH_ZIP_OK:
                    self._raise(&err)
                raise RuntimeError(err.msg.decode("utf-8", "replace"))
            try:
                return (
                    PyBytes_FromStringAndSize(<const char *>header, header_len),
                    PyBytes_FromStringAndSize(<const char *>state, state_len),
                    extent_done,
                )
            finally:
                free(header)
                free(state)
        finally:
            self._busy = False

    def restore_checkpoint(self, state):
        """Right after choosing raw_write for the entry whose saved local header was fed:
        continue from ``state`` (``checkpoint_state``); feed the archive from its offset.
        Returns ``extent_done`` as the export did (derived from the state and the map)."""
        cdef nh_err err
        cdef uint64_t extent_done = 0
        cdef const unsigned char[:] view = state
        cdef int rc
        if self._busy:
            raise RuntimeError("ZipStream is already in use by another thread")
        if self.z is NULL:
            raise _ArchiveError("ZipStream is closed")
        if self._cache is not None and self._cache.c != self._cache_c:
            raise _ZipDestinationError("raw_write: the block cache was closed")
        with nogil:
            rc = nh_zip_checkpoint_restore(self.z, &view[0] if view.shape[0] else NULL,
                                           view.shape[0], &extent_done, &err)
        if rc != 0:
            raise _ArchiveError(f"cannot resume inside the entry: {err.msg.decode('utf-8', 'replace')}")
        return extent_done

    @property
    def units(self) -> int:
        """Bytes written by the sinks so far: raw_write data bytes and DataChunk bytes."""
        return nh_zip_units(self.z) if self.z is not NULL else 0
