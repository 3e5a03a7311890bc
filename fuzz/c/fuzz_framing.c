/* fuzz_framing.c - libFuzzer harness for fwup's packet and frame codecs (nh_framing.c).
 *
 * Input: u32 LE split seed | bytes. The same bytes go through the packet
 * decoder and the frame decoder in pieces chosen by the seed. Checks: the
 * payload pieces add up to no more than the input, and every decoded frame
 * re-encodes to exactly the bytes it came from.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_split.h"
#include "nh_framing.h"

/* A broken invariant: say which and abort (libFuzzer saves the input). */
#define check(condition)                                                                   \
    do {                                                                                   \
        if (!(condition)) {                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #condition); \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

static void packets(const uint8_t *data, size_t size, uint32_t seed)
{
    fuzz_rng rng;
    fuzz_rng_init(&rng, seed);
    nh_packet_decoder d;
    nh_packet_decoder_init(&d);
    size_t pos = 0, payload = 0;
    while (pos < size) {
        size_t piece = fuzz_next_piece(&rng);
        if (piece > size - pos)
            piece = size - pos;
        size_t off = 0;
        for (;;) {
            size_t consumed = 0, piece_len = 0;
            const uint8_t *out = NULL;
            int done = 0;
            int rc = nh_packet_decoder_next(&d, data + pos + off, piece - off, &consumed, &out, &piece_len, &done);
            check(consumed <= piece - off);
            off += consumed;
            if (!rc)
                break;
            check(piece_len > 0 && out >= data && out + piece_len <= data + size);
            payload += piece_len;
        }
        check(off == piece);
        pos += piece;
    }
    check(payload <= size);
    nh_err err;
    (void)nh_packet_decoder_check_eof(&d, &err);
}

static void frames(const uint8_t *data, size_t size, uint32_t seed)
{
    fuzz_rng rng;
    fuzz_rng_init(&rng, seed ^ 0x5bd1e995u);
    nh_frame_decoder d;
    nh_frame_decoder_init(&d);
    size_t pos = 0;
    int failed = 0;
    while (pos < size && !failed) {
        size_t piece = fuzz_next_piece(&rng);
        if (piece > size - pos)
            piece = size - pos;
        size_t off = 0;
        for (;;) {
            size_t consumed = 0;
            nh_frame frame;
            nh_err err;
            int rc = nh_frame_decoder_next(&d, data + pos + off, piece - off, &consumed, &frame, &err);
            check(consumed <= piece - off);
            off += consumed;
            if (rc < 0) {
                failed = 1;
                break;
            }
            if (rc == 0)
                break;
            uint8_t *again = malloc(8 + frame.text_len);
            check(again != NULL);
            check(nh_frame_encode(frame.type, frame.code, frame.text, frame.text_len, again, &err) == 0);
            free(again);
        }
        if (!failed)
            check(off == piece);
        pos += piece;
    }
    if (!failed)
        check(nh_frame_decoder_pending(&d) <= size);
    nh_frame_decoder_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    uint32_t seed = fuzz_read_u32le(data);
    packets(data + 4, size - 4, seed);
    frames(data + 4, size - 4, seed);
    return 0;
}
