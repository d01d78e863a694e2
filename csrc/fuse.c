/* Mount the image's squashfs partition with squashfuse, supervised so it dies with us.
 *
 * squashfuse runs as our child inside the new namespaces, in the foreground (-f), reading the
 * SIF through an inherited fd at the partition offset. It gets PR_SET_PDEATHSIG(SIGKILL):
 * when the app (which replaces this process) exits or is killed, squashfuse dies too, the
 * namespace empties and the mount disappears: nothing is left on the host. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

#define MOUNT_TIMEOUT_MS 10000

/* squashfuse execs as a non-zero uid inside the namespace and so would lose the namespace's
 * CAP_SYS_ADMIN, which the FUSE mount(2) needs; carry it over as an ambient capability. */
static void keep_sys_admin_across_exec(void)
{
    struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];

    /* In the child, before exec: a failure is squashfuse's own mount failing with EPERM, which
     * its log (read by the parent) then says. */
    ZX(syscall(SYS_capget, &hdr, data), "read squashfuse's capabilities");
    data[CAP_TO_INDEX(CAP_SYS_ADMIN)].inheritable |= CAP_TO_MASK(CAP_SYS_ADMIN);
    ZX(syscall(SYS_capset, &hdr, data), "make CAP_SYS_ADMIN inheritable for squashfuse");
    ZX(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN, 0, 0), "keep CAP_SYS_ADMIN across squashfuse's exec");
}

static void read_log(int fd, char *buf, size_t len)
{
    ssize_t n;
    char *nl;

    /* only to say why squashfuse failed: an unreadable log says nothing more */
    n = HANDLED(pread(fd, buf, len - 1, 0));
    buf[n > 0 ? n : 0] = '\0';
    while ((nl = strchr(buf, '\n')) != NULL) /* keep the message on one line */
        *nl = (nl[1] == '\0') ? '\0' : ' ';
}

pid_t mount_squashfs(const struct shim_config *cfg, const char *stage, const char *target)
{
    char logpath[4096], opts[64], src[64], log[512];
    struct stat before, now;
    pid_t parent = getpid(), child;
    int img_fd, log_fd, status, table_fd, child_fd;
    struct timespec pause = { 0, 200000 };
    long waited_us = 0;
    struct timespec t0, t;

    /* The opened image (image.c: the file the record was planned and judged on), never the path
     * again; a copy of the descriptor, which only squashfuse keeps. */
    if (cfg->image_fd >= 0)
        Z(img_fd = fcntl(cfg->image_fd, F_DUPFD_CLOEXEC, 3), "copy the image's descriptor (%s)", cfg->image_path);
    else
        Z(img_fd = open(cfg->image_path, O_RDONLY | O_CLOEXEC), "open image %s", cfg->image_path);
    snprintf(logpath, sizeof logpath, "%s/squashfuse.log", stage);
    Z(log_fd = open(logpath, O_CREAT | O_RDWR | O_CLOEXEC, 0600), "create %s", logpath);
    Z(stat(target, &before), "stat mount point %s", target);
    snprintf(opts, sizeof opts, "ro,offset=%lld", cfg->offset);
    snprintf(src, sizeof src, "/proc/self/fd/%d", img_fd);

    Z(child = fork(), "fork squashfuse");
    if (child == 0) {
        int devnull;
        /* "squashfuse dies with the app" (README) rests on this: no server without the mount's owner */
        ZX(prctl(PR_SET_PDEATHSIG, SIGKILL), "tie squashfuse to shimrun (PR_SET_PDEATHSIG)");
        if (getppid() != parent) /* parent already gone */
            _exit(1);
        ZX(setpgid(0, 0), "put squashfuse in a process group of its own"); /* Ctrl-C goes to the app */
        ZX(devnull = open("/dev/null", O_RDONLY), "open /dev/null for squashfuse");
        ZX(dup2(devnull, 0), "make /dev/null squashfuse's stdin");
        ZX(dup2(log_fd, 1), "send squashfuse's output to its log");
        ZX(dup2(log_fd, 2), "send squashfuse's errors to its log");
        ZX(fcntl(img_fd, F_SETFD, 0), "hand the image's descriptor to squashfuse");
        keep_sys_admin_across_exec();
        execl(cfg->squashfuse, cfg->squashfuse, "-f", "-o", opts, src, target, (char *)NULL);
        dprintf(2, "exec %s: %s", cfg->squashfuse, strerror(errno)); /* the log: the parent's report says it */
        _exit(127);
    }
    Z(close(img_fd), "close image fd");
    /* Mounted when the mount point's device changes; give up if squashfuse exits first. The
     * namespace's mount table, polled, says when a mount happened (POLLPRI): no busy stat loop. */
    Z(clock_gettime(CLOCK_MONOTONIC, &t0), "read the clock");
    /* Without the mount table or a pidfd (old kernels), a short sleep between looks instead. */
    table_fd = HANDLED(open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC));
    child_fd = table_fd >= 0 ? (int)HANDLED(syscall(SYS_pidfd_open, child, 0)) : -1;
    for (;;) {
        struct pollfd ev[2] = {{table_fd, POLLPRI, 0}, {child_fd, POLLIN, 0}};
        Z(stat(target, &now), "stat mount point %s", target);
        if (now.st_dev != before.st_dev)
            break;
        /* woken by a mount, or by squashfuse's exit; a signal only wakes it sooner */
        if (child_fd >= 0 && HANDLED(poll(ev, 2, 100)) == -1 && errno != EINTR)
            shim_fail_at(SHIM_AT, errno, "wait for squashfuse to mount %s", cfg->image_path);
        if (HANDLED(waitpid(child, &status, WNOHANG)) == child) { /* 0: still running; -1 cannot be (our child) */
            read_log(log_fd, log, sizeof log);
            shim_fail(SHIM_E_LAUNCH, 0, "mount squashfs partition of %s at offset %lld: %s exited with status %d: %s",
                      cfg->image_path, cfg->offset, cfg->squashfuse,
                      WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), log);
        }
        if (waited_us > MOUNT_TIMEOUT_MS * 1000L) {
            BEST_EFFORT(kill(child, SIGKILL)); /* it may have exited meanwhile: it is gone either way */
            shim_fail(SHIM_E_LAUNCH, 0, "mount squashfs partition of %s: %s did not mount within %d s",
                      cfg->image_path, cfg->squashfuse, MOUNT_TIMEOUT_MS / 1000);
        }
        if (child_fd < 0)
            BEST_EFFORT(nanosleep(&pause, NULL)); /* a signal cutting the pause short only looks sooner */
        Z(clock_gettime(CLOCK_MONOTONIC, &t), "read the clock");
        waited_us = (t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000;
    }
    if (table_fd >= 0)
        close(table_fd);
    if (child_fd >= 0)
        close(child_fd);
    shim_debug("squashfuse (pid %d) mounted %s at offset %lld after ~%ld us", (int)child, cfg->image_path,
               cfg->offset, waited_us);
    return child;
}
