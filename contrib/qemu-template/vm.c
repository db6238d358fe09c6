/*
 * qemu-template: QEMU processes and their QMP connection
 *
 * The tool forks QEMU itself: it execs the binary it checked through
 * the descriptor it opened (not by path), hands it the files it checked
 * as descriptors, and makes QEMU's QMP listening socket and its own
 * connection to it before QEMU runs, so nothing is polled for and no
 * one else can be on the other end.  QEMU's output goes to a log.
 * GLib's child watch reaps the processes; nothing here blocks.
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include "qapi/error.h"
#include "qemu/sockets.h"
#include "qobject/qdict.h"
#include "qemu-template.h"
#include "vm.h"

/* after QMP closed, how long to wait for QEMU's exit status */
#define EXIT_GRACE_MS 1000
/* SIGTERM, then SIGKILL once this passed, then give up after as long */
#define STOP_GRACE_MS 3000
#define KILL_WAIT_MS 1000
/* how much of QEMU's output an error quotes */
#define LOG_TAIL 600

void vm_init(Vm *vm, const char *dir)
{
    memset(vm, 0, sizeof(*vm));
    vm->dir = g_strdup(dir);
    vm->log = g_build_filename(dir, "qemu.log", NULL);
    vm->qmp_path = g_build_filename(dir, "qmp.sock", NULL);
    vm->qmp_fd = -1;
    vm->exec_fd = -1;
}

static void vm_reaped(GPid pid, gint status, gpointer opaque)
{
    /* a process the tool no longer follows: only reaped */
}

static void vm_remove(guint *src)
{
    if (*src) {
        g_source_remove(*src);
        *src = 0;
    }
}

void vm_cleanup(Vm *vm)
{
    vm_remove(&vm->timer);
    vm_remove(&vm->stop_timer);
    vm_remove(&vm->exec_watch);
    if (vm->child_watch) {
        g_source_remove(vm->child_watch);
        if (!vm->exited) {
            g_child_watch_add(vm->pid, vm_reaped, NULL);
        }
    }
    if (vm->exec_fd >= 0) {
        close(vm->exec_fd);
    }
    if (vm->qmp_fd >= 0) {
        close(vm->qmp_fd);
    }
    qmp_client_free(vm->qmp);
    g_free(vm->exe);
    g_free(vm->dir);
    g_free(vm->log);
    g_free(vm->qmp_path);
    memset(vm, 0, sizeof(*vm));
}

char *vm_log_tail(Vm *vm)
{
    g_autofree char *text = NULL;
    g_autofree char *tail = NULL;
    gsize len = 0;

    if (!g_file_get_contents(vm->log, &text, &len, NULL) || !len) {
        return g_strdup("(QEMU printed nothing)");
    }
    tail = g_strndup(len > LOG_TAIL ? text + len - LOG_TAIL : text,
                     MIN(len, LOG_TAIL));
    /* the guest's output (-serial stdio) may be there: no escapes */
    return g_strstrip(sanitize_text(tail));
}

void vm_append_log(Vm *vm, Error **errp)
{
    g_autofree char *tail = NULL;

    if (!errp || !*errp || vm->failed) {
        return;     /* an "exited" error quotes the log already */
    }
    tail = vm_log_tail(vm);
    error_append_hint(errp, "QEMU's last output: %s\n", tail);
}

/* Tell the owner, once, that the VM is gone. */
static void vm_fail(Vm *vm, Error *err)
{
    VmStateFunc *fn = vm->state_fn;

    vm_remove(&vm->timer);
    vm->state_fn = NULL;
    if (fn) {
        fn(vm, err, vm->opaque);
    } else {
        error_free(err);
    }
}

void vm_exit_error(Vm *vm, Error **errp)
{
    g_autofree char *tail = vm_log_tail(vm);

    vm->failed = true;
    error_setg(errp, "QEMU exited (%s %d): %s",
               WIFSIGNALED(vm->status) ? "signal" : "status",
               WIFSIGNALED(vm->status) ? WTERMSIG(vm->status)
                                       : WEXITSTATUS(vm->status), tail);
}

/* The exec handshake: false (the owner told) if the exec failed. */
static bool vm_exec_check(Vm *vm)
{
    Error *err = NULL;
    int e = 0;
    ssize_t n;

    vm_remove(&vm->exec_watch);
    do {
        n = read(vm->exec_fd, &e, sizeof(e));
    } while (n < 0 && errno == EINTR);
    close(vm->exec_fd);
    vm->exec_fd = -1;
    if (n != sizeof(e)) {
        return true;    /* the pipe closed on exec */
    }
    error_setg_errno(&err, e, "cannot run QEMU '%s'", vm->exe);
    error_append_hint(&err, "Pass the QEMU binary (not a script) with "
                      "--qemu PATH.\n");
    vm->failed = true;
    vm_fail(vm, err);
    return false;
}

