/* shim_launch(): the ordered list of set-up steps, then exec of the app.
 *
 * Runs in the shimrun process itself, so that the app keeps shimrun's pid: signals sent to
 * shimrun (srun, scancel, Ctrl-C) reach the app, and its exit status is shimrun's. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core.h"

extern struct shim_result *shim_current_result;
extern jmp_buf shim_unwind;

/* For Python (cffi) in a helper's child: -1 with errno, which the caller reports. */
int shim_die_with_parent(void) { return HANDLED(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)); }

static void setup_root(const struct shim_config *cfg, const char *root)
{
    Z(mkdir(root, 0755), "mkdir %s", root);
    if (cfg->image_kind != SHIM_IMG_DIR) { /* a kept mount not joined: mounted for this launch */
        mount_squashfs(cfg, cfg->stage, root);
        if (cfg->writable)
            overlay_root(cfg->stage, root);
    } else {
        int fd;
        /* The opened directory itself (image.c), never what its name means by now: shim_prepare
         * made it the working directory before the mount namespace was unshared, which carries
         * the working directory over to its copy of the mount (a descriptor opened before names
         * the old namespace's mount, which the kernel refuses to bind from). */
        Z(mount(cfg->image_fd >= 0 ? "." : cfg->image_path, root, NULL, MS_BIND | MS_REC, NULL),
          "bind directory image %s", cfg->image_path);
        Z(fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC), "open %s", root);
        /* Read-only like a SIF, so missing mount points never modify the user's directory. */
        set_mount_attrs(fd, 0, 1, 0);
        close(fd);
        if (cfg->writable)
            overlay_root(cfg->stage, root);
    }
}

/* The kept mount (kept.c), bound at `root` in this launch's own copy of the holder's namespace. */
static void setup_kept_root(const struct shim_config *cfg, const char *root, int kept_fd)
{
    char src[64];

    Z(mkdir(root, 0755), "mkdir %s", root);
    fd_path(kept_fd, src, sizeof src);
    Z(mount(src, root, NULL, MS_BIND, NULL), "bind the kept mount of %s", cfg->image_path);
    close(kept_fd);
    if (cfg->writable)
        overlay_root(cfg->stage, root);
}

/* Make `root` the new "/" and drop the host's tree from our view. */
static void enter_root(const char *root)
{
    Z(chdir(root), "chdir %s", root);
    /* pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then
     * removes it, without needing a directory inside the image to park it in. */
    Z(syscall(SYS_pivot_root, ".", "."), "pivot_root into %s", root);
    Z(umount2(".", MNT_DETACH), "detach the host's root");
    Z(chdir("/"), "chdir / in the container");
}

/* execvpe() with the container's PATH; reports "not found" vs "cannot execute" distinctly. */
static void exec_direct(const struct shim_config *cfg)
{
    char err[sizeof shim_current_result->message];
    int code;

    shim_exec_search((char *const *)cfg->argv, (char *const *)cfg->envp_direct, err, sizeof err, &code);
    shim_fail(code, 0, "%s", err);
}

/* Does the env dir hold a script the action script would source (a *.sh that it does not skip)
 * besides `data`, whose variables the DIRECT environment already holds? */
static int other_scripts(const char *env_dir, const char *data)
{
    DIR *d = HANDLED(opendir(env_dir)); /* unreadable: let the shell see what it can */
    struct dirent *e;
    int found = 0;

    if (!d)
        return 1;
    while (!found && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        found = n > 3 && !strcmp(e->d_name + n - 3, ".sh") && strcmp(e->d_name, data)
                && strcmp(e->d_name, "99-runtimevars.sh");
    }
    closedir(d);
    return found;
}

int shim_wants_script(const struct shim_config *cfg)
{
    struct stat st;

    /* no env dir, or no shell to source it: the app is exec'd directly */
    if (!cfg->action_script || !cfg->env_dir || HANDLED(stat(cfg->env_dir, &st)) != 0 || !S_ISDIR(st.st_mode)
        || HANDLED(access("/bin/sh", X_OK)) != 0)
        return 0;
    return !cfg->env_data || other_scripts(cfg->env_dir, cfg->env_data);
}

static void exec_app(const struct shim_config *cfg)
{
    if (shim_wants_script(cfg)) {
        /* The image has Apptainer environment scripts: let its own shell source them. */
        int argc = 0, i;
        const char **argv;
        while (cfg->argv[argc])
            argc++;
        ZP(argv = calloc((size_t)argc + 5, sizeof *argv), "allocate argv");
        argv[0] = "/bin/sh";
        argv[1] = "-c";
        argv[2] = cfg->action_script;
        argv[3] = "shimrun";
        for (i = 0; i < argc; i++)
            argv[4 + i] = cfg->argv[i];
        shim_debug("exec via /bin/sh (image environment scripts in %s)", cfg->env_dir);
        execve("/bin/sh", (char *const *)argv, (char *const *)cfg->envp_script);
        shim_fail(SHIM_E_LAUNCH, errno, "execute /bin/sh in the container");
    }
    exec_direct(cfg);
}

