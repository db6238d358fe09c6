/*
 * qemu-template: making a template
 *
 * QEMU starts paused (-S) in a hidden directory next to the template's
 * final place; the tool connects, checks the QEMU, and lets the guest
 * run: the events that come after its "cont" are counted by name, so
 * none is lost and the tool's own RESUME is not one of them.  Once the
 * guest is ready (--ready, or SIGUSR1: "save now"), the VM is saved,
 * QEMU quits, and the directory is published by one rename.  Any
 * failure leaves nothing.
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <poll.h>
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/sockets.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qlist.h"
#include "qobject/qstring.h"
#include "qemu-template.h"
#include "cmdline.h"
#include "manifest.h"
#include "vm.h"
#include "create.h"

/* while saving, how often the progress is asked for (and printed) */
#define CREATE_PROGRESS_MS 1000
/* how long QEMU may take to quit after the save */
#define CREATE_QUIT_MS 5000

typedef struct Create {
    const CreateOpts *o;
    Manifest *m;            /* the manifest being made */
    QemuBinary *qemu;
    char *templates;
    char *final;
    char *tmp;
    Vm vm;
    int lock;
    Interrupt in;
    bool save_now;          /* SIGUSR1 */
    guint usr1;
    bool counting;          /* the tool's "cont" was answered */
    GHashTable *events;     /* event name -> occurrences not yet used */
    char *save_status;      /* the MIGRATION event that ended the save */
    int64_t t0;
    int64_t t_boot;
    int64_t t_ready;
} Create;

/* ------------------------------------------------------------------ */
/* waiting */

static gboolean create_woken(gpointer opaque)
{
    *(bool *)opaque = true;
    return G_SOURCE_REMOVE;
}

/* Is the template's QEMU still there and nobody asked to stop? */
static bool create_alive(Create *c, Error **errp)
{
    if (c->in.flag) {
        error_setg(errp, "interrupted");
        return false;
    }
    if (c->vm.exited) {
        vm_exit_error(&c->vm, errp);
        return false;
    }
    return true;
}

/*
 * Run the main loop for @ms, or until something ends the wait: an
 * interruption, QEMU's exit, the end of the save.  (SIGUSR1 ends only
 * the wait for --ready, which looks at it.)
 */
static void create_run_loop(Create *c, int ms)
{
    bool woken = false;
    guint t = g_timeout_add(ms, create_woken, &woken);

    while (!woken && !c->in.flag && !c->vm.exited && !c->save_status) {
        g_main_context_iteration(NULL, true);
    }
    if (!woken) {
        g_source_remove(t);
    }
}

static bool create_pause(Create *c, int ms, Error **errp)
{
    create_run_loop(c, ms);
    return create_alive(c, errp);
}

static QObject *create_qmp(Create *c, const char *cmd, QDict *args,
                           Error **errp)
{
    int64_t deadline = now_us() + 60 * G_USEC_PER_SEC;

    return qmp_call(c->vm.qmp, cmd, args, deadline, &c->in.flag, errp);
}

static bool create_qmp_ok(Create *c, const char *cmd, QDict *args,
                          Error **errp)
{
    QObject *ret = create_qmp(c, cmd, args, errp);

    qobject_unref(ret);
    return ret != NULL;
}

/* ------------------------------------------------------------------ */
/* --ready conditions */

/* Is @line a guest agent's answer ({"return": ...})? */
static bool ga_answered(const char *line)
{
    g_autoptr(QObject) obj = qobject_from_json(line, NULL);
    QDict *d = qobject_to(QDict, obj);

    return d && qdict_haskey(d, "return");
}

/*
 * Does a guest agent (qemu-ga) answer guest-ping on the UNIX socket
 * @path within a second?
 */
