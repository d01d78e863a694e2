/* pyxis's options, as pyxis's own documentation gives their meanings (`srun --help` with pyxis,
 * NVIDIA/pyxis README), and what shim does with each. The table is data: a new option is a row.
 * What shim cannot do is refused by name, never silently dropped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "pyxis_args.h"

const struct pyx_option pyx_options[] = {
    {"container-image", "[USER@][REGISTRY#]IMAGE[:TAG]|PATH",
     "[shim] the container's image: a SIF, squashfs file or directory on the node, or a registry "
     "image (pulled once per node and job)", PK_IMAGE, 0, 0, NULL},
    {"container-mounts", "SRC:DST[:FLAGS][,SRC:DST...]",
     "[shim] bind mount(s) into the container; flags joined with \"+\": ro, rw, (r)bind, nosuid, nodev, "
     "(r)private", PK_MOUNTS, 0, 0, NULL},
    {"container-workdir", "PATH", "[shim] working directory inside the container", PK_WORKDIR, 0, 0, NULL},
    {"container-name", "NAME[:auto|create|no_exec]",
     "[shim] name the container: later steps of the job on the node reuse its image", PK_NAME, 0, 0, NULL},
    {"container-save", "PATH", "[shim] refused: shim does not save a container's state", PK_REFUSED, 0, 0,
     "shim does not save a container's state to a squashfs file (build an image with shimrun build)"},
    {"container-mount-home", NULL, "[shim] bind mount the user's home directory (shim's default)",
     PK_SWITCH, SW_MOUNT_HOME, 1, NULL},
    {"no-container-mount-home", NULL, "[shim] do not bind mount the user's home directory",
     PK_SWITCH, SW_MOUNT_HOME, 0, NULL},
    {"container-remap-root", NULL, "[shim] appear as root (uid 0) inside the container, no privileges outside",
     PK_SWITCH, SW_REMAP_ROOT, 1, NULL},
    {"no-container-remap-root", NULL, "[shim] do not remap to root inside the container (the default)",
     PK_SWITCH, SW_REMAP_ROOT, 0, NULL},
    {"container-entrypoint", NULL, "[shim] run the image's entrypoint (shimrun run)", PK_SWITCH, SW_ENTRYPOINT, 1,
     NULL},
    {"no-container-entrypoint", NULL, "[shim] do not run the image's entrypoint (the default)", PK_SWITCH,
     SW_ENTRYPOINT, 0, NULL},
    {"container-entrypoint-log", NULL, "[shim] accepted: the entrypoint's output is always shown", PK_ACCEPTED, 0,
     0, "the entrypoint's output is always shown"},
    {"container-writable", NULL, "[shim] make the container filesystem writable (changes end with the step)",
     PK_SWITCH, SW_WRITABLE, 1, NULL},
    {"container-readonly", NULL, "[shim] make the container filesystem read-only (the default)", PK_SWITCH,
     SW_WRITABLE, 0, NULL},
    {"container-env", "NAME[,NAME...]",
     "[shim] variables whose host value overrides the image's", PK_ENV, 0, 0, NULL},
    {"container-unshare", "NS[,NS...]", "[shim] new namespaces for the container: net, ipc", PK_UNSHARE, 0, 0,
     NULL},
    {"container-profile", "NAME[,NAME...]", "[shim] apply the site's injection profile(s) NAME", PK_PROFILE, 0, 0,
     NULL},
    {"container-check", NULL, "[shim] print the plan and diagnostics once per node before the step", PK_SWITCH,
     SW_CHECK, 1, NULL},
};
const int pyx_noptions = sizeof pyx_options / sizeof pyx_options[0];

/* Each pair's shimrun option when on and when off (NULL: nothing to say, shimrun's default). */
static const struct {
    const char *on, *off;
} switch_words[SW_COUNT] = {
    [SW_MOUNT_HOME] = {NULL, "--no-home"},
    [SW_REMAP_ROOT] = {"--fakeroot", NULL},
    [SW_WRITABLE] = {"--writable-tmpfs", NULL},
    [SW_ENTRYPOINT] = {NULL, NULL},  /* the verb: run (pyx_launch_words) */
    [SW_CHECK] = {NULL, NULL},       /* a check before the launch (pyxis_exec.c) */
};

/* Mount flags shim's binds honour: every bind is recursive, nosuid and nodev, and private. */
static const char *const mount_flags_ok[] = {"ro", "rw", "bind", "rbind", "nosuid", "nodev", "private",
                                             "rprivate", NULL};

void pyx_args_init(struct pyx_args *a)
{
    memset(a, 0, sizeof *a);
    for (int i = 0; i < SW_COUNT; i++)
        a->sw[i] = -1;
}

static int dup_into(char **slot, const char *value)
{
    return SZP(*slot = strdup(value), "strdup") ? -1 : 0;
}

