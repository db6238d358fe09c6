/*
 * qemu-template: other processes: which one a clone record names,
 * stopping them, their memory, who maps a template
 *
 * A pid read from a record is believed only for a live process of this
 * user that started when the record says and whose command line holds
 * the clone's own "-uuid UUID"; a process is signalled through a pidfd
 * opened before it is checked, so a pid reused meanwhile is not hit.
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <poll.h>
#include <sys/syscall.h>
#include "qemu/cutils.h"
#include "qemu-template.h"

/* SIGTERM, then SIGKILL once this passed, then give up after as long */
#define STOP_GRACE_MS 3000
#define KILL_WAIT_MS 1000

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

/* The fields of /proc/@pid/stat after the command name, or NULL. */
static char *proc_stat_fields(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", pid);
    g_autofree char *text = NULL;
    const char *p;

    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return NULL;
    }
    /* the command name may hold anything, but ends with the last ')' */
    p = strrchr(text, ')');
    return p && p[1] == ' ' ? g_strdup(p + 2) : NULL;
}

/* Has @pid exited (gone, or a zombie its parent did not reap yet)? */
bool pid_gone(pid_t pid)
{
    g_autofree char *f = pid > 0 ? proc_stat_fields(pid) : NULL;

    return !f || f[0] == 'Z' || f[0] == 'X';
}

/* When @pid started: field 22 of /proc/PID/stat, in ticks since boot. */
bool proc_start_time(pid_t pid, uint64_t *start)
{
    g_autofree char *f = proc_stat_fields(pid);
    g_auto(GStrv) v = f ? g_strsplit(f, " ", 21) : NULL;

    /* fields 3 to 21 come first */
    return v && g_strv_length(v) == 21 &&
           !qemu_strtou64(v[19], NULL, 10, start);
}

/* Do the real and effective uid of @pid equal this process's euid? */
static bool proc_is_mine(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/status", pid);
    g_autofree char *text = NULL;
    const char *uid;
    unsigned real, eff;

    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return false;
    }
    uid = strstr(text, "\nUid:");
    return uid && sscanf(uid, "\nUid: %u %u", &real, &eff) == 2 &&
           real == geteuid() && eff == geteuid();
}

/* Does the command line of @pid hold the words @opt @val in a row? */
static bool proc_has_args(pid_t pid, const char *opt, const char *val)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/cmdline", pid);
    g_autofree char *cmd = NULL;
    const char *prev = NULL, *p;
    gsize len;

    if (!g_file_get_contents(path, &cmd, &len, NULL) || !len ||
        cmd[len - 1]) {
        return false;
    }
    for (p = cmd; p < cmd + len; p += strlen(p) + 1) {
        if (prev && !strcmp(prev, opt) && !strcmp(p, val)) {
            return true;
        }
        prev = p;
    }
    return false;
}

/* Is @pid the live process @r describes? */
static bool proc_matches(const ProcRef *r, pid_t pid)
{
    uint64_t start;

    return pid > 0 && pid != getpid() && !pid_gone(pid) &&
           proc_is_mine(pid) &&
           (!r->start || (proc_start_time(pid, &start) &&
                          start == r->start)) &&
           proc_has_args(pid, r->opt, r->val);
}

/* The process @r describes (its pid, else the one found), or 0. */
pid_t proc_find(const ProcRef *r)
{
    GDir *proc;
    const char *e;
    pid_t found = 0;

    if (r->pid > 0) {
        return proc_matches(r, r->pid) ? r->pid : 0;
    }
    proc = g_dir_open("/proc", 0, NULL);
    while (proc && !found && (e = g_dir_read_name(proc))) {
        int pid;

        if (!qemu_strtoi(e, NULL, 10, &pid) && proc_matches(r, pid)) {
            found = pid;
        }
    }
    if (proc) {
        g_dir_close(proc);
    }
    return found;
}

