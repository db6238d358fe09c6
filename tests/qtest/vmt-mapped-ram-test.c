/*
 * QTest cases for VM templating from any VM: mapped-ram ("fixed-ram")
 * files loaded by mapping them (mapped-ram-load=map), and mapped-ram with
 * x-ignore-shared and bypass-shared-memory
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qemu/crc32c.h"
#include "libqtest.h"
#include "migration/bootfile.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#include "vmt-util.h"

static void test_map_clones(void)
{
    g_autofree char *file = vmt_path("fixed.img");
    g_autofree char *sha = NULL;
    g_autofree char *sha2 = NULL;
    VmtSaveOpts s = { 0 };
    VmtLoadOpts l = { .mode = "map" };
    QTestState *a, *b;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    sha = vmt_file_sha256(file);

    a = vmt_load_fixed(file, &l, "a_serial");
    b = vmt_load_fixed(file, &l, "b_serial");
    /* Loaded by mapping, not by copying: RAM maps the file. */
    g_assert_true(vmt_process_maps(qtest_pid(a), file));
    g_assert_true(vmt_process_maps(qtest_pid(b), file));
    vmt_check_continues(a, "a_serial");
    vmt_check_continues(b, "b_serial");

    /* They diverge independently; the file does not change. */
    qtest_writeq(a, VMT_ZERO_PAGE_ADDR, 0x1111);
    qtest_writeq(b, start_address + 64, 0x2222);
    g_assert_cmpint(qtest_readq(b, VMT_ZERO_PAGE_ADDR), ==, 0);
    g_assert_cmpint(qtest_readq(a, start_address + 64), !=, 0x2222);
    g_assert_cmpint(qtest_readq(a, VMT_ZERO_PAGE_ADDR), ==, 0x1111);
    qtest_quit(a);
    qtest_quit(b);
    sha2 = vmt_file_sha256(file);
    g_assert_cmpstr(sha, ==, sha2);
    unlink(file);
}

/* Save, load once with @mode, check the guest goes on. */
static void save_load_check(const char *name, const VmtSaveOpts *s,
                            const char *mode)
{
    g_autofree char *file = vmt_path(name);
    g_autofree char *serial = g_strdup_printf("%s_serial", name);
    VmtLoadOpts l = { .mode = mode };
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, s);
    to = vmt_load_fixed(file, &l, serial);
    g_assert_cmpint(vmt_process_maps(qtest_pid(to), file), ==,
                    g_str_equal(mode, "map"));
    vmt_check_continues(to, serial);
    qtest_quit(to);
    unlink(file);
}

static void test_copy_still_works(void)
{
    VmtSaveOpts s = { 0 };

    save_load_check("fixed-copy.img", &s, "copy");
}

static void test_map_live(void)
{
    VmtSaveOpts s = { .live = true };

    save_load_check("fixed-live.img", &s, "map");
}

/*
 * The extension record of a mapped-ram block (migration/mapped-ram-ext.c):
 * right after the block's bitmap, 56 bytes, big endian; its crc32c at
 * offset 16, its compat flags at 40 (bit 0: clear pages read as zero).
 */
#define EXT_LEN             56
#define EXT_VERSION         8
#define EXT_LENGTH          12
#define EXT_CRC             16
#define EXT_PAGES_OFFSET    32
#define EXT_COMPAT          40
#define EXT_INCOMPAT        48

static off_t ext_offset(uint64_t bitmap_offset)
{
    uint64_t pages = VMT_MEM_BYTES / TEST_MEM_PAGE_SIZE;

    return bitmap_offset + ROUND_UP(DIV_ROUND_UP(pages, 8), 8);
}

static void ext_read(const char *file, off_t off, uint8_t *rec)
{
    int fd = open(file, O_RDONLY);

    g_assert_cmpint(pread(fd, rec, EXT_LEN, off), ==, EXT_LEN);
    close(fd);
}