static int list_add(char **list, int *n, const char *opt, const char *value)
{
    for (int i = 0; i < *n; i++)
        if (strcmp(list[i], value) == 0)
            return 0;
    if (*n >= PYX_MAX_LIST)
        return SFAIL("--%s: more than %d entries", opt, PYX_MAX_LIST);
    return dup_into(&list[(*n)++], value);
}

static int valid_name(const char *s)
{
    if (!*s || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || strchr("._-", *s)))
            return 0;
    return 1;
}

/* SRC:DST[:FLAGS] as pyxis reads it -> SRC:DST[:ro] as shimrun --bind takes it. */
static int one_mount(struct pyx_args *a, const char *opt, char *entry)
{
    char *src = entry, *dst, *flags, *flag, bind[8192];
    int ro = 0;

    dst = strchr(src, ':');
    if (dst)
        *dst++ = '\0';
    flags = dst ? strchr(dst, ':') : NULL;
    if (flags)
        *flags++ = '\0';
    if (!dst || !*dst)
        dst = src;
    if (!*src)
        return SFAIL("--%s: empty source in '%s' (SRC:DST[:FLAGS])", opt, entry);
    if (strcmp(src, "tmpfs") == 0 || strcmp(src, "umount") == 0)
        return SFAIL("--%s: '%s' mounts are not supported by shim (only bind mounts of host paths)", opt, src);
    if (src[0] != '/' && src[0] != '.')
        return SFAIL("--%s: source '%s' must be an absolute or relative path (/... or ./...)", opt, src);
    if (dst[0] != '/')
        return SFAIL("--%s: destination '%s' must be an absolute path in the container", opt, dst);
    for (flag = flags ? strtok(flags, "+") : NULL; flag; flag = strtok(NULL, "+")) {
        int known = 0;
        for (int i = 0; mount_flags_ok[i]; i++)
            known |= strcmp(flag, mount_flags_ok[i]) == 0;
        if (!known)
            return SFAIL("--%s: mount flag '%s' is not supported by shim (supported: ro, rw, bind, rbind, nosuid, "
                         "nodev, private, rprivate)", opt, flag);
        ro = strcmp(flag, "ro") == 0 ? 1 : strcmp(flag, "rw") == 0 ? 0 : ro;
    }
    if ((size_t)snprintf(bind, sizeof bind, "%s:%s%s", src, dst, ro ? ":ro" : "") >= sizeof bind)
        return SFAIL("--%s: '%s' is too long", opt, src);
    return list_add(a->binds, &a->nbinds, opt, bind);
}

/* A comma list, each item through `each`. */
static int each_item(struct pyx_args *a, const char *opt, const char *value,
                     int (*each)(struct pyx_args *, const char *, char *))
{
    char *copy, *save = NULL;
    int rc = 0;

    if (SZP(copy = strdup(value), "strdup"))
        return -1;
    if (!*copy || copy[strlen(copy) - 1] == ',' || *copy == ',' || strstr(copy, ",,"))
        rc = SFAIL("--%s: empty entry in '%s'", opt, value);
    for (char *item = rc ? NULL : strtok_r(copy, ",", &save); item && !rc; item = strtok_r(NULL, ",", &save))
        rc = each(a, opt, item);
    free(copy);
    return rc;
}

static int one_env(struct pyx_args *a, const char *opt, char *name)
{
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' || (c > name && *c >= '0' && *c <= '9')))
            return SFAIL("--%s: '%s' is not a variable name", opt, name);
    return list_add(a->env, &a->nenv, opt, name);
}

static int one_ns(struct pyx_args *a, const char *opt, char *ns)
{
    if (strcmp(ns, "net") == 0)
        a->net = 1;
    else if (strcmp(ns, "ipc") == 0)
        a->ipc = 1;
    else if (strcmp(ns, "uts") == 0)
        return SFAIL("--%s: a new uts namespace is not supported by shim (supported: net, ipc)", opt);
    else
        return SFAIL("--%s: unknown namespace '%s' (supported: net, ipc)", opt, ns);
    return 0;
}

static int one_profile(struct pyx_args *a, const char *opt, char *name)
{
    if (!valid_name(name))
        return SFAIL("--%s: '%s' is not a profile name", opt, name);
    return list_add(a->profiles, &a->nprofiles, opt, name);
}

static int set_once(char **slot, const char *opt, const char *value)
{
    if (*slot && strcmp(*slot, value) != 0)
        return SFAIL("--%s given twice ('%s', then '%s')", opt, *slot, value);
    return *slot ? 0 : dup_into(slot, value);
}

