/*
 * qemu-template: paths, files, the trust model, locks and processes
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/socket.h>
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/uuid.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qstring.h"
#include "qemu-template.h"

/* no JSON file the tool reads is larger */
#define MAX_JSON_FILE (4 * 1024 * 1024)

const char *const mode_names[MODE__MAX] = {
    [MODE_BYPASS] = "bypass",
    [MODE_MAPPED_RAM] = "mapped-ram",
};

const char *const mode_capability[MODE__MAX] = {
    [MODE_BYPASS] = "bypass-shared-memory",
    [MODE_MAPPED_RAM] = "mapped-ram",
};

const char *const mode_state_file[MODE__MAX] = {
    [MODE_BYPASS] = "state",
    [MODE_MAPPED_RAM] = "template.fixed",
};

char *top_dir;
bool opt_json;

int64_t now_us(void)
{
    return g_get_monotonic_time();
}

bool valid_name(const char *name)
{
    size_t i, n = strlen(name);

    if (n == 0 || n > 64 || name[0] == '.' || name[0] == '-') {
        return false;
    }
    for (i = 0; i < n; i++) {
        if (!g_ascii_isalnum(name[i]) && !strchr("._-", name[i])) {
            return false;
        }
    }
    return true;
}

char *template_path(const char *name, const char *file)
{
    return g_build_filename(top_dir, "templates", name, file, NULL);
}

char *clone_path(const char *id, const char *file)
{
    return g_build_filename(top_dir, "clones", id, file, NULL);
}

char *new_uuid(void)
{
    QemuUUID u;

    qemu_uuid_generate(&u);
    return qemu_uuid_unparse_strdup(&u);
}

char *iso_now(void)
{
    g_autoptr(GDateTime) dt = g_date_time_new_now_utc();

    return g_date_time_format_iso8601(dt);
}

/* A line of progress on stderr (not with --json). */
void progress(const char *fmt, ...)
{
    va_list ap;

    if (opt_json) {
        return;
    }
    va_start(ap, fmt);
    fprintf(stderr, "qemu-template: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void print_json(QObject *obj)
{
    g_autoptr(GString) j = qobject_to_json_pretty(obj, true);

    printf("%s\n", j->str);
    fflush(stdout);
}

static gboolean interrupt_signal(gpointer opaque)
{
    Interrupt *in = opaque;

    in->flag = true;
    if (in->loop) {
        g_main_loop_quit(in->loop);
    }
    return G_SOURCE_CONTINUE;
}

void interrupt_catch(Interrupt *in, GMainLoop *loop)
{
    static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
    int i;

    in->flag = false;
    in->loop = loop;
    for (i = 0; i < ARRAY_SIZE(sigs); i++) {
        in->src[i] = g_unix_signal_add(sigs[i], interrupt_signal, in);
    }
}

void interrupt_release(Interrupt *in)
{
    int i;

    for (i = 0; i < ARRAY_SIZE(in->src); i++) {
        g_source_remove(in->src[i]);
    }
}

/* ------------------------------------------------------------------ */
/* the trust model (docs/devel/qemu-template.rst) */

/*
 * The tool acts on what its files say (the manifest names the arguments
 * QEMU runs with, a clone record the process destroy stops) only if they
 * belong to the user that runs it and no one else can change them.  @st
 * is what lstat() or fstat() said of @path.
 */
bool check_trusted(const char *path, const struct stat *st,
                          Error **errp)
{
    if (st->st_uid != geteuid()) {
        error_setg(errp, "'%s' is owned by uid %u, not by uid %u that runs "
                   "qemu-template", path, (unsigned)st->st_uid,
                   (unsigned)geteuid());
        error_append_hint(errp, "qemu-template uses only its own user's "
                          "files; use a --dir of your own.\n");
        return false;
    }
    if (st->st_mode & (S_IWGRP | S_IWOTH)) {
        error_setg(errp, "'%s' is writable by %s", path,
                   st->st_mode & S_IWOTH ? "other users" : "its group");
        error_append_hint(errp, "qemu-template uses only files that no one "
                          "else can change: chmod go-w '%s'.\n", path);
        return false;
    }
    return true;
}

/* lstat() @path: a trusted file of type @type (S_IFREG or S_IFDIR)? */
bool stat_trusted(const char *path, mode_t type, struct stat *st,
                         Error **errp)
{
    struct stat buf;

    st = st ?: &buf;
    if (lstat(path, st) < 0) {
        error_setg_errno(errp, errno, "cannot use '%s'", path);
        return false;
    }
    if ((st->st_mode & S_IFMT) != type) {
        error_setg(errp, "'%s' is not a %s", path,
                   type == S_IFDIR ? "directory" : "regular file");
        return false;
    }
    return check_trusted(path, st, errp);
}

/*
 * The directories above the tool's directory belong to root or to the
 * user, and no one else may write them unless they are sticky (/tmp):
 * else someone else could replace the tool's directory.
 */
static bool check_ancestors(const char *dir, Error **errp)
{
    g_autofree char *p = g_path_get_dirname(dir);

    for (;;) {
        struct stat st;
        char *up;

        if (stat(p, &st) < 0) {
            error_setg_errno(errp, errno, "cannot use '%s'", p);
            return false;
        }
        if ((st.st_uid && st.st_uid != geteuid()) ||
            ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))) {
            error_setg(errp, "'%s', above the template directory '%s', can "
                       "be changed by other users", p, dir);
            error_append_hint(errp, "Choose a --dir below directories that "
                              "only you and root can change.\n");
            return false;
        }
        if (!strcmp(p, "/")) {
            return true;
        }
        up = g_path_get_dirname(p);
        g_free(p);
        p = up;
    }
}

