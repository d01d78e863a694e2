/* Public interface of the shim C core: the only code that touches namespaces and mounts.
 * Python (shim/launch/) plans everything and hands over one shim_config; shim_launch()
 * either execs the app (never returns) or returns an error class and a one-line message. */
#ifndef SHIM_CORE_H
#define SHIM_CORE_H

/* Error classes: the numbers are shimrun's exit codes, generated from shim/errors.py. */
#include "gen/codes.h"

#define SHIM_IMG_SQUASHFS 1
#define SHIM_IMG_DIR 2

/* Bind flags. */
#define SHIM_BIND_RO 1        /* read-only in the container */
#define SHIM_BIND_OPTIONAL 2  /* silently skip when the source does not exist */
#define SHIM_BIND_KEEPDEV 4   /* keep device nodes usable (host /dev); still nosuid */
#define SHIM_BIND_IFDST 8     /* only when the destination already exists in the image */

struct shim_bind {
    const char *src; /* host path */
    const char *dst; /* container path, resolved inside the container root */
    int flags;
};

/* A file of the image shown with text appended (e.g. the user's /etc/passwd entry). */
struct shim_append {
    const char *path; /* container path; skipped when the image has no such regular file */
    const char *text;
};

struct shim_config {
    int image_kind;
    const char *image_path;   /* SIF file (squashfs partition at offset) or directory */
    long long offset;         /* squashfs partition offset in the SIF */
    const char *squashfuse;   /* squashfuse_ll or squashfuse binary */
    const char *stage;        /* existing directory that gets a private tmpfs */
    int fakeroot;             /* map our uid/gid to 0 instead of to themselves */
    const struct shim_bind *binds;
    int nbinds;
    const struct shim_append *appends;
    int nappends;
    const char *cwd;          /* working directory inside the container */
    int cwd_required;         /* 1: cwd missing is an error (--pwd given, or --strict); 0: warn, use / */
    int quiet;                /* 1: no warnings (--quiet) */
    const char *const *argv;  /* the app and its arguments, NULL-terminated */
    const char *const *envp_direct; /* env when exec'ing the app directly */
    const char *const *envp_script; /* env for /bin/sh running action_script */
    const char *action_script;      /* NULL: always exec directly */
    const char *env_dir;      /* run action_script only when this dir exists in the image */
    int debug;                /* print each step on stderr */
};

struct shim_result {
    int code;
    char message[2048];
};

int shim_launch(const struct shim_config *cfg, struct shim_result *res);

/* shim_launch() in two halves, so Python can look at the image between them: prepare enters
 * the namespaces and mounts the image at <stage>/root (visible to this process only); finish
 * binds, pivots and execs. Both return 0 or an error class, like shim_launch(). */
int shim_prepare(const struct shim_config *cfg, struct shim_result *res);
int shim_finish(const struct shim_config *cfg, struct shim_result *res);

/* One container per node per job step. shim_hold_setup (share.c): set up like prepare + finish
 * without the exec (prepared: prepare was done already), keep fds of the namespaces, block the
 * signals meant for the apps. shim_join_exec (join.c): enter those namespaces (unless already
 * in them), chdir, no_new_privs, exec argv with envp; returns -1 with err and *code on failure. */
int shim_hold_setup(const struct shim_config *cfg, struct shim_result *res, int prepared, int *userns, int *mntns);
int shim_join_exec(int userns, int mntns, const char *cwd, char *const *argv, char *const *envp, char *err,
                   size_t errlen, int *code);

/* Resolve PATH inside ROOT the way binds are resolved (symlinks cannot leave ROOT).
 * Writes the host path of the result into out; returns 0, or -errno. For tests. */
int shim_resolve_in_root(const char *root, const char *path, char *out, int outlen);

/* Open /dev/null on each of 0, 1, 2 the caller closed (stdfds.c); 0 or -errno. */
int shim_standard_fds(void);

/* Ask for SIGKILL when the parent dies (for helper processes such as unsquashfs). */
int shim_die_with_parent(void);

#endif
