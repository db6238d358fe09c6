/*
 * qemu-template: a QMP client on the GLib main loop
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_TEMPLATE_QMP_H
#define QEMU_TEMPLATE_QMP_H

typedef struct QmpClient QmpClient;

/*
 * The answer to a command: its "return" member (@ret, a reference the
 * callback may take) or an error (@err, which the callback owns).
 */
typedef void QmpReplyFunc(QObject *ret, Error *err, void *opaque);
/* An event (a reference the callback may take). */
typedef void QmpEventFunc(QDict *event, void *opaque);
/* The connection closed or broke; @err says why (the callback owns it). */
typedef void QmpClosedFunc(Error *err, void *opaque);

/*
 * A client on the connected socket @fd (taken), on the thread-default
 * main context; its first command must be qmp_capabilities.
 */
QmpClient *qmp_client_new(int fd, const char *name, QmpEventFunc *event,
                          QmpClosedFunc *closed, void *opaque);
/* Close the connection; safe inside the client's own callbacks. */
void qmp_client_free(QmpClient *q);

/* Send @cmd with @args (taken); @fn (or nobody) gets the answer. */
void qmp_send(QmpClient *q, const char *cmd, QDict *args,
              QmpReplyFunc *fn, void *opaque);

/*
 * Run @cmd and wait for its answer, running the main context meanwhile,
 * until @deadline (now_us()); the "return" member, or NULL with @errp.
 * *@stop set (by a signal handler) also ends the wait.
 */
QObject *qmp_call(QmpClient *q, const char *cmd, QDict *args,
                  int64_t deadline, const bool *stop, Error **errp);
bool qmp_call_ok(QmpClient *q, const char *cmd, QDict *args,
                 int64_t deadline, const bool *stop, Error **errp);

bool qmp_is_closed(QmpClient *q);

/* "major.minor.micro[package]" from a query-version answer */
char *qmp_version_string(QObject *ret, Error **errp);

#endif
