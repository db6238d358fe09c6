/*
 * Unit tests of qemu-template's pieces: command lines, the manifest as
 * hostile input, the trust checks, locks, and the QMP client's handling
 * of a stream split anywhere.  The end-to-end tests, with QEMU and a
 * guest, are in tests/vmt/test_template_tool.py.
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/socket.h>
#include <sys/wait.h>
#include "qapi/error.h"
#include "qemu/atomic.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qlist.h"
#include "qemu-template.h"
#include "cmdline.h"
#include "manifest.h"
#include "qmp.h"
#include "vm.h"
#include "clone.h"

static char *tmp_dir;
/* this test's binary: it plays QEMU when run as "fake-qemu" */
static char *self_exe;

/* a path below tmp_dir */
static char *tmp_path(const char *name)
{
    return g_build_filename(tmp_dir, name, NULL);
}

/* ------------------------------------------------------------------ */
/* command lines */

static void test_subst_dir(void)
{
    const char *dir = "/t/a,b\"c";
    g_autofree char *opts = subst_dir("socket,id=x,path=@DIR@/s", dir,
                                      "-chardev");
    g_autofree char *plain = subst_dir("file:@DIR@/log", dir, "-serial");
    g_autofree char *json = subst_dir("{\"driver\": \"file\", \"filename\": "
                                      "\"@DIR@/d\"}", dir, "--blockdev");
    g_autofree char *none = subst_dir("no placeholder", dir, "-device");
    g_autofree char *first = subst_dir("@DIR@", dir, NULL);
    /* the old chardev syntax: "unix:" is an option list, "file:" not */
    g_autofree char *unix_serial = subst_dir("unix:@DIR@/s,server=on",
                                             dir, "-serial");
    g_autofree char *mon = subst_dir("mon:unix:@DIR@/m,server=on", dir,
                                     "-monitor");
    g_autofree char *qmp = subst_dir("unix:@DIR@/q,server=on", dir, "-qmp");
    g_autofree char *gdb = subst_dir("unix:@DIR@/g,server=on", dir,
                                     "--gdb");

    g_assert_cmpstr(opts, ==, "socket,id=x,path=/t/a,,b\"c/s");
    g_assert_cmpstr(plain, ==, "file:/t/a,b\"c/log");
    g_assert_cmpstr(json, ==, "{\"driver\": \"file\", \"filename\": "
                    "\"/t/a,b\\\"c/d\"}");
    g_assert_cmpstr(none, ==, "no placeholder");
    g_assert_cmpstr(first, ==, "/t/a,b\"c");
    g_assert_cmpstr(unix_serial, ==, "unix:/t/a,,b\"c/s,server=on");
    g_assert_cmpstr(mon, ==, "mon:unix:/t/a,,b\"c/m,server=on");
    g_assert_cmpstr(qmp, ==, "unix:/t/a,,b\"c/q,server=on");
    g_assert_cmpstr(gdb, ==, "unix:/t/a,,b\"c/g,server=on");
}

static bool args_ok(TemplateMode mode, const char *first, ...)
{
    g_autoptr(GPtrArray) v = g_ptr_array_new();
    Error *err = NULL;
    const char *a;
    va_list ap;
    bool ok;

    va_start(ap, first);
    for (a = first; a; a = va_arg(ap, const char *)) {
        g_ptr_array_add(v, (char *)a);
    }
    va_end(ap);
    g_ptr_array_add(v, NULL);
    ok = check_user_args((char **)v->pdata, mode, &err);
    g_assert(ok == !err);
    error_free(err);
    return ok;
}

static void test_check_user_args(void)
{
    g_assert_true(args_ok(MODE_BYPASS, "-m", "1G", "-device",
                          "virtio-net-pci,id=n0", NULL));
    g_assert_true(args_ok(MODE_MAPPED_RAM, "-machine",
                          "memory-backend=ram0", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-machine", "memory-backend=r",
                           NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-incoming", "defer", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "--incoming", "defer", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-uuid", "x", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-S", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-daemonize", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-readconfig", "f", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-device", "vmgenid", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-device", "driver=vmgenid", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-device",
                           "{\"driver\": \"vmgenid\"}", NULL));
    /* JSON is read as QEMU reads it: escapes decoded */
    g_assert_false(args_ok(MODE_BYPASS, "-device",
                           "{\"driver\": \"vm\\u0067enid\"}", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-object",
                           "{\"qom-type\": \"x\", \"id\": "
                           "\"qemu-t\\u0065mplate-y\"}", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-machine",
                           "{\"memory-b\\u0061ckend\": \"r\"}", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-add-fd", "fd=3,set=1", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-netdev",
                           "user,id=" ID_PREFIX "x", NULL));
    g_assert_false(args_ok(MODE_BYPASS, "-object",
                           "{\"qom-type\": \"x\", \"id\": \"" ID_PREFIX
                           "y\"}", NULL));
}