static int pidfd_open_(pid_t pid)
{
#ifdef SYS_pidfd_open
    return syscall(SYS_pidfd_open, pid, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}

static int pidfd_signal(int pidfd, int sig)
{
#ifdef SYS_pidfd_send_signal
    return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}

typedef struct Stopping {
    pid_t pid;
    int pidfd;          /* -1: no pidfd (old kernel), the pid is polled */
    bool done;
} Stopping;

static void stopping_signal(Stopping *s, int sig)
{
    if (s->pidfd >= 0 ? pidfd_signal(s->pidfd, sig) : kill(s->pid, sig)) {
        s->done = true;     /* gone already */
    }
}

/* Wait until every process of @s exited or @ms passed. */
static void stopping_wait(Stopping *s, int n, int ms)
{
    g_autofree struct pollfd *pfd = g_new0(struct pollfd, n);
    int64_t deadline = now_us() + ms * 1000LL;
    bool polled = false;
    int i, left;

    do {
        for (left = 0, i = 0; i < n; i++) {
            if (!s[i].done && s[i].pidfd < 0 && pid_gone(s[i].pid)) {
                s[i].done = true;
            }
            if (!s[i].done && s[i].pidfd >= 0 && (pfd[i].revents & POLLIN)) {
                s[i].done = true;
            }
            pfd[i].fd = s[i].done ? -1 : s[i].pidfd;
            pfd[i].events = POLLIN;
            pfd[i].revents = 0;
            left += !s[i].done;
            polled |= !s[i].done && s[i].pidfd < 0;
        }
        if (left && now_us() < deadline) {
            int64_t wait = (deadline - now_us()) / 1000 + 1;

            poll(pfd, n, polled ? MIN(wait, 10) : wait);
        }
    } while (left && now_us() < deadline);
}

/*
 * Stop the processes @refs describe: SIGTERM, then SIGKILL for those
 * that did not exit in time; all at once.
 */
void proc_stop(const ProcRef *refs, int n)
{
    g_autofree Stopping *s = g_new0(Stopping, n);
    int i;

    for (i = 0; i < n; i++) {
        s[i].pid = proc_find(&refs[i]);
        s[i].pidfd = s[i].pid ? pidfd_open_(s[i].pid) : -1;
        s[i].done = !s[i].pid;
        /* checked again once the pidfd holds it: the pid is not reused */
        if (s[i].pidfd >= 0 && !proc_matches(&refs[i], s[i].pid)) {
            s[i].done = true;
        }
        if (!s[i].done) {
            stopping_signal(&s[i], SIGTERM);
        }
    }
    stopping_wait(s, n, STOP_GRACE_MS);
    for (i = 0; i < n; i++) {
        if (!s[i].done) {
            stopping_signal(&s[i], SIGKILL);
        }
    }
    stopping_wait(s, n, KILL_WAIT_MS);
    for (i = 0; i < n; i++) {
        if (s[i].pidfd >= 0) {
            close(s[i].pidfd);
        }
    }
}

/* "\012" and the like in /proc/PID/maps back to the bytes they stand for */
static char *maps_unescape(const char *s)
{
    GString *out = g_string_new("");

    while (*s) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' &&
            s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
            g_string_append_c(out, (s[1] - '0') * 64 + (s[2] - '0') * 8 +
                              (s[3] - '0'));
            s += 4;
        } else {
            g_string_append_c(out, *s++);
        }
    }
    return g_string_free(out, false);
}

/* Does a line of /proc/PID/maps map one of the files @files (stat)? */
static bool maps_line_hits(const char *line, GArray *files,
                           const char *prefix)
{
    unsigned maj, min;
    uint64_t ino;
    int n = 0;
    guint i;

    if (sscanf(line, "%*s %*s %*s %x:%x %" SCNu64 " %n", &maj, &min, &ino,
               &n) < 3 || !ino) {
        return false;
    }
    for (i = 0; i < files->len; i++) {
        struct stat *st = &g_array_index(files, struct stat, i);
        g_autofree char *path = NULL;

        if (st->st_ino != ino) {
            continue;
        }
        if (st->st_dev == makedev(maj, min)) {
            return true;
        }
        /* a file system whose maps show another device (btrfs) */
        path = maps_unescape(line + n);
        if (g_str_has_prefix(path, prefix)) {
            return true;
        }
    }
    return false;
}

/* The regular files of the directory @dirfd, as fstatat() says. */
static GArray *dir_files(int dirfd)
{
    GArray *files = g_array_new(false, false, sizeof(struct stat));
    int fd = dup(dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *e;

    while (d && (e = readdir(d))) {
        struct stat st;

        if (!fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) &&
            S_ISREG(st.st_mode)) {
            g_array_append_val(files, st);
        }
    }
    if (d) {
        closedir(d);
    } else if (fd >= 0) {
        close(fd);
    }
    return files;
}

/*
 * The processes (" PID" each) that map a file of the directory @dirfd,
 * @dir: by device and inode, so any path (a newline in it, a relative
 * --dir) is seen.
 */
GString *mappers_of(int dirfd, const char *dir)
{
    g_autoptr(GArray) files = dir_files(dirfd);
    g_autofree char *prefix = g_strdup_printf("%s/", dir);
    GDir *proc = g_dir_open("/proc", 0, NULL);
    GString *pids = g_string_new("");
    const char *e;

    while (files->len && proc && (e = g_dir_read_name(proc))) {
        g_autofree char *path = g_strdup_printf("/proc/%s/maps", e);
        g_autofree char *maps = NULL;
        g_auto(GStrv) lines = NULL;
        int i;

        if (!g_ascii_isdigit(e[0]) ||
            !g_file_get_contents(path, &maps, NULL, NULL)) {
            continue;
        }
        lines = g_strsplit(maps, "\n", -1);
        for (i = 0; lines[i]; i++) {
            if (maps_line_hits(lines[i], files, prefix)) {
                g_string_append_printf(pids, " %s", e);
                break;
            }
        }
    }
    if (proc) {
        g_dir_close(proc);
    }
    return pids;
}