static bool ga_ping(const char *path)
{
    static const char req[] = "{\"execute\": \"guest-ping\"}\n";
    struct pollfd pfd = { .events = POLLIN };
    int64_t deadline = now_us() + G_USEC_PER_SEC;
    g_autoptr(GString) in = g_string_new("");
    bool ok = false;
    char *nl;

    pfd.fd = unix_connect(path, NULL);
    if (pfd.fd < 0) {
        return false;
    }
    if (qemu_send_full(pfd.fd, req, sizeof(req) - 1) != sizeof(req) - 1) {
        close(pfd.fd);
        return false;
    }
    while (!ok && now_us() < deadline &&
           poll(&pfd, 1, (deadline - now_us()) / 1000 + 1) > 0) {
        char buf[256];
        ssize_t n = read(pfd.fd, buf, sizeof(buf));

        if (n <= 0) {
            break;
        }
        g_string_append_len(in, buf, n);
        /* the agent answers one JSON object per line */
        while (!ok && (nl = strchr(in->str, '\n'))) {
            *nl = '\0';
            ok = ga_answered(in->str);
            g_string_erase(in, 0, nl - in->str + 1);
        }
    }
    close(pfd.fd);
    return ok;
}

/*
 * Every event after the tool's "cont": counted by name (their names are
 * QEMU's, so the table stays small); the end of the save noted.
 */
static void create_event(QDict *event, void *opaque)
{
    Create *c = opaque;
    const char *name = qdict_get_try_str(event, "event");
    QDict *data = qdict_get_qdict(event, "data");
    const char *st = data ? qdict_get_try_str(data, "status") : NULL;

    if (!name || !c->counting) {
        return;
    }
    g_hash_table_insert(c->events, g_strdup(name), GINT_TO_POINTER(
        GPOINTER_TO_INT(g_hash_table_lookup(c->events, name)) + 1));
    if (!strcmp(name, "MIGRATION") && !c->save_status &&
        (!g_strcmp0(st, "completed") || !g_strcmp0(st, "failed") ||
         !g_strcmp0(st, "cancelled"))) {
        c->save_status = g_strdup(st);
    }
}

/* Did event @name come (after "cont")?  Each condition uses one. */
static bool take_event(Create *c, const char *name)
{
    int n = GPOINTER_TO_INT(g_hash_table_lookup(c->events, name));

    if (!n) {
        return false;
    }
    g_hash_table_insert(c->events, g_strdup(name), GINT_TO_POINTER(n - 1));
    return true;
}

/* Does the file of "log:FILE:TEXT" contain TEXT? */
static bool log_contains(Create *c, const char *spec)
{
    const char *colon = strchr(spec, ':');
    g_autofree char *file = g_strndup(spec, colon - spec);
    g_autofree char *path = subst_dir(file, c->vm.dir, NULL);
    g_autofree char *text = NULL;

    return g_file_get_contents(path, &text, NULL, NULL) &&
           strstr(text, colon + 1);
}

bool ready_valid(const char *cond, Error **errp)
{
    const char *colon;
    double s;

    if (g_str_has_prefix(cond, "delay:")) {
        if (!qemu_strtod_finite(cond + 6, NULL, &s) && s >= 0) {
            return true;
        }
    } else if (g_str_has_prefix(cond, "event:") ||
               g_str_has_prefix(cond, "ga:")) {
        if (strchr(cond, ':')[1]) {
            return true;
        }
    } else if (g_str_has_prefix(cond, "log:")) {
        colon = strchr(cond + 4, ':');
        if (colon && colon > cond + 4 && colon[1]) {
            return true;
        }
    } else if (!strcmp(cond, "signal")) {
        return true;
    }
    error_setg(errp, "invalid --ready '%s'", cond);
    error_append_hint(errp, "Use delay:SECONDS, event:QMP-EVENT, "
                      "log:FILE:TEXT, ga:SOCKET or signal.\n");
    return false;
}

/* Does @cond hold now? */
static bool ready_now(Create *c, const char *cond, int64_t since)
{
    double s;

    if (g_str_has_prefix(cond, "delay:")) {
        qemu_strtod_finite(cond + 6, NULL, &s);
        return now_us() - since >= s * G_USEC_PER_SEC;
    } else if (g_str_has_prefix(cond, "event:")) {
        return take_event(c, cond + 6);
    } else if (g_str_has_prefix(cond, "log:")) {
        return log_contains(c, cond + 4);
    } else if (g_str_has_prefix(cond, "ga:")) {
        g_autofree char *path = subst_dir(cond + 3, c->vm.dir, NULL);

        return ga_ping(path);
    }
    return false;       /* "signal": only SIGUSR1 */
}

