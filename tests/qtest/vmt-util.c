/*
 * Helpers shared by the VM templating qtests (vmt-*-test.c)
 *
 * The accelerator is taken from VMT_QTEST_ACCEL (kvm or tcg); by default
 * KVM is used when available, else TCG, as in migration-test.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/wait.h>
#include "libqtest.h"
#include "migration/bootfile.h"
#include "migration/framework.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#include "qemu/bswap.h"
#include "qobject/qdict.h"
#include "vmt-util.h"

MigrationTestEnv *vmt_env;
static const char *bootpath;

bool vmt_init(int *argc, char ***argv)
{
    g_test_init(argc, argv, NULL);
    vmt_env = migration_get_env();
    if (!vmt_env->is_x86) {
        return false;
    }
    bootpath = bootfile_create(vmt_env->arch, vmt_env->tmpfs, false);
    start_address = X86_TEST_MEM_START;
    end_address = X86_TEST_MEM_END;
    return true;
}

/* Serial logs and anything a failed test left behind. */
void vmt_cleanup(void)
{
    GDir *dir = g_dir_open(vmt_env->tmpfs, 0, NULL);
    const char *name;

    while (dir && (name = g_dir_read_name(dir))) {
        g_autofree char *path = g_build_filename(vmt_env->tmpfs, name, NULL);

        if (!bootpath || !g_str_equal(path, bootpath)) {
            unlink(path);
        }
    }
    if (dir) {
        g_dir_close(dir);
    }
    migration_env_clean(vmt_env);
}

char *vmt_path(const char *name)
{
    return g_build_filename(vmt_env->tmpfs, name, NULL);
}

static const char *accel_opts(void)
{
    const char *accel = getenv("VMT_QTEST_ACCEL");

    if (accel && g_str_equal(accel, "kvm")) {
        return "-accel kvm";
    }
    if (accel && g_str_equal(accel, "tcg")) {
        return "-accel tcg";
    }
    return "-accel kvm -accel tcg";
}

bool vmt_accel_available(void)
{
    const char *accel = getenv("VMT_QTEST_ACCEL");

    if (accel && g_str_equal(accel, "kvm") && !vmt_env->has_kvm) {
        g_test_skip("VMT_QTEST_ACCEL=kvm but KVM is not available");
        return false;
    }
    return true;
}

/*
 * -M pc: SeaBIOS boots the boot block in 0.5 s under TCG, q35 in 30 s.
 * Clones run at once on the same boot disk: no image locking.
 */
char *vmt_vm_args(const char *backend, const char *serial)
{
    return g_strdup_printf("%s -machine pc,memory-backend=mem0 -m "
                           VMT_MEM_SIZE " -object %s,id=mem0,size="
                           VMT_MEM_SIZE " -nodefaults -display none"
                           " -serial file:%s/%s"
                           " -drive if=none,id=d0,file=%s,format=raw,"
                           "file.locking=off"
                           " -device ide-hd,drive=d0,secs=1,cyls=1,heads=1",
                           accel_opts(), backend, vmt_env->tmpfs, serial,
                           bootpath);
}

void vmt_wait_for_status(QTestState *who, const char *status)
{
    for (;;) {
        QDict *rsp = qtest_qmp_assert_success_ref(who,
                                        "{ 'execute': 'query-status' }");
        bool done = g_str_equal(qdict_get_str(rsp, "status"), status);

        qobject_unref(rsp);
        if (done) {
            return;
        }
        g_usleep(10 * 1000);
    }
}

uint8_t vmt_check_pattern(QTestState *who)
{
    unsigned addr;
    uint8_t first, last, b;
    bool edge = false;
    int bad = 0;

    qtest_memread(who, start_address, &first, 1);
    last = first;
    for (addr = start_address + TEST_MEM_PAGE_SIZE; addr < end_address;
         addr += TEST_MEM_PAGE_SIZE) {
        qtest_memread(who, addr, &b, 1);
        if (b == last) {
            continue;
        }
        if ((uint8_t)(b + 1) == last && !edge) {
            edge = true;
            last = b;
        } else {
            bad++;
        }
    }
    g_assert_cmpint(bad, ==, 0);
    return first;
}

