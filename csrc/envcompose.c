/* The app's environment from a record's rules and the host environment of this launch: which
 * host variables pass (ENV_PASS rules), then each target's operations in order (ENV_OP). The
 * rules themselves, Apptainer's precedence included, are the planner's
 * (shim/launch/environment.py): this file only applies them, so every launch path, warm, cold
 * or joining a shared container, composes the same environment. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "core.h"

struct envset {
    char **v;       /* "K=V", each malloc'd */
    size_t n, cap;
    int oom;
};

static size_t name_len(const char *entry)
{
    const char *eq = strchr(entry, '=');
    return eq ? (size_t)(eq - entry) : strlen(entry);
}

static long find(const struct envset *s, const char *name, size_t n)
{
    size_t i;
    for (i = 0; i < s->n; i++)
        if (name_len(s->v[i]) == n && !memcmp(s->v[i], name, n))
            return (long)i;
    return -1;
}

static const char *get(const struct envset *s, const char *name)
{
    long i = find(s, name, strlen(name));
    return i < 0 ? NULL : s->v[i] + strlen(name) + 1;
}

static void set(struct envset *s, const char *name, size_t n, const char *value)
{
    size_t vlen = strlen(value);
    char *e = malloc(n + vlen + 2);
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
    if (s->n + 1 >= s->cap) {
        char **more = realloc(s->v, (s->cap = s->cap ? 2 * s->cap : 64) * sizeof *more);
        if (!more) {
            free(e);
            s->oom = 1;
            return;
        }
        s->v = more;
    }
    s->v[s->n++] = e;
}

static void unset(struct envset *s, const char *name)
{
    long i = find(s, name, strlen(name));
    if (i < 0)
        return;
    free(s->v[i]);
    memmove(&s->v[i], &s->v[i + 1], (s->n - (size_t)i - 1) * sizeof *s->v);
    s->n--;
}

static void release(struct envset *s)
{
    size_t i;
    for (i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
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
        total += name_len(host->v[i]) + 1;
    if (!(p = names = malloc(total))) {
        out->oom = 1;
        return;
    }
    for (i = 0; i < host->n; i++) {
        size_t n = name_len(host->v[i]);
        if (!identifier(host->v[i], n) || has_rule(r, SHIM_PASS_SHELL_OWNED, host->v[i], n, 0))
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
            if (!(joined = malloc(strlen(cur) + strlen(o->value) + 2))) {
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
    size_t total = 0, i;
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
            total += strlen(out.v[i]) + 1;
        env = malloc((out.n + 1) * sizeof *env + total);
    }
    if (env) {
        p = (char *)(env + out.n + 1);
        for (i = 0; i < out.n; i++) {
            size_t n = strlen(out.v[i]) + 1;
            env[i] = memcpy(p, out.v[i], n);
            p += n;
        }
        env[out.n] = NULL;
    }
    release(&host);
    release(&out);
    return env;
}