static void test_ram_size(void)
{
    static const struct {
        const char *val;
        uint64_t size;
    } cases[] = {
        { "256M", 256 << 20 },
        { "size=1G,slots=2,maxmem=4G", 1ULL << 30 },
        { "512", 512 << 20 },
        { "0", 0 },
        { "lots", 0 },
    };
    int i;

    for (i = 0; i < ARRAY_SIZE(cases); i++) {
        char *args[] = { (char *)"-m", (char *)cases[i].val, NULL };
        uint64_t size = 0;
        Error *err = NULL;
        bool ok = parse_ram_size(args, &size, &err);

        g_assert(ok == !!cases[i].size);
        g_assert(ok == !err);
        if (ok) {
            g_assert_cmpuint(size, ==, cases[i].size);
        }
        error_free(err);
    }
}

static bool argv_has(char **argv, const char *a, const char *b)
{
    int i;

    for (i = 0; argv[i] && argv[i + 1]; i++) {
        if (!strcmp(argv[i], a) && !strcmp(argv[i + 1], b)) {
            return true;
        }
    }
    return false;
}

static void test_build_argv(void)
{
    char *user[] = { (char *)"-m", (char *)"256M", NULL };
    VmArgs va = {
        .qemu = "/q", .user = user, .dir = "/d,x", .qmp_fd = 3,
        .mode = MODE_BYPASS, .ram_size = 256 << 20,
        .ram_path = "/t,m/memory", .ram_fd = 4, .state_fd = 5,
        .clone = true, .genid = "g", .uuid = "u", .name = "n",
    };
    g_auto(GStrv) clone = build_argv(&va);
    g_auto(GStrv) tmpl = NULL;

    g_assert_cmpstr(clone[0], ==, "/q");
    /* the socket the tool made, the files it opened and checked */
    g_assert_true(argv_has(clone, "-chardev", "socket,id=" ID_PREFIX
                           "qmp,fd=3,server=on,wait=off"));
    g_assert_true(argv_has(clone, "-object", "memory-backend-file,id="
                           ID_PREFIX "ram,size=268435456,mem-path="
                           "/proc/self/fd/4,share=off,readonly=on,rom=off"));
    g_assert_true(argv_has(clone, "-add-fd", "fd=5,set=1"));
    g_assert_true(argv_has(clone, "-incoming", "defer"));
    g_assert_true(argv_has(clone, "-global", "migration.x-events=on"));
    va.clone = false;
    tmpl = build_argv(&va);
    g_assert_true(argv_has(tmpl, "-object", "memory-backend-file,id="
                           ID_PREFIX "ram,size=268435456,mem-path="
                           "/t,,m/memory,share=on"));
    g_assert_true(g_strv_contains((const char * const *)tmpl, "-S"));
    g_assert_false(g_strv_contains((const char * const *)tmpl,
                                   "-incoming"));
    g_assert_false(g_strv_contains((const char * const *)tmpl, "-add-fd"));
}

static void test_file_channels(void)
{
    QList *l = file_channels("/a,offset=9/state");
    QDict *chan = qobject_to(QDict, qlist_peek(l));
    QDict *addr = qdict_get_qdict(chan, "addr");

    g_assert_cmpuint(qlist_size(l), ==, 1);
    g_assert_cmpstr(qdict_get_str(chan, "channel-type"), ==, "main");
    g_assert_cmpstr(qdict_get_str(addr, "transport"), ==, "file");
    /* the path as it is: a file: URI would cut it at ",offset=" */
    g_assert_cmpstr(qdict_get_str(addr, "filename"), ==,
                    "/a,offset=9/state");
    g_assert_cmpint(qdict_get_int(addr, "offset"), ==, 0);
    qobject_unref(l);
}

/* ------------------------------------------------------------------ */
/* trust and locks */

static void test_check_trusted(void)
{
    struct stat st = { .st_uid = geteuid(), .st_mode = S_IFREG | 0644 };
    Error *err = NULL;

    g_assert_true(check_trusted("f", &st, &error_abort));
    st.st_mode = S_IFREG | 0664;
    g_assert_false(check_trusted("f", &st, &err));
    g_assert_nonnull(strstr(error_get_pretty(err), "writable by its group"));
    g_clear_pointer(&err, error_free);
    st.st_mode = S_IFREG | 0602;
    g_assert_false(check_trusted("f", &st, &err));
    g_assert_nonnull(strstr(error_get_pretty(err), "by other users"));
    g_clear_pointer(&err, error_free);
    st.st_mode = S_IFREG | 0600;
    st.st_uid = geteuid() + 1;
    g_assert_false(check_trusted("f", &st, &err));
    g_assert_nonnull(strstr(error_get_pretty(err), "is owned by uid"));
    error_free(err);
}

