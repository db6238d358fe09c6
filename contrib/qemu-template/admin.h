/*
 * qemu-template: list, status, destroy
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_TEMPLATE_ADMIN_H
#define QEMU_TEMPLATE_ADMIN_H

/* The clone records of @template, checked, with what runs. */
QList *load_clones(const char *template);
/* "list"/"status" [NAME]: templates, clones, pools. */
bool list_run(const char *only, QObject **result, Error **errp);
/* "destroy NAME|CLONE" */
bool destroy_run(const char *name, Error **errp);

#endif
