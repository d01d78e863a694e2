/* Sending on a connected unix socket, for the node's shared container (share.c, serve.c) and the
 * kept mount's holder (kept.c, kepthold.c) alike: the whole of a buffer, and a first part that
 * carries two descriptors (SCM_RIGHTS: the user and mount namespaces a peer enters). */
#define _GNU_SOURCE
#include <string.h>
#include <sys/socket.h>

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
