/*
 * Template identity: what a clone must map for each bypassed RAM block
 *
 * A template saved with bypass-shared-memory carries no RAM: a clone maps
 * the template's memory file instead.  So that a clone never runs on the
 * wrong memory, the stream records, for every bypassed block, the block's
 * geometry, the size and modification time of its backing file and a
 * fingerprint of its content; the destination recomputes them from its own
 * mapping and refuses to load on any difference.
 *
 * The default ("sampled") fingerprint hashes TEMPLATE_ID_SAMPLES chunks of
 * TEMPLATE_ID_CHUNK bytes, the first and last chunk plus chunks chosen by a
 * per-save random seed, so its cost does not grow with RAM size.  It finds
 * a different template with high probability, a file modified through
 * write(2) by its modification time, but not a few bytes changed through a
 * shared mapping.  The "full" check also hashes every byte of the block.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qapi/qapi-types-migration.h"
#include "exec/memory.h"
#include "exec/ramblock.h"
#include "migration/vmstate.h"
#include "template-identity.h"
#include "trace.h"

const VMStateDescription vmstate_template_identity = {
    .name = "template-identity",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_UINT32(idlen, TemplateIdentity),
        VMSTATE_VBUFFER_ALLOC_UINT32(idstr, TemplateIdentity, 1, NULL, idlen),
        VMSTATE_UINT64(used_length, TemplateIdentity),
        VMSTATE_UINT64(page_size, TemplateIdentity),
        VMSTATE_UINT64(file_size, TemplateIdentity),
        VMSTATE_UINT64(fd_offset, TemplateIdentity),
        VMSTATE_UINT64(gpa, TemplateIdentity),
        VMSTATE_INT64(mtime_ns, TemplateIdentity),
        VMSTATE_UINT8(check, TemplateIdentity),
        VMSTATE_UINT64(seed, TemplateIdentity),
        VMSTATE_UINT32(samples, TemplateIdentity),
        VMSTATE_BUFFER(sampled, TemplateIdentity),
        VMSTATE_BUFFER(full, TemplateIdentity),
        VMSTATE_END_OF_LIST()
    },
};

/* splitmix64: a tiny, well-mixed sequence; the seed is in the stream. */
static uint64_t sample_index(uint64_t seed, uint32_t i, uint64_t nchunks)
{
    uint64_t z;

    if (i == 0) {
        return 0;
    }
    if (i == 1) {
        return nchunks - 1;
    }
    z = seed + (uint64_t)i * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return z % nchunks;
}

/*
 * Read the block's bytes from its file, not through its mapping: faulting
 * sparse pages in would allocate page tables across the whole block.
 * Before the guest runs, a clone's private mapping shows the file.
 */
static bool read_block(RAMBlock *rb, uint64_t off, uint8_t *buf, size_t len,
                       Error **errp)
{
    int fd = qemu_ram_get_fd(rb);

    while (len) {
        ssize_t n = pread(fd, buf, len, rb->fd_offset + off);

        if (n <= 0) {
            error_setg_errno(errp, n < 0 ? errno : EIO, "RAM block '%s': "
                             "cannot read its memory file at offset %" PRIu64,
                             rb->idstr, rb->fd_offset + off);
            return false;
        }
        buf += n;
        off += n;
        len -= n;
    }
    return true;
}

static bool fingerprint_sampled(RAMBlock *rb, uint64_t used_length,
                                uint64_t seed, uint32_t samples,
                                uint8_t *digest, Error **errp)
{
    uint64_t nchunks = DIV_ROUND_UP(used_length, TEMPLATE_ID_CHUNK);
    g_autoptr(GChecksum) ck = g_checksum_new(G_CHECKSUM_SHA256);
    uint8_t buf[TEMPLATE_ID_CHUNK];
    gsize len = TEMPLATE_ID_DIGEST_LEN;
    uint32_t i;

    for (i = 0; i < samples && nchunks; i++) {
        uint64_t idx = sample_index(seed, i, nchunks);
        uint64_t off = idx * TEMPLATE_ID_CHUNK;
        size_t n = MIN(TEMPLATE_ID_CHUNK, used_length - off);
        uint64_t le = cpu_to_le64(idx);

        if (!read_block(rb, off, buf, n, errp)) {
            return false;
        }
        g_checksum_update(ck, (const guchar *)&le, sizeof(le));
        g_checksum_update(ck, buf, n);
    }
    g_checksum_get_digest(ck, digest, &len);
    return true;
}

static bool fingerprint_full(RAMBlock *rb, uint64_t used_length,
                             uint8_t *digest, Error **errp)
{
    g_autoptr(GChecksum) ck = g_checksum_new(G_CHECKSUM_SHA256);
    g_autofree uint8_t *buf = g_malloc(1 * MiB);
    gsize len = TEMPLATE_ID_DIGEST_LEN;
    uint64_t off;

    for (off = 0; off < used_length; off += 1 * MiB) {
        size_t n = MIN(1 * MiB, used_length - off);

        if (!read_block(rb, off, buf, n, errp)) {
            return false;
        }
        g_checksum_update(ck, buf, n);
    }
    g_checksum_get_digest(ck, digest, &len);
    return true;
}

static char *block_file_name(RAMBlock *rb)
{
    g_autofree char *link = g_strdup_printf("/proc/self/fd/%d",
                                            qemu_ram_get_fd(rb));
    char *name = g_file_read_link(link, NULL);

    return name ? name : g_strdup("(unknown file)");
}

