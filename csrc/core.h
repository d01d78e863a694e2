/* Internals shared by the C core's files. */
#ifndef SHIM_CORE_INTERNAL_H
#define SHIM_CORE_INTERNAL_H

#include <errno.h>
#include <stdint.h>
#include <sys/types.h>
#include "shim_core.h"

struct shim_bind {
    const char *src; /* host path */
    const char *dst; /* container path, resolved inside the container root */
    int flags;       /* SHIM_BIND_* */
};

/* A file of the image shown with text appended (e.g. the user's /etc/passwd entry). */
struct shim_append {
    const char *path; /* container path; skipped when the image has no such regular file */
    const char *text;
};

/* A file written into the launch's private staging tmpfs before the binds (the re-pointed
 * ld.so.cache), then bound from <stage>/<name> like any host file. */
struct shim_stage_file {
    const char *name;
    const char *data;
    size_t len;
};

/* A symlink made in a directory the launch mounted fresh (the minimal /dev's ptmx, fd, stdin...). */
struct shim_link {
    const char *target, *path;
};

/* One launch, as the set-up steps (launch.c) take it. */
struct shim_config {
    int image_kind;           /* SHIM_IMG_* */
    const char *image_path;   /* SIF file (squashfs partition at offset) or directory */
    int image_fd;             /* >= 0: the opened image, which is mounted instead of image_path (image.c) */
    long long offset;
    const char *squashfuse;
    const char *stage;        /* existing directory that gets a private tmpfs */
    int fakeroot;             /* map our uid/gid to 0 instead of to themselves */
    const struct shim_bind *binds;
    int nbinds;
    const struct shim_append *appends;
    int nappends;
    const struct shim_stage_file *stage_files;
    int nstage_files;
    const char *cwd;          /* working directory inside the container */
    int cwd_required;         /* 1: cwd missing is an error (--pwd given, or --strict); 0: warn, use / */
    int quiet;
    const char *const *argv;  /* the app and its arguments, NULL-terminated */
    const char *const *envp_direct; /* env when exec'ing the app directly */
    const char *const *envp_script; /* env for /bin/sh running action_script */
    const char *action_script;      /* NULL: always exec directly */
    const char *env_dir;      /* run action_script only when this dir exists in the image */
    const char *env_data;     /* a script in env_dir whose variables envp_direct holds already (or NULL) */
    int debug;
    int namespaces;           /* SHIM_NS_*: more than user + mount */
    int writable;             /* the root gets a tmpfs overlay (--writable-tmpfs) */
    const struct shim_link *links;
    int nlinks;
    unsigned kept_idle;       /* SHIM_IMG_KEPT: seconds the holder stays once none of its apps is left */
    const char *audit;        /* the record has AUDIT: the audit library's host path, staged with the FIFO */
};

/* ---- the record, parsed (record.c): pointers into the caller's buffer ---- */
struct shim_env_op {
    int target, op;
    const char *name, *value;
};

struct shim_pass {
    int rule;
    const char *text;
};

struct shim_field {
    int tag;
    const unsigned char *p;
    size_t len;
};

/* IMAGE_FILE: the image the planner opened and judged (fstat of its descriptor). */
struct shim_image_file {
    int present, source;      /* SHIM_IMAGE_SOURCE_* */
    unsigned mode;
    uint64_t dev, ino, size;
    int64_t mtime, ctime;
};

/* AUDIT_RULE: a finding about what the app loaded (audit.c). The pattern lists are globs joined by
 * SHIM_AUDIT_SEP, pointing into the record. */
struct shim_audit_rule {
    int kind, severity;       /* SHIM_AUDIT_KIND_*, SHIM_AUDIT_SEVERITY_* */
    const char *code, *preconditions, *patterns, *message, *hint, *admin_hint;
};

/* AUDIT_INJECTED: an injected object, as the app sees it and as the host has it. */
struct shim_audit_injected {
    const char *path, *host, *sha256;
};

struct shim_rec {
    const char *version, *key;
    const char *root_lock;    /* ROOT_LOCK: an unpacked root's lock file (NULL: none) */
    struct shim_image_file image_file;
    struct shim_config cfg;   /* all but argv and the environments, which each launch composes */
    const char *command;
    int runscript;            /* shimrun run: argv from run_fixed, then the launch's or run_default */
    const char **run_fixed, **run_default;
    int nfixed, ndefault;
    struct shim_env_op *ops;
    int nops;
    struct shim_pass *pass;
    int npass;
    const char *diagnostics, *refuse;
    int refuse_code;
    const char **notices;
    int nnotices;
    struct { int kind; const char *path; } prov[SHIM_PROV_MAX]; /* SHIM_PROV_*; a file or a directory */
    int nprov;
    const char *prov_facts;   /* the run's facts the planner knew, one JSON object */
    int audit_flags;          /* AUDIT: SHIM_AUDIT_*; audit_library NULL: no audit */
    const char *audit_library;
    struct shim_audit_rule *audit_rules;
    int naudit_rules;
    struct shim_audit_injected *audit_injected;
    int naudit_injected;
    struct shim_field *inputs;
    int ninputs;
    void *mem;                /* the arrays above, one allocation */
};

