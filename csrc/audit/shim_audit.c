/* The audit library (glibc's LD_AUDIT interface, rtld-audit(7)): every process of the container
 * that uses glibc's loader reports each object it maps, one datagram or line per object:
 * "pid\tdev\tino\tpath\n" (the path as the container sees it; dev and ino let the executor know an
 * injected object by its host file whatever path it was opened by).
 *
 * It depends on nothing at all, not even libc (built -nostdlib -ffreestanding, system calls by
 * inline assembly for x86_64 and aarch64): it loads into any glibc image, old or new, and no libc
 * of the image's is asked for anything while the loader is still setting the process up.
 *
 * Where it reports: SHIM_AUDIT_FD, a datagram socket the executor leaves open in the app (sent
 * with MSG_NOSIGNAL: a gone reader costs the app nothing); a process that closed it (Python's
 * subprocess closes every descriptor) gets ENOTSOCK or EBADF and writes to the FIFO at
 * SHIM_AUDIT_FIFO instead, opened once per process, close-on-exec, non-blocking (no reader: the
 * line is dropped, the app goes on). Each report is one write of less than PIPE_BUF, so lines of
 * processes writing at once never mix. */
#include "../gen/record.h"

typedef unsigned long ulong;

#define LAV_CURRENT_SUPPORTED 1u
#define REPORT_MAX 4000 /* < PIPE_BUF (4096): one atomic write */

#if defined(__x86_64__)
#define NR_WRITE 1
#define NR_GETPID 39
#define NR_SENDTO 44
#define NR_OPENAT 257
#define NR_NEWFSTATAT 262
#define NR_READLINKAT 267
#define NR_RT_SIGPROCMASK 14
#define NR_RT_SIGTIMEDWAIT 128
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
#define NR_WRITE 64
#define NR_GETPID 172
#define NR_SENDTO 206
#define NR_OPENAT 56
#define NR_NEWFSTATAT 79
#define NR_READLINKAT 78
#define NR_RT_SIGPROCMASK 135
#define NR_RT_SIGTIMEDWAIT 137
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory");
    return x0;
}
#else
#error "the audit library knows the system calls of x86_64 and aarch64 only"
#endif

#define AT_FDCWD_ (-100)
#define O_WRONLY_ 01
#define O_NONBLOCK_ 04000
#define O_CLOEXEC_ 02000000
#define MSG_NOSIGNAL_ 0x4000
#define ENOTSOCK_ 88
#define EBADF_ 9
#define EPIPE_ 32
#define EINTR_ 4
#define SIGPIPE_ 13
#define SIG_BLOCK_ 0
#define SIG_SETMASK_ 2

/* The public head of glibc's struct link_map (<link.h>), the same in every release. */
struct link_map_head {
    ulong l_addr;
    const char *l_name;
    void *l_ld;
    struct link_map_head *l_next, *l_prev;
};

static int fifo_fd = -1; /* this process's FIFO descriptor, once the socket was closed */
static int fifo_tried;

static ulong length(const char *s)
{
    ulong n = 0;
    while (s[n])
        n++;
    return n;
}

static char *put(char *at, const char *end, const char *s, ulong n)
{
    while (n-- && at < end)
        *at++ = *s++;
    return at;
}

static char *put_number(char *at, const char *end, ulong v)
{
    char digits[24];
    int n = 0;
    do
        digits[n++] = (char)('0' + v % 10);
    while ((v /= 10) && n < 24);
    while (n && at < end)
        *at++ = digits[--n];
    return at;
}

/* A write to the FIFO whose reader is gone raises SIGPIPE: blocked for this write, and a SIGPIPE
 * it raised taken back, so that the app never dies of the audit. */
static void fifo_write(const char *buf, ulong n)
{
    ulong pipe_only = 1ul << (SIGPIPE_ - 1), old = 0;
    long zero[2] = {0, 0};

    if (sys6(NR_RT_SIGPROCMASK, SIG_BLOCK_, (long)&pipe_only, (long)&old, 8, 0, 0) < 0)
        return;
    if (sys6(NR_WRITE, fifo_fd, (long)buf, (long)n, 0, 0, 0) == -EPIPE_ && !(old & pipe_only))
        sys6(NR_RT_SIGTIMEDWAIT, (long)&pipe_only, 0, (long)zero, 8, 0, 0);
    sys6(NR_RT_SIGPROCMASK, SIG_SETMASK_, (long)&old, 0, 8, 0, 0);
}

static void report(const char *buf, ulong n)
{
    long r;

    while ((r = sys6(NR_SENDTO, SHIM_AUDIT_FD, (long)buf, (long)n, MSG_NOSIGNAL_, 0, 0)) == -EINTR_)
        ;
    if (r != -ENOTSOCK_ && r != -EBADF_)
        return; /* sent, or the reader is gone: nothing to do either way */
    if (!fifo_tried) {
        fifo_tried = 1;
        fifo_fd = (int)sys6(NR_OPENAT, AT_FDCWD_, (long)SHIM_AUDIT_FIFO, O_WRONLY_ | O_NONBLOCK_ | O_CLOEXEC_, 0, 0, 0);
    }
    if (fifo_fd >= 0)
        fifo_write(buf, n);
}

unsigned int la_version(unsigned int version)
{
    return version < LAV_CURRENT_SUPPORTED ? version : LAV_CURRENT_SUPPORTED;
}

unsigned int la_objopen(struct link_map_head *map, long lmid, ulong *cookie)
{
    char line[REPORT_MAX], exe[REPORT_MAX - 64];
    const char *end = line + sizeof line - 1, *path = map->l_name;
    ulong st[32]; /* struct stat: dev and ino are its first two words on x86_64 and aarch64 */
    char *at = line;
    long n;

    (void)lmid;
    (void)cookie;
    if (!path || !path[0]) { /* the main program: its name is what /proc/self/exe points at */
        n = sys6(NR_READLINKAT, AT_FDCWD_, (long)"/proc/self/exe", (long)exe, sizeof exe - 1, 0, 0);
        if (n <= 0)
            return 0;
        exe[n] = '\0';
        path = exe;
    }
    if (sys6(NR_NEWFSTATAT, AT_FDCWD_, (long)path, (long)st, 0, 0, 0) < 0)
        st[0] = st[1] = 0; /* the vdso, or a name that is gone: the path says it all */
    at = put_number(at, end, (ulong)sys6(NR_GETPID, 0, 0, 0, 0, 0, 0));
    at = put(at, end, "\t", 1);
    at = put_number(at, end, st[0]);
    at = put(at, end, "\t", 1);
    at = put_number(at, end, st[1]);
    at = put(at, end, "\t", 1);
    at = put(at, end, path, length(path));
    if (at >= end)
        return 0; /* a path this long is not reported cut */
    *at++ = '\n';
    report(line, (ulong)(at - line));
    return 0;
}
