/* Tests of nh_zip: the golden fwup archives (entries against their central
 * directory, BLAKE2b against meta.conf, images against MANIFEST.json),
 * chunking independence, truncation, and synthetic archives for the corner
 * cases (stored + descriptor, zip64, bad headers, corrupt data). */
#include <fcntl.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "nh_cache.h"
#include "nh_zip.h"
#include "nh_test.h"

/* ---- small utilities -------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t len, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}
static void put16(buf *b, unsigned v) {
    unsigned char t[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    put(b, t, 2);
}
static void put32(buf *b, uint32_t v) {
    put16(b, v & 0xffff);
    put16(b, v >> 16);
}
static void put64(buf *b, uint64_t v) {
    put32(b, (uint32_t)v);
    put32(b, (uint32_t)(v >> 32));
}

/* $NHLINK_VECTORS, else <repo>/../shared/vectors seen from tests/native or the repo. */
static const char *vectors_dir(void) {
    const char *env = getenv("NHLINK_VECTORS");
    if (env && *env)
        return env;
    struct stat st;
    if (stat("../../../shared/vectors/MANIFEST.json", &st) == 0)
        return "../../../shared/vectors";
    return "../shared/vectors";
}

static int read_file(const char *path, buf *out) {
    memset(out, 0, sizeof(*out));
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    unsigned char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        put(out, tmp, n);
    fclose(f);
    return 0;
}

static int read_vector(const char *name, buf *out) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/fw/%s", vectors_dir(), name);
    if (read_file(path, out) != 0) {
        fprintf(stderr, "  cannot read %s (set NHLINK_VECTORS)\n", path);
        return -1;
    }
    return 0;
}

static void hex(const unsigned char *p, size_t n, char *out) {
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
}

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static unsigned rd16(const unsigned char *p) { return p[0] | (p[1] << 8); }

/* ---- walking ------------------------------------------------------------ */

enum { MODE_SKIP, MODE_COLLECT, MODE_HASH, MODE_CHUNKS, MODE_RAW };

typedef struct {
    char name[1024];
    int method, size_known, mtime_known;
    int64_t mtime;
    uint64_t declared, size;
    uint32_t crc;
    int has_b2;
    unsigned char b2[32];
    buf data;       /* collect data, or the concatenated chunks */
    int chunks;
    int bad_chunk_size;
} entry_rec;

#define MAX_ENTRIES 16
typedef struct walk walk;
typedef void (*chooser)(walk *w, nh_zip *z, const entry_rec *e);

struct walk {
    entry_rec e[MAX_ENTRIES];
    int n;
    int archive_end;
    int failed;
    nh_zip_error_kind kind;
    char error[1024];
    uint64_t units;
    int mode;
    chooser choose;
    void *ctx;
};

static void walk_free(walk *w) {
    for (int i = 0; i < w->n; i++)
        free(w->e[i].data.p);
    memset(w, 0, sizeof(*w));
}

static void choose_by_mode(walk *w, nh_zip *z, const entry_rec *e) {
    nh_err err;
    int r = 0;
    switch (w->mode) {
    case MODE_COLLECT:
        r = nh_zip_sink_collect(z, 1u << 30, &err);
        break;
    case MODE_HASH:
        r = nh_zip_sink_hash(z, &err);
        break;
    case MODE_CHUNKS:
        r = nh_zip_sink_chunks(z, &err);
        break;
    default:
        break;
    }
    if (r != 0)
        fprintf(stderr, "  sink: %s\n", err.msg);
}

/* Feeds the archive in blocks of `block` bytes the way a reader does: each
 * block is fed again from where the last event left off until the walker
 * wants more; then end_of_input. */
static void walk_archive(const unsigned char *p, size_t len, size_t block, int mode, walk *w) {
    memset(w, 0, sizeof(*w));
    w->mode = mode;
    w->choose = choose_by_mode;
    nh_zip *z;
    nh_err err;
    if (nh_zip_new(&z, &err) != 0) {
        w->failed = 1;
        return;
    }
    size_t at = 0;
    entry_rec *cur = NULL;
    for (;;) {
        size_t end = at + block < len ? at + block : len;
        for (;;) {
            size_t used;
            nh_zip_event ev;
            if (nh_zip_feed(z, p + at, end - at, &used, &ev, &err) != 0) {
                w->failed = 1;
                w->kind = nh_zip_error(z);
                snprintf(w->error, sizeof(w->error), "%s", nh_zip_error_message(z));
                CHECK(strncmp(err.msg, w->error, sizeof(err.msg) - 1) == 0);
                goto out;
            }
            at += used;
            if (ev.type == NH_ZIP_NEED_INPUT) {
                if (at != end)
                    fprintf(stderr, "  NEED_INPUT with bytes left\n");
                break;
            }
            if (ev.type == NH_ZIP_ENTRY_START) {
                if (w->n == MAX_ENTRIES) {
                    w->failed = 1;
                    goto out;
                }
                cur = &w->e[w->n++];
                snprintf(cur->name, sizeof(cur->name), "%.*s", (int)ev.name_len, ev.name);
                cur->method = ev.method;
                cur->size_known = ev.size_known;
                cur->declared = ev.size;
                cur->mtime_known = ev.mtime_known;
                cur->mtime = ev.mtime;
                w->choose(w, z, cur);
            } else if (ev.type == NH_ZIP_DATA_CHUNK && cur) {
                if (ev.data_len == 0 || ev.data_len > NH_ZIP_CHUNK_SIZE)
                    cur->bad_chunk_size = 1;
                put(&cur->data, ev.data, ev.data_len);
                cur->chunks++;
            } else if (ev.type == NH_ZIP_ENTRY_END && cur) {
                cur->size = ev.size;
                cur->crc = ev.crc32;
                cur->has_b2 = ev.has_blake2b;
                memcpy(cur->b2, ev.blake2b, 32);
                if (ev.data)
                    put(&cur->data, ev.data, ev.data_len);
                cur = NULL;
            } else if (ev.type == NH_ZIP_ARCHIVE_END) {
                w->archive_end = 1;
            }
        }
        if (at == len)
            break;
    }
    if (nh_zip_end_of_input(z, &err) != 0) {
        w->failed = 1;
        w->kind = nh_zip_error(z);
        snprintf(w->error, sizeof(w->error), "%s", err.msg);
    } else {
        w->archive_end = 1;
    }
out:
    w->units = nh_zip_units(z);
    nh_zip_free(z);
}

static int same_walk(const walk *a, const walk *b) {
    if (a->n != b->n || a->failed != b->failed || a->archive_end != b->archive_end ||
        strcmp(a->error, b->error) != 0 || a->units != b->units)
        return 0;
    for (int i = 0; i < a->n; i++) {
        const entry_rec *x = &a->e[i], *y = &b->e[i];
        if (strcmp(x->name, y->name) || x->size != y->size || x->crc != y->crc ||
            x->has_b2 != y->has_b2 || memcmp(x->b2, y->b2, 32) || x->data.len != y->data.len ||
            (x->data.len && memcmp(x->data.p, y->data.p, x->data.len)) ||
            x->declared != y->declared || x->size_known != y->size_known ||
            x->mtime_known != y->mtime_known || x->mtime != y->mtime)
            return 0;
    }
    return 1;
}

/* ---- golden archives: central directory and meta.conf ------------------ */

typedef struct {
    char name[600];
    uint32_t crc;
    uint64_t csize, usize;
    uint64_t header_offset;
} cd_entry;

static size_t cd_offset; /* of the last archive read_central_directory looked at */

