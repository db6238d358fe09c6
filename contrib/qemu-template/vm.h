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

typedef struct Vm Vm;

/* The VM's QMP is up (@err NULL), or the VM failed (@err owned). */
typedef void VmStateFunc(Vm *vm, Error *err, void *opaque);

struct Vm {
    pid_t pid;
    bool exited;
    int status;
    bool failed;        /* the owner was told with an "exited" error */
    char *dir;
    char *log;
    char *qmp_path;
    QmpClient *qmp;
    int64_t t_exec;     /* when it was spawned (now_us()) */
    int64_t t_qmp;      /* when QMP answered qmp_capabilities */

    /* private */
    guint child_watch;
    guint timer;
    int64_t deadline;
    VmStateFunc *state_fn;
    QmpEventFunc *event_fn;
    void *opaque;
};

void vm_init(Vm *vm, const char *dir);
/*
 * Free what @vm holds.  A process that still runs is left running (a
 * clone outlives the tool) and reaped if it exits while the tool runs.
 */
void vm_cleanup(Vm *vm);

/*
 * Start @argv[0] (an absolute path) with @argv, stdout and stderr in
 * vm->log, no other descriptor of this process.  @detach: a session of
 * its own, so it outlives the tool; else it dies with the tool.
 */
bool vm_spawn(Vm *vm, char **argv, bool detach, Error **errp);

/*
 * Connect to vm->qmp_path once QEMU listens (retried until @timeout_s),
 * check that the peer is the QEMU spawned, send qmp_capabilities.  Then
 * @state_fn is called once with NULL, and later at most once with the
 * error that ended the VM (QEMU exited, QMP closed).  @event_fn gets
 * every event.
 */
void vm_connect(Vm *vm, int timeout_s, VmStateFunc *state_fn,
                QmpEventFunc *event_fn, void *opaque);
/* vm_connect() and wait for it; *@stop ends the wait. */
bool vm_connect_sync(Vm *vm, int timeout_s, const bool *stop, Error **errp);

/* "QEMU exited (status N): its last output" */
void vm_exit_error(Vm *vm, Error **errp);
/* Stop the process (SIGTERM, then SIGKILL) if it runs. */
void vm_kill(Vm *vm);
/* The last lines QEMU wrote, for error messages. */
char *vm_log_tail(Vm *vm);
/* Append QEMU's last output to @errp unless the error already has it. */
void vm_append_log(Vm *vm, Error **errp);

#endif
