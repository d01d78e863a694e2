/* `shimrun`, native front-end. When this rank's node already has the step's shared container
 * (shim/launch/share.py), join it without starting Python: name the group exactly as share.py
 * does, send our argv, cwd and environment to the holder, receive the namespaces and what to exec
 * (the holder composes the environment with the same code as a full launch), setns, exec.
 * Anything else (no group, no holder yet, a subcommand, an option we do not know) goes to the
 * Python implementation with the same arguments: SHIM_PYTHON -I -c "...entry()" ARGS. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "gen/options.h"
#include "join.h"
#include "shim_core.h"

#ifndef SHIM_PYTHON
#define SHIM_PYTHON "/usr/bin/python3"
#endif

extern char **environ;

/* ---- the Python implementation ------------------------------------------------------------ */

static void python(int argc, char **argv) __attribute__((noreturn));
static void python(int argc, char **argv)
{
    char **args = calloc((size_t)argc + 4, sizeof *args);
    int i;

    if (args == NULL) {
        perror("shimrun: error: allocate arguments");
        exit(SHIM_E_LAUNCH);
    }
    /* -I: isolated, so neither PYTHON* variables nor a shim/ directory where the job happens to
     * run can change which code runs; -c instead of -m spares runpy. */
    args[0] = (char *)SHIM_PYTHON;
    args[1] = (char *)"-I";
    args[2] = (char *)"-c";
    args[3] = (char *)"from shim.cli.main import entry; entry()";
    for (i = 1; i < argc; i++)
        args[i + 3] = argv[i];
    execv(SHIM_PYTHON, args);
    fprintf(stderr, "shimrun: error: cannot run %s: %s (reinstall shim: scripts/install.sh)\n", SHIM_PYTHON,
            strerror(errno));
    exit(SHIM_E_LAUNCH);
}

/* ---- the group's name (keep in step with share.py's group_key) --------------------------- */

struct fnv {
    uint64_t a, b;
};

static void fnv_add(struct fnv *h, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    do { /* the terminating NUL is hashed too: fields cannot run into each other */
        h->a = (h->a ^ *p) * 0x100000001b3ULL;
        h->b = (h->b ^ *p) * 0x100000001b3ULL;
    } while (*p++);
}

static int is_setting(const char *e)
{
    static const char *const prefixes[] = {"SHIMRUN", "APPTAINERENV_", "SINGULARITYENV_", "APPTAINER_",
                                           "SINGULARITY_", "PATH=", "HOME=", NULL};
    int i;
    for (i = 0; prefixes[i]; i++)
        if (!strncmp(e, prefixes[i], strlen(prefixes[i])))
            return 1;
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Which argument is the image? Options with a value are skipped (the table is shim/options.py's,
 * generated); an option we do not know, or one with which shimrun does not launch (--dry-run),
 * means "let Python decide" (-1). */
static int image_index(int argc, char **argv)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const struct shim_option *o;
        if (a[0] != '-')
            return i;
        for (o = SHIM_OPTIONS; o->name; o++) {
            size_t n = strlen(o->name);
            if (!strcmp(a, o->name)) {
                i += o->takes_value;
                break;
            }
            if (o->takes_value && a[1] == '-' && !strncmp(a, o->name, n) && a[n] == '=')
                break;
        }
        if (!o->name || !o->launches)
            return -1;
    }
    return -1;
}

