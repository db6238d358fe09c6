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

/* True if @pid maps @path. */
bool vmt_process_maps(pid_t pid, const char *path);

#endif
