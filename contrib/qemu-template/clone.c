/*
 * qemu-template: clones of a template
 *
 * A clone is a QEMU process started with -incoming defer: its record is
 * written before it exists (and again with its pid), so a tool killed at
 * any moment leaves nothing that "list" and "destroy" do not see.  Once
 * its QMP answers, its QEMU version is checked against the manifest
 * before any of the template's state is loaded; then it waits (in a
 * pool, until a request takes it), loads the state with
 * migrate-incoming, and is running when QEMU says RESUME.
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/uuid.h"
#include "qobject/qdict.h"
#include "qobject/qlist.h"
#include "qemu-template.h"
#include "cmdline.h"
#include "clone.h"
#include "pool.h"

/* how long a clone may take to answer on QMP */
#define CLONE_CONNECT_S 30
/* after the load completed, how long RESUME may take before we ask */
#define CLONE_RESUME_GRACE_MS 1000

static const char *const clone_state_names[] = {
    [CLONE_STARTING] = "starting",
    [CLONE_WAITING] = "waiting",
    [CLONE_LOADING] = "loading",
    [CLONE_RUNNING] = "running",
    [CLONE_DONE] = "running",
    [CLONE_FAILED] = "failed",
};

static QDict *clone_times(Clone *c)
{
    QDict *t = qdict_new();
    int64_t now = now_us();

    if (c->pooled) {
        /* what the requester waits for, and to the guest running */
        qdict_put_int(t, "request-us", now - c->t_req);
        qdict_put_int(t, "request-running-us", c->t_running - c->t_req);
    } else {
        qdict_put_int(t, "qmp-us", c->vm.t_qmp - c->vm.t_exec);
        qdict_put_int(t, "running-us", c->t_running - c->vm.t_exec);
        qdict_put_int(t, "ready-us", now - c->vm.t_exec);
    }
    return t;
}

/* The record of @c in state @state, as "list" and "destroy" read it. */
static QDict *clone_record(Clone *c, CloneState state)
{
    QDict *rec = qdict_new(), *ident = qdict_new();

    qdict_put_str(rec, "id", c->id);
    qdict_put_str(rec, "template", c->m->name);
    qdict_put_str(rec, "state", clone_state_names[state]);
    qdict_put_bool(rec, "pooled", c->pooled);
    qdict_put_str(rec, "dir", c->vm.dir);
    qdict_put_str(rec, "qmp", c->vm.qmp_path);
    if (c->vm.pid > 0) {
        /* list and destroy believe the pid only for this process */
        qdict_put_int(rec, "pid", c->vm.pid);
        qdict_put_int(rec, "pid-start", c->vm.start);
    }
    qdict_put_str(ident, "vmgenid", c->genid);
    qdict_put_str(ident, "uuid", c->uuid);
    qdict_put(rec, "identity", ident);
    if (state == CLONE_DONE) {
        g_autofree char *iso = iso_now();

        qdict_put_str(rec, "started", iso);
        qdict_put(rec, "times", clone_times(c));
        qdict_put(rec, "nics", qobject_ref(c->nic_list));
    }
    return rec;
}

static bool clone_write(Clone *c, CloneState state, Error **errp)
{
    g_autofree char *path = g_build_filename(c->vm.dir, CLONE_FILE, NULL);
    g_autoptr(QDict) rec = clone_record(c, state);

    if (!write_json(path, QOBJECT(rec), false, errp)) {
        return false;
    }
    if (state == CLONE_DONE) {
        c->rec = qobject_ref(rec);
    }
    return true;
}

static gboolean clone_notify_now(gpointer opaque)
{
    Clone *c = opaque;

    c->notify_idle = 0;
    if (c->notify) {
        c->notify(c, c->opaque);
    }
    return G_SOURCE_REMOVE;
}

/* Tell the owner from the main loop, never from inside a callback. */
static void clone_notify(Clone *c)
{
    if (!c->notify_idle) {
        c->notify_idle = g_idle_add(clone_notify_now, c);
    }
}

static void clone_remove(guint *src)
{
    if (*src) {
        g_source_remove(*src);
        *src = 0;
    }
}

