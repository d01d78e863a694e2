/* A kept mount's holder (kept.c describes the whole and the launch's side).
 *
 * Forked (twice) by the launch that found no holder, it lives in a session of its own with its
 * output on /dev/null, so a Ctrl-C of that launch or its terminal going away does not end it.
 * It makes the user + mount namespace a single launch would, mounts squashfuse in it at
 * STAGE/kept (fuse.c: squashfuse is its child with PDEATHSIG, so it dies with the holder and its
 * mount with the namespace), and serves the namespaces' fds to launches of its own user. Each
 * launch's process (the app, after its exec) is watched by a pidfd. It leaves when
 *   - no app of it has been alive for the idle time (the latest request's; KEPT_IDLE),
 *   - squashfuse is gone (killed: the mount is dead, a new holder must mount again),
 *   - under Slurm, the job step's slurmstepd it was started under is gone (scancel, the job's end),
 *   - it is killed: squashfuse follows it, the namespace empties, nothing is left.
 * It closes its socket before anything else, so that a launch finds a live holder or none. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "gen/runtime.h"

extern struct shim_result *shim_current_result;
extern jmp_buf shim_unwind;

#define REQUEST_MS 5000        /* a launch's request, once connected */
#define FAILED_LINGER_MS 1000  /* a holder that could not mount answers so for this long, then goes */
#define MAX_APPS 4096          /* apps watched at once; a launch beyond is refused (and mounts for itself) */

/* The holder's own process: a session and name of its own, /dev/null for output, no descriptor
 * but those it needs, the default signals. In the child before anything is set up: ZX. */
static void detach(const struct shim_kept_hold *h)
{
    int keep[3] = {h->listen_fd, h->cfg->image_fd, h->stepd_fd}, i, j, fd, from = 3;
    sigset_t none;

    ZX(setsid(), "start the kept mount's holder in a session of its own");
    ZX(prctl(PR_SET_NAME, SHIM_KEPT_SOCKET, 0, 0, 0), "name the kept mount's holder"); /* as its socket */
    ZX(chdir("/"), "leave the launch's working directory"); /* it must not keep a file system busy */
    ZX(fd = open("/dev/null", O_RDWR | O_CLOEXEC), "open /dev/null for the kept mount's holder");
    for (i = 0; i < 3; i++)
        ZX(dup2(fd, i), "put /dev/null on descriptor %d of the kept mount's holder", i);
    for (i = 0; i < 3; i++) /* sorted, then everything between them closed */
        for (j = i + 1; j < 3; j++)
            if (keep[j] < keep[i]) {
                int t = keep[i];
                keep[i] = keep[j], keep[j] = t;
            }
    for (i = 0; i < 3; i++) {
        if (keep[i] < from)
            continue;
        if (keep[i] > from)
            ZX(close_range((unsigned)from, (unsigned)keep[i] - 1, 0), "close the launch's descriptors");
        from = keep[i] + 1;
    }
    ZX(close_range((unsigned)from, ~0U, 0), "close the launch's descriptors");
    sigemptyset(&none);
    ZX(sigprocmask(SIG_SETMASK, &none, NULL), "unblock the kept mount's holder's signals");
    BEST_EFFORT(signal(SIGPIPE, SIG_IGN)); /* cannot fail with these arguments; a gone launch is EPIPE */
}

