/*
 * QTest cases for mapped-ram-load=lazy: mapped-ram files loaded through
 * userfaultfd, pages read on fault and by a background fill
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include <linux/userfaultfd.h>
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/units.h"
#include "libqtest.h"
#include "migration/bootfile.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "vmt-util.h"

static QDict *query_lazy(QTestState *who);

/*
 * The next of MAPPED_RAM_LAZY_LOADED and MAPPED_RAM_LAZY_FAILED: a load
 * that fails must fail the test, not leave it waiting.  Other events
 * are dropped.
 */
static QDict *wait_lazy_event(QTestState *to)
{
    QDict *ev;

    for (;;) {
        ev = qtest_qmp_event_ref(to, "MAPPED_RAM_LAZY_LOADED");
        if (!ev) {
            ev = qtest_qmp_event_ref(to, "MAPPED_RAM_LAZY_FAILED");
        }
        if (!ev) {
            ev = qtest_qmp_receive_dict(to);
        }
        if (!g_strcmp0(qdict_get_try_str(ev, "event"),
                       "MAPPED_RAM_LAZY_LOADED")) {
            return ev;
        }
        if (!g_strcmp0(qdict_get_try_str(ev, "event"),
                       "MAPPED_RAM_LAZY_FAILED")) {
            g_error("the lazy load failed: %s",
                    qdict_get_str(qdict_get_qdict(ev, "data"),
                                  "error-desc"));
        }
        qobject_unref(ev);
    }
}

/*
 * The load completed: every page present, userfaultfd released, and
 * every page of the blocks accounted for: read, zeroed, or (shared RAM)
 * left a hole.  Returns the event's data; the caller unrefs it.
 */
static QDict *wait_loaded_data(QTestState *to)
{
    QDict *ev = wait_lazy_event(to);
    QDict *data = qdict_get_qdict(ev, "data");
    QDict *lazy = query_lazy(to);
    int64_t read = qdict_get_int(data, "pages-read");
    int64_t zeroed = qdict_get_int(data, "pages-zeroed");
    int64_t skipped = qdict_get_int(data, "pages-skipped");

    g_test_message("lazy load: %" PRId64 " ms (fill %" PRId64 " ms), %"
                   PRId64 " pages read, %" PRId64 " zeroed, %" PRId64
                   " left as holes, %" PRId64 " faults in %" PRId64 " us",
                   qdict_get_int(data, "total-ms"),
                   qdict_get_int(data, "fill-ms"), read, zeroed, skipped,
                   qdict_get_int(data, "faults"),
                   qdict_get_int(data, "fault-us"));
    /* the boot block's pattern is in the file, the rest is zero */
    g_assert_cmpint(read, >,
                    (end_address - start_address) / TEST_MEM_PAGE_SIZE);
    g_assert_cmpint(zeroed + skipped, >, 0);
    g_assert_true(qdict_get_bool(lazy, "completed"));
    g_assert_cmpint(read + zeroed + skipped, ==,
                    qdict_get_int(lazy, "total-pages"));
    qobject_unref(lazy);
    qobject_ref(data);
    qobject_unref(ev);
    return data;
}

static void wait_loaded(QTestState *to)
{
    qobject_unref(wait_loaded_data(to));
}

/*
 * query-migrate's mapped-ram-lazy member (whatever the status says: that
 * of a later outgoing migration, if one was tried); the caller unrefs it.
 */
static QDict *query_lazy(QTestState *who)
{
    QDict *rsp = qtest_qmp(who, "{ 'execute': 'query-migrate' }");
    QDict *ret = qdict_get_qdict(rsp, "return");
    QDict *lazy = qdict_get_qdict(ret, "mapped-ram-lazy");

    if (lazy) {
        qobject_ref(lazy);
    }
    qobject_unref(rsp);
    return lazy;
}

/* The fill starts a minute after the guest: until then, faults only. */
#define FILL_HELD_BACK \
    "-global migration.x-mapped-ram-lazy-fill-delay-ms=60000"

/*
 * What QEMU wrote to @errlog (removed) once it found pages of RAM block
 * @block missing from the truncated file; the caller frees it.
 */
static char *read_truncation_error(const char *errlog, const char *block)
{
    g_autofree char *at = g_strdup_printf("mapped-ram-load=lazy: RAM block "
                                          "'%s', page ", block);
    char *err = NULL;

    g_assert_true(g_file_get_contents(errlog, &err, NULL, NULL));
    g_test_message("QEMU said: %s", err);
    g_assert_nonnull(strstr(err, at));
    g_assert_nonnull(strstr(err, ": the file ends before the page "
                            "(truncated?); the VM cannot go on without "
                            "it"));
    unlink(errlog);
    return err;
}

/* A paused VM that loaded @file lazily (its fill starts with 'cont'). */
static QTestState *load_paused_args(const char *file, const char *backend,
                                    const char *serial, const char *errlog,
                                    const char *extra)
{
    g_autofree char *vm = vmt_vm_args(backend ? backend :
                                      "memory-backend-ram", serial);
    g_autofree char *redirect = errlog ?
        g_strdup_printf("2>%s", errlog) : g_strdup("");
    g_autofree char *uri = g_strdup_printf("file:%s", file);
    QTestState *to = qtest_initf("%s -S -incoming defer %s %s", vm, extra,
                                 redirect);

    vmt_set_mapped_ram_caps(to, false, false);
    migrate_set_parameter_str(to, "mapped-ram-load", "lazy");
    migrate_incoming_qmp(to, uri, NULL, "{}");
    wait_for_migration_complete(to);
    return to;
}

static QTestState *load_paused(const char *file, const char *backend,
                               const char *serial, const char *errlog)
{
    return load_paused_args(file, backend, serial, errlog, "");
}

/*
 * @who's lazy load failed with @expect: the VM is stopped for good (cont
 * needs a reset), cannot be saved, and says why.
 */
static void check_lazy_failed(QTestState *who, const char *expect)
{
    g_autofree char *uri = g_strdup_printf("file:%s",
                                           vmt_path("lazy-failed.img"));
    QDict *ev = qtest_qmp_eventwait_ref(who, "MAPPED_RAM_LAZY_FAILED");
    QDict *rsp, *lazy;
    const char *desc;

    desc = qdict_get_str(qdict_get_qdict(ev, "data"), "error-desc");
    g_test_message("MAPPED_RAM_LAZY_FAILED: %s", desc);
    g_assert_nonnull(strstr(desc, expect));
    qobject_unref(ev);
    vmt_wait_for_status(who, "internal-error");
    lazy = query_lazy(who);
    g_assert_false(qdict_get_bool(lazy, "completed"));
    g_assert_nonnull(strstr(qdict_get_str(lazy, "error-desc"), expect));
    qobject_unref(lazy);
    rsp = qtest_qmp(who, "{ 'execute': 'cont' }");
    g_assert_nonnull(strstr(qdict_get_str(qdict_get_qdict(rsp, "error"),
                                          "desc"), "eset"));
    qobject_unref(rsp);
    vmt_migrate_must_fail(who, uri, expect);
}

