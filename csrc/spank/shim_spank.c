/* shim's SPANK plugin: pyxis's --container-* options on srun, salloc and sbatch, each task run
 * through shim's own executor. Thin on purpose: options are checked here (pyxis_args.c), the
 * image is settled once per node before the tasks start (image.c), and each task's command
 * becomes `shimrun [options] IMAGE COMMAND...` (pyxis_exec.c execs it). Everything shimrun does
 * under srun (one container per node per step, the node leader's diagnostics, PMI) is as before.
 *
 * Why a helper rather than exec'ing shimrun from task_init: slurmstepd still has work after the
 * plugins' task_init (task prologs, TMPDIR, the user's resource limits) and then execs the task's
 * argv. SPANK cannot lengthen that argv, but can replace its first word and set variables: the
 * first word becomes the helper, the shimrun words travel in SHIM_PYXIS_ARGV.
 *
 * plugstack.conf: `required /opt/shim/lib/shim_spank.so [shimrun=PATH] [dir=DIR] [allow_http=1]`. */
#define _GNU_SOURCE
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

#include "check.h"
#include "image.h"
#include "mpmd.h"
#include "pyxis_args.h"
#include "words.h"

SPANK_PLUGIN(shim, 1);

#ifndef SHIMRUN_PATH
#define SHIMRUN_PATH "/usr/local/bin/shimrun"
#endif
#ifndef PYXIS_EXEC_PATH
#define PYXIS_EXEC_PATH "/opt/shim/lib/shim-pyxis-exec"
#endif

static struct {
    const char *shimrun, *exec, *dir;
    int allow_http;
} conf = {SHIMRUN_PATH, PYXIS_EXEC_PATH, "/tmp", 0};

static struct pyx_args args;
static int args_ready;
static char image_path[PATH_MAX + 300];  /* settled by user_init, used by each task's task_init */
static int image_failed;                 /* user_init's exit code for the tasks: they fail with it */
/* srun --multi-prog: srun's buffer of CONF's text, set aside while ours (with the helper) is sent */
static struct {
    char **argv;
    char *theirs, *ours;
} mpmd_swap;

void shim_spank_emit(const char *line)
{
    slurm_error("shim: %s", line);
}

static int on_option(int val, const char *optarg, int remote)
{
    (void)remote;
    if (!args_ready) {
        pyx_args_init(&args);
        args_ready = 1;
    }
    return val >= 0 && val < pyx_noptions ? pyx_option_set(&args, val, optarg) : SFAIL("unknown option %d", val);
}

static int read_conf(int ac, char **av)
{
    for (int i = 0; i < ac; i++) {
        if (strncmp(av[i], "shimrun=", 8) == 0)
            conf.shimrun = av[i] + 8;
        else if (strncmp(av[i], "exec=", 5) == 0)
            conf.exec = av[i] + 5;
        else if (strncmp(av[i], "dir=", 4) == 0)
            conf.dir = av[i] + 4;
        else if (strcmp(av[i], "allow_http=1") == 0 || strcmp(av[i], "allow_http=0") == 0)
            conf.allow_http = av[i][11] == '1';
        else
            return SFAIL("plugstack.conf: unknown argument '%s' (shimrun=PATH, exec=PATH, dir=DIR, allow_http=0|1)",
                         av[i]);
    }
    return 0;
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
    spank_context_t ctx = spank_context();

    if (!args_ready) {
        pyx_args_init(&args);
        args_ready = 1;
    }
    if (read_conf(ac, av))
        return -1;
    if (ctx != S_CTX_LOCAL && ctx != S_CTX_REMOTE && ctx != S_CTX_ALLOCATOR)
        return 0;
    for (int i = 0; i < pyx_noptions; i++) {
        struct spank_option opt = {(char *)pyx_options[i].name, (char *)pyx_options[i].arginfo,
                                   (char *)pyx_options[i].usage, pyx_options[i].arginfo != NULL, i, on_option};
        spank_err_t rc = spank_option_register(sp, &opt);
        if (rc != ESPANK_SUCCESS)
            return SFAIL("cannot register --%s: %s", pyx_options[i].name, spank_strerror(rc));
    }
    return 0;
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
    (void)sp, (void)ac, (void)av;
    return pyx_args_check(&args);
}

/* Once per node and step, before any task: which image (a pull, a name), as the user. */
int slurm_spank_user_init(spank_t sp, int ac, char **av)
{
    struct image_req req = {.image = args.image, .name = args.name, .name_flag = args.name_flag,
                            .shimrun = conf.shimrun, .dir = conf.dir, .allow_http = conf.allow_http};
    char why[2048];
    char **env = NULL;

    (void)ac, (void)av;
    if (!pyx_any(&args))
        return 0;
    if (spank_get_item(sp, S_JOB_UID, &req.uid) != ESPANK_SUCCESS
        || spank_get_item(sp, S_JOB_GID, &req.gid) != ESPANK_SUCCESS
        || spank_get_item(sp, S_JOB_ID, &req.job) != ESPANK_SUCCESS
        || spank_get_item(sp, S_JOB_ENV, &env) != ESPANK_SUCCESS)
        return SFAIL("cannot read the job's user, id and environment from Slurm");
    req.env = env;
    /* A failure is said once here (the node's line), and each task ends with its exit code:
     * failing user_init itself would leave srun reporting a launch failure but exiting 0. */
    if (image_resolve(&req, image_path, sizeof image_path, why, sizeof why, &image_failed))
        shim_spank_report(NULL, 0, "%s", why);
    else
        image_failed = 0;
    return 0;
}