static void clone_fail(Clone *c, Error *err)
{
    if (c->state == CLONE_FAILED || c->state == CLONE_DONE) {
        error_free(err);
        return;
    }
    clone_remove(&c->timer);
    clone_remove(&c->load_timer);
    vm_append_log(&c->vm, &err);
    error_prepend(&err, "clone of '%s' failed: ", c->m->name);
    c->err = err;
    c->state = CLONE_FAILED;
    clone_notify(c);
}

static void clone_done(Clone *c)
{
    Error *err = NULL;

    if (!clone_write(c, CLONE_DONE, &err)) {
        clone_fail(c, err);
        return;
    }
    c->state = CLONE_DONE;
    clone_notify(c);
}

/* A random locally administered unicast MAC address. */
static char *new_mac(void)
{
    guint8 b[6];
    int i;

    for (i = 0; i < 6; i++) {
        b[i] = g_random_int_range(0, 256);
    }
    b[0] = (b[0] & 0xfc) | 0x02;
    return g_strdup_printf("%02x:%02x:%02x:%02x:%02x:%02x",
                           b[0], b[1], b[2], b[3], b[4], b[5]);
}

static void clone_add_nic(Clone *c);

static void clone_nic_added(QObject *ret, Error *err, void *opaque)
{
    Clone *c = opaque;

    if (err) {
        error_prepend(&err, "cannot add a NIC on netdev '%s': ",
                      c->nics[c->nics_added]);
        clone_fail(c, err);
        return;
    }
    c->nics_added++;
    clone_add_nic(c);
}

/*
 * Give the running clone a virtio-net NIC with a new MAC on each netdev
 * of c->nics, one after the other.  A NIC in the template would keep the
 * template's MAC (its migrated state carries it); a NIC added after the
 * clone runs is new to the guest, which reads its MAC when it probes it.
 */
static void clone_add_nic(Clone *c)
{
    g_autofree char *mac = NULL;
    g_autofree char *id = NULL;
    QDict *args, *nic;

    if (!c->nics || !c->nics[c->nics_added]) {
        clone_done(c);
        return;
    }
    mac = new_mac();
    id = g_strdup_printf(ID_PREFIX "nic%d", c->nics_added);
    args = qdict_new();
    qdict_put_str(args, "driver", "virtio-net-pci");
    qdict_put_str(args, "id", id);
    qdict_put_str(args, "netdev", c->nics[c->nics_added]);
    qdict_put_str(args, "mac", mac);
    nic = qdict_new();
    qdict_put_str(nic, "id", id);
    qdict_put_str(nic, "netdev", c->nics[c->nics_added]);
    qdict_put_str(nic, "mac", mac);
    qlist_append(c->nic_list, nic);
    qmp_send(c->vm.qmp, "device_add", args, clone_nic_added, c);
}

/*
 * The guest runs once RESUME came.  If the tool sent "cont", its answer
 * must be read before the tool closes the QMP connection (else it would
 * reach the next client of the clone's QMP socket): the clone command
 * waits for it, a pool answers at once and clone_release() waits.
 */
static void clone_running(Clone *c)
{
    if (c->state != CLONE_LOADING || !c->resumed ||
        (c->cont_pending && !c->pooled)) {
        return;
    }
    c->state = CLONE_RUNNING;
    clone_remove(&c->timer);
    clone_remove(&c->load_timer);
    clone_add_nic(c);
}

static void clone_free(Clone *c);

static void clone_cont_done(QObject *ret, Error *err, void *opaque)
{
    Clone *c = opaque;

    c->cont_pending = false;
    if (c->release_asked) {
        error_free(err);
        clone_free(c);
        return;
    }
    if (err) {
        clone_fail(c, err);
        return;
    }
    clone_running(c);
}

/* A template saved stopped: its clones are resumed here. */
static void clone_cont(Clone *c)
{
    c->cont_pending = true;
    qmp_send(c->vm.qmp, "cont", NULL, clone_cont_done, c);
}

