/* test_cache.c - the block cache against real files (and a loop device when
 * running as root with losetup available). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nh_cache.h"
#include "nh_test.h"

#define SEG ((size_t)NH_SEGMENT_SIZE)

static char test_dir[256];
static int path_counter;

static void remove_test_dir(void) {
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", test_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", test_dir);
}

static const char *tmp_path(char *buf, size_t n) {
    if (!test_dir[0]) {
        snprintf(test_dir, sizeof(test_dir), "/tmp/nh_cache_test.XXXXXX");
        if (!mkdtemp(test_dir)) {
            perror("mkdtemp");
            exit(2);
        }
        atexit(remove_test_dir);
    }
    snprintf(buf, n, "%s/f%d", test_dir, path_counter++);
    return buf;
}

static void fill_file(const char *path, size_t size, int byte) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    uint8_t block[4096];
    memset(block, byte, sizeof(block));
    for (size_t done = 0; done < size;) {
        size_t n = size - done < sizeof(block) ? size - done : sizeof(block);
        fwrite(block, 1, n, f);
        done += n;
    }
    fclose(f);
}

static uint8_t *slurp(const char *path, size_t *size) {
    struct stat st;
    if (stat(path, &st) != 0)
        return NULL;
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    FILE *f = fopen(path, "rb");
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    *size = n;
    return buf;
}

static size_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (size_t)st.st_size : (size_t)-1;
}

static int all_bytes(const uint8_t *p, size_t n, int byte) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (uint8_t)byte)
            return 0;
    return 1;
}

static void pattern(uint8_t *buf, size_t n, unsigned seed) {
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
}

static nh_cache *open_cache(const char *path, uint64_t cache_size, int verify, uint64_t max_size) {
    nh_cache_options o = {cache_size, verify, max_size};
    nh_cache *c = NULL;
    nh_err err = {{0}};
    if (nh_cache_open(&c, path, &o, &err) != 0) {
        fprintf(stderr, "  open %s: %s\n", path, err.msg);
        return NULL;
    }
    return c;
}

NH_TEST(creates_missing_file_and_grows_in_segments) {
    char path[300];
    tmp_path(path, sizeof(path));
    nh_cache *c = open_cache(path, 0, -1, 0);
    REQUIRE(c);
    nh_err err;
    struct stat st;
    REQUIRE(stat(path, &st) == 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0644);
    CHECK_EQ_INT(nh_cache_size(c), 0);
    CHECK(!nh_cache_is_block_device(c));

    uint8_t data[1000];
    pattern(data, sizeof(data), 1);
    CHECK(nh_cache_write(c, SEG + 512, data, sizeof(data), 0, &err) == 0);
    CHECK_EQ_INT(file_size(path), 0); /* nothing written before flush */
    CHECK(nh_cache_flush(c, &err) == 0);
    CHECK_EQ_INT(file_size(path), 2 * SEG);
    CHECK_EQ_INT(nh_cache_size(c), 2 * SEG);
    nh_cache_close(c);

    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img && n == 2 * SEG);
    CHECK(all_bytes(img, SEG + 512, 0));
    CHECK(memcmp(img + SEG + 512, data, sizeof(data)) == 0);
    CHECK(all_bytes(img + SEG + 512 + sizeof(data), SEG - 512 - sizeof(data), 0));
    free(img);
}