/* Make @dir the tool's directory: created 0700, resolved, trusted. */
bool setup_top_dir(const char *dir, Error **errp)
{
    char *real;

    if (g_mkdir_with_parents(dir, 0700) < 0) {
        error_setg_errno(errp, errno, "cannot create '%s'", dir);
        return false;
    }
    /* absolute and without symlinks, as /proc/PID/maps shows paths */
    real = realpath(dir, NULL);
    if (!real) {
        error_setg_errno(errp, errno, "cannot resolve '%s'", dir);
        return false;
    }
    top_dir = g_strdup(real);
    free(real);
    return check_ancestors(top_dir, errp) &&
           stat_trusted(top_dir, S_IFDIR, NULL, errp);
}

/* DIR/@sub, created 0700 if missing; NULL if it cannot be trusted. */
char *tool_subdir(const char *sub, Error **errp)
{
    g_autofree char *path = g_build_filename(top_dir, sub, NULL);

    if (mkdir(path, 0700) < 0 && errno != EEXIST) {
        error_setg_errno(errp, errno, "cannot create '%s'", path);
        return NULL;
    }
    if (!stat_trusted(path, S_IFDIR, NULL, errp)) {
        return NULL;
    }
    return g_steal_pointer(&path);
}

/*
 * Lock byte @what (LOCK_TEMPLATE, LOCK_POOL) of template @name's lock
 * file, DIR/locks/NAME; returns the file's descriptor, or -1 with the
 * error "template NAME is @busy" when another qemu-template holds a lock
 * in the way.
 * The lock goes with the descriptor; it is never waited for.
 */
int template_lock(const char *name, int what, bool exclusive,
                         const char *busy, Error **errp)
{
    g_autofree char *dir = tool_subdir("locks", errp);
    g_autofree char *path = NULL;
    struct stat st;
    int fd, r;

    if (!dir) {
        return -1;
    }
    if (!valid_name(name)) {
        error_setg(errp, "'%s' is not a valid template name", name);
        return -1;
    }
    path = g_build_filename(dir, name, NULL);
    fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot open the lock file '%s'", path);
        return -1;
    }
    if (fstat(fd, &st) < 0 || !check_trusted(path, &st, errp)) {
        close(fd);
        return -1;
    }
    r = qemu_lock_fd(fd, what, 1, exclusive);
    if (r < 0) {
        close(fd);
        if (r == -EAGAIN || r == -EACCES) {
            error_setg(errp, "template '%s' is %s", name, busy);
        } else {
            error_setg_errno(errp, -r, "cannot lock '%s'", path);
        }
        return -1;
    }
    return fd;
}

/* Does another qemu-template hold byte @what of @name's lock file? */
bool template_locked(const char *name, int what)
{
    g_autofree char *path = g_build_filename(top_dir, "locks", name, NULL);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    bool locked;

    if (fd < 0) {
        return false;
    }
    locked = qemu_lock_fd_test(fd, what, 1, true) < 0;
    close(fd);
    return locked;
}

/*
 * The QEMU binary the user chose: --qemu, else $QEMU_TEMPLATE_QEMU,
 * else qemu-system-x86_64 from $PATH; resolved, and a file of root or
 * the user that no one else can change.  Never the manifest's.
 */
