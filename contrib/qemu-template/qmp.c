/*
 * qemu-template: a QMP client on the GLib main loop
 *
 * Messages are split by QEMU's JSON streamer (JSONMessageParser), so an
 * answer may span reads or share one with an event.  Answers come in the
 * order of the commands (no out-of-band execution is asked for), so each
 * goes to the oldest command waiting.  Events go to the owner as they
 * come.  A message that is none of these, or an answer without a
 * "return" or with an "error" that is not an object, breaks the
 * connection: every command waiting fails with that error.
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/sockets.h"
#include "qobject/json-parser.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qstring.h"
#include "qemu-template.h"
#include "qmp.h"

typedef struct QmpPending {
    char *cmd;
    QmpReplyFunc *fn;
    void *opaque;
} QmpPending;

struct QmpClient {
    int fd;
    char *name;
    guint watch;
    JSONMessageParser parser;
    GQueue pending;
    QmpEventFunc *event;
    QmpClosedFunc *closed;
    void *opaque;
    bool is_closed;
    bool dispatching;   /* in the read callback: freeing waits */
    bool free_asked;
};

static void qmp_pending_free(QmpPending *p)
{
    g_free(p->cmd);
    g_free(p);
}

/* Fail every command still waiting, then tell the owner. */
static void qmp_close(QmpClient *q, Error *err)
{
    QmpPending *p;

    if (q->is_closed) {
        error_free(err);
        return;
    }
    q->is_closed = true;
    if (q->watch) {
        g_source_remove(q->watch);
        q->watch = 0;
    }
    while ((p = g_queue_pop_head(&q->pending))) {
        if (p->fn && !q->free_asked) {
            p->fn(NULL, error_copy(err), p->opaque);
        }
        qmp_pending_free(p);
    }
    if (q->closed && !q->free_asked) {
        q->closed(err, q->opaque);
    } else {
        error_free(err);
    }
}

/*
 * Is @msg a well-formed answer: a "return", or an "error" object?  Else
 * @err says what is wrong with it.
 */
static bool qmp_answer_valid(QmpClient *q, QDict *msg, Error **errp)
{
    QObject *e = qdict_get(msg, "error");

    if (e && !qobject_to(QDict, e)) {
        error_setg(errp, "QEMU sent a QMP error that is not an object on "
                   "'%s'", q->name);
        return false;
    }
    if (!e && !qdict_haskey(msg, "return")) {
        error_setg(errp, "QEMU sent a QMP message that is neither an "
                   "answer nor an event on '%s'", q->name);
        return false;
    }
    return true;
}

static void qmp_answer(QmpClient *q, QDict *msg)
{
    QmpPending *p = g_queue_pop_head(&q->pending);
    QDict *qerr = qdict_get_qdict(msg, "error");
    Error *err = NULL;

    if (!p) {
        return;     /* not asked for: ignore */
    }
    if (qerr) {
        error_setg(&err, "QMP '%s' failed: %s", p->cmd,
                   qdict_get_try_str(qerr, "desc") ?: "unknown error");
    }
    if (p->fn) {
        /* a "return" is there: qmp_answer_valid() */
        p->fn(err ? NULL : qdict_get(msg, "return"), err, p->opaque);
    } else {
        error_free(err);
    }
    qmp_pending_free(p);
}

static void qmp_message(void *opaque, QObject *obj, Error *err)
{
    QmpClient *q = opaque;
    QDict *msg = qobject_to(QDict, obj);

    if (q->free_asked || q->is_closed) {
        qobject_unref(obj);
        error_free(err);
        return;
    }
    if (err) {
        error_prepend(&err, "QEMU sent malformed QMP on '%s': ", q->name);
    } else if (!msg) {
        error_setg(&err, "QEMU sent a QMP message that is not an object "
                   "on '%s'", q->name);
    } else if (!qdict_haskey(msg, "event") && !qdict_haskey(msg, "QMP")) {
        qmp_answer_valid(q, msg, &err);
    }
    if (err) {
        qobject_unref(obj);
        qmp_close(q, err);
        return;
    }
    if (qdict_haskey(msg, "event")) {
        if (q->event) {
            q->event(msg, q->opaque);
        }
    } else if (!qdict_haskey(msg, "QMP")) {
        qmp_answer(q, msg);
    }
    /* else the greeting, {"QMP": ...} */
    qobject_unref(obj);
}

static void qmp_destroy(QmpClient *q)
{
    json_message_parser_destroy(&q->parser);
    if (q->watch) {
        g_source_remove(q->watch);
    }
    g_queue_clear_full(&q->pending, (GDestroyNotify)qmp_pending_free);
    close(q->fd);
    g_free(q->name);
    g_free(q);
}

