/*
 * qemu-template: pools of clones waiting for their state
 *
 * "qemu-template pool NAME --size N" keeps N clones started with
 * -incoming defer, their QMP connected and their QEMU version checked; a
 * request takes the oldest, loads the state with migrate-incoming, and
 * the pool starts a new one.  Everything runs on one GLib main loop:
 * clients, clones starting, loading and being stopped; nothing waits
 * for a process (a clone start returns once forked, a clone is stopped
 * by a timer and its child watch).  New clones are started one per
 * turn of the loop, only while no request is being served (or when a
 * request waits for one).
 *
 * The socket, DIR/pools/NAME.sock, speaks one JSON object per line:
 * {"execute": "clone"[, "arguments": {"args": [...], "nics": [...]}]},
 * {"execute": "status"} and {"execute": "quit"}.  Clients are
 * non-blocking, their input and output bounded, their number limited;
 * a client that does not send a whole request, or read its answer, in
 * time is dropped, however slowly it trickles bytes.
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <poll.h>
#include <sys/socket.h>
#include "qapi/error.h"
#include "qapi/qapi-types-sockets.h"
#include "qemu/sockets.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qlist.h"
#include "qobject/qstring.h"
#include "qemu-template.h"
#include "cmdline.h"
#include "clone.h"
#include "pool.h"

#define POOL_MAX_CLIENTS 32
#define POOL_MAX_LINE (64 * 1024)
#define POOL_MAX_OUT (1024 * 1024)
/* clones started at once while refilling */
#define POOL_MAX_STARTING 2
/* clones in a row that fail while they start: the template is at fault */
#define POOL_MAX_START_FAILURES 3
/* how long a client waits for an answer */
#define POOL_ANSWER_S 180
/* how long stopping the clones not handed out may take, at most */
#define POOL_STOP_MS 5000

typedef struct Pool {
    Manifest *m;
    const PoolOpts *o;
    QemuBinary *qemu;
    CloneSpec spec;
    char *path;
    char *pidfile;
    int pidfile_fd;
    int lfd;
    guint accept_watch;
    guint refill_idle;
    guint tick;
    GQueue starting;    /* Clone *, before they wait */
    GQueue ready;       /* Clone *, waiting for their state */
    GQueue loading;     /* Clone *, taken by a request (c->user: client) */
    GQueue waiters;     /* PoolClient *, asking while none is ready */
    GQueue clients;
    int served;
    int failed;
    int abandoned;      /* loaded for a client that left: stopped */
    int start_failures; /* in a row */
    char *last_error;
    Error *fatal;
    GMainLoop *loop;
    bool announced;
    int ready_fd;       /* --daemonize: tells the parent */
} Pool;

typedef struct PoolClient {
    Pool *p;
    int fd;
    guint in_watch;
    guint out_watch;
    GString *in;
    GString *out;
    bool busy;          /* its clone request runs: later ones wait */
    bool closing;       /* closed once its output is sent */
    int64_t t_req;
    int64_t idle_since; /* connected, or last answered: a request is due */
    int64_t out_since;  /* its output has been waiting since */
} PoolClient;

static char *pool_socket(const char *name)
{
    g_autofree char *file = g_strdup_printf("%s.sock", name);

    return g_build_filename(top_dir, "pools", file, NULL);
}

/* ------------------------------------------------------------------ */
/* clients */

static void pool_refill_soon(Pool *p);

static void pc_close(PoolClient *pc)
{
    Pool *p = pc->p;
    GList *l;

    for (l = p->loading.head; l; l = l->next) {
        Clone *c = l->data;

        if (c->user == pc) {
            c->user = NULL;
        }
    }
    g_queue_remove(&p->waiters, pc);
    g_queue_remove(&p->clients, pc);
    if (pc->in_watch) {
        g_source_remove(pc->in_watch);
    }
    if (pc->out_watch) {
        g_source_remove(pc->out_watch);
    }
    close(pc->fd);
    g_string_free(pc->in, true);
    g_string_free(pc->out, true);
    g_free(pc);
}

static gboolean pc_writable(int fd, GIOCondition cond, gpointer opaque);

/*
 * Send what can be sent now; the rest when the socket takes it.  False
 * when the client is gone (and freed).
 */
