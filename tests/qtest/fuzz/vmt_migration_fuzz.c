/*
 * Fuzz the incoming migration stream of VM templates and mapped-ram files
 *
 * Each input is loaded with qemu_loadvm_state(), as a clone loads its
 * template's state, into a small pc machine whose RAM is either the
 * memory file of a template (bypass-shared-memory, mapped privately) or
 * anonymous, with mapped-ram loaded by copy or by map.  The load runs in a
 * child process forked for each input, so that every input starts from
 * the same machine: a load changes RAM mappings, registers the
 * bypass-shared-memory sections and disables RAM discard, none of which
 * can be undone.  The child hands its coverage counters back to the
 * parent, in which libFuzzer runs.
 *
 * The machine must be the one that made the seeds: the files it uses (the
 * template's memory file, whose identity the streams record, and a small
 * BIOS) are in $VMT_FUZZ_DIR, made by tests/qtest/fuzz/vmt-make-seeds.py.
 *
 * Inputs:
 * - vmt-migration-bypass: a migration stream, as written by migrate;
 * - the mapped-ram targets: a mapped-ram file, whose page regions are
 *   mostly holes, as the list of its data extents (see vmt_write_sparse()).
 *   The seeds come with and without this series' extension record after
 *   each bitmap (migration/mapped-ram-ext.c): with a record that checks
 *   out, the map loader maps the pages and is done; without one, it walks
 *   the file's data extents.
 *
 * Set VMT_FUZZ_VERBOSE=1 to see what QEMU prints while loading an input.
 *
 * Copyright (c) 2026 VM templating series
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"

#include <sys/prctl.h>
#include <sys/wait.h>

#include "qemu/bswap.h"
#include "qemu/compiler.h"
#include "qemu/memfd.h"
#include "exec/cpu-common.h"
#include "io/channel-file.h"
#include "migration/migration.h"
#include "migration/qemu-file.h"
#include "migration/savevm.h"
#include "fuzz.h"
#include "vmt-sancov.h"

/* Not migration code: the harness looks at every RAM block after a load. */
#undef qemu_ram_foreach_block

#if defined(QEMU_SANITIZE_ADDRESS)
#include <sanitizer/common_interface_defs.h>
#endif

/* Guest RAM of the fuzzed machine (and of the one that made the seeds). */
#define VMT_FUZZ_RAM "4M"

/* Offsets of the extents of a mapped-ram input wrap at this size. */
#define VMT_FUZZ_MAX_FILE (64 * MiB)

typedef struct VmtFuzzConfig {
    bool template_ram;          /* RAM is the template's memory file */
    const char *mapped_ram_load;    /* NULL: no mapped-ram, else copy/map */
} VmtFuzzConfig;


typedef struct VmtShared {
    uint32_t done;              /* the child copied its counters */
    uint8_t counters[];
} VmtShared;

static struct {
    const VmtFuzzConfig *cfg;
    size_t nr_counters;
    VmtShared *shared;          /* MAP_SHARED: written by the child */
    bool verbose;
} vmt;

static GString *vmt_cmdline(FuzzTarget *t)
{
    const VmtFuzzConfig *cfg = t->opaque;
    const char *dir = getenv("VMT_FUZZ_DIR");
    GString *cmd;

    if (!dir) {
        fprintf(stderr, "%s: set VMT_FUZZ_DIR to the folder made by "
                "tests/qtest/fuzz/vmt-make-seeds.py\n", t->name);
        exit(1);
    }
    vmt.cfg = cfg;
    vmt.verbose = getenv("VMT_FUZZ_VERBOSE") != NULL;

    /* As vmt-make-seeds.py starts the source, but a clone: -incoming. */
    cmd = g_string_new(TARGET_NAME);
    g_string_append_printf(cmd, " -machine pc,suppress-vmdesc=on"
                           " -accel qtest -m " VMT_FUZZ_RAM " -nodefaults"
                           " -display none -bios %s/bios.bin"
                           " -incoming defer", dir);
    if (cfg->template_ram) {
        g_string_append_printf(cmd, " -object memory-backend-file,id=mem0,"
                               "size=" VMT_FUZZ_RAM ",mem-path=%s/template.mem,"
                               "share=off,readonly=on,rom=off"
                               " -machine memory-backend=mem0", dir);
    }
    if (cfg->mapped_ram_load) {
        g_string_append_printf(cmd, " -global migration.mapped-ram=on"
                               " -global migration.mapped-ram-load=%s",
                               cfg->mapped_ram_load);
    }
    return cmd;
}

