/* The provenance record of a run (docs/provenance.md): the planner's facts (image digests, the
 * injected libraries, decisions, host facts), which the record carries as one JSON object, and
 * this run's own (command line, working directory, times, exit status, Slurm ids), which only
 * the launch knows. The launch forks before anything else: the child goes on and becomes the
 * app; the parent stays outside every namespace, passes signals on, and when the app has ended
 * writes the record (to a temporary name, then renamed: a reader never sees half of it) and ends
 * as the app did. A warm launch pays one fork; the writing happens after the app is gone. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "gen/runtime.h"

/* Slurm's variables the record names (those set), in this order. */
static const char *const SLURM_IDS[] = SHIM_SLURM_IDENTITY;

struct prov_run {
    char path[SHIM_PROV_MAX][PATH_MAX];
    struct timespec start, start_mono;
};

static int set(char *const *environ, const char *name)
{
    const char *v = shim_env_get(environ, name);
    return v && v[0];
}

/* One record per node per step: in a job step only the node's leading rank writes it (or, with
 * no shared container, the node's first task); outside a step every run does. */
static int writes_here(const struct shim_run *run)
{
    const char *local;

    if (!set(run->environ, SHIM_SLURM_STEP_ID) || run->listen_fd >= 0)
        return 1;
    local = shim_env_get(run->environ, SHIM_SLURM_LOCALID);
    return !local || !strcmp(local, "0");
}

static void iso_time(const struct timespec *t, char *out, size_t len)
{
    struct tm tm;
    char secs[32];

    gmtime_r(&t->tv_sec, &tm);
    strftime(secs, sizeof secs, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, len, "%s.%03ldZ", secs, t->tv_nsec / 1000000);
}

/* The file this run writes: --provenance FILE as given; in a directory (the site's, or a
 * --provenance that is one), <job>.<step>.<node>.json in a step,
 * else <UTC time>.<node>.<pid>.json. */
static int target_path(const struct shim_rec *r, int i, const struct shim_run *run, struct prov_run *p,
                       struct shim_result *res)
{
    char node[256], stamp[32];
    const char *at = r->prov[i].path;
    char *out = p->path[i];
    size_t len = sizeof p->path[i];
    struct tm tm;
    int n;

    struct stat st;
    /* a --provenance DIR/ keeps its slash (the planner's): a missing one is named as a directory */
    const char *sep = *at && at[strlen(at) - 1] == '/' ? "" : "/";

    /* what cannot be looked at is no directory: the file as given, and check_writable says more */
    if (r->prov[i].kind == SHIM_PROV_USER && !(HANDLED(stat(at, &st)) == 0 && S_ISDIR(st.st_mode)))
        n = snprintf(out, len, "%s", at);
    else {
        shim_node_name(run->environ, node, sizeof node);
        if (set(run->environ, SHIM_SLURM_JOB_ID) && set(run->environ, SHIM_SLURM_STEP_ID))
            n = snprintf(out, len, "%s%s%s.%s.%s.json", at, sep,
                         shim_env_get(run->environ, SHIM_SLURM_JOB_ID), shim_env_get(run->environ, SHIM_SLURM_STEP_ID),
                         node);
        else {
            gmtime_r(&p->start.tv_sec, &tm);
            strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
            n = snprintf(out, len, "%s%s%s.%s.%ld.json", at, sep, stamp, node, (long)getpid());
        }
    }
    if (n > 0 && (size_t)n < len)
        return 0;
    res->code = SHIM_E_USAGE;
    snprintf(res->message, sizeof res->message, "the provenance record's path is too long: %s", at);
    return -1;
}

/* Can the record be written there? Asked before the app starts, so that a wrong place is one
 * line and nothing run, not a lost record after a long job. */
