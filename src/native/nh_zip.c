/* nh_zip.c - the streaming zip walker: local headers, inflate, CRC, sinks. */
#include "nh_zip.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "nh_crypto.h"
#include "nh_hash.h"

#define RING_BUFS 4
#define RING_SIZE NH_ZIP_CHUNK_SIZE
/* Hash jobs are batched to at least this much (except at buffer and entry ends). */
#define HASH_BATCH (64u * 1024u)
#define FIXED_HEADER 30u
#define U32_MAX_FIELD 0xFFFFFFFFu
#define FLAG_ENCRYPTED 0x0001u
#define FLAG_DESCRIPTOR 0x0008u
#define EXTRA_ZIP64 0x0001u
#define EXTRA_TIMESTAMP 0x5455u

enum state {
    ST_SIGNATURE,   /* at an entry boundary: reading the next 4-byte signature */
    ST_HEADER,      /* rest of the 30-byte local header */
    ST_VARIABLE,    /* name and extra field */
    ST_DATA,        /* entry data */
    ST_DATA_END,    /* data finished: last chunk, then descriptor or checks */
    ST_DESCRIPTOR,  /* data descriptor */
    ST_CHECK,       /* sizes, CRC, sink completion, ENTRY_END */
    ST_DONE,        /* after ARCHIVE_END: everything is ignored */
};

enum sink { SINK_SKIP, SINK_COLLECT, SINK_HASH, SINK_CHUNKS, SINK_RAW_WRITE };

/* Internal step results. */
enum { STEP_CONTINUE = 0, STEP_EVENT = 1, STEP_NEED_INPUT = 2, STEP_ERROR = -1 };

struct nh_zip {
    int state;
    nh_zip_error_kind dead;
    char *error;               /* the message that killed the stream (malloc'd) */
    uint64_t offset;           /* archive bytes consumed before the current feed */
    uint64_t signature_offset; /* archive offset of the current entry's header */
    uint64_t units;
    int sink_choosable;

    /* local header: 30 bytes + name + extra, accumulated across feeds */
    unsigned char *hb;
    size_t hb_cap, hb_len, hb_need;

    /* current entry */
    const char *name;
    size_t name_len;
    unsigned flags, method;
    uint32_t header_crc;
    uint64_t csize, usize;     /* after the zip64 extra */
    int zip64;                 /* the local header has a zip64 extra */
    int mtime_known;
    int64_t mtime;
    int has_descriptor;
    uint64_t bound;            /* most uncompressed bytes allowed */
    uint64_t stored_left;      /* stored entries: bytes still to copy */
    uint64_t consumed_in;      /* compressed bytes consumed */
    uint64_t produced;         /* uncompressed bytes produced */
    uint32_t crc;

    /* data descriptor */
    unsigned char db[24];
    size_t db_len, db_need;
    int db_signed;

    z_stream zs;
    int zs_ready;
    unsigned char last_in;     /* the last compressed byte inflate took */

    /* mid-entry checkpoints */
    int checkpoint_armed;      /* stop at the first block boundary from checkpoint_at on */
    uint64_t checkpoint_at;
    int at_checkpoint;         /* the last event was NH_ZIP_CHECKPOINT */

    /* output ring: the current buffer is filled up to `fill`; [0, done) went
     * through the sink; [chunk_start, fill) is not yet a DATA_CHUNK. */
    unsigned char *ring[RING_BUFS];
    uint64_t ring_job[RING_BUFS]; /* last hash job reading each buffer */
    int cur;
    size_t fill, done, chunk_start;
    size_t hash_from;          /* [hash_from, done) is not yet submitted for hashing */

    int sink;
    nh_hasher *hasher;

    unsigned char *collect;
    size_t collect_len, collect_cap;
    uint64_t collect_limit;

    /* raw_write */
    nh_cache *cache;
    uint64_t rw_offset;        /* destination offset of the resource */
    uint64_t *rw_map;          /* data/hole runs; a one-run map when not sparse */
    size_t rw_map_len, rw_map_cap;
    size_t rw_run;             /* index of the current data run (even) */
    uint64_t rw_run_left;      /* bytes left in it */
    uint64_t rw_pos;           /* position in the resource extent of the next data byte */
    unsigned char pend[NH_BLOCK_SIZE]; /* the block being assembled (pad-to-block writer) */
    size_t pend_fill;          /* bytes of it in use, gaps already zeroed; 0 = none */
    uint64_t pend_block;       /* its absolute, block-aligned offset */
};

static const unsigned char zero_block[NH_BLOCK_SIZE];

/* ---- helpers ---------------------------------------------------------- */

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t le64(const unsigned char *p) { return le32(p) | ((uint64_t)le32(p + 4) << 32); }

static size_t min_size(size_t a, uint64_t b) { return b < a ? (size_t)b : a; }

static const char out_of_memory[] = "out of memory";

/* Records the error and kills the stream. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int die(nh_zip *z, nh_zip_error_kind kind, const char *fmt, ...) {
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *msg = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (msg)
        vsnprintf(msg, (size_t)n + 1, fmt, again);
    va_end(again);
    if (z->error != out_of_memory)
        free(z->error);
    z->error = msg ? msg : (char *)out_of_memory;
    z->dead = kind;
    return STEP_ERROR;
}

/* Dies with before'<prefix><name>'after; bytes of the name outside printable
 * ASCII are shown as '?'. */
