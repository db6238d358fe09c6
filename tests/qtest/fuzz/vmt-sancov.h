/*
 * The coverage counters of libFuzzer, for fuzz targets that run each input
 * in a forked child and copy its counters back to the parent
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef TESTS_QTEST_FUZZ_VMT_SANCOV_H
#define TESTS_QTEST_FUZZ_VMT_SANCOV_H

/*
 * The inline 8-bit counters of libFuzzer (-fsanitize-coverage=
 * inline-8bit-counters): the linker names the bounds of their section.
 * Weak: without the instrumentation, both are NULL.
 */
extern uint8_t __start___sancov_cntrs[] __attribute__((weak));
extern uint8_t __stop___sancov_cntrs[] __attribute__((weak));

#endif
