/* nh_vcdiff.c - streaming VCDIFF (RFC 3284) decoder, see nh_vcdiff.h. */
#include "nh_vcdiff.h"

#include <stdlib.h>
#include <string.h>

#define MAGIC0 0xD6u
#define MAGIC1 0xC3u
#define MAGIC2 0xC4u

#define HDR_DECOMPRESS 0x01u
#define HDR_CODETABLE 0x02u
#define HDR_APPHEADER 0x04u

#define WIN_SOURCE 0x01u
#define WIN_TARGET 0x02u
#define WIN_ADLER32 0x04u

#define MAX_APPHEADER (1u << 20)
#define MAX_BODY (4ull * NH_VCDIFF_MAX_WINDOW)
#define WRITE_PIECE (1u << 20)

#define SEG_BLOCK (64u * 1024u)
#define SEG_SLOTS 16

#define NEAR_SIZE 4
#define SAME_SIZE 3

enum { I_NOOP = 0, I_ADD = 1, I_RUN = 2, I_COPY = 3 };
enum { ST_HEADER, ST_WINDOW, ST_BODY, ST_FAILED };

typedef struct {
    uint8_t type[2], size[2], mode[2];
} code_entry;

typedef struct {
    int kind; /* -1 empty, 0 source, 1 target */
    uint64_t block;
    size_t len;
    uint8_t *data;
} seg_slot;

struct nh_vcdiff {
    uint64_t source_size;
    nh_vcdiff_read_fn read_source, read_target;
    nh_vcdiff_write_fn write;
    void *ctx;

    int stage;
    nh_err failure; /* sticky after the first error */

    uint8_t *buf; /* unconsumed input */
    size_t start, len, cap;

    /* current window */
    uint64_t index; /* windows decoded so far */
    unsigned win_ind;
    uint64_t seg_len, seg_pos, target_len;
    uint64_t data_len, inst_len, addr_len;
    uint32_t adler;

    uint64_t target_total;
    uint8_t *target;
    size_t target_cap;

    uint64_t near[NEAR_SIZE];
    unsigned next_near;
    uint64_t same[SAME_SIZE * 256];

    seg_slot slots[SEG_SLOTS];
    unsigned victim;

    code_entry table[256];
};

static void build_table(code_entry *t) {
    int i = 0;
    memset(t, 0, 256 * sizeof *t);
    t[i].type[0] = I_RUN;
    i++;
    for (int size = 0; size <= 17; size++, i++) {
        t[i].type[0] = I_ADD;
        t[i].size[0] = (uint8_t)size;
    }
    for (int mode = 0; mode < 9; mode++) {
        t[i].type[0] = I_COPY;
        t[i].mode[0] = (uint8_t)mode;
        i++;
        for (int size = 4; size <= 18; size++, i++) {
            t[i].type[0] = I_COPY;
            t[i].size[0] = (uint8_t)size;
            t[i].mode[0] = (uint8_t)mode;
        }
    }
    for (int mode = 0; mode < 9; mode++) {
        int copy_max = mode < 6 ? 6 : 4;
        for (int add = 1; add <= 4; add++) {
            for (int copy = 4; copy <= copy_max; copy++, i++) {
                t[i].type[0] = I_ADD;
                t[i].size[0] = (uint8_t)add;
                t[i].type[1] = I_COPY;
                t[i].size[1] = (uint8_t)copy;
                t[i].mode[1] = (uint8_t)mode;
            }
        }
    }
    for (int mode = 0; mode < 9; mode++, i++) {
        t[i].type[0] = I_COPY;
        t[i].size[0] = 4;
        t[i].mode[0] = (uint8_t)mode;
        t[i].type[1] = I_ADD;
        t[i].size[1] = 1;
    }
}

/* 1: parsed, 0: need more bytes, -1: malformed (too long or too large). */
static int get_int(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t value = 0;
    const uint8_t *q = *p;
    for (int n = 0; n < 9; n++) {
        if (q >= end)
            return 0;
        uint8_t byte = *q++;
        value = (value << 7) | (byte & 0x7Fu);
        if (!(byte & 0x80u)) {
            *out = value;
            *p = q;
            return 1;
        }
    }
    return -1; /* more than 63 bits */
}

