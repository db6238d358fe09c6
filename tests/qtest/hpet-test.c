/*
 * QTest testcase for the HPET: a periodic timer whose interrupt is
 * disabled.
 *
 * Such a timer has no visible effect but on its comparator, so QEMU does
 * not re-arm it (Linux leaves timer 0 like this once it uses the LAPIC
 * timer).  These tests check that the comparator still reads as if the
 * timer ran, that enabling the interrupt brings the interrupts back, and
 * that the state migrates.  They also check that bringing the comparator
 * of a timer parked for a year up to date takes one step, not one per
 * period, and that this step gives what adding the period one period at
 * a time gives, down to the wrap-arounds.
 *
 * Copyright (c) 2026 The QEMU VM templating series authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bitops.h"
#include "libqtest.h"
#include "qobject/qdict.h"

#define HPET_BASE           0xfed00000ULL
#define HPET_ID             0x000
#define HPET_CFG            0x010
#define HPET_COUNTER        0x0f0
#define HPET_TN_CFG(n)      (0x100 + 0x20 * (n))
#define HPET_TN_CMP(n)      (0x108 + 0x20 * (n))

#define HPET_CFG_ENABLE     0x001
#define HPET_CFG_LEGACY     0x002
#define HPET_TN_TYPE_LEVEL  0x002
#define HPET_TN_ENABLE      0x004
#define HPET_TN_PERIODIC    0x008
#define HPET_TN_SETVAL      0x040
#define HPET_TN_32BIT       0x100
#define HPET_TN_ROUTE_SHIFT 9

/* i440FX boards route the HPET's timers to IOAPIC pin 2 only. */
#define TEST_GSI            2

/* 10 us at the HPET's 100 MHz: far below any other device's timer. */
#define PERIOD_TICKS        1000
#define STEPS               8

/* The HPET counts at 100 MHz: one tick is 10 ns. */
#define TICK_NS             10
#define DAY_NS              (86400 * 1000000000LL)

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

/* A temporary file for a migration, removed even if the test fails. */
typedef struct StateFile {
    char *dir;
    char *file;
    char *uri;
} StateFile;

static void state_file_remove(void *opaque)
{
    StateFile *f = opaque;

    unlink(f->file);
    rmdir(f->dir);
}

static void state_file_init(StateFile *f)
{
    f->dir = g_dir_make_tmp("hpet-test-XXXXXX", NULL);
    g_assert(f->dir);
    f->file = g_build_filename(f->dir, "state", NULL);
    f->uri = g_strdup_printf("file:%s", f->file);
    qtest_add_abrt_handler(state_file_remove, f);
}

static void state_file_cleanup(StateFile *f)
{
    qtest_remove_abrt_handler(f);
    state_file_remove(f);
    g_free(f->dir);
    g_free(f->file);
    g_free(f->uri);
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
    StateFile f;
    QTestState *src, *dst;

    state_file_init(&f);
    src = qtest_init("-machine pc -nodefaults");
    start_disabled_periodic_timer(src);
    qtest_clock_step(src, 2000000);
    qtest_qmp_assert_success(src, "{ 'execute': 'migrate',"
                             "  'arguments': { 'uri': %s } }", f.uri);
    wait_migration(src);
    qtest_quit(src);

    dst = qtest_initf("-machine pc -nodefaults -incoming %s", f.uri);
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
    state_file_cleanup(&f);
}

/*
 * What hpet_timer() did to a periodic comparator at each expiration,
 * one period at a time: add the period until the counter is no longer
 * after the comparator, comparing modulo 2^64.  A zero period is left
 * alone.  The cases below take a few steps at most.
 */
static uint64_t loop_catch_up(uint64_t cmp64, uint64_t counter,
                              uint64_t period)
{
    unsigned n = 0;

    if (period == 0) {
        return cmp64;
    }
    while ((int64_t)(cmp64 - counter) < 0) {
        cmp64 += period;
        g_assert_cmpuint(++n, <, 1000000);
    }
    return cmp64;
}

/*
 * The same as loop_catch_up(), in one step, where the comparator is at
 * most 2^63 ticks behind and the period is small: the first cmp64 + k *
 * period that is not below the counter.
 */
static uint64_t first_expiry_from(uint64_t cmp64, uint64_t counter,
                                  uint64_t period)
{
    if (counter <= cmp64) {
        return cmp64;
    }
    return cmp64 + (counter - cmp64 + period - 1) / period * period;
}

/*
 * Set up timer @n, with the HPET disabled: periodic, its interrupt
 * disabled and edge-triggered, comparator @cmp, period @period, in
 * 32-bit mode if @bits32.
 */
