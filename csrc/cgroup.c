/* The strictest CPU quota of a process's cgroups: cgroup v2 cpu.max ("QUOTA PERIOD", "max"
 * unlimited) at its cgroup and every ancestor (a limit above applies too), under both the
 * unified mount and a hybrid host's unified/; cgroup v1 cpu.cfs_quota_us / cpu.cfs_period_us.
 * One definition for the planner's host facts (shim/host/cpu.py) and a record's CPU input. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

static int slurp(const char *path, char *buf, size_t len)
{
    int fd = HANDLED(open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)); /* unreadable: no quota known here */
    size_t got = 0;
    ssize_t n;

    if (fd < 0)
        return -1;
    while (got + 1 < len && (n = HANDLED(read(fd, buf + got, len - 1 - got))) > 0) /* unreadable: no quota known here */
        got += (size_t)n;
    close(fd);
    buf[got] = '\0';
    return (int)got;
}

/* A whole decimal integer, surrounding space allowed (Python's int() on the file's text). */
static int whole_int(const char *s, long long *v)
{
    char *end;
    while (*s == ' ' || *s == '\t' || *s == '\n')
        s++;
    if (!*s)
        return 0;
    *v = strtoll(s, &end, 10);
    if (end == s)
        return 0;
    while (*end == ' ' || *end == '\t' || *end == '\n')
        end++;
    return *end == '\0';
}

static void take(double q, double *best, int *have)
{
    if (!*have || q < *best)
        *best = q;
    *have = 1;
}

static void v2_quota(const char *file, double *best, int *have)
{
    char text[256], a[128], b[128], extra[8];
    long long q, p;
    if (slurp(file, text, sizeof text) < 0 || sscanf(text, "%127s %127s %7s", a, b, extra) != 2 || !strcmp(a, "max"))
        return;
    if (whole_int(a, &q) && whole_int(b, &p) && p != 0)
        take((double)q / (double)p, best, have);
}

static void v1_quota(const char *dir, double *best, int *have)
{
    char path[2 * PATH_MAX + 64], qs[64], ps[64];
    long long q, p;
    snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
    if (slurp(path, qs, sizeof qs) < 0)
        return;
    snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
    if (slurp(path, ps, sizeof ps) < 0)
        return;
    if (whole_int(qs, &q) && whole_int(ps, &p) && q > 0 && p > 0)
        take((double)q / (double)p, best, have);
}

/* Each ancestor of `path` (from itself up to the root), normalised as "a/b" without "..". */
static void ancestors(const char *mount, const char *path, int v2, double *best, int *have)
{
    char parts[PATH_MAX], dir[2 * PATH_MAX + 16], file[2 * PATH_MAX + 32];
    char *seg[PATH_MAX / 2], *save = NULL, *t;
    int n = 0, level, i;
    struct stat st;

    if (HANDLED(stat(mount, &st)) == -1) /* nothing mounted there: nothing to read under it */
        return;
    snprintf(parts, sizeof parts, "%s", path);
    for (t = strtok_r(parts, "/", &save); t && n < (int)(sizeof seg / sizeof *seg); t = strtok_r(NULL, "/", &save))
        if (strcmp(t, ".."))
            seg[n++] = t;
    for (level = n; level >= 0; level--) {
        size_t len = (size_t)snprintf(dir, sizeof dir, "%s", mount);
        for (i = 0; i < level && len < sizeof dir; i++)
            len += (size_t)snprintf(dir + len, sizeof dir - len, "/%s", seg[i]);
        if (v2) {
            snprintf(file, sizeof file, "%s/cpu.max", dir);
            v2_quota(file, best, have);
        } else {
            v1_quota(dir, best, have);
        }
    }
}

void shim_cgroup_quota(const char *host_root, int pid, char *out, size_t outlen)
{
    char path[PATH_MAX], fs[PATH_MAX], mount[2 * PATH_MAX], other[2 * PATH_MAX], *text, *line, *save = NULL;
    const char *root = strcmp(host_root, "/") ? host_root : "";
    double best = 0;
    int have = 0;

    out[0] = '\0';
    if (!(text = HANDLED(malloc(1 << 16)))) /* unreadable: no quota known here */
        return;
    if (pid)
        snprintf(path, sizeof path, "%s/proc/%d/cgroup", root, pid);
    else
        snprintf(path, sizeof path, "%s/proc/self/cgroup", root);
    snprintf(fs, sizeof fs, "%s/sys/fs/cgroup", root);
    if (slurp(path, text, 1 << 16) < 0) {
        free(text);
        return;
    }
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL, *ctl, *tok, *s2 = NULL;
        int cpu = 0;
        if (!c2)
            continue;
        *c1 = *c2 = '\0';
        if (!strcmp(line, "0") && c1 + 1 == c2) { /* cgroup v2 (unified) */
            ancestors(fs, c2 + 1, 1, &best, &have);
            snprintf(mount, sizeof mount, "%s/unified", fs);
            ancestors(mount, c2 + 1, 1, &best, &have);
            continue;
        }
        snprintf(mount, sizeof mount, "%s/%s", fs, c1 + 1);
        ctl = HANDLED(strdup(c1 + 1)); /* unreadable: no quota known here */
        for (tok = ctl ? strtok_r(ctl, ",", &s2) : NULL; tok; tok = strtok_r(NULL, ",", &s2))
            cpu |= !strcmp(tok, "cpu");
        free(ctl);
        if (!cpu) /* cgroup v1 CFS bandwidth, under the controllers' mount and cpu/ */
            continue;
        ancestors(mount, c2 + 1, 0, &best, &have);
        snprintf(other, sizeof other, "%s/cpu", fs);
        if (strcmp(other, mount))
            ancestors(other, c2 + 1, 0, &best, &have);
    }
    free(text);
    if (have)
        snprintf(out, outlen, "%.6f", best);
}
