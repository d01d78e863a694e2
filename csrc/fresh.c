/* File systems made for one launch rather than bound from the host: a private tmpfs (/tmp with
 * --contain, a minimal /dev), a new devpts instance, a /proc of the launch's PID namespace, and
 * the writable root of --writable-tmpfs (an overlay whose changes live in the launch's tmpfs).
 * Destinations are resolved inside the container root, as binds are (mounts.c). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "core.h"

#ifndef FUSE_SUPER_MAGIC
#define FUSE_SUPER_MAGIC 0x65735546 /* linux/magic.h */
#endif

void fresh_mount(const char *root, int *root_fdp, const struct shim_bind *b)
{
    const char *type = (b->flags & SHIM_BIND_TMPFS) ? "tmpfs" : (b->flags & SHIM_BIND_DEVPTS) ? "devpts" : "proc";
    /* devpts must allow its own device nodes; nothing made here can carry setuid bits */
    unsigned long flags = MS_NOSUID | (b->flags & SHIM_BIND_DEVPTS ? MS_NOEXEC
                                       : b->flags & SHIM_BIND_PROC ? MS_NODEV | MS_NOEXEC : MS_NODEV);
    char p[64];
    int fd = open_in_root(*root_fdp, b->dst, O_PATH | O_DIRECTORY);

    if (fd == -1 && errno == ENOENT)
        fd = ensure_target(root, root_fdp, b->dst, ENSURE_DIR | ENSURE_IN_HOST_BINDS);
    else if (fd == -1)
        shim_fail(SHIM_E_LAUNCH, errno, "resolve %s in the container for a new %s", b->dst, type);
    fd_path(fd, p, sizeof p);
    if (HANDLED(mount(type, p, type, flags, b->src[0] ? b->src : NULL)) == -1) { /* a hint for EPERM on /proc */
        int err = errno;
        shim_fail(SHIM_E_LAUNCH, err, "mount a new %s on %s%s", type, b->dst,
                  err == EPERM && (b->flags & SHIM_BIND_PROC)
                      ? " (the host's /proc has parts covered, which forbids a new /proc in a user namespace; "
                        "run without --pid)" : "");
    }
    close(fd);
    if (b->flags & SHIM_BIND_TMPFS) {
        Z(fd = open_in_root(*root_fdp, b->dst, O_PATH | O_DIRECTORY), "reopen the new tmpfs on %s", b->dst);
        own_mount(fd, b->dst);
        close(fd);
    }
    shim_debug("new %s on %s", type, b->dst);
}

void make_link(const char *root, int *root_fdp, const struct shim_link *l)
{
    char parent[PATH_MAX];
    const char *name = strrchr(l->path, '/');
    int fd;

    if (!name || !name[1] || (size_t)(name - l->path) >= sizeof parent)
        shim_fail(SHIM_E_LAUNCH, 0, "symlink %s: not an absolute path with a name", l->path);
    memcpy(parent, l->path, (size_t)(name - l->path));
    parent[name - l->path] = '\0';
    /* only in a directory this launch mounted itself (a fresh tmpfs, or an underlay over the
     * image's read-only directory): never into the image or the host */
    fd = launch_dir(root, root_fdp, parent[0] ? parent : "/");
    if (HANDLED(symlinkat(l->target, fd, name + 1)) == -1 && errno != EEXIST) /* one there already: kept */
        shim_fail_at(SHIM_AT, errno, "symlink %s -> %s in the container", l->path, l->target);
    shim_debug("symlink %s -> %s", l->path, l->target);
    close(fd);
}

/* A FUSE file system lists every extended attribute its server reports, trusted.* ones too
 * (squashfuse serves those of an Apptainer-built SIF: trusted.selinux), but reading a trusted.*
 * attribute without CAP_SYS_ADMIN in the initial user namespace gives ENODATA. The writable
 * overlay copies every listed attribute when it copies a file up, and fails with that ENODATA
 * ("No data available" on the first write). A read-only overlay in between lists only what this
 * user may read (overlayfs leaves trusted.* out of its list for us), so the copy-up finds nothing
 * it cannot copy. Only over FUSE: a directory image on overlayfs (a container's own root) would
 * stack one overlay too many (the kernel allows two). */
static void hide_unreadable_xattrs(const char *base, const char *root)
{
    char empty[PATH_MAX + 8], opts[2 * PATH_MAX + 32];
    struct statfs fs;

    Z(statfs(root, &fs), "statfs the image root %s", root);
    if (fs.f_type != FUSE_SUPER_MAGIC)
        return;
    /* an overlay without an upper layer needs two lower ones: the image over an empty directory */
    snprintf(empty, sizeof empty, "%s/empty", base);
    Z(mkdir(empty, 0555), "mkdir %s", empty);
    snprintf(opts, sizeof opts, "lowerdir=%s:%s", root, empty);
    Z(mount("overlay", root, "overlay", MS_NOSUID | MS_NODEV | MS_RDONLY, opts),
      "mount a read-only overlay over the image (for --writable-tmpfs)");
    shim_debug("image under a read-only overlay: no trusted.* attributes for the copy-up");
}

void overlay_root(const char *stage, const char *root)
{
    char base[PATH_MAX], upper[PATH_MAX + 8], work[PATH_MAX + 8], opts[3 * PATH_MAX + 64];
    int fd;

    snprintf(base, sizeof base, "%s/overlay", stage);
    Z(mkdir(base, 0755), "mkdir %s", base);
    make_private_tmpfs(base, "the writable root's changes");
    hide_unreadable_xattrs(base, root);
    snprintf(upper, sizeof upper, "%s/upper", base);
    snprintf(work, sizeof work, "%s/work", base);
    Z(mkdir(upper, 0755), "mkdir %s", upper);
    Z(mkdir(work, 0755), "mkdir %s", work);
    /* userxattr: an unprivileged overlay keeps its metadata in user.* xattrs (Linux 5.11) */
    snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s,userxattr", root, upper, work);
    if (HANDLED(mount("overlay", root, "overlay", MS_NOSUID | MS_NODEV, opts)) == -1) { /* the user's hint below */
        int err = errno;
        shim_fail(SHIM_E_LAUNCH, err, "mount the writable overlay over the image (--writable-tmpfs needs "
                  "overlayfs in user namespaces, Linux 5.11 or later; run without it)");
    }
    Z(fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC), "open the writable root %s", root);
    own_mount(fd, "the writable root");
    close(fd);
    shim_debug("writable root: overlay with its changes in a tmpfs");
}
