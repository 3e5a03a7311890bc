/* fuzz_uboot.c - libFuzzer harness for the U-Boot environment codec (nh_uboot.c).
 *
 * Input: u8 mode | block. Decodes the block (plain or redundant), and when it
 * decodes, re-encodes the variables into a block of the same size and checks
 * that this decodes to the same variables (the round trip the engine relies
 * on for setenv). Bad CRCs are usually what decoding reports, so mode bit 1
 * recomputes the CRC first to reach the parser behind it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "nh_uboot.h"

/* A broken invariant: say which and abort (libFuzzer saves the input). */
#define check(condition)                                                                   \
    do {                                                                                   \
        if (!(condition)) {                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #condition); \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int redundant = data[0] & 1;
    int fix_crc = data[0] & 2;
    size_t block_size = size - 1;
    uint8_t *block = malloc(block_size ? block_size : 1);
    check(block != NULL);
    memcpy(block, data + 1, block_size);
    size_t header = redundant ? 5u : 4u;
    if (fix_crc && block_size >= header) {
        uLong crc = crc32(0L, block + header, (uInt)(block_size - header));
        block[0] = (uint8_t)crc;
        block[1] = (uint8_t)(crc >> 8);
        block[2] = (uint8_t)(crc >> 16);
        block[3] = (uint8_t)(crc >> 24);
    }

    nh_err err;
    nh_uboot_env env;
    if (nh_uboot_decode(block, block_size, redundant, &env, &err) == 0) {
        for (size_t i = 0; i < env.count; i++) {
            check(memchr(env.vars[i].name, '\0', env.vars[i].name_len) == NULL);
            check(memchr(env.vars[i].value, '\0', env.vars[i].value_len) == NULL);
        }
        uint8_t *again = malloc(block_size);
        check(again != NULL);
        int storable = 1;
        for (size_t i = 0; i < env.count; i++)
            if (nh_uboot_check_var(&env.vars[i], &err) != 0)
                storable = 0;
        if (storable && nh_uboot_encode(env.vars, env.count, again, block_size, redundant, env.flags, &err) == 0) {
            nh_uboot_env back;
            check(nh_uboot_decode(again, block_size, redundant, &back, &err) == 0);
            check(back.flags == env.flags);
            nh_uboot_env_free(&back);
        }
        free(again);
        nh_uboot_env_free(&env);
    }
    free(block);
    return 0;
}
