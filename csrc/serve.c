/* The holder of a node's shared container (share.c describes the group and the protocol). It
 * runs pivoted into the container, answers each rank of the step with the namespaces and that
 * rank's exec, composed from the record for the rank's own arguments, working directory and
 * environment, watches each app through a pidfd, and leaves when the node's tasks of the step
 * have come and gone, or when none has been there for linger_ms. */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core.h"
#include "gen/runtime.h"

/* The holder has no one to tell (its output is /dev/null): a failure with one rank's connection
 * drops that rank, which starts afresh (share.c); only the rank's request decides a refusal. */
#define MAX_REQUEST (1 << 22)
#define REQUEST_TIMEOUT_MS 10000

/* The whole request, up to the rank's EOF; NULL when it is too large or too slow. */
static char *read_request(int fd, size_t *len)
{
    size_t cap = 1 << 16, got = 0;
    char *buf = HANDLED(malloc(cap)); /* NULL: the rank is dropped (above) */

    while (buf) {
        struct pollfd p = {fd, POLLIN, 0};
        ssize_t n;
        if (HANDLED(poll(&p, 1, REQUEST_TIMEOUT_MS)) <= 0) /* too slow, or failed: dropped (above) */
            break;
        n = HANDLED(recv(fd, buf + got, cap - got - 1, 0)); /* EINTR again, else dropped (above) */
        if (n == -1 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        if (n == 0) {
            buf[got] = '\0';
            *len = got;
            return buf;
        }
        got += (size_t)n;
        if (got + 1 >= cap) {
            char *more = cap >= MAX_REQUEST ? NULL : HANDLED(realloc(buf, cap *= 2)); /* NULL: dropped */
            if (!more)
                free(buf);
            buf = more;
        }
    }
    free(buf);
    return NULL;
}

static int peer_ok(int conn, pid_t *pid)
{
    struct ucred cred;
    socklen_t clen = sizeof cred;
    /* An abstract socket's name is not private: answer our own user only. */
    /* a peer that cannot say who it is gets no answer */
    if (HANDLED(getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &clen)) || cred.uid != getuid())
        return 0;
    *pid = cred.pid;
    return 1;
}

static void refuse(int conn, int code, const char *message)
{
    char head[32];
    int n = snprintf(head, sizeof head, "%s%c%d", SHIM_SHARE_REPLY_ERROR, 0, code);
    if (shim_send_all(conn, head, (size_t)n + 1) == 0)
        shim_send_all(conn, message, strlen(message) + 1);
}

/* A growing buffer of NUL-terminated fields. */
struct out {
    char *p;
    size_t n, cap;
    int oom;
};

static void put(struct out *o, const char *s)
{
    size_t len = strlen(s) + 1;
    if (o->n + len > o->cap) {
        char *more = HANDLED(realloc(o->p, o->cap = 2 * (o->n + len) + 4096)); /* NULL: refused as out of memory */
        if (!more) {
            o->oom = 1;
            return;
        }
        o->p = more;
    }
    memcpy(o->p + o->n, s, len);
    o->n += len;
}

static void put_num(struct out *o, size_t n)
{
    char num[24];
    snprintf(num, sizeof num, "%zu", n);
    put(o, num);
}

static int is_dir(const char *path)
{
    struct stat st;
    return HANDLED(stat(path, &st)) == 0 && S_ISDIR(st.st_mode); /* what cannot be looked at is not one */
}

/* Compose one rank's answer into o; 0, or an exit code with message (refused). */
static int answer(const struct shim_serve *s, char *req, size_t len, struct out *o, char *message, size_t mlen)
{
    const struct shim_rec *r = s->rec;
    char *p = req, *end = req + len, *cwd, *f, **argv, **env;
    const char *workdir;
    int argc, i, image, script;
    size_t nenv = 0;

    if (len < sizeof SHIM_SHARE_REQUEST || strcmp(req, SHIM_SHARE_REQUEST)) {
        snprintf(message, mlen, "malformed request to the node's container");
        return SHIM_E_LAUNCH;
    }
    p += sizeof SHIM_SHARE_REQUEST;
    cwd = p;
    p += strlen(p) + 1;
    argc = p < end ? atoi(p) : -1;
    p += p < end ? strlen(p) + 1 : 0;
    /* out of memory for a request: refused as malformed */
    if (argc < 0 || argc > 1 << 16 || !HANDLED(argv = calloc((size_t)argc + 2, sizeof *argv))) {
        snprintf(message, mlen, "malformed request to the node's container");
        return SHIM_E_LAUNCH;
    }
    argv[0] = (char *)"shimrun";
    for (i = 1; i <= argc && p < end; i++, p += strlen(p) + 1)
        argv[i] = p;
    for (f = p; f < end; f += strlen(f) + 1)
        nenv++;
    env = HANDLED(calloc(nenv + 1, sizeof *env)); /* NULL: refused below */
    for (nenv = 0; env && p < end; p += strlen(p) + 1)
        env[nenv++] = p;
    image = i == argc + 1 ? shim_image_index(argc + 1, argv) : -1;
    if (!env || image < 0 || (image + 1 > argc && strcmp(argv[1], SHIM_RUN_VERB))) {
        free(argv);
        free(env);
        snprintf(message, mlen, "these arguments cannot join a running container (see shimrun --help)");
        return SHIM_E_USAGE;
    }
    /* The holder sees the container: the working-directory rule of a single launch, here. */
    workdir = r->cfg.cwd[0] ? r->cfg.cwd : cwd;
    if (!is_dir(workdir)) {
        if (r->cfg.cwd_required) {
            snprintf(message, mlen, "working directory %s: no such directory in the container (give --pwd a "
                     "directory the image has, or bind one there with --bind)", workdir);
            free(argv);
            free(env);
            return SHIM_E_LAUNCH;
        }
        if (r->cfg.quiet)
            workdir = "/"; /* the rank's own chdir would warn */
    }
    script = shim_wants_script(&r->cfg);
    {
        char **xenv = shim_env_compose(r, env, script ? SHIM_ENV_BASE : SHIM_ENV_DIRECT);
        size_t n = 0;
        int napp = 0;
        const char **app = shim_app_argv(r, argc + 1, argv, image, &napp);
        put(o, SHIM_SHARE_REPLY_OK);
        put(o, workdir);
        put_num(o, (size_t)napp + (script ? 4 : 0));
        if (script) {
            put(o, "/bin/sh");
            put(o, "-c");
            put(o, r->cfg.action_script);
            put(o, "shimrun");
        }
        for (i = 0; i < napp; i++)
            put(o, app[i]);
        if (!app)
            o->oom = 1;
        free((void *)app);
        while (xenv && xenv[n])
            n++;
        put_num(o, n);
        for (n = 0; xenv && xenv[n]; n++)
            put(o, xenv[n]);
        if (!xenv)
            o->oom = 1;
        free(xenv);
    }
    free(argv);
    free(env);
    if (o->oom) {
        snprintf(message, mlen, "the node's container is out of memory");
        return SHIM_E_LAUNCH;
    }
    return 0;
}

