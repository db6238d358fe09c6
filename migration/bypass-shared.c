/*
 * bypass-shared-memory: save device state only, clones map the RAM file
 *
 * With the capability on, RAM blocks that are shared and backed by a named
 * file (the rule of x-ignore-shared) are not sent: whoever loads the stream
 * maps the same file, privately for a clone or shared for a local
 * migration.  Unlike x-ignore-shared the stream describes itself, so a
 * destination needs no capability: the "bypass-shared-memory" section is
 * sent before RAM and lists the bypassed blocks (the destination then
 * expects no pages for them), and again when the source has stopped, with
 * the identity of each block's file (template-identity.c), which the
 * destination checks before the guest runs.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qapi/error.h"
#include "exec/ramblock.h"
#include "hw/core/qdev-prop-internal.h"
#include "qapi/qapi-types-migration.h"
#include "migration/register.h"
#include "migration/vmstate.h"
#include "migration.h"
#include "options.h"
#include "qemu-file.h"
#include "ram.h"
#include "bypass-shared.h"
#include "template-identity.h"
#include "trace.h"

#define BYPASS_SHARED_SECTION   "bypass-shared-memory"

/* Each part of the section starts with one of these bytes. */
enum {
    BYPASS_SHARED_REC_BLOCKS = 1,   /* sent before RAM: bypassed block ids */
    BYPASS_SHARED_REC_IDENTITY = 2, /* sent stopped: their identities */
};

typedef struct BypassSharedList {
    int32_t nr;
    TemplateIdentity *ids;
} BypassSharedList;

/* Only idlen/idstr of each TemplateIdentity are sent before RAM. */
static const VMStateDescription vmstate_bypass_shared_block_name = {
    .name = "bypass-shared-memory/block",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_UINT32(idlen, TemplateIdentity),
        VMSTATE_VBUFFER_ALLOC_UINT32(idstr, TemplateIdentity, 1, NULL, idlen),
        VMSTATE_END_OF_LIST()
    },
};

static const VMStateDescription vmstate_bypass_shared_blocks = {
    .name = "bypass-shared-memory/blocks",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_INT32(nr, BypassSharedList),
        VMSTATE_STRUCT_VARRAY_ALLOC(ids, BypassSharedList, nr, 1,
                                    vmstate_bypass_shared_block_name,
                                    TemplateIdentity),
        VMSTATE_END_OF_LIST()
    },
};

static const VMStateDescription vmstate_bypass_shared_identities = {
    .name = "bypass-shared-memory/identities",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_INT32(nr, BypassSharedList),
        VMSTATE_STRUCT_VARRAY_ALLOC(ids, BypassSharedList, nr, 1,
                                    vmstate_template_identity,
                                    TemplateIdentity),
        VMSTATE_END_OF_LIST()
    },
};

const PropertyInfo qdev_prop_bypass_shared_memory_check = {
    .type = "BypassSharedMemoryCheck",
    .description = "How clones check bypassed shared memory (sampled/full)",
    .enum_table = &BypassSharedMemoryCheck_lookup,
    .get = qdev_propinfo_get_enum,
    .set = qdev_propinfo_set_enum,
    .set_default_value = qdev_propinfo_set_default_value_enum,
};

static struct {
    /* Destination: the blocks the incoming stream bypasses. */
    bool incoming;
    BypassSharedList in;
} bypass;

static void list_clear(BypassSharedList *l)
{
    int i;

    for (i = 0; i < l->nr; i++) {
        template_identity_clear(&l->ids[i]);
    }
    g_free(l->ids);
    l->ids = NULL;
    l->nr = 0;
}

static bool block_is_bypassed_here(RAMBlock *rb)
{
    return qemu_ram_is_migratable(rb) && qemu_ram_is_shared(rb) &&
           qemu_ram_is_named_file(rb);
}

static bool list_has(const BypassSharedList *l, const char *idstr)
{
    size_t len = strlen(idstr);
    int i;

    for (i = 0; i < l->nr; i++) {
        if (l->ids[i].idlen == len && !memcmp(l->ids[i].idstr, idstr, len)) {
            return true;
        }
    }
    return false;
}

bool bypass_shared_block_is_bypassed(RAMBlock *rb)
{
    if (bypass.incoming) {
        return list_has(&bypass.in, rb->idstr);
    }
    return migrate_bypass_shared_memory() && block_is_bypassed_here(rb);
}

