/* The after-start audit of loaded objects (record AUDIT; README "What actually ran"), the
 * executor's side. The audit library (audit/shim_audit.c), named in the app's LD_AUDIT by the
 * planner's environment rules and bound read-only into the container, reports every object each
 * process maps: on SHIM_AUDIT_FD, one end of a datagram socket pair left open in the app, or, in
 * a process that closed it (or a rank that joined a node's shared container), on a FIFO made in
 * the launch's staging tmpfs (SHIM_AUDIT_FIFO, in the one directory bound for the audit, with the
 * library), whose descriptors the child that made it (or the node's holder) hands to the waiting
 * parent over a second socket pair. The parent (provenance.c's fork, shared) reads both while it
 * forwards signals, so that no writer ever waits for long, and keeps each path once (the first
 * process that reported it); leading a shared container, it reads on until the holder has left,
 * so that every rank of the node is in its findings, printed once. auditfind.c turns the list
 * into findings and the provenance record's "loaded" list. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core.h"

/* The child's end of the FIFO hand-over, for shim_audit_stage (-1: none, e.g. a node's holder). */
static int fifo_chan = -1;

int shim_audit_open(struct shim_audit *a, int shared, int names, struct shim_result *res)
{
    memset(a, 0, sizeof *a);
    a->fifo_r = a->fifo_w = a->chan[0] = a->chan[1] = a->held[0] = a->held[1] = -1;
    a->names = names;
    if (ZR(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, a->sock), res->message, sizeof res->message,
           "a socket for the audit of loaded objects")
        || ZR(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, a->chan), res->message, sizeof res->message,
              "a socket for the audit of loaded objects")
        || (shared && ZR(pipe2(a->held, O_CLOEXEC), res->message, sizeof res->message,
                         "a pipe for the audit of loaded objects")))
        return res->code = SHIM_E_LAUNCH, -1;
    return 0;
}

/* In the child that becomes the app: the report socket on SHIM_AUDIT_FD, not close-on-exec. */
int shim_audit_child(struct shim_audit *a, struct shim_result *res)
{
    close(a->sock[0]);
    close(a->chan[0]);
    if (ZR(dup2(a->sock[1], SHIM_AUDIT_FD), res->message, sizeof res->message,
           "put the audit's socket on descriptor %d", SHIM_AUDIT_FD))
        return res->code = SHIM_E_LAUNCH, -1;
    close(a->sock[1]);
    fifo_chan = a->chan[1];
    /* held[1] stays, close-on-exec: the app drops it, the node's holder forked from here keeps it */
    if (a->held[0] >= 0)
        close(a->held[0]);
    return 0;
}

/* In the launch's staging tmpfs, before the binds: the one directory the record binds read-only at
 * SHIM_AUDIT_DIR, holding the audit library (its host file bound on an empty file: nothing is
 * copied) and the FIFO; then the FIFO's descriptors to the waiting parent (a reader, so that
 * writers can open it, and a writer, so that the reader never sees the end of it while the app
 * runs). One bind of a directory made here costs a few system calls; a bind per file under a
 * directory the image lacks cost an underlay over the image's "/" (a mount per top-level entry). */
void shim_audit_stage(const char *stage, const char *library)
{
    char dir[4096], path[4096 + 64];
    int fds[2];

    snprintf(dir, sizeof dir, "%s/%s", stage, SHIM_AUDIT_STAGED_DIR);
    Z(mkdir(dir, 0755), "make the audit's directory %s", dir);
    snprintf(path, sizeof path, "%s/%s", dir, SHIM_AUDIT_LIBRARY_NAME);
    Z(fds[0] = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644), "make the audit library's mount point %s",
      path);
    close(fds[0]);
    Z(mount(library, path, NULL, MS_BIND, NULL), "bind the audit library %s to %s", library, path);
    snprintf(path, sizeof path, "%s/%s", dir, SHIM_AUDIT_FIFO_NAME);
    Z(mkfifo(path, 0600), "make the audit's FIFO %s", path);
    if (fifo_chan < 0)
        return; /* no one reads it here (a node's holder): a process without the socket drops its lines */
    Z(fds[0] = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC), "open the audit's FIFO %s", path);
    Z(fds[1] = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC), "open the audit's FIFO %s", path);
    Z(shim_send_fds(fifo_chan, "f", 1, fds), "hand the audit's FIFO to shimrun");
    close(fds[0]);
    close(fds[1]);
    close(fifo_chan);
    fifo_chan = -1;
}

