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
/* --json: results (and errors) as JSON on stdout */
extern bool opt_json;

/* util.c: paths, files, the trust model, locks, processes */
int64_t now_us(void);
bool valid_name(const char *name);
char *template_path(const char *name, const char *file);
char *clone_path(const char *id, const char *file);
char *new_uuid(void);
char *iso_now(void);
void progress(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void print_json(QObject *obj);

/* SIGINT, SIGTERM and SIGHUP set @flag and quit @loop (if any). */
typedef struct Interrupt {
    bool flag;
    GMainLoop *loop;
    guint src[3];
} Interrupt;
void interrupt_catch(Interrupt *in, GMainLoop *loop);
void interrupt_release(Interrupt *in);

bool check_trusted(const char *path, const struct stat *st, Error **errp);
bool stat_trusted(const char *path, mode_t type, struct stat *st,
                  Error **errp);
bool setup_top_dir(const char *dir, Error **errp);
char *tool_subdir(const char *sub, Error **errp);
int template_lock(const char *name, int what, bool exclusive,
                  const char *busy, Error **errp);
bool template_locked(const char *name, int what);
char *qemu_resolve(const char *qemu, Error **errp);
bool check_peer(int fd, pid_t pid, const char *path, Error **errp);

QDict *read_json_dict(const char *path, Error **errp);
bool write_json(const char *path, QObject *obj, Error **errp);
bool fsync_path(const char *path, Error **errp);
int rmtree(const char *path);

typedef struct MemUse {
    uint64_t pss, private_kib, shared_kib;
} MemUse;
bool mem_use(pid_t pid, MemUse *m);
bool process_alive(pid_t pid, const char *needle);
pid_t find_process(const char *needle);
bool pid_gone(pid_t pid);
void kill_pid(pid_t pid);
GString *mappers_of(const char *dir);

#endif
