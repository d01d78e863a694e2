/* Running a launch record: everything after planning, for a single launch and for the leader of
 * a node's shared container. The record says what to print (its diagnostics, rendered by the
 * planner), whether the app may start (a refusal), and the launch; each launch adds its own
 * arguments, environment and working directory. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core.h"
#include "gen/runtime.h"

static int fail(struct shim_result *res, int code, const char *message)
{
    res->code = code;
    snprintf(res->message, sizeof res->message, "%s", message);
    return code;
}

/* Do not hold the step's output open (srun waits for it to close). In the holder's processes,
 * whose stdio nobody reads: should a dup2 fail, they end (a holder that keeps the step's output
 * open would keep srun waiting). */
static void quiet_stdio(void)
{
    /* the holder's is the container's /dev/null, which an image may lack: then nothing changes */
    int devnull = HANDLED(open("/dev/null", O_RDWR | O_CLOEXEC)), fd;

    for (fd = 0; devnull >= 0 && fd < 3; fd++)
        ZX(dup2(devnull, fd), "put /dev/null on descriptor %d of the node's container", fd);
}

/* The refusal the step's other ranks get when the node's container is not started. */
static void refuse_others(int listen_fd, int code, const char *why, char *const *environ)
{
    char message[2300];
    int expected = shim_local_tasks(environ);
    pid_t pid;

    snprintf(message, sizeof message, "the node's container was not started: %s (the node's first rank printed why)",
             why);
    fflush(NULL);
    /* Without a process to refuse them, the other ranks each try to lead and print why: more
     * lines, the same answer. So a failed fork here is let go. */
    if ((pid = HANDLED(fork())) == 0) {
        if (HANDLED(fork()) == 0) { /* as above */
            quiet_stdio();
            shim_refuse_all(listen_fd, code, message, expected > 1 ? expected - 1 : 0, SHIM_LINGER_MS);
            _exit(0);
        }
        _exit(0);
    }
    if (pid > 0)
        BEST_EFFORT(waitpid(pid, NULL, 0)); /* the middle process, gone at once: only reaped */
    close(listen_fd);
}

/* Fork the holder (twice: it must not be a child of this rank's app, which may wait for all of
 * its children, as mpiexec does, while the holder waits for it), wait until it serves or says
 * why it cannot, then join it like any rank. */
static int lead(const struct shim_rec *r, const struct shim_config *cfg, const struct shim_run *run,
                struct shim_result *res)
{
    struct sockaddr_un addr;
    socklen_t alen = sizeof addr;
    char answer[2200];
    size_t got = 0;
    ssize_t n;
    int pipefd[2], fd, rc;
    pid_t pid;

    if (ZR(getsockname(run->listen_fd, (struct sockaddr *)&addr, &alen), res->message, sizeof res->message,
           "set up the node's shared container: no socket")
        || ZR(pipe2(pipefd, O_CLOEXEC), res->message, sizeof res->message,
              "set up the node's shared container: a pipe"))
        return res->code = SHIM_E_LAUNCH;
    fflush(NULL);
    if (ZR(pid = fork(), res->message, sizeof res->message, "fork the node's container holder"))
        return res->code = SHIM_E_LAUNCH;
    if (pid == 0) {
        struct shim_serve s = {run->listen_fd, -1, -1, shim_local_tasks(run->environ), SHIM_LINGER_MS, r};
        struct shim_result hres;
        pid_t holder;
        /* the rank reads no answer from the pipe and says the container could not be set up */
        ZX(holder = fork(), "fork the node's container holder");
        if (holder)
            _exit(0);
        close(pipefd[0]);
        /* A rank that reads no answer (the pipe is closed at exit) says the container could not
         * be set up: a failed write here ends the same way. */
        if ((rc = shim_hold_setup(cfg, &hres, &s.userns, &s.mntns)) == 0) {
            BEST_EFFORT(write(pipefd[1], "ok", 2)); /* see above */
            close(pipefd[1]);
            quiet_stdio();
            shim_serve(&s);
            _exit(0);
        }
        n = snprintf(answer, sizeof answer, "E%d", rc);
        /* see above: the rank then says the container could not be set up */
        BEST_EFFORT(write(pipefd[1], answer, (size_t)n + 1) == n + 1
                    && write(pipefd[1], hres.message, strlen(hres.message)));
        close(pipefd[1]);
        quiet_stdio();
        refuse_others(run->listen_fd, rc, hres.message, run->environ);
        _exit(rc);
    }
    close(pipefd[1]);
    close(run->listen_fd);
    BEST_EFFORT(waitpid(pid, NULL, 0)); /* the middle process, gone at once: only reaped */
    /* EINTR: again; another failure: no answer, which says the container could not be set up */
    while (got < sizeof answer - 1 && (n = HANDLED(read(pipefd[0], answer + got, sizeof answer - 1 - got))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        got += (size_t)n;
    }
    close(pipefd[0]);
    answer[got] = '\0';
    if (got != 2 || memcmp(answer, "ok", 2)) {
        int code = got > 1 && answer[0] == 'E' ? atoi(answer + 1) : SHIM_E_LAUNCH;
        size_t head = strlen(answer) + 1;
        return fail(res, code ? code : SHIM_E_LAUNCH,
                    head < got ? answer + head : "the node's container could not be set up");
    }
    shim_debug("holding the node's shared container");
    if (ZR(fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), res->message, sizeof res->message,
           "a socket to join the node's shared container"))
        return res->code = SHIM_E_LAUNCH;
    /* the user's words: the holder is gone (ECONNREFUSED), nothing this rank can fix */
    if (HANDLED(connect(fd, (struct sockaddr *)&addr, alen)) == -1)
        return fail(res, SHIM_E_LAUNCH, "the node's shared container went away before this rank joined it");
    rc = shim_share_join_fd(fd, run->argc, run->argv, run->cwd, run->environ, res);
    if (rc == -2)
        return fail(res, SHIM_E_LAUNCH, "the node's shared container went away before this rank joined it (run "
                    "again; " SHIM_VAR_SHARE "=0 runs a container per process)");
    return rc;
}

