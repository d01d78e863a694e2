/* The reports of the checking macros (core.h), error unwinding and debug output for the C core. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

int shim_debug_on = 0;
/* shim_launch() sets these before doing anything; shim_fail() unwinds to it so that every
 * step can be written as one checked call instead of hand-threaded error returns. */
struct shim_result *shim_current_result;
jmp_buf shim_unwind;

/* "mounts.c:137" of "csrc/mounts.c:137": where the check is, short enough for a one-line error. */
static const char *short_at(const char *at)
{
    const char *slash = strrchr(at, '/');
    return slash ? slash + 1 : at;
}

static void vformat(char *buf, size_t len, const char *at, int err, const char *fmt, va_list ap)
{
    size_t n;

    vsnprintf(buf, len, fmt, ap);
    n = strlen(buf);
    if (err && n < len)
        n += (size_t)snprintf(buf + n, len - n, ": %s", strerror(err));
    if (at && n < len)
        snprintf(buf + n, len - n, " (%s)", short_at(at));
}

static void fail_with(int code, const char *at, int err, const char *fmt, va_list ap) __attribute__((noreturn));
static void fail_with(int code, const char *at, int err, const char *fmt, va_list ap)
{
    struct shim_result *r = shim_current_result;

    vformat(r->message, sizeof r->message, at, err, fmt, ap);
    r->code = code;
    longjmp(shim_unwind, 1);
}

void shim_fail(int code, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fail_with(code, NULL, err, fmt, ap);
}

void shim_fail_at(const char *at, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fail_with(SHIM_E_LAUNCH, at, err, fmt, ap);
}

void shim_fail_image(const char *at, int err, const char *fmt, ...)
{
    char what[1024];
    va_list ap;

    va_start(ap, fmt);
    if (err != EIO)
        fail_with(SHIM_E_LAUNCH, at, err, fmt, ap);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    shim_fail(SHIM_E_IMAGE, 0, "the image is corrupt: %s: %s (rebuild or fetch it again; shimrun inspect IMAGE "
              "checks its header)", what, strerror(err));
}

void shim_report(const char *at, int err, char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vformat(buf, len, at, err, fmt, ap);
    va_end(ap);
    errno = err; /* the caller may still look at it */
}

void shim_exit_fail(const char *at, int err, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    va_start(ap, fmt);
    vformat(buf, sizeof buf, at, err, fmt, ap);
    va_end(ap);
    dprintf(2, "shimrun: error: %s\n", buf);
    _exit(SHIM_E_LAUNCH);
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