static void take_fifo(struct shim_audit *a)
{
    char one, space[CMSG_SPACE(2 * sizeof(int))];
    struct iovec iov = {&one, 1};
    struct msghdr msg = {0};
    struct cmsghdr *c;
    int fds[2];

    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space;
    msg.msg_controllen = sizeof space;
    /* nothing, or the child gone before it made the FIFO: only the socket's reports, then */
    if (HANDLED(recvmsg(a->chan[0], &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)) > 0 && (c = CMSG_FIRSTHDR(&msg))
        && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(2 * sizeof(int))) {
        memcpy(fds, CMSG_DATA(c), sizeof fds);
        a->fifo_r = fds[0];
        a->fifo_w = fds[1];
    }
    close(a->chan[0]);
    a->chan[0] = -1;
}

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

/* The process's name now ("" when it is gone), read once per process in a row of its reports. */
static void comm_of(struct shim_audit *a, long pid, char *out)
{
    char path[64];
    ssize_t n;
    int fd;

    if (!a->names) { /* no record to name it in: nothing read while the app runs */
        out[0] = '\0';
        return;
    }
    if (pid != a->last_pid) {
        a->last_pid = pid;
        a->last_comm[0] = '\0';
        snprintf(path, sizeof path, "/proc/%ld/comm", pid);
        if ((fd = HANDLED(open(path, O_RDONLY | O_CLOEXEC))) >= 0) { /* gone: no name */
            n = HANDLED(read(fd, a->last_comm, sizeof a->last_comm - 1)); /* as above */
            a->last_comm[n > 0 ? n : 0] = '\0';
            a->last_comm[strcspn(a->last_comm, "\n")] = '\0';
            close(fd);
        }
    }
    memcpy(out, a->last_comm, sizeof a->last_comm);
}

static int grow(struct shim_audit *a)
{
    size_t cap = a->cap ? a->cap * 2 : 512, i;
    struct shim_loaded **slots = HANDLED(calloc(cap, sizeof *slots)); /* no memory: the rest is not kept */

    if (!slots)
        return -1;
    for (i = 0; i < a->n; i++) {
        size_t at = hash(a->obj[i]->path) & (cap - 1);
        while (slots[at])
            at = (at + 1) & (cap - 1);
        slots[at] = a->obj[i];
    }
    free(a->slots);
    a->slots = slots;
    a->cap = cap;
    {
        struct shim_loaded **obj = HANDLED(realloc(a->obj, cap * sizeof *obj)); /* as above */
        if (!obj)
            return -1;
        a->obj = obj;
    }
    return 0;
}

/* One report, "pid\tdev\tino\tpath" (the newline gone): kept unless its path was seen before. */
static void take_line(struct shim_audit *a, char *line)
{
    char *dev, *ino, *path;
    struct shim_loaded *o;
    size_t at;

    if (!(dev = strchr(line, '\t')) || !(ino = strchr(dev + 1, '\t')) || !(path = strchr(ino + 1, '\t'))
        || !path[1])
        return; /* not a report of the library's */
    *dev++ = *ino++ = *path++ = '\0';
    if ((a->n + 1) * 2 > a->cap && grow(a))
        return;
    for (at = hash(path) & (a->cap - 1); a->slots[at]; at = (at + 1) & (a->cap - 1))
        if (!strcmp(a->slots[at]->path, path))
            return;
    if (!(o = HANDLED(calloc(1, sizeof *o + strlen(path) + 1)))) /* no memory: not kept */
        return;
    o->pid = strtol(line, NULL, 10);
    o->dev = strtoull(dev, NULL, 10);
    o->ino = strtoull(ino, NULL, 10);
    strcpy(o->path, path);
    comm_of(a, o->pid, o->exe);
    a->slots[at] = o;
    a->obj[a->n++] = o;
}

static void drain_socket(struct shim_audit *a)
{
    char buf[4100];
    ssize_t n;

    /* EAGAIN: all read for now; any other failure: no more reports to read */
    while ((n = HANDLED(recv(a->sock[0], buf, sizeof buf - 1, MSG_DONTWAIT))) > 0) {
        buf[n] = '\0';
        buf[strcspn(buf, "\n")] = '\0';
        take_line(a, buf);
    }
}