bool bypass_shared_caps_check(bool *new_caps, Error **errp)
{
    static const MigrationCapability incompatible[] = {
        MIGRATION_CAPABILITY_X_IGNORE_SHARED,
        MIGRATION_CAPABILITY_POSTCOPY_RAM,
        MIGRATION_CAPABILITY_BACKGROUND_SNAPSHOT,
        MIGRATION_CAPABILITY_X_COLO,
    };
    int i;

    if (!new_caps[MIGRATION_CAPABILITY_BYPASS_SHARED_MEMORY]) {
        return true;
    }
    for (i = 0; i < ARRAY_SIZE(incompatible); i++) {
        if (new_caps[incompatible[i]]) {
            error_setg(errp, "bypass-shared-memory is not compatible with %s",
                       MigrationCapability_str(incompatible[i]));
            if (incompatible[i] == MIGRATION_CAPABILITY_X_IGNORE_SHARED) {
                error_append_hint(errp, "bypass-shared-memory replaces "
                                  "x-ignore-shared; enable only one.\n");
            }
            return false;
        }
    }
    return true;
}

/*
 * Upstream 10.0 wrote a mapped-ram header for ignored blocks and then
 * failed to save their (absent) bitmap; the destination could not tell an
 * ignored block from one with pages.  The marker byte exists only in
 * streams that 10.0 could not produce.
 */
bool bypass_shared_mapped_ram_put(QEMUFile *f, RAMBlock *rb)
{
    bool bypassed;

    if (!migrate_ignore_shared() && !migrate_bypass_shared_memory()) {
        return false;
    }
    bypassed = migrate_ram_is_ignored(rb);
    qemu_put_byte(f, bypassed);
    return bypassed;
}

bool bypass_shared_mapped_ram_get(QEMUFile *f, RAMBlock *rb)
{
    if (!migrate_ignore_shared() && !bypass.incoming) {
        return false;
    }
    /*
     * Trust the stream: with x-ignore-shared a clone maps the template's
     * file with share=off, so its block is not "ignored" here.
     */
    return qemu_get_byte(f) != 0;
}

static bool bypass_shared_is_active(void *opaque)
{
    return migrate_bypass_shared_memory();
}

/* The bypassed blocks, described as they are now (source). */
static bool collect(BypassSharedList *l, bool identity, Error **errp)
{
    RAMBlock *rb;

    l->nr = 0;
    l->ids = NULL;
    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH_MIGRATABLE(rb) {
        if (block_is_bypassed_here(rb)) {
            l->nr++;
        }
    }
    l->ids = g_new0(TemplateIdentity, l->nr);
    l->nr = 0;
    RAMBLOCK_FOREACH_MIGRATABLE(rb) {
        TemplateIdentity *id;

        if (!block_is_bypassed_here(rb)) {
            continue;
        }
        id = &l->ids[l->nr++];
        if (identity) {
            if (!template_identity_compute(id, rb,
                    migrate_bypass_shared_memory_check(), errp)) {
                list_clear(l);
                return false;
            }
        } else {
            id->idlen = strlen(rb->idstr);
            id->idstr = g_memdup2(rb->idstr, id->idlen);
        }
        trace_bypass_shared_save_block(rb->idstr, rb->used_length, identity);
    }
    return true;
}

static int bypass_shared_save_setup(QEMUFile *f, void *opaque, Error **errp)
{
    BypassSharedList l;
    int ret;

    if (!collect(&l, false, errp)) {
        return -EINVAL;
    }
    if (!l.nr) {
        warn_report("bypass-shared-memory: no RAM block is shared and "
                    "backed by a memory file; all RAM will be migrated");
    }
    qemu_put_byte(f, BYPASS_SHARED_REC_BLOCKS);
    ret = vmstate_save_state(f, &vmstate_bypass_shared_blocks, &l, NULL);
    list_clear(&l);
    return ret;
}

static int bypass_shared_save_complete(QEMUFile *f, void *opaque)
{
    Error *local_err = NULL;
    BypassSharedList l;
    int ret;

    if (!collect(&l, true, &local_err)) {
        error_report_err(local_err);
        return -EINVAL;
    }
    qemu_put_byte(f, BYPASS_SHARED_REC_IDENTITY);
    ret = vmstate_save_state(f, &vmstate_bypass_shared_identities, &l, NULL);
    list_clear(&l);
    return ret;
}

