/*
 * The extension record of mapped-ram files
 *
 * Upstream's mapped-ram layout gives each RAM block a header in the
 * stream, a bitmap at bitmap_offset and the pages from pages_offset on,
 * rounded up to 1 MiB: between the end of the bitmap and the pages lies
 * padding that upstream never reads.  This QEMU writes there, right after
 * the bitmap, a small record that says more about the block; upstream
 * QEMU reads the same file as before.
 *
 * The one thing it says so far: every page whose bit is clear reads as
 * zero in the file.  A loader that maps the file (mapped-ram-load=map)
 * then needs no walk over the file's data extents to find clear pages
 * that still hold data, which a live save leaves when it writes a page
 * and later finds it zero (upstream clears the bit and keeps the data).
 * The saver makes it true:
 * - at setup, the block's page region reads as zero: file: migration
 *   truncates the file before the stream, so the region lies past its
 *   end; otherwise the region is punched out;
 * - a page whose bit is cleared after its data was written is punched
 *   out.
 * Where punching fails, the record is written without the flag.
 *
 * Layout (big endian), at bitmap_offset plus the bitmap's size rounded
 * up to 8 bytes (what 64-bit hosts write), if it fits before pages_offset:
 *
 *   0  8  magic "QMRAMEXT"
 *   8  4  version: 1
 *   12 4  length of the record: 56
 *   16 4  crc32c of the record, this field taken as 0
 *   20 4  reserved: 0
 *   24 8  number of pages of the block
 *   32 8  pages_offset of the block
 *   40 8  compat flags: a loader ignores those it does not know
 *         bit 0: every page whose bit is clear reads as zero
 *   48 8  incompat flags: a loader refuses a file with one it does not
 *         know (none defined)
 *
 * A later format appends fields (length grows, up to 4 KiB) and defines
 * flags; it keeps version 1.  A record that does not check out (magic,
 * version, length, checksum, the block it names) is ignored: the loader
 * does what it does without one, which is always correct.
 *
 * The file is untrusted input, and a file may claim the flag falsely.
 * That only lets the pages of clear bits show the file's data, which the
 * file could as well have given by setting the bits: whoever writes the
 * file chooses every page of the guest anyway.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/bitops.h"
#include "qemu/bswap.h"
#include "qemu/crc32c.h"
#include "qapi/error.h"
#include "exec/ramblock.h"
#include "exec/target_page.h"
#include "io/channel-file.h"
#include "qemu-file.h"
#include "mapped-ram-ext.h"
#include "trace.h"

#define MAPPED_RAM_EXT_MAGIC        "QMRAMEXT"
#define MAPPED_RAM_EXT_VERSION      1
#define MAPPED_RAM_EXT_MAX_LENGTH   4096

/* Compat flags */
#define MAPPED_RAM_EXT_CLEAR_IS_ZERO    ((uint64_t)1 << 0)

/* Incompat flags this QEMU knows */
#define MAPPED_RAM_EXT_INCOMPAT_KNOWN   ((uint64_t)0)

typedef struct MappedRamExtRecord {
    uint8_t magic[8];
    uint32_t version;
    uint32_t length;
    uint32_t crc;
    uint32_t reserved;
    uint64_t num_pages;
    uint64_t pages_offset;
    uint64_t compat;
    uint64_t incompat;
} QEMU_PACKED MappedRamExtRecord;

QEMU_BUILD_BUG_ON(sizeof(MappedRamExtRecord) != 56);
QEMU_BUILD_BUG_ON(sizeof(MAPPED_RAM_EXT_MAGIC) != 8 + 1);

#define MAPPED_RAM_EXT_CRC_OFFSET   offsetof(MappedRamExtRecord, crc)

/*
 * Where the record of a block goes: after its bitmap (8-byte words on the
 * 64-bit hosts that write them), if it fits before its pages.  The
 * offsets come from the file: nothing here may overflow.
 */