static gboolean vm_exec_done(int fd, GIOCondition cond, gpointer opaque)
{
    Vm *vm = opaque;

    vm->exec_watch = 0;     /* removed by returning G_SOURCE_REMOVE */
    vm_exec_check(vm);
    return G_SOURCE_REMOVE;
}

static void vm_child_exited(GPid pid, gint status, gpointer opaque)
{
    Vm *vm = opaque;
    VmStoppedFunc *stopped = vm->stopped_fn;
    Error *err = NULL;

    vm->child_watch = 0;
    vm->exited = true;
    vm->status = status;
    vm_remove(&vm->stop_timer);
    if (stopped) {
        vm->stopped_fn = NULL;
        stopped(vm, vm->stopped_opaque);
        return;
    }
    if (vm->exec_fd >= 0 && !vm_exec_check(vm)) {
        return;
    }
    vm_exit_error(vm, &err);
    vm_fail(vm, err);
}

static void vm_reset_child_signals(void)
{
    sigset_t all;
    int sig;

    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP) {
            signal(sig, SIG_DFL);
        }
    }
}

/* What the child needs, prepared before the fork. */
typedef struct VmExec {
    int qemu_fd;
    char **argv;
    int logfd;
    int nullfd;
    int errfd;
    int fds[1 + VM_MAX_FILES];  /* QMP listener, then the files */
    int nfds;
    bool detach;
    int open_max;
} VmExec;

/* In the child: fail the exec with errno. */
static void G_GNUC_NORETURN vm_exec_fail(int errfd)
{
    int err = errno;

    if (write(errfd, &err, sizeof(err)) < 0) {
        /* nothing to do: the parent sees the pipe close */
    }
    _exit(127);
}

/* In the child: close every descriptor from @first on. */
static void vm_close_from(int first, int open_max)
{
    int i;

#ifdef SYS_close_range
    if (syscall(SYS_close_range, first, ~0U, 0) == 0) {
        return;
    }
#endif
    for (i = first; i < open_max; i++) {
        close(i);
    }
}

/*
 * In the child: only async-signal-safe calls until exec.  The layout:
 * 0 /dev/null, 1 and 2 the log, 3.. the descriptors QEMU gets, then the
 * handshake pipe and the binary (both close-on-exec), nothing else.
 */
static void G_GNUC_NORETURN vm_exec(VmExec *x)
{
    int err_at = VM_FD_QMP + x->nfds, exe_at = err_at + 1;
    int base = exe_at + 1, i;

    if (x->detach) {
        setsid();
    } else {
        /* the template's QEMU does not outlive a killed tool */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    }
    vm_reset_child_signals();
    /* first out of the way of the numbers they get */
    x->errfd = fcntl(x->errfd, F_DUPFD_CLOEXEC, base);
    x->qemu_fd = fcntl(x->qemu_fd, F_DUPFD_CLOEXEC, base);
    x->logfd = fcntl(x->logfd, F_DUPFD_CLOEXEC, base);
    x->nullfd = fcntl(x->nullfd, F_DUPFD_CLOEXEC, base);
    for (i = 0; i < x->nfds; i++) {
        x->fds[i] = fcntl(x->fds[i], F_DUPFD_CLOEXEC, base);
    }
    if (x->errfd < 0 || dup2(x->errfd, err_at) < 0 ||
        fcntl(err_at, F_SETFD, FD_CLOEXEC) < 0) {
        _exit(127);
    }
    x->errfd = err_at;
    if (x->qemu_fd < 0 || x->logfd < 0 || x->nullfd < 0 ||
        dup2(x->qemu_fd, exe_at) < 0 ||
        fcntl(exe_at, F_SETFD, FD_CLOEXEC) < 0 ||
        dup2(x->nullfd, 0) < 0 || dup2(x->logfd, 1) < 0 ||
        dup2(x->logfd, 2) < 0) {
        vm_exec_fail(x->errfd);
    }
    for (i = 0; i < x->nfds; i++) {
        /* dup2() leaves the copy open across exec */
        if (x->fds[i] < 0 || dup2(x->fds[i], VM_FD_QMP + i) < 0) {
            vm_exec_fail(x->errfd);
        }
    }
    /* nothing of the tool (sockets, locks, other clones' QMP) leaks */
    vm_close_from(base, x->open_max);
    fexecve(exe_at, x->argv, environ);
    vm_exec_fail(x->errfd);
}

