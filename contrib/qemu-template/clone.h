/*
 * qemu-template: clones of a template
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_TEMPLATE_CLONE_H
#define QEMU_TEMPLATE_CLONE_H

#include "manifest.h"
#include "vm.h"

typedef enum CloneState {
    CLONE_STARTING,     /* spawned; QMP and the version check to come */
    CLONE_WAITING,      /* -incoming defer, checked: waits for its state */
    CLONE_LOADING,      /* migrate-incoming sent: waits for the guest */
    CLONE_RUNNING,      /* the guest runs; NICs being added */
    CLONE_DONE,         /* recorded: handed out */
    CLONE_FAILED,       /* c->err says why; the process is stopped */
} CloneState;

typedef struct Clone Clone;

/* The clone reached CLONE_WAITING, CLONE_DONE or CLONE_FAILED. */
typedef void CloneFunc(Clone *c, void *opaque);

struct Clone {
    Manifest *m;        /* not owned: outlives the clone */
    Vm vm;
    char *id;
    char *genid;
    char *uuid;
    char **nics;        /* netdev ids to give a NIC once the clone runs */
    bool pooled;
    CloneState state;
    Error *err;
    QDict *rec;         /* the record once CLONE_DONE */
    int64_t t_req;      /* when its state was asked for (clone_load()) */
    int64_t t_running;
    int load_timeout_s; /* from clone_load() to running, at most */
    void *user;         /* the owner's, e.g. the pool client it goes to */

    /* private */
    bool resumed;       /* RESUME came */
    bool cont_pending;  /* "cont" sent, its answer not read yet */
    bool release_asked; /* freed once that answer is read */
    bool pending;       /* counted until freed: clone_wait_pending() */
    QList *nic_list;
    int nics_added;
    guint notify_idle;
    guint timer;        /* connecting; after the load, the RESUME grace */
    guint load_timer;   /* the whole load */
    CloneFunc *notify;
    void *opaque;
};

/* What clones are started from. */
typedef struct CloneSpec {
    Manifest *m;                /* loaded: its files are open */
    const QemuBinary *qemu;     /* checked by the caller */
    char **extra;               /* extra QEMU arguments */
    char **nics;
    bool pooled;
    int timeout_s;              /* load_timeout_s */
} CloneSpec;

/* the default of CloneSpec.timeout_s */
#define CLONE_LOAD_S 120

/*
 * Start a clone as @spec says (which must outlive it); its record is
 * written before the process exists.  Returns once QEMU is forked:
 * @notify is called (from the main loop) when it waits for its state,
 * and when it failed; NULL with @errp if it could not be started.
 */
Clone *clone_start(const CloneSpec *spec, CloneFunc *notify, void *opaque,
                   Error **errp);
/* Load the state into a waiting clone; @notify says when it runs. */
void clone_load(Clone *c, int64_t t_req);
/*
 * Stop a clone that was not handed out, remove it and free @c, without
 * waiting: the process is stopped from the main loop.
 */
void clone_discard(Clone *c);
/*
 * Free a handed-out clone (its QEMU runs on), once the answers the tool
 * waits for on its QMP connection came.
 */
void clone_release(Clone *c);
/*
 * Run the main loop until every clone released or discarded is freed,
 * or @timeout_ms passed.
 */
void clone_wait_pending(int timeout_ms);
/* How many clones discarded are being stopped now. */
int clone_stopping(void);

/*
 * What identifies the process of clone @id by its record @rec: the pid
 * and start time recorded, and its "-uuid" (else "-name" @id).  @r
 * points into @rec and @id.
 */
void clone_record_ref(QDict *rec, const char *id, ProcRef *r);

/* The line "clone" prints for a record. */
void clone_print(QDict *rec);

typedef struct CloneOpts {
    const char *qemu;
    char **extra;
    char **nics;
    int count;
    int timeout;        /* s, for each clone to run once loaded */
    bool no_pool;
} CloneOpts;

/*
 * "clone NAME": @o->count clones, from the template's pool when one runs
 * with the same arguments; their records in *@result (also on failure).
 */
bool clone_run(const char *name, const CloneOpts *o, QObject **result,
               Error **errp);

#endif