/* As rendered; in a job step (a node's shared container, or the step's only task on this node)
 * only the node's leading rank prints them, each line prefixed with the node
 * ("shimrun: [n1] warning: ..."). */
static void print_diagnostics(const char *text, const struct shim_run *run)
{
    static const char head[] = "shimrun: ";
    char node[256], group[108];
    const char *line, *end;

    if (run->listen_fd < 0 && shim_group_name(run, (unsigned)getuid(), group, sizeof group) < 0) {
        fputs(text, stderr);
        return;
    }
    shim_node_name(run->environ, node, sizeof node);
    for (line = text; *line; line = end) {
        end = strchrnul(line, '\n');
        if (*end)
            end++;
        if (!strncmp(line, head, sizeof head - 1))
            fprintf(stderr, "%s[%s] %.*s", head, node, (int)(end - line - (sizeof head - 1)), line + sizeof head - 1);
        else
            fprintf(stderr, "%.*s", (int)(end - line), line);
    }
}

/* The image the record mounts: the descriptor the launch opened (the front-end's, or the
 * planner's), which must be the very file the record names (IMAGE_FILE); -1 when the record's
 * root is a copy of it. A record that names no IMAGE_FILE (older planners) mounts its path. */
static int image_root(const struct shim_rec *r, const struct shim_run *run, struct shim_result *res)
{
    char why[256];
    int fd = run->image_fd, strict = 0;

    if (!r->image_file.present)
        return -1;
    if (fd < 0 && run->image >= 0 && run->image < run->argc) { /* not opened before: held to everything */
        fd = shim_image_open(run->argv[run->image], why, sizeof why);
        strict = 1;
    }
    if (fd < 0 || !shim_image_matches(r, fd, strict, why, sizeof why)) {
        res->code = SHIM_E_IMAGE;
        snprintf(res->message, sizeof res->message, "%s while it was launched: %s (run again)",
                 run->image >= 0 && run->image < run->argc ? run->argv[run->image] : "the image", why);
        return -2;
    }
    return shim_image_root_fd(r, fd);
}

int shim_execute(const struct shim_rec *r, const struct shim_run *run, struct shim_result *res)
{
    struct shim_config cfg = r->cfg;
    const char **argv;
    char **direct, **script;
    int i, n = 0, code;

    shim_debug_on = r->cfg.debug;
    for (i = 0; run->from_cache && i < r->nnotices; i++)
        fprintf(stderr, "%s\n", r->notices[i]);
    if (r->diagnostics)
        print_diagnostics(r->diagnostics, run);
    if (r->refuse) {
        if (run->listen_fd >= 0)
            refuse_others(run->listen_fd, r->refuse_code, r->refuse, run->environ);
        return fail(res, r->refuse_code, r->refuse);
    }
    if ((cfg.image_fd = image_root(r, run, res)) == -2)
        return res->code;
    if (shim_root_lock(r, res))
        return res->code;
    if (shim_provenance_begin(r, run, res))
        return res->code;
    if (run->listen_fd >= 0)
        return lead(r, &cfg, run, res);
    if (!(argv = shim_app_argv(r, run->argc, run->argv, run->image, &n)))
        return fail(res, SHIM_E_LAUNCH, "out of memory");
    direct = shim_env_compose(r, run->environ, SHIM_ENV_DIRECT);
    script = shim_env_compose(r, run->environ, SHIM_ENV_BASE);
    if (!direct || !script)
        return fail(res, SHIM_E_LAUNCH, "out of memory");
    cfg.argv = argv;
    cfg.envp_direct = (const char *const *)direct;
    cfg.envp_script = (const char *const *)script;
    cfg.cwd = r->cfg.cwd[0] ? r->cfg.cwd : run->cwd;
    fflush(NULL);
    code = shim_launch(&cfg, res);
    free(argv);
    free(direct);
    free(script);
    return code;
}

int shim_record_prepare(const char *data, size_t len, int image_fd, struct shim_result *res)
{
    struct shim_rec r;
    int code;

    if (shim_rec_parse(data, len, &r, res->message, sizeof res->message))
        return res->code = SHIM_E_INTERNAL;
    if (!shim_rec_complete(&r, res->message, sizeof res->message)) {
        shim_rec_free(&r);
        return res->code = SHIM_E_INTERNAL;
    }
    if (!shim_image_matches(&r, image_fd, 0, res->message, sizeof res->message)) {
        shim_rec_free(&r);
        return res->code = SHIM_E_IMAGE;
    }
    r.cfg.image_fd = shim_image_root_fd(&r, image_fd);
    if (r.cfg.image_kind == SHIM_IMG_KEPT) /* the planner's look, from Python: no holder forked from it */
        r.cfg.image_kind = SHIM_IMG_SQUASHFS;
    code = shim_prepare(&r.cfg, res);
    shim_rec_free(&r);
    return code;
}

int shim_run_record(const char *data, size_t len, const struct shim_run *run, struct shim_result *res)
{
    struct shim_rec r;
    int code;

    if (shim_rec_parse(data, len, &r, res->message, sizeof res->message))
        return res->code = SHIM_E_INTERNAL;
    if (!shim_rec_complete(&r, res->message, sizeof res->message)) {
        shim_rec_free(&r);
        return res->code = SHIM_E_INTERNAL;
    }
    code = shim_execute(&r, run, res);
    shim_rec_free(&r);
    return code;
}
