/*
 * QTest testcase for the HPET: a periodic timer whose interrupt is
 * disabled.
 *
 * Such a timer has no visible effect but on its comparator, so QEMU does
 * not re-arm it (Linux leaves timer 0 like this once it uses the LAPIC
 * timer).  These tests check that the comparator still reads as if the
 * timer ran, that enabling the interrupt brings the interrupts back, and
 * that the state migrates.
 *
 * Copyright (c) 2026 The QEMU VM templating series authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "libqtest.h"
#include "qobject/qdict.h"

#define HPET_BASE           0xfed00000ULL
#define HPET_ID             0x000
#define HPET_CFG            0x010
#define HPET_COUNTER        0x0f0
#define HPET_TN_CFG(n)      (0x100 + 0x20 * (n))
#define HPET_TN_CMP(n)      (0x108 + 0x20 * (n))

#define HPET_CFG_ENABLE     0x001
#define HPET_TN_TYPE_LEVEL  0x002
#define HPET_TN_ENABLE      0x004
#define HPET_TN_PERIODIC    0x008
#define HPET_TN_SETVAL      0x040
#define HPET_TN_ROUTE_SHIFT 9

/* i440FX boards route the HPET's timers to IOAPIC pin 2 only. */
#define TEST_GSI            2

/* 10 us at the HPET's 100 MHz: far below any other device's timer. */
#define PERIOD_TICKS        1000
#define STEPS               8

static uint64_t hpet_readq(QTestState *qts, uint64_t reg)
{
    return qtest_readq(qts, HPET_BASE + reg);
}

static void hpet_writeq(QTestState *qts, uint64_t reg, uint64_t val)
{
    qtest_writeq(qts, HPET_BASE + reg, val);
}

static uint64_t hpet_period_ns(QTestState *qts)
{
    /* The counter period, in femtoseconds, is the ID's upper half. */
    return ((hpet_readq(qts, HPET_ID) >> 32) * PERIOD_TICKS) / 1000000;
}

/* Timer 0 periodic, its interrupt disabled, edge-triggered. */
static void start_disabled_periodic_timer(QTestState *qts)
{
    uint64_t cap = hpet_readq(qts, HPET_TN_CFG(0));

    g_assert(cap & (1ULL << 4));    /* periodic capable */
    hpet_writeq(qts, HPET_TN_CFG(0), HPET_TN_PERIODIC | HPET_TN_SETVAL);
    hpet_writeq(qts, HPET_TN_CMP(0), PERIOD_TICKS);
    hpet_writeq(qts, HPET_CFG, HPET_CFG_ENABLE);
}

/* The comparator holds the first expiry at or after the counter. */
static void check_comparator(QTestState *qts, uint64_t first)
{
    uint64_t counter = hpet_readq(qts, HPET_COUNTER);
    uint64_t cmp = hpet_readq(qts, HPET_TN_CMP(0));

    g_test_message("counter %" PRIu64 " comparator %" PRIu64, counter, cmp);
    g_assert_cmpuint((cmp - first) % PERIOD_TICKS, ==, 0);
    g_assert_cmpuint(cmp, >=, counter);
    g_assert_cmpuint(cmp, <=, counter + PERIOD_TICKS);
}

static void test_disabled_periodic(void)
{
    QTestState *qts = qtest_init("-machine pc -nodefaults");
    uint64_t period_ns = hpet_period_ns(qts);
    int64_t t0, t1;
    int i;

    g_assert_cmpuint(period_ns, ==, 10000);
    start_disabled_periodic_timer(qts);

    /*
     * The nearest deadline is never one of timer 0's expirations, which
     * would come every period_ns: nothing sees them.
     */
    t0 = qtest_clock_step(qts, 1);
    for (i = 0; i < STEPS; i++) {
        t1 = qtest_clock_step_next(qts);
        g_test_message("next deadline after %" PRId64 " ns", t1 - t0);
        if (t1 - t0 > period_ns) {
            break;
        }
        t0 = t1;
    }
    g_assert_cmpint(i, <, STEPS);

    /* Yet the comparator moves on as if the timer had run. */
    qtest_clock_step(qts, 123 * period_ns + 4567);
    check_comparator(qts, PERIOD_TICKS);
    qtest_clock_step(qts, 7 * period_ns);
    check_comparator(qts, PERIOD_TICKS);

    /* With its interrupt enabled, the timer interrupts again. */
    qtest_irq_intercept_in(qts, "ioapic");
    hpet_writeq(qts, HPET_TN_CFG(0), HPET_TN_PERIODIC | HPET_TN_ENABLE |
                HPET_TN_TYPE_LEVEL | (TEST_GSI << HPET_TN_ROUTE_SHIFT));
    g_assert_false(qtest_get_irq(qts, TEST_GSI));
    qtest_clock_step(qts, period_ns);
    g_assert_true(qtest_get_irq(qts, TEST_GSI));
    check_comparator(qts, PERIOD_TICKS);

    /* A periodic timer that only sets a status bit is armed as before. */
    hpet_writeq(qts, HPET_TN_CFG(0), HPET_TN_PERIODIC | HPET_TN_TYPE_LEVEL |
                (TEST_GSI << HPET_TN_ROUTE_SHIFT));
    t0 = qtest_clock_step(qts, 1);
    t1 = qtest_clock_step_next(qts);
    g_assert_cmpint(t1 - t0, <=, period_ns);

    qtest_quit(qts);
}

static void wait_migration(QTestState *qts)
{
    for (;;) {
        QDict *rsp = qtest_qmp_assert_success_ref(qts,
                                                  "{ 'execute': 'query-migrate' }");
        const char *status = qdict_get_try_str(rsp, "status");

        if (status && !strcmp(status, "completed")) {
            qobject_unref(rsp);
            return;
        }
        g_assert(!status || strcmp(status, "failed"));
        qobject_unref(rsp);
        g_usleep(10 * 1000);
    }
}

static void test_disabled_periodic_migrate(void)
{
    g_autofree char *dir = g_dir_make_tmp("hpet-test-XXXXXX", NULL);
    g_autofree char *file = g_build_filename(dir, "state", NULL);
    g_autofree char *uri = g_strdup_printf("file:%s", file);
    QTestState *src, *dst;

    g_assert(dir);
    src = qtest_init("-machine pc -nodefaults");
    start_disabled_periodic_timer(src);
    qtest_clock_step(src, 2000000);
    qtest_qmp_assert_success(src, "{ 'execute': 'migrate',"
                             "  'arguments': { 'uri': %s } }", uri);
    wait_migration(src);
    qtest_quit(src);

    dst = qtest_initf("-machine pc -nodefaults -incoming %s", uri);
    wait_migration(dst);

    /*
     * The destination's comparator moves on too: the source migrates the
     * timer armed, as a QEMU that does not park timers would.
     */
    qtest_clock_step(dst, 5000000 + 3 * PERIOD_TICKS * 10 + 1234);
    check_comparator(dst, PERIOD_TICKS);
    qtest_clock_step(dst, 1000000);
    check_comparator(dst, PERIOD_TICKS);
    qtest_quit(dst);

    unlink(file);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    qtest_add_func("/hpet/periodic/disabled", test_disabled_periodic);
    qtest_add_func("/hpet/periodic/disabled/migrate",
                   test_disabled_periodic_migrate);

    return g_test_run();
}
