/*
 * QTest testcase for the x86 -kernel image served through fw_cfg when
 * its file changes under QEMU.
 *
 * A VM boots the image QEMU read at start, whatever happens to the file
 * afterwards.  A VM started with -incoming maps the file instead of
 * copying it, and copies it when the guest first selects it: then, a
 * file replaced by rename still gives the image that was mapped, and a
 * file modified or truncated in place is refused (the VM shuts down with
 * reason host-error) instead of being read through the mapping, which
 * would give the new content or kill QEMU with SIGBUS.
 *
 * The image is a minimal bzImage: a setup header and two pages of data.
 *
 * Copyright (c) 2026 The QEMU VM templating series authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "libqtest.h"
#include "libqos/fw_cfg.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qobject/qdict.h"
#include "standard-headers/linux/qemu_fw_cfg.h"

#define SETUP_SECTS     4
#define SETUP_BYTES     ((SETUP_SECTS + 1) * 512)
#define IMAGE_BYTES     (SETUP_BYTES + 2 * 4096)

static char *tmpdir;

static void make_image(uint8_t *buf, uint8_t seed)
{
    size_t i;

    for (i = 0; i < IMAGE_BYTES; i++) {
        buf[i] = seed + i * 7 + (i >> 8);
    }
    /* the setup header fields x86_load_linux() reads */
    memset(buf + 0x1f0, 0, 0x70);
    buf[0x1f1] = SETUP_SECTS;
    memcpy(buf + 0x202, "HdrS", 4);
    stw_le_p(buf + 0x206, 0x020f);          /* boot protocol 2.15 */
    buf[0x211] = 0x01;                      /* LOADED_HIGH */
    stl_le_p(buf + 0x22c, 0x37ffffff);      /* initrd_addr_max */
}

static char *write_image(const char *name, uint8_t seed)
{
    uint8_t buf[IMAGE_BYTES];
    char *path = g_build_filename(tmpdir, name, NULL);

    make_image(buf, seed);
    g_assert_true(g_file_set_contents(path, (char *)buf, sizeof(buf), NULL));
    return path;
}

/* Write other bytes over the file, in place: same inode, same size. */
static void rewrite_in_place(const char *path)
{
    uint8_t buf[IMAGE_BYTES];
    int fd = open(path, O_WRONLY);

    g_assert_cmpint(fd, >=, 0);
    make_image(buf, 0x5a);
    g_assert_cmpint(pwrite(fd, buf, sizeof(buf), 0), ==, sizeof(buf));
    close(fd);
}

static void truncate_in_place(const char *path)
{
    g_assert_cmpint(truncate(path, 0), ==, 0);
}

/* Put another image at path by renaming a new file over it. */
static void replace_by_rename(const char *path)
{
    g_autofree char *tmp = write_image("new-image", 0x33);

    g_assert_cmpint(rename(tmp, path), ==, 0);
}

static QTestState *start(const char *image, bool incoming)
{
    return qtest_initf("-M pc -nodefaults -no-shutdown -kernel %s%s", image,
                       incoming ? " -incoming defer" : "");
}

/* The kernel entries of fw_cfg hold the image made with seed 0x11. */
static void check_kernel_entries(QTestState *qts)
{
    QFWCFG *fw_cfg = pc_fw_cfg_init(qts);
    uint8_t want[IMAGE_BYTES], got[IMAGE_BYTES];

    make_image(want, 0x11);
    g_assert_cmpint(qfw_cfg_get_u32(fw_cfg, FW_CFG_KERNEL_SIZE), ==,
                    IMAGE_BYTES - SETUP_BYTES);
    qfw_cfg_get(fw_cfg, FW_CFG_KERNEL_DATA, got, IMAGE_BYTES - SETUP_BYTES);
    g_assert_true(!memcmp(got, want + SETUP_BYTES,
                          IMAGE_BYTES - SETUP_BYTES));
    memset(got, 0, sizeof(got));
    g_assert_cmpint(qfw_cfg_get_file(fw_cfg, "etc/boot/kernel", got,
                                     sizeof(got)), ==, IMAGE_BYTES);
    g_assert_true(!memcmp(got, want, IMAGE_BYTES));
    pc_fw_cfg_uninit(fw_cfg);
}

/*
 * Resident KiB of qts's mappings of path (-1 if none): /proc/PID/smaps
 * holds an "Rss:" line after each mapping's header line.
 */
