/*
 * QTest cases for VM templating: bypass-shared-memory templates and clones
 *
 * A template VM (the boot-block guest of migration-test, its RAM in a
 * shared memory file) is stopped and saved with bypass-shared-memory; its
 * clones map the file privately and start with a plain -incoming.
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
#include "qobject/qdict.h"

#define MEM_SIZE        "150M"
#define MEM_BYTES       (150 * 1024 * 1024)
#define NR_CLONES       3

/* Defined by migration/framework.c, which tells the guest's memory range. */
extern unsigned start_address;
extern unsigned end_address;

static MigrationTestEnv *env;
static const char *bootpath;

/* A saved template: its memory file and its device state. */
typedef struct Template {
    char *mem;
    char *state;
    char *mem_sha256;
    uint8_t first_byte;     /* pattern byte at start_address when saved */
} Template;

static Template tmpl_sampled;
static Template tmpl_full;

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

static bool accel_available(void)
{
    const char *accel = getenv("VMT_QTEST_ACCEL");

    if (accel && g_str_equal(accel, "kvm") && !env->has_kvm) {
        g_test_skip("VMT_QTEST_ACCEL=kvm but KVM is not available");
        return false;
    }
    return true;
}

/*
 * Guest and devices; must be the same for the template and its clones.
 * -M pc: SeaBIOS boots the boot block in 0.5 s under TCG, q35 in 30 s.
 * Clones run at once on the same boot disk: no image locking.
 */
static char *vm_args(const char *mem_opts, const char *serial)
{
    return g_strdup_printf("%s -machine pc,memory-backend=mem0 -m " MEM_SIZE
                           " -object memory-backend-file,id=mem0,size="
                           MEM_SIZE ",%s -nodefaults -display none"
                           " -serial file:%s/%s"
                           " -drive if=none,id=d0,file=%s,format=raw,file.locking=off"
                           " -device ide-hd,drive=d0,secs=1,cyls=1,heads=1",
                           accel_opts(), mem_opts, env->tmpfs, serial,
                           bootpath);
}

static char *file_sha256(const char *path)
{
    g_autofree char *data = NULL;
    gsize len;

    g_assert(g_file_get_contents(path, &data, &len, NULL));
    return g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)data, len);
}

static void wait_for_status(QTestState *who, const char *status)
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

/*
 * The boot-block guest increments one byte per page from start_address
 * to end_address, over and over.  With the guest stopped, all bytes are
 * equal but for one step down where the incrementer is.
 */
static void check_pattern(QTestState *who, uint8_t *first)
{
    unsigned addr;
    uint8_t last, b;
    bool edge = false;
    int bad = 0;

    qtest_memread(who, start_address, first, 1);
    last = *first;
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
}

static void make_template(Template *t, const char *name, bool full)
{
    g_autofree char *serial = g_strdup_printf("%s_serial", name);
    g_autofree char *mem_opts = NULL;
    g_autofree char *args = NULL;
    g_autofree char *uri = NULL;
    QTestState *from;

    if (t->state) {
        return;
    }
    t->mem = g_strdup_printf("%s/%s.ram", env->tmpfs, name);
    t->state = g_strdup_printf("%s/%s.state", env->tmpfs, name);
    mem_opts = g_strdup_printf("mem-path=%s,share=on", t->mem);
    args = vm_args(mem_opts, serial);
    from = qtest_init(args);

    wait_for_serial(serial);

    /*
     * Not stopped first: migration stops the VM once it saves the device
     * state and records it as running, so clones start running.
     */
    migrate_set_capability(from, "bypass-shared-memory", true);
    if (full) {
        qtest_qmp_assert_success(from,
            "{ 'execute': 'migrate-set-parameters', 'arguments':"
            "  { 'bypass-shared-memory-check': 'full' } }");
    }
    uri = g_strdup_printf("exec:cat > %s", t->state);
    qtest_qmp_assert_success(from, "{ 'execute': 'migrate', 'arguments':"
                             " { 'uri': %s } }", uri);
    wait_for_migration_complete(from);
    check_pattern(from, &t->first_byte);

    /* Device state only: the 150 MiB of guest RAM were not sent. */
    g_assert_cmpint(read_ram_property_int(from, "transferred"), <,
                    4 * 1024 * 1024);
    qtest_quit(from);

    t->mem_sha256 = file_sha256(t->mem);
}

static void template_free(Template *t)
{
    if (t->mem) {
        unlink(t->mem);
        unlink(t->state);
    }
    g_free(t->mem);
    g_free(t->state);
    g_free(t->mem_sha256);
    memset(t, 0, sizeof(*t));
}

