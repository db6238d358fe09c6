/*
 * qemu-template: pools of clones waiting for their state
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_TEMPLATE_POOL_H
#define QEMU_TEMPLATE_POOL_H

typedef struct PoolOpts {
    const char *qemu;
    char **extra;
    char **nics;
    int size;
    int timeout;            /* s, for each clone to run once loaded */
    int client_timeout;     /* s, see POOL_CLIENT_S */
    bool daemonize;
    const char *pidfile;
} PoolOpts;

/*
 * The default of PoolOpts.client_timeout: a client must send a whole
 * request within it of connecting or of its last answer, and read each
 * answer within it; else it is dropped.
 */
#define POOL_CLIENT_S 60

/* "pool NAME": serve clones of @name until stopped. */
bool pool_run(const char *name, const PoolOpts *o, Error **errp);

typedef enum PoolAnswer {
    POOL_NONE,          /* no pool runs for the template */
    POOL_SERVED,        /* the record */
    POOL_MISMATCH,      /* the pool's clones have other arguments */
    POOL_BUSY,          /* the pool takes no more connections now */
    POOL_ERROR,
} PoolAnswer;

/* Ask the pool of @name, if one runs, for a clone with @extra and @nics. */
PoolAnswer pool_take(const char *name, char **extra, char **nics,
                     QDict **rec, Error **errp);
/* The status of the pool of @name, or NULL when none runs. */
QDict *pool_status_of(const char *name);
/* Stop the pool of @name and wait until it is gone. */
bool pool_stop(const char *name, Error **errp);

#endif
