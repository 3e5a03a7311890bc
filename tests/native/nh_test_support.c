/* Test support: the C tests link the system libsodium and install it into
 * the nh_crypto table, the way the Python binding installs PyNaCl's copy. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>

#include "nh_crypto.h"
#include "nh_test.h"

/* libsodium's prototypes take a typed state pointer; nh_crypto takes void *. */
static int blake2b_init(void *state, const unsigned char *key, size_t keylen, size_t outlen,
                        const unsigned char *salt, const unsigned char *personal) {
    return crypto_generichash_blake2b_init_salt_personal(state, key, keylen, outlen, salt, personal);
}

static int blake2b_update(void *state, const unsigned char *in, unsigned long long inlen) {
    return crypto_generichash_blake2b_update(state, in, inlen);
}

static int blake2b_final(void *state, unsigned char *out, size_t outlen) {
    return crypto_generichash_blake2b_final(state, out, outlen);
}

void nh_test_setup(void) {
    if (sodium_init() < 0) {
        fprintf(stderr, "sodium_init failed\n");
        exit(2);
    }
    nh_crypto table = {
        .blake2b_init = blake2b_init,
        .blake2b_update = blake2b_update,
        .blake2b_final = blake2b_final,
        .blake2b_state_size = crypto_generichash_statebytes(),
        .sign_open = crypto_sign_open,
    };
    if (nh_crypto_set(&table) != 0) {
        fprintf(stderr, "nh_crypto_set failed\n");
        exit(2);
    }
}
