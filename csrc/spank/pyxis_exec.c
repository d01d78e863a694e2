/* The task's first word under shim's SPANK plugin (shim_spank.c): runs `shimrun [options] IMAGE
 * COMMAND ARGS...` as the same process (exec), so that Slurm's signals and the exit status are
 * the app's. The words come from SHIM_PYXIS_ARGV (COMMAND is its last), ARGS from our own argv;
 * with --container-check, the node's first task runs `shimrun check` before; SHIM_PYXIS_EXIT:
 * the node's image could not be settled, the task ends with that code. SHIM_PYXIS_MPMD: a task of
 * `srun --multi-prog` (mpmd.h), whose COMMAND is our argv[1], not SHIM_PYXIS_ARGV's last word. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "gen/codes.h"
#include "words.h"

#define E_LAUNCH SHIM_E_LAUNCH  /* a launch that could not start (shim/errors.py, by shim/cgen.py) */

void shim_spank_emit(const char *line)
{
    dprintf(2, "shim: error: %s\n", line);
}

/* The words of variable `var`, removed from the environment the app will see. */
static int take(const char *var, struct words *w)
{
    const char *packed = getenv(var);
    char *copy;
    int rc;

    if (!packed)
        return 0;
    if (SZP(copy = strdup(packed), "strdup"))
        return -1;
    rc = SZ(unsetenv(var), "unsetenv %s", var) ? -1 : words_unpack(copy, w);
    free(copy);
    return rc;
}

/* --container-check: the plan and diagnostics, before the node's first task starts its app. */
static int run_check(const struct words *check)
{
    int st;
    pid_t pid;

    if (SZ(pid = fork(), "fork"))
        return E_LAUNCH;
    if (pid == 0) {
        execv(check->v[0], check->v);
        shim_spank_report(NULL, errno, "cannot run %s", check->v[0]);
        _exit(E_LAUNCH);
    }
    if (SZ(waitpid(pid, &st, 0), "waitpid"))
        return E_LAUNCH;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(int argc, char **argv)
{
    struct words launch = {0}, check = {0};
    const char *failed = getenv("SHIM_PYXIS_EXIT");
    int mpmd = getenv("SHIM_PYXIS_MPMD") != NULL, rc;

    /* The node's image could not be settled (the plugin said why, once per node): the task ends
     * with that exit code and says nothing more. */
    if (failed)
        return atoi(failed) > 0 && atoi(failed) < 256 ? atoi(failed) : E_LAUNCH;
    if (take("SHIM_PYXIS_ARGV", &launch) || take("SHIM_PYXIS_CHECK", &check)
        || SZ(unsetenv("SHIM_PYXIS_MPMD"), "unsetenv SHIM_PYXIS_MPMD"))
        return E_LAUNCH;
    if (launch.n < 2) {
        shim_spank_report(NULL, 0, "%s is run by shim's SPANK plugin only (no SHIM_PYXIS_ARGV)", argv[0]);
        return E_LAUNCH;
    }
    if (mpmd && argc < 2) {
        shim_spank_report(NULL, 0, "--multi-prog: no command for this task");
        return E_LAUNCH;
    }
    if (mpmd && check.n && words_add(&check, argv[1]))
        return E_LAUNCH;
    if (check.n && (rc = run_check(&check)) != 0)
        return rc;
    for (int i = 1; i < argc; i++)
        if (words_add(&launch, argv[i]))
            return E_LAUNCH;
    execv(launch.v[0], launch.v);
    shim_spank_report(NULL, errno, "cannot run %s", launch.v[0]);
    return E_LAUNCH;
}
