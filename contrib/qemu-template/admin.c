/*
 * qemu-template: list, status, destroy
 *
 * Clone records are untrusted input: a record another user could write
 * is not read, every member is optional, and a pid is only believed when
 * the process's command line names the clone's directory (which comes
 * from the directory's name, not from the record).
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qobject/qdict.h"
#include "qobject/qlist.h"
#include "qemu-template.h"
#include "manifest.h"
#include "pool.h"
#include "admin.h"

/* The process of the clone in @dir that @rec names, or finds; or 0. */
static pid_t clone_pid(QDict *rec, const char *dir)
{
    pid_t pid = rec ? qdict_get_try_int(rec, "pid", 0) : 0;

    if (pid > 0 && process_alive(pid, dir) && !pid_gone(pid)) {
        return pid;
    }
    /* a record written before its process had a pid */
    if (rec && !qdict_haskey(rec, "pid")) {
        return find_process(dir);
    }
    return 0;
}

static void add_memory(QDict *c, pid_t pid)
{
    MemUse mu;
    QDict *mem;

    if (!mem_use(pid, &mu)) {
        return;
    }
    mem = qdict_new();
    qdict_put_int(mem, "pss-kib", mu.pss);
    qdict_put_int(mem, "private-kib", mu.private_kib);
    qdict_put_int(mem, "shared-kib", mu.shared_kib);
    qdict_put(c, "memory", mem);
}

/* What "list" shows of the clone @id: its record, checked. */
static QDict *clone_entry(const char *id, const char *template)
{
    g_autofree char *dir = clone_path(id, NULL);
    g_autofree char *path = clone_path(id, CLONE_FILE);
    QDict *rec = read_json_dict(path, NULL);
    QDict *c;
    pid_t pid;

    if (!rec || g_strcmp0(qdict_get_try_str(rec, "template"), template)) {
        qobject_unref(rec);
        return NULL;
    }
    c = qdict_clone_shallow(rec);
    qdict_put_str(c, "id", id);
    qdict_put_str(c, "dir", dir);
    pid = clone_pid(rec, dir);
    qobject_unref(rec);
    qdict_put_bool(c, "running", pid > 0);
    if (pid > 0) {
        qdict_put_int(c, "pid", pid);
        add_memory(c, pid);
    }
    return c;
}

QList *load_clones(const char *template)
{
    g_autofree char *cdir = g_build_filename(top_dir, "clones", NULL);
    GDir *d = g_dir_open(cdir, 0, NULL);
    QList *list = qlist_new();
    const char *e;

    while (d && (e = g_dir_read_name(d))) {
        QDict *c = valid_name(e) ? clone_entry(e, template) : NULL;

        if (c) {
            qlist_append(list, c);
        }
    }
    if (d) {
        g_dir_close(d);
    }
    return list;
}

static int count_running(QList *clones)
{
    QListEntry *e;
    int n = 0;

    QLIST_FOREACH_ENTRY(clones, e) {
        QDict *c = qobject_to(QDict, qlist_entry_obj(e));

        n += qdict_get_try_bool(c, "running", false);
    }
    return n;
}

/* The entry of template @name: manifest, clones, pool. */
static QDict *template_entry(const char *name)
{
    QDict *t = qdict_new(), *pool;
    Error *err = NULL;
    Manifest *m = manifest_load(name, &err);
    QList *clones;

    qdict_put_str(t, "name", name);
    if (m) {
        qdict_put_str(t, "mode", mode_names[m->mode]);
        qdict_put_str(t, "created", m->created ?: "");
        qdict_put_str(t, "qemu", m->version);
        manifest_free(m);
    } else {
        qdict_put_str(t, "error", error_get_pretty(err));
        error_free(err);
    }
    clones = load_clones(name);
    qdict_put_int(t, "running-clones", count_running(clones));
    qdict_put(t, "clones", clones);
    pool = template_locked(name, LOCK_POOL) ? pool_status_of(name) : NULL;
    if (pool) {
        qdict_put(t, "pool", pool);
    }
    return t;
}

static void print_template(QDict *t)
{
    QDict *pool = qdict_get_qdict(t, "pool");

    if (qdict_haskey(t, "error")) {
        printf("%s  BROKEN: %s", qdict_get_str(t, "name"),
               qdict_get_str(t, "error"));
    } else {
        printf("%s  %s  QEMU %s  created %s  %" PRId64 " running clones",
               qdict_get_str(t, "name"), qdict_get_str(t, "mode"),
               qdict_get_str(t, "qemu"), qdict_get_str(t, "created"),
               qdict_get_int(t, "running-clones"));
    }
    if (pool) {
        printf("  pool pid %" PRId64 ": %" PRId64 "/%" PRId64 " ready, %"
               PRId64 " served, %" PRId64 " failed",
               qdict_get_try_int(pool, "pid", 0),
               qdict_get_try_int(pool, "ready", 0),
               qdict_get_try_int(pool, "size", 0),
               qdict_get_try_int(pool, "served", 0),
               qdict_get_try_int(pool, "failed", 0));
    }
    printf("\n");
}

