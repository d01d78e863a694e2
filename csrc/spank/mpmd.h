/* `srun --multi-prog CONF` under the plugin. Slurm gives each task its own argv from CONF's lines,
 * parsed by slurmstepd before any SPANK hook runs, so task_init cannot replace that argv's first
 * word (it can only reach the step's argv, which is [CONF, CONF's text]). What a plugin can still
 * reach is srun's copy of CONF's text, before srun sends it: in srun, the plugin puts the exec
 * helper in front of each line's program (`0-3 ./a.out x` becomes `0-3 HELPER ./a.out x`), and
 * slurmstepd's own parser then gives every task [HELPER, ITS PROGRAM, ITS ARGS...]: ranks, %t,
 * %o, quotes and continued lines stay Slurm's. Pure text functions, no Slurm calls. */
#ifndef SHIM_SPANK_MPMD_H
#define SHIM_SPANK_MPMD_H

/* 1 when srun's argv is its --multi-prog form: [CONF, the text of file CONF] (srun read CONF into
 * argv[1] just before: a plain command of two words is never that, unless argv[1] is CONF's text);
 * 0 when not; -1 (reported) when it cannot tell. */
int mpmd_is_multi_prog(int argc, char **argv);
/* CONF's text with `helper` first on each line's command (malloc'd; NULL, reported, on failure).
 * `helper` must be one word of CONF's syntax: mpmd_helper_ok(). */
char *mpmd_rewrite(const char *conf, const char *helper);
/* 1 when every line of CONF's text (one at least) runs `helper`: what mpmd_rewrite made. */
int mpmd_rewritten(const char *conf, const char *helper);
/* 1 when `helper` needs no quoting in a --multi-prog line (no space, ', \, %). */
int mpmd_helper_ok(const char *helper);

#endif
