/* Paths inside the container root, and the attributes of the mounts made there.
 *
 * Image content is untrusted: every destination is looked up with openat2(RESOLVE_IN_ROOT),
 * so a symlink in the image (absolute, "..", chained) resolves as if the container root were
 * "/" and can never carry a mount outside it. Mounts are then made on the resolved fd through
 * /proc/self/fd/N, so nothing is looked up twice by path. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core.h"

void fd_path(int fd, char *buf, size_t len) { snprintf(buf, len, "/proc/self/fd/%d", fd); }

#define OPENAT2_RETRIES 1000 /* a lookup is microseconds: a node would have to mount without pause */

int open_in_root(int root_fd, const char *path, int flags)
{
    struct open_how how;

    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)(flags | O_CLOEXEC);
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    while (*path == '/')
        path++;
    /* EAGAIN: a ".." was resolved while a mount or rename happened anywhere on the node (other
     * jobs' launches do both all the time); openat2(2) asks the caller to try again. The callers
     * check the rest: some expect a missing destination (ENOENT), and make it. */
    for (int tries = 0;; tries++) {
        int fd = (int)HANDLED(syscall(SYS_openat2, root_fd, *path ? path : ".", &how, sizeof how));
        if (fd != -1 || errno != EAGAIN || tries == OPENAT2_RETRIES)
            return fd;
    }
}

int shim_resolve_in_root(const char *root, const char *path, char *out, int outlen)
{
    char link[64];
    int root_fd, fd;
    ssize_t n;

    /* for tests: -errno to the caller, which asserts on it */
    if (HANDLED(root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC)) == -1)
        return -errno;
    fd = open_in_root(root_fd, path, O_PATH);
    close(root_fd);
    if (fd == -1)
        return -errno;
    fd_path(fd, link, sizeof link);
    n = HANDLED(readlink(link, out, (size_t)outlen - 1)); /* -errno to the caller (above) */
    close(fd);
    if (n == -1)
        return -errno;
    out[n] = '\0';
    return 0;
}

void make_private_tmpfs(const char *dir, const char *what)
{
    Z(mount("shim", dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"), "mount tmpfs for %s on %s", what, dir);
}

/* nosuid,nodev (and ro) on a mount and, for recursive binds, on everything below it. */
void set_mount_attrs(int fd, int recursive, int readonly, int keepdev)
{
    struct mount_attr attr;
    char p[64];

    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_NOSUID | (keepdev ? 0 : MOUNT_ATTR_NODEV) | (readonly ? MOUNT_ATTR_RDONLY : 0);
    /* ENOSYS: an older kernel, handled below */
    if (HANDLED(syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | (recursive ? AT_RECURSIVE : 0), &attr,
                        sizeof attr)) == 0)
        return;
    if (errno != ENOSYS)
        shim_fail(SHIM_E_LAUNCH, errno, "set nosuid%s%s on a bind mount", keepdev ? "" : ",nodev",
                  readonly ? ",ro" : "");
    /* Kernels before 5.12: remount the top mount only, keeping the flags the kernel locked. */
    {
        struct statvfs sv;
        unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (keepdev ? 0 : MS_NODEV);
        fd_path(fd, p, sizeof p);
        Z(fstatvfs(fd, &sv), "statvfs of a bind mount");
        if (readonly || (sv.f_flag & ST_RDONLY))
            flags |= MS_RDONLY;
        if (sv.f_flag & ST_NOEXEC)
            flags |= MS_NOEXEC;
        if (sv.f_flag & ST_NODEV)
            flags |= MS_NODEV;
        Z(mount(NULL, p, NULL, flags, NULL), "remount bind mount nosuid,nodev");
    }
}
