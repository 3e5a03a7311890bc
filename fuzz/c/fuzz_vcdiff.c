/* fuzz_vcdiff.c - libFuzzer harness for the streaming VCDIFF decoder (nh_vcdiff.c).
 *
 * Input: u32 LE split seed | u8 flags | u32 LE source length | source | patch
 * (the source length is cut to the bytes present; flags bit 0: a target
 * reader, so VCD_TARGET windows decode). The patch is decoded twice: fed in
 * the pieces the split seed picks, and fed whole. Checks: source and target
 * reads stay inside the source and the target written so far, the decoder's
 * target size is the bytes written, both runs write the same bytes and end
 * the same way (same error text), and an error is sticky.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_split.h"
#include "nh_vcdiff.h"

#define VCDIFF_PREFIX_LEN 9u
#define OUTPUT_CAP (64u << 20) /* more output than this is refused by the sink */

/* A broken invariant: say which and abort (libFuzzer saves the input). */
#define check(condition)                                                                   \
    do {                                                                                   \
        if (!(condition)) {                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #condition); \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

typedef struct {
    const uint8_t *source;
    size_t source_len;
    uint8_t *out;
    size_t len, cap;
} run_ctx;

static int read_source(void *ctx, uint64_t offset, uint8_t *buf, size_t len, nh_err *err)
{
    run_ctx *r = ctx;
    (void)err;
    check(offset <= r->source_len && len <= r->source_len - offset);
    memcpy(buf, r->source + offset, len);
    return 0;
}

static int read_target(void *ctx, uint64_t offset, uint8_t *buf, size_t len, nh_err *err)
{
    run_ctx *r = ctx;
    (void)err;
    check(offset <= r->len && len <= r->len - offset);
    memcpy(buf, r->out + offset, len);
    return 0;
}

static int write_target(void *ctx, const uint8_t *data, size_t len, nh_err *err)
{
    run_ctx *r = ctx;
    check(len > 0 && len <= (1u << 20));
    if (len > OUTPUT_CAP - r->len)
        return nh_fail(err, "output cap reached");
    if (r->len + len > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + len)
            cap *= 2;
        uint8_t *grown = realloc(r->out, cap);
        check(grown != NULL);
        r->out = grown;
        r->cap = cap;
    }
    memcpy(r->out + r->len, data, len);
    r->len += len;
    return 0;
}

/* Decodes the patch; seed 0 feeds it whole. Returns 0 or -1 with the error in *err. */
static int decode(run_ctx *r, int with_target, const uint8_t *patch, size_t size, uint32_t seed,
                  nh_err *err)
{
    nh_vcdiff *d;
    check(nh_vcdiff_new(&d, r->source_len, read_source, with_target ? read_target : NULL,
                        write_target, r, err) == 0);
    fuzz_rng rng;
    fuzz_rng_init(&rng, seed);
    int rc = 0;
    size_t pos = 0;
    while (rc == 0 && pos < size) {
        size_t piece = seed ? fuzz_next_piece(&rng) : size;
        if (piece > size - pos)
            piece = size - pos;
        rc = nh_vcdiff_feed(d, patch + pos, piece, err);
        check(nh_vcdiff_target_size(d) == r->len);
        pos += piece;
    }
    if (rc == 0)
        rc = nh_vcdiff_finish(d, err);
    check(nh_vcdiff_target_size(d) == r->len);
    if (rc != 0) { /* sticky: the same error again, nothing more written */
        nh_err again;
        size_t len = r->len;
        check(nh_vcdiff_feed(d, patch, size, &again) == -1 && strcmp(again.msg, err->msg) == 0);
        check(nh_vcdiff_finish(d, &again) == -1 && strcmp(again.msg, err->msg) == 0);
        check(r->len == len);
        check(strncmp(err->msg, "VCDIFF: ", 8) == 0 || strcmp(err->msg, "output cap reached") == 0);
    }
    nh_vcdiff_free(d);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < VCDIFF_PREFIX_LEN)
        return 0;
    uint32_t seed = fuzz_read_u32le(data);
    int with_target = data[4] & 1;
    size_t source_len = fuzz_read_u32le(data + 5);
    size_t rest = size - VCDIFF_PREFIX_LEN;
    if (source_len > rest)
        source_len = rest;
    const uint8_t *source = data + VCDIFF_PREFIX_LEN;
    const uint8_t *patch = source + source_len;
    size_t patch_len = rest - source_len;

    run_ctx split = {source, source_len, NULL, 0, 0}, whole = {source, source_len, NULL, 0, 0};
    nh_err split_err = {{0}}, whole_err = {{0}};
    int split_rc = decode(&split, with_target, patch, patch_len, seed | 1u, &split_err);
    int whole_rc = decode(&whole, with_target, patch, patch_len, 0, &whole_err);
    check(split_rc == whole_rc);
    if (split_rc != 0 && strcmp(split_err.msg, whole_err.msg) != 0) {
        fprintf(stderr, "split: %s\nwhole: %s\n", split_err.msg, whole_err.msg);
        check(!"the error depends on how the patch was split");
    }
    check(split.len == whole.len);
    check(split.len == 0 || memcmp(split.out, whole.out, split.len) == 0);
    free(split.out);
    free(whole.out);
    return 0;
}