/* 0, or -1 with why (a malformed record). shim_rec_free frees the arrays, not the data. */
int shim_rec_parse(const char *data, size_t len, struct shim_rec *r, char *why, size_t whylen);
void shim_rec_free(struct shim_rec *r);
/* Has it all a launch needs (image, stage, command), or is it a refusal? 1 yes, 0 no with why. */
int shim_rec_complete(const struct shim_rec *r, char *why, size_t whylen);

/* appargv.c: the app's argv for a launch whose words are words[0..total-1] (words[0] the
 * program, words[image] the image): NULL-terminated, pointing into words and the record; *n is its
 * length. NULL when out of memory or when a runscript has no word at all. free() the array. */
const char **shim_app_argv(const struct shim_rec *r, int total, char *const *words, int image, int *n);

/* envcompose.c: the environment a record gives the app, NULL-terminated "K=V" strings in one
 * allocation (free() it); NULL when out of memory. */
char **shim_env_compose(const struct shim_rec *r, char *const *environ, int target);

/* inputs.c: 1 when every input of the record holds, else 0 with why. image_fd: the opened image
 * (-1: none): a directory image's own paths are checked through it, never by name. */
int shim_inputs_hold(const struct shim_rec *r, char *const *environ, int image_fd, char *why, size_t whylen);
/* record.c: shim_record_current, with the image the front-end opened (-1: none). */
int shim_record_current_on(const char *data, size_t len, const char *key, char *const *environ, int image_fd,
                           char *why, size_t whylen);

/* image.c: the image a command line names, opened once (O_PATH for a directory; a regular file
 * reopened for reading through its own descriptor; anything else refused): the descriptor, or -1
 * with why. Everything after reads it: the record's IMAGE_FILE check, the inputs inside a
 * directory image, the squashfuse mount, the directory bind. */
int shim_image_open(const char *path, char *why, size_t whylen);
/* 1 when `fd` is the very file the record's IMAGE_FILE names (or it names none), else 0 with why.
 * strict (a record from the cache, the image just opened): unchanged since, to its change time; a
 * rename changes that too, so the descriptor the planner itself opened and judged is held to its
 * device and inode only (its own open file, whatever was renamed since). */
int shim_image_matches(const struct shim_rec *r, int fd, int strict, char *why, size_t whylen);
/* The descriptor the launch mounts (cfg->image_fd): `fd` when the record's root is the opened
 * image itself, -1 when it is a copy (IMAGE_PATH) or the record names no IMAGE_FILE. */
int shim_image_root_fd(const struct shim_rec *r, int fd);

/* rootlock.c: the record's ROOT_LOCK taken LOCK_SH on a high descriptor the app inherits (and
 * stamped as last used); 0 (also without one), or an exit code with res set (the root is gone). */
int shim_root_lock(const struct shim_rec *r, struct shim_result *res);

/* common.c: helpers that call nothing else of the core. */
const char *shim_env_get(char *const *environ, const char *name);
void shim_node_name(char *const *environ, char *out, size_t outlen);
/* two FNV-1a 64-bit hashes over NUL-terminated fields (the NUL hashed too) */
struct shim_fnv {
    uint64_t a, b;
};
void shim_fnv_init(struct shim_fnv *h);
void shim_fnv_add(struct shim_fnv *h, const char *s);
void shim_fnv_hex(const struct shim_fnv *h, char *out); /* 33 bytes */

/* argv.c */
int shim_runs_alone(int argc, char *const *argv, int image);
int shim_is_key_setting(const char *entry);             /* "K=V" of the runtime's own settings */

/* cache.c: the trusted bytes of a cache file, malloc'd (NULL: absent or not trusted, with why). */
char *shim_cache_read(const char *path, const char *root, size_t *len, char *why, size_t whylen);

/* executor.c: run a record (struct shim_run: shim_core.h). Returns only on failure, with res set. */
int shim_execute(const struct shim_rec *r, const struct shim_run *run, struct shim_result *res);

