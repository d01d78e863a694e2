/* Error unwinding and debug output for the C core. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core.h"

int shim_debug_on = 0;
/* shim_launch() sets these before doing anything; shim_fail() unwinds to it so that every
 * step can be written as one checked call instead of hand-threaded error returns. */
struct shim_result *shim_current_result;
jmp_buf shim_unwind;

void shim_fail(int code, int err, const char *fmt, ...)
{
    struct shim_result *r = shim_current_result;
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
    n = strlen(r->message);
    if (err && n < sizeof r->message)
        snprintf(r->message + n, sizeof r->message - n, ": %s", strerror(err));
    r->code = code;
    longjmp(shim_unwind, 1);
}

void shim_fail_image(int err, const char *fmt, ...)
{
    char what[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (err != EIO)
        shim_fail(SHIM_E_LAUNCH, err, "%s", what);
    shim_fail(SHIM_E_IMAGE, 0, "the image is corrupt: %s: %s (rebuild or fetch it again; shimrun inspect IMAGE "
              "checks its header)", what, strerror(err));
}

void shim_debug(const char *fmt, ...)
{
    va_list ap;

    if (!shim_debug_on)
        return;
    fputs("shimrun[core]: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
