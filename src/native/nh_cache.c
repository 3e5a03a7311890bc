/* nh_cache.c - fwup-compatible block cache and writer (see nh_cache.h).
 *
 * The cache holds up to `nsegs` segments of NH_SEGMENT_SIZE bytes, each
 * aligned to an absolute device offset, with one valid and one dirty bit per
 * 512-byte block. Reads and writes go through the cache; a segment that
 * becomes completely dirty through streamed writes only is written at once,
 * everything else is written when evicted (least recently used first) or on
 * flush. Trimmed segments read as zeros and are never read from the media.
 * Writes need not be whole blocks; a block written only partly is filled from
 * the media (or with zeros when trimmed) before it is read or written out.
 * All I/O is synchronous.
 */
#include "nh_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__linux__)
#include <linux/fs.h>
#endif

#define SEG_SIZE ((uint64_t)NH_SEGMENT_SIZE)
#define BLOCKS_PER_SEG (NH_SEGMENT_SIZE / NH_BLOCK_SIZE)
#define MASK_WORDS (BLOCKS_PER_SEG / 64)
#define BUFFER_ALIGNMENT 4096
#define DEFAULT_CACHE_SIZE (8u * 1024u * 1024u)

typedef struct {
    uint64_t w[MASK_WORDS];
} block_mask;

typedef struct segment {
    uint64_t index;       /* absolute offset / SEG_SIZE */
    uint64_t last_access; /* LRU clock value */
    uint8_t *data;        /* SEG_SIZE bytes, allocated on first use */
    block_mask valid;
    block_mask dirty;     /* dirty implies valid */
    int in_use;
    int streamed_only;    /* no non-streamed write since the segment was loaded */
    /* One block may be written only from its start: bytes [0, part_len) of
     * block part_block hold data, the rest is unknown. Streamed data in
     * chunks that are not whole blocks then needs no read from the media.
     * The block counts as dirty but is not marked valid until completed or
     * filled from the media. */
    int part_block; /* -1 if none */
    unsigned part_len;
} segment;

typedef struct {
    uint64_t start, end; /* segment indexes, [start, end) */
} seg_range;

struct nh_cache {
    int fd;
    char *path;
    int is_block_device;
    int verify;
    int has_hard_end;
    uint64_t hard_end;
    uint64_t device_size; /* block devices only */

    segment *segs;
    segment **order; /* scratch for flush */
    size_t nsegs;
    segment *last_hit;
    uint64_t clock;
    uint8_t *temp; /* SEG_SIZE, aligned: merge and verification buffer */

    seg_range *trims; /* sorted, disjoint, non-adjacent */
    size_t ntrims, trims_cap;
};

/* ---- block masks ---------------------------------------------------------- */

static void mask_set_range(block_mask *m, unsigned first, unsigned last) {
    for (unsigned b = first; b <= last; b++)
        m->w[b / 64] |= (uint64_t)1 << (b % 64);
}

static int mask_test(const block_mask *m, unsigned b) {
    return (m->w[b / 64] >> (b % 64)) & 1u;
}

static int mask_all(const block_mask *m) {
    for (unsigned i = 0; i < MASK_WORDS; i++)
        if (m->w[i] != UINT64_MAX)
            return 0;
    return 1;
}

static int mask_any(const block_mask *m) {
    for (unsigned i = 0; i < MASK_WORDS; i++)
        if (m->w[i])
            return 1;
    return 0;
}

static void mask_fill(block_mask *m, int on) {
    memset(m, on ? 0xff : 0, sizeof(*m));
}

/* ---- trimmed segment ranges -------------------------------------------------- */

/* Index of the first range whose end is > idx (ranges are sorted). */
static size_t trim_lower_bound(const nh_cache *c, uint64_t idx) {
    size_t lo = 0, hi = c->ntrims;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->trims[mid].end <= idx)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int trim_contains(const nh_cache *c, uint64_t idx) {
    size_t i = trim_lower_bound(c, idx);
    return i < c->ntrims && c->trims[i].start <= idx;
}

static int trim_reserve(nh_cache *c, size_t extra, nh_err *err) {
    if (c->ntrims + extra <= c->trims_cap)
        return 0;
    size_t cap = c->trims_cap ? c->trims_cap * 2 : 16;
    while (cap < c->ntrims + extra)
        cap *= 2;
    seg_range *grown = realloc(c->trims, cap * sizeof(*grown));
    if (!grown)
        return nh_fail(err, "out of memory");
    c->trims = grown;
    c->trims_cap = cap;
    return 0;
}