static int load_blocks(QEMUFile *f, Error **errp)
{
    BypassSharedList *l = &bypass.in;
    int i, ret;

    list_clear(l);
    ret = vmstate_load_state(f, &vmstate_bypass_shared_blocks, l, 1);
    if (ret < 0) {
        error_setg(errp, "bypass-shared-memory: cannot read the list of "
                   "bypassed RAM blocks (truncated or corrupted stream)");
        return ret;
    }
    bypass.incoming = true;
    for (i = 0; i < l->nr; i++) {
        g_autofree char *name = g_strndup((char *)l->ids[i].idstr,
                                          l->ids[i].idlen);
        RAMBlock *rb = qemu_ram_block_by_name(name);

        if (!rb) {
            error_setg(errp, "bypass-shared-memory: the template has RAM "
                       "block '%s' but this VM has none; start the clone "
                       "with the template's machine and memory options",
                       name);
            return -EINVAL;
        }
        if (!qemu_ram_is_named_file(rb) || qemu_ram_get_fd(rb) < 0) {
            error_setg(errp, "bypass-shared-memory: RAM block '%s' is not "
                       "in the stream and not backed by a memory file "
                       "here; map the template's file with "
                       "memory-backend-file,mem-path=FILE,share=off", name);
            return -EINVAL;
        }
        trace_bypass_shared_load_block(name);
    }
    return 0;
}

static int load_identities(QEMUFile *f, Error **errp)
{
    BypassSharedList got = { 0 };
    int i, ret;

    if (!bypass.incoming) {
        error_setg(errp, "bypass-shared-memory: identity record before the "
                   "block list (corrupted stream)");
        return -EINVAL;
    }
    ret = vmstate_load_state(f, &vmstate_bypass_shared_identities, &got, 1);
    if (ret < 0) {
        error_setg(errp, "bypass-shared-memory: cannot read the template "
                   "identity records (truncated or corrupted stream)");
        goto out;
    }
    ret = -EINVAL;
    if (got.nr != bypass.in.nr) {
        error_setg(errp, "bypass-shared-memory: %d identity records for %d "
                   "bypassed blocks (corrupted stream)", got.nr, bypass.in.nr);
        goto out;
    }
    for (i = 0; i < got.nr; i++) {
        TemplateIdentity *id = &got.ids[i];
        g_autofree char *name = g_strndup((char *)id->idstr, id->idlen);
        RAMBlock *rb = qemu_ram_block_by_name(name);

        if (!rb || !list_has(&bypass.in, name)) {
            error_setg(errp, "bypass-shared-memory: identity record for "
                       "unexpected RAM block '%s' (corrupted stream)", name);
            goto out;
        }
        if (id->check >= BYPASS_SHARED_MEMORY_CHECK__MAX ||
            id->samples > 1024 * 1024) {
            error_setg(errp, "bypass-shared-memory: invalid identity record "
                       "for RAM block '%s' (corrupted stream)", name);
            goto out;
        }
        if (!template_identity_verify(id, rb, errp)) {
            goto out;
        }
    }
    ret = 0;
out:
    list_clear(&got);
    return ret;
}

static int bypass_shared_load_state(QEMUFile *f, void *opaque, int version_id)
{
    Error *local_err = NULL;
    int rec = qemu_get_byte(f);
    int ret;

    switch (rec) {
    case BYPASS_SHARED_REC_BLOCKS:
        ret = load_blocks(f, &local_err);
        break;
    case BYPASS_SHARED_REC_IDENTITY:
        ret = load_identities(f, &local_err);
        break;
    default:
        error_setg(&local_err, "bypass-shared-memory: unknown record %d "
                   "(corrupted stream, or saved by a newer QEMU)", rec);
        ret = -EINVAL;
        break;
    }
    if (ret < 0) {
        error_report_err(local_err);
    }
    return ret;
}

static int bypass_shared_load_cleanup(void *opaque)
{
    bypass.incoming = false;
    list_clear(&bypass.in);
    return 0;
}

static SaveVMHandlers savevm_bypass_shared_handlers = {
    .save_setup = bypass_shared_save_setup,
    .save_live_complete_precopy = bypass_shared_save_complete,
    .is_active = bypass_shared_is_active,
    .load_state = bypass_shared_load_state,
    .load_cleanup = bypass_shared_load_cleanup,
};

void bypass_shared_mig_init(void)
{
    register_savevm_live(BYPASS_SHARED_SECTION, 0, 1,
                         &savevm_bypass_shared_handlers, NULL);
}