/* In srun, just before it sends the step: with --multi-prog, each line of CONF's text gets the
 * exec helper in front of its command (mpmd.h); without, nothing to do here (task_init). */
int slurm_spank_local_user_init(spank_t sp, int ac, char **av)
{
    int argc = 0, multi;
    char **argv = NULL, *text;

    (void)ac, (void)av;
    if (!pyx_any(&args) || spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS
        || (multi = mpmd_is_multi_prog(argc, argv)) == 0)
        return 0;
    if (multi < 0)
        return -1;
    if (!mpmd_helper_ok(conf.exec))
        return SFAIL("--multi-prog: the exec helper's path '%s' (plugstack.conf exec=) has a space, ', \\ or %%: "
                     "it cannot be written in a --multi-prog line", conf.exec);
    if (!(text = mpmd_rewrite(argv[1], conf.exec)))
        return -1;
    /* srun's buffer is Slurm's allocation: it goes back in its place at slurm_spank_exit */
    mpmd_swap.argv = argv;
    mpmd_swap.theirs = argv[1];
    mpmd_swap.ours = argv[1] = text;
    return 0;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
    (void)sp, (void)ac, (void)av;
    if (mpmd_swap.argv && mpmd_swap.argv[1] == mpmd_swap.ours)
        mpmd_swap.argv[1] = mpmd_swap.theirs;
    free(mpmd_swap.ours);
    mpmd_swap.argv = NULL;
    mpmd_swap.ours = NULL;
    return 0;
}

/* --container-env NAME: the task's own value, as an override of the image's (SHIMRUNENV_NAME). */
static int env_overrides(spank_t sp)
{
    char value[65536], name[300];

    for (int i = 0; i < args.nenv; i++) {
        if (spank_getenv(sp, args.env[i], value, sizeof value) != ESPANK_SUCCESS)
            continue;  /* unset on the host: the image's value stands, as with pyxis */
        snprintf(name, sizeof name, "SHIMRUNENV_%s", args.env[i]);
        if (spank_setenv(sp, name, value, 1) != ESPANK_SUCCESS)
            return SFAIL("cannot set %s for the task", name);
    }
    return 0;
}

static int set_packed(spank_t sp, const char *var, const struct words *w)
{
    char *packed = words_pack(w);
    int rc;

    if (!packed)
        return -1;
    rc = spank_setenv(sp, var, packed, 1) == ESPANK_SUCCESS ? 0 : SFAIL("cannot set %s for the task", var);
    free(packed);
    return rc;
}

/* In each task, after Slurm set its environment (PMI included), before its exec. A --multi-prog
 * step's tasks exec the helper already (srun put it on each line of CONF): their command is the
 * helper's own argv, and the step's argv (CONF, its text) is left alone. */
int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
    struct words launch = {0}, check = {0};
    uint32_t step = 0;
    int argc = 0, local = -1, mpmd, rc = -1;
    char **argv = NULL, script[2 * PATH_MAX + 8] = "";

    (void)ac, (void)av;
    if (!pyx_any(&args))
        return 0;
    if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS || argc < 1 || !argv || !argv[0]
        || spank_get_item(sp, S_TASK_ID, &local) != ESPANK_SUCCESS
        || spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS)
        return SFAIL("cannot read the task's command from Slurm");
    mpmd = argc == 2 && mpmd_rewritten(argv[1], conf.exec);
    if ((mpmd ? spank_setenv(sp, "SHIM_PYXIS_MPMD", "1", 1) : spank_unsetenv(sp, "SHIM_PYXIS_MPMD")) != ESPANK_SUCCESS)
        return SFAIL("cannot set SHIM_PYXIS_MPMD for the task");
    /* A batch script lies in slurmd's spool directory: the container sees it there, read-only. */
    if (step == SLURM_BATCH_SCRIPT && snprintf(script, sizeof script, "%s:%s:ro", argv[0], argv[0]) >= (int)sizeof script)
        return SFAIL("the batch script's path is too long");
    if (image_failed) {
        char code[16];
        snprintf(code, sizeof code, "%d", image_failed);
        if (spank_setenv(sp, "SHIM_PYXIS_EXIT", code, 1) != ESPANK_SUCCESS
            || (!mpmd && SZP(argv[0] = strdup(conf.exec), "strdup")))
            return -1;
        return 0;
    }
    if (pyx_launch_words(&args, conf.shimrun, image_path, *script ? script : NULL, &launch))
        goto out;
    if ((!mpmd && words_add(&launch, argv[0])) || env_overrides(sp) || set_packed(sp, "SHIM_PYXIS_ARGV", &launch))
        goto out;
    if (args.sw[SW_CHECK] == 1 && local == 0
        && (pyx_check_words(&args, conf.shimrun, image_path, &check) || (!mpmd && words_add(&check, argv[0]))
            || set_packed(sp, "SHIM_PYXIS_CHECK", &check)))
        goto out;
    /* The task's first word is the helper now; slurmstepd execs it with the rest of argv. */
    if (!mpmd && SZP(argv[0] = strdup(conf.exec), "strdup"))
        goto out;
    rc = 0;
out:
    words_free(&launch);
    words_free(&check);
    return rc;
}

/* The job's end on this node: its pulled images and named containers go. */
int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
    uint32_t job;
    uid_t uid;
    gid_t gid;

    if (read_conf(ac, av))
        return -1;
    if (spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS || spank_get_item(sp, S_JOB_GID, &gid) != ESPANK_SUCCESS
        || spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS)
        return SFAIL("epilog: cannot read the job's user and id from Slurm");
    return image_cleanup(conf.dir, uid, gid, job);
}
