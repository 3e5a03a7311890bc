/* nh_crypto.h - the libsodium functions the core uses, as pointers.
 *
 * The core is built without libsodium headers: the Python binding fills this
 * table from PyNaCl's own cffi module (nacl._sodium), the C tests from a
 * libsodium they link. Never hand-written crypto.
 */
#ifndef NH_CRYPTO_H
#define NH_CRYPTO_H

#include <stddef.h>

typedef struct nh_crypto {
    /* crypto_generichash_blake2b_init_salt_personal(state, key, keylen, outlen, salt, personal) */
    int (*blake2b_init)(void *state, const unsigned char *key, size_t keylen, size_t outlen,
                        const unsigned char *salt, const unsigned char *personal);
    /* crypto_generichash_blake2b_update(state, in, inlen) */
    int (*blake2b_update)(void *state, const unsigned char *in, unsigned long long inlen);
    /* crypto_generichash_blake2b_final(state, out, outlen) */
    int (*blake2b_final)(void *state, unsigned char *out, size_t outlen);
    /* crypto_generichash_statebytes() - at most NH_BLAKE2B_STATE_MAX */
    size_t blake2b_state_size;
    /* crypto_sign_open(m, &mlen, sm, smlen, pk): Ed25519, signature || message */
    int (*sign_open)(unsigned char *m, unsigned long long *mlen, const unsigned char *sm,
                     unsigned long long smlen, const unsigned char *pk);
} nh_crypto;

#define NH_BLAKE2B_STATE_MAX 512

/* Install the table (copied). Returns 0, or -1 if a pointer is NULL or the state is too big. */
int nh_crypto_set(const nh_crypto *table);
/* The installed table, or NULL before nh_crypto_set(). */
const nh_crypto *nh_crypto_get(void);

#endif