static int fail(nh_vcdiff *d, nh_err *err, const char *fmt, unsigned long long a,
                unsigned long long b, unsigned long long c) {
    nh_fail(&d->failure, fmt, a, b, c);
    d->stage = ST_FAILED;
    if (err != NULL)
        *err = d->failure;
    return -1;
}

static int fail_text(nh_vcdiff *d, nh_err *err, const char *text) {
    nh_fail(&d->failure, "%s", text);
    d->stage = ST_FAILED;
    if (err != NULL)
        *err = d->failure;
    return -1;
}

static int corrupt(nh_vcdiff *d, nh_err *err, const char *why) {
    nh_fail(&d->failure, "VCDIFF: corrupt window %llu (%s)", (unsigned long long)d->index, why);
    d->stage = ST_FAILED;
    if (err != NULL)
        *err = d->failure;
    return -1;
}

static const char SECONDARY[] =
    "VCDIFF: secondary compression is not supported (make the patch with xdelta3 -S none)";

int nh_vcdiff_new(nh_vcdiff **out, uint64_t source_size, nh_vcdiff_read_fn read_source,
                  nh_vcdiff_read_fn read_target, nh_vcdiff_write_fn write, void *ctx,
                  nh_err *err) {
    nh_vcdiff *d = calloc(1, sizeof *d);
    if (d == NULL)
        return nh_fail(err, "VCDIFF: out of memory");
    d->source_size = source_size;
    d->read_source = read_source;
    d->read_target = read_target;
    d->write = write;
    d->ctx = ctx;
    d->stage = ST_HEADER;
    for (int i = 0; i < SEG_SLOTS; i++)
        d->slots[i].kind = -1;
    build_table(d->table);
    *out = d;
    return 0;
}

void nh_vcdiff_free(nh_vcdiff *d) {
    if (d == NULL)
        return;
    for (int i = 0; i < SEG_SLOTS; i++)
        free(d->slots[i].data);
    free(d->target);
    free(d->buf);
    free(d);
}

uint64_t nh_vcdiff_target_size(const nh_vcdiff *d) { return d->target_total; }

/* ------------------------------------------------------------------ header parsing */

/* 1 parsed, 0 need more, -1 failed. */
static int parse_header(nh_vcdiff *d, nh_err *err) {
    const uint8_t *p = d->buf + d->start, *end = p + d->len;
    uint64_t app_len;
    if (d->len < 5) {
        static const uint8_t magic[3] = {MAGIC0, MAGIC1, MAGIC2};
        size_t n = d->len < 3 ? d->len : 3;
        if (memcmp(p, magic, n) != 0)
            return fail_text(d, err, "VCDIFF: not a VCDIFF patch (bad magic)");
        return 0;
    }
    if (p[0] != MAGIC0 || p[1] != MAGIC1 || p[2] != MAGIC2 || p[3] != 0)
        return fail_text(d, err, "VCDIFF: not a VCDIFF patch (bad magic)");
    unsigned ind = p[4];
    p += 5;
    if (ind & ~7u)
        return fail(d, err, "VCDIFF: bad header indicator 0x%02llx", ind, 0, 0);
    if (ind & HDR_DECOMPRESS)
        return fail_text(d, err, SECONDARY);
    if (ind & HDR_CODETABLE)
        return fail_text(d, err, "VCDIFF: custom code tables are not supported");
    if (ind & HDR_APPHEADER) {
        int rc = get_int(&p, end, &app_len);
        if (rc < 0)
            return fail_text(d, err, "VCDIFF: bad integer");
        if (rc == 0)
            return 0;
        if (app_len > MAX_APPHEADER)
            return fail_text(d, err, "VCDIFF: application header too large");
        if ((uint64_t)(end - p) < app_len)
            return 0;
        p += app_len;
    }
    d->start += (size_t)(p - (d->buf + d->start));
    d->len = (size_t)(end - p);
    return 1;
}

