/* test_vcdiff.c - the VCDIFF decoder on hand-assembled patches (RFC 3284 default code table). */
#include <stdint.h>

#include "nh_test.h"
#include "nh_vcdiff.h"

static const uint8_t SOURCE[] = "0123456789AB";

typedef struct {
    uint8_t out[4096];
    size_t len;
    int source_reads;
} sink;

static int read_source(void *ctx, uint64_t offset, uint8_t *buf, size_t len, nh_err *err) {
    sink *s = ctx;
    s->source_reads++;
    if (offset + len > sizeof SOURCE - 1)
        return nh_fail(err, "source read out of range");
    memcpy(buf, SOURCE + offset, len);
    return 0;
}

static int read_target(void *ctx, uint64_t offset, uint8_t *buf, size_t len, nh_err *err) {
    sink *s = ctx;
    if (offset + len > s->len)
        return nh_fail(err, "target read out of range");
    memcpy(buf, s->out + offset, len);
    return 0;
}

static int write_target(void *ctx, const uint8_t *data, size_t len, nh_err *err) {
    sink *s = ctx;
    if (s->len + len > sizeof s->out)
        return nh_fail(err, "too much output");
    memcpy(s->out + s->len, data, len);
    s->len += len;
    return 0;
}

static uint32_t adler(const uint8_t *p, size_t n) {
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < n; i++) {
        a = (a + p[i]) % 65521u;
        b = (b + a) % 65521u;
    }
    return b << 16 | a;
}

static const char TARGET1[] = "HIxxxx2345HIxxxxxxxx2345";

/* Window 1 (VCD_SOURCE, segment "23456789", adler32): ADD "HI", RUN 4 'x', COPY 4 self@0,
 * COPY 6 here (target overlap), COPY 4 near[1]+2, COPY 4 same[0]. Window 2 (VCD_TARGET,
 * segment 0..4 of the target so far): COPY 4 self@0. */
static size_t build_patch(uint8_t *p, int with_second_window, int corrupt_adler) {
    size_t n = 0;
    static const uint8_t header[] = {0xD6, 0xC3, 0xC4, 0x00, 0x00};
    static const uint8_t data[] = {'H', 'I', 'x'};
    static const uint8_t inst[] = {3, 0, 4, 20, 38, 68, 116};
    static const uint8_t addr[] = {0, 10, 2, 0};
    memcpy(p, header, sizeof header);
    n += sizeof header;
    p[n++] = 0x05; /* VCD_SOURCE | VCD_ADLER32 */
    p[n++] = 8;    /* segment size */
    p[n++] = 2;    /* segment position */
    p[n++] = 1 + 1 + 3 + 4 + sizeof data + sizeof inst + sizeof addr;
    p[n++] = 24; /* target window length */
    p[n++] = 0;  /* delta indicator */
    p[n++] = sizeof data;
    p[n++] = sizeof inst;
    p[n++] = sizeof addr;
    uint32_t sum = adler((const uint8_t *)TARGET1, 24) ^ (corrupt_adler ? 1u : 0u);
    p[n++] = (uint8_t)(sum >> 24);
    p[n++] = (uint8_t)(sum >> 16);
    p[n++] = (uint8_t)(sum >> 8);
    p[n++] = (uint8_t)sum;
    memcpy(p + n, data, sizeof data);
    n += sizeof data;
    memcpy(p + n, inst, sizeof inst);
    n += sizeof inst;
    memcpy(p + n, addr, sizeof addr);
    n += sizeof addr;
    if (with_second_window) {
        static const uint8_t w2[] = {0x02, 4, 0, 7, 4, 0, 0, 1, 1, 20, 0};
        memcpy(p + n, w2, sizeof w2);
        n += sizeof w2;
    }
    return n;
}