/* A clone started with nothing but -incoming "exec:cat STATE". */
static QTestState *clone_start(const Template *t, const char *mem_path,
                               const char *mem_opts, const char *serial)
{
    g_autofree char *mem = g_strdup_printf("mem-path=%s,%s", mem_path,
                                           mem_opts);
    g_autofree char *vm = vm_args(mem, serial);
    g_autofree char *args = g_strdup_printf("%s -incoming 'exec:cat %s'",
                                            vm, t->state);

    return qtest_init(args);
}

/* The clone runs on from the template's memory: the pattern continues. */
static void clone_check(QTestState *to, const Template *t, const char *serial)
{
    uint8_t first;

    wait_for_status(to, "running");
    wait_for_serial(serial);
    qtest_qmp_assert_success(to, "{ 'execute': 'stop' }");
    check_pattern(to, &first);
    /* It went on from where the template stopped, not from zeroed RAM. */
    g_assert_cmpint(first, !=, 0);
}

static void test_clones(void)
{
    QTestState *clones[NR_CLONES];
    g_autofree char *sha = NULL;
    int i;

    if (!accel_available()) {
        return;
    }
    make_template(&tmpl_sampled, "tmpl", false);

    /* Started all at once, each independent. */
    for (i = 0; i < NR_CLONES; i++) {
        g_autofree char *serial = g_strdup_printf("clone%d_serial", i);

        clones[i] = clone_start(&tmpl_sampled, tmpl_sampled.mem, "share=off",
                                serial);
    }
    for (i = 0; i < NR_CLONES; i++) {
        g_autofree char *serial = g_strdup_printf("clone%d_serial", i);

        clone_check(clones[i], &tmpl_sampled, serial);
    }
    /* Clones wrote (the guest ran); each wrote its own private copy. */
    for (i = 0; i < NR_CLONES; i++) {
        qtest_writeb(clones[i], start_address + 8, 0xa0 + i);
    }
    for (i = 0; i < NR_CLONES; i++) {
        g_assert_cmpint(qtest_readb(clones[i], start_address + 8), ==,
                        0xa0 + i);
        qtest_quit(clones[i]);
    }

    /* The template file did not change. */
    sha = file_sha256(tmpl_sampled.mem);
    g_assert_cmpstr(sha, ==, tmpl_sampled.mem_sha256);

    /* And one more, started after the others ended. */
    clones[0] = clone_start(&tmpl_sampled, tmpl_sampled.mem, "share=off",
                            "clone_late_serial");
    clone_check(clones[0], &tmpl_sampled, "clone_late_serial");
    qtest_quit(clones[0]);
}

static void test_readonly_clone(void)
{
    g_autofree char *sha = NULL;
    QTestState *to;

    if (!accel_available()) {
        return;
    }
    make_template(&tmpl_sampled, "tmpl", false);
    to = clone_start(&tmpl_sampled, tmpl_sampled.mem, "readonly=on,rom=off",
                     "ro_serial");
    clone_check(to, &tmpl_sampled, "ro_serial");
    qtest_quit(to);
    sha = file_sha256(tmpl_sampled.mem);
    g_assert_cmpstr(sha, ==, tmpl_sampled.mem_sha256);
}

/*
 * Run a clone that must fail: the process exits non-zero, its error
 * names the problem, and the guest never ran.
 */
static void clone_must_fail(const Template *t, const char *mem_path,
                            const char *state, const char *expect)
{
    g_autofree char *mem = g_strdup_printf("mem-path=%s,share=off",
                                           mem_path);
    g_autofree char *vm = vm_args(mem, "fail_serial");
    g_autofree char *cmd = g_strdup_printf(
        "exec timeout -s KILL 120 %s %s -incoming 'exec:cat %s'",
        getenv("QTEST_QEMU_BINARY"), vm, state ? state : t->state);
    g_autofree char *err = NULL;
    g_autofree char *out = NULL;
    g_autofree char *serial = g_strdup_printf("%s/fail_serial", env->tmpfs);
    g_autofree char *printed = NULL;
    const char *argv[] = { "/bin/sh", "-c", cmd, NULL };
    int status;

    unlink(serial);
    g_assert(g_spawn_sync(NULL, (char **)argv, NULL, 0, NULL, NULL, &out,
                          &err, &status, NULL));
    g_test_message("clone stderr: %s", err);
    g_assert_true(WIFEXITED(status));
    g_assert_cmpint(WEXITSTATUS(status), !=, 0);
    g_assert_nonnull(strstr(err, expect));
    /* The boot block prints 'B' after each pass: the guest never ran. */
    if (g_file_get_contents(serial, &printed, NULL, NULL)) {
        g_assert_null(strchr(printed, 'B'));
    }
    unlink(serial);
}