static void save_ws_must_fail(QTestState *who, const char *ws,
                              const char *expect)
{
    QDict *rsp = qtest_qmp(who, "{ 'execute': 'mapped-ram-save-working-set',"
                           " 'arguments': { 'filename': %s } }", ws);

    g_assert_nonnull(strstr(qdict_get_str(qdict_get_qdict(rsp, "error"),
                                          "desc"), expect));
    qobject_unref(rsp);
}

/* Whether the kernel moves pages into registered memory (Linux 6.8). */
static bool kernel_has_uffd_move(void)
{
    struct uffdio_api api = { .api = UFFD_API };
    int fd = syscall(__NR_userfaultfd, O_CLOEXEC);
    bool has;

    if (fd < 0) {
        return false;
    }
    has = !ioctl(fd, UFFDIO_API, &api) && (api.features & UFFD_FEATURE_MOVE);
    close(fd);
    return has;
}

/* Whether the kernel gives huge pages to memory that asks for them. */
static bool kernel_has_thp(void)
{
    g_autofree char *mode = NULL;

    return g_file_get_contents("/sys/kernel/mm/transparent_hugepage/enabled",
                               &mode, NULL, NULL) &&
           !strstr(mode, "[never]");
}

/* KiB of huge pages in @pid's guest RAM (anonymous, VMT_MEM_SIZE). */
static uint64_t ram_huge_kib(pid_t pid)
{
    g_autofree char *smaps = g_strdup_printf("/proc/%d/smaps", (int)pid);
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    uint64_t start, end, kib, ram = 0;
    char perms[8];
    bool in = false;
    int i, n;

    g_assert_cmpint(qemu_strtosz(VMT_MEM_SIZE, NULL, &ram), ==, 0);
    g_assert_true(g_file_get_contents(smaps, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (i = 0; lines[i]; i++) {
        if (sscanf(lines[i], "%" SCNx64 "-%" SCNx64 " %7s %*s %*s %*s%n",
                   &start, &end, perms, &n) == 3) {
            /* no path: anonymous */
            in = end - start == ram && !strcmp(perms, "rw-p") &&
                 !lines[i][n + strspn(lines[i] + n, " ")];
        } else if (in && sscanf(lines[i], "AnonHugePages: %" SCNu64,
                                &kib) == 1) {
            return kib;
        }
    }
    g_assert_not_reached();
}

/*
 * The fill moves chunks of anonymous RAM in whole (UFFDIO_MOVE): the
 * guest's RAM is in huge pages, as after a copy load, and the data is
 * right (the clones test checks it).
 */
static void check_moved_in(QTestState *who, const char *trace)
{
    g_autofree char *log = NULL;
    const char *at;
    uint64_t chunks = 0;

    g_assert_true(g_file_get_contents(trace, &log, NULL, NULL));
    unlink(trace);
    at = strstr(log, "the fill took ");
    g_assert_nonnull(at);
    at = strstr(at, " us, ");
    g_assert_nonnull(at);
    chunks = g_ascii_strtoull(at + strlen(" us, "), NULL, 10);
    g_test_message("fill: %" PRIu64 " chunks moved in; guest RAM: %" PRIu64
                   " KiB in huge pages", chunks, ram_huge_kib(qtest_pid(who)));
    if (!kernel_has_uffd_move()) {
        g_test_message("no UFFDIO_MOVE in this kernel (Linux 6.8 has it): "
                       "the fill copies; not checked");
        return;
    }
    /*
     * The boot block's pattern covers 49 chunks; the guest faults on some
     * before the fill gets there (those are placed page by page).
     */
    g_assert_cmpuint(chunks, >=, (end_address - start_address) /
                     (2 * MiB) / 2);
    if (kernel_has_thp()) {
        g_assert_cmpuint(ram_huge_kib(qtest_pid(who)), >=, 2048);
    }
}

/*
 * The working set: what a lazy clone faulted in is saved once its load
 * completed, and a later clone given it places those pages first.
 */
static void test_lazy_working_set(void)
{
    g_autofree char *file = vmt_path("lazy-ws.img");
    g_autofree char *ws = vmt_path("lazy-ws.ws");
    g_autofree char *extra = g_strdup_printf(
        "-global migration.mapped-ram-working-set=%s", ws);
    g_autofree char *buf = NULL;
    g_autofree char *vm = NULL;
    g_autofree char *args = NULL;
    VmtSaveOpts s = { 0 };
    VmtLoadOpts l = { .mode = "lazy", .extra = extra };
    VmtLoadOpts copy = { .mode = "copy" };
    gsize len;
    QDict *ev;
    QTestState *a, *b, *c;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);

    /* a copy load has no working set, nor lazy progress */
    c = vmt_load_fixed(file, &copy, "ws_c_serial");
    g_assert_null(query_lazy(c));
    save_ws_must_fail(c, ws, "was not loaded with mapped-ram-load=lazy");
    qtest_quit(c);

    /* not before the load completed */
    a = load_paused(file, NULL, "ws_a_serial", NULL);
    save_ws_must_fail(a, ws, "the lazy load has not completed yet");
    g_assert_false(g_file_test(ws, G_FILE_TEST_EXISTS));
    qtest_qmp_assert_success(a, "{ 'execute': 'cont' }");
    wait_loaded(a);
    qtest_qmp_assert_success(a, "{ 'execute': 'mapped-ram-save-working-set',"
                             " 'arguments': { 'filename': %s,"
                             " 'duration-ms': 60000 } }", ws);
    vmt_check_continues(a, "ws_a_serial");
    qtest_quit(a);
    g_assert_true(g_file_get_contents(ws, &buf, &len, NULL));
    g_assert_cmpint(len, >, 24);
    g_assert_cmpint(memcmp(buf, "QEMUMRWS", 8), ==, 0);
    g_test_message("working set: %" G_GSIZE_FORMAT " bytes", len);

    b = vmt_load_fixed(file, &l, "ws_b_serial");
    ev = qtest_qmp_eventwait_ref(b, "MAPPED_RAM_LAZY_LOADED");
    g_test_message("with the working set: %" PRId64 " faults, %" PRId64
                   " pages prefetched",
                   qdict_get_int(qdict_get_qdict(ev, "data"), "faults"),
                   qdict_get_int(qdict_get_qdict(ev, "data"),
                                 "pages-prefetched"));
    g_assert_cmpint(qdict_get_int(qdict_get_qdict(ev, "data"),
                                  "pages-prefetched"), >, 0);
    qobject_unref(ev);
    vmt_check_continues(b, "ws_b_serial");
    qtest_quit(b);

    /* damaged working sets are refused, not guessed at */
    vm = vmt_vm_args("memory-backend-ram", "ws_bad_serial");
    args = g_strdup_printf("%s -global migration.mapped-ram=on"
                           " -global migration.mapped-ram-load=lazy %s"
                           " -incoming file:%s", vm, extra, file);
    vmt_write_file(ws, (uint8_t *)buf, len - 1);
    vmt_qemu_must_fail(args, "ws_bad_serial", "(truncated or corrupted "
                       "file?)");
    buf[len - 8] = 0x7f;        /* the last page names block 0x7fxx */
    vmt_write_file(ws, (uint8_t *)buf, len);
    vmt_qemu_must_fail(args, "ws_bad_serial", "names RAM block 32");
    buf[0] = 'X';
    vmt_write_file(ws, (uint8_t *)buf, len);
    vmt_qemu_must_fail(args, "ws_bad_serial", "': not a working set file");
    unlink(ws);
    unlink(file);
}

static void test_lazy_clones(void)
{
    g_autofree char *file = vmt_path("lazy.img");
    g_autofree char *sha = NULL;
    g_autofree char *sha2 = NULL;
    g_autofree char *trace = vmt_path("lazy-fill.trace");
    g_autofree char *traced = g_strdup_printf(
        "-trace mapped_ram_lazy_fill -trace mapped_ram_lazy_move_failed "
        "-D %s", trace);
    VmtSaveOpts s = { 0 };
    VmtLoadOpts l = { .mode = "lazy" };
    VmtLoadOpts la = { .mode = "lazy", .extra = traced };
    QTestState *a, *b;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    sha = vmt_file_sha256(file);

    a = vmt_load_fixed(file, &la, "a_serial");
    b = vmt_load_fixed(file, &l, "b_serial");
    wait_loaded(a);
    wait_loaded(b);
    check_moved_in(a, trace);
    /* Loaded into RAM, not mapped. */
    g_assert_false(vmt_process_maps(qtest_pid(a), file));
    vmt_check_continues(a, "a_serial");
    vmt_check_continues(b, "b_serial");
    qtest_writeq(a, VMT_ZERO_PAGE_ADDR, 0x1111);
    g_assert_cmpint(qtest_readq(b, VMT_ZERO_PAGE_ADDR), ==, 0);
    qtest_quit(a);
    qtest_quit(b);
    sha2 = vmt_file_sha256(file);
    g_assert_cmpstr(sha, ==, sha2);
    unlink(file);
}

/*
 * Before the guest runs, no fill: each read faults.  A page whose bit is
 * clear reads as zero even where the file holds data for it.
 */
static void test_lazy_fault_and_stale_page(void)
{
    g_autofree char *file = vmt_path("lazy-stale.img");
    uint64_t bitmap_offset, pages_offset, page = VMT_ZERO_PAGE_ADDR;
    g_autofree char *hmp = NULL;
    VmtSaveOpts s = { 0 };
    QDict *lazy;
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    vmt_find_header(file, &bitmap_offset, &pages_offset);
    vmt_put_stale_page(file, bitmap_offset, pages_offset, page);

    to = load_paused(file, NULL, "stale_serial", NULL);
    vmt_wait_for_status(to, "paused");
    /* served by the fault thread, in this (the main) thread's access */
    g_assert_cmpint(qtest_readq(to, page), ==, 0);
    vmt_check_boot_code(to);
    vmt_check_pattern(to);

    /* the migration completed, the load goes on: query-migrate shows it */
    lazy = query_lazy(to);
    g_assert_nonnull(lazy);
    g_assert_false(qdict_get_bool(lazy, "completed"));
    /* guest RAM and the firmware blocks */
    g_assert_cmpint(qdict_get_int(lazy, "total-pages"), >,
                    VMT_MEM_BYTES / TEST_MEM_PAGE_SIZE);
    g_assert_cmpint(qdict_get_int(lazy, "faults"), >,
                    (end_address - start_address) / TEST_MEM_PAGE_SIZE);
    g_assert_cmpint(qdict_get_int(lazy, "pages-read") +
                    qdict_get_int(lazy, "pages-zeroed"), <,
                    qdict_get_int(lazy, "total-pages"));
    qobject_unref(lazy);

    qtest_qmp_assert_success(to, "{ 'execute': 'cont' }");
    wait_loaded(to);
    lazy = query_lazy(to);
    g_assert_true(qdict_get_bool(lazy, "completed"));
    g_assert_cmpint(qdict_get_int(lazy, "pages-read") +
                    qdict_get_int(lazy, "pages-zeroed"), ==,
                    qdict_get_int(lazy, "total-pages"));
    qobject_unref(lazy);
    hmp = qtest_hmp(to, "info migrate");
    g_test_message("info migrate: %s", hmp);
    g_assert_nonnull(strstr(hmp, "mapped-ram lazy load: completed after "));
    vmt_check_continues(to, "stale_serial");
    g_assert_cmpint(qtest_readq(to, page), ==, 0);
    qtest_quit(to);
    unlink(file);
}

/* Whether @who runs its vCPUs under KVM (the default if it can). */
static bool vm_uses_kvm(QTestState *who)
{
    QDict *rsp = qtest_qmp_assert_success_ref(who,
                                              "{ 'execute': 'query-kvm' }");
    bool kvm = qdict_get_bool(rsp, "enabled");

    qobject_unref(rsp);
    return kvm;
}

/*
 * A template saved into @file, and a paused clone that loaded it lazily
 * with @extra; then the file is cut where mem0's pages pass 2 MiB (the
 * pattern's), or where pc.bios's pages begin if @bios.
 */
static QTestState *load_truncated(const char *file, const char *serial,
                                  const char *errlog, const char *extra,
                                  bool bios)
{
    uint64_t bitmap_offset, pages_offset;
    VmtSaveOpts s = { 0 };
    QTestState *to;

    vmt_save_fixed(file, &s);
    vmt_find_header(file, &bitmap_offset, &pages_offset);
    if (bios) {
        /* pc.bios comes after mem0's pages */
        vmt_find_block_header_from(file, pages_offset + VMT_MEM_BYTES,
                                   "pc.bios", 256 * 1024, 0, &bitmap_offset,
                                   &pages_offset);
    }
    to = load_paused_args(file, NULL, serial, errlog, extra);
    /* the device state is loaded: the pages go */
    g_assert_cmpint(truncate(file, pages_offset + (bios ? 0 : 2 * MiB)), ==,
                    0);
    return to;
}

/*
 * The file loses pages under a lazy clone, and the guest touches one of
 * them first (the fill is held back).  The VM stops (internal-error) and
 * stays stopped; QEMU quits cleanly: a TCG vCPU places the page before
 * its TLB maps it, and stops when that fails; a KVM vCPU with hardware
 * paging waits in the fault, and leaves it when asked to stop.  (Not
 * system_reset: the reset writes ROM contents into guest RAM from the
 * main thread, and the pages it writes are among those the file lost
 * here, so QEMU exits.)  Under PVM (kvm_pvm, KVM in a VM without
 * nested virtualization) the boot code's accesses are emulated in the
 * kernel, which faults again instead of leaving: QEMU exits when the VM
 * has not stopped in time.  Never a hang.
 */
static void test_lazy_truncated(void)
{
    g_autofree char *file = vmt_path("lazy-trunc.img");
    g_autofree char *errlog = vmt_path("lazy-trunc.err");
    g_autofree char *err = NULL;
    QTestState *to;
    bool kvm;

    if (!vmt_accel_available()) {
        return;
    }
    to = load_truncated(file, "trunc_serial", errlog, FILL_HELD_BACK, false);
    kvm = vm_uses_kvm(to);
    if (!kvm || !g_file_test("/sys/module/kvm_pvm", G_FILE_TEST_IS_DIR)) {
        qtest_qmp_assert_success(to, "{ 'execute': 'cont' }");
        check_lazy_failed(to, "RAM block 'mem0', page ");
        /* stopped for good: the vCPU did not go on */
        g_usleep(200 * 1000);
        vmt_wait_for_status(to, "internal-error");
        qtest_quit(to);
        err = read_truncation_error(errlog, "mem0");
        g_assert_null(strstr(err, "exiting"));
    } else {
        qtest_set_expected_status(to, 1);
        qtest_qmp_send(to, "{ 'execute': 'cont' }");
        qtest_wait_qemu(to);
        qtest_quit(to);
        err = read_truncation_error(errlog, "mem0");
        g_assert_nonnull(strstr(err, "the VM did not stop within 2000 ms "
                                "after the failure"));
    }
    unlink(file);
}

/*
 * The file loses pages under a paused lazy clone, and QEMU's main thread
 * reads one (HMP xp): no stop can take that thread out of its fault, so
 * QEMU exits at once, naming the thread.
 */
static void test_lazy_truncated_qemu_thread(void)
{
    g_autofree char *file = vmt_path("lazy-trunc-main.img");
    g_autofree char *errlog = vmt_path("lazy-trunc-main.err");
    g_autofree char *err = NULL;
    g_autofree char *who = NULL;
    /* the pattern's page at 64 MiB: its bit is set, the file has no page */
    g_autofree char *xp = g_strdup_printf("xp /1gx 0x%" PRIx64,
                                          (uint64_t)(64 * MiB));
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    to = load_truncated(file, "trunc_main_serial", errlog, FILL_HELD_BACK,
                        false);
    who = g_strdup_printf("QEMU's thread %d waits for the page, and cannot "
                          "be stopped; exiting", (int)qtest_pid(to));
    qtest_set_expected_status(to, 1);
    qtest_qmp_send(to, "{ 'execute': 'human-monitor-command', 'arguments':"
                   " { 'command-line': %s } }", xp);
    qtest_wait_qemu(to);
    qtest_quit(to);
    err = read_truncation_error(errlog, "mem0");
    g_assert_nonnull(strstr(err, who));
    unlink(file);
}

/*
 * The file loses pages the guest does not touch (the BIOS's): the fill
 * finds it, and the VM stops with the error, under TCG and KVM alike.
 */
static void test_lazy_truncated_fill(void)
{
    g_autofree char *file = vmt_path("lazy-trunc-fill.img");
    g_autofree char *errlog = vmt_path("lazy-trunc-fill.err");
    g_autofree char *err = NULL;
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    to = load_truncated(file, "trunc_fill_serial", errlog, "", true);
    qtest_qmp_assert_success(to, "{ 'execute': 'cont' }");
    check_lazy_failed(to, "RAM block 'pc.bios', page ");
    /* the guest ran on, in RAM the file still had */
    vmt_check_boot_code(to);
    qtest_quit(to);
    err = read_truncation_error(errlog, "pc.bios");
    g_assert_null(strstr(err, "exiting"));
    unlink(file);
}

/*
 * Saved into another file while its load goes on (the fill held back):
 * the save's reads fault the pages in, and the new file is whole.
 */
static void test_lazy_save_while_loading(void)
{
    g_autofree char *file = vmt_path("lazy-w1.img");
    g_autofree char *file2 = vmt_path("lazy-w2.img");
    VmtSaveOpts s = { 0 };
    VmtLoadOpts l = { .mode = "copy" };
    QTestState *mid;
    QDict *lazy;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    mid = load_paused_args(file, NULL, "midw_serial", NULL, FILL_HELD_BACK);
    qtest_qmp_assert_success(mid, "{ 'execute': 'cont' }");
    wait_for_serial("midw_serial");
    lazy = query_lazy(mid);
    g_assert_false(qdict_get_bool(lazy, "completed"));
    qobject_unref(lazy);
    vmt_save_and_load_again(mid, file2, &l, "lastw_serial");
    unlink(file2);
    unlink(file);
}

/* Saving into the file a lazy load reads is refused until it completes. */
static void test_lazy_save_again(void)
{
    g_autofree char *file = vmt_path("lazy-1.img");
    g_autofree char *uri = g_strdup_printf("file:%s", file);
    VmtSaveOpts s = { 0 };
    VmtLoadOpts l = { .mode = "copy" };
    QTestState *mid;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    mid = load_paused(file, NULL, "mid_serial", NULL);
    vmt_migrate_must_fail(mid, uri, "this VM's RAM is still being loaded "
                          "from the migration file it would write");

    qtest_qmp_assert_success(mid, "{ 'execute': 'cont' }");
    wait_loaded(mid);
    wait_for_serial("mid_serial");
    /* the load completed: the file is free, and saving it again works */
    vmt_save_and_load_again(mid, file, &l, "last_serial");
    unlink(file);
}

/* bypass-shared-memory: the shared block is mapped, the rest is lazy. */
static void test_lazy_bypass(void)
{
    g_autofree char *file = vmt_path("lazy-tmpl.img");
    g_autofree char *mem = vmt_path("lazy-tmpl.ram");
    g_autofree char *src_backend = g_strdup_printf(
        "memory-backend-file,mem-path=%s,share=on", mem);
    g_autofree char *dst_backend = g_strdup_printf(
        "memory-backend-file,mem-path=%s,share=off", mem);
    VmtSaveOpts s = { .backend = src_backend, .bypass = true };
    VmtLoadOpts l = { .backend = dst_backend, .mode = "lazy" };
    QDict *ev;
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    to = vmt_load_fixed(file, &l, "bypass_serial");
    ev = qtest_qmp_eventwait_ref(to, "MAPPED_RAM_LAZY_LOADED");
    /* only the small blocks (firmware, ACPI) came from the file */
    g_assert_cmpint(qdict_get_int(qdict_get_qdict(ev, "data"),
                                  "pages-read"), <, 1024);
    qobject_unref(ev);
    vmt_check_continues(to, "bypass_serial");
    qtest_quit(to);
    unlink(file);
    unlink(mem);
}

/* A destination whose RAM is private but not anonymous. */
static void lazy_backend(const char *name, const char *backend)
{
    g_autofree char *file = vmt_path(name);
    g_autofree char *serial = g_strdup_printf("%s_serial", name);
    VmtSaveOpts s = { 0 };
    VmtLoadOpts l = { .backend = backend, .mode = "lazy" };
    QTestState *to;

    vmt_save_fixed(file, &s);
    to = vmt_load_fixed(file, &l, serial);
    wait_loaded(to);
    vmt_check_continues(to, serial);
    g_assert_cmpint(qtest_readq(to, VMT_ZERO_PAGE_ADDR), ==, 0);
    qtest_quit(to);
    unlink(file);
}

static void test_lazy_memfd(void)
{
    if (!vmt_accel_available()) {
        return;
    }
    lazy_backend("lazy-memfd.img", "memory-backend-memfd,share=off");
}

/* Free 2 MiB huge pages, from /proc/meminfo. */
static long free_huge_pages(void)
{
    g_autofree char *info = NULL;
    const char *p;
    long n;

    if (!g_file_get_contents("/proc/meminfo", &info, NULL, NULL) ||
        !strstr(info, "Hugepagesize:       2048 kB")) {
        return 0;
    }
    p = strstr(info, "HugePages_Free:");
    if (!p) {
        return 0;
    }
    p += strlen("HugePages_Free:");
    while (*p == ' ') {
        p++;
    }
    return qemu_strtol(p, &p, 10, &n) ? 0 : n;
}

/*
 * hugetlbfs (a memfd with hugetlb=on): each fault places a whole 2 MiB
 * page built from the file's 4 KiB pages and zeroes.  make check
 * reserves the huge pages when it can (build-aux/check.sh).
 */
static void test_lazy_hugetlb(void)
{
    long need = VMT_MEM_BYTES / (2 * 1024 * 1024);

    if (free_huge_pages() < need) {
        g_test_skip("needs free 2 MiB huge pages (as root: echo N > "
                    "/proc/sys/vm/nr_hugepages)");
        return;
    }
    if (!vmt_accel_available()) {
        return;
    }
    lazy_backend("lazy-huge.img", "memory-backend-memfd,share=off,"
                 "hugetlb=on,hugetlbsize=2M");
}

/*
 * Shared hugetlbfs: huge pages the file has no data for stay holes of the
 * memory file (wait_loaded() checks every page is accounted for).
 */
static void test_lazy_hugetlb_shared(void)
{
    long need = VMT_MEM_BYTES / (2 * 1024 * 1024);

    if (free_huge_pages() < need) {
        g_test_skip("needs free 2 MiB huge pages (as root: echo N > "
                    "/proc/sys/vm/nr_hugepages)");
        return;
    }
    if (!vmt_accel_available()) {
        return;
    }
    lazy_backend("lazy-huge-shared.img", "memory-backend-memfd,share=on,"
                 "hugetlb=on,hugetlbsize=2M");
}

/* Shared RAM: QEMU alone maps it here (no vhost-user device). */
static void test_lazy_shared_memfd(void)
{
    if (!vmt_accel_available()) {
        return;
    }
    lazy_backend("lazy-memfd-shared.img", "memory-backend-memfd,share=on");
}

static bool is_tmpfs(const char *path)
{
    struct statfs st;

    return statfs(path, &st) == 0 && st.f_type == TMPFS_MAGIC;
}

/* A shared file on tmpfs: the clone's RAM ends up in the file. */
static void test_lazy_shared_tmpfs(void)
{
    g_autofree char *mem = g_strdup_printf("/dev/shm/vmt-lazy-%d.ram",
                                           getpid());
    g_autofree char *backend = g_strdup_printf(
        "memory-backend-file,mem-path=%s,share=on", mem);
    struct stat st;

    if (!is_tmpfs("/dev/shm")) {
        g_test_skip("/dev/shm is not tmpfs");
        return;
    }
    if (!vmt_accel_available()) {
        return;
    }
    lazy_backend("lazy-tmpfs-shared.img", backend);
    /* the file holds the guest's pages, not holes */
    g_assert_cmpint(stat(mem, &st), ==, 0);
    g_assert_cmpint(st.st_blocks * 512, >=,
                    end_address - start_address);
    unlink(mem);
}

/* Other file systems cannot be registered: refused with the reason. */
static void test_lazy_refuses_disk_file(void)
{
    g_autofree char *file = vmt_path("lazy-disk.img");
    g_autofree char *mem = vmt_path("lazy-refused.ram");
    g_autofree char *dir = g_path_get_dirname(mem);
    g_autofree char *backend = g_strdup_printf(
        "memory-backend-file,mem-path=%s,share=on", mem);
    VmtSaveOpts s = { 0 };

    if (is_tmpfs(dir)) {
        g_test_skip("the test directory is on tmpfs, which lazy loads "
                    "can register");
        return;
    }
    vmt_save_fixed(file, &s);
    vmt_load_must_fail(file, backend, "lazy", "refuse_serial",
                       "mapped-ram-load=lazy: RAM block 'mem0': cannot "
                       "register it with userfaultfd");
    unlink(mem);
    unlink(file);
}

/*
 * The vCPU that places the guest's first page is preempted right after
 * it claimed the page (x-mapped-ram-lazy-place-delay-ms holds it 3 s,
 * the fill starts 0.2 s after the guest): the fill finds that page being
 * placed and goes on.  The load must complete only once the page is
 * there, every page counted, and the vCPU must find its userfaultfd and
 * file still open when it goes on (no failure after the completion).
 */
static void test_lazy_slow_placer(void)
{
    g_autofree char *file = vmt_path("lazy-slow.img");
    VmtSaveOpts s = { 0 };
    VmtLoadOpts l = {
        .mode = "lazy",
        .extra = "-global migration.x-mapped-ram-lazy-place-delay-ms=3000"
                 " -global migration.x-mapped-ram-lazy-fill-delay-ms=200",
    };
    QDict *data, *lazy;
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    to = vmt_load_fixed(file, &l, "slow_serial");
    data = wait_loaded_data(to);
    /* the held page was placed by its vCPU (or fault thread) */
    g_assert_cmpint(qdict_get_int(data, "faults"), >=, 1);
    g_assert_cmpint(qdict_get_int(data, "pages-skipped"), ==, 0);
    qobject_unref(data);
    /*
     * nothing failed afterwards (it would, with a descriptor closed, once
     * the vCPU's 3 s hold is over: wait past it)
     */
    g_usleep(3500 * 1000);
    lazy = query_lazy(to);
    g_assert_false(qdict_haskey(lazy, "error-desc"));
    qobject_unref(lazy);
    vmt_wait_for_status(to, "running");
    vmt_check_continues(to, "slow_serial");
    qtest_quit(to);
    unlink(file);
}

/* RssShmem of process @pid, in bytes (/proc/PID/status). */
static uint64_t rss_shmem(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/status", (int)pid);
    g_autofree char *text = NULL;
    const char *at;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    at = strstr(text, "RssShmem:");
    g_assert_nonnull(at);
    return g_ascii_strtoull(at + strlen("RssShmem:"), NULL, 10) * KiB;
}

/*
 * Shared memfd RAM, loaded by copy and lazily: the lazy load leaves the
 * zero pages as holes of the memory file, as the copy does, instead of
 * allocating every page of the RAM.
 */
static void test_lazy_shared_holes(void)
{
    g_autofree char *file = vmt_path("lazy-holes.img");
    const char *backend = "memory-backend-memfd,share=on";
    VmtSaveOpts s = { 0 };
    VmtLoadOpts copy = { .backend = backend, .mode = "copy" };
    VmtLoadOpts l = { .backend = backend, .mode = "lazy" };
    uint64_t copy_bytes, lazy_bytes;
    QDict *data;
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);

    to = vmt_load_fixed(file, &copy, "holes_copy_serial");
    vmt_check_continues(to, "holes_copy_serial");
    copy_bytes = rss_shmem(qtest_pid(to));
    qtest_quit(to);

    to = vmt_load_fixed(file, &l, "holes_lazy_serial");
    data = wait_loaded_data(to);
    g_assert_cmpint(qdict_get_int(data, "pages-skipped"), >, 0);
    qobject_unref(data);
    vmt_check_continues(to, "holes_lazy_serial");
    lazy_bytes = rss_shmem(qtest_pid(to));
    qtest_quit(to);
    g_test_message("RssShmem: copy load %" PRIu64 " KiB, lazy load %"
                   PRIu64 " KiB (RAM %d KiB)", copy_bytes / KiB,
                   lazy_bytes / KiB, VMT_MEM_BYTES / 1024);
    /* the guest ran on both, touching the same pages; 1 MiB of slack */
    g_assert_cmpuint(lazy_bytes, <=, copy_bytes + MiB);
    unlink(file);
}

