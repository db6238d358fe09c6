/*
 * qemu-template: the manifest of a template
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qobject/qdict.h"
#include "qobject/qlist.h"
#include "qobject/qnum.h"
#include "qobject/qstring.h"
#include "qemu-template.h"
#include "cmdline.h"
#include "manifest.h"

#define DAMAGED_HINT "The template is damaged: destroy it and create it " \
                     "again.\n"

Manifest *manifest_new(void)
{
    Manifest *m = g_new0(Manifest, 1);

    m->dirfd = m->ram_fd = m->state_fd = -1;
    return m;
}

static void close_fd(int fd)
{
    if (fd >= 0) {
        close(fd);
    }
}

void manifest_free(Manifest *m)
{
    if (!m) {
        return;
    }
    close_fd(m->dirfd);
    close_fd(m->ram_fd);
    close_fd(m->state_fd);
    g_free(m->name);
    g_free(m->qemu);
    g_free(m->version);
    g_strfreev(m->args);
    qobject_unref(m->ram_blocks);
    qobject_unref(m->files);
    g_free(m->vmgenid);
    g_free(m->uuid);
    g_free(m->created);
    qobject_unref(m->times);
    g_free(m);
}

/* Is @file one of the files a template of @mode has? */
static bool mode_file(TemplateMode mode, const char *file)
{
    return !strcmp(file, mode_state_file[mode]) ||
           (mode == MODE_BYPASS && !strcmp(file, MEMORY_FILE));
}