static void clone_status_done(QObject *ret, Error *err, void *opaque)
{
    Clone *c = opaque;
    QDict *d = qobject_to(QDict, ret);
    const char *status = d ? qdict_get_try_str(d, "status") : NULL;

    if (c->state != CLONE_LOADING) {
        error_free(err);
        return;
    }
    if (err) {
        clone_fail(c, err);
        return;
    }
    if (!g_strcmp0(status, "running")) {
        if (!c->resumed) {
            c->resumed = true;
            c->t_running = now_us();
        }
        clone_running(c);
    } else if (!g_strcmp0(status, "paused") ||
               !g_strcmp0(status, "postmigrate")) {
        clone_cont(c);
    } else {
        error_setg(&err, "clone stopped in state '%s'", status ?: "?");
        clone_fail(c, err);
    }
}

static gboolean clone_ask_status(gpointer opaque)
{
    Clone *c = opaque;

    c->timer = 0;
    qmp_send(c->vm.qmp, "query-status", NULL, clone_status_done, c);
    return G_SOURCE_REMOVE;
}

static gboolean clone_load_timeout(gpointer opaque)
{
    Clone *c = opaque;
    Error *err = NULL;

    c->load_timer = 0;
    error_setg(&err, "the clone did not start running in %d s",
               c->load_timeout_s);
    clone_fail(c, err);
    return G_SOURCE_REMOVE;
}

/*
 * Running once RESUME comes: query-status would wait for the BQL, which
 * a running TCG vCPU holds most of the time.  When the load completed
 * (MIGRATION event) and no RESUME follows, the status is asked.
 */
static void clone_vm_event(QDict *event, void *opaque)
{
    Clone *c = opaque;
    const char *name = qdict_get_try_str(event, "event");
    QDict *data = qdict_get_qdict(event, "data");

    if (c->state != CLONE_LOADING) {
        return;
    }
    if (!g_strcmp0(name, "RESUME")) {
        c->resumed = true;
        c->t_running = now_us();
        clone_running(c);
    } else if (!g_strcmp0(name, "MIGRATION") && data &&
               !g_strcmp0(qdict_get_try_str(data, "status"), "completed")) {
        /* c->load_timer still bounds the whole load */
        clone_remove(&c->timer);
        if (c->m->stopped) {
            clone_cont(c);
        } else {
            c->timer = g_timeout_add(CLONE_RESUME_GRACE_MS,
                                     clone_ask_status, c);
        }
    }
}

static void clone_incoming_done(QObject *ret, Error *err, void *opaque)
{
    if (err) {
        clone_fail(opaque, err);
    }
}

void clone_load(Clone *c, int64_t t_req)
{
    /* the file the tool checked, passed with -add-fd */
    g_autofree char *state = state_fdset_path();
    QDict *args = qdict_new();

    assert(c->state == CLONE_WAITING);
    c->t_req = t_req;
    c->state = CLONE_LOADING;
    qdict_put(args, "channels", file_channels(state));
    c->load_timer = g_timeout_add_seconds(c->load_timeout_s,
                                          clone_load_timeout, c);
    qmp_send(c->vm.qmp, "migrate-incoming", args, clone_incoming_done, c);
}

/* Before any state is loaded: a template made by another QEMU is refused. */
static void clone_version_done(QObject *ret, Error *err, void *opaque)
{
    Clone *c = opaque;
    g_autofree char *version = err ? NULL : qmp_version_string(ret, &err);

    if (!version) {
        clone_fail(c, err);
        return;
    }
    if (strcmp(version, c->m->version)) {
        error_setg(&err, "template '%s' was made by QEMU %s, this QEMU is "
                   "%s", c->m->name, c->m->version, version);
        error_append_hint(&err, "Create the template again with this "
                          "QEMU.\n");
        clone_fail(c, err);
        return;
    }
    if (!clone_write(c, CLONE_WAITING, &err)) {
        clone_fail(c, err);
        return;
    }
    c->state = CLONE_WAITING;
    clone_notify(c);
}

