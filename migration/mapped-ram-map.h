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
 * in @bitmap read as zero: they are holes of the file if @clear_is_zero
 * (the file's extension record says so), else the file is searched for
 * data under them.
 */
bool mapped_ram_map_block(QEMUFile *f, RAMBlock *rb,
                          const unsigned long *bitmap, long num_pages,
                          bool clear_is_zero, Error **errp);

/*
 * Check that the file (@st) holds @num_pages pages of @rb from
 * @rb->pages_offset on, and that they fit in the block.  @mode is the
 * mapped-ram-load value, for the error message.
 */
bool mapped_ram_map_check_extent(const char *mode, RAMBlock *rb,
                                 long num_pages, const struct stat *st,
                                 Error **errp);

/*
 * Open a read-only descriptor of our own of the regular file behind @f (a
 * file: or fd: migration), and fstat() it into @st.  @mode is the
 * mapped-ram-load value that needs it, for the error message.  Returns the
 * descriptor, or -1 with @errp set.
 */
int mapped_ram_map_open_file(QEMUFile *f, const char *mode,
                             struct stat *st, Error **errp);

/*
 * False (with @errp set; @mode names the mapped-ram-load value) if a
 * device pinned guest RAM for DMA (those disable RAM discard: vfio,
 * vhost-vdpa, iommufd, confidential guests): replacing the pages behind
 * guest RAM would leave the device on the old ones.
 */
bool mapped_ram_map_check_unpinned(const char *mode, Error **errp);

/*
 * Guest RAM maps the file @st, or loads pages from it (@use says which,
 * as "this VM's RAM <use> the migration file"), until
 * mapped_ram_map_release_file(): this VM must not write it.
 */
void mapped_ram_map_hold_file(const struct stat *st, const char *use);
void mapped_ram_map_release_file(const struct stat *st);

/*
 * Refuse to write a migration file that RAM of this VM maps or loads
 * from: writing it would change the memory of this VM and of every other
 * VM mapping it.
 */
bool mapped_ram_map_check_outgoing(int fd, Error **errp);

#endif
