/*
 * bypass-shared-memory: save device state only, clones map the RAM file
 *
 * With the capability on, RAM blocks that are shared and backed by a named
 * file (the rule of x-ignore-shared) are not sent: whoever loads the stream
 * maps the same file, privately for a clone or shared for a local
 * migration.  Unlike x-ignore-shared the stream describes itself, so a
 * destination needs no capability.  Two sections carry it:
 *
 * - "bypass-shared-memory", saved when migration starts, before RAM: the
 *   ids of the bypassed blocks.  The destination expects no pages for
 *   them;
 * - "bypass-shared-memory/identity", saved once the source is stopped: the
 *   identity of each bypassed block's file (template-identity.c).
 *
 * The destination verifies every listed block exactly once before the
 * guest can run, and refuses a stream whose records are incomplete,
 * duplicated or out of range: streams are read from disk and may be
 * corrupted or crafted.
 *
 * The sections are registered on first use (the first migration with the
 * capability, or the first incoming stream), so that a QEMU that never
 * uses them writes the very stream upstream writes, section ids included.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/coroutine.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qapi/error.h"
#include "block/thread-pool.h"
#include "exec/ramblock.h"
#include "qapi/qapi-types-migration.h"
#include "migration/misc.h"
#include "migration/vmstate.h"
#include "system/runstate.h"
#include "migration.h"
#include "options.h"
#include "ram.h"
#include "bypass-shared.h"
#include "template-identity.h"
#include "trace.h"

/* One bypassed block in the list section. */
typedef struct BypassSharedName {
    char idstr[TEMPLATE_ID_NAME_LEN];   /* NUL-padded */
} BypassSharedName;

/*
 * The two sections.  @capacity is what was allocated: on load it bounds
 * what the stream may claim, before anything is read into it.
 */
typedef struct BypassSharedBlocks {
    uint32_t nr;
    uint32_t capacity;
    BypassSharedName *names;
} BypassSharedBlocks;

typedef struct BypassSharedIdentities {
    uint32_t nr;
    uint32_t capacity;
    TemplateIdentity *ids;
} BypassSharedIdentities;

/* Destination: a block the incoming stream bypasses. */
typedef struct BypassedBlock {
    RAMBlock *rb;
    TemplateFile *file;
    const TemplateIdentity *id;     /* its record, once read */
    bool verified;
} BypassedBlock;

static struct {
    bool registered;
    BypassSharedBlocks blocks;
    BypassSharedIdentities ids;

    /* Destination, from the start of a load to its end. */
    bool loading;
    bool listed;            /* the block list was read */
    bool identified;        /* the identity records were read */
    uint32_t nr_in;
    BypassedBlock *in;

    /* Source. */
    uint32_t nr_saved;      /* blocks the last save bypassed */
    bool resume_refused;    /* a completed save bypassed blocks */
    bool recorded;          /* identities recorded since the VM last ran */
    NotifierWithReturn notifier;
    VMChangeStateEntry *vm_state;
} bypass;

bool ramblock_is_shared_file(RAMBlock *rb)
{
    return qemu_ram_is_shared(rb) && qemu_ram_is_named_file(rb);
}

static BypassedBlock *incoming_find(RAMBlock *rb)
{
    uint32_t i;

    for (i = 0; i < bypass.nr_in; i++) {
        if (bypass.in[i].rb == rb) {
            return &bypass.in[i];
        }
    }
    return NULL;
}

