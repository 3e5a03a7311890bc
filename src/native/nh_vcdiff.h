/* nh_vcdiff.h - streaming VCDIFF (RFC 3284) decoder for xdelta3 patches.
 *
 * Patch bytes are fed in arbitrary pieces; each complete window is decoded
 * into a target buffer of at most NH_VCDIFF_MAX_WINDOW bytes and handed to
 * the write callback in pieces. Source bytes (VCD_SOURCE windows) and earlier
 * target bytes (VCD_TARGET windows) are read through callbacks, via a small
 * block cache. Supported: the default code table, the near/same address
 * cache, xdelta3's application header (skipped) and its adler32 window
 * checksum (verified). Not supported: secondary compression, custom code
 * tables.
 */
#ifndef NH_VCDIFF_H
#define NH_VCDIFF_H

#include <stddef.h>
#include <stdint.h>

#include "nh_common.h"

#define NH_VCDIFF_MAX_WINDOW (16u << 20) /* xdelta3's hard maximum window size */

/* Read len bytes at offset of the source (or of the target written so far). */
typedef int (*nh_vcdiff_read_fn)(void *ctx, uint64_t offset, uint8_t *buf, size_t len,
                                 nh_err *err);
/* Take the next len decoded target bytes. */
typedef int (*nh_vcdiff_write_fn)(void *ctx, const uint8_t *data, size_t len, nh_err *err);

typedef struct nh_vcdiff nh_vcdiff;

/* read_target may be NULL: VCD_TARGET windows then fail. */
int nh_vcdiff_new(nh_vcdiff **out, uint64_t source_size, nh_vcdiff_read_fn read_source,
                  nh_vcdiff_read_fn read_target, nh_vcdiff_write_fn write, void *ctx,
                  nh_err *err);
/* Consume all of data, decoding (and writing) every window it completes. */
int nh_vcdiff_feed(nh_vcdiff *d, const uint8_t *data, size_t len, nh_err *err);
/* The patch ended: fail unless it ended between windows (after its header). */
int nh_vcdiff_finish(nh_vcdiff *d, nh_err *err);
uint64_t nh_vcdiff_target_size(const nh_vcdiff *d);
void nh_vcdiff_free(nh_vcdiff *d);

#endif
