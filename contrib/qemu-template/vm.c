/*
 * qemu-template: QEMU processes and their QMP connection
 *
 * The tool forks QEMU itself (it must know the pid to check the QMP
 * peer, and QEMU's output goes to a log).  GLib's child watch reaps the
 * processes; the tool never calls waitpid() on them.
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/prctl.h>
#include <sys/un.h>
#include "qapi/error.h"
#include "qemu/sockets.h"
#include "qobject/qdict.h"
#include "qemu-template.h"
#include "vm.h"

/* after QMP closed, how long to wait for QEMU's exit status */
#define EXIT_GRACE_MS 1000
/* how often to try QMP while QEMU starts */
#define CONNECT_RETRY_MS 1

void vm_init(Vm *vm, const char *dir)
{
    memset(vm, 0, sizeof(*vm));
    vm->dir = g_strdup(dir);
    vm->log = g_build_filename(dir, "qemu.log", NULL);
    vm->qmp_path = g_build_filename(dir, "qmp.sock", NULL);
}

static void vm_reaped(GPid pid, gint status, gpointer opaque)
{
    /* a process the tool no longer follows: only reaped */
}

void vm_cleanup(Vm *vm)
{
    if (vm->timer) {
        g_source_remove(vm->timer);
    }
    if (vm->child_watch) {
        g_source_remove(vm->child_watch);
        if (!vm->exited) {
            g_child_watch_add(vm->pid, vm_reaped, NULL);
        }
    }
    qmp_client_free(vm->qmp);
    g_free(vm->dir);
    g_free(vm->log);
    g_free(vm->qmp_path);
    memset(vm, 0, sizeof(*vm));
}

