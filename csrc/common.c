/* Helpers every part of the C core uses and that call nothing of it: the build's identity, an
 * environment lookup, this node's name and the FNV hash of record keys and group names. Every
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