static void clone_vm_state(Vm *vm, Error *err, void *opaque)
{
    Clone *c = opaque;

    if (err && c->state == CLONE_STARTING) {
        error_prepend(&err, "while it started: ");
    }
    if (err) {
        clone_fail(c, err);
        return;
    }
    qmp_send(vm->qmp, "query-version", NULL, clone_version_done, c);
}

/* The clone's directory and its first record, before its process. */
static bool clone_prepare(Clone *c, Error **errp)
{
    g_autofree char *clones = tool_subdir("clones", errp);

    if (!clones) {
        return false;
    }
    if (mkdir(c->vm.dir, 0700) < 0) {
        error_setg_errno(errp, errno, "cannot create '%s'", c->vm.dir);
        return false;
    }
    return clone_write(c, CLONE_STARTING, errp);
}

static Clone *clone_new(const CloneSpec *spec, CloneFunc *notify,
                        void *opaque)
{
    g_autofree char *rnd = new_uuid();
    g_autofree char *dir = NULL;
    Clone *c = g_new0(Clone, 1);

    c->m = spec->m;
    c->id = g_strdup_printf("%s-%.8s", spec->m->name, rnd);
    c->genid = new_uuid();
    c->uuid = new_uuid();
    c->pooled = spec->pooled;
    c->nics = g_strdupv(spec->nics);
    c->nic_list = qlist_new();
    c->load_timeout_s = spec->timeout_s ?: CLONE_LOAD_S;
    c->notify = notify;
    c->opaque = opaque;
    dir = clone_path(c->id, NULL);
    vm_init(&c->vm, dir);
    return c;
}

/* Fork QEMU with the template's files as descriptors. */
static bool clone_spawn(Clone *c, const CloneSpec *spec, Error **errp)
{
    const Manifest *m = spec->m;
    g_auto(GStrv) argv = NULL;
    int files[VM_MAX_FILES], n = 0, state;
    VmArgs va = {
        .qemu = spec->qemu->path, .user = m->args, .extra = spec->extra,
        .dir = c->vm.dir, .qmp_fd = VM_FD_QMP, .mode = m->mode,
        .ram_size = m->ram_size, .clone = true, .genid = c->genid,
        .uuid = c->uuid, .name = c->id,
    };
    bool ok;

    /* each clone reads the state at its own offset */
    state = manifest_open_state(m, errp);
    if (state < 0) {
        return false;
    }
    if (m->mode == MODE_BYPASS) {
        va.ram_fd = VM_FD_FILES + n;
        files[n++] = m->ram_fd;
    }
    va.state_fd = VM_FD_FILES + n;
    files[n++] = state;
    argv = build_argv(&va);
    ok = vm_spawn(&c->vm, spec->qemu, argv, files, n, true, errp);
    close(state);
    return ok;
}

Clone *clone_start(const CloneSpec *spec, CloneFunc *notify, void *opaque,
                   Error **errp)
{
    Clone *c = clone_new(spec, notify, opaque);

    if (!clone_prepare(c, errp)) {
        rmtree(c->vm.dir);
        clone_release(c);
        return NULL;
    }
    /* the record has no pid until the fork returns: destroy looks it up */
    if (!clone_spawn(c, spec, errp) ||
        !clone_write(c, CLONE_STARTING, errp)) {
        clone_discard(c);
        return NULL;
    }
    vm_connect(&c->vm, CLONE_CONNECT_S, clone_vm_state, clone_vm_event, c);
    return c;
}

/* clones freed later: "cont" answers awaited, processes being stopped */
static int clones_pending;
/* of those, the clones being stopped */
static int clones_stopping;

int clone_stopping(void)
{
    return clones_stopping;
}

static void clone_free(Clone *c)
{
    if (c->pending) {
        clones_pending--;
    }
    clone_remove(&c->notify_idle);
    clone_remove(&c->timer);
    clone_remove(&c->load_timer);
    vm_cleanup(&c->vm);
    g_free(c->id);
    g_free(c->genid);
    g_free(c->uuid);
    g_strfreev(c->nics);
    qobject_unref(c->nic_list);
    qobject_unref(c->rec);
    error_free(c->err);
    g_free(c);
}