static void setup_timer(QTestState *qts, int n, bool bits32, uint64_t cmp,
                        uint64_t period)
{
    uint64_t mode = HPET_TN_PERIODIC | (bits32 ? HPET_TN_32BIT : 0);

    hpet_writeq(qts, HPET_TN_CFG(n), mode | HPET_TN_SETVAL);
    hpet_writeq(qts, HPET_TN_CMP(n), cmp);       /* comparator and period */
    hpet_writeq(qts, HPET_TN_CMP(n), period);    /* the period alone */
    g_assert_cmphex(hpet_readq(qts, HPET_TN_CFG(n)) &
                    (HPET_TN_PERIODIC | HPET_TN_32BIT | HPET_TN_SETVAL |
                     HPET_TN_ENABLE), ==, mode);
}

/*
 * In legacy replacement mode the PIT stops, so that stepping the clock
 * by a year runs no timer at all: timer 0 would take the PIT's interrupt,
 * as it does under Linux, but its interrupt is disabled.
 */
static void enable_hpet(QTestState *qts, uint64_t counter)
{
    hpet_writeq(qts, HPET_COUNTER, counter);
    hpet_writeq(qts, HPET_CFG, HPET_CFG_ENABLE | HPET_CFG_LEGACY);
}

typedef struct CatchUpCase {
    const char *name;
    bool bits32;
    uint64_t counter;           /* when the HPET is enabled */
    uint64_t cmp;
    uint64_t period;
    int64_t step_ns[6];         /* 0 ends the list */
} CatchUpCase;

/*
 * In each case the timer parks at its first expiration (but for a zero
 * period), and QEMU brings its comparator up to date there and at each
 * read; the test does so with loop_catch_up() at each read.  With a
 * period up to 2^63, catching up at one tick and then at a later one
 * gives the same as catching up at the later one alone, so the two
 * agree whenever the first expiration comes.  With a larger period they
 * agree only if the first read comes at the tick of the first
 * expiration: those cases start with the comparator behind, so that the
 * timer expires at once, and a first step of 1 ns, which runs expired
 * timers before it moves the clock and leaves the counter on its tick;
 * or they step right to the first expiration.
 */
static const CatchUpCase catch_up_cases[] = {
    {
        "behind, period not dividing the elapsed time",
        false, 1000000, 1000000 - 100, 7,
        { 10, 30, 70, 1000, 12345 },
    }, {
        "ahead, then past by exactly one period",
        false, 1000000, 1000000 + 50, 7,
        { 100, 500, 70, 10, 1230 },
    }, {
        "32-bit mode, the comparator wraps",
        true, 0xfffffff0ULL, 0xfffffffaULL, 7,
        { 100, 100, 100, 1000, 77770 },
    }, {
        "32-bit mode, the comparator below the counter's low half",
        true, 0x100000010ULL, 5, 0x10000,
        { 43000000000LL, 10, 655360, 655350, 123456789 },
    }, {
        "64-bit comparator wrapping at 2^64",
        false, 100, 0ULL - 20, 50,
        { 10, 500, 490, 10 },
    }, {
        "period 2^63 + 1",
        false, 1000000, 1000000 - 1, (1ULL << 63) + 1,
        { 1, 10, 10, 20, 50 },
    }, {
        "period 3 * 2^62",
        false, 1000000, 1000000 - 1, 3ULL << 62,
        { 1, 10, 30 },
    }, {
        "period 2^64 - 3, the comparator 2^63 - 5 behind",
        false, 1000000, 1000000 + (1ULL << 63) + 5, 0ULL - 3,
        { 50, 10, 10, 10 },
    }, {
        "period 0",
        false, 1000000, 1000000 + 10, 0,
        { 1000, 1000 },
    },
};

static void test_catch_up(const void *opaque)
{
    const CatchUpCase *c = opaque;
    QTestState *qts = qtest_init("-machine pc -nodefaults");
    uint64_t cmp64 = c->cmp;
    int i;

    g_test_message("%s", c->name);
    /*
     * hpet_arm() puts a periodic timer's deadline 1 us or more after its
     * previous one, 0 at first: with the clock at 1 ms, a comparator
     * behind the counter still expires at once.
     */
    qtest_clock_step(qts, 1000000);
    setup_timer(qts, 0, c->bits32, c->cmp, c->period);
    if (c->bits32) {
        /* The expiration that matches the low half, not before the counter */
        cmp64 = deposit64(c->counter, 0, 32, c->cmp);
        if (cmp64 < c->counter) {
            cmp64 += 1ULL << 32;
        }
    }
    enable_hpet(qts, c->counter);

    for (i = 0; i < ARRAY_SIZE(c->step_ns) && c->step_ns[i]; i++) {
        uint64_t counter, cmp;

        qtest_clock_step(qts, c->step_ns[i]);
        counter = hpet_readq(qts, HPET_COUNTER);
        cmp = hpet_readq(qts, HPET_TN_CMP(0));
        cmp64 = loop_catch_up(cmp64, counter, c->period);
        g_test_message("counter 0x%" PRIx64 " comparator 0x%" PRIx64,
                       counter, cmp);
        g_assert_cmphex(cmp, ==, c->bits32 ? (uint32_t)cmp64 : cmp64);
    }
    qtest_quit(qts);
}

