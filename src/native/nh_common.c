/* nh_common.c - error reporting shared by the C core. */
#include "nh_common.h"

#include <stdarg.h>
#include <stdio.h>

int nh_fail(nh_err *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return -1;
}