void clone_release(Clone *c)
{
    if (c->cont_pending && !c->release_asked) {
        c->release_asked = true;
        c->notify = NULL;
        c->pending = true;
        clones_pending++;
        return;
    }
    clone_free(c);
}

static gboolean clone_wait_over(gpointer opaque)
{
    *(bool *)opaque = true;
    return G_SOURCE_REMOVE;
}

void clone_wait_pending(int timeout_ms)
{
    bool over = false;
    guint t = g_timeout_add(timeout_ms, clone_wait_over, &over);

    while (clones_pending && !over) {
        g_main_context_iteration(NULL, true);
    }
    if (!over) {
        g_source_remove(t);
    }
}

static void clone_stopped(Vm *vm, void *opaque)
{
    Clone *c = opaque;

    clones_stopping--;
    rmtree(c->vm.dir);
    clone_free(c);
}

void clone_discard(Clone *c)
{
    clone_remove(&c->notify_idle);
    clone_remove(&c->timer);
    clone_remove(&c->load_timer);
    c->notify = NULL;
    if (!c->pending) {
        c->pending = true;
        clones_pending++;
    }
    /* no answer matters any more */
    qmp_client_free(c->vm.qmp);
    c->vm.qmp = NULL;
    clones_stopping++;
    vm_stop(&c->vm, clone_stopped, c);
}

void clone_record_ref(QDict *rec, const char *id, ProcRef *r)
{
    QDict *ident = qdict_get_qdict(rec, "identity");
    const char *uuid = ident ? qdict_get_try_str(ident, "uuid") : NULL;
    int64_t pid = qdict_get_try_int(rec, "pid", 0);
    int64_t start = qdict_get_try_int(rec, "pid-start", 0);
    QemuUUID u;

    memset(r, 0, sizeof(*r));
    if (qdict_haskey(rec, "pid")) {
        /* a pid that is not one names no process */
        r->pid = pid > 0 && pid <= INT_MAX ? pid : -1;
    }
    r->start = MAX(start, 0);
    if (uuid && !qemu_uuid_parse(uuid, &u)) {
        r->opt = "-uuid";
        r->val = uuid;
    } else {
        r->opt = "-name";
        r->val = id;
    }
}

static const char *str_member(QDict *d, const char *key)
{
    return (d ? qdict_get_try_str(d, key) : NULL) ?: "";
}

static double ms_member(QDict *d, const char *key)
{
    return (d ? qdict_get_try_int(d, key, 0) : 0) / 1000.0;
}

void clone_print(QDict *rec)
{
    QDict *id = qdict_get_qdict(rec, "identity");
    QDict *t = qdict_get_qdict(rec, "times");
    QList *nics = qdict_get_qlist(rec, "nics");
    QListEntry *e;

    printf("%s pid=%" PRId64 " qmp=%s vmgenid=%s uuid=%s ",
           str_member(rec, "id"), qdict_get_try_int(rec, "pid", 0),
           str_member(rec, "qmp"), str_member(id, "vmgenid"),
           str_member(id, "uuid"));
    if (qdict_get_try_bool(rec, "pooled", false)) {
        printf("request-to-running=%.1fms request=%.1fms",
               ms_member(t, "request-running-us"),
               ms_member(t, "request-us"));
    } else {
        printf("running=%.1fms", ms_member(t, "running-us"));
    }
    if (nics) {
        QLIST_FOREACH_ENTRY(nics, e) {
            printf(" mac=%s",
                   str_member(qobject_to(QDict, qlist_entry_obj(e)), "mac"));
        }
    }
    printf("\n");
    fflush(stdout);
}

/* ------------------------------------------------------------------ */
/* the "clone" command */

/*
 * Clones not taken from a pool are started CLONE_BATCH at a time, all
 * on one main loop, so their start-ups overlap and each one's times
 * count from its own exec.
 */
#define CLONE_BATCH 8

/* how long stopping the clones not handed out may take, at most */
#define CLONE_STOP_MS 5000

