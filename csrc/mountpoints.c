/* Where a bind's missing mount point is made (mounts.c asks; fresh.c too, and for LINKs).
 *
 * The image is read-only. A missing mount point under a read-only directory is made with an
 * "underlay": a tmpfs that copies the directory's listing (each entry bind-mounted back, symlinks
 * recreated) is mounted over it, and the mount point is created in that tmpfs. The same covers a
 * read-only host bind and the system's binds (/tmp: nothing left behind on the host). In a file
 * system this launch mounted fresh (own_mount) the mount point is made directly; so it is in a
 * writable host bind the user asked for (SHIM_BIND_MOUNTPOINTS, note_host_dir), on the host, as
 * Apptainer does, so that the bind around it stays writable. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

/* What a user can do when the image's own tree cannot take a bind destination (a dangling
 * symlink at /home, a loop at /tmp): the image cannot be fixed from here, the bind can. */
#define DEST_HINT "the image's tree cannot take this mount: bind it elsewhere with --bind SRC:DST, or leave " \
    "it out (--no-home for the home directory)"

#define MAX_UNDERLAYS 64

static char stage_dir[PATH_MAX]; /* a copy: prepare and finish get separate configs */
static int n_underlays;
static char underlay_paths[MAX_UNDERLAYS][PATH_MAX];
static dev_t underlay_devs[MAX_UNDERLAYS];
/* File systems this launch mounted fresh (a private /tmp, a minimal /dev, the writable root's
 * overlay): mount points may be made in them, and they stay writable. */
static int n_own;
static dev_t own_devs[MAX_UNDERLAYS];
/* Writable host binds the user asked for (SHIM_BIND_MOUNTPOINTS), by mount id: a nested bind's
 * missing mount point is made in such a bind's host directory, as Apptainer does. By mount id
 * (statx STATX_MNT_ID), not st_dev: every bind of one file system shares its st_dev, and an
 * inner read-only bind from the same disk must not count as the writable one around it. */
static int n_host_dirs;
static unsigned long long host_dir_mnts[MAX_UNDERLAYS];

void set_stage(const char *stage)
{
    snprintf(stage_dir, sizeof stage_dir, "%s", stage);
    n_underlays = 0;
    n_own = 0;
    n_host_dirs = 0;
}

const char *launch_stage(void) { return stage_dir; }

int on_underlay(int fd)
{
    struct stat st;
    int i;

    Z(fstat(fd, &st), "stat a directory in the container");
    for (i = 0; i < n_underlays; i++)
        if (underlay_devs[i] == st.st_dev)
            return 1;
    for (i = 0; i < n_own; i++)
        if (own_devs[i] == st.st_dev)
            return 1;
    return 0;
}

/* The id of the mount fd lies on; 0 where the kernel names none (before Linux 5.8). */
static unsigned long long mount_id(int fd)
{
    struct statx stx;

    Z(statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MNT_ID, &stx), "statx a directory in the container");
    return (stx.stx_mask & STATX_MNT_ID) ? stx.stx_mnt_id : 0;
}

/* The bind just attached (tree: its detached clone, now attached, so the very mount) takes nested
 * mount points in its host directory if the record says so and it is writable. Past the table's
 * size, or without mount ids, nested binds get underlays, as every bind did before. */
void note_host_dir(int tree, const struct shim_bind *b)
{
    unsigned long long id;

    if (!(b->flags & SHIM_BIND_MOUNTPOINTS) || (b->flags & SHIM_BIND_RO) || n_host_dirs >= MAX_UNDERLAYS)
        return;
    if ((id = mount_id(tree)) != 0)
        host_dir_mnts[n_host_dirs++] = id;
}

/* 1: fd lies in a writable host bind the user asked for (note_host_dir). */
static int in_host_dir(int fd)
{
    unsigned long long id = mount_id(fd);

    for (int i = 0; id && i < n_host_dirs; i++)
        if (host_dir_mnts[i] == id)
            return 1;
    return 0;
}

void own_mount(int fd, const char *where)
{
    struct stat st;

    Z(fstat(fd, &st), "stat %s", where);
    if (n_own >= MAX_UNDERLAYS)
        shim_fail(SHIM_E_LAUNCH, 0, "too many fresh mounts (at %s)", where);
    own_devs[n_own++] = st.st_dev;
}

/* Replace the read-only directory dir_fd (at container path `where`) with a writable tmpfs
 * listing the same entries, so that a mount point can be created in it. */