static void test_stat_trusted(void)
{
    g_autofree char *file = g_build_filename(tmp_dir, "f", NULL);
    g_autofree char *link = g_build_filename(tmp_dir, "l", NULL);
    Error *err = NULL;

    g_assert_true(g_file_set_contents(file, "x", 1, NULL));
    g_assert_cmpint(symlink(file, link), ==, 0);
    g_assert_true(stat_trusted(file, S_IFREG, NULL, &error_abort));
    /* a symlink is not followed */
    g_assert_false(stat_trusted(link, S_IFREG, NULL, &err));
    g_assert_nonnull(strstr(error_get_pretty(err), "not a regular file"));
    error_free(err);
    unlink(link);
    unlink(file);
}

static void test_locks(void)
{
    Error *err = NULL;
    int a = template_lock("t", LOCK_TEMPLATE, false, "busy", &error_abort);
    int b = template_lock("t", LOCK_TEMPLATE, false, "busy", &error_abort);
    int c;

    /* two users, no maker */
    g_assert_cmpint(template_lock("t", LOCK_TEMPLATE, true, "busy", &err),
                    <, 0);
    g_assert_cmpstr(error_get_pretty(err), ==, "template 't' is busy");
    g_clear_pointer(&err, error_free);
    close(a);
    close(b);
    c = template_lock("t", LOCK_TEMPLATE, true, "busy", &error_abort);
    /* the pool byte is apart */
    g_assert_false(template_locked("t", LOCK_POOL));
    g_assert_cmpint(qemu_lock_fd(c, LOCK_POOL, 1, true), ==, 0);
    g_assert_true(template_locked("t", LOCK_POOL));
    close(c);
    g_assert_false(template_locked("t", LOCK_POOL));
    /* a name is never a path */
    g_assert_cmpint(template_lock("../t", LOCK_TEMPLATE, true, "busy", &err),
                    <, 0);
    error_free(err);
}

/* ------------------------------------------------------------------ */
/* the manifest */

static void write_file(const char *path, const char *text)
{
    g_assert_true(g_file_set_contents(path, text, -1, NULL));
    chmod(path, 0600);
}

/* Template "t" with a state file of 3 bytes and a memory file of 4 KiB. */
static char *make_template(void)
{
    g_autofree char *dir = template_path("t", NULL);
    g_autofree char *state = template_path("t", "state");
    g_autofree char *mem = template_path("t", MEMORY_FILE);
    g_autofree char *zero = g_malloc0(4096);

    g_assert_cmpint(g_mkdir_with_parents(dir, 0700), ==, 0);
    write_file(state, "abc");
    g_assert_true(g_file_set_contents(mem, zero, 4096, NULL));
    chmod(mem, 0600);
    return template_path("t", MANIFEST_FILE);
}

#define GOOD_MANIFEST \
    "{\"format\": 1, \"name\": \"t\", \"mode\": \"bypass\", " \
    "\"qemu\": {\"path\": \"/q\", \"version\": \"1.2.3\"}, " \
    "\"args\": [\"-m\", \"4K\"], \"ram-size\": 4096, " \
    "\"files\": {\"state\": 3, \"memory\": 4096}}"

