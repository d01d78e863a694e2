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

    if (syscall(SYS_capget, &hdr, data) == -1)
        return;
    data[CAP_TO_INDEX(CAP_SYS_ADMIN)].inheritable |= CAP_TO_MASK(CAP_SYS_ADMIN);
    if (syscall(SYS_capset, &hdr, data) == -1)
        return;
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN, 0, 0);
}

static void read_log(int fd, char *buf, size_t len)
{
    ssize_t n = pread(fd, buf, len - 1, 0);
    char *nl;

    buf[n > 0 ? n : 0] = '\0';
    while ((nl = strchr(buf, '\n')) != NULL) /* keep the message on one line */
        *nl = (nl[1] == '\0') ? '\0' : ' ';
}

void mount_squashfs(const struct shim_config *cfg, const char *stage, const char *target)
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
    img_fd = cfg->image_fd >= 0 ? fcntl(cfg->image_fd, F_DUPFD_CLOEXEC, 3) : open(cfg->image_path, O_RDONLY | O_CLOEXEC);
    Z(img_fd, "open image %s", cfg->image_path);
    snprintf(logpath, sizeof logpath, "%s/squashfuse.log", stage);
    log_fd = open(logpath, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    Z(log_fd, "create %s", logpath);
    Z(stat(target, &before), "stat mount point %s", target);
    snprintf(opts, sizeof opts, "ro,offset=%lld", cfg->offset);
    snprintf(src, sizeof src, "/proc/self/fd/%d", img_fd);

    child = fork();
    Z(child, "fork squashfuse");
    if (child == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) /* parent already gone */
            _exit(1);
        setpgid(0, 0); /* terminal signals (Ctrl-C) go to the app, not to the server */
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(log_fd, 1);
        dup2(log_fd, 2);
        fcntl(img_fd, F_SETFD, 0);
        keep_sys_admin_across_exec();
        execl(cfg->squashfuse, cfg->squashfuse, "-f", "-o", opts, src, target, (char *)NULL);
        dprintf(2, "exec %s: %s", cfg->squashfuse, strerror(errno));
        _exit(127);
    }
    Z(close(img_fd), "close image fd");
    /* Mounted when the mount point's device changes; give up if squashfuse exits first. The
     * namespace's mount table, polled, says when a mount happened (POLLPRI): no busy stat loop. */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    table_fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    child_fd = table_fd >= 0 ? (int)syscall(SYS_pidfd_open, child, 0) : -1;
    for (;;) {
        struct pollfd ev[2] = {{table_fd, POLLPRI, 0}, {child_fd, POLLIN, 0}};
        Z(stat(target, &now), "stat mount point %s", target);
        if (now.st_dev != before.st_dev)
            break;
        if (child_fd >= 0)
            poll(ev, 2, 100); /* woken by a mount, or by squashfuse's exit */
        if (waitpid(child, &status, WNOHANG) == child) {
            read_log(log_fd, log, sizeof log);
            shim_fail(SHIM_E_LAUNCH, 0, "mount squashfs partition of %s at offset %lld: %s exited with status %d: %s",
                      cfg->image_path, cfg->offset, cfg->squashfuse,
                      WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), log);
        }
        if (waited_us > MOUNT_TIMEOUT_MS * 1000L) {
            kill(child, SIGKILL);
            shim_fail(SHIM_E_LAUNCH, 0, "mount squashfs partition of %s: %s did not mount within %d s",
                      cfg->image_path, cfg->squashfuse, MOUNT_TIMEOUT_MS / 1000);
        }
        if (child_fd < 0)
            nanosleep(&pause, NULL);
        clock_gettime(CLOCK_MONOTONIC, &t);
        waited_us = (t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000;
    }
    if (table_fd >= 0)
        close(table_fd);
    if (child_fd >= 0)
        close(child_fd);
    shim_debug("squashfuse (pid %d) mounted %s at offset %lld after ~%ld us", (int)child, cfg->image_path,
               cfg->offset, waited_us);
}