/* Write @rec at @off of @file, with its checksum made right if @fix_crc. */
static void ext_write(const char *file, off_t off, uint8_t *rec, bool fix_crc)
{
    int fd = open(file, O_RDWR);

    if (fix_crc) {
        stl_be_p(rec + EXT_CRC, 0);
        stl_be_p(rec + EXT_CRC, crc32c(0xffffffff, rec, EXT_LEN));
    }
    g_assert_cmpint(pwrite(fd, rec, EXT_LEN, off), ==, EXT_LEN);
    close(fd);
}

/* The record of mem0 in @file, written by this QEMU; returns its offset. */
static off_t ext_check_saved(const char *file, uint8_t *rec)
{
    uint64_t bitmap_offset, pages_offset;
    off_t off;

    vmt_find_header(file, &bitmap_offset, &pages_offset);
    off = ext_offset(bitmap_offset);
    ext_read(file, off, rec);
    g_assert_cmpmem(rec, 8, "QMRAMEXT", 8);
    g_assert_cmpint(ldl_be_p(rec + EXT_VERSION), ==, 1);
    g_assert_cmpint(ldl_be_p(rec + EXT_LENGTH), ==, EXT_LEN);
    g_assert_cmpint(ldq_be_p(rec + EXT_PAGES_OFFSET), ==, pages_offset);
    g_assert_cmpint(ldq_be_p(rec + EXT_COMPAT), ==, 1);
    g_assert_cmpint(ldq_be_p(rec + EXT_INCOMPAT), ==, 0);
    return off;
}

/* A file without the record, as upstream QEMU writes them. */
static void ext_strip(const char *file)
{
    uint8_t rec[EXT_LEN];
    off_t off = ext_check_saved(file, rec);

    memset(rec, 0, sizeof(rec));
    ext_write(file, off, rec, false);
}

/*
 * Whether the map load of mem0, traced to @trace, took the file's clear
 * pages as holes, and how many data extents of the file it walked.
 */
static void map_trace(const char *trace, bool *holes, unsigned *extents)
{
    g_autofree char *log = NULL;
    const char *at;

    g_assert_true(g_file_get_contents(trace, &log, NULL, NULL));
    unlink(trace);
    at = strstr(log, "block mem0 mapped ");
    g_assert_nonnull(at);
    at = strstr(at, "clear pages are holes ");
    g_assert_nonnull(at);
    *holes = atoi(at + strlen("clear pages are holes "));
    at = strstr(at, "data extents walked ");
    g_assert_nonnull(at);
    *extents = atoi(at + strlen("data extents walked "));
    g_test_message("map load of mem0: clear pages are holes %d, %u data "
                   "extents walked", *holes, *extents);
}

static char *trace_opts(const char *trace)
{
    return g_strdup_printf("-trace mapped_ram_map_block -D %s", trace);
}

/*
 * A file this QEMU saves says that its clear pages are holes: a map load
 * does not walk the file's data extents, whatever their number.
 */
static void test_map_record(void)
{
    g_autofree char *file = vmt_path("fixed-ext.img");
    g_autofree char *trace = vmt_path("fixed-ext.trace");
    g_autofree char *extra = trace_opts(trace);
    VmtSaveOpts s = { 0 };
    VmtLoadOpts l = { .mode = "map", .extra = extra };
    uint8_t rec[EXT_LEN];
    QTestState *to;
    unsigned extents;
    bool holes;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    ext_check_saved(file, rec);
    to = vmt_load_fixed(file, &l, "ext_serial");
    map_trace(trace, &holes, &extents);
    g_assert_true(holes);
    g_assert_cmpint(extents, ==, 0);
    vmt_check_continues(to, "ext_serial");
    qtest_quit(to);
    unlink(file);
}

/*
 * A live save that wrote a page and later found it zero punches the page
 * out of the file: it reads as zero there, so the file keeps its record
 * and a map load needs no walk.
 */