static void underlay(int dir_fd, const char *where)
{
    char scratch[PATH_MAX + 32], src[64], dst[64], target[PATH_MAX];
    struct dirent *e;
    struct stat st;
    int list_fd, scratch_fd;
    DIR *d;

    if (n_underlays >= MAX_UNDERLAYS)
        shim_fail(SHIM_E_LAUNCH, 0, "too many missing mount points under read-only image directories (at %s)", where);
    snprintf(scratch, sizeof scratch, "%s/u%d", stage_dir, n_underlays);
    Z(mkdir(scratch, 0755), "mkdir %s", scratch);
    Z(fstat(dir_fd, &st), "stat image directory %s", where);
    make_private_tmpfs(scratch, where);
    Z(chmod(scratch, st.st_mode & 07777), "chmod %s", scratch);
    {
        struct stat sst;
        Z(stat(scratch, &sst), "stat %s", scratch);
        underlay_devs[n_underlays] = sst.st_dev;
    }
    Z(scratch_fd = open(scratch, O_PATH | O_DIRECTORY | O_CLOEXEC), "open %s", scratch);
    Z(list_fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), "open image directory %s", where);
    ZP(d = fdopendir(list_fd), "list image directory %s", where);
    while ((errno = 0, e = readdir(d)) != NULL) {
        int s, t;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        ZIMG(fstatat(list_fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW), "stat %s/%s in the image", where, e->d_name);
        if (S_ISLNK(st.st_mode)) {
            ssize_t n;
            ZIMG(n = readlinkat(list_fd, e->d_name, target, sizeof target - 1), "readlink %s/%s in the image", where,
                 e->d_name);
            target[n] = '\0';
            Z(symlinkat(target, scratch_fd, e->d_name), "recreate symlink %s/%s", where, e->d_name);
            continue;
        }
        if (S_ISDIR(st.st_mode))
            Z(mkdirat(scratch_fd, e->d_name, 0755), "mkdir %s/%s in underlay", where, e->d_name);
        else {
            t = openat(scratch_fd, e->d_name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
            Z(t, "create %s/%s in underlay", where, e->d_name);
            close(t);
        }
        s = openat(list_fd, e->d_name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        Z(s, "open %s/%s in the image", where, e->d_name);
        t = openat(scratch_fd, e->d_name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        Z(t, "open %s/%s in underlay", where, e->d_name);
        fd_path(s, src, sizeof src);
        fd_path(t, dst, sizeof dst);
        Z(mount(src, dst, NULL, MS_BIND | MS_REC, NULL), "bind %s/%s into underlay", where, e->d_name);
        close(s);
        close(t);
    }
    if (errno)
        shim_fail_image(SHIM_AT, errno, "read image directory %s", where);
    closedir(d);
    close(scratch_fd);
    fd_path(dir_fd, dst, sizeof dst);
    Z(mount(scratch, dst, NULL, MS_MOVE, NULL), "mount underlay over %s", where);
    snprintf(underlay_paths[n_underlays], sizeof underlay_paths[0], "%s", where[0] ? where : "/");
    n_underlays++;
    shim_debug("underlay over read-only %s", where[0] ? where : "/");
}

/* The container path of the directory fd (inside root; "" for the root itself). */
static void resolved_path(const char *root, int fd, char *out, size_t len)
{
    char link[64], host[PATH_MAX];
    size_t rl = strlen(root);
    ssize_t n;

    fd_path(fd, link, sizeof link);
    n = readlink(link, host, sizeof host - 1);
    Z(n, "find a directory of the container");
    host[n] = '\0';
    if (strncmp(host, root, rl) || (host[rl] != '/' && host[rl] != '\0'))
        shim_fail(SHIM_E_LAUNCH, 0, "a directory of the container (%s) lies outside its root", host);
    snprintf(out, len, "%s", host + rl);
}

/* Open the destination `path` inside the root, creating what is missing (directories, or an
 * empty file when the source is not a directory; `how`: ENSURE_*). Returns an O_PATH fd.
 *
 * Where a component is missing, it is made in its parent directory if this launch mounted that
 * itself (a fresh tmpfs, an underlay) or, with ENSURE_IN_HOST_BINDS, if it lies in a writable host
 * bind the user asked for: there it is made on the host and left, as Apptainer does, by the
 * parent's fd (no second lookup) with O_EXCL (a symlink planted at the name is never followed).
 * Anywhere else (the image, a read-only bind, the system's binds such as /tmp) the parent gets an
 * underlay and the component is made in that. */
int ensure_target(const char *root, int *root_fdp, const char *path, int how)
{
    int want_dir = how & ENSURE_DIR;
    int root_fd = *root_fdp;
    char prefix[PATH_MAX], comp[NAME_MAX + 1];
    const char *p = path, *end;
    int fd, parent, tries;
    size_t plen = 0;

    fd = open_in_root(root_fd, path, O_PATH);
    if (fd >= 0)
        return fd;
    if (errno != ENOENT) {
        int err = errno;
        shim_fail(SHIM_E_LAUNCH, 0, "resolve bind destination %s in the container: %s (%s)", path, strerror(err),
                  DEST_HINT);
    }
    prefix[0] = '\0';
    parent = open_in_root(root_fd, "/", O_PATH);
    Z(parent, "open container root");
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        end = strchrnul(p, '/');
        if ((size_t)(end - p) > NAME_MAX || plen + (size_t)(end - p) + 2 > sizeof prefix)
            shim_fail(SHIM_E_LAUNCH, ENAMETOOLONG, "bind destination %s", path);
        memcpy(comp, p, (size_t)(end - p));
        comp[end - p] = '\0';
        plen += (size_t)snprintf(prefix + plen, sizeof prefix - plen, "/%s", comp);
        p = end;
        for (tries = 0; (fd = open_in_root(root_fd, prefix, O_PATH)) == -1; tries++) {
            int last = (*p == '\0' || p[strspn(p, "/")] == '\0'), r;
            if (errno != ENOENT || tries > 1) {
                int err = errno;
                shim_fail(SHIM_E_LAUNCH, 0, "resolve %s in the container (for %s): %s (%s)", prefix, path,
                          strerror(err), DEST_HINT);
            }
            /* Never in the image, nor in a host directory the user did not ask to be writable
             * here (e.g. /tmp, a read-only bind): that gets an underlay (below). A writable host
             * directory that refuses us (EACCES: not the user's to write) gets one too. */
            if (!on_underlay(parent) && !((how & ENSURE_IN_HOST_BINDS) && in_host_dir(parent))) {
                r = -1;
                errno = EROFS;
            } else if (last && !want_dir) { /* errno decides below: EEXIST, a read-only directory */
                r = HANDLED(openat(parent, comp, O_CREAT | O_EXCL | O_NOFOLLOW | O_WRONLY | O_CLOEXEC, 0644));
                if (r >= 0)
                    r = close(r);
            } else
                r = HANDLED(mkdirat(parent, comp, 0755)); /* errno decides below */
            if (r == 0) {
                shim_debug("mount point %s made%s", prefix,
                           on_underlay(parent) ? "" : " in the host directory bound there");
                continue;
            }
            if (errno == EEXIST) /* a symlink pointing at nothing, in the image or a bound directory */
                shim_fail(SHIM_E_LAUNCH, 0, "bind destination %s: %s in the container is a dangling symlink (%s)",
                          path, prefix, DEST_HINT);
            if (errno != EROFS && errno != EACCES && errno != EPERM)
                shim_fail(SHIM_E_LAUNCH, errno, "create mount point %s in the container", prefix);
            {
                /* Where the parent really is: through an image symlink (home -> /) the directory
                 * to cover is its target, not the path that led there. */
                char where[PATH_MAX];
                resolved_path(root, parent, where, sizeof where);
                underlay(parent, where);
                close(parent);
                if (where[0] == '\0') { /* the root itself is now covered: reopen it */
                    close(root_fd);
                    Z(root_fd = *root_fdp = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC), "reopen container root %s",
                      root);
                }
                parent = open_in_root(root_fd, where, O_PATH);
                Z(parent, "reopen %s after underlay", where);
            }
        }
        close(parent);
        parent = fd;
    }
    return parent;
}

