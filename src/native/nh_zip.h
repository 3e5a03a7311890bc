/* nh_zip.h - push parser over a .fw (zip) byte stream, with sinks.
 *
 * Walks local file headers front to back (the central directory is never
 * read), inflates with zlib, checks CRC-32 and sizes, and hands each entry's
 * bytes to the sink chosen right after its ENTRY_START event: skip, collect,
 * hash (BLAKE2b-256 on a helper thread, see nh_hash.h), chunks (hash + the
 * bytes as DATA_CHUNK events) or raw_write (hash + padded/sparse writes into
 * an nh_cache). Output for the sinks goes through a small ring of buffers.
 * See docs/architecture.md ("ZipStream") for the contract.
 *
 * Entry events, sizes, digests, errors and the bytes written do not depend on
 * how the input is split into feeds. Everything decodable from the input fed
 * so far has passed through the sink when nh_zip_feed returns
 * NH_ZIP_NEED_INPUT: DATA_CHUNK events (at most NH_ZIP_CHUNK_SIZE bytes, never
 * empty) are cut when a ring buffer is full, when the data ends or reaches
 * its declared size, and before asking for more input.
 *
 * After an error the stream is dead: every later call fails with the same
 * message. One thread at a time per nh_zip.
 */
#ifndef NH_ZIP_H
#define NH_ZIP_H

#include <stddef.h>
#include <stdint.h>

#include "nh_cache.h"
#include "nh_common.h"

#define NH_ZIP_CHUNK_SIZE (256u * 1024u)
#define NH_ZIP_NAME_MAX 512u

typedef struct nh_zip nh_zip;

typedef enum nh_zip_event_type {
    NH_ZIP_NEED_INPUT = 0,  /* every byte was consumed; feed more */
    NH_ZIP_ENTRY_START,
    NH_ZIP_DATA_CHUNK,
    NH_ZIP_ENTRY_END,
    NH_ZIP_ARCHIVE_END,
    NH_ZIP_CHECKPOINT,      /* at an armed deflate block boundary (nh_zip_checkpoint_after) */
} nh_zip_event_type;

/* Error classes, for the binding to pick an exception. */
typedef enum nh_zip_error_kind {
    NH_ZIP_OK = 0,
    NH_ZIP_ERR_ARCHIVE,      /* malformed or corrupt archive data */
    NH_ZIP_ERR_DESTINATION,  /* nh_cache_write failed */
} nh_zip_error_kind;

/* Pointers stay valid until the next call on the nh_zip. */
typedef struct nh_zip_event {
    nh_zip_event_type type;
    const char *name;               /* ENTRY_START, ENTRY_END: raw entry name (not NUL-terminated) */
    size_t name_len;
    int method;                     /* ENTRY_START: 0 stored, 8 deflate */
    int size_known;                 /* ENTRY_START: the header gives the uncompressed size */
    uint64_t size;                  /* ENTRY_START: declared size; ENTRY_END: actual size */
    int mtime_known;                /* ENTRY_START */
    int64_t mtime;                  /* ENTRY_START: 0x5455 mtime, else the DOS date/time as UTC */
    uint32_t crc32;                 /* ENTRY_END */
    int has_blake2b;                /* ENTRY_END: hash, chunks and raw_write sinks */
    unsigned char blake2b[32];
    const unsigned char *data;      /* DATA_CHUNK; ENTRY_END of the collect sink (else NULL) */
    size_t data_len;
} nh_zip_event;

int nh_zip_new(nh_zip **out, nh_err *err);
/* Joins the hash thread and frees. NULL is allowed. */
void nh_zip_free(nh_zip *z);

/* Consumes a prefix of in[0..len) and sets *consumed and *ev. ev->type is
 * NH_ZIP_NEED_INPUT only when all of it was consumed. len may be 0 (returns
 * any event that needs no more input). */
int nh_zip_feed(nh_zip *z, const void *in, size_t len, size_t *consumed, nh_zip_event *ev, nh_err *err);

/* No more input: 0 at an entry boundary (the archive ends there), else fails
 * with "ZIP decompression failed (-5)". */
int nh_zip_end_of_input(nh_zip *z, nh_err *err);

/* Sinks: only right after ENTRY_START, before the next feed (else -1).
 * The default is skip. */
int nh_zip_can_choose_sink(const nh_zip *z);
int nh_zip_sink_skip(nh_zip *z, nh_err *err);
int nh_zip_sink_collect(nh_zip *z, uint64_t limit, nh_err *err);
int nh_zip_sink_hash(nh_zip *z, nh_err *err);
int nh_zip_sink_chunks(nh_zip *z, nh_err *err);
/* sparse_map: alternating data/hole run lengths starting with data (NULL or
 * empty = one data run of expected_size); the sum of its data runs must be
 * expected_size. The cache must outlive the entry. */
int nh_zip_sink_raw_write(nh_zip *z, nh_cache *cache, uint64_t offset, const uint64_t *sparse_map,
                          size_t map_len, uint64_t expected_size, nh_err *err);

/* Mid-entry checkpoints (raw_write sink of a deflated entry only).
 *
 * nh_zip_checkpoint_after arms one: inflating stops at the first deflate block
 * boundary after at least n more archive bytes with NH_ZIP_CHECKPOINT (once;
 * a new entry disarms);
 * every output byte before it went through the CRC and the sink. Right after
 * that event nh_zip_checkpoint_export writes the block being assembled into
 * the cache (zero padded, rewritten whole later), waits for the hash thread
 * and returns malloc'd copies of the entry's local header and of the state
 * (compressed and uncompressed positions, the unused bits of the last input
 * byte, the 32 KiB inflate window, CRC-32, BLAKE2b state) and the bytes of
 * the resource extent covered so far. The caller frees both.
 *
 * To continue, feed the saved local header to a new stream, choose the same
 * raw_write sink at ENTRY_START, call nh_zip_checkpoint_restore with the state
 * and feed the archive from the checkpoint's offset. The partial block is read
 * back from the cache (the media), not taken from the state; a state that does
 * not fit the entry or the sink fails; altered window, CRC or hash bytes end in
 * a CRC or BLAKE2b mismatch. *extent_done: as from the export (derived from
 * the uncompressed position and the sparse map). */
int nh_zip_checkpoint_after(nh_zip *z, uint64_t n, nh_err *err);
int nh_zip_checkpoint_export(nh_zip *z, unsigned char **header, size_t *header_len, unsigned char **state,
                             size_t *state_len, uint64_t *extent_done, nh_err *err);
int nh_zip_checkpoint_restore(nh_zip *z, const void *state, size_t len, uint64_t *extent_done, nh_err *err);

/* Bytes delivered by the writing sinks: raw_write data bytes (not padding)
 * and the bytes of DATA_CHUNK events. */
uint64_t nh_zip_units(const nh_zip *z);
/* Archive bytes consumed so far. */
uint64_t nh_zip_offset(const nh_zip *z);
/* NH_ZIP_OK while alive, else the class of the error that killed it. */
nh_zip_error_kind nh_zip_error(const nh_zip *z);
/* The full message of that error (nh_err holds at most 511 bytes of it), or NULL. */
const char *nh_zip_error_message(const nh_zip *z);

#endif