/* Reads the central directory (which the walker never looks at). */
static int read_central_directory(const buf *a, cd_entry *out, int max) {
    size_t eocd = 0;
    int found = 0;
    for (size_t i = a->len >= 22 ? a->len - 22 : 0; i > 0; i--)
        if (rd32(a->p + i) == 0x06054b50u) {
            eocd = i;
            found = 1;
            break;
        }
    if (!found)
        return -1;
    unsigned count = rd16(a->p + eocd + 10);
    size_t at = rd32(a->p + eocd + 16);
    cd_offset = at;
    int n = 0;
    for (unsigned i = 0; i < count && n < max; i++) {
        const unsigned char *h = a->p + at;
        if (rd32(h) != 0x02014b50u)
            return -1;
        unsigned name_len = rd16(h + 28), extra_len = rd16(h + 30), comment = rd16(h + 32);
        cd_entry *e = &out[n++];
        snprintf(e->name, sizeof(e->name), "%.*s", (int)name_len, (const char *)h + 46);
        e->crc = rd32(h + 16);
        e->csize = rd32(h + 20);
        e->usize = rd32(h + 24);
        e->header_offset = rd32(h + 42);
        at += 46 + name_len + extra_len + comment;
    }
    return n;
}

typedef struct {
    char name[256];     /* resource name as in meta.conf */
    uint64_t map[64];   /* length runs (one run unless sparse) */
    size_t map_len;
    char b2hex[65];
} resource;

/* Minimal meta.conf reader: file-resource blocks, their length and blake2b-256. */
static int parse_resources(const buf *meta, resource *out, int max) {
    char *text = malloc(meta->len + 1);
    memcpy(text, meta->p, meta->len);
    text[meta->len] = '\0';
    int n = 0;
    resource *cur = NULL;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "file-resource ", 14) == 0 && n < max) {
            cur = &out[n++];
            memset(cur, 0, sizeof(*cur));
            const char *s = line + 14;
            if (*s == '"')
                s++;
            size_t k = 0;
            while (*s && *s != '"' && *s != ' ' && k + 1 < sizeof(cur->name))
                cur->name[k++] = *s++;
        } else if (cur && strncmp(line, "length=", 7) == 0) {
            char *s = line + 7;
            if (*s == '{')
                s++;
            while (*s && *s != '}' && cur->map_len < 64) {
                cur->map[cur->map_len++] = strtoull(s, &s, 10);
                if (*s == ',')
                    s++;
            }
        } else if (cur && strncmp(line, "blake2b-256=", 12) == 0) {
            snprintf(cur->b2hex, sizeof(cur->b2hex), "%s", line + 12);
        } else if (line[0] == '}') {
            cur = NULL;
        }
    }
    free(text);
    return n;
}

static const resource *find_resource(const resource *r, int n, const char *entry_name) {
    char want[700];
    if (strncmp(entry_name, "data/", 5) == 0)
        snprintf(want, sizeof(want), "%s", entry_name + 5);
    else
        snprintf(want, sizeof(want), "/%s", entry_name);
    for (int i = 0; i < n; i++)
        if (strcmp(r[i].name, want) == 0)
            return &r[i];
    return NULL;
}

static uint64_t data_bytes(const resource *r) {
    uint64_t sum = 0;
    for (size_t i = 0; i < r->map_len; i += 2)
        sum += r->map[i];
    return sum;
}

static const char *golden[] = {
    "01_minimal_raw.fw", "02_ab_uboot.fw", "03_large_8mib.fw",      "04_mbr.fw",
    "05_fat.fw",         "06_unsigned.fw", "07_untampered.fw",      "07b_tampered_crcfixed.fw",
    "08_other_key.fw",   "09_sparse.fw",   "10_zip64.fw",
};
#define NGOLDEN (sizeof(golden) / sizeof(golden[0]))

/* Walks one golden archive with the hash sink and checks every entry. */
static void check_golden(const char *file, int expect_b2_match) {
    buf a;
    REQUIRE(read_vector(file, &a) == 0);
    cd_entry cd[MAX_ENTRIES];
    int ncd = read_central_directory(&a, cd, MAX_ENTRIES);
    REQUIRE(ncd > 0);

    walk collected, hashed;
    walk_archive(a.p, a.len, a.len, MODE_COLLECT, &collected);
    walk_archive(a.p, a.len, 16384, MODE_HASH, &hashed);
    if (collected.failed || hashed.failed)
        fprintf(stderr, "  %s: %s%s\n", file, collected.error, hashed.error);
    CHECK(!collected.failed && !hashed.failed);
    CHECK(collected.archive_end && hashed.archive_end);
    CHECK_EQ_INT(collected.n, ncd);
    CHECK_EQ_INT(hashed.n, ncd);
    CHECK_EQ_INT(hashed.units, 0);

    int meta = -1;
    for (int i = 0; i < ncd && i < hashed.n; i++) {
        CHECK(strcmp(hashed.e[i].name, cd[i].name) == 0);
        CHECK_EQ_INT(hashed.e[i].size, cd[i].usize);
        CHECK_EQ_INT(hashed.e[i].crc, cd[i].crc);
        CHECK(hashed.e[i].has_b2);
        CHECK(!collected.e[i].has_b2);
        CHECK_EQ_INT(collected.e[i].data.len, cd[i].usize);
        CHECK_EQ_INT(crc32(0, collected.e[i].data.p, (uInt)collected.e[i].data.len), cd[i].crc);
        if (hashed.e[i].size_known)
            CHECK_EQ_INT(hashed.e[i].declared, cd[i].usize);
        if (strcmp(cd[i].name, "meta.conf") == 0)
            meta = i;
    }
    REQUIRE(meta >= 0);
    resource res[16];
    int nres = parse_resources(&collected.e[meta].data, res, 16);
    CHECK(nres > 0);
    int matched = 0;
    for (int i = 0; i < hashed.n; i++) {
        const resource *r = find_resource(res, nres, hashed.e[i].name);
        if (!r)
            continue;
        matched++;
        char got[65];
        hex(hashed.e[i].b2, 32, got);
        CHECK_EQ_INT(hashed.e[i].size, data_bytes(r));
        if (expect_b2_match && strcmp(got, r->b2hex) != 0)
            fprintf(stderr, "  %s %s: blake2b %s, meta.conf says %s\n", file, hashed.e[i].name, got,
                    r->b2hex);
        CHECK((strcmp(got, r->b2hex) == 0) == expect_b2_match);
    }
    CHECK_EQ_INT(matched, nres);
    walk_free(&collected);
    walk_free(&hashed);
    free(a.p);
}

NH_TEST(golden_archives_walk) {
    for (size_t i = 0; i < NGOLDEN; i++)
        check_golden(golden[i], strcmp(golden[i], "07b_tampered_crcfixed.fw") != 0);
}

NH_TEST(golden_bad_crc) {
    buf a;
    REQUIRE(read_vector("07a_tampered_flip.fw", &a) == 0);
    size_t blocks[] = {1, 4096, 16384, 100000};
    for (size_t i = 0; i < 4; i++) {
        walk w;
        walk_archive(a.p, a.len, blocks[i], MODE_HASH, &w);
        CHECK(w.failed);
        CHECK_EQ_INT(w.kind, NH_ZIP_ERR_ARCHIVE);
        CHECK(strcmp(w.error, "ZIP bad CRC: 0x8bcd523 should be 0xb45d8721") == 0);
        CHECK_EQ_INT(w.n, 3);
        walk_free(&w);
    }
    free(a.p);
}