static int die_quoted(nh_zip *z, const char *before, const char *prefix, const char *name, size_t len,
                      const char *after) {
    size_t plen = strlen(prefix);
    char *shown = malloc(plen + len + 1);
    if (!shown)
        return die(z, NH_ZIP_ERR_ARCHIVE, "%s", out_of_memory);
    memcpy(shown, prefix, plen);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        shown[plen + i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    shown[plen + len] = '\0';
    die(z, NH_ZIP_ERR_ARCHIVE, "%s'%s'%s", before, shown, after);
    free(shown);
    return STEP_ERROR;
}

static int die_name(nh_zip *z, const char *before, const char *after) {
    return die_quoted(z, before, "", z->name, z->name_len, after);
}

/* Copies up to `need - *have` input bytes into dst; 1 when complete. */
static int gather(unsigned char *dst, size_t *have, size_t need, const unsigned char *in, size_t len,
                  size_t *pos) {
    size_t n = need - *have;
    if (n > len - *pos)
        n = len - *pos;
    memcpy(dst + *have, in + *pos, n);
    *have += n;
    *pos += n;
    return *have == need;
}

/* ---- ring and sinks --------------------------------------------------- */

static int ring_ensure_buffer(nh_zip *z) {
    if (!z->ring[z->cur]) {
        z->ring[z->cur] = malloc(RING_SIZE);
        if (!z->ring[z->cur])
            return die(z, NH_ZIP_ERR_ARCHIVE, "%s", out_of_memory);
    }
    return STEP_CONTINUE;
}

static int hashing(const nh_zip *z) {
    return z->sink == SINK_HASH || z->sink == SINK_CHUNKS || z->sink == SINK_RAW_WRITE;
}

/* Hands [hash_from, done) of the current buffer to the hash thread. */
static void submit_hash(nh_zip *z) {
    if (z->done > z->hash_from && hashing(z)) {
        const unsigned char *from = z->ring[z->cur] + z->hash_from;
        z->ring_job[z->cur] = nh_hasher_submit(z->hasher, from, z->done - z->hash_from);
        z->hash_from = z->done;
    }
}

/* Moves to the next ring buffer once the hash thread is done with it. */
static void ring_advance(nh_zip *z) {
    submit_hash(z);
    z->cur = (z->cur + 1) % RING_BUFS;
    if (z->hasher && z->ring_job[z->cur])
        nh_hasher_wait(z->hasher, z->ring_job[z->cur]);
    z->ring_job[z->cur] = 0;
    z->fill = z->done = z->chunk_start = z->hash_from = 0;
}

static int emit_chunk(nh_zip *z, nh_zip_event *ev) {
    ev->type = NH_ZIP_DATA_CHUNK;
    ev->data = z->ring[z->cur] + z->chunk_start;
    ev->data_len = z->fill - z->chunk_start;
    z->units += ev->data_len;
    z->chunk_start = z->fill;
    return STEP_EVENT;
}

/* Room in the current buffer; a full buffer is first passed on as a chunk. */
static int ring_make_room(nh_zip *z, nh_zip_event *ev) {
    if (z->fill == RING_SIZE) {
        if (z->sink == SINK_CHUNKS && z->chunk_start < z->fill)
            return emit_chunk(z, ev);
        ring_advance(z);
    }
    return ring_ensure_buffer(z);
}

static int cache_write(nh_zip *z, uint64_t dest, const void *p, size_t n) {
    nh_err err;
    if (nh_cache_write(z->cache, dest, p, n, 1, &err) != 0)
        return die(z, NH_ZIP_ERR_DESTINATION, "%s", err.msg);
    return STEP_CONTINUE;
}

/* The pad-to-block writer: every block that receives a data byte reaches the
 * cache whole, the bytes of it no data covered being zeros. Offsets only grow. */
static int pad_flush(nh_zip *z) {
    if (z->pend_fill == 0)
        return STEP_CONTINUE;
    memset(z->pend + z->pend_fill, 0, NH_BLOCK_SIZE - z->pend_fill);
    z->pend_fill = 0;
    return cache_write(z, z->pend_block, z->pend, NH_BLOCK_SIZE);
}

/* Copies what fits of *p into the pending block at *dest and advances. */
static int pad_add(nh_zip *z, uint64_t *dest, const unsigned char **p, size_t *n) {
    size_t at = (size_t)(*dest - z->pend_block);
    if (at > z->pend_fill)
        memset(z->pend + z->pend_fill, 0, at - z->pend_fill);
    size_t take = min_size(NH_BLOCK_SIZE - at, *n);
    memcpy(z->pend + at, *p, take);
    z->pend_fill = at + take;
    *dest += take;
    *p += take;
    *n -= take;
    if (z->pend_fill < NH_BLOCK_SIZE)
        return STEP_CONTINUE;
    z->pend_fill = 0;
    return cache_write(z, z->pend_block, z->pend, NH_BLOCK_SIZE);
}

static int pad_write(nh_zip *z, uint64_t dest, const unsigned char *p, size_t n) {
    if (z->pend_fill > 0) {
        if (dest >= z->pend_block + NH_BLOCK_SIZE) {
            if (pad_flush(z) != STEP_CONTINUE)
                return STEP_ERROR;
        } else {
            if (pad_add(z, &dest, &p, &n) != STEP_CONTINUE)
                return STEP_ERROR;
            if (n == 0)
                return STEP_CONTINUE;
        }
    }
    size_t head = (size_t)(dest % NH_BLOCK_SIZE);
    if (head) {
        z->pend_block = dest - head;
        z->pend_fill = 0;
        if (pad_add(z, &dest, &p, &n) != STEP_CONTINUE)
            return STEP_ERROR;
    }
    size_t whole = n - n % NH_BLOCK_SIZE;
    if (whole) {
        if (cache_write(z, dest, p, whole) != STEP_CONTINUE)
            return STEP_ERROR;
        dest += whole;
        p += whole;
        n -= whole;
    }
    if (n) {
        z->pend_block = dest;
        z->pend_fill = 0;
        return pad_add(z, &dest, &p, &n);
    }
    return STEP_CONTINUE;
}

/* Maps resource data bytes onto the sparse map's data runs. */
static int rw_data(nh_zip *z, const unsigned char *p, size_t n) {
    while (n > 0) {
        while (z->rw_run_left == 0) {
            if (z->rw_run + 2 >= z->rw_map_len) { /* no further data run */
                const char *res = z->name;
                size_t len = z->name_len;
                int in_data = len >= 5 && memcmp(res, "data/", 5) == 0;
                return die_quoted(z, "raw_write: ", in_data ? "" : "/", in_data ? res + 5 : res,
                                  in_data ? len - 5 : len, " is larger than its declared length");
            }
            z->rw_pos += z->rw_map[z->rw_run + 1];
            z->rw_run += 2;
            z->rw_run_left = z->rw_map[z->rw_run];
        }
        size_t take = min_size(n, z->rw_run_left);
        if (pad_write(z, z->rw_offset + z->rw_pos, p, take) != STEP_CONTINUE)
            return STEP_ERROR;
        z->rw_pos += take;
        z->rw_run_left -= take;
        z->units += take;
        p += take;
        n -= take;
    }
    return STEP_CONTINUE;
}

/* The end of a raw_write: a map ending in a hole gets zeros over the last
 * min(512, hole) bytes of the extent; the last partial block is zero padded. */
static int rw_finish(nh_zip *z) {
    uint64_t hole = (z->rw_map_len % 2 == 0) ? z->rw_map[z->rw_map_len - 1] : 0;
    if (hole > 0) {
        uint64_t extent = 0;
        for (size_t i = 0; i < z->rw_map_len; i++)
            extent += z->rw_map[i];
        size_t n = hole < NH_BLOCK_SIZE ? (size_t)hole : NH_BLOCK_SIZE;
        if (pad_write(z, z->rw_offset + extent - n, zero_block, n) != STEP_CONTINUE)
            return STEP_ERROR;
    }
    return pad_flush(z);
}

static int collect_append(nh_zip *z, const unsigned char *p, size_t n) {
    if ((uint64_t)z->collect_len + n > z->collect_limit) {
        char after[64];
        snprintf(after, sizeof(after), " is larger than %llu bytes", (unsigned long long)z->collect_limit);
        return die_name(z, "ZIP: ", after);
    }
    if (z->collect_len + n > z->collect_cap) {
        size_t cap = z->collect_cap ? z->collect_cap : 4096;
        while (cap < z->collect_len + n)
            cap *= 2;
        if ((uint64_t)cap > z->collect_limit)
            cap = (size_t)z->collect_limit;
        unsigned char *grown = realloc(z->collect, cap);
        if (!grown)
            return die(z, NH_ZIP_ERR_ARCHIVE, "%s", out_of_memory);
        z->collect = grown;
        z->collect_cap = cap;
    }
    memcpy(z->collect + z->collect_len, p, n);
    z->collect_len += n;
    return STEP_CONTINUE;
}

/* Passes the newly produced bytes [done, fill) through CRC and the sink. */
static int process_output(nh_zip *z) {
    size_t n = z->fill - z->done;
    if (n == 0)
        return STEP_CONTINUE;
    const unsigned char *p = z->ring[z->cur] + z->done;
    z->done = z->fill;
    if (n > z->bound - z->produced)
        return die_name(z, "ZIP: ", " is larger than declared");
    z->produced += n;
    z->crc = (uint32_t)crc32_z(z->crc, p, n);
    if (z->done - z->hash_from >= HASH_BATCH)
        submit_hash(z); /* before the cache write, so that both overlap */
    switch (z->sink) {
    case SINK_COLLECT:
        return collect_append(z, p, n);
    case SINK_RAW_WRITE:
        return rw_data(z, p, n);
    default:
        return STEP_CONTINUE;
    }
}

/* ---- parsing ---------------------------------------------------------- */

static int bad_name(const char *name, size_t n) {
    if (n == 0 || n > NH_ZIP_NAME_MAX || memchr(name, '\0', n) || name[0] == '/')
        return 1;
    if (n >= 6 && memcmp(name, "data//", 6) == 0)
        return 1; /* absolute once "data/" is stripped */
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || name[i] == '/') {
            if (i - start == 2 && name[start] == '.' && name[start + 1] == '.')
                return 1;
            start = i + 1;
        }
    }
    return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (month 1-12). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The DOS date and time of the header read as UTC; 0 when they are not a date. */
