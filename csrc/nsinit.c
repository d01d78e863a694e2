/* The namespaces a launch may ask for besides user + mount (--ipc, --net, --pid), and the minimal
 * init a PID namespace gets.
 *
 * With a PID namespace, the process that unshared it stays outside (it keeps shimrun's pid, so
 * srun and scancel still signal "the app"): it forwards every signal it can to the namespace's
 * PID 1 and ends as the app did. PID 1 forks the app, forwards signals to it, reaps every orphan
 * of the namespace, and reports the app's wait status on a pipe: an init cannot die of a signal
 * raised in its own namespace, so the outer process re-raises it. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <net/if.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core.h"

static sigset_t original_mask;
static int status_pipe[2] = {-1, -1};

/* Bring up lo in a new network namespace (it starts down): the only interface there is. */
void shim_loopback_up(void)
{
    struct ifreq ifr;
    int s;

    Z(s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket for the network namespace's lo");
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    Z(ioctl(s, SIOCGIFFLAGS, &ifr), "read the flags of lo in the new network namespace");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    Z(ioctl(s, SIOCSIFFLAGS, &ifr), "bring up lo in the new network namespace");
    close(s);
    shim_debug("new network namespace: lo up");
}

/* The signals passed on: all but those the kernel raises for a fault of the process itself, the
 * terminal's job control (which reaches the whole process group anyway) and SIGCHLD (ours). */
static int forwarded(int sig)
{
    switch (sig) {
    case SIGKILL: case SIGSTOP: case SIGCHLD: case SIGSEGV: case SIGBUS: case SIGILL: case SIGFPE: case SIGTRAP:
    case SIGSYS: case SIGTSTP: case SIGTTIN: case SIGTTOU:
        return 0;
    default:
        return 1;
    }
}

/* The signals passed on, and SIGCHLD: what a waiting parent blocks and waits for. */
void shim_forwarded_set(sigset_t *set)
{
    int sig;

    sigemptyset(set);
    for (sig = 1; sig < SIGRTMIN; sig++)
        if (forwarded(sig) || sig == SIGCHLD)
            sigaddset(set, sig);
}

static void block_forwarded(void)
{
    sigset_t set;

    shim_forwarded_set(&set);
    Z(sigprocmask(SIG_BLOCK, &set, &original_mask), "block signals for forwarding");
}

/* Forward signals to `child` and reap until it ends; every other child is reaped too (PID 1's
 * orphans). Returns the child's wait status. */
int shim_forward_until_exit(pid_t child)
{
    sigset_t set;
    int sig, status = 0;
    pid_t pid;

    shim_forwarded_set(&set);
    for (;;) {
        siginfo_t info;
        int w;
        while ((pid = HANDLED(waitpid(-1, &w, WNOHANG))) > 0) /* ECHILD: none left, below */
            if (pid == child)
                return w;
        if (pid == -1 && errno == ECHILD)
            return status;
        sig = sigwaitinfo(&set, &info);
        if (sig > 0 && sig != SIGCHLD)
            BEST_EFFORT(kill(child, sig)); /* the child may be gone already: its status comes next */
    }
}

void shim_end_as(int status)
{
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        sigset_t one;
        signal(sig, SIG_DFL);
        sigemptyset(&one);
        sigaddset(&one, sig);
        /* Ending as the app did is all that is left: should these fail, the exit below says it. */
        BEST_EFFORT(sigprocmask(SIG_UNBLOCK, &one, NULL));
        BEST_EFFORT(prctl(PR_SET_DUMPABLE, 0)); /* no core file of ours for the app's crash */
        raise(sig);
        _exit(128 + sig);
    }
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : SHIM_E_LAUNCH);
}

/* Right after unshare(CLONE_NEWPID): returns in the child, PID 1 of the new namespace. */
void shim_pidns_fork(void)
{
    pid_t child;
    int status, got, reported = 0;

    block_forwarded();
    Z(pipe2(status_pipe, O_CLOEXEC), "pipe for the PID namespace's init");
    fflush(NULL);
    child = fork();
    Z(child, "fork PID 1 of the new PID namespace");
    if (child == 0) {
        close(status_pipe[0]);
        /* Gone with the outer process (SIGKILL'd by a job's end): the namespace goes with PID 1.
         * (getppid() cannot tell whether it is already gone: the parent is outside, pid 0 here;
         * the outer process dies only by a signal, and it is blocked in sigwaitinfo.) */
        Z(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "tie PID 1 to shimrun");
        shim_debug("new PID namespace: this is its PID 1");
        return;
    }
    close(status_pipe[1]);
    status = shim_forward_until_exit(child);
    /* PID 1 passes on how the app ended; without a word from it (it failed before the app
     * started), its own status is the answer. */
    /* EINTR: again; any other failure: no word, and PID 1's own status is the answer */
    while ((got = (int)HANDLED(read(status_pipe[0], &reported, sizeof reported))) == -1 && errno == EINTR)
        ;
    shim_end_as(got == (int)sizeof reported ? reported : status);
}

/* In PID 1, just before the app is exec'd: returns in the app's process (the mask as shimrun got
 * it); PID 1 stays the namespace's init and never returns. */
void shim_pidns_init(void)
{
    pid_t app;
    int status;

    fflush(NULL);
    app = fork();
    Z(app, "fork the app in the PID namespace");
    if (app == 0) {
        Z(sigprocmask(SIG_SETMASK, &original_mask, NULL), "restore the signal mask for the app");
        return;
    }
    status = shim_forward_until_exit(app);
    /* EINTR: again; a failure leaves the outer process with PID 1's own status, the same code */
    while (HANDLED(write(status_pipe[1], &status, sizeof status)) == -1 && errno == EINTR)
        ;
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0));
}
