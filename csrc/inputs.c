/* Does everything a record was derived from still hold? Each input is checked the cheapest way
 * that is exact for it: a file by stat(2) (the parts of its identity the planner asked for), a
 * /proc or /sys file by its content (their times say nothing), a directory listing by glob(3),
 * an environment variable by value or presence, the CPUs by sched_getaffinity and the cgroup
 * quota. Nothing is trusted that a record merely claims: a malformed input is a change. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <glob.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"
#include "rd.h"

/* The opened image (image.c): its own path, and for a directory every path below it, are
 * looked at through its descriptor, so a directory swapped in under the name since is not what
 * is checked. A record whose root is a copy of the image (an unpacked SIF: IMAGE_PATH is the
 * copy) still names the image file among its inputs, by the identity IMAGE_FILE holds: that input
 * is the opened file's fstat (copy_fd), never a second look at the name, which may have been
 * swapped since the front-end opened it. */
struct opened {
    int fd;
    const char *path;
    size_t len;
    int dir;
    int copy_fd;              /* the opened image file of a COPY record (-1: none) */
    uint64_t dev, ino;        /* its identity as the record's IMAGE_FILE names it */
};

/* -1 with errno to the caller: a missing input is an answer (ENOENT: "gone"), and any failure
 * there only makes the planner run, which looks again and says more. */
static int stat_input(const struct opened *img, const char *path, int follow, struct stat *st)
{
    if (img->fd >= 0 && !strncmp(path, img->path, img->len) && (path[img->len] == '\0'
                                                                 || (img->dir && path[img->len] == '/'))) {
        const char *rel = path + img->len;
        while (*rel == '/')
            rel++;
        if (!*rel)
            return HANDLED(fstat(img->fd, st)); /* see above */
        return HANDLED(fstatat(img->fd, rel, st, follow ? 0 : AT_SYMLINK_NOFOLLOW)); /* see above */
    }
    return follow ? HANDLED(stat(path, st)) : HANDLED(lstat(path, st)); /* see above */
}

