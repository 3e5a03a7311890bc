/* fuzz_zip.c - libFuzzer harness for the streaming zip walker (nh_zip.c).
 *
 * Input: see fuzz_split.h. The archive is fed in pieces whose sizes come
 * from the split seed; each entry gets a sink chosen from the sink seed
 * (skip, collect, hash, chunks or raw_write into a block cache on a scratch
 * file with a hard end). Errors are fine; crashes, leaks, UB and broken
 * invariants of the feed contract abort.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_split.h"
#include "nh_cache.h"
#include "nh_test.h"
#include "nh_zip.h"

#define SCRATCH_MAX_SIZE (8u * 1024u * 1024u)

static char scratch_path[64];

static void remove_scratch(void) { unlink(scratch_path); }

static const char *scratch(void)
{
    if (!scratch_path[0]) {
        snprintf(scratch_path, sizeof scratch_path, "/tmp/nhlink-fuzz-zip-XXXXXX");
        int fd = mkstemp(scratch_path);
        if (fd < 0)
            abort();
        close(fd);
        atexit(remove_scratch);
    }
    return scratch_path;
}

/* A broken invariant: say which and abort (libFuzzer saves the input). */
#define check(condition)                                                                   \
    do {                                                                                   \
        if (!(condition)) {                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #condition);  \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* Choosing a sink right after ENTRY_START must succeed. */
static void sink_ok(int rc, const nh_err *err)
{
    if (rc != 0) {
        fprintf(stderr, "choosing a sink failed: %s\n", err->msg);
        abort();
    }
}

static void choose_sink(nh_zip *z, nh_cache *cache, fuzz_rng *rng, const nh_zip_event *ev)
{
    nh_err err = {{0}};
    check(nh_zip_can_choose_sink(z));
    uint64_t map[3];
    switch (fuzz_rng_next(rng) % 5u) {
    case 0:
        sink_ok(nh_zip_sink_skip(z, &err), &err);
        break;
    case 1: {
        uint64_t limit = ev->size_known ? ev->size : 1u << 20;
        if (fuzz_rng_next(rng) & 1u)
            limit /= 2;
        sink_ok(nh_zip_sink_collect(z, limit, &err), &err);
        break;
    }
    case 2:
        sink_ok(nh_zip_sink_hash(z, &err), &err);
        break;
    case 3:
        sink_ok(nh_zip_sink_chunks(z, &err), &err);
        break;
    default: {
        if (!cache || !ev->size_known || ev->size > SCRATCH_MAX_SIZE)
            break; /* skip */
        uint64_t offset = (uint64_t)(fuzz_rng_next(rng) % 64u) * 512u;
        if (fuzz_rng_next(rng) & 1u) {
            map[0] = ev->size / 2;
            map[1] = 1024u + fuzz_rng_next(rng) % 4096u;
            map[2] = ev->size - map[0];
            sink_ok(nh_zip_sink_raw_write(z, cache, offset, map, 3, ev->size, &err), &err);
        } else {
            sink_ok(nh_zip_sink_raw_write(z, cache, offset, NULL, 0, ev->size, &err), &err);
        }
        break;
    }
    }
}

/* Install the system libsodium into nh_crypto (tests/native/nh_test_support.c). */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    nh_test_setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < FUZZ_PREFIX_LEN)
        return 0;
    fuzz_rng split_rng, sink_rng;
    fuzz_rng_init(&split_rng, fuzz_read_u32le(data));
    fuzz_rng_init(&sink_rng, 0x01000193u * (data[4] + 1u));
    data += FUZZ_PREFIX_LEN;
    size -= FUZZ_PREFIX_LEN;

    nh_err err;
    nh_zip *z = NULL;
    check(nh_zip_new(&z, &err) == 0);
    nh_cache *cache = NULL;
    nh_cache_options opts = {.cache_size = 1u << 20, .verify_writes = 0, .max_size = SCRATCH_MAX_SIZE};
    if (nh_cache_open(&cache, scratch(), &opts, &err) != 0)
        cache = NULL;

    size_t pos = 0;
    int failed = 0, ended = 0;
    while (!failed && !ended) {
        size_t piece = fuzz_next_piece(&split_rng);
        if (piece > size - pos)
            piece = size - pos;
        const uint8_t *in = data + pos;
        size_t left = piece;
        for (;;) {
            size_t consumed = 0;
            nh_zip_event ev;
            memset(&ev, 0, sizeof ev);
            if (nh_zip_feed(z, in, left, &consumed, &ev, &err) != 0) {
                check(nh_zip_error(z) != NH_ZIP_OK);
                check(err.msg[0] != '\0');
                failed = 1;
                break;
            }
            check(consumed <= left);
            in += consumed;
            left -= consumed;
            if (ev.type == NH_ZIP_NEED_INPUT) {
                check(left == 0);
                break;
            }
            if (ev.type == NH_ZIP_ENTRY_START) {
                check(ev.name_len <= NH_ZIP_NAME_MAX);
                choose_sink(z, cache, &sink_rng, &ev);
            } else if (ev.type == NH_ZIP_DATA_CHUNK) {
                check(ev.data_len > 0 && ev.data_len <= NH_ZIP_CHUNK_SIZE);
                volatile unsigned char sum = 0;
                for (size_t i = 0; i < ev.data_len; i++)
                    sum ^= ev.data[i];
                (void)sum;
            } else if (ev.type == NH_ZIP_ARCHIVE_END) {
                ended = 1;
                break;
            }
        }
        pos += piece;
        if (pos == size)
            break;
    }
    if (!failed && !ended)
        (void)nh_zip_end_of_input(z, &err);
    if (cache) {
        if (!failed)
            (void)nh_cache_flush(cache, &err);
        nh_cache_discard(cache);
        nh_cache_close(cache);
    }
    nh_zip_free(z);
    return 0;
}
