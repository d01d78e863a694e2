/* The app's environment from a record's rules and the host environment of this launch: which
 * host variables pass (ENV_PASS rules), then each target's operations in order (ENV_OP). The
 * rules themselves, Apptainer's precedence included, are the planner's
 * (shim/container/environment.py): this file only applies them, so every launch path, warm, cold
 * or joining a shared container, composes the same environment. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "core.h"

/* A variable set in insertion order (what the app's environ keeps), with a hash index from name
 * to place so that setting N variables is linear: images carry 100,000 Env entries. An unset
 * leaves a hole (NULL) in the order, skipped when the set is read, as a dict forgets a key. */
struct envset {
    char **v;       /* "K=V", each malloc'd; NULL where one was unset */
    size_t n, cap;
    size_t *slot;   /* open addressing: 0 empty, TOMB a removed entry, else index into v + 1 */
    size_t nslot, used;  /* slots, and slots not empty (tombstones included) */
    int oom;
};

#define TOMB ((size_t)-1)

static size_t name_len(const char *entry)
{
    const char *eq = strchr(entry, '=');
    return eq ? (size_t)(eq - entry) : strlen(entry);
}

static size_t hash(const char *name, size_t n)
{
    size_t h = 1469598103934665603u, i; /* FNV-1a */
    for (i = 0; i < n; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211u;
    return h;
}

/* The slot holding `name`, or (not there) the empty slot where it would go. */
static size_t *probe(const struct envset *s, const char *name, size_t n)
{
    size_t mask = s->nslot - 1, i = hash(name, n) & mask, *free_slot = NULL;
    for (;; i = (i + 1) & mask) {
        size_t *p = &s->slot[i];
        if (*p == 0)
            return free_slot ? free_slot : p;
        if (*p == TOMB) {
            if (!free_slot)
                free_slot = p;
            continue;
        }
        if (name_len(s->v[*p - 1]) == n && !memcmp(s->v[*p - 1], name, n))
            return p;
    }
}

static long find(const struct envset *s, const char *name, size_t n)
{
    size_t *p;
    if (!s->nslot)
        return -1;
    p = probe(s, name, n);
    return (*p == 0 || *p == TOMB) ? -1 : (long)(*p - 1);
}

/* Room for one more entry: the index rebuilt, twice as large, when it is half full. */
static int reserve(struct envset *s)
{
    size_t i, *old = s->slot;
    if (s->n + 1 >= s->cap) {
        /* out of memory: NULL from shim_env_compose (core.h) */
        char **more = HANDLED(realloc(s->v, (s->cap = s->cap ? 2 * s->cap : 64) * sizeof *more));
        if (!more)
            return -1;
        s->v = more;
    }
    if (2 * (s->used + 1) <= s->nslot)
        return 0;
    s->nslot = s->nslot ? 2 * s->nslot : 128;
    while (2 * (s->n + 1) > s->nslot)
        s->nslot *= 2;
    /* out of memory: NULL from shim_env_compose (core.h) */
    if (!(s->slot = HANDLED(calloc(s->nslot, sizeof *s->slot)))) {
        s->slot = old;
        return -1;
    }
    free(old);
    s->used = 0;
    for (i = 0; i < s->n; i++)
        if (s->v[i]) {
            *probe(s, s->v[i], name_len(s->v[i])) = i + 1;
            s->used++;
        }
    return 0;
}

static const char *get(const struct envset *s, const char *name)
{
    long i = find(s, name, strlen(name));
    return i < 0 ? NULL : s->v[i] + strlen(name) + 1;
}

static void set(struct envset *s, const char *name, size_t n, const char *value)
{
    size_t vlen = strlen(value), *p;
    /* out of memory: NULL from shim_env_compose (core.h) */
    char *e = HANDLED(malloc(n + vlen + 2));
    long i;

    if (!e) {
        s->oom = 1;
        return;
    }
    memcpy(e, name, n);
    e[n] = '=';
    memcpy(e + n + 1, value, vlen + 1);
    if ((i = find(s, name, n)) >= 0) { /* in place: a variable keeps its position, as in a dict */
        free(s->v[i]);
        s->v[i] = e;
        return;
    }
    if (reserve(s) < 0) {
        free(e);
        s->oom = 1;
        return;
    }
    p = probe(s, name, n);
    if (*p == 0)
        s->used++;
    *p = s->n + 1;
    s->v[s->n++] = e;
}

static void unset(struct envset *s, const char *name)
{
    size_t *p;
    if (find(s, name, strlen(name)) < 0)
        return;
    p = probe(s, name, strlen(name));
    free(s->v[*p - 1]);
    s->v[*p - 1] = NULL;
    *p = TOMB;
}

static void release(struct envset *s)
{
    size_t i;
    for (i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    free(s->slot);
}

static int has_rule(const struct shim_rec *r, int rule, const char *name, size_t n, int prefix)
{
    int i;
    for (i = 0; i < r->npass; i++) {
        const struct shim_pass *p = &r->pass[i];
        size_t t = strlen(p->text);
        if (p->rule == rule && (prefix ? t <= n && !memcmp(name, p->text, t) : t == n && !memcmp(name, p->text, n)))
            return 1;
    }
    return 0;
}

static int passes(const struct shim_rec *r, const char *name, size_t n)
{
    if (has_rule(r, SHIM_PASS_ALWAYS_PREFIX, name, n, 1))
        return 1;
    if (has_rule(r, SHIM_PASS_BLOCKED, name, n, 0) || has_rule(r, SHIM_PASS_BLOCKED_PREFIX, name, n, 1))
        return 0;
    if (has_rule(r, SHIM_PASS_CLEANENV, "", 0, 0))
        return has_rule(r, SHIM_PASS_CLEANENV_KEEP, name, n, 0);
    return 1;
}

static int identifier(const char *s, size_t n)
{
    size_t i;
    if (!n || !(s[0] == '_' || (s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z')))
        return 0;
    for (i = 1; i < n; i++)
        if (!(s[i] == '_' || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

/* The names of the passing host variables that sh can hold, for the action script to set aside. */
static void host_names(const struct shim_rec *r, const struct envset *host, struct envset *out, const char *name)
{
    size_t total = 1, i;
    char *names, *p;

    for (i = 0; i < host->n; i++)
        total += host->v[i] ? name_len(host->v[i]) + 1 : 0;
    /* out of memory: NULL from shim_env_compose (core.h) */
    if (!(p = names = HANDLED(malloc(total)))) {
        out->oom = 1;
        return;
    }
    for (i = 0; i < host->n; i++) {
        size_t n = host->v[i] ? name_len(host->v[i]) : 0;
        if (!host->v[i] || !identifier(host->v[i], n) || has_rule(r, SHIM_PASS_SHELL_OWNED, host->v[i], n, 0))
            continue;
        if (p != names)
            *p++ = ' ';
        memcpy(p, host->v[i], n);
        p += n;
    }
    *p = '\0';
    set(out, name, strlen(name), names);
    free(names);
}

static void apply(const struct shim_rec *r, int target, struct envset *s, const struct envset *host)
{
    int i;
    size_t j;

    for (i = 0; i < r->nops; i++) {
        const struct shim_env_op *o = &r->ops[i];
        const char *cur;
        char *joined;
        if (o->target != target)
            continue;
        switch (o->op) {
        case SHIM_OP_SET: set(s, o->name, strlen(o->name), o->value); break;
        case SHIM_OP_UNSET: unset(s, o->name); break;
        case SHIM_OP_SET_DEFAULT:
            if (!get(s, o->name))
                set(s, o->name, strlen(o->name), o->value);
            break;
        case SHIM_OP_PREPEND: case SHIM_OP_APPEND:
            cur = get(s, o->name);
            if (!cur || !*cur) {
                set(s, o->name, strlen(o->name), o->value);
                break;
            }
            /* out of memory: NULL from shim_env_compose (core.h) */
            if (!(joined = HANDLED(malloc(strlen(cur) + strlen(o->value) + 2)))) {
                s->oom = 1;
                break;
            }
            if (o->op == SHIM_OP_PREPEND)
                strcat(strcat(strcpy(joined, o->value), ":"), cur);
            else
                strcat(strcat(strcpy(joined, cur), ":"), o->value);
            set(s, o->name, strlen(o->name), joined);
            free(joined);
            break;
        case SHIM_OP_HOST:
            for (j = 0; host && j < host->n; j++)
                if (host->v[j])
                    set(s, host->v[j], name_len(host->v[j]), host->v[j] + name_len(host->v[j]) + 1);
            break;
        case SHIM_OP_HOST_NAMES:
            if (host)
                host_names(r, host, s, o->name);
            break;
        default: break;
        }
    }
}

char **shim_env_compose(const struct shim_rec *r, char *const *environ, int target)
{
    struct envset host = {0}, out = {0};
    size_t total = 0, count = 0, i;
    char **env = NULL, *p;

    for (i = 0; environ && environ[i]; i++) {
        size_t n = name_len(environ[i]);
        if (environ[i][n] == '=' && passes(r, environ[i], n))
            set(&host, environ[i], n, environ[i] + n + 1); /* a repeated name: the last one wins */
    }
    apply(r, SHIM_ENV_HOST, &host, NULL);
    apply(r, target, &out, &host);
    if (!host.oom && !out.oom) {
        for (i = 0; i < out.n; i++)
            if (out.v[i]) {
                total += strlen(out.v[i]) + 1;
                count++;
            }
        /* out of memory: NULL from shim_env_compose (core.h) */
        env = HANDLED(malloc((count + 1) * sizeof *env + total));
    }
    if (env) {
        p = (char *)(env + count + 1);
        for (i = 0, count = 0; i < out.n; i++) {
            size_t n;
            if (!out.v[i])
                continue;
            n = strlen(out.v[i]) + 1;
            env[count++] = memcpy(p, out.v[i], n);
            p += n;
        }
        env[count] = NULL;
    }
    release(&host);
    release(&out);
    return env;
}