static void vmt_pre_fuzz(QTestState *s)
{
    size_t len = 0;

    if (__start___sancov_cntrs && __stop___sancov_cntrs) {
        len = __stop___sancov_cntrs - __start___sancov_cntrs;
    }
    vmt.nr_counters = len;
    vmt.shared = mmap(NULL, sizeof(VmtShared) + len, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (vmt.shared == MAP_FAILED) {
        perror("vmt-migration: mmap");
        abort();
    }
    if (vmt.verbose) {
        fprintf(stderr, "vmt-migration: %zu coverage counters\n", len);
    }
}

static bool vmt_write_all(int fd, const uint8_t *buf, size_t len, off_t off)
{
    while (len) {
        ssize_t n = pwrite(fd, buf, len, off);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        buf += n;
        len -= n;
        off += n;
    }
    return true;
}

/*
 * A mapped-ram file is mostly holes (zero pages, 1 MiB alignment of the
 * page regions): its input is the list of its data extents, each
 *     be64 offset, be32 length, then length bytes
 * the last one cut short at the end of the input, offsets taken modulo
 * VMT_FUZZ_MAX_FILE.  What is not written reads as zero.
 */
static bool vmt_write_sparse(int fd, const uint8_t *data, size_t size)
{
    while (size >= 12) {
        uint64_t off = ldq_be_p(data) % VMT_FUZZ_MAX_FILE;
        size_t len = MIN(ldl_be_p(data + 8), size - 12);

        if (!vmt_write_all(fd, data + 12, len, off)) {
            return false;
        }
        data += 12 + len;
        size -= 12 + len;
    }
    return true;
}

/* Touch every page of guest RAM: a page mapped past a file's end faults. */
static int vmt_touch_block(RAMBlock *rb, void *opaque)
{
    volatile uint8_t *host = qemu_ram_get_host_addr(rb); /* really read */
    ram_addr_t len = qemu_ram_get_used_length(rb);
    uint64_t *sum = opaque;
    ram_addr_t off;

    for (off = 0; off < len; off += qemu_real_host_page_size()) {
        *sum += host[off];
    }
    return 0;
}

static void G_GNUC_NORETURN vmt_child(const uint8_t *data, size_t size)
{
    MigrationIncomingState *mis = migration_incoming_get_current();
    QIOChannelFile *fioc;
    QEMUFile *f;
    uint64_t sum = 0;
    bool ok;
    int fd, ret;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (!vmt.verbose) {
        /* Errors of the load are expected; sanitizer reports are not. */
        int err = dup(STDERR_FILENO);
        int null = open("/dev/null", O_WRONLY);

        if (err >= 0 && null >= 0) {
#if defined(QEMU_SANITIZE_ADDRESS)
            __sanitizer_set_report_fd((void *)(intptr_t)err);
#endif
            dup2(null, STDERR_FILENO);
            close(null);
        }
    }

    fd = memfd_create("vmt-fuzz-stream", MFD_CLOEXEC);
    if (fd < 0) {
        perror("vmt-migration: memfd_create");
        _exit(2);
    }
    if (vmt.cfg->mapped_ram_load) {
        ok = vmt_write_sparse(fd, data, size);
    } else {
        ok = vmt_write_all(fd, data, size, 0);
    }
    if (!ok) {
        perror("vmt-migration: writing the input");
        _exit(2);
    }

    /* As file: migration does, and as loadvm sets from_src_file. */
    fioc = qio_channel_file_new_fd(fd);
    f = qemu_file_new_input(QIO_CHANNEL(fioc));
    object_unref(OBJECT(fioc));
    mis->from_src_file = f;
    ret = qemu_loadvm_state(f);
    if (ret == 0) {
        qemu_ram_foreach_block(vmt_touch_block, &sum);
    }
    if (vmt.verbose) {
        fprintf(stderr, "vmt-migration: load %s (%d)\n",
                ret ? "failed" : "succeeded", ret);
    }

    /* Hand the coverage of this run to libFuzzer, in the parent. */
    if (vmt.nr_counters) {
        memcpy(vmt.shared->counters, __start___sancov_cntrs, vmt.nr_counters);
    }
    vmt.shared->done = 1;
    _exit(0);
}

static void vmt_fuzz(QTestState *s, const unsigned char *data, size_t size)
{
    int status;
    pid_t pid;

    vmt.shared->done = 0;
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        perror("vmt-migration: fork");
        abort();
    }
    if (pid == 0) {
        vmt_child(data, size);
    }
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("vmt-migration: waitpid");
            abort();
        }
    }
    if (vmt.shared->done && vmt.nr_counters) {
        /* The child's counters started as ours: they are the union. */
        memcpy(__start___sancov_cntrs, vmt.shared->counters, vmt.nr_counters);
    }
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "vmt-migration: the load died of signal %d (%s)\n",
                WTERMSIG(status), strsignal(WTERMSIG(status)));
        abort();
    }
    if (WEXITSTATUS(status) != 0) {
        fprintf(stderr, "vmt-migration: the load exited with status %d "
                "(a sanitizer report, or QEMU exited)\n", WEXITSTATUS(status));
        abort();
    }
}