static char root[PATH_MAX];

void shim_begin(const struct shim_config *cfg, struct shim_result *res)
{
    shim_current_result = res;
    res->code = 0;
    res->message[0] = '\0';
    shim_debug_on = cfg->debug;
}

int shim_prepare(const struct shim_config *cfg, struct shim_result *res)
{
    int r, kept_fd;

    shim_begin(cfg, res);
    if (setjmp(shim_unwind))
        return res->code;
    if ((r = shim_standard_fds()) < 0)
        shim_fail(SHIM_E_LAUNCH, -r, "open /dev/null for a closed standard descriptor");
    snprintf(root, sizeof root, "%s/root", cfg->stage);
    set_stage(cfg->stage);
    if (cfg->image_kind == SHIM_IMG_DIR && cfg->image_fd >= 0) /* see setup_root */
        Z(fchdir(cfg->image_fd), "enter the opened directory image %s", cfg->image_path);
    if (cfg->image_kind == SHIM_IMG_KEPT && shim_kept_enter(cfg, &kept_fd)) {
        enter_more_namespaces(cfg->namespaces);
        make_private_tmpfs(cfg->stage, "the container's staging area");
        setup_kept_root(cfg, root, kept_fd);
        return 0;
    }
    enter_namespaces(cfg->fakeroot, cfg->namespaces);
    make_private_tmpfs(cfg->stage, "the container's staging area");
    setup_root(cfg, root);
    return 0;
}

/* Every kind of bind the record holds, dispatched here and nowhere else: a file system made for
 * the launch (fresh.c) or a host path bound in (mounts.c). */
static void apply_bind(int *root_fdp, const struct shim_bind *b)
{
    if (b->flags & SHIM_BIND_FRESH)
        fresh_mount(root, root_fdp, b);
    else
        bind_into_root(root, root_fdp, b);
}

/* After prepare: binds, appended files, sealing, pivot_root: "/" is now the container's. */
int shim_setup_root(const struct shim_config *cfg, struct shim_result *res)
{
    int i, root_fd;

    shim_begin(cfg, res);
    if (setjmp(shim_unwind))
        return res->code;
    for (i = 0; i < cfg->nstage_files; i++)
        write_stage_file(cfg->stage, &cfg->stage_files[i]);
    if (cfg->audit)
        shim_audit_stage(cfg->stage, cfg->audit);
    Z(root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC), "open container root %s", root);
    for (i = 0; i < cfg->nbinds; i++)
        apply_bind(&root_fd, &cfg->binds[i]);
    for (i = 0; i < cfg->nlinks; i++)
        make_link(root, &root_fd, &cfg->links[i]);
    for (i = 0; i < cfg->nappends; i++)
        append_to_image_file(root_fd, &cfg->appends[i], i);
    seal_underlays(root_fd);
    close(root_fd);
    enter_root(root);
    return 0;
}

/* In the container's root: working directory, no_new_privs, exec. Returns only on failure. */
int shim_enter_and_exec(const struct shim_config *cfg, struct shim_result *res)
{
    shim_begin(cfg, res);
    if (setjmp(shim_unwind))
        return res->code;
    if (cfg->cwd && HANDLED(chdir(cfg->cwd)) == -1) { /* the user's message below, by --pwd and --strict */
        int err = errno;
        if (cfg->cwd_required)
            shim_fail(SHIM_E_LAUNCH, 0, "working directory %s: %s in the container (give --pwd a directory the "
                      "image has, or bind one there with --bind)", cfg->cwd, strerror(err));
        if (!cfg->quiet)
            fprintf(stderr, "shimrun: warning: cannot enter %s in the container (%s); using / (hint: --pwd DIR "
                    "chooses another, --bind puts one there)\n", cfg->cwd, strerror(err));
        Z(chdir("/"), "chdir / in the container");
    }
    /* Nothing exec'd from here on can gain privileges (setuid files are also nosuid). */
    Z(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs");
    if (cfg->namespaces & SHIM_NS_PID)
        shim_pidns_init(); /* PID 1 stays the init; the app's process returns here */
    exec_app(cfg);
    return res->code; /* not reached: exec_app execs or fails */
}

int shim_finish(const struct shim_config *cfg, struct shim_result *res)
{
    int code = shim_setup_root(cfg, res);
    return code ? code : shim_enter_and_exec(cfg, res);
}

int shim_launch(const struct shim_config *cfg, struct shim_result *res)
{
    int code = shim_prepare(cfg, res);
    return code ? code : shim_finish(cfg, res);
}
