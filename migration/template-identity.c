/*
 * Template identity: what a clone must map for each bypassed RAM block
 *
 * A template saved with bypass-shared-memory carries no RAM: a clone maps
 * the template's memory file instead.  So that a clone never runs on the
 * wrong memory, the stream records, for every bypassed block, the block's
 * geometry, the size and modification time of its backing file and a
 * fingerprint of its content; the destination recomputes them from its own
 * file and refuses to load on any difference.
 *
 * The default ("sampled") fingerprint hashes TEMPLATE_ID_SAMPLES chunks of
 * TEMPLATE_ID_CHUNK bytes, the first and last chunk plus chunks chosen by a
 * per-save random seed, so its cost does not grow with RAM size.  It finds
 * a different template with high probability, a file modified through
 * write(2) by its modification time, but not a few bytes changed through a
 * shared mapping.  The "full" check also hashes every byte of the block.
 *
 * Records come from streams, which may be corrupted or crafted: every
 * field has a fixed size and is range-checked before use.  Hashing runs on
 * a TemplateFile (a duplicate descriptor and a copy of the geometry), so
 * callers collect under their locks and hash outside them.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/cutils.h"
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
        VMSTATE_BUFFER_UNSAFE(idstr, TemplateIdentity, 0,
                              TEMPLATE_ID_NAME_LEN),
        VMSTATE_UINT64(used_length, TemplateIdentity),
        VMSTATE_UINT64(page_size, TemplateIdentity),
        VMSTATE_UINT64(file_size, TemplateIdentity),
        VMSTATE_UINT64(fd_offset, TemplateIdentity),
        VMSTATE_UINT64(mr_addr, TemplateIdentity),
        VMSTATE_INT64(mtime_ns, TemplateIdentity),
        VMSTATE_UINT8(check, TemplateIdentity),
        VMSTATE_UINT64(seed, TemplateIdentity),
        VMSTATE_UINT32(samples, TemplateIdentity),
        VMSTATE_BUFFER(sampled, TemplateIdentity),
        VMSTATE_BUFFER(full, TemplateIdentity),
        VMSTATE_END_OF_LIST()
    },
};

struct TemplateFile {
    char idstr[TEMPLATE_ID_NAME_LEN];
    char *path;                     /* for messages */
    int fd;                         /* a duplicate, ours */
    uint64_t fd_offset;
    uint64_t used_length;
    uint64_t page_size;
    uint64_t mr_addr;
};

bool template_file_backed(RAMBlock *rb, Error **errp)
{
    if (!qemu_ram_is_named_file(rb) || qemu_ram_get_fd(rb) < 0) {
        error_setg(errp, "RAM block '%s' is not backed by a memory file "
                   "here, so its content would be missing; map the "
                   "template's memory file with memory-backend-file,"
                   "mem-path=FILE,share=off (or readonly=on,rom=off)",
                   rb->idstr);
        return false;
    }
    return true;
}

TemplateFile *template_file_new(RAMBlock *rb, Error **errp)
{
    g_autofree char *link = NULL;
    TemplateFile *tf;
    int fd;

    if (!template_file_backed(rb, errp)) {
        return NULL;
    }
    fd = qemu_dup(qemu_ram_get_fd(rb));
    if (fd < 0) {
        error_setg_errno(errp, errno, "RAM block '%s': cannot duplicate the "
                         "descriptor of its memory file", rb->idstr);
        return NULL;
    }
    tf = g_new0(TemplateFile, 1);
    pstrcpy(tf->idstr, sizeof(tf->idstr), rb->idstr);
    link = g_strdup_printf("/proc/self/fd/%d", fd);
    tf->path = g_file_read_link(link, NULL);
    if (!tf->path) {
        tf->path = g_strdup("(unknown file)");
    }
    tf->fd = fd;
    tf->fd_offset = rb->fd_offset;
    tf->used_length = rb->used_length;
    tf->page_size = rb->page_size;
    tf->mr_addr = rb->mr->addr;
    return tf;
}

void template_file_free(TemplateFile *tf)
{
    if (tf) {
        close(tf->fd);
        g_free(tf->path);
        g_free(tf);
    }
}

