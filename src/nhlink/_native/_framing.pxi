# fwup framing (src/native/nh_framing.c): stdin packets and framed output.
# Included by _core.pyx.

from libc.stdint cimport uint8_t, uint16_t, uint32_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

from nhlink.errors import FramingError as _FramingError


cdef extern from "nh_common.h":
    ctypedef struct nh_err:
        char msg[512]


cdef extern from "nh_framing.h":
    ctypedef struct nh_packet_decoder:
        int finished

    void nh_packet_decoder_init(nh_packet_decoder *d)
    int nh_packet_decoder_next(nh_packet_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                               const uint8_t **piece, size_t *piece_len, int *packet_done)
    int nh_packet_decoder_check_eof(const nh_packet_decoder *d, nh_err *err)
    void nh_packet_header(uint32_t payload_len, uint8_t *out)

    ctypedef struct nh_frame:
        char type[2]
        uint16_t code
        const uint8_t *text
        size_t text_len

    ctypedef struct nh_frame_decoder:
        pass

    unsigned NH_FRAME_MAX_LENGTH

    void nh_frame_decoder_init(nh_frame_decoder *d)
    void nh_frame_decoder_free(nh_frame_decoder *d)
    int nh_frame_decoder_next(nh_frame_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                              nh_frame *frame, nh_err *err)
    size_t nh_frame_decoder_pending(const nh_frame_decoder *d)
    int nh_frame_encode(const char *type, uint16_t code, const uint8_t *text, size_t text_len,
                        uint8_t *out, nh_err *err)


cdef class PacketDecoder:
    """Decodes fwup's ``--framing`` stdin: ``u32 BE length | payload``, zero length ends."""

    cdef nh_packet_decoder d
    cdef bytearray _partial

    def __cinit__(self):
        nh_packet_decoder_init(&self.d)
        self._partial = bytearray()

    def feed(self, data) -> list:
        """Returns the payloads of the packets completed by ``data``."""
        cdef const uint8_t[::1] view = data
        cdef size_t n = view.shape[0]
        cdef size_t off = 0, consumed, piece_len
        cdef const uint8_t *piece
        cdef int done
        cdef list out = []
        while off < n:
            if not nh_packet_decoder_next(&self.d, &view[off], n - off, &consumed, &piece,
                                          &piece_len, &done):
                break
            off += consumed
            if done and not self._partial:
                out.append(PyBytes_FromStringAndSize(<const char *>piece, piece_len))
                continue
            self._partial += (<const char *>piece)[:piece_len]
            if done:
                out.append(bytes(self._partial))
                self._partial = bytearray()
        return out

    @property
    def finished(self) -> bool:
        """True once the zero-length packet was read."""
        return self.d.finished != 0

    def check_eof(self):
        """Raises FramingError if the input ended inside a packet."""
        cdef nh_err err
        if nh_packet_decoder_check_eof(&self.d, &err) != 0:
            raise _FramingError(err.msg.decode("utf-8", "replace"))


cdef class FrameDecoder:
    """Decodes fwup's framed output into ``(type, code, text)`` tuples."""

    cdef nh_frame_decoder d

    def __cinit__(self):
        nh_frame_decoder_init(&self.d)

    def __dealloc__(self):
        nh_frame_decoder_free(&self.d)

    def feed(self, data) -> list:
        cdef const uint8_t[::1] view = data
        cdef size_t n = view.shape[0]
        cdef size_t off = 0, consumed
        cdef nh_frame frame
        cdef nh_err err
        cdef int rc
        cdef list out = []
        while off < n:
            rc = nh_frame_decoder_next(&self.d, &view[off], n - off, &consumed, &frame, &err)
            off += consumed
            if rc < 0:
                raise _FramingError(err.msg.decode("utf-8", "replace"))
            if rc == 0:
                break
            out.append((
                frame.type[:2].decode("latin-1"),
                frame.code,
                (<const char *>frame.text)[:frame.text_len].decode("utf-8", "replace"),
            ))
        return out

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete frame."""
        return nh_frame_decoder_pending(&self.d)


def encode_frame(str type, code, str text) -> bytes:
    """``u32 BE (4 + len(text)) | type[2] | u16 BE code | text`` (text as UTF-8)."""
    cdef bytes btype = type.encode("latin-1")
    if len(btype) != 2:
        raise ValueError("frame type must be 2 characters")
    if not 0 <= code <= 0xFFFF:
        raise ValueError("frame code must be 0..65535")
    cdef bytes btext = text.encode("utf-8")
    cdef size_t n = len(btext)
    cdef nh_err err
    if n > NH_FRAME_MAX_LENGTH - 4:
        raise _FramingError(f"Frame text too long ({n} bytes)")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 8 + n)
    if nh_frame_encode(btype, <uint16_t>code, <const uint8_t *><const char *>btext, n,
                       <uint8_t *>PyBytes_AS_STRING(out), &err) != 0:
        raise _FramingError(err.msg.decode("utf-8", "replace"))
    return out


def encode_packet(data) -> bytes:
    """``u32 BE len(data) | data``; ``encode_packet(b"")`` is the end-of-input packet."""
    cdef const uint8_t[::1] view = data
    cdef size_t n = view.shape[0]
    if n > 0xFFFFFFFF:
        raise _FramingError(f"Packet too long ({n} bytes)")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 4 + n)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    nh_packet_header(<uint32_t>n, p)
    if n:
        memcpy(p + 4, &view[0], n)
    return out