static bool pc_flush(PoolClient *pc)
{
    while (pc->out->len) {
        ssize_t n = send(pc->fd, pc->out->str, pc->out->len,
                         MSG_DONTWAIT | MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            break;
        }
        if (n <= 0) {
            pc_close(pc);
            return false;
        }
        g_string_erase(pc->out, 0, n);
    }
    if (!pc->out->len && !pc->busy) {
        /* all answered: the next request is due from now */
        pc->idle_since = now_us();
    }
    if (!pc->out->len && pc->closing) {
        pc_close(pc);
        return false;
    }
    if (pc->out->len && !pc->out_watch) {
        pc->out_watch = g_unix_fd_add(pc->fd, G_IO_OUT, pc_writable, pc);
    } else if (!pc->out->len && pc->out_watch) {
        g_source_remove(pc->out_watch);
        pc->out_watch = 0;
    }
    return true;
}

static gboolean pc_writable(int fd, GIOCondition cond, gpointer opaque)
{
    PoolClient *pc = opaque;

    g_source_remove(pc->out_watch);
    pc->out_watch = 0;
    pc_flush(pc);
    return G_SOURCE_REMOVE;
}

/*
 * Queue an answer: @ret (taken), or the error @err (freed) of class
 * @cls.  A client that lets more than POOL_MAX_OUT pile up is dropped.
 * False when the client is gone (and freed).
 */
static bool pc_reply(PoolClient *pc, QObject *ret, Error *err,
                     const char *cls)
{
    QDict *msg = qdict_new();
    g_autoptr(GString) json = NULL;

    if (err) {
        QDict *e = qdict_new();

        qdict_put_str(e, "class", cls ?: "GenericError");
        qdict_put_str(e, "desc", error_get_pretty(err));
        qdict_put(msg, "error", e);
        error_free(err);
        qobject_unref(ret);
    } else {
        qdict_put_obj(msg, "return", ret);
    }
    json = qobject_to_json(QOBJECT(msg));
    qobject_unref(msg);
    if (!pc->out->len) {
        pc->out_since = now_us();
    }
    g_string_append_len(pc->out, json->str, json->len);
    g_string_append_c(pc->out, '\n');
    if (pc->out->len > POOL_MAX_OUT) {
        pc_close(pc);
        return false;
    }
    return pc_flush(pc);
}

/* Answer with an error and close, once it is sent. */
static void pc_refuse(PoolClient *pc, const char *cls, const char *desc)
{
    Error *err = NULL;

    error_setg(&err, "%s", desc);
    pc->closing = true;
    pc_reply(pc, NULL, err, cls);
}

static QDict *pool_status(Pool *p)
{
    QDict *st = qdict_new();

    qdict_put_str(st, "template", p->m->name);
    qdict_put_int(st, "pid", getpid());
    qdict_put_int(st, "size", p->o->size);
    qdict_put_int(st, "ready", g_queue_get_length(&p->ready));
    qdict_put_int(st, "starting", g_queue_get_length(&p->starting));
    qdict_put_int(st, "loading", g_queue_get_length(&p->loading));
    qdict_put_int(st, "stopping", clone_stopping());
    qdict_put_int(st, "waiting-requests", g_queue_get_length(&p->waiters));
    qdict_put_int(st, "served", p->served);
    qdict_put_int(st, "failed", p->failed);
    qdict_put_int(st, "abandoned", p->abandoned);
    qdict_put_int(st, "clients", g_queue_get_length(&p->clients));
    if (p->last_error) {
        qdict_put_str(st, "last-error", p->last_error);
    }
    return st;
}

/* A list of strings, or absent? */
static bool string_list(QDict *args, const char *key)
{
    QObject *v = qdict_get(args, key);
    QList *l = qobject_to(QList, v);
    QListEntry *e;

    if (!v) {
        return true;
    }
    if (!l) {
        return false;
    }
    QLIST_FOREACH_ENTRY(l, e) {
        if (!qobject_to(QString, qlist_entry_obj(e))) {
            return false;
        }
    }
    return true;
}

/* Are the string lists @want (a QList or NULL) and @have the same? */
static bool same_strings(QList *want, char **have)
{
    QListEntry *e;
    int i = 0;

    if (want) {
        QLIST_FOREACH_ENTRY(want, e) {
            QString *s = qobject_to(QString, qlist_entry_obj(e));

            if (!have || !have[i] || strcmp(qstring_get_str(s), have[i])) {
                return false;
            }
            i++;
        }
    }
    return !have || !have[i];
}

static void pool_serve(Pool *p);

/* "arguments" of a clone request: only "args" and "nics", string lists. */
static bool pc_clone_args_valid(QObject *obj, Error **errp)
{
    QDict *args = qobject_to(QDict, obj);
    const QDictEntry *e;

    if (!obj) {
        return true;
    }
    if (!args) {
        error_setg(errp, "'arguments' must be an object");
        return false;
    }
    for (e = qdict_first(args); e; e = qdict_next(args, e)) {
        if (strcmp(e->key, "args") && strcmp(e->key, "nics")) {
            error_setg(errp, "unknown member '%s' of 'arguments' (args, "
                       "nics)", e->key);
            return false;
        }
    }
    if (!string_list(args, "args") || !string_list(args, "nics")) {
        error_setg(errp, "'args' and 'nics' must be lists of strings");
        return false;
    }
    return true;
}

