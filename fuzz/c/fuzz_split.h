/* fuzz_split.h - the control prefix shared by the zip harnesses (C and Python).
 *
 * An input is  u32 LE split seed | u8 sink seed | archive bytes.
 * Both seeds drive a xorshift32 generator; fuzz/py/split.py implements the
 * same generator so the differential harness replays identical splits.
 */
#ifndef FUZZ_SPLIT_H
#define FUZZ_SPLIT_H

#include <stddef.h>
#include <stdint.h>

#define FUZZ_PREFIX_LEN 5u

typedef struct fuzz_rng {
    uint32_t state;
} fuzz_rng;

static inline void fuzz_rng_init(fuzz_rng *r, uint32_t seed) { r->state = seed ? seed : 0x9e3779b9u; }

static inline uint32_t fuzz_rng_next(fuzz_rng *r)
{
    uint32_t x = r->state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    r->state = x;
    return x;
}

/* Length of the next piece of input: 1 .. 2^16, mostly small. */
static inline size_t fuzz_next_piece(fuzz_rng *r)
{
    uint32_t shift = fuzz_rng_next(r) % 17u;
    return 1u + fuzz_rng_next(r) % (1u << shift);
}

static inline uint32_t fuzz_read_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#endif