/* Wait until every --ready condition held, in turn, or SIGUSR1. */
static bool create_wait_ready(Create *c, Error **errp)
{
    int64_t deadline = now_us() + (int64_t)c->o->timeout * G_USEC_PER_SEC;
    int i;

    for (i = 0; c->o->ready[i]; i++) {
        const char *cond = c->o->ready[i];
        int64_t since = now_us();

        while (!c->save_now && !ready_now(c, cond, since)) {
            if (now_us() > deadline) {
                error_setg(errp, "'%s' did not hold within %d s", cond,
                           c->o->timeout);
                return false;
            }
            if (!create_pause(c, 20, errp)) {
                return false;
            }
        }
    }
    return create_alive(c, errp);
}

static gboolean create_sigusr1(gpointer opaque)
{
    Create *c = opaque;

    c->save_now = true;
    return G_SOURCE_CONTINUE;
}

/* ------------------------------------------------------------------ */
/* boot and save */

/* Does this QEMU know migration capability @cap? */
static bool create_has_capability(Create *c, const char *cap, Error **errp)
{
    g_autoptr(QObject) ret = create_qmp(c, "query-migrate-capabilities",
                                        NULL, errp);
    QList *list = qobject_to(QList, ret);
    QListEntry *e;

    if (list) {
        QLIST_FOREACH_ENTRY(list, e) {
            QDict *d = qobject_to(QDict, qlist_entry_obj(e));

            if (d && !g_strcmp0(qdict_get_try_str(d, "capability"), cap)) {
                return true;
            }
        }
    }
    if (ret) {
        error_setg(errp, "QEMU '%s' (%s) lacks the migration capability "
                   "'%s' that mode %s needs", c->m->qemu, c->m->version,
                   cap, mode_names[c->m->mode]);
        error_append_hint(errp, "Use a QEMU built with the VM templating "
                          "series (--qemu PATH).\n");
    }
    return false;
}

static bool create_boot(Create *c, Error **errp)
{
    g_autofree char *ram = g_build_filename(c->tmp, MEMORY_FILE, NULL);
    g_auto(GStrv) argv = NULL;
    g_autoptr(QObject) ver = NULL;
    VmArgs va = {
        .qemu = c->m->qemu, .user = c->m->args, .dir = c->tmp,
        .qmp_fd = VM_FD_QMP, .mode = c->m->mode,
        .ram_size = c->m->ram_size, .ram_path = ram,
        .genid = c->m->vmgenid, .uuid = c->m->uuid, .name = c->m->name,
    };

    argv = build_argv(&va);
    progress("booting template '%s' (%s)", c->m->name,
             mode_names[c->m->mode]);
    c->t0 = now_us();
    if (!vm_spawn(&c->vm, c->qemu, argv, NULL, 0, false, errp) ||
        !vm_connect_sync(&c->vm, 30, &c->in.flag, create_event, c, errp)) {
        return false;
    }
    ver = create_qmp(c, "query-version", NULL, errp);
    c->m->version = ver ? qmp_version_string(ver, errp) : NULL;
    if (!c->m->version ||
        !create_has_capability(c, mode_capability[c->m->mode], errp)) {
        return false;
    }
    c->t_boot = now_us();
    /* started with -S: every event after this "cont" counts */
    if (!create_qmp_ok(c, "cont", NULL, errp)) {
        return false;
    }
    c->counting = true;
    return true;
}

/*
 * The VM's RAM blocks, {name: used bytes}, from "info ramblock": the RAM
 * layout a clone must have.
 */
static QDict *create_ram_blocks(Create *c, Error **errp)
{
    QDict *args = qdict_new();
    g_autoptr(QObject) ret = NULL;
    QString *text;
    QDict *blocks;
    g_auto(GStrv) lines = NULL;
    int i;

    qdict_put_str(args, "command-line", "info ramblock");
    ret = create_qmp(c, "human-monitor-command", args, errp);
    text = qobject_to(QString, ret);
    if (!text) {
        if (ret) {
            error_setg(errp, "'info ramblock' answered no text");
        }
        return NULL;
    }
    blocks = qdict_new();
    lines = g_strsplit(qstring_get_str(text), "\n", -1);
    for (i = 1; lines[i]; i++) {
        g_auto(GStrv) f = g_strsplit_set(g_strstrip(lines[i]), " ", -1);
        uint64_t v[4];
        int n = 0, j;

        /* name, page size, then offset, used, total, HVA in hex */
        for (j = 1; f[0] && f[j] && n < 4; j++) {
            if (g_str_has_prefix(f[j], "0x") &&
                !qemu_strtou64(f[j], NULL, 16, &v[n])) {
                n++;
            }
        }
        if (n == 4) {
            qdict_put_int(blocks, f[0], v[1]);
        }
    }
    return blocks;
}

