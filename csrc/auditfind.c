/* What the audit found (record AUDIT_RULE, AUDIT_INJECTED; README "What actually ran"): the loaded
 * objects mapped to the injected host files, the planner's rules evaluated over them, and the
 * provenance record's "loaded" list. The rules are data the planner wrote (the node's facts and
 * the site's [policy.codes] already applied); here they are only matched: fnmatch(3) against the
 * object's basename, or its whole container path for a pattern with a '/'. */
#define _GNU_SOURCE
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "core.h"
#include "gen/runtime.h"

/* An injected object is the host file bound there: the same device and inode (whatever path the
 * loader opened it by), or, failing a stat, the same container path. */
static void map_injected(const struct shim_rec *r, struct shim_audit *a)
{
    struct stat st;
    size_t i;
    int j;

    for (j = 0; j < r->naudit_injected; j++) {
        const struct shim_audit_injected *inj = &r->audit_injected[j];
        int known = HANDLED(stat(inj->host, &st)) == 0; /* gone since: by its path only */
        for (i = 0; i < a->n; i++)
            if (!a->obj[i]->injected && ((known && a->obj[i]->dev == (unsigned long long)st.st_dev
                                          && a->obj[i]->ino == (unsigned long long)st.st_ino)
                                         || !strcmp(a->obj[i]->path, inj->path)))
                a->obj[i]->injected = j + 1;
    }
}

/* Does `path` match one of the SHIM_AUDIT_SEP-separated globs of `list`? */
static int matches(const char *list, const char *path)
{
    const char *base = strrchr(path, '/'), *p = list;
    char glob[1024];

    base = base ? base + 1 : path;
    while (*p) {
        size_t n = strcspn(p, SHIM_AUDIT_SEP);
        if (n && n < sizeof glob) {
            memcpy(glob, p, n);
            glob[n] = '\0';
            if (fnmatch(glob, memchr(glob, '/', n) ? path : base, 0) == 0)
                return 1;
        }
        p += n + (p[n] != '\0');
    }
    return 0;
}

/* The objects of `list` that match (all with a NULL list), comma-separated: an injected one as
 * "PATH (host: HOST)". Returns how many; out gets as many as fit. */
static int named(const struct shim_rec *r, const struct shim_audit *a, const char *list, char *out, size_t len)
{
    size_t i, at = 0;
    int count = 0;

    out[0] = '\0';
    for (i = 0; i < a->n; i++) {
        const struct shim_loaded *o = a->obj[i];
        int n;
        /* an injected object is also what it was injected as, whatever name the loader opened */
        if (list && !matches(list, o->path)
            && !(o->injected && matches(list, r->audit_injected[o->injected - 1].path)))
            continue;
        if (o->injected)
            n = snprintf(out + at, len - at, "%s%s (host: %s)", count ? ", " : "", o->path,
                         r->audit_injected[o->injected - 1].host);
        else
            n = snprintf(out + at, len - at, "%s%s", count ? ", " : "", o->path);
        count++;
        if (n > 0 && at + (size_t)n < len)
            at += (size_t)n;
        else
            out[at] = '\0'; /* a cut name is left out; the count says there were more */
    }
    return count;
}

/* One finding, as the diagnostics before the app are printed (the node's name in a job step). */
static void print_finding(const struct shim_audit_rule *rule, const char *objects, const struct shim_run *run)
{
    static const char *const label[] = {"", "info", "warning", "error"};
    const char *hole = strstr(rule->message, "%s");
    char node[256] = "";

    if (shim_env_get(run->environ, SHIM_SLURM_STEP_ID))
        shim_node_name(run->environ, node, sizeof node);
    fprintf(stderr, "shimrun: %s%s%s%s: %s: ", node[0] ? "[" : "", node, node[0] ? "] " : "", label[rule->severity],
            rule->code);
    if (hole) /* the message is the planner's text, never a format: its first %s takes the objects */
        fprintf(stderr, "%.*s%s%s", (int)(hole - rule->message), rule->message, objects, hole + 2);
    else
        fputs(rule->message, stderr);
    if (rule->hint[0])
        fprintf(stderr, " (hint: %s)", rule->hint);
    fputc('\n', stderr);
    if (rule->admin_hint[0])
        fprintf(stderr, "    admin: %s\n", rule->admin_hint);
}

int shim_audit_findings(const struct shim_rec *r, const struct shim_run *run, struct shim_audit *a, int status,
                        int print)
{
    static char objects[8192];
    int i, fails = 0;

    map_injected(r, a);
    if (!(r->audit_flags & SHIM_AUDIT_PRINT))
        return status;
    fflush(stdout);
    for (i = 0; i < r->naudit_rules; i++) {
        const struct shim_audit_rule *rule = &r->audit_rules[i];
        int hit;
        if (rule->preconditions[0] && !named(r, a, rule->preconditions, objects, sizeof objects))
            continue;
        hit = named(r, a, rule->patterns, objects, sizeof objects);
        if (rule->kind == SHIM_AUDIT_KIND_ANY ? !hit : hit)
            continue;
        if (rule->kind == SHIM_AUDIT_KIND_NONE && rule->preconditions[0])
            named(r, a, rule->preconditions, objects, sizeof objects);
        else if (rule->kind == SHIM_AUDIT_KIND_NONE)
            objects[0] = '\0';
        /* an error counts even without --strict: the site made this code one */
        fails += rule->severity == SHIM_AUDIT_SEVERITY_ERROR
                 || (rule->severity == SHIM_AUDIT_SEVERITY_WARN && (r->audit_flags & SHIM_AUDIT_STRICT));
        if (print && (!r->cfg.quiet || rule->severity == SHIM_AUDIT_SEVERITY_ERROR))
            print_finding(rule, objects, run);
    }
    fflush(stderr);
    /* after the fact: the app's own failure stays its status; only a success is made one */
    if (fails && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return SHIM_E_AFTER_START << 8;
    return status;
}

void shim_audit_json(FILE *f, const struct shim_rec *r, const struct shim_audit *a)
{
    size_t i;

    fputs(",\"loaded\":[", f);
    for (i = 0; i < a->n; i++) {
        const struct shim_loaded *o = a->obj[i];
        fputs(i ? ",{\"path\":" : "{\"path\":", f);
        shim_json_string(f, o->path);
        fputs(",\"host\":", f);
        if (o->injected)
            shim_json_string(f, r->audit_injected[o->injected - 1].host);
        else
            fputs("null", f);
        fputs(",\"sha256\":", f);
        if (o->injected && r->audit_injected[o->injected - 1].sha256[0])
            shim_json_string(f, r->audit_injected[o->injected - 1].sha256);
        else
            fputs("null", f);
        fprintf(f, ",\"pid\":%ld,\"exe\":", o->pid);
        shim_json_string(f, o->exe);
        fputc('}', f);
    }
    fputc(']', f);
}
