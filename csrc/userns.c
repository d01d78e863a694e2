/* Enter a new user + mount namespace and map our ids, as an unprivileged user. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "core.h"

static void write_proc_file(const char *path, const char *text)
{
    ssize_t len = (ssize_t)strlen(text), n;
    int fd;

    Z(fd = open(path, O_WRONLY | O_CLOEXEC), "open %s", path);
    /* a /proc control file takes the whole text in one write, or refuses it */
    Z(n = write(fd, text, (size_t)len), "write '%s' to %s", text, path);
    if (n != len)
        shim_fail_at(SHIM_AT, EIO, "write '%s' to %s (%zd of %zd bytes taken)", text, path, n, len);
    Z(close(fd), "close %s", path);
}

void enter_namespaces(int fakeroot, int namespaces)
{
    uid_t uid = getuid();
    gid_t gid = getgid();
    char map[64];

    if (HANDLED(unshare(CLONE_NEWUSER | CLONE_NEWNS)) == -1) { /* messages the admin can act on, by errno */
        int err = errno;
        if (err == EPERM || err == EACCES)
            shim_fail(SHIM_E_HOST, err,
                      "unprivileged user namespaces are disabled on this host: unshare(CLONE_NEWUSER) "
                      "(an admin must set sysctl user.max_user_namespaces > 0, and "
                      "kernel.unprivileged_userns_clone=1 or kernel.apparmor_restrict_unprivileged_userns=0 "
                      "where those exist)");
        if (err == ENOSPC || err == EUSERS)
            shim_fail(SHIM_E_HOST, err,
                      "no user namespace can be created: the limit is reached: unshare(CLONE_NEWUSER) "
                      "(sysctl user.max_user_namespaces, or 32 nested namespaces; an admin can raise the sysctl)");
        shim_fail(SHIM_E_LAUNCH, err, "unshare(CLONE_NEWUSER|CLONE_NEWNS)");
    }
    /* An unprivileged process may only write gid_map after denying setgroups(2). */
    write_proc_file("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "%u %u 1\n", fakeroot ? 0u : (unsigned)uid, (unsigned)uid);
    write_proc_file("/proc/self/uid_map", map);
    snprintf(map, sizeof map, "%u %u 1\n", fakeroot ? 0u : (unsigned)gid, (unsigned)gid);
    write_proc_file("/proc/self/gid_map", map);
    /* Nothing we mount from here on may propagate back to the host. */
    Z(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), "make mounts private (mount --make-rprivate /)");
    shim_debug("user+mount namespace entered, uid %u -> %u", (unsigned)uid, fakeroot ? 0u : (unsigned)uid);
    enter_more_namespaces(namespaces);
}

void enter_more_namespaces(int namespaces)
{
    int more = (namespaces & SHIM_NS_IPC ? CLONE_NEWIPC : 0) | (namespaces & SHIM_NS_NET ? CLONE_NEWNET : 0)
               | (namespaces & SHIM_NS_PID ? CLONE_NEWPID : 0);

    /* Owned by the user namespace we are in, so that we may set them up (lo, a new /proc). */
    if (more && HANDLED(unshare(more)) == -1) /* the namespaces asked for, named */
        shim_fail_at(SHIM_AT, errno, "unshare the%s%s%s namespace", namespaces & SHIM_NS_IPC ? " IPC" : "",
                  namespaces & SHIM_NS_NET ? " network" : "", namespaces & SHIM_NS_PID ? " PID" : "");
    if (namespaces & SHIM_NS_NET)
        shim_loopback_up();
    if (namespaces & SHIM_NS_PID)
        shim_pidns_fork();
}