static bool pc_clone(PoolClient *pc, QObject *obj)
{
    Pool *p = pc->p;
    QDict *args = qobject_to(QDict, obj);
    Error *err = NULL;

    if (!pc_clone_args_valid(obj, &err)) {
        return pc_reply(pc, NULL, err, NULL);
    }
    /* the pool's clones were started with the pool's arguments */
    if (args && (!same_strings(qdict_get_qlist(args, "args"), p->o->extra) ||
                 !same_strings(qdict_get_qlist(args, "nics"), p->o->nics))) {
        error_setg(&err, "the pool's clones were started with other "
                   "arguments or NICs");
        return pc_reply(pc, NULL, err, "ArgumentMismatch");
    }
    pc->busy = true;
    g_queue_push_tail(&p->waiters, pc);
    pool_serve(p);
    pool_refill_soon(p);
    return true;
}

/* Handle one request; false when the client is gone (and freed). */
static bool pc_request(PoolClient *pc, const char *line)
{
    g_autoptr(QObject) obj = qobject_from_json(line, NULL);
    QDict *req = qobject_to(QDict, obj);
    const char *cmd = req ? qdict_get_try_str(req, "execute") : NULL;
    Error *err = NULL;

    pc->t_req = now_us();
    if (!cmd) {
        error_setg(&err, "expected {\"execute\": COMMAND}");
        return pc_reply(pc, NULL, err, NULL);
    } else if (!strcmp(cmd, "clone")) {
        return pc_clone(pc, qdict_get(req, "arguments"));
    } else if (!strcmp(cmd, "status")) {
        return pc_reply(pc, QOBJECT(pool_status(pc->p)), NULL, NULL);
    } else if (!strcmp(cmd, "quit")) {
        g_main_loop_quit(pc->p->loop);
        return pc_reply(pc, QOBJECT(qdict_new()), NULL, NULL);
    }
    error_setg(&err, "unknown command '%s' (clone, status, quit)", cmd);
    return pc_reply(pc, NULL, err, "CommandNotFound");
}

/*
 * Handle the complete lines received, one clone request at a time;
 * false when the client is gone (and freed).
 */
static bool pc_process(PoolClient *pc)
{
    char *nl;

    while (!pc->busy && !pc->closing && (nl = strchr(pc->in->str, '\n'))) {
        g_autofree char *line = g_strndup(pc->in->str, nl - pc->in->str);

        g_string_erase(pc->in, 0, nl - pc->in->str + 1);
        if (!pc_request(pc, line)) {
            return false;
        }
    }
    if (pc->in->len > POOL_MAX_LINE && !pc->busy && !pc->closing) {
        pc_refuse(pc, "GenericError", "request line too long");
        return false;
    }
    return true;
}

static gboolean pc_readable(int fd, GIOCondition cond, gpointer opaque)
{
    PoolClient *pc = opaque;
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
        return G_SOURCE_CONTINUE;
    }
    if (n <= 0) {
        pc->in_watch = 0;
        pc_close(pc);
        return G_SOURCE_REMOVE;
    }
    /* bytes alone do not keep a client: pool_tick() wants requests */
    g_string_append_len(pc->in, buf, n);
    if (pc->in->len > 2 * POOL_MAX_LINE) {
        /* a busy client that keeps sending: drop it */
        pc->in_watch = 0;
        pc_close(pc);
        return G_SOURCE_REMOVE;
    }
    /* a client gone has removed this source already */
    return pc_process(pc) ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

static void pool_add_client(Pool *p, int fd)
{
    PoolClient *pc = g_new0(PoolClient, 1);
    Error *err = NULL;

    pc->p = p;
    pc->fd = fd;
    pc->in = g_string_new("");
    pc->out = g_string_new("");
    pc->idle_since = now_us();
    g_queue_push_tail(&p->clients, pc);
    if (!check_peer(fd, 0, p->path, &err)) {
        /* only the pool's user may take its clones */
        pc->closing = true;
        pc_reply(pc, NULL, err, "PermissionDenied");
    } else if (g_queue_get_length(&p->clients) > POOL_MAX_CLIENTS) {
        pc_refuse(pc, "Busy", "too many connections to the pool");
    } else {
        pc->in_watch = g_unix_fd_add(fd, G_IO_IN | G_IO_HUP | G_IO_ERR,
                                     pc_readable, pc);
    }
}

