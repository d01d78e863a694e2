/* The image a launch names, opened once (the Python side is shim/image/handle.py).
 *
 * Whoever can write the directory an image lies in can swap it (rename, a symlink flipped)
 * between any two looks at its path. So the path is looked at once: opened O_PATH, which has no
 * side effect on a FIFO or a device and resolves every symlink in one step; a regular file is then
 * reopened for reading through that descriptor (/proc/self/fd/N reaches the opened file, never
 * the name). From then on the descriptor is the image: the record's IMAGE_FILE is compared with
 * its fstat (a record planned for another file is not run), a directory image's own inputs are
 * checked relative to it, squashfuse reads it and a directory is bound from it. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

int shim_image_open(const char *path, char *why, size_t whylen)
{
    char via[64];
    struct stat st;
    /* A missing or unreadable image is the user's to fix: their words, without file:line. */
    int pfd = HANDLED(open(path, O_PATH | O_CLOEXEC)), fd;

    if (pfd == -1) {
        snprintf(why, whylen, "cannot open the image %s: %s", path, strerror(errno));
        return -1;
    }
    if (ZR(fstat(pfd, &st), why, whylen, "cannot stat the image %s", path)) {
        close(pfd);
        return -1;
    }
    if (S_ISDIR(st.st_mode))
        return pfd;
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "the image %s is not a regular file or a directory", path);
        close(pfd);
        return -1;
    }
    snprintf(via, sizeof via, "/proc/self/fd/%d", pfd);
    fd = HANDLED(open(via, O_RDONLY | O_CLOEXEC | O_NOCTTY)); /* as above: the user's words */
    if (fd == -1)
        snprintf(why, whylen, "cannot read the image %s: %s", path, strerror(errno));
    close(pfd);
    return fd;
}

int shim_image_matches(const struct shim_rec *r, int fd, int strict, char *why, size_t whylen)
{
    const struct shim_image_file *f = &r->image_file;
    struct stat st;

    if (!f->present)
        return 1;
    if (fd < 0 || HANDLED(fstat(fd, &st)) == -1) { /* the user's words: run again */
        snprintf(why, whylen, "the image could not be opened");
        return 0;
    }
    if ((st.st_mode & S_IFMT) != (f->mode & S_IFMT) || (uint64_t)st.st_dev != f->dev || (uint64_t)st.st_ino != f->ino
        || (strict && !S_ISDIR(st.st_mode)
            && ((uint64_t)st.st_size != f->size
                || (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec != f->mtime
                || (int64_t)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec != f->ctime))) {
        snprintf(why, whylen, "%s changed: it is not the file the record was planned for (replaced, rewritten or "
                 "renamed)", r->cfg.image_path ? r->cfg.image_path : "the image");
        return 0;
    }
    return 1;
}

int shim_image_root_fd(const struct shim_rec *r, int fd)
{
    return r->image_file.present && r->image_file.source == SHIM_IMAGE_SOURCE_OPENED ? fd : -1;
}