static int dos_mtime(unsigned time, unsigned date, int64_t *out) {
    unsigned sec = (time & 0x1f) * 2, min = (time >> 5) & 0x3f, hour = time >> 11;
    unsigned day = date & 0x1f, month = (date >> 5) & 0x0f, year = 1980 + (date >> 9);
    if (month < 1 || month > 12 || day < 1 || hour > 23 || min > 59 || sec > 59)
        return 0;
    *out = days_from_civil(year, month, day) * 86400 + hour * 3600 + min * 60 + sec;
    return 1;
}

/* Applies the first zip64 extra (8-byte sizes for the header fields that were
 * 0xFFFFFFFF) and the first extended timestamp (0x5455) with a mtime. */
static int parse_extra(nh_zip *z, const unsigned char *p, size_t len) {
    int seen_zip64 = 0, seen_time = 0;
    while (len >= 4) {
        unsigned id = le16(p), size = le16(p + 2);
        p += 4;
        len -= 4;
        if (size > len)
            size = (unsigned)len;
        if (id == EXTRA_ZIP64 && !seen_zip64) {
            size_t needed = 8u * ((z->usize == U32_MAX_FIELD) + (z->csize == U32_MAX_FIELD));
            if (size < needed)
                return die_name(z, "ZIP: bad zip64 extra field for ", "");
            const unsigned char *q = p;
            if (z->usize == U32_MAX_FIELD) {
                z->usize = le64(q);
                q += 8;
            }
            if (z->csize == U32_MAX_FIELD)
                z->csize = le64(q);
            z->zip64 = seen_zip64 = 1;
        } else if (id == EXTRA_TIMESTAMP && !seen_time) {
            seen_time = 1;
            if (size >= 5 && (p[0] & 1)) {
                z->mtime = le32(p + 1);
                z->mtime_known = 1;
            }
        }
        p += size;
        len -= size;
    }
    return STEP_CONTINUE;
}