static void live_zeroed_page(bool multifd)
{
    g_autofree char *file = vmt_path("fixed-zeroed.img");
    g_autofree char *trace = vmt_path("fixed-zeroed.trace");
    g_autofree char *extra = trace_opts(trace);
    g_autofree char *args = vmt_vm_args("memory-backend-ram", "zsrc_serial");
    g_autofree char *uri = g_strdup_printf("file:%s", file);
    VmtLoadOpts l = { .mode = "map", .extra = extra, .multifd = multifd };
    uint64_t bitmap_offset, pages_offset, page = VMT_ZERO_PAGE_ADDR;
    uint8_t rec[EXT_LEN], byte;
    QTestState *from, *to;
    unsigned extents;
    off_t data;
    bool holes;
    int fd;

    if (!vmt_accel_available()) {
        return;
    }
    from = qtest_init(args);
    wait_for_serial("zsrc_serial");
    qtest_writeq(from, page, 0x5a5a5a5a5a5a5a5aULL);
    vmt_set_mapped_ram_caps(from, multifd, false);
    /* Passes go on while the guest dirties its pages. */
    migrate_set_parameter_int(from, "max-bandwidth", 100 * 1000 * 1000);
    migrate_set_parameter_int(from, "downtime-limit", 1);
    qtest_qmp_assert_success(from, "{ 'execute': 'migrate', 'arguments':"
                             " { 'uri': %s } }", uri);
    /* The first pass is done: it wrote the page with its data. */
    while (get_migration_pass(from) < 2) {
        g_usleep(10 * 1000);
    }
    qtest_writeq(from, page, 0);
    migrate_ensure_converge(from);
    wait_for_migration_complete(from);
    qtest_quit(from);

    /* The page's bit is clear and its offset is a hole. */
    vmt_find_header(file, &bitmap_offset, &pages_offset);
    fd = open(file, O_RDONLY);
    g_assert_cmpint(pread(fd, &byte, 1, bitmap_offset +
                          page / TEST_MEM_PAGE_SIZE / 8), ==, 1);
    g_assert_cmpint(byte & (1 << (page / TEST_MEM_PAGE_SIZE % 8)), ==, 0);
    data = lseek(fd, pages_offset + page, SEEK_DATA);
    g_test_message("next data at file offset %lld, the page at %" PRIu64,
                   (long long)data, pages_offset + page);
    g_assert_true(data < 0 ||
                  (uint64_t)data >= pages_offset + page + TEST_MEM_PAGE_SIZE);
    close(fd);
    ext_check_saved(file, rec);

    to = vmt_load_fixed(file, &l, "zdst_serial");
    map_trace(trace, &holes, &extents);
    g_assert_true(holes);
    g_assert_cmpint(extents, ==, 0);
    vmt_check_continues(to, "zdst_serial");     /* reads the page as zero */
    qtest_quit(to);
    unlink(file);
}

static void test_map_live_zeroed_page(void)
{
    live_zeroed_page(false);
}

static void test_map_live_zeroed_page_multifd(void)
{
    live_zeroed_page(true);
}

/*
 * A page whose bit is clear reads as zero even where the file holds data
 * for it, as after a live save that wrote the page and then found it zero
 * (by a QEMU that does not punch such pages out: the file has no
 * extension record, and the loader walks the file's data extents).
 * Stale pages in several data extents of the file, one next to pages that
 * are in the file.
 */
static const uint64_t stale_pages[] = {
    VMT_ZERO_PAGE_ADDR, VMT_ZERO_PAGE_ADDR + 8 * TEST_MEM_PAGE_SIZE,
    VMT_ZERO_PAGE_ADDR + 9 * TEST_MEM_PAGE_SIZE, 140 * 1024 * 1024,
};

/* Put the stale pages into @file. */
static void put_stale_pages(const char *file)
{
    uint64_t bitmap_offset, pages_offset;
    int i;

    vmt_find_header(file, &bitmap_offset, &pages_offset);
    for (i = 0; i < ARRAY_SIZE(stale_pages); i++) {
        vmt_put_stale_page(file, bitmap_offset, pages_offset, stale_pages[i]);
    }
}