const char *template_file_block(const TemplateFile *tf)
{
    return tf->idstr;
}

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
static bool read_block(TemplateFile *tf, uint64_t off, uint8_t *buf,
                       size_t len, Error **errp)
{
    while (len) {
        ssize_t n = pread(tf->fd, buf, len, tf->fd_offset + off);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            error_setg_errno(errp, n < 0 ? errno : EIO, "RAM block '%s': "
                             "cannot read memory file %s at offset %" PRIu64,
                             tf->idstr, tf->path, tf->fd_offset + off);
            return false;
        }
        buf += n;
        off += n;
        len -= n;
    }
    return true;
}

static bool fingerprint_sampled(TemplateFile *tf, uint64_t seed,
                                uint32_t samples, uint8_t *digest,
                                Error **errp)
{
    uint64_t nchunks = DIV_ROUND_UP(tf->used_length, TEMPLATE_ID_CHUNK);
    g_autoptr(GChecksum) ck = g_checksum_new(G_CHECKSUM_SHA256);
    uint8_t buf[TEMPLATE_ID_CHUNK];
    gsize len = TEMPLATE_ID_DIGEST_LEN;
    uint32_t i;

    for (i = 0; i < samples && nchunks; i++) {
        uint64_t idx = sample_index(seed, i, nchunks);
        uint64_t off = idx * TEMPLATE_ID_CHUNK;
        size_t n = MIN(TEMPLATE_ID_CHUNK, tf->used_length - off);
        uint64_t le = cpu_to_le64(idx);

        if (!read_block(tf, off, buf, n, errp)) {
            return false;
        }
        g_checksum_update(ck, (const guchar *)&le, sizeof(le));
        g_checksum_update(ck, buf, n);
    }
    g_checksum_get_digest(ck, digest, &len);
    return true;
}

static bool fingerprint_full(TemplateFile *tf, uint8_t *digest, Error **errp)
{
    g_autoptr(GChecksum) ck = g_checksum_new(G_CHECKSUM_SHA256);
    g_autofree uint8_t *buf = g_malloc(1 * MiB);
    gsize len = TEMPLATE_ID_DIGEST_LEN;
    uint64_t off;

    for (off = 0; off < tf->used_length; off += 1 * MiB) {
        size_t n = MIN(1 * MiB, tf->used_length - off);

        if (!read_block(tf, off, buf, n, errp)) {
            return false;
        }
        g_checksum_update(ck, buf, n);
    }
    g_checksum_get_digest(ck, digest, &len);
    return true;
}

static bool file_stat(TemplateFile *tf, struct stat *st, Error **errp)
{
    if (fstat(tf->fd, st) < 0) {
        error_setg_errno(errp, errno, "RAM block '%s': cannot stat memory "
                         "file %s", tf->idstr, tf->path);
        return false;
    }
    return true;
}

static int64_t stat_mtime_ns(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
}

bool template_identity_compute(TemplateIdentity *id, TemplateFile *tf,
                               BypassSharedMemoryCheck check, Error **errp)
{
    int64_t start = g_get_monotonic_time();
    struct stat st;

    if (!file_stat(tf, &st, errp)) {
        return false;
    }
    memset(id, 0, sizeof(*id));
    pstrcpy(id->idstr, sizeof(id->idstr), tf->idstr);
    id->used_length = tf->used_length;
    id->page_size = tf->page_size;
    id->file_size = st.st_size;
    id->fd_offset = tf->fd_offset;
    id->mr_addr = tf->mr_addr;
    id->mtime_ns = stat_mtime_ns(&st);
    id->check = check;
    id->seed = g_random_int() | ((uint64_t)g_random_int() << 32);
    id->samples = TEMPLATE_ID_SAMPLES;
    if (!fingerprint_sampled(tf, id->seed, id->samples, id->sampled, errp)) {
        return false;
    }
    if (check == BYPASS_SHARED_MEMORY_CHECK_FULL &&
        !fingerprint_full(tf, id->full, errp)) {
        return false;
    }
    trace_template_identity_compute(tf->idstr, id->used_length, id->file_size,
                                    BypassSharedMemoryCheck_str(check),
                                    g_get_monotonic_time() - start);
    return true;
}