/* The whole local header is in hb: validate it and start the entry. */
static int begin_entry(nh_zip *z, nh_zip_event *ev) {
    const unsigned char *h = z->hb;
    size_t name_len = le16(h + 26), extra_len = le16(h + 28);
    z->flags = le16(h + 6);
    z->method = le16(h + 8);
    z->header_crc = le32(h + 14);
    z->csize = le32(h + 18);
    z->usize = le32(h + 22);
    z->name = (const char *)h + FIXED_HEADER;
    z->name_len = name_len;
    z->zip64 = 0;
    z->has_descriptor = (z->flags & FLAG_DESCRIPTOR) != 0;

    if (bad_name(z->name, z->name_len))
        return die_name(z, "ZIP: bad entry name ", "");
    if (z->flags & FLAG_ENCRYPTED)
        return die_name(z, "ZIP: encrypted entries are not supported (", ")");
    if (z->method != 0 && z->method != 8) {
        char before[64];
        snprintf(before, sizeof(before), "ZIP: unsupported compression method %u for ", z->method);
        return die_name(z, before, "");
    }
    z->mtime_known = 0;
    if (parse_extra(z, h + FIXED_HEADER + name_len, extra_len) != STEP_CONTINUE)
        return STEP_ERROR;
    if (!z->mtime_known)
        z->mtime_known = dos_mtime(le16(h + 10), le16(h + 12), &z->mtime);

    ev->size_known = 1;
    if (z->method == 0) {
        uint64_t size = z->csize ? z->csize : z->usize;
        if (z->csize && z->usize && z->csize != z->usize)
            return die_name(z, "ZIP: size mismatch for ", "");
        if (z->has_descriptor && size == 0)
            return die_name(z, "ZIP: stored entry ", " has no size");
        z->stored_left = size;
        z->bound = size;
        ev->size = size;
    } else {
        z->bound = (!z->has_descriptor || z->usize) ? z->usize : UINT64_MAX;
        ev->size_known = !z->has_descriptor || z->usize != 0;
        ev->size = ev->size_known ? z->usize : 0;
        if (!z->zs_ready) {
            if (inflateInit2(&z->zs, -15) != Z_OK)
                return die(z, NH_ZIP_ERR_ARCHIVE, "ZIP: cannot initialise zlib");
            z->zs_ready = 1;
        } else if (inflateReset(&z->zs) != Z_OK) {
            return die(z, NH_ZIP_ERR_ARCHIVE, "ZIP: cannot reset zlib");
        }
    }

    /* Each entry starts on a fresh ring buffer, so chunks are aligned to it. */
    if (z->fill > 0)
        ring_advance(z);
    z->consumed_in = z->produced = 0;
    z->checkpoint_armed = 0;
    z->crc = (uint32_t)crc32_z(0, Z_NULL, 0);
    z->sink = SINK_SKIP;
    z->cache = NULL;
    z->collect_len = 0;
    z->sink_choosable = 1;
    z->state = ST_DATA;

    ev->type = NH_ZIP_ENTRY_START;
    ev->name = z->name;
    ev->name_len = z->name_len;
    ev->method = (int)z->method;
    ev->mtime_known = z->mtime_known;
    ev->mtime = z->mtime_known ? z->mtime : 0;
    return STEP_EVENT;
}

static int step_signature(nh_zip *z, const unsigned char *in, size_t len, size_t *pos, nh_zip_event *ev) {
    if (z->hb_len == 0)
        z->signature_offset = z->offset + *pos;
    if (!gather(z->hb, &z->hb_len, 4, in, len, pos))
        return STEP_NEED_INPUT;
    const unsigned char *s = z->hb;
    if (s[0] == 'P' && s[1] == 'K') {
        if (s[2] == 3 && s[3] == 4) {
            z->hb_need = FIXED_HEADER;
            z->state = ST_HEADER;
            return STEP_CONTINUE;
        }
        if ((s[2] == 1 && s[3] == 2) || (s[2] == 5 && s[3] == 6) || (s[2] == 6 && s[3] == 6)) {
            z->state = ST_DONE;
            ev->type = NH_ZIP_ARCHIVE_END;
            return STEP_EVENT;
        }
    }
    return die(z, NH_ZIP_ERR_ARCHIVE, "ZIP: unexpected data at archive offset %llu",
               (unsigned long long)z->signature_offset);
}