static void test_manifest_hostile(void)
{
    static const struct {
        const char *text;
        const char *error;
    } cases[] = {
        { "", "is not valid JSON" },
        { "{\"format\": 1, garbage", "is not valid JSON" },
        { "[1, 2]", "is not a JSON object" },
        { "{\"format\": 2}", "is not a format 1 manifest" },
        { "{\"format\": 1, \"name\": \"u\"}", "is not a format 1" },
        { "{\"format\": 1, \"name\": \"t\", \"mode\": \"x\", \"qemu\": "
          "{\"path\": \"/q\", \"version\": \"1\"}, \"args\": [], "
          "\"files\": {}}", "is not a format 1" },
        { "{\"format\": 1, \"name\": \"t\", \"mode\": \"bypass\", "
          "\"qemu\": {\"path\": 1, \"version\": \"1\"}, \"args\": [], "
          "\"files\": {}}", "is not a format 1" },
        { "{\"format\": 1, \"name\": \"t\", \"mode\": \"bypass\", "
          "\"qemu\": {\"path\": \"/q\", \"version\": \"1\"}, "
          "\"args\": [3], \"files\": {}}", "is not a format 1" },
        { "{\"format\": 1, \"name\": \"t\", \"mode\": \"bypass\", "
          "\"qemu\": {\"path\": \"/q\", \"version\": \"1\"}, "
          "\"args\": [\"-incoming\", \"exec:x\"], \"files\": {}}",
          "is managed by qemu-template" },
        { "{\"format\": 1, \"name\": \"t\", \"mode\": \"bypass\", "
          "\"qemu\": {\"path\": \"/q\", \"version\": \"1\"}, "
          "\"args\": [], \"files\": {}}", "does not list its file 'state'" },
        { "{\"format\": 1, \"name\": \"t\", \"mode\": \"bypass\", "
          "\"qemu\": {\"path\": \"/q\", \"version\": \"1\"}, "
          "\"args\": [], \"files\": {\"../x\": 1}}", "is malformed" },
        { "{\"format\": 1, \"name\": \"t\", \"mode\": \"bypass\", "
          "\"qemu\": {\"path\": \"/q\", \"version\": \"1\"}, "
          "\"args\": [], \"files\": {\"state\": 4}}", "has 3 bytes" },
        /* the mode's own files are required: not one unchecked */
        { "{\"format\": 1, \"name\": \"t\", \"mode\": \"bypass\", "
          "\"qemu\": {\"path\": \"/q\", \"version\": \"1\"}, "
          "\"args\": [], \"ram-size\": 4096, "
          "\"files\": {\"memory\": 4096}}",
          "does not list its file 'state'" },
        { "{\"format\": 1, \"name\": \"t\", \"mode\": \"bypass\", "
          "\"qemu\": {\"path\": \"/q\", \"version\": \"1\"}, "
          "\"args\": [], \"ram-size\": 4096, "
          "\"files\": {\"state\": 3}}",
          "does not list its file 'memory'" },
        { "{\"format\": 1, \"name\": \"t\", \"mode\": \"mapped-ram\", "
          "\"qemu\": {\"path\": \"/q\", \"version\": \"1\"}, "
          "\"args\": [], \"files\": {\"state\": 3}}", "is malformed" },
        { "{\"format\": 1, \"name\": \"t\", \"mode\": \"bypass\", "
          "\"qemu\": {\"path\": \"/q\", \"version\": \"1\"}, "
          "\"args\": [], \"ram-size\": 8192, "
          "\"files\": {\"state\": 3, \"memory\": 4096}}",
          "is not the size of its memory file" },
    };
    g_autofree char *path = make_template();
    int i;

    for (i = 0; i < ARRAY_SIZE(cases); i++) {
        Error *err = NULL;

        write_file(path, cases[i].text);
        g_assert_null(manifest_load("t", &err));
        if (!strstr(error_get_pretty(err), cases[i].error)) {
            g_error("case %d: '%s' does not say '%s'", i,
                    error_get_pretty(err), cases[i].error);
        }
        error_free(err);
    }
}

static void test_manifest_roundtrip(void)
{
    g_autofree char *path = make_template();
    g_autofree char *dir = template_path("t", NULL);
    g_autoptr(Manifest) m = NULL;
    g_autoptr(Manifest) again = NULL;
    struct stat st;

    write_file(path, GOOD_MANIFEST);
    m = manifest_load("t", &error_abort);
    g_assert_cmpint(m->mode, ==, MODE_BYPASS);
    g_assert_cmpstr(m->qemu, ==, "/q");
    g_assert_cmpuint(m->ram_size, ==, 4096);
    g_assert_false(m->stopped);
    m->stopped = true;
    m->vmgenid = g_strdup("g");
    m->uuid = g_strdup("u");
    m->created = g_strdup("now");
    unlink(path);
    g_assert_true(manifest_save(m, dir, &error_abort));
    g_assert_cmpint(stat(path, &st), ==, 0);
    g_assert_cmpint(st.st_mode & 0777, ==, 0400);
    again = manifest_load("t", &error_abort);
    g_assert_true(again->stopped);
    g_assert_cmpstr(again->vmgenid, ==, "g");
    g_assert_cmpstr(again->args[1], ==, "4K");
    chmod(path, 0600);
}

/* ------------------------------------------------------------------ */
/* the QMP client */

typedef struct Seen {
    int events;
    bool closed;
} Seen;

static void seen_event(QDict *event, void *opaque)
{
    ((Seen *)opaque)->events++;
}

static void seen_closed(Error *err, void *opaque)
{
    ((Seen *)opaque)->closed = true;
    error_free(err);
}