/* Every feed size gives the same events, sizes, digests and errors. */
NH_TEST(chunking_does_not_matter) {
    size_t blocks[] = {1, 2, 3, 7, 30, 511, 4096, 65536, 262144, 262145, SIZE_MAX};
    int modes[] = {MODE_HASH, MODE_CHUNKS, MODE_COLLECT, MODE_SKIP};
    for (size_t f = 0; f < NGOLDEN + 1; f++) {
        const char *file = f < NGOLDEN ? golden[f] : "07a_tampered_flip.fw";
        int large = strcmp(file, "03_large_8mib.fw") == 0;
        buf a;
        REQUIRE(read_vector(file, &a) == 0);
        for (size_t m = 0; m < 4; m++) {
            walk ref;
            walk_archive(a.p, a.len, a.len, modes[m], &ref);
            for (size_t b = 0; b < sizeof(blocks) / sizeof(blocks[0]); b++) {
                if (large && blocks[b] < 4096)
                    continue; /* keeps the run short; small feeds are covered by the others */
                walk w;
                walk_archive(a.p, a.len, blocks[b] == SIZE_MAX ? a.len : blocks[b], modes[m], &w);
                if (!same_walk(&ref, &w))
                    fprintf(stderr, "  %s mode %d block %zu differs\n", file, modes[m], blocks[b]);
                CHECK(same_walk(&ref, &w));
                for (int i = 0; i < w.n; i++)
                    CHECK(!w.e[i].bad_chunk_size);
                walk_free(&w);
            }
            walk_free(&ref);
        }
        free(a.p);
    }
}

NH_TEST(chunks_sink_delivers_the_data) {
    buf a;
    REQUIRE(read_vector("03_large_8mib.fw", &a) == 0);
    walk chunks, collected;
    walk_archive(a.p, a.len, 10000, MODE_CHUNKS, &chunks);
    walk_archive(a.p, a.len, 10000, MODE_COLLECT, &collected);
    REQUIRE(!chunks.failed && !collected.failed && chunks.n == 3);
    const entry_rec *e = &chunks.e[2];
    CHECK_EQ_INT(e->data.len, 8388608);
    CHECK_EQ_INT(e->chunks, 8388608 / NH_ZIP_CHUNK_SIZE + 8388608 / 10000 + 1);
    CHECK(!e->bad_chunk_size);
    /* in one piece: one chunk per ring buffer */
    walk whole;
    walk_archive(a.p, a.len, a.len, MODE_CHUNKS, &whole);
    CHECK_EQ_INT(whole.e[2].chunks, 8388608 / NH_ZIP_CHUNK_SIZE);
    walk_free(&whole);
    CHECK(e->data.len == collected.e[2].data.len &&
          memcmp(e->data.p, collected.e[2].data.p, e->data.len) == 0);
    unsigned char want[32];
    crypto_generichash_blake2b(want, 32, e->data.p, e->data.len, NULL, 0);
    CHECK(memcmp(want, e->b2, 32) == 0);
    uint64_t total = 0;
    for (int i = 0; i < chunks.n; i++)
        total += chunks.e[i].data.len;
    CHECK_EQ_INT(chunks.units, total);
    walk_free(&chunks);
    walk_free(&collected);
    free(a.p);
}

/* Cut anywhere: at an entry boundary the archive just ends, inside an
 * entry the input is truncated (-5). */
NH_TEST(truncation) {
    const char *files[] = {"04_mbr.fw", "10_zip64.fw", "01_minimal_raw.fw"};
    for (size_t f = 0; f < 3; f++) {
        buf a;
        REQUIRE(read_vector(files[f], &a) == 0);
        cd_entry cd[MAX_ENTRIES];
        int ncd = read_central_directory(&a, cd, MAX_ENTRIES);
        REQUIRE(ncd > 0);
        size_t step = a.len > 20000 ? 97 : 1;
        for (size_t cut = 0; cut < a.len; cut += step) {
            int ok = cut == cd_offset || cut >= cd_offset + 4;
            for (int i = 0; i < ncd; i++)
                ok |= cd[i].header_offset == cut;
            walk w;
            walk_archive(a.p, cut, 4096, MODE_HASH, &w);
            CHECK(w.failed == !ok);
            if (!ok && strcmp(w.error, "ZIP decompression failed (-5)") != 0)
                fprintf(stderr, "  %s cut %zu: %s\n", files[f], cut, w.error);
            if (!ok)
                CHECK(strcmp(w.error, "ZIP decompression failed (-5)") == 0);
            walk_free(&w);
        }
        free(a.p);
    }
}

/* ---- synthetic archives -------------------------------------------------- */

enum { DESC_NONE, DESC_SIGNED, DESC_UNSIGNED };

typedef struct {
    const char *name;
    size_t name_len;        /* 0: strlen(name) */
    int method;             /* 0 or 8 (others written as stored data) */
    unsigned extra_flags;
    int descriptor;         /* DESC_* (sets flag bit 3 unless no_bit3) */
    int zip64;              /* 0xFFFFFFFF sizes + zip64 extra */
    int fwup_sizes;         /* with a descriptor: usize (and stored csize) in the header */
    int64_t header_usize;   /* >= 0: override the header's uncompressed size */
    int64_t desc_usize;     /* >= 0: override the descriptor's uncompressed size */
    int bad_crc;            /* store crc ^ 1 */
    int corrupt;            /* make the first deflate block invalid */
} entry_spec;

static void add_entry(buf *b, const entry_spec *s, const unsigned char *data, size_t n) {
    buf c = {0};
    if (s->method == 8) {
        z_stream zs;
        memset(&zs, 0, sizeof(zs));
        deflateInit2(&zs, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY);
        size_t cap = deflateBound(&zs, n) + 16;
        c.p = malloc(cap);
        zs.next_in = (Bytef *)data;
        zs.avail_in = (uInt)n;
        zs.next_out = c.p;
        zs.avail_out = (uInt)cap;
        deflate(&zs, Z_FINISH);
        c.len = zs.total_out;
        deflateEnd(&zs);
        if (s->corrupt)
            c.p[0] |= 0x06; /* block type 3: reserved, invalid */
    } else {
        put(&c, data, n);
    }
    uint32_t crc = (uint32_t)crc32(0, data, (uInt)n) ^ (s->bad_crc ? 1u : 0u);
    size_t name_len = s->name_len ? s->name_len : strlen(s->name);
    unsigned flags = s->extra_flags | (s->descriptor != DESC_NONE ? 0x8u : 0u);
    uint32_t h_crc = s->descriptor != DESC_NONE ? 0 : crc;
    uint64_t h_csize = c.len, h_usize = n;
    if (s->descriptor != DESC_NONE) {
        h_csize = (s->fwup_sizes && s->method == 0) ? c.len : 0;
        h_usize = s->fwup_sizes ? n : 0;
    }
    if (s->header_usize >= 0)
        h_usize = (uint64_t)s->header_usize;
    put32(b, 0x04034b50u);
    put16(b, s->zip64 ? 45 : 20);
    put16(b, flags);
    put16(b, (unsigned)s->method);
    put16(b, 0);
    put16(b, 0x21);
    put32(b, h_crc);
    put32(b, s->zip64 ? 0xFFFFFFFFu : (uint32_t)h_csize);
    put32(b, s->zip64 ? 0xFFFFFFFFu : (uint32_t)h_usize);
    put16(b, (unsigned)name_len);
    put16(b, s->zip64 ? 4 + 16 + 9 : 9);
    put(b, s->name, name_len);
    put16(b, 0x5455); /* an extended timestamp extra first, as fwup writes */
    put16(b, 5);
    put(b, "\x01\0\0\0\0", 5);
    if (s->zip64) {
        put16(b, 0x0001);
        put16(b, 16);
        put64(b, h_usize);
        put64(b, h_csize);
    }
    put(b, c.p, c.len);
    if (s->descriptor != DESC_NONE) {
        if (s->descriptor == DESC_SIGNED)
            put32(b, 0x08074b50u);
        put32(b, crc);
        uint64_t du = s->desc_usize >= 0 ? (uint64_t)s->desc_usize : n;
        if (s->zip64) {
            put64(b, c.len);
            put64(b, du);
        } else {
            put32(b, (uint32_t)c.len);
            put32(b, (uint32_t)du);
        }
    }
    free(c.p);
}

