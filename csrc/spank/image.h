/* Which image a step runs, decided once per node before its tasks start (slurm_spank_user_init),
 * in a child that is wholly the job's user: a path is checked, a registry reference is pulled
 * once per node and job (shimrun pull, into the job's directory), a --container-name is looked
 * up or recorded. The job's directory: DIR/shim-pyxis.UID/JOB.HOST, private to the user, removed
 * by the job's epilog (image_cleanup). */
#ifndef SHIM_SPANK_IMAGE_H
#define SHIM_SPANK_IMAGE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct image_req {
    const char *image;              /* --container-image, or NULL */
    const char *name, *name_flag;   /* --container-name, or NULL */
    const char *shimrun;
    const char *dir;                /* where the per-user directories go (plugstack.conf dir=) */
    int allow_http;                 /* plugstack.conf allow_http=1: pulls may use plain HTTP */
    uid_t uid;
    gid_t gid;
    uint32_t job;
    char *const *env;               /* the job's environment (HOME, SHIMRUN_CACHE, PWD, proxies) */
};

/* 0 and the image's path in `out`, or -1, one line saying why in `why` and the exit code the
 * step's tasks end with in `code` (shim's: 65 no such image file, 64 a name, a pull's own). */
int image_resolve(const struct image_req *r, char *out, size_t outlen, char *why, size_t whylen, int *code);
/* Remove the job's directories of this host's user `uid` (the job epilog); 0 or -1 (reported). */
int image_cleanup(const char *dir, uid_t uid, gid_t gid, uint32_t job);

#endif
