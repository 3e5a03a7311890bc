/* nh_cache.h - fwup-compatible block cache and writer.
 *
 * 128 KiB segments aligned to absolute device offsets, per-512-byte valid and
 * dirty bits, LRU eviction. "Streamed" writes (raw_write, raw_memset) send a
 * segment to the media as soon as it is completely valid; everything else
 * waits for eviction or nh_cache_flush(). Regular files grow in whole
 * segments; block devices are opened O_DIRECT (aligned buffers) and, when
 * verify_writes is on, each written segment is read back and compared.
 * See docs/architecture.md ("BlockCache") and ../shared/spec/fwup.md 6.3-6.4.
 */
#ifndef NH_CACHE_H
#define NH_CACHE_H

#include "nh_common.h"

typedef struct nh_cache nh_cache;

typedef struct nh_cache_options {
    uint64_t cache_size;   /* bytes; 0 = 8 MiB. Rounded to whole segments, >= 1 segment. */
    int verify_writes;     /* -1 = auto (block devices only), 0 = off, 1 = on */
    uint64_t max_size;     /* 0 = none; otherwise a hard end for writes */
} nh_cache_options;

int nh_cache_open(nh_cache **out, const char *path, const nh_cache_options *opts, nh_err *err);

/* Destination size in bytes (max_size, device size or current file size). */
uint64_t nh_cache_size(const nh_cache *c);
int nh_cache_is_block_device(const nh_cache *c);

int nh_cache_write(nh_cache *c, uint64_t offset, const void *buf, size_t len, int streamed, nh_err *err);
int nh_cache_read(nh_cache *c, uint64_t offset, void *buf, size_t len, nh_err *err);
int nh_cache_trim(nh_cache *c, uint64_t offset, uint64_t len, nh_err *err);
int nh_cache_flush(nh_cache *c, nh_err *err);
void nh_cache_discard(nh_cache *c);
/* Closes without flushing and frees. NULL is allowed. */
void nh_cache_close(nh_cache *c);

#endif