/* The QMP listening socket, and the tool's connection queued on it. */
static int vm_qmp_socket(Vm *vm, Error **errp)
{
    struct sockaddr_un sa;
    int lfd;

    if (strlen(vm->qmp_path) >= sizeof(sa.sun_path)) {
        error_setg(errp, "socket path '%s' is too long", vm->qmp_path);
        error_append_hint(errp, "Use a shorter --dir.\n");
        return -1;
    }
    lfd = unix_listen(vm->qmp_path, errp);
    if (lfd < 0) {
        return -1;
    }
    /* QEMU accepts it first, once it runs */
    vm->qmp_fd = unix_connect(vm->qmp_path, errp);
    if (vm->qmp_fd < 0) {
        close(lfd);
        return -1;
    }
    return lfd;
}

static bool vm_open_io(VmExec *x, const char *log, int pfd[2], Error **errp)
{
    x->logfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW |
                    O_CLOEXEC, 0600);
    x->nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (x->logfd < 0 || x->nullfd < 0 ||
        !g_unix_open_pipe(pfd, FD_CLOEXEC, NULL)) {
        error_setg_errno(errp, errno, "cannot prepare '%s' for QEMU", log);
        return false;
    }
    x->errfd = pfd[1];
    return true;
}

bool vm_spawn(Vm *vm, const QemuBinary *qemu, char **argv,
              const int *files, int nfiles, bool detach, Error **errp)
{
    VmExec x = {
        .qemu_fd = qemu->fd, .argv = argv, .logfd = -1, .nullfd = -1,
        .nfds = 1 + nfiles, .detach = detach,
        .open_max = sysconf(_SC_OPEN_MAX),
    };
    int pfd[2] = { -1, -1 }, i;
    bool ok = false;

    assert(nfiles <= VM_MAX_FILES);
    x.fds[0] = vm_qmp_socket(vm, errp);
    for (i = 0; i < nfiles; i++) {
        x.fds[1 + i] = files[i];
    }
    if (x.fds[0] >= 0 && vm_open_io(&x, vm->log, pfd, errp)) {
        vm->exe = g_strdup(qemu->path);
        vm->t_exec = now_us();
        vm->pid = fork();
        if (vm->pid == 0) {
            vm_exec(&x);
        }
        if (vm->pid < 0) {
            error_setg_errno(errp, errno, "cannot fork");
        } else {
            proc_start_time(vm->pid, &vm->start);
            vm->child_watch = g_child_watch_add(vm->pid, vm_child_exited,
                                                vm);
            vm->exec_fd = pfd[0];
            pfd[0] = -1;
            vm->exec_watch = g_unix_fd_add(vm->exec_fd, G_IO_IN | G_IO_HUP |
                                           G_IO_ERR, vm_exec_done, vm);
            ok = true;
        }
    }
    for (i = 0; i < 2; i++) {
        if (pfd[i] >= 0) {
            close(pfd[i]);
        }
    }
    if (x.fds[0] >= 0) {
        close(x.fds[0]);    /* QEMU's now */
    }
    if (x.logfd >= 0) {
        close(x.logfd);
    }
    if (x.nullfd >= 0) {
        close(x.nullfd);
    }
    return ok;
}

static gboolean vm_stop_step(gpointer opaque)
{
    Vm *vm = opaque;
    VmStoppedFunc *fn = vm->stopped_fn;

    if (vm->stop_step++ == 0) {
        kill(vm->pid, SIGKILL);
        vm->stop_timer = g_timeout_add(KILL_WAIT_MS, vm_stop_step, vm);
        return G_SOURCE_REMOVE;
    }
    /* it would not die (uninterruptible?): let the owner go on */
    vm->stop_timer = 0;
    vm->stopped_fn = NULL;
    if (fn) {
        fn(vm, vm->stopped_opaque);
    }
    return G_SOURCE_REMOVE;
}