static void test_qmp_stream(void)
{
    /* a greeting, an event cut in two, an answer sharing a write */
    static const char *const chunks[] = {
        "{\"QMP\": {\"version\": {}}}\r\n{\"event\": \"RES",
        "UME\", \"data\": {}}\n{\"return\": {\"a\"",
        ": 1}}{\"event\": \"STOP\"}\n",
    };
    Seen seen = { 0 };
    int sv[2];
    QmpClient *q;
    g_autoptr(QObject) ret = NULL;
    char buf[256];
    ssize_t n;
    int i;

    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), ==, 0);
    q = qmp_client_new(sv[0], "test", seen_event, seen_closed, &seen);
    for (i = 0; i < ARRAY_SIZE(chunks); i++) {
        g_assert_cmpint(write(sv[1], chunks[i], strlen(chunks[i])), ==,
                        strlen(chunks[i]));
    }
    ret = qmp_call(q, "query-x", NULL, now_us() + 10 * G_USEC_PER_SEC, NULL,
                   &error_abort);
    g_assert_cmpint(qdict_get_int(qobject_to(QDict, ret), "a"), ==, 1);
    n = read(sv[1], buf, sizeof(buf) - 1);
    buf[MAX(n, 0)] = '\0';
    g_assert_cmpstr(buf, ==, "{\"execute\": \"query-x\"}\n");
    while (g_main_context_iteration(NULL, false)) {
        /* the event after the answer */
    }
    g_assert_cmpint(seen.events, ==, 2);
    /* something that is not a QMP message closes the connection */
    g_assert_cmpint(write(sv[1], "[1]\n", 4), ==, 4);
    while (!seen.closed) {
        g_main_context_iteration(NULL, true);
    }
    g_assert_true(qmp_is_closed(q));
    qmp_client_free(q);
    close(sv[1]);
}

static void test_qmp_error_answer(void)
{
    static const char text[] = "{\"error\": {\"class\": \"GenericError\", "
                               "\"desc\": \"no\"}}\n";
    int sv[2];
    QmpClient *q;
    Error *err = NULL;

    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), ==, 0);
    q = qmp_client_new(sv[0], "test", NULL, NULL, NULL);
    g_assert_cmpint(write(sv[1], text, sizeof(text) - 1), ==,
                    sizeof(text) - 1);
    g_assert_null(qmp_call(q, "x", NULL, now_us() + 10 * G_USEC_PER_SEC,
                           NULL, &err));
    g_assert_cmpstr(error_get_pretty(err), ==, "QMP 'x' failed: no");
    g_clear_pointer(&err, error_free);
    /* the peer goes: a call fails at once */
    close(sv[1]);
    g_assert_null(qmp_call(q, "y", NULL, now_us() + 10 * G_USEC_PER_SEC,
                           NULL, &err));
    error_free(err);
    qmp_client_free(q);
}

static void test_qmp_malformed_answers(void)
{
    static const char *const answers[] = {
        "{\"error\": 5}\n",
        "{\"error\": \"no\"}\n",
        "{\"neither\": 1}\n",
    };
    int i;

    for (i = 0; i < ARRAY_SIZE(answers); i++) {
        Seen seen = { 0 };
        Error *err = NULL;
        QmpClient *q;
        int sv[2];

        g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), ==, 0);
        q = qmp_client_new(sv[0], "test", NULL, seen_closed, &seen);
        g_assert_cmpint(write(sv[1], answers[i], strlen(answers[i])), ==,
                        strlen(answers[i]));
        /* never NULL without an error */
        g_assert_null(qmp_call(q, "x", NULL,
                               now_us() + 10 * G_USEC_PER_SEC, NULL, &err));
        g_assert_nonnull(err);
        g_assert_nonnull(strstr(error_get_pretty(err), "QEMU sent"));
        error_free(err);
        g_assert_true(qmp_is_closed(q));
        qmp_client_free(q);
        close(sv[1]);
    }
}

/* ------------------------------------------------------------------ */
/* files and processes, under attack */

typedef struct Racer {
    char *a;
    char *b;
    bool stop;
    int swaps;
} Racer;

static gpointer racer_run(gpointer opaque)
{
    Racer *r = opaque;

    while (!qatomic_read(&r->stop)) {
        if (!renameat2(AT_FDCWD, r->a, AT_FDCWD, r->b, RENAME_EXCHANGE)) {
            qatomic_inc(&r->swaps);
        }
    }
    return NULL;
}

#define RACE_FILES 64
#define RACE_ROUNDS 200

