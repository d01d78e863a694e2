/* One error line for the plugin and its exec helper alike: "what[: errno text][ (file:line)]".
 * Where the line goes differs (Slurm's log for the plugin, stderr for the helper): each program
 * defines shim_spank_emit(), so the wording is defined once. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

void shim_spank_report(const char *at, int err, const char *fmt, ...)
{
    char buf[2048];
    size_t n;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    n = strlen(buf);
    if (err && n < sizeof buf)
        n += (size_t)snprintf(buf + n, sizeof buf - n, ": %s", strerror(err));
    if (at && n < sizeof buf)
        snprintf(buf + n, sizeof buf - n, " (%s)", strrchr(at, '/') ? strrchr(at, '/') + 1 : at);
    shim_spank_emit(buf);
}