char *qemu_resolve(const char *qemu, Error **errp)
{
    g_autofree char *found = NULL;
    g_autofree char *path = NULL;
    char *real;
    struct stat st;

    qemu = qemu ?: g_getenv("QEMU_TEMPLATE_QEMU") ?: DEFAULT_QEMU;
    found = g_find_program_in_path(qemu);
    real = found ? realpath(found, NULL) : NULL;
    if (!real) {
        error_setg(errp, "QEMU binary '%s' not found", qemu);
        error_append_hint(errp, "Pass the QEMU binary with --qemu PATH or "
                          "$QEMU_TEMPLATE_QEMU.\n");
        return NULL;
    }
    path = g_strdup(real);
    free(real);
    if (stat(path, &st) < 0) {
        error_setg_errno(errp, errno, "cannot use '%s'", path);
        return NULL;
    }
    if ((st.st_uid && st.st_uid != geteuid()) ||
        (st.st_mode & (S_IWGRP | S_IWOTH))) {
        error_setg(errp, "QEMU binary '%s' can be changed by other users",
                   path);
        error_append_hint(errp, "qemu-template runs only binaries of root "
                          "or of its user that no one else can write.\n");
        return NULL;
    }
    return g_steal_pointer(&path);
}

/* Is the peer of the UNIX socket @fd this user (and process @pid)? */
bool check_peer(int fd, pid_t pid, const char *path, Error **errp)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        error_setg_errno(errp, errno, "cannot identify the peer on '%s'",
                         path);
        return false;
    }
    if (cred.uid != geteuid() || (pid > 0 && cred.pid != pid)) {
        error_setg(errp, "the peer on '%s' is process %d of uid %u, not %s",
                   path, (int)cred.pid, (unsigned)cred.uid,
                   pid > 0 ? "the QEMU qemu-template started"
                           : "a process of this user");
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* files */

/* The text of @path, a trusted regular file of at most MAX_JSON_FILE. */
static char *read_trusted(const char *path, Error **errp)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    g_autofree char *text = NULL;
    struct stat st;
    size_t len = 0;

    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot read '%s'", path);
        return NULL;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        st.st_size > MAX_JSON_FILE) {
        error_setg(errp, "'%s' is not a regular file of at most %d bytes",
                   path, MAX_JSON_FILE);
        goto out;
    }
    if (!check_trusted(path, &st, errp)) {
        goto out;
    }
    text = g_malloc(st.st_size + 1);
    while (len < st.st_size) {
        ssize_t n = read(fd, text + len, st.st_size - len);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            error_setg_errno(errp, errno, "cannot read '%s'", path);
            g_clear_pointer(&text, g_free);
            goto out;
        }
        if (n == 0) {
            break;
        }
        len += n;
    }
    text[len] = '\0';
out:
    close(fd);
    return g_steal_pointer(&text);
}

/* The JSON object in @path, a trusted file. */
QDict *read_json_dict(const char *path, Error **errp)
{
    g_autofree char *text = read_trusted(path, errp);
    Error *err = NULL;
    QObject *obj;
    QDict *dict;

    if (!text) {
        return NULL;
    }
    obj = qobject_from_json(text, &err);
    if (!obj) {
        if (!err) {
            error_setg(&err, "it is empty");
        }
        error_propagate_prepend(errp, err, "'%s' is not valid JSON: ", path);
        return NULL;
    }
    dict = qobject_to(QDict, obj);
    if (!dict) {
        qobject_unref(obj);
        error_setg(errp, "'%s' is not a JSON object", path);
    }
    return dict;
}

bool write_json(const char *path, QObject *obj, Error **errp)
{
    g_autoptr(GString) json = qobject_to_json_pretty(obj, true);
    g_autoptr(GError) gerr = NULL;

    g_string_append_c(json, '\n');
    /* g_file_set_contents writes a temporary file and renames it */
    if (!g_file_set_contents(path, json->str, json->len, &gerr)) {
        error_setg(errp, "cannot write '%s': %s", path, gerr->message);
        return false;
    }
    return true;
}

bool fsync_path(const char *path, Error **errp)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fsync(fd) < 0) {
        error_setg_errno(errp, errno, "cannot sync '%s'", path);
        if (fd >= 0) {
            close(fd);
        }
        return false;
    }
    close(fd);
    return true;
}

