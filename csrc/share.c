/* One container per node per job step, a rank's side (serve.c is the holder's).
 *
 * Under `srun` (SLURM_JOB_ID and SLURM_STEP_ID set) ranks share by default; SHIMRUN_SHARE=0
 * turns it off; elsewhere SHIMRUN_SHARE=1 groups the processes with the same parent (the
 * launcher's proxy on that node) and SHIMRUN_SHARE=TAG groups by TAG. A step with one task on
 * this node shares nothing: a single launch is cheaper than a holder.
 *
 * The group is named by an abstract unix socket (nothing on disk to leave behind): the user,
 * the job step, the node (SLURMD_NODENAME: several slurmd on one machine are several nodes) and
 * a hash of everything that shapes the container: shimrun's arguments up to the command (its
 * options, the image, the command: what the launch record's key holds, argv.c), the working
 * directory, the image file's identity and the runtime's own settings in the environment. The
 * command's own arguments are left out: each rank brings its own (serve.c), so the ranks of
 * `srun --multi-prog` running one program with their own arguments (%t) share the container. The first rank
 * to bind the name leads (executor.c forks the holder); every rank, the leader included, sends
 * the holder its arguments, working directory and environment and gets back the namespaces
 * (SCM_RIGHTS) and what to exec; it enters them and execs, keeping its pid, so signals and exit
 * status stay native.
 *
 * Protocol, NUL-terminated fields: request "SHIMREQ1" cwd argc argv... environ... (then EOF);
 * reply "OK" cwd argc argv... envc envp... with the two namespace fds on the first bytes, or
 * "ER" code message. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "gen/runtime.h"

extern struct shim_result *shim_current_result;
extern jmp_buf shim_unwind;
extern char **environ;

#define JOIN_TIMEOUT_S 120 /* how long a rank keeps trying to join or lead */

/* The holder is set up exactly like a single launch up to, not including, the exec: namespaces,
 * image mount, binds, pivot_root. It keeps fds of its user and mount namespaces to hand to the
 * ranks, and ignores the signals scancel and srun send to the step's tasks: it leaves when the
 * apps are gone (Slurm's final SIGKILL of the step also ends it, and squashfuse with it). */
int shim_hold_setup(const struct shim_config *shared, struct shim_result *res, int *userns, int *mntns)
{
    struct shim_config own = *shared, *cfg = &own;
    sigset_t set;

    /* A shared container mounts the image itself: kept mounts stay out of shared steps (README). */
    if (own.image_kind == SHIM_IMG_KEPT)
        own.image_kind = SHIM_IMG_SQUASHFS;
    if (shim_prepare(cfg, res))
        return res->code;
    shim_begin(cfg, res);
    if (setjmp(shim_unwind))
        return res->code;
    *userns = open("/proc/self/ns/user", O_RDONLY | O_CLOEXEC);
    Z(*userns, "open /proc/self/ns/user");
    *mntns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    Z(*mntns, "open /proc/self/ns/mnt");
    if (shim_setup_root(cfg, res))
        return res->code;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    Z(sigprocmask(SIG_BLOCK, &set, NULL), "block the step's signals in the holder");
    return 0;
}

static int word(const char *s, const char *const *words)
{
    for (; *words; words++)
        if (!strcasecmp(s, *words))
            return 1;
    return 0;
}

/* What shapes the container besides the arguments: the runtime's settings, as in a record's key
 * (argv.c), and the variables of SHIM_SHARE_SHAPING. */
