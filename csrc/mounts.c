/* Bind mounts into the container root (destinations resolved inside it: inroot.c; missing mount
 * points made by mountpoints.c), files staged for the launch, and the image's files shown with
 * text appended. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <linux/mount.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core.h"

/* All of p into fd (the file `path` on the staging tmpfs). */
static void write_all(int fd, const char *p, size_t left, const char *path)
{
    while (left) {
        ssize_t n = HANDLED(write(fd, p, left)); /* EINTR: again; 0: the tmpfs is full (ENOSPC) */
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            shim_fail_at(SHIM_AT, n < 0 ? errno : ENOSPC, "write %s", path);
        p += n;
        left -= (size_t)n;
    }
}

/* Into the launch's private tmpfs (made by prepare), so only this launch's mounts can see it. */
void write_stage_file(const char *stage, const struct shim_stage_file *f)
{
    char path[PATH_MAX];
    int fd;

    snprintf(path, sizeof path, "%s/%s", stage, f->name);
    Z(fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644), "create %s", path);
    write_all(fd, f->data, f->len, path);
    Z(close(fd), "close %s", path);
}

/* Put the mount tree `tree` (a detached clone from open_tree) on dst_fd with our attributes. The
 * attributes are set on the clone before it is attached, so it is never visible without them. */
static int attach_tree(int tree, int dst_fd, int recursive, int readonly, int keepdev)
{
    struct mount_attr attr;

    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_NOSUID | (keepdev ? 0 : MOUNT_ATTR_NODEV) | (readonly ? MOUNT_ATTR_RDONLY : 0);
    /* -1 with errno to the caller: ENOSYS (an older kernel) takes the path by name */
    if (HANDLED(syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | (recursive ? AT_RECURSIVE : 0), &attr,
                        sizeof attr)))
        return -1;
    return (int)HANDLED(syscall(SYS_move_mount, tree, "", dst_fd, "", /* to the caller, as above */
                                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH));
}

/* Kernels without open_tree/mount_setattr (before 5.12): bind by path, then set the attributes
 * on the new mount, reached by opening the destination again. */
static void attach_by_path(int root_fd, const char *src, const char *dst, int dst_fd, int flags, int recursive)
{
    char src_p[PATH_MAX], dst_p[64];
    int fd;

    snprintf(src_p, sizeof src_p, "%s", src);
    fd_path(dst_fd, dst_p, sizeof dst_p);
    Z(mount(src_p, dst_p, NULL, MS_BIND | (recursive ? MS_REC : 0), NULL), "bind %s to %s", src, dst);
    fd = open_in_root(root_fd, dst, O_PATH);
    Z(fd, "reopen bind destination %s", dst);
    set_mount_attrs(fd, recursive, flags & SHIM_BIND_RO, flags & SHIM_BIND_KEEPDEV);
    close(fd);
}

static int clone_tree(const char *src, int recursive)
{
    /* -1 with errno to the caller: ENOSYS (an older kernel) opens the source by name */
    return (int)HANDLED(syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC
                                | (recursive ? AT_RECURSIVE : 0)));
}