/* T/a, a directory of files named as the victim's, and T/l -> victim */
static void race_tree(const char *tree, const char *victim)
{
    g_autofree char *a = g_build_filename(tree, "a", NULL);
    g_autofree char *l = g_build_filename(tree, "l", NULL);
    int i;

    g_assert_cmpint(g_mkdir_with_parents(a, 0700), ==, 0);
    for (i = 0; i < RACE_FILES; i++) {
        g_autofree char *f = g_strdup_printf("%s/f%d", a, i);

        g_assert_true(g_file_set_contents(f, "t", 1, NULL));
    }
    g_assert_cmpint(symlink(victim, l), ==, 0);
}

/*
 * rmtree() while another thread keeps swapping a directory of the tree
 * with a symbolic link to a directory outside: nothing outside goes.
 */
static void test_rmtree_race(void)
{
    g_autofree char *victim = tmp_path("victim");
    g_autofree char *tree = tmp_path("tree");
    Racer r = {
        .a = g_build_filename(tree, "a", NULL),
        .b = g_build_filename(tree, "l", NULL),
    };
    int round, i;

    g_assert_cmpint(g_mkdir_with_parents(victim, 0700), ==, 0);
    for (i = 0; i < RACE_FILES; i++) {
        g_autofree char *f = g_strdup_printf("%s/f%d", victim, i);

        g_assert_true(g_file_set_contents(f, "v", 1, NULL));
    }
    for (round = 0; round < RACE_ROUNDS; round++) {
        GThread *t;

        race_tree(tree, victim);
        qatomic_set(&r.stop, false);
        qatomic_set(&r.swaps, 0);
        t = g_thread_new("racer", racer_run, &r);
        /* the racer runs before rmtree() starts */
        while (qatomic_read(&r.swaps) < 2) {
            g_usleep(10);
        }
        rmtree(tree);
        qatomic_set(&r.stop, true);
        g_thread_join(t);
        rmtree(tree);
        for (i = 0; i < RACE_FILES; i++) {
            g_autofree char *f = g_strdup_printf("%s/f%d", victim, i);

            if (!g_file_test(f, G_FILE_TEST_EXISTS)) {
                g_error("round %d: rmtree removed %s, outside its tree",
                        round, f);
            }
        }
    }
    g_assert_false(g_file_test(tree, G_FILE_TEST_EXISTS));
    rmtree(victim);
    g_free(r.a);
    g_free(r.b);
}

static void copy_file(const char *from, const char *to, mode_t mode)
{
    g_autofree char *data = NULL;
    gsize len;

    g_assert_true(g_file_get_contents(from, &data, &len, NULL));
    g_assert_true(g_file_set_contents(to, data, len, NULL));
    g_assert_cmpint(chmod(to, mode), ==, 0);
}

static void vm_exited(Vm *vm, Error *err, void *opaque)
{
    error_free(err);
}

/*
 * The binary that runs is the file qemu_resolve() checked, even if its
 * path names another file by the time the clone starts.
 */
static void test_exec_checked_binary(void)
{
    g_autofree char *dir = tmp_path("bin");
    g_autofree char *qemu = g_build_filename(dir, "qemu", NULL);
    g_autofree char *evil = g_build_filename(dir, "evil", NULL);
    g_autofree char *vmdir = tmp_path("vm");
    g_autoptr(QemuBinary) b = NULL;
    char *argv[] = { qemu, NULL };
    Vm vm;

    g_assert_cmpint(g_mkdir_with_parents(dir, 0700), ==, 0);
    g_assert_cmpint(g_mkdir_with_parents(vmdir, 0700), ==, 0);
    copy_file("/bin/true", qemu, 0755);
    copy_file("/bin/false", evil, 0755);
    b = qemu_resolve(qemu, &error_abort);
    /* what an attacker who could write the directory would do */
    g_assert_cmpint(rename(evil, qemu), ==, 0);
    vm_init(&vm, vmdir);
    g_assert_true(vm_spawn(&vm, b, argv, NULL, 0, false, &error_abort));
    vm_connect(&vm, 30, vm_exited, NULL, NULL);
    while (!vm.exited) {
        g_main_context_iteration(NULL, true);
    }
    g_assert_true(WIFEXITED(vm.status));
    g_assert_cmpint(WEXITSTATUS(vm.status), ==, 0);
    vm_cleanup(&vm);
    rmtree(dir);
    rmtree(vmdir);
}

/* A child of this binary that waits, with "-uuid @uuid", as @uid (-1: us). */
static pid_t start_marked(const char *uuid, uid_t uid)
{
    pid_t pid = fork();

    if (pid == 0) {
        if (uid != (uid_t)-1 && (setgid(uid) < 0 || setuid(uid) < 0)) {
            _exit(1);
        }
        execl(self_exe, self_exe, "fake-sleep", "-uuid", uuid, NULL);
        _exit(1);
    }
    g_assert_cmpint(pid, >, 0);
    /* until it runs the binary, its command line is this test's */
    for (;;) {
        g_autofree char *path = g_strdup_printf("/proc/%d/cmdline", pid);
        g_autofree char *cmd = NULL;
        gsize len;

        g_assert_false(pid_gone(pid));
        if (g_file_get_contents(path, &cmd, &len, NULL) &&
            memmem(cmd, len, "fake-sleep", 10)) {
            return pid;
        }
        g_usleep(1000);
    }
}