static void print_clone(QDict *c)
{
    QDict *mem = qdict_get_qdict(c, "memory");
    bool running = qdict_get_try_bool(c, "running", false);

    printf("  %s pid=%" PRId64 " %s", qdict_get_try_str(c, "id"),
           qdict_get_try_int(c, "pid", 0),
           !running ? "gone" :
           qdict_get_try_str(c, "state") ?: "running");
    if (mem) {
        printf(" pss=%.1fMiB private=%.1fMiB shared=%.1fMiB",
               qdict_get_try_int(mem, "pss-kib", 0) / 1024.0,
               qdict_get_try_int(mem, "private-kib", 0) / 1024.0,
               qdict_get_try_int(mem, "shared-kib", 0) / 1024.0);
    }
    printf("\n");
}

bool list_run(const char *only, QObject **result, Error **errp)
{
    g_autofree char *tdir = g_build_filename(top_dir, "templates", NULL);
    GDir *d = g_dir_open(tdir, 0, NULL);
    QList *out = qlist_new();
    QListEntry *te, *ce;
    const char *e;

    while (d && (e = g_dir_read_name(d))) {
        if (e[0] != '.' && (!only || !strcmp(e, only))) {
            qlist_append(out, template_entry(e));
        }
    }
    if (d) {
        g_dir_close(d);
    }
    if (only && qlist_empty(out)) {
        qobject_unref(out);
        error_setg(errp, "no template '%s' in '%s'", only, top_dir);
        return false;
    }
    if (!opt_json) {
        QLIST_FOREACH_ENTRY(out, te) {
            QDict *t = qobject_to(QDict, qlist_entry_obj(te));

            print_template(t);
            QLIST_FOREACH_ENTRY(qdict_get_qlist(t, "clones"), ce) {
                print_clone(qobject_to(QDict, qlist_entry_obj(ce)));
            }
        }
    }
    *result = QOBJECT(out);
    return true;
}

/* ------------------------------------------------------------------ */
/* destroy */

static bool destroy_clone(const char *id, Error **errp)
{
    g_autofree char *path = clone_path(id, CLONE_FILE);
    g_autofree char *dir = clone_path(id, NULL);
    g_autoptr(QDict) rec = NULL;
    pid_t pid;

    if (!valid_name(id) || !g_file_test(dir, G_FILE_TEST_IS_DIR)) {
        error_setg(errp, "no template or clone named '%s'", id);
        return false;
    }
    /* a record someone else could write does not say what to stop */
    if (!stat_trusted(dir, S_IFDIR, NULL, errp) ||
        (g_file_test(path, G_FILE_TEST_EXISTS) &&
         !stat_trusted(path, S_IFREG, NULL, errp))) {
        error_prepend(errp, "clone '%s': ", id);
        return false;
    }
    rec = read_json_dict(path, NULL);
    /* without a (readable) record, whatever runs in its directory */
    pid = rec ? clone_pid(rec, dir) : find_process(dir);
    kill_pid(pid);
    if (rmtree(dir) < 0) {
        error_setg(errp, "cannot remove '%s'", dir);
        return false;
    }
    return true;
}

/* Remove template @name in @tdir unless something uses it. */
static bool destroy_template(const char *name, const char *tdir,
                             Error **errp)
{
    g_autoptr(QList) clones = load_clones(name);
    g_autoptr(GString) others = NULL;
    QListEntry *e;

    if (count_running(clones)) {
        error_setg(errp, "template '%s' has %d running clones", name,
                   count_running(clones));
        error_append_hint(errp, "Destroy them first:");
        QLIST_FOREACH_ENTRY(clones, e) {
            QDict *c = qobject_to(QDict, qlist_entry_obj(e));

            if (qdict_get_try_bool(c, "running", false)) {
                error_append_hint(errp, " %s", qdict_get_str(c, "id"));
            }
        }
        error_append_hint(errp, "\n");
        return false;
    }
    others = mappers_of(tdir);
    if (others->len) {
        error_setg(errp, "template '%s' is mapped by processes%s", name,
                   others->str);
        error_append_hint(errp, "Stop them first.\n");
        return false;
    }
    /* records of clones that are gone */
    QLIST_FOREACH_ENTRY(clones, e) {
        QDict *c = qobject_to(QDict, qlist_entry_obj(e));

        if (!destroy_clone(qdict_get_str(c, "id"), errp)) {
            return false;
        }
    }
    if (rmtree(tdir) < 0) {
        error_setg(errp, "cannot remove '%s'", tdir);
        return false;
    }
    return true;
}

bool destroy_run(const char *name, Error **errp)
{
    g_autofree char *tdir = template_path(name, NULL);
    bool ok;
    int lock;

    if (!valid_name(name) || !g_file_test(tdir, G_FILE_TEST_IS_DIR)) {
        return destroy_clone(name, errp);
    }
    if (template_locked(name, LOCK_POOL)) {
        error_setg(errp, "a pool of template '%s' runs", name);
        error_append_hint(errp, "Stop it first: qemu-template stop %s\n",
                          name);
        return false;
    }
    /* no create, clone or pool of it starts until it is gone */
    lock = template_lock(name, LOCK_TEMPLATE, true, "in use: another "
                         "qemu-template clones, serves or destroys it", errp);
    if (lock < 0) {
        return false;
    }
    ok = destroy_template(name, tdir, errp);
    close(lock);
    return ok;
}
