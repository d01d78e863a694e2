/* A kept mount, the launch's side (kepthold.c is the holder's; README "Kept mounts").
 *
 * The user's squashfuse mount of an image stays up on the node across that user's launches,
 * held by a native holder with an idle timeout, so that the second launch reads from the
 * decompressed pages the first one left. The holder is found by an abstract unix socket,
 *   "\0shimrun-kept/UID/NODE/JOBID/HASH"
 * (NODE: SLURMD_NODENAME or the host name; JOBID: SLURM_JOB_ID or "-"; HASH: the build, the
 * image file's identity, the partition's offset, squashfuse, the staging directory and the id
 * mapping: everything the holder's mount and namespace are made of). Nothing on disk is left
 * behind: the name goes with the holder's socket.
 *
 * A launch connects; when nobody listens it binds the name itself (EADDRINUSE: another launch
 * just did: connect again) and forks the holder, which serves the socket. The holder hands over
 * (SCM_RIGHTS) its user and mount namespaces; the launch enters them and unshares its mount
 * namespace at once, so that its own staging tmpfs, binds and pivot_root happen in a private
 * copy over the kept mount and no launch sees another's binds.
 *
 * An abstract name is not private: anyone can bind it first. Both sides check the peer with
 * SO_PEERCRED: the holder answers only its own user, and a launch talks only to its own user's
 * holder. A name another user holds (squatting it, or bound and silent) makes the launch mount
 * the image for itself, with a warning: the squatter can cost speed, never get a namespace or
 * see a request. Any other failure before the namespaces are entered also falls back to a
 * per-launch mount, which then says what is wrong (a squashfuse that cannot mount). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core.h"
#include "gen/build.h"
#include "gen/runtime.h"

extern char **environ;

#define KEPT_TRIES 200          /* connect-or-bind rounds before the launch mounts the image itself */
#define KEPT_REPLY_MS 30000     /* the holder's answer, its set-up included (squashfuse: up to 10 s) */
#define KEPT_NODE_CHARS 24      /* of the node's name in the socket's (all of it is hashed) */

