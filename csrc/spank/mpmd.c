/* See mpmd.h. The line rules are slurmstepd's (src/slurmd/slurmstepd/multi_prog.c, Slurm 22.05):
 * lines split at '\n' (empty ones do not count), a line ending in '\' continues onto the next,
 * leading blanks skipped, '#' starts a whole-line comment, the first word is the rank spec, the
 * rest the command. Only what a line's first word ends at matters here, so ranks, quotes, %t/%o and
 * escapes are left to Slurm. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "mpmd.h"

#define MAX_CONF (1 << 20)  /* srun itself refuses a CONF over 60000 bytes */

/* A line with a command: where its rank spec ends and where its command starts. */
struct rule {
    size_t rank_end, cmd;
};

struct walk {
    const char *conf;
    size_t at;       /* the start of the next physical line */
    int continued;   /* the last non-empty line ended in '\' */
};

/* The next line with a command: 1 and its offsets, or 0 at the text's end. */
static int next_rule(struct walk *w, struct rule *r)
{
    while (w->conf[w->at]) {
        const char *line = w->conf + w->at, *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line), p = 0;
        int continued = w->continued;

        w->at += len + (nl != NULL);
        if (len == 0)
            continue;  /* strtok's view: an empty line is no line, and continues nothing */
        w->continued = line[len - 1] == '\\';
        if (continued)
            continue;
        while (p < len && isspace((unsigned char)line[p]))
            p++;
        if (p == len || line[p] == '#')
            continue;
        while (p < len && !isspace((unsigned char)line[p]))
            p++;
        r->rank_end = (size_t)(line - w->conf) + p;
        while (p < len && isspace((unsigned char)line[p]))
            p++;
        if (p == len)
            continue;  /* no command (Slurm's error for its ranks): left as it is */
        r->cmd = (size_t)(line - w->conf) + p;
        return 1;
    }
    return 0;
}

int mpmd_is_multi_prog(int argc, char **argv)
{
    FILE *f;
    struct stat st;
    char *text;
    size_t n;
    int same;

    if (argc != 2 || !argv || !argv[0] || !argv[1] || strlen(argv[1]) > MAX_CONF)
        return 0;
    if (!(f = fopen(argv[0], "re")))
        return 0;  /* not a file this user can read: srun could not have read it either */
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode) || (size_t)st.st_size != strlen(argv[1])) {
        fclose(f);
        return 0;  /* a directory, or not CONF's size: not what srun read into argv[1] */
    }
    if (SZP(text = malloc(MAX_CONF + 2), "malloc")) {
        fclose(f);
        return -1;
    }
    n = fread(text, 1, MAX_CONF + 1, f);
    same = ferror(f) ? SFAIL("--multi-prog: cannot read %s again", argv[0])
                     : n == strlen(argv[1]) && memcmp(text, argv[1], n) == 0;
    fclose(f);
    free(text);
    return same;
}

int mpmd_helper_ok(const char *helper)
{
    if (!*helper)
        return 0;
    for (const char *c = helper; *c; c++)
        if (isspace((unsigned char)*c) || *c == '\'' || *c == '\\' || *c == '%')
            return 0;
    return 1;
}

char *mpmd_rewrite(const char *conf, const char *helper)
{
    struct walk w = {conf, 0, 0};
    struct rule r;
    size_t lines = 1, hlen = strlen(helper), from = 0, to = 0;
    char *out;

    for (const char *c = conf; *c; c++)
        lines += *c == '\n';
    if (SZP(out = malloc(strlen(conf) + lines * (hlen + 1) + 1), "malloc"))
        return NULL;
    while (next_rule(&w, &r)) {
        memcpy(out + to, conf + from, r.rank_end - from);
        to += r.rank_end - from;
        out[to++] = ' ';
        memcpy(out + to, helper, hlen);
        to += hlen;
        from = r.rank_end;
    }
    strcpy(out + to, conf + from);
    return out;
}

int mpmd_rewritten(const char *conf, const char *helper)
{
    struct walk w = {conf, 0, 0};
    struct rule r;
    size_t hlen = strlen(helper);
    int rules = 0;

    while (next_rule(&w, &r)) {
        const char *cmd = conf + r.cmd;
        if (strncmp(cmd, helper, hlen) != 0 || !isspace((unsigned char)cmd[hlen]))
            return 0;
        rules++;
    }
    return rules > 0;
}
