/* nh_framing.c - fwup input packets and output frames (see nh_framing.h). */
#include "nh_framing.h"

#include <stdlib.h>
#include <string.h>

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ---- input packets ---- */

void nh_packet_decoder_init(nh_packet_decoder *d) {
    memset(d, 0, sizeof(*d));
}

int nh_packet_decoder_next(nh_packet_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                           const uint8_t **piece, size_t *piece_len, int *packet_done) {
    size_t p = 0;
    *piece = NULL;
    *piece_len = 0;
    *packet_done = 0;
    while (p < len) {
        if (d->finished) {
            p = len;
            break;
        }
        if (d->remaining == 0) {
            d->header[d->header_len++] = data[p++];
            if (d->header_len < 4)
                continue;
            d->header_len = 0;
            d->remaining = be32(d->header);
            if (d->remaining == 0)
                d->finished = 1;
            continue;
        }
        size_t n = len - p;
        if (n > d->remaining)
            n = d->remaining;
        *piece = data + p;
        *piece_len = n;
        d->remaining -= (uint32_t)n;
        *packet_done = d->remaining == 0;
        *consumed = p + n;
        return 1;
    }
    *consumed = p;
    return 0;
}

int nh_packet_decoder_check_eof(const nh_packet_decoder *d, nh_err *err) {
    if (!d->finished && (d->header_len > 0 || d->remaining > 0))
        return nh_fail(err, "Received EOF even though framing indicated more bytes");
    return 0;
}

void nh_packet_header(uint32_t payload_len, uint8_t out[4]) {
    put_be32(out, payload_len);
}

/* ---- output frames ---- */

void nh_frame_decoder_init(nh_frame_decoder *d) {
    memset(d, 0, sizeof(*d));
}

void nh_frame_decoder_free(nh_frame_decoder *d) {
    free(d->buf);
    memset(d, 0, sizeof(*d));
}

size_t nh_frame_decoder_pending(const nh_frame_decoder *d) {
    return d->len;
}

static int bad_length(nh_frame_decoder *d, uint32_t length, nh_err *err) {
    d->failed = 1;
    d->bad_length = length;
    return nh_fail(err, "Invalid frame length %u", (unsigned)length);
}

static void fill_frame(const uint8_t *f, uint32_t length, nh_frame *frame) {
    frame->type[0] = (char)f[4];
    frame->type[1] = (char)f[5];
    frame->code = (uint16_t)(f[6] << 8 | f[7]);
    frame->text = f + 8;
    frame->text_len = length - 4;
}

int nh_frame_decoder_next(nh_frame_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                          nh_frame *frame, nh_err *err) {
    *consumed = 0;
    if (d->failed)
        return nh_fail(err, "Invalid frame length %u", (unsigned)d->bad_length);
    if (d->len == 0 && len >= 4) {
        /* Fast path: a whole frame inside data, no copy. */
        uint32_t length = be32(data);
        if (length < 4 || length > NH_FRAME_MAX_LENGTH)
            return bad_length(d, length, err);
        if (len - 4 >= length) {
            fill_frame(data, length, frame);
            *consumed = 4 + (size_t)length;
            return 1;
        }
    }
    size_t p = 0;
    while (p < len) {
        size_t want = 4;
        if (d->len >= 4)
            want = 4 + (size_t)be32(d->buf);
        size_t n = want - d->len;
        if (n > len - p)
            n = len - p;
        if (d->cap < want) {
            size_t cap = want < 64 ? 64 : want;
            uint8_t *grown = realloc(d->buf, cap);
            if (!grown)
                return nh_fail(err, "out of memory");
            d->buf = grown;
            d->cap = cap;
        }
        memcpy(d->buf + d->len, data + p, n);
        d->len += n;
        p += n;
        if (d->len == 4) {
            uint32_t length = be32(d->buf);
            if (length < 4 || length > NH_FRAME_MAX_LENGTH) {
                *consumed = p;
                return bad_length(d, length, err);
            }
            continue;
        }
        if (d->len >= 4 && d->len == 4 + (size_t)be32(d->buf)) {
            fill_frame(d->buf, be32(d->buf), frame);
            d->len = 0; /* the bytes stay in buf until the next call */
            *consumed = p;
            return 1;
        }
    }
    *consumed = p;
    return 0;
}

int nh_frame_encode(const char type[2], uint16_t code, const uint8_t *text, size_t text_len,
                    uint8_t *out, nh_err *err) {
    if (text_len > NH_FRAME_MAX_LENGTH - 4)
        return nh_fail(err, "Frame text too long (%zu bytes)", text_len);
    put_be32(out, (uint32_t)(4 + text_len));
    out[4] = (uint8_t)type[0];
    out[5] = (uint8_t)type[1];
    out[6] = (uint8_t)(code >> 8);
    out[7] = (uint8_t)code;
    if (text_len)
        memcpy(out + 8, text, text_len);
    return 0;
}