static char *copy_file(const char *src, const char *name, bool keep_mtime)
{
    g_autofree char *data = NULL;
    char *dst = g_strdup_printf("%s/%s", env->tmpfs, name);
    struct stat st;
    gsize len;

    g_assert(g_file_get_contents(src, &data, &len, NULL));
    g_assert(g_file_set_contents(dst, data, len, NULL));
    if (keep_mtime) {
        struct timespec ts[2];

        g_assert_cmpint(stat(src, &st), ==, 0);
        ts[0] = st.st_atim;
        ts[1] = st.st_mtim;
        g_assert_cmpint(utimensat(AT_FDCWD, dst, ts, 0), ==, 0);
    }
    return dst;
}

static void flip_byte(const char *path, off_t off, bool keep_mtime)
{
    struct timespec ts[2];
    struct stat st;
    uint8_t b;
    int fd = open(path, O_RDWR);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(fstat(fd, &st), ==, 0);
    g_assert_cmpint(pread(fd, &b, 1, off), ==, 1);
    b ^= 0x01;
    g_assert_cmpint(pwrite(fd, &b, 1, off), ==, 1);
    if (keep_mtime) {
        ts[0] = st.st_atim;
        ts[1] = st.st_mtim;
        g_assert_cmpint(futimens(fd, ts), ==, 0);
    }
    close(fd);
}

static void test_bad_size(void)
{
    g_autofree char *copy = NULL;

    make_template(&tmpl_sampled, "tmpl", false);
    copy = copy_file(tmpl_sampled.mem, "bigger.ram", true);
    g_assert_cmpint(truncate(copy, MEM_BYTES + 2 * 1024 * 1024), ==, 0);
    clone_must_fail(&tmpl_sampled, copy, NULL,
                    "the template's was 157286400 bytes: wrong or modified "
                    "template file");
    unlink(copy);
}

static void test_bad_modified(void)
{
    g_autofree char *copy = NULL;

    make_template(&tmpl_sampled, "tmpl", false);
    /* One byte flipped through write(2): the modification time tells. */
    copy = copy_file(tmpl_sampled.mem, "flipped.ram", true);
    flip_byte(copy, 3 * 1024 * 1024 + 17, false);
    clone_must_fail(&tmpl_sampled, copy, NULL,
                    "was modified or re-created after the template was saved");
    unlink(copy);
}

static void test_bad_other_template(void)
{
    g_autofree char *copy = NULL;

    /*
     * Another template's file, even with the right size and modification
     * time: the sampled fingerprint differs (the first chunk is always
     * sampled; change it).
     */
    make_template(&tmpl_sampled, "tmpl", false);
    copy = copy_file(tmpl_sampled.mem, "other.ram", true);
    flip_byte(copy, 100, true);
    clone_must_fail(&tmpl_sampled, copy, NULL,
                    "differs from the template (sampled fingerprint");
    unlink(copy);
}

static void test_bad_full_check(void)
{
    g_autofree char *copy = NULL;
    QTestState *to;

    if (!accel_available()) {
        return;
    }
    /*
     * A byte flipped and the modification time put back: only the full
     * check, chosen when the template is saved, sees it.
     */
    make_template(&tmpl_full, "tmplfull", true);
    copy = copy_file(tmpl_full.mem, "fullflip.ram", true);
    flip_byte(copy, 50 * 1024 * 1024 + 4096 + 3, true);
    clone_must_fail(&tmpl_full, copy, NULL,
                    "differs from the template (full check)");
    unlink(copy);

    /* The unmodified file passes the full check. */
    to = clone_start(&tmpl_full, tmpl_full.mem, "share=off", "full_serial");
    clone_check(to, &tmpl_full, "full_serial");
    qtest_quit(to);
}

static void test_bad_missing(void)
{
    g_autofree char *missing = g_strdup_printf("%s/missing.ram", env->tmpfs);

    /* memory-backend-file creates a missing file: it is empty, not ours. */
    make_template(&tmpl_sampled, "tmpl", false);
    unlink(missing);
    clone_must_fail(&tmpl_sampled, missing, NULL,
                    "was modified or re-created after the template was saved");
    unlink(missing);
}

static void test_bad_truncated_state(void)
{
    g_autofree char *state = g_strdup_printf("%s/truncated.state",
                                             env->tmpfs);
    g_autofree char *data = NULL;
    gsize len;

    make_template(&tmpl_sampled, "tmpl", false);
    g_assert(g_file_get_contents(tmpl_sampled.state, &data, &len, NULL));
    g_assert(g_file_set_contents(state, data, len / 2, NULL));
    clone_must_fail(&tmpl_sampled, tmpl_sampled.mem, state,
                    "load of migration failed");
    unlink(state);
}