static int step_header(nh_zip *z, const unsigned char *in, size_t len, size_t *pos, nh_zip_event *ev) {
    if (!gather(z->hb, &z->hb_len, z->hb_need, in, len, pos))
        return STEP_NEED_INPUT;
    if (z->state == ST_HEADER) {
        size_t total = FIXED_HEADER + le16(z->hb + 26) + le16(z->hb + 28);
        if (total > z->hb_cap) {
            unsigned char *grown = realloc(z->hb, total);
            if (!grown)
                return die(z, NH_ZIP_ERR_ARCHIVE, "%s", out_of_memory);
            z->hb = grown;
            z->hb_cap = total;
        }
        z->hb_need = total;
        z->state = ST_VARIABLE;
        return STEP_CONTINUE;
    }
    return begin_entry(z, ev);
}

static int step_stored(nh_zip *z, const unsigned char *in, size_t len, size_t *pos, nh_zip_event *ev) {
    if (z->stored_left == 0) {
        z->state = ST_DATA_END;
        return STEP_CONTINUE;
    }
    int r = ring_make_room(z, ev);
    if (r != STEP_CONTINUE)
        return r;
    if (*pos == len)
        return STEP_NEED_INPUT;
    size_t n = min_size(min_size(len - *pos, RING_SIZE - z->fill), z->stored_left);
    memcpy(z->ring[z->cur] + z->fill, in + *pos, n);
    *pos += n;
    z->fill += n;
    z->consumed_in += n;
    z->stored_left -= n;
    return process_output(z);
}

static int step_inflate(nh_zip *z, const unsigned char *in, size_t len, size_t *pos, nh_zip_event *ev) {
    static const unsigned char nothing;
    int at_bound = z->produced == z->bound;
    /* Everything up to the bound goes out before probing past it. */
    if (at_bound && z->sink == SINK_CHUNKS && z->chunk_start < z->fill)
        return emit_chunk(z, ev);
    int r = ring_make_room(z, ev);
    if (r != STEP_CONTINUE)
        return r;
    size_t avail_in = len - *pos;
    if (!z->has_descriptor)
        avail_in = min_size(avail_in, z->csize - z->consumed_in);
    /* Output up to the bound; at the bound, one byte to notice exceeding it. */
    size_t avail_out = RING_SIZE - z->fill;
    if (z->bound != UINT64_MAX)
        avail_out = at_bound ? 1 : min_size(avail_out, z->bound - z->produced);
    if (avail_in > UINT32_MAX)
        avail_in = UINT32_MAX;
    /* Armed: Z_NO_FLUSH (cheaper: zlib updates its window per return) up to the
     * byte before the checkpoint offset, where no boundary that qualifies can
     * be passed yet, then Z_BLOCK to stop at the first one that does. */
    int armed = z->checkpoint_armed && z->sink == SINK_RAW_WRITE, flush = Z_NO_FLUSH;
    if (armed) {
        uint64_t here = z->offset + *pos;
        if (here + 1 >= z->checkpoint_at)
            flush = Z_BLOCK;
        else
            avail_in = min_size(avail_in, z->checkpoint_at - 1 - here);
    }
    z->zs.next_in = (Bytef *)(avail_in ? in + *pos : &nothing);
    z->zs.avail_in = (uInt)avail_in;
    z->zs.next_out = z->ring[z->cur] + z->fill;
    z->zs.avail_out = (uInt)avail_out;
    int ret = inflate(&z->zs, flush);
    size_t used = avail_in - z->zs.avail_in, made = avail_out - z->zs.avail_out;
    *pos += used;
    if (used)
        z->last_in = in[*pos - 1];
    z->consumed_in += used;
    z->fill += made;
    if (process_output(z) != STEP_CONTINUE)
        return STEP_ERROR;
    /* A block boundary (not the end) with fewer than 8 bits left over. */
    if (armed && ret == Z_OK && (z->zs.data_type & 0xC0) == 0x80 && (z->zs.data_type & 0x38) == 0 &&
        z->consumed_in > 0 && z->offset + *pos >= z->checkpoint_at && z->produced < z->bound) {
        z->checkpoint_armed = 0;
        z->at_checkpoint = 1;
        ev->type = NH_ZIP_CHECKPOINT;
        return STEP_EVENT;
    }
    if (ret == Z_STREAM_END) {
        if (!z->has_descriptor && z->consumed_in != z->csize)
            return die_name(z, "ZIP: size mismatch for ", "");
        z->state = ST_DATA_END;
        return STEP_CONTINUE;
    }
    if (ret != Z_OK && ret != Z_BUF_ERROR)
        return die(z, NH_ZIP_ERR_ARCHIVE, "ZIP decompression failed (%d)",
                   ret == Z_NEED_DICT ? Z_DATA_ERROR : ret);
    if (used == 0 && made == 0) {
        if (!z->has_descriptor && z->consumed_in == z->csize)
            return die_name(z, "ZIP: size mismatch for ", "");
        if (*pos == len)
            return STEP_NEED_INPUT;
        return die(z, NH_ZIP_ERR_ARCHIVE, "ZIP decompression failed (%d)", Z_BUF_ERROR);
    }
    return STEP_CONTINUE;
}

static int step_data_end(nh_zip *z, nh_zip_event *ev) {
    if (z->sink == SINK_CHUNKS && z->chunk_start < z->fill)
        return emit_chunk(z, ev);
    if (z->has_descriptor) {
        z->db_len = 0;
        z->db_need = 4;
        z->state = ST_DESCRIPTOR;
    } else {
        z->state = ST_CHECK;
    }
    return STEP_CONTINUE;
}

