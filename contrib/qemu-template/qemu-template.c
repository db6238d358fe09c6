/*
 * qemu-template: make VM templates and start clones from them
 *
 * A template is a VM booted once and saved into a template directory:
 * its device state, its RAM (a memory file for "bypass", a fixed-ram
 * file for "mapped-ram") and a manifest that says how to start clones.
 * A clone is a new QEMU process that loads the template: it maps the
 * template's memory copy-on-write and starts running at once, with its
 * own VM generation ID and SMBIOS UUID.
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <getopt.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <poll.h>
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/sockets.h"
#include "qemu/uuid.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qlist.h"
#include "qobject/qnum.h"
#include "qobject/qstring.h"

#define MANIFEST_FORMAT 1
#define DIR_PLACEHOLDER "@DIR@"
/* ids of what the tool adds to a command line */
#define ID_PREFIX "qemu-template-"

typedef enum TemplateMode {
    MODE_BYPASS,
    MODE_MAPPED_RAM,
} TemplateMode;

static const char *const mode_names[] = {
    [MODE_BYPASS] = "bypass",
    [MODE_MAPPED_RAM] = "mapped-ram",
};

/* what each mode saves and with which migration capability */
static const char *const mode_capability[] = {
    [MODE_BYPASS] = "bypass-shared-memory",
    [MODE_MAPPED_RAM] = "mapped-ram",
};

static const char *const mode_state_file[] = {
    [MODE_BYPASS] = "state",
    [MODE_MAPPED_RAM] = "template.fixed",
};

#define MEMORY_FILE "memory"
#define MANIFEST_FILE "manifest.json"
#define CLONE_FILE "clone.json"
/* the QEMU binary when neither --qemu nor $QEMU_TEMPLATE_QEMU names one */
#define DEFAULT_QEMU "qemu-system-x86_64"
/* no JSON file the tool reads is larger */
#define MAX_JSON_FILE (4 * 1024 * 1024)

/* the lock file of a template (DIR/locks/NAME): what each byte guards */
#define LOCK_TEMPLATE 0     /* shared: in use; exclusive: made or removed */
#define LOCK_POOL 1         /* exclusive: the template's pool runs */

/* the absolute, resolved tool directory */
static char *top_dir;
/* SIGINT, SIGTERM or SIGHUP while a template is made */
static volatile sig_atomic_t interrupted;
static bool opt_json;
static bool opt_no_pool;
/* --nic NETDEV: a virtio-net NIC with a new MAC, hotplugged into clones */
static GPtrArray *opt_nics;

/* ------------------------------------------------------------------ */
/* small helpers */

static int64_t now_us(void)
{
    return g_get_monotonic_time();
}

static double ms_since(int64_t t0)
{
    return (now_us() - t0) / 1000.0;
}

static bool valid_name(const char *name)
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

static char *template_path(const char *name, const char *file)
{
    return g_build_filename(top_dir, "templates", name, file, NULL);
}

static char *clone_path(const char *id, const char *file)
{
    return g_build_filename(top_dir, "clones", id, file, NULL);
}

/* ------------------------------------------------------------------ */
/* the trust model (docs/devel/qemu-template.rst) */

/*
 * The tool acts on what its files say (the manifest names the arguments
 * QEMU runs with, a clone record the process destroy stops) only if they
 * belong to the user that runs it and no one else can change them.  @st
 * is what lstat() or fstat() said of @path.
 */