/*
 * Upstream's spelling of a lazy load ("fast snapshot load"): the
 * mapped-ram and postcopy-ram capabilities on the destination, and a
 * file: URI.  postcopy-ram with mapped-ram-load=map contradicts it, and
 * a source refuses to save with both.
 */
static void test_lazy_upstream_spelling(void)
{
    g_autofree char *file = vmt_path("lazy-upstream.img");
    g_autofree char *uri = g_strdup_printf("file:%s", file);
    g_autofree char *out = g_strdup_printf("file:%s",
                                           vmt_path("lazy-upstream-2.img"));
    g_autofree char *vm = vmt_vm_args("memory-backend-ram", "fsl_serial");
    g_autofree char *bad = vmt_vm_args("memory-backend-ram", "fsl_bad_serial");
    g_autofree char *args = NULL;
    VmtSaveOpts s = { 0 };
    QTestState *to;
    QDict *lazy;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);

    to = qtest_initf("%s -incoming defer", vm);
    migrate_set_capability(to, "mapped-ram", true);
    migrate_set_capability(to, "postcopy-ram", true);
    migrate_incoming_qmp(to, uri, NULL, "{}");
    wait_for_migration_complete(to);
    vmt_wait_for_status(to, "running");
    wait_loaded(to);
    lazy = query_lazy(to);
    g_assert_nonnull(lazy);
    qobject_unref(lazy);
    vmt_check_continues(to, "fsl_serial");
    /* a source with both refuses to start */
    vmt_migrate_must_fail(to, out, "postcopy-ram with mapped-ram is for a "
                          "destination");
    qtest_quit(to);

    args = g_strdup_printf("%s -global migration.mapped-ram=on"
                           " -global migration.x-postcopy-ram=on"
                           " -global migration.mapped-ram-load=map"
                           " -incoming %s", bad, uri);
    vmt_qemu_must_fail(args, "fsl_bad_serial", "postcopy-ram with mapped-ram "
                       "loads the file lazily, which contradicts "
                       "mapped-ram-load=map");
    unlink(file);
}