static bool record_place(uint64_t bitmap_offset, uint64_t pages_offset,
                         uint64_t num_pages, uint64_t *offset, uint64_t *room)
{
    uint64_t bitmap_bytes = ROUND_UP(DIV_ROUND_UP(num_pages, 8), 8);

    if (bitmap_offset > pages_offset ||
        bitmap_bytes > pages_offset - bitmap_offset) {
        return false;
    }
    *offset = bitmap_offset + bitmap_bytes;
    *room = pages_offset - *offset;
    return *room >= sizeof(MappedRamExtRecord);
}

/* The crc32c of a record whose crc field is 0. */
static uint32_t record_crc(const uint8_t *buf, uint32_t length)
{
    return crc32c(0xffffffff, buf, length);
}

static int channel_fd(QIOChannel *ioc)
{
    if (!ioc || !object_dynamic_cast(OBJECT(ioc), TYPE_QIO_CHANNEL_FILE)) {
        return -1;
    }
    return QIO_CHANNEL_FILE(ioc)->fd;
}

/* Returns 0 or a negative errno. */
static int punch_hole(int fd, uint64_t offset, uint64_t len)
{
    if (fd < 0) {
        return -EBADF;
    }
#ifdef CONFIG_FALLOCATE_PUNCH_HOLE
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  offset, len) < 0) {
        return -errno;
    }
    return 0;
#else
    return -ENOTSUP;
#endif
}

void mapped_ram_ext_save_setup(QEMUFile *f, RAMBlock *block)
{
    int fd = channel_fd(qemu_file_get_ioc(f));
    struct stat st;
    int ret = 0;

    block->file_clear_is_zero = false;
    if (fd < 0 || fstat(fd, &st) < 0) {
        trace_mapped_ram_ext_save_setup(block->idstr, "no, not a file", 0);
        return;
    }
    if ((uint64_t)st.st_size <= block->pages_offset) {
        /* file: truncates first: the file ends before the pages. */
        trace_mapped_ram_ext_save_setup(block->idstr,
                                        "yes, past the end of the file", 0);
    } else {
        ret = punch_hole(fd, block->pages_offset, block->used_length);
        trace_mapped_ram_ext_save_setup(block->idstr, ret ? "no, cannot "
                                        "punch it out" : "yes, punched out",
                                        -ret);
        if (ret) {
            return;
        }
    }
    block->file_clear_is_zero = true;
}

void mapped_ram_ext_zero_page(QIOChannel *ioc, RAMBlock *block,
                              ram_addr_t offset)
{
    unsigned long nr = offset >> TARGET_PAGE_BITS;
    unsigned long *word = block->file_bmap + BIT_WORD(nr);
    unsigned long mask = BIT_MASK(nr);
    int ret;

    /* Only this thread changes this page's bit in this round. */
    if (!(qatomic_read(word) & mask)) {
        return;                 /* not in the file: a hole */
    }
    qatomic_and(word, ~mask);
    if (!qatomic_read(&block->file_clear_is_zero)) {
        return;
    }
    ret = punch_hole(channel_fd(ioc), block->pages_offset + offset,
                     TARGET_PAGE_SIZE);
    if (ret) {
        qatomic_set(&block->file_clear_is_zero, false);
    }
    trace_mapped_ram_ext_zero_page(block->idstr, offset, -ret);
}

