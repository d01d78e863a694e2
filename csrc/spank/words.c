/* See words.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "words.h"

int words_add(struct words *w, const char *word)
{
    char *copy;

    if (w->n + 2 > w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        char **v;
        if (SZP(v = realloc(w->v, cap * sizeof *v), "realloc"))
            return -1;
        w->v = v;
        w->cap = cap;
    }
    if (SZP(copy = strdup(word), "strdup"))
        return -1;
    w->v[w->n++] = copy;
    w->v[w->n] = NULL;
    return 0;
}

int words_addf(struct words *w, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf)
        return SFAIL("an argument is longer than %zu bytes", sizeof buf - 1);
    return words_add(w, buf);
}

char *words_pack(const struct words *w)
{
    size_t len = 1, at = 0;
    char *out;

    for (size_t i = 0; i < w->n; i++)
        len += strlen(w->v[i]) + 24;
    if (SZP(out = malloc(len), "malloc"))
        return NULL;
    for (size_t i = 0; i < w->n; i++)
        at += (size_t)snprintf(out + at, len - at, "%zu:%s", strlen(w->v[i]), w->v[i]);
    out[at] = '\0';
    return out;
}

int words_unpack(const char *packed, struct words *w)
{
    const char *p = packed;

    while (*p) {
        char *end, *word;
        unsigned long long len = strtoull(p, &end, 10);
        if (end == p || *end != ':' || len > strlen(end + 1))
            return SFAIL("malformed packed argument list at offset %td", p - packed);
        if (SZP(word = strndup(end + 1, (size_t)len), "strndup"))
            return -1;
        int rc = words_add(w, word);
        free(word);
        if (rc)
            return -1;
        p = end + 1 + len;
    }
    return 0;
}

void words_free(struct words *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->v[i]);
    free(w->v);
    w->v = NULL;
    w->n = w->cap = 0;
}