/* The container directory `path` as one this launch made, for a symlink the record asks for: an
 * underlay over the image's read-only directory (made now if need be), the missing components
 * made in one. Never the image's or a host directory itself: a link there would change the image
 * or be left behind on the host. Returns an O_PATH fd. */
int launch_dir(const char *root, int *root_fdp, const char *path)
{
    char where[PATH_MAX];
    int fd = open_in_root(*root_fdp, path, O_PATH | O_DIRECTORY);

    if (fd == -1 && errno == ENOENT) /* not in a host bind: a link there would be left on the host */
        return ensure_target(root, root_fdp, path, ENSURE_DIR);
    Z(fd, "open %s in the container", path);
    if (on_underlay(fd))
        return fd;
    resolved_path(root, fd, where, sizeof where);
    underlay(fd, where);
    close(fd);
    if (where[0] == '\0') { /* the root itself is now covered: reopen it */
        close(*root_fdp);
        Z(*root_fdp = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC), "reopen container root %s", root);
    }
    Z(fd = open_in_root(*root_fdp, where[0] ? where : "/", O_PATH | O_DIRECTORY), "reopen %s after underlay", where);
    return fd;
}

/* Underlays are writable only while mount points are made; the image then stays read-only. */
void seal_underlays(int root_fd)
{
    int fd, i;

    for (i = 0; i < n_underlays; i++) {
        fd = open_in_root(root_fd, underlay_paths[i], O_PATH);
        Z(fd, "reopen underlay %s", underlay_paths[i]);
        set_mount_attrs(fd, 0, 1, 0);
        close(fd);
    }
}
