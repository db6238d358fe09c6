/*
 * Load a mapped-ram file lazily, through userfaultfd
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MAPPED_RAM_LAZY_H
#define QEMU_MIGRATION_MAPPED_RAM_LAZY_H

#include "exec/cpu-common.h"
#include "qapi/qapi-types-migration.h"
#include "mapped-ram-working-set.h"

/*
 * Register @rb with userfaultfd: its first @num_pages pages are served on
 * fault from the file behind @f (from @rb->pages_offset; pages whose bit
 * is clear in @bitmap read as zero), the rest as zero pages.  Once the
 * VM runs, a thread fills every page not yet present, then unregisters.
 */
#ifdef CONFIG_LINUX
bool mapped_ram_lazy_block(QEMUFile *f, RAMBlock *rb,
                           const unsigned long *bitmap, long num_pages,
                           Error **errp);

/*
 * The pages that faulted, in order, in the first @ms milliseconds after
 * the guest started (before it, too), once the load completed.
 */
MappedRamWorkingSet *mapped_ram_lazy_working_set(uint32_t ms, Error **errp);

/* The progress of the lazy load of this process, or NULL if none ran. */
MappedRamLazyInfo *mapped_ram_lazy_query(void);

/* True while a lazy load runs: its pages are not all present yet. */
bool mapped_ram_lazy_active(void);

struct PostCopyFD;
/*
 * For postcopy_request_shared_page() while a lazy load runs: the back end
 * behind @pcfd faulted on @offset of @rb, at @client_addr in its address
 * space.  Places the page and wakes the back end; returns what the wake
 * returned.
 */
int mapped_ram_lazy_request_shared(struct PostCopyFD *pcfd, RAMBlock *rb,
                                   uint64_t client_addr, uint64_t offset);
#else

static inline bool mapped_ram_lazy_block(QEMUFile *f, RAMBlock *rb,
                                         const unsigned long *bitmap,
                                         long num_pages, Error **errp)
{
    error_setg(errp, "mapped-ram-load=lazy needs userfaultfd (Linux)");
    return false;
}

static inline MappedRamWorkingSet *mapped_ram_lazy_working_set(uint32_t ms,
                                                               Error **errp)
{
    error_setg(errp, "mapped-ram-load=lazy needs userfaultfd (Linux)");
    return NULL;
}

static inline MappedRamLazyInfo *mapped_ram_lazy_query(void)
{
    return NULL;
}

static inline bool mapped_ram_lazy_active(void)
{
    return false;
}
#endif

#endif
