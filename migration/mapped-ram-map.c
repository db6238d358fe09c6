/*
 * Load a mapped-ram file by mapping it
 *
 * A mapped-ram ("fixed-ram") file keeps every page of a RAM block at a
 * fixed offset, zero pages being holes.  Instead of reading the pages
 * (mapped-ram-load=copy), mapped-ram-load=map maps each block's page region
 * of the file with MAP_PRIVATE | MAP_FIXED over the block's memory, at the
 * same host address, before any vCPU runs.  The restore then costs a few
 * system calls whatever the RAM size; the guest faults pages in from the
 * page cache as it touches them, and every VM mapping the same file shares
 * the clean pages.  Writes are private (copy-on-write).
 *
 * Invariants:
 * - only anonymous, private RAM of host page size is replaced: shared RAM
 *   (vhost-user, ivshmem, memory-backend-file,share=on) has other users,
 *   file-backed or hugetlbfs RAM has its own backing;
 * - a page whose bitmap bit is clear reads as zero: where the file still
 *   holds data for it (a live save wrote the page, then found it zero),
 *   that range gets an anonymous mapping instead; a file whose extension
 *   record says that its clear pages read as zero (this QEMU's saves,
 *   mapped-ram-ext.c) needs no search for such data;
 * - the block is mapped through physmem (qemu_ram_map_private()), which
 *   re-applies the allocation-time madvise() flags and records the file
 *   in the RAMBlock, so discard and poisoned-page recovery know the truth;
 * - discarding RAM on a private file mapping brings the file content
 *   back, not zeros: RAM discard is disabled (balloon inflation, free page
 *   reporting and virtio-mem then refuse to work), like for vfio;
 * - a device that pinned guest RAM before the load (vfio, vhost-vdpa,
 *   iommufd, confidential guests: they disable RAM discard) would keep
 *   its DMA on the replaced pages: map is refused then;
 * - the file must not change while mapped: this VM refuses to migrate into
 *   it; other writers are the user's to prevent (see the docs).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bitops.h"
#include "qapi/error.h"
#include "exec/ramblock.h"
#include "exec/target_page.h"
#include "exec/memory.h"
#include "qapi/qapi-types-migration.h"
#include "io/channel-file.h"
#include "qemu-file.h"
#include "mapped-ram-map.h"
#include "trace.h"

/* Beyond this many zero ranges, zero them by writing instead of mapping. */
#define MAPPED_RAM_MAP_MAX_ZERO_MAPS 4096

/* A migration file that guest RAM maps or still loads from. */
typedef struct MappedRamFile {
    dev_t dev;
    ino_t ino;
    const char *use;        /* "maps", "is still being loaded from" */
} MappedRamFile;

static struct {
    bool discard_disabled;  /* by us */
    /* The files RAM maps or loads from, to refuse writing them. */
    GArray *files;          /* of MappedRamFile */
} map_state;

static bool block_can_be_mapped(RAMBlock *rb, Error **errp)
{
    const char *why = NULL;

    if (qemu_real_host_page_size() != TARGET_PAGE_SIZE) {
        why = "the host page size differs from the target page size";
    } else if (qemu_ram_is_shared(rb)) {
        why = "it is shared memory (share=on, vhost-user, ivshmem): other "
              "users would not see the mapping";
    } else if (rb->fd >= 0) {
        why = "it is backed by a file (memory-backend-file, hugetlbfs)";
    } else if (rb->page_size != qemu_real_host_page_size()) {
        why = "its page size is not the host page size";
    } else if (rb->guest_memfd >= 0) {
        why = "it uses guest_memfd";
    }
    if (why) {
        error_setg(errp, "mapped-ram-load=map: cannot map RAM block '%s': "
                   "%s; load it with mapped-ram-load=copy", rb->idstr, why);
        return false;
    }
    return true;
}

bool mapped_ram_map_check_unpinned(const char *mode, Error **errp)
{
    if (ram_block_discard_is_disabled()) {
        error_setg(errp, "mapped-ram-load=%s: a device pinned guest RAM "
                   "(vfio, vhost-vdpa, iommufd, a confidential guest) and "
                   "would go on using the pages it pinned; load with "
                   "mapped-ram-load=copy", mode);
        return false;
    }
    return true;
}

