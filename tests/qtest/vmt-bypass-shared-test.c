/*
 * QTest cases for VM templating: bypass-shared-memory templates and clones
 *
 * A template VM (the boot-block guest of migration-test, its RAM in a
 * shared memory file) is saved with bypass-shared-memory; its clones map
 * the file privately and start with a plain -incoming.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/wait.h>
#include "qemu/bswap.h"
#include "libqtest.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#include "qobject/qdict.h"
#include "vmt-util.h"

#define NR_CLONES       3

/* A saved template: its memory file(s) and its device state. */
typedef struct Template {
    char *mem;
    char *dimm;                 /* a second bypassed block, or NULL */
    char *state;
    char *mem_sha256;
} Template;

static Template tmpl_sampled;
static Template tmpl_full;
static Template tmpl_two;

/* A pc-dimm with its own memory file: a second bypassed RAM block. */
static char *dimm_args(const char *path, const char *share)
{
    if (!path) {
        return g_strdup("");
    }
    return g_strdup_printf(" -m slots=1,maxmem=1G -object memory-backend-file,"
                           "id=mem1,size=16M,mem-path=%s,%s"
                           " -device pc-dimm,memdev=mem1", path, share);
}

static char *file_backend(const char *path, const char *opts)
{
    return g_strdup_printf("memory-backend-file,mem-path=%s,%s", path, opts);
}

static void make_template_dimm(Template *t, const char *name, bool full,
                               bool dimm)
{
    g_autofree char *serial = g_strdup_printf("%s_serial", name);
    g_autofree char *mem_name = g_strdup_printf("%s.ram", name);
    g_autofree char *dimm_name = g_strdup_printf("%s-dimm.ram", name);
    g_autofree char *state_name = g_strdup_printf("%s.state", name);
    g_autofree char *backend = NULL;
    g_autofree char *vm = NULL;
    g_autofree char *extra = NULL;
    g_autofree char *args = NULL;
    g_autofree char *uri = NULL;
    QTestState *from;

    if (t->state) {
        return;
    }
    t->mem = vmt_path(mem_name);
    t->dimm = dimm ? vmt_path(dimm_name) : NULL;
    t->state = vmt_path(state_name);
    backend = file_backend(t->mem, "share=on");
    vm = vmt_vm_args(backend, serial);
    extra = dimm_args(t->dimm, "share=on");
    args = g_strconcat(vm, extra, NULL);
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
    vmt_check_pattern(from);

    /* Device state only: the 150 MiB of guest RAM were not sent. */
    g_assert_cmpint(read_ram_property_int(from, "transferred"), <,
                    4 * 1024 * 1024);
    qtest_quit(from);

    t->mem_sha256 = vmt_file_sha256(t->mem);
}

static void make_template(Template *t, const char *name, bool full)
{
    make_template_dimm(t, name, full, false);
}

static void template_free(Template *t)
{
    if (t->mem) {
        unlink(t->mem);
        unlink(t->state);
    }
    if (t->dimm) {
        unlink(t->dimm);
    }
    g_free(t->mem);
    g_free(t->dimm);
    g_free(t->state);
    g_free(t->mem_sha256);
    memset(t, 0, sizeof(*t));
}

/* The arguments of a clone started with only -incoming "exec:cat STATE". */
static char *clone_args(const Template *t, const char *mem_path,
                        const char *mem_opts, const char *state,
                        const char *serial)
{
    g_autofree char *backend = file_backend(mem_path, mem_opts);
    g_autofree char *vm = vmt_vm_args(backend, serial);
    g_autofree char *extra = dimm_args(t->dimm, mem_opts);

    return g_strdup_printf("%s%s -incoming 'exec:cat %s'", vm, extra,
                           state ? state : t->state);
}

static QTestState *clone_start(const Template *t, const char *mem_path,
                               const char *mem_opts, const char *serial)
{
    g_autofree char *args = clone_args(t, mem_path, mem_opts, NULL, serial);

    return qtest_init(args);
}

/* The clone runs on from the template's memory: the pattern continues. */
static void clone_check(QTestState *to, const char *serial)
{
    vmt_wait_for_status(to, "running");
    wait_for_serial(serial);
    qtest_qmp_assert_success(to, "{ 'execute': 'stop' }");
    /* It went on from where the template stopped, not from zeroed RAM. */
    vmt_check_boot_code(to);
    vmt_check_pattern(to);
}

