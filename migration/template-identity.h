/*
 * Template identity: what a clone must map for each bypassed RAM block
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_TEMPLATE_IDENTITY_H
#define QEMU_MIGRATION_TEMPLATE_IDENTITY_H

#include "exec/cpu-common.h"
#include "migration/vmstate.h"
#include "qapi/qapi-types-migration.h"

#define TEMPLATE_ID_NAME_LEN    256     /* sizeof(RAMBlock.idstr) */
#define TEMPLATE_ID_DIGEST_LEN  32      /* SHA-256 */
#define TEMPLATE_ID_CHUNK       4096    /* unit of sampling and hashing */
#define TEMPLATE_ID_SAMPLES     256     /* chunks hashed by the sampled check */
#define TEMPLATE_ID_MAX_SAMPLES 65536   /* bound accepted from a stream */

/*
 * One record per bypassed RAM block.  Saved when the source is stopped,
 * checked by the destination before the guest runs.  Every field has a
 * fixed size: nothing read from a stream sizes an allocation.
 */
typedef struct TemplateIdentity {
    char idstr[TEMPLATE_ID_NAME_LEN];   /* NUL-padded */
    uint64_t used_length;
    uint64_t page_size;
    uint64_t file_size;             /* st_size of the backing file */
    uint64_t fd_offset;             /* offset of the block in the file */
    uint64_t mr_addr;               /* mr->addr, as x-ignore-shared */
    int64_t mtime_ns;               /* st_mtim of the backing file */
    uint8_t check;                  /* BypassSharedMemoryCheck */
    uint64_t seed;                  /* selects the sampled chunks */
    uint32_t samples;
    uint8_t sampled[TEMPLATE_ID_DIGEST_LEN];
    uint8_t full[TEMPLATE_ID_DIGEST_LEN];   /* zero unless check == full */
} TemplateIdentity;

extern const VMStateDescription vmstate_template_identity;

/*
 * The backing file of a RAM block and the block's geometry, taken with
 * the BQL or the RCU read lock held.  Hashing the file needs neither: it
 * reads a duplicate of the block's descriptor, so the block may go away.
 */
typedef struct TemplateFile TemplateFile;

/*
 * True if @rb is backed by a memory file that a clone can map (the only
 * memory whose content can stay out of the stream).
 */
bool template_file_backed(RAMBlock *rb, Error **errp);

/* Fails (the error says what to do) unless template_file_backed(@rb). */
TemplateFile *template_file_new(RAMBlock *rb, Error **errp);
void template_file_free(TemplateFile *tf);
const char *template_file_block(const TemplateFile *tf);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TemplateFile, template_file_free)

/* Describe @tf as it is now, hashing as @check says.  No lock needed. */
bool template_identity_compute(TemplateIdentity *id, TemplateFile *tf,
                               BypassSharedMemoryCheck check, Error **errp);

/*
 * Check a record read from a stream before using it: its name is a
 * NUL-terminated block id and every field is in range.
 */
bool template_identity_valid(const TemplateIdentity *id, Error **errp);

/*
 * Check that @tf is the template @id describes; the error names the block,
 * the file and what differs.  No lock needed.
 */
bool template_identity_verify(const TemplateIdentity *id, TemplateFile *tf,
                              Error **errp);

#endif