static int check_writable(const struct shim_rec *r, int i, const struct prov_run *p, struct shim_result *res)
{
    char dir[PATH_MAX];
    char *slash;
    int code = r->prov[i].kind == SHIM_PROV_SITE ? SHIM_E_CONFIG : SHIM_E_USAGE;

    snprintf(dir, sizeof dir, "%s", p->path[i]);
    slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    if (HANDLED(access(dir, W_OK | X_OK)) == 0) /* the user's or the site's words below, by errno */
        return 0;
    res->code = code;
    snprintf(res->message, sizeof res->message, "cannot write the provenance record in %s: %s (%s)", dir,
             strerror(errno), code == SHIM_E_CONFIG ? "the site's [provenance] dir must exist and be writable by "
             "every user (e.g. mode 1777), or ask the site's administrators" : "create the directory, or give "
             "--provenance a writable place");
    return -1;
}

static void write_run(FILE *f, const struct shim_run *run, const struct prov_run *p, int status)
{
    struct timespec end, end_mono;
    char when[40], node[256], cwd[PATH_MAX];
    int i, any = 0;

    /* the app has ended: nothing is left to fail but this record, whose times then say 0 */
    if (HANDLED(clock_gettime(CLOCK_REALTIME, &end)) == -1 || HANDLED(clock_gettime(CLOCK_MONOTONIC, &end_mono)) == -1)
        end = p->start, end_mono = p->start_mono;
    fputs("\"run\":{\"argv\":[", f);
    for (i = 0; i < run->argc; i++) {
        if (i)
            fputc(',', f);
        shim_json_string(f, run->argv[i]);
    }
    fputs("],\"cwd\":", f);
    shim_json_string(f, run->cwd ? run->cwd : HANDLED(getcwd(cwd, sizeof cwd)) ? cwd : ""); /* none: "" */
    shim_node_name(run->environ, node, sizeof node);
    fputs(",\"node\":", f);
    shim_json_string(f, node);
    fprintf(f, ",\"pid\":%ld,\"uid\":%u,\"record\":\"%s\"", (long)getpid(), (unsigned)getuid(),
            run->from_cache ? "cached" : "planned");
    iso_time(&p->start, when, sizeof when);
    fprintf(f, ",\"start\":\"%s\"", when);
    iso_time(&end, when, sizeof when);
    fprintf(f, ",\"end\":\"%s\",\"seconds\":%.3f", when,
            (double)(end_mono.tv_sec - p->start_mono.tv_sec) + (end_mono.tv_nsec - p->start_mono.tv_nsec) / 1e9);
    if (WIFSIGNALED(status))
        fprintf(f, ",\"exit\":{\"status\":%d,\"signal\":\"SIG%s\"}", 128 + WTERMSIG(status),
                sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "?");
    else
        fprintf(f, ",\"exit\":{\"status\":%d}", WIFEXITED(status) ? WEXITSTATUS(status) : SHIM_E_LAUNCH);
    fputs(",\"slurm\":", f);
    for (i = 0; SLURM_IDS[i]; i++) {
        if (!set(run->environ, SLURM_IDS[i]))
            continue;
        fputs(any++ ? "," : "{", f);
        shim_json_string(f, SLURM_IDS[i]);
        fputc(':', f);
        shim_json_string(f, shim_env_get(run->environ, SLURM_IDS[i]));
    }
    fputs(any ? "}}" : "null}", f);
}

