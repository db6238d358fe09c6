/*
 * qemu-template: paths, files, the trust model, locks and output
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/socket.h>
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
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
bool top_dir_missing;
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

/* where error_vprintf() prints while set (see qemu-template.c) */
GString *error_capture;

/* The hint of @err (its error_append_hint() text), or NULL. */
char *error_hint(const Error *err)
{
    g_autofree char *head = g_strdup_printf("%s\n", error_get_pretty(err));
    g_autoptr(GString) out = g_string_new("");
    const char *p;

    error_capture = out;
    error_report_err(error_copy(err));
    error_capture = NULL;
    p = strstr(out->str, head);
    p = p ? p + strlen(head) : "";
    return *p ? g_strdup(p) : NULL;
}

/*
 * Report @err on stderr; with --json also as a JSON object on stdout,
 * with its hint and @result (what the command made anyway).
 */
void tool_report_error(Error *err, QObject *result)
{
    if (opt_json) {
        QDict *out = qdict_new(), *e = qdict_new();
        g_autofree char *hint = error_hint(err);

        qdict_put_str(e, "desc", error_get_pretty(err));
        if (hint) {
            qdict_put_str(e, "hint", hint);
        }
        qdict_put(out, "error", e);
        if (result) {
            qdict_put_obj(out, "result", qobject_ref(result));
        }
        print_json(QOBJECT(out));
        qobject_unref(out);
    }
    error_report_err(err);
}

/*
 * @text (a guest's or QEMU's output) fit for a terminal: valid UTF-8,
 * every control character but newline and tab written as \xNN or \uNNNN,
 * so that no escape sequence reaches the user's terminal.
 */
