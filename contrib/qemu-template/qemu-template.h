/*
 * qemu-template: what the units of the tool share
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_TEMPLATE_H
#define QEMU_TEMPLATE_H

#include "qobject/qobject.h"

static inline void qobject_unref_any(QObject *obj)
{
    qobject_unref(obj);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(QObject, qobject_unref_any)

#define DIR_PLACEHOLDER "@DIR@"
/* ids of what the tool adds to a command line */
#define ID_PREFIX "qemu-template-"
#define MEMORY_FILE "memory"
#define MANIFEST_FILE "manifest.json"
#define CLONE_FILE "clone.json"
/* the QEMU binary when neither --qemu nor $QEMU_TEMPLATE_QEMU names one */
#define DEFAULT_QEMU "qemu-system-x86_64"

/* the lock file of a template (DIR/locks/NAME): what each byte guards */
#define LOCK_TEMPLATE 0     /* shared: in use; exclusive: made or removed */
#define LOCK_POOL 1         /* exclusive: the template's pool runs */

typedef enum TemplateMode {
    MODE_BYPASS,
    MODE_MAPPED_RAM,
    MODE__MAX,
} TemplateMode;

extern const char *const mode_names[MODE__MAX];
/* the migration capability each mode saves with */
extern const char *const mode_capability[MODE__MAX];
/* the file with the state (and, mapped-ram, the RAM) */
extern const char *const mode_state_file[MODE__MAX];

/* the absolute, resolved tool directory */
extern char *top_dir;
/* a command that creates nothing found no tool directory */
extern bool top_dir_missing;
/* --json: results (and errors) as JSON on stdout */
extern bool opt_json;

/* util.c: paths, files, the trust model, locks, output */
int64_t now_us(void);
bool valid_name(const char *name);
char *template_path(const char *name, const char *file);
char *clone_path(const char *id, const char *file);
char *new_uuid(void);
char *iso_now(void);
void progress(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void print_json(QObject *obj);
/* error_vprintf() appends here instead of printing, while it is set */
extern GString *error_capture;
char *error_hint(const Error *err);
void tool_report_error(Error *err, QObject *result);
char *sanitize_text(const char *text);

/* SIGINT, SIGTERM and SIGHUP set @flag and quit @loop (if any). */
typedef struct Interrupt {
    bool flag;
    GMainLoop *loop;
    guint src[3];
} Interrupt;
void interrupt_catch(Interrupt *in, GMainLoop *loop);
void interrupt_release(Interrupt *in);

/* Note the descriptors the tool was started with; close them. */
void fds_note_inherited(void);
void fds_close_inherited(void);

bool check_trusted(const char *path, const struct stat *st, Error **errp);
bool stat_trusted(const char *path, mode_t type, struct stat *st,
                  Error **errp);
int openat_trusted(int dirfd, const char *name, const char *path,
                   mode_t type, struct stat *st, Error **errp);
bool check_ancestors(const char *path, const char *what, Error **errp);
bool setup_top_dir(const char *dir, bool create, Error **errp);
int tool_dir_open(const char *sub, bool create, Error **errp);
char *tool_subdir(const char *sub, Error **errp);
int template_lock(const char *name, int what, bool exclusive,
                  const char *busy, Error **errp);
bool template_locked(const char *name, int what);
bool check_peer(int fd, pid_t pid, const char *path, Error **errp);

/* The QEMU binary: its resolved path, and the file itself (O_PATH). */
typedef struct QemuBinary {
    char *path;
    int fd;
} QemuBinary;
QemuBinary *qemu_resolve(const char *qemu, Error **errp);
void qemu_binary_free(QemuBinary *b);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(QemuBinary, qemu_binary_free)

int pidfile_write(const char *path, Error **errp);
void pidfile_remove(const char *path, int fd);

QDict *read_json_dict(const char *path, Error **errp);
QDict *read_json_dict_at(int dirfd, const char *name, const char *path,
                         Error **errp);
bool write_json(const char *path, QObject *obj, bool durable, Error **errp);
bool fsync_path(const char *path, Error **errp);
int rmtree(const char *path);
int rmtree_at(int parent, const char *name);

/* proc.c: other processes */
typedef struct MemUse {
    uint64_t pss, private_kib, shared_kib;
} MemUse;
bool mem_use(pid_t pid, MemUse *m);
bool pid_gone(pid_t pid);
bool proc_start_time(pid_t pid, uint64_t *start);

/*
 * A process of this user a record names: its pid (0: look for it), its
 * start time (0: not recorded), and two words of its command line that
 * only it has (the clone's "-uuid" and UUID).
 */
typedef struct ProcRef {
    pid_t pid;
    uint64_t start;
    const char *opt;
    const char *val;
} ProcRef;
pid_t proc_find(const ProcRef *r);
void proc_stop(const ProcRef *refs, int n);
GString *mappers_of(int dirfd, const char *dir);

#endif