char *vmt_file_sha256(const char *path)
{
    g_autoptr(GChecksum) ck = g_checksum_new(G_CHECKSUM_SHA256);
    g_autofree uint8_t *buf = g_malloc(1 << 20);
    ssize_t n;
    int fd = open(path, O_RDONLY);

    g_assert_cmpint(fd, >=, 0);
    while ((n = read(fd, buf, 1 << 20)) > 0) {
        g_checksum_update(ck, buf, n);
    }
    g_assert_cmpint(n, ==, 0);
    close(fd);
    return g_strdup(g_checksum_get_string(ck));
}

void vmt_qemu_must_fail_qmp(const char *args, const char *qmp,
                            const char *serial, const char *expect)
{
    g_autofree char *serial_path = vmt_path(serial);
    g_autofree char *qmp_path = vmt_path("must_fail.qmp");
    g_autofree char *printed = NULL;
    g_autofree char *cmd = NULL;
    g_autofree char *err = NULL;
    g_autofree char *out = NULL;
    const char *argv[] = { "/bin/sh", "-c", NULL, NULL };
    int status;

    if (qmp) {
        g_assert(g_file_set_contents(qmp_path, qmp, -1, NULL));
        cmd = g_strdup_printf("exec timeout -s KILL 120 %s %s -qmp stdio "
                              "< %s", getenv("QTEST_QEMU_BINARY"), args,
                              qmp_path);
    } else {
        cmd = g_strdup_printf("exec timeout -s KILL 120 %s %s",
                              getenv("QTEST_QEMU_BINARY"), args);
    }
    argv[2] = cmd;
    unlink(serial_path);
    g_assert(g_spawn_sync(NULL, (char **)argv, NULL, 0, NULL, NULL, &out,
                          &err, &status, NULL));
    g_test_message("QEMU stderr: %s", err);
    unlink(qmp_path);
    g_assert_true(WIFEXITED(status));
    g_assert_cmpint(WEXITSTATUS(status), !=, 0);
    g_assert_nonnull(strstr(err, expect));
    if (g_file_get_contents(serial_path, &printed, NULL, NULL)) {
        g_assert_null(strchr(printed, 'B'));
    }
    unlink(serial_path);
}

void vmt_qemu_must_fail(const char *args, const char *serial,
                        const char *expect)
{
    vmt_qemu_must_fail_qmp(args, NULL, serial, expect);
}

void vmt_check_boot_code(QTestState *who)
{
    /* The boot sector's signature: RAM came from the template. */
    g_assert_cmphex(qtest_readw(who, 0x7dfe), ==, 0xaa55);
}

bool vmt_process_maps(pid_t pid, const char *path)
{
    g_autofree char *maps = g_strdup_printf("/proc/%d/maps", (int)pid);
    g_autofree char *text = NULL;

    g_assert(g_file_get_contents(maps, &text, NULL, NULL));
    return strstr(text, path) != NULL;
}

