/* A growing list of words (an argv being built) and its packing into one environment value:
 * the plugin hands the shimrun command line to its exec helper through the task's environment
 * (a task's argv cannot grow from SPANK), as "LEN:WORD" repeated, which any byte but NUL survives. */
#ifndef SHIM_SPANK_WORDS_H
#define SHIM_SPANK_WORDS_H

#include <stddef.h>

struct words {
    char **v;  /* NULL-terminated */
    size_t n, cap;
};

int words_add(struct words *w, const char *word);          /* copies; 0 or -1 (reported) */
int words_addf(struct words *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
char *words_pack(const struct words *w);                   /* malloc'd; NULL (reported) */
int words_unpack(const char *packed, struct words *w);     /* 0, or -1 (reported) on a malformed value */
void words_free(struct words *w);

#endif
