/* Bounds-checked reading of a record's payloads (record.c, inputs.c): a read past the end, or a
 * string without its NUL, sets `bad` and yields 0 or "", so a caller checks once at the end. */
#ifndef SHIM_RD_H
#define SHIM_RD_H

#include <stdint.h>
#include <string.h>

struct rd {
    const unsigned char *p, *end;
    int bad;
};

static inline uint64_t rd_int(struct rd *r, int bytes)
{
    uint64_t v = 0;
    int i;
    if (r->end - r->p < bytes) {
        r->bad = 1;
        return 0;
    }
    for (i = 0; i < bytes; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += bytes;
    return v;
}

static inline const char *rd_str(struct rd *r)
{
    const unsigned char *nul = r->p < r->end ? memchr(r->p, 0, (size_t)(r->end - r->p)) : NULL;
    const char *s = (const char *)r->p;
    if (!nul) {
        r->bad = 1;
        return "";
    }
    r->p = nul + 1;
    return s;
}

/* The payload's fixed part must use it all (a field with bytes left over is not this format). */
static inline int rd_done(const struct rd *r) { return !r->bad && r->p == r->end; }

#endif