/* Ask how far the save is, and say so. */
static bool create_save_progress(Create *c, Error **errp)
{
    g_autoptr(QObject) ret = create_qmp(c, "query-migrate", NULL, errp);
    QDict *d = qobject_to(QDict, ret);
    QDict *ram = d ? qdict_get_qdict(d, "ram") : NULL;

    if (ram) {
        progress("saving: %" PRId64 " MiB of %" PRId64 " MiB",
                 qdict_get_try_int(ram, "transferred", 0) >> 20,
                 qdict_get_try_int(ram, "total", 0) >> 20);
    }
    return ret != NULL;
}

/* Why the save failed, as query-migrate says. */
static void create_save_failed(Create *c, Error **errp)
{
    g_autoptr(QObject) ret = create_qmp(c, "query-migrate", NULL, NULL);
    QDict *d = qobject_to(QDict, ret);

    error_setg(errp, "saving the template failed: %s",
               (d ? qdict_get_try_str(d, "error-desc") : NULL) ?:
               c->save_status);
}

/*
 * Wait for the MIGRATION event that ends the save, asking for the
 * progress once a second; a save that takes longer than allowed is
 * cancelled.
 */
static bool create_wait_saved(Create *c, Error **errp)
{
    int64_t deadline = now_us() + (int64_t)c->o->timeout * G_USEC_PER_SEC;

    for (;;) {
        create_run_loop(c, CREATE_PROGRESS_MS);
        if (!c->save_status && !create_alive(c, errp)) {
            return false;
        }
        if (!g_strcmp0(c->save_status, "completed")) {
            return true;
        }
        if (c->save_status) {
            create_save_failed(c, errp);
            return false;
        }
        if (now_us() > deadline) {
            create_qmp_ok(c, "migrate_cancel", NULL, NULL);
            error_setg(errp, "saving the template did not finish in %d s",
                       c->o->timeout);
            error_append_hint(errp, "A larger --timeout allows more.\n");
            return false;
        }
        if (!create_save_progress(c, errp)) {
            return false;
        }
    }
}

/*
 * Save the VM.  A bypass save is the device state alone and is saved
 * live: the stream records a running VM, so clones run once loaded.  A
 * mapped-ram save writes all of RAM: the VM is stopped first (a template
 * is not a live migration: a busy guest would never converge), and its
 * clones are resumed by the tool.
 */
static bool create_save(Create *c, Error **errp)
{
    g_autofree char *state = g_build_filename(c->tmp,
                                              mode_state_file[c->m->mode],
                                              NULL);
    QDict *cap, *a;
    QList *caps;

    if (c->m->mode == MODE_MAPPED_RAM) {
        if (!create_qmp_ok(c, "stop", NULL, errp)) {
            return false;
        }
        c->m->stopped = true;
    }
    a = qdict_new();
    caps = qlist_new();
    cap = qdict_new();
    qdict_put_str(cap, "capability", mode_capability[c->m->mode]);
    qdict_put_bool(cap, "state", true);
    qlist_append(caps, cap);
    /* a MIGRATION event says when the save ended */
    cap = qdict_new();
    qdict_put_str(cap, "capability", "events");
    qdict_put_bool(cap, "state", true);
    qlist_append(caps, cap);
    qdict_put(a, "capabilities", caps);
    if (!create_qmp_ok(c, "migrate-set-capabilities", a, errp)) {
        return false;
    }
    c->m->ram_blocks = create_ram_blocks(c, errp);
    a = qdict_new();
    qdict_put(a, "channels", file_channels(state));
    return c->m->ram_blocks && create_qmp_ok(c, "migrate", a, errp) &&
           create_wait_saved(c, errp);
}

/* QEMU quits after the save; it is killed if it does not. */
static void create_quit(Create *c)
{
    create_qmp_ok(c, "quit", NULL, NULL);
    /* ends early when QEMU exited */
    create_run_loop(c, CREATE_QUIT_MS);
    vm_kill(&c->vm);
}

/* ------------------------------------------------------------------ */
/* publishing */