NH_TEST(streamed_complete_segment_is_written_at_once) {
    char path[300];
    tmp_path(path, sizeof(path));
    fill_file(path, 4 * SEG, 0xaa);
    nh_cache *c = open_cache(path, 0, -1, 0);
    REQUIRE(c);
    nh_err err;
    uint8_t *data = malloc(2 * SEG);
    pattern(data, 2 * SEG, 2);

    /* Streamed, in pieces: segment 1 goes out when its last block arrives. */
    CHECK(nh_cache_write(c, SEG, data, 5000 * 8, 1, &err) == 0);
    CHECK(nh_cache_write(c, SEG + 40000, data + 40000, SEG - 40000, 1, &err) == 0);
    /* The same amount of non-streamed data into segment 2 stays pending. */
    CHECK(nh_cache_write(c, 2 * SEG, data + SEG, SEG, 0, &err) == 0);
    /* A segment with a non-streamed write is not written at once afterwards. */
    CHECK(nh_cache_write(c, 3 * SEG, data, 512, 0, &err) == 0);
    CHECK(nh_cache_write(c, 3 * SEG + 512, data + 512, SEG - 512, 1, &err) == 0);

    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img && n == 4 * SEG);
    CHECK(memcmp(img + SEG, data, SEG) == 0);
    CHECK(all_bytes(img + 2 * SEG, 2 * SEG, 0xaa));
    free(img);

    CHECK(nh_cache_flush(c, &err) == 0);
    img = slurp(path, &n);
    REQUIRE(img && n == 4 * SEG);
    CHECK(all_bytes(img, SEG, 0xaa));
    CHECK(memcmp(img + SEG, data, SEG) == 0);
    CHECK(memcmp(img + 2 * SEG, data + SEG, SEG) == 0);
    CHECK(memcmp(img + 3 * SEG, data, SEG) == 0);
    free(img);
    free(data);
    nh_cache_close(c);
}

NH_TEST(partial_segment_is_read_modify_written) {
    char path[300];
    tmp_path(path, sizeof(path));
    fill_file(path, 2 * SEG, 0x5c);
    nh_cache *c = open_cache(path, 0, -1, 0);
    REQUIRE(c);
    nh_err err;
    uint8_t data[3000];
    pattern(data, sizeof(data), 3);
    CHECK(nh_cache_write(c, 4096, data, 1024, 1, &err) == 0);
    /* unaligned, partial blocks at both ends */
    CHECK(nh_cache_write(c, 10005, data + 1024, 1500, 0, &err) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
    nh_cache_close(c);

    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img && n == 2 * SEG);
    CHECK(all_bytes(img, 4096, 0x5c));
    CHECK(memcmp(img + 4096, data, 1024) == 0);
    CHECK(all_bytes(img + 5120, 10005 - 5120, 0x5c));
    CHECK(memcmp(img + 10005, data + 1024, 1500) == 0);
    CHECK(all_bytes(img + 11505, 2 * SEG - 11505, 0x5c));
    free(img);
}

/* Streamed data in chunks that are not whole blocks is stored without reading
 * the media: the rest of a partly written block is read only when needed. */
NH_TEST(partial_blocks_are_filled_late) {
    char path[300];
    tmp_path(path, sizeof(path));
    fill_file(path, 2 * SEG, 0xaa);
    nh_cache *c = open_cache(path, 0, -1, 0);
    REQUIRE(c);
    nh_err err;
    uint8_t *data = malloc(SEG);
    pattern(data, SEG, 10);
    /* chunks of 700 bytes: every segment boundary of a block is crossed */
    size_t done = 0;
    for (; done + 700 <= SEG - 3000; done += 700)
        CHECK(nh_cache_write(c, done, data + done, 700, 1, &err) == 0);
    /* someone else changes the media behind the unwritten tail */
    int fd = open(path, O_WRONLY);
    REQUIRE(fd >= 0);
    uint8_t bb[SEG];
    memset(bb, 0xbb, sizeof(bb));
    CHECK(pwrite(fd, bb + done, SEG - done, (off_t)done) == (ssize_t)(SEG - done));
    close(fd);
    /* completing the segment writes it at once, no media bytes needed */
    CHECK(nh_cache_write(c, done, data + done, SEG - done, 1, &err) == 0);
    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img);
    CHECK(memcmp(img, data, SEG) == 0);
    free(img);

    /* a partly written block that is flushed gets the media bytes of then */
    CHECK(nh_cache_write(c, SEG, data, 700, 1, &err) == 0);
    fd = open(path, O_WRONLY);
    REQUIRE(fd >= 0);
    CHECK(pwrite(fd, bb, 1024, (off_t)SEG) == 1024);
    close(fd);
    uint8_t out[1024];
    CHECK(nh_cache_read(c, SEG, out, sizeof(out), &err) == 0);
    CHECK(memcmp(out, data, 700) == 0 && all_bytes(out + 700, 324, 0xbb));
    CHECK(nh_cache_flush(c, &err) == 0);
    nh_cache_close(c);
    img = slurp(path, &n);
    REQUIRE(img);
    CHECK(memcmp(img + SEG, data, 700) == 0);
    CHECK(all_bytes(img + SEG + 700, 324, 0xbb));
    CHECK(all_bytes(img + SEG + 1024, SEG - 1024, 0xaa));
    free(img);
    free(data);
}

