/* See image.h. Everything that touches the user's files runs in a child that has become the
 * user entirely (setresuid), never as root: the job's directory is the user's to fill. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "gen/codes.h"
#include "image.h"

/* The child's answer on the pipe: 'P' and the path, or 'E' and the one line. */
struct answer {
    int fd;
};

/* shim's exit codes, from their one definition (shim/errors.py, written by shim/cgen.py). */
enum { E_USAGE = SHIM_E_USAGE, E_IMAGE = SHIM_E_IMAGE, E_LAUNCH = SHIM_E_LAUNCH };

__attribute__((format(printf, 3, 4), noreturn))
static void fail(const struct answer *ans, int code, const char *fmt, ...)
{
    char buf[2048];
    int n = snprintf(buf, sizeof buf, "E%d ", code);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    BEST_EFFORT(write(ans->fd, buf, strlen(buf)));  /* the parent says "no answer" otherwise */
    _exit(1);
}

static const char *env_get(char *const *env, const char *name)
{
    size_t n = strlen(name);

    for (; env && *env; env++)
        if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
            return *env + n + 1;
    return NULL;
}

static void become_user(const struct answer *ans, uid_t uid, gid_t gid)
{
    /* slurmstepd runs user_init with the user's groups and effective ids and root's real and
     * saved ones; root (the epilog) sets the groups itself. */
    if (geteuid() == 0 && SZ(setgroups(1, &gid), "setgroups"))
        fail(ans, E_LAUNCH, "cannot drop to the job's groups");
    if (SZ(setresgid(gid, gid, gid), "setresgid") || SZ(setresuid(uid, uid, uid), "setresuid"))
        fail(ans, E_LAUNCH, "cannot become the job's user %u", (unsigned)uid);
}

/* DIR/shim-pyxis.UID: made private, and refused unless it is this user's own and private
 * (in a shared /tmp anyone could have made it first). */
static void user_dir(const struct answer *ans, const char *dir, char *out, size_t len)
{
    struct stat st;

    snprintf(out, len, "%s/shim-pyxis.%u", dir, (unsigned)getuid());
    if (mkdir(out, 0700) == -1 && errno != EEXIST)
        fail(ans, E_LAUNCH, "cannot make %s: %s", out, strerror(errno));
    if (lstat(out, &st) == -1)
        fail(ans, E_LAUNCH, "cannot stat %s: %s", out, strerror(errno));
    if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077))
        fail(ans, E_LAUNCH, "%s is not a private directory of yours: remove it (the site's dir= in plugstack.conf)", out);
}

static void job_dir(const struct answer *ans, const struct image_req *r, char *out, size_t len)
{
    char base[PATH_MAX], host[256] = "";
    int n;

    user_dir(ans, r->dir, base, sizeof base);
    BEST_EFFORT(gethostname(host, sizeof host - 1));  /* "" names the directory as well */
    n = snprintf(out, len, "%s/%u.%s", base, r->job, host);
    if (n < 0 || (size_t)n >= len)
        fail(ans, E_LAUNCH, "the job's directory under %s is too long", base);
    if (mkdir(out, 0700) == -1 && errno != EEXIST)
        fail(ans, E_LAUNCH, "cannot make %s: %s", out, strerror(errno));
}

/* pyxis's spelling of a registry image -> shimrun pull's: REGISTRY#IMAGE[:TAG] ->
 * docker://REGISTRY/IMAGE[:TAG]; IMAGE[:TAG] -> docker://IMAGE[:TAG]; docker://... as it is. */
static void pull_source(const char *image, char *out, size_t len)
{
    const char *hash = strchr(image, '#');

    if (strncmp(image, "docker://", 9) == 0)
        snprintf(out, len, "%s", image);
    else if (hash)
        snprintf(out, len, "docker://%.*s/%s", (int)(hash - image), image, hash + 1);
    else
        snprintf(out, len, "docker://%s", image);
}

/* A file name for a source: its safe characters and a hash of the whole (FNV-1a). */
static void sif_name(const char *source, char *out, size_t len)
{
    unsigned long long h = 1469598103934665603ULL;
    size_t i = 0;

    for (const char *c = source; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ULL;
    for (const char *c = source + 9; *c && i + 1 < len && i < 80; c++, i++)
        out[i] = ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.'
                  || *c == '-') ? *c : '_';
    snprintf(out + i, len - i, "-%016llx.sif", h);
}