/* share.c: the node's shared container, a rank's side. shim_share_elect: join the group's
 * container (execs the app: returns only on failure, then 1 with res set) or lead it (*listen_fd
 * set) or neither (*listen_fd = -1); 0 when the caller goes on. */
int shim_share_elect(int argc, char *const *argv, int image, const char *cwd, int *listen_fd,
                     struct shim_result *res);
int shim_share_join_fd(int fd, int argc, char *const *argv, const char *cwd, char *const *environ,
                       struct shim_result *res);
int shim_send_all(int fd, const char *p, size_t n); /* the whole buffer, or -1 */
/* the first n bytes' one sendmsg with two descriptors (SCM_RIGHTS): bytes sent, or -1 */
ssize_t shim_send_fds(int fd, const char *p, size_t n, const int fds[2]);
/* one recvmsg of up to n bytes into p (EINTR retried): bytes, 0 at EOF or -1. The first message
 * with two descriptors fills fds and sets *have (when 0); any other descriptors are closed. */
ssize_t shim_recv_fds(int fd, char *p, size_t n, int fds[2], int *have);
int shim_hold_setup(const struct shim_config *cfg, struct shim_result *res, int *userns, int *mntns);

/* serve.c: the holder's side. */
struct shim_serve {
    int listen_fd, userns, mntns;
    int expected;             /* ranks of the step on this node (0: unknown) */
    int linger_ms;
    const struct shim_rec *rec;
};
void shim_serve(const struct shim_serve *s);
void shim_refuse_all(int listen_fd, int code, const char *message, int expected, int linger_ms);
#define SHIM_LINGER_MS 2000        /* how long a holder waits for more ranks once none is left */
#define SHIM_FIRST_MEMBER_MS 10000 /* the leader connects as soon as the holder serves; a backstop */

/* join.c */
int shim_join_exec(int userns, int mntns, const char *cwd, char *const *argv, char *const *envp, char *err,
                   size_t errlen, int *code);
int shim_exec_search(char *const *argv, char *const *envp, char *err, size_t errlen, int *code);
/* 1: the app runs through the image's /bin/sh and the action script (the image has environment
 * scripts that set more than what the DIRECT environment holds as data); 0: exec it directly. */
int shim_wants_script(const struct shim_config *cfg);

/* ---- One error style: every call is checked where it is made, by one of these macros. ----
 *
 * A failure is reported once, where the call failed: the step's description, strerror(errno)
 * and the file:line of the check ("mount tmpfs for ... on ...: Permission denied (mounts.c:137)").
 * The set-up steps unwind to their entry point (shim_begin's setjmp) so that their happy path
 * reads as a list of steps:
 *   Z(call, fmt, ...)      -1 is a failure (most syscalls)
 *   ZP(call, fmt, ...)     NULL is a failure (malloc, opendir, realpath...)
 *   ZE(call, fmt, ...)     the call returns the error number itself, 0 on success (pthread_*,
 *                          posix_spawn)
 *   ZIMG(call, fmt, ...)   as Z, for reading the image's own content: EIO there is a corrupt
 *                          image (squashfuse cannot decompress a block), the image's fault
 * Code that returns its failures instead (the front-end, a record's checks, the share protocol,
 * the cache) checks with the same tests and writes the same report into its caller's buffer;
 * the macro is 1 on failure: if (ZR(fd = open(p, O_RDONLY), why, whylen, "open %s", p)) return -1;
 *   ZR(call, buf, len, fmt, ...) / ZRP(...)   -1 / NULL is a failure
 * Where there is nothing to unwind to (a child between fork and exec, the front-end's main), the
 * report goes to stderr and the process exits with SHIM_E_LAUNCH:
 *   ZX(call, fmt, ...) / ZXP(...)            -1 / NULL is a failure
 * Two explicit exceptions, each use with a comment saying why:
 *   HANDLED(call)          the failure is expected here and the code right after examines the
 *                          result and errno (a fallback, or a message the user can act on)
 *   BEST_EFFORT(call)      a failure deliberately ignored
 * tests/test_c_structure.py fails when a call of the launch path is outside these. */
#define SHIM_STR_(x) #x
#define SHIM_STR(x) SHIM_STR_(x)
#define SHIM_AT __FILE__ ":" SHIM_STR(__LINE__)