static void add_central_directory(buf *b) {
    put32(b, 0x02014b50u);
    put(b, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 42);
    put32(b, 0x06054b50u);
    put(b, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 18);
}

static entry_spec spec(const char *name, int method, int descriptor) {
    entry_spec s;
    memset(&s, 0, sizeof(s));
    s.name = name;
    s.method = method;
    s.descriptor = descriptor;
    s.header_usize = -1;
    s.desc_usize = -1;
    return s;
}

static unsigned char *pattern(size_t n, unsigned seed) {
    unsigned char *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (i % 3 == 0) ? (unsigned char)(seed >> 24) : (unsigned char)(i / 100);
    }
    return p;
}

/* Walks with all feed sizes; they must agree. Returns the one-shot walk. */
static void walk_all_ways(const buf *a, int mode, walk *out) {
    walk_archive(a->p, a->len, a->len ? a->len : 1, mode, out);
    size_t blocks[] = {1, 5, 64, 1000, 70000};
    for (size_t i = 0; i < 5; i++) {
        walk w;
        walk_archive(a->p, a->len, blocks[i], mode, &w);
        if (!same_walk(out, &w))
            fprintf(stderr, "  block %zu differs: '%s' vs '%s'\n", blocks[i], out->error, w.error);
        CHECK(same_walk(out, &w));
        walk_free(&w);
    }
}

NH_TEST(synthetic_layouts) {
    size_t sizes[] = {0, 1, 64, 1000, 300000, 600000};
    for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
        size_t n = sizes[si];
        unsigned char *data = pattern(n, (unsigned)si);
        unsigned char want[32];
        crypto_generichash_blake2b(want, 32, data, n, NULL, 0);
        entry_spec specs[] = {
            spec("stored-plain", 0, DESC_NONE),   spec("stored-desc", 0, DESC_SIGNED),
            spec("stored-desc-u", 0, DESC_UNSIGNED), spec("deflate-plain", 8, DESC_NONE),
            spec("deflate-desc", 8, DESC_SIGNED), spec("deflate-desc-u", 8, DESC_UNSIGNED),
            spec("z64-deflate", 8, DESC_NONE),    spec("z64-deflate-desc", 8, DESC_SIGNED),
            spec("z64-deflate-desc-u", 8, DESC_UNSIGNED), spec("z64-stored", 0, DESC_NONE),
            spec("fwup-deflate", 8, DESC_SIGNED),
        };
        size_t nspecs = sizeof(specs) / sizeof(specs[0]);
        int known[16], nknown = 0;
        buf a = {0};
        for (size_t i = 0; i < nspecs; i++) {
            specs[i].zip64 = strncmp(specs[i].name, "z64", 3) == 0;
            specs[i].fwup_sizes = strstr(specs[i].name, "fwup") != NULL ||
                                  (specs[i].method == 0 && specs[i].descriptor != DESC_NONE);
            if (specs[i].method == 0 && specs[i].descriptor != DESC_NONE && n == 0)
                continue; /* no size: an error case, tested below */
            add_entry(&a, &specs[i], data, n);
            known[nknown++] = specs[i].method == 0 || specs[i].descriptor == DESC_NONE ||
                              (specs[i].fwup_sizes && n > 0);
        }
        add_central_directory(&a);
        int modes[] = {MODE_HASH, MODE_COLLECT, MODE_CHUNKS};
        for (int m = 0; m < 3; m++) {
            walk w;
            walk_all_ways(&a, modes[m], &w);
            if (w.failed)
                fprintf(stderr, "  size %zu: %s\n", n, w.error);
            CHECK(!w.failed && w.archive_end);
            CHECK_EQ_INT(w.n, nknown);
            for (int i = 0; i < w.n && i < nknown; i++) {
                CHECK_EQ_INT(w.e[i].size, n);
                CHECK_EQ_INT(w.e[i].crc, (uint32_t)crc32(0, data, (uInt)n));
                if (modes[m] != MODE_HASH)
                    CHECK(w.e[i].data.len == n && (n == 0 || memcmp(w.e[i].data.p, data, n) == 0));
                if (modes[m] != MODE_COLLECT)
                    CHECK(w.e[i].has_b2 && memcmp(w.e[i].b2, want, 32) == 0);
                int declared = known[i];
                CHECK_EQ_INT(w.e[i].size_known, declared);
                if (declared)
                    CHECK_EQ_INT(w.e[i].declared, n);
            }
            walk_free(&w);
        }
        free(a.p);
        free(data);
    }
}

/* One bad entry after a good one: the error text, at every feed size. */
static void expect_error(const entry_spec *bad, const unsigned char *data, size_t n, const char *message) {
    buf a = {0};
    entry_spec good = spec("data/good", 8, DESC_SIGNED);
    add_entry(&a, &good, (const unsigned char *)"hello", 5);
    add_entry(&a, bad, data, n);
    add_central_directory(&a);
    walk w;
    walk_all_ways(&a, MODE_HASH, &w);
    CHECK(w.failed);
    CHECK_EQ_INT(w.kind, NH_ZIP_ERR_ARCHIVE);
    if (strcmp(w.error, message) != 0)
        fprintf(stderr, "  got '%s', want '%s'\n", w.error, message);
    CHECK(strcmp(w.error, message) == 0);
    walk_free(&w);
    free(a.p);
}