/* contrib/vhost-user-blk, built beside the QEMU under test, or NULL. */
static char *vhost_user_blk_binary(void)
{
    const char *qemu = g_getenv("QTEST_QEMU_BINARY");
    g_autofree char *dir = qemu ? g_path_get_dirname(qemu) : NULL;
    char *path = dir ? g_build_filename(dir, "contrib", "vhost-user-blk",
                                        "vhost-user-blk", NULL) : NULL;

    if (path && !g_file_test(path, G_FILE_TEST_IS_EXECUTABLE)) {
        g_free(path);
        return NULL;
    }
    return path;
}

/* Whether a process listens on the unix socket @path (/proc/net/unix). */
static bool unix_socket_listens(const char *path)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    int i;

    if (!g_file_get_contents("/proc/net/unix", &text, NULL, NULL)) {
        return false;
    }
    lines = g_strsplit(text, "\n", -1);
    for (i = 0; lines[i]; i++) {
        g_auto(GStrv) f = g_strsplit_set(lines[i], " ", -1);
        guint n = g_strv_length(f);

        /* Num RefCount Protocol Flags Type St Inode Path; __SO_ACCEPTCON */
        if (n >= 8 && !strcmp(f[n - 1], path) &&
            !strcmp(f[3], "00010000")) {
            return true;
        }
    }
    return false;
}