/*
 * Mapping replaces the pages behind guest RAM, and discarding a private
 * file mapping brings the file back: RAM discard must be off for good.
 * Those who disable it themselves (vfio, vhost-vdpa, iommufd, confidential
 * guests) pin guest RAM by host address: their DMA would stay on the old
 * pages.
 */
static bool disable_discard(Error **errp)
{
    if (map_state.discard_disabled) {
        return true;
    }
    if (!mapped_ram_map_check_unpinned("map", errp)) {
        return false;
    }
    if (ram_block_discard_disable(true)) {
        error_setg(errp, "mapped-ram-load=map: a device needs to discard "
                   "RAM (virtio-mem?), which a private file mapping "
                   "cannot do; load with mapped-ram-load=copy");
        return false;
    }
    map_state.discard_disabled = true;
    return true;
}

int mapped_ram_map_open_file(QEMUFile *f, const char *mode,
                             struct stat *st, Error **errp)
{
    QIOChannel *ioc = qemu_file_get_ioc(f);
    g_autofree char *proc = NULL;
    int fd;

    if (!object_dynamic_cast(OBJECT(ioc), TYPE_QIO_CHANNEL_FILE)) {
        error_setg(errp, "mapped-ram-load=%s needs a file: or fd: migration "
                   "from a regular file", mode);
        return -1;
    }
    /* Not dup(): a dup shares the stream's file offset. */
    proc = g_strdup_printf("/proc/self/fd/%d", QIO_CHANNEL_FILE(ioc)->fd);
    fd = open(proc, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, st) < 0) {
        error_setg_errno(errp, errno, "mapped-ram-load=%s: cannot reopen "
                         "the migration file", mode);
        goto fail;
    }
    if (!S_ISREG(st->st_mode)) {
        error_setg(errp, "mapped-ram-load=%s needs a regular file", mode);
        goto fail;
    }
    return fd;

fail:
    if (fd >= 0) {
        close(fd);
    }
    return -1;
}

void mapped_ram_map_hold_file(const struct stat *st, const char *use)
{
    MappedRamFile m = { .dev = st->st_dev, .ino = st->st_ino, .use = use };

    if (!map_state.files) {
        map_state.files = g_array_new(false, false, sizeof(MappedRamFile));
    }
    g_array_append_val(map_state.files, m);
}

void mapped_ram_map_release_file(const struct stat *st)
{
    guint i;

    for (i = 0; map_state.files && i < map_state.files->len; i++) {
        MappedRamFile *m = &g_array_index(map_state.files, MappedRamFile, i);

        if (m->dev == st->st_dev && m->ino == st->st_ino) {
            g_array_remove_index_fast(map_state.files, i);
            return;
        }
    }
}

bool mapped_ram_map_check_outgoing(int fd, Error **errp)
{
    struct stat st;
    guint i;

    if (!map_state.files || fstat(fd, &st) < 0) {
        return true;
    }
    for (i = 0; i < map_state.files->len; i++) {
        MappedRamFile *m = &g_array_index(map_state.files, MappedRamFile, i);

        if (m->dev == st.st_dev && m->ino == st.st_ino) {
            error_setg(errp, "this VM's RAM %s the migration file it would "
                       "write; write another file", m->use);
            return false;
        }
    }
    return true;
}

/* Pages [first, end) have clear bits: make them read as zero. */
static bool zero_range(RAMBlock *rb, long first, long end, unsigned *nr_maps,
                       Error **errp)
{
    ram_addr_t start = (ram_addr_t)first << TARGET_PAGE_BITS;
    size_t len = (size_t)(end - first) << TARGET_PAGE_BITS;

    if (*nr_maps >= MAPPED_RAM_MAP_MAX_ZERO_MAPS) {
        memset(rb->host + start, 0, len);
        return true;
    }
    (*nr_maps)++;
    return !qemu_ram_map_private(rb, start, len, -1, 0, errp);
}

/*
 * A clear bit normally sits over a hole of the file, which reads as zero.
 * But a live save by a QEMU that does not punch such pages out may have
 * written a page and found it zero later, leaving old data at its offset:
 * walk the file's data extents (@nr_extents counts them) and zero the
 * clear pages they cover.
 */