NH_TEST(synthetic_errors) {
    unsigned char *data = pattern(5000, 7);
    entry_spec s;

    s = spec("x", 0, DESC_SIGNED);
    expect_error(&s, data, 0, "ZIP: stored entry 'x' has no size");
    s = spec("m", 12, DESC_NONE);
    expect_error(&s, data, 100, "ZIP: unsupported compression method 12 for 'm'");
    s = spec("e", 8, DESC_SIGNED);
    s.extra_flags = 1;
    expect_error(&s, data, 100, "ZIP: encrypted entries are not supported ('e')");
    const char *bad_names[] = {"../x", "data/../x", "a/..", "/abs", "data//abs", ".."};
    for (size_t i = 0; i < 6; i++) {
        char msg[600];
        snprintf(msg, sizeof(msg), "ZIP: bad entry name '%s'", bad_names[i]);
        s = spec(bad_names[i], 8, DESC_SIGNED);
        expect_error(&s, data, 10, msg);
    }
    s = spec("", 8, DESC_SIGNED);
    expect_error(&s, data, 10, "ZIP: bad entry name ''");
    s = spec("nul\0\x01x", 8, DESC_SIGNED);
    s.name_len = 6;
    expect_error(&s, data, 10, "ZIP: bad entry name 'nul??x'");
    char long_name[600];
    memset(long_name, 'a', 513);
    long_name[513] = '\0';
    s = spec(long_name, 8, DESC_SIGNED);
    {
        char msg[1024];
        snprintf(msg, sizeof(msg), "ZIP: bad entry name '%s'", long_name);
        expect_error(&s, data, 10, msg);
    }
    /* allowed: 512 bytes, dots that are not "..", a data/ directory entry */
    {
        buf a = {0};
        long_name[512] = '\0';
        const char *ok[] = {long_name, "data/a..b/.../.x", "data/"};
        for (int i = 0; i < 3; i++) {
            s = spec(ok[i], 8, DESC_SIGNED);
            add_entry(&a, &s, data, 10);
        }
        walk w;
        walk_archive(a.p, a.len, a.len, MODE_HASH, &w);
        CHECK(!w.failed && w.n == 3);
        walk_free(&w);
        free(a.p);
    }

    s = spec("data/crc", 8, DESC_SIGNED);
    s.bad_crc = 1;
    {
        char msg[100];
        uint32_t crc = (uint32_t)crc32(0, data, 5000);
        snprintf(msg, sizeof(msg), "ZIP bad CRC: 0x%x should be 0x%x", crc, crc ^ 1u);
        expect_error(&s, data, 5000, msg);
        s = spec("data/crc", 0, DESC_NONE);
        s.bad_crc = 1;
        expect_error(&s, data, 5000, msg);
    }
    s = spec("data/corrupt", 8, DESC_SIGNED);
    s.corrupt = 1;
    expect_error(&s, data, 5000, "ZIP decompression failed (-3)");
    s = spec("data/big", 8, DESC_NONE);
    s.header_usize = 4999;
    expect_error(&s, data, 5000, "ZIP: 'data/big' is larger than declared");
    s = spec("data/big", 8, DESC_SIGNED);
    s.header_usize = 4000;
    expect_error(&s, data, 5000, "ZIP: 'data/big' is larger than declared");
    s = spec("data/small", 8, DESC_NONE);
    s.header_usize = 5001;
    expect_error(&s, data, 5000, "ZIP: size mismatch for 'data/small'");
    s = spec("data/desc", 8, DESC_SIGNED);
    s.desc_usize = 4999;
    expect_error(&s, data, 5000, "ZIP: size mismatch for 'data/desc'");
    s = spec("data/desc64", 8, DESC_UNSIGNED);
    s.zip64 = 1;
    s.desc_usize = 5001;
    expect_error(&s, data, 5000, "ZIP: size mismatch for 'data/desc64'");
    free(data);
}

/* Raw bytes after a good entry. */
static void expect_trailer(const void *trailer, size_t n, const char *message, int archive_end) {
    buf a = {0};
    entry_spec good = spec("data/good", 8, DESC_SIGNED);
    add_entry(&a, &good, (const unsigned char *)"hello", 5);
    size_t at = a.len;
    put(&a, trailer, n);
    walk w;
    walk_all_ways(&a, MODE_HASH, &w);
    CHECK_EQ_INT(w.n, 1);
    if (message) {
        char msg[100];
        snprintf(msg, sizeof(msg), message, at);
        CHECK(w.failed && strcmp(w.error, msg) == 0);
    } else {
        CHECK(!w.failed);
        CHECK_EQ_INT(w.archive_end, archive_end);
    }
    walk_free(&w);
    free(a.p);
}

#define BYTES(literal) literal, sizeof(literal) - 1

NH_TEST(archive_end_and_bad_signatures) {
    expect_trailer(BYTES("PK\x01\x02 anything after it is ignored"), NULL, 1);
    expect_trailer(BYTES("PK\x05\x06"), NULL, 1);
    expect_trailer(BYTES("PK\x06\x06zz"), NULL, 1);
    expect_trailer(BYTES(""), NULL, 1);
    expect_trailer(BYTES("PK\x03\x05"), "ZIP: unexpected data at archive offset %zu", 0);
    expect_trailer(BYTES("\0\0\0\0\0\0"), "ZIP: unexpected data at archive offset %zu", 0);
    expect_trailer(BYTES("PK\x07\x08"), "ZIP: unexpected data at archive offset %zu", 0);
    expect_trailer(BYTES("PK"), "ZIP decompression failed (-5)", 0);
    expect_trailer(BYTES("PK\x03\x04\x14\0"), "ZIP decompression failed (-5)", 0);
}

/* One stored entry "t" with the given DOS time/date and extra field. */
static void mtime_of(unsigned dos_time, unsigned dos_date, const void *extra, size_t extra_len, int *known,
                     int64_t *mtime) {
    buf a = {0};
    put32(&a, 0x04034b50u);
    put16(&a, 10);
    put16(&a, 0);
    put16(&a, 0);
    put16(&a, dos_time);
    put16(&a, dos_date);
    put32(&a, 0);
    put32(&a, 0);
    put32(&a, 0);
    put16(&a, 1);
    put16(&a, (unsigned)extra_len);
    put(&a, "t", 1);
    put(&a, extra, extra_len);
    walk w;
    walk_archive(a.p, a.len, a.len, MODE_SKIP, &w);
    CHECK(!w.failed && w.n == 1);
    *known = w.e[0].mtime_known;
    *mtime = w.e[0].mtime;
    walk_free(&w);
    free(a.p);
}

NH_TEST(mtime_from_extra_or_dos_date) {
    int known;
    int64_t t;
    /* fwup's meta.conf carries SOURCE_DATE_EPOCH (the manifest's 2023-11-14T22:13:20Z) */
    buf a;
    REQUIRE(read_vector("01_minimal_raw.fw", &a) == 0);
    walk w;
    walk_archive(a.p, a.len, 3, MODE_SKIP, &w);
    REQUIRE(w.n == 3);
    CHECK(w.e[1].mtime_known && w.e[1].mtime == 1700000000);
    /* the signature's 0x5455 has no mtime: its DOS date 1980-01-01 00:00 counts */
    CHECK(w.e[0].mtime_known && w.e[0].mtime == 315532800);
    walk_free(&w);
    free(a.p);

    /* 2023-11-14 22:13:20 as a DOS date/time */
    unsigned dtime = (22u << 11) | (13u << 5) | 10u, ddate = ((2023u - 1980u) << 9) | (11u << 5) | 14u;
    mtime_of(dtime, ddate, "", 0, &known, &t);
    CHECK(known && t == 1700000000);
    mtime_of(dtime, (20u << 9) | (2u << 5) | 29u, "", 0, &known, &t); /* 2000-02-29 */
    CHECK(known && t == 951782400 + 22 * 3600 + 13 * 60 + 20);
    mtime_of(0, 0, "", 0, &known, &t); /* not a date */
    CHECK(!known);
    /* the extended timestamp wins; flags without bit 0 or a short field do not */
    mtime_of(0, 0, "UT\x05\0\x01\x10\x32\x54\x76", 9, &known, &t);
    CHECK(known && t == 0x76543210);
    mtime_of(dtime, ddate, "UT\x05\0\x06\x10\x32\x54\x76", 9, &known, &t);
    CHECK(known && t == 1700000000);
    mtime_of(0, 0, "UT\x01\0\x01", 5, &known, &t);
    CHECK(!known);
}

