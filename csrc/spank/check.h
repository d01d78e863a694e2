/* The SPANK plugin's and its exec helper's one way to check a call (the core's rule, csrc/core.h,
 * for two programs that cannot unwind into the core): a failed call reports "what: strerror
 * (file:line)" through shim_spank_report() (report.c) and the expression is 1. The plugin's line goes
 * with slurm_error (it lands on the user's srun and in slurmd's log); the helper's writes one line
 * on stderr. Each program defines where the line goes, shim_spank_emit (shim_spank.c, pyxis_exec.c). */
#ifndef SHIM_SPANK_CHECK_H
#define SHIM_SPANK_CHECK_H

#include <errno.h>

#define SPANK_STR_(x) #x
#define SPANK_STR(x) SPANK_STR_(x)
#define SPANK_AT __FILE__ ":" SPANK_STR(__LINE__)

__attribute__((format(printf, 3, 4)))
void shim_spank_report(const char *at, int err, const char *fmt, ...);  /* report.c */
void shim_spank_emit(const char *line);  /* where the line goes: each program's own */

/* -1 (SZ) or NULL (SZP) is a failure: reported, and the macro is 1. */
#define SZ(expr, ...) ((expr) == -1 ? (shim_spank_report(SPANK_AT, errno, __VA_ARGS__), 1) : 0)
#define SZP(expr, ...) ((expr) == NULL ? (shim_spank_report(SPANK_AT, errno, __VA_ARGS__), 1) : 0)
/* A user's mistake, not a failed call: the message alone, no file:line. */
#define SFAIL(...) (shim_spank_report(NULL, 0, __VA_ARGS__), -1)
#define BEST_EFFORT(expr) ((void)!(expr))

#endif
