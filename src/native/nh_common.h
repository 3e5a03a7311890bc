/* nh_common.h - shared definitions of the nhlink C core.
 *
 * Plain C99 + POSIX, no Python.h. Every fallible function returns 0 on
 * success and -1 on failure, with a one-line message in an nh_err.
 */
#ifndef NH_COMMON_H
#define NH_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define NH_BLOCK_SIZE 512u
#define NH_SEGMENT_SIZE (128u * 1024u)

typedef struct nh_err {
    char msg[512];
} nh_err;

/* printf-style: fill err->msg (when err is not NULL) and return -1. */
int nh_fail(nh_err *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