/* Remove the entries of @dir that are neither in @keep nor the manifest. */
static void prune_dir(const char *dir, QDict *keep)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *e;

    while (d && (e = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(dir, e, NULL);

        if (strcmp(e, MANIFEST_FILE) && !qdict_haskey(keep, e)) {
            rmtree(path);
        }
    }
    if (d) {
        g_dir_close(d);
    }
}

/* The saved files: synced, their write bits cleared, and their sizes. */
static bool create_seal_files(Create *c, Error **errp)
{
    const char *names[] = { mode_state_file[c->m->mode], MEMORY_FILE };
    int i, n = c->m->mode == MODE_BYPASS ? 2 : 1;

    c->m->files = qdict_new();
    for (i = 0; i < n; i++) {
        g_autofree char *p = g_build_filename(c->tmp, names[i], NULL);
        struct stat st;

        if (stat(p, &st) < 0) {
            error_setg_errno(errp, errno, "saved file '%s' missing", p);
            return false;
        }
        if (!fsync_path(p, errp)) {
            return false;
        }
        /* read-only; never more readable than QEMU made it */
        chmod(p, st.st_mode & 07555);
        qdict_put_int(c->m->files, names[i], st.st_size);
    }
    return true;
}

static bool create_publish(Create *c, Error **errp)
{
    struct stat st;

    c->m->created = iso_now();
    c->m->times = qdict_new();
    qdict_put_int(c->m->times, "qmp-ms", (c->t_boot - c->t0) / 1000);
    qdict_put_int(c->m->times, "ready-ms", (c->t_ready - c->t0) / 1000);
    qdict_put_int(c->m->times, "save-ms", (now_us() - c->t_ready) / 1000);
    if (!create_seal_files(c, errp) || !manifest_save(c->m, c->tmp, errp)) {
        return false;
    }
    /* what the template's run left (QMP socket, logs, user sockets) */
    prune_dir(c->tmp, c->m->files);
    if (rename(c->tmp, c->final) < 0) {
        error_setg_errno(errp, errno, "cannot publish template '%s'",
                         c->final);
        return false;
    }
    if (stat(c->final, &st) == 0) {
        chmod(c->final, st.st_mode & 07555);
    }
    fsync_path(c->templates, NULL);
    return true;
}

/* ------------------------------------------------------------------ */
/* create */

/*
 * A failure: if QEMU exited (its QMP closing comes before its exit
 * status), say so with its last output; else add that output.
 */
static void create_explain(Create *c, Error **errp)
{
    if (c->vm.pid <= 0 || c->vm.failed) {
        return;
    }
    if (c->vm.qmp && qmp_is_closed(c->vm.qmp)) {
        /* ends early when QEMU exited */
        create_run_loop(c, 1000);
    }
    if (c->vm.exited) {
        error_free(*errp);
        *errp = NULL;
        vm_exit_error(&c->vm, errp);
    } else {
        vm_append_log(&c->vm, errp);
    }
}

/*
 * Half-made templates of @name, ".NAME.tmp-PID": the caller holds the
 * template's lock, so the create that made them is gone.  Those of
 * another template ("NAME.tmp-1" makes ".NAME.tmp-1.tmp-PID") are not.
 */
static void remove_stale_tmp(const char *name)
{
    g_autofree char *prefix = g_strdup_printf(".%s.tmp-", name);
    int fd = tool_dir_open("templates", false, NULL);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    g_autoptr(GPtrArray) stale = g_ptr_array_new_with_free_func(g_free);
    struct dirent *e;
    guint i;

    while (d && (e = readdir(d))) {
        const char *pid = e->d_name + strlen(prefix);

        if (g_str_has_prefix(e->d_name, prefix) && *pid &&
            strspn(pid, "0123456789") == strlen(pid)) {
            g_ptr_array_add(stale, g_strdup(e->d_name));
        }
    }
    for (i = 0; i < stale->len; i++) {
        rmtree_at(dirfd(d), g_ptr_array_index(stale, i));
    }
    if (d) {
        closedir(d);
    } else if (fd >= 0) {
        close(fd);
    }
}

