/* `shimrun`, native front-end and the launch executor.
 *
 * A launch (IMAGE COMMAND with options we know) first finds its place in a node's shared
 * container when there is one (share.c: join it, or lead it). Then the launch record: from the
 * planner on SHIMRUN_RECORD_FD (it just planned this launch and exec'd us), or from the per-user
 * cache, under the key of this command line, if it is trusted, of this build, and every input it
 * lists still holds. The record is run by executor.c: no Python is started. Anything else (no
 * record, a changed input, a subcommand, an option we do not know) goes to the planner with the
 * same arguments: SHIM_PYTHON -I -c "...entry()" ARGS, which writes a record and execs us again. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

#ifndef SHIM_PYTHON
#define SHIM_PYTHON "/usr/bin/python3"
#endif

extern char **environ;

/* The planner. `listen_fd`: the group socket this rank bound as the node's leader; `image_fd`:
 * the image as this process opened it, which the planner judges and hands back (-1: none). */
static void python(int argc, char **argv, int listen_fd, int image_fd) __attribute__((noreturn));
static void python(int argc, char **argv, int listen_fd, int image_fd)
{
    char **args, num[16];
    int i;

    /* Nothing to unwind to in main: a failure is reported on stderr and ends shimrun. */
    ZXP(args = calloc((size_t)argc + 4, sizeof *args), "allocate arguments");
    /* The election is done (the planner must not hold a second one); Python sets LC_CTYPE when
     * the locale is C (PEP 538), which must not reach the app: say whether it was set. */
    ZX(setenv(SHIM_VAR_FRONTEND, getenv("LC_CTYPE") ? "elected" : "elected,no-lc-ctype", 1), "set %s",
           SHIM_VAR_FRONTEND);
    if (listen_fd >= 0) {
        snprintf(num, sizeof num, "%d", listen_fd);
        ZX(setenv(SHIM_VAR_LISTEN_FD, num, 1), "set %s", SHIM_VAR_LISTEN_FD);
    }
    if (image_fd >= 0) { /* inherited by the planner alone */
        ZX(fcntl(image_fd, F_SETFD, 0), "hand the image's descriptor to the planner");
        snprintf(num, sizeof num, "%d", image_fd);
        ZX(setenv(SHIM_VAR_IMAGE_FD, num, 1), "set %s", SHIM_VAR_IMAGE_FD);
    }
    /* -I: isolated, so neither PYTHON* variables nor a shim/ directory where the job happens to
     * run can change which code runs; -c instead of -m spares runpy. */
    args[0] = (char *)SHIM_PYTHON;
    args[1] = (char *)"-I";
    args[2] = (char *)"-c";
    args[3] = (char *)"from shim.cli.main import entry; entry()";
    for (i = 1; i < argc; i++)
        args[i + 3] = argv[i];
    execv(SHIM_PYTHON, args);
    fprintf(stderr, "shimrun: error: cannot run %s: %s (reinstall shim: scripts/install.sh)\n", SHIM_PYTHON,
            strerror(errno));
    exit(SHIM_E_LAUNCH);
}

static char *take_env(const char *name)
{
    char *v = getenv(name);
    if (v)
        ZXP(v = strdup(v), "copy %s", name);
    ZX(unsetenv(name), "unset %s", name);
    return v;
}

/* A descriptor number handed over in the environment, if it is one this process has open. */
static int handed_fd(const char *text)
{
    char *end;
    long fd = text ? strtol(text, &end, 10) : -1;
    /* EBADF: not open here, so not handed over */
    if (!text || !*text || *end || fd < 3 || fd > INT_MAX || HANDLED(fcntl((int)fd, F_GETFD)) == -1)
        return -1;
    return (int)fd;
}

static char *read_fd(int fd, size_t *len)
{
    size_t cap = 1 << 16, got = 0;
    char *buf = HANDLED(malloc(cap)); /* NULL with errno: the caller's report */
    ssize_t n;

    /* -1 with errno (not EINTR): NULL, the caller's report */
    while (buf && (n = HANDLED(pread(fd, buf + got, cap - got, (off_t)got))) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            free(buf);
            return NULL;
        }
        got += (size_t)n;
        if (got == cap) {
            char *more = cap >= SHIM_RECORD_MAX ? NULL : HANDLED(realloc(buf, cap *= 2)); /* as above */
            if (!more)
                free(buf);
            buf = more;
        }
    }
    close(fd);
    *len = got;
    return buf;
}

static int has_option(int image, char **argv, const char *name)
{
    int i;
    for (i = 1; i < image; i++)
        if (!strcmp(argv[i], name))
            return 1;
    return 0;
}