static int file_holds(struct rd *d, const struct opened *img, char *why, size_t whylen)
{
    unsigned check = (unsigned)rd_int(d, 4), mode = (unsigned)rd_int(d, 4);
    uint64_t dev = rd_int(d, 8), ino = rd_int(d, 8), size = rd_int(d, 8);
    int64_t mtime = (int64_t)rd_int(d, 8), ctime = (int64_t)rd_int(d, 8);
    const char *path = rd_str(d);
    struct stat st;
    int rc;

    if (d->bad || d->p != d->end)
        return 0;
    if (img->copy_fd >= 0 && mode && S_ISREG(mode) && dev == img->dev && ino == img->ino)
        rc = HANDLED(fstat(img->copy_fd, &st)); /* as stat_input: a failure is a change */
    else
        rc = stat_input(img, path, (check & SHIM_CHECK_FOLLOW) != 0, &st);
    if (mode == 0) {
        if (rc == 0 || (errno != ENOENT && errno != ENOTDIR)) {
            snprintf(why, whylen, "%s appeared", path);
            return 0;
        }
        return 1;
    }
    if (rc == -1) {
        snprintf(why, whylen, "%s is gone", path);
        return 0;
    }
    if (((check & SHIM_CHECK_TYPE) && (st.st_mode & S_IFMT) != (mode & S_IFMT))
        || ((check & SHIM_CHECK_MODE) && (st.st_mode & 07777) != (mode & 07777))
        || ((check & SHIM_CHECK_ID) && ((uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino))
        || ((check & SHIM_CHECK_SIZE) && (uint64_t)st.st_size != size)
        || ((check & SHIM_CHECK_MTIME) && (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec != mtime)
        || ((check & SHIM_CHECK_CTIME) && (int64_t)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec != ctime)) {
        snprintf(why, whylen, "%s changed", path);
        return 0;
    }
    return 1;
}

static int content_holds(struct rd *d, char *buf, char *why, size_t whylen)
{
    int present = (int)rd_int(d, 1);
    const char *path = rd_str(d);
    size_t want = (size_t)(d->end - d->p), got = 0;
    ssize_t n;
    int fd;

    if (d->bad || want > SHIM_CONTENT_MAX)
        return 0;
    /* as in stat_input: a failure is a changed input, and the planner runs */
    fd = HANDLED(open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (fd < 0) {
        if (present)
            snprintf(why, whylen, "%s is gone", path);
        else
            return 1;
        return 0;
    }
    /* as above: a read that fails leaves the content short, a change */
    while (got <= want && (n = HANDLED(read(fd, buf + got, SHIM_CONTENT_MAX + 1 - got))) > 0)
        got += (size_t)n;
    close(fd);
    if (!present || got != want || memcmp(buf, d->p, want)) {
        snprintf(why, whylen, "%s changed", path);
        return 0;
    }
    return 1;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The sorted matches of a pattern as NUL-terminated names one after the other. */
int shim_glob(const char *pattern, char *out, size_t outlen)
{
    glob_t g;
    size_t i, used = 0;
    int rc = glob(pattern, GLOB_NOSORT, NULL, &g);

    if (rc == GLOB_NOMATCH || rc == GLOB_ABORTED)
        return 0;
    if (rc)
        return -1;
    qsort(g.gl_pathv, g.gl_pathc, sizeof *g.gl_pathv, cmp_str);
    for (i = 0; i < g.gl_pathc; i++) {
        size_t n = strlen(g.gl_pathv[i]) + 1;
        if (used + n > outlen) {
            globfree(&g);
            return -1;
        }
        memcpy(out + used, g.gl_pathv[i], n);
        used += n;
    }
    globfree(&g);
    return (int)used;
}

static int glob_holds(struct rd *d, char *buf, char *why, size_t whylen)
{
    const char *pattern = rd_str(d);
    size_t want = (size_t)(d->end - d->p);
    int got;

    if (d->bad)
        return 0;
    got = shim_glob(pattern, buf, SHIM_CONTENT_MAX);
    if (got < 0 || (size_t)got != want || memcmp(buf, d->p, want)) {
        snprintf(why, whylen, "what %s matches changed", pattern);
        return 0;
    }
    return 1;
}

static int env_holds(struct rd *d, char *const *environ, char *why, size_t whylen)
{
    int how = (int)rd_int(d, 1), expect = (int)rd_int(d, 1), now = 0;
    const char *name = rd_str(d), *value = rd_str(d), *v;
    size_t n = strlen(name);
    char *const *e;

    if (d->bad || d->p != d->end)
        return 0;
    switch (how) {
    case SHIM_ENVHOW_VALUE:
        v = shim_env_get(environ, name);
        now = expect ? v && !strcmp(v, value) : !v;
        break;
    case SHIM_ENVHOW_NONEMPTY:
        v = shim_env_get(environ, name);
        now = (v && *v) == expect;
        break;
    case SHIM_ENVHOW_PREFIX:
        for (e = environ; e && *e && !now; e++)
            now = !strncmp(*e, name, n) && strchr(*e, '=');
        now = now == expect;
        break;
    default: return 0;
    }
    if (!now)
        snprintf(why, whylen, "the environment variable %s%s changed", name, how == SHIM_ENVHOW_PREFIX ? "*" : "");
    return now;
}

static int cpus_holds(struct rd *d, char *why, size_t whylen)
{
    unsigned allowed = (unsigned)rd_int(d, 4);
    const char *root = rd_str(d), *quota = rd_str(d);
    char now[64];
    cpu_set_t set;

    if (d->bad || d->p != d->end)
        return 0;
    /* CPUs that cannot be read are a change too: the planner runs */
    if (allowed && (HANDLED(sched_getaffinity(0, sizeof set, &set)) == -1 || (unsigned)CPU_COUNT(&set) != allowed)) {
        snprintf(why, whylen, "the CPUs this job may use changed");
        return 0;
    }
    shim_cgroup_quota(root, 0, now, sizeof now);
    if (strcmp(now, quota)) {
        snprintf(why, whylen, "the cgroup CPU quota changed");
        return 0;
    }
    return 1;
}

int shim_inputs_hold(const struct shim_rec *r, char *const *environ, int image_fd, char *why, size_t whylen)
{
    struct opened img = {shim_image_root_fd(r, image_fd), r->cfg.image_path, 0, S_ISDIR(r->image_file.mode),
                         -1, r->image_file.dev, r->image_file.ino};
    char *buf = NULL;
    int i, ok = 1;

    if (img.fd >= 0 && img.path)
        img.len = strlen(img.path);
    else
        img.fd = -1;
    if (r->image_file.present && r->image_file.source == SHIM_IMAGE_SOURCE_COPY && image_fd >= 0)
        img.copy_fd = image_fd;

    for (i = 0; i < r->ninputs && ok; i++) {
        const struct shim_field *f = &r->inputs[i];
        struct rd d = {f->p, f->p + f->len, 0};
        snprintf(why, whylen, "a malformed input");
        if ((f->tag == SHIM_R_INPUT_CONTENT || f->tag == SHIM_R_INPUT_GLOB) && !buf
            && ZRP(buf = malloc(SHIM_CONTENT_MAX + 1), why, whylen, "allocate room to compare an input"))
            return 0;
        switch (f->tag) {
        case SHIM_R_INPUT_FILE: ok = file_holds(&d, &img, why, whylen); break;
        case SHIM_R_INPUT_CONTENT: ok = content_holds(&d, buf, why, whylen); break;
        case SHIM_R_INPUT_GLOB: ok = glob_holds(&d, buf, why, whylen); break;
        case SHIM_R_INPUT_ENV: ok = env_holds(&d, environ, why, whylen); break;
        case SHIM_R_INPUT_CPUS: ok = cpus_holds(&d, why, whylen); break;
        default: ok = 0;
        }
    }
    free(buf);
    return ok;
}