/* Load @file with map: it must walk the file and zero the stale pages. */
static void load_walks(const char *file, const char *serial)
{
    g_autofree char *trace = vmt_path("fixed-walk.trace");
    g_autofree char *extra = trace_opts(trace);
    VmtLoadOpts l = { .mode = "map", .extra = extra };
    QTestState *to;
    unsigned extents;
    bool holes;
    int i;

    to = vmt_load_fixed(file, &l, serial);
    map_trace(trace, &holes, &extents);
    g_assert_false(holes);
    g_assert_cmpint(extents, >, 0);
    vmt_check_continues(to, serial);
    for (i = 0; i < ARRAY_SIZE(stale_pages); i++) {
        g_assert_cmpint(qtest_readq(to, stale_pages[i]), ==, 0);
    }
    qtest_quit(to);
}

static void test_map_stale_zero_page(void)
{
    g_autofree char *file = vmt_path("fixed-stale.img");
    g_autofree char *trace = vmt_path("fixed-stale.trace");
    g_autofree char *extra = g_strdup_printf(
        "-machine dump-guest-core=off -trace mapped_ram_map_block -D %s",
        trace);
    g_autofree char *flags = NULL;
    uint64_t bitmap_offset, pages_offset;
    VmtSaveOpts s = { 0 };
    VmtLoadOpts l = { .mode = "map", .extra = extra };
    QTestState *to;
    unsigned extents;
    bool holes;
    int i;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    ext_strip(file);
    put_stale_pages(file);
    vmt_find_header(file, &bitmap_offset, &pages_offset);

    to = vmt_load_fixed(file, &l, "stale_serial");
    map_trace(trace, &holes, &extents);
    g_assert_false(holes);
    g_assert_cmpint(extents, >=, ARRAY_SIZE(stale_pages) - 1);
    vmt_check_continues(to, "stale_serial");    /* reads the zero page */
    for (i = 0; i < ARRAY_SIZE(stale_pages); i++) {
        g_assert_cmpint(qtest_readq(to, stale_pages[i]), ==, 0);
    }

    /*
     * The file mapping and the zero ranges in it carry what guest memory
     * gets at allocation: no core dump, THP, and KSM where the host has it.
     */
    flags = vmt_process_vmflags(qtest_pid(to), file, pages_offset,
                                VMT_MEM_BYTES);
    g_test_message("VmFlags of the mapped block: %s", flags);
    {
        g_auto(GStrv) lines = g_strsplit(flags, "\n", -1);
        int nr = 0;

        for (i = 0; lines[i] && lines[i][0]; i++, nr++) {
            g_assert_nonnull(strstr(lines[i], " dd"));
            g_assert_nonnull(strstr(lines[i], " hg"));
            g_assert_nonnull(strstr(lines[i], " dc"));
            if (g_file_test("/sys/kernel/mm/ksm", G_FILE_TEST_IS_DIR)) {
                g_assert_nonnull(strstr(lines[i], " mg"));
            }
        }
        /* The stale pages split the mapping: zero ranges in between. */
        g_assert_cmpint(nr, >=, 5);
    }
    qtest_quit(to);
    unlink(file);
}

/*
 * A record that does not check out is ignored: the load walks the file as
 * without one.  A valid record with a feature this QEMU does not know
 * (an incompat flag) is refused.
 */