static int trim_add(nh_cache *c, uint64_t start, uint64_t end, nh_err *err) {
    /* Ranges that overlap or touch [start, end) are merged into it. */
    size_t first = trim_lower_bound(c, start > 0 ? start - 1 : 0);
    if (first < c->ntrims && c->trims[first].end < start)
        first++;
    size_t last = first;
    while (last < c->ntrims && c->trims[last].start <= end) {
        if (c->trims[last].start < start)
            start = c->trims[last].start;
        if (c->trims[last].end > end)
            end = c->trims[last].end;
        last++;
    }
    if (last == first) {
        if (trim_reserve(c, 1, err) != 0)
            return -1;
        memmove(&c->trims[first + 1], &c->trims[first], (c->ntrims - first) * sizeof(seg_range));
        c->ntrims++;
    } else if (last - first > 1) {
        memmove(&c->trims[first + 1], &c->trims[last], (c->ntrims - last) * sizeof(seg_range));
        c->ntrims -= last - first - 1;
    }
    c->trims[first].start = start;
    c->trims[first].end = end;
    return 0;
}

static int trim_remove(nh_cache *c, uint64_t idx, nh_err *err) {
    size_t i = trim_lower_bound(c, idx);
    if (i >= c->ntrims || c->trims[i].start > idx)
        return 0;
    seg_range *r = &c->trims[i];
    if (r->start == idx && r->end == idx + 1) {
        memmove(r, r + 1, (c->ntrims - i - 1) * sizeof(seg_range));
        c->ntrims--;
    } else if (r->start == idx) {
        r->start++;
    } else if (r->end == idx + 1) {
        r->end--;
    } else {
        if (trim_reserve(c, 1, err) != 0)
            return -1;
        r = &c->trims[i];
        memmove(r + 1, r, (c->ntrims - i) * sizeof(seg_range));
        c->ntrims++;
        r[0].end = idx;
        r[1].start = idx + 1;
    }
    return 0;
}

/* ---- media I/O -------------------------------------------------------------- */

/* Reads up to SEG_SIZE bytes of segment `idx`; what lies past the end of the
 * media reads as zeros. */