/* Run shimrun pull; its last stderr line is the reason when it fails. */
static void pull(const struct answer *ans, const struct image_req *r, const char *source, const char *sif)
{
    char err[4096] = "", *last;
    const char *argv[8];
    int pfd[2], st, n = 0, i = 0;
    ssize_t got;
    pid_t pid;

    argv[i++] = r->shimrun;
    argv[i++] = "pull";
    argv[i++] = "-q";
    if (r->allow_http)
        argv[i++] = "--no-https";
    argv[i++] = sif;
    argv[i++] = source;
    argv[i] = NULL;
    if (SZ(pipe2(pfd, O_CLOEXEC), "pipe2") || SZ(pid = fork(), "fork"))
        fail(ans, E_LAUNCH, "cannot start shimrun pull");
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(pfd[1], 2) < 0)
            _exit(71);
        execve(r->shimrun, (char *const *)argv, r->env);
        dprintf(2, "cannot run %s: %s\n", r->shimrun, strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    while ((got = read(pfd[0], err + n, sizeof err - 1 - (size_t)n)) > 0)
        n += (int)got;
    err[n] = '\0';
    if (SZ(waitpid(pid, &st, 0), "waitpid"))
        fail(ans, E_LAUNCH, "lost shimrun pull");
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return;
    while (n > 0 && err[n - 1] == '\n')
        err[--n] = '\0';
    last = strrchr(err, '\n');
    fail(ans, WIFEXITED(st) ? WEXITSTATUS(st) : E_LAUNCH, "pulling %s failed: %s", source, last ? last + 1 : *err ? err : "(no message)");
}

