/* Standard descriptors a caller closed (batch systems, daemons and workflow engines start jobs
 * so) are opened on /dev/null before anything else is opened: otherwise the first file opened
 * becomes "stdin" or "stdout" (the image handed to squashfuse, a cache file written to by the
 * app's printf). The app then sees /dev/null there, as glibc does for setuid programs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "core.h"

int shim_standard_fds(void)
{
    int fd;

    for (fd = 0; fd <= 2; fd++) {
        /* -errno to the caller, which reports it (nothing to unwind to yet, nor a place to write to) */
        if (HANDLED(fcntl(fd, F_GETFD)) != -1 || errno != EBADF) /* open: nothing to do */
            continue;
        /* The lowest free descriptor: this one, since those below it are open by now. */
        int got = HANDLED(open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY)); /* -errno, above */
        if (got == -1)
            return -errno;
        if (got != fd) {
            int err = HANDLED(dup2(got, fd)) == -1 ? errno : 0; /* -errno, above */
            close(got);
            if (err)
                return -err;
        }
    }
    return 0;
}
