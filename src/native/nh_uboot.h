/* nh_uboot.h - U-Boot environment codec (one copy of an environment block).
 *
 *   plain:     [0..3] CRC-32 LE | [4..]  "name=value\0"... "\0" | 0xFF fill
 *   redundant: [0..3] CRC-32 LE | [4] flags | [5..] the same
 *
 * The CRC-32 (zlib's) covers everything after the header, fill included.
 * Encoding sorts variables by name (bytewise, strcmp order). Choosing between
 * the two copies of a redundant environment is the caller's job.
 * See ../shared/spec/fwup.md section 5.
 */
#ifndef NH_UBOOT_H
#define NH_UBOOT_H

#include "nh_common.h"

/* A variable: byte strings with explicit lengths (neither contains NUL). */
typedef struct nh_uboot_var {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} nh_uboot_var;

typedef struct nh_uboot_env {
    nh_uboot_var *vars; /* in block order; pointers into `storage` */
    size_t count;
    uint8_t flags;         /* redundant only, else 0 */
    uint32_t stored_crc;   /* the CRC-32 found in the header */
    uint32_t computed_crc; /* the CRC-32 of the data */
    int crc_mismatch;      /* set when decoding failed because the two differ */
    size_t used_bytes;     /* bytes of variables plus the terminating NUL */
    char *storage;
} nh_uboot_env;

/* Decodes one copy. On failure env holds no allocations; env->crc_mismatch
 * tells a CRC error ("CRC32 mismatch (expected 0x..; got 0x..)") apart from a
 * malformed block ("Invalid U-boot environment"). */
int nh_uboot_decode(const uint8_t *block, size_t size, int redundant, nh_uboot_env *env, nh_err *err);
void nh_uboot_env_free(nh_uboot_env *env);

/* Checks that a name can be stored (not empty, no '=' or NUL) and a value
 * (no NUL). */
int nh_uboot_check_var(const nh_uboot_var *var, nh_err *err);

/* Encodes `count` variables into `out` (`size` bytes, one whole copy). */
int nh_uboot_encode(const nh_uboot_var *vars, size_t count, uint8_t *out, size_t size, int redundant,
                    uint8_t flags, nh_err *err);

#endif