#define Z(expr, ...) do { if ((expr) == -1) shim_fail_at(SHIM_AT, errno, __VA_ARGS__); } while (0)
#define ZP(expr, ...) do { if ((expr) == NULL) shim_fail_at(SHIM_AT, errno, __VA_ARGS__); } while (0)
#define ZE(expr, ...) do { int shim_e_ = (expr); if (shim_e_) shim_fail_at(SHIM_AT, shim_e_, __VA_ARGS__); } while (0)
#define ZIMG(expr, ...) do { if ((expr) == -1) shim_fail_image(SHIM_AT, errno, __VA_ARGS__); } while (0)
#define ZR(expr, buf, len, ...) ((expr) == -1 ? (shim_report(SHIM_AT, errno, buf, len, __VA_ARGS__), 1) : 0)
#define ZRP(expr, buf, len, ...) ((expr) == NULL ? (shim_report(SHIM_AT, errno, buf, len, __VA_ARGS__), 1) : 0)
#define ZX(expr, ...) do { if ((expr) == -1) shim_exit_fail(SHIM_AT, errno, __VA_ARGS__); } while (0)
#define ZXP(expr, ...) do { if ((expr) == NULL) shim_exit_fail(SHIM_AT, errno, __VA_ARGS__); } while (0)
#define HANDLED(expr) (expr)
#define BEST_EFFORT(expr) ((void)!(expr))

/* A deliberate failure the user can act on (a refusal, a message with a hint): the code, the
 * message, and strerror(err) when err is not 0; no file:line. Unwinds; never returns. */
__attribute__((noreturn, format(printf, 3, 4)))
void shim_fail(int code, int err, const char *fmt, ...);
/* The checking macros' reports (util.c). `at` is "file:line". */
__attribute__((noreturn, format(printf, 3, 4)))
void shim_fail_at(const char *at, int err, const char *fmt, ...);
__attribute__((noreturn, format(printf, 3, 4)))
void shim_fail_image(const char *at, int err, const char *fmt, ...);
__attribute__((format(printf, 5, 6)))
void shim_report(const char *at, int err, char *buf, size_t len, const char *fmt, ...);
__attribute__((noreturn, format(printf, 3, 4)))
void shim_exit_fail(const char *at, int err, const char *fmt, ...);

void shim_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int shim_debug_on;

/* launch.c: shim_launch = prepare (namespaces, image at <stage>/root) + finish (stage files,
 * binds, pivot_root, cwd, exec). Each returns 0 or an exit code with res set. */
int shim_launch(const struct shim_config *cfg, struct shim_result *res);
int shim_prepare(const struct shim_config *cfg, struct shim_result *res);
int shim_finish(const struct shim_config *cfg, struct shim_result *res);
void shim_begin(const struct shim_config *cfg, struct shim_result *res);
int shim_setup_root(const struct shim_config *cfg, struct shim_result *res);
int shim_enter_and_exec(const struct shim_config *cfg, struct shim_result *res);

/* userns.c: enter_namespaces = a new user + mount namespace with the id map, then
 * enter_more_namespaces (the NS_* ones besides, owned by the user namespace we are in). */
void enter_namespaces(int fakeroot, int namespaces);
void enter_more_namespaces(int namespaces);

/* kept.c: a launch's side of a kept mount (README "Kept mounts"). 1: this process is in the
 * holder's user namespace and in a private copy of its mount namespace, *kept_fd an O_PATH
 * descriptor of the kept squashfuse mount; 0: it is where it was (no holder to be had, or
 * another user's at the name): the caller mounts the image itself. Fails (unwinds) only after
 * entering, when there is no way back. */
int shim_kept_enter(const struct shim_config *cfg, int *kept_fd);
#define SHIM_KEPT_DIR "kept" /* STAGE/kept: the kept mount, in the holder's own staging tmpfs */

/* kepthold.c: the holder (a grandchild of the launch that started it, in a session of its own).
 * Never returns. */
struct shim_kept_hold {
    const struct shim_config *cfg;
    int listen_fd;            /* bound and listening: the launches' socket */
    int stepd_fd;             /* >= 0: a pidfd of the job step's slurmstepd: leave when it is gone */
};
void shim_kept_hold(const struct shim_kept_hold *h) __attribute__((noreturn));

/* nsinit.c */
void shim_loopback_up(void);
void shim_pidns_fork(void);
void shim_pidns_init(void);
/* Shared with provenance.c, whose parent waits the same way: the signals passed on (and
 * SIGCHLD), passing them to `child` until it ends (its wait status), and ending as it did. */
#include <signal.h>
void shim_forwarded_set(sigset_t *set);
int shim_forward_until_exit(pid_t child);
void shim_end_as(int status) __attribute__((noreturn));

