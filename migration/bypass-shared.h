/*
 * bypass-shared-memory: save device state only, clones map the RAM file
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_BYPASS_SHARED_H
#define QEMU_MIGRATION_BYPASS_SHARED_H

#include "exec/cpu-common.h"

/*
 * True when @rb is shared and backed by a named file: another process
 * can map its content, so x-ignore-shared and bypass-shared-memory leave
 * it out of the stream.
 */
bool ramblock_is_shared_file(RAMBlock *rb);

/*
 * True when @rb is not sent because shared memory is bypassed:
 * on the source, the capability is on and @rb is a migratable shared
 * file; on the destination, while a stream loads, the stream listed @rb.
 */
bool bypass_shared_block_is_bypassed(RAMBlock *rb);

/* Capability compatibility, called from migrate_caps_check(). */
bool bypass_shared_caps_check(bool *new_caps, Error **errp);

/* Source: called by migrate_init() for every migration or snapshot. */
void bypass_shared_migrate_init(void);

/*
 * Destination: qemu_loadvm_state() calls _load_setup() before any section
 * is read and _load_complete() once the stream ends; the latter fails
 * unless every bypassed block was verified.
 */
void bypass_shared_load_setup(void);
bool bypass_shared_load_complete(Error **errp);

/* Destination: postcopy cannot start with bypassed blocks. */
bool bypass_shared_postcopy_check(Error **errp);

/*
 * mapped-ram: a block header whose bitmap and pages offsets are both 0
 * stands for a block without pages in the file (x-ignore-shared,
 * bypass-shared-memory).  Returns 1 if @rb is such a block and may be
 * skipped here, 0 if its pages must be loaded, -1 (with @errp) if the
 * header contradicts the stream or this VM.
 */
int bypass_shared_mapped_ram_ignored(RAMBlock *rb, uint64_t bitmap_offset,
                                     uint64_t pages_offset, Error **errp);

#endif