void bind_into_root(const char *root, int *root_fdp, const struct shim_bind *b)
{
    char src_p[64];
    struct stat st, dst_st;
    int src_fd, dst_fd, tree;

    /* The source as a detached copy of its mount tree (open_tree), or, on kernels without it, by fd. */
    tree = clone_tree(b->src, 1);
    /* errno decides below: an OPTIONAL source may be missing */
    src_fd = tree >= 0 || errno != ENOSYS ? tree : HANDLED(open(b->src, O_PATH | O_CLOEXEC));
    if (src_fd == -1) {
        if (errno == ENOENT && (b->flags & SHIM_BIND_OPTIONAL))
            return;
        shim_fail(SHIM_E_LAUNCH, errno, "bind source %s (for %s)", b->src, b->dst);
    }
    Z(fstat(src_fd, &st), "stat bind source %s", b->src);
    /* A directory goes on a directory (O_DIRECTORY checks it as it resolves), a file on a file. */
    dst_fd = open_in_root(*root_fdp, b->dst, O_PATH | (S_ISDIR(st.st_mode) ? O_DIRECTORY : 0));
    if (dst_fd == -1 && errno == ENOTDIR && (dst_fd = open_in_root(*root_fdp, b->dst, O_PATH)) >= 0)
        shim_fail(SHIM_E_LAUNCH, 0, "bind %s to %s: one is a directory and the other is not", b->src, b->dst);
    if (dst_fd == -1 && (b->flags & SHIM_BIND_IFDST)) {
        close(src_fd);
        return;
    }
    if (dst_fd == -1)
        dst_fd = ensure_target(root, root_fdp, b->dst, (S_ISDIR(st.st_mode) ? ENSURE_DIR : 0) | ENSURE_IN_HOST_BINDS);
    if (!S_ISDIR(st.st_mode)) {
        Z(fstat(dst_fd, &dst_st), "stat bind destination %s", b->dst);
        if (S_ISDIR(dst_st.st_mode))
            shim_fail(SHIM_E_LAUNCH, 0, "bind %s to %s: one is a directory and the other is not", b->src, b->dst);
    }
    if (tree < 0 || attach_tree(tree, dst_fd, 1, b->flags & SHIM_BIND_RO, b->flags & SHIM_BIND_KEEPDEV)) {
        if (tree >= 0 && errno != ENOSYS)
            shim_fail(SHIM_E_LAUNCH, errno, "bind %s to %s", b->src, b->dst);
        fd_path(src_fd, src_p, sizeof src_p);
        attach_by_path(*root_fdp, src_p, b->dst, dst_fd, b->flags, 1);
    } else
        note_host_dir(tree, b); /* the attached clone itself: its id is not looked up again by path */
    shim_debug("bind %s -> %s%s", b->src, b->dst, (b->flags & SHIM_BIND_RO) ? " (ro)" : "");
    close(dst_fd);
    close(src_fd);
}

#define MAX_APPEND_SOURCE (4 << 20)

/* Show the image's file at a->path with a->text appended: a copy on the staging tmpfs is
 * bind-mounted read-only over it. The image itself is not touched. */
void append_to_image_file(int root_fd, const struct shim_append *a, int n)
{
    char copy[PATH_MAX + 32], *buf;
    struct stat st;
    int in_fd, out_fd, dst_fd, tree;
    ssize_t got, len;

    /* nothing to extend (or a symlink/odd file in the image): leave it alone */
    in_fd = open_in_root(root_fd, a->path, O_RDONLY | O_NOFOLLOW);
    if (in_fd == -1 || HANDLED(fstat(in_fd, &st)) == -1 || !S_ISREG(st.st_mode) || st.st_size > MAX_APPEND_SOURCE) {
        if (in_fd >= 0)
            close(in_fd);
        return;
    }
    ZP(buf = malloc((size_t)st.st_size + 1), "allocate a copy of %s", a->path);
    for (len = 0; len < st.st_size; len += got) {
        ZIMG(got = read(in_fd, buf + len, (size_t)(st.st_size - len)), "read %s in the image", a->path);
        if (got == 0)
            break;
    }
    snprintf(copy, sizeof copy, "%s/append%d", launch_stage(), n);
    Z(out_fd = open(copy, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644), "create %s", copy);
    write_all(out_fd, buf, (size_t)len, copy);
    if (len > 0 && buf[len - 1] != '\n')
        write_all(out_fd, "\n", 1, copy);
    write_all(out_fd, a->text, strlen(a->text), copy);
    free(buf);
    Z(close(out_fd), "close %s", copy);
    dst_fd = in_fd; /* the file just read is the one covered: it is not looked up again */
    tree = clone_tree(copy, 0);
    if (tree < 0 || attach_tree(tree, dst_fd, 0, 1, 0)) {
        if (tree >= 0 && errno != ENOSYS)
            shim_fail(SHIM_E_LAUNCH, errno, "bind extended %s", a->path);
        attach_by_path(root_fd, copy, a->path, dst_fd, SHIM_BIND_RO, 0);
    }
    if (tree >= 0)
        close(tree);
    close(dst_fd);
    shim_debug("%s: appended %zu bytes", a->path, strlen(a->text));
}
