/* Tests of nh_hash: one-shot BLAKE2b-256 and the threaded pipeline, checked
 * against libsodium called directly. */
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nh_crypto.h"
#include "nh_hash.h"
#include "nh_test.h"

static void reference(const unsigned char *p, size_t n, unsigned char out[32]) {
    crypto_generichash_blake2b(out, 32, p, n, NULL, 0);
}

static unsigned char *random_bytes(size_t n) {
    unsigned char *p = malloc(n ? n : 1);
    randombytes_buf(p, n);
    return p;
}

NH_TEST(one_shot_matches_libsodium) {
    size_t sizes[] = {0, 1, 127, 128, 129, 4096, 1000003};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        unsigned char *p = random_bytes(sizes[i]);
        unsigned char got[32], want[32];
        nh_err err;
        CHECK_EQ_INT(nh_blake2b_256(p, sizes[i], got, &err), 0);
        reference(p, sizes[i], want);
        CHECK(memcmp(got, want, 32) == 0);
        free(p);
    }
}

/* Submits the data in pieces of varying sizes (small ones are hashed
 * inline, large ones on the helper) and compares with one-shot. */
static void pipeline_in_pieces(nh_hasher *h, const unsigned char *p, size_t n, uint32_t seed) {
    unsigned char got[32], want[32];
    nh_err err;
    REQUIRE(nh_hasher_begin(h, &err) == 0);
    size_t at = 0;
    uint64_t last = 0;
    while (at < n) {
        seed = seed * 1103515245u + 12345u;
        size_t piece = (seed >> 8) % 3 == 0 ? (seed >> 4) % 100 : (seed >> 4) % 300000;
        if (piece > n - at)
            piece = n - at;
        uint64_t seq = nh_hasher_submit(h, p + at, piece);
        CHECK(seq > last);
        last = seq;
        at += piece;
    }
    REQUIRE(nh_hasher_finish(h, got, &err) == 0);
    reference(p, n, want);
    CHECK(memcmp(got, want, 32) == 0);
}

NH_TEST(pipeline_matches_one_shot) {
    nh_hasher *h;
    nh_err err;
    REQUIRE(nh_hasher_new(&h, &err) == 0);
    size_t n = 5u << 20;
    unsigned char *p = random_bytes(n);
    pipeline_in_pieces(h, p, n, 1);
    pipeline_in_pieces(h, p, n, 2);      /* the same hasher, a second digest */
    pipeline_in_pieces(h, p, 0, 3);      /* empty */
    pipeline_in_pieces(h, p, 17, 4);     /* tiny, inline only */
    free(p);
    nh_hasher_free(h);
}

/* After nh_hasher_wait(seq) the buffers of jobs <= seq may be reused. */
NH_TEST(wait_releases_buffers) {
    enum { BUF = 256 * 1024, NBUF = 3, ROUNDS = 40 };
    nh_hasher *h;
    nh_err err;
    REQUIRE(nh_hasher_new(&h, &err) == 0);
    unsigned char *bufs[NBUF];
    uint64_t job[NBUF] = {0};
    for (int i = 0; i < NBUF; i++)
        bufs[i] = malloc(BUF);
    unsigned char *all = malloc((size_t)BUF * ROUNDS);
    randombytes_buf(all, (size_t)BUF * ROUNDS);
    REQUIRE(nh_hasher_begin(h, &err) == 0);
    for (int r = 0; r < ROUNDS; r++) {
        int b = r % NBUF;
        nh_hasher_wait(h, job[b]);
        memcpy(bufs[b], all + (size_t)r * BUF, BUF);
        /* two halves: two jobs on one buffer */
        nh_hasher_submit(h, bufs[b], BUF / 2);
        job[b] = nh_hasher_submit(h, bufs[b] + BUF / 2, BUF / 2);
    }
    unsigned char got[32], want[32];
    REQUIRE(nh_hasher_finish(h, got, &err) == 0);
    reference(all, (size_t)BUF * ROUNDS, want);
    CHECK(memcmp(got, want, 32) == 0);
    for (int i = 0; i < NBUF; i++)
        free(bufs[i]);
    free(all);
    nh_hasher_free(h);
}

NH_TEST(free_with_jobs_pending) {
    nh_hasher *h;
    nh_err err;
    REQUIRE(nh_hasher_new(&h, &err) == 0);
    size_t n = 8u << 20;
    unsigned char *p = random_bytes(n);
    REQUIRE(nh_hasher_begin(h, &err) == 0);
    for (size_t at = 0; at < n; at += 1u << 20)
        nh_hasher_submit(h, p + at, 1u << 20);
    nh_hasher_free(h); /* joins; must not crash or leak */
    free(p);
    nh_hasher_free(NULL);
}

/* A state exported mid-way continues to the same digest in another hasher;
 * one with its buffer fill out of range is refused. */
NH_TEST(export_and_import_continue_the_digest) {
    nh_hasher *a, *b;
    nh_err err;
    REQUIRE(nh_hasher_new(&a, &err) == 0);
    REQUIRE(nh_hasher_new(&b, &err) == 0);
    size_t n = 3u << 20, cut = (1u << 20) + 100; /* a cut that leaves a partial block */
    unsigned char *p = random_bytes(n);
    REQUIRE(nh_hasher_begin(a, &err) == 0);
    nh_hasher_submit(a, p, cut);
    unsigned char state[NH_BLAKE2B_STATE_MAX];
    size_t len = 0;
    REQUIRE(nh_hasher_export(a, state, sizeof(state), &len, &err) == 0);
    CHECK_EQ_INT((long long)len, (long long)crypto_generichash_statebytes());
    size_t buflen;
    memcpy(&buflen, state + 352, sizeof(buflen)); /* the reference layout's buffer fill */
    CHECK(buflen > 0 && buflen <= 256);
    REQUIRE(nh_hasher_begin(b, &err) == 0);
    REQUIRE(nh_hasher_import(b, state, len, &err) == 0);
    nh_hasher_submit(b, p + cut, n - cut);
    unsigned char got[32], want[32];
    REQUIRE(nh_hasher_finish(b, got, &err) == 0);
    reference(p, n, want);
    CHECK(memcmp(got, want, 32) == 0);
    CHECK(nh_hasher_import(b, state, len - 1, &err) == -1);
    buflen = 257;
    memcpy(state + 352, &buflen, sizeof(buflen));
    CHECK(nh_hasher_import(b, state, len, &err) == -1);
    free(p);
    nh_hasher_free(a);
    nh_hasher_free(b);
}

NH_TEST_MAIN(NH_CASE(one_shot_matches_libsodium), NH_CASE(pipeline_matches_one_shot),
             NH_CASE(wait_releases_buffers), NH_CASE(free_with_jobs_pending),
             NH_CASE(export_and_import_continue_the_digest))