/* A vhost-user-blk back end serving @disk on @sock; returns its pid. */
static GPid start_vhost_user_blk(const char *binary, const char *disk,
                                 const char *sock)
{
    const char *argv[] = { binary, "-b", disk, "-s", sock, NULL };
    g_autoptr(GError) err = NULL;
    GPid pid;
    int i;

    unlink(sock);
    g_assert_true(g_spawn_async(NULL, (char **)argv, NULL,
                                G_SPAWN_STDOUT_TO_DEV_NULL |
                                G_SPAWN_STDERR_TO_DEV_NULL |
                                G_SPAWN_DO_NOT_REAP_CHILD,
                                NULL, NULL, &pid, &err));
    /* it serves one connection: wait for it to listen, without one */
    for (i = 0; i < 3000 && !unix_socket_listens(sock); i++) {
        g_usleep(10 * 1000);
    }
    g_assert_true(unix_socket_listens(sock));
    return pid;
}

static void stop_vhost_user_blk(GPid pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    g_spawn_close_pid(pid);
}

/* device_add of a vhost-user-blk disk served on @sock; the response. */
static QDict *plug_vhost_user_blk(QTestState *who, const char *sock, int n)
{
    g_autofree char *chr = g_strdup_printf("vu%d", n);
    g_autofree char *dev = g_strdup_printf("vublk%d", n);

    qtest_qmp_assert_success(who, "{ 'execute': 'chardev-add', 'arguments':"
                             " { 'id': %s, 'backend': { 'type': 'socket',"
                             " 'data': { 'addr': { 'type': 'unix',"
                             " 'data': { 'path': %s } }, 'server': false"
                             " } } } }", chr, sock);
    return qtest_qmp(who, "{ 'execute': 'device_add', 'arguments':"
                     " { 'driver': 'vhost-user-blk-pci', 'id': %s,"
                     " 'chardev': %s, 'num-queues': 1 } }", dev, chr);
}

