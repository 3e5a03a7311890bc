/* test_uboot.c - U-Boot environment codec, checked against the golden vectors. */
#include <stdint.h>
#include <sys/stat.h>
#include <zlib.h>

#include "nh_test.h"
#include "nh_uboot.h"

#define ENV_SIZE 8192

static nh_uboot_var var(const char *name, const char *value) {
    nh_uboot_var v = {name, strlen(name), value, strlen(value)};
    return v;
}

static const char *vectors_dir(void) {
    const char *env = getenv("NHLINK_VECTORS");
    return env && *env ? env : "../../../shared/vectors";
}

/* Variables and CRC-32 of MANIFEST.json, 02_ab_uboot step "complete". */
static const char *const complete_vars[][2] = {
    {"nerves_fw_validated", "1"},
    {"a.nerves_fw_platform", "vectors"},
    {"nerves_fw_active", "a"},
    {"a.nerves_fw_uuid", "17614fcd-89ae-530e-5bcd-af514ad97bdd"},
    {"nerves_fw_devpath", "/dev/mmcblk0"},
    {"a.nerves_fw_version", "1.0.0"},
    {"a.nerves_fw_architecture", "any"},
};
#define COMPLETE_CRC 0xad1ec5e5u
#define COMPLETE_USED 211

/* ... and step "validate" (11 variables). */
static const char *const validate_vars[][2] = {
    {"a.nerves_fw_architecture", "any"},
    {"a.nerves_fw_platform", "vectors"},
    {"a.nerves_fw_uuid", "17614fcd-89ae-530e-5bcd-af514ad97bdd"},
    {"a.nerves_fw_version", "1.0.0"},
    {"b.nerves_fw_architecture", "any"},
    {"b.nerves_fw_platform", "vectors"},
    {"b.nerves_fw_uuid", "17614fcd-89ae-530e-5bcd-af514ad97bdd"},
    {"b.nerves_fw_version", "1.0.0"},
    {"nerves_fw_active", "b"},
    {"nerves_fw_devpath", "/dev/mmcblk0"},
    {"nerves_fw_validated", "1"},
};
#define VALIDATE_CRC 0xe1e9f33cu
#define VALIDATE_USED 349

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void check_vector(const char *const (*vars)[2], size_t n, uint32_t crc, size_t used) {
    nh_uboot_var list[16];
    for (size_t i = 0; i < n; i++)
        list[i] = var(vars[i][0], vars[i][1]);
    uint8_t *block = malloc(ENV_SIZE);
    nh_err err;
    REQUIRE(nh_uboot_encode(list, n, block, ENV_SIZE, 0, 0, &err) == 0);
    CHECK_EQ_INT(le32(block), crc);

    nh_uboot_env env;
    REQUIRE(nh_uboot_decode(block, ENV_SIZE, 0, &env, &err) == 0);
    CHECK_EQ_INT(env.count, n);
    CHECK_EQ_INT(env.used_bytes, used);
    CHECK_EQ_INT(env.stored_crc, crc);
    for (size_t i = 0; i < env.count; i++) {
        if (i > 0) /* sorted by name */
            CHECK(strcmp(env.vars[i - 1].name, env.vars[i].name) < 0);
        int found = 0;
        for (size_t j = 0; j < n; j++)
            if (strcmp(vars[j][0], env.vars[i].name) == 0 && strcmp(vars[j][1], env.vars[i].value) == 0 &&
                env.vars[i].value_len == strlen(vars[j][1]))
                found = 1;
        CHECK(found);
    }
    CHECK(block[4 + used - 1] == 0 && block[4 + used - 2] == 0);
    for (size_t i = 4 + used; i < ENV_SIZE; i++)
        if (block[i] != 0xff) {
            CHECK(block[i] == 0xff);
            break;
        }
    nh_uboot_env_free(&env);
    free(block);
}

NH_TEST(encode_matches_vector_crcs) {
    check_vector(complete_vars, sizeof(complete_vars) / sizeof(complete_vars[0]), COMPLETE_CRC,
                 COMPLETE_USED);
    check_vector(validate_vars, sizeof(validate_vars) / sizeof(validate_vars[0]), VALIDATE_CRC,
                 VALIDATE_USED);
}

/* expected/02_ab_uboot/upgrade_blank.img.xz: the env area (block 256, 16
 * blocks) of a blank image; MANIFEST says crc32 00000000, crc_ok false. */
