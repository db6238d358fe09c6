/*
 * qemu-template: making a template
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_TEMPLATE_CREATE_H
#define QEMU_TEMPLATE_CREATE_H

typedef struct CreateOpts {
    TemplateMode mode;
    const char *qemu;
    char **ready;       /* conditions, met one after the other */
    int timeout;        /* s, to get ready, and again to save */
} CreateOpts;

/* Is @cond a --ready condition? */
bool ready_valid(const char *cond, Error **errp);

/* "create NAME": boot, wait until ready, save, publish; the manifest. */
bool create_run(const char *name, const CreateOpts *o, char **user,
                QObject **result, Error **errp);

#endif