/* The one partly written block per segment, in the cases the applier rarely
 * produces. A one-segment cache whose buffer last held 'P' bytes makes any
 * byte taken from neither the writes nor the media visible. */
static void poison_buffer(nh_cache *c) {
    static uint8_t p[NH_SEGMENT_SIZE];
    nh_err err;
    memset(p, 'P', sizeof(p));
    CHECK(nh_cache_write(c, 7 * SEG, p, SEG, 0, &err) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
}

NH_TEST(partial_block_corner_cases) {
    char path[300];
    tmp_path(path, sizeof(path));
    fill_file(path, 8 * SEG, 0xaa);
    nh_cache *c = open_cache(path, SEG, -1, 0);
    REQUIRE(c);
    nh_err err;
    uint8_t x[600], y[600], z[600];
    memset(x, 'x', sizeof(x));
    memset(y, 'y', sizeof(y));
    memset(z, 'z', sizeof(z));
    /* overwriting the start of a partly written block keeps the rest */
    poison_buffer(c);
    CHECK(nh_cache_write(c, 0, x, 400, 1, &err) == 0);
    CHECK(nh_cache_write(c, 0, y, 100, 1, &err) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
    /* a write that leaves a gap after the written part */
    poison_buffer(c);
    CHECK(nh_cache_write(c, SEG, x, 100, 1, &err) == 0);
    CHECK(nh_cache_write(c, SEG + 300, z, 100, 1, &err) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
    /* a second partly written block in the same segment */
    poison_buffer(c);
    CHECK(nh_cache_write(c, 2 * SEG + 1024, x, 300, 1, &err) == 0);
    CHECK(nh_cache_write(c, 2 * SEG + 1536, y, 10, 0, &err) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
    /* a segment holding nothing but a partly written block */
    poison_buffer(c);
    CHECK(nh_cache_write(c, 3 * SEG + 512, z, 100, 1, &err) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
    nh_cache_close(c);

    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img && n == 8 * SEG);
    CHECK(all_bytes(img, 100, 'y'));
    CHECK(all_bytes(img + 100, 300, 'x'));
    CHECK(all_bytes(img + 400, SEG - 400, 0xaa));
    const uint8_t *s1 = img + SEG;
    CHECK(all_bytes(s1, 100, 'x'));
    CHECK(all_bytes(s1 + 100, 200, 0xaa));
    CHECK(all_bytes(s1 + 300, 100, 'z'));
    CHECK(all_bytes(s1 + 400, SEG - 400, 0xaa));
    const uint8_t *s2 = img + 2 * SEG;
    CHECK(all_bytes(s2, 1024, 0xaa));
    CHECK(all_bytes(s2 + 1024, 300, 'x'));
    CHECK(all_bytes(s2 + 1324, 1536 - 1324, 0xaa));
    CHECK(all_bytes(s2 + 1536, 10, 'y'));
    CHECK(all_bytes(s2 + 1546, SEG - 1546, 0xaa));
    const uint8_t *s3 = img + 3 * SEG;
    CHECK(all_bytes(s3, 512, 0xaa));
    CHECK(all_bytes(s3 + 512, 100, 'z'));
    CHECK(all_bytes(s3 + 612, SEG - 612, 0xaa));
    free(img);
}

NH_TEST(reads_merge_cache_media_and_zeros) {
    char path[300];
    tmp_path(path, sizeof(path));
    fill_file(path, SEG + 1000, 0x11); /* not a whole number of segments */
    nh_cache *c = open_cache(path, 0, -1, 0);
    REQUIRE(c);
    nh_err err;
    uint8_t data[512];
    pattern(data, sizeof(data), 4);
    CHECK(nh_cache_write(c, 1024, data, sizeof(data), 0, &err) == 0);
    uint8_t *out = malloc(4 * SEG);
    CHECK(nh_cache_read(c, 0, out, 4 * SEG, &err) == 0);
    CHECK(all_bytes(out, 1024, 0x11));
    CHECK(memcmp(out + 1024, data, sizeof(data)) == 0);
    CHECK(all_bytes(out + 1536, SEG + 1000 - 1536, 0x11));
    CHECK(all_bytes(out + SEG + 1000, 3 * SEG - 1000, 0)); /* past the end of the file */
    CHECK_EQ_INT(file_size(path), SEG + 1000);              /* reads write nothing */
    free(out);
    nh_cache_close(c);
}

/* The 02_ab_uboot/upgrade_1 expectation (spec 6.3): a 512 KiB slot of 0xff is
 * trimmed, then a 307300-byte resource is raw_written (padded to 307712). */
NH_TEST(trim_then_partial_write_gives_zeros_not_old_bytes) {
    char path[300];
    tmp_path(path, sizeof(path));
    const size_t slot = 4 * SEG, base = 8 * SEG;
    fill_file(path, 16 * SEG, 0xff);
    nh_cache *c = open_cache(path, 0, -1, 0);
    REQUIRE(c);
    nh_err err;
    CHECK(nh_cache_trim(c, base, slot, &err) == 0);
    uint8_t *out = malloc(slot);
    CHECK(nh_cache_read(c, base, out, slot, &err) == 0);
    CHECK(all_bytes(out, slot, 0));

    uint8_t *data = calloc(1, 307712);
    pattern(data, 307300, 5);
    for (size_t done = 0; done < 307712; done += 16384) {
        size_t n = 307712 - done < 16384 ? 307712 - done : 16384;
        CHECK(nh_cache_write(c, base + done, data + done, n, 1, &err) == 0);
    }
    CHECK(nh_cache_flush(c, &err) == 0);
    nh_cache_close(c);

    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img && n == 16 * SEG);
    CHECK(all_bytes(img, base, 0xff));
    CHECK(memcmp(img + base, data, 307712) == 0);
    CHECK(all_bytes(img + base + 307712, 393216 - 307712, 0));
    CHECK(all_bytes(img + base + 393216, 524288 - 393216, 0xff));
    CHECK(all_bytes(img + base + slot, n - base - slot, 0xff));
    free(img);
    free(data);
    free(out);
}

NH_TEST(trim_ignores_partial_segments_and_drops_pending_data) {
    char path[300];
    tmp_path(path, sizeof(path));
    fill_file(path, 4 * SEG, 0x77);
    nh_cache *c = open_cache(path, 0, -1, 0);
    REQUIRE(c);
    nh_err err;
    uint8_t data[1024];
    pattern(data, sizeof(data), 6);
    CHECK(nh_cache_write(c, SEG + 512, data, sizeof(data), 0, &err) == 0);
    CHECK(nh_cache_write(c, 2 * SEG + 512, data, sizeof(data), 0, &err) == 0);
    /* Wholly covers segment 1 only; segments 0 and 2 are partly covered. */
    CHECK(nh_cache_trim(c, 1000, 2 * SEG + 600, &err) == 0);
    uint8_t *out = malloc(4 * SEG);
    CHECK(nh_cache_read(c, 0, out, 4 * SEG, &err) == 0);
    CHECK(all_bytes(out, SEG, 0x77));
    CHECK(all_bytes(out + SEG, SEG, 0));
    CHECK(all_bytes(out + 2 * SEG, 512, 0x77));
    CHECK(memcmp(out + 2 * SEG + 512, data, sizeof(data)) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
    nh_cache_close(c);

    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img && n == 4 * SEG);
    CHECK(all_bytes(img, 2 * SEG, 0x77)); /* trimmed, untouched: old bytes stay */
    CHECK(memcmp(img + 2 * SEG + 512, data, sizeof(data)) == 0);
    free(img);
    free(out);
}

NH_TEST(discard_drops_pending_writes_and_trims) {
    char path[300];
    tmp_path(path, sizeof(path));
    fill_file(path, 4 * SEG, 0x33);
    nh_cache *c = open_cache(path, 0, -1, 0);
    REQUIRE(c);
    nh_err err;
    uint8_t *data = malloc(SEG);
    pattern(data, SEG, 7);
    CHECK(nh_cache_write(c, 0, data, SEG, 0, &err) == 0);
    CHECK(nh_cache_write(c, 2 * SEG, data, SEG, 1, &err) == 0); /* already on the media */
    CHECK(nh_cache_trim(c, SEG, SEG, &err) == 0);
    nh_cache_discard(c);
    uint8_t *out = malloc(4 * SEG);
    CHECK(nh_cache_read(c, 0, out, 4 * SEG, &err) == 0);
    CHECK(all_bytes(out, 2 * SEG, 0x33));
    CHECK(memcmp(out + 2 * SEG, data, SEG) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
    nh_cache_close(c);
    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img && n == 4 * SEG);
    CHECK(all_bytes(img, 2 * SEG, 0x33));
    CHECK(memcmp(img + 2 * SEG, data, SEG) == 0);
    free(img);
    free(out);
    free(data);
}

NH_TEST(lru_segment_is_evicted_when_full) {
    char path[300];
    tmp_path(path, sizeof(path));
    fill_file(path, 4 * SEG, 0);
    nh_cache *c = open_cache(path, 2 * SEG, -1, 0);
    REQUIRE(c);
    nh_err err;
    uint8_t a[512], b[512], d[512], out[512];
    memset(a, 'a', 512);
    memset(b, 'b', 512);
    memset(d, 'd', 512);
    CHECK(nh_cache_write(c, 0, a, 512, 0, &err) == 0);
    CHECK(nh_cache_write(c, SEG, b, 512, 0, &err) == 0);
    CHECK(nh_cache_read(c, 0, out, 512, &err) == 0); /* segment 0 becomes most recent */
    CHECK(nh_cache_write(c, 2 * SEG, d, 512, 0, &err) == 0);
    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img);
    CHECK(all_bytes(img, 512, 0));        /* still pending */
    CHECK(all_bytes(img + SEG, 512, 'b')); /* evicted */
    CHECK(all_bytes(img + 2 * SEG, 512, 0));
    free(img);
    /* reading the evicted segment again comes from the media */
    CHECK(nh_cache_read(c, SEG, out, 512, &err) == 0);
    CHECK(all_bytes(out, 512, 'b'));
    CHECK(nh_cache_flush(c, &err) == 0);
    nh_cache_close(c);
    img = slurp(path, &n);
    REQUIRE(img);
    CHECK(all_bytes(img, 512, 'a'));
    CHECK(all_bytes(img + 2 * SEG, 512, 'd'));
    free(img);
}

/* A file size limit makes writes beyond 1 MiB fail: flush must write the
 * least recently used segment first and stop at the first failure. */
static void flush_with_failing_segment(int failing_first) {
    char path[300];
    tmp_path(path, sizeof(path));
    fill_file(path, 8 * SEG, 0);
    nh_cache *c = open_cache(path, 0, -1, 0);
    REQUIRE(c);
    nh_err err;
    uint8_t x[512];
    memset(x, 'x', sizeof(x));
    uint64_t good = 0, bad = 16 * SEG;
    uint64_t first = failing_first ? bad : good, second = failing_first ? good : bad;
    CHECK(nh_cache_write(c, first, x, 512, 0, &err) == 0);
    CHECK(nh_cache_write(c, second, x, 512, 0, &err) == 0);

    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 8 * SEG;
    signal(SIGXFSZ, SIG_IGN);
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    int rc = nh_cache_flush(c, &err);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK(rc == -1);
    CHECK(strstr(err.msg, path) != NULL);
    CHECK(strstr(err.msg, strerror(EFBIG)) != NULL);
    CHECK(strstr(err.msg, "offset 2097152") != NULL);
    nh_cache_close(c);
    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img && n == 8 * SEG);
    CHECK(all_bytes(img, 512, failing_first ? 0 : 'x'));
    free(img);
}

NH_TEST(flush_is_lru_first_and_stops_at_an_error) {
    flush_with_failing_segment(1);
    flush_with_failing_segment(0);
}

NH_TEST(max_size_is_a_hard_end) {
    char path[300];
    tmp_path(path, sizeof(path));
    nh_cache *c = open_cache(path, 0, -1, 200000);
    REQUIRE(c);
    nh_err err;
    CHECK_EQ_INT(nh_cache_size(c), 200000);
    uint8_t data[1024];
    pattern(data, sizeof(data), 8);
    CHECK(nh_cache_write(c, 199680, data, 1024, 0, &err) == -1);
    char expected[400];
    snprintf(expected, sizeof(expected), "write past the end of %s (offset 199680, size 200000)", path);
    CHECK(strcmp(err.msg, expected) == 0);
    CHECK(nh_cache_write(c, 200000, data, 0, 0, &err) == 0);
    CHECK(nh_cache_write(c, 198976, data, 1024, 1, &err) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
    nh_cache_close(c);
    CHECK_EQ_INT(file_size(path), 200000); /* the last segment is cut at the end */
    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img);
    CHECK(memcmp(img + 198976, data, 1024) == 0);
    free(img);
}

NH_TEST(open_errors_name_the_path) {
    nh_cache *c = (nh_cache *)1;
    nh_err err;
    char path[400];
    snprintf(path, sizeof(path), "%s/missing/dir/image", test_dir[0] ? test_dir : "/nonexistent");
    CHECK(nh_cache_open(&c, path, NULL, &err) == -1);
    CHECK(c == NULL);
    CHECK(strstr(err.msg, path) != NULL);
    CHECK(strstr(err.msg, strerror(ENOENT)) != NULL);
    nh_cache_close(NULL);
}

NH_TEST(dev_null_accepts_writes) {
    nh_cache *c = open_cache("/dev/null", 0, -1, 0);
    REQUIRE(c);
    nh_err err;
    uint8_t data[512] = {1};
    CHECK(nh_cache_write(c, 1000, data, sizeof(data), 0, &err) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
    nh_cache_close(c);
}

/* /dev/zero accepts writes and reads back zeros: a verification failure. */
NH_TEST(verification_reads_back_and_compares) {
    nh_cache *c = open_cache("/dev/zero", 0, 1, 0);
    REQUIRE(c);
    nh_err err;
    uint8_t zeros[1024] = {0}, ones[1024];
    memset(ones, 1, sizeof(ones));
    CHECK(nh_cache_write(c, 3 * SEG, zeros, sizeof(zeros), 0, &err) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
    CHECK(nh_cache_write(c, 5 * SEG + 512, ones, sizeof(ones), 0, &err) == 0);
    CHECK(nh_cache_flush(c, &err) == -1);
    CHECK(strcmp(err.msg, "write verification failed at offset 655360") == 0);
    nh_cache_close(c);
    /* without verification the same write "succeeds" */
    c = open_cache("/dev/zero", 0, -1, 0);
    REQUIRE(c);
    CHECK(nh_cache_write(c, 5 * SEG + 512, ones, sizeof(ones), 1, &err) == 0);
    CHECK(nh_cache_flush(c, &err) == 0);
    nh_cache_close(c);
}

/* Random operations against a model of what reads must return; flushes
 * before each trim so the model knows what the media holds under it. */
static void random_run(uint32_t seed, int small) {
    enum { NSEG = 12 };
    const size_t size = NSEG * SEG;
    char path[300];
    tmp_path(path, sizeof(path));
    fill_file(path, size, 0x42);
    uint8_t *logical = malloc(size), *media_at_trim = malloc(size), *buf = malloc(3 * SEG);
    int trimmed[NSEG] = {0};
    memset(logical, 0x42, size);
    nh_cache *c = open_cache(path, 3 * SEG, 0, 0);
    REQUIRE(c);
    nh_err err;
    uint32_t r = seed;
#define RAND() (r = r * 1664525u + 1013904223u, r >> 8)
    for (int op = 0; op < 1500; op++) {
        unsigned kind = RAND() % 10;
        uint64_t off = small ? SEG - 4096 + RAND() % 8192 : RAND() % size;
        size_t len = small || RAND() % 3 == 0 ? RAND() % (small ? 700 : 2048) : RAND() % (2 * SEG);
        if (RAND() % 2) { /* block aligned, like the applier */
            off &= ~(uint64_t)511;
            len = (len + 511) & ~(size_t)511;
        }
        if (len > size - off)
            len = size - off;
        if (kind < 5) {
            pattern(buf, len, (unsigned)op);
            int streamed = RAND() % 2;
            REQUIRE(nh_cache_write(c, off, buf, len, streamed, &err) == 0);
            memcpy(logical + off, buf, len);
            for (uint64_t s = off / SEG; len && s <= (off + len - 1) / SEG; s++)
                trimmed[s] = 0;
        } else if (kind < 8) {
            REQUIRE(nh_cache_read(c, off, buf, len, &err) == 0);
            CHECK(memcmp(buf, logical + off, len) == 0);
        } else if (kind < 9) {
            REQUIRE(nh_cache_flush(c, &err) == 0);
            REQUIRE(nh_cache_trim(c, off, len, &err) == 0);
            uint64_t first = (off + SEG - 1) / SEG, last = (off + len) / SEG;
            for (uint64_t s = first; s < last; s++) {
                if (!trimmed[s])
                    memcpy(media_at_trim + s * SEG, logical + s * SEG, SEG);
                trimmed[s] = 1;
                memset(logical + s * SEG, 0, SEG);
            }
        } else {
            REQUIRE(nh_cache_flush(c, &err) == 0);
        }
    }
#undef RAND
    REQUIRE(nh_cache_flush(c, &err) == 0);
    nh_cache_close(c);
    size_t n;
    uint8_t *img = slurp(path, &n);
    REQUIRE(img && n == size);
    for (int s = 0; s < NSEG; s++) {
        const uint8_t *want = trimmed[s] ? media_at_trim + s * SEG : logical + s * SEG;
        if (memcmp(img + s * SEG, want, SEG) != 0) {
            fprintf(stderr, "  segment %d differs (trimmed %d)\n", s, trimmed[s]);
            CHECK(0);
        }
    }
    free(img);
    free(logical);
    free(media_at_trim);
    free(buf);
}

NH_TEST(random_operations_match_a_model) {
    for (uint32_t seed = 1; seed <= 4; seed++)
        random_run(seed * 7919, 0);
    /* small writes around one segment boundary: many partly written blocks */
    for (uint32_t seed = 1; seed <= 4; seed++)
        random_run(seed * 104729, 1);
}

/* ---- loop device ---------------------------------------------------------- */

static int run_capture(const char *cmd, char *out, size_t n) {
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t got = fread(out, 1, n - 1, p);
    out[got] = 0;
    while (got && (out[got - 1] == '\n' || out[got - 1] == ' '))
        out[--got] = 0;
    return pclose(p);
}

NH_TEST(loop_block_device_direct_io_and_verification) {
    if (geteuid() != 0) {
        printf("  skip loop device test: not running as root\n");
        return;
    }
    char backing[300], cmd[600], dev[128];
    tmp_path(backing, sizeof(backing));
    const size_t size = 4 * 1024 * 1024 + 3 * 4096; /* not a whole number of segments */
    fill_file(backing, size, 0xee);
    snprintf(cmd, sizeof(cmd), "losetup -f --show '%s' 2>/dev/null", backing);
    if (run_capture(cmd, dev, sizeof(dev)) != 0 || strncmp(dev, "/dev/loop", 9) != 0) {
        printf("  skip loop device test: losetup failed\n");
        return;
    }

    nh_cache *c = open_cache(dev, 0, -1, 0);
    if (c) {
        nh_err err;
        CHECK(nh_cache_is_block_device(c));
        CHECK_EQ_INT(nh_cache_size(c), size);
        uint8_t *data = malloc(2 * SEG);
        pattern(data, 2 * SEG, 9);
        /* unaligned source buffer on purpose: the cache copies into aligned ones */
        CHECK(nh_cache_write(c, 0, data + 1, SEG, 1, &err) == 0);
        CHECK(nh_cache_write(c, 3 * SEG + 1024, data, 2048, 0, &err) == 0);
        /* last, partial segment of the device */
        CHECK(nh_cache_write(c, size - 4096, data, 4096, 0, &err) == 0);
        CHECK(nh_cache_write(c, size - 512, data, 1024, 0, &err) == -1);
        CHECK(strstr(err.msg, "write past the end of /dev/loop") != NULL);
        CHECK(nh_cache_flush(c, &err) == 0);
        uint8_t *out = malloc(SEG);
        CHECK(nh_cache_read(c, 3 * SEG, out, SEG, &err) == 0);
        CHECK(all_bytes(out, 1024, 0xee));
        CHECK(memcmp(out + 1024, data, 2048) == 0);
        nh_cache_close(c);
        free(out);

        snprintf(cmd, sizeof(cmd), "losetup -d %s", dev);
        CHECK(system(cmd) == 0);
        dev[0] = 0;
        size_t n;
        uint8_t *img = slurp(backing, &n);
        REQUIRE(img && n == size);
        CHECK(memcmp(img, data + 1, SEG) == 0);
        CHECK(all_bytes(img + SEG, 2 * SEG + 1024, 0xee));
        CHECK(memcmp(img + 3 * SEG + 1024, data, 2048) == 0);
        CHECK(memcmp(img + size - 4096, data, 4096) == 0);
        CHECK(all_bytes(img + 3 * SEG + 3072, size - 4096 - 3 * SEG - 3072, 0xee));
        free(img);
        free(data);
    } else {
        CHECK(0);
    }
    if (dev[0]) {
        snprintf(cmd, sizeof(cmd), "losetup -d %s", dev);
        CHECK(system(cmd) == 0);
    }
}

NH_TEST_MAIN(NH_CASE(creates_missing_file_and_grows_in_segments),
             NH_CASE(streamed_complete_segment_is_written_at_once),
             NH_CASE(partial_segment_is_read_modify_written),
             NH_CASE(partial_blocks_are_filled_late),
             NH_CASE(partial_block_corner_cases),
             NH_CASE(reads_merge_cache_media_and_zeros),
             NH_CASE(trim_then_partial_write_gives_zeros_not_old_bytes),
             NH_CASE(trim_ignores_partial_segments_and_drops_pending_data),
             NH_CASE(discard_drops_pending_writes_and_trims), NH_CASE(lru_segment_is_evicted_when_full),
             NH_CASE(flush_is_lru_first_and_stops_at_an_error), NH_CASE(max_size_is_a_hard_end),
             NH_CASE(open_errors_name_the_path), NH_CASE(dev_null_accepts_writes),
             NH_CASE(verification_reads_back_and_compares),
             NH_CASE(random_operations_match_a_model),
             NH_CASE(loop_block_device_direct_io_and_verification))