static int media_read_segment(nh_cache *c, uint64_t idx, uint8_t *buf, nh_err *err) {
    uint64_t offset = idx * SEG_SIZE;
    size_t done = 0;
    while (done < SEG_SIZE) {
        ssize_t n = pread(c->fd, buf + done, SEG_SIZE - done, (off_t)(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return nh_fail(err, "cannot read %" PRIu64 " bytes at offset %" PRIu64 " of %s: %s",
                           SEG_SIZE - done, offset + done, c->path, strerror(errno));
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    memset(buf + done, 0, SEG_SIZE - done);
    return 0;
}

static int media_write(nh_cache *c, uint64_t offset, const uint8_t *buf, size_t len, nh_err *err) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(c->fd, buf + done, len - done, (off_t)(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return nh_fail(err, "cannot write %zu bytes at offset %" PRIu64 " of %s: %s", len - done,
                           offset + done, c->path, strerror(errno));
        }
        if (n == 0)
            return nh_fail(err, "cannot write %zu bytes at offset %" PRIu64 " of %s: %s", len - done,
                           offset + done, c->path, strerror(ENOSPC));
        done += (size_t)n;
    }
    return 0;
}

static int media_verify(nh_cache *c, uint64_t offset, const uint8_t *expected, size_t len, nh_err *err) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(c->fd, c->temp + done, len - done, (off_t)(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return nh_fail(err, "cannot read back %zu bytes at offset %" PRIu64 " of %s: %s",
                           len - done, offset + done, c->path, strerror(errno));
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    if (done < len || memcmp(c->temp, expected, len) != 0)
        return nh_fail(err, "write verification failed at offset %" PRIu64, offset);
    return 0;
}

/* ---- segments --------------------------------------------------------------- */

static int segment_is_dirty(const segment *s) {
    return s->part_block >= 0 || mask_any(&s->dirty);
}

/* Fills every byte that is not valid: zeros when trimmed, else media bytes. */
static int segment_make_valid(nh_cache *c, segment *s, nh_err *err) {
    if (mask_all(&s->valid))
        return 0;
    const uint8_t *src = NULL; /* NULL: zeros */
    if (!trim_contains(c, s->index)) {
        if (!mask_any(&s->valid) && s->part_block < 0) {
            if (media_read_segment(c, s->index, s->data, err) != 0)
                return -1;
            mask_fill(&s->valid, 1);
            return 0;
        }
        if (media_read_segment(c, s->index, c->temp, err) != 0)
            return -1;
        src = c->temp;
    }
    for (unsigned b = 0; b < BLOCKS_PER_SEG; b++) {
        if (mask_test(&s->valid, b))
            continue;
        size_t from = (size_t)b * NH_BLOCK_SIZE;
        if ((int)b == s->part_block)
            from += s->part_len;
        size_t to = ((size_t)b + 1) * NH_BLOCK_SIZE;
        if (src)
            memcpy(s->data + from, src + from, to - from);
        else
            memset(s->data + from, 0, to - from);
    }
    mask_fill(&s->valid, 1);
    if (s->part_block >= 0) {
        mask_set_range(&s->dirty, (unsigned)s->part_block, (unsigned)s->part_block);
        s->part_block = -1;
    }
    return 0;
}

/* Writes a dirty segment to the media (read-modify-write when partial). */
static int segment_write_out(nh_cache *c, segment *s, nh_err *err) {
    if (!segment_is_dirty(s))
        return 0;
    if (segment_make_valid(c, s, err) != 0)
        return -1;
    uint64_t offset = s->index * SEG_SIZE;
    size_t len = SEG_SIZE;
    if (c->has_hard_end) {
        uint64_t room = offset < c->hard_end ? c->hard_end - offset : 0;
        if (room < len)
            len = (size_t)room;
    }
    if (len > 0) {
        if (media_write(c, offset, s->data, len, err) != 0)
            return -1;
        if (c->verify && media_verify(c, offset, s->data, len, err) != 0)
            return -1;
    }
    mask_fill(&s->dirty, 0);
    return trim_remove(c, s->index, err);
}

static segment *segment_lookup(nh_cache *c, uint64_t idx) {
    if (c->last_hit && c->last_hit->in_use && c->last_hit->index == idx)
        return c->last_hit;
    for (size_t i = 0; i < c->nsegs; i++)
        if (c->segs[i].in_use && c->segs[i].index == idx)
            return &c->segs[i];
    return NULL;
}

/* The cached segment `idx`, loading an empty one (evicting the LRU) on a miss. */
static int segment_get(nh_cache *c, uint64_t idx, segment **out, nh_err *err) {
    segment *s = segment_lookup(c, idx);
    if (!s) {
        segment *lru = NULL;
        for (size_t i = 0; i < c->nsegs; i++) {
            segment *cand = &c->segs[i];
            if (!cand->in_use) {
                lru = cand;
                break;
            }
            if (!lru || cand->last_access < lru->last_access)
                lru = cand;
        }
        if (lru->in_use && segment_write_out(c, lru, err) != 0)
            return -1;
        if (!lru->data) {
            void *mem = NULL;
            if (posix_memalign(&mem, BUFFER_ALIGNMENT, SEG_SIZE) != 0)
                return nh_fail(err, "out of memory");
            lru->data = mem;
        }
        s = lru;
        s->in_use = 1;
        s->index = idx;
        s->streamed_only = 1;
        s->part_block = -1;
        s->part_len = 0;
        mask_fill(&s->valid, 0);
        mask_fill(&s->dirty, 0);
    }
    s->last_access = ++c->clock;
    c->last_hit = s;
    *out = s;
    return 0;
}

/* Can the edge block b take the bytes [a, e) without knowing the rest of it?
 * `completing` is a partial block this same write completes. */
static int edge_block_ready(const segment *s, unsigned b, size_t a, int completing) {
    if (mask_test(&s->valid, b))
        return 1;
    if (s->part_block == (int)b)
        return a <= s->part_len;
    return a == 0 && (s->part_block < 0 || s->part_block == completing);
}

/* Marks edge block b written up to byte e (after the copy). */
static void edge_block_written(segment *s, unsigned b, size_t e) {
    if (mask_test(&s->valid, b)) {
        mask_set_range(&s->dirty, b, b);
        return;
    }
    size_t known = s->part_block == (int)b && s->part_len > e ? s->part_len : e;
    if (known == NH_BLOCK_SIZE) {
        mask_set_range(&s->valid, b, b);
        mask_set_range(&s->dirty, b, b);
        if (s->part_block == (int)b)
            s->part_block = -1;
    } else {
        s->part_block = (int)b;
        s->part_len = (unsigned)known;
    }
}

/* Copies n bytes to offset `at` of the segment (n > 0, inside it). */
static int segment_store(nh_cache *c, segment *s, size_t at, const uint8_t *src, size_t n, nh_err *err) {
    size_t end = at + n;
    unsigned first = (unsigned)(at / NH_BLOCK_SIZE);
    unsigned last = (unsigned)((end - 1) / NH_BLOCK_SIZE);
    size_t a0 = at % NH_BLOCK_SIZE;
    size_t e0 = first == last ? end - (size_t)first * NH_BLOCK_SIZE : NH_BLOCK_SIZE;
    size_t e1 = end - (size_t)last * NH_BLOCK_SIZE;
    int head_edge = a0 != 0 || e0 != NH_BLOCK_SIZE;
    int tail_edge = last != first && e1 != NH_BLOCK_SIZE;
    /* A head block completed by this write frees the one partial-block slot. */
    int completing = head_edge && e0 == NH_BLOCK_SIZE ? (int)first : -2;
    if ((head_edge && !edge_block_ready(s, first, a0, -2)) ||
        (tail_edge && !edge_block_ready(s, last, 0, completing))) {
        if (segment_make_valid(c, s, err) != 0)
            return -1;
    }
    memcpy(s->data + at, src, n);
    int full_first = head_edge ? (int)first + 1 : (int)first;
    int full_last = tail_edge || (head_edge && first == last) ? (int)last - 1 : (int)last;
    if (full_first <= full_last) {
        if (s->part_block >= full_first && s->part_block <= full_last)
            s->part_block = -1;
        mask_set_range(&s->valid, (unsigned)full_first, (unsigned)full_last);
        mask_set_range(&s->dirty, (unsigned)full_first, (unsigned)full_last);
    }
    if (head_edge)
        edge_block_written(s, first, e0);
    if (tail_edge)
        edge_block_written(s, last, e1);
    return 0;
}

/* ---- public API --------------------------------------------------------------- */

static int open_destination(nh_cache *c, const char *path, nh_err *err) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISBLK(st.st_mode)) {
        c->fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
        if (c->fd < 0 && errno == EINVAL)
            c->fd = open(path, O_RDWR | O_CLOEXEC);
    } else {
        c->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    }
    if (c->fd < 0)
        return nh_fail(err, "cannot open %s: %s", path, strerror(errno));
    if (fstat(c->fd, &st) != 0)
        return nh_fail(err, "cannot stat %s: %s", path, strerror(errno));
    c->is_block_device = S_ISBLK(st.st_mode) ? 1 : 0;
    if (c->is_block_device) {
#if defined(BLKGETSIZE64)
        uint64_t bytes = 0;
        if (ioctl(c->fd, BLKGETSIZE64, &bytes) != 0)
            return nh_fail(err, "cannot get the size of %s: %s", path, strerror(errno));
        c->device_size = bytes;
#else
        off_t end = lseek(c->fd, 0, SEEK_END);
        if (end < 0)
            return nh_fail(err, "cannot get the size of %s: %s", path, strerror(errno));
        c->device_size = (uint64_t)end;
#endif
    }
    return 0;
}

int nh_cache_open(nh_cache **out, const char *path, const nh_cache_options *opts, nh_err *err) {
    *out = NULL;
    nh_cache_options defaults = {0, -1, 0};
    if (!opts)
        opts = &defaults;
    nh_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return nh_fail(err, "out of memory");
    c->fd = -1;
    uint64_t cache_size = opts->cache_size ? opts->cache_size : DEFAULT_CACHE_SIZE;
    c->nsegs = (size_t)(cache_size / SEG_SIZE);
    if (c->nsegs == 0)
        c->nsegs = 1;
    c->path = strdup(path);
    c->segs = calloc(c->nsegs, sizeof(*c->segs));
    c->order = calloc(c->nsegs, sizeof(*c->order));
    void *mem = NULL;
    if (posix_memalign(&mem, BUFFER_ALIGNMENT, SEG_SIZE) == 0)
        c->temp = mem;
    if (!c->path || !c->segs || !c->order || !c->temp) {
        nh_cache_close(c);
        return nh_fail(err, "out of memory");
    }
    if (open_destination(c, path, err) != 0) {
        nh_cache_close(c);
        return -1;
    }
    c->verify = opts->verify_writes < 0 ? c->is_block_device : (opts->verify_writes != 0);
    if (opts->max_size) {
        c->has_hard_end = 1;
        c->hard_end = opts->max_size;
    } else if (c->is_block_device) {
        c->has_hard_end = 1;
        c->hard_end = c->device_size;
    }
    *out = c;
    return 0;
}

uint64_t nh_cache_size(const nh_cache *c) {
    if (c->has_hard_end)
        return c->hard_end;
    struct stat st;
    if (fstat(c->fd, &st) != 0 || st.st_size < 0)
        return 0;
    return (uint64_t)st.st_size;
}

int nh_cache_is_block_device(const nh_cache *c) {
    return c->is_block_device;
}

int nh_cache_write(nh_cache *c, uint64_t offset, const void *buf, size_t len, int streamed, nh_err *err) {
    if (len > UINT64_MAX - offset)
        return nh_fail(err, "write past the end of %s (offset %" PRIu64 ", size %" PRIu64 ")", c->path,
                       offset, nh_cache_size(c));
    if (c->has_hard_end && (offset > c->hard_end || len > c->hard_end - offset))
        return nh_fail(err, "write past the end of %s (offset %" PRIu64 ", size %" PRIu64 ")", c->path,
                       offset, c->hard_end);
    const uint8_t *src = buf;
    while (len > 0) {
        uint64_t idx = offset / SEG_SIZE;
        size_t at = (size_t)(offset % SEG_SIZE);
        size_t n = SEG_SIZE - at;
        if (n > len)
            n = len;
        segment *s;
        if (segment_get(c, idx, &s, err) != 0)
            return -1;
        if (segment_store(c, s, at, src, n, err) != 0)
            return -1;
        if (!streamed)
            s->streamed_only = 0;
        else if (s->streamed_only && mask_all(&s->dirty) && segment_write_out(c, s, err) != 0)
            return -1;
        offset += n;
        src += n;
        len -= n;
    }
    return 0;
}

int nh_cache_read(nh_cache *c, uint64_t offset, void *buf, size_t len, nh_err *err) {
    if (len > UINT64_MAX - offset)
        return nh_fail(err, "read beyond the addressable range of %s (offset %" PRIu64 ")", c->path,
                       offset);
    uint8_t *dst = buf;
    while (len > 0) {
        uint64_t idx = offset / SEG_SIZE;
        size_t at = (size_t)(offset % SEG_SIZE);
        size_t n = SEG_SIZE - at;
        if (n > len)
            n = len;
        segment *s;
        if (segment_get(c, idx, &s, err) != 0 || segment_make_valid(c, s, err) != 0)
            return -1;
        memcpy(dst, s->data + at, n);
        offset += n;
        dst += n;
        len -= n;
    }
    return 0;
}

int nh_cache_trim(nh_cache *c, uint64_t offset, uint64_t len, nh_err *err) {
    uint64_t end = len > UINT64_MAX - offset ? UINT64_MAX : offset + len;
    uint64_t first = offset / SEG_SIZE + (offset % SEG_SIZE != 0);
    uint64_t last = end / SEG_SIZE; /* exclusive */
    if (last <= first)
        return 0;
    if (trim_add(c, first, last, err) != 0)
        return -1;
    for (size_t i = 0; i < c->nsegs; i++) {
        segment *s = &c->segs[i];
        if (s->in_use && s->index >= first && s->index < last)
            s->in_use = 0;
    }
    return 0;
}

static int by_last_access(const void *a, const void *b) {
    const segment *sa = *(segment *const *)a;
    const segment *sb = *(segment *const *)b;
    return sa->last_access < sb->last_access ? -1 : sa->last_access > sb->last_access;
}

int nh_cache_flush(nh_cache *c, nh_err *err) {
    size_t n = 0;
    for (size_t i = 0; i < c->nsegs; i++)
        if (c->segs[i].in_use && segment_is_dirty(&c->segs[i]))
            c->order[n++] = &c->segs[i];
    qsort(c->order, n, sizeof(*c->order), by_last_access);
    /* Stop at the first failure: later segments (e.g. an A/B switch written
     * last in on-finish) must not reach the media after an earlier one failed. */
    for (size_t i = 0; i < n; i++)
        if (segment_write_out(c, c->order[i], err) != 0)
            return -1;
    if (c->is_block_device && fsync(c->fd) != 0)
        return nh_fail(err, "cannot sync %s: %s", c->path, strerror(errno));
    return 0;
}

void nh_cache_discard(nh_cache *c) {
    for (size_t i = 0; i < c->nsegs; i++)
        c->segs[i].in_use = 0;
    c->last_hit = NULL;
    c->ntrims = 0;
}

void nh_cache_close(nh_cache *c) {
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    if (c->segs)
        for (size_t i = 0; i < c->nsegs; i++)
            free(c->segs[i].data);
    free(c->segs);
    free(c->order);
    free(c->temp);
    free(c->trims);
    free(c->path);
    free(c);
}