/* provenance.c: with a PROVENANCE field (or an AUDIT: the audit shares the fork), fork: the child
 * returns 0 and goes on with the launch; the parent stays outside, passes signals on (reading the
 * audit's reports meanwhile), writes the record and prints the audit's findings when the app has
 * ended, and ends as it did (never returns). Without either, or when this launch writes no record
 * and has no audit, 0 at once. -1 with res set: the record cannot be written there (nothing was
 * started). */
int shim_provenance_begin(const struct shim_rec *r, const struct shim_run *run, struct shim_result *res);

/* audit.c: the after-start audit of loaded objects (record AUDIT), shared with provenance.c's fork. */
struct shim_loaded {
    long pid;                 /* the first process that reported it */
    unsigned long long dev, ino;
    char exe[17];             /* that process's /proc/PID/comm when it reported ("": gone) */
    int injected;             /* 1 + its index in the record's AUDIT_INJECTED; 0: the image's */
    char path[];              /* as the container sees it */
};
struct shim_audit {
    int sock[2];              /* the reports: [0] read by the waiting parent, [1] SHIM_AUDIT_FD in the app */
    int chan[2];              /* the FIFO's descriptors, from the child that made it */
    int fifo_r, fifo_w;
    int held[2];              /* a node's shared container: [1] held by its holder, [0] hung up when it has left */
    int names;                /* read each process's name (the provenance record's "exe") */
    struct shim_loaded **obj, **slots; /* in the order first reported; a hash table by path */
    size_t n, cap;
    char carry[8192];         /* the FIFO's partial line */
    size_t ncarry;
    long last_pid;
    char last_comm[17];
};
/* shared: this rank leads a node's shared container (the other ranks report on the FIFO, read
 * here until the holder has left); names: read each reporting process's name */
int shim_audit_open(struct shim_audit *a, int shared, int names, struct shim_result *res);
int shim_audit_child(struct shim_audit *a, struct shim_result *res);
void shim_audit_stage(const char *stage, const char *library); /* in shim_setup_root (unwinds on failure) */
int shim_audit_wait(struct shim_audit *a, pid_t child);
/* auditfind.c: injected objects mapped to their host files, the findings printed (when `print`),
 * and the status shimrun ends with (AFTER_START for a finding that makes a success fail). */
int shim_audit_findings(const struct shim_rec *r, const struct shim_run *run, struct shim_audit *a, int status,
                        int print);
/* common.c: a JSON string (UTF-8, escaped; bytes that are not UTF-8 become U+FFFD) */
#include <stdio.h>
void shim_json_string(FILE *f, const char *s);
/* auditfind.c: the provenance record's ,"loaded":[...] member */
void shim_audit_json(FILE *f, const struct shim_rec *r, const struct shim_audit *a);

/* fuse.c: squashfuse's pid (our child, which dies with us) */
pid_t mount_squashfs(const struct shim_config *cfg, const char *stage, const char *target);

/* inroot.c: paths resolved inside the container root; the attributes of mounts made there */
int open_in_root(int root_fd, const char *path, int flags);
void make_private_tmpfs(const char *dir, const char *what);
void set_mount_attrs(int fd, int recursive, int readonly, int keepdev);
void fd_path(int fd, char *buf, size_t len);

/* mounts.c: host paths bound in, staged files, appended image files */
void bind_into_root(const char *root, int *root_fd, const struct shim_bind *b); /* a host path (not FRESH) */
void append_to_image_file(int root_fd, const struct shim_append *a, int n);
void write_stage_file(const char *stage, const struct shim_stage_file *f);

/* mountpoints.c: where missing mount points are made (underlays, own tmpfs, the user's binds) */
void set_stage(const char *stage);
const char *launch_stage(void); /* the staging directory set_stage named */
#define ENSURE_DIR 1           /* the missing destination is a directory (else an empty file) */
#define ENSURE_IN_HOST_BINDS 2 /* may be made in a writable host bind the user asked for (not a LINK's) */
int ensure_target(const char *root, int *root_fdp, const char *path, int how);
int launch_dir(const char *root, int *root_fdp, const char *path); /* a directory this launch made */
void own_mount(int fd, const char *where);
void note_host_dir(int tree, const struct shim_bind *b); /* a bind just attached (tree: its mount) */
int on_underlay(int fd); /* 1: mount points may be made in this directory (our own tmpfs) */
void seal_underlays(int root_fd);

/* fresh.c: file systems made for the launch (not from the host): tmpfs, devpts, proc, the
 * writable root's overlay, and symlinks in them. */
void fresh_mount(const char *root, int *root_fdp, const struct shim_bind *b);
void make_link(const char *root, int *root_fdp, const struct shim_link *l);
void overlay_root(const char *stage, const char *root);

#endif
