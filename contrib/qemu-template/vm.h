/*
 * qemu-template: QEMU processes and their QMP connection
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_TEMPLATE_VM_H
#define QEMU_TEMPLATE_VM_H

#include "qmp.h"

/*
 * The descriptors QEMU gets: its QMP listening socket, then the files
 * the caller passes, in order.
 */
#define VM_FD_QMP 3
#define VM_FD_FILES 4
#define VM_MAX_FILES 2

typedef struct Vm Vm;

/* The VM's QMP is up (@err NULL), or the VM failed (@err owned). */
typedef void VmStateFunc(Vm *vm, Error *err, void *opaque);
/* The process is gone (or would not die). */
typedef void VmStoppedFunc(Vm *vm, void *opaque);

struct Vm {
    pid_t pid;
    uint64_t start;     /* its start time, /proc/PID/stat field 22 */
    bool exited;
    int status;
    bool failed;        /* the owner was told with an "exited" error */
    char *exe;          /* the binary's path, for messages */
    char *dir;
    char *log;
    char *qmp_path;
    QmpClient *qmp;
    int64_t t_exec;     /* when it was spawned (now_us()) */
    int64_t t_qmp;      /* when QMP answered qmp_capabilities */

    /* private */
    int qmp_fd;         /* the tool's connection, until vm_connect() */
    int exec_fd;        /* the exec handshake: an errno, or EOF */
    guint exec_watch;
    guint child_watch;
    guint timer;
    VmStateFunc *state_fn;
    QmpEventFunc *event_fn;
    void *opaque;
    guint stop_timer;
    int stop_step;
    VmStoppedFunc *stopped_fn;
    void *stopped_opaque;
};

void vm_init(Vm *vm, const char *dir);
/*
 * Free what @vm holds.  A process that still runs is left running (a
 * clone outlives the tool) and reaped if it exits while the tool runs.
 */
void vm_cleanup(Vm *vm);

/*
 * Start @qemu with @argv: stdout and stderr in vm->log, its QMP
 * listening socket (vm->qmp_path, made by the tool, already connected
 * to by the tool) as descriptor VM_FD_QMP and @files[i] as
 * VM_FD_FILES + i, no other descriptor of this process.  @detach: a
 * session of its own, so it outlives the tool; else it dies with the
 * tool.  Returns once forked: an exec that fails is reported through
 * vm_connect()'s callback.
 */
bool vm_spawn(Vm *vm, const QemuBinary *qemu, char **argv,
              const int *files, int nfiles, bool detach, Error **errp);

/*
 * Talk QMP on the connection made by vm_spawn(): send
 * qmp_capabilities, and call @state_fn once with NULL when QEMU
 * answered, or with the error if it did not within @timeout_s; later at
 * most once with the error that ended the VM (QEMU exited, QMP closed).
 * @event_fn gets every event.
 */
void vm_connect(Vm *vm, int timeout_s, VmStateFunc *state_fn,
                QmpEventFunc *event_fn, void *opaque);
/* vm_connect() and wait for it; *@stop ends the wait. */
bool vm_connect_sync(Vm *vm, int timeout_s, const bool *stop,
                     QmpEventFunc *event_fn, void *opaque, Error **errp);

/* "QEMU exited (status N): its last output" */
void vm_exit_error(Vm *vm, Error **errp);
/*
 * Stop the process: SIGTERM, SIGKILL if it did not exit in 3 s; @fn is
 * called (maybe at once) when it is gone.  The owner's callbacks are
 * not called any more.
 */
void vm_stop(Vm *vm, VmStoppedFunc *fn, void *opaque);
/* vm_stop() and wait for it. */
void vm_kill(Vm *vm);
/* The last lines QEMU wrote, made safe to print, for error messages. */
char *vm_log_tail(Vm *vm);
/* Append QEMU's last output to @errp unless the error already has it. */
void vm_append_log(Vm *vm, Error **errp);

#endif
