/* bench_hash.c - a sanity benchmark for cross builds (scripts/cross-test.sh).
 *
 * Times the two per-byte costs of the applier's hot path on the target:
 * BLAKE2b-256 (libsodium) and CRC-32 (zlib), each alone and both over the
 * same chunks, streaming a deterministic pattern through a 1 MiB buffer.
 *
 *   bench_hash [MiB]        default 64
 *
 * Prints one line per measurement ("name: N MB/s", MB = 10^6 bytes) and the
 * digests, so a run under qemu can be compared with a native run of the same
 * program: equal digests show the emulated build computes the same bytes.
 */
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <zlib.h>

#define CHUNK (1u << 20)

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Chunk number i of the stream: an xorshift64 sequence seeded by i. */
static void fill_chunk(unsigned char *buf, uint64_t i) {
    uint64_t x = 0x9e3779b97f4a7c15ull ^ (i + 1);
    for (size_t off = 0; off < CHUNK; off += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for (size_t b = 0; b < 8; b++)
            buf[off + b] = (unsigned char)(x >> (8 * b));
    }
}

static void print_rate(const char *name, uint64_t bytes, double seconds) {
    printf("%s: %.1f MB/s\n", name, (double)bytes / 1e6 / seconds);
}

static void print_hex(const char *name, const unsigned char *p, size_t n) {
    printf("%s: ", name);
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
    printf("\n");
}

int main(int argc, char **argv) {
    long mib = argc > 1 ? strtol(argv[1], NULL, 10) : 64;
    if (mib <= 0 || sodium_init() < 0) {
        fprintf(stderr, "usage: bench_hash [MiB > 0] (and libsodium must initialise)\n");
        return 2;
    }
    /* Two buffers in turn, refilled outside the timed regions. */
    unsigned char *bufs[2] = {malloc(CHUNK), malloc(CHUNK)};
    if (!bufs[0] || !bufs[1]) {
        fprintf(stderr, "out of memory\n");
        return 2;
    }
    const uint64_t bytes = (uint64_t)mib * CHUNK;
    double t_blake = 0, t_crc = 0, t_both = 0;
    crypto_generichash_blake2b_state alone, both;
    unsigned char digest_alone[32], digest_both[32];
    uLong crc_alone = crc32(0L, Z_NULL, 0), crc_both = crc_alone;
    crypto_generichash_blake2b_init(&alone, NULL, 0, sizeof digest_alone);
    crypto_generichash_blake2b_init(&both, NULL, 0, sizeof digest_both);

    for (uint64_t i = 0; i < (uint64_t)mib; i++) {
        unsigned char *buf = bufs[i & 1];
        fill_chunk(buf, i);
        double t0 = now_seconds();
        crypto_generichash_blake2b_update(&alone, buf, CHUNK);
        double t1 = now_seconds();
        crc_alone = crc32(crc_alone, buf, CHUNK);
        double t2 = now_seconds();
        crypto_generichash_blake2b_update(&both, buf, CHUNK);
        crc_both = crc32(crc_both, buf, CHUNK);
        double t3 = now_seconds();
        t_blake += t1 - t0;
        t_crc += t2 - t1;
        t_both += t3 - t2;
    }
    crypto_generichash_blake2b_final(&alone, digest_alone, sizeof digest_alone);
    crypto_generichash_blake2b_final(&both, digest_both, sizeof digest_both);
    free(bufs[0]);
    free(bufs[1]);

    printf("bytes: %llu\n", (unsigned long long)bytes);
    print_rate("blake2b-256", bytes, t_blake);
    print_rate("crc32", bytes, t_crc);
    print_rate("blake2b-256+crc32", bytes, t_both);
    print_hex("blake2b-256 digest", digest_alone, sizeof digest_alone);
    printf("crc32 value: %08lx\n", crc_alone);
    if (crc_alone != crc_both || sodium_memcmp(digest_alone, digest_both, sizeof digest_both) != 0) {
        fprintf(stderr, "combined pass disagrees with the single passes\n");
        return 1;
    }
    return 0;
}