/*
 * Three timers parked for a year: one period at a time, bringing timer
 * 0's comparator up to date would take 3 * 10^15 steps, weeks of CPU
 * time.  Each read gives the exact value right away, and so do disabling
 * the HPET and migrating, which bring all three up to date.
 */
static void test_long_park(void)
{
    static const struct {
        bool bits32;
        uint64_t cmp, period;
    } t[3] = {
        { false, 1, 1 },                 /* the shortest period */
        { true, 5, 3 },                  /* 32-bit: the register wraps */
        { false, 100000, 100000 },       /* Linux's HZ=1000 */
    };
    QTestState *qts, *dst;
    StateFile f;
    uint64_t counter, want;
    int pass, n;

    qts = qtest_init("-machine pc -nodefaults");
    qtest_clock_step(qts, 1000000);
    for (n = 0; n < 3; n++) {
        setup_timer(qts, n, t[n].bits32, t[n].cmp, t[n].period);
    }
    enable_hpet(qts, 0);
    /* Each timer expires once and parks. */
    qtest_clock_step(qts, 2 * 100000 * TICK_NS);

    for (pass = 0; pass < 2; pass++) {
        qtest_clock_step(qts, 365 * DAY_NS + 1234567);
        counter = hpet_readq(qts, HPET_COUNTER);
        g_test_message("counter %" PRIu64, counter);
        g_assert_cmpuint(counter, >, 365 * DAY_NS / TICK_NS);
        for (n = 0; n < 3; n++) {
            want = first_expiry_from(t[n].cmp, counter, t[n].period);
            g_assert_cmphex(hpet_readq(qts, HPET_TN_CMP(n)), ==,
                            t[n].bits32 ? (uint32_t)want : want);
        }
    }

    /* Disabling the HPET stops the counter and brings timers up to date. */
    qtest_clock_step(qts, 365 * DAY_NS + 7654321);
    hpet_writeq(qts, HPET_CFG, HPET_CFG_LEGACY);
    counter = hpet_readq(qts, HPET_COUNTER);
    for (n = 0; n < 3; n++) {
        want = first_expiry_from(t[n].cmp, counter, t[n].period);
        g_assert_cmphex(hpet_readq(qts, HPET_TN_CMP(n)), ==,
                        t[n].bits32 ? (uint32_t)want : want);
    }

    /* Saving the device does so too, after another year parked. */
    hpet_writeq(qts, HPET_CFG, HPET_CFG_ENABLE | HPET_CFG_LEGACY);
    qtest_clock_step(qts, 2 * 100000 * TICK_NS);
    qtest_clock_step(qts, 365 * DAY_NS + 333);
    counter = hpet_readq(qts, HPET_COUNTER);
    state_file_init(&f);
    qtest_qmp_assert_success(qts, "{ 'execute': 'migrate',"
                             "  'arguments': { 'uri': %s } }", f.uri);
    wait_migration(qts);
    qtest_quit(qts);

    dst = qtest_initf("-machine pc -nodefaults -incoming %s", f.uri);
    wait_migration(dst);
    /* The comparators as saved, before the destination's clock moves. */
    for (n = 0; n < 3; n++) {
        want = first_expiry_from(t[n].cmp, counter, t[n].period);
        g_assert_cmphex(hpet_readq(dst, HPET_TN_CMP(n)), ==,
                        t[n].bits32 ? (uint32_t)want : want);
    }
    qtest_quit(dst);
    state_file_cleanup(&f);
}

int main(int argc, char **argv)
{
    int i;

    g_test_init(&argc, &argv, NULL);

    qtest_add_func("/hpet/periodic/disabled", test_disabled_periodic);
    qtest_add_func("/hpet/periodic/disabled/migrate",
                   test_disabled_periodic_migrate);
    qtest_add_func("/hpet/periodic/disabled/long-park", test_long_park);
    for (i = 0; i < ARRAY_SIZE(catch_up_cases); i++) {
        g_autofree char *path =
            g_strdup_printf("/hpet/periodic/disabled/catch-up/%d", i);

        qtest_add_data_func(path, &catch_up_cases[i], test_catch_up);
    }

    return g_test_run();
}