static int parse_window(nh_vcdiff *d, nh_err *err) {
    const uint8_t *p = d->buf + d->start, *end = p + d->len;
    uint64_t enc_len, fields[4];
    int rc;
    if (p >= end)
        return 0;
    unsigned ind = *p++;
    if ((ind & ~7u) || (ind & 3u) == 3u)
        return fail(d, err, "VCDIFF: bad window indicator 0x%02llx", ind, 0, 0);
    d->seg_len = d->seg_pos = 0;
    if (ind & 3u) {
        if ((rc = get_int(&p, end, &d->seg_len)) <= 0 || (rc = get_int(&p, end, &d->seg_pos)) <= 0)
            goto incomplete;
    }
    if ((rc = get_int(&p, end, &enc_len)) <= 0)
        goto incomplete;
    const uint8_t *enc_start = p;
    for (int i = 0; i < 4; i++) {
        if (i == 1) {
            if (p >= end)
                return 0;
            unsigned delta_ind = *p++;
            if (delta_ind & ~7u)
                return fail(d, err, "VCDIFF: bad delta indicator 0x%02llx", delta_ind, 0, 0);
            if (delta_ind)
                return fail_text(d, err, SECONDARY);
        }
        if ((rc = get_int(&p, end, &fields[i])) <= 0)
            goto incomplete;
    }
    if (ind & WIN_ADLER32) {
        if (end - p < 4)
            return 0;
        d->adler = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        p += 4;
    }
    d->win_ind = ind;
    d->target_len = fields[0];
    d->data_len = fields[1];
    d->inst_len = fields[2];
    d->addr_len = fields[3];
    if (d->target_len > NH_VCDIFF_MAX_WINDOW)
        return fail(d, err, "VCDIFF: window too large (%llu bytes)", d->target_len, 0, 0);
    if (d->data_len > MAX_BODY || d->inst_len > MAX_BODY || d->addr_len > MAX_BODY ||
        d->data_len + d->inst_len + d->addr_len > MAX_BODY ||
        enc_len != (uint64_t)(p - enc_start) + d->data_len + d->inst_len + d->addr_len)
        return fail_text(d, err,
                         "VCDIFF: window section lengths do not match the delta encoding length");
    if (ind & WIN_SOURCE) {
        if (d->seg_pos > d->source_size || d->seg_len > d->source_size - d->seg_pos)
            return fail(d, err,
                        "VCDIFF: source segment outside the source (position %llu, size %llu, "
                        "source size %llu)",
                        d->seg_pos, d->seg_len, d->source_size);
    } else if (ind & WIN_TARGET) {
        if (d->read_target == NULL)
            return fail_text(d, err, "VCDIFF: VCD_TARGET windows are not supported here");
        if (d->seg_pos > d->target_total || d->seg_len > d->target_total - d->seg_pos)
            return fail(d, err,
                        "VCDIFF: target segment outside the decoded target (position %llu, size "
                        "%llu, decoded %llu)",
                        d->seg_pos, d->seg_len, d->target_total);
    }
    d->start += (size_t)(p - (d->buf + d->start));
    d->len = (size_t)(end - p);
    return 1;
incomplete:
    if (rc < 0)
        return fail_text(d, err, "VCDIFF: bad integer");
    return 0;
}

/* ------------------------------------------------------------------ segment reads */

static int segment_copy(nh_vcdiff *d, int kind, uint64_t offset, uint8_t *dst, size_t n,
                        nh_err *err) {
    uint64_t limit = kind == 0 ? d->source_size : d->target_total;
    while (n > 0) {
        uint64_t block = offset / SEG_BLOCK;
        seg_slot *slot = NULL;
        for (int i = 0; i < SEG_SLOTS; i++) {
            if (d->slots[i].kind == kind && d->slots[i].block == block) {
                slot = &d->slots[i];
                break;
            }
        }
        if (slot == NULL) {
            slot = &d->slots[d->victim];
            d->victim = (d->victim + 1) % SEG_SLOTS;
            if (slot->data == NULL && (slot->data = malloc(SEG_BLOCK)) == NULL)
                return fail_text(d, err, "VCDIFF: out of memory");
            uint64_t start = block * SEG_BLOCK;
            size_t len = limit - start < SEG_BLOCK ? (size_t)(limit - start) : SEG_BLOCK;
            slot->kind = -1;
            nh_vcdiff_read_fn read = kind == 0 ? d->read_source : d->read_target;
            if (read(d->ctx, start, slot->data, len, &d->failure) != 0) {
                d->stage = ST_FAILED;
                if (err != NULL)
                    *err = d->failure;
                return -1;
            }
            slot->kind = kind;
            slot->block = block;
            slot->len = len;
        }
        size_t in = (size_t)(offset - slot->block * SEG_BLOCK);
        if (in >= slot->len)
            return corrupt(d, err, "bad copy address");
        size_t take = slot->len - in < n ? slot->len - in : n;
        memcpy(dst, slot->data + in, take);
        dst += take;
        offset += take;
        n -= take;
    }
    return 0;
}

