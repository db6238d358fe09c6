/*
 * qemu-template: list, status, destroy
 *
 * Clone records are untrusted input: a record another user could write
 * is not read, every member is optional, and a pid is only believed for
 * a process of this user that started when the record says and whose
 * command line holds the clone's own "-uuid UUID" (proc.c).
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
#include "clone.h"
#include "pool.h"
#include "admin.h"

/*
 * The process of clone @id that its record @rec names (a record written
 * before its process had a pid: the process found); or 0.
 */
static pid_t clone_pid(QDict *rec, const char *id)
{
    ProcRef r;

    clone_record_ref(rec, id, &r);
    return proc_find(&r);
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
    pid = clone_pid(rec, id);
    qobject_unref(rec);
    qdict_put_bool(c, "running", pid > 0);
    if (pid > 0) {
        qdict_put_int(c, "pid", pid);
        add_memory(c, pid);
    }
    return c;
}

static gint compare_names(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in DIR/@sub (checked first), sorted. */
static GPtrArray *tool_dir_names(const char *sub)
{
    int fd = tool_dir_open(sub, false, NULL);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
    struct dirent *e;

    while (d && (e = readdir(d))) {
        if (e->d_name[0] != '.') {
            g_ptr_array_add(names, g_strdup(e->d_name));
        }
    }
    if (d) {
        closedir(d);
    } else if (fd >= 0) {
        close(fd);
    }
    g_ptr_array_sort(names, compare_names);
    return names;
}

QList *load_clones(const char *template)
{
    g_autoptr(GPtrArray) ids = tool_dir_names("clones");
    QList *list = qlist_new();
    guint i;

    for (i = 0; i < ids->len; i++) {
        const char *id = g_ptr_array_index(ids, i);
        QDict *c = valid_name(id) ? clone_entry(id, template) : NULL;

        if (c) {
            qlist_append(list, c);
        }
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
    g_autoptr(GPtrArray) names = NULL;
    QList *out = qlist_new();
    QListEntry *te, *ce;
    guint i;
    int fd;

    /* a templates/ that others could change lists nothing */
    fd = tool_dir_open("templates", false, errp);
    if (fd < 0 && (!errp || *errp)) {
        qobject_unref(out);
        return false;
    }
    if (fd >= 0) {
        close(fd);
    }
    names = tool_dir_names("templates");
    for (i = 0; i < names->len; i++) {
        const char *e = g_ptr_array_index(names, i);

        if (!only || !strcmp(e, only)) {
            qlist_append(out, template_entry(e));
        }
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

static void no_such(const char *name, Error **errp)
{
    error_setg(errp, "no template or clone named '%s'", name);
}

/*
 * Open @name in DIR/@sub, checked with everything above it; -1 with
 * @errp, or -1 and ENOENT (with @errp unset) if it is not there.
 */
static int open_entry(const char *sub, const char *name, int *parent,
                      Error **errp)
{
    g_autofree char *path = g_build_filename(top_dir, sub, name, NULL);
    int fd;

    *parent = valid_name(name) ? tool_dir_open(sub, false, errp) : -1;
    if (*parent < 0) {
        return -1;
    }
    if (faccessat(*parent, name, F_OK, AT_SYMLINK_NOFOLLOW) < 0) {
        close(*parent);
        *parent = -1;
        errno = ENOENT;
        return -1;
    }
    fd = openat_trusted(*parent, name, path, S_IFDIR, NULL, errp);
    if (fd < 0) {
        close(*parent);
        *parent = -1;
    }
    return fd;
}

static bool destroy_clone(const char *id, Error **errp)
{
    ERRP_GUARD();
    g_autofree char *path = clone_path(id, CLONE_FILE);
    g_autoptr(QDict) rec = NULL;
    int cdir, fd = open_entry("clones", id, &cdir, errp);
    ProcRef r = { .opt = "-name", .val = id };
    bool ok;

    if (fd < 0) {
        if (!*errp) {
            no_such(id, errp);
        } else {
            error_prepend(errp, "clone '%s': ", id);
        }
        return false;
    }
    /* a record someone else could write does not say what to stop */
    if (faccessat(fd, CLONE_FILE, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
        int rfd = openat_trusted(fd, CLONE_FILE, path, S_IFREG, NULL, errp);

        if (rfd < 0) {
            error_prepend(errp, "clone '%s': ", id);
            close(fd);
            close(cdir);
            return false;
        }
        close(rfd);
        /* a damaged record of the user's own: its directory is enough */
        rec = read_json_dict_at(fd, CLONE_FILE, path, NULL);
    }
    if (rec) {
        clone_record_ref(rec, id, &r);
    }
    /* without a record, whatever runs with the clone's -name */
    proc_stop(&r, 1);
    close(fd);
    ok = rmtree_at(cdir, id) == 0;
    close(cdir);
    if (!ok) {
        error_setg(errp, "cannot remove '%s'", clone_path(id, NULL));
    }
    return ok;
}

/* "Destroy them first: ID..." */
static void running_clones_error(const char *name, QList *clones,
                                 Error **errp)
{
    QListEntry *e;

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
}

/* Remove template @name (@fd in @tdir) unless something uses it. */
static bool destroy_template(const char *name, int tdir, int fd,
                             Error **errp)
{
    g_autofree char *path = template_path(name, NULL);
    g_autoptr(QList) clones = load_clones(name);
    g_autoptr(GString) others = NULL;
    QListEntry *e;

    if (count_running(clones)) {
        running_clones_error(name, clones, errp);
        return false;
    }
    others = mappers_of(fd, path);
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
    if (rmtree_at(tdir, name) < 0) {
        error_setg(errp, "cannot remove '%s'", path);
        return false;
    }
    return true;
}

bool destroy_run(const char *name, Error **errp)
{
    ERRP_GUARD();
    int tdir, fd, lock;
    bool ok;

    fd = open_entry("templates", name, &tdir, errp);
    if (fd < 0) {
        return !*errp && destroy_clone(name, errp);
    }
    if (template_locked(name, LOCK_POOL)) {
        error_setg(errp, "a pool of template '%s' runs", name);
        error_append_hint(errp, "Stop it first: qemu-template stop %s\n",
                          name);
        ok = false;
    } else {
        /* no create, clone or pool of it starts until it is gone */
        lock = template_lock(name, LOCK_TEMPLATE, true, "in use: another "
                             "qemu-template clones, serves or destroys it",
                             errp);
        ok = lock >= 0 && destroy_template(name, tdir, fd, errp);
        if (lock >= 0) {
            close(lock);
        }
    }
    close(fd);
    close(tdir);
    return ok;
}