/*
 * A vhost-user device plugged while shared RAM is still loaded lazily
 * would map pages that are not there, and its back end would not wait
 * for them (it was not asked to at setup): refused, with the reason.
 * Once the load completed, the same device plugs.
 */
static void test_lazy_vhost_user_plug(void)
{
    g_autofree char *binary = vhost_user_blk_binary();
    g_autofree char *file = vmt_path("lazy-plug.img");
    g_autofree char *disk = vmt_path("lazy-plug-disk.img");
    g_autofree char *sock = vmt_path("lazy-plug.sock");
    VmtSaveOpts s = { .backend = "memory-backend-memfd,share=on" };
    VmtLoadOpts l = {
        .backend = "memory-backend-memfd,share=on",
        .mode = "lazy",
        .extra = "-global migration.x-mapped-ram-lazy-fill-delay-ms=3000",
    };
    QTestState *to;
    QDict *rsp;
    GPid pid;

    if (!binary) {
        g_test_skip("contrib/vhost-user-blk is not built beside QEMU");
        return;
    }
    if (!vmt_accel_available()) {
        return;
    }
    vmt_write_file(disk, (const uint8_t *)"", 0);
    g_assert_cmpint(truncate(disk, MiB), ==, 0);
    vmt_save_fixed(file, &s);
    to = vmt_load_fixed(file, &l, "plug_serial");

    pid = start_vhost_user_blk(binary, disk, sock);
    rsp = plug_vhost_user_blk(to, sock, 0);
    g_assert_true(qdict_haskey(rsp, "error"));
    g_test_message("device_add while loading: %s",
                   qdict_get_str(qdict_get_qdict(rsp, "error"), "desc"));
    g_assert_nonnull(strstr(qdict_get_str(qdict_get_qdict(rsp, "error"),
                                          "desc"),
                            "a vhost-user device cannot be plugged while "
                            "shared RAM block 'mem0' is still loaded "
                            "lazily"));
    qobject_unref(rsp);
    stop_vhost_user_blk(pid);

    wait_loaded(to);
    pid = start_vhost_user_blk(binary, disk, sock);
    rsp = plug_vhost_user_blk(to, sock, 1);
    g_assert_false(qdict_haskey(rsp, "error"));
    qobject_unref(rsp);
    vmt_check_continues(to, "plug_serial");
    qtest_quit(to);
    stop_vhost_user_blk(pid);
    unlink(sock);
    unlink(disk);
    unlink(file);
}