/* The holder's name for this launch: its length (the leading NUL included), or -1. */
static int kept_name(const struct shim_config *cfg, char *out, size_t outlen)
{
    const char *job = shim_env_get(environ, SHIM_SLURM_JOB_ID);
    char node[256], num[160];
    struct shim_fnv h;
    struct stat st;
    int len;

    /* an image that cannot be looked at has no holder: the per-launch mount says why */
    if (cfg->image_fd >= 0 ? HANDLED(fstat(cfg->image_fd, &st)) == -1 : HANDLED(stat(cfg->image_path, &st)) == -1)
        return -1;
    shim_node_name(environ, node, sizeof node);
    shim_fnv_init(&h);
    shim_fnv_add(&h, SHIM_KEPT_HASH_TAG);
    shim_fnv_add(&h, SHIM_BUILD_ID); /* another build's holder may speak another protocol */
    shim_fnv_add(&h, node);
    snprintf(num, sizeof num, "%llu %llu %lld %lld %lld %lld %d", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino, (long long)st.st_size,
             (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec,
             (long long)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec, cfg->offset, cfg->fakeroot);
    shim_fnv_add(&h, num);
    shim_fnv_add(&h, cfg->squashfuse);
    shim_fnv_add(&h, cfg->stage);
    shim_fnv_hex(&h, num);
    len = snprintf(out, outlen, "%c%s/%u/%.*s/%s/%s", 0, SHIM_KEPT_SOCKET, (unsigned)getuid(), KEPT_NODE_CHARS,
                   node, job && *job ? job : "-", num);
    return len > 0 && (size_t)len < outlen ? len : -1;
}

/* Under Slurm, the job step's slurmstepd among our ancestors, as a pidfd (the holder leaves when
 * it does, so it never outlives the job); -1 when there is none to watch. */
static int stepd_ancestor(void)
{
    const char *job = shim_env_get(environ, SHIM_SLURM_JOB_ID);
    pid_t pid = getppid();
    int depth;

    for (depth = 0; job && *job && pid > 1 && depth < 64; depth++) {
        char path[64], buf[512], *open_paren, *close_paren;
        ssize_t n;
        int fd;
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        /* an ancestor that cannot be read ends the search: nothing to watch */
        if ((fd = HANDLED(open(path, O_RDONLY | O_CLOEXEC))) == -1)
            return -1;
        n = HANDLED(read(fd, buf, sizeof buf - 1)); /* as above */
        close(fd);
        if (n <= 0)
            return -1;
        buf[n] = '\0';
        /* "PID (COMM) STATE PPID ...": COMM may hold anything, the last ')' ends it */
        if (!(open_paren = strchr(buf, '(')) || !(close_paren = strrchr(buf, ')')) || close_paren - buf + 4 >= n)
            return -1;
        *close_paren = '\0';
        if (!strcmp(open_paren + 1, "slurmstepd"))
            return (int)HANDLED(syscall(SYS_pidfd_open, pid, 0)); /* -1: gone already, nothing to watch */
        pid = (pid_t)atoi(close_paren + 4); /* ") S PPID" */
    }
    return -1;
}

/* Bind the name and fork the holder on it. 0: a holder is there to connect to (ours, or another
 * launch's that bound the name first); -1: none can be started (the caller mounts for itself). */
static int start_holder(const struct shim_config *cfg, const struct sockaddr_un *addr, socklen_t alen)
{
    struct shim_kept_hold h = {cfg, -1, -1};
    pid_t pid;
    /* no socket: no holder, and the launch mounts for itself */
    int lfd = HANDLED(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));

    if (lfd == -1)
        return -1;
    if (HANDLED(bind(lfd, (const struct sockaddr *)addr, alen)) == -1) { /* EADDRINUSE: another launch's */
        int err = errno;
        close(lfd);
        if (err != EADDRINUSE)
            return -1;
        usleep(500); /* it is between bind and listen, or its holder is leaving: connect again */
        return 0;
    }
    if (HANDLED(listen(lfd, SOMAXCONN)) == -1) { /* as for the socket */
        close(lfd);
        return -1;
    }
    h.listen_fd = lfd;
    h.stepd_fd = stepd_ancestor();
    shim_debug("kept mount of %s: no holder at @%s: starting one", cfg->image_path, addr->sun_path + 1);
    fflush(NULL);
    /* Twice: the holder must not be a child of this launch's app, which may wait for all of its
     * children. A failed fork leaves no holder: the next connect is refused and tries again. */
    if ((pid = HANDLED(fork())) == 0) {
        if (HANDLED(fork()) == 0) /* see above */
            shim_kept_hold(&h);
        _exit(0);
    }
    close(lfd);
    if (h.stepd_fd >= 0)
        close(h.stepd_fd);
    if (pid > 0)
        BEST_EFFORT(waitpid(pid, NULL, 0)); /* the middle process, gone at once: only reaped */
    return pid > 0 ? 0 : -1;
}

/* Ask the holder on fd (connected) for its namespaces. 1: *userns, *mntns set; 0: it was leaving
 * (connect again); -1: not to be used (another user's, silent, or it could not mount). */