static gboolean pool_accept(int lfd, GIOCondition cond, gpointer opaque)
{
    int fd;

    while ((fd = accept4(lfd, NULL, NULL,
                         SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) {
        pool_add_client(opaque, fd);
    }
    return G_SOURCE_CONTINUE;
}

/*
 * Every second: drop clients that did not send a whole request in time
 * (since they connected or were last answered), or left an answer
 * unread for as long; a trickle of bytes extends neither.
 */
static gboolean pool_tick(gpointer opaque)
{
    Pool *p = opaque;
    int64_t now = now_us();
    int64_t limit = (int64_t)p->o->client_timeout * G_USEC_PER_SEC;
    GList *l, *next;

    for (l = p->clients.head; l; l = next) {
        PoolClient *pc = l->data;

        next = l->next;
        if ((pc->out->len && now - pc->out_since > limit) ||
            (!pc->busy && !pc->out->len && now - pc->idle_since > limit)) {
            pc_close(pc);
        }
    }
    return G_SOURCE_CONTINUE;
}

/* ------------------------------------------------------------------ */
/* clones */

static void pool_announce(Pool *p)
{
    g_autofree char *line = NULL;

    if (p->announced ||
        (int)g_queue_get_length(&p->ready) < p->o->size) {
        return;
    }
    p->announced = true;
    line = g_strdup_printf("pool %s: %d clones ready on %s\n", p->m->name,
                           p->o->size, p->path);
    if (p->ready_fd >= 0) {
        /* --daemonize: the parent prints it and exits */
        if (qemu_write_full(p->ready_fd, line, strlen(line)) < 0) {
            /* the parent is gone: nobody to tell */
        }
        close(p->ready_fd);
        p->ready_fd = -1;
    } else {
        fputs(line, stdout);
        fflush(stdout);
    }
}

/* Give the ready clones to the requests waiting, oldest first. */
static void pool_serve(Pool *p)
{
    while (!g_queue_is_empty(&p->ready) && !g_queue_is_empty(&p->waiters)) {
        Clone *c = g_queue_pop_head(&p->ready);
        PoolClient *pc = g_queue_pop_head(&p->waiters);

        c->user = pc;
        g_queue_push_tail(&p->loading, c);
        clone_load(c, pc->t_req);
    }
}

static void pool_set_error(Pool *p, Error *err)
{
    g_free(p->last_error);
    p->last_error = g_strdup(error_get_pretty(err));
}

/* A request's clone runs (or failed): answer, and go on. */
static void pool_loaded(Pool *p, Clone *c)
{
    PoolClient *pc = c->user;
    bool alive = false;

    g_queue_remove(&p->loading, c);
    if (c->state == CLONE_DONE && !pc) {
        /* its client left: nobody would own it */
        p->abandoned++;
        clone_discard(c);
    } else if (c->state == CLONE_DONE) {
        p->served++;
        alive = pc_reply(pc, qobject_ref(QOBJECT(c->rec)), NULL, NULL);
        clone_release(c);
    } else {
        p->failed++;
        pool_set_error(p, c->err);
        if (pc) {
            alive = pc_reply(pc, NULL, error_copy(c->err), NULL);
        }
        clone_discard(c);
    }
    if (alive) {
        pc->busy = false;
        pc_process(pc);
    }
}

/* A clone failed before it was ready; too many in a row stop the pool. */
static void pool_start_failed(Pool *p, Clone *c)
{
    pool_set_error(p, c->err);
    if (++p->start_failures >= POOL_MAX_START_FAILURES && !p->fatal) {
        /* a template that cannot be cloned: say so and stop */
        p->fatal = error_copy(c->err);
        error_prepend(&p->fatal, "%d clones in a row failed to start; the "
                      "last: ", p->start_failures);
        g_main_loop_quit(p->loop);
    }
    clone_discard(c);
}

static void pool_clone_notify(Clone *c, void *opaque)
{
    Pool *p = opaque;

    if (g_queue_find(&p->loading, c)) {
        pool_loaded(p, c);
    } else if (c->state == CLONE_WAITING) {
        p->start_failures = 0;
        g_queue_remove(&p->starting, c);
        g_queue_push_tail(&p->ready, c);
        pool_serve(p);
        pool_announce(p);
    } else if (g_queue_remove(&p->ready, c)) {
        /* a waiting clone died (or was destroyed): start another */
        pool_set_error(p, c->err);
        clone_discard(c);
    } else {
        /* killed while it started (OOM, destroy), or the template's fault */
        g_queue_remove(&p->starting, c);
        pool_start_failed(p, c);
    }
    pool_refill_soon(p);
}

/*
 * Start one clone (the loop runs between two), if the pool lacks one;
 * a request being served goes first, unless it waits for a clone.
 */
static gboolean pool_refill(gpointer opaque)
{
    Pool *p = opaque;
    int have = g_queue_get_length(&p->starting) +
               g_queue_get_length(&p->ready);
    bool wanted = !g_queue_is_empty(&p->waiters) &&
                  g_queue_is_empty(&p->ready);
    Error *err = NULL;
    Clone *c;

    p->refill_idle = 0;
    if (p->fatal || have >= MAX(p->o->size, 1) ||
        (int)g_queue_get_length(&p->starting) >= POOL_MAX_STARTING ||
        (!g_queue_is_empty(&p->loading) && !wanted)) {
        return G_SOURCE_REMOVE;
    }
    c = clone_start(&p->spec, pool_clone_notify, p, &err);
    if (!c) {
        pool_set_error(p, err);
        if (++p->start_failures >= POOL_MAX_START_FAILURES) {
            p->fatal = err;
            g_main_loop_quit(p->loop);
            return G_SOURCE_REMOVE;
        }
        error_free(err);
    } else {
        g_queue_push_tail(&p->starting, c);
    }
    pool_refill_soon(p);
    return G_SOURCE_REMOVE;
}

static void pool_refill_soon(Pool *p)
{
    if (!p->refill_idle) {
        p->refill_idle = g_idle_add_full(G_PRIORITY_LOW, pool_refill, p,
                                         NULL);
    }
}

/* ------------------------------------------------------------------ */
/* starting and stopping */

/*
 * Pooled clones that a killed pool of @name left: the records say which
 * (their template, pooled, not yet running).  The caller holds the pool
 * lock, so no other pool of the template runs.  They are stopped all
 * at once, before the pool serves.
 */
static void pool_reap_stale(const char *name)
{
    int cdir = tool_dir_open("clones", false, NULL);
    DIR *d = cdir >= 0 ? fdopendir(cdir) : NULL;
    g_autoptr(GArray) refs = g_array_new(false, true, sizeof(ProcRef));
    g_autoptr(GPtrArray) recs = g_ptr_array_new_with_free_func(
        (GDestroyNotify)qobject_unref_any);
    g_autoptr(GPtrArray) ids = g_ptr_array_new_with_free_func(g_free);
    struct dirent *e;
    guint i;

    while (d && (e = readdir(d))) {
        g_autofree char *path = clone_path(e->d_name, CLONE_FILE);
        QDict *rec = valid_name(e->d_name) ? read_json_dict(path, NULL)
                                           : NULL;
        ProcRef r;

        if (!rec || g_strcmp0(qdict_get_try_str(rec, "template"), name) ||
            !qdict_get_try_bool(rec, "pooled", false) ||
            !g_strcmp0(qdict_get_try_str(rec, "state"), "running")) {
            qobject_unref(rec);
            continue;
        }
        g_ptr_array_add(ids, g_strdup(e->d_name));
        g_ptr_array_add(recs, rec);
        clone_record_ref(rec, g_ptr_array_index(ids, ids->len - 1), &r);
        g_array_append_val(refs, r);
    }
    proc_stop((ProcRef *)refs->data, refs->len);
    for (i = 0; i < ids->len; i++) {
        rmtree_at(dirfd(d), g_ptr_array_index(ids, i));
    }
    if (d) {
        closedir(d);
    } else if (cdir >= 0) {
        close(cdir);
    }
}

/*
 * Listen on the pool's socket, owner-only in an owner-only directory;
 * the caller holds the pool's lock, so a socket left there is stale.
 */
static int pool_listen(const char *path, Error **errp)
{
    SocketAddress addr = {
        .type = SOCKET_ADDRESS_TYPE_UNIX,
        .u.q_unix.path = (char *)path,
    };
    int fd = socket_listen(&addr, 16, errp);

    if (fd >= 0 && chmod(path, 0600) < 0) {
        error_setg_errno(errp, errno, "cannot protect '%s'", path);
        close(fd);
        return -1;
    }
    if (fd >= 0) {
        qemu_socket_set_nonblock(fd);
    }
    return fd;
}

/*
 * The daemon's parent: wait until the child's pool is full (print the
 * line saying so, exit 0) or failed (report its error, exit 1).  The
 * child sends "pool ..." or its error: the message, a NUL, the hint.
 */
static void G_GNUC_NORETURN pool_parent_wait(int fd)
{
    g_autoptr(GString) in = g_string_new("");
    Error *err = NULL;
    char buf[4096];
    ssize_t n;

    while ((n = read(fd, buf, sizeof(buf))) > 0 ||
           (n < 0 && errno == EINTR)) {
        g_string_append_len(in, buf, MAX(n, 0));
    }
    if (g_str_has_prefix(in->str, "pool ")) {
        fputs(in->str, stdout);
        exit(0);
    }
    if (in->len) {
        const char *hint = in->str + strlen(in->str) + 1;

        error_setg(&err, "%s", in->str);
        if (hint < in->str + in->len && *hint) {
            error_append_hint(&err, "%s", hint);
        }
    } else {
        error_setg(&err, "the pool exited before it was ready");
    }
    tool_report_error(err, NULL);
    exit(1);
}

/*
 * --daemonize: fork; the parent waits (pool_parent_wait()), the child
 * goes on in a session of its own, in "/", without the descriptors the
 * tool was started with.
 */
static bool pool_daemonize(Pool *p, Error **errp)
{
    int pfd[2];
    pid_t pid;

    if (!g_unix_open_pipe(pfd, FD_CLOEXEC, NULL)) {
        error_setg_errno(errp, errno, "cannot create a pipe");
        return false;
    }
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        error_setg_errno(errp, errno, "cannot fork");
        close(pfd[0]);
        close(pfd[1]);
        return false;
    }
    if (pid > 0) {
        close(pfd[1]);
        pool_parent_wait(pfd[0]);
    }
    close(pfd[0]);
    p->ready_fd = pfd[1];
    setsid();
    fds_close_inherited();
    if (chdir("/") < 0) {
        /* the pool uses absolute paths only */
    }
    return true;
}

/* Tell the daemon's parent why the pool failed: it reports it, once. */
static void pool_tell_parent(Pool *p, Error **errp)
{
    g_autofree char *hint = *errp ? error_hint(*errp) : NULL;
    g_autoptr(GString) msg = g_string_new(*errp ? error_get_pretty(*errp)
                                                : "the pool failed");

    g_string_append_c(msg, '\0');
    g_string_append(msg, hint ?: "");
    if (qemu_write_full(p->ready_fd, msg->str, msg->len) != msg->len) {
        /* the parent is gone: nobody to tell */
    }
    close(p->ready_fd);
    p->ready_fd = -1;
    error_free(*errp);
    *errp = NULL;
}

/* Once daemonized and ready to serve: no more terminal. */
static void pool_detach_stdio(void)
{
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
}

static gboolean pool_signal(gpointer opaque)
{
    Pool *p = opaque;

    g_main_loop_quit(p->loop);
    return G_SOURCE_CONTINUE;
}

/* Answer @pc's clone request, if it waits, with "the pool stopped". */
static void pool_stopped_reply(PoolClient *pc)
{
    Error *err = NULL;

    error_setg(&err, "the pool stopped");
    pc_reply(pc, NULL, err, NULL);
}

/* Stop every clone not handed out, answer every request, close up. */
static void pool_shutdown(Pool *p)
{
    Clone *c;
    PoolClient *pc;

    while ((c = g_queue_pop_head(&p->loading))) {
        if (c->user) {
            pool_stopped_reply(c->user);
        }
        clone_discard(c);
    }
    while ((pc = g_queue_pop_head(&p->waiters))) {
        pool_stopped_reply(pc);
    }
    while ((c = g_queue_pop_head(&p->ready)) ||
           (c = g_queue_pop_head(&p->starting))) {
        clone_discard(c);
    }
    while ((pc = g_queue_peek_head(&p->clients))) {
        pc_close(pc);
    }
    if (p->accept_watch) {
        g_source_remove(p->accept_watch);
    }
    if (p->refill_idle) {
        g_source_remove(p->refill_idle);
    }
    if (p->tick) {
        g_source_remove(p->tick);
    }
    close(p->lfd);
    unlink(p->path);
    /* the clones stop together: SIGTERM, SIGKILL 3 s later if need be */
    clone_wait_pending(POOL_STOP_MS);
}

static void pool_loop(Pool *p)
{
    guint sig[3];
    int i;

    p->loop = g_main_loop_new(NULL, false);
    sig[0] = g_unix_signal_add(SIGTERM, pool_signal, p);
    sig[1] = g_unix_signal_add(SIGINT, pool_signal, p);
    sig[2] = g_unix_signal_add(SIGHUP, pool_signal, p);
    p->accept_watch = g_unix_fd_add(p->lfd, G_IO_IN, pool_accept, p);
    p->tick = g_timeout_add_seconds(1, pool_tick, p);
    pool_refill_soon(p);
    g_main_loop_run(p->loop);
    pool_shutdown(p);
    for (i = 0; i < ARRAY_SIZE(sig); i++) {
        g_source_remove(sig[i]);
    }
    g_main_loop_unref(p->loop);
}

static bool pool_prepare(Pool *p, const char *name, int lock, Error **errp)
{
    g_autofree char *pools = NULL;

    p->qemu = qemu_for_clones(p->m, p->o->qemu, errp);
    if (!p->qemu || !check_user_args(p->o->extra, p->m->mode, errp)) {
        return false;
    }
    if (qemu_lock_fd(lock, LOCK_POOL, 1, true) < 0) {
        error_setg(errp, "a pool of '%s' already runs on '%s'", name,
                   p->path);
        return false;
    }
    pools = tool_subdir("pools", errp);
    if (!pools) {
        return false;
    }
    pool_reap_stale(name);
    p->lfd = pool_listen(p->path, errp);
    if (p->lfd < 0) {
        return false;
    }
    if (p->o->daemonize && !pool_daemonize(p, errp)) {
        return false;
    }
    if (p->pidfile) {
        p->pidfile_fd = pidfile_write(p->pidfile, errp);
        if (p->pidfile_fd < 0) {
            error_prepend(errp, "--pidfile: ");
            return false;
        }
    }
    return true;
}

static void pool_init(Pool *p, Manifest *m, const PoolOpts *o)
{
    *p = (Pool) {
        .m = m, .o = o, .lfd = -1, .ready_fd = -1, .pidfile_fd = -1,
    };
    p->path = pool_socket(m->name);
    /* absolute before a daemon goes to "/" */
    p->pidfile = o->pidfile ? g_canonicalize_filename(o->pidfile, NULL)
                            : NULL;
    g_queue_init(&p->starting);
    g_queue_init(&p->ready);
    g_queue_init(&p->loading);
    g_queue_init(&p->waiters);
    g_queue_init(&p->clients);
}

bool pool_run(const char *name, const PoolOpts *o, Error **errp)
{
    ERRP_GUARD();
    int lock;
    g_autoptr(Manifest) m = manifest_load_locked(name, &lock, errp);
    Pool p;
    bool ok;

    if (!m) {
        return false;
    }
    pool_init(&p, m, o);
    ok = pool_prepare(&p, name, lock, errp);
    if (ok) {
        p.spec = (CloneSpec) {
            .m = m, .qemu = p.qemu, .extra = o->extra, .nics = o->nics,
            .pooled = true, .timeout_s = o->timeout,
        };
        if (o->daemonize) {
            pool_detach_stdio();
        }
        pool_loop(&p);
        ok = !p.fatal;
        if (p.fatal) {
            error_propagate(errp, p.fatal);
        }
    } else if (p.lfd >= 0) {
        close(p.lfd);
        unlink(p.path);
    }
    if (p.pidfile_fd >= 0) {
        pidfile_remove(p.pidfile, p.pidfile_fd);
    }
    if (p.ready_fd >= 0) {
        /* a daemon that never got ready: its parent reports the error */
        pool_tell_parent(&p, errp);
    }
    close(lock);
    qemu_binary_free(p.qemu);
    g_free(p.path);
    g_free(p.pidfile);
    g_free(p.last_error);
    return ok;
}

/* ------------------------------------------------------------------ */
/* asking a pool */

/*
 * A connection to the pool of @name, or -1 when none runs (@errp unset);
 * a pool that is not this user's process is an error.
 */
static int pool_connect(const char *name, Error **errp)
{
    g_autofree char *path = pool_socket(name);
    int fd;

    if (!template_locked(name, LOCK_POOL)) {
        return -1;
    }
    fd = unix_connect(path, NULL);
    if (fd >= 0 && !check_peer(fd, 0, path, errp)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Send @req (taken) on @fd, wait up to @timeout_s for the answer line. */
static QDict *pool_exchange(int fd, QDict *req, int timeout_s, Error **errp)
{
    g_autoptr(GString) json = qobject_to_json(QOBJECT(req));
    g_autoptr(GString) in = g_string_new("");
    int64_t deadline = now_us() + timeout_s * G_USEC_PER_SEC;
    g_autoptr(QObject) obj = NULL;
    int send_errno = 0;
    QDict *msg;

    qobject_unref(req);
    g_string_append_c(json, '\n');
    if (qemu_send_full(fd, json->str, json->len) != json->len) {
        /* a pool that refuses the connection answers, then closes */
        send_errno = errno;
    }
    while (!strchr(in->str, '\n')) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        char buf[4096];
        ssize_t n;
        int64_t left = deadline - now_us();

        if (left <= 0) {
            error_setg(errp, "the pool did not answer in %d s", timeout_s);
            return NULL;
        }
        if (poll(&pfd, 1, left / 1000 + 1) <= 0) {
            continue;
        }
        n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0 && send_errno) {
            error_setg_errno(errp, send_errno, "cannot send to the pool");
            return NULL;
        }
        if (n <= 0 || in->len > POOL_MAX_OUT) {
            error_setg(errp, "the pool closed the connection");
            return NULL;
        }
        g_string_append_len(in, buf, n);
    }
    obj = qobject_from_json(in->str, NULL);
    msg = qobject_to(QDict, obj);
    if (!msg) {
        error_setg(errp, "the pool's answer is malformed");
        return NULL;
    }
    return qobject_ref(msg);
}

/* Ask the pool of @name; NULL and *@ran false when none runs. */
static QDict *pool_ask(const char *name, QDict *req, int timeout_s,
                       bool *ran, Error **errp)
{
    int fd = pool_connect(name, errp);
    QDict *msg;

    *ran = fd >= 0;
    if (fd < 0) {
        qobject_unref(req);
        return NULL;
    }
    msg = pool_exchange(fd, req, timeout_s, errp);
    close(fd);
    return msg;
}

static QList *strv_to_qlist(char **v)
{
    QList *l = qlist_new();
    int i;

    for (i = 0; v && v[i]; i++) {
        qlist_append_str(l, v[i]);
    }
    return l;
}

/* Is @msg an answer with "return"?  Else its error in @errp. */
static bool pool_answer_error(QDict *msg, Error **errp)
{
    QDict *err = qdict_get_qdict(msg, "error");

    if (qdict_haskey(msg, "return")) {
        return true;
    }
    error_setg(errp, "pool: %s",
               (err ? qdict_get_try_str(err, "desc") : NULL) ?:
               "malformed answer");
    return false;
}

PoolAnswer pool_take(const char *name, char **extra, char **nics,
                     QDict **rec, Error **errp)
{
    ERRP_GUARD();
    QDict *req = qdict_new(), *args = qdict_new(), *err;
    g_autoptr(QDict) msg = NULL;
    const char *cls;
    bool ran;

    qdict_put_str(req, "execute", "clone");
    /* a plain request takes the pool's clones as they are */
    if ((extra && extra[0]) || (nics && nics[0])) {
        qdict_put(args, "args", strv_to_qlist(extra));
        qdict_put(args, "nics", strv_to_qlist(nics));
        qdict_put(req, "arguments", args);
    } else {
        qobject_unref(args);
    }
    msg = pool_ask(name, req, POOL_ANSWER_S, &ran, errp);
    if (!ran) {
        return *errp ? POOL_ERROR : POOL_NONE;
    }
    if (!msg) {
        return POOL_ERROR;
    }
    *rec = qdict_get_qdict(msg, "return");
    if (*rec) {
        qobject_ref(*rec);
        return POOL_SERVED;
    }
    err = qdict_get_qdict(msg, "error");
    cls = err ? qdict_get_try_str(err, "class") : NULL;
    if (!g_strcmp0(cls, "ArgumentMismatch")) {
        return POOL_MISMATCH;
    }
    if (!g_strcmp0(cls, "Busy")) {
        return POOL_BUSY;
    }
    pool_answer_error(msg, errp);
    return POOL_ERROR;
}

QDict *pool_status_of(const char *name)
{
    QDict *req = qdict_new();
    g_autoptr(QDict) msg = NULL;
    QDict *st;
    bool ran;

    qdict_put_str(req, "execute", "status");
    msg = pool_ask(name, req, 10, &ran, NULL);
    st = msg ? qdict_get_qdict(msg, "return") : NULL;
    return st ? qobject_ref(st) : NULL;
}

bool pool_stop(const char *name, Error **errp)
{
    ERRP_GUARD();
    QDict *req = qdict_new();
    g_autoptr(QDict) msg = NULL;
    int64_t deadline;
    bool ran;

    qdict_put_str(req, "execute", "quit");
    msg = pool_ask(name, req, 30, &ran, errp);
    if (!ran && !*errp) {
        error_setg(errp, "no pool of '%s' runs", name);
    }
    if (!msg || !pool_answer_error(msg, errp)) {
        return false;
    }
    /* gone once it released its lock */
    deadline = now_us() + 60 * G_USEC_PER_SEC;
    while (template_locked(name, LOCK_POOL)) {
        if (now_us() > deadline) {
            error_setg(errp, "the pool of '%s' did not stop in 60 s", name);
            return false;
        }
        g_usleep(10 * 1000);
    }
    return true;
}