char *vmt_process_vmflags(pid_t pid, const char *path, uint64_t offset,
                          uint64_t length)
{
    g_autofree char *smaps = g_strdup_printf("/proc/%d/smaps", (int)pid);
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    GString *out = g_string_new("");
    uint64_t lo = 0, start, end, off;
    bool in = false;
    int pass, i;

    g_assert(g_file_get_contents(smaps, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    /* Pass 0: where @offset of @path is mapped; pass 1: flags from there. */
    for (pass = 0; pass < 2; pass++) {
        for (i = 0; lines[i]; i++) {
            const char *l = lines[i];

            if (sscanf(l, "%" SCNx64 "-%" SCNx64 " %*s %" SCNx64 " ",
                       &start, &end, &off) == 3) {
                if (pass == 0 && off == offset && strstr(l, path)) {
                    lo = start;
                }
                in = pass == 1 && lo && start >= lo && end <= lo + length;
            } else if (in && g_str_has_prefix(l, "VmFlags:")) {
                g_string_append_printf(out, "%s\n", l + strlen("VmFlags:"));
            }
        }
        g_assert_cmphex(lo, !=, 0);
    }
    return g_string_free(out, false);
}

uint8_t *vmt_read_file(const char *path, size_t *len)
{
    gchar *buf;
    gsize n;

    g_assert(g_file_get_contents(path, &buf, &n, NULL));
    *len = n;
    return (uint8_t *)buf;
}

void vmt_write_file(const char *path, const uint8_t *buf, size_t len)
{
    g_assert(g_file_set_contents(path, (const gchar *)buf, len, NULL));
}

void vmt_find_section(const uint8_t *buf, size_t len, const char *name,
                      VmtSection *s)
{
    size_t n = strlen(name);
    size_t i;

    /* type (FULL), be32 section id, u8 name length, name, instance, ver */
    for (i = 5; i + 1 + n + 8 <= len; i++) {
        if (buf[i] == n && !memcmp(buf + i + 1, name, n) &&
            buf[i - 5] == 0x04) {
            s->header = i - 5;
            s->data = i + 1 + n + 8;
            return;
        }
    }
    g_assert_not_reached();
}

void vmt_set_mapped_ram_caps(QTestState *who, bool multifd,
                             bool ignore_shared)
{
    migrate_set_capability(who, "mapped-ram", true);
    if (multifd) {
        migrate_set_capability(who, "multifd", true);
        migrate_set_parameter_int(who, "multifd-channels", 4);
    }
    if (ignore_shared) {
        migrate_set_capability(who, "x-ignore-shared", true);
    }
}

/* Save the running boot-block guest to a mapped-ram file. */
void vmt_save_fixed(const char *file, const VmtSaveOpts *o)
{
    g_autofree char *vm = vmt_vm_args(o->backend ? o->backend :
                                      "memory-backend-ram", "src_serial");
    g_autofree char *uri = g_strdup_printf("file:%s", file);
    QTestState *from = qtest_initf("%s %s", vm, o->extra ? o->extra : "");

    wait_for_serial("src_serial");
    vmt_set_mapped_ram_caps(from, o->multifd, o->ignore_shared);
    if (o->bypass) {
        migrate_set_capability(from, "bypass-shared-memory", true);
    }
    if (o->live) {
        /* A slow start: several passes while the guest dirties pages. */
        migrate_set_parameter_int(from, "max-bandwidth", 30 * 1000 * 1000);
        migrate_set_parameter_int(from, "downtime-limit", 1);
    } else {
        migrate_ensure_converge(from);
    }
    qtest_qmp_assert_success(from, "{ 'execute': 'migrate', 'arguments':"
                             " { 'uri': %s } }", uri);
    if (o->live) {
        g_usleep(3 * G_USEC_PER_SEC);
        migrate_ensure_converge(from);
    }
    wait_for_migration_complete(from);
    vmt_check_pattern(from);
    qtest_quit(from);
}

/* A VM that loads @file; returns once it runs. */
QTestState *vmt_load_fixed(const char *file, const VmtLoadOpts *o,
                           const char *serial)
{
    g_autofree char *vm = vmt_vm_args(o->backend ? o->backend :
                                      "memory-backend-ram", serial);
    g_autofree char *args = g_strdup_printf("%s %s -incoming defer", vm,
                                            o->extra ? o->extra : "");
    g_autofree char *uri = g_strdup_printf("file:%s", file);
    QTestState *to = qtest_init(args);

    vmt_set_mapped_ram_caps(to, o->multifd, o->ignore_shared);
    if (o->mode) {
        migrate_set_parameter_str(to, "mapped-ram-load", o->mode);
    }
    migrate_incoming_qmp(to, uri, NULL, "{}");
    wait_for_migration_complete(to);
    vmt_wait_for_status(to, "running");
    return to;
}

/* The guest went on from the saved memory; leaves it stopped. */
void vmt_check_continues(QTestState *to, const char *serial)
{
    wait_for_serial(serial);
    qtest_qmp_assert_success(to, "{ 'execute': 'stop' }");
    vmt_check_boot_code(to);
    vmt_check_pattern(to);
    g_assert_cmpint(qtest_readq(to, VMT_ZERO_PAGE_ADDR), ==, 0);
}

/*
 * Find the mapped-ram header of RAM block @name in the ram section's block
 * list: the block's id and length, @skip bytes (the GPA with
 * x-ignore-shared), then (version, page size, bitmap offset, pages
 * offset), big endian.  Returns the header's offset in the file.
 */
off_t vmt_find_block_header_from(const char *file, off_t from,
                                 const char *name, uint64_t size, size_t skip,
                                 uint64_t *bitmap_offset,
                                 uint64_t *pages_offset)
{
    size_t n = strlen(name);
    g_autofree uint8_t *buf = g_malloc(16 << 20);
    int fd = open(file, O_RDONLY);
    ssize_t len = pread(fd, buf, 16 << 20, from);
    ssize_t i;

    close(fd);
    g_assert_cmpint(len, >, 0);
    for (i = 0; i + 1 + n + 8 + skip + 28 <= len; i++) {
        uint8_t *p = buf + i;

        if (p[0] != n || memcmp(p + 1, name, n) ||
            ldq_be_p(p + 1 + n) != size) {
            continue;
        }
        p += 1 + n + 8 + skip;
        *bitmap_offset = ldq_be_p(p + 12);
        *pages_offset = ldq_be_p(p + 20);
        return from + (p - buf);
    }
    g_assert_not_reached();
}

off_t vmt_find_block_header(const char *file, const char *name,
                            uint64_t size, size_t skip,
                            uint64_t *bitmap_offset, uint64_t *pages_offset)
{
    return vmt_find_block_header_from(file, 0, name, size, skip,
                                      bitmap_offset, pages_offset);
}

off_t vmt_find_header(const char *file, uint64_t *bitmap_offset,
                      uint64_t *pages_offset)
{
    return vmt_find_block_header(file, "mem0", VMT_MEM_BYTES, 0,
                                 bitmap_offset, pages_offset);
}

void vmt_file_put_be64(const char *file, off_t off, uint64_t v)
{
    int fd = open(file, O_RDWR);

    v = cpu_to_be64(v);
    g_assert_cmpint(pwrite(fd, &v, 8, off), ==, 8);
    close(fd);
}

void vmt_put_stale_page(const char *file, uint64_t bitmap_offset,
                        uint64_t pages_offset, uint64_t addr)
{
    uint64_t page = addr / TEST_MEM_PAGE_SIZE;
    uint64_t junk = 0x5a5a5a5a5a5a5a5aULL;
    uint8_t byte;
    int fd = open(file, O_RDWR);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(pread(fd, &byte, 1, bitmap_offset + page / 8), ==, 1);
    g_assert_cmpint(byte & (1 << (page % 8)), ==, 0);
    g_assert_cmpint(pwrite(fd, &junk, sizeof(junk), pages_offset + addr), ==,
                    sizeof(junk));
    close(fd);
}

void vmt_load_must_fail(const char *file, const char *backend,
                        const char *mode, const char *serial,
                        const char *expect)
{
    g_autofree char *vm = vmt_vm_args(backend, serial);
    g_autofree char *args = g_strdup_printf(
        "%s -global migration.mapped-ram=on"
        " -global migration.mapped-ram-load=%s -incoming file:%s",
        vm, mode, file);

    vmt_qemu_must_fail(args, serial, expect);
}

void vmt_migrate_must_fail(QTestState *who, const char *uri,
                           const char *expect)
{
    QDict *rsp = qtest_qmp(who, "{ 'execute': 'migrate', 'arguments':"
                           " { 'uri': %s } }", uri);
    const char *desc = qdict_get_str(qdict_get_qdict(rsp, "error"), "desc");

    g_test_message("migrate to %s: %s", uri, desc);
    g_assert_nonnull(strstr(desc, expect));
    qobject_unref(rsp);
}

void vmt_save_and_load_again(QTestState *who, const char *file,
                             const VmtLoadOpts *l, const char *serial)
{
    g_autofree char *uri = g_strdup_printf("file:%s", file);
    QTestState *to;

    migrate_ensure_converge(who);
    qtest_qmp_assert_success(who, "{ 'execute': 'migrate', 'arguments':"
                             " { 'uri': %s } }", uri);
    wait_for_migration_complete(who);
    qtest_quit(who);

    to = vmt_load_fixed(file, l, serial);
    vmt_check_continues(to, serial);
    qtest_quit(to);
}