bool bypass_shared_block_is_bypassed(RAMBlock *rb)
{
    if (bypass.loading) {
        return bypass.listed && incoming_find(rb);
    }
    return migrate_bypass_shared_memory() && qemu_ram_is_migratable(rb) &&
           ramblock_is_shared_file(rb);
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
 * mapped-ram: a block without pages in the file has a header whose bitmap
 * and pages offsets are both 0 (no real block can have its bitmap at
 * offset 0), as QEMU 11.0 writes for x-ignore-shared.  Decide whether
 * @rb may be such a block here.
 */
int bypass_shared_mapped_ram_ignored(RAMBlock *rb, uint64_t bitmap_offset,
                                     uint64_t pages_offset, Error **errp)
{
    bool no_pages = !bitmap_offset && !pages_offset;

    if (bypass.listed) {
        bool listed = incoming_find(rb);

        if (no_pages != listed) {
            error_setg(errp, "RAM block '%s': the stream %s it as bypassed, "
                       "but the file %s pages for it (corrupted stream)",
                       rb->idstr, listed ? "lists" : "does not list",
                       no_pages ? "has no" : "has");
            return -1;
        }
        return no_pages;
    }
    if (!no_pages) {
        return 0;
    }
    if (!migrate_ignore_shared()) {
        error_setg(errp, "RAM block '%s' has no pages in the file, but the "
                   "stream bypasses no memory (corrupted file)", rb->idstr);
        return -1;
    }
    if (!template_file_backed(rb, errp)) {
        error_prepend(errp, "the file has no pages for it: ");
        return -1;
    }
    trace_bypass_shared_mapped_ram_ignored(rb->idstr);
    return 1;
}

static bool bypass_shared_needed(void *opaque)
{
    return migrate_bypass_shared_memory();
}

static uint32_t nr_migratable_blocks(void)
{
    uint32_t nr = 0;
    RAMBlock *rb;

    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH_MIGRATABLE(rb) {
        nr++;
    }
    return nr;
}

/* Source: the blocks this save bypasses, as they are now. */
static GPtrArray *bypassed_blocks_now(void)
{
    GPtrArray *blocks = g_ptr_array_new();
    RAMBlock *rb;

    RAMBLOCK_FOREACH_MIGRATABLE(rb) {
        if (bypass_shared_block_is_bypassed(rb)) {
            g_ptr_array_add(blocks, rb);
        }
    }
    return blocks;
}

static int blocks_pre_save(void *opaque)
{
    BypassSharedBlocks *b = opaque;
    g_autoptr(GPtrArray) blocks = NULL;
    uint32_t i;

    WITH_RCU_READ_LOCK_GUARD() {
        blocks = bypassed_blocks_now();
        b->nr = b->capacity = blocks->len;
        b->names = g_new0(BypassSharedName, b->nr);
        for (i = 0; i < b->nr; i++) {
            RAMBlock *rb = g_ptr_array_index(blocks, i);

            pstrcpy(b->names[i].idstr, sizeof(b->names[i].idstr), rb->idstr);
            trace_bypass_shared_save_block(rb->idstr, rb->used_length);
        }
    }
    if (!b->nr) {
        warn_report("bypass-shared-memory: no RAM block is shared and "
                    "backed by a memory file; all RAM will be migrated");
    }
    return 0;
}

static int blocks_post_save(void *opaque)
{
    BypassSharedBlocks *b = opaque;

    g_clear_pointer(&b->names, g_free);
    b->nr = b->capacity = 0;
    return 0;
}

static void incoming_clear(void)
{
    uint32_t i;

    for (i = 0; i < bypass.nr_in; i++) {
        template_file_free(bypass.in[i].file);
    }
    g_clear_pointer(&bypass.in, g_free);
    bypass.nr_in = 0;
    bypass.listed = false;
    bypass.identified = false;
    g_clear_pointer(&bypass.blocks.names, g_free);
    bypass.blocks.nr = bypass.blocks.capacity = 0;
    g_clear_pointer(&bypass.ids.ids, g_free);
    bypass.ids.nr = bypass.ids.capacity = 0;
}

static int blocks_pre_load(void *opaque)
{
    BypassSharedBlocks *b = opaque;

    if (bypass.listed) {
        error_report("bypass-shared-memory: the stream lists the bypassed "
                     "RAM blocks twice (corrupted stream)");
        return -EINVAL;
    }
    /* A block is listed at most once: no more names than blocks here. */
    b->nr = 0;
    b->capacity = nr_migratable_blocks();
    g_free(b->names);
    b->names = g_new0(BypassSharedName, b->capacity);
    return 0;
}

static bool blocks_nr_valid(void *opaque, int version_id)
{
    BypassSharedBlocks *b = opaque;

    if (b->nr > b->capacity) {
        error_report("bypass-shared-memory: the stream lists %u bypassed RAM "
                     "blocks, this VM has %u (corrupted stream, or the "
                     "template's machine differs)", b->nr, b->capacity);
        return false;
    }
    return true;
}

static bool incoming_add(const char *name, Error **errp)
{
    BypassedBlock *in;
    RAMBlock *rb;

    if (!name[0] ||
        strnlen(name, TEMPLATE_ID_NAME_LEN) == TEMPLATE_ID_NAME_LEN) {
        error_setg(errp, "invalid RAM block name in the list of bypassed "
                   "blocks (corrupted stream)");
        return false;
    }
    rb = qemu_ram_block_by_name(name);
    if (!rb || !qemu_ram_is_migratable(rb)) {
        error_setg(errp, "the template has RAM block '%s' but this VM has "
                   "none; start the clone with the template's machine and "
                   "memory options", name);
        return false;
    }
    if (incoming_find(rb)) {
        error_setg(errp, "RAM block '%s' is listed twice (corrupted stream)",
                   name);
        return false;
    }
    in = &bypass.in[bypass.nr_in];
    in->file = template_file_new(rb, errp);
    if (!in->file) {
        return false;
    }
    in->rb = rb;
    bypass.nr_in++;
    trace_bypass_shared_load_block(name);
    return true;
}

static int blocks_post_load(void *opaque, int version_id)
{
    BypassSharedBlocks *b = opaque;
    Error *err = NULL;
    uint32_t i;

    if (migration_incoming_postcopy_advised()) {
        error_setg(&err, "postcopy is not compatible with bypassed RAM "
                   "blocks (corrupted stream)");
        goto fail;
    }
    bypass.in = g_new0(BypassedBlock, b->nr);
    for (i = 0; i < b->nr; i++) {
        if (!incoming_add(b->names[i].idstr, &err)) {
            goto fail;
        }
    }
    bypass.listed = true;
    return 0;

fail:
    error_prepend(&err, "bypass-shared-memory: ");
    error_report_err(err);
    return -EINVAL;
}

/*
 * Sent in the setup phase, before RAM, so that RAM knows which blocks
 * carry no pages (a mapped-ram stream loads pages right there).
 */
static const VMStateDescription vmstate_bypass_shared_name = {
    .name = "bypass-shared-memory/block",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_BUFFER_UNSAFE(idstr, BypassSharedName, 0,
                              TEMPLATE_ID_NAME_LEN),
        VMSTATE_END_OF_LIST()
    },
};