static int step_descriptor(nh_zip *z, const unsigned char *in, size_t len, size_t *pos) {
    if (!gather(z->db, &z->db_len, z->db_need, in, len, pos))
        return STEP_NEED_INPUT;
    if (z->db_need == 4) {
        z->db_signed = le32(z->db) == 0x08074b50u;
        z->db_need = (z->db_signed ? 4u : 0u) + 4u + (z->zip64 ? 16u : 8u);
        return STEP_CONTINUE;
    }
    z->state = ST_CHECK;
    return STEP_CONTINUE;
}

static int step_check(nh_zip *z, nh_zip_event *ev) {
    uint32_t expected_crc = z->header_crc;
    if (z->has_descriptor) {
        const unsigned char *d = z->db + (z->db_signed ? 4 : 0);
        uint64_t csize, usize, mask = z->zip64 ? UINT64_MAX : 0xFFFFFFFFu;
        expected_crc = le32(d);
        csize = z->zip64 ? le64(d + 4) : le32(d + 4);
        usize = z->zip64 ? le64(d + 12) : le32(d + 8);
        if (csize != (z->consumed_in & mask) || usize != (z->produced & mask))
            return die_name(z, "ZIP: size mismatch for ", "");
    } else if (z->produced != z->usize) {
        return die_name(z, "ZIP: size mismatch for ", "");
    }
    if (z->crc != expected_crc)
        return die(z, NH_ZIP_ERR_ARCHIVE, "ZIP bad CRC: 0x%x should be 0x%x", (unsigned)z->crc,
                   (unsigned)expected_crc);

    ev->type = NH_ZIP_ENTRY_END;
    ev->name = z->name;
    ev->name_len = z->name_len;
    ev->size = z->produced;
    ev->crc32 = z->crc;
    if (hashing(z)) {
        nh_err err;
        submit_hash(z);
        if (nh_hasher_finish(z->hasher, ev->blake2b, &err) != 0)
            return die(z, NH_ZIP_ERR_ARCHIVE, "%s", err.msg);
        ev->has_blake2b = 1;
        for (int i = 0; i < RING_BUFS; i++)
            z->ring_job[i] = 0;
    }
    if (z->sink == SINK_RAW_WRITE && rw_finish(z) != STEP_CONTINUE)
        return STEP_ERROR;
    if (z->sink == SINK_COLLECT) {
        ev->data = z->collect ? z->collect : zero_block;
        ev->data_len = z->collect_len;
    }
    z->cache = NULL;
    z->hb_len = 0;
    z->state = ST_SIGNATURE;
    return STEP_EVENT;
}

/* ---- public API ------------------------------------------------------- */

int nh_zip_new(nh_zip **out, nh_err *err) {
    *out = NULL;
    nh_zip *z = calloc(1, sizeof(*z));
    if (!z)
        return nh_fail(err, "out of memory");
    z->hb_cap = FIXED_HEADER + NH_ZIP_NAME_MAX + 512;
    z->hb = malloc(z->hb_cap);
    if (!z->hb) {
        free(z);
        return nh_fail(err, "out of memory");
    }
    z->state = ST_SIGNATURE;
    *out = z;
    return 0;
}

void nh_zip_free(nh_zip *z) {
    if (!z)
        return;
    nh_hasher_free(z->hasher); /* joins before the buffers it reads go away */
    if (z->zs_ready)
        inflateEnd(&z->zs);
    for (int i = 0; i < RING_BUFS; i++)
        free(z->ring[i]);
    free(z->collect);
    free(z->rw_map);
    free(z->hb);
    if (z->error != out_of_memory)
        free(z->error);
    free(z);
}

static int fail_dead(const nh_zip *z, nh_err *err) { return nh_fail(err, "%s", z->error); }

int nh_zip_feed(nh_zip *z, const void *data, size_t len, size_t *consumed, nh_zip_event *ev, nh_err *err) {
    const unsigned char *in = data;
    size_t pos = 0;
    *consumed = 0;
    memset(ev, 0, sizeof(*ev));
    if (z->dead)
        return fail_dead(z, err);
    z->sink_choosable = 0;
    z->at_checkpoint = 0;
    int r = STEP_CONTINUE;
    while (r == STEP_CONTINUE) {
        switch (z->state) {
        case ST_SIGNATURE:
            r = step_signature(z, in, len, &pos, ev);
            break;
        case ST_HEADER:
        case ST_VARIABLE:
            r = step_header(z, in, len, &pos, ev);
            break;
        case ST_DATA:
            r = z->method == 0 ? step_stored(z, in, len, &pos, ev) : step_inflate(z, in, len, &pos, ev);
            break;
        case ST_DATA_END:
            r = step_data_end(z, ev);
            break;
        case ST_DESCRIPTOR:
            r = step_descriptor(z, in, len, &pos);
            break;
        case ST_CHECK:
            r = step_check(z, ev);
            break;
        default: /* ST_DONE */
            pos = len;
            r = STEP_NEED_INPUT;
            break;
        }
        if (r == STEP_NEED_INPUT && pos < len)
            r = STEP_CONTINUE; /* a step that ran out of room, not of input */
        /* All that the input decoded to is handed out before asking for more. */
        if (r == STEP_NEED_INPUT && z->state == ST_DATA && z->sink == SINK_CHUNKS &&
            z->chunk_start < z->fill)
            r = emit_chunk(z, ev);
    }
    z->offset += pos;
    *consumed = pos;
    if (r == STEP_ERROR) {
        memset(ev, 0, sizeof(*ev));
        return fail_dead(z, err);
    }
    if (r == STEP_NEED_INPUT)
        ev->type = NH_ZIP_NEED_INPUT;
    return 0;
}

