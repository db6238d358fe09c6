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

#define TEMPLATE_ID_DIGEST_LEN  32      /* SHA-256 */
#define TEMPLATE_ID_CHUNK       4096    /* unit of sampling and hashing */
#define TEMPLATE_ID_SAMPLES     256     /* chunks hashed by the sampled check */

/*
 * One record per bypassed RAM block.  Saved when the source is stopped,
 * checked by the destination before the guest runs.
 */
typedef struct TemplateIdentity {
    uint32_t idlen;
    uint8_t *idstr;                 /* not NUL-terminated in the stream */
    uint64_t used_length;
    uint64_t page_size;
    uint64_t file_size;             /* st_size of the backing file */
    uint64_t fd_offset;             /* offset of the block in the file */
    uint64_t gpa;                   /* guest physical address of the block */
    int64_t mtime_ns;               /* st_mtim of the backing file */
    uint8_t check;                  /* BypassSharedMemoryCheck */
    uint64_t seed;                  /* selects the sampled chunks */
    uint32_t samples;
    uint8_t sampled[TEMPLATE_ID_DIGEST_LEN];
    uint8_t full[TEMPLATE_ID_DIGEST_LEN];   /* zero unless check == full */
} TemplateIdentity;

extern const VMStateDescription vmstate_template_identity;

/* Describe @rb as it is now; fails if @rb has no backing file. */
bool template_identity_compute(TemplateIdentity *id, RAMBlock *rb,
                               BypassSharedMemoryCheck check, Error **errp);

/*
 * Check that @rb maps the same template as @id; the error names the
 * block and what differs.
 */
bool template_identity_verify(const TemplateIdentity *id, RAMBlock *rb,
                              Error **errp);

void template_identity_clear(TemplateIdentity *id);

#endif