static const VMStateDescription vmstate_bypass_shared_blocks = {
    .name = "bypass-shared-memory",
    .version_id = 1,
    .minimum_version_id = 1,
    .early_setup = true,
    .priority = MIG_PRI_BYPASS_SHARED,
    .needed = bypass_shared_needed,
    .pre_save = blocks_pre_save,
    .post_save = blocks_post_save,
    .pre_load = blocks_pre_load,
    .post_load = blocks_post_load,
    .fields = (const VMStateField[]) {
        VMSTATE_UINT32(nr, BypassSharedBlocks),
        VMSTATE_VALIDATE("nr fits this VM", blocks_nr_valid),
        VMSTATE_STRUCT_VARRAY_POINTER_UINT32(names, BypassSharedBlocks, nr,
                                             vmstate_bypass_shared_name,
                                             BypassSharedName),
        VMSTATE_END_OF_LIST()
    },
};

static int identities_pre_save(void *opaque)
{
    BypassSharedIdentities *s = opaque;
    g_autoptr(GPtrArray) files = g_ptr_array_new_with_free_func(
                                    (GDestroyNotify)template_file_free);
    BypassSharedMemoryCheck check = migrate_bypass_shared_memory_check();
    Error *err = NULL;
    uint32_t i;

    if (runstate_check(RUN_STATE_SAVE_VM)) {
        /* The VM resumes after the snapshot and writes the bypassed RAM. */
        error_report("bypass-shared-memory: a snapshot (savevm) cannot "
                     "leave shared memory out; disable the capability");
        return -EINVAL;
    }
    /* Collect under the RCU read lock; hash outside it. */
    WITH_RCU_READ_LOCK_GUARD() {
        g_autoptr(GPtrArray) blocks = bypassed_blocks_now();

        for (i = 0; i < blocks->len; i++) {
            TemplateFile *tf = template_file_new(
                                   g_ptr_array_index(blocks, i), &err);

            if (!tf) {
                goto fail;
            }
            g_ptr_array_add(files, tf);
        }
    }
    s->nr = s->capacity = files->len;
    s->ids = g_new0(TemplateIdentity, s->nr);
    for (i = 0; i < s->nr; i++) {
        if (!template_identity_compute(&s->ids[i],
                                       g_ptr_array_index(files, i), check,
                                       &err)) {
            goto fail;
        }
    }
    /* From here, a stream may describe the files: see vm_state_change. */
    bypass.recorded = s->nr > 0;
    return 0;

fail:
    error_prepend(&err, "bypass-shared-memory: ");
    error_report_err(err);
    g_clear_pointer(&s->ids, g_free);
    s->nr = s->capacity = 0;
    return -EINVAL;
}

