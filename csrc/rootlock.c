/* An unpacked root, or a staged copy of the image that is mounted, held in use for the app's
 * lifetime (the record's ROOT_LOCK; the Python side, which unpacks, stages and cleans up, is
 * shim/launch/unpack.py and shim/launch/staging.py).
 *
 * A clean-up removes a root only when it can take its lock file LOCK_EX without waiting. So the
 * launch takes it LOCK_SH and keeps the descriptor open, high (SHIM_ROOT_LOCK_FD and up, out of
 * the app's way) and not close-on-exec: the app and every child it leaves behind hold it, and the
 * root stays until the last of them ends. The lock file's mtime is the root's "last used" stamp.
 * The root may have been removed between planning and now (the lock is taken after the record's
 * inputs were checked): then it is said, and the next launch plans anew. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

#define SHIM_ROOT_LOCK_FD 1000

int shim_root_lock(const struct shim_rec *r, struct shim_result *res)
{
    struct stat held, named, root;
    int fd, high;

    if (!r->root_lock)
        return 0;
    /* gone (a clean-up removed the root and its lock): the user's words, run again */
    if ((fd = HANDLED(open(r->root_lock, O_RDWR | O_NOFOLLOW | O_CLOEXEC))) == -1)
        goto removed;
    if (ZR(flock(fd, LOCK_SH), res->message, sizeof res->message, "lock the unpacked image %s", r->root_lock)
        || ZR(fstat(fd, &held), res->message, sizeof res->message, "stat %s", r->root_lock)) {
        close(fd);
        return res->code = SHIM_E_LAUNCH;
    }
    /* removed while this launch waited for the lock: the name is gone or another file's now */
    if (HANDLED(stat(r->root_lock, &named)) == -1 || named.st_ino != held.st_ino || named.st_dev != held.st_dev
        || HANDLED(stat(r->cfg.image_path, &root)) == -1
        || (r->cfg.image_kind == SHIM_IMG_DIR ? !S_ISDIR(root.st_mode) : !S_ISREG(root.st_mode))) {
        close(fd);
        goto removed;
    }
    BEST_EFFORT(futimens(fd, NULL)); /* the "last used" stamp: a failure only ages the root sooner */
    if (ZR(high = fcntl(fd, F_DUPFD, SHIM_ROOT_LOCK_FD), res->message, sizeof res->message,
           "keep the lock of the unpacked image %s", r->root_lock)) {
        close(fd);
        return res->code = SHIM_E_LAUNCH;
    }
    close(fd);
    shim_debug("holding %s (LOCK_SH) on descriptor %d", r->root_lock, high);
    return 0;
removed:
    res->code = SHIM_E_LAUNCH;
    snprintf(res->message, sizeof res->message, "the node-local copy of the image (%s) was removed while it was "
             "launched (shimrun cache clean?): run again", r->cfg.image_path);
    return res->code;
}