char *vm_log_tail(Vm *vm)
{
    g_autofree char *text = NULL;
    gsize len = 0;
    const char *start;

    if (!g_file_get_contents(vm->log, &text, &len, NULL) || !len) {
        return g_strdup("(QEMU printed nothing)");
    }
    start = len > 600 ? text + len - 600 : text;
    return g_strstrip(g_strdup(start));
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

    if (vm->timer) {
        g_source_remove(vm->timer);
        vm->timer = 0;
    }
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

static void vm_child_exited(GPid pid, gint status, gpointer opaque)
{
    Vm *vm = opaque;
    Error *err = NULL;

    vm->child_watch = 0;
    vm->exited = true;
    vm->status = status;
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

/* In the child: only async-signal-safe calls until exec. */
static void G_GNUC_NORETURN vm_exec(char **argv, int logfd, int nullfd,
                                    int errfd, bool detach)
{
    int keep[] = { 0, 1, 2, errfd };
    int err;

    if (detach) {
        setsid();
    } else {
        /* the template's QEMU does not outlive a killed tool */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    }
    vm_reset_child_signals();
    dup2(nullfd, 0);
    dup2(logfd, 1);
    dup2(logfd, 2);
    /* nothing of the tool (sockets, locks, other clones' QMP) leaks */
    qemu_close_all_open_fd(keep, ARRAY_SIZE(keep));
    execv(argv[0], argv);
    err = errno;
    if (write(errfd, &err, sizeof(err)) < 0) {
        /* nothing to do: the parent sees the pipe close */
    }
    _exit(127);
}

bool vm_spawn(Vm *vm, char **argv, bool detach, Error **errp)
{
    int pfd[2], err = 0, logfd, nullfd;
    ssize_t n;

    logfd = open(vm->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (logfd < 0 || nullfd < 0 || !g_unix_open_pipe(pfd, FD_CLOEXEC, NULL)) {
        error_setg_errno(errp, errno, "cannot prepare '%s' for QEMU",
                         vm->log);
        goto fail;
    }
    vm->t_exec = now_us();
    vm->pid = fork();
    if (vm->pid == 0) {
        vm_exec(argv, logfd, nullfd, pfd[1], detach);
    }
    close(pfd[1]);
    if (vm->pid < 0) {
        close(pfd[0]);
        error_setg_errno(errp, errno, "cannot fork");
        goto fail;
    }
    vm->child_watch = g_child_watch_add(vm->pid, vm_child_exited, vm);
    do {
        n = read(pfd[0], &err, sizeof(err));
    } while (n < 0 && errno == EINTR);
    close(pfd[0]);
    close(logfd);
    close(nullfd);
    if (n == sizeof(err)) {
        error_setg_errno(errp, err, "cannot run QEMU '%s'", argv[0]);
        error_append_hint(errp, "Pass the QEMU binary with --qemu PATH.\n");
        return false;
    }
    return true;

fail:
    if (logfd >= 0) {
        close(logfd);
    }
    if (nullfd >= 0) {
        close(nullfd);
    }
    return false;
}

void vm_kill(Vm *vm)
{
    if (vm->pid > 0 && !vm->exited) {
        kill_pid(vm->pid);
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
    if (!vm->exited && vm->state_fn && !vm->timer) {
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
    vm->t_qmp = now_us();
    if (fn) {
        fn(vm, NULL, vm->opaque);
    }
}

static gboolean vm_try_connect(gpointer opaque)
{
    Vm *vm = opaque;
    Error *err = NULL;
    int fd = unix_connect(vm->qmp_path, NULL);

    if (fd < 0) {
        if (now_us() < vm->deadline) {
            return G_SOURCE_CONTINUE;
        }
        error_setg(&err, "QEMU's QMP socket '%s' did not appear in time",
                   vm->qmp_path);
    } else if (!check_peer(fd, vm->pid, vm->qmp_path, &err)) {
        close(fd);
    }
    vm->timer = 0;
    if (err) {
        vm_fail(vm, err);
        return G_SOURCE_REMOVE;
    }
    vm->qmp = qmp_client_new(fd, vm->qmp_path, vm_qmp_event, vm_qmp_closed,
                             vm);
    qmp_send(vm->qmp, "qmp_capabilities", NULL, vm_capabilities_done, vm);
    return G_SOURCE_REMOVE;
}

void vm_connect(Vm *vm, int timeout_s, VmStateFunc *state_fn,
                QmpEventFunc *event_fn, void *opaque)
{
    struct sockaddr_un sa;

    vm->state_fn = state_fn;
    vm->event_fn = event_fn;
    vm->opaque = opaque;
    if (strlen(vm->qmp_path) >= sizeof(sa.sun_path)) {
        Error *err = NULL;

        error_setg(&err, "socket path '%s' is too long", vm->qmp_path);
        error_append_hint(&err, "Use a shorter --dir.\n");
        vm->state_fn = NULL;
        state_fn(vm, err, opaque);
        return;
    }
    vm->deadline = now_us() + timeout_s * G_USEC_PER_SEC;
    if (vm->exited) {
        Error *err = NULL;

        vm_exit_error(vm, &err);
        vm_fail(vm, err);
        return;
    }
    vm->timer = g_timeout_add(CONNECT_RETRY_MS, vm_try_connect, vm);
}

typedef struct VmWait {
    bool done;
    Error *err;
} VmWait;

static void vm_connect_sync_done(Vm *vm, Error *err, void *opaque)
{
    VmWait *w = opaque;

    w->done = true;
    w->err = err;
}

bool vm_connect_sync(Vm *vm, int timeout_s, const bool *stop, Error **errp)
{
    VmWait w = { 0 };

    vm_connect(vm, timeout_s, vm_connect_sync_done, NULL, &w);
    while (!w.done && !(stop && *stop)) {
        g_main_context_iteration(NULL, true);
    }
    /* from now on the caller looks at vm->exited and the QMP client */
    vm->state_fn = NULL;
    vm->opaque = NULL;
    if (vm->timer) {
        g_source_remove(vm->timer);
        vm->timer = 0;
    }
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