static void test_caps(void)
{
    QTestState *vm = qtest_init("-machine none");
    QDict *rsp;

    migrate_set_capability(vm, "bypass-shared-memory", true);
    rsp = qtest_qmp(vm, "{ 'execute': 'migrate-set-capabilities',"
                    "  'arguments': { 'capabilities': ["
                    "    { 'capability': 'x-ignore-shared', 'state': true }"
                    "] } }");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(rsp, "error"), "desc"), ==,
                    "bypass-shared-memory is not compatible with "
                    "x-ignore-shared");
    qobject_unref(rsp);

    rsp = qtest_qmp(vm, "{ 'execute': 'migrate-set-capabilities',"
                    "  'arguments': { 'capabilities': ["
                    "    { 'capability': 'postcopy-ram', 'state': true }"
                    "] } }");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(rsp, "error"), "desc"), ==,
                    "Postcopy is not compatible with bypass-shared-memory");
    qobject_unref(rsp);

    rsp = qtest_qmp_assert_success_ref(vm,
        "{ 'execute': 'query-migrate-parameters' }");
    g_assert_cmpstr(qdict_get_str(rsp, "bypass-shared-memory-check"), ==,
                    "sampled");
    qobject_unref(rsp);
    qtest_quit(vm);
}

/* Upstream's template flow keeps working: x-ignore-shared on both sides. */
static void test_ignore_shared_legacy(void)
{
    g_autofree char *mem = g_strdup_printf("%s/legacy.ram", env->tmpfs);
    g_autofree char *state = g_strdup_printf("%s/legacy.state", env->tmpfs);
    g_autofree char *src_mem = g_strdup_printf("mem-path=%s,share=on", mem);
    g_autofree char *dst_mem = g_strdup_printf("mem-path=%s,share=off", mem);
    g_autofree char *src_args = vm_args(src_mem, "legacy_src_serial");
    g_autofree char *dst_vm = vm_args(dst_mem, "legacy_dst_serial");
    g_autofree char *dst_args = g_strdup_printf("%s -incoming defer", dst_vm);
    g_autofree char *uri = g_strdup_printf("exec:cat > %s", state);
    g_autofree char *in_uri = g_strdup_printf("exec:cat %s", state);
    QTestState *from, *to;
    uint8_t first;

    if (!accel_available()) {
        return;
    }
    from = qtest_init(src_args);
    wait_for_serial("legacy_src_serial");
    qtest_qmp_assert_success(from, "{ 'execute': 'stop' }");
    migrate_set_capability(from, "x-ignore-shared", true);
    qtest_qmp_assert_success(from, "{ 'execute': 'migrate', 'arguments':"
                             " { 'uri': %s } }", uri);
    wait_for_migration_complete(from);
    g_assert_cmpint(read_ram_property_int(from, "transferred"), <,
                    4 * 1024 * 1024);
    qtest_quit(from);

    to = qtest_init(dst_args);
    migrate_set_capability(to, "x-ignore-shared", true);
    migrate_incoming_qmp(to, in_uri, NULL, "{}");
    wait_for_migration_complete(to);
    qtest_qmp_assert_success(to, "{ 'execute': 'cont' }");
    wait_for_serial("legacy_dst_serial");
    qtest_qmp_assert_success(to, "{ 'execute': 'stop' }");
    check_pattern(to, &first);
    g_assert_cmpint(first, !=, 0);
    qtest_quit(to);
    unlink(mem);
    unlink(state);
}

/* Serial logs and anything a failed test left behind. */
static void remove_tmp_files(void)
{
    GDir *dir = g_dir_open(env->tmpfs, 0, NULL);
    const char *name;

    while (dir && (name = g_dir_read_name(dir))) {
        g_autofree char *path = g_build_filename(env->tmpfs, name, NULL);

        if (!g_str_equal(path, bootpath)) {
            unlink(path);
        }
    }
    if (dir) {
        g_dir_close(dir);
    }
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    env = migration_get_env();
    if (!env->is_x86) {
        return g_test_run();
    }
    bootpath = bootfile_create(env->arch, env->tmpfs, false);
    start_address = X86_TEST_MEM_START;
    end_address = X86_TEST_MEM_END;

    qtest_add_func("/vmt/bypass/caps", test_caps);
    qtest_add_func("/vmt/bypass/clones", test_clones);
    qtest_add_func("/vmt/bypass/readonly", test_readonly_clone);
    qtest_add_func("/vmt/bypass/bad/size", test_bad_size);
    qtest_add_func("/vmt/bypass/bad/modified", test_bad_modified);
    qtest_add_func("/vmt/bypass/bad/other-template", test_bad_other_template);
    qtest_add_func("/vmt/bypass/bad/missing", test_bad_missing);
    qtest_add_func("/vmt/bypass/bad/truncated-state",
                   test_bad_truncated_state);
    qtest_add_func("/vmt/bypass/full-check", test_bad_full_check);
    qtest_add_func("/vmt/ignore-shared/legacy", test_ignore_shared_legacy);

    ret = g_test_run();

    template_free(&tmpl_sampled);
    template_free(&tmpl_full);
    remove_tmp_files();
    migration_env_clean(env);
    return ret;
}