typedef struct CloneRun {
    Manifest *m;
    const CloneOpts *o;
    QemuBinary *qemu;
    CloneSpec spec;
    int started;
    GQueue live;
    QList *done;
    Error *err;
    GMainLoop *loop;
    Interrupt in;
} CloneRun;

static void clone_run_more(CloneRun *r);

/* Stop the clones not handed out yet. */
static void clone_run_stop(CloneRun *r)
{
    Clone *c;

    while ((c = g_queue_pop_head(&r->live))) {
        clone_discard(c);
    }
}

static void clone_run_notify(Clone *c, void *opaque)
{
    CloneRun *r = opaque;

    if (c->state == CLONE_WAITING) {
        clone_load(c, now_us());
        return;
    }
    g_queue_remove(&r->live, c);
    if (c->state == CLONE_DONE) {
        if (!opt_json) {
            clone_print(c->rec);
        }
        qlist_append(r->done, qobject_ref(c->rec));
        clone_release(c);
    } else {
        if (!r->err) {
            r->err = c->err;
            c->err = NULL;
        }
        clone_discard(c);
        /* the others of the batch are stopped too */
        clone_run_stop(r);
    }
    clone_run_more(r);
}

static void clone_run_more(CloneRun *r)
{
    while (!r->err && r->started < r->o->count &&
           g_queue_get_length(&r->live) < CLONE_BATCH) {
        Clone *c = clone_start(&r->spec, clone_run_notify, r, &r->err);

        if (!c) {
            clone_run_stop(r);
            break;
        }
        g_queue_push_tail(&r->live, c);
        r->started++;
    }
    if (g_queue_is_empty(&r->live)) {
        g_main_loop_quit(r->loop);
    }
}

/* Clones from the template's pool, as long as one serves them. */
static bool clone_from_pool(CloneRun *r, Error **errp)
{
    while (r->started < r->o->count) {
        QDict *rec = NULL;

        switch (pool_take(r->m->name, r->o->extra, r->o->nics, &rec,
                          errp)) {
        case POOL_NONE:
            return true;
        case POOL_MISMATCH:
            warn_report("the pool of '%s' runs with other arguments or "
                        "NICs: starting clones without it", r->m->name);
            return true;
        case POOL_BUSY:
            warn_report("the pool of '%s' is busy (too many connections): "
                        "starting clones without it", r->m->name);
            return true;
        case POOL_ERROR:
            return false;
        case POOL_SERVED:
            if (!opt_json) {
                clone_print(rec);
            }
            qlist_append(r->done, rec);
            r->started++;
            break;
        }
    }
    return true;
}

bool clone_run(const char *name, const CloneOpts *o, QObject **result,
               Error **errp)
{
    int lock;
    g_autoptr(Manifest) m = manifest_load_locked(name, &lock, errp);
    CloneRun r = { .m = m, .o = o };

    if (!m) {
        return false;
    }
    r.done = qlist_new();
    *result = QOBJECT(r.done);
    r.qemu = qemu_for_clones(m, o->qemu, errp);
    if (!r.qemu || !check_user_args(o->extra, m->mode, errp) ||
        (!o->no_pool && !clone_from_pool(&r, errp))) {
        close(lock);
        qemu_binary_free(r.qemu);
        return false;
    }
    r.spec = (CloneSpec) {
        .m = m, .qemu = r.qemu, .extra = o->extra, .nics = o->nics,
        .timeout_s = o->timeout,
    };
    g_queue_init(&r.live);
    r.loop = g_main_loop_new(NULL, false);
    interrupt_catch(&r.in, r.loop);
    if (r.started < o->count) {
        clone_run_more(&r);
        if (!g_queue_is_empty(&r.live)) {
            g_main_loop_run(r.loop);
        }
    }
    if (r.in.flag && !r.err) {
        error_setg(&r.err, "interrupted");
    }
    clone_run_stop(&r);
    clone_wait_pending(CLONE_STOP_MS);
    interrupt_release(&r.in);
    g_main_loop_unref(r.loop);
    close(lock);
    qemu_binary_free(r.qemu);
    if (r.err) {
        error_propagate(errp, r.err);
        return false;
    }
    return true;
}