void mapped_ram_ext_save(QEMUFile *f, RAMBlock *block)
{
    uint64_t num_pages = block->used_length >> TARGET_PAGE_BITS;
    MappedRamExtRecord r = { 0 };
    uint64_t offset, room;

    if (!record_place(block->bitmap_offset, block->pages_offset, num_pages,
                      &offset, &room)) {
        trace_mapped_ram_ext_save(block->idstr, 0, 0);
        return;
    }
    memcpy(r.magic, MAPPED_RAM_EXT_MAGIC, sizeof(r.magic));
    r.version = cpu_to_be32(MAPPED_RAM_EXT_VERSION);
    r.length = cpu_to_be32(sizeof(r));
    r.num_pages = cpu_to_be64(num_pages);
    r.pages_offset = cpu_to_be64(block->pages_offset);
    if (qatomic_read(&block->file_clear_is_zero)) {
        r.compat = cpu_to_be64(MAPPED_RAM_EXT_CLEAR_IS_ZERO);
    }
    r.crc = cpu_to_be32(record_crc((uint8_t *)&r, sizeof(r)));
    qemu_put_buffer_at(f, (uint8_t *)&r, sizeof(r), offset);
    trace_mapped_ram_ext_save(block->idstr, offset, be64_to_cpu(r.compat));
}

/* Why a record is not used, or NULL if it is. */
static const char *record_check(uint8_t *buf, size_t len,
                                uint64_t num_pages, uint64_t pages_offset,
                                MappedRamExtRecord *r)
{
    uint32_t length;

    if (len < sizeof(*r)) {
        return "no room or unreadable";
    }
    memcpy(r, buf, sizeof(*r));
    if (memcmp(r->magic, MAPPED_RAM_EXT_MAGIC, sizeof(r->magic))) {
        return "none";
    }
    if (be32_to_cpu(r->version) != MAPPED_RAM_EXT_VERSION) {
        return "unknown version, ignored";
    }
    length = be32_to_cpu(r->length);
    if (length < sizeof(*r) || length > len) {
        return "bad length, ignored";
    }
    memset(buf + MAPPED_RAM_EXT_CRC_OFFSET, 0, sizeof(r->crc));
    if (be32_to_cpu(r->crc) != record_crc(buf, length)) {
        return "bad checksum, ignored";
    }
    if (be64_to_cpu(r->num_pages) != num_pages ||
        be64_to_cpu(r->pages_offset) != pages_offset) {
        return "of another block, ignored";
    }
    return NULL;
}

bool mapped_ram_ext_load(QEMUFile *f, RAMBlock *block, uint64_t bitmap_offset,
                         uint64_t pages_offset, long num_pages,
                         MappedRamExt *ext, Error **errp)
{
    g_autofree uint8_t *buf = NULL;
    MappedRamExtRecord r;
    uint64_t offset, room, incompat;
    const char *why;
    ssize_t len = 0;

    *ext = (MappedRamExt) { 0 };
    if (record_place(bitmap_offset, pages_offset, num_pages, &offset,
                     &room)) {
        buf = g_malloc(MIN(room, MAPPED_RAM_EXT_MAX_LENGTH));
        /* Not qemu_get_buffer_at(): a short read is no error here. */
        len = qio_channel_pread(qemu_file_get_ioc(f), (char *)buf,
                                MIN(room, MAPPED_RAM_EXT_MAX_LENGTH), offset,
                                NULL);
    }
    why = record_check(buf, MAX(len, 0), num_pages, pages_offset, &r);
    if (why) {
        trace_mapped_ram_ext_load(block->idstr, why, 0);
        return true;
    }
    incompat = be64_to_cpu(r.incompat);
    if (incompat & ~MAPPED_RAM_EXT_INCOMPAT_KNOWN) {
        error_setg(errp, "mapped-ram file: RAM block '%s' needs features "
                   "this QEMU does not know (incompat flags 0x%" PRIx64 "); "
                   "load it with the QEMU that wrote it or a newer one",
                   block->idstr, incompat & ~MAPPED_RAM_EXT_INCOMPAT_KNOWN);
        return false;
    }
    ext->present = true;
    ext->clear_is_zero = be64_to_cpu(r.compat) & MAPPED_RAM_EXT_CLEAR_IS_ZERO;
    trace_mapped_ram_ext_load(block->idstr, "valid", be64_to_cpu(r.compat));
    return true;
}