static int ask(int fd, const struct shim_config *cfg, int *userns, int *mntns)
{
    char req[64], buf[512];
    struct ucred cred = {0, (uid_t)-1, (gid_t)-1}; /* unknown until the kernel says */
    socklen_t clen = sizeof cred;
    size_t got = 0;
    int n, have = 0, fds[2];

    /* a peer that cannot say who it is counts as another user's */
    if (HANDLED(getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen)) == -1 || cred.uid != getuid()) {
        if (!cfg->quiet)
            fprintf(stderr, "shimrun: warning: the kept mount's socket for %s belongs to another user (uid %d): "
                    "mounting the image for this launch only (that user can slow launches down, never enter "
                    "them)\n", cfg->image_path, (int)cred.uid);
        return -1;
    }
    n = snprintf(req, sizeof req, "%s%c%u", SHIM_KEPT_REQUEST, 0, cfg->kept_idle) + 1;
    /* one small write into an empty socket; a holder gone before it read it: connect again */
    if (HANDLED(send(fd, req, (size_t)n, MSG_NOSIGNAL)) != n || HANDLED(shutdown(fd, SHUT_WR)) == -1)
        return 0;
    while (got < sizeof buf - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        ssize_t r;
        /* a holder that neither answers nor goes (stopped): this launch mounts for itself */
        if (HANDLED(poll(&p, 1, KEPT_REPLY_MS)) == 0)
            break;
        if ((r = shim_recv_fds(fd, buf + got, sizeof buf - 1 - got, fds, &have)) <= 0)
            break; /* EOF, or a reset: the holder left */
        got += (size_t)r;
    }
    if (have) {
        *userns = fds[0];
        *mntns = fds[1];
    }
    buf[got] = '\0';
    if (have && got > sizeof SHIM_SHARE_REPLY_OK && !strcmp(buf, SHIM_SHARE_REPLY_OK)) {
        const char *holder = buf + sizeof SHIM_SHARE_REPLY_OK;
        const char *fuse = holder + strlen(holder) + 1 < buf + got ? holder + strlen(holder) + 1 : "?";
        shim_debug("kept mount of %s: joined holder pid %s (squashfuse pid %s)", cfg->image_path, holder, fuse);
        return 1;
    }
    if (have) {
        close(*userns);
        close(*mntns);
    }
    if (got > sizeof SHIM_SHARE_REPLY_ERROR && !strcmp(buf, SHIM_SHARE_REPLY_ERROR)) {
        shim_debug("kept mount of %s: the holder cannot serve it (%s): mounting for this launch", cfg->image_path,
                   buf + sizeof SHIM_SHARE_REPLY_ERROR);
        return -1;
    }
    return got == 0 ? 0 : -1;
}

int shim_kept_enter(const struct shim_config *cfg, int *kept_fd)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char path[4096];
    socklen_t alen;
    int len, tries, userns = -1, mntns = -1, rc = 0;

    if ((len = kept_name(cfg, addr.sun_path, sizeof addr.sun_path)) < 0)
        return 0;
    alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)len);
    for (tries = 0; tries < KEPT_TRIES && rc == 0; tries++) {
        /* no socket: the launch mounts for itself */
        int fd = HANDLED(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)), err;
        if (fd == -1)
            return 0;
        if (HANDLED(connect(fd, (const struct sockaddr *)&addr, alen)) == 0) { /* errno decides below */
            rc = ask(fd, cfg, &userns, &mntns);
            close(fd);
            if (rc == 0)
                usleep(1000); /* the holder was leaving: its name is free in a moment */
            continue;
        }
        err = errno;
        close(fd);
        if (err != ECONNREFUSED && err != ENOENT && err != EAGAIN)
            return 0;
        if (start_holder(cfg, &addr, alen) == -1)
            return 0;
    }
    if (rc != 1) {
        if (rc == 0 && !cfg->quiet) /* bound, but no one answers or listens there: a squatter */
            fprintf(stderr, "shimrun: warning: the kept mount's socket for %s is bound but does not answer: "
                    "mounting the image for this launch only\n", cfg->image_path);
        return 0;
    }
    /* From here on there is no way back: a failure is the launch's. */
    Z(setns(userns, CLONE_NEWUSER), "enter the kept mount's user namespace");
    Z(setns(mntns, CLONE_NEWNS), "enter the kept mount's mount namespace");
    close(userns);
    close(mntns);
    /* A copy of its own: this launch's mounts stay out of the holder's and every other launch's. */
    Z(unshare(CLONE_NEWNS), "unshare a private copy of the kept mount's namespace");
    snprintf(path, sizeof path, "%s/%s", cfg->stage, SHIM_KEPT_DIR);
    Z(*kept_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC), "open the kept mount %s", path);
    return 1;
}