static bool check_trusted(const char *path, const struct stat *st,
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
static bool stat_trusted(const char *path, mode_t type, struct stat *st,
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
static bool setup_top_dir(const char *dir, Error **errp)
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
static char *tool_subdir(const char *sub, Error **errp)
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
static int template_lock(const char *name, int what, bool exclusive,
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
static bool template_locked(const char *name, int what)
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
static char *qemu_resolve(const char *qemu, Error **errp)
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
static bool check_peer(int fd, pid_t pid, const char *path, Error **errp)
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
/* arguments */

/* @s as a QemuOpts value: every comma doubled. */
static char *opts_escape(const char *s)
{
    g_auto(GStrv) parts = g_strsplit(s, ",", -1);

    return g_strjoinv(",,", parts);
}

/* @s inside a JSON string. */
static char *json_escape(const char *s)
{
    QString *q = qstring_from_str(s);
    g_autoptr(GString) json = qobject_to_json(QOBJECT(q));

    qobject_unref(q);
    return g_strndup(json->str + 1, json->len - 2);
}

/*
 * QEMU options whose value is an option list (key=value,...: commas in a
 * value are doubled) or, when it starts with '{', JSON.
 */
static const char *const optlist_options[] = {
    "accel", "add-fd", "audiodev", "blockdev", "boot", "chardev",
    "compat", "device", "display", "drive", "fsdev", "fw_cfg", "global",
    "iscsi", "m", "M", "machine", "mon", "msg", "name", "net", "netdev",
    "nic", "numa", "object", "overcommit", "plugin", "rtc", "run-with",
    "sandbox", "set", "smbios", "smp", "spice", "tpmdev", "trace",
    "virtfs", "vnc", NULL
};

/* The name of option @arg ("-opt" or "--opt"), or NULL. */
static const char *option_name(const char *arg)
{
    if (!arg || arg[0] != '-' || !arg[1]) {
        return NULL;
    }
    return arg + (arg[1] == '-' ? 2 : 1);
}

/*
 * Replace every @DIR@ in @arg, the value of option @opt (or NULL), with
 * @dir, escaped as that option's syntax needs.
 */
static char *subst_dir(const char *arg, const char *dir, const char *opt)
{
    g_auto(GStrv) parts = g_strsplit(arg, DIR_PLACEHOLDER, -1);
    g_autofree char *esc = NULL;
    const char *name = option_name(opt);

    if (name && g_strv_contains(optlist_options, name)) {
        esc = arg[0] == '{' ? json_escape(dir) : opts_escape(dir);
    }
    return g_strjoinv(esc ?: dir, parts);
}

/* Remove @path and everything below it (template files are read-only). */
static int rmtree(const char *path)
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

static bool fsync_path(const char *path, Error **errp)
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

static bool write_json(const char *path, QObject *obj, Error **errp)
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
static QDict *read_json_dict(const char *path, Error **errp)
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

/* /proc/PID/smaps_rollup fields in KiB; false when the process is gone */
typedef struct MemUse {
    uint64_t pss, private_kib, shared_kib;
} MemUse;

static bool mem_use(pid_t pid, MemUse *m)
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
static bool process_alive(pid_t pid, const char *needle)
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

/* ------------------------------------------------------------------ */
/* QEMU processes */

typedef struct Vm {
    pid_t pid;
    bool reaped;
    bool resumed;       /* a RESUME event was read */
    int status;
    char *dir;
    char *log;
    char *qmp_path;
    int qmp_fd;
    GString *in;
} Vm;

/*
 * Start @argv with stdout and stderr in @log; @detach puts the process in
 * a session of its own, so it outlives this tool.  Exec failures are
 * reported through a close-on-exec pipe.
 */
static bool vm_spawn(Vm *vm, char **argv, bool detach, Error **errp)
{
    int pfd[2], err = 0, logfd;
    ssize_t n;

    logfd = open(vm->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (logfd < 0) {
        error_setg_errno(errp, errno, "cannot create '%s'", vm->log);
        return false;
    }
    if (!g_unix_open_pipe(pfd, FD_CLOEXEC, NULL)) {
        close(logfd);
        error_setg_errno(errp, errno, "cannot create a pipe");
        return false;
    }
    vm->pid = fork();
    if (vm->pid == 0) {
        int nullfd = open("/dev/null", O_RDONLY);

        if (detach) {
            setsid();
        } else {
            /* the template's QEMU does not outlive a killed tool */
            prctl(PR_SET_PDEATHSIG, SIGKILL);
        }
        dup2(nullfd, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        execvp(argv[0], argv);
        err = errno;
        n = write(pfd[1], &err, sizeof(err));
        _exit(127);
    }
    close(logfd);
    close(pfd[1]);
    if (vm->pid < 0) {
        close(pfd[0]);
        error_setg_errno(errp, errno, "cannot fork");
        return false;
    }
    do {
        n = read(pfd[0], &err, sizeof(err));
    } while (n < 0 && errno == EINTR);
    close(pfd[0]);
    if (n == sizeof(err)) {
        waitpid(vm->pid, NULL, 0);
        vm->reaped = true;
        error_setg_errno(errp, err, "cannot run QEMU '%s'", argv[0]);
        error_append_hint(errp, "Pass the QEMU binary with --qemu PATH.\n");
        return false;
    }
    return true;
}

static bool vm_exited(Vm *vm)
{
    if (!vm->reaped && waitpid(vm->pid, &vm->status, WNOHANG) == vm->pid) {
        vm->reaped = true;
    }
    return vm->reaped;
}

/* The last lines QEMU wrote, for error messages. */
static char *vm_log_tail(Vm *vm)
{
    g_autofree char *text = NULL;
    gsize len = 0;
    const char *start;

    if (!g_file_get_contents(vm->log, &text, &len, NULL) || !len) {
        return g_strdup("(QEMU printed nothing)");
    }
    start = len > 600 ? text + len - 600 : text;
    return g_strstrip(g_strdup(start));
}

static void vm_set_exit_error(Vm *vm, Error **errp)
{
    g_autofree char *tail = vm_log_tail(vm);

    error_setg(errp, "QEMU exited (%s %d): %s",
               WIFSIGNALED(vm->status) ? "signal" : "status",
               WIFSIGNALED(vm->status) ? WTERMSIG(vm->status)
                                       : WEXITSTATUS(vm->status), tail);
}

/* Has @pid exited (gone, or a zombie its parent did not reap yet)? */
static bool pid_gone(pid_t pid)
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

/* Stop a process that may not be our child. */
static void kill_pid(pid_t pid, bool child)
{
    int i;

    if (pid <= 0 || kill(pid, SIGTERM) < 0) {
        return;
    }
    for (i = 0; i < 300; i++) {
        if (child ? waitpid(pid, NULL, WNOHANG) == pid : pid_gone(pid)) {
            return;
        }
        g_usleep(10 * 1000);
    }
    kill(pid, SIGKILL);
    if (child) {
        waitpid(pid, NULL, 0);
    }
}

static void vm_kill(Vm *vm)
{
    if (vm->pid > 0 && !vm_exited(vm)) {
        kill_pid(vm->pid, true);
        vm->reaped = true;
    }
}

static void vm_close(Vm *vm)
{
    if (vm->qmp_fd >= 0) {
        close(vm->qmp_fd);
        vm->qmp_fd = -1;
    }
    if (vm->in) {
        g_string_free(vm->in, true);
        vm->in = NULL;
    }
    g_free(vm->dir);
    g_free(vm->log);
    g_free(vm->qmp_path);
}

static void vm_init(Vm *vm, const char *dir)
{
    memset(vm, 0, sizeof(*vm));
    vm->qmp_fd = -1;
    vm->dir = g_strdup(dir);
    vm->log = g_build_filename(dir, "qemu.log", NULL);
    vm->qmp_path = g_build_filename(dir, "qmp.sock", NULL);
    vm->in = g_string_new("");
}

/* ------------------------------------------------------------------ */
/* QMP client */

/*
 * Read one QMP message (one JSON object per line) before @deadline.
 * A child that dies is reported with its last output.
 */
static QDict *qmp_read_until(Vm *vm, int64_t deadline, bool *timed_out,
                             Error **errp)
{
    for (;;) {
        char *nl = strchr(vm->in->str, '\n');
        struct pollfd pfd = { .fd = vm->qmp_fd, .events = POLLIN };
        char buf[4096];
        ssize_t n;
        int64_t left;

        if (nl) {
            g_autofree char *line = g_strndup(vm->in->str, nl - vm->in->str);
            QObject *obj;

            g_string_erase(vm->in, 0, nl - vm->in->str + 1);
            obj = qobject_from_json(line, NULL);
            if (qobject_to(QDict, obj)) {
                QDict *msg = qobject_to(QDict, obj);

                /* remembered whoever reads it: the guest runs */
                if (!g_strcmp0(qdict_get_try_str(msg, "event"), "RESUME")) {
                    vm->resumed = true;
                }
                return msg;
            }
            qobject_unref(obj);
            continue;
        }
        if (interrupted) {
            error_setg(errp, "interrupted");
            return NULL;
        }
        left = deadline - now_us();
        if (left <= 0) {
            if (timed_out) {
                *timed_out = true;
            } else {
                error_setg(errp, "QEMU did not answer on QMP in time");
            }
            return NULL;
        }
        if (poll(&pfd, 1, MIN(left / 1000 + 1, 100)) < 0 && errno != EINTR) {
            error_setg_errno(errp, errno, "poll on QMP failed");
            return NULL;
        }
        if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR))) {
            if (vm->pid > 0 && vm_exited(vm)) {
                vm_set_exit_error(vm, errp);
                return NULL;
            }
            continue;
        }
        n = read(vm->qmp_fd, buf, sizeof(buf));
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (vm->pid > 0) {
                int i;

                /* give QEMU time to exit, so its error can be shown */
                for (i = 0; i < 200 && !vm_exited(vm); i++) {
                    g_usleep(5 * 1000);
                }
                if (vm_exited(vm)) {
                    vm_set_exit_error(vm, errp);
                    return NULL;
                }
            }
            error_setg(errp, "QMP connection closed by QEMU");
            return NULL;
        }
        g_string_append_len(vm->in, buf, n);
    }
}

static QDict *qmp_read(Vm *vm, int64_t deadline, Error **errp)
{
    return qmp_read_until(vm, deadline, NULL, errp);
}

/* Wait for the QMP event @name (other messages are dropped). */
static bool qmp_wait_event(Vm *vm, const char *name, int64_t deadline,
                           Error **errp)
{
    for (;;) {
        QDict *msg = qmp_read(vm, deadline, errp);
        bool match;

        if (!msg) {
            return false;
        }
        match = !g_strcmp0(qdict_get_try_str(msg, "event"), name);
        qobject_unref(msg);
        if (match) {
            return true;
        }
    }
}

/* Run @cmd with @args (taken); returns its "return" member. */
static QObject *qmp_cmd(Vm *vm, const char *cmd, QDict *args, Error **errp)
{
    QDict *req = qdict_new();
    g_autoptr(GString) json = NULL;
    int64_t deadline = now_us() + 60 * G_USEC_PER_SEC;
    size_t off = 0;

    qdict_put_str(req, "execute", cmd);
    if (args) {
        qdict_put(req, "arguments", args);
    }
    json = qobject_to_json(QOBJECT(req));
    qobject_unref(req);
    g_string_append_c(json, '\n');
    while (off < json->len) {
        ssize_t n = send(vm->qmp_fd, json->str + off, json->len - off,
                         MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            error_setg_errno(errp, errno, "QMP '%s' not sent", cmd);
            return NULL;
        }
        off += n;
    }
    for (;;) {
        QDict *msg = qmp_read(vm, deadline, errp);
        QObject *ret;
        QDict *err;

        if (!msg) {
            return NULL;
        }
        err = qdict_get_qdict(msg, "error");
        if (err) {
            error_setg(errp, "QMP '%s' failed: %s", cmd,
                       qdict_get_try_str(err, "desc") ?: "unknown error");
            qobject_unref(msg);
            return NULL;
        }
        ret = qdict_get(msg, "return");
        if (ret) {
            qobject_ref(ret);
            qobject_unref(msg);
            return ret;
        }
        qobject_unref(msg);         /* an event */
    }
}

static bool qmp_cmd_ok(Vm *vm, const char *cmd, QDict *args, Error **errp)
{
    QObject *ret = qmp_cmd(vm, cmd, args, errp);

    qobject_unref(ret);
    return ret != NULL;
}

/*
 * Connect to the VM's QMP socket, retrying until QEMU listens; the peer
 * must be the QEMU this tool started.
 */
static bool qmp_connect(Vm *vm, int timeout_s, Error **errp)
{
    int64_t deadline = now_us() + timeout_s * G_USEC_PER_SEC;
    struct sockaddr_un sa;
    QDict *greeting;

    if (strlen(vm->qmp_path) >= sizeof(sa.sun_path)) {
        error_setg(errp, "socket path '%s' is too long", vm->qmp_path);
        error_append_hint(errp, "Use a shorter --dir.\n");
        return false;
    }
    for (;;) {
        vm->qmp_fd = unix_connect(vm->qmp_path, NULL);
        if (vm->qmp_fd >= 0) {
            break;
        }
        if (vm->pid > 0 && vm_exited(vm)) {
            vm_set_exit_error(vm, errp);
            return false;
        }
        if (now_us() > deadline) {
            error_setg(errp, "QEMU's QMP socket '%s' did not appear in %d s",
                       vm->qmp_path, timeout_s);
            return false;
        }
        g_usleep(200);
    }
    if (!check_peer(vm->qmp_fd, vm->pid, vm->qmp_path, errp)) {
        return false;
    }
    greeting = qmp_read(vm, deadline, errp);
    if (!greeting) {
        return false;
    }
    qobject_unref(greeting);
    return qmp_cmd_ok(vm, "qmp_capabilities", NULL, errp);
}

static char *qmp_version(Vm *vm, Error **errp)
{
    QObject *ret = qmp_cmd(vm, "query-version", NULL, errp);
    QDict *q, *v;
    char *s = NULL;

    q = qobject_to(QDict, ret);
    v = q ? qdict_get_qdict(q, "qemu") : NULL;
    if (v) {
        s = g_strdup_printf("%" PRId64 ".%" PRId64 ".%" PRId64 "%s",
                            qdict_get_try_int(v, "major", 0),
                            qdict_get_try_int(v, "minor", 0),
                            qdict_get_try_int(v, "micro", 0),
                            qdict_get_try_str(q, "package") ?: "");
    } else if (ret) {
        error_setg(errp, "QEMU's query-version answer is malformed");
    }
    qobject_unref(ret);
    return s;
}

/* Does this QEMU know migration capability @cap? */
static bool qmp_has_capability(Vm *vm, const char *cap, Error **errp)
{
    QObject *ret = qmp_cmd(vm, "query-migrate-capabilities", NULL, errp);
    QList *list = qobject_to(QList, ret);
    QListEntry *e;
    bool found = false;

    QLIST_FOREACH_ENTRY(list, e) {
        QDict *d = qobject_to(QDict, qlist_entry_obj(e));

        if (d && !g_strcmp0(qdict_get_try_str(d, "capability"), cap)) {
            found = true;
        }
    }
    qobject_unref(ret);
    return found;
}

static char *qmp_str_member(Vm *vm, const char *cmd, const char *member,
                            Error **errp)
{
    QObject *ret = qmp_cmd(vm, cmd, NULL, errp);
    QDict *d = qobject_to(QDict, ret);
    char *s = g_strdup(d ? qdict_get_try_str(d, member) : NULL);

    qobject_unref(ret);
    return s;
}

/*
 * The VM's RAM blocks, {name: used bytes}, from "info ramblock": the RAM
 * layout a clone must have.
 */
static QDict *qmp_ram_blocks(Vm *vm, Error **errp)
{
    QDict *args = qdict_new();
    QObject *ret;
    QString *text;
    QDict *blocks;
    g_auto(GStrv) lines = NULL;
    int i;

    qdict_put_str(args, "command-line", "info ramblock");
    ret = qmp_cmd(vm, "human-monitor-command", args, errp);
    text = qobject_to(QString, ret);
    if (!text) {
        if (ret) {
            error_setg(errp, "'info ramblock' answered no text");
        }
        qobject_unref(ret);
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
    qobject_unref(ret);
    return blocks;
}

/* ------------------------------------------------------------------ */
/* command lines */

/* The RAM size of "-m SIZE" or "-m size=SIZE,...", in bytes. */
static bool parse_ram_size(char **args, uint64_t *size, Error **errp)
{
    const char *val = NULL;
    g_autofree char *num = NULL;
    const char *p;
    int i;

    for (i = 0; args[i]; i++) {
        if ((!strcmp(args[i], "-m") || !strcmp(args[i], "--m")) &&
            args[i + 1]) {
            val = args[++i];
        }
    }
    if (!val) {
        error_setg(errp, "bypass mode needs the RAM size: add -m SIZE to "
                   "the QEMU arguments");
        return false;
    }
    p = strstr(val, "size=");
    p = p ? p + 5 : val;
    num = g_strndup(p, strcspn(p, ","));
    if (qemu_strtosz_MiB(num, NULL, size) < 0 || !*size) {
        error_setg(errp, "cannot read the RAM size in '-m %s'", val);
        return false;
    }
    return true;
}

/*
 * Arguments the user may not give: the tool owns the VM's monitor
 * socket, its generation ID device, its UUID, where its state comes from
 * and (bypass) its RAM.  Checked on every use: a manifest's arguments too.
 */
static bool check_user_args(char **args, TemplateMode mode, Error **errp)
{
    /* -readconfig would hide arguments from this check */
    static const char *const owned[] = {
        "incoming", "uuid", "daemonize", "readconfig", NULL
    };
    int i;

    for (i = 0; args && args[i]; i++) {
        const char *a = args[i];
        const char *opt = option_name(a);
        const char *next = args[i + 1] ?: "";
        bool genid = opt && !strcmp(opt, "device") &&
            (g_str_has_prefix(next, "vmgenid") ||
             strstr(next, "driver=vmgenid") || strstr(next, "\"vmgenid\""));

        if ((opt && g_strv_contains(owned, opt)) || genid ||
            strstr(a, "id=" ID_PREFIX) || strstr(a, "\"" ID_PREFIX) ||
            (mode == MODE_BYPASS && (strstr(a, "memory-backend=") ||
                                     strstr(a, "\"memory-backend\"")))) {
            if (genid) {
                a = next;
            }
            error_setg(errp, "the QEMU argument '%s' is managed by "
                       "qemu-template", a);
            error_append_hint(errp, "qemu-template adds -incoming, -uuid, "
                              "the vmgenid device, its QMP monitor and, "
                              "in bypass mode, the RAM backend itself; "
                              "-daemonize and -readconfig are refused.\n");
            return false;
        }
    }
    return true;
}

/* A migration channel for the file @path, as QMP's "channels" takes. */
static QList *file_channels(const char *path)
{
    QDict *addr = qdict_new(), *chan = qdict_new();
    QList *list = qlist_new();

    qdict_put_str(addr, "transport", "file");
    qdict_put_str(addr, "filename", path);
    qdict_put_int(addr, "offset", 0);
    qdict_put_str(chan, "channel-type", "main");
    qdict_put(chan, "addr", addr);
    qlist_append(list, chan);
    return list;
}

/*
 * -incoming for the file @path: the JSON form of a channel, as a file:
 * URI cannot hold every path (",offset=" in it is an option).
 */
static char *incoming_file(const char *path)
{
    QList *list = file_channels(path);
    g_autoptr(GString) json = qobject_to_json(qlist_peek(list));

    qobject_unref(list);
    return g_strdup(json->str);
}

/*
 * The command line of a template (@clone false) or clone: the user's
 * arguments with @DIR@ replaced, then what the tool adds.
 */
static char **build_argv(const char *qemu, char **user, const char *dir,
                         TemplateMode mode, uint64_t ram_size,
                         const char *ram_path, bool clone,
                         const char *incoming, const char *genid,
                         const char *uuid, const char *name)
{
    GPtrArray *a = g_ptr_array_new();
    g_autofree char *qmp = g_build_filename(dir, "qmp.sock", NULL);
    g_autofree char *qmp_esc = opts_escape(qmp);
    g_autofree char *ram_esc = opts_escape(ram_path);
    int i;

    g_ptr_array_add(a, g_strdup(qemu));
    for (i = 0; user[i]; i++) {
        g_ptr_array_add(a, subst_dir(user[i], dir, i ? user[i - 1] : NULL));
    }
    g_ptr_array_add(a, g_strdup("-chardev"));
    g_ptr_array_add(a, g_strdup_printf("socket,id=" ID_PREFIX "qmp,path=%s,"
                                       "server=on,wait=off", qmp_esc));
    g_ptr_array_add(a, g_strdup("-mon"));
    g_ptr_array_add(a, g_strdup("chardev=" ID_PREFIX "qmp,mode=control"));
    g_ptr_array_add(a, g_strdup("-device"));
    g_ptr_array_add(a, g_strdup_printf("vmgenid,id=" ID_PREFIX "genid,"
                                       "guid=%s", genid));
    g_ptr_array_add(a, g_strdup("-uuid"));
    g_ptr_array_add(a, g_strdup(uuid));
    g_ptr_array_add(a, g_strdup("-name"));
    g_ptr_array_add(a, g_strdup(name));
    if (mode == MODE_BYPASS) {
        /*
         * The template shares its RAM file; a clone maps it privately and
         * opens it read-only (the file is read-only once published).
         */
        g_ptr_array_add(a, g_strdup("-object"));
        g_ptr_array_add(a, g_strdup_printf(
            "memory-backend-file,id=" ID_PREFIX "ram,size=%" PRIu64
            ",mem-path=%s,%s", ram_size, ram_esc,
            clone ? "share=off,readonly=on,rom=off" : "share=on"));
        g_ptr_array_add(a, g_strdup("-machine"));
        g_ptr_array_add(a, g_strdup("memory-backend=" ID_PREFIX "ram"));
    } else if (clone) {
        g_ptr_array_add(a, g_strdup("-global"));
        g_ptr_array_add(a, g_strdup("migration.mapped-ram=on"));
        g_ptr_array_add(a, g_strdup("-global"));
        g_ptr_array_add(a, g_strdup("migration.mapped-ram-load=map"));
    }
    if (incoming) {
        g_ptr_array_add(a, g_strdup("-incoming"));
        g_ptr_array_add(a, g_strdup(incoming));
    }
    g_ptr_array_add(a, NULL);
    return (char **)g_ptr_array_free(a, false);
}

static char *new_uuid(void)
{
    QemuUUID u;

    qemu_uuid_generate(&u);
    return qemu_uuid_unparse_strdup(&u);
}

/* ------------------------------------------------------------------ */
/* the manifest */

typedef struct Manifest {
    char *name;
    TemplateMode mode;
    char *qemu;
    char *version;
    char **args;
    uint64_t ram_size;
    QDict *dict;
} Manifest;

static void manifest_free(Manifest *m)
{
    g_free(m->name);
    g_free(m->qemu);
    g_free(m->version);
    g_strfreev(m->args);
    qobject_unref(m->dict);
    g_free(m);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC(Manifest, manifest_free)

/* Files a template's clones need: they must still have the saved sizes. */
static bool manifest_check_files(Manifest *m, const char *dir, Error **errp)
{
    QDict *files = qdict_get_qdict(m->dict, "files");
    const QDictEntry *e;

    if (!files || !qdict_size(files)) {
        error_setg(errp, "template '%s': manifest lists no files", m->name);
        return false;
    }
    for (e = qdict_first(files); e; e = qdict_next(files, e)) {
        g_autofree char *path = g_build_filename(dir, e->key, NULL);
        QNum *size = qobject_to(QNum, e->value);
        int64_t want;
        struct stat st;

        if (!valid_name(e->key) || !size || !qnum_get_try_int(size, &want)) {
            error_setg(errp, "template '%s': manifest entry for file '%s' "
                       "is malformed", m->name, e->key);
            return false;
        }
        if (!stat_trusted(path, S_IFREG, &st, errp)) {
            error_prepend(errp, "template '%s': ", m->name);
            error_append_hint(errp, "The template is damaged: destroy it "
                              "and create it again.\n");
            return false;
        }
        if (st.st_size != want) {
            error_setg(errp, "template '%s': '%s' has %" PRId64 " bytes, "
                       "the manifest says %" PRId64, m->name, path,
                       (int64_t)st.st_size, want);
            error_append_hint(errp, "The template was changed after it was "
                              "made: destroy it and create it again.\n");
            return false;
        }
    }
    return true;
}

static Manifest *manifest_load(const char *name, Error **errp)
{
    g_autofree char *dir = template_path(name, NULL);
    g_autofree char *path = template_path(name, MANIFEST_FILE);
    g_autoptr(Manifest) m = g_new0(Manifest, 1);
    QDict *qemu;
    QList *args;
    QListEntry *e;
    const char *mode;
    size_t i = 0;

    if (!valid_name(name)) {
        error_setg(errp, "'%s' is not a valid template name", name);
        return NULL;
    }
    if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
        error_setg(errp, "no template '%s' in '%s'", name, top_dir);
        error_append_hint(errp, "'qemu-template list' shows the templates; "
                          "--dir or QEMU_TEMPLATE_DIR selects another "
                          "directory.\n");
        return NULL;
    }
    /* what the manifest says runs: it must be the user's own */
    if (!stat_trusted(dir, S_IFDIR, NULL, errp)) {
        return NULL;
    }
    m->dict = read_json_dict(path, errp);
    if (!m->dict) {
        return NULL;
    }
    m->name = g_strdup(name);
    mode = qdict_get_try_str(m->dict, "mode");
    qemu = qdict_get_qdict(m->dict, "qemu");
    args = qdict_get_qlist(m->dict, "args");
    if (qdict_get_try_int(m->dict, "format", -1) != MANIFEST_FORMAT ||
        g_strcmp0(qdict_get_try_str(m->dict, "name"), name) ||
        !mode || !qemu || !args ||
        !qdict_get_try_str(qemu, "path") ||
        !qdict_get_try_str(qemu, "version")) {
        error_setg(errp, "template '%s': manifest '%s' is not a format %d "
                   "manifest for this template", name, path, MANIFEST_FORMAT);
        error_append_hint(errp, "Destroy the template and create it "
                          "again.\n");
        return NULL;
    }
    if (!strcmp(mode, mode_names[MODE_BYPASS])) {
        m->mode = MODE_BYPASS;
    } else if (!strcmp(mode, mode_names[MODE_MAPPED_RAM])) {
        m->mode = MODE_MAPPED_RAM;
    } else {
        error_setg(errp, "template '%s': unknown mode '%s'", name, mode);
        return NULL;
    }
    m->qemu = g_strdup(qdict_get_str(qemu, "path"));
    m->version = g_strdup(qdict_get_str(qemu, "version"));
    m->ram_size = qdict_get_try_int(m->dict, "ram-size", 0);
    if (m->mode == MODE_BYPASS && !m->ram_size) {
        error_setg(errp, "template '%s': manifest has no RAM size", name);
        return NULL;
    }
    m->args = g_new0(char *, qlist_size(args) + 1);
    QLIST_FOREACH_ENTRY(args, e) {
        QString *s = qobject_to(QString, qlist_entry_obj(e));

        if (!s) {
            error_setg(errp, "template '%s': manifest args must be strings",
                       name);
            return NULL;
        }
        m->args[i++] = g_strdup(qstring_get_str(s));
    }
    /* a manifest edited by hand gets no more than create allows */
    if (!check_user_args(m->args, m->mode, errp)) {
        error_prepend(errp, "template '%s': manifest: ", name);
        return NULL;
    }
    if (!manifest_check_files(m, dir, errp)) {
        return NULL;
    }
    return g_steal_pointer(&m);
}

/*
 * Load the manifest of @name under a shared lock of the template, whose
 * descriptor goes to *@lock: no create or destroy of it runs meanwhile.
 */
static Manifest *manifest_load_locked(const char *name, int *lock,
                                      Error **errp)
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

/* ------------------------------------------------------------------ */
/* create */

typedef struct CreateOpts {
    TemplateMode mode;
    const char *qemu;
    const char *ready;
    int timeout;
} CreateOpts;

/*
 * Does a guest agent (qemu-ga) answer guest-ping on the UNIX socket
 * @path within a second?
 */
static bool ga_ping(const char *path)
{
    static const char req[] = "{\"execute\": \"guest-ping\"}\n";
    struct pollfd pfd = { .events = POLLIN };
    char buf[256];
    int64_t deadline = now_us() + G_USEC_PER_SEC;
    g_autoptr(GString) in = g_string_new("");
    bool ok = false;

    pfd.fd = unix_connect(path, NULL);
    if (pfd.fd < 0) {
        return false;
    }
    if (send(pfd.fd, req, sizeof(req) - 1, MSG_NOSIGNAL) < 0) {
        close(pfd.fd);
        return false;
    }
    while (!ok && now_us() < deadline &&
           poll(&pfd, 1, (deadline - now_us()) / 1000 + 1) > 0) {
        ssize_t n = read(pfd.fd, buf, sizeof(buf));

        if (n <= 0) {
            break;
        }
        g_string_append_len(in, buf, n);
        ok = strstr(in->str, "\"return\"") != NULL;
    }
    close(pfd.fd);
    return ok;
}

/* Wait until the template's guest is ready, as --ready says. */
static bool wait_ready(Vm *vm, const char *ready, int timeout, Error **errp)
{
    int64_t deadline = now_us() + (int64_t)timeout * G_USEC_PER_SEC;

    if (g_str_has_prefix(ready, "delay:")) {
        double s = g_ascii_strtod(ready + 6, NULL);
        int64_t until = now_us() + (int64_t)(s * G_USEC_PER_SEC);

        while (now_us() < until) {
            if (vm_exited(vm)) {
                vm_set_exit_error(vm, errp);
                return false;
            }
            if (interrupted) {
                error_setg(errp, "interrupted");
                return false;
            }
            g_usleep(MIN(until - now_us(), 50 * 1000));
        }
        return true;
    }
    if (g_str_has_prefix(ready, "event:")) {
        return qmp_wait_event(vm, ready + 6, deadline, errp);
    }
    if (g_str_has_prefix(ready, "ga:")) {
        /* ga:SOCKET: the guest agent on SOCKET answers guest-ping */
        g_autofree char *path = subst_dir(ready + 3, vm->dir, NULL);

        for (;;) {
            if (ga_ping(path)) {
                return true;
            }
            if (vm_exited(vm)) {
                vm_set_exit_error(vm, errp);
                return false;
            }
            if (interrupted) {
                error_setg(errp, "interrupted");
                return false;
            }
            if (now_us() > deadline) {
                error_setg(errp, "the guest agent on '%s' did not answer "
                           "guest-ping within %d s", path, timeout);
                return false;
            }
            g_usleep(100 * 1000);
        }
    }
    if (g_str_has_prefix(ready, "log:")) {
        /* log:FILE:TEXT: FILE (e.g. a chardev logfile) contains TEXT */
        const char *colon = strchr(ready + 4, ':');
        g_autofree char *file = NULL;

        if (!colon || colon[1] == '\0') {
            error_setg(errp, "--ready log:FILE:TEXT needs a file and a text");
            return false;
        }
        file = g_strndup(ready + 4, colon - ready - 4);
        file = subst_dir(file, vm->dir, NULL);
        for (;;) {
            g_autofree char *text = NULL;

            if (g_file_get_contents(file, &text, NULL, NULL) &&
                strstr(text, colon + 1)) {
                return true;
            }
            if (vm_exited(vm)) {
                vm_set_exit_error(vm, errp);
                return false;
            }
            if (interrupted) {
                error_setg(errp, "interrupted");
                return false;
            }
            if (now_us() > deadline) {
                error_setg(errp, "'%s' did not appear in '%s' within %d s",
                           colon + 1, file, timeout);
                return false;
            }
            g_usleep(20 * 1000);
        }
    }
    error_setg(errp, "unknown --ready '%s'", ready);
    error_append_hint(errp, "Use delay:SECONDS, event:QMP-EVENT, "
                      "log:FILE:TEXT or ga:SOCKET.\n");
    return false;
}

/* Save the VM to the file @path, printing progress. */
static bool save_vm(Vm *vm, const char *path, Error **errp)
{
    QDict *args = qdict_new();
    int64_t last = 0;

    qdict_put(args, "channels", file_channels(path));
    if (!qmp_cmd_ok(vm, "migrate", args, errp)) {
        return false;
    }
    for (;;) {
        QObject *ret = qmp_cmd(vm, "query-migrate", NULL, errp);
        QDict *d = qobject_to(QDict, ret);
        const char *status = d ? qdict_get_try_str(d, "status") : NULL;
        QDict *ram = d ? qdict_get_qdict(d, "ram") : NULL;

        if (!ret) {
            return false;
        }
        if (!g_strcmp0(status, "completed")) {
            qobject_unref(ret);
            return true;
        }
        if (!g_strcmp0(status, "failed") || !g_strcmp0(status, "cancelled")) {
            error_setg(errp, "saving the template failed: %s",
                       qdict_get_try_str(d, "error-desc") ?: status);
            qobject_unref(ret);
            return false;
        }
        if (ram && qdict_get_try_int(ram, "total", 0) && !opt_json &&
            now_us() - last > G_USEC_PER_SEC) {
            last = now_us();
            fprintf(stderr, "qemu-template: saving: %" PRId64 " MiB of %"
                    PRId64 " MiB\n",
                    qdict_get_try_int(ram, "transferred", 0) >> 20,
                    qdict_get_try_int(ram, "total", 0) >> 20);
        }
        qobject_unref(ret);
        g_usleep(2 * 1000);
    }
}

static void progress(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void progress(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "qemu-template: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/*
 * Half-made templates of @name: the caller holds the template's lock, so
 * the create that made them is gone.
 */
static void remove_stale_tmp(const char *templates, const char *name)
{
    g_autofree char *prefix = g_strdup_printf(".%s.tmp-", name);
    GDir *d = g_dir_open(templates, 0, NULL);
    const char *e;

    while (d && (e = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(templates, e, NULL);

        if (g_str_has_prefix(e, prefix)) {
            rmtree(path);
        }
    }
    if (d) {
        g_dir_close(d);
    }
}

static void create_signal(int sig)
{
    interrupted = 1;
}

static bool do_create(const char *name, CreateOpts *o, char **user,
                      Error **errp)
{
    ERRP_GUARD();
    g_autofree char *templates = NULL;
    g_autofree char *final = template_path(name, NULL);
    g_autofree char *tmp = NULL;
    g_autofree char *ram_path = NULL;
    g_autofree char *state = NULL;
    g_autofree char *version = NULL;
    g_autofree char *genid = new_uuid();
    g_autofree char *uuid = new_uuid();
    g_autofree char *qemu = NULL;
    g_auto(GStrv) argv = NULL;
    QDict *man = NULL, *files, *qdq, *ident, *ram_blocks = NULL;
    QList *args;
    uint64_t ram_size = 0;
    int64_t t0, t_boot, t_ready;
    bool ok = false;
    int lock, i;
    Vm vm;

    if (!valid_name(name)) {
        error_setg(errp, "'%s' is not a valid template name (letters, "
                   "digits, '.', '_', '-'; at most 64)", name);
        return false;
    }
    if (!check_user_args(user, o->mode, errp) ||
        (o->mode == MODE_BYPASS && !parse_ram_size(user, &ram_size, errp))) {
        return false;
    }
    if (g_file_test(final, G_FILE_TEST_EXISTS)) {
        error_setg(errp, "template '%s' already exists", name);
        error_append_hint(errp, "Destroy it first, or choose another "
                          "name.\n");
        return false;
    }
    lock = template_lock(name, LOCK_TEMPLATE, true, "in use: another "
                         "qemu-template creates, clones, serves or destroys "
                         "it", errp);
    if (lock < 0) {
        return false;
    }
    templates = tool_subdir("templates", errp);
    if (!templates) {
        goto out_unlock;
    }
    if (g_file_test(final, G_FILE_TEST_EXISTS)) {
        error_setg(errp, "template '%s' already exists", name);
        error_append_hint(errp, "Destroy it first, or choose another "
                          "name.\n");
        goto out_unlock;
    }
    remove_stale_tmp(templates, name);
    /* the absolute path of the binary goes into the manifest */
    qemu = qemu_resolve(o->qemu, errp);
    if (!qemu) {
        goto out_unlock;
    }
    /* built next to the final place, published by one rename */
    tmp = g_strdup_printf("%s/.%s.tmp-%d", templates, name, getpid());
    if (mkdir(tmp, 0700) < 0) {
        error_setg_errno(errp, errno, "cannot create '%s'", tmp);
        goto out_unlock;
    }
    vm_init(&vm, tmp);
    {
        struct sigaction act = { .sa_handler = create_signal };

        sigaction(SIGINT, &act, NULL);
        sigaction(SIGTERM, &act, NULL);
        sigaction(SIGHUP, &act, NULL);
    }
    state = g_build_filename(tmp, mode_state_file[o->mode], NULL);
    ram_path = g_build_filename(tmp, MEMORY_FILE, NULL);
    argv = build_argv(qemu, user, tmp, o->mode, ram_size, ram_path, false,
                      NULL, genid, uuid, name);

    t0 = now_us();
    if (!opt_json) {
        progress("booting template '%s' (%s)", name, mode_names[o->mode]);
    }
    if (!vm_spawn(&vm, argv, false, errp) || !qmp_connect(&vm, 30, errp)) {
        goto out;
    }
    version = qmp_version(&vm, errp);
    if (!version) {
        goto out;
    }
    if (!qmp_has_capability(&vm, mode_capability[o->mode], errp)) {
        error_setg(errp, "QEMU '%s' (%s) lacks the migration capability "
                   "'%s' that mode %s needs", qemu, version,
                   mode_capability[o->mode], mode_names[o->mode]);
        error_append_hint(errp, "Use a QEMU built with the VM templating "
                          "series (--qemu PATH).\n");
        goto out;
    }
    t_boot = now_us();
    if (!wait_ready(&vm, o->ready, o->timeout, errp)) {
        error_prepend(errp, "template '%s' did not get ready: ", name);
        goto out;
    }
    t_ready = now_us();
    if (!opt_json) {
        progress("ready after %.1f s; saving", (t_ready - t0) / 1e6);
    }
    {
        QDict *cap = qdict_new(), *a = qdict_new();
        QList *caps = qlist_new();

        qdict_put_str(cap, "capability", mode_capability[o->mode]);
        qdict_put_bool(cap, "state", true);
        qlist_append(caps, cap);
        qdict_put(a, "capabilities", caps);
        /*
         * No "stop" first: the saved run state is what clones start in,
         * and the migration stops the VM when it completes.
         */
        if (!qmp_cmd_ok(&vm, "migrate-set-capabilities", a, errp)) {
            goto out;
        }
    }
    ram_blocks = qmp_ram_blocks(&vm, errp);
    if (!ram_blocks || !save_vm(&vm, state, errp)) {
        goto out;
    }
    qmp_cmd_ok(&vm, "quit", NULL, NULL);
    for (i = 0; i < 500 && !vm_exited(&vm); i++) {
        g_usleep(10 * 1000);
    }
    vm_kill(&vm);

    man = qdict_new();
    qdict_put_int(man, "format", MANIFEST_FORMAT);
    qdict_put_str(man, "name", name);
    qdict_put_str(man, "mode", mode_names[o->mode]);
    qdq = qdict_new();
    qdict_put_str(qdq, "path", qemu);
    qdict_put_str(qdq, "version", version);
    qdict_put(man, "qemu", qdq);
    args = qlist_new();
    for (i = 0; user[i]; i++) {
        qlist_append_str(args, user[i]);
    }
    qdict_put(man, "args", args);
    if (ram_size) {
        qdict_put_int(man, "ram-size", ram_size);
    }
    qdict_put(man, "ram-blocks", ram_blocks);
    ram_blocks = NULL;
    files = qdict_new();
    for (i = 0; i < 2; i++) {
        const char *f = i ? MEMORY_FILE : mode_state_file[o->mode];
        g_autofree char *p = g_build_filename(tmp, f, NULL);
        struct stat st;

        if (i && o->mode != MODE_BYPASS) {
            break;
        }
        if (stat(p, &st) < 0) {
            error_setg_errno(errp, errno, "saved file '%s' missing", p);
            qobject_unref(files);
            goto out;
        }
        if (!fsync_path(p, errp)) {
            qobject_unref(files);
            goto out;
        }
        /* read-only; never more readable than QEMU made it */
        chmod(p, st.st_mode & 07555);
        qdict_put_int(files, f, st.st_size);
    }
    qdict_put(man, "files", files);
    ident = qdict_new();
    qdict_put_str(ident, "vmgenid", genid);
    qdict_put_str(ident, "uuid", uuid);
    qdict_put(man, "identity", ident);
    {
        g_autoptr(GDateTime) dt = g_date_time_new_now_utc();
        g_autofree char *iso = g_date_time_format_iso8601(dt);
        QDict *times = qdict_new();

        qdict_put_str(man, "created", iso);
        qdict_put_int(times, "qmp-ms", (t_boot - t0) / 1000);
        qdict_put_int(times, "ready-ms", (t_ready - t0) / 1000);
        qdict_put_int(times, "save-ms", (now_us() - t_ready) / 1000);
        qdict_put(man, "times", times);
    }
    {
        g_autofree char *mpath = g_build_filename(tmp, MANIFEST_FILE, NULL);

        if (!write_json(mpath, QOBJECT(man), errp) ||
            !fsync_path(mpath, errp)) {
            goto out;
        }
        chmod(mpath, 0400);
    }
    /* what the template's run left (QMP socket, logs, user sockets) */
    prune_dir(tmp, files);
    if (rename(tmp, final) < 0) {
        error_setg_errno(errp, errno, "cannot publish template '%s'", final);
        goto out;
    }
    chmod(final, 0500);
    fsync_path(templates, NULL);
    ok = true;
    if (opt_json) {
        g_autoptr(GString) j = qobject_to_json_pretty(QOBJECT(man), true);

        printf("%s\n", j->str);
    } else {
        printf("template %s: %s, made in %.1f s (ready after %.1f s)\n",
               name, mode_names[o->mode], ms_since(t0) / 1000,
               (t_ready - t0) / 1e6);
    }

out:
    if (!ok) {
        g_autofree char *tail = vm_log_tail(&vm);

        vm_kill(&vm);
        if (*errp && !strstr(error_get_pretty(*errp), "QEMU exited")) {
            error_append_hint(errp, "QEMU's last output: %s\n", tail);
        }
        rmtree(tmp);
    }
    qobject_unref(man);
    qobject_unref(ram_blocks);
    vm_close(&vm);
out_unlock:
    close(lock);
    return ok;
}

/* ------------------------------------------------------------------ */
/* clone */

/*
 * A clone being started: its process runs, its record is not written yet.
 * A pooled clone (@defer) waits with -incoming defer until it is taken.
 */
typedef struct Clone {
    Vm vm;
    char *id;
    char *genid;
    char *uuid;
    int64_t t_exec;
    int64_t t_qmp;
    bool defer;
    char **nics;        /* netdev ids to give a NIC once the clone runs */
} Clone;

static void clone_free(Clone *c)
{
    vm_close(&c->vm);
    g_free(c->id);
    g_free(c->genid);
    g_free(c->uuid);
    g_strfreev(c->nics);
    g_free(c);
}

/* Stop a clone that was not handed out, and remove its directory. */
static void clone_discard(Clone *c)
{
    g_autofree char *dir = g_strdup(c->vm.dir);

    vm_kill(&c->vm);
    rmtree(dir);
    clone_free(c);
}

#define POOLED_MARK "pooled"

/*
 * The QEMU binary for clones of @m: the user's choice (--qemu @qemu,
 * else the default), which must be the binary that made the template.
 */
static char *qemu_for_clones(Manifest *m, const char *qemu, Error **errp)
{
    g_autofree char *path = qemu_resolve(qemu, errp);

    if (path && strcmp(path, m->qemu)) {
        error_setg(errp, "template '%s' was made with QEMU '%s', not with "
                   "'%s'", m->name, m->qemu, path);
        error_append_hint(errp, "qemu-template runs the QEMU you choose, "
                          "never the manifest's: pass --qemu '%s' (or set "
                          "QEMU_TEMPLATE_QEMU) if you trust that binary, or "
                          "create the template again.\n", m->qemu);
        return NULL;
    }
    return g_steal_pointer(&path);
}

static Clone *clone_spawn(Manifest *m, const char *qemu, char **extra,
                          char **nics, bool defer, Error **errp)
{
    g_autofree char *rnd = new_uuid();
    g_autofree char *tdir = template_path(m->name, NULL);
    g_autofree char *state = g_build_filename(tdir,
                                              mode_state_file[m->mode], NULL);
    g_autofree char *incoming = incoming_file(state);
    g_autofree char *ram = g_build_filename(tdir, MEMORY_FILE, NULL);
    g_autofree char *dir = NULL;
    g_autofree char *clones = NULL;
    g_auto(GStrv) user = NULL;
    g_auto(GStrv) argv = NULL;
    Clone *c = g_new0(Clone, 1);
    int n, i;

    c->id = g_strdup_printf("%s-%.8s", m->name, rnd);
    c->genid = new_uuid();
    c->uuid = new_uuid();
    c->defer = defer;
    c->nics = g_strdupv(nics);
    dir = clone_path(c->id, NULL);
    vm_init(&c->vm, dir);
    clones = tool_subdir("clones", errp);
    if (!clones) {
        clone_free(c);
        return NULL;
    }
    if (mkdir(dir, 0700) < 0) {
        error_setg_errno(errp, errno, "cannot create '%s'", dir);
        clone_free(c);
        return NULL;
    }
    if (defer) {
        g_autofree char *mark = g_build_filename(dir, POOLED_MARK, NULL);

        g_file_set_contents(mark, "", 0, NULL);
    }
    /* the template's arguments, then the per-clone extra ones */
    n = g_strv_length(m->args);
    user = g_new0(char *, n + (extra ? g_strv_length(extra) : 0) + 1);
    for (i = 0; i < n; i++) {
        user[i] = g_strdup(m->args[i]);
    }
    for (i = 0; extra && extra[i]; i++) {
        user[n + i] = g_strdup(extra[i]);
    }
    argv = build_argv(qemu, user, dir, m->mode, m->ram_size, ram, true,
                      defer ? "defer" : incoming, c->genid, c->uuid, c->id);
    c->t_exec = now_us();
    if (!vm_spawn(&c->vm, argv, true, errp)) {
        clone_discard(c);
        return NULL;
    }
    return c;
}

static bool clone_connect(Clone *c, Error **errp)
{
    if (c->vm.qmp_fd >= 0) {
        return true;
    }
    if (!qmp_connect(&c->vm, 30, errp)) {
        return false;
    }
    c->t_qmp = now_us();
    return true;
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

/*
 * Give the running clone a virtio-net NIC with a new MAC on each netdev
 * of c->nics.  A NIC in the template would keep the template's MAC (its
 * migrated state carries it); a NIC added after the clone runs is new to
 * the guest, which reads its MAC when it probes it.
 */
static QList *clone_add_nics(Clone *c, Error **errp)
{
    QList *nics = qlist_new();
    int i;

    for (i = 0; c->nics && c->nics[i]; i++) {
        g_autofree char *mac = new_mac();
        g_autofree char *id = g_strdup_printf(ID_PREFIX "nic%d", i);
        QDict *args = qdict_new();
        QDict *nic;

        qdict_put_str(args, "driver", "virtio-net-pci");
        qdict_put_str(args, "id", id);
        qdict_put_str(args, "netdev", c->nics[i]);
        qdict_put_str(args, "mac", mac);
        if (!qmp_cmd_ok(&c->vm, "device_add", args, errp)) {
            error_prepend(errp, "cannot add a NIC on netdev '%s': ",
                          c->nics[i]);
            qobject_unref(nics);
            return NULL;
        }
        nic = qdict_new();
        qdict_put_str(nic, "id", id);
        qdict_put_str(nic, "netdev", c->nics[i]);
        qdict_put_str(nic, "mac", mac);
        qlist_append(nics, nic);
    }
    return nics;
}

/*
 * Finish a clone of @m: load the state (a pooled clone) and wait until the
 * guest runs, check the QEMU version, write the record.  On failure the
 * clone is discarded.  @t_req is when it was asked for.
 */
static QDict *clone_finish(Manifest *m, Clone *c, int64_t t_req,
                           Error **errp)
{
    ERRP_GUARD();
    g_autofree char *version = NULL;
    g_autofree char *record = NULL;
    QDict *rec = NULL, *ident, *times;

    if (!clone_connect(c, errp)) {
        goto fail;
    }
    if (c->defer) {
        g_autofree char *tdir = template_path(m->name, NULL);
        g_autofree char *mark = g_build_filename(c->vm.dir, POOLED_MARK,
                                                 NULL);
        g_autofree char *state = g_build_filename(tdir,
                                                  mode_state_file[m->mode],
                                                  NULL);
        QDict *args = qdict_new();

        qdict_put(args, "channels", file_channels(state));
        if (!qmp_cmd_ok(&c->vm, "migrate-incoming", args, errp)) {
            goto fail;
        }
        unlink(mark);
    }
    /*
     * Running once the RESUME event comes: polling query-status would wait
     * for the BQL, which a running TCG vCPU holds most of the time.  The
     * status is asked too, in case the event came before QMP connected,
     * and every 20 ms, to see a failed load.
     */
    for (bool ask = !c->defer; !c->vm.resumed; ask = true) {
        g_autofree char *status = NULL;
        bool timed_out = false;
        QDict *msg;

        /* a pooled clone was connected before its load: wait first */
        status = ask ? qmp_str_member(&c->vm, "query-status", "status",
                                      errp) : g_strdup("inmigrate");
        if (!status) {
            goto fail;
        }
        if (!strcmp(status, "running")) {
            break;
        }
        if (strcmp(status, "inmigrate") && strcmp(status, "prelaunch")) {
            g_autofree char *mig = qmp_str_member(&c->vm, "query-migrate",
                                                  "error-desc", NULL);

            error_setg(errp, "clone stopped in state '%s'%s%s", status,
                       mig ? ": " : "", mig ?: "");
            goto fail;
        }
        if (now_us() - t_req > 120 * G_USEC_PER_SEC) {
            error_setg(errp, "clone did not start running in 120 s");
            goto fail;
        }
        msg = qmp_read_until(&c->vm, now_us() + 20 * 1000, &timed_out, errp);
        if (!msg && !timed_out) {
            goto fail;
        }
        qobject_unref(msg);
    }
    times = qdict_new();
    if (c->defer) {
        qdict_put_int(times, "request-us", now_us() - t_req);
    } else {
        qdict_put_int(times, "qmp-us", c->t_qmp - c->t_exec);
        qdict_put_int(times, "running-us", now_us() - c->t_exec);
    }

    rec = qdict_new();
    qdict_put(rec, "times", times);
    {
        int64_t t_nic = now_us();
        QList *nics = clone_add_nics(c, errp);

        if (!nics) {
            goto fail;
        }
        qdict_put(rec, "nics", nics);
        if (c->nics && c->nics[0]) {
            qdict_put_int(times, "nics-us", now_us() - t_nic);
        }
    }
    /* after timing: a template made by another QEMU is refused */
    version = qmp_version(&c->vm, errp);
    if (!version) {
        goto fail;
    }
    if (strcmp(version, m->version)) {
        error_setg(errp, "template '%s' was made by QEMU %s, this QEMU is %s",
                   m->name, m->version, version);
        error_append_hint(errp, "Clone with the QEMU that made the template "
                          "(--qemu %s) or create the template again.\n",
                          m->qemu);
        goto fail;
    }
    {
        g_autoptr(GDateTime) dt = g_date_time_new_now_utc();
        g_autofree char *iso = g_date_time_format_iso8601(dt);

        qdict_put_str(rec, "started", iso);
    }
    qdict_put_str(rec, "id", c->id);
    qdict_put_str(rec, "template", m->name);
    qdict_put_int(rec, "pid", c->vm.pid);
    qdict_put_str(rec, "qmp", c->vm.qmp_path);
    qdict_put_str(rec, "dir", c->vm.dir);
    qdict_put_bool(rec, "pooled", c->defer);
    ident = qdict_new();
    qdict_put_str(ident, "vmgenid", c->genid);
    qdict_put_str(ident, "uuid", c->uuid);
    qdict_put(rec, "identity", ident);
    record = g_build_filename(c->vm.dir, CLONE_FILE, NULL);
    if (!write_json(record, QOBJECT(rec), errp)) {
        goto fail;
    }
    clone_free(c);
    return rec;

fail:
    if (*errp && !strstr(error_get_pretty(*errp), "QEMU exited")) {
        g_autofree char *tail = vm_log_tail(&c->vm);

        error_append_hint(errp, "QEMU's last output: %s\n", tail);
    }
    error_prepend(errp, "clone of '%s' failed: ", m->name);
    qobject_unref(rec);
    clone_discard(c);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* the pool */

/*
 * "qemu-template pool NAME --size N" keeps N clones started with
 * -incoming defer and connected on QMP; a request takes the oldest, loads
 * the state with migrate-incoming, and the pool starts a new one.  It
 * answers on DIR/pools/NAME.sock, one JSON object per line:
 * {"execute": "clone"}, {"execute": "status"}, {"execute": "quit"}.
 */

typedef struct Pool {
    Manifest *m;
    const char *qemu;
    char **extra;
    char **nics;
    int size;
    GQueue clones;
    int served;
    int failed;
    GArray *handed;     /* pids of the clones handed out, to reap */
    char *error;        /* the last failure to start a pooled clone */
} Pool;

typedef struct PoolClient {
    int fd;
    GString *in;
} PoolClient;

static volatile sig_atomic_t pool_stop;

static void pool_signal(int sig)
{
    pool_stop = 1;
}

static char *pool_socket(const char *name)
{
    g_autofree char *file = g_strdup_printf("%s.sock", name);

    return g_build_filename(top_dir, "pools", file, NULL);
}

/*
 * A connection to the pool of @name, or -1 when none runs; a pool that is
 * not this user's process is not one.
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

/* Pooled clones a killed pool left: stop them, remove their directories. */
static void pool_reap_stale(const char *name)
{
    g_autofree char *cdir = g_build_filename(top_dir, "clones", NULL);
    g_autofree char *prefix = g_strdup_printf("%s-", name);
    GDir *d = g_dir_open(cdir, 0, NULL);
    const char *e;

    while (d && (e = g_dir_read_name(d))) {
        g_autofree char *dir = clone_path(e, NULL);
        g_autofree char *mark = clone_path(e, POOLED_MARK);
        GDir *proc;
        const char *pe;

        if (!g_str_has_prefix(e, prefix) ||
            !g_file_test(mark, G_FILE_TEST_EXISTS)) {
            continue;
        }
        proc = g_dir_open("/proc", 0, NULL);
        while (proc && (pe = g_dir_read_name(proc))) {
            if (g_ascii_isdigit(pe[0]) && process_alive(atoi(pe), dir)) {
                kill_pid(atoi(pe), false);
            }
        }
        if (proc) {
            g_dir_close(proc);
        }
        rmtree(dir);
    }
    if (d) {
        g_dir_close(d);
    }
}

static int pool_ready(Pool *p)
{
    GList *l;
    int n = 0;

    for (l = p->clones.head; l; l = l->next) {
        n += ((Clone *)l->data)->vm.qmp_fd >= 0;
    }
    return n;
}

/* Start one pooled clone and wait for its QMP monitor. */
static bool pool_add(Pool *p, Error **errp)
{
    Clone *c = clone_spawn(p->m, p->qemu, p->extra, p->nics, true, errp);

    if (!c) {
        return false;
    }
    if (!clone_connect(c, errp)) {
        clone_discard(c);
        return false;
    }
    g_queue_push_tail(&p->clones, c);
    return true;
}

static QDict *pool_take(Pool *p, Error **errp)
{
    int64_t t_req = now_us();
    Clone *c = g_queue_pop_head(&p->clones);
    QDict *rec;

    if (!c) {
        /* empty: start one now (the request waits for QEMU's start) */
        c = clone_spawn(p->m, p->qemu, p->extra, p->nics, true, errp);
        if (!c) {
            return NULL;
        }
    }
    rec = clone_finish(p->m, c, t_req, errp);
    if (rec) {
        pid_t pid = qdict_get_int(rec, "pid");

        g_array_append_val(p->handed, pid);
        p->served++;
    }
    return rec;
}

/* Reap the clones handed out that exited (they are our children). */
static void pool_reap_handed(Pool *p)
{
    int i;

    for (i = p->handed->len - 1; i >= 0; i--) {
        pid_t pid = g_array_index(p->handed, pid_t, i);
        pid_t r = waitpid(pid, NULL, WNOHANG);

        if (r == pid || (r < 0 && errno == ECHILD)) {
            g_array_remove_index_fast(p->handed, i);
        }
    }
}

static QDict *pool_status(Pool *p)
{
    QDict *st = qdict_new();

    qdict_put_str(st, "template", p->m->name);
    qdict_put_int(st, "pid", getpid());
    qdict_put_int(st, "size", p->size);
    qdict_put_int(st, "ready", pool_ready(p));
    qdict_put_int(st, "served", p->served);
    qdict_put_int(st, "failed", p->failed);
    if (p->error) {
        qdict_put_str(st, "last-error", p->error);
    }
    return st;
}

static void pool_reply(PoolClient *pc, QObject *ret, Error *err)
{
    QDict *msg = qdict_new();
    g_autoptr(GString) json = NULL;
    size_t off = 0;

    if (err) {
        QDict *e = qdict_new();

        qdict_put_str(e, "desc", error_get_pretty(err));
        qdict_put(msg, "error", e);
        error_free(err);
    } else {
        qdict_put_obj(msg, "return", ret);
    }
    json = qobject_to_json(QOBJECT(msg));
    qobject_unref(msg);
    g_string_append_c(json, '\n');
    while (off < json->len) {
        ssize_t n = send(pc->fd, json->str + off, json->len - off,
                         MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        off += n;
    }
}

/* Handle one request line; false when the pool should stop. */
static bool pool_request(Pool *p, PoolClient *pc, const char *line)
{
    QObject *obj = qobject_from_json(line, NULL);
    QDict *req = qobject_to(QDict, obj);
    const char *cmd = req ? qdict_get_try_str(req, "execute") : NULL;
    Error *err = NULL;
    bool go_on = true;

    if (!cmd) {
        error_setg(&err, "expected {\"execute\": COMMAND}");
        pool_reply(pc, NULL, err);
    } else if (!strcmp(cmd, "clone")) {
        QDict *rec = pool_take(p, &err);

        pool_reply(pc, QOBJECT(rec), err);
    } else if (!strcmp(cmd, "status")) {
        pool_reply(pc, QOBJECT(pool_status(p)), NULL);
    } else if (!strcmp(cmd, "quit")) {
        pool_reply(pc, QOBJECT(qdict_new()), NULL);
        go_on = false;
    } else {
        error_setg(&err, "unknown command '%s' (clone, status, quit)", cmd);
        pool_reply(pc, NULL, err);
    }
    qobject_unref(obj);
    return go_on;
}

static void pool_client_free(gpointer data)
{
    PoolClient *pc = data;

    close(pc->fd);
    g_string_free(pc->in, true);
    g_free(pc);
}

/* Read what a client sent; false when it is gone or the pool must stop. */
static bool pool_client_read(Pool *p, PoolClient *pc, bool *stop)
{
    char buf[4096];
    ssize_t n = read(pc->fd, buf, sizeof(buf));
    char *nl;

    if (n <= 0) {
        return n < 0 && errno == EINTR;
    }
    g_string_append_len(pc->in, buf, n);
    while ((nl = strchr(pc->in->str, '\n'))) {
        g_autofree char *line = g_strndup(pc->in->str, nl - pc->in->str);

        g_string_erase(pc->in, 0, nl - pc->in->str + 1);
        if (!pool_request(p, pc, line)) {
            *stop = true;
            return false;
        }
    }
    if (pc->in->len > 65536) {
        return false;
    }
    return true;
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
    return fd;
}

static bool do_pool(const char *name, int size, const char *qemu,
                    char **extra, char **nics, Error **errp)
{
    ERRP_GUARD();
    int lock;
    g_autoptr(Manifest) m = manifest_load_locked(name, &lock, errp);
    g_autofree char *path = NULL;
    g_autofree char *pools = NULL;
    g_autofree char *binary = NULL;
    g_autoptr(GPtrArray) clients = g_ptr_array_new_with_free_func(
        pool_client_free);
    struct sigaction act = { .sa_handler = pool_signal };
    Pool p = { .m = m, .extra = extra, .nics = nics, .size = size };
    bool announced = false, stop = false;
    int lfd, fd;

    if (!m) {
        return false;
    }
    path = pool_socket(name);
    binary = qemu_for_clones(m, qemu, errp);
    if (!binary || !check_user_args(extra, m->mode, errp)) {
        close(lock);
        return false;
    }
    p.qemu = binary;
    if (qemu_lock_fd(lock, LOCK_POOL, 1, true) < 0) {
        error_setg(errp, "a pool of '%s' already runs on '%s'", name, path);
        close(lock);
        return false;
    }
    pools = tool_subdir("pools", errp);
    lfd = pools ? pool_listen(path, errp) : -1;
    if (lfd < 0) {
        close(lock);
        return false;
    }
    pool_reap_stale(name);
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);
    sigaction(SIGHUP, &act, NULL);
    g_queue_init(&p.clones);
    p.handed = g_array_new(false, false, sizeof(pid_t));

    while (!stop && !pool_stop) {
        g_autofree struct pollfd *pfd = g_new0(struct pollfd,
                                               clients->len + 1);
        bool full = (int)g_queue_get_length(&p.clones) >= p.size;
        int i;

        if (full && !announced) {
            printf("pool %s: %d clones ready on %s\n", name, p.size, path);
            fflush(stdout);
            announced = true;
        }
        pfd[0].fd = lfd;
        pfd[0].events = POLLIN;
        for (i = 0; i < clients->len; i++) {
            pfd[i + 1].fd = ((PoolClient *)clients->pdata[i])->fd;
            pfd[i + 1].events = POLLIN;
        }
        pool_reap_handed(&p);
        /* when not full, refill between requests */
        if (poll(pfd, clients->len + 1, full ? 200 : 0) < 0) {
            if (errno == EINTR) {
                continue;
            }
            error_setg_errno(errp, errno, "poll failed");
            break;
        }
        for (i = clients->len - 1; i >= 0; i--) {
            if (pfd[i + 1].revents &&
                !pool_client_read(&p, clients->pdata[i], &stop)) {
                g_ptr_array_remove_index(clients, i);
            }
        }
        if (pfd[0].revents & POLLIN) {
            fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                PoolClient *pc = g_new0(PoolClient, 1);
                Error *err = NULL;

                pc->fd = fd;
                pc->in = g_string_new("");
                if (check_peer(fd, 0, path, &err)) {
                    g_ptr_array_add(clients, pc);
                } else {
                    /* only the pool's user may take its clones */
                    pool_reply(pc, NULL, err);
                    pool_client_free(pc);
                }
            }
        }
        if (!full && !stop) {
            Error *err = NULL;

            if (!pool_add(&p, &err)) {
                /* a template that cannot be cloned: say so and stop */
                p.failed++;
                g_free(p.error);
                p.error = g_strdup(error_get_pretty(err));
                error_propagate(errp, err);
                break;
            }
        }
    }
    while (!g_queue_is_empty(&p.clones)) {
        clone_discard(g_queue_pop_head(&p.clones));
    }
    close(lfd);
    unlink(path);
    close(lock);
    g_array_free(p.handed, true);
    g_free(p.error);
    return !*errp;
}

/*
 * Ask the pool of @name, if one runs, for a clone; NULL with *used false
 * when no pool answers.
 */
static QDict *pool_clone(const char *name, bool *used, Error **errp)
{
    g_autofree char *path = pool_socket(name);
    static const char req[] = "{\"execute\": \"clone\"}\n";
    g_autoptr(GString) in = g_string_new("");
    QObject *obj;
    QDict *msg, *ret;
    char buf[4096];
    Error *err = NULL;
    int fd = pool_connect(name, &err);

    *used = false;
    if (err) {
        error_propagate(errp, err);
        *used = true;
        return NULL;
    }
    if (fd < 0) {
        return NULL;
    }
    *used = true;
    if (send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) < 0) {
        error_setg_errno(errp, errno, "cannot ask the pool '%s'", path);
        close(fd);
        return NULL;
    }
    while (!strchr(in->str, '\n')) {
        ssize_t n = read(fd, buf, sizeof(buf));

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            error_setg(errp, "the pool '%s' closed the connection", path);
            close(fd);
            return NULL;
        }
        g_string_append_len(in, buf, n);
    }
    close(fd);
    obj = qobject_from_json(in->str, NULL);
    msg = qobject_to(QDict, obj);
    ret = msg ? qdict_get_qdict(msg, "return") : NULL;
    if (!ret) {
        QDict *e = msg ? qdict_get_qdict(msg, "error") : NULL;

        error_setg(errp, "pool: %s", e && qdict_get_try_str(e, "desc") ?
                   qdict_get_str(e, "desc") : "malformed answer");
        qobject_unref(obj);
        return NULL;
    }
    qobject_ref(ret);
    qobject_unref(obj);
    return ret;
}

static void clone_print(QDict *c, bool pooled)
{
    QDict *id = qdict_get_qdict(c, "identity");
    QDict *t = qdict_get_qdict(c, "times");
    QListEntry *e;

    printf("%s pid=%" PRId64 " qmp=%s vmgenid=%s uuid=%s %s=%.1fms",
           qdict_get_str(c, "id"), qdict_get_int(c, "pid"),
           qdict_get_str(c, "qmp"), qdict_get_str(id, "vmgenid"),
           qdict_get_str(id, "uuid"),
           pooled ? "request-to-running" : "running",
           qdict_get_try_int(t, pooled ? "request-us" : "running-us",
                             0) / 1000.0);
    QLIST_FOREACH_ENTRY(qdict_get_qlist(c, "nics"), e) {
        QDict *nic = qobject_to(QDict, qlist_entry_obj(e));

        printf(" mac=%s", qdict_get_str(nic, "mac"));
    }
    printf("\n");
    fflush(stdout);
}

/*
 * Clones not taken from a pool are started CLONE_BATCH at a time: the
 * QEMUs of a batch are all spawned, then each is finished in turn, so
 * their start-ups overlap (a clone's "running" time counts from its own
 * exec).
 */
#define CLONE_BATCH 8

/*
 * Start up to @n clones of @m at once into @all; false (with @errp set)
 * when one failed, after stopping the others that were not finished.
 */
static bool clone_batch(Manifest *m, int n, const char *qemu, char **extra,
                        char **nics, QList *all, Error **errp)
{
    Clone *batch[CLONE_BATCH];
    int spawned, j;
    bool ok = true;

    for (spawned = 0; spawned < n; spawned++) {
        batch[spawned] = clone_spawn(m, qemu, extra, nics, false, errp);
        if (!batch[spawned]) {
            ok = false;
            break;
        }
    }
    for (j = 0; j < spawned; j++) {
        QDict *c;

        if (!ok) {
            clone_discard(batch[j]);
            continue;
        }
        c = clone_finish(m, batch[j], batch[j]->t_exec, errp);
        if (!c) {
            ok = false;
            continue;
        }
        if (!opt_json) {
            clone_print(c, false);
        }
        qlist_append(all, c);
    }
    return ok;
}

static bool do_clone(const char *name, int count, const char *qemu,
                     char **extra, char **nics, bool no_pool, Error **errp)
{
    int lock;
    g_autoptr(Manifest) m = manifest_load_locked(name, &lock, errp);
    g_autofree char *binary = NULL;
    QList *all;
    int done = 0;
    bool ok = true;

    if (!m) {
        return false;
    }
    binary = qemu_for_clones(m, qemu, errp);
    if (!binary || !check_user_args(extra, m->mode, errp)) {
        close(lock);
        return false;
    }
    all = qlist_new();
    while (ok && done < count) {
        bool pooled = false;

        /* a pool's clones were started with the pool's options */
        if (!no_pool && !extra[0] && !nics[0]) {
            QDict *c = pool_clone(name, &pooled, errp);

            if (pooled) {
                ok = c != NULL;
                if (c && !opt_json) {
                    clone_print(c, true);
                }
                if (c) {
                    qlist_append(all, c);
                    done++;
                }
                continue;
            }
        }
        ok = clone_batch(m, MIN(CLONE_BATCH, count - done), binary,
                         extra, nics, all, errp);
        done = qlist_size(all);
    }
    if (opt_json) {
        g_autoptr(GString) j = qobject_to_json_pretty(QOBJECT(all), true);

        printf("%s\n", j->str);
    }
    qobject_unref(all);
    close(lock);
    return ok;
}

/* ------------------------------------------------------------------ */
/* list, status, destroy */

/* The clone records under DIR/clones, live or not. */
static QList *load_clones(const char *template)
{
    g_autofree char *cdir = g_build_filename(top_dir, "clones", NULL);
    GDir *d = g_dir_open(cdir, 0, NULL);
    QList *list = qlist_new();
    const char *e;

    while (d && (e = g_dir_read_name(d))) {
        g_autofree char *path = clone_path(e, CLONE_FILE);
        QDict *c = read_json_dict(path, NULL);
        MemUse mu;
        pid_t pid;
        bool alive;

        if (!c || g_strcmp0(qdict_get_try_str(c, "id"), e) ||
            (template &&
             g_strcmp0(qdict_get_try_str(c, "template"), template))) {
            qobject_unref(c);
            continue;
        }
        pid = qdict_get_try_int(c, "pid", 0);
        alive = process_alive(pid, qdict_get_str(c, "dir"));
        qdict_put_bool(c, "running", alive);
        if (alive && mem_use(pid, &mu)) {
            QDict *mem = qdict_new();

            qdict_put_int(mem, "pss-kib", mu.pss);
            qdict_put_int(mem, "private-kib", mu.private_kib);
            qdict_put_int(mem, "shared-kib", mu.shared_kib);
            qdict_put(c, "memory", mem);
        }
        qlist_append(list, c);
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
        n += qdict_get_bool(qobject_to(QDict, qlist_entry_obj(e)), "running");
    }
    return n;
}

static bool do_list(const char *only)
{
    g_autofree char *tdir = g_build_filename(top_dir, "templates", NULL);
    GDir *d = g_dir_open(tdir, 0, NULL);
    QList *out = qlist_new();
    const char *e;

    while (d && (e = g_dir_read_name(d))) {
        Error *err = NULL;
        Manifest *m;
        QDict *t;
        QList *clones;

        if (e[0] == '.' || (only && strcmp(e, only))) {
            continue;
        }
        t = qdict_new();
        qdict_put_str(t, "name", e);
        m = manifest_load(e, &err);
        if (m) {
            qdict_put_str(t, "mode", mode_names[m->mode]);
            qdict_put_str(t, "created",
                          qdict_get_try_str(m->dict, "created") ?: "");
            qdict_put_str(t, "qemu", m->version);
            manifest_free(m);
        } else {
            qdict_put_str(t, "error", error_get_pretty(err));
            error_free(err);
        }
        clones = load_clones(e);
        qdict_put_int(t, "running-clones", count_running(clones));
        qdict_put(t, "clones", clones);
        qlist_append(out, t);
    }
    if (d) {
        g_dir_close(d);
    }
    if (opt_json) {
        g_autoptr(GString) j = qobject_to_json_pretty(QOBJECT(out), true);

        printf("%s\n", j->str);
    } else {
        QListEntry *te, *ce;

        QLIST_FOREACH_ENTRY(out, te) {
            QDict *t = qobject_to(QDict, qlist_entry_obj(te));

            if (qdict_haskey(t, "error")) {
                printf("%s  BROKEN: %s\n", qdict_get_str(t, "name"),
                       qdict_get_str(t, "error"));
            } else {
                printf("%s  %s  QEMU %s  created %s  %" PRId64
                       " running clones\n", qdict_get_str(t, "name"),
                       qdict_get_str(t, "mode"), qdict_get_str(t, "qemu"),
                       qdict_get_str(t, "created"),
                       qdict_get_int(t, "running-clones"));
            }
            QLIST_FOREACH_ENTRY(qdict_get_qlist(t, "clones"), ce) {
                QDict *c = qobject_to(QDict, qlist_entry_obj(ce));
                QDict *mem = qdict_get_qdict(c, "memory");

                printf("  %s pid=%" PRId64 " %s", qdict_get_str(c, "id"),
                       qdict_get_int(c, "pid"),
                       qdict_get_bool(c, "running") ? "running" : "gone");
                if (mem) {
                    printf(" pss=%.1fMiB private=%.1fMiB shared=%.1fMiB",
                           qdict_get_int(mem, "pss-kib") / 1024.0,
                           qdict_get_int(mem, "private-kib") / 1024.0,
                           qdict_get_int(mem, "shared-kib") / 1024.0);
                }
                printf("\n");
            }
        }
    }
    qobject_unref(out);
    return true;
}

/* Processes other than recorded clones that map a file of @dir. */
static GString *mappers_of(const char *dir)
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

static bool destroy_clone(const char *id, Error **errp)
{
    g_autofree char *path = clone_path(id, CLONE_FILE);
    g_autofree char *dir = clone_path(id, NULL);
    QDict *c;
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
    c = read_json_dict(path, NULL);
    pid = c ? qdict_get_try_int(c, "pid", 0) : 0;
    if (pid && process_alive(pid, dir)) {
        kill_pid(pid, false);
    }
    qobject_unref(c);
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
    g_autoptr(GString) others = NULL;
    QList *clones;
    QListEntry *e;
    bool ok = true;

    clones = load_clones(name);
    if (count_running(clones)) {
        error_setg(errp, "template '%s' has %d running clones", name,
                   count_running(clones));
        error_append_hint(errp, "Destroy them first:");
        QLIST_FOREACH_ENTRY(clones, e) {
            QDict *c = qobject_to(QDict, qlist_entry_obj(e));

            if (qdict_get_bool(c, "running")) {
                error_append_hint(errp, " %s", qdict_get_str(c, "id"));
            }
        }
        error_append_hint(errp, "\n");
        qobject_unref(clones);
        return false;
    }
    others = mappers_of(tdir);
    if (others->len) {
        error_setg(errp, "template '%s' is mapped by processes%s", name,
                   others->str);
        error_append_hint(errp, "Stop them first.\n");
        qobject_unref(clones);
        return false;
    }
    /* records of clones that are gone */
    QLIST_FOREACH_ENTRY(clones, e) {
        QDict *c = qobject_to(QDict, qlist_entry_obj(e));

        ok &= destroy_clone(qdict_get_str(c, "id"), errp);
        if (!ok) {
            break;
        }
    }
    qobject_unref(clones);
    if (ok && rmtree(tdir) < 0) {
        error_setg(errp, "cannot remove '%s'", tdir);
        ok = false;
    }
    return ok;
}

static bool do_destroy(const char *name, Error **errp)
{
    g_autofree char *tdir = template_path(name, NULL);
    bool ok;
    int lock;

    if (!valid_name(name) || !g_file_test(tdir, G_FILE_TEST_IS_DIR)) {
        return destroy_clone(name, errp);
    }
    if (template_locked(name, LOCK_POOL)) {
        error_setg(errp, "a pool of template '%s' runs", name);
        error_append_hint(errp, "Stop it first (SIGTERM, or a \"quit\" "
                          "request on its socket).\n");
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

/* ------------------------------------------------------------------ */
/* main */

static void usage(FILE *f)
{
    fprintf(f,
"Usage: qemu-template [--dir DIR] [--json] COMMAND ...\n"
"\n"
"Make VM templates and start clones from them.\n"
"\n"
"  create NAME [--mode bypass|mapped-ram] [--qemu PATH]\n"
"              [--ready delay:S|event:NAME|log:FILE:TEXT|ga:SOCKET]\n"
"              [--timeout S]\n"
"              -- QEMU-ARGS...\n"
"        Boot a VM, wait until it is ready, save it as template NAME.\n"
"  clone NAME [--count N] [--no-pool] [--nic NETDEV]... [--qemu PATH]\n"
"             [-- EXTRA-QEMU-ARGS...]\n"
"        Start N clones of NAME (from its pool when one runs); print\n"
"        their pid, QMP socket, identity and time to running.\n"
"  pool NAME [--size N] [--nic NETDEV]... [--qemu PATH]\n"
"            [-- EXTRA-QEMU-ARGS...]\n"
"        Keep N clones of NAME started and waiting for their state;\n"
"        serve clone requests on DIR/pools/NAME.sock.  Runs until\n"
"        SIGTERM or a \"quit\" request.\n"
"  list | status [NAME]\n"
"        Templates, their clones and the clones' memory.\n"
"  destroy NAME|CLONE\n"
"        Stop a clone and remove it, or remove a template that has no\n"
"        running clones.\n"
"\n"
"--nic NETDEV gives each clone, once it runs, a virtio-net NIC with a new\n"
"MAC address on NETDEV (a -netdev of the extra arguments).\n"
"In QEMU-ARGS, @DIR@ stands for the directory of each VM (the template\n"
"while it is made, then each clone): put sockets and logs there.\n"
"The template directory is --dir, else $QEMU_TEMPLATE_DIR, else\n"
"$XDG_DATA_HOME/qemu-template.  The QEMU binary is --qemu, else\n"
"$QEMU_TEMPLATE_QEMU, else qemu-system-x86_64 from $PATH; clone and pool\n"
"refuse a template made by another binary.\n"
"See docs/tools/qemu-template.rst.\n");
}

/* One command line option; returns an exit code, or -1 to go on. */
static int handle_option(int c, CreateOpts *co, const char **qemu,
                         const char **dir, int *count)
{
    switch (c) {
    case 'h':
        usage(stdout);
        return 0;
    case 'd':
        *dir = optarg;
        break;
    case 'j':
        opt_json = true;
        break;
    case 'm':
        if (!strcmp(optarg, "bypass")) {
            co->mode = MODE_BYPASS;
        } else if (!strcmp(optarg, "mapped-ram")) {
            co->mode = MODE_MAPPED_RAM;
        } else {
            error_report("--mode must be bypass or mapped-ram");
            return 2;
        }
        break;
    case 'q':
        co->qemu = *qemu = optarg;
        break;
    case 'r':
        co->ready = optarg;
        break;
    case 't':
        co->timeout = atoi(optarg);
        break;
    case 'n':
    case 's':
        *count = atoi(optarg);
        if (*count < 1) {
            error_report("--%s must be at least 1",
                         c == 'n' ? "count" : "size");
            return 2;
        }
        break;
    case 'P':
        opt_no_pool = true;
        break;
    case 'N':
        g_ptr_array_insert(opt_nics, opt_nics->len - 1, g_strdup(optarg));
        break;
    default:
        usage(stderr);
        return 2;
    }
    return -1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "dir", required_argument, NULL, 'd' },
        { "json", no_argument, NULL, 'j' },
        { "mode", required_argument, NULL, 'm' },
        { "qemu", required_argument, NULL, 'q' },
        { "ready", required_argument, NULL, 'r' },
        { "timeout", required_argument, NULL, 't' },
        { "count", required_argument, NULL, 'n' },
        { "size", required_argument, NULL, 's' },
        { "no-pool", no_argument, NULL, 'P' },
        { "nic", required_argument, NULL, 'N' },
        { NULL, 0, NULL, 0 }
    };
    CreateOpts co = {
        .mode = MODE_BYPASS,
        .ready = "delay:0",
        .timeout = 300,
    };
    g_autofree char *default_dir = NULL;
    const char *qemu = NULL, *dir = NULL, *cmd, *name = NULL;
    Error *err = NULL;
    int count = 1, c;
    bool ok;

    error_init(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    /* kept NULL-terminated: passed on as a string vector */
    opt_nics = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(opt_nics, NULL);
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        int r = handle_option(c, &co, &qemu, &dir, &count);

        if (r >= 0) {
            return r;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    cmd = argv[optind++];
    if (optind < argc && strcmp(argv[optind], "--")) {
        name = argv[optind++];
    }
    /*
     * The rest: options, then "--" and the QEMU arguments.  getopt starts
     * again (optind 0) on what follows, the last word read acting as
     * argv[0].
     */
    argc -= optind - 1;
    argv += optind - 1;
    optind = 0;
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        int r = handle_option(c, &co, &qemu, &dir, &count);

        if (r >= 0) {
            return r;
        }
    }
    if (!dir) {
        dir = g_getenv("QEMU_TEMPLATE_DIR");
    }
    if (!dir) {
        default_dir = g_build_filename(g_get_user_data_dir(),
                                       "qemu-template", NULL);
        dir = default_dir;
    }
    /* what the tool and its QEMUs create is the user's alone */
    umask(umask(0) | 077);
    if (!setup_top_dir(dir, &err)) {
        error_report_err(err);
        return 1;
    }

    if (!strcmp(cmd, "create")) {
        if (!name) {
            error_report("create needs a template name");
            return 2;
        }
        ok = do_create(name, &co, argv + optind, &err);
    } else if (!strcmp(cmd, "clone")) {
        if (!name) {
            error_report("clone needs a template name");
            return 2;
        }
        ok = do_clone(name, count, qemu, argv + optind,
                      (char **)opt_nics->pdata, opt_no_pool, &err);
    } else if (!strcmp(cmd, "pool")) {
        if (!name) {
            error_report("pool needs a template name");
            return 2;
        }
        ok = do_pool(name, count, qemu, argv + optind,
                     (char **)opt_nics->pdata, &err);
    } else if (!strcmp(cmd, "list") || !strcmp(cmd, "status")) {
        ok = do_list(name);
    } else if (!strcmp(cmd, "destroy")) {
        if (!name) {
            error_report("destroy needs a template or clone name");
            return 2;
        }
        ok = do_destroy(name, &err);
    } else if (!strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    } else {
        error_report("unknown command '%s'", cmd);
        usage(stderr);
        return 2;
    }
    if (!ok) {
        error_report_err(err);
        return 1;
    }
    return 0;
}
