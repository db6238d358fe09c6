/*
 * The extension record of mapped-ram files: what a file written by this
 * QEMU says about a RAM block beyond upstream's mapped-ram header, in the
 * padding between the block's bitmap and its pages
 * (docs/devel/migration/mapped-ram-map.rst)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MAPPED_RAM_EXT_H
#define QEMU_MIGRATION_MAPPED_RAM_EXT_H

#include "exec/cpu-common.h"
#include "io/channel.h"

/* What the record of a block says, as a loader found it. */
typedef struct MappedRamExt {
    bool present;           /* a valid record for this block */
    /* every page whose bit is clear reads as zero in the file */
    bool clear_is_zero;
} MappedRamExt;

/*
 * Saving.  At setup, once @block's file offsets are known: make the
 * block's page region of the file read as zero (it does already when the
 * file ends before it), so that a page never written is a hole.
 */
void mapped_ram_ext_save_setup(QEMUFile *f, RAMBlock *block);

/*
 * Page @offset of @block is zero: clear its bit in the file bitmap and, if
 * its data was written to the file (through @ioc, a file channel) earlier
 * in this save, punch it out, so that the page reads as zero in the file.
 * Any migration thread may call it, for pages of one round at a time.
 */
void mapped_ram_ext_zero_page(QIOChannel *ioc, RAMBlock *block,
                              ram_addr_t offset);

/* Write the record of @block, after its bitmap was written. */
void mapped_ram_ext_save(QEMUFile *f, RAMBlock *block);

/*
 * Loading.  Read the record of @block, whose header has @bitmap_offset and
 * @pages_offset and whose bitmap covers @num_pages, into @ext.  A missing,
 * damaged or foreign record is no record (@ext->present false).  Fails,
 * with @errp set, only for a valid record that needs a feature this QEMU
 * does not know.
 */
bool mapped_ram_ext_load(QEMUFile *f, RAMBlock *block, uint64_t bitmap_offset,
                         uint64_t pages_offset, long num_pages,
                         MappedRamExt *ext, Error **errp);

#endif