static long long now_ms(void)
{
    struct timespec t;
    Z(clock_gettime(CLOCK_MONOTONIC, &t), "read the clock");
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* The request: SHIM_KEPT_REQUEST, idle seconds. The idle time, or -1 (malformed, too slow). */
static long long read_request(int conn)
{
    char buf[128];
    size_t got = 0;
    long long deadline = now_ms() + REQUEST_MS;

    while (got < sizeof buf - 1) {
        struct pollfd p = {conn, POLLIN, 0};
        long long left = deadline - now_ms();
        ssize_t n;
        /* too slow or failed: the launch is dropped and mounts for itself */
        if (left <= 0 || HANDLED(poll(&p, 1, (int)left)) <= 0)
            return -1;
        n = HANDLED(recv(conn, buf + got, sizeof buf - 1 - got, 0)); /* EINTR: again; else dropped (above) */
        if (n == -1 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    if (got < sizeof SHIM_KEPT_REQUEST + 1 || strcmp(buf, SHIM_KEPT_REQUEST))
        return -1;
    return strtoll(buf + sizeof SHIM_KEPT_REQUEST, NULL, 10);
}

/* The peer's pid when it is our own user, else -1. */
static pid_t own_user(int conn)
{
    struct ucred cred;
    socklen_t clen = sizeof cred;
    /* An abstract socket's name is not private: a peer that cannot say who it is gets nothing. */
    if (HANDLED(getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &clen)) == -1 || cred.uid != getuid())
        return -1;
    return cred.pid;
}

static int reply_ok(int conn, const int ns[2], pid_t fuse)
{
    char text[64];
    size_t n = (size_t)snprintf(text, sizeof text, "%s%c%d%c%d", SHIM_SHARE_REPLY_OK, 0, (int)getpid(), 0,
                                (int)fuse) + 1;

    return shim_send_fds(conn, text, n, ns) == (ssize_t)n ? 0 : -1; /* a launch gone: dropped */
}

static void reply_error(int conn, const char *message)
{
    char text[1024];
    int n = snprintf(text, sizeof text, "%s%c%s", SHIM_SHARE_REPLY_ERROR, 0, message);
    /* the launch mounts for itself whether or not it read why */
    BEST_EFFORT(send(conn, text, (size_t)(n < (int)sizeof text ? n + 1 : (int)sizeof text), MSG_NOSIGNAL));
}

/* Set-up failed (why in message): tell the launches that wait, and those that come for a moment,
 * so that each mounts for itself (and says why) instead of starting another holder that fails. */
static void refuse_for_a_while(int lfd, const char *message)
{
    struct pollfd p = {lfd, POLLIN, 0};

    while (HANDLED(poll(&p, 1, FAILED_LINGER_MS)) > 0) { /* none came, or cannot wait: leave */
        int conn = HANDLED(accept4(lfd, NULL, NULL, SOCK_CLOEXEC)); /* -1: that one is dropped */
        if (conn < 0)
            continue;
        if (own_user(conn) > 0 && read_request(conn) >= 0)
            reply_error(conn, message);
        close(conn);
    }
}

struct holder {
    struct pollfd fds[MAX_APPS + 3]; /* listen socket, squashfuse, slurmstepd, then each app */
    int napps, ns[2];
    pid_t fuse;
    long long idle_ms, empty_since;
};

/* One launch: checked, answered, its process watched. */
static void take(struct holder *s)
{
    int conn = HANDLED(accept4(s->fds[0].fd, NULL, NULL, SOCK_CLOEXEC)), pidfd = -1; /* -1: dropped */
    long long idle = -1;
    pid_t pid;

    if (conn < 0)
        return;
    if ((pid = own_user(conn)) > 0 && (idle = read_request(conn)) >= 0 && s->napps >= MAX_APPS) {
        reply_error(conn, "it serves as many launches as it can watch");
        close(conn);
        return;
    }
    /* a launch that cannot be watched (gone already) is dropped */
    if (pid > 0 && idle >= 0 && (pidfd = (int)HANDLED(syscall(SYS_pidfd_open, pid, 0))) >= 0
        && reply_ok(conn, s->ns, s->fuse) == 0) {
        s->fds[3 + s->napps].fd = pidfd;
        s->fds[3 + s->napps].events = POLLIN;
        s->fds[3 + s->napps++].revents = 0;
        s->idle_ms = idle * 1000; /* the latest launch's idle time */
    } else if (pidfd >= 0) {
        close(pidfd);
    }
    close(conn);
}

static void serve(struct holder *s)
{
    for (;;) {
        int timeout = -1, n, i;
        if (s->napps == 0) {
            long long left = s->empty_since + s->idle_ms - now_ms();
            timeout = left <= 0 ? 0 : left > 1 << 30 ? 1 << 30 : (int)left;
        }
        /* A launch already waiting is taken even when the idle time is up (0: at once) */
        n = HANDLED(poll(s->fds, (nfds_t)(3 + s->napps), timeout)); /* EINTR: again; else the holder leaves */
        if (n == -1 && errno == EINTR)
            continue;
        if (n < 0 || (n == 0 && s->napps == 0 && timeout == 0))
            return;
        if (s->fds[1].revents || s->fds[2].revents) /* squashfuse, or the job step, is gone */
            return;
        for (i = 0; i < s->napps; i++) /* an app that exited: its pidfd is readable */
            if (s->fds[3 + i].revents) {
                close(s->fds[3 + i].fd);
                s->fds[3 + i] = s->fds[3 + --s->napps];
                i--;
                if (s->napps == 0)
                    s->empty_since = now_ms();
            }
        if (s->fds[0].revents & POLLIN)
            take(s);
    }
}

void shim_kept_hold(const struct shim_kept_hold *h)
{
    static struct holder s; /* large, and the holder has only one */
    struct shim_config cfg = *h->cfg;
    struct shim_result res;
    char target[4096];

    detach(h);
    cfg.debug = 0; /* its output goes nowhere */
    shim_debug_on = 0;
    res.code = 0;
    res.message[0] = '\0';
    shim_current_result = &res; /* where the checking macros report, before they unwind */
    if (setjmp(shim_unwind)) {
        refuse_for_a_while(h->listen_fd, res.message);
        _exit(res.code ? res.code : SHIM_E_LAUNCH);
    }
    enter_namespaces(cfg.fakeroot, 0);
    make_private_tmpfs(cfg.stage, "the kept mount's staging area");
    snprintf(target, sizeof target, "%s/%s", cfg.stage, SHIM_KEPT_DIR);
    Z(mkdir(target, 0755), "mkdir %s", target);
    s.fuse = mount_squashfs(&cfg, cfg.stage, target);
    if (cfg.image_fd >= 0)
        close(cfg.image_fd); /* squashfuse has its own copy */
    Z(s.ns[0] = open("/proc/self/ns/user", O_RDONLY | O_CLOEXEC), "open /proc/self/ns/user");
    Z(s.ns[1] = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC), "open /proc/self/ns/mnt");
    s.fds[0] = (struct pollfd){h->listen_fd, POLLIN, 0};
    Z(s.fds[1].fd = (int)syscall(SYS_pidfd_open, s.fuse, 0), "watch squashfuse (pidfd_open)");
    s.fds[1].events = POLLIN;
    s.fds[2] = (struct pollfd){h->stepd_fd, POLLIN, 0}; /* -1: none, which poll skips */
    s.idle_ms = (long long)cfg.kept_idle * 1000;
    s.empty_since = now_ms();
    serve(&s);
    close(h->listen_fd); /* first: a launch now finds no holder and starts one */
    _exit(0);            /* squashfuse follows (PDEATHSIG), and the mount with the namespace */
}