static int group_name(int argc, char **argv, int image, char *out, size_t outlen)
{
    const char *share = getenv("SHIMRUN_SHARE"), *job = getenv("SLURM_JOB_ID"), *step = getenv("SLURM_STEP_ID");
    const char *node = getenv("SLURMD_NODENAME");
    char host[256], scope[512], cwd[PATH_MAX], real[PATH_MAX], num[96], uid[32];
    struct fnv h = {0xcbf29ce484222325ULL, 0x84222325cbf29ce4ULL};
    struct stat st;
    char **settings;
    size_t n = 0, i;
    int len;

    if (share && (!strcasecmp(share, "0") || !strcasecmp(share, "no") || !strcasecmp(share, "off")
                  || !strcasecmp(share, "false")))
        return -1;
    if (!node || !*node) {
        if (gethostname(host, sizeof host) == -1)
            return -1;
        host[sizeof host - 1] = '\0';
        node = host;
    }
    if (job && *job && step && *step)
        snprintf(scope, sizeof scope, "slurm-%s.%s@%s", job, step, node);
    else if (share && (!strcasecmp(share, "1") || !strcasecmp(share, "yes") || !strcasecmp(share, "on")
                       || !strcasecmp(share, "true")))
        snprintf(scope, sizeof scope, "parent-%d@%s", (int)getppid(), node);
    else if (share && *share)
        snprintf(scope, sizeof scope, "tag-%s@%s", share, node);
    else
        return -1;
    if (!getcwd(cwd, sizeof cwd) || !realpath(argv[image], real) || stat(argv[image], &st) == -1)
        return -1;
    snprintf(uid, sizeof uid, "%u", (unsigned)getuid());
    fnv_add(&h, "shim-share-v1");
    fnv_add(&h, uid);
    fnv_add(&h, scope);
    fnv_add(&h, cwd);
    fnv_add(&h, real);
    snprintf(num, sizeof num, "%llu %llu %lld %lld", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
             (long long)st.st_size, (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec);
    fnv_add(&h, num);
    fnv_add(&h, "--args--");
    for (len = 1; len < argc; len++)
        fnv_add(&h, argv[len]);
    fnv_add(&h, "--env--");
    for (i = 0; environ[i]; i++)
        n++;
    settings = calloc(n + 1, sizeof *settings);
    if (!settings)
        return -1;
    for (i = 0, n = 0; environ[i]; i++)
        if (is_setting(environ[i]))
            settings[n++] = environ[i];
    qsort(settings, n, sizeof *settings, cmp_str);
    for (i = 0; i < n; i++)
        fnv_add(&h, settings[i]);
    free(settings);
    len = snprintf(out, outlen, "%cshimrun/%s/%s/%016llx%016llx", 0, uid, scope, (unsigned long long)h.a,
                   (unsigned long long)h.b);
    return len > 0 && (size_t)len < outlen ? len : -1;
}

/* ---- talking to the holder ---------------------------------------------------------------- */

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w == -1 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w, n -= (size_t)w;
    }
    return 0;
}

static int send_field(int fd, const char *s) { return send_all(fd, s, strlen(s) + 1); }

static int request(int fd, int argc, char **argv, const char *cwd)
{
    char num[16];
    int i;

    snprintf(num, sizeof num, "%d", argc - 1);
    if (send_field(fd, "SHIMREQ1") || send_field(fd, cwd) || send_field(fd, num))
        return -1;
    for (i = 1; i < argc; i++)
        if (send_field(fd, argv[i]))
            return -1;
    for (i = 0; environ[i]; i++)
        if (send_field(fd, environ[i]))
            return -1;
    return shutdown(fd, SHUT_WR);
}

/* The reply: the two namespace fds with the first bytes, then fields up to EOF. */
static char *reply(int fd, int *userns, int *mntns, size_t *len)
{
    char ctl[CMSG_SPACE(2 * sizeof(int))];
    size_t cap = 1 << 16, got = 0;
    char *buf = malloc(cap);
    int have_fds = 0;

    while (buf) {
        struct iovec iov = {buf + got, cap - got - 1};
        struct msghdr msg = {0};
        struct cmsghdr *c;
        ssize_t n;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl;
        msg.msg_controllen = sizeof ctl;
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (!have_fds && (c = CMSG_FIRSTHDR(&msg)) && c->cmsg_type == SCM_RIGHTS
            && c->cmsg_len == CMSG_LEN(2 * sizeof(int))) {
            memcpy(userns, CMSG_DATA(c), sizeof(int));
            memcpy(mntns, (char *)CMSG_DATA(c) + sizeof(int), sizeof(int));
            have_fds = 1;
        }
        got += (size_t)n;
        if (got + 1 >= cap) {
            char *more = realloc(buf, cap *= 2);
            if (!more)
                free(buf);
            buf = more;
        }
    }
    if (!buf)
        return NULL;
    buf[got] = '\0';
    *len = got;
    if (!have_fds && !(got >= 3 && !memcmp(buf, "ER", 3))) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* Connect to the node's holder; or, when there is none, become the leader: bind the group's name
 * and listen at once, so that every other rank of the step queues on it while our Python starts
 * and the holder sets the container up (they get their answer when it serves). The listening
 * socket reaches Python as SHIMRUN_LISTEN_FD. Returns the connected fd, or -1 (run Python). */
static int connect_or_lead(const struct sockaddr_un *addr, socklen_t alen)
{
    char num[16];
    int tries;

    for (tries = 0; tries < 2000; tries++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), lfd;
        if (fd == -1)
            return -1;
        if (connect(fd, (const struct sockaddr *)addr, alen) == 0) {
            /* An abstract name is not private: talk only to our own user's holder (another
             * user's process squatting the name must not get our environment). */
            struct ucred cred;
            socklen_t clen = sizeof cred;
            if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0 && cred.uid == getuid())
                return fd;
            close(fd);
            fprintf(stderr, "shimrun: warning: the node's shared-container socket belongs to another user: "
                            "running this rank in a container of its own\n");
            setenv("SHIMRUN_SHARE", "0", 1); /* Python then runs this rank in a container of its own */
            return -1;
        }
        close(fd);
        if (errno != ECONNREFUSED && errno != ENOENT && errno != EAGAIN)
            return -1;
        lfd = socket(AF_UNIX, SOCK_STREAM, 0); /* inherited by Python: no CLOEXEC */
        if (lfd == -1)
            return -1;
        if (bind(lfd, (const struct sockaddr *)addr, alen) == 0) {
            if (listen(lfd, SOMAXCONN) == -1) {
                close(lfd);
                return -1;
            }
            snprintf(num, sizeof num, "%d", lfd);
            setenv("SHIMRUN_LISTEN_FD", num, 1);
            return -1;
        }
        close(lfd);
        if (errno != EADDRINUSE)
            return -1;
        usleep(500); /* the leader is between bind and listen: try again */
    }
    return -1;
}

