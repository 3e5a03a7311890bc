/* Test support: the C tests link the system libsodium and install it into
 * the nh_crypto table, the way the Python binding installs PyNaCl's copy. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>

#include "nh_crypto.h"
#include "nh_test.h"

void nh_test_setup(void) {
    if (sodium_init() < 0) {
        fprintf(stderr, "sodium_init failed\n");
        exit(2);
    }
    nh_crypto table = {
        .blake2b_init = crypto_generichash_blake2b_init_salt_personal,
        .blake2b_update = crypto_generichash_blake2b_update,
        .blake2b_final = crypto_generichash_blake2b_final,
        .blake2b_state_size = crypto_generichash_statebytes(),
        .sign_open = crypto_sign_open,
    };
    if (nh_crypto_set(&table) != 0) {
        fprintf(stderr, "nh_crypto_set failed\n");
        exit(2);
    }
}
