/* Entering the node's shared container and exec'ing a rank's app: used by the cffi core and by
 * the native front-end (frontend.c), which joins without starting Python at all. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

/* Is fd the namespace this process is in already? (A leader that analysed the image forked the
 * holder from inside it: its root moved with the holder's pivot_root; there is nothing to enter.) */
static int already_in(int fd, const char *self)
{
    struct stat a, b;
    /* cannot tell: not in it, and setns then says whether it can be entered */
    return HANDLED(fstat(fd, &a)) == 0 && HANDLED(stat(self, &b)) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

int shim_exec_search(char *const *argv, char *const *envp, char *err, size_t errlen, int *code)
{
    const char *cmd = argv[0], *path = shim_env_get(envp, "PATH");
    char buf[PATH_MAX];
    int saw_eacces = 0, last = ENOENT;

    if (strchr(cmd, '/')) {
        execve(cmd, argv, envp);
        last = errno;
    } else {
        const char *p = path ? path : "/usr/local/bin:/usr/bin:/bin";
        while (*p) {
            const char *end = strchrnul(p, ':');
            int len = (int)(end - p);
            snprintf(buf, sizeof buf, "%.*s%s%s", len, p, len ? "/" : "", cmd);
            execve(buf, argv, envp);
            if (errno == EACCES || errno == ENOEXEC || errno == EPERM)
                saw_eacces = errno;
            else if (errno != ENOENT && errno != ENOTDIR)
                last = errno;
            p = *end ? end + 1 : end;
        }
        if (saw_eacces)
            last = saw_eacces;
    }
    /* The words are shim/errors.py's, which the image's shell (the action script) and `check
     * IMAGE COMMAND` print too: one wording whichever way the app is started. */
    if (last == ENOENT || last == ENOTDIR) {
        *code = SHIM_E_NOT_FOUND;
        snprintf(err, errlen, SHIM_MSG_EXEC_NOT_FOUND, cmd, path ? path : "");
    } else if (last == ENOEXEC || last == EACCES || last == EPERM) {
        *code = SHIM_E_NOT_EXECUTABLE;
        snprintf(err, errlen, SHIM_MSG_EXEC_NOT_EXECUTABLE, cmd, strerror(last));
    } else {
        *code = SHIM_E_LAUNCH;
        snprintf(err, errlen, "execute %s in the container: %s", cmd, strerror(last));
    }
    return -1;
}

int shim_join_exec(int userns, int mntns, const char *cwd, char *const *argv, char *const *envp, char *err,
                   size_t errlen, int *code)
{
    *code = SHIM_E_LAUNCH;
    if (!already_in(userns, "/proc/self/ns/user")
        && ZR(setns(userns, CLONE_NEWUSER), err, errlen, "join the node's container (user namespace)"))
        return -1;
    /* Root and working directory become the container's root with the mount namespace. */
    if (!already_in(mntns, "/proc/self/ns/mnt")
        && ZR(setns(mntns, CLONE_NEWNS), err, errlen, "join the node's container (mount namespace)"))
        return -1;
    close(userns);
    close(mntns);
    /* a working directory the container lacks: a warning, as for a single launch */
    if (cwd && *cwd && HANDLED(chdir(cwd)) == -1) {
        fprintf(stderr, "shimrun: warning: cannot enter %s in the container (%s); using /\n", cwd, strerror(errno));
        if (ZR(chdir("/"), err, errlen, "chdir / in the container"))
            return -1;
    }
    /* Nothing exec'd from here on can gain privileges (setuid files are also nosuid). */
    if (ZR(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), err, errlen, "set no_new_privs"))
        return -1;
    return shim_exec_search(argv, envp, err, errlen, code);
}