static const VmtFuzzConfig vmt_bypass = {
    .template_ram = true,
};
static const VmtFuzzConfig vmt_mapped_copy = {
    .mapped_ram_load = "copy",
};
static const VmtFuzzConfig vmt_mapped_map = {
    .mapped_ram_load = "map",
};
static const VmtFuzzConfig vmt_bypass_mapped_copy = {
    .template_ram = true,
    .mapped_ram_load = "copy",
};
static const VmtFuzzConfig vmt_bypass_mapped_map = {
    .template_ram = true,
    .mapped_ram_load = "map",
};

static void vmt_add_target(const char *name, const char *description,
                           const VmtFuzzConfig *cfg)
{
    fuzz_add_target(&(FuzzTarget){
        .name = name,
        .description = description,
        .get_init_cmdline = vmt_cmdline,
        .pre_fuzz = vmt_pre_fuzz,
        .fuzz = vmt_fuzz,
        .opaque = (void *)cfg,
    });
}

static void register_vmt_migration_fuzz_targets(void)
{
    vmt_add_target("vmt-migration-bypass",
                   "Load a migration stream into a clone of a "
                   "bypass-shared-memory template", &vmt_bypass);
    vmt_add_target("vmt-migration-mapped-ram-copy",
                   "Load a mapped-ram file (sparse extents) into anonymous "
                   "RAM with mapped-ram-load=copy", &vmt_mapped_copy);
    vmt_add_target("vmt-migration-mapped-ram-map",
                   "Load a mapped-ram file (sparse extents) into anonymous "
                   "RAM with mapped-ram-load=map", &vmt_mapped_map);
    vmt_add_target("vmt-migration-bypass-mapped-ram-copy",
                   "Load a mapped-ram file (sparse extents) into a clone of "
                   "a template with mapped-ram-load=copy",
                   &vmt_bypass_mapped_copy);
    vmt_add_target("vmt-migration-bypass-mapped-ram-map",
                   "Load a mapped-ram file (sparse extents) into a clone of "
                   "a template with mapped-ram-load=map",
                   &vmt_bypass_mapped_map);
}

fuzz_target_init(register_vmt_migration_fuzz_targets);
