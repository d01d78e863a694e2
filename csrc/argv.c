/* What the front-end reads from its command line and environment without the planner: where
 * the image is (by the option table generated from shim/options.py), a record's key and how
 * many of the step's tasks run here. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "gen/options.h"
#include "gen/runtime.h"

int shim_is_key_setting(const char *entry)
{
    static const char *const prefixes[] = SHIM_SETTINGS_PREFIXES, *const handover[] = SHIM_HANDOVER_ENV;
    int i, is = 0;
    for (i = 0; prefixes[i]; i++)
        is |= !strncmp(entry, prefixes[i], strlen(prefixes[i]));
    for (i = 0; is && handover[i]; i++)
        if (!strncmp(entry, handover[i], strlen(handover[i])) && entry[strlen(handover[i])] == '=')
            return 0;
    return is;
}

static int is_verb(const char *word)
{
    static const char *const verbs[] = SHIM_VERBS;
    int i;
    for (i = 0; verbs[i]; i++)
        if (!strcmp(word, verbs[i]))
            return 1;
    return 0;
}

int shim_image_index(int argc, char *const *argv)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const struct shim_option *o;
        if (i == 1 && (!strcmp(a, SHIM_RUN_VERB) || !strcmp(a, SHIM_EXEC_VERB)))
            continue; /* shimrun run|exec [OPTIONS] IMAGE [ARGS...] */
        /* Another verb (`shell`, `check`), or one after global options (`--conf D exec ...`): the
         * planner reads that command line, it is no IMAGE. */
        if (a[0] != '-')
            return is_verb(a) ? -1 : i;
        for (o = SHIM_OPTIONS; o->name; o++) {
            size_t n = strlen(o->name);
            if (!strcmp(a, o->name)) {
                i += o->takes_value;
                break;
            }
            if (o->takes_value && a[1] == '-' && !strncmp(a, o->name, n) && a[n] == '=')
                break;
        }
        /* an option we do not know, or one with which shimrun does not launch (--dry-run) */
        if (!o->name || !o->launches)
            return -1;
    }
    return -1;
}

/* 1 when an option before the image asks for a container of its own (new namespaces, --contain). */
int shim_runs_alone(int argc, char *const *argv, int image)
{
    int i;
    const struct shim_option *o;

    for (i = 1; i < image && i < argc; i++)
        for (o = SHIM_OPTIONS; o->name; o++)
            if (!strcmp(argv[i], o->name)) {
                if (o->alone)
                    return 1;
                i += o->takes_value;
                break;
            }
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void shim_record_key(int argc, char *const *argv, int image, const char *cwd, char *const *environ, char *out)
{
    struct shim_fnv h;
    char num[32], node[256];
    const char **settings;
    size_t n = 0, i;
    int a;

    shim_fnv_init(&h);
    shim_fnv_add(&h, SHIM_RECORD_KEY_TAG);
    shim_fnv_add(&h, shim_build_id());
    snprintf(num, sizeof num, "%u", (unsigned)getuid());
    shim_fnv_add(&h, num);
    shim_node_name(environ, node, sizeof node);
    shim_fnv_add(&h, node);
    shim_fnv_add(&h, cwd);
    for (a = 1; a < argc && a <= image + 1; a++)
        shim_fnv_add(&h, argv[a]);
    shim_fnv_add(&h, "--job--");
    {
        static const char *const values[] = SHIM_KEY_ENV_VALUES;
        for (a = 0; values[a]; a++) {
            const char *v = shim_env_get(environ, values[a]);
            shim_fnv_add(&h, v ? "set" : "unset");
            shim_fnv_add(&h, v ? v : "");
        }
    }
    shim_fnv_add(&h, "--env--");
    for (i = 0; environ && environ[i]; i++)
        n++;
    settings = HANDLED(calloc(n + 1, sizeof *settings)); /* NULL: a key no record has (below) */
    for (i = 0, n = 0; settings && environ && environ[i]; i++)
        if (shim_is_key_setting(environ[i]))
            settings[n++] = environ[i];
    if (settings) {
        qsort(settings, n, sizeof *settings, cmp_str);
        for (i = 0; i < n; i++)
            shim_fnv_add(&h, settings[i]);
        free(settings);
    } else {
        shim_fnv_add(&h, "--no-memory--"); /* a key no record has: the planner runs */
    }
    shim_fnv_hex(&h, out);
}

/* SLURM_STEP_TASKS_PER_NODE ("4(x2),3") at this node's index SLURM_NODEID; 0 when Slurm does not say. */
int shim_local_tasks(char *const *environ)
{
    const char *spec = shim_env_get(environ, SHIM_SLURM_STEP_TASKS_PER_NODE);
    const char *id = shim_env_get(environ, SHIM_SLURM_NODEID);
    long index, at = 0;
    char *end;

    if (!spec || !*spec || !id || !*id)
        return 0;
    index = strtol(id, &end, 10);
    if (*end || index < 0)
        return 0;
    while (*spec) {
        long count = strtol(spec, &end, 10), times = 1;
        if (end == spec || count < 0)
            return 0;
        spec = end;
        if (!strncmp(spec, "(x", 2)) {
            times = strtol(spec + 2, &end, 10);
            if (end == spec + 2 || *end != ')' || times < 1)
                return 0;
            spec = end + 1;
        }
        if (index < at + times)
            return (int)count;
        at += times;
        if (*spec == ',')
            spec++;
        else if (*spec)
            return 0;
    }
    return 0;
}
