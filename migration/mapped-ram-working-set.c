/*
 * The working set of a lazy mapped-ram load
 *
 * A clone loaded with mapped-ram-load=lazy records the pages it faults
 * in, in order.  mapped-ram-save-working-set writes those of its first
 * milliseconds to a file; a later clone given that file as the
 * mapped-ram-working-set parameter places them first, when its guest
 * starts, before they are touched.  The file is a hint: a page it names
 * is still read from the migration file, so a wrong or stale working set
 * costs time, never correctness.
 *
 * File format, big-endian:
 *
 *   8 bytes   "QEMUMRWS"
 *   be32      version, 1
 *   be32      number of RAM blocks, 1 to MAPPED_RAM_WS_MAX_BLOCKS
 *   be32      number of pages, up to MAPPED_RAM_WS_MAX_PAGES
 *   be32      0
 *   for each RAM block: one byte of length (1 to 255), then its name
 *   for each page: be64, the block's index << 48 | the target page
 *
 * Nothing may follow.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qapi/error.h"
#include "mapped-ram-working-set.h"
#include "trace.h"

#define WS_MAGIC        "QEMUMRWS"
#define WS_VERSION      1
#define WS_HEADER_SIZE  24
#define WS_MAX_SIZE     (WS_HEADER_SIZE + MAPPED_RAM_WS_MAX_BLOCKS * 256 + \
                         MAPPED_RAM_WS_MAX_PAGES * 8)

MappedRamWorkingSet *mapped_ram_ws_new(void)
{
    MappedRamWorkingSet *ws = g_new0(MappedRamWorkingSet, 1);

    ws->blocks = g_ptr_array_new_with_free_func(g_free);
    ws->pages = g_array_new(false, false, sizeof(uint64_t));
    return ws;
}

void mapped_ram_ws_free(MappedRamWorkingSet *ws)
{
    if (ws) {
        g_ptr_array_free(ws->blocks, true);
        g_array_free(ws->pages, true);
        g_free(ws);
    }
}

static bool ws_parse(MappedRamWorkingSet *ws, const uint8_t *buf, size_t len,
                     Error **errp)
{
    uint32_t nr_blocks, nr_pages, i;
    size_t at = WS_HEADER_SIZE;

    if (len < WS_HEADER_SIZE || memcmp(buf, WS_MAGIC, 8)) {
        error_setg(errp, "not a working set file");
        return false;
    }
    if (ldl_be_p(buf + 8) != WS_VERSION) {
        error_setg(errp, "working set version %u, expected %u",
                   ldl_be_p(buf + 8), WS_VERSION);
        return false;
    }
    nr_blocks = ldl_be_p(buf + 12);
    nr_pages = ldl_be_p(buf + 16);
    if (nr_blocks < 1 || nr_blocks > MAPPED_RAM_WS_MAX_BLOCKS ||
        nr_pages > MAPPED_RAM_WS_MAX_PAGES || ldl_be_p(buf + 20)) {
        error_setg(errp, "corrupted header: %u blocks, %u pages", nr_blocks,
                   nr_pages);
        return false;
    }
    for (i = 0; i < nr_blocks; i++) {
        uint8_t n = at < len ? buf[at] : 0;

        if (!n || n > len - at - 1 || memchr(buf + at + 1, 0, n)) {
            error_setg(errp, "corrupted name of RAM block %u", i);
            return false;
        }
        g_ptr_array_add(ws->blocks, g_strndup((char *)buf + at + 1, n));
        at += 1 + n;
    }
    if (len - at != (size_t)nr_pages * 8) {
        error_setg(errp, "%zu bytes of pages, expected %u pages of 8 bytes "
                   "(truncated or corrupted file?)", len - at, nr_pages);
        return false;
    }
    for (i = 0; i < nr_pages; i++, at += 8) {
        uint64_t e = ldq_be_p(buf + at);

        if (MAPPED_RAM_WS_BLOCK_OF(e) >= nr_blocks) {
            error_setg(errp, "page %u names RAM block %u of %u", i,
                       MAPPED_RAM_WS_BLOCK_OF(e), nr_blocks);
            return false;
        }
        g_array_append_val(ws->pages, e);
    }
    return true;
}

/*
 * Read the whole of @path into *@buf: at most WS_MAX_SIZE bytes, what
 * the file holds, not what stat() said it would (a file of /proc says
 * 0, and a file may grow between the two).
 */
