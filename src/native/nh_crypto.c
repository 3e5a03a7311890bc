/* nh_crypto.c - the installed libsodium function table. */
#include "nh_crypto.h"

static nh_crypto installed;
static int have_table;

int nh_crypto_set(const nh_crypto *table) {
    if (!table || !table->blake2b_init || !table->blake2b_update || !table->blake2b_final ||
        !table->sign_open || table->blake2b_state_size == 0 ||
        table->blake2b_state_size > NH_BLAKE2B_STATE_MAX)
        return -1;
    installed = *table;
    have_table = 1;
    return 0;
}

const nh_crypto *nh_crypto_get(void) { return have_table ? &installed : 0; }