static void test_map_bad_record(void)
{
    g_autofree char *file = vmt_path("fixed-badext.img");
    uint8_t good[EXT_LEN], rec[EXT_LEN];
    off_t off;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &(VmtSaveOpts) { 0 });
    off = ext_check_saved(file, good);
    put_stale_pages(file);

    /* Damaged: its checksum no longer matches. */
    memcpy(rec, good, sizeof(rec));
    rec[EXT_COMPAT] ^= 0x80;
    ext_write(file, off, rec, false);
    load_walks(file, "badext1_serial");

    /* Longer than what the file holds before the pages (or 4 KiB). */
    memcpy(rec, good, sizeof(rec));
    stl_be_p(rec + EXT_LENGTH, 0xffffffff);
    ext_write(file, off, rec, true);
    load_walks(file, "badext2_serial");

    /* Shorter than version 1's record. */
    stl_be_p(rec + EXT_LENGTH, 8);
    ext_write(file, off, rec, true);
    load_walks(file, "badext3_serial");

    /* An unknown version. */
    memcpy(rec, good, sizeof(rec));
    stl_be_p(rec + EXT_VERSION, 2);
    ext_write(file, off, rec, true);
    load_walks(file, "badext4_serial");

    /* The record of another block (a different pages offset). */
    memcpy(rec, good, sizeof(rec));
    stq_be_p(rec + EXT_PAGES_OFFSET, ldq_be_p(rec + EXT_PAGES_OFFSET) +
             1024 * 1024);
    ext_write(file, off, rec, true);
    load_walks(file, "badext5_serial");

    /* A feature this QEMU does not know: refused, whatever the mode. */
    memcpy(rec, good, sizeof(rec));
    stq_be_p(rec + EXT_INCOMPAT, 1ULL << 63);
    ext_write(file, off, rec, true);
    vmt_load_must_fail(file, "memory-backend-ram", "map", "badext6_serial",
                       "mapped-ram file: RAM block 'mem0' needs features "
                       "this QEMU does not know (incompat flags "
                       "0x8000000000000000)");
    vmt_load_must_fail(file, "memory-backend-ram", "copy", "badext7_serial",
                       "RAM block 'mem0' needs features this QEMU does not "
                       "know");

    /* Unknown compat flags are ignored; known ones still apply. */
    memcpy(rec, good, sizeof(rec));
    stq_be_p(rec + EXT_COMPAT, 0xff);
    ext_write(file, off, rec, true);
    {
        g_autofree char *trace = vmt_path("fixed-badext.trace");
        g_autofree char *extra = trace_opts(trace);
        VmtLoadOpts l = { .mode = "map", .extra = extra };
        QTestState *to = vmt_load_fixed(file, &l, "badext8_serial");
        unsigned extents;
        bool holes;

        map_trace(trace, &holes, &extents);
        g_assert_true(holes);
        g_assert_cmpint(extents, ==, 0);
        qtest_quit(to);
    }
    unlink(file);
}

/* A clone loaded with map saves and migrates again; its memory reads on. */
static void test_map_migrate_again(void)
{
    g_autofree char *file = vmt_path("fixed-1.img");
    g_autofree char *file2 = vmt_path("fixed-2.img");
    g_autofree char *uri = g_strdup_printf("file:%s", file);
    VmtSaveOpts s = { 0 };
    VmtLoadOpts l = { .mode = "map" };
    QTestState *mid;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    mid = vmt_load_fixed(file, &l, "mid_serial");
    wait_for_serial("mid_serial");

    /* Writing the file it maps would change its own memory: refused. */
    vmt_migrate_must_fail(mid, uri, "this VM's RAM maps the migration file "
                          "it would write");
    vmt_save_and_load_again(mid, file2, &l, "last_serial");
    unlink(file);
    unlink(file2);
}

/* A destination whose RAM cannot be replaced by a file mapping. */
static void map_must_refuse(const char *file, const char *mem,
                            const char *share, const char *expect)
{
    g_autofree char *backend = g_strdup_printf(
        "memory-backend-file,mem-path=%s,%s", mem, share);

    vmt_load_must_fail(file, backend, "map", "refuse_serial", expect);
    unlink(mem);
}

static void test_map_refuses_shared_ram(void)
{
    g_autofree char *file = vmt_path("fixed-shared.img");
    g_autofree char *mem = vmt_path("refused-dst.ram");
    VmtSaveOpts s = { 0 };

    vmt_save_fixed(file, &s);
    /* Other processes (vhost-user) would not see the new mapping. */
    map_must_refuse(file, mem, "share=on",
                    "cannot map RAM block 'mem0': it is shared memory");
    /* File-backed (and hugetlbfs) RAM has its own backing. */
    map_must_refuse(file, mem, "share=off",
                    "cannot map RAM block 'mem0': it is backed by a file");
    unlink(file);
}