/* Remove @path and everything below it (template files are read-only). */
int rmtree(const char *path)
{
    struct stat st;
    int ret = 0;

    if (lstat(path, &st) < 0) {
        return errno == ENOENT ? 0 : -errno;
    }
    if (S_ISDIR(st.st_mode)) {
        GDir *d;
        const char *e;

        chmod(path, 0700);
        d = g_dir_open(path, 0, NULL);
        while (d && (e = g_dir_read_name(d))) {
            g_autofree char *sub = g_build_filename(path, e, NULL);
            int r = rmtree(sub);

            ret = ret ? ret : r;
        }
        if (d) {
            g_dir_close(d);
        }
        if (rmdir(path) < 0 && !ret) {
            ret = -errno;
        }
    } else if (unlink(path) < 0) {
        ret = -errno;
    }
    return ret;
}

/* ------------------------------------------------------------------ */
/* processes */

bool mem_use(pid_t pid, MemUse *m)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/smaps_rollup", pid);
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    int i;

    memset(m, 0, sizeof(*m));
    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return false;
    }
    lines = g_strsplit(text, "\n", -1);
    for (i = 0; lines[i]; i++) {
        unsigned long long v;

        if (sscanf(lines[i], "Pss: %llu kB", &v) == 1) {
            m->pss = v;
        } else if (sscanf(lines[i], "Private_Clean: %llu kB", &v) == 1 ||
                   sscanf(lines[i], "Private_Dirty: %llu kB", &v) == 1) {
            m->private_kib += v;
        } else if (sscanf(lines[i], "Shared_Clean: %llu kB", &v) == 1 ||
                   sscanf(lines[i], "Shared_Dirty: %llu kB", &v) == 1) {
            m->shared_kib += v;
        }
    }
    return true;
}

/* Is @pid a live process whose command line mentions @needle? */
bool process_alive(pid_t pid, const char *needle)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/cmdline", pid);
    g_autofree char *cmd = NULL;
    gsize len, i;

    if (pid <= 0 || !g_file_get_contents(path, &cmd, &len, NULL) || !len) {
        return false;
    }
    for (i = 0; i + 1 < len; i++) {
        if (!cmd[i]) {
            cmd[i] = ' ';
        }
    }
    return strstr(cmd, needle) != NULL;
}

/* Has @pid exited (gone, or a zombie its parent did not reap yet)? */
bool pid_gone(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", pid);
    g_autofree char *stat = NULL;
    const char *p;

    if (kill(pid, 0) < 0 || !g_file_get_contents(path, &stat, NULL, NULL)) {
        return true;
    }
    p = strrchr(stat, ')');
    return p && p[1] == ' ' && p[2] == 'Z';
}

/* Processes other than recorded clones that map a file of @dir. */
GString *mappers_of(const char *dir)
{
    GDir *proc = g_dir_open("/proc", 0, NULL);
    GString *pids = g_string_new("");
    const char *e;

    while (proc && (e = g_dir_read_name(proc))) {
        g_autofree char *maps = NULL;
        g_autofree char *path = NULL;
        g_autofree char *needle = g_strdup_printf(" %s/", dir);

        if (!g_ascii_isdigit(e[0])) {
            continue;
        }
        path = g_strdup_printf("/proc/%s/maps", e);
        if (g_file_get_contents(path, &maps, NULL, NULL) &&
            strstr(maps, needle)) {
            g_string_append_printf(pids, " %s", e);
        }
    }
    if (proc) {
        g_dir_close(proc);
    }
    return pids;
}

/* A live process whose command line mentions @needle, or 0. */
pid_t find_process(const char *needle)
{
    GDir *proc = g_dir_open("/proc", 0, NULL);
    const char *e;
    pid_t found = 0;

    while (proc && !found && (e = g_dir_read_name(proc))) {
        int pid;

        if (!qemu_strtoi(e, NULL, 10, &pid) && pid != getpid() &&
            process_alive(pid, needle) && !pid_gone(pid)) {
            found = pid;
        }
    }
    if (proc) {
        g_dir_close(proc);
    }
    return found;
}

/*
 * Stop @pid: SIGTERM, then SIGKILL if it did not exit in 3 s.  A child
 * of this tool counts as gone once it is a zombie (its child watch reaps
 * it).
 */
void kill_pid(pid_t pid)
{
    int i;

    if (pid <= 0 || kill(pid, SIGTERM) < 0) {
        return;
    }
    for (i = 0; i < 300 && !pid_gone(pid); i++) {
        g_usleep(10 * 1000);
    }
    if (!pid_gone(pid)) {
        kill(pid, SIGKILL);
        for (i = 0; i < 100 && !pid_gone(pid); i++) {
            g_usleep(10 * 1000);
        }
    }
}