/* What create checks before it locks anything. */
static bool create_check(Create *c, char **user, Error **errp)
{
    const char *name = c->m->name;
    int i;

    if (!valid_name(name)) {
        error_setg(errp, "'%s' is not a valid template name (letters, "
                   "digits, '.', '_', '-'; at most 64)", name);
        return false;
    }
    for (i = 0; c->o->ready[i]; i++) {
        if (!ready_valid(c->o->ready[i], errp)) {
            return false;
        }
    }
    if (!check_user_args(user, c->m->mode, errp) ||
        (c->m->mode == MODE_BYPASS &&
         !parse_ram_size(user, &c->m->ram_size, errp))) {
        return false;
    }
    c->final = template_path(name, NULL);
    if (g_file_test(c->final, G_FILE_TEST_EXISTS)) {
        error_setg(errp, "template '%s' already exists", name);
        error_append_hint(errp, "Destroy it first, or choose another "
                          "name.\n");
        return false;
    }
    return true;
}

/* The lock, the directory to build in, and the QEMU binary. */
static bool create_setup(Create *c, Error **errp)
{
    const char *name = c->m->name;

    c->lock = template_lock(name, LOCK_TEMPLATE, true, "in use: another "
                            "qemu-template creates, clones, serves or "
                            "destroys it", errp);
    if (c->lock < 0) {
        return false;
    }
    c->templates = tool_subdir("templates", errp);
    if (!c->templates) {
        return false;
    }
    if (g_file_test(c->final, G_FILE_TEST_EXISTS)) {
        error_setg(errp, "template '%s' already exists", name);
        return false;
    }
    remove_stale_tmp(name);
    /* the absolute path of the binary goes into the manifest */
    c->qemu = qemu_resolve(c->o->qemu, errp);
    if (!c->qemu) {
        return false;
    }
    c->m->qemu = g_strdup(c->qemu->path);
    /* built next to the final place, published by one rename */
    c->tmp = g_strdup_printf("%s/.%s.tmp-%d", c->templates, name, getpid());
    if (mkdir(c->tmp, 0700) < 0) {
        error_setg_errno(errp, errno, "cannot create '%s'", c->tmp);
        g_clear_pointer(&c->tmp, g_free);
        return false;
    }
    vm_init(&c->vm, c->tmp);
    return true;
}

static bool create_make(Create *c, Error **errp)
{
    if (!create_boot(c, errp)) {
        return false;
    }
    if (!create_wait_ready(c, errp)) {
        error_prepend(errp, "template '%s' did not get ready: ",
                      c->m->name);
        return false;
    }
    c->t_ready = now_us();
    progress("ready after %.1f s%s; saving", (c->t_ready - c->t0) / 1e6,
             c->save_now ? " (SIGUSR1)" : "");
    if (!create_save(c, errp)) {
        return false;
    }
    create_quit(c);
    if (!create_publish(c, errp)) {
        return false;
    }
    if (!opt_json) {
        printf("template %s: %s, made in %.1f s (ready after %.1f s)\n",
               c->m->name, mode_names[c->m->mode],
               (now_us() - c->t0) / 1e6, (c->t_ready - c->t0) / 1e6);
    }
    return true;
}

bool create_run(const char *name, const CreateOpts *o, char **user,
                QObject **result, Error **errp)
{
    Create c = { .o = o, .lock = -1 };
    bool ok;

    c.m = manifest_new();
    c.m->name = g_strdup(name);
    c.events = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    c.m->mode = o->mode;
    c.m->args = g_strdupv(user);
    c.m->vmgenid = new_uuid();
    c.m->uuid = new_uuid();
    interrupt_catch(&c.in, NULL);
    c.usr1 = g_unix_signal_add(SIGUSR1, create_sigusr1, &c);
    ok = create_check(&c, user, errp) && create_setup(&c, errp) &&
         create_make(&c, errp);
    if (ok) {
        *result = QOBJECT(manifest_to_qdict(c.m));
    } else if (c.tmp) {
        create_explain(&c, errp);
        vm_kill(&c.vm);
        rmtree(c.tmp);
    }
    if (c.tmp) {
        vm_cleanup(&c.vm);
    }
    g_source_remove(c.usr1);
    interrupt_release(&c.in);
    if (c.lock >= 0) {
        close(c.lock);
    }
    manifest_free(c.m);
    qemu_binary_free(c.qemu);
    g_hash_table_unref(c.events);
    g_free(c.save_status);
    g_free(c.templates);
    g_free(c.final);
    g_free(c.tmp);
    return ok;
}