static bool zero_stale_pages(RAMBlock *rb, int fd, const unsigned long *bitmap,
                             long num_pages, unsigned *nr_extents,
                             unsigned *nr_maps, Error **errp)
{
    off_t base = rb->pages_offset;
    off_t end = base + ((off_t)num_pages << TARGET_PAGE_BITS);
    off_t data = base;

    while (data < end) {
        off_t hole;
        long first, last, clear, set;

        data = lseek(fd, data, SEEK_DATA);
        if (data < 0 && errno == ENXIO) {
            return true;            /* no data beyond: holes read as zero */
        }
        hole = data < 0 ? -1 : lseek(fd, data, SEEK_HOLE);
        if (hole < 0) {
            error_setg_errno(errp, errno, "mapped-ram-load=map: RAM block "
                             "'%s': cannot find the data of the file",
                             rb->idstr);
            return false;
        }
        if (data >= end) {
            return true;
        }
        (*nr_extents)++;
        hole = MIN(hole, end);
        first = (data - base) >> TARGET_PAGE_BITS;
        last = DIV_ROUND_UP(hole - base, TARGET_PAGE_SIZE);
        for (clear = find_next_zero_bit(bitmap, last, first); clear < last;
             clear = find_next_zero_bit(bitmap, last, set + 1)) {
            set = find_next_bit(bitmap, last, clear + 1);
            if (!zero_range(rb, clear, set, nr_maps, errp)) {
                return false;
            }
        }
        data = hole;
    }
    return true;
}

bool mapped_ram_map_check_extent(const char *mode, RAMBlock *rb,
                                 long num_pages, const struct stat *st,
                                 Error **errp)
{
    uint64_t len = (uint64_t)num_pages << TARGET_PAGE_BITS;

    if (len > rb->used_length) {
        error_setg(errp, "mapped-ram-load=%s: RAM block '%s': the file has "
                   "%ld pages, the block 0x" RAM_ADDR_FMT " bytes", mode,
                   rb->idstr, num_pages, rb->used_length);
        return false;
    }
    if (rb->pages_offset > st->st_size ||
        len > st->st_size - rb->pages_offset) {
        error_setg(errp, "mapped-ram-load=%s: RAM block '%s': the file is "
                   "truncated (%" PRIu64 " bytes, its pages end at %" PRIu64
                   ")", mode, rb->idstr, (uint64_t)st->st_size,
                   rb->pages_offset + len);
        return false;
    }
    return true;
}

bool mapped_ram_map_block(QEMUFile *f, RAMBlock *rb,
                          const unsigned long *bitmap, long num_pages,
                          bool clear_is_zero, Error **errp)
{
    int64_t t0 = g_get_monotonic_time();
    size_t len = (size_t)num_pages << TARGET_PAGE_BITS;
    unsigned nr_extents = 0, nr_zero_maps = 0;
    struct stat st;
    bool ok = false;
    int fd;

    if (!block_can_be_mapped(rb, errp)) {
        return false;
    }
    if (!QEMU_IS_ALIGNED(rb->pages_offset, qemu_real_host_page_size())) {
        error_setg(errp, "mapped-ram-load=map: RAM block '%s': its pages "
                   "start at file offset 0x%" PRIx64 ", not a multiple of the "
                   "host page size; load it with mapped-ram-load=copy",
                   rb->idstr, rb->pages_offset);
        return false;
    }
    fd = mapped_ram_map_open_file(f, "map", &st, errp);
    if (fd < 0) {
        return false;
    }
    if (!mapped_ram_map_check_extent("map", rb, num_pages, &st, errp)) {
        goto out;
    }
    if (!disable_discard(errp)) {
        goto out;
    }
    /* RAM may map the file from here on, whatever happens next. */
    mapped_ram_map_hold_file(&st, "maps");
    if (qemu_ram_map_private(rb, 0, len, fd, rb->pages_offset, errp)) {
        error_prepend(errp, "mapped-ram-load=map: ");
        goto out;
    }
    if (!clear_is_zero &&
        !zero_stale_pages(rb, fd, bitmap, num_pages, &nr_extents,
                          &nr_zero_maps, errp)) {
        goto out;
    }
    trace_mapped_ram_map_block(rb->idstr, len, rb->pages_offset,
                               clear_is_zero, nr_extents, nr_zero_maps,
                               g_get_monotonic_time() - t0);
    ok = true;
out:
    close(fd);
    return ok;
}