/* The planner's object without its closing brace, then the run's members: one JSON object. */
static void write_record(const struct shim_rec *r, const struct shim_run *run, const char *path,
                         const struct prov_run *p, int status, const struct shim_audit *audit)
{
    const char *facts = r->prov_facts ? r->prov_facts : "{}";
    char tmp[PATH_MAX + 32];
    size_t n = strlen(facts);
    FILE *f;
    int ok;

    while (n && facts[n - 1] != '}')
        n--;
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (!HANDLED(f = fopen(tmp, "wx"))) { /* the app has run: a warning, its exit status stays */
        fprintf(stderr, "shimrun: warning: cannot write the provenance record %s: %s\n", tmp, strerror(errno));
        return;
    }
    fwrite(facts, 1, n ? n - 1 : 0, f);
    fputs(n > 2 ? "," : "", f);
    write_run(f, run, p, status);
    if (audit)
        shim_audit_json(f, r, audit);
    fputs("}\n", f);
    /* No fsync: it would cost every launch a disk flush (measured: +1.8 ms of a 20 ms launch);
     * the rename keeps readers from ever seeing half a record while the node is up. */
    ok = fflush(f) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || HANDLED(rename(tmp, path)) == -1) { /* as above: a warning */
        fprintf(stderr, "shimrun: warning: cannot write the provenance record %s: %s\n", path, strerror(errno));
        BEST_EFFORT(unlink(tmp)); /* the warning named the record; a leftover is all that is left */
    }
}

int shim_provenance_begin(const struct shim_rec *r, const struct shim_run *run, struct shim_result *res)
{
    struct prov_run p;
    struct shim_audit audit;
    sigset_t set, old;
    pid_t parent = getpid(), child;
    int status, end, i, here = writes_here(run), audited = r->audit_library != NULL, nprov = here ? r->nprov : 0;

    /* the audit forks in every rank (each may end with AFTER_START); only the node's leader prints */
    if (!nprov && !audited)
        return 0;
    if (ZR(clock_gettime(CLOCK_REALTIME, &p.start), res->message, sizeof res->message, "read the clock")
        || ZR(clock_gettime(CLOCK_MONOTONIC, &p.start_mono), res->message, sizeof res->message, "read the clock"))
        return res->code = SHIM_E_LAUNCH, -1;
    for (i = 0; i < nprov; i++)
        if (target_path(r, i, run, &p, res) || check_writable(r, i, &p, res))
            return -1;
    if (audited && shim_audit_open(&audit, run->listen_fd >= 0, nprov > 0, res))
        return -1;
    shim_forwarded_set(&set);
    if (ZR(sigprocmask(SIG_BLOCK, &set, &old), res->message, sizeof res->message,
           "block signals for the provenance record"))
        return res->code = SHIM_E_LAUNCH, -1;
    fflush(NULL);
    if (ZR(child = fork(), res->message, sizeof res->message, "fork for the provenance record")) {
        res->code = SHIM_E_LAUNCH;
        /* restoring the mask we set a moment ago cannot fail; the fork's failure is the report */
        BEST_EFFORT(sigprocmask(SIG_SETMASK, &old, NULL));
        return -1;
    }
    if (child == 0) {
        /* The app goes with shimrun (a SIGKILL'd job step), as it would without a record. */
        if (ZR(sigprocmask(SIG_SETMASK, &old, NULL), res->message, sizeof res->message,
               "start the app under the provenance record")
            || ZR(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), res->message, sizeof res->message,
                  "start the app under the provenance record"))
            return res->code = SHIM_E_LAUNCH, -1;
        if (getppid() != parent) {
            res->code = SHIM_E_LAUNCH;
            snprintf(res->message, sizeof res->message, "start the app under the provenance record: %s",
                     strerror(ESRCH));
            return -1;
        }
        return audited ? shim_audit_child(&audit, res) : 0;
    }
    if (run->listen_fd >= 0)
        close(run->listen_fd); /* the leading rank's child serves it; held here it would outlive the step */
    status = audited ? shim_audit_wait(&audit, child) : shim_forward_until_exit(child);
    /* the findings first: they map the injected objects to their host files, which the record's
     * "loaded" names; the record keeps the app's own status (not --strict's AFTER_START) */
    end = audited ? shim_audit_findings(r, run, &audit, status, here) : status;
    for (i = 0; i < nprov; i++)
        write_record(r, run, p.path[i], &p, status, audited ? &audit : NULL);
    shim_end_as(end);
}