static bool block_file_stat(RAMBlock *rb, struct stat *st, Error **errp)
{
    int fd = qemu_ram_get_fd(rb);

    if (fd < 0 || !qemu_ram_is_named_file(rb)) {
        error_setg(errp, "RAM block '%s' is not backed by a memory file; "
                   "map the template's file with memory-backend-file,"
                   "mem-path=FILE,share=off (or readonly=on,rom=off)",
                   rb->idstr);
        return false;
    }
    if (fstat(fd, st) < 0) {
        error_setg_errno(errp, errno, "RAM block '%s': cannot stat its "
                         "memory file", rb->idstr);
        return false;
    }
    return true;
}

static int64_t stat_mtime_ns(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
}

bool template_identity_compute(TemplateIdentity *id, RAMBlock *rb,
                               BypassSharedMemoryCheck check, Error **errp)
{
    struct stat st;
    int64_t start = g_get_monotonic_time();

    if (!block_file_stat(rb, &st, errp)) {
        return false;
    }
    memset(id, 0, sizeof(*id));
    id->idlen = strlen(rb->idstr);
    id->idstr = g_memdup2(rb->idstr, id->idlen);
    id->used_length = rb->used_length;
    id->page_size = rb->page_size;
    id->file_size = st.st_size;
    id->fd_offset = rb->fd_offset;
    id->gpa = rb->mr->addr;
    id->mtime_ns = stat_mtime_ns(&st);
    id->check = check;
    id->seed = g_random_int() | ((uint64_t)g_random_int() << 32);
    id->samples = TEMPLATE_ID_SAMPLES;
    if (!fingerprint_sampled(rb, id->used_length, id->seed, id->samples,
                             id->sampled, errp) ||
        (check == BYPASS_SHARED_MEMORY_CHECK_FULL &&
         !fingerprint_full(rb, id->used_length, id->full, errp))) {
        template_identity_clear(id);
        return false;
    }
    trace_template_identity_compute(rb->idstr, id->used_length, id->file_size,
                                    BypassSharedMemoryCheck_str(check),
                                    g_get_monotonic_time() - start);
    return true;
}

bool template_identity_verify(const TemplateIdentity *id, RAMBlock *rb,
                              Error **errp)
{
    g_autofree char *file = NULL;
    uint8_t digest[TEMPLATE_ID_DIGEST_LEN];
    int64_t start = g_get_monotonic_time();
    struct stat st;

    if (!block_file_stat(rb, &st, errp)) {
        return false;
    }
    file = block_file_name(rb);
    if (id->used_length != rb->used_length) {
        error_setg(errp, "RAM block '%s': the template's block is 0x%" PRIx64
                   " bytes, this one 0x" RAM_ADDR_FMT "; start the clone "
                   "with the template's memory size", rb->idstr,
                   id->used_length, rb->used_length);
        return false;
    }
    if (id->page_size != rb->page_size) {
        error_setg(errp, "RAM block '%s': the template used %" PRIu64
                   "-byte pages, this block %zu-byte pages (file %s)",
                   rb->idstr, id->page_size, rb->page_size, file);
        return false;
    }
    if (id->gpa != rb->mr->addr) {
        error_setg(errp, "RAM block '%s': mapped at guest address 0x%"
                   PRIx64 " in the template, 0x%" PRIx64 " here",
                   rb->idstr, id->gpa, (uint64_t)rb->mr->addr);
        return false;
    }
    if (id->fd_offset != rb->fd_offset) {
        error_setg(errp, "RAM block '%s': the template mapped %s at offset "
                   "%" PRIu64 ", this block at offset %" PRIu64, rb->idstr,
                   file, id->fd_offset, rb->fd_offset);
        return false;
    }
    if (id->file_size != st.st_size) {
        error_setg(errp, "RAM block '%s': memory file %s is %" PRIu64
                   " bytes, the template's was %" PRIu64 " bytes: "
                   "wrong or modified template file", rb->idstr, file,
                   (uint64_t)st.st_size, id->file_size);
        return false;
    }
    if (id->mtime_ns != stat_mtime_ns(&st)) {
        error_setg(errp, "RAM block '%s': memory file %s was modified or "
                   "re-created after the template was saved (modification "
                   "time differs); save the template again, and copy "
                   "template files with their timestamps", rb->idstr, file);
        return false;
    }
    if (!fingerprint_sampled(rb, id->used_length, id->seed, id->samples,
                             digest, errp)) {
        return false;
    }
    if (memcmp(digest, id->sampled, sizeof(digest))) {
        error_setg(errp, "RAM block '%s': the content of memory file %s "
                   "differs from the template (sampled fingerprint of %u "
                   "chunks): wrong or modified template file", rb->idstr,
                   file, id->samples);
        return false;
    }
    if (id->check == BYPASS_SHARED_MEMORY_CHECK_FULL) {
        if (!fingerprint_full(rb, id->used_length, digest, errp)) {
            return false;
        }
        if (memcmp(digest, id->full, sizeof(digest))) {
            error_setg(errp, "RAM block '%s': the content of memory file %s "
                       "differs from the template (full check): modified "
                       "template file", rb->idstr, file);
            return false;
        }
    }
    trace_template_identity_verify(rb->idstr, file,
                                   id->check < BYPASS_SHARED_MEMORY_CHECK__MAX ?
                                   BypassSharedMemoryCheck_str(id->check) : "?",
                                   g_get_monotonic_time() - start);
    return true;
}

void template_identity_clear(TemplateIdentity *id)
{
    g_free(id->idstr);
    memset(id, 0, sizeof(*id));
}