static int identities_post_save(void *opaque)
{
    BypassSharedIdentities *s = opaque;

    bypass.nr_saved = s->nr;
    g_clear_pointer(&s->ids, g_free);
    s->nr = s->capacity = 0;
    return 0;
}

static int identities_pre_load(void *opaque)
{
    BypassSharedIdentities *s = opaque;

    if (!bypass.listed || bypass.identified) {
        error_report("bypass-shared-memory: identity records %s "
                     "(corrupted stream)", bypass.identified ?
                     "received twice" : "without a list of bypassed blocks");
        return -EINVAL;
    }
    s->nr = 0;
    s->capacity = bypass.nr_in;
    g_free(s->ids);
    s->ids = g_new0(TemplateIdentity, s->capacity);
    return 0;
}

static bool identities_nr_valid(void *opaque, int version_id)
{
    BypassSharedIdentities *s = opaque;

    if (s->nr != s->capacity) {
        error_report("bypass-shared-memory: %u identity records for %u "
                     "bypassed RAM blocks (corrupted stream)", s->nr,
                     s->capacity);
        return false;
    }
    return true;
}

/* Pair each record with its block: every block exactly once. */
static bool identities_match(BypassSharedIdentities *s, Error **errp)
{
    uint32_t i, j;

    for (i = 0; i < s->nr; i++) {
        const TemplateIdentity *id = &s->ids[i];
        BypassedBlock *in = NULL;

        if (!template_identity_valid(id, errp)) {
            return false;
        }
        for (j = 0; j < bypass.nr_in; j++) {
            if (!strcmp(template_file_block(bypass.in[j].file), id->idstr)) {
                in = &bypass.in[j];
                break;
            }
        }
        if (!in) {
            error_setg(errp, "identity record for RAM block '%s', which the "
                       "stream does not bypass (corrupted stream)",
                       id->idstr);
            return false;
        }
        if (in->id) {
            error_setg(errp, "two identity records for RAM block '%s' "
                       "(corrupted stream)", id->idstr);
            return false;
        }
        in->id = id;
    }
    return true;
}

typedef struct VerifyJob {
    Error *err;
} VerifyJob;

/* Runs in a worker thread when the load runs in a coroutine. */
static int verify_all(void *opaque)
{
    VerifyJob *job = opaque;
    uint32_t i;

    for (i = 0; i < bypass.nr_in; i++) {
        BypassedBlock *in = &bypass.in[i];

        if (!template_identity_verify(in->id, in->file, &job->err)) {
            return -EINVAL;
        }
    }
    return 0;
}

static int identities_post_load(void *opaque, int version_id)
{
    BypassSharedIdentities *s = opaque;
    VerifyJob job = { 0 };
    uint32_t i;
    int ret;

    bypass.identified = true;
    if (!identities_match(s, &job.err)) {
        ret = -EINVAL;
        goto out;
    }
    /*
     * The full check reads the whole file: keep the main loop (QMP)
     * responsive while it runs.
     */
    if (qemu_in_coroutine()) {
        ret = thread_pool_submit_co(verify_all, &job);
    } else {
        ret = verify_all(&job);
    }
    if (!ret) {
        for (i = 0; i < bypass.nr_in; i++) {
            bypass.in[i].verified = true;
        }
    }
out:
    if (ret) {
        error_prepend(&job.err, "bypass-shared-memory: ");
        error_report_err(job.err);
    }
    return ret;
}

/*
 * Sent once the source is stopped, before any device state: a device's
 * post_load may read guest memory, which must be verified by then.
 */
static const VMStateDescription vmstate_bypass_shared_identities = {
    .name = "bypass-shared-memory/identity",
    .version_id = 1,
    .minimum_version_id = 1,
    .priority = MIG_PRI_BYPASS_SHARED,
    .needed = bypass_shared_needed,
    .pre_save = identities_pre_save,
    .post_save = identities_post_save,
    .pre_load = identities_pre_load,
    .post_load = identities_post_load,
    .fields = (const VMStateField[]) {
        VMSTATE_UINT32(nr, BypassSharedIdentities),
        VMSTATE_VALIDATE("one record per bypassed block",
                         identities_nr_valid),
        VMSTATE_STRUCT_VARRAY_POINTER_UINT32(ids, BypassSharedIdentities, nr,
                                             vmstate_template_identity,
                                             TemplateIdentity),
        VMSTATE_END_OF_LIST()
    },
};