static void test_clones(void)
{
    QTestState *clones[NR_CLONES];
    g_autofree char *sha = NULL;
    int i;

    if (!vmt_accel_available()) {
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

        clone_check(clones[i], serial);
    }
    /* Each clone writes its own private copy. */
    for (i = 0; i < NR_CLONES; i++) {
        qtest_writeb(clones[i], start_address + 8, 0xa0 + i);
    }
    for (i = 0; i < NR_CLONES; i++) {
        g_assert_cmpint(qtest_readb(clones[i], start_address + 8), ==,
                        0xa0 + i);
        qtest_quit(clones[i]);
    }

    /* The template file did not change. */
    sha = vmt_file_sha256(tmpl_sampled.mem);
    g_assert_cmpstr(sha, ==, tmpl_sampled.mem_sha256);

    /* And one more, started after the others ended. */
    clones[0] = clone_start(&tmpl_sampled, tmpl_sampled.mem, "share=off",
                            "clone_late_serial");
    clone_check(clones[0], "clone_late_serial");
    qtest_quit(clones[0]);
}

static void test_readonly_clone(void)
{
    g_autofree char *sha = NULL;
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    make_template(&tmpl_sampled, "tmpl", false);
    to = clone_start(&tmpl_sampled, tmpl_sampled.mem, "readonly=on,rom=off",
                     "ro_serial");
    clone_check(to, "ro_serial");
    qtest_quit(to);
    sha = vmt_file_sha256(tmpl_sampled.mem);
    g_assert_cmpstr(sha, ==, tmpl_sampled.mem_sha256);
}

static char *copy_file(const char *src, const char *name, bool keep_mtime);

/*
 * share=on on the same file: a local migration or live update (seed use
 * case "qemu-local-migration"), on a copy of the template since the
 * destination writes to it.
 */
static void test_shared_destination(void)
{
    g_autofree char *copy = NULL;
    g_autofree char *sha = NULL;
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    make_template(&tmpl_sampled, "tmpl", false);
    copy = copy_file(tmpl_sampled.mem, "local-migration.ram", true);
    to = clone_start(&tmpl_sampled, copy, "share=on", "shared_dst_serial");
    clone_check(to, "shared_dst_serial");
    qtest_writeb(to, start_address + 16, 0x5c);
    qtest_quit(to);

    /* Its writes went to the file, as with any share=on memory. */
    sha = vmt_file_sha256(copy);
    g_assert_cmpstr(sha, !=, tmpl_sampled.mem_sha256);
    unlink(copy);
}

/* A clone that must fail: non-zero exit, the error, the guest never ran. */
static void clone_must_fail(const Template *t, const char *mem_path,
                            const char *state, const char *expect)
{
    g_autofree char *args = clone_args(t, mem_path, "share=off", state,
                                       "fail_serial");

    vmt_qemu_must_fail(args, "fail_serial", expect);
}

static char *copy_file(const char *src, const char *name, bool keep_mtime)
{
    g_autofree char *data = NULL;
    char *dst = vmt_path(name);
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
    g_assert_cmpint(truncate(copy, VMT_MEM_BYTES + 2 * 1024 * 1024), ==, 0);
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
                    "was modified or re-created after the template was "
                    "saved");
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

static void test_full_check(void)
{
    g_autofree char *copy = NULL;
    QTestState *to;

    if (!vmt_accel_available()) {
        return;
    }
    /*
     * A byte flipped and the modification time put back: only the full
     * check, chosen when the template is saved, sees it.
     */
    make_template(&tmpl_full, "tmplfull", true);
    copy = copy_file(tmpl_full.mem, "fullflip.ram", true);
    flip_byte(copy, 50 * 1024 * 1024 + 4096 + 3, true);
    /*
     * The sampled check runs first and samples this chunk with a chance
     * of 256 in 38400 (the seed is random per save): either refusal is
     * right; usually it is the full check's.
     */
    clone_must_fail(&tmpl_full, copy, NULL, "differs from the template (");
    unlink(copy);

    /* The unmodified file passes the full check. */
    to = clone_start(&tmpl_full, tmpl_full.mem, "share=off", "full_serial");
    clone_check(to, "full_serial");
    qtest_quit(to);
}

static void test_bad_missing(void)
{
    g_autofree char *missing = vmt_path("missing.ram");

    /* memory-backend-file creates a missing file: it is empty, not ours. */
    make_template(&tmpl_sampled, "tmpl", false);
    unlink(missing);
    clone_must_fail(&tmpl_sampled, missing, NULL,
                    "was modified or re-created after the template was "
                    "saved");
    unlink(missing);
}

