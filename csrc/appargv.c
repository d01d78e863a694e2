/* The app's argv, built the same way by a single launch (executor.c) and by the holder for a rank
 * that joins its container (serve.c): `shimrun IMAGE COMMAND ARGS...` gives the record's COMMAND
 * (resolved by the planner) and ARGS; `shimrun run IMAGE ARGS...` gives the image's runscript
 * words (its OCI Entrypoint), then ARGS, or with none its default words (its Cmd). */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "core.h"

const char **shim_app_argv(const struct shim_rec *r, int total, char *const *words, int image, int *n)
{
    int given, i, k = 0;
    const char **argv;

    if (!r->runscript) {
        given = total - image - 2; /* after COMMAND */
        if (given < 0)
            given = 0;
        if (!(argv = HANDLED(calloc((size_t)given + 2, sizeof *argv)))) /* NULL to the caller: out of memory (core.h) */
            return NULL;
        argv[k++] = r->command;
        for (i = 0; i < given; i++)
            argv[k++] = words[image + 2 + i];
        *n = k;
        return argv;
    }
    given = total - image - 1;
    if (given < 0)
        given = 0;
    /* NULL to the caller: out of memory (core.h) */
    if (!(argv = HANDLED(calloc((size_t)(r->nfixed + given + r->ndefault) + 1, sizeof *argv))))
        return NULL;
    for (i = 0; i < r->nfixed; i++)
        argv[k++] = r->run_fixed[i];
    for (i = 0; i < given; i++)
        argv[k++] = words[image + 1 + i];
    for (i = 0; !given && i < r->ndefault; i++)
        argv[k++] = r->run_default[i];
    if (!k) {
        free(argv);
        return NULL;
    }
    *n = k;
    return argv;
}