/* ------------------------------------------------------------------ window decoding */

static uint32_t adler32(const uint8_t *data, size_t len) {
    uint32_t a = 1, b = 0;
    while (len > 0) {
        size_t n = len < 5552 ? len : 5552;
        len -= n;
        while (n--) {
            a += *data++;
            b += a;
        }
        a %= 65521u;
        b %= 65521u;
    }
    return b << 16 | a;
}

static int decode_window(nh_vcdiff *d, nh_err *err) {
    const uint8_t *data = d->buf + d->start;
    const uint8_t *data_end = data + d->data_len;
    const uint8_t *inst = data_end, *inst_end = inst + d->inst_len;
    const uint8_t *addr = inst_end, *addr_end = addr + d->addr_len;
    size_t tlen = (size_t)d->target_len;
    uint64_t seg_len = d->seg_len, pos = 0;
    int kind = (d->win_ind & WIN_TARGET) ? 1 : 0;

    if (tlen > d->target_cap || d->target == NULL) {
        size_t cap = tlen > 0 ? tlen : 1;
        uint8_t *grown = realloc(d->target, cap);
        if (grown == NULL)
            return fail_text(d, err, "VCDIFF: out of memory");
        d->target = grown;
        d->target_cap = cap;
    }
    uint8_t *t = d->target;
    memset(d->near, 0, sizeof d->near);
    memset(d->same, 0, sizeof d->same);
    d->next_near = 0;
    for (int i = 0; i < SEG_SLOTS; i++)
        if (d->slots[i].kind == 1)
            d->slots[i].kind = -1; /* the target grew: partial blocks are stale */

    while (inst < inst_end) {
        const code_entry *entry = &d->table[*inst++];
        for (int half = 0; half < 2; half++) {
            unsigned type = entry->type[half];
            uint64_t size = entry->size[half];
            if (type == I_NOOP)
                continue;
            if (size == 0) {
                int rc = get_int(&inst, inst_end, &size);
                if (rc <= 0)
                    return corrupt(d, err, "instruction section overrun");
            }
            if (size > tlen - pos)
                return corrupt(d, err, "instruction overruns the target window");
            if (type == I_ADD) {
                if (size > (uint64_t)(data_end - data))
                    return corrupt(d, err, "data section overrun");
                memcpy(t + pos, data, (size_t)size);
                data += size;
            } else if (type == I_RUN) {
                if (data >= data_end)
                    return corrupt(d, err, "data section overrun");
                memset(t + pos, *data++, (size_t)size);
            } else {
                uint64_t here = seg_len + pos, value, address;
                unsigned mode = entry->mode[half];
                if (mode < 2 + NEAR_SIZE) {
                    int rc = get_int(&addr, addr_end, &value);
                    if (rc <= 0)
                        return corrupt(d, err, "address section overrun");
                    if (mode == 0)
                        address = value;
                    else if (mode == 1)
                        address = here - value;
                    else if (value > UINT64_MAX - d->near[mode - 2])
                        return corrupt(d, err, "bad copy address");
                    else
                        address = d->near[mode - 2] + value;
                    if (mode == 1 && value > here)
                        return corrupt(d, err, "bad copy address");
                } else {
                    if (addr >= addr_end)
                        return corrupt(d, err, "address section overrun");
                    address = d->same[(mode - 2 - NEAR_SIZE) * 256 + *addr++];
                }
                if (address >= here)
                    return corrupt(d, err, "bad copy address");
                d->near[d->next_near] = address;
                d->next_near = (d->next_near + 1) % NEAR_SIZE;
                d->same[address % (SAME_SIZE * 256)] = address;

                uint64_t left = size, out = pos;
                if (address < seg_len) {
                    uint64_t n = seg_len - address < left ? seg_len - address : left;
                    if (segment_copy(d, kind, d->seg_pos + address, t + out, (size_t)n, err) != 0)
                        return -1;
                    out += n;
                    left -= n;
                    address += n;
                }
                if (left > 0) {
                    size_t from = (size_t)(address - seg_len);
                    if (from + left <= out) {
                        memcpy(t + out, t + from, (size_t)left);
                    } else {
                        for (uint64_t k = 0; k < left; k++) /* overlapping: byte by byte */
                            t[out + k] = t[from + k];
                    }
                }
            }
            pos += size;
        }
    }
    if (pos != tlen)
        return corrupt(d, err, "target window incomplete");
    if (data != data_end || addr != addr_end)
        return corrupt(d, err, "unused data or addresses");
    if ((d->win_ind & WIN_ADLER32) && adler32(t, tlen) != d->adler)
        return fail(d, err, "VCDIFF: adler32 mismatch in window %llu", d->index, 0, 0);
    for (size_t off = 0; off < tlen; off += WRITE_PIECE) {
        size_t n = tlen - off < WRITE_PIECE ? tlen - off : WRITE_PIECE;
        if (d->write(d->ctx, t + off, n, &d->failure) != 0) {
            d->stage = ST_FAILED;
            if (err != NULL)
                *err = d->failure;
            return -1;
        }
        d->target_total += n;
    }
    d->index++;
    return 0;
}