static int decode(const uint8_t *patch, size_t len, size_t piece, sink *s, nh_err *err) {
    nh_vcdiff *d;
    memset(s, 0, sizeof *s);
    if (nh_vcdiff_new(&d, sizeof SOURCE - 1, read_source, read_target, write_target, s, err) != 0)
        return -1;
    int rc = 0;
    for (size_t off = 0; off < len && rc == 0; off += piece)
        rc = nh_vcdiff_feed(d, patch + off, len - off < piece ? len - off : piece, err);
    if (rc == 0)
        rc = nh_vcdiff_finish(d, err);
    if (rc == 0 && nh_vcdiff_target_size(d) != s->len)
        rc = nh_fail(err, "target size disagrees");
    nh_vcdiff_free(d);
    return rc;
}

NH_TEST(every_instruction_kind_and_address_mode) {
    uint8_t patch[128];
    size_t n = build_patch(patch, 1, 0);
    static const size_t pieces[] = {1, 2, 3, 7, 4096};
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) {
        sink s;
        nh_err err = {{0}};
        int rc = decode(patch, n, pieces[i], &s, &err);
        if (rc != 0)
            fprintf(stderr, "  piece %zu: %s\n", pieces[i], err.msg);
        REQUIRE(rc == 0);
        CHECK_EQ_INT(s.len, 28);
        CHECK(memcmp(s.out, TARGET1, 24) == 0);
        CHECK(memcmp(s.out + 24, "HIxx", 4) == 0);
    }
}

NH_TEST(adler32_mismatch_is_reported) {
    uint8_t patch[128];
    size_t n = build_patch(patch, 0, 1);
    sink s;
    nh_err err = {{0}};
    CHECK(decode(patch, n, 4096, &s, &err) == -1);
    CHECK(strcmp(err.msg, "VCDIFF: adler32 mismatch in window 0") == 0);
    CHECK_EQ_INT(s.len, 0);
}

NH_TEST(truncation_is_an_error_at_finish) {
    uint8_t patch[128];
    size_t first = build_patch(patch, 0, 0);
    size_t n = build_patch(patch, 1, 0);
    for (size_t cut = 0; cut < n; cut++) {
        sink s;
        nh_err err = {{0}};
        if (cut == 5 || cut == first) { /* between windows: a valid, shorter target */
            CHECK(decode(patch, cut, 5, &s, &err) == 0);
            CHECK_EQ_INT(s.len, cut == 5 ? 0 : 24);
            continue;
        }
        CHECK(decode(patch, cut, 5, &s, &err) == -1);
        if (cut < 5)
            CHECK(strcmp(err.msg, "VCDIFF: patch ends inside its header") == 0);
        else
            CHECK(strncmp(err.msg, "VCDIFF: patch ends inside window ", 33) == 0);
    }
}

NH_TEST(unsupported_and_malformed_headers) {
    sink s;
    nh_err err = {{0}};
    static const uint8_t secondary[] = {0xD6, 0xC3, 0xC4, 0x00, 0x01, 0x02};
    CHECK(decode(secondary, sizeof secondary, 4096, &s, &err) == -1);
    CHECK(strstr(err.msg, "secondary compression is not supported") != NULL);
    static const uint8_t magic[] = {'P', 'K', 3, 4, 0};
    CHECK(decode(magic, sizeof magic, 1, &s, &err) == -1);
    CHECK(strcmp(err.msg, "VCDIFF: not a VCDIFF patch (bad magic)") == 0);
    /* window whose source segment lies outside the 12-byte source */
    static const uint8_t outside[] = {0xD6, 0xC3, 0xC4, 0x00, 0x00, 0x01, 8, 5, 5, 0, 0, 0, 0, 0};
    CHECK(decode(outside, sizeof outside, 4096, &s, &err) == -1);
    CHECK(strstr(err.msg, "source segment outside the source") != NULL);
    /* an ADD larger than the data section */
    static const uint8_t overrun[] = {0xD6, 0xC3, 0xC4, 0x00, 0x00, 0x00, 6, 2, 0, 0, 1, 0, 3};
    CHECK(decode(overrun, sizeof overrun, 4096, &s, &err) == -1);
    CHECK(strcmp(err.msg, "VCDIFF: corrupt window 0 (data section overrun)") == 0);
}