static int is_setting(const char *e)
{
    static const char *const shaping[] = SHIM_SHARE_SHAPING;
    int i;
    for (i = 0; shaping[i]; i++)
        if (!strncmp(e, shaping[i], strlen(shaping[i])) && e[strlen(shaping[i])] == '=')
            return 1;
    return shim_is_key_setting(e);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int shim_group_name(const struct shim_run *r, unsigned uid_of, char *out, size_t outlen)
{
    static const char *const off[] = SHIM_SHARE_OFF, *const on[] = SHIM_SHARE_ON;
    const char *share = shim_env_get(r->environ, SHIM_VAR_SHARE), *job = shim_env_get(r->environ, SHIM_SLURM_JOB_ID);
    const char *step = shim_env_get(r->environ, SHIM_SLURM_STEP_ID);
    char *const *env = r->environ;
    char node[256], scope[512], real[PATH_MAX], num[96], uid[32];
    struct shim_fnv h;
    struct stat st;
    const char **settings;
    size_t n = 0, i;
    int len;

    if (share && word(share, off))
        return -1;
    shim_node_name(env, node, sizeof node);
    if (job && *job && step && *step)
        snprintf(scope, sizeof scope, "slurm-%s.%s@%s", job, step, node);
    else if (share && word(share, on))
        snprintf(scope, sizeof scope, "parent-%d@%s", (int)getppid(), node);
    else if (share && *share)
        snprintf(scope, sizeof scope, "tag-%s@%s", share, node);
    else
        return -1;
    /* an image that cannot be looked at shares nothing: the launch itself then says why */
    if (!HANDLED(realpath(r->argv[r->image], real)) || HANDLED(stat(r->argv[r->image], &st)) == -1)
        return -1;
    snprintf(uid, sizeof uid, "%u", uid_of);
    shim_fnv_init(&h);
    shim_fnv_add(&h, SHIM_SHARE_HASH_TAG);
    shim_fnv_add(&h, uid);
    shim_fnv_add(&h, scope);
    shim_fnv_add(&h, r->cwd);
    shim_fnv_add(&h, real);
    snprintf(num, sizeof num, "%llu %llu %lld %lld", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
             (long long)st.st_size, (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec);
    shim_fnv_add(&h, num);
    shim_fnv_add(&h, "--args--");
    for (len = 1; len < r->argc && len <= r->image + 1; len++)
        shim_fnv_add(&h, r->argv[len]);
    shim_fnv_add(&h, "--env--");
    for (i = 0; env[i]; i++)
        n++;
    if (!HANDLED(settings = calloc(n + 1, sizeof *settings))) /* out of memory: a container of its own */
        return -1;
    for (i = 0, n = 0; env[i]; i++)
        if (is_setting(env[i]))
            settings[n++] = env[i];
    qsort(settings, n, sizeof *settings, cmp_str);
    for (i = 0; i < n; i++)
        shim_fnv_add(&h, settings[i]);
    free(settings);
    shim_fnv_hex(&h, num);
    len = snprintf(out, outlen, "%cshimrun/%s/%s/%s", 0, uid, scope, num);
    return len > 0 && (size_t)len < outlen ? len : -1;
}

static int send_field(int fd, const char *s) { return shim_send_all(fd, s, strlen(s) + 1); }

static int request(int fd, int argc, char *const *argv, const char *cwd, char *const *env)
{
    char num[16];
    int i;

    snprintf(num, sizeof num, "%d", argc - 1);
    if (send_field(fd, SHIM_SHARE_REQUEST) || send_field(fd, cwd) || send_field(fd, num))
        return -1;
    for (i = 1; i < argc; i++)
        if (send_field(fd, argv[i]))
            return -1;
    for (i = 0; env[i]; i++)
        if (send_field(fd, env[i]))
            return -1;
    return HANDLED(shutdown(fd, SHUT_WR)); /* a holder gone: the caller starts afresh */
}

/* The reply: the two namespace fds with the first bytes, then fields up to EOF. */
static char *reply(int fd, int *userns, int *mntns, size_t *len)
{
    size_t cap = 1 << 16, got = 0;
    char *buf = HANDLED(malloc(cap)); /* NULL: no reply, the caller starts afresh */
    int have_fds = 0, fds[2];

    while (buf) {
        ssize_t n = shim_recv_fds(fd, buf + got, cap - got - 1, fds, &have_fds);
        if (n <= 0) /* EOF, or a holder gone: what came is the reply */
            break;
        got += (size_t)n;
        if (got + 1 >= cap) {
            char *more = HANDLED(realloc(buf, cap *= 2)); /* NULL: no reply, the caller starts afresh */
            if (!more)
                free(buf);
            buf = more;
        }
    }
    if (have_fds) {
        *userns = fds[0];
        *mntns = fds[1];
    }
    if (!buf)
        return NULL;
    buf[got] = '\0';
    *len = got;
    if (!have_fds && !(got >= sizeof SHIM_SHARE_REPLY_ERROR
                       && !memcmp(buf, SHIM_SHARE_REPLY_ERROR, sizeof SHIM_SHARE_REPLY_ERROR))) {
        free(buf);
        return NULL;
    }
    return buf;
}

static char *next_field(char **p, const char *end)
{
    char *f = *p;
    if (f >= end)
        return NULL;
    *p += strlen(f) + 1;
    return f;
}

static int fail(struct shim_result *res, int code, const char *message)
{
    res->code = code;
    snprintf(res->message, sizeof res->message, "%s", message);
    return code;
}

/* Ask the holder on fd (connected) for this rank's exec and do it. Returns -2 when the holder
 * was leaving (start afresh), else an exit code with res set (refused, or the exec failed). */
int shim_share_join_fd(int fd, int argc, char *const *argv, const char *cwd, char *const *env,
                       struct shim_result *res)
{
    char *buf, *p, *end, *f, **xargv, **xenv, err[1024];
    int userns = -1, mntns = -1, n, i, code;
    size_t got;

    if (request(fd, argc, argv, cwd, env) || !(buf = reply(fd, &userns, &mntns, &got))) {
        close(fd);
        return -2;
    }
    close(fd);
    p = buf, end = buf + got;
    f = next_field(&p, end);
    if (f && !strcmp(f, SHIM_SHARE_REPLY_ERROR)) {
        const char *c = next_field(&p, end), *m = next_field(&p, end);
        return fail(res, c ? atoi(c) : SHIM_E_LAUNCH, m ? m : "the node's container refused this rank");
    }
    if (!f || strcmp(f, SHIM_SHARE_REPLY_OK) || !(f = next_field(&p, end)))
        return -2;
    cwd = f;
    f = next_field(&p, end);
    n = f ? atoi(f) : 0;
    if (ZRP(xargv = calloc((size_t)(n > 0 ? n : 0) + 1, sizeof *xargv), res->message, sizeof res->message,
            "allocate the arguments the node's container sent"))
        return res->code = SHIM_E_LAUNCH;
    for (i = 0; i < n; i++)
        xargv[i] = next_field(&p, end);
    f = next_field(&p, end);
    n = f ? atoi(f) : 0;
    if (ZRP(xenv = calloc((size_t)(n > 0 ? n : 0) + 1, sizeof *xenv), res->message, sizeof res->message,
            "allocate the environment the node's container sent"))
        return res->code = SHIM_E_LAUNCH;
    for (i = 0; i < n; i++)
        xenv[i] = next_field(&p, end);
    if (!xargv[0])
        return fail(res, SHIM_E_LAUNCH, "malformed answer from the node's container (rerun with " SHIM_VAR_SHARE "=0)");
    shim_join_exec(userns, mntns, cwd, xargv, xenv, err, sizeof err, &code);
    return fail(res, code, err);
}

/* Connect to the node's holder (>= 0); or, when there is none, become the leader: bind the
 * group's name and listen at once, so that every other rank of the step queues on it while the
 * holder sets the container up (*listen_fd, -1 returned). -1 with *listen_fd -1: no sharing
 * (a socket that cannot be made or reached is no reason to fail the launch: it runs alone);
 * -2: a failure reported in res. */
static int connect_or_lead(const struct sockaddr_un *addr, socklen_t alen, int *listen_fd, struct shim_result *res)
{
    int tries;

    *listen_fd = -1;
    for (tries = 0; tries < 2000; tries++) {
        int fd = HANDLED(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)), lfd; /* -1: no sharing (above) */
        if (fd == -1)
            return -1;
        if (HANDLED(connect(fd, (const struct sockaddr *)addr, alen)) == 0) { /* errno decides below */
            /* An abstract name is not private: talk only to our own user's holder (another
             * user's process squatting the name must not get our environment). */
            struct ucred cred;
            socklen_t clen = sizeof cred;
            /* a peer that cannot say who it is counts as another user's */
            if (HANDLED(getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen)) == 0 && cred.uid == getuid())
                return fd;
            close(fd);
            fprintf(stderr, "shimrun: warning: the node's shared-container socket belongs to another user: "
                            "running this rank in a container of its own\n");
            if (ZR(setenv(SHIM_VAR_SHARE, "0", 1), res->message, sizeof res->message, "set %s=0", SHIM_VAR_SHARE)) {
                res->code = SHIM_E_LAUNCH;
                return -2;
            }
            return -1;
        }
        close(fd);
        if (errno != ECONNREFUSED && errno != ENOENT && errno != EAGAIN)
            return -1;
        /* handed on to the planner when there is no record: no CLOEXEC; -1: no sharing (above) */
        lfd = HANDLED(socket(AF_UNIX, SOCK_STREAM, 0));
        if (lfd == -1)
            return -1;
        if (HANDLED(bind(lfd, (const struct sockaddr *)addr, alen)) == 0) { /* EADDRINUSE: another leads */
            if (HANDLED(listen(lfd, SOMAXCONN)) == -1) { /* no sharing (above) */
                close(lfd);
                return -1;
            }
            *listen_fd = lfd;
            return -1;
        }
        close(lfd);
        if (errno != EADDRINUSE)
            return -1;
        usleep(500); /* the leader is between bind and listen: try again */
    }
    return -1;
}

int shim_share_elect(int argc, char *const *argv, int image, const char *cwd, int *listen_fd,
                     struct shim_result *res)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    struct shim_run r = {argc, argv, image, environ, cwd, -1, 0, -1};
    time_t deadline = time(NULL) + JOIN_TIMEOUT_S;
    int len, fd, rc;

    *listen_fd = -1;
    if (shim_local_tasks(environ) == 1 || shim_runs_alone(argc, argv, image))
        return 0;
    len = shim_group_name(&r, (unsigned)getuid(), addr.sun_path, sizeof addr.sun_path);
    if (len < 0)
        return 0;
    while (time(NULL) < deadline) {
        fd = connect_or_lead(&addr, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len), listen_fd, res);
        if (fd == -2)
            return 1;
        if (fd < 0)
            return 0; /* we lead, or sharing is not possible here */
        rc = shim_share_join_fd(fd, argc, argv, cwd, environ, res);
        if (rc != -2)
            return 1;
        usleep(5000); /* the holder was leaving: start afresh */
    }
    return 0;
}