/*
 * A RAM block resized after it was registered: fw_cfg's post_load
 * resizes the ACPI tables block to the size its own section gives, after
 * the RAM section registered the block with the length that section
 * gave (an ACPI rebuild at a guest reset does the same).  The stream is
 * edited so that the two disagree: the block grows from 128 KiB to
 * @size (past the words of the load's bitmaps) or shrinks to it, under
 * the load.  The load keeps the length it registered: a part that grew
 * was never registered and is plain memory, a part cut off is still
 * placed; the rest loads, and the VM runs on.
 */
static void lazy_resized_block(uint64_t size)
{
    g_autofree char *file = vmt_path("lazy-resized.img");
    g_autofree char *want = g_strdup_printf("0x%016" PRIx64, size);
    static const char sub[] = "fw_cfg/acpi_mr";
    VmtSaveOpts s = { 0 };
    VmtLoadOpts l = { .mode = "lazy" };
    g_autofree uint8_t *buf = NULL;
    g_autofree char *blocks = NULL;
    uint8_t *at;
    size_t len;
    off_t off;
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    buf = vmt_read_file(file, &len);
    at = memmem(buf, len, sub, strlen(sub));
    g_assert_nonnull(at);
    /* name, be32 version, be64 table_mr_size */
    off = at - buf + strlen(sub) + 4;
    g_assert_cmphex(ldq_be_p(buf + off), ==, 128 * KiB);
    vmt_file_put_be64(file, off, size);

    to = vmt_load_fixed(file, &l, "resized_serial");
    blocks = qtest_hmp(to, "info ramblock");
    g_test_message("%s", blocks);
    /* it was resized, under the load */
    g_assert_nonnull(strstr(blocks, "/rom@etc/acpi/tables    4 KiB  "));
    g_assert_nonnull(strstr(strstr(blocks, "/rom@etc/acpi/tables"), want));
    wait_loaded(to);
    vmt_check_continues(to, "resized_serial");
    qtest_quit(to);
    unlink(file);
}

static void test_lazy_resized_grown(void)
{
    lazy_resized_block(2 * MiB);
}

static void test_lazy_resized_shrunk(void)
{
    lazy_resized_block(64 * KiB);
}

/*
 * A device whose ROM is loaded lazily is unplugged while the load goes
 * on (the fill held back): its RAM block stays until the load let go of
 * it, the load completes, and the guest goes on.
 */
static void test_lazy_unplug(void)
{
    g_autofree char *file = vmt_path("lazy-unplug.img");
    g_autofree char *rom = vmt_path("lazy-unplug.rom");
    g_autofree char *dev = g_strdup_printf(
        "-device pci-testdev,id=t,addr=0x3,romfile=%s", rom);
    g_autofree char *extra = g_strdup_printf(
        "%s -global migration.x-mapped-ram-lazy-fill-delay-ms=2000", dev);
    g_autofree uint8_t *image = g_malloc0(4096);
    g_autoptr(GString) devices = NULL;
    VmtSaveOpts s = { .extra = dev };
    VmtLoadOpts l = { .mode = "lazy", .extra = extra };
    QTestState *to;
    QDict *rsp;

    if (!vmt_accel_available()) {
        return;
    }
    image[0] = 0x55;
    image[1] = 0xaa;
    image[2] = 4096 / 512;
    vmt_write_file(rom, image, 4096);
    vmt_save_fixed(file, &s);
    to = vmt_load_fixed(file, &l, "unplug_serial");
    qtest_qmp_assert_success(to, "{ 'execute': 'device_del',"
                             " 'arguments': { 'id': 't' } }");
    /* the guest's ACPI handler would eject slot 3: PIIX4's PCEJ */
    qtest_outl(to, 0xae08, 1 << 3);
    qtest_qmp_eventwait(to, "DEVICE_DELETED");
    rsp = qtest_qmp(to, "{ 'execute': 'qom-list', 'arguments':"
                    " { 'path': '/machine/peripheral' } }");
    g_assert_true(qdict_haskey(rsp, "return"));
    devices = qobject_to_json(QOBJECT(rsp));
    g_assert_null(strstr(devices->str, "\"t\""));
    qobject_unref(rsp);
    wait_loaded(to);
    vmt_check_continues(to, "unplug_serial");
    qtest_quit(to);
    unlink(rom);
    unlink(file);
}

/*
 * While shared RAM is still loaded lazily, a save that leaves shared
 * memory out (x-ignore-shared, bypass-shared-memory) would leave out the
 * pages not placed yet: refused, until the load completed.
 */
static void test_lazy_save_skipping_shared(void)
{
    g_autofree char *file = vmt_path("lazy-skip.img");
    g_autofree char *out = g_strdup_printf("file:%s",
                                           vmt_path("lazy-skip-2.img"));
    VmtSaveOpts s = { .backend = "memory-backend-memfd,share=on" };
    VmtLoadOpts l = {
        .backend = "memory-backend-memfd,share=on",
        .mode = "lazy",
        .extra = "-global migration.x-mapped-ram-lazy-fill-delay-ms=3000",
    };
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    to = vmt_load_fixed(file, &l, "skip_serial");
    migrate_set_capability(to, "x-ignore-shared", true);
    vmt_migrate_must_fail(to, out, "shared RAM block 'mem0' is still "
                          "loaded lazily");
    migrate_set_capability(to, "x-ignore-shared", false);
    migrate_set_capability(to, "bypass-shared-memory", true);
    vmt_migrate_must_fail(to, out, "shared RAM block 'mem0' is still "
                          "loaded lazily");
    wait_loaded(to);
    vmt_check_continues(to, "skip_serial");
    qtest_quit(to);
    unlink(vmt_path("lazy-skip-2.img"));
    unlink(file);
}