static bool ws_read(const char *path, uint8_t **buf, size_t *len,
                    Error **errp)
{
    g_autofree uint8_t *data = g_malloc(WS_MAX_SIZE + 1);
    size_t done = 0;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    bool ok = false;

    if (fd < 0 || fstat(fd, &st) < 0) {
        error_setg_errno(errp, errno, "mapped-ram-working-set: cannot read "
                         "'%s'", path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        error_setg(errp, "mapped-ram-working-set: '%s' is not a regular "
                   "file", path);
        goto out;
    }
    while (done <= WS_MAX_SIZE) {
        ssize_t r = read(fd, data + done, WS_MAX_SIZE + 1 - done);

        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            error_setg_errno(errp, errno, "mapped-ram-working-set: cannot "
                             "read '%s'", path);
            goto out;
        }
        if (r == 0) {
            break;
        }
        done += r;
    }
    if (done > WS_MAX_SIZE) {
        error_setg(errp, "mapped-ram-working-set: '%s' is larger than %d "
                   "bytes", path, WS_MAX_SIZE);
        goto out;
    }
    *buf = g_steal_pointer(&data);
    *len = done;
    ok = true;
out:
    if (fd >= 0) {
        close(fd);
    }
    return ok;
}

MappedRamWorkingSet *mapped_ram_ws_load(const char *path, Error **errp)
{
    MappedRamWorkingSet *ws = mapped_ram_ws_new();
    g_autofree uint8_t *buf = NULL;
    size_t len;

    if (!ws_read(path, &buf, &len, errp)) {
        goto fail;
    }
    if (!ws_parse(ws, buf, len, errp)) {
        error_prepend(errp, "mapped-ram-working-set: '%s': ", path);
        goto fail;
    }
    trace_mapped_ram_ws_load(path, ws->blocks->len, ws->pages->len);
    return ws;

fail:
    mapped_ram_ws_free(ws);
    return NULL;
}

bool mapped_ram_ws_save(const MappedRamWorkingSet *ws, const char *path,
                        Error **errp)
{
    g_autoptr(GByteArray) out = g_byte_array_new();
    g_autoptr(GError) gerr = NULL;
    uint8_t word[8];
    guint i;

    assert(ws->blocks->len >= 1 &&
           ws->blocks->len <= MAPPED_RAM_WS_MAX_BLOCKS &&
           ws->pages->len <= MAPPED_RAM_WS_MAX_PAGES);
    g_byte_array_append(out, (const guint8 *)WS_MAGIC, 8);
    stl_be_p(word, WS_VERSION);
    g_byte_array_append(out, word, 4);
    stl_be_p(word, ws->blocks->len);
    g_byte_array_append(out, word, 4);
    stl_be_p(word, ws->pages->len);
    g_byte_array_append(out, word, 4);
    stl_be_p(word, 0);
    g_byte_array_append(out, word, 4);
    for (i = 0; i < ws->blocks->len; i++) {
        const char *name = g_ptr_array_index(ws->blocks, i);
        uint8_t n = strlen(name);

        assert(n && n == strlen(name));
        g_byte_array_append(out, &n, 1);
        g_byte_array_append(out, (const guint8 *)name, n);
    }
    for (i = 0; i < ws->pages->len; i++) {
        stq_be_p(word, g_array_index(ws->pages, uint64_t, i));
        g_byte_array_append(out, word, 8);
    }
    /* GLib writes a temporary file and renames it over @path */
    if (!g_file_set_contents(path, (gchar *)out->data, out->len, &gerr)) {
        error_setg(errp, "cannot write the working set: %s", gerr->message);
        return false;
    }
    trace_mapped_ram_ws_save(path, ws->blocks->len, ws->pages->len);
    return true;
}
