/*
 * bypass-shared-memory: save device state only, clones map the RAM file
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_BYPASS_SHARED_H
#define QEMU_MIGRATION_BYPASS_SHARED_H

#include "exec/cpu-common.h"
#include "hw/qdev-properties.h"

/* -global migration.bypass-shared-memory-check=sampled|full */
extern const PropertyInfo qdev_prop_bypass_shared_memory_check;

/*
 * Registers the "bypass-shared-memory" live section.  Must run before
 * ram_mig_init() so that the section precedes RAM in the stream.
 */
void bypass_shared_mig_init(void);

/*
 * True when @rb is not sent because shared memory is bypassed:
 * on the source, the capability is on and @rb is shared and backed by a
 * named file; on the destination, the incoming stream listed @rb.
 */
bool bypass_shared_block_is_bypassed(RAMBlock *rb);

/*
 * mapped-ram streams with x-ignore-shared or bypass-shared-memory: one byte
 * before each block's mapped-ram header says whether the block is
 * bypassed, in which case no header, bitmap or pages follow.
 * _put() (source) returns true when @rb is bypassed; _get() (destination)
 * returns what the stream says.
 */
bool bypass_shared_mapped_ram_put(QEMUFile *f, RAMBlock *rb);
bool bypass_shared_mapped_ram_get(QEMUFile *f, RAMBlock *rb);

/* Capability compatibility, called from migrate_caps_check(). */
bool bypass_shared_caps_check(bool *new_caps, Error **errp);

#endif