NH_TEST(blank_vector_image_has_a_crc_error) {
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "xz -dc '%s/expected/02_ab_uboot/upgrade_blank.img.xz'", vectors_dir());
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    uint8_t *img = malloc(512 * 272);
    size_t n = fread(img, 1, 512 * 272, p);
    char rest[4096];
    while (fread(rest, 1, sizeof(rest), p) > 0) {
    }
    int status = pclose(p);
    REQUIRE(status == 0 && n == 512 * 272);
    const uint8_t *block = img + 256 * 512;
    nh_uboot_env env;
    nh_err err;
    CHECK(nh_uboot_decode(block, ENV_SIZE, 0, &env, &err) == -1);
    CHECK(env.crc_mismatch);
    CHECK_EQ_INT(env.stored_crc, 0);
    CHECK_EQ_INT(env.computed_crc, crc32(crc32(0, Z_NULL, 0), block + 4, ENV_SIZE - 4));
    char want[100];
    snprintf(want, sizeof(want), "CRC32 mismatch (expected 0x00000000; got 0x%08x)", env.computed_crc);
    CHECK(strcmp(err.msg, want) == 0);
    CHECK(env.vars == NULL && env.storage == NULL);
    free(img);
}

NH_TEST(redundant_copy_has_flags_and_crc_after_them) {
    nh_uboot_var list[] = {var("bootcmd", "run x"), var("a", "")};
    uint8_t block[1024];
    nh_err err;
    REQUIRE(nh_uboot_encode(list, 2, block, sizeof(block), 1, 0x7f, &err) == 0);
    CHECK(block[4] == 0x7f);
    CHECK(memcmp(block + 5, "a=\0bootcmd=run x\0\0\xff", 19) == 0);
    CHECK_EQ_INT(le32(block), crc32(crc32(0, Z_NULL, 0), block + 5, sizeof(block) - 5));
    nh_uboot_env env;
    REQUIRE(nh_uboot_decode(block, sizeof(block), 1, &env, &err) == 0);
    CHECK_EQ_INT(env.flags, 0x7f);
    CHECK_EQ_INT(env.count, 2);
    CHECK(strcmp(env.vars[0].name, "a") == 0 && env.vars[0].value_len == 0);
    CHECK(strcmp(env.vars[1].value, "run x") == 0);
    nh_uboot_env_free(&env);
    /* read as a plain env, the flags byte breaks the CRC */
    CHECK(nh_uboot_decode(block, sizeof(block), 0, &env, &err) == -1 && env.crc_mismatch);
}

NH_TEST(sort_is_bytewise) {
    nh_uboot_var list[] = {var("b", "1"), var("\xc3\xa9", "2"), var("B", "3"), var("_", "4"), var("ab", "5"),
                           var("a", "6")};
    uint8_t block[64];
    nh_err err;
    REQUIRE(nh_uboot_encode(list, 6, block, sizeof(block), 0, 0, &err) == 0);
    const char want[] = "B=3\0_=4\0a=6\0ab=5\0b=1\0\xc3\xa9=2\0";
    CHECK(memcmp(block + 4, want, sizeof(want)) == 0);
}

NH_TEST(room_limit_is_size_minus_two) {
    /* plain, 16 bytes: a variable's NUL must be before index 14 */
    uint8_t block[16];
    nh_err err;
    nh_uboot_var fits = var("a", "bcdefgh"); /* "a=bcdefgh\0" ends at 13 */
    nh_uboot_var too_big = var("a", "bcdefghi");
    CHECK(nh_uboot_encode(&fits, 1, block, sizeof(block), 0, 0, &err) == 0);
    CHECK(block[13] == 0 && block[14] == 0 && block[15] == 0xff);
    CHECK(nh_uboot_encode(&too_big, 1, block, sizeof(block), 0, 0, &err) == -1);
    CHECK(strcmp(err.msg, "Not enough room in U-boot environment") == 0);
    /* redundant: one byte less */
    CHECK(nh_uboot_encode(&fits, 1, block, sizeof(block), 1, 0, &err) == -1);
    nh_uboot_var smaller = var("a", "bcdefg");
    CHECK(nh_uboot_encode(&smaller, 1, block, sizeof(block), 1, 0, &err) == 0);
    /* an empty environment in the smallest block */
    CHECK(nh_uboot_encode(NULL, 0, block, 8, 1, 3, &err) == 0);
    nh_uboot_env env;
    CHECK(nh_uboot_decode(block, 8, 1, &env, &err) == 0 && env.count == 0 && env.flags == 3);
    nh_uboot_env_free(&env);
    CHECK(nh_uboot_encode(NULL, 0, block, 7, 0, 0, &err) == -1);
}