static int reply_ok(int conn, const struct shim_serve *s, const struct out *o)
{
    int fds[2] = {s->userns, s->mntns};
    ssize_t w = shim_send_fds(conn, o->p, o->n < 4096 ? o->n : 4096, fds); /* a rank gone: dropped (above) */

    if (w <= 0)
        return -1;
    return shim_send_all(conn, o->p + w, o->n - (size_t)w);
}

void shim_serve(const struct shim_serve *s)
{
    struct pollfd *fds = NULL;
    size_t nfds = 1, cap = 0;
    int served = 0;

    for (;;) {
        int timeout = nfds > 1 ? -1 : served ? s->linger_ms : SHIM_FIRST_MEMBER_MS, n;
        size_t i;
        if (nfds + 1 > cap) {
            /* out of memory: the holder leaves; ranks that come later lead a container of their own */
            struct pollfd *more = HANDLED(realloc(fds, (cap = cap ? 2 * cap : 64) * sizeof *fds));
            if (!more)
                break;
            fds = more;
        }
        fds[0].fd = s->listen_fd;
        fds[0].events = POLLIN;
        n = HANDLED(poll(fds, (nfds_t)nfds, timeout)); /* EINTR again; else the holder leaves (above) */
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (i = 1; i < nfds; i++) /* an app that exited: its pidfd is readable */
            if (fds[i].revents) {
                close(fds[i].fd);
                fds[i--] = fds[--nfds];
            }
        if (fds[0].revents & POLLIN) {
            int conn = HANDLED(accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC)), pidfd, code; /* -1: dropped */
            pid_t pid;
            char message[1024], *req;
            size_t len;
            struct out o = {0};
            if (conn < 0)
                continue;
            /* a rank that cannot be watched (gone already) is dropped */
            if (!peer_ok(conn, &pid) || (pidfd = (int)HANDLED(syscall(SYS_pidfd_open, pid, 0))) < 0) {
                close(conn);
                continue;
            }
            if (!(req = read_request(conn, &len))) {
                close(pidfd);
                close(conn);
                continue;
            }
            code = answer(s, req, len, &o, message, sizeof message);
            free(req);
            if (code || reply_ok(conn, s, &o)) {
                if (code)
                    refuse(conn, code, message);
                close(pidfd);
            } else {
                fds[nfds].fd = pidfd;
                fds[nfds].events = POLLIN;
                fds[nfds++].revents = 0;
                served++;
            }
            free(o.p);
            close(conn);
        }
        if (nfds == 1 && s->expected && served >= s->expected)
            break;
    }
    free(fds);
    close(s->listen_fd); /* a rank connecting now is refused and starts afresh */
}

/* The node's container could not be set up (its leader printed why, once for the node): answer
 * the step's other ranks with the same refusal instead of letting each become a leader in turn
 * and print it all again. Until `expected` ranks (0: unknown) were answered, or none came for
 * linger_ms. */
void shim_refuse_all(int listen_fd, int code, const char *message, int expected, int linger_ms)
{
    int refused = 0;

    while (!(expected && refused >= expected)) {
        struct pollfd p = {listen_fd, POLLIN, 0};
        int conn;
        pid_t pid;
        size_t len;
        char *req;
        if (HANDLED(poll(&p, 1, linger_ms)) <= 0) /* none came, or cannot wait: leave (above) */
            break;
        if ((conn = HANDLED(accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC))) < 0) /* dropped (above) */
            continue;
        if (peer_ok(conn, &pid) && (req = read_request(conn, &len))) {
            refuse(conn, code, message);
            free(req);
            refused++;
        }
        close(conn);
    }
    close(listen_fd);
}