bool template_identity_valid(const TemplateIdentity *id, Error **errp)
{
    size_t len = strnlen(id->idstr, sizeof(id->idstr));

    if (len == 0 || len == sizeof(id->idstr)) {
        error_setg(errp, "invalid RAM block name in an identity record");
        return false;
    }
    if (id->check >= BYPASS_SHARED_MEMORY_CHECK__MAX ||
        id->samples < TEMPLATE_ID_SAMPLES ||
        id->samples > TEMPLATE_ID_MAX_SAMPLES) {
        error_setg(errp, "invalid identity record for RAM block '%s' "
                   "(check %u, %u samples)", id->idstr, id->check,
                   id->samples);
        return false;
    }
    return true;
}

bool template_identity_verify(const TemplateIdentity *id, TemplateFile *tf,
                              Error **errp)
{
    uint8_t digest[TEMPLATE_ID_DIGEST_LEN];
    int64_t start = g_get_monotonic_time();
    struct stat st;

    if (!template_identity_valid(id, errp)) {
        return false;
    }
    if (strcmp(id->idstr, tf->idstr)) {
        error_setg(errp, "identity record of RAM block '%s' checked against "
                   "block '%s'", id->idstr, tf->idstr);
        return false;
    }
    if (id->used_length != tf->used_length) {
        error_setg(errp, "RAM block '%s': the template's block is 0x%" PRIx64
                   " bytes, this one 0x%" PRIx64 "; start the clone with the "
                   "template's memory size", tf->idstr, id->used_length,
                   tf->used_length);
        return false;
    }
    if (id->page_size != tf->page_size) {
        error_setg(errp, "RAM block '%s': the template used %" PRIu64
                   "-byte pages, this block %" PRIu64 "-byte pages (file %s)",
                   tf->idstr, id->page_size, tf->page_size, tf->path);
        return false;
    }
    if (id->mr_addr != tf->mr_addr) {
        error_setg(errp, "RAM block '%s': its memory region is at 0x%" PRIx64
                   " in its container in the template, at 0x%" PRIx64
                   " here; start the clone with the template's machine and "
                   "memory options", tf->idstr, id->mr_addr, tf->mr_addr);
        return false;
    }
    if (id->fd_offset != tf->fd_offset) {
        error_setg(errp, "RAM block '%s': the template mapped %s at offset "
                   "%" PRIu64 ", this block at offset %" PRIu64, tf->idstr,
                   tf->path, id->fd_offset, tf->fd_offset);
        return false;
    }
    if (!file_stat(tf, &st, errp)) {
        return false;
    }
    if (id->file_size != st.st_size) {
        error_setg(errp, "RAM block '%s': memory file %s is %" PRIu64
                   " bytes, the template's was %" PRIu64 " bytes: "
                   "wrong or modified template file", tf->idstr, tf->path,
                   (uint64_t)st.st_size, id->file_size);
        return false;
    }
    if (id->mtime_ns != stat_mtime_ns(&st)) {
        error_setg(errp, "RAM block '%s': memory file %s was modified or "
                   "re-created after the template was saved (modification "
                   "time differs); save the template again, and copy "
                   "template files with their timestamps", tf->idstr,
                   tf->path);
        return false;
    }
    if (!fingerprint_sampled(tf, id->seed, id->samples, digest, errp)) {
        return false;
    }
    if (memcmp(digest, id->sampled, sizeof(digest))) {
        error_setg(errp, "RAM block '%s': the content of memory file %s "
                   "differs from the template (sampled fingerprint of %u "
                   "chunks): wrong or modified template file", tf->idstr,
                   tf->path, id->samples);
        return false;
    }
    if (id->check == BYPASS_SHARED_MEMORY_CHECK_FULL) {
        if (!fingerprint_full(tf, digest, errp)) {
            return false;
        }
        if (memcmp(digest, id->full, sizeof(digest))) {
            error_setg(errp, "RAM block '%s': the content of memory file %s "
                       "differs from the template (full check): modified "
                       "template file", tf->idstr, tf->path);
            return false;
        }
    }
    trace_template_identity_verify(tf->idstr, tf->path,
                                   BypassSharedMemoryCheck_str(id->check),
                                   g_get_monotonic_time() - start);
    return true;
}