NH_TEST(rejects_bad_names_and_values) {
    uint8_t block[256];
    nh_err err;
    nh_uboot_var bad[] = {var("a=b", "x"), var("", "x"), {"a\0b", 3, "x", 1}, {"ok", 2, "x\0y", 3}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(nh_uboot_encode(&bad[i], 1, block, sizeof(block), 0, 0, &err) == -1);
        CHECK(strncmp(err.msg, "Invalid ", 8) == 0);
    }
}

static void seal(uint8_t *block, size_t size) {
    uint32_t crc = (uint32_t)crc32(crc32(0, Z_NULL, 0), block + 4, (uInt)(size - 4));
    block[0] = (uint8_t)crc;
    block[1] = (uint8_t)(crc >> 8);
    block[2] = (uint8_t)(crc >> 16);
    block[3] = (uint8_t)(crc >> 24);
}

NH_TEST(decode_rejects_malformed_blocks) {
    const char *bodies[] = {"novalue\0\0", "=x\0\0", "a=b\0c"};
    size_t lens[] = {9, 4, 5};
    for (size_t i = 0; i < 3; i++) {
        uint8_t block[4 + 9];
        memcpy(block + 4, bodies[i], lens[i]);
        seal(block, 4 + lens[i]);
        nh_uboot_env env;
        nh_err err;
        CHECK(nh_uboot_decode(block, 4 + lens[i], 0, &env, &err) == -1);
        CHECK(!env.crc_mismatch);
        CHECK(strcmp(err.msg, "Invalid U-boot environment") == 0);
    }
    /* without the extra NUL, ending exactly at the block end, is accepted */
    uint8_t block[4 + 8];
    memcpy(block + 4, "a=b\0c=d", 8);
    seal(block, sizeof(block));
    nh_uboot_env env;
    nh_err err;
    CHECK(nh_uboot_decode(block, sizeof(block), 0, &env, &err) == 0 && env.count == 2);
    nh_uboot_env_free(&env);
    CHECK(nh_uboot_decode(block, 4, 0, &env, &err) == -1);
}

NH_TEST(single_bit_flip_is_a_crc_error) {
    nh_uboot_var list[] = {var("x", "y")};
    uint8_t block[512];
    nh_err err;
    REQUIRE(nh_uboot_encode(list, 1, block, sizeof(block), 0, 0, &err) == 0);
    uint32_t stored = le32(block);
    block[400] ^= 0x10; /* in the 0xff fill */
    nh_uboot_env env;
    CHECK(nh_uboot_decode(block, sizeof(block), 0, &env, &err) == -1);
    CHECK(env.crc_mismatch && env.stored_crc == stored && env.computed_crc != stored);
}

NH_TEST(duplicate_names_decode_in_block_order) {
    uint8_t block[4 + 12];
    memcpy(block + 4, "k=1\0k=2\0\0\xff\xff\xff", 12);
    seal(block, sizeof(block));
    nh_uboot_env env;
    nh_err err;
    REQUIRE(nh_uboot_decode(block, sizeof(block), 0, &env, &err) == 0);
    CHECK_EQ_INT(env.count, 2);
    CHECK(strcmp(env.vars[1].value, "2") == 0);
    CHECK_EQ_INT(env.used_bytes, 9);
    nh_uboot_env_free(&env);
}

NH_TEST_MAIN(NH_CASE(encode_matches_vector_crcs), NH_CASE(blank_vector_image_has_a_crc_error),
             NH_CASE(redundant_copy_has_flags_and_crc_after_them), NH_CASE(sort_is_bytewise),
             NH_CASE(room_limit_is_size_minus_two), NH_CASE(rejects_bad_names_and_values),
             NH_CASE(decode_rejects_malformed_blocks), NH_CASE(single_bit_flip_is_a_crc_error),
             NH_CASE(duplicate_names_decode_in_block_order))