int nh_zip_end_of_input(nh_zip *z, nh_err *err) {
    if (z->dead)
        return fail_dead(z, err);
    z->sink_choosable = 0;
    if (z->state == ST_DONE || (z->state == ST_SIGNATURE && z->hb_len == 0)) {
        z->state = ST_DONE;
        return 0;
    }
    die(z, NH_ZIP_ERR_ARCHIVE, "ZIP decompression failed (%d)", Z_BUF_ERROR);
    return fail_dead(z, err);
}

int nh_zip_can_choose_sink(const nh_zip *z) { return z->sink_choosable && !z->dead; }

static int choose(nh_zip *z, int sink, nh_err *err) {
    if (!nh_zip_can_choose_sink(z))
        return nh_fail(err, "a sink can only be chosen right after EntryStart");
    if (sink == SINK_HASH || sink == SINK_CHUNKS || sink == SINK_RAW_WRITE) {
        if (!z->hasher && nh_hasher_new(&z->hasher, err) != 0)
            return -1;
        if (nh_hasher_begin(z->hasher, err) != 0)
            return -1;
    }
    z->sink = sink;
    z->cache = NULL;
    return 0;
}

int nh_zip_sink_skip(nh_zip *z, nh_err *err) { return choose(z, SINK_SKIP, err); }

int nh_zip_sink_collect(nh_zip *z, uint64_t limit, nh_err *err) {
    if (choose(z, SINK_COLLECT, err) != 0)
        return -1;
    z->collect_limit = limit;
    z->collect_len = 0;
    return 0;
}

int nh_zip_sink_hash(nh_zip *z, nh_err *err) { return choose(z, SINK_HASH, err); }

int nh_zip_sink_chunks(nh_zip *z, nh_err *err) { return choose(z, SINK_CHUNKS, err); }

int nh_zip_sink_raw_write(nh_zip *z, nh_cache *cache, uint64_t offset, const uint64_t *sparse_map,
                          size_t map_len, uint64_t expected_size, nh_err *err) {
    if (!nh_zip_can_choose_sink(z))
        return nh_fail(err, "a sink can only be chosen right after EntryStart");
    if (!cache)
        return nh_fail(err, "raw_write needs a cache");
    if (!sparse_map || map_len == 0) {
        sparse_map = &expected_size;
        map_len = 1;
    }
    uint64_t data = 0, extent = 0;
    for (size_t i = 0; i < map_len; i++) {
        if (sparse_map[i] > UINT64_MAX - extent)
            return nh_fail(err, "sparse map too large");
        extent += sparse_map[i];
        if (i % 2 == 0)
            data += sparse_map[i];
    }
    if (data != expected_size)
        return nh_fail(err, "sparse map data runs (%llu) differ from the expected size (%llu)",
                       (unsigned long long)data, (unsigned long long)expected_size);
    if (offset > UINT64_MAX - extent)
        return nh_fail(err, "raw_write offset too large");
    if (map_len > z->rw_map_cap) {
        uint64_t *grown = realloc(z->rw_map, map_len * sizeof(*grown));
        if (!grown)
            return nh_fail(err, "out of memory");
        z->rw_map = grown;
        z->rw_map_cap = map_len;
    }
    if (choose(z, SINK_RAW_WRITE, err) != 0)
        return -1;
    memcpy(z->rw_map, sparse_map, map_len * sizeof(*sparse_map));
    z->rw_map_len = map_len;
    z->cache = cache;
    z->rw_offset = offset;
    z->rw_run = 0;
    z->rw_run_left = z->rw_map[0];
    z->rw_pos = 0;
    z->pend_fill = 0;
    return 0;
}

/* ---- mid-entry checkpoints ------------------------------------------- */

#define CKPT_MAGIC 0x315A484Eu /* "NHZ1" */
#define CKPT_WINDOW 32768u
#define CKPT_FIXED (4u + 8u + 8u + 4u + 1u + 1u + 4u + 4u)

static unsigned char *put_le(unsigned char *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++)
        *p++ = (unsigned char)(v >> (8 * i));
    return p;
}

static uint64_t get_le(const unsigned char **p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)(*p)[i] << (8 * i);
    *p += n;
    return v;
}

/* Places `produced` data bytes on the sparse map as rw_data would have:
 * sets rw_run, rw_run_left and rw_pos. -1 when they do not fit. */
static int rw_seek(nh_zip *z, uint64_t produced) {
    size_t run = 0;
    uint64_t left = z->rw_map[0], pos = 0;
    while (produced > 0) {
        if (left == 0) {
            if (run + 2 >= z->rw_map_len)
                return -1;
            pos += z->rw_map[run + 1];
            run += 2;
            left = z->rw_map[run];
            continue;
        }
        uint64_t take = produced < left ? produced : left;
        pos += take;
        left -= take;
        produced -= take;
    }
    z->rw_run = run;
    z->rw_run_left = left;
    z->rw_pos = pos;
    return 0;
}

int nh_zip_checkpoint_after(nh_zip *z, uint64_t n, nh_err *err) {
    if (z->dead)
        return fail_dead(z, err);
    z->checkpoint_armed = 1;
    z->checkpoint_at = n > UINT64_MAX - z->offset ? UINT64_MAX : z->offset + n;
    return 0;
}