/* Bad files: a clear error, exit status non-zero, the guest never ran. */
static void bad_file_must_fail(const char *file, const char *expect)
{
    vmt_load_must_fail(file, "memory-backend-ram", "map", "bad_serial",
                       expect);
}

static void test_map_bad_files(void)
{
    g_autofree char *file = vmt_path("fixed-bad.img");
    uint64_t bitmap_offset, pages_offset, v;
    VmtSaveOpts s = { 0 };
    off_t hdr;
    int fd;

    vmt_save_fixed(file, &s);
    hdr = vmt_find_header(file, &bitmap_offset, &pages_offset);

    /* Pages at an offset that cannot be mapped. */
    fd = open(file, O_RDWR);
    v = cpu_to_be64(pages_offset + 512);
    g_assert_cmpint(pwrite(fd, &v, 8, hdr + 20), ==, 8);
    close(fd);
    bad_file_must_fail(file, "region has bad alignment");

    /* A corrupted header (unknown version). */
    fd = open(file, O_RDWR);
    v = cpu_to_be64(pages_offset);
    g_assert_cmpint(pwrite(fd, &v, 8, hdr + 20), ==, 8);
    g_assert_cmpint(pwrite(fd, "\xff\xff\xff\xff", 4, hdr), ==, 4);
    close(fd);
    bad_file_must_fail(file, "mapped-ram capability version not supported");

    /* Page sizes that would divide by zero or cover part of the block. */
    fd = open(file, O_RDWR);
    g_assert_cmpint(pwrite(fd, "\0\0\0\1", 4, hdr), ==, 4);
    close(fd);
    vmt_file_put_be64(file, hdr + 4, 0);
    bad_file_must_fail(file, "mapped-ram header has page size 0, expected "
                       "4096 (corrupted file?)");
    vmt_file_put_be64(file, hdr + 4, 8192);
    bad_file_must_fail(file, "mapped-ram header has page size 8192");

    /* Truncated inside the pages of the block. */
    unlink(file);
    vmt_save_fixed(file, &s);
    g_assert_cmpint(truncate(file, pages_offset + 64 * 1024 * 1024), ==, 0);
    bad_file_must_fail(file, "the file is truncated");
    unlink(file);
}

/*
 * mapped-ram with shared memory that is not saved: x-ignore-shared and
 * bypass-shared-memory, with and without multifd.
 */
static void shared_common(bool bypass, bool multifd, const char *mode)
{
    g_autofree char *file = vmt_path("fixed-tmpl.img");
    g_autofree char *mem = vmt_path("fixed-tmpl.ram");
    g_autofree char *src_backend = g_strdup_printf(
        "memory-backend-file,mem-path=%s,share=on", mem);
    g_autofree char *dst_backend = g_strdup_printf(
        "memory-backend-file,mem-path=%s,share=off", mem);
    g_autofree char *sha = NULL;
    g_autofree char *sha2 = NULL;
    VmtSaveOpts s = {
        .backend = src_backend, .multifd = multifd,
        .ignore_shared = !bypass, .bypass = bypass,
    };
    VmtLoadOpts l = {
        .backend = dst_backend, .multifd = multifd,
        .ignore_shared = !bypass, .mode = mode,
    };
    struct stat st;
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    /* The shared block has no pages in the file: it stays small. */
    g_assert_cmpint(stat(file, &st), ==, 0);
    g_assert_cmpint(st.st_blocks * 512, <, 8 * 1024 * 1024);
    sha = vmt_file_sha256(mem);

    to = vmt_load_fixed(file, &l, "shared_dst_serial");
    vmt_check_continues(to, "shared_dst_serial");
    qtest_quit(to);
    sha2 = vmt_file_sha256(mem);
    g_assert_cmpstr(sha, ==, sha2);
    unlink(file);
    unlink(mem);
}