static void test_bad_truncated_state(void)
{
    g_autofree char *state = vmt_path("truncated.state");
    g_autofree char *data = NULL;
    gsize len;

    make_template(&tmpl_sampled, "tmpl", false);
    g_assert(g_file_get_contents(tmpl_sampled.state, &data, &len, NULL));
    g_assert(g_file_set_contents(state, data, len / 2, NULL));
    clone_must_fail(&tmpl_sampled, tmpl_sampled.mem, state,
                    "load of migration failed");
    unlink(state);
}

/*
 * Crafted streams.  Layout of the two sections (see
 * docs/devel/migration/bypass-shared-memory.rst): the list is a be32
 * count and 256-byte names; the identity section a be32 count and records
 * of ID_REC_SIZE bytes.
 */
#define NAME_LEN            256
#define ID_REC_SIZE         381
#define ID_OFF_CHECK        304
#define ID_OFF_SAMPLES      313
#define LIST_SECTION        "bypass-shared-memory"
#define ID_SECTION          "bypass-shared-memory/identity"
#define SECTION_FOOTER_LEN  5

typedef struct Stream {
    uint8_t *buf;
    size_t len;
    VmtSection list;
    VmtSection ids;
} Stream;

static void stream_read(Stream *st, const Template *t)
{
    st->buf = vmt_read_file(t->state, &st->len);
    vmt_find_section(st->buf, st->len, LIST_SECTION, &st->list);
    vmt_find_section(st->buf, st->len, ID_SECTION, &st->ids);
}

/* Replace @cut bytes at @off with @n bytes of @data. */
static void stream_splice(Stream *st, size_t off, size_t cut,
                          const uint8_t *data, size_t n)
{
    uint8_t *buf = g_malloc(st->len - cut + n);

    memcpy(buf, st->buf, off);
    if (n) {
        memcpy(buf + off, data, n);
    }
    memcpy(buf + off + n, st->buf + off + cut, st->len - off - cut);
    g_free(st->buf);
    st->buf = buf;
    st->len = st->len - cut + n;
}

/* Write the crafted stream; a clone on it must fail with @expect. */
static void stream_must_fail(Stream *st, const Template *t, const char *name,
                             const char *expect)
{
    g_autofree char *path = vmt_path(name);

    vmt_write_file(path, st->buf, st->len);
    clone_must_fail(t, t->mem, path, expect);
    unlink(path);
    g_free(st->buf);
    st->buf = NULL;
}

static void test_crafted_list(void)
{
    uint8_t name[NAME_LEN] = "nosuch";
    Stream st;

    make_template(&tmpl_sampled, "tmpl", false);

    /* Counts larger than the RAM blocks, or negative as an int32. */
    stream_read(&st, &tmpl_sampled);
    stl_be_p(st.buf + st.list.data, 0x7fffffff);
    stream_must_fail(&st, &tmpl_sampled, "list-count.state",
                     "the stream lists 2147483647 bypassed RAM blocks, this "
                     "VM has");
    stream_read(&st, &tmpl_sampled);
    stl_be_p(st.buf + st.list.data, 0xffffffff);
    stream_must_fail(&st, &tmpl_sampled, "list-negative.state",
                     "the stream lists 4294967295 bypassed RAM blocks");

    /* A name without its NUL, an empty one, one that is not a block. */
    stream_read(&st, &tmpl_sampled);
    memset(st.buf + st.list.data + 4, 'A', NAME_LEN);
    stream_must_fail(&st, &tmpl_sampled, "list-unterminated.state",
                     "invalid RAM block name in the list of bypassed "
                     "blocks (corrupted stream)");
    stream_read(&st, &tmpl_sampled);
    st.buf[st.list.data + 4] = 0;
    stream_must_fail(&st, &tmpl_sampled, "list-empty-name.state",
                     "invalid RAM block name in the list");
    stream_read(&st, &tmpl_sampled);
    memcpy(st.buf + st.list.data + 4, name, NAME_LEN);
    stream_must_fail(&st, &tmpl_sampled, "list-unknown.state",
                     "the template has RAM block 'nosuch' but this VM has "
                     "none");

    /* The same block twice. */
    stream_read(&st, &tmpl_sampled);
    stl_be_p(st.buf + st.list.data, 2);
    stream_splice(&st, st.list.data + 4, 0, st.buf + st.list.data + 4,
                  NAME_LEN);
    stream_must_fail(&st, &tmpl_sampled, "list-twice.state",
                     "RAM block 'mem0' is listed twice (corrupted stream)");
}