NH_TEST(api_rules) {
    buf a = {0};
    entry_spec s = spec("data/one", 8, DESC_SIGNED);
    unsigned char *data = pattern(1000, 3);
    add_entry(&a, &s, data, 1000);
    nh_zip *z;
    nh_err err;
    REQUIRE(nh_zip_new(&z, &err) == 0);
    size_t used;
    nh_zip_event ev;
    CHECK(nh_zip_sink_hash(z, &err) != 0); /* before EntryStart */
    CHECK_EQ_INT(nh_zip_feed(z, a.p, a.len, &used, &ev, &err), 0);
    CHECK_EQ_INT(ev.type, NH_ZIP_ENTRY_START);
    CHECK(nh_zip_can_choose_sink(z));
    CHECK_EQ_INT(nh_zip_sink_collect(z, 999, &err), 0);
    size_t at = used;
    CHECK_EQ_INT(nh_zip_feed(z, a.p + at, 0, &used, &ev, &err), 0); /* empty feed */
    CHECK_EQ_INT(used, 0);
    CHECK_EQ_INT(ev.type, NH_ZIP_NEED_INPUT);
    CHECK(nh_zip_sink_hash(z, &err) != 0); /* too late */
    CHECK(nh_zip_feed(z, a.p + at, a.len - at, &used, &ev, &err) != 0);
    CHECK(strcmp(err.msg, "ZIP: 'data/one' is larger than 999 bytes") == 0);
    /* dead: the same error again, for feed and end_of_input */
    memset(&err, 0, sizeof(err));
    CHECK(nh_zip_feed(z, a.p, 10, &used, &ev, &err) != 0);
    CHECK(strcmp(err.msg, "ZIP: 'data/one' is larger than 999 bytes") == 0);
    CHECK(nh_zip_end_of_input(z, &err) != 0);
    CHECK(strcmp(err.msg, "ZIP: 'data/one' is larger than 999 bytes") == 0);
    nh_zip_free(z);

    /* An event pending at the end of a block comes out of an empty feed. */
    buf b = {0};
    s = spec("data/stored", 0, DESC_NONE);
    add_entry(&b, &s, data, 0);
    REQUIRE(nh_zip_new(&z, &err) == 0);
    CHECK_EQ_INT(nh_zip_feed(z, b.p, b.len, &used, &ev, &err), 0);
    CHECK_EQ_INT(ev.type, NH_ZIP_ENTRY_START);
    CHECK_EQ_INT(used, b.len);
    CHECK_EQ_INT(nh_zip_feed(z, b.p + used, 0, &used, &ev, &err), 0);
    CHECK_EQ_INT(ev.type, NH_ZIP_ENTRY_END);
    CHECK_EQ_INT(ev.size, 0);
    CHECK_EQ_INT(nh_zip_end_of_input(z, &err), 0);
    /* after the end everything is consumed */
    CHECK_EQ_INT(nh_zip_feed(z, "xyz", 3, &used, &ev, &err), 0);
    CHECK_EQ_INT(used, 3);
    CHECK_EQ_INT(ev.type, NH_ZIP_NEED_INPUT);
    nh_zip_free(z);
    nh_zip_free(NULL);
    free(a.p);
    free(b.p);
    free(data);
}

/* ---- raw_write --------------------------------------------------------- */

typedef struct {
    const char *entry;
    uint64_t block;
    int use_map;        /* the sparse map of meta.conf */
    resource res[16];
    int nres;
    nh_cache *cache;
    int sink_error;
} raw_plan;

static void choose_raw(walk *w, nh_zip *z, const entry_rec *e) {
    raw_plan *plan = w->ctx;
    nh_err err;
    if (strcmp(e->name, "meta.conf") == 0) {
        nh_zip_sink_collect(z, 50000, &err);
        return;
    }
    for (raw_plan *p = plan; p->entry; p++) {
        if (strcmp(p->entry, e->name) != 0)
            continue;
        const resource *r = find_resource(plan->res, plan->nres, e->name);
        if (!r) {
            plan->sink_error = 1;
            return;
        }
        if (nh_zip_sink_raw_write(z, plan->cache, p->block * 512, r->map, r->map_len, data_bytes(r), &err) != 0) {
            fprintf(stderr, "  raw_write: %s\n", err.msg);
            plan->sink_error = 1;
        }
    }
}

/* Walk with a custom chooser (same feeding as walk_archive). */
static void walk_with(const unsigned char *p, size_t len, size_t block, chooser c, void *ctx, walk *w) {
    memset(w, 0, sizeof(*w));
    w->ctx = ctx;
    nh_zip *z;
    nh_err err;
    REQUIRE(nh_zip_new(&z, &err) == 0);
    size_t at = 0;
    for (;;) {
        size_t end = at + block < len ? at + block : len;
        for (;;) {
            size_t used;
            nh_zip_event ev;
            if (nh_zip_feed(z, p + at, end - at, &used, &ev, &err) != 0) {
                w->failed = 1;
                w->kind = nh_zip_error(z);
                snprintf(w->error, sizeof(w->error), "%s", nh_zip_error_message(z));
                CHECK(strncmp(err.msg, w->error, sizeof(err.msg) - 1) == 0);
                goto out;
            }
            at += used;
            if (ev.type == NH_ZIP_NEED_INPUT)
                break;
            if (ev.type == NH_ZIP_ENTRY_START && w->n < MAX_ENTRIES) {
                entry_rec *e = &w->e[w->n++];
                snprintf(e->name, sizeof(e->name), "%.*s", (int)ev.name_len, ev.name);
                c(w, z, e);
            } else if (ev.type == NH_ZIP_ENTRY_END && w->n > 0) {
                entry_rec *e = &w->e[w->n - 1];
                e->size = ev.size;
                e->has_b2 = ev.has_blake2b;
                memcpy(e->b2, ev.blake2b, 32);
            }
        }
        if (at == len)
            break;
    }
    if (nh_zip_end_of_input(z, &err) != 0) {
        w->failed = 1;
        snprintf(w->error, sizeof(w->error), "%s", err.msg);
    }
out:
    w->units = nh_zip_units(z);
    nh_zip_free(z);
}

static char temp_path[256];

