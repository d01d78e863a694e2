/* Helpers every part of the C core uses and that call nothing of it: the build's identity, an
 * environment lookup, this node's name, the FNV hash of record keys and group names, and JSON strings. Every
 * other file may call these; this one calls no other (no call cycle can pass through it). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include "core.h"
#include "gen/build.h"
#include "gen/runtime.h"

const char *shim_build_id(void) { return SHIM_BUILD_ID; }

void shim_free(void *p) { free(p); }

void shim_fnv_init(struct shim_fnv *h)
{
    h->a = 0xcbf29ce484222325ULL;
    h->b = 0x84222325cbf29ce4ULL;
}

void shim_fnv_add(struct shim_fnv *h, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    do { /* the terminating NUL is hashed too: fields cannot run into each other */
        h->a = (h->a ^ *p) * 0x100000001b3ULL;
        h->b = (h->b ^ *p) * 0x100000001b3ULL;
    } while (*p++);
}

void shim_fnv_hex(const struct shim_fnv *h, char *out)
{
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)h->a, (unsigned long long)h->b);
}

const char *shim_env_get(char *const *environ, const char *name)
{
    size_t n = strlen(name);
    for (; environ && *environ; environ++)
        if (!strncmp(*environ, name, n) && (*environ)[n] == '=')
            return *environ + n + 1;
    return NULL;
}

void shim_node_name(char *const *environ, char *out, size_t outlen)
{
    const char *node = shim_env_get(environ, SHIM_SLURM_NODENAME); /* several slurmd on one host are several nodes */
    struct utsname u;

    if (node && *node)
        snprintf(out, outlen, "%s", node);
    else if (uname(&u) == 0)
        snprintf(out, outlen, "%s", u.nodename);
    else
        snprintf(out, outlen, "localhost");
}

/* A JSON string: the bytes as UTF-8, escaped; a byte that is not part of valid UTF-8 becomes
 * U+FFFD (a command line may hold any bytes, a JSON document may not). */
void shim_json_string(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    fputc('"', f);
    while (*p) {
        int n = *p < 0x80 ? 1 : (*p >> 5) == 6 ? 2 : (*p >> 4) == 14 ? 3 : (*p >> 3) == 30 ? 4 : 0, i;
        if (n == 1) {
            if (*p == '"' || *p == '\\')
                fprintf(f, "\\%c", *p);
            else if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
            p++;
            continue;
        }
        for (i = 1; n && i < n; i++)
            if ((p[i] & 0xC0) != 0x80)
                n = 0;
        /* overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8 either */
        if (!n || (n == 2 && *p < 0xC2) || (n == 3 && ((*p == 0xE0 && p[1] < 0xA0) || (*p == 0xED && p[1] >= 0xA0)))
            || (n == 4 && (*p > 0xF4 || (*p == 0xF0 && p[1] < 0x90) || (*p == 0xF4 && p[1] >= 0x90)))) {
            fputs("\\ufffd", f);
            p++;
            continue;
        }
        fwrite(p, 1, (size_t)n, f);
        p += n;
    }
    fputc('"', f);
}