int nh_zip_checkpoint_export(nh_zip *z, unsigned char **header, size_t *header_len, unsigned char **state,
                             size_t *state_len, uint64_t *extent_done, nh_err *err) {
    *header = *state = NULL;
    *header_len = *state_len = 0;
    if (z->dead)
        return fail_dead(z, err);
    if (!z->at_checkpoint)
        return nh_fail(err, "a checkpoint can only be exported right after its event");
    /* The partial block goes to the cache too (read back on restore); it stays pending here. */
    if (z->pend_fill > 0) {
        unsigned char block[NH_BLOCK_SIZE];
        memcpy(block, z->pend, z->pend_fill);
        memset(block + z->pend_fill, 0, NH_BLOCK_SIZE - z->pend_fill);
        if (nh_cache_write(z->cache, z->pend_block, block, NH_BLOCK_SIZE, 1, err) != 0)
            return -1;
    }
    submit_hash(z);
    unsigned char hash[NH_BLAKE2B_STATE_MAX];
    size_t hash_len = 0;
    if (nh_hasher_export(z->hasher, hash, sizeof(hash), &hash_len, err) != 0)
        return -1;
    unsigned char *window = malloc(CKPT_WINDOW);
    uInt window_len = 0;
    if (!window)
        return nh_fail(err, "out of memory");
    if (inflateGetDictionary(&z->zs, window, &window_len) != Z_OK || window_len > CKPT_WINDOW) {
        free(window);
        return nh_fail(err, "cannot read the inflate window");
    }
    size_t len = CKPT_FIXED + window_len + hash_len;
    unsigned char *out = malloc(len), *hb = malloc(z->hb_len);
    if (!out || !hb) {
        free(window);
        free(out);
        free(hb);
        return nh_fail(err, "out of memory");
    }
    int bits = z->zs.data_type & 7;
    unsigned char *p = out;
    p = put_le(p, CKPT_MAGIC, 4);
    p = put_le(p, z->consumed_in, 8);
    p = put_le(p, z->produced, 8);
    p = put_le(p, z->crc, 4);
    p = put_le(p, (uint64_t)bits, 1);
    p = put_le(p, bits ? (uint64_t)(z->last_in >> (8 - bits)) : 0, 1);
    p = put_le(p, window_len, 4);
    memcpy(p, window, window_len);
    p += window_len;
    p = put_le(p, hash_len, 4);
    memcpy(p, hash, hash_len);
    free(window);
    memcpy(hb, z->hb, z->hb_len);
    *header = hb;
    *header_len = z->hb_len;
    *state = out;
    *state_len = len;
    *extent_done = z->rw_pos;
    return 0;
}

int nh_zip_checkpoint_restore(nh_zip *z, const void *data, size_t len, uint64_t *extent_done, nh_err *err) {
    const unsigned char *p = data, *end = p + len;
    if (!nh_zip_can_choose_sink(z) || z->sink != SINK_RAW_WRITE || z->method != 8 || z->produced)
        return nh_fail(err, "a checkpoint is restored right after choosing raw_write for a deflated entry");
    if (len < CKPT_FIXED || get_le(&p, 4) != CKPT_MAGIC)
        return nh_fail(err, "not a zip checkpoint");
    uint64_t consumed = get_le(&p, 8), produced = get_le(&p, 8);
    uint32_t crc = (uint32_t)get_le(&p, 4);
    int bits = (int)get_le(&p, 1), value = (int)get_le(&p, 1);
    size_t window_len = (size_t)get_le(&p, 4);
    if (bits > 7 || value >> bits || window_len > CKPT_WINDOW || (size_t)(end - p) < window_len + 4)
        return nh_fail(err, "corrupt zip checkpoint");
    const unsigned char *window = p;
    p += window_len;
    size_t hash_len = (size_t)get_le(&p, 4);
    if ((size_t)(end - p) != hash_len)
        return nh_fail(err, "corrupt zip checkpoint");
    if (consumed == 0 || (!z->has_descriptor && consumed >= z->csize) || produced > z->bound ||
        rw_seek(z, produced) != 0)
        return nh_fail(err, "the zip checkpoint does not fit the entry");
    if (inflateReset(&z->zs) != Z_OK || inflateSetDictionary(&z->zs, window, (uInt)window_len) != Z_OK ||
        inflatePrime(&z->zs, bits, value) != Z_OK)
        return nh_fail(err, "cannot restore the inflate state");
    if (nh_hasher_import(z->hasher, p, hash_len, err) != 0)
        return -1;
    /* The partial block as the first run left it on the media. */
    uint64_t next = z->rw_offset + z->rw_pos;
    z->pend_fill = (size_t)(next % NH_BLOCK_SIZE);
    z->pend_block = next - z->pend_fill;
    if (z->pend_fill > 0 && nh_cache_read(z->cache, z->pend_block, z->pend, NH_BLOCK_SIZE, err) != 0)
        return -1;
    z->consumed_in = consumed;
    z->produced = produced;
    z->crc = crc;
    z->units += produced;
    *extent_done = z->rw_pos;
    return 0;
}

uint64_t nh_zip_units(const nh_zip *z) { return z->units; }
uint64_t nh_zip_offset(const nh_zip *z) { return z->offset; }
nh_zip_error_kind nh_zip_error(const nh_zip *z) { return z->dead; }
const char *nh_zip_error_message(const nh_zip *z) { return z->dead ? z->error : NULL; }