/* Split NUL-terminated fields: "OK" cwd argc argv... envc envp... | "ER" code message. */
static char *next_field(char **p, const char *end)
{
    char *f = *p;
    if (f >= end)
        return NULL;
    *p += strlen(f) + 1;
    return f;
}

int main(int argc, char **argv)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char cwd[PATH_MAX], err[1024], *buf, *p, *end, *f, **xargv, **xenv;
    int image, len, fd, userns = -1, mntns = -1, n, i, code;
    size_t got;

    if (shim_standard_fds() < 0) {
        perror("shimrun: error: open /dev/null for a closed standard descriptor");
        return SHIM_E_LAUNCH;
    }
    image = argc > 1 ? image_index(argc, argv) : -1;
    if (image < 0 || image + 1 >= argc)
        python(argc, argv);
    len = group_name(argc, argv, image, addr.sun_path, sizeof addr.sun_path);
    if (len < 0 || !getcwd(cwd, sizeof cwd))
        python(argc, argv);
    fd = connect_or_lead(&addr, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    if (fd < 0)
        python(argc, argv); /* we lead (the socket is passed on), or sharing is not possible here */
    if (request(fd, argc, argv, cwd) || !(buf = reply(fd, &userns, &mntns, &got)))
        python(argc, argv); /* the holder was leaving (or failed): start afresh */
    close(fd);
    p = buf, end = buf + got;
    f = next_field(&p, end);
    if (f && !strcmp(f, "ER")) {
        const char *c = next_field(&p, end), *m = next_field(&p, end);
        fprintf(stderr, "shimrun: error: %s\n", m ? m : "the node's container refused this rank");
        return c ? atoi(c) : SHIM_E_LAUNCH;
    }
    if (!f || strcmp(f, "OK") || !(f = next_field(&p, end)))
        python(argc, argv);
    strncpy(cwd, f, sizeof cwd - 1);
    cwd[sizeof cwd - 1] = '\0';
    f = next_field(&p, end);
    n = f ? atoi(f) : 0;
    xargv = calloc((size_t)n + 1, sizeof *xargv);
    for (i = 0; xargv && i < n; i++)
        xargv[i] = next_field(&p, end);
    f = next_field(&p, end);
    n = f ? atoi(f) : 0;
    xenv = calloc((size_t)n + 1, sizeof *xenv);
    for (i = 0; xenv && i < n; i++)
        xenv[i] = next_field(&p, end);
    if (!xargv || !xenv || !xargv[0]) {
        fprintf(stderr, "shimrun: error: malformed answer from the node's container (rerun with SHIMRUN_SHARE=0)\n");
        return SHIM_E_LAUNCH;
    }
    shim_join_exec(userns, mntns, cwd, xargv, xenv, err, sizeof err, &code);
    fprintf(stderr, "shimrun: error: %s\n", err);
    return code;
}
