/*
 * Load a mapped-ram file by mapping it: each RAM block becomes a private
 * (copy-on-write) mapping of its page region of the file
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MAPPED_RAM_MAP_H
#define QEMU_MIGRATION_MAPPED_RAM_MAP_H

#include "exec/cpu-common.h"

/*
 * Map the @num_pages pages of @rb, stored from @rb->pages_offset in the
 * file behind @f, privately over @rb's memory.  Pages whose bit is clear
 * in @bitmap read as zero.
 */
bool mapped_ram_map_block(QEMUFile *f, RAMBlock *rb,
                          const unsigned long *bitmap, long num_pages,
                          Error **errp);

/*
 * Refuse to write a migration file that RAM of this VM maps: writing it
 * would change the memory of this VM and of every other VM mapping it.
 */
bool mapped_ram_map_check_outgoing(int fd, Error **errp);

#endif
