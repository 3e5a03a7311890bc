/* nh_framing.h - fwup's two length-prefixed formats (../shared/spec/fwup.md 4.1).
 *
 * Input packets (`--framing` on stdin): u32 BE length | payload; a zero
 * length ends the input. Output frames (fwup's framed stdout):
 * u32 BE length | type[2] | u16 BE code | text, with length = 4 + len(text).
 */
#ifndef NH_FRAMING_H
#define NH_FRAMING_H

#include "nh_common.h"

#define NH_FRAME_MAX_LENGTH (1024u * 1024u) /* largest accepted frame length field */
#define NH_PACKET_MAX_PAYLOAD 0xffffffffu

/* ---- input packets ---- */

typedef struct nh_packet_decoder {
    uint8_t header[4];
    unsigned header_len; /* header bytes seen of the current packet */
    uint32_t remaining;  /* payload bytes still to come of the current packet */
    int finished;        /* the zero-length packet was seen */
} nh_packet_decoder;

void nh_packet_decoder_init(nh_packet_decoder *d);

/* Consumes a prefix of data. Returns 1 with a piece of payload (pointing into
 * data, *piece_len > 0; *packet_done when it ends its packet), or 0 once all
 * of data is consumed. Bytes after the terminating packet are ignored. */
int nh_packet_decoder_next(nh_packet_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                           const uint8_t **piece, size_t *piece_len, int *packet_done);

/* -1 with "Received EOF even though framing indicated more bytes" when the
 * input stopped inside a packet (its header or its payload). */
int nh_packet_decoder_check_eof(const nh_packet_decoder *d, nh_err *err);

void nh_packet_header(uint32_t payload_len, uint8_t out[4]);

/* ---- output frames ---- */

typedef struct nh_frame {
    char type[2];
    uint16_t code;
    const uint8_t *text; /* valid until the next call on the decoder */
    size_t text_len;
} nh_frame;

typedef struct nh_frame_decoder {
    uint8_t *buf; /* bytes of an incomplete frame */
    size_t len, cap;
    uint32_t bad_length; /* non-zero after a rejected length field */
    int failed;
} nh_frame_decoder;

void nh_frame_decoder_init(nh_frame_decoder *d);
void nh_frame_decoder_free(nh_frame_decoder *d);

/* Consumes a prefix of data. Returns 1 with a complete frame, 0 once all of
 * data is consumed, -1 on a length field < 4 or > NH_FRAME_MAX_LENGTH (the
 * decoder then stays failed). */
int nh_frame_decoder_next(nh_frame_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                          nh_frame *frame, nh_err *err);

/* Bytes held for an incomplete frame. */
size_t nh_frame_decoder_pending(const nh_frame_decoder *d);

/* Encodes a frame into out (at least 8 + text_len bytes). */
int nh_frame_encode(const char type[2], uint16_t code, const uint8_t *text, size_t text_len,
                    uint8_t *out, nh_err *err);

#endif