void vm_stop(Vm *vm, VmStoppedFunc *fn, void *opaque)
{
    vm->state_fn = NULL;
    vm->event_fn = NULL;
    vm_remove(&vm->timer);
    if (vm->pid <= 0 || vm->exited || !vm->child_watch) {
        if (fn) {
            fn(vm, opaque);
        }
        return;
    }
    vm->stopped_fn = fn;
    vm->stopped_opaque = opaque;
    if (!vm->stop_timer) {
        kill(vm->pid, SIGTERM);
        vm->stop_step = 0;
        /* SIGKILL after STOP_GRACE_MS, give up KILL_WAIT_MS later */
        vm->stop_timer = g_timeout_add(STOP_GRACE_MS, vm_stop_step, vm);
    }
}

static void vm_killed(Vm *vm, void *opaque)
{
    *(bool *)opaque = true;
}

void vm_kill(Vm *vm)
{
    bool done = false;

    vm_stop(vm, vm_killed, &done);
    while (!done) {
        g_main_context_iteration(NULL, true);
    }
}

static void vm_qmp_event(QDict *event, void *opaque)
{
    Vm *vm = opaque;

    if (vm->event_fn) {
        vm->event_fn(event, vm->opaque);
    }
}

static gboolean vm_grace_over(gpointer opaque)
{
    Vm *vm = opaque;
    Error *err = NULL;

    vm->timer = 0;
    error_setg(&err, "QMP connection closed by QEMU");
    vm_fail(vm, err);
    return G_SOURCE_REMOVE;
}

/* QMP closed: QEMU probably exits; wait a little for its status. */
static void vm_qmp_closed(Error *err, void *opaque)
{
    Vm *vm = opaque;

    error_free(err);
    if (!vm->exited && vm->state_fn) {
        vm_remove(&vm->timer);
        vm->timer = g_timeout_add(EXIT_GRACE_MS, vm_grace_over, vm);
    }
}

static void vm_capabilities_done(QObject *ret, Error *err, void *opaque)
{
    Vm *vm = opaque;
    VmStateFunc *fn = vm->state_fn;

    if (err) {
        vm_fail(vm, err);
        return;
    }
    vm_remove(&vm->timer);
    vm->t_qmp = now_us();
    if (fn) {
        fn(vm, NULL, vm->opaque);
    }
}

static gboolean vm_connect_timeout(gpointer opaque)
{
    Vm *vm = opaque;
    Error *err = NULL;

    vm->timer = 0;
    error_setg(&err, "QEMU's QMP did not answer in time");
    vm_fail(vm, err);
    return G_SOURCE_REMOVE;
}

void vm_connect(Vm *vm, int timeout_s, VmStateFunc *state_fn,
                QmpEventFunc *event_fn, void *opaque)
{
    vm->state_fn = state_fn;
    vm->event_fn = event_fn;
    vm->opaque = opaque;
    if (vm->exited) {
        Error *err = NULL;

        vm_exit_error(vm, &err);
        vm_fail(vm, err);
        return;
    }
    vm->qmp = qmp_client_new(vm->qmp_fd, vm->qmp_path, vm_qmp_event,
                             vm_qmp_closed, vm);
    vm->qmp_fd = -1;
    vm->timer = g_timeout_add_seconds(timeout_s, vm_connect_timeout, vm);
    /* queued until QEMU accepts the connection */
    qmp_send(vm->qmp, "qmp_capabilities", NULL, vm_capabilities_done, vm);
}

typedef struct VmWait {
    bool done;
    Error *err;
    QmpEventFunc *event_fn;
    void *opaque;
} VmWait;

static void vm_connect_sync_done(Vm *vm, Error *err, void *opaque)
{
    VmWait *w = opaque;

    w->done = true;
    w->err = err;
}

static void vm_connect_sync_event(QDict *event, void *opaque)
{
    VmWait *w = opaque;

    if (w->event_fn) {
        w->event_fn(event, w->opaque);
    }
}

bool vm_connect_sync(Vm *vm, int timeout_s, const bool *stop,
                     QmpEventFunc *event_fn, void *opaque, Error **errp)
{
    VmWait w = { .event_fn = event_fn, .opaque = opaque };

    vm_connect(vm, timeout_s, vm_connect_sync_done, vm_connect_sync_event,
               &w);
    while (!w.done && !(stop && *stop)) {
        g_main_context_iteration(NULL, true);
    }
    /* from now on the caller looks at vm->exited and the QMP client */
    vm->state_fn = NULL;
    vm->event_fn = event_fn;
    vm->opaque = opaque;
    vm_remove(&vm->timer);
    if (!w.done) {
        error_setg(errp, "interrupted");
        return false;
    }
    if (w.err) {
        error_propagate(errp, w.err);
        return false;
    }
    return true;
}
