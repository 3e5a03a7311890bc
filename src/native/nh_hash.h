/* nh_hash.h - BLAKE2b-256 through the installed libsodium table.
 *
 * nh_blake2b_256() hashes one buffer on the calling thread.
 *
 * nh_hasher is a pipelined BLAKE2b-256: the caller submits byte ranges in
 * order and a helper thread hashes them while the caller goes on (inflating,
 * checking CRCs, writing). Submitted memory must stay unchanged until the job
 * is done: nh_hasher_wait(h, seq) waits for the job numbered seq (the value
 * nh_hasher_submit returned) and all before it. Small jobs submitted while the
 * helper is idle are hashed inline, so tiny feeds do not ping-pong between
 * threads. One caller thread per hasher.
 */
#ifndef NH_HASH_H
#define NH_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "nh_common.h"

#define NH_BLAKE2B_256_BYTES 32u

/* One-shot BLAKE2b-256 (no key). Fails only when no crypto table is installed. */
int nh_blake2b_256(const void *data, size_t len, unsigned char out[NH_BLAKE2B_256_BYTES], nh_err *err);

typedef struct nh_hasher nh_hasher;

int nh_hasher_new(nh_hasher **out, nh_err *err);
/* Stops and joins the helper thread (pending jobs are dropped) and frees. NULL is allowed. */
void nh_hasher_free(nh_hasher *h);

/* Starts a new digest; waits for any previous jobs first. */
int nh_hasher_begin(nh_hasher *h, nh_err *err);
/* Queues data[0..len) and returns its job number (> 0). len may be 0. */
uint64_t nh_hasher_submit(nh_hasher *h, const void *data, size_t len);
/* Waits until every job up to and including seq is hashed (seq 0 returns at once). */
void nh_hasher_wait(nh_hasher *h, uint64_t seq);
/* Waits for all jobs and writes the digest of everything since nh_hasher_begin. */
int nh_hasher_finish(nh_hasher *h, unsigned char out[NH_BLAKE2B_256_BYTES], nh_err *err);

/* The digest state after every job so far (waits for them): the bytes of
 * libsodium's crypto_generichash state, a plain struct. *len gets its size;
 * cap must be at least NH_BLAKE2B_STATE_MAX. */
int nh_hasher_export(nh_hasher *h, unsigned char *out, size_t cap, size_t *len, nh_err *err);
/* Continues the digest from exported state bytes (same libsodium): waits for
 * any jobs, then fails unless len is the state size and the state's buffer
 * fill (libsodium's reference layout) is in range. */
int nh_hasher_import(nh_hasher *h, const unsigned char *state, size_t len, nh_err *err);

#endif
