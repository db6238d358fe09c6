/*
 * qemu-template: the manifest of a template
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_TEMPLATE_MANIFEST_H
#define QEMU_TEMPLATE_MANIFEST_H

#define MANIFEST_FORMAT 1

typedef struct Manifest {
    char *name;
    TemplateMode mode;
    char *qemu;             /* the binary that made it: recorded, not run */
    char *version;
    char **args;
    uint64_t ram_size;      /* bypass: the RAM backend's size */
    bool stopped;           /* saved stopped: clones are resumed by "cont" */
    QDict *ram_blocks;      /* {name: used bytes}, from "info ramblock" */
    QDict *files;           /* {file name: size} */
    char *vmgenid;          /* the template's own identity */
    char *uuid;
    char *created;
    QDict *times;           /* durations of the create, in ms */
    /* a loaded template's directory and files, opened and checked */
    int dirfd;
    int ram_fd;             /* bypass: the memory file */
    int state_fd;           /* the state (mapped-ram: and RAM) file */
} Manifest;

Manifest *manifest_new(void);
void manifest_free(Manifest *m);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Manifest, manifest_free)

/*
 * The manifest of template @name, parsed as hostile input: a trusted
 * file, every member present and well-typed, the arguments allowed, the
 * mode's files (and no other) trusted and of their recorded sizes.
 * Every directory on the way is opened and checked; the files stay
 * open, so what clones get is what was checked here.
 */
Manifest *manifest_load(const char *name, Error **errp);
/*
 * manifest_load() under a shared lock of the template, whose descriptor
 * goes to *@lock: no create or destroy of it runs meanwhile.
 */
Manifest *manifest_load_locked(const char *name, int *lock, Error **errp);
/* The manifest as JSON. */
QDict *manifest_to_qdict(const Manifest *m);
/*
 * The QEMU binary for clones of @m: the user's choice (--qemu @qemu,
 * else the default), which must be the binary that made the template.
 */
QemuBinary *qemu_for_clones(const Manifest *m, const char *qemu,
                            Error **errp);
/* A descriptor of the state file of its own (offset and all). */
int manifest_open_state(const Manifest *m, Error **errp);
/* Write @m as @dir/manifest.json, synced and read-only. */
bool manifest_save(const Manifest *m, const char *dir, Error **errp);

#endif
