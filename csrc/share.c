/* One container per node per job step: a holder process owns the namespaces and the image mount
 * and hands them to every rank that asks; ranks join with setns() and exec their app.
 *
 * The holder listens on a socket (abstract, so nothing is left on disk when it dies). Each rank
 * connects, the holder checks it is the same user (SO_PEERCRED), sends the user and mount
 * namespace fds (SCM_RIGHTS) plus a payload, and watches the rank's pid through a pidfd: the app
 * keeps the rank's pid after exec, so the holder knows when each app ends without the app
 * carrying any fd of ours. When the last member is gone (or none came within a grace period)
 * the holder stops listening and exits; its squashfuse child dies with it (PDEATHSIG). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "core.h"

extern struct shim_result *shim_current_result;
extern jmp_buf shim_unwind;

#define MAX_MEMBERS 4096
#define FIRST_MEMBER_GRACE_MS 60000 /* the leader connects right after "ready"; this is a backstop */

static int pidfd_open_(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

/* Send the two namespace fds and the payload on a connected socket. */
static int send_namespaces(int conn, int userns, int mntns, const char *payload)
{
    char ctl[CMSG_SPACE(2 * sizeof(int))];
    size_t len = strlen(payload);
    struct iovec iov = {(void *)payload, len ? len : 1};
    struct msghdr msg = {0};
    struct cmsghdr *c;
    int fds[2] = {userns, mntns};

    memset(ctl, 0, sizeof ctl);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl;
    msg.msg_controllen = sizeof ctl;
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    return sendmsg(conn, &msg, MSG_NOSIGNAL) == -1 ? -1 : 0;
}

/* The holder's life after set-up: serve until every expected member has come and gone (Slurm
 * tells how many tasks a step has on this node), or, when that is unknown or a rank never comes,
 * until no member has been there for linger_ms. */
static void serve(int listen_fd, int userns, int mntns, const char *payload, int expected, int linger_ms)
{
    static struct pollfd pfd[MAX_MEMBERS + 1];
    int members = 0, served = 0, i;

    pfd[0].fd = listen_fd;
    pfd[0].events = POLLIN;
    for (;;) {
        int n = poll(pfd, (nfds_t)members + 1, members ? -1 : served ? linger_ms : FIRST_MEMBER_GRACE_MS);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* nobody there for a while */
        for (i = 1; i <= members; i++) {
            if (pfd[i].revents) { /* that member's app has exited */
                close(pfd[i].fd);
                pfd[i--] = pfd[members--];
            }
        }
        if (pfd[0].revents & POLLIN) {
            struct ucred cred;
            socklen_t clen = sizeof cred;
            int conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC), pidfd;
            if (conn == -1)
                continue;
            /* Only our own user's processes may enter (the name of an abstract socket is not private). */
            if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0 && cred.uid == getuid()
                && members < MAX_MEMBERS && (pidfd = pidfd_open_(cred.pid)) != -1) {
                if (send_namespaces(conn, userns, mntns, payload) == 0) {
                    members++;
                    pfd[members].fd = pidfd;
                    pfd[members].events = POLLIN;
                    pfd[members].revents = 0;
                    served++;
                } else {
                    close(pidfd);
                }
            }
            close(conn);
        }
        if (members == 0 && expected > 0 && served >= expected)
            break;
    }
    /* Stop accepting before exiting: a rank connecting now sees the refusal and starts afresh. */
    close(listen_fd);
}

int shim_hold(const struct shim_config *cfg, struct shim_result *res, int prepared, int listen_fd, int ready_fd,
              const char *payload, int expected, int linger_ms)
{
    int userns, mntns, devnull;
    sigset_t set;

    /* Set up exactly like a single launch, up to (not including) the exec. `prepared`: the
     * leader already entered the namespaces and mounted the image to analyse it (we are its fork). */
    if (!prepared && shim_prepare(cfg, res))
        return res->code;
    shim_begin(cfg, res);
    if (setjmp(shim_unwind))
        return res->code;
    userns = open("/proc/self/ns/user", O_RDONLY | O_CLOEXEC);
    Z(userns, "open /proc/self/ns/user");
    mntns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    Z(mntns, "open /proc/self/ns/mnt");
    if (shim_setup_root(cfg, res))
        return res->code;
    shim_current_result = res;
    if (setjmp(shim_unwind))
        return res->code;
    /* scancel's SIGTERM is for the apps; the holder leaves when they are gone (Slurm's final
     * SIGKILL of the step also ends it, and squashfuse with it). */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCONT);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    Z(write(ready_fd, "ok", 2), "report readiness");
    close(ready_fd);
    /* Do not hold the step's output pipes open (srun waits for them to close). */
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull != -1) {
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(devnull, 2);
        close(devnull);
    }
    serve(listen_fd, userns, mntns, payload, expected, linger_ms);
    _exit(0);
}

/* Receive the namespace fds and payload from a holder; returns the payload length or -errno. */
int shim_receive(int conn, int *userns, int *mntns, char *payload, int payload_len)
{
    char ctl[CMSG_SPACE(2 * sizeof(int))];
    struct iovec iov = {payload, (size_t)payload_len - 1};
    struct msghdr msg = {0};
    struct cmsghdr *c;
    ssize_t n;

    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl;
    msg.msg_controllen = sizeof ctl;
    do
        n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
    while (n == -1 && errno == EINTR);
    if (n == -1)
        return -errno;
    c = CMSG_FIRSTHDR(&msg);
    if (n == 0 || c == NULL || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(2 * sizeof(int)))
        return -ECONNRESET; /* the holder is going away: start afresh */
    memcpy(userns, CMSG_DATA(c), sizeof(int));
    memcpy(mntns, (char *)CMSG_DATA(c) + sizeof(int), sizeof(int));
    payload[n] = '\0';
    return (int)n;
}

/* Is fd the namespace this process is in already? (The leader that analysed the image forked
 * the holder from inside it: its root moved with the holder's pivot_root, there is nothing to join.) */
static int already_in(int fd, const char *self)
{
    struct stat a, b;
    return fstat(fd, &a) == 0 && stat(self, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

int shim_join(const struct shim_config *cfg, struct shim_result *res, int userns, int mntns)
{
    int same_user, same_mnt;

    shim_begin(cfg, res);
    if (setjmp(shim_unwind))
        return res->code;
    same_user = already_in(userns, "/proc/self/ns/user");
    same_mnt = already_in(mntns, "/proc/self/ns/mnt");
    if (!same_user && setns(userns, CLONE_NEWUSER) == -1)
        shim_fail(SHIM_E_LAUNCH, errno, "join the node's container (user namespace)");
    /* Root and working directory become the container's root with the mount namespace. */
    if (!same_mnt && setns(mntns, CLONE_NEWNS) == -1)
        shim_fail(SHIM_E_LAUNCH, errno, "join the node's container (mount namespace)");
    close(userns);
    close(mntns);
    shim_debug("joined the node's container");
    return shim_enter_and_exec(cfg, res);
}
