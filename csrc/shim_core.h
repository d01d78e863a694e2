/* Public interface of the shim C core, for Python (cffi) and the native front-end.
 *
 * The Python planner writes a launch record (docs/launch-record.md; the format's numbers are
 * generated from shim/record/format.py); the C executor runs it (executor.c): a single launch,
 * a node's shared container and the ranks joining it. Python never mounts, binds or execs: it
 * calls shim_record_prepare() only to look at an image in a child process it then lets go. */
#ifndef SHIM_CORE_H
#define SHIM_CORE_H

#include <stddef.h>

/* Exit codes (generated from shim/errors.py) and the record's format (shim/record/format.py). */
#include "gen/codes.h"
#include "gen/record.h"

struct shim_result {
    int code;
    char message[2048];
};

/* The build's identity ("VERSION+HASH"): a record names the build that wrote it. */
const char *shim_build_id(void);

/* For the planner's look at the image: enter the namespaces and mount the record's image at
 * STAGE/root (seen by this process only), from the opened image `image_fd` (the file the
 * record's IMAGE_FILE names). 0, or an exit code with res->message. */
int shim_record_prepare(const char *data, size_t len, int image_fd, struct shim_result *res);

/* The environment the record gives the app for host environment `environ` (target
 * SHIM_ENV_DIRECT, or SHIM_ENV_BASE for /bin/sh running the action script): "K=V" strings one
 * after the other, each with its NUL, in one malloc'd block of *outlen bytes (shim_free it);
 * NULL if the record is malformed. */
char *shim_record_env(const char *data, size_t len, char *const *environ, int target, size_t *outlen);

/* Is the record well-formed, of this build, written for `key`, and does every input it lists
 * still hold (for `environ`)? 1 yes; 0 no, with why. */
int shim_record_current(const char *data, size_t len, const char *key, char *const *environ, char *why,
                        size_t whylen);

/* Which argument of shimrun's argv is the image (options skipped by the table generated from
 * shim/options.py); -1 when the front-end must leave the command line to the planner. */
int shim_image_index(int argc, char *const *argv);

/* The key a launch's record is stored under: a hash of the build, the user, the node, the
 * working directory, the command line up to and including the command's name, and the
 * runtime's own settings in `environ` (SHIMRUN*, APPTAINER*, SINGULARITY*) and the values of the job
 * variables the hardware check reads (shim/record/format.py JOB_VARIABLES). out: 33 bytes. */
void shim_record_key(int argc, char *const *argv, int image, const char *cwd, char *const *environ, char *out);

/* One launch as the front-end was given it. */
struct shim_run {
    int argc;
    char *const *argv;        /* shimrun's own; argv[image] is the image, argv[image + 1] the command */
    int image;
    char *const *environ;
    const char *cwd;          /* the caller's working directory */
    int listen_fd;            /* >= 0: lead the node's shared container, serving ranks on this socket */
    int from_cache;           /* print the record's notices (the planner printed them itself otherwise) */
    int image_fd;             /* the image as opened (shim.image.handle, image.c): -1 opens argv[image] */
};

/* Run a record the planner just wrote (a single launch; a node's leader execs the front-end,
 * so that the holder is native): returns only on failure, with res set. */
int shim_run_record(const char *data, size_t len, const struct shim_run *run, struct shim_result *res);

/* The abstract socket name of the node's shared container this launch of user `uid` belongs
 * to (share.c): its length (a leading NUL included), or -1 when it shares none. */
int shim_group_name(const struct shim_run *r, unsigned uid, char *out, size_t outlen);

/* How many tasks of this Slurm step run on this node (SLURM_STEP_TASKS_PER_NODE at
 * SLURM_NODEID); 0 when Slurm does not say. */
int shim_local_tasks(char *const *environ);

/* The names glob(3) matches, sorted, each with its NUL, into out: bytes used, or -1 when they
 * do not fit. (The planner records a pattern's matches with the function that checks them.) */
int shim_glob(const char *pattern, char *out, size_t outlen);

/* The strictest cgroup CPU quota over the cgroups of process `pid` (0: this one) under
 * host_root, as text ("2.500000"), "" when there is none. */
void shim_cgroup_quota(const char *host_root, int pid, char *out, size_t outlen);

/* The per-user cache root (cache.c): 0 the configured directory, 1 a private .shim-UID in a
 * shared sticky one (problem says why), -1 none (problem says why). create: make what is missing. */
int shim_cache_root(int create, char *out, size_t outlen, char *problem, size_t problemlen);

/* Why `path` in the cache under `root` must not be trusted: 1 with why, 0 when it may be (or
 * does not exist). Checked up to root: no symlink, ours, not writable by others; a file with
 * no other hard link. */
int shim_cache_untrusted(const char *path, const char *root, int leaf_is_file, char *why, size_t whylen);

void shim_free(void *p);

/* Resolve PATH inside ROOT the way binds are resolved (symlinks cannot leave ROOT).
 * Writes the host path of the result into out; returns 0, or -errno. For tests. */
int shim_resolve_in_root(const char *root, const char *path, char *out, int outlen);

/* Open /dev/null on each of 0, 1, 2 the caller closed (stdfds.c); 0 or -errno. */
int shim_standard_fds(void);

/* Ask for SIGKILL when the parent dies (for helper processes such as unsquashfs). */
int shim_die_with_parent(void);

#endif