/* ------------------------------------------------------------------ driving */

static int append(nh_vcdiff *d, const uint8_t *data, size_t len, nh_err *err) {
    if (d->start > 0 && (d->start + d->len + len > d->cap || d->start >= d->cap / 2)) {
        memmove(d->buf, d->buf + d->start, d->len);
        d->start = 0;
    }
    if (d->len + len > d->cap) {
        size_t cap = d->cap ? d->cap : 4096;
        while (cap < d->len + len)
            cap *= 2;
        uint8_t *grown = realloc(d->buf, cap);
        if (grown == NULL)
            return fail_text(d, err, "VCDIFF: out of memory");
        d->buf = grown;
        d->cap = cap;
    }
    if (len > 0)
        memcpy(d->buf + d->start + d->len, data, len);
    d->len += len;
    return 0;
}

static uint64_t body_len(const nh_vcdiff *d) { return d->data_len + d->inst_len + d->addr_len; }

int nh_vcdiff_feed(nh_vcdiff *d, const uint8_t *data, size_t len, nh_err *err) {
    if (d->stage == ST_FAILED) {
        if (err != NULL)
            *err = d->failure;
        return -1;
    }
    for (;;) {
        /* Nothing buffered and nothing new: only a complete (e.g. empty) body can still be
         * decoded, so the loop goes on while a window's body is complete. */
        if (len == 0 && d->len == 0 && d->stage != ST_BODY)
            break;
        /* A body that is wholly needed: take only what it lacks, keep the rest for later. */
        size_t take = len;
        if (d->stage == ST_BODY && body_len(d) > d->len) {
            uint64_t lack = body_len(d) - d->len;
            take = lack < len ? (size_t)lack : len;
        } else if (d->stage != ST_BODY) {
            take = len < 4096 ? len : 4096;
        } else {
            take = 0;
        }
        if (take > 0) { /* data may be NULL when len is 0 (finish): no arithmetic on it then */
            if (append(d, data, take, err) != 0)
                return -1;
            data += take;
            len -= take;
        }
        int rc;
        if (d->stage == ST_HEADER) {
            rc = parse_header(d, err);
            if (rc > 0)
                d->stage = ST_WINDOW;
        } else if (d->stage == ST_WINDOW) {
            rc = parse_window(d, err);
            if (rc > 0)
                d->stage = ST_BODY;
        } else {
            if (d->len < body_len(d)) {
                rc = 0;
            } else {
                if (decode_window(d, err) != 0)
                    return -1;
                d->start += (size_t)body_len(d);
                d->len -= (size_t)body_len(d);
                d->stage = ST_WINDOW;
                rc = 1;
            }
        }
        if (rc < 0)
            return -1;
        if (rc == 0 && len == 0)
            break;
    }
    return 0;
}

int nh_vcdiff_finish(nh_vcdiff *d, nh_err *err) {
    if (d->stage == ST_FAILED) {
        if (err != NULL)
            *err = d->failure;
        return -1;
    }
    if (nh_vcdiff_feed(d, NULL, 0, err) != 0)
        return -1;
    if (d->stage == ST_HEADER)
        return fail_text(d, err, "VCDIFF: patch ends inside its header");
    if (d->stage != ST_WINDOW || d->len > 0)
        return fail(d, err, "VCDIFF: patch ends inside window %llu", d->index, 0, 0);
    return 0;
}
