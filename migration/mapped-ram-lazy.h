/*
 * Load a mapped-ram file lazily, through userfaultfd
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MAPPED_RAM_LAZY_H
#define QEMU_MIGRATION_MAPPED_RAM_LAZY_H

#include "exec/cpu-common.h"
#include "qapi/qapi-types-migration.h"

#ifdef CONFIG_LINUX
/*
 * Register @rb with userfaultfd: its first @num_pages pages are served on
 * fault from the file behind @f (from @rb->pages_offset; pages whose bit
 * is clear in @bitmap read as zero), the rest as zero pages.  Once the
 * VM runs, a thread fills every page not yet present, then unregisters.
 */
bool mapped_ram_lazy_block(QEMUFile *f, RAMBlock *rb,
                           const unsigned long *bitmap, long num_pages,
                           Error **errp);

/* The progress of the lazy load of this process, or NULL if none ran. */
MappedRamLazyInfo *mapped_ram_lazy_query(void);

/*
 * The incoming migration failed: if a lazy load was set up, let go of
 * it (the guest never ran on it), and say why in its progress.
 */
void mapped_ram_lazy_abort(void);

/*
 * An outgoing migration is about to start; @skips_shared: it leaves
 * shared RAM out (x-ignore-shared, bypass-shared-memory).  False, with
 * @errp set, if that would leave out pages a lazy load did not place yet.
 */
bool mapped_ram_lazy_check_save(bool skips_shared, Error **errp);
#else
static inline bool mapped_ram_lazy_block(QEMUFile *f, RAMBlock *rb,
                                         const unsigned long *bitmap,
                                         long num_pages, Error **errp)
{
    error_setg(errp, "mapped-ram-load=lazy needs userfaultfd (Linux)");
    return false;
}

static inline MappedRamLazyInfo *mapped_ram_lazy_query(void)
{
    return NULL;
}

static inline void mapped_ram_lazy_abort(void)
{
}

static inline bool mapped_ram_lazy_check_save(bool skips_shared,
                                              Error **errp)
{
    return true;
}
#endif

#endif