static void stop_marked(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/*
 * A record names a process by its pid, start time and -uuid: a
 * process of another user, another start, or a uuid that only shares a
 * prefix, is not it.
 */
static void test_proc_find(void)
{
    const char *uuid = "6f0ac5e2-3b4c-4d5e-8f90-0123456789ab";
    pid_t pid = start_marked(uuid, -1);
    ProcRef r = { .opt = "-uuid", .val = uuid };
    uint64_t start;

    g_assert_cmpint(proc_find(&r), ==, pid);
    g_assert_true(proc_start_time(pid, &start));
    r.pid = pid;
    r.start = start;
    g_assert_cmpint(proc_find(&r), ==, pid);
    r.start = start + 1;
    g_assert_cmpint(proc_find(&r), ==, 0);
    r = (ProcRef) { .opt = "-uuid", .val = "6f0ac5e2" };
    g_assert_cmpint(proc_find(&r), ==, 0);
    stop_marked(pid);
    if (geteuid() == 0) {
        /* root does not take another user's process for its clone */
        pid = start_marked(uuid, 65534);
        r = (ProcRef) { .opt = "-uuid", .val = uuid };
        g_assert_cmpint(proc_find(&r), ==, 0);
        r.pid = pid;
        g_assert_cmpint(proc_find(&r), ==, 0);
        proc_stop(&r, 1);
        g_assert_false(pid_gone(pid));
        stop_marked(pid);
    }
}

static void test_pidfile(void)
{
    g_autofree char *victim = tmp_path("victim.pid");
    g_autofree char *sym = tmp_path("link.pid");
    g_autofree char *hard = tmp_path("hard.pid");
    g_autofree char *good = tmp_path("good.pid");
    g_autofree char *text = NULL;
    Error *err = NULL;
    int fd;

    g_assert_true(g_file_set_contents(victim, "precious", -1, NULL));
    g_assert_cmpint(symlink(victim, sym), ==, 0);
    g_assert_cmpint(pidfile_write(sym, &err), <, 0);
    g_clear_pointer(&err, error_free);
    g_assert_cmpint(link(victim, hard), ==, 0);
    g_assert_cmpint(pidfile_write(hard, &err), <, 0);
    g_clear_pointer(&err, error_free);
    g_assert_true(g_file_get_contents(victim, &text, NULL, NULL));
    g_assert_cmpstr(text, ==, "precious");
    fd = pidfile_write(good, &error_abort);
    g_clear_pointer(&text, g_free);
    g_assert_true(g_file_get_contents(good, &text, NULL, NULL));
    g_assert_cmpint(atoi(text), ==, getpid());
    pidfile_remove(good, fd);
    g_assert_false(g_file_test(good, G_FILE_TEST_EXISTS));
    unlink(sym);
    unlink(hard);
    unlink(victim);
}

static void test_sanitize_text(void)
{
    g_autofree char *t = sanitize_text("a\x1b[31mb\n\tc\x07\xc2\x9b" "d");

    g_assert_cmpstr(t, ==, "a\\x1b[31mb\n\tc\\x07\\u009bd");
}

/* ------------------------------------------------------------------ */
/* a clone whose QEMU stops answering after its load */

/* Play QEMU: answer on the QMP socket (fd 3), never query-status. */
static int fake_qemu(void)
{
    int fd = accept(VM_FD_QMP, NULL, NULL);
    FILE *f = fd >= 0 ? fdopen(fd, "r+") : NULL;
    char line[65536];

    if (!f) {
        return 1;
    }
    fprintf(f, "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n");
    fflush(f);
    while (fgets(line, sizeof(line), f)) {
        if (strstr(line, "query-version")) {
            fprintf(f, "{\"return\": {\"qemu\": {\"major\": 1, \"minor\": "
                    "2, \"micro\": 3}, \"package\": \"\"}}\n");
        } else if (strstr(line, "migrate-incoming")) {
            fprintf(f, "{\"return\": {}}\n{\"event\": \"MIGRATION\", "
                    "\"data\": {\"status\": \"completed\"}}\n");
        } else if (!strstr(line, "query-status")) {
            fprintf(f, "{\"return\": {}}\n");
        }
        fflush(f);
    }
    return 0;
}

static void clone_notified(Clone *c, void *opaque)
{
    if (c->state == CLONE_WAITING) {
        clone_load(c, now_us());
    } else {
        *(Clone **)opaque = c;
    }
}

static gboolean test_timeout(gpointer opaque)
{
    g_error("%s", (const char *)opaque);
    return G_SOURCE_REMOVE;
}

/*
 * Loaded (MIGRATION completed), then silent: the clone fails once its
 * load timeout passed, not waits for ever.
 */
static void test_clone_load_stuck(void)
{
    g_autofree char *path = make_template();
    g_autofree char *fake = tmp_path("fake-qemu");
    g_autofree char *text = NULL;
    g_autoptr(Manifest) m = NULL;
    g_autoptr(QemuBinary) b = NULL;
    Clone *c, *done = NULL;
    CloneSpec spec = { .timeout_s = 1 };
    guint guard;

    copy_file(self_exe, fake, 0700);
    text = g_strdup_printf("{\"format\": 1, \"name\": \"t\", \"mode\": "
                           "\"bypass\", \"qemu\": {\"path\": \"%s\", "
                           "\"version\": \"1.2.3\"}, \"args\": "
                           "[\"fake-qemu\"], \"ram-size\": 4096, \"files\": "
                           "{\"state\": 3, \"memory\": 4096}}", fake);
    write_file(path, text);
    m = manifest_load("t", &error_abort);
    b = qemu_resolve(fake, &error_abort);
    spec.m = m;
    spec.qemu = b;
    c = clone_start(&spec, clone_notified, &done, &error_abort);
    guard = g_timeout_add_seconds(30, test_timeout, (char *)"the clone "
                                  "stuck after its load never failed");
    while (!done) {
        g_main_context_iteration(NULL, true);
    }
    g_source_remove(guard);
    g_assert_true(done == c);
    g_assert_cmpint(c->state, ==, CLONE_FAILED);
    g_assert_nonnull(strstr(error_get_pretty(c->err),
                            "did not start running in 1 s"));
    clone_discard(c);
    clone_wait_pending(10000);
}

int main(int argc, char **argv)
{
    g_autofree char *base = NULL;
    int ret;

    if (argc > 1 && !strcmp(argv[1], "fake-qemu")) {
        return fake_qemu();
    }
    if (argc > 1 && !strcmp(argv[1], "fake-sleep")) {
        sleep(600);
        return 0;
    }
    self_exe = g_file_read_link("/proc/self/exe", NULL);
    g_test_init(&argc, &argv, NULL);
    /* as in qemu-template: a closed peer is an error, not a signal */
    signal(SIGPIPE, SIG_IGN);
    base = g_dir_make_tmp("qemu-template-test-XXXXXX", NULL);
    tmp_dir = base;
    umask(077);
    if (!setup_top_dir(base, true, &error_abort)) {
        return 1;
    }
    g_test_add_func("/qemu-template/cmdline/subst-dir", test_subst_dir);
    g_test_add_func("/qemu-template/cmdline/check-user-args",
                    test_check_user_args);
    g_test_add_func("/qemu-template/cmdline/ram-size", test_ram_size);
    g_test_add_func("/qemu-template/cmdline/build-argv", test_build_argv);
    g_test_add_func("/qemu-template/cmdline/file-channels",
                    test_file_channels);
    g_test_add_func("/qemu-template/trust/check", test_check_trusted);
    g_test_add_func("/qemu-template/trust/stat", test_stat_trusted);
    g_test_add_func("/qemu-template/locks", test_locks);
    g_test_add_func("/qemu-template/manifest/hostile",
                    test_manifest_hostile);
    g_test_add_func("/qemu-template/manifest/roundtrip",
                    test_manifest_roundtrip);
    g_test_add_func("/qemu-template/qmp/stream", test_qmp_stream);
    g_test_add_func("/qemu-template/qmp/error-answer",
                    test_qmp_error_answer);
    g_test_add_func("/qemu-template/qmp/malformed-answers",
                    test_qmp_malformed_answers);
    g_test_add_func("/qemu-template/trust/rmtree-race", test_rmtree_race);
    g_test_add_func("/qemu-template/trust/exec-checked-binary",
                    test_exec_checked_binary);
    g_test_add_func("/qemu-template/trust/pidfile", test_pidfile);
    g_test_add_func("/qemu-template/proc/find", test_proc_find);
    g_test_add_func("/qemu-template/sanitize-text", test_sanitize_text);
    g_test_add_func("/qemu-template/clone/load-stuck",
                    test_clone_load_stuck);
    ret = g_test_run();
    rmtree(base);
    g_free(self_exe);
    return ret;
}