static int set_name(struct pyx_args *a, const char *opt, const char *value)
{
    char copy[256], *flag;

    if (strlen(value) >= sizeof copy)
        return SFAIL("--%s: too long", opt);
    strcpy(copy, value);
    flag = strchr(copy, ':');
    if (flag)
        *flag++ = '\0';
    if (!valid_name(copy))
        return SFAIL("--%s: '%s' is not a name (letters, digits, '.', '_', '-')", opt, copy);
    if (!flag || !*flag)
        flag = "auto";
    if (strcmp(flag, "exec") == 0)
        return SFAIL("--%s: the 'exec' flag is not supported by shim: no container runs between steps "
                     "(auto, create, no_exec are)", opt);
    if (strcmp(flag, "auto") && strcmp(flag, "create") && strcmp(flag, "no_exec"))
        return SFAIL("--%s: flag '%s' must be auto, create or no_exec", opt, flag);
    if (set_once(&a->name, opt, copy))
        return -1;
    return set_once(&a->name_flag, opt, flag);
}

int pyx_option_set(struct pyx_args *a, int index, const char *optarg)
{
    const struct pyx_option *o = &pyx_options[index];
    const char *value = optarg ? optarg : "";

    if (o->arginfo && !*value)
        return SFAIL("--%s: a value is required (%s)", o->name, o->arginfo);
    /* Slurm may run an option's callback again with the same value: set_once and list_add
     * take a repeated value as no news. */
    switch (o->kind) {
    case PK_IMAGE:
        if (strchr(value, '@') && !strstr(value, "@sha256:") && value[0] != '/' && value[0] != '.')
            return SFAIL("--%s: USER@ in '%s' is not supported by shim: registry credentials come from "
                         "~/.docker/config.json or $REGISTRY_AUTH_FILE", o->name, value);
        return set_once(&a->image, o->name, value);
    case PK_MOUNTS:
        return each_item(a, o->name, value, one_mount);
    case PK_WORKDIR:
        if (value[0] != '/')
            return SFAIL("--%s: '%s' must be an absolute path in the container", o->name, value);
        return set_once(&a->workdir, o->name, value);
    case PK_NAME:
        return set_name(a, o->name, value);
    case PK_ENV:
        return each_item(a, o->name, value, one_env);
    case PK_UNSHARE:
        return each_item(a, o->name, value, one_ns);
    case PK_PROFILE:
        return each_item(a, o->name, value, one_profile);
    case PK_SWITCH:
        if (a->sw[o->sw] != -1 && a->sw[o->sw] != o->value)
            return SFAIL("--%s contradicts an option given before it", o->name);
        a->sw[o->sw] = o->value;
        return 0;
    case PK_ACCEPTED:
        return 0;
    case PK_REFUSED:
        return SFAIL("--%s is not supported: %s", o->name, o->why);
    }
    return 0;
}

int pyx_any(const struct pyx_args *a)
{
    int any = a->image || a->name || a->workdir || a->nbinds || a->nenv || a->nprofiles || a->net || a->ipc;

    for (int i = 0; i < SW_COUNT; i++)
        any |= a->sw[i] != -1;
    return any;
}

int pyx_args_check(const struct pyx_args *a)
{
    if (pyx_any(a) && !a->image && !a->name)
        return SFAIL("container options need --container-image (or --container-name of a container an earlier "
                     "step of the job made)");
    return 0;
}

static int add_profiles(const struct pyx_args *a, struct words *out)
{
    for (int i = 0; i < a->nprofiles; i++)
        if (words_add(out, "--profile") || words_add(out, a->profiles[i]))
            return -1;
    return 0;
}

int pyx_launch_words(const struct pyx_args *a, const char *shimrun, const char *image, const char *extra_bind,
                     struct words *out)
{
    if (words_add(out, shimrun) || (a->sw[SW_ENTRYPOINT] == 1 && words_add(out, "run")))
        return -1;
    for (int i = 0; i < SW_COUNT; i++) {
        const char *w = a->sw[i] == 1 ? switch_words[i].on : a->sw[i] == 0 ? switch_words[i].off : NULL;
        if (w && words_add(out, w))
            return -1;
    }
    for (int i = 0; i < a->nbinds; i++)
        if (words_add(out, "--bind") || words_add(out, a->binds[i]))
            return -1;
    if (extra_bind && (words_add(out, "--bind") || words_add(out, extra_bind)))
        return -1;
    if (a->workdir && (words_add(out, "--pwd") || words_add(out, a->workdir)))
        return -1;
    if ((a->net && words_add(out, "--net")) || (a->ipc && words_add(out, "--ipc")))
        return -1;
    if (add_profiles(a, out))
        return -1;
    return words_add(out, image);
}

int pyx_check_words(const struct pyx_args *a, const char *shimrun, const char *image, struct words *out)
{
    if (words_add(out, shimrun) || words_add(out, "check") || add_profiles(a, out))
        return -1;
    return words_add(out, image);
}