char *sanitize_text(const char *text)
{
    g_autofree char *valid = g_utf8_make_valid(text, -1);
    GString *out = g_string_sized_new(strlen(valid));
    const char *p;

    for (p = valid; *p; p = g_utf8_next_char(p)) {
        gunichar c = g_utf8_get_char(p);

        if (c == '\n' || c == '\t' || !g_unichar_iscntrl(c)) {
            g_string_append_unichar(out, c);
        } else if (c < 0x80) {
            g_string_append_printf(out, "\\x%02x", c);
        } else {
            g_string_append_printf(out, "\\u%04x", c);
        }
    }
    return g_string_free(out, false);
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
/* descriptors the tool was started with */

static GArray *inherited_fds;

void fds_note_inherited(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;

    inherited_fds = g_array_new(false, false, sizeof(int));
    while (d && (e = readdir(d))) {
        int fd;

        if (!qemu_strtoi(e->d_name, NULL, 10, &fd) && fd > 2 &&
            fd != dirfd(d)) {
            g_array_append_val(inherited_fds, fd);
        }
    }
    if (d) {
        closedir(d);
    }
}

void fds_close_inherited(void)
{
    guint i;

    for (i = 0; inherited_fds && i < inherited_fds->len; i++) {
        close(g_array_index(inherited_fds, int, i));
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
bool check_trusted(const char *path, const struct stat *st, Error **errp)
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

static bool check_type(const char *path, const struct stat *st, mode_t type,
                       Error **errp)
{
    if ((st->st_mode & S_IFMT) != type) {
        error_setg(errp, "'%s' is not a %s", path,
                   type == S_IFDIR ? "directory" : "regular file");
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
    return check_type(path, st, type, errp) && check_trusted(path, st, errp);
}

/*
 * Open @name in the directory @dirfd without following a symlink, and
 * check that it is of @type and trusted; @path names it in errors.
 * Files are opened read-only and non-blocking (a FIFO does not hang).
 */
int openat_trusted(int dirfd, const char *name, const char *path,
                   mode_t type, struct stat *st, Error **errp)
{
    int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC;
    struct stat buf;
    int fd;

    st = st ?: &buf;
    flags |= type == S_IFDIR ? O_DIRECTORY : O_NONBLOCK;
    fd = openat(dirfd, name, flags);
    if (fd < 0) {
        error_setg_errno(errp, errno == ELOOP ? EMLINK : errno,
                         "cannot use '%s'", path);
        if (errno == ELOOP) {
            error_append_hint(errp, "qemu-template does not follow "
                              "symbolic links in its directory.\n");
        }
        return -1;
    }
    if (fstat(fd, st) < 0) {
        error_setg_errno(errp, errno, "cannot use '%s'", path);
    } else if (check_type(path, st, type, errp) &&
               check_trusted(path, st, errp)) {
        return fd;
    }
    close(fd);
    return -1;
}

/*
 * A directory that only root and the user can change the entries of:
 * theirs, and writable by no one else unless sticky (like /tmp, where
 * others can add entries but not replace the user's).
 */
static bool safe_dir(const struct stat *st)
{
    return (!st->st_uid || st->st_uid == geteuid()) &&
           (!(st->st_mode & (S_IWGRP | S_IWOTH)) || (st->st_mode & S_ISVTX));
}

/*
 * Every directory above @path (absolute, without symlinks) is safe:
 * else someone else could replace @path.  @what names @path in errors.
 */
bool check_ancestors(const char *path, const char *what, Error **errp)
{
    g_autofree char *p = g_path_get_dirname(path);

    for (;;) {
        struct stat st;
        char *up;

        if (lstat(p, &st) < 0) {
            error_setg_errno(errp, errno, "cannot use '%s'", p);
            return false;
        }
        if (!S_ISDIR(st.st_mode) || !safe_dir(&st)) {
            error_setg(errp, "'%s', above %s '%s', can be changed by other "
                       "users", p, what, path);
            error_append_hint(errp, "qemu-template uses only paths below "
                              "directories that only you and root can "
                              "change.\n");
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

/*
 * The path the user gave, before it is resolved: every directory it
 * goes through is safe, and every symbolic link on the way belongs to
 * root or the user; else another user could choose where it leads.
 * Components that do not exist yet are not looked at.
 */
static bool check_given_path(const char *path, Error **errp)
{
    g_auto(GStrv) parts = g_strsplit(path, "/", -1);
    g_autoptr(GString) p = g_string_new("/");
    int i;

    for (i = 0; parts[i]; i++) {
        struct stat dir, st;

        if (!parts[i][0]) {
            continue;
        }
        if (stat(p->str, &dir) < 0) {
            return true;    /* the rest is made by mkdir, or fails */
        }
        if (!safe_dir(&dir)) {
            error_setg(errp, "'%s', on the way to the directory '%s', can "
                       "be changed by other users", p->str, path);
            error_append_hint(errp, "Choose a --dir below directories that "
                              "only you and root can change.\n");
            return false;
        }
        g_string_append_printf(p, "%s%s", p->len > 1 ? "/" : "", parts[i]);
        if (lstat(p->str, &st) < 0) {
            return true;
        }
        if (S_ISLNK(st.st_mode) && st.st_uid && st.st_uid != geteuid()) {
            error_setg(errp, "'%s', on the way to the directory '%s', is a "
                       "symbolic link of uid %u", p->str, path,
                       (unsigned)st.st_uid);
            error_append_hint(errp, "Choose a --dir without other users' "
                              "symbolic links.\n");
            return false;
        }
    }
    return true;
}

/*
 * Make @dir the tool's directory: the path checked as given, created
 * 0700 when @create (else a missing directory sets top_dir_missing),
 * resolved, and trusted with everything above it.
 */
bool setup_top_dir(const char *dir, bool create, Error **errp)
{
    g_autofree char *abs = g_canonicalize_filename(dir, NULL);
    char *real;

    if (!check_given_path(abs, errp)) {
        return false;
    }
    if (!create && !g_file_test(abs, G_FILE_TEST_EXISTS)) {
        top_dir = g_steal_pointer(&abs);
        top_dir_missing = true;
        return true;
    }
    if (create && g_mkdir_with_parents(abs, 0700) < 0) {
        error_setg_errno(errp, errno, "cannot create '%s'", abs);
        return false;
    }
    /* absolute and without symlinks, as /proc/PID/maps shows paths */
    real = realpath(abs, NULL);
    if (!real) {
        error_setg_errno(errp, errno, "cannot resolve '%s'", abs);
        return false;
    }
    top_dir = g_strdup(real);
    free(real);
    return check_ancestors(top_dir, "the template directory", errp) &&
           stat_trusted(top_dir, S_IFDIR, NULL, errp);
}

/*
 * DIR/@sub (DIR itself if @sub is NULL) opened and checked, created 0700
 * first if @create; -1 with @errp, or -1 and ENOENT with @errp unset if
 * it does not exist and may not be created.
 */
int tool_dir_open(const char *sub, bool create, Error **errp)
{
    g_autofree char *path = NULL;
    int top, fd;

    if (top_dir_missing) {
        errno = ENOENT;
        return -1;
    }
    top = openat_trusted(AT_FDCWD, top_dir, top_dir, S_IFDIR, NULL, errp);
    if (top < 0 || !sub) {
        return top;
    }
    path = g_build_filename(top_dir, sub, NULL);
    if (create && mkdirat(top, sub, 0700) < 0 && errno != EEXIST) {
        error_setg_errno(errp, errno, "cannot create '%s'", path);
        close(top);
        return -1;
    }
    if (!create && faccessat(top, sub, F_OK, AT_SYMLINK_NOFOLLOW) < 0 &&
        errno == ENOENT) {
        close(top);
        errno = ENOENT;
        return -1;
    }
    fd = openat_trusted(top, sub, path, S_IFDIR, NULL, errp);
    close(top);
    return fd;
}

/* DIR/@sub, created 0700 if missing; NULL if it cannot be trusted. */
char *tool_subdir(const char *sub, Error **errp)
{
    int fd = tool_dir_open(sub, true, errp);

    if (fd < 0) {
        return NULL;
    }
    close(fd);
    return g_build_filename(top_dir, sub, NULL);
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
    g_autofree char *path = NULL;
    struct stat st;
    int dir, fd, r;

    if (!valid_name(name)) {
        error_setg(errp, "'%s' is not a valid template name", name);
        return -1;
    }
    dir = tool_dir_open("locks", true, errp);
    if (dir < 0) {
        return -1;
    }
    path = g_build_filename(top_dir, "locks", name, NULL);
    fd = openat(dir, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    close(dir);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot open the lock file '%s'", path);
        return -1;
    }
    if (fstat(fd, &st) < 0 || !check_type(path, &st, S_IFREG, errp) ||
        !check_trusted(path, &st, errp)) {
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
    int dir = tool_dir_open("locks", false, NULL);
    int fd = dir < 0 ? -1 : openat(dir, name, O_RDONLY | O_NOFOLLOW |
                                   O_CLOEXEC | O_NONBLOCK);
    bool locked;

    if (dir >= 0) {
        close(dir);
    }
    if (fd < 0) {
        return false;
    }
    locked = qemu_lock_fd_test(fd, what, 1, true) < 0;
    close(fd);
    return locked;
}

/* ------------------------------------------------------------------ */
/* the QEMU binary */

void qemu_binary_free(QemuBinary *b)
{
    if (b) {
        if (b->fd >= 0) {
            close(b->fd);
        }
        g_free(b->path);
        g_free(b);
    }
}

/*
 * The QEMU binary the user chose: --qemu, else $QEMU_TEMPLATE_QEMU,
 * else qemu-system-x86_64 from $PATH; resolved, a file of root or the
 * user that no one else can write, in directories no one else can
 * change.  Never the manifest's.  It is opened once: what runs later is
 * the file checked here, whatever happens to the path.
 */
QemuBinary *qemu_resolve(const char *qemu, Error **errp)
{
    g_autofree char *found = NULL;
    g_autoptr(QemuBinary) b = g_new0(QemuBinary, 1);
    struct stat st, now;
    char *real;

    b->fd = -1;
    qemu = qemu ?: g_getenv("QEMU_TEMPLATE_QEMU") ?: DEFAULT_QEMU;
    found = g_find_program_in_path(qemu);
    real = found ? realpath(found, NULL) : NULL;
    if (!real) {
        error_setg(errp, "QEMU binary '%s' not found", qemu);
        error_append_hint(errp, "Pass the QEMU binary with --qemu PATH or "
                          "$QEMU_TEMPLATE_QEMU.\n");
        return NULL;
    }
    b->path = g_strdup(real);
    free(real);
    b->fd = open(b->path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (b->fd < 0 || fstat(b->fd, &st) < 0) {
        error_setg_errno(errp, errno, "cannot use '%s'", b->path);
        return NULL;
    }
    if (!check_ancestors(b->path, "the QEMU binary", errp)) {
        return NULL;
    }
    if (!S_ISREG(st.st_mode) || (st.st_uid && st.st_uid != geteuid()) ||
        (st.st_mode & (S_IWGRP | S_IWOTH))) {
        error_setg(errp, "QEMU binary '%s' can be changed by other users",
                   b->path);
        error_append_hint(errp, "qemu-template runs only binaries of root "
                          "or of its user that no one else can write.\n");
        return NULL;
    }
    /* the path still names the file opened: the manifest records it */
    if (lstat(b->path, &now) < 0 || now.st_dev != st.st_dev ||
        now.st_ino != st.st_ino) {
        error_setg(errp, "QEMU binary '%s' changed while it was checked",
                   b->path);
        return NULL;
    }
    return g_steal_pointer(&b);
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
/* pidfiles */

/*
 * Write this process's pid to @path and keep it locked: its directory
 * and those above are safe, the file is opened without following a
 * symlink, and an existing one must be the user's, with no other link.
 * Returns the descriptor to give pidfile_remove().
 */
int pidfile_write(const char *path, Error **errp)
{
    g_autofree char *abs = g_canonicalize_filename(path, NULL);
    g_autofree char *pid = g_strdup_printf("%d\n", (int)getpid());
    struct stat st;
    int fd;

    if (!check_ancestors(abs, "the pidfile", errp)) {
        return -1;
    }
    fd = open(abs, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
              0644);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot open the pidfile '%s'", abs);
        return -1;
    }
    if (fstat(fd, &st) < 0 || !check_type(abs, &st, S_IFREG, errp) ||
        st.st_uid != geteuid() || st.st_nlink != 1) {
        error_setg(errp, "the pidfile '%s' is not a file of this user "
                   "alone", abs);
    } else if (qemu_lock_fd(fd, 0, 0, true) < 0) {
        error_setg(errp, "the pidfile '%s' is locked by another process",
                   abs);
    } else if (ftruncate(fd, 0) < 0 ||
               qemu_write_full(fd, pid, strlen(pid)) != strlen(pid)) {
        error_setg_errno(errp, errno, "cannot write the pidfile '%s'", abs);
    } else {
        return fd;
    }
    close(fd);
    return -1;
}

/* Remove the pidfile written on @fd, if @path is still that file. */
void pidfile_remove(const char *path, int fd)
{
    g_autofree char *abs = g_canonicalize_filename(path, NULL);
    struct stat mine, now;

    if (fstat(fd, &mine) == 0 && lstat(abs, &now) == 0 &&
        mine.st_dev == now.st_dev && mine.st_ino == now.st_ino) {
        unlink(abs);
    }
    close(fd);
}

/* ------------------------------------------------------------------ */
/* files */

/* The text of @name in @dirfd, a trusted file of at most MAX_JSON_FILE. */
static char *read_trusted_at(int dirfd, const char *name, const char *path,
                             Error **errp)
{
    struct stat st;
    int fd = openat_trusted(dirfd, name, path, S_IFREG, &st, errp);
    g_autofree char *text = NULL;
    ssize_t n = 0;
    off_t len;

    if (fd < 0) {
        return NULL;
    }
    if (st.st_size > MAX_JSON_FILE) {
        error_setg(errp, "'%s' is larger than %d bytes", path, MAX_JSON_FILE);
        close(fd);
        return NULL;
    }
    text = g_malloc(st.st_size + 1);
    len = 0;
    while (len < st.st_size) {
        n = read(fd, text + len, st.st_size - len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        len += n;
    }
    if (n < 0) {
        error_setg_errno(errp, errno, "cannot read '%s'", path);
        g_clear_pointer(&text, g_free);
    } else {
        text[len] = '\0';
    }
    close(fd);
    return g_steal_pointer(&text);
}

/* The JSON object in @name of @dirfd, a trusted file. */
QDict *read_json_dict_at(int dirfd, const char *name, const char *path,
                         Error **errp)
{
    g_autofree char *text = read_trusted_at(dirfd, name, path, errp);
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

/* The JSON object in @path, a trusted file. */
QDict *read_json_dict(const char *path, Error **errp)
{
    return read_json_dict_at(AT_FDCWD, path, path, errp);
}

/* @len bytes of @data as @path: a new file renamed over it, not synced. */
static bool replace_file(const char *path, const char *data, size_t len,
                         Error **errp)
{
    g_autofree char *tmp = g_strdup_printf("%s.XXXXXX", path);
    int fd = g_mkstemp_full(tmp, O_WRONLY | O_CLOEXEC, 0600);
    bool ok;

    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot write '%s'", path);
        return false;
    }
    ok = qemu_write_full(fd, data, len) == len;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) < 0) {
        error_setg_errno(errp, errno, "cannot write '%s'", path);
        unlink(tmp);
        return false;
    }
    return true;
}

/*
 * Write @obj as @path through a temporary file and a rename; synced when
 * @durable (a template's manifest), else not (records of processes,
 * which a crash of the machine makes moot anyway; an fsync costs a pool
 * milliseconds per clone).
 */
bool write_json(const char *path, QObject *obj, bool durable, Error **errp)
{
    g_autoptr(GString) json = qobject_to_json_pretty(obj, true);
    g_autoptr(GError) gerr = NULL;

    g_string_append_c(json, '\n');
    if (!durable) {
        return replace_file(path, json->str, json->len, errp);
    }
    if (!g_file_set_contents_full(path, json->str, json->len,
                                  G_FILE_SET_CONTENTS_CONSISTENT |
                                  G_FILE_SET_CONTENTS_DURABLE, 0600,
                                  &gerr)) {
        error_setg(errp, "cannot write '%s': %s", path, gerr->message);
        return false;
    }
    return true;
}

bool fsync_path(const char *path, Error **errp)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);

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

/*
 * Remove @name in @dirfd and everything below it.  Every step goes
 * through a descriptor of the directory it is in and never follows a
 * symbolic link, so a directory swapped for a link while it is removed
 * leads nowhere else; a directory of another user is not entered.
 * Template files are read-only: a directory is made writable first.
 */
int rmtree_at(int parent, const char *name)
{
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
                    O_CLOEXEC);
    struct dirent *e;
    struct stat st;
    DIR *d;
    int ret = 0;

    if (fd < 0) {
        if (errno == ENOTDIR || errno == ELOOP) {
            return unlinkat(parent, name, 0) < 0 ? -errno : 0;
        }
        return errno == ENOENT ? 0 : -errno;
    }
    if (fstat(fd, &st) < 0 || st.st_uid != geteuid()) {
        close(fd);
        return -EPERM;
    }
    fchmod(fd, 0700);
    d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            int r = rmtree_at(dirfd(d), e->d_name);

            ret = ret ?: r;
        }
    }
    closedir(d);
    if (unlinkat(parent, name, AT_REMOVEDIR) < 0 && !ret) {
        ret = -errno;
    }
    return ret;
}

/* Remove @path and everything below it (see rmtree_at()). */
int rmtree(const char *path)
{
    g_autofree char *parent = g_path_get_dirname(path);
    g_autofree char *base = g_path_get_basename(path);
    int dir = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int ret;

    if (dir < 0) {
        return errno == ENOENT ? 0 : -errno;
    }
    ret = rmtree_at(dir, base);
    close(dir);
    return ret;
}
