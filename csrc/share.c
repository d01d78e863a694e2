/* One container per node per job step: the holder's set-up (shim/launch/share.py serves it).
 *
 * The holder is set up exactly like a single launch up to, not including, the exec: namespaces,
 * image mount, binds, pivot_root. It keeps fds of its user and mount namespaces to hand to the
 * ranks, and ignores the signals scancel and srun send to the step's tasks: it leaves when the
 * apps are gone (Slurm's final SIGKILL of the step also ends it, and squashfuse with it). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <unistd.h>

#include "core.h"

extern struct shim_result *shim_current_result;
extern jmp_buf shim_unwind;

int shim_hold_setup(const struct shim_config *cfg, struct shim_result *res, int prepared, int *userns, int *mntns)
{
    sigset_t set;

    /* `prepared`: the leader already entered the namespaces and mounted the image to analyse it. */
    if (!prepared && shim_prepare(cfg, res))
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
    sigprocmask(SIG_BLOCK, &set, NULL);
    return 0;
}