static void drain_fifo(struct shim_audit *a)
{
    ssize_t n;
    char *line, *nl;

    /* EAGAIN: all read for now; any other failure: no more reports to read */
    while (a->fifo_r >= 0
           && (n = HANDLED(read(a->fifo_r, a->carry + a->ncarry, sizeof a->carry - 1 - a->ncarry))) > 0) {
        a->ncarry += (size_t)n;
        a->carry[a->ncarry] = '\0';
        for (line = a->carry; (nl = strchr(line, '\n')); line = nl + 1) {
            *nl = '\0';
            take_line(a, line);
        }
        a->ncarry = strlen(line);
        memmove(a->carry, line, a->ncarry);
        if (a->ncarry == sizeof a->carry - 1)
            a->ncarry = 0; /* no line is this long: not a report */
    }
}

/* A node's shared container: the other ranks of the step joined the holder's namespaces, and
 * their processes report on the FIFO (they have no SHIM_AUDIT_FD), read here until the last of
 * them has ended, which the holder's leaving says (its end of `held` hangs up). A signal that
 * is not SIGCHLD (the step being ended) stops the wait: what was read is reported. */
static void wait_holder(struct shim_audit *a, int sfd)
{
    struct signalfd_siginfo info;
    int stop = 0;

    while (a->held[0] >= 0 && !stop) {
        struct pollfd p[4] = {{a->held[0], POLLIN, 0}, {sfd, POLLIN, 0}, {a->sock[0], POLLIN, 0},
                              {a->fifo_r, POLLIN, 0}};
        if (HANDLED(poll(p, 4, -1)) < 0 && errno != EINTR) /* EINTR: again; else: no more to read */
            break;
        if (p[2].revents)
            drain_socket(a);
        if (p[3].revents)
            drain_fifo(a);
        while (sfd >= 0 && HANDLED(read(sfd, &info, sizeof info)) == (ssize_t)sizeof info) /* EAGAIN: all read */
            stop |= info.ssi_signo != SIGCHLD;
        stop |= p[0].revents != 0; /* hung up: the holder has left (nothing is ever written to it) */
    }
    if (a->held[0] >= 0)
        close(a->held[0]);
    a->held[0] = -1;
}

/* Forward signals to `child` and read the reports until it ends (and, leading a node's shared
 * container, until its holder has left); the child's wait status. */
int shim_audit_wait(struct shim_audit *a, pid_t child)
{
    sigset_t set;
    int sfd, w = 0, status;
    pid_t pid;

    close(a->sock[1]);
    close(a->chan[1]);
    if (a->held[1] >= 0)
        close(a->held[1]);
    shim_forwarded_set(&set);
    /* without a signalfd (out of descriptors), the plain wait: the reports are then read at the end */
    if ((sfd = HANDLED(signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK))) < 0) {
        status = shim_forward_until_exit(child);
        take_fifo(a);
        wait_holder(a, -1);
        drain_socket(a);
        drain_fifo(a);
        return status;
    }
    for (;;) {
        struct pollfd p[4] = {{sfd, POLLIN, 0}, {a->sock[0], POLLIN, 0}, {a->chan[0], POLLIN, 0},
                              {a->fifo_r, POLLIN, 0}};
        struct signalfd_siginfo info;
        while ((pid = HANDLED(waitpid(-1, &w, WNOHANG))) > 0) /* ECHILD: none left, below */
            if (pid == child)
                goto done;
        if (pid == -1 && errno == ECHILD) {
            w = 0;
            goto done;
        }
        if (HANDLED(poll(p, 4, -1)) < 0 && errno != EINTR) /* EINTR: again; else the plain wait */
            break;
        while (HANDLED(read(sfd, &info, sizeof info)) == (ssize_t)sizeof info) /* EAGAIN: all read */
            if (info.ssi_signo != SIGCHLD)
                BEST_EFFORT(kill(child, (int)info.ssi_signo)); /* the child may be gone: its status next */
        if (p[1].revents)
            drain_socket(a);
        if (p[2].revents)
            take_fifo(a);
        if (p[3].revents)
            drain_fifo(a);
    }
    w = shim_forward_until_exit(child);
done:
    if (a->chan[0] >= 0)
        take_fifo(a);
    wait_holder(a, sfd);
    close(sfd);
    drain_socket(a);
    drain_fifo(a);
    return w;
}