/* Open @file of @m: trusted, of the size the manifest says. */
static int manifest_open_file(Manifest *m, const char *dir, const char *file,
                              Error **errp)
{
    g_autofree char *path = g_build_filename(dir, file, NULL);
    int64_t want = qdict_get_try_int(m->files, file, -1);
    struct stat st;
    int fd;

    if (want < 0) {
        error_setg(errp, "template '%s': the manifest does not list its "
                   "file '%s'", m->name, file);
        error_append_hint(errp, DAMAGED_HINT);
        return -1;
    }
    fd = openat_trusted(m->dirfd, file, path, S_IFREG, &st, errp);
    if (fd < 0) {
        error_prepend(errp, "template '%s': ", m->name);
        error_append_hint(errp, DAMAGED_HINT);
        return -1;
    }
    if (st.st_size != want) {
        error_setg(errp, "template '%s': '%s' has %" PRId64 " bytes, "
                   "the manifest says %" PRId64, m->name, path,
                   (int64_t)st.st_size, want);
        error_append_hint(errp, "The template was changed after it was "
                          "made: destroy it and create it again.\n");
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * The files a template's clones need: exactly the mode's, well-formed
 * entries, each opened, trusted and of the saved size.
 */
static bool manifest_check_files(Manifest *m, const char *dir, Error **errp)
{
    const QDictEntry *e;

    for (e = qdict_first(m->files); e; e = qdict_next(m->files, e)) {
        QNum *size = qobject_to(QNum, e->value);
        int64_t want;

        if (!mode_file(m->mode, e->key) || !size ||
            !qnum_get_try_int(size, &want) || want < 0) {
            error_setg(errp, "template '%s': manifest entry for file '%s' "
                       "is malformed", m->name, e->key);
            error_append_hint(errp, DAMAGED_HINT);
            return false;
        }
    }
    m->state_fd = manifest_open_file(m, dir, mode_state_file[m->mode],
                                     errp);
    if (m->state_fd < 0) {
        return false;
    }
    if (m->mode == MODE_BYPASS) {
        m->ram_fd = manifest_open_file(m, dir, MEMORY_FILE, errp);
        return m->ram_fd >= 0;
    }
    return true;
}

/* Bypass: the memory file is the RAM backend, of the manifest's size. */
static bool manifest_check_ram(Manifest *m, Error **errp)
{
    int64_t mem;

    if (m->mode != MODE_BYPASS) {
        return true;
    }
    mem = qdict_get_try_int(m->files, MEMORY_FILE, -1);
    if (!m->ram_size || mem < 0 || (uint64_t)mem != m->ram_size) {
        error_setg(errp, "template '%s': the manifest's ram-size (%" PRIu64
                   ") is not the size of its memory file (%" PRId64 ")",
                   m->name, m->ram_size, mem);
        error_append_hint(errp, DAMAGED_HINT);
        return false;
    }
    return true;
}

static char **manifest_args(QList *args)
{
    char **v = g_new0(char *, qlist_size(args) + 1);
    QListEntry *e;
    size_t i = 0;

    QLIST_FOREACH_ENTRY(args, e) {
        QString *s = qobject_to(QString, qlist_entry_obj(e));

        if (!s) {
            g_strfreev(v);
            return NULL;
        }
        v[i++] = g_strdup(qstring_get_str(s));
    }
    return v;
}

/* The members of @d, as @m; false if one is missing or of a wrong type. */
static bool manifest_parse(Manifest *m, QDict *d)
{
    QDict *qemu = qdict_get_qdict(d, "qemu");
    QDict *ident = qdict_get_qdict(d, "identity");
    QList *args = qdict_get_qlist(d, "args");
    const char *mode = qdict_get_try_str(d, "mode");
    int64_t ram = qdict_get_try_int(d, "ram-size", 0);

    if (qdict_get_try_int(d, "format", -1) != MANIFEST_FORMAT ||
        g_strcmp0(qdict_get_try_str(d, "name"), m->name) || !mode ||
        !qemu || !args || !qdict_get_try_str(qemu, "path") ||
        !qdict_get_try_str(qemu, "version") || !qdict_get_qdict(d, "files") ||
        ram < 0) {
        return false;
    }
    m->mode = !strcmp(mode, mode_names[MODE_MAPPED_RAM]) ? MODE_MAPPED_RAM
                                                         : MODE_BYPASS;
    m->qemu = g_strdup(qdict_get_str(qemu, "path"));
    m->version = g_strdup(qdict_get_str(qemu, "version"));
    m->ram_size = ram;
    m->stopped = qdict_get_try_bool(d, "stopped", false);
    m->files = qobject_ref(qdict_get_qdict(d, "files"));
    m->ram_blocks = qobject_ref(qdict_get_qdict(d, "ram-blocks"));
    m->times = qobject_ref(qdict_get_qdict(d, "times"));
    m->created = g_strdup(qdict_get_try_str(d, "created"));
    m->vmgenid = g_strdup(ident ? qdict_get_try_str(ident, "vmgenid") : NULL);
    m->uuid = g_strdup(ident ? qdict_get_try_str(ident, "uuid") : NULL);
    m->args = manifest_args(args);
    return m->args && (!strcmp(mode, mode_names[MODE_BYPASS]) ||
                       m->mode == MODE_MAPPED_RAM);
}

static void no_template(const char *name, Error **errp)
{
    error_setg(errp, "no template '%s' in '%s'", name, top_dir);
    error_append_hint(errp, "'qemu-template list' shows the templates; "
                      "--dir or QEMU_TEMPLATE_DIR selects another "
                      "directory.\n");
}

/*
 * The directory of template @name, opened and checked, and every
 * directory above it: no one else can swap it or anything in it.
 */
static int template_dir_open(const char *name, Error **errp)
{
    ERRP_GUARD();
    g_autofree char *dir = template_path(name, NULL);
    int tdir = tool_dir_open("templates", false, errp);
    int fd;

    if (tdir < 0) {
        if (!*errp) {
            no_template(name, errp);
        }
        return -1;
    }
    if (faccessat(tdir, name, F_OK, AT_SYMLINK_NOFOLLOW) < 0) {
        close(tdir);
        no_template(name, errp);
        return -1;
    }
    /* what the manifest says runs: it must be the user's own */
    fd = openat_trusted(tdir, name, dir, S_IFDIR, NULL, errp);
    close(tdir);
    return fd;
}

Manifest *manifest_load(const char *name, Error **errp)
{
    g_autofree char *dir = NULL;
    g_autofree char *path = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autoptr(QDict) d = NULL;

    if (!valid_name(name)) {
        error_setg(errp, "'%s' is not a valid template name", name);
        return NULL;
    }
    dir = template_path(name, NULL);
    path = template_path(name, MANIFEST_FILE);
    m = manifest_new();
    m->name = g_strdup(name);
    m->dirfd = template_dir_open(name, errp);
    if (m->dirfd < 0) {
        return NULL;
    }
    d = read_json_dict_at(m->dirfd, MANIFEST_FILE, path, errp);
    if (!d) {
        error_prepend(errp, "template '%s': ", name);
        error_append_hint(errp, DAMAGED_HINT);
        return NULL;
    }
    if (!manifest_parse(m, d)) {
        error_setg(errp, "template '%s': manifest '%s' is not a format %d "
                   "manifest for this template", name, path, MANIFEST_FORMAT);
        error_append_hint(errp, DAMAGED_HINT);
        return NULL;
    }
    /* a manifest edited by hand gets no more than create allows */
    if (!check_user_args(m->args, m->mode, errp)) {
        error_prepend(errp, "template '%s': manifest: ", name);
        return NULL;
    }
    if (!manifest_check_files(m, dir, errp) ||
        !manifest_check_ram(m, errp)) {
        return NULL;
    }
    return g_steal_pointer(&m);
}

Manifest *manifest_load_locked(const char *name, int *lock, Error **errp)
{
    g_autofree char *dir = NULL;
    Manifest *m;

    *lock = -1;
    if (valid_name(name)) {
        dir = template_path(name, NULL);
        if (g_file_test(dir, G_FILE_TEST_IS_DIR)) {
            *lock = template_lock(name, LOCK_TEMPLATE, false, "being "
                                  "created or destroyed by another "
                                  "qemu-template", errp);
            if (*lock < 0) {
                return NULL;
            }
        }
    }
    m = manifest_load(name, errp);
    if (!m && *lock >= 0) {
        close(*lock);
        *lock = -1;
    }
    return m;
}

QDict *manifest_to_qdict(const Manifest *m)
{
    QDict *d = qdict_new(), *qemu = qdict_new(), *ident = qdict_new();
    QList *args = qlist_new();
    int i;

    qdict_put_int(d, "format", MANIFEST_FORMAT);
    qdict_put_str(d, "name", m->name);
    qdict_put_str(d, "mode", mode_names[m->mode]);
    qdict_put_str(qemu, "path", m->qemu);
    qdict_put_str(qemu, "version", m->version);
    qdict_put(d, "qemu", qemu);
    for (i = 0; m->args[i]; i++) {
        qlist_append_str(args, m->args[i]);
    }
    qdict_put(d, "args", args);
    if (m->ram_size) {
        qdict_put_int(d, "ram-size", m->ram_size);
    }
    qdict_put_bool(d, "stopped", m->stopped);
    if (m->ram_blocks) {
        qdict_put(d, "ram-blocks", qobject_ref(m->ram_blocks));
    }
    qdict_put(d, "files", qobject_ref(m->files));
    qdict_put_str(ident, "vmgenid", m->vmgenid);
    qdict_put_str(ident, "uuid", m->uuid);
    qdict_put(d, "identity", ident);
    qdict_put_str(d, "created", m->created);
    if (m->times) {
        qdict_put(d, "times", qobject_ref(m->times));
    }
    return d;
}

bool manifest_save(const Manifest *m, const char *dir, Error **errp)
{
    g_autofree char *path = g_build_filename(dir, MANIFEST_FILE, NULL);
    g_autoptr(QDict) d = manifest_to_qdict(m);

    if (!write_json(path, QOBJECT(d), true, errp)) {
        return false;
    }
    chmod(path, 0400);
    return true;
}

QemuBinary *qemu_for_clones(const Manifest *m, const char *qemu,
                            Error **errp)
{
    g_autoptr(QemuBinary) b = qemu_resolve(qemu, errp);

    if (b && strcmp(b->path, m->qemu)) {
        error_setg(errp, "template '%s' was made with QEMU '%s', not with "
                   "'%s'", m->name, m->qemu, b->path);
        error_append_hint(errp, "qemu-template runs the QEMU you choose, "
                          "never the manifest's: pass --qemu '%s' (or set "
                          "QEMU_TEMPLATE_QEMU) if you trust that binary, or "
                          "create the template again.\n", m->qemu);
        return NULL;
    }
    return g_steal_pointer(&b);
}

int manifest_open_state(const Manifest *m, Error **errp)
{
    g_autofree char *self = g_strdup_printf("/proc/self/fd/%d", m->state_fd);
    struct stat want, st;
    /* the file itself, not a path: a new open file description */
    int fd = open(self, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &st) < 0 || fstat(m->state_fd, &want) < 0 ||
        st.st_dev != want.st_dev || st.st_ino != want.st_ino) {
        error_setg_errno(errp, errno, "cannot reopen the state of template "
                         "'%s'", m->name);
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}