static void resolve_reference(const struct answer *ans, const struct image_req *r, const char *dir, char *out,
                              size_t len)
{
    char source[4096], name[160], lock[PATH_MAX + 16];
    int fd;

    pull_source(r->image, source, sizeof source);
    sif_name(source, name, sizeof name);
    snprintf(out, len, "%s/%s", dir, name);
    snprintf(lock, sizeof lock, "%s/.lock", dir);
    /* Steps of one job starting at once on the node (and nodes sharing this host) pull once:
     * the first holds the lock, the others find its SIF. */
    if ((fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0 || flock(fd, LOCK_EX) < 0)
        fail(ans, E_LAUNCH, "cannot lock %s: %s", lock, strerror(errno));
    if (access(out, R_OK) != 0)
        pull(ans, r, source, out);
    close(fd);
}

static void resolve_path(const struct answer *ans, const struct image_req *r, char *out, size_t len)
{
    const char *pwd = env_get(r->env, "PWD");
    struct stat st;

    if (r->image[0] == '/')
        snprintf(out, len, "%s", r->image);
    else
        snprintf(out, len, "%s/%s", pwd ? pwd : "", r->image);
    if (stat(out, &st) == -1)
        fail(ans, E_IMAGE, "--container-image: %s: %s (a SIF, a squashfs file or a directory on this node)", out,
             strerror(errno));
}

/* The named container's record, DIR/names/NAME: the image's path, one line. */
static int read_name(const char *file, char *out, size_t len)
{
    FILE *f = fopen(file, "re");
    int ok;

    if (!f)
        return -1;
    ok = fgets(out, (int)len, f) != NULL;
    fclose(f);
    out[strcspn(out, "\n")] = '\0';
    return ok && *out ? 0 : -1;
}

static void write_name(const struct answer *ans, const char *file, const char *path)
{
    char tmp[2 * PATH_MAX];
    FILE *f;

    snprintf(tmp, sizeof tmp, "%s.%d", file, (int)getpid());
    if (!(f = fopen(tmp, "we")) || fprintf(f, "%s\n", path) < 0 || fclose(f) != 0 || rename(tmp, file) != 0)
        fail(ans, E_LAUNCH, "cannot record the container's name in %s: %s", file, strerror(errno));
}

static void resolve_child(const struct answer *ans, const struct image_req *r)
{
    char dir[PATH_MAX] = "", names[PATH_MAX + 8], file[PATH_MAX + 300], path[PATH_MAX + 300];
    struct stat st;
    char host[256] = "?";

    become_user(ans, r->uid, r->gid);
    BEST_EFFORT(gethostname(host, sizeof host - 1));  /* only named in a message */
    if (r->name || (r->image && r->image[0] != '/' && r->image[0] != '.'))
        job_dir(ans, r, dir, sizeof dir);
    if (r->name) {
        snprintf(names, sizeof names, "%s/names", dir);
        if (mkdir(names, 0700) == -1 && errno != EEXIST)
            fail(ans, E_LAUNCH, "cannot make %s: %s", names, strerror(errno));
        snprintf(file, sizeof file, "%s/%s", names, r->name);
        if (read_name(file, path, sizeof path) == 0) {
            if (strcmp(r->name_flag, "create") == 0)
                fail(ans, E_USAGE, "--container-name: a container named %s exists in job %u on %s (flag create)", r->name,
                     r->job, host);
            if (stat(path, &st) == -1)
                fail(ans, E_IMAGE, "--container-name: %s's image %s is gone: %s", r->name, path, strerror(errno));
            dprintf(ans->fd, "P%s", path);
            _exit(0);
        }
        if (!r->image)
            fail(ans, E_USAGE, "--container-name: no container named %s in job %u on %s: give --container-image too", r->name,
                 r->job, host);
    }
    if (r->image[0] == '/' || r->image[0] == '.')
        resolve_path(ans, r, path, sizeof path);
    else
        resolve_reference(ans, r, dir, path, sizeof path);
    if (r->name)
        write_name(ans, file, path);
    dprintf(ans->fd, "P%s", path);
    _exit(0);
}

int image_resolve(const struct image_req *r, char *out, size_t outlen, char *why, size_t whylen, int *code)
{
    char buf[PATH_MAX + 2048];
    int pfd[2], st;
    size_t n = 0;
    ssize_t got;
    pid_t pid;

    *code = E_LAUNCH;
    if (SZ(pipe2(pfd, O_CLOEXEC), "pipe2") || SZ(pid = fork(), "fork"))
        return snprintf(why, whylen, "cannot start the image's resolution"), -1;
    if (pid == 0) {
        struct answer ans = {pfd[1]};
        close(pfd[0]);
        resolve_child(&ans, r);
    }
    close(pfd[1]);
    while (n + 1 < sizeof buf && (got = read(pfd[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)got;
    buf[n] = '\0';
    close(pfd[0]);
    if (SZ(waitpid(pid, &st, 0), "waitpid"))
        return snprintf(why, whylen, "lost the image's resolution"), -1;
    if (buf[0] == 'P' && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        if (n > outlen)
            return snprintf(why, whylen, "the image's path is too long"), -1;
        snprintf(out, outlen, "%s", buf + 1);
        return 0;
    }
    if (buf[0] == 'E' && sscanf(buf + 1, "%d", code) == 1 && strchr(buf, ' ')) {
        snprintf(why, whylen, "%s", strchr(buf, ' ') + 1);
        return -1;
    }
    snprintf(why, whylen, "the image's resolution ended without an answer");
    return -1;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)ftw;
    BEST_EFFORT(flag == FTW_DP ? rmdir(path) : unlink(path));  /* what is left is reported below */
    return 0;
}

int image_cleanup(const char *dir, uid_t uid, gid_t gid, uint32_t job)
{
    char base[PATH_MAX], prefix[32], path[PATH_MAX + 300];
    int st, left = 0;
    struct dirent *e;
    DIR *d;
    pid_t pid;

    if (SZ(pid = fork(), "fork"))
        return -1;
    if (pid == 0) {
        struct answer ans = {2};
        become_user(&ans, uid, gid);
        snprintf(base, sizeof base, "%s/shim-pyxis.%u", dir, (unsigned)uid);
        snprintf(prefix, sizeof prefix, "%u.", job);
        if (!(d = opendir(base)))
            _exit(0);  /* the user never ran a container that needed it */
        while ((e = readdir(d)))
            if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
                snprintf(path, sizeof path, "%s/%s", base, e->d_name);
                nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
                left |= access(path, F_OK) == 0;
            }
        closedir(d);
        _exit(left);
    }
    if (SZ(waitpid(pid, &st, 0), "waitpid"))
        return -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : SFAIL("job %u's directory under %s/shim-pyxis.%u is left", job,
                                                               dir, (unsigned)uid);
}
