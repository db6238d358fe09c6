/*
 * The working set of a lazy mapped-ram load: the pages a clone touched
 * first, in order, kept in a file beside the template
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MAPPED_RAM_WORKING_SET_H
#define QEMU_MIGRATION_MAPPED_RAM_WORKING_SET_H

/* At most this many RAM blocks, and this many pages, in a working set. */
#define MAPPED_RAM_WS_MAX_BLOCKS    256
#define MAPPED_RAM_WS_MAX_PAGES     (1 << 20)

/* A page of a working set: an index into its blocks, a target page. */
#define MAPPED_RAM_WS_PAGE(block, page) (((uint64_t)(block) << 48) | (page))
#define MAPPED_RAM_WS_BLOCK_OF(e)       ((unsigned)((e) >> 48))
#define MAPPED_RAM_WS_PAGE_OF(e)        ((e) & ((1ULL << 48) - 1))

typedef struct MappedRamWorkingSet {
    GPtrArray *blocks;          /* of char *: RAM block names */
    GArray *pages;              /* of uint64_t: MAPPED_RAM_WS_PAGE() */
} MappedRamWorkingSet;

MappedRamWorkingSet *mapped_ram_ws_new(void);
void mapped_ram_ws_free(MappedRamWorkingSet *ws);

/*
 * Read and check the working set file @path (it may come from anywhere:
 * every count and index is checked).  NULL with @errp set if it cannot
 * be read or is not a working set.
 */
MappedRamWorkingSet *mapped_ram_ws_load(const char *path, Error **errp);

/*
 * Write @ws to @path: to a temporary file, renamed over @path once
 * complete, so that @path is never half written.
 */
bool mapped_ram_ws_save(const MappedRamWorkingSet *ws, const char *path,
                        Error **errp);

#endif