static int run(const char *data, size_t len, const struct shim_run *r)
{
    struct shim_rec rec;
    struct shim_result res = {0};
    char why[256] = "";

    if (shim_rec_parse(data, len, &rec, why, sizeof why) || !shim_rec_complete(&rec, why, sizeof why)
        || strcmp(rec.version, shim_build_id())) {
        fprintf(stderr, "shimrun: internal error: the planner's launch record is unusable: %s (reinstall shim: "
                "scripts/install.sh)\n", rec.mem && !strcmp(why, "") ? "another build wrote it" : why);
        return SHIM_E_INTERNAL;
    }
    shim_execute(&rec, r, &res);
    fprintf(stderr, "shimrun: error: %s\n", res.message);
    return res.code ? res.code : SHIM_E_LAUNCH;
}

/* The cached record of this launch, if it may be run (on the image r->image_fd, as opened):
 * NULL otherwise (why says). */
static char *cached_record(struct shim_run *r, size_t *len, char *root, size_t rootlen, int *shared, char *why,
                           size_t whylen)
{
    char key[33], path[PATH_MAX + 64], problem[PATH_MAX + 128];
    char *data;
    int rc;
    const char *off = getenv(SHIM_VAR_NO_RECORD_CACHE);

    if (off && *off) {
        snprintf(why, whylen, "%s is set", SHIM_VAR_NO_RECORD_CACHE);
        return NULL;
    }
    if ((rc = shim_cache_root(0, root, rootlen, problem, sizeof problem)) < 0) {
        snprintf(why, whylen, "no cache: %s", problem);
        return NULL;
    }
    *shared = rc == 1;
    if (*shared)
        snprintf(root + strlen(root), rootlen - strlen(root), "%c%s", 0, problem); /* kept for the notice */
    shim_record_key(r->argc, r->argv, r->image, r->cwd, environ, key);
    snprintf(path, sizeof path, "%s/%s/%s.rec", root, SHIM_RECORDS_DIR, key);
    if (!(data = shim_cache_read(path, root, len, why, whylen)))
        return NULL;
    if (!shim_record_current_on(data, *len, key, environ, r->image_fd, why, whylen)) {
        free(data);
        return NULL;
    }
    return data;
}

int main(int argc, char **argv)
{
    struct shim_run r = {argc, argv, -1, NULL, NULL, -1, 0, -1};
    struct shim_result res = {0};
    char cwd[PATH_MAX], root[2 * PATH_MAX + 256], why[PATH_MAX + 256], *recfd, *flags, *listen, *imgfd, *data;
    int debug, shared = 0;
    size_t len;

    if (shim_standard_fds() < 0) {
        perror("shimrun: error: open /dev/null for a closed standard descriptor");
        return SHIM_E_LAUNCH;
    }
    recfd = take_env(SHIM_VAR_RECORD_FD);
    flags = take_env(SHIM_VAR_FRONTEND);
    listen = take_env(SHIM_VAR_LISTEN_FD);
    imgfd = take_env(SHIM_VAR_IMAGE_FD);
    r.image = argc > 1 ? shim_image_index(argc, argv) : -1;
    /* IMAGE COMMAND, or run IMAGE: something to run */
    /* no working directory to name (deleted): the planner says what it makes of that */
    if (r.image < 0 || (r.image + 1 >= argc && strcmp(argv[1], SHIM_RUN_VERB)) || !HANDLED(getcwd(cwd, sizeof cwd)))
        python(argc, argv, -1, -1);
    r.cwd = cwd;
    r.environ = environ;
    debug = has_option(r.image, argv, "--debug");
    if (flags) {
        r.listen_fd = handed_fd(listen); /* the planner passes on what the first front-end elected */
    } else if (shim_share_elect(argc, argv, r.image, cwd, &r.listen_fd, &res)) {
        fprintf(stderr, "shimrun: error: %s\n", res.message);
        return res.code;
    }
    if (recfd && handed_fd(recfd) >= 0) {
        /* the planner's record, planned on the image it opened (or this front-end's first run did) */
        if ((r.image_fd = handed_fd(imgfd)) >= 0)
            ZX(fcntl(r.image_fd, F_SETFD, FD_CLOEXEC), "keep the image's descriptor from the app");
        data = read_fd(handed_fd(recfd), &len);
        if (!data) {
            fprintf(stderr, "shimrun: internal error: cannot read the planner's launch record: %s\n", strerror(errno));
            return SHIM_E_INTERNAL;
        }
        return run(data, len, &r);
    }
    /* The image is opened once, here: the record runs only on this very file, and the planner,
     * when there is no record to run, judges this same descriptor. */
    r.image_fd = shim_image_open(argv[r.image], why, sizeof why);
    data = r.image_fd >= 0 ? cached_record(&r, &len, root, sizeof root, &shared, why, sizeof why) : NULL;
    if (data) {
        r.from_cache = 1;
        if (debug)
            fprintf(stderr, "shimrun: debug: launch record from the cache (no Python)\n");
        if (shared && !has_option(r.image, argv, "--quiet"))
            fprintf(stderr, "shimrun: notice: the cache %s: using %s, a private directory in it\n",
                    root + strlen(root) + 1, root);
        return run(data, len, &r);
    }
    if (debug)
        fprintf(stderr, "shimrun: debug: no launch record to run (%s): planning\n", why);
    python(argc, argv, r.listen_fd, r.image_fd);
}
