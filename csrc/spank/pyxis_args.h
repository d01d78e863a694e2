/* pyxis's command-line options, what shim makes of each (the table in pyxis_args.c is the one
 * place: README's "For pyxis users" table describes it row by row), and the values one step's
 * options gave. Pure: no Slurm calls, so the checks are the same in srun, salloc, sbatch and
 * slurmstepd. */
#ifndef SHIM_SPANK_PYXIS_ARGS_H
#define SHIM_SPANK_PYXIS_ARGS_H

#include "words.h"

/* Options that come in pairs (--container-X / --no-container-X): a tri-state each. */
enum pyx_switch { SW_MOUNT_HOME, SW_REMAP_ROOT, SW_WRITABLE, SW_ENTRYPOINT, SW_CHECK, SW_COUNT };

enum pyx_kind {
    PK_IMAGE,     /* --container-image: a path or a registry reference (image.c resolves it) */
    PK_MOUNTS,    /* SRC:DST[:FLAGS],... -> --bind SRC:DST[:ro] each */
    PK_WORKDIR,   /* -> --pwd */
    PK_NAME,      /* NAME[:FLAG]: the job's named container on the node (image.c) */
    PK_ENV,       /* NAME,... -> SHIMRUNENV_NAME=host value (an override of the image's value) */
    PK_UNSHARE,   /* net,ipc -> --net, --ipc */
    PK_PROFILE,   /* shim's own: NAME,... -> --profile NAME each */
    PK_SWITCH,    /* one side of a pair (switch, value) */
    PK_ACCEPTED,  /* accepted, nothing to do (said in `why`) */
    PK_REFUSED,   /* refused with one line: `why` */
};

struct pyx_option {
    const char *name;     /* without "--" */
    const char *arginfo;  /* NULL: a flag */
    const char *usage;
    enum pyx_kind kind;
    int sw, value;        /* PK_SWITCH: which pair, and the value this spelling sets */
    const char *why;      /* PK_REFUSED / PK_ACCEPTED: the reason given */
};

extern const struct pyx_option pyx_options[];
extern const int pyx_noptions;

#define PYX_MAX_LIST 64

struct pyx_args {
    char *image, *workdir, *name, *name_flag;
    char *binds[PYX_MAX_LIST];     /* as shimrun --bind takes them */
    int nbinds;
    char *env[PYX_MAX_LIST];
    int nenv;
    char *profiles[PYX_MAX_LIST];
    int nprofiles;
    int net, ipc;
    int sw[SW_COUNT];        /* -1: not given */
};

void pyx_args_init(struct pyx_args *a);
/* An option's value (optarg NULL for a flag) into `a`: 0, or -1 with one line reported. */
int pyx_option_set(struct pyx_args *a, int index, const char *optarg);
/* 1 when any container option was given. */
int pyx_any(const struct pyx_args *a);
/* The options together: 0, or -1 with one line (an option without an image or a name). */
int pyx_args_check(const struct pyx_args *a);

/* shimrun [run] OPTIONS... IMAGE: the launch's words, in `out` (after what it holds); extra_bind
 * (or NULL): one more --bind (the batch script). */
int pyx_launch_words(const struct pyx_args *a, const char *shimrun, const char *image, const char *extra_bind,
                     struct words *out);
/* shimrun check OPTIONS... IMAGE: what --container-check runs first, once per node. */
int pyx_check_words(const struct pyx_args *a, const char *shimrun, const char *image, struct words *out);

#endif
