/* test_framing.c - fwup input packets and output frames; the output frames are
 * checked against every expected/<id>/<step>.framed.bin of the golden vectors. */
#include <glob.h>
#include <stdint.h>

#include "nh_framing.h"
#include "nh_test.h"

static const char *vectors_dir(void) {
    const char *env = getenv("NHLINK_VECTORS");
    return env && *env ? env : "../../../shared/vectors";
}

static uint8_t *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    *size = fread(buf, 1, (size_t)n, f);
    fclose(f);
    return buf;
}

typedef struct {
    uint8_t *data;
    size_t len, cap;
} bytes;

static void append(bytes *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->data = realloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
}

/* Decodes `data` fed in pieces of `step` bytes and re-encodes every frame. */
static int reencode(const uint8_t *data, size_t len, size_t step, bytes *out, size_t *frames,
                    char last_type[3]) {
    nh_frame_decoder d;
    nh_frame_decoder_init(&d);
    nh_err err;
    *frames = 0;
    for (size_t at = 0; at < len; at += step) {
        size_t n = len - at < step ? len - at : step, used = 0;
        while (used < n) {
            size_t consumed;
            nh_frame f;
            int rc = nh_frame_decoder_next(&d, data + at + used, n - used, &consumed, &f, &err);
            used += consumed;
            if (rc < 0) {
                fprintf(stderr, "  %s\n", err.msg);
                nh_frame_decoder_free(&d);
                return -1;
            }
            if (rc == 0)
                break;
            uint8_t *enc = malloc(8 + f.text_len);
            if (nh_frame_encode(f.type, f.code, f.text, f.text_len, enc, &err) != 0)
                return -1;
            append(out, enc, 8 + f.text_len);
            free(enc);
            memcpy(last_type, f.type, 2);
            last_type[2] = 0;
            (*frames)++;
        }
    }
    size_t pending = nh_frame_decoder_pending(&d);
    nh_frame_decoder_free(&d);
    return pending == 0 ? 0 : -1;
}

NH_TEST(vector_framed_outputs_round_trip) {
    char pattern[600];
    snprintf(pattern, sizeof(pattern), "%s/expected/*/*.framed.bin", vectors_dir());
    glob_t g;
    REQUIRE(glob(pattern, 0, NULL, &g) == 0);
    CHECK(g.gl_pathc >= 30);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        size_t len;
        uint8_t *data = slurp(g.gl_pathv[i], &len);
        REQUIRE(data);
        static const size_t steps[] = {1, 3, 7, 4096, (size_t)-1};
        size_t first_count = 0;
        for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
            bytes out = {0};
            size_t frames;
            char last[3] = "";
            int rc = reencode(data, len, steps[s] == (size_t)-1 ? len : steps[s], &out, &frames, last);
            if (rc != 0 || out.len != len || memcmp(out.data, data, len) != 0) {
                fprintf(stderr, "  %s (step %zu) does not round-trip\n", g.gl_pathv[i], steps[s]);
                CHECK(0);
            }
            CHECK(strcmp(last, "OK") == 0 || strcmp(last, "ER") == 0);
            if (s == 0)
                first_count = frames;
            CHECK_EQ_INT(frames, first_count);
            free(out.data);
        }
        free(data);
    }
    globfree(&g);
}

NH_TEST(frame_fields_of_vector_01) {
    char path[600];
    snprintf(path, sizeof(path), "%s/expected/01_minimal_raw/complete_wrongkey.framed.bin", vectors_dir());
    size_t len;
    uint8_t *data = slurp(path, &len);
    REQUIRE(data);
    nh_frame_decoder d;
    nh_frame_decoder_init(&d);
    nh_err err;
    nh_frame f;
    size_t consumed;
    REQUIRE(nh_frame_decoder_next(&d, data, len, &consumed, &f, &err) == 1);
    CHECK(memcmp(f.type, "PR", 2) == 0 && f.code == 0 && f.text_len == 0 && consumed == 8);
    REQUIRE(nh_frame_decoder_next(&d, data + 8, len - 8, &consumed, &f, &err) == 1);
    CHECK(memcmp(f.type, "ER", 2) == 0 && f.code == 0);
    const char *want = "Firmware archive's meta.conf fails digital signature verification.";
    CHECK(f.text_len == strlen(want) && memcmp(f.text, want, f.text_len) == 0);
    CHECK(consumed + 8 == len);
    nh_frame_decoder_free(&d);
    free(data);
}

