/*
 * Helpers shared by the VM templating qtests (vmt-*-test.c)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef TESTS_QTEST_VMT_UTIL_H
#define TESTS_QTEST_VMT_UTIL_H

#include "libqtest.h"
#include "migration/framework.h"

#define VMT_MEM_SIZE    "150M"
#define VMT_MEM_BYTES   (150 * 1024 * 1024)

/* Defined by migration/framework.c: the boot block's memory range. */
extern unsigned start_address;
extern unsigned end_address;

extern MigrationTestEnv *vmt_env;

/* Sets up the environment and the boot block; false if not x86. */
bool vmt_init(int *argc, char ***argv);
void vmt_cleanup(void);

/* A path in the test's temporary directory. */
char *vmt_path(const char *name);

/* False (test skipped) when VMT_QTEST_ACCEL=kvm and KVM is missing. */
bool vmt_accel_available(void);

/*
 * Arguments for the boot-block guest; @backend is the memory backend
 * without id and size (e.g. "memory-backend-ram"), @serial the name of
 * its serial log in the temporary directory.
 */
char *vmt_vm_args(const char *backend, const char *serial);

void vmt_wait_for_status(QTestState *who, const char *status);

/*
 * With the guest stopped, check the boot block's pattern (one byte per
 * page, all equal but for one step); returns the first byte.
 */
uint8_t vmt_check_pattern(QTestState *who);

char *vmt_file_sha256(const char *path);

/*
 * Run QEMU with @args (no qtest), which must exit non-zero with @expect
 * in its error output, the guest never having run a pass of the boot
 * block (which prints 'B' on @serial).
 */
void vmt_qemu_must_fail(const char *args, const char *serial,
                        const char *expect);

/* The same, with the QMP commands @qmp sent to QEMU's standard input. */
void vmt_qemu_must_fail_qmp(const char *args, const char *qmp,
                            const char *serial, const char *expect);

/*
 * The guest's boot code is in its RAM (at 0x7c00, where the boot block
 * runs): a VM whose RAM is not the template's has none.
 */
void vmt_check_boot_code(QTestState *who);

/* True if @pid maps @path. */
bool vmt_process_maps(pid_t pid, const char *path);

/*
 * The VmFlags of the mappings of @pid over the @length bytes of its
 * address space that start where it maps @offset of file @path, one line
 * per mapping.
 */
char *vmt_process_vmflags(pid_t pid, const char *path, uint64_t offset,
                          uint64_t length);

/* Editing saved streams, to test what a destination does with them. */
uint8_t *vmt_read_file(const char *path, size_t *len);
void vmt_write_file(const char *path, const uint8_t *buf, size_t len);

/*
 * A QEMU_VM_SECTION_FULL section of a saved stream, found by name:
 * the offset of its header (section type byte) and of its data.
 */
typedef struct VmtSection {
    size_t header;
    size_t data;
} VmtSection;

void vmt_find_section(const uint8_t *buf, size_t len, const char *name,
                      VmtSection *s);

/*
 * mapped-ram files of the boot-block guest (vmt-mapped-ram-test.c and
 * vmt-lazy-test.c).
 */
/* A page above the boot block's range: zero, its bit clear in the file. */
#define VMT_ZERO_PAGE_ADDR  (120 * 1024 * 1024)

typedef struct VmtSaveOpts {
    const char *backend;        /* NULL: anonymous RAM */
    bool multifd;
    bool ignore_shared;
    bool bypass;
    bool live;                  /* guest runs while dirty pages are saved */
    const char *extra;          /* more QEMU arguments */
} VmtSaveOpts;

typedef struct VmtLoadOpts {
    const char *backend;        /* NULL: anonymous RAM */
    const char *mode;           /* mapped-ram-load */
    const char *extra;          /* more QEMU arguments */
    bool multifd;
    bool ignore_shared;
} VmtLoadOpts;

void vmt_set_mapped_ram_caps(QTestState *who, bool multifd,
                             bool ignore_shared);

/* Save the running boot-block guest to a mapped-ram file. */
void vmt_save_fixed(const char *file, const VmtSaveOpts *o);

/* A VM that loads @file; returns once it runs. */
QTestState *vmt_load_fixed(const char *file, const VmtLoadOpts *o,
                           const char *serial);

/* The guest went on from the saved memory; leaves it stopped. */
void vmt_check_continues(QTestState *to, const char *serial);

/*
 * The mapped-ram header of RAM block @name (of @size bytes, @skip bytes
 * after its length: the GPA with x-ignore-shared) in @file: returns its
 * offset, and the offsets of the block's bitmap and pages.
 */
off_t vmt_find_block_header(const char *file, const char *name,
                            uint64_t size, size_t skip,
                            uint64_t *bitmap_offset, uint64_t *pages_offset);

/* The same, looking from offset @from of @file on. */
off_t vmt_find_block_header_from(const char *file, off_t from,
                                 const char *name, uint64_t size, size_t skip,
                                 uint64_t *bitmap_offset,
                                 uint64_t *pages_offset);

/* The same for the test guest's RAM block, mem0. */
off_t vmt_find_header(const char *file, uint64_t *bitmap_offset,
                      uint64_t *pages_offset);

void vmt_file_put_be64(const char *file, off_t off, uint64_t v);

/*
 * Write junk at the page of guest address @addr in a mapped-ram file
 * whose bitmap (at @bitmap_offset) says the page is not in the file, as a
 * live save leaves a page it wrote and then found zero.
 */
void vmt_put_stale_page(const char *file, uint64_t bitmap_offset,
                        uint64_t pages_offset, uint64_t addr);

/* QEMU, with mapped-ram-load=@mode, must refuse to load @file. */
void vmt_load_must_fail(const char *file, const char *backend,
                        const char *mode, const char *serial,
                        const char *expect);

/* 'migrate' to @uri must fail at once, with @expect in the error. */
void vmt_migrate_must_fail(QTestState *who, const char *uri,
                           const char *expect);

/*
 * Save the guest of @who (running) to @file, quit @who, then check that a
 * VM loading @file as @l says goes on from there.
 */
void vmt_save_and_load_again(QTestState *who, const char *file,
                             const VmtLoadOpts *l, const char *serial);

#endif