NH_TEST(appheader_is_skipped) {
    uint8_t patch[160];
    static const uint8_t header[] = {0xD6, 0xC3, 0xC4, 0x00, 0x04, 3, 'a', 'b', 'c'};
    uint8_t plain[128];
    size_t n = build_patch(plain, 0, 0);
    memcpy(patch, header, sizeof header);
    memcpy(patch + sizeof header, plain + 5, n - 5);
    sink s;
    nh_err err = {{0}};
    REQUIRE(decode(patch, n - 5 + sizeof header, 2, &s, &err) == 0);
    CHECK(s.len == 24 && memcmp(s.out, TARGET1, 24) == 0);
}

/* xdelta3 ends the patch of an empty target with a window of target length 0 (empty body):
 * it must decode at once, whether it is last, first, or fed in pieces. */
NH_TEST(empty_windows_decode_without_a_body) {
    static const uint8_t header[] = {0xD6, 0xC3, 0xC4, 0x00, 0x00};
    static const uint8_t empty[] = {0x00, 5, 0, 0, 0, 0, 0};
    static const uint8_t empty_adler[] = {0x04, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1}; /* adler32("") = 1 */
    uint8_t window[128], patch[256];
    size_t wlen = build_patch(window, 0, 0) - sizeof header;
    memmove(window, window + sizeof header, wlen);
    static const size_t pieces[] = {1, 2, 7, 4096};
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) {
        for (int layout = 0; layout < 4; layout++) {
            size_t n = 0;
            memcpy(patch, header, sizeof header);
            n += sizeof header;
            if (layout == 1 || layout == 3) { /* a real window first */
                memcpy(patch + n, window, wlen);
                n += wlen;
            }
            memcpy(patch + n, layout < 2 ? empty : empty_adler, layout < 2 ? sizeof empty : sizeof empty_adler);
            n += layout < 2 ? sizeof empty : sizeof empty_adler;
            if (layout == 2) { /* ... and one after the empty window */
                memcpy(patch + n, window, wlen);
                n += wlen;
            }
            sink s;
            nh_err err = {{0}};
            int rc = decode(patch, n, pieces[i], &s, &err);
            if (rc != 0)
                fprintf(stderr, "  piece %zu, layout %d: %s\n", pieces[i], layout, err.msg);
            REQUIRE(rc == 0);
            CHECK_EQ_INT(s.len, layout == 0 ? 0 : 24);
            CHECK(s.len == 0 || memcmp(s.out, TARGET1, 24) == 0);
        }
    }
}

/* Random damage to a valid patch: any outcome but a crash or an out-of-window write. */
NH_TEST(random_mutations_are_handled) {
    uint8_t good[128], patch[160];
    size_t n = build_patch(good, 1, 0);
    uint32_t state = 12345;
    int failures = 0;
    for (int round = 0; round < 20000; round++) {
        memcpy(patch, good, n);
        size_t len = n;
        for (int k = 0; k < 1 + round % 4; k++) {
            state = state * 1103515245u + 12345u;
            size_t at = (state >> 8) % len;
            switch ((state >> 4) % 3) {
            case 0:
                patch[at] ^= (uint8_t)(1u << (state >> 20) % 8);
                break;
            case 1:
                patch[at] = (uint8_t)(state >> 16);
                break;
            default:
                len = at > 5 ? at : len; /* truncate */
            }
        }
        sink s;
        nh_err err = {{0}};
        if (decode(patch, len, 1 + round % 7, &s, &err) != 0) {
            failures++;
            CHECK(strncmp(err.msg, "VCDIFF: ", 8) == 0 || strstr(err.msg, "out of range") != NULL);
        }
        CHECK(s.len <= sizeof s.out);
    }
    CHECK(failures > 10000);
}

NH_TEST_MAIN(NH_CASE(random_mutations_are_handled), NH_CASE(empty_windows_decode_without_a_body), NH_CASE(every_instruction_kind_and_address_mode), NH_CASE(adler32_mismatch_is_reported),
             NH_CASE(truncation_is_an_error_at_finish), NH_CASE(unsupported_and_malformed_headers),
             NH_CASE(appheader_is_skipped))