static long mapped_rss(QTestState *qts, const char *path)
{
    g_autofree char *smaps = g_strdup_printf("/proc/%d/smaps",
                                             (int)qtest_pid(qts));
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    bool in = false;
    const char *end;
    long rss = -1;
    int i;

    g_assert_true(g_file_get_contents(smaps, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (i = 0; lines[i]; i++) {
        char *l = lines[i];

        const char *sp = strchr(l, ' ');

        if (sp && memchr(l, '-', sp - l) && !memchr(l, ':', sp - l)) {
            /* a mapping's header line: range, perms, ..., path */
            in = g_str_has_suffix(l, path) &&
                 l[strlen(l) - strlen(path) - 1] == ' ';
        } else if (in && g_str_has_prefix(l, "Rss:")) {
            long kib;

            g_assert_cmpint(qemu_strtol(l + 4, &end, 10, &kib), ==, 0);
            rss = MAX(rss, 0) + kib;
        }
    }
    return rss;
}

/* What a test case does to the image file while QEMU runs. */
typedef struct Change {
    void (*fn)(const char *path);
} Change;

static const Change truncated = { truncate_in_place };
static const Change rewritten = { rewrite_in_place };
static const Change replaced = { replace_by_rename };
static const Change unchanged = { NULL };

/* A VM started without -incoming boots the image as it was at start. */
static void test_boot(gconstpointer data)
{
    const Change *change = data;
    g_autofree char *image = write_image("image", 0x11);
    QTestState *qts = start(image, false);

    change->fn(image);
    check_kernel_entries(qts);
    qtest_quit(qts);
    unlink(image);
}

/*
 * A VM started with -incoming maps the image and has none of it resident
 * until the guest reads it; then it reads the image that was mapped, also
 * when the file was replaced by rename.
 */
static void test_incoming(gconstpointer data)
{
    const Change *change = data;
    g_autofree char *image = write_image("image", 0x11);
    QTestState *qts = start(image, true);

    g_assert_cmpint(mapped_rss(qts, image), ==, 0);
    if (change->fn) {
        change->fn(image);
    }
    check_kernel_entries(qts);
    qtest_quit(qts);
    unlink(image);
}

/*
 * A VM started with -incoming whose image file was modified or truncated
 * in place shuts down when its guest selects the image, and stays alive
 * (-no-shutdown) without reading the file through the mapping.
 */
static void test_incoming_changed(gconstpointer data)
{
    const Change *change = data;
    g_autofree char *image = write_image("image", 0x11);
    QTestState *qts = start(image, true);
    QFWCFG *fw_cfg = pc_fw_cfg_init(qts);
    uint8_t got[IMAGE_BYTES - SETUP_BYTES];
    QDict *ev;
    int round;

    change->fn(image);
    /* the first boot, then another one after the refusal */
    for (round = 0; round < 2; round++) {
        memset(got, 0xff, sizeof(got));
        qfw_cfg_get(fw_cfg, FW_CFG_KERNEL_DATA, got, sizeof(got));
        /* neither image: the guest gets nothing of a changed file */
        g_assert_true(buffer_is_zero(got, sizeof(got)));
        ev = qtest_qmp_eventwait_ref(qts, "SHUTDOWN");
        g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"),
                                      "reason"), ==, "host-error");
        qobject_unref(ev);
    }
    pc_fw_cfg_uninit(fw_cfg);
    qtest_quit(qts);
    unlink(image);
}

static void remove_tmpdir(void *unused)
{
    GDir *dir = g_dir_open(tmpdir, 0, NULL);
    const char *name;

    while (dir && (name = g_dir_read_name(dir))) {
        g_autofree char *path = g_build_filename(tmpdir, name, NULL);

        unlink(path);
    }
    if (dir) {
        g_dir_close(dir);
    }
    rmdir(tmpdir);
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    if (!qtest_has_machine("pc")) {
        return 0;
    }
    tmpdir = g_dir_make_tmp("x86-kernel-image-test-XXXXXX", NULL);
    g_assert_nonnull(tmpdir);
    qtest_add_abrt_handler(remove_tmpdir, NULL);

    qtest_add_data_func("/x86/kernel-image/boot/truncated", &truncated,
                        test_boot);
    qtest_add_data_func("/x86/kernel-image/boot/rewritten", &rewritten,
                        test_boot);
    qtest_add_data_func("/x86/kernel-image/incoming/unchanged", &unchanged,
                        test_incoming);
    qtest_add_data_func("/x86/kernel-image/incoming/replaced", &replaced,
                        test_incoming);
    qtest_add_data_func("/x86/kernel-image/incoming/truncated", &truncated,
                        test_incoming_changed);
    qtest_add_data_func("/x86/kernel-image/incoming/rewritten", &rewritten,
                        test_incoming_changed);

    ret = g_test_run();
    remove_tmpdir(NULL);
    g_free(tmpdir);
    return ret;
}
