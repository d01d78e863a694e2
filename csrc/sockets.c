/* A connected unix socket, for the node's shared container (share.c, serve.c) and the kept
 * mount's holder (kept.c, kepthold.c) alike: sending the whole of a buffer, and a first part that
 * carries two descriptors (SCM_RIGHTS: the user and mount namespaces a peer enters); receiving
 * them on the other side. */
#define _GNU_SOURCE
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core.h"

int shim_send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = HANDLED(send(fd, p, n, MSG_NOSIGNAL)); /* a peer gone: the caller starts afresh */
        if (w == -1 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w, n -= (size_t)w;
    }
    return 0;
}

ssize_t shim_send_fds(int fd, const char *p, size_t n, const int fds[2])
{
    char ctl[CMSG_SPACE(2 * sizeof(int))];
    struct iovec iov = {(void *)p, n};
    struct msghdr msg = {0};
    struct cmsghdr *c;
    ssize_t w;

    memset(ctl, 0, sizeof ctl);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl;
    msg.msg_controllen = sizeof ctl;
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(2 * sizeof(int));
    memcpy(CMSG_DATA(c), fds, 2 * sizeof(int));
    do
        w = HANDLED(sendmsg(fd, &msg, MSG_NOSIGNAL)); /* a peer gone: the caller drops it */
    while (w == -1 && errno == EINTR);
    return w;
}

/* Descriptors a message carried that are not the pair asked for (another count, a second pair, a
 * peer's mistake or malice): closed, so that none stays open in the app by accident. */
static void close_passed(struct cmsghdr *c)
{
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int passed;

    for (size_t i = 0; i < count; i++) {
        memcpy(&passed, (char *)CMSG_DATA(c) + i * sizeof(int), sizeof passed);
        close(passed);
    }
}

ssize_t shim_recv_fds(int fd, char *p, size_t n, int fds[2], int *have)
{
    /* room for more than the pair: an extra descriptor is then received and closed, not cut off */
    char ctl[CMSG_SPACE(8 * sizeof(int))];
    struct iovec iov = {p, n};
    struct msghdr msg = {0};
    struct cmsghdr *c;
    ssize_t r;

    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl;
    msg.msg_controllen = sizeof ctl;
    do
        r = HANDLED(recvmsg(fd, &msg, MSG_CMSG_CLOEXEC)); /* a peer gone, a reset: the caller decides */
    while (r == -1 && errno == EINTR);
    if (r == -1)
        return -1;
    for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        if (!*have && c->cmsg_len == CMSG_LEN(2 * sizeof(int))) {
            memcpy(fds, CMSG_DATA(c), 2 * sizeof(int));
            *have = 1;
        } else
            close_passed(c);
    }
    return r;
}