/*
 * Put a postcopy ADVISE command at the end of the mapped-ram stream in
 * @file, before its EOF (and the JSON description that follows it).
 */
static void put_postcopy_advise(const char *file)
{
    size_t len, eof = 0, i;
    g_autofree uint8_t *buf = vmt_read_file(file, &len);
    /* QEMU_VM_COMMAND, be16 MIG_CMD_POSTCOPY_ADVISE, be16 length 16 */
    uint8_t cmd[5 + 16] = { 0x08, 0x00, 0x03, 0x00, 16 };
    int fd;

    /* QEMU_VM_EOF (0), then QEMU_VM_VMDESCRIPTION (6), be32, the JSON */
    for (i = len - 6; i > 0; i--) {
        if (buf[i] == 0x00 && buf[i + 1] == 0x06 &&
            ldl_be_p(buf + i + 2) == len - i - 6) {
            eof = i;
            break;
        }
    }
    if (!eof) {
        eof = len - 1;
    }
    g_assert_cmphex(buf[eof], ==, 0x00);
    stq_be_p(cmd + 5, qemu_real_host_page_size());
    stq_be_p(cmd + 13, qemu_real_host_page_size());
    fd = open(file, O_WRONLY);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, eof), ==, 0);
    g_assert_cmpint(pwrite(fd, cmd, sizeof(cmd), eof), ==, sizeof(cmd));
    g_assert_cmpint(pwrite(fd, buf + eof, len - eof, eof + sizeof(cmd)), ==,
                    len - eof);
    close(fd);
}

/*
 * A mapped-ram stream that carries postcopy commands: with postcopy-ram
 * set, the destination loads the file lazily and its RAM is registered
 * with userfaultfd already; postcopy's advise would discard it under the
 * load.  Refused, and the lazy load set up for it is given up (with
 * exit-on-error off, QEMU goes on and says why).
 */
static void test_lazy_postcopy_commands(void)
{
    static const char *not_completed[] = { "completed", NULL };
    g_autofree char *file = vmt_path("lazy-advise.img");
    g_autofree char *uri = g_strdup_printf("file:%s", file);
    g_autofree char *vm = vmt_vm_args("memory-backend-ram", "advise_serial");
    g_autofree char *ws = vmt_path("lazy-advise.ws");
    g_autofree char *xp = NULL;
    VmtSaveOpts s = { 0 };
    QTestState *to;
    QDict *rsp, *lazy;

    if (!vmt_accel_available()) {
        return;
    }
    vmt_save_fixed(file, &s);
    put_postcopy_advise(file);
    to = qtest_initf("%s -incoming defer", vm);
    migrate_set_capability(to, "mapped-ram", true);
    migrate_set_capability(to, "postcopy-ram", true);
    migrate_incoming_qmp(to, uri, NULL, "{ 'exit-on-error': false }");
    wait_for_migration_status(to, "failed", not_completed);
    lazy = query_lazy(to);
    g_assert_nonnull(lazy);
    g_assert_false(qdict_get_bool(lazy, "completed"));
    g_assert_nonnull(strstr(qdict_get_str(lazy, "error-desc"),
                            "failed before the guest ran"));
    qobject_unref(lazy);
    rsp = qtest_qmp(to, "{ 'execute': 'mapped-ram-save-working-set',"
                    " 'arguments': { 'filename': %s } }", ws);
    g_assert_nonnull(strstr(qdict_get_str(qdict_get_qdict(rsp, "error"),
                                          "desc"), "the lazy load failed"));
    qobject_unref(rsp);
    /* guest RAM is no longer registered: a read does not wait */
    xp = qtest_hmp(to, "xp /1gx 0x%x", 64 << 20);
    g_test_message("%s", xp);
    qtest_quit(to);
    g_assert_false(g_file_test(ws, G_FILE_TEST_EXISTS));
    unlink(file);
}

int main(int argc, char **argv)
{
    int ret;

    if (!vmt_init(&argc, &argv)) {
        return g_test_run();
    }
    qtest_add_func("/vmt/mapped-ram/lazy/clones", test_lazy_clones);
    qtest_add_func("/vmt/mapped-ram/lazy/fault-and-stale-page",
                   test_lazy_fault_and_stale_page);
    qtest_add_func("/vmt/mapped-ram/lazy/truncated", test_lazy_truncated);
    qtest_add_func("/vmt/mapped-ram/lazy/truncated-qemu-thread",
                   test_lazy_truncated_qemu_thread);
    qtest_add_func("/vmt/mapped-ram/lazy/truncated-fill",
                   test_lazy_truncated_fill);
    qtest_add_func("/vmt/mapped-ram/lazy/save-again", test_lazy_save_again);
    qtest_add_func("/vmt/mapped-ram/lazy/save-while-loading",
                   test_lazy_save_while_loading);
    qtest_add_func("/vmt/mapped-ram/lazy/working-set",
                   test_lazy_working_set);
    qtest_add_func("/vmt/mapped-ram/lazy/bypass", test_lazy_bypass);
    qtest_add_func("/vmt/mapped-ram/lazy/memfd", test_lazy_memfd);
    qtest_add_func("/vmt/mapped-ram/lazy/hugetlbfs", test_lazy_hugetlb);
    qtest_add_func("/vmt/mapped-ram/lazy/hugetlbfs-shared",
                   test_lazy_hugetlb_shared);
    qtest_add_func("/vmt/mapped-ram/lazy/shared-memfd",
                   test_lazy_shared_memfd);
    qtest_add_func("/vmt/mapped-ram/lazy/shared-tmpfs",
                   test_lazy_shared_tmpfs);
    qtest_add_func("/vmt/mapped-ram/lazy/refuse-disk-file",
                   test_lazy_refuses_disk_file);
    qtest_add_func("/vmt/mapped-ram/lazy/slow-placer", test_lazy_slow_placer);
    qtest_add_func("/vmt/mapped-ram/lazy/shared-holes",
                   test_lazy_shared_holes);
    qtest_add_func("/vmt/mapped-ram/lazy/upstream-spelling",
                   test_lazy_upstream_spelling);
    qtest_add_func("/vmt/mapped-ram/lazy/vhost-user-plug",
                   test_lazy_vhost_user_plug);
    qtest_add_func("/vmt/mapped-ram/lazy/resized-block",
                   test_lazy_resized_grown);
    qtest_add_func("/vmt/mapped-ram/lazy/resized-block-shrunk",
                   test_lazy_resized_shrunk);
    qtest_add_func("/vmt/mapped-ram/lazy/unplug", test_lazy_unplug);
    qtest_add_func("/vmt/mapped-ram/lazy/save-skipping-shared",
                   test_lazy_save_skipping_shared);
    qtest_add_func("/vmt/mapped-ram/lazy/postcopy-commands",
                   test_lazy_postcopy_commands);
    ret = g_test_run();
    vmt_cleanup();
    return ret;
}