static void test_ignore_shared(void)
{
    shared_common(false, false, NULL);
}

/* A load that must fail; with @ignore_shared, x-ignore-shared is set. */
static void load_must_fail(const char *file, const char *backend,
                           bool ignore_shared, const char *expect)
{
    g_autofree char *vm = vmt_vm_args(backend, "fail_serial");
    g_autofree char *args = g_strdup_printf(
        "%s -global migration.mapped-ram=on -incoming defer", vm);
    g_autofree char *qmp = g_strdup_printf(
        "{ \"execute\": \"qmp_capabilities\" }\n"
        "{ \"execute\": \"migrate-set-capabilities\", \"arguments\":"
        " { \"capabilities\": [ { \"capability\": \"x-ignore-shared\","
        " \"state\": %s } ] } }\n"
        "{ \"execute\": \"migrate-incoming\", \"arguments\":"
        " { \"uri\": \"file:%s\" } }\n",
        ignore_shared ? "true" : "false", file);

    vmt_qemu_must_fail_qmp(args, qmp, "fail_serial", expect);
}

/*
 * Blocks without pages in the file have a header with bitmap and pages
 * offsets 0 (QEMU 11.0's format for x-ignore-shared); a destination that
 * has no memory file for such a block refuses the file.
 */
static void test_ignore_shared_format(void)
{
    g_autofree char *file = vmt_path("fixed-ign.img");
    g_autofree char *mem = vmt_path("fixed-ign.ram");
    g_autofree char *backend = g_strdup_printf(
        "memory-backend-file,mem-path=%s,share=on", mem);
    uint64_t bitmap_offset, pages_offset;
    VmtSaveOpts s = { .backend = backend, .ignore_shared = true };
    VmtSaveOpts plain = { 0 };
    off_t hdr;

    vmt_save_fixed(file, &s);
    /* The GPA (mr->addr), then the header. */
    vmt_find_block_header(file, "mem0", VMT_MEM_BYTES, 8, &bitmap_offset,
                          &pages_offset);
    g_assert_cmpint(bitmap_offset, ==, 0);
    g_assert_cmpint(pages_offset, ==, 0);
    vmt_find_block_header(file, "pc.bios", 256 * 1024, 8, &bitmap_offset,
                          &pages_offset);
    g_assert_cmpint(bitmap_offset, !=, 0);
    g_assert_cmpint(pages_offset, !=, 0);

    /* Anonymous RAM here: its content would be missing. */
    load_must_fail(file, "memory-backend-ram", true,
                   "the file has no pages for it: RAM block 'mem0' is not "
                   "backed by a memory file here");
    /* x-ignore-shared is validated through the configuration section. */
    load_must_fail(file, "memory-backend-ram", false,
                   "Capability x-ignore-shared is off, but received "
                   "capability is on");
    unlink(file);
    unlink(mem);

    /* A block without pages in a file that bypasses nothing. */
    vmt_save_fixed(file, &plain);
    hdr = vmt_find_header(file, &bitmap_offset, &pages_offset);
    vmt_file_put_be64(file, hdr + 12, 0);
    vmt_file_put_be64(file, hdr + 20, 0);
    load_must_fail(file, "memory-backend-ram", false,
                   "RAM block 'mem0' has no pages in the file, but the "
                   "stream bypasses no memory (corrupted file)");
    unlink(file);
}

