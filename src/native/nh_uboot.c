/* nh_uboot.c - U-Boot environment codec (see nh_uboot.h). */
#include "nh_uboot.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static uint32_t crc32_of(const uint8_t *data, size_t len) {
    uLong crc = crc32(0L, Z_NULL, 0);
    while (len > 0) {
        uInt n = len > UINT_MAX ? UINT_MAX : (uInt)len;
        crc = crc32(crc, data, n);
        data += n;
        len -= n;
    }
    return (uint32_t)crc;
}

static size_t header_size(int redundant) {
    return redundant ? 5 : 4;
}

void nh_uboot_env_free(nh_uboot_env *env) {
    free(env->vars);
    free(env->storage);
    env->vars = NULL;
    env->storage = NULL;
    env->count = 0;
}

/* Walks the variables of `data` (len bytes); with `vars` NULL only counts.
 * Each '=' and NUL separator is replaced by NUL in `data` when filling. */
static int scan_vars(char *data, size_t len, nh_uboot_var *vars, size_t *count, size_t *used,
                     nh_err *err) {
    size_t p = 0, n = 0;
    while (p < len && data[p] != '\0') {
        size_t name = p++;
        /* As fwup reads it: a name has at least one byte (which may itself be '='),
         * and ends at the first '=' after that byte. */
        while (p < len && data[p] != '=' && data[p] != '\0')
            p++;
        if (p >= len || data[p] != '=')
            return nh_fail(err, "Invalid U-boot environment");
        size_t eq = p;
        size_t value = ++p;
        while (p < len && data[p] != '\0')
            p++;
        if (p == len)
            return nh_fail(err, "Invalid U-boot environment");
        if (vars) {
            data[eq] = '\0';
            vars[n].name = data + name;
            vars[n].name_len = eq - name;
            vars[n].value = data + value;
            vars[n].value_len = p - value;
        }
        n++;
        p++;
    }
    *count = n;
    *used = p < len ? p + 1 : p;
    return 0;
}

int nh_uboot_decode(const uint8_t *block, size_t size, int redundant, nh_uboot_env *env, nh_err *err) {
    memset(env, 0, sizeof(*env));
    size_t hdr = header_size(redundant);
    if (size <= hdr)
        return nh_fail(err, "U-boot environment too small (%zu bytes)", size);
    env->stored_crc = (uint32_t)block[0] | (uint32_t)block[1] << 8 | (uint32_t)block[2] << 16 |
                      (uint32_t)block[3] << 24;
    env->computed_crc = crc32_of(block + hdr, size - hdr);
    if (env->stored_crc != env->computed_crc) {
        env->crc_mismatch = 1;
        return nh_fail(err, "CRC32 mismatch (expected 0x%08x; got 0x%08x)", env->stored_crc,
                       env->computed_crc);
    }
    env->flags = redundant ? block[4] : 0;

    size_t len = size - hdr, count = 0, used = 0;
    env->storage = malloc(len);
    if (!env->storage)
        return nh_fail(err, "out of memory");
    memcpy(env->storage, block + hdr, len);
    if (scan_vars(env->storage, len, NULL, &count, &used, err) != 0)
        goto fail;
    env->vars = calloc(count ? count : 1, sizeof(*env->vars));
    if (!env->vars) {
        nh_fail(err, "out of memory");
        goto fail;
    }
    if (scan_vars(env->storage, len, env->vars, &env->count, &env->used_bytes, err) != 0)
        goto fail;
    return 0;
fail:
    nh_uboot_env_free(env);
    return -1;
}

int nh_uboot_check_var(const nh_uboot_var *var, nh_err *err) {
    if (var->name_len == 0 || memchr(var->name, '=', var->name_len) ||
        memchr(var->name, '\0', var->name_len))
        return nh_fail(err, "Invalid U-boot variable name '%.*s'",
                       (int)(var->name_len > 200 ? 200 : var->name_len), var->name);
    if (memchr(var->value, '\0', var->value_len))
        return nh_fail(err, "Invalid value for U-boot variable '%.*s'",
                       (int)(var->name_len > 200 ? 200 : var->name_len), var->name);
    return 0;
}

static int by_name(const void *a, const void *b) {
    const nh_uboot_var *va = *(const nh_uboot_var *const *)a;
    const nh_uboot_var *vb = *(const nh_uboot_var *const *)b;
    size_t n = va->name_len < vb->name_len ? va->name_len : vb->name_len;
    int r = memcmp(va->name, vb->name, n);
    if (r != 0)
        return r;
    return va->name_len < vb->name_len ? -1 : va->name_len > vb->name_len;
}

int nh_uboot_encode(const nh_uboot_var *vars, size_t count, uint8_t *out, size_t size, int redundant,
                    uint8_t flags, nh_err *err) {
    size_t hdr = header_size(redundant);
    if (size < 8)
        return nh_fail(err, "u-boot environment block size too small");
    for (size_t i = 0; i < count; i++)
        if (nh_uboot_check_var(&vars[i], err) != 0)
            return -1;
    const nh_uboot_var **sorted = malloc((count ? count : 1) * sizeof(*sorted));
    if (!sorted)
        return nh_fail(err, "out of memory");
    for (size_t i = 0; i < count; i++)
        sorted[i] = &vars[i];
    qsort(sorted, count, sizeof(*sorted), by_name);

    memset(out, 0xff, size);
    size_t p = hdr, limit = size - 2;
    for (size_t i = 0; i < count; i++) {
        const nh_uboot_var *v = sorted[i];
        /* The variable's terminating NUL must land before size - 2. */
        size_t avail = limit - p;
        if (v->name_len >= avail || avail - v->name_len < 2 ||
            v->value_len > avail - v->name_len - 2) {
            free(sorted);
            return nh_fail(err, "Not enough room in U-boot environment");
        }
        memcpy(out + p, v->name, v->name_len);
        p += v->name_len;
        out[p++] = '=';
        memcpy(out + p, v->value, v->value_len);
        p += v->value_len;
        out[p++] = '\0';
    }
    free(sorted);
    out[p] = '\0';
    if (redundant)
        out[4] = flags;
    uint32_t crc = crc32_of(out + hdr, size - hdr);
    out[0] = (uint8_t)crc;
    out[1] = (uint8_t)(crc >> 8);
    out[2] = (uint8_t)(crc >> 16);
    out[3] = (uint8_t)(crc >> 24);
    return 0;
}