static int make_image(size_t size, int fill) {
    snprintf(temp_path, sizeof(temp_path), "/tmp/nh_test_zip_%d.img", (int)getpid());
    int fd = open(temp_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    if (fill == 0) {
        if (ftruncate(fd, (off_t)size) != 0) {
            close(fd);
            return -1;
        }
    } else {
        unsigned char block[65536];
        memset(block, fill, sizeof(block));
        for (size_t at = 0; at < size; at += sizeof(block))
            if (write(fd, block, sizeof(block)) != (ssize_t)sizeof(block)) {
                close(fd);
                return -1;
            }
    }
    close(fd);
    return 0;
}

static void image_sha256(char out[65]) {
    buf img;
    out[0] = '\0';
    if (read_file(temp_path, &img) != 0)
        return;
    unsigned char d[32];
    crypto_hash_sha256(d, img.p, img.len);
    hex(d, 32, out);
    free(img.p);
}

/* Applies the raw_write plan of a golden vector to its base image and
 * compares the image with MANIFEST.json's sha256. */
static void apply_golden(const char *file, size_t image_size, int fill, raw_plan *plan, const char *sha,
                         size_t block, uint64_t expect_units) {
    buf a;
    REQUIRE(read_vector(file, &a) == 0);
    walk meta;
    walk_archive(a.p, a.len, a.len, MODE_COLLECT, &meta);
    int mi = -1;
    for (int i = 0; i < meta.n; i++)
        if (strcmp(meta.e[i].name, "meta.conf") == 0)
            mi = i;
    REQUIRE(mi >= 0);
    plan->nres = parse_resources(&meta.e[mi].data, plan->res, 16);
    walk_free(&meta);

    REQUIRE(make_image(image_size, fill) == 0);
    nh_err err;
    nh_cache_options opts = {0, -1, 0};
    REQUIRE(nh_cache_open(&plan->cache, temp_path, &opts, &err) == 0);
    plan->sink_error = 0;
    walk w;
    walk_with(a.p, a.len, block, choose_raw, plan, &w);
    if (w.failed)
        fprintf(stderr, "  %s: %s\n", file, w.error);
    CHECK(!w.failed && !plan->sink_error);
    CHECK_EQ_INT(w.units, expect_units);
    for (int i = 0; i < w.n; i++) {
        const resource *r = find_resource(plan->res, plan->nres, w.e[i].name);
        if (!r)
            continue;
        char got[65];
        hex(w.e[i].b2, 32, got);
        CHECK(w.e[i].has_b2 && strcmp(got, r->b2hex) == 0);
    }
    CHECK_EQ_INT(nh_cache_flush(plan->cache, &err), 0);
    nh_cache_close(plan->cache);
    char got[65];
    image_sha256(got);
    if (strcmp(got, sha) != 0)
        fprintf(stderr, "  %s (block %zu): image sha256 %s, want %s\n", file, block, got, sha);
    CHECK(strcmp(got, sha) == 0);
    unlink(temp_path);
    free(a.p);
}

NH_TEST(raw_write_golden_images) {
    size_t blocks[] = {16384, 1, 1000, 1u << 20};
    for (size_t b = 0; b < 4; b++) {
        size_t block = blocks[b];
        raw_plan p01[2] = {{.entry = "data/payload.bin", .block = 2048}, {0}};
        apply_golden("01_minimal_raw.fw", 16777216, 0, p01,
                     "5c49dc1bac2f31d45995d55e85cba67f83f4047e0e4b6d802941c394fba52e2a", block, 65536);
        raw_plan p09[2] = {{.entry = "data/sparse.img", .block = 2048}, {0}};
        apply_golden("09_sparse.fw", 4194304, 0xff, p09,
                     "d150b70e5b58639286bb3004d79b100addaa20d0838c97ecc789da40f0b70acb", block, 131072);
        raw_plan p10[3] = {{.entry = "data/payload.bin", .block = 1000},
                           {.entry = "extra-at-root.txt", .block = 999},
                           {0}};
        apply_golden("10_zip64.fw", 4194304, 0, p10,
                     "80b13272fdc4d300fcb7b466713502f84a16b7e0304c770670ee10431f1bce5e", block, 20047);
        if (block >= 1000) {
            raw_plan p03[2] = {{.entry = "data/rootfs.img", .block = 4096}, {0}};
            apply_golden("03_large_8mib.fw", 16777216, 0, p03,
                         "6cb7598304c5018c9296bea67921e8375c8bc27f37d51b28286c908cc6837ebd", block, 8388608);
        }
    }
}

typedef struct {
    nh_cache *cache;
    uint64_t offset;
    const uint64_t *map;
    size_t map_len;
    uint64_t expected;
} raw_one;

static void choose_raw_one(walk *w, nh_zip *z, const entry_rec *e) {
    raw_one *r = w->ctx;
    nh_err err;
    if (nh_zip_sink_raw_write(z, r->cache, r->offset, r->map, r->map_len, r->expected, &err) != 0)
        fprintf(stderr, "  raw_write: %s\n", err.msg);
}

/* Writes `data` as one entry with the given map over a 0xee image and
 * returns the image bytes. */
static void raw_write_synthetic(const unsigned char *data, size_t n, uint64_t offset, const uint64_t *map,
                                size_t map_len, uint64_t expected, size_t block, walk *w, buf *image) {
    buf a = {0};
    entry_spec s = spec("data/res.bin", 8, DESC_SIGNED);
    add_entry(&a, &s, data, n);
    add_central_directory(&a);
    memset(image, 0, sizeof(*image));
    REQUIRE(make_image(1u << 20, 0xee) == 0);
    nh_err err;
    raw_one r = {0, offset, map, map_len, expected};
    REQUIRE(nh_cache_open(&r.cache, temp_path, NULL, &err) == 0);
    w->ctx = &r;
    walk_with(a.p, a.len, block, choose_raw_one, &r, w);
    if (!w->failed)
        CHECK_EQ_INT(nh_cache_flush(r.cache, &err), 0);
    nh_cache_close(r.cache);
    read_file(temp_path, image);
    unlink(temp_path);
    free(a.p);
}

static int all_bytes(const unsigned char *p, size_t n, int v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

NH_TEST(raw_write_sparse_and_padding) {
    unsigned char *data = pattern(10000, 9);
    size_t blocks[] = {1, 333, 100000};
    for (size_t b = 0; b < 3; b++) {
        /* not sparse, unaligned length: the last block is zero padded */
        walk w;
        buf img;
        w.ctx = NULL;
        raw_write_synthetic(data, 3000, 4096, NULL, 0, 3000, blocks[b], &w, &img);
        CHECK(!w.failed);
        CHECK_EQ_INT(w.units, 3000);
        REQUIRE(img.len >= (1u << 20));
        CHECK(all_bytes(img.p, 4096, 0xee));
        CHECK(memcmp(img.p + 4096, data, 3000) == 0);
        CHECK(all_bytes(img.p + 4096 + 3000, 72, 0)); /* up to 6 * 512 */
        CHECK(all_bytes(img.p + 4096 + 3072, 1000, 0xee));
        free(img.p);

        /* sparse: data 1024, hole 2048, data 1000, hole 3000 (ends in a hole).
         * Every block that gets data, or the final zeros, is written whole. */
        uint64_t map[] = {1024, 2048, 1000, 3000};
        raw_write_synthetic(data, 2024, 8192, map, 4, 2024, blocks[b], &w, &img);
        CHECK(!w.failed);
        CHECK_EQ_INT(w.units, 2024);
        CHECK(all_bytes(img.p + 4096, 4096, 0xee));
        CHECK(memcmp(img.p + 8192, data, 1024) == 0);
        CHECK(all_bytes(img.p + 9216, 2048, 0xee));         /* the hole */
        CHECK(memcmp(img.p + 11264, data + 1024, 1000) == 0);
        CHECK(all_bytes(img.p + 12264, 24, 0));             /* its block padded */
        CHECK(all_bytes(img.p + 12288, 2048, 0xee));        /* the final hole... */
        CHECK(all_bytes(img.p + 14336, 1024, 0));           /* ...ends in zeros: 15264 - 512 .. 15360 */
        CHECK(all_bytes(img.p + 15360, 4096, 0xee));
        free(img.p);

        /* a short final hole in the same block as the data; a leading empty data run */
        uint64_t map2[] = {0, 512, 700, 100};
        raw_write_synthetic(data, 700, 0, map2, 4, 700, blocks[b], &w, &img);
        CHECK(!w.failed);
        CHECK(all_bytes(img.p, 512, 0xee));
        CHECK(memcmp(img.p + 512, data, 700) == 0);
        CHECK(all_bytes(img.p + 1212, 324, 0));
        CHECK(all_bytes(img.p + 1536, 1000, 0xee));
        free(img.p);

        /* more data than declared */
        raw_write_synthetic(data, 5000, 0, NULL, 0, 4999, blocks[b], &w, &img);
        CHECK(w.failed);
        CHECK(strcmp(w.error, "raw_write: 'res.bin' is larger than its declared length") == 0);
        free(img.p);
        uint64_t map3[] = {100, 100, 100};
        raw_write_synthetic(data, 201, 0, map3, 3, 200, blocks[b], &w, &img);
        CHECK(w.failed);
        CHECK(strcmp(w.error, "raw_write: 'res.bin' is larger than its declared length") == 0);
        free(img.p);
    }
    free(data);
}

NH_TEST(raw_write_destination_error) {
    unsigned char *data = pattern(70000, 2);
    buf a = {0};
    entry_spec s = spec("data/res.bin", 8, DESC_SIGNED);
    add_entry(&a, &s, data, 70000);
    REQUIRE(make_image(65536, 0) == 0);
    nh_err err;
    nh_cache_options opts = {0, -1, 65536}; /* hard end */
    raw_one r = {0, 0, NULL, 0, 70000};
    REQUIRE(nh_cache_open(&r.cache, temp_path, &opts, &err) == 0);
    walk w;
    walk_with(a.p, a.len, 4096, choose_raw_one, &r, &w);
    CHECK(w.failed);
    CHECK_EQ_INT(w.kind, NH_ZIP_ERR_DESTINATION);
    CHECK(strstr(w.error, "write past the end of") != NULL);
    nh_cache_close(r.cache);
    unlink(temp_path);
    free(a.p);
    free(data);
}

/* ---- mid-entry checkpoints ------------------------------------------- */

typedef struct {
    nh_cache *cache;
    const uint64_t *map;
    size_t map_len;
    uint64_t size;
    const unsigned char *restore; /* state to restore at ENTRY_START, or NULL */
    size_t restore_len;
    int restore_rc;
    uint64_t restored_extent;
    unsigned char digest[32];
    int checkpoints;
} ck_run;

/* Feeds p[*at..len) in pieces until an event of type `want` (1) or the end
 * of the input (0); -1 on a feed error. At ENTRY_START: raw_write, restore,
 * arm; the caller re-arms after a CHECKPOINT. */
static int ck_feed(nh_zip *z, const unsigned char *p, size_t len, size_t *at, size_t piece, int want,
                   ck_run *r) {
    nh_err err;
    nh_zip_event ev;
    for (;;) {
        size_t n = len - *at < piece ? len - *at : piece, used = 0;
        if (nh_zip_feed(z, p + *at, n, &used, &ev, &err) != 0) {
            fprintf(stderr, "  feed: %s\n", err.msg);
            return -1;
        }
        *at += used;
        if (ev.type == NH_ZIP_ENTRY_START) {
            if (nh_zip_sink_raw_write(z, r->cache, 4096, r->map, r->map_len, r->size, &err) != 0)
                return -1;
            if (r->restore)
                r->restore_rc = nh_zip_checkpoint_restore(z, r->restore, r->restore_len,
                                                          &r->restored_extent, &err);
            nh_zip_checkpoint_after(z, 0, &err);
        } else if (ev.type == NH_ZIP_CHECKPOINT) {
            r->checkpoints++;
        } else if (ev.type == NH_ZIP_ENTRY_END) {
            memcpy(r->digest, ev.blake2b, 32);
        }
        if ((int)ev.type == want)
            return 1;
        if (ev.type == NH_ZIP_NEED_INPUT && *at == len)
            return 0;
    }
}

/* A walk cut at each checkpoint (cache flushed there, the rest lost) and
 * continued on a new stream from the exported state writes the same image
 * and digest as one walk; a state for another sink or cut short is refused. */
NH_TEST(checkpoint_restore_continues_the_entry) {
    size_t n = 700000;
    unsigned char *data = pattern(n, 5);
    uint64_t map[] = {300000, 7000, 400000};
    buf a = {0};
    entry_spec s = spec("data/res.bin", 8, DESC_SIGNED);
    add_entry(&a, &s, data, n);
    add_central_directory(&a);
    nh_err err;

    REQUIRE(make_image(2u << 20, 0xee) == 0);
    ck_run one = {0};
    one.map = map;
    one.map_len = 3;
    one.size = n;
    REQUIRE(nh_cache_open(&one.cache, temp_path, NULL, &err) == 0);
    nh_zip *z;
    REQUIRE(nh_zip_new(&z, &err) == 0);
    size_t at = 0;
    while (ck_feed(z, a.p, a.len, &at, 5000, NH_ZIP_CHECKPOINT, &one) == 1)
        nh_zip_checkpoint_after(z, 0, &err);
    REQUIRE(nh_zip_end_of_input(z, &err) == 0);
    nh_zip_free(z);
    REQUIRE(nh_cache_flush(one.cache, &err) == 0);
    nh_cache_close(one.cache);
    buf expected;
    REQUIRE(read_file(temp_path, &expected) == 0);
    CHECK(one.checkpoints >= 4);

    for (int k = 1; k <= one.checkpoints; k += 3) {
        REQUIRE(make_image(2u << 20, 0xee) == 0);
        ck_run first = one;
        first.checkpoints = 0;
        REQUIRE(nh_cache_open(&first.cache, temp_path, NULL, &err) == 0);
        REQUIRE(nh_zip_new(&z, &err) == 0);
        at = 0;
        for (int i = 0; i < k; i++) {
            REQUIRE(ck_feed(z, a.p, a.len, &at, 7000, NH_ZIP_CHECKPOINT, &first) == 1);
            if (i + 1 < k)
                nh_zip_checkpoint_after(z, 0, &err);
        }
        size_t ck_at = at; /* the archive offset of the checkpoint */
        unsigned char *header, *state;
        size_t header_len, state_len;
        uint64_t extent;
        REQUIRE(nh_zip_checkpoint_export(z, &header, &header_len, &state, &state_len, &extent, &err) == 0);
        CHECK(extent > 0 && extent <= 707000);
        REQUIRE(nh_cache_flush(first.cache, &err) == 0);
        ck_feed(z, a.p, a.len, &at, 7000, NH_ZIP_ENTRY_END, &first); /* goes on, never flushed */
        nh_zip_free(z);
        nh_cache_discard(first.cache);
        nh_cache_close(first.cache);

        ck_run again = one;
        again.checkpoints = 0;
        again.restore = state;
        again.restore_len = state_len - 1; /* cut short: refused */
        REQUIRE(nh_cache_open(&again.cache, temp_path, NULL, &err) == 0);
        REQUIRE(nh_zip_new(&z, &err) == 0);
        size_t hat = 0;
        CHECK(ck_feed(z, header, header_len, &hat, header_len, NH_ZIP_ENTRY_START, &again) == 1);
        CHECK(again.restore_rc == -1);
        nh_zip_free(z);

        again.restore_len = state_len;
        REQUIRE(nh_zip_new(&z, &err) == 0);
        hat = 0;
        CHECK(ck_feed(z, header, header_len, &hat, header_len, NH_ZIP_ENTRY_START, &again) == 1);
        CHECK_EQ_INT(again.restore_rc, 0);
        CHECK_EQ_INT((long long)again.restored_extent, (long long)extent);
        at = ck_at;
        CHECK(ck_feed(z, a.p, a.len, &at, 3000, NH_ZIP_ARCHIVE_END, &again) == 1);
        CHECK(memcmp(again.digest, one.digest, 32) == 0);
        CHECK_EQ_INT((long long)nh_zip_units(z), (long long)n);
        nh_zip_free(z);
        CHECK_EQ_INT(nh_cache_flush(again.cache, &err), 0);
        nh_cache_close(again.cache);
        buf image;
        REQUIRE(read_file(temp_path, &image) == 0);
        CHECK(image.len == expected.len && memcmp(image.p, expected.p, image.len) == 0);
        free(image.p);
        free(header);
        free(state);
    }
    free(expected.p);
    unlink(temp_path);
    free(a.p);
    free(data);
}

NH_TEST_MAIN(NH_CASE(golden_archives_walk), NH_CASE(golden_bad_crc), NH_CASE(chunking_does_not_matter),
             NH_CASE(chunks_sink_delivers_the_data), NH_CASE(truncation), NH_CASE(synthetic_layouts),
             NH_CASE(synthetic_errors), NH_CASE(archive_end_and_bad_signatures),
             NH_CASE(mtime_from_extra_or_dos_date), NH_CASE(api_rules),
             NH_CASE(raw_write_golden_images), NH_CASE(raw_write_sparse_and_padding),
             NH_CASE(raw_write_destination_error), NH_CASE(checkpoint_restore_continues_the_entry))