/* With bypass-shared-memory, the block list and the headers must agree. */
static void test_bypass_crafted(void)
{
    g_autofree char *file = vmt_path("fixed-byp.img");
    g_autofree char *mem = vmt_path("fixed-byp.ram");
    g_autofree char *src_backend = g_strdup_printf(
        "memory-backend-file,mem-path=%s,share=on", mem);
    g_autofree char *dst_backend = g_strdup_printf(
        "memory-backend-file,mem-path=%s,share=off", mem);
    uint64_t bitmap_offset, pages_offset;
    VmtSaveOpts s = { .backend = src_backend, .bypass = true };
    off_t hdr;

    vmt_save_fixed(file, &s);

    /* A listed block whose header says it has pages. */
    hdr = vmt_find_block_header(file, "mem0", VMT_MEM_BYTES, 0,
                                &bitmap_offset, &pages_offset);
    g_assert_cmpint(bitmap_offset | pages_offset, ==, 0);
    vmt_file_put_be64(file, hdr + 12, 4096);
    load_must_fail(file, dst_backend, false,
                   "RAM block 'mem0': the stream lists it as bypassed, but "
                   "the file has pages for it (corrupted stream)");
    vmt_file_put_be64(file, hdr + 12, 0);

    /* A block that is not listed, without pages. */
    hdr = vmt_find_block_header(file, "pc.bios", 256 * 1024, 0,
                                &bitmap_offset, &pages_offset);
    vmt_file_put_be64(file, hdr + 12, 0);
    vmt_file_put_be64(file, hdr + 20, 0);
    load_must_fail(file, dst_backend, false,
                   "RAM block 'pc.bios': the stream does not list it as "
                   "bypassed, but the file has no pages for it");
    unlink(file);
    unlink(mem);
}

static void test_ignore_shared_multifd(void)
{
    shared_common(false, true, NULL);
}

static void test_bypass(void)
{
    shared_common(true, false, NULL);
}

static void test_bypass_multifd(void)
{
    shared_common(true, true, NULL);
}

static void test_bypass_map(void)
{
    shared_common(true, false, "map");
}

static void test_bypass_multifd_map(void)
{
    shared_common(true, true, "map");
}

int main(int argc, char **argv)
{
    int ret;

    if (!vmt_init(&argc, &argv)) {
        return g_test_run();
    }
    qtest_add_func("/vmt/mapped-ram/map/clones", test_map_clones);
    qtest_add_func("/vmt/mapped-ram/map/live", test_map_live);
    qtest_add_func("/vmt/mapped-ram/map/stale-zero-page",
                   test_map_stale_zero_page);
    qtest_add_func("/vmt/mapped-ram/map/record", test_map_record);
    qtest_add_func("/vmt/mapped-ram/map/bad-record", test_map_bad_record);
    qtest_add_func("/vmt/mapped-ram/map/live-zeroed-page",
                   test_map_live_zeroed_page);
    qtest_add_func("/vmt/mapped-ram/map/live-zeroed-page/multifd",
                   test_map_live_zeroed_page_multifd);
    qtest_add_func("/vmt/mapped-ram/map/migrate-again",
                   test_map_migrate_again);
    qtest_add_func("/vmt/mapped-ram/map/refuse-shared-or-file-ram",
                   test_map_refuses_shared_ram);
    qtest_add_func("/vmt/mapped-ram/map/bad-files", test_map_bad_files);
    qtest_add_func("/vmt/mapped-ram/copy", test_copy_still_works);
    qtest_add_func("/vmt/mapped-ram/ignore-shared", test_ignore_shared);
    qtest_add_func("/vmt/mapped-ram/ignore-shared/format",
                   test_ignore_shared_format);
    qtest_add_func("/vmt/mapped-ram/bypass/crafted", test_bypass_crafted);
    qtest_add_func("/vmt/mapped-ram/ignore-shared/multifd",
                   test_ignore_shared_multifd);
    qtest_add_func("/vmt/mapped-ram/bypass", test_bypass);
    qtest_add_func("/vmt/mapped-ram/bypass/multifd", test_bypass_multifd);
    qtest_add_func("/vmt/mapped-ram/bypass/map", test_bypass_map);
    qtest_add_func("/vmt/mapped-ram/bypass/map-multifd",
                   test_bypass_multifd_map);

    ret = g_test_run();
    vmt_cleanup();
    return ret;
}