/*
 * Source: once a save that bypassed blocks completed, clones may map the
 * files; resuming this VM would write them.
 */
static int bypass_shared_notify(NotifierWithReturn *notifier,
                                MigrationEvent *e, Error **errp)
{
    if (e->type == MIG_EVENT_PRECOPY_SETUP) {
        bypass.nr_saved = 0;
    } else if (e->type == MIG_EVENT_PRECOPY_DONE && bypass.nr_saved &&
               migrate_bypass_shared_memory()) {
        bypass.resume_refused = true;
    }
    return 0;
}

/*
 * Source: identities were recorded, and the VM runs again (a failed save
 * resumes it, or the user lifted the refusal to resume).  It will write
 * its memory files, and writes through a shared mapping do not move a
 * file's modification time on every file system (tmpfs): move it, so that
 * no stream saved before this point loads ("modified after the template
 * was saved").  Explicitly later than the recorded time, which a coarse
 * file system clock could otherwise repeat.
 */
static void bypass_shared_vm_state_change(void *opaque, bool running,
                                          RunState state)
{
    RAMBlock *rb;

    if (!running || !bypass.recorded) {
        return;
    }
    bypass.recorded = false;
    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH_MIGRATABLE(rb) {
        struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT } };
        int fd = qemu_ram_get_fd(rb);
        struct stat st;

        if (!ramblock_is_shared_file(rb) || fd < 0 || fstat(fd, &st) < 0) {
            continue;
        }
        clock_gettime(CLOCK_REALTIME, &ts[1]);
        if (ts[1].tv_sec < st.st_mtim.tv_sec ||
            (ts[1].tv_sec == st.st_mtim.tv_sec &&
             ts[1].tv_nsec <= st.st_mtim.tv_nsec)) {
            ts[1] = st.st_mtim;
            if (++ts[1].tv_nsec == 1000000000) {
                ts[1].tv_sec++;
                ts[1].tv_nsec = 0;
            }
        }
        if (futimens(fd, ts) < 0) {
            warn_report("bypass-shared-memory: RAM block '%s': cannot move "
                        "the modification time of its memory file (%s); "
                        "streams saved before this VM resumed may still "
                        "load", rb->idstr, strerror(errno));
            continue;
        }
        trace_bypass_shared_resume_touch(rb->idstr);
    }
}

static void bypass_shared_register(void)
{
    if (bypass.registered) {
        return;
    }
    bypass.registered = true;
    vmstate_register(NULL, 0, &vmstate_bypass_shared_blocks, &bypass.blocks);
    vmstate_register(NULL, 0, &vmstate_bypass_shared_identities,
                     &bypass.ids);
    migration_add_notifier(&bypass.notifier, bypass_shared_notify);
    bypass.vm_state = qemu_add_vm_change_state_handler(
                          bypass_shared_vm_state_change, NULL);
}

void bypass_shared_migrate_init(void)
{
    if (migrate_bypass_shared_memory()) {
        bypass_shared_register();
    }
}

void bypass_shared_load_setup(void)
{
    bypass_shared_register();
    incoming_clear();
    bypass.loading = true;
}

bool bypass_shared_load_complete(Error **errp)
{
    bool ok = true;
    uint32_t i;

    for (i = 0; i < bypass.nr_in && ok; i++) {
        if (!bypass.in[i].verified) {
            error_setg(errp, "bypass-shared-memory: the stream bypasses RAM "
                       "block '%s' but never proved its identity "
                       "(truncated or corrupted stream)",
                       template_file_block(bypass.in[i].file));
            ok = false;
        }
    }
    incoming_clear();
    bypass.loading = false;
    return ok;
}

bool bypass_shared_postcopy_check(Error **errp)
{
    if (bypass.listed) {
        error_setg(errp, "bypass-shared-memory: postcopy is not compatible "
                   "with bypassed RAM blocks (corrupted stream)");
        return false;
    }
    return true;
}

bool migration_bypass_shared_may_resume(Error **errp)
{
    if (!migrate_bypass_shared_memory()) {
        bypass.resume_refused = false;
    }
    if (bypass.resume_refused) {
        error_setg(errp, "this VM was saved with bypass-shared-memory: "
                   "clones may map its memory files, and resuming it would "
                   "change their memory");
        error_append_hint(errp, "Quit it, or, if no clone maps its files, "
                          "disable the bypass-shared-memory capability "
                          "and resume.\n");
        return false;
    }
    return true;
}