/* Every bypassed block is verified once, or the load fails. */
static void test_crafted_identity(void)
{
    uint8_t name[NAME_LEN] = "nosuch";
    uint8_t *rec;
    Stream st;

    make_template(&tmpl_sampled, "tmpl", false);

    /* No identity section at all: the stream ends unverified. */
    stream_read(&st, &tmpl_sampled);
    stream_splice(&st, st.ids.header, st.ids.data - st.ids.header + 4 +
                  ID_REC_SIZE + SECTION_FOOTER_LEN, NULL, 0);
    stream_must_fail(&st, &tmpl_sampled, "id-missing.state",
                     "the stream bypasses RAM block 'mem0' but never proved "
                     "its identity");

    /* More records than bypassed blocks. */
    stream_read(&st, &tmpl_sampled);
    stl_be_p(st.buf + st.ids.data, 2);
    stream_must_fail(&st, &tmpl_sampled, "id-count.state",
                     "2 identity records for 1 bypassed RAM blocks");

    /* A record for a block the stream does not bypass. */
    stream_read(&st, &tmpl_sampled);
    memcpy(st.buf + st.ids.data + 4, name, NAME_LEN);
    stream_must_fail(&st, &tmpl_sampled, "id-unknown.state",
                     "identity record for RAM block 'nosuch', which the "
                     "stream does not bypass");

    /* No samples: the fingerprint would cover nothing. */
    stream_read(&st, &tmpl_sampled);
    rec = st.buf + st.ids.data + 4;
    stl_be_p(rec + ID_OFF_SAMPLES, 0);
    stream_must_fail(&st, &tmpl_sampled, "id-samples.state",
                     "invalid identity record for RAM block 'mem0' (check 0, "
                     "0 samples)");

    /* An unknown check. */
    stream_read(&st, &tmpl_sampled);
    rec = st.buf + st.ids.data + 4;
    rec[ID_OFF_CHECK] = 7;
    stream_must_fail(&st, &tmpl_sampled, "id-check.state",
                     "invalid identity record for RAM block 'mem0' (check 7");
}

/*
 * Two bypassed blocks; the record of the first one twice must not leave
 * the second one unchecked.
 */
static void test_crafted_identity_duplicate(void)
{
    QTestState *to;
    Stream st;

    if (!vmt_accel_available()) {
        return;
    }
    make_template_dimm(&tmpl_two, "tmpl2", false, true);

    /* The template itself loads: both blocks verified. */
    to = clone_start(&tmpl_two, tmpl_two.mem, "share=off", "two_serial");
    clone_check(to, "two_serial");
    qtest_quit(to);

    stream_read(&st, &tmpl_two);
    g_assert_cmpint(ldl_be_p(st.buf + st.ids.data), ==, 2);
    memcpy(st.buf + st.ids.data + 4 + ID_REC_SIZE, st.buf + st.ids.data + 4,
           ID_REC_SIZE);
    stream_must_fail(&st, &tmpl_two, "id-duplicate.state",
                     "two identity records for RAM block 'mem0' (corrupted "
                     "stream)");
}

/* A saved template cannot resume: clones map its memory file. */
static void test_no_resume(void)
{
    g_autofree char *mem = vmt_path("resume.ram");
    g_autofree char *state = vmt_path("resume.state");
    g_autofree char *backend = file_backend(mem, "share=on");
    g_autofree char *args = vmt_vm_args(backend, "resume_serial");
    g_autofree char *uri = g_strdup_printf("exec:cat > %s", state);
    Template t = { 0 };
    QTestState *vm;
    QDict *rsp;

    if (!vmt_accel_available()) {
        return;
    }
    vm = qtest_init(args);
    wait_for_serial("resume_serial");
    migrate_set_capability(vm, "bypass-shared-memory", true);
    qtest_qmp_assert_success(vm, "{ 'execute': 'migrate', 'arguments':"
                             " { 'uri': %s } }", uri);
    wait_for_migration_complete(vm);

    rsp = qtest_qmp(vm, "{ 'execute': 'cont' }");
    g_assert_nonnull(strstr(qdict_get_str(qdict_get_qdict(rsp, "error"),
                                          "desc"),
                            "this VM was saved with bypass-shared-memory: "
                            "clones may map its memory files"));
    qobject_unref(rsp);
    vmt_wait_for_status(vm, "postmigrate");

    /* Said explicitly: the capability off, then it resumes. */
    migrate_set_capability(vm, "bypass-shared-memory", false);
    qtest_qmp_assert_success(vm, "{ 'execute': 'cont' }");
    vmt_wait_for_status(vm, "running");
    qtest_quit(vm);

    /*
     * It ran again and wrote its memory file, which a shared mapping does
     * not show in the file's modification time on tmpfs: QEMU moved it
     * when the VM resumed, so the stream saved before no longer loads.
     */
    t.mem = mem;
    t.state = state;
    clone_must_fail(&t, mem, NULL, "was modified or re-created after the "
                    "template was saved");
    unlink(mem);
    unlink(state);
}

