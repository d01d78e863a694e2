/* The per-user cache: where it is, and what in it may be trusted (shim/cachefiles.py explains
 * the policy; this is its one implementation, used by the planner through cffi and by the
 * front-end for launch records). Whoever can write a cache decides what runs: a file is trusted
 * only if it and every directory above it, up to the cache root, are this user's, not writable
 * by group or others, no symlink, and the file has no other hard link. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

/* $SHIMRUN_CACHE, else $XDG_CACHE_HOME/shim, else ~/.cache/shim; a relative one is ignored (it
 * would put the cache wherever the job happens to run). */
static void cache_base(char *out, size_t len)
{
    const char *given = getenv("SHIMRUN_CACHE"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    struct passwd *pw;

    if (given && given[0] == '/') {
        snprintf(out, len, "%s", given);
        return;
    }
    if (xdg && xdg[0] == '/') {
        snprintf(out, len, "%s/shim", xdg);
        return;
    }
    if (!home || home[0] != '/')
        home = (pw = getpwuid(getuid())) ? pw->pw_dir : "/";
    snprintf(out, len, "%s/.cache/shim", strcmp(home, "/") ? home : "");
}

static void make_dirs(const char *path)
{
    char p[PATH_MAX], *s;
    snprintf(p, sizeof p, "%s", path);
    for (s = p + 1; (s = strchr(s, '/')); s++) {
        *s = '\0';
        BEST_EFFORT(mkdir(p, 0777)); /* intermediate ones as mkdir -p makes them; failures show at the lstat */
        *s = '/';
    }
    BEST_EFFORT(mkdir(p, 0700)); /* as above: the lstat after it says what is wrong */
}

static const char *private_problem(const struct stat *st)
{
    static char owner[64];
    if (!S_ISDIR(st->st_mode))
        return "is not a directory";
    if (st->st_uid != geteuid()) {
        snprintf(owner, sizeof owner, "belongs to uid %u", (unsigned)st->st_uid);
        return owner;
    }
    if (st->st_mode & 022)
        return "is writable by group or others";
    return NULL;
}

int shim_cache_root(int create, char *out, size_t outlen, char *problem, size_t plen)
{
    char base[PATH_MAX], real[PATH_MAX], priv[PATH_MAX + 32];
    const char *why;
    struct stat st, pst;

    cache_base(base, sizeof base);
    if (create)
        make_dirs(base);
    /* The planner names files by the real path; the front-end, which only reads, need not
     * resolve it (the same files; what is above the root is not checked either way). */
    /* the user's words below: the cache they named cannot be used */
    if ((create ? !HANDLED(realpath(base, real)) : snprintf(real, sizeof real, "%s", base) < 0)
        || HANDLED(lstat(real, &st)) == -1) {
        snprintf(problem, plen, "%s: %s", base, strerror(errno));
        return -1;
    }
    if (!(why = private_problem(&st))) {
        snprintf(out, outlen, "%s", real);
        return 0;
    }
    if (!(S_ISDIR(st.st_mode) && (st.st_mode & S_ISVTX))) {
        snprintf(problem, plen, "%s %s", base, why);
        return -1;
    }
    /* A shared sticky directory (like /tmp): others cannot remove or replace what we make in it. */
    snprintf(priv, sizeof priv, "%s/.shim-%u", real, (unsigned)geteuid());
    if (create)
        BEST_EFFORT(mkdir(priv, 0700)); /* as in make_dirs: the lstat after it says what is wrong */
    /* the user's words below */
    if (HANDLED(lstat(priv, &pst)) == -1 || S_ISLNK(pst.st_mode) || private_problem(&pst)) {
        snprintf(problem, plen, "%s %s, and %s is not a private directory of yours", base, why, priv);
        return -1;
    }
    snprintf(out, outlen, "%s", priv);
    snprintf(problem, plen, "%s %s", base, why);
    return 1;
}

static int under(const char *path, const char *root)
{
    size_t n = strlen(root);
    return !strncmp(path, root, n) && path[n] == '/';
}

int shim_cache_untrusted(const char *path, const char *root, int leaf_is_file, char *why, size_t whylen)
{
    char top[PATH_MAX], p[PATH_MAX], *slash;
    struct stat st;
    int leaf = 1;

    if (!root || !under(path, root)) { /* a file given outside the cache: up to its own directory */
        snprintf(top, sizeof top, "%s", path);
        slash = strrchr(top, '/');
        if (slash && slash != top)
            *slash = '\0';
        else
            snprintf(top, sizeof top, "/");
    } else {
        snprintf(top, sizeof top, "%s", root);
    }
    snprintf(p, sizeof p, "%s", path);
    for (;;) {
        if (HANDLED(lstat(p, &st)) == -1) { /* ENOENT of the leaf: nothing to trust; else why, below */
            if (errno == ENOENT && leaf)
                return 0; /* nothing there: nothing to trust */
            snprintf(why, whylen, "%s: %s", p, errno == ENOENT ? "is missing" : strerror(errno));
            return 1;
        }
        if (S_ISLNK(st.st_mode)) {
            snprintf(why, whylen, "%s is a symlink", p);
            return 1;
        }
        if (st.st_uid != geteuid()) {
            snprintf(why, whylen, "%s belongs to uid %u", p, (unsigned)st.st_uid);
            return 1;
        }
        if (st.st_mode & 022) {
            snprintf(why, whylen, "%s is writable by group or others", p);
            return 1;
        }
        if (leaf && leaf_is_file && (!S_ISREG(st.st_mode) || st.st_nlink != 1)) {
            snprintf(why, whylen, "%s is not a plain file of its own (a hard link, or not a regular file)", p);
            return 1;
        }
        if (!strcmp(p, top))
            return 0;
        slash = strrchr(p, '/');
        if (!slash || slash == p || !under(p, top)) {
            snprintf(why, whylen, "%s is outside the cache %s", path, top);
            return 1;
        }
        *slash = '\0';
        leaf = 0;
    }
}

char *shim_cache_read(const char *path, const char *root, size_t *len, char *why, size_t whylen)
{
    char dir[PATH_MAX], *slash;
    struct stat st = {0};
    char *buf;
    size_t got = 0;
    ssize_t n;
    int fd;

    /* The directories up to the root as untrusted() checks them; the file itself through the fd
     * it is read from (O_NOFOLLOW: not a symlink), so what is checked is what is read. */
    snprintf(dir, sizeof dir, "%s", path);
    slash = strrchr(dir, '/');
    if (!slash || !under(path, root)) {
        snprintf(why, whylen, "%s is outside the cache %s", path, root);
        return NULL;
    }
    *slash = '\0';
    if (strcmp(dir, root) && shim_cache_untrusted(dir, root, 0, why, whylen))
        return NULL;
    /* errno says why, below: none there (ENOENT), a symlink (ELOOP), another user's */
    fd = HANDLED(open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (fd < 0) {
        int err = errno;
        if (err == ELOOP)
            snprintf(why, whylen, "%s is a symlink", path);
        /* only to say whose it is: else the open's own error below */
        else if (err == EACCES && HANDLED(lstat(path, &st)) == 0 && st.st_uid != geteuid())
            snprintf(why, whylen, "%s belongs to uid %u", path, (unsigned)st.st_uid);
        else if ((errno = err))
            snprintf(why, whylen, errno == ENOENT ? "none" : "%s: %s", path, strerror(errno));
        return NULL;
    }
    /* what cannot be looked at is not trusted: why, below */
    if (HANDLED(fstat(fd, &st)) == -1 || !S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != geteuid()
        || (st.st_mode & 022) || st.st_size > SHIM_RECORD_MAX) {
        if (st.st_uid != geteuid())
            snprintf(why, whylen, "%s belongs to uid %u", path, (unsigned)st.st_uid);
        else
            snprintf(why, whylen, "%s is not a private plain file of its own", path);
        close(fd);
        return NULL;
    }
    if (ZRP(buf = malloc((size_t)st.st_size + 1), why, whylen, "allocate room for %s", path)) {
        close(fd);
        return NULL;
    }
    /* a failed read is a short one: "short read", below */
    while (got < (size_t)st.st_size && (n = HANDLED(read(fd, buf + got, (size_t)st.st_size - got))) > 0)
        got += (size_t)n;
    close(fd);
    if (got != (size_t)st.st_size) {
        snprintf(why, whylen, "%s: short read", path);
        free(buf);
        return NULL;
    }
    *len = got;
    return buf;
}