static gboolean qmp_readable(int fd, GIOCondition cond, gpointer opaque)
{
    QmpClient *q = opaque;
    char buf[16384];
    ssize_t n;

    do {
        n = read(fd, buf, sizeof(buf));
    } while (n < 0 && errno == EINTR);
    q->dispatching = true;
    if (n > 0) {
        json_message_parser_feed(&q->parser, buf, n);
    } else {
        Error *err = NULL;

        if (n < 0) {
            error_setg_errno(&err, errno, "QMP on '%s' failed", q->name);
        } else {
            error_setg(&err, "QMP connection closed by QEMU");
        }
        q->watch = 0;   /* removed by returning G_SOURCE_REMOVE */
        qmp_close(q, err);
    }
    q->dispatching = false;
    if (q->free_asked) {
        q->watch = 0;
        qmp_destroy(q);
        return G_SOURCE_REMOVE;
    }
    return n > 0 ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

QmpClient *qmp_client_new(int fd, const char *name, QmpEventFunc *event,
                          QmpClosedFunc *closed, void *opaque)
{
    QmpClient *q = g_new0(QmpClient, 1);

    q->fd = fd;
    q->name = g_strdup(name);
    q->event = event;
    q->closed = closed;
    q->opaque = opaque;
    g_queue_init(&q->pending);
    json_message_parser_init(&q->parser, qmp_message, q, NULL);
    q->watch = g_unix_fd_add(fd, G_IO_IN | G_IO_HUP | G_IO_ERR,
                             qmp_readable, q);
    return q;
}

void qmp_client_free(QmpClient *q)
{
    if (!q) {
        return;
    }
    q->free_asked = true;
    if (!q->dispatching) {
        qmp_destroy(q);
    }
}

void qmp_send(QmpClient *q, const char *cmd, QDict *args,
              QmpReplyFunc *fn, void *opaque)
{
    QDict *req = qdict_new();
    g_autoptr(GString) json = NULL;
    QmpPending *p;

    qdict_put_str(req, "execute", cmd);
    if (args) {
        qdict_put(req, "arguments", args);
    }
    json = qobject_to_json(QOBJECT(req));
    qobject_unref(req);
    g_string_append_c(json, '\n');
    if (q->is_closed) {
        return;     /* the owner was told; nobody answers any more */
    }
    p = g_new0(QmpPending, 1);
    p->cmd = g_strdup(cmd);
    p->fn = fn;
    p->opaque = opaque;
    g_queue_push_tail(&q->pending, p);
    /*
     * A command is small: the socket buffer takes it at once.  If it
     * cannot, the connection is broken: shut it down, and the read side
     * fails what waits (the owner hears of it from the main loop, not
     * from inside this call).
     */
    if (qemu_send_full(q->fd, json->str, json->len) != json->len) {
        shutdown(q->fd, SHUT_RDWR);
    }
}

typedef struct QmpCall {
    bool done;
    QObject *ret;
    Error *err;
} QmpCall;

static void qmp_call_done(QObject *ret, Error *err, void *opaque)
{
    QmpCall *call = opaque;

    call->done = true;
    call->ret = qobject_ref(ret);
    call->err = err;
}

static gboolean wake_up(gpointer opaque)
{
    return G_SOURCE_CONTINUE;
}

QObject *qmp_call(QmpClient *q, const char *cmd, QDict *args,
                  int64_t deadline, const bool *stop, Error **errp)
{
    QmpCall call = { 0 };
    guint tick;

    if (q->is_closed) {
        qobject_unref(args);
        error_setg(errp, "QMP '%s' not sent: the connection is closed", cmd);
        return NULL;
    }
    /* wakes the loop up to check the deadline and @stop */
    tick = g_timeout_add(50, wake_up, NULL);
    qmp_send(q, cmd, args, qmp_call_done, &call);
    while (!call.done && now_us() < deadline && !(stop && *stop)) {
        g_main_context_iteration(NULL, true);
    }
    g_source_remove(tick);
    if (!call.done) {
        /* the answer must not reach this stack frame any more */
        GList *l;

        for (l = q->pending.head; l; l = l->next) {
            QmpPending *p = l->data;

            if (p->opaque == &call) {
                p->fn = NULL;
            }
        }
        if (stop && *stop) {
            error_setg(errp, "interrupted");
        } else {
            error_setg(errp, "QEMU did not answer QMP '%s' in time", cmd);
        }
        return NULL;
    }
    if (call.err) {
        error_propagate(errp, call.err);
    } else if (!call.ret) {
        /* never: an answer has "return" or "error" (qmp_answer_valid()) */
        error_setg(errp, "QEMU's answer to QMP '%s' has no result", cmd);
    }
    return call.ret;
}

bool qmp_call_ok(QmpClient *q, const char *cmd, QDict *args,
                 int64_t deadline, const bool *stop, Error **errp)
{
    QObject *ret = qmp_call(q, cmd, args, deadline, stop, errp);

    qobject_unref(ret);
    return ret != NULL;
}

bool qmp_is_closed(QmpClient *q)
{
    return q->is_closed;
}

char *qmp_version_string(QObject *ret, Error **errp)
{
    QDict *d = qobject_to(QDict, ret);
    QDict *v = d ? qdict_get_qdict(d, "qemu") : NULL;

    if (!v) {
        error_setg(errp, "QEMU's query-version answer is malformed");
        return NULL;
    }
    return g_strdup_printf("%" PRId64 ".%" PRId64 ".%" PRId64 "%s",
                           qdict_get_try_int(v, "major", 0),
                           qdict_get_try_int(v, "minor", 0),
                           qdict_get_try_int(v, "micro", 0),
                           qdict_get_try_str(d, "package") ?: "");
}