/* scripts/analyze-migration.py shows what a template's stream bypasses. */
static void test_analyze_script(void)
{
    const char *python = getenv("PYTHON");
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;
    int status;

    if (!python || !g_file_test("scripts/analyze-migration.py",
                                G_FILE_TEST_EXISTS)) {
        g_test_skip("needs PYTHON and the source tree as working directory");
        return;
    }
    make_template(&tmpl_sampled, "tmpl", false);
    {
        const char *argv[] = { python, "scripts/analyze-migration.py", "-f",
                               tmpl_sampled.state, NULL };

        g_assert(g_spawn_sync(NULL, (char **)argv, NULL, 0, NULL, NULL,
                              &out, &err, &status, NULL));
    }
    g_test_message("%s", err);
    g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    g_assert_nonnull(strstr(out, "\"bypass-shared-memory ("));
    g_assert_nonnull(strstr(out, "\"mem0\": {"));
    g_assert_nonnull(strstr(out, "\"used_length\": \"0x9600000\""));
    g_assert_nonnull(strstr(out, "\"sampled_sha256\": \""));
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
                    "bypass-shared-memory is not compatible with "
                    "postcopy-ram");
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
    g_autofree char *mem = vmt_path("legacy.ram");
    g_autofree char *state = vmt_path("legacy.state");
    g_autofree char *src_mem = file_backend(mem, "share=on");
    g_autofree char *dst_mem = file_backend(mem, "share=off");
    g_autofree char *src_args = vmt_vm_args(src_mem, "legacy_src_serial");
    g_autofree char *dst_vm = vmt_vm_args(dst_mem, "legacy_dst_serial");
    g_autofree char *dst_args = g_strdup_printf("%s -incoming defer", dst_vm);
    g_autofree char *uri = g_strdup_printf("exec:cat > %s", state);
    g_autofree char *in_uri = g_strdup_printf("exec:cat %s", state);
    QTestState *from, *to;

    if (!vmt_accel_available()) {
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
    vmt_check_boot_code(to);
    vmt_check_pattern(to);
    qtest_quit(to);
    unlink(mem);
    unlink(state);
}

int main(int argc, char **argv)
{
    int ret;

    if (!vmt_init(&argc, &argv)) {
        return g_test_run();
    }
    qtest_add_func("/vmt/bypass/caps", test_caps);
    qtest_add_func("/vmt/bypass/clones", test_clones);
    qtest_add_func("/vmt/bypass/readonly", test_readonly_clone);
    qtest_add_func("/vmt/bypass/shared-destination", test_shared_destination);
    qtest_add_func("/vmt/bypass/bad/size", test_bad_size);
    qtest_add_func("/vmt/bypass/bad/modified", test_bad_modified);
    qtest_add_func("/vmt/bypass/bad/other-template", test_bad_other_template);
    qtest_add_func("/vmt/bypass/bad/missing", test_bad_missing);
    qtest_add_func("/vmt/bypass/bad/truncated-state",
                   test_bad_truncated_state);
    qtest_add_func("/vmt/bypass/crafted/list", test_crafted_list);
    qtest_add_func("/vmt/bypass/crafted/identity", test_crafted_identity);
    qtest_add_func("/vmt/bypass/crafted/identity-duplicate",
                   test_crafted_identity_duplicate);
    qtest_add_func("/vmt/bypass/no-resume", test_no_resume);
    qtest_add_func("/vmt/bypass/full-check", test_full_check);
    qtest_add_func("/vmt/bypass/analyze-script", test_analyze_script);
    qtest_add_func("/vmt/ignore-shared/legacy", test_ignore_shared_legacy);

    ret = g_test_run();

    template_free(&tmpl_sampled);
    template_free(&tmpl_full);
    template_free(&tmpl_two);
    vmt_cleanup();
    return ret;
}