NH_TEST(frame_lengths_are_checked) {
    nh_frame_decoder d;
    nh_err err;
    nh_frame f;
    size_t consumed;
    const uint8_t short_len[] = {0, 0, 0, 3, 'P', 'R', 0};
    nh_frame_decoder_init(&d);
    CHECK(nh_frame_decoder_next(&d, short_len, sizeof(short_len), &consumed, &f, &err) == -1);
    CHECK(strcmp(err.msg, "Invalid frame length 3") == 0);
    CHECK(nh_frame_decoder_next(&d, short_len, sizeof(short_len), &consumed, &f, &err) == -1);
    nh_frame_decoder_free(&d);

    /* byte by byte: the error comes with the fourth byte */
    const uint8_t big[] = {0, 0x10, 0, 1};
    nh_frame_decoder_init(&d);
    for (int i = 0; i < 3; i++)
        CHECK(nh_frame_decoder_next(&d, big + i, 1, &consumed, &f, &err) == 0);
    CHECK_EQ_INT(nh_frame_decoder_pending(&d), 3);
    CHECK(nh_frame_decoder_next(&d, big + 3, 1, &consumed, &f, &err) == -1);
    CHECK(strcmp(err.msg, "Invalid frame length 1048577") == 0);
    nh_frame_decoder_free(&d);

    /* the largest allowed frame, split in two */
    size_t n = 4 + NH_FRAME_MAX_LENGTH;
    uint8_t *max = malloc(n);
    REQUIRE(nh_frame_encode("WN", 7, (const uint8_t *)"", 0, max, &err) == 0);
    memset(max + 8, 'z', n - 8);
    max[0] = 0, max[1] = 0x10, max[2] = 0, max[3] = 0;
    nh_frame_decoder_init(&d);
    CHECK(nh_frame_decoder_next(&d, max, 1000, &consumed, &f, &err) == 0 && consumed == 1000);
    CHECK(nh_frame_decoder_next(&d, max + 1000, n - 1000, &consumed, &f, &err) == 1);
    CHECK(f.text_len == NH_FRAME_MAX_LENGTH - 4 && f.code == 7 && f.text[0] == 'z');
    CHECK_EQ_INT(nh_frame_decoder_pending(&d), 0);
    nh_frame_decoder_free(&d);
    CHECK(nh_frame_encode("WN", 0, max, NH_FRAME_MAX_LENGTH - 3, max, &err) == -1);
    free(max);
}

NH_TEST(frame_encoding_layout) {
    uint8_t out[16];
    nh_err err;
    REQUIRE(nh_frame_encode("OK", 0x1234, (const uint8_t *)"hi", 2, out, &err) == 0);
    CHECK(memcmp(out, "\0\0\0\x06OK\x12\x34hi", 10) == 0);
}

/* Packets of assorted sizes (0 terminates), fed in pieces of every size. */
NH_TEST(packets_decode_across_any_split) {
    bytes stream = {0}, payload = {0};
    uint8_t body[9000];
    for (size_t i = 0; i < sizeof(body); i++)
        body[i] = (uint8_t)(i * 7 + 3);
    static const size_t sizes[] = {1, 4096, 3, 8999, 512, 2};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        uint8_t hdr[4];
        nh_packet_header((uint32_t)sizes[i], hdr);
        append(&stream, hdr, 4);
        append(&stream, body, sizes[i]);
        append(&payload, body, sizes[i]);
    }
    append(&stream, "\0\0\0\0trailing", 12);
    for (size_t step = 1; step <= 4100; step += (step < 16 ? 1 : 611)) {
        nh_packet_decoder d;
        nh_packet_decoder_init(&d);
        bytes got = {0};
        size_t packets = 0;
        for (size_t at = 0; at < stream.len; at += step) {
            size_t n = stream.len - at < step ? stream.len - at : step, used = 0;
            for (;;) {
                size_t consumed, piece_len;
                const uint8_t *piece;
                int done;
                int rc = nh_packet_decoder_next(&d, stream.data + at + used, n - used, &consumed, &piece,
                                                &piece_len, &done);
                used += consumed;
                if (rc == 0)
                    break;
                CHECK(piece_len > 0);
                append(&got, piece, piece_len);
                packets += done;
            }
            CHECK_EQ_INT(used, n);
        }
        CHECK(d.finished);
        CHECK_EQ_INT(packets, sizeof(sizes) / sizeof(sizes[0]));
        CHECK(got.len == payload.len && memcmp(got.data, payload.data, got.len) == 0);
        nh_err err;
        CHECK(nh_packet_decoder_check_eof(&d, &err) == 0);
        free(got.data);
    }
    free(stream.data);
    free(payload.data);
}

NH_TEST(eof_inside_a_packet_is_an_error) {
    const char *msg = "Received EOF even though framing indicated more bytes";
    const uint8_t stream[] = {0, 0, 0, 3, 'a', 'b', 'c', 0, 0, 0, 2, 'x'};
    /* prefixes that end at a packet boundary are fine, others are not */
    for (size_t cut = 0; cut <= sizeof(stream); cut++) {
        nh_packet_decoder d;
        nh_packet_decoder_init(&d);
        size_t used = 0;
        while (used < cut) {
            size_t consumed, piece_len;
            const uint8_t *piece;
            int done;
            nh_packet_decoder_next(&d, stream + used, cut - used, &consumed, &piece, &piece_len, &done);
            used += consumed;
        }
        nh_err err;
        int rc = nh_packet_decoder_check_eof(&d, &err);
        if (cut == 0 || cut == 7) {
            CHECK(rc == 0);
        } else {
            CHECK(rc == -1);
            CHECK(strcmp(err.msg, msg) == 0);
        }
    }
}

NH_TEST_MAIN(NH_CASE(vector_framed_outputs_round_trip), NH_CASE(frame_fields_of_vector_01),
             NH_CASE(frame_lengths_are_checked), NH_CASE(frame_encoding_layout),
             NH_CASE(packets_decode_across_any_split), NH_CASE(eof_inside_a_packet_is_an_error))
