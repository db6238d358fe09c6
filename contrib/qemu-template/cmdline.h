/*
 * qemu-template: QEMU command lines
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_TEMPLATE_CMDLINE_H
#define QEMU_TEMPLATE_CMDLINE_H

/* What a VM's command line is made of. */
typedef struct VmArgs {
    const char *qemu;       /* the binary, an absolute path */
    char **user;            /* the template's arguments */
    char **extra;           /* a clone's extra arguments, or NULL */
    const char *dir;        /* the VM's directory, for @DIR@ */
    int qmp_fd;             /* the descriptor of its QMP listening socket */
    TemplateMode mode;
    uint64_t ram_size;      /* bypass: the RAM backend's size ... */
    const char *ram_path;   /* ... and file (a template's) ... */
    int ram_fd;             /* ... or descriptor (a clone's) */
    int state_fd;           /* a clone's: the descriptor of its state */
    bool clone;             /* else the template itself */
    const char *genid;
    const char *uuid;
    const char *name;
} VmArgs;

/* the fd set of -add-fd that holds a clone's state */
#define STATE_FDSET 1

/*
 * The command line: the user's arguments with @DIR@ replaced, then what
 * the tool adds.  The template starts paused (-S, the tool resumes it
 * once it listens to its events), a clone with -incoming defer; a
 * clone's template files are descriptors the tool opened and checked.
 */
char **build_argv(const VmArgs *a);

/* @s as a QemuOpts value: every comma doubled. */
char *opts_escape(const char *s);
/* Replace every @DIR@ in @arg, the value of option @opt (or NULL). */
char *subst_dir(const char *arg, const char *dir, const char *opt);
/* Arguments the user may not give (the manifest's neither). */
bool check_user_args(char **args, TemplateMode mode, Error **errp);
/* The RAM size of "-m SIZE" or "-m size=SIZE,...", in bytes. */
bool parse_ram_size(char **args, uint64_t *size, Error **errp);
/* A migration channel for the file @path, as QMP's "channels" takes. */
QList *file_channels(const char *path);
/* The path QEMU opens a clone's state by: its fd set. */
char *state_fdset_path(void);

#endif
