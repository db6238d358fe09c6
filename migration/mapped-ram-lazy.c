/*
 * Load a mapped-ram file lazily, through userfaultfd
 *
 * mapped-ram-load=lazy (or, as upstream spells it, postcopy-ram with
 * mapped-ram on the destination) registers each RAM block that the file
 * holds with userfaultfd (missing mode) and lets the load go on without
 * reading a page.  A fault server (userfault.c) hands the faults of
 * QEMU's threads and of vhost-user back ends to this loader: a page
 * whose bit is set is read from its fixed offset in the file and placed
 * with UFFDIO_COPY, one whose bit is clear is placed with
 * UFFDIO_ZEROPAGE (no I/O, whatever the file holds there).  Once the VM
 * runs, a fill thread places every page not yet present, in file order;
 * when every page is placed, the RAM is unregistered and the load is
 * complete.
 *
 * The faults are recorded, in order: mapped-ram-save-working-set writes
 * those of the guest's first milliseconds to a file, and a later load
 * given it (mapped-ram-working-set) places those pages first, when the
 * guest starts, before the rest of the fill.
 *
 * Into private anonymous RAM, the fill builds each 2 MiB chunk that
 * holds pages of the file, and that no fault touched yet, in memory of
 * its own (a transparent huge page) and moves it in whole (UFFDIO_MOVE,
 * Linux 6.8): the guest gets the huge pages a copy load gives it.
 * postcopy-ram.c's own placing keeps the incoming migration's state
 * (received bitmaps, requested pages), which is freed once the device
 * state is loaded: a lazy load outlives it.
 *
 * Invariants:
 * - each page is placed exactly once: a thread places a page only after
 *   claiming its bit in the block's 'claimed' bitmap.  A fault on a page
 *   another thread claimed is woken by that thread's UFFDIO_COPY; a TCG
 *   vCPU or a back end's fault that needs it waits for its bit in
 *   'placed' (placed_cond);
 * - the load completes only when every page the load must place is
 *   placed: the fill waits for the pages others claimed.  Only then are
 *   the fault server stopped and the blocks unregistered; the
 *   userfaultfd, the file and the blocks are released after an RCU grace
 *   period, when no TLB fill (mapped_ram_lazy_tlb_fill()) can still
 *   look at them;
 * - a block's length is the one it had when it was registered: a block
 *   resized later (ACPI tables rebuilt at a reset) keeps its bitmaps,
 *   and the part that grew was never registered;
 * - zero pages of shared RAM (memfd, tmpfs, hugetlbfs with share=on)
 *   are not placed by the fill: the block was discarded at setup, so
 *   they are holes of the memory file that read as zero once
 *   unregistered, and placing them would allocate them.  A fault on one
 *   before that is served with a zero page; one that races with the
 *   unregistration finds the page there, or no longer registered, which
 *   is fine for a page that reads as zero either way;
 * - RAM that userfaultfd can register: anonymous, memfd, tmpfs or
 *   hugetlbfs, private or shared; a host page is placed whole: huge
 *   pages are built in a buffer from the file's target pages and zeroes
 *   (hugetlbfs has no ZEROPAGE);
 * - a page that cannot be read (I/O error, file truncated under the VM)
 *   is never replaced by another: the guest must not see wrong memory.
 *   It stops the VM for good (internal-error) and blocks migration.  A
 *   KVM vCPU that faulted on it through the MMU leaves the fault when it
 *   is asked to stop (KVM's fault is interruptible), and stops with the
 *   others.  A TCG vCPU does not fault on guest RAM through its TLB: TCG
 *   asks mapped_ram_lazy_tlb_fill() for each page before it maps it, and
 *   the vCPU places the page itself, or waits for whoever claimed it, or
 *   stops.  Any other thread (a TCG vCPU in a device's emulation, QEMU's
 *   own threads) waits in the kernel and cannot be stopped: QEMU exits
 *   at once.  The fault server makes sure the VM stops within
 *   LAZY_STOP_TIMEOUT_MS of a failure, or ends QEMU: never a hang.
 *   (KVM's instruction emulator reads guest memory with a plain copy,
 *   which faults again instead of leaving: under PVM, where the qtests'
 *   boot code is emulated, that is how it ends.)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/ioctl.h>
#include "qemu/bitops.h"
#include "qemu/error-report.h"
#include "qemu/madvise.h"
#include "qemu/units.h"
#include "qemu/lockable.h"
#include "qemu/main-loop.h"
#include "qemu/rcu.h"
#include "qemu/thread.h"
#include "qemu/userfaultfd.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-migration.h"
#include "qapi/qapi-events-migration.h"
#include "block/aio.h"
#include "exec/memory.h"
#include "exec/ramblock.h"
#include "exec/target_page.h"
#include "hw/core/cpu.h"
#include "system/hostmem.h"
#include "system/kvm.h"
#include "system/runstate.h"
#include "migration/blocker.h"
#include "migration/misc.h"
#include "migration.h"
#include "options.h"
#include "postcopy-ram.h"
#include "qemu-file.h"
#include "mapped-ram-map.h"
#include "mapped-ram-lazy.h"
#include "mapped-ram-working-set.h"
#include "userfault.h"
#include "trace.h"

/* Pages the fill thread reads with one pread(), and zeroes at once. */
#define LAZY_FILL_BATCH 64
#define LAZY_ZERO_BATCH 512
/* Anonymous private RAM is filled in chunks of a huge page, if it can. */
#define LAZY_CHUNK_SIZE (2 * MiB)
#define LAZY_CHUNK_PAGES (LAZY_CHUNK_SIZE >> TARGET_PAGE_BITS)
/* RAM blocks a lazy load handles (x86 VMs have about ten). */
#define RAM_BLOCKS_MAX  MAPPED_RAM_WS_MAX_BLOCKS
/* After a failure, the VM must stop within this time, or QEMU exits. */
#define LAZY_STOP_TIMEOUT_MS 2000
/* UFFDIO_* that placed nothing as the address space changed: retries. */
#define LAZY_EAGAIN_RETRIES 1000

typedef struct LazyBlock {
    RAMBlock *rb;
    unsigned index;             /* in lazy.blocks and lazy.names */
    long num_pages;             /* target pages the file holds */
    unsigned long *bitmap;      /* set: the target page is in the file */
    ram_addr_t length;          /* registered: used_length back then */
    long host_pages;            /* length / psize */
    size_t psize;               /* host page size of the block */
    long tpp;                   /* target pages per host page */
    unsigned long *claimed;     /* of host pages: placed, or being placed */
    unsigned long *placed;      /* of host pages: placed */
    bool move;                  /* anonymous private: chunks are moved in */
    bool shared;                /* zero pages are left as holes */
} LazyBlock;

/* A page the guest (or QEMU) touched before it was placed. */
typedef struct LazyTouch {
    uint64_t page;              /* MAPPED_RAM_WS_PAGE(block index, page) */
    uint32_t ms;                /* since the guest started; 0 before */
} LazyTouch;

/* Counters, atomic; they hold still once the load completed. */
typedef struct MappedRamLazyStats {
    uint64_t faults;            /* pages placed for a thread that waited */
    uint64_t fault_us;          /* ... and the time it waited */
    uint64_t remote_faults;     /* pages placed for a vhost-user back end */
    uint64_t copied;            /* target pages read from the file */
    uint64_t zeroed;            /* target pages placed as zero */
    uint64_t skipped;           /* zero pages of shared RAM left as holes */
    uint64_t prefetched;        /* pages of the working set placed */
    uint64_t moved;             /* chunks moved in (the fill thread's) */
} MappedRamLazyStats;

/* The load failed: the first failure, and the stop it asked for. */
typedef struct MappedRamLazyFailure {
    char *error;                /* the first failure's message, or NULL */
    bool reported;              /* ... was (main loop) */
    int64_t stop_deadline_us;   /* a stop is pending, due by then; or 0 */
} MappedRamLazyFailure;

typedef struct MappedRamLazyState {
    int uffd;
    int fd;                     /* our descriptor of the file */
    struct stat st;             /* of the file */
    GPtrArray *blocks;          /* of LazyBlock */
    GPtrArray *names;           /* of the blocks, in order */
    UserfaultServer server;
    bool serving;               /* the server runs */
    QemuThread fill_thread;
    bool fill_started;
    bool draining;              /* every page placed; unregistering */
    bool completed;
    uint8_t *fault_buf;         /* the fault server's, one target page */
    bool remote_asked;          /* the back ends were asked (ADVISE) */
    GPtrArray *remote_pcfds;    /* copies of their PostCopyFD */
    VMChangeStateEntry *vmstate;
    size_t max_psize;           /* the largest page size of guest RAM */
    uint64_t features;          /* of the kernel's userfaultfd */
    uint64_t total_pages;       /* target pages of the blocks */
    int64_t start_us;
    int64_t run_us;             /* when the guest started */
    int64_t fill_us;
    int64_t total_us;           /* set on completion */
    GArray *touched;            /* of LazyTouch; under touch_lock */
    QemuMutex touch_lock;
    /* lazy.blocks while the guest runs and the load goes on; RCU */
    GPtrArray *tlb_blocks;
    /* waiting for a page another thread claimed */
    QemuMutex placed_lock;
    QemuCond placed_cond;
    unsigned placed_waiters;    /* atomic */
    /*
     * huge pages placed for a fault (by the fault server, or a TCG vCPU):
     * one at a time, built here (NULL without blocks of huge pages)
     */
    QemuMutex huge_lock;
    uint8_t *huge_buf;
    MappedRamWorkingSet *ws;    /* to place first, or NULL */
    uint32_t place_delay_ms;    /* tests: hold a claimed page that long */
    MappedRamLazyStats stats;
    MappedRamLazyFailure failure;
} MappedRamLazyState;

static MappedRamLazyState lazy = {
    .uffd = -1, .fd = -1, .server = { .wake_fd = -1 },
};

static LazyBlock *lazy_find_block_in(GPtrArray *blocks, RAMBlock *rb)
{
    guint i;

    for (i = 0; i < blocks->len; i++) {
        LazyBlock *lb = g_ptr_array_index(blocks, i);

        if (lb->rb == rb) {
            return lb;
        }
    }
    return NULL;
}

static LazyBlock *lazy_find_block(RAMBlock *rb)
{
    return lazy_find_block_in(lazy.blocks, rb);
}

static void lazy_block_free(gpointer p)
{
    LazyBlock *lb = p;

    g_free(lb->bitmap);
    g_free(lb->claimed);
    g_free(lb->placed);
    g_free(lb);
}

/*
 * What a completed load still holds, released when no TLB fill can
 * look at it any more: a TCG vCPU that read lazy.tlb_blocks before the
 * completion may still use the blocks and the descriptors.
 */
typedef struct LazyRelease {
    struct rcu_head rcu;
    GPtrArray *blocks;
    int uffd;
    int fd;
    uint8_t *huge_buf;
} LazyRelease;

static void lazy_release_rcu(LazyRelease *r)
{
    g_ptr_array_unref(r->blocks);
    g_free(r->huge_buf);
    uffd_close_fd(r->uffd);
    close(r->fd);
    qatomic_set(&lazy.uffd, -1);
    qatomic_set(&lazy.fd, -1);
    g_free(r);
}

/*
 * A page cannot be placed, and the VM cannot be stopped without it.
 * _exit(), not exit(): exit()'s notifiers take the BQL, which the thread
 * that waits for the page may hold (the main loop reading guest memory),
 * and QEMU would hang instead of exiting.
 */
static void G_NORETURN G_GNUC_PRINTF(1, 2) lazy_fatal(const char *fmt, ...)
{
    g_autofree char *why = NULL;
    va_list ap;

    va_start(ap, fmt);
    why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    error_report("mapped-ram-load=lazy: %s; exiting", why);
    _exit(EXIT_FAILURE);
}

/* The VM stopped: no vCPU waits in a fault any more. */
static void lazy_stop_notify(void *opaque, bool running, RunState state)
{
    if (!running) {
        qatomic_set(&lazy.failure.stop_deadline_us, 0);
    }
}

/*
 * In the main loop, after a failure: stop the VM (it needs a reset to
 * run again); after the first, also refuse to save it, and say why.
 */
static void lazy_stop_bh(void *opaque)
{
    Error *blocker = NULL;

    if (runstate_is_running()) {
        qemu_system_vmstop_request_prepare();
        qemu_system_vmstop_request(RUN_STATE_INTERNAL_ERROR);
    } else {
        lazy_stop_notify(NULL, false, runstate_get());
    }
    if (lazy.failure.reported) {
        return;
    }
    lazy.failure.reported = true;
    qemu_add_vm_change_state_handler(lazy_stop_notify, NULL);
    error_setg(&blocker, "%s", lazy.failure.error);
    if (migrate_add_blocker(&blocker, NULL) < 0) {
        /* a save is running: it stops at the page, like the guest */
        error_free(blocker);
    }
    qapi_event_send_mapped_ram_lazy_failed(lazy.failure.error);
}

/*
 * Stop the VM, and have the fault server make sure it stops soon: a
 * thread that waits for a page that failed may keep it from stopping.
 * After every failure, as a reset VM may run into the page again; a
 * failure while a stop is pending (a vCPU that faults again and again)
 * neither asks again nor moves the deadline.
 */
static void lazy_request_stop(void)
{
    int64_t deadline = g_get_monotonic_time() + LAZY_STOP_TIMEOUT_MS * 1000;

    if (qatomic_cmpxchg(&lazy.failure.stop_deadline_us, 0, deadline)) {
        return;
    }
    aio_bh_schedule_oneshot(qemu_get_aio_context(), lazy_stop_bh, NULL);
    /* once every page is placed, the server is on its way out */
    if (!qatomic_read(&lazy.draining)) {
        userfault_server_kick(&lazy.server);
    }
}

/*
 * A page cannot be placed: the load failed.  The first failure is kept
 * (reported, in query-migrate and the event); each one stops the VM.
 * Returns false.
 */
static bool lazy_fail(RAMBlock *rb, long page, const char *why, int err)
{
    char *msg;

    trace_mapped_ram_lazy_failed(rb->idstr, page, err);
    /* a vCPU in KVM's emulator may fail thousands of times a second */
    if (!qatomic_read(&lazy.failure.error)) {
        msg = g_strdup_printf("mapped-ram-load=lazy: RAM block '%s', page "
                              "%ld: %s%s%s; the VM cannot go on without it",
                              rb->idstr, page, why, err ? ": " : "",
                              err ? strerror(err) : "");
        if (qatomic_cmpxchg(&lazy.failure.error, NULL, msg)) {
            g_free(msg);        /* another thread's came first */
        } else {
            error_report("%s", msg);
        }
    }
    lazy_request_stop();
    return false;
}

/* Whether host page @hp of @lb is present. */
static bool lazy_page_placed(LazyBlock *lb, long hp)
{
    return qatomic_read(&lb->placed[BIT_WORD(hp)]) & BIT_MASK(hp);
}

/* Whether host page @hp of @lb is claimed (placed, or being placed). */
static bool lazy_page_claimed(LazyBlock *lb, long hp)
{
    return qatomic_read(&lb->claimed[BIT_WORD(hp)]) & BIT_MASK(hp);
}

/* Claim host page @hp of @lb; false if another thread has it. */
static bool lazy_claim_page(LazyBlock *lb, long hp)
{
    unsigned long mask = BIT_MASK(hp);

    return !(qatomic_fetch_or(&lb->claimed[BIT_WORD(hp)], mask) & mask);
}

/* Wake the threads that wait for a page another thread claimed. */
static void lazy_wake_waiters(void)
{
    /* pairs with the barrier in lazy_wait_placer() */
    smp_mb();
    if (qatomic_read(&lazy.placed_waiters)) {
        QEMU_LOCK_GUARD(&lazy.placed_lock);
        qemu_cond_broadcast(&lazy.placed_cond);
    }
}

/* Give up host pages [first, first + n) of @lb, which were not placed. */
static void lazy_unclaim_pages(LazyBlock *lb, long first, long n)
{
    long p;

    for (p = first; p < first + n; p++) {
        qatomic_and(&lb->claimed[BIT_WORD(p)], ~BIT_MASK(p));
    }
    /* a waiter may claim them now */
    lazy_wake_waiters();
}

/* Host pages [first, first + n) of @lb are present. */
static void lazy_mark_placed(LazyBlock *lb, long first, long n)
{
    bitmap_set_atomic(lb->placed, first, n);
    lazy_wake_waiters();
}

/*
 * Wait until host page @hp of @lb, which another thread claimed, is
 * placed or given up.  Without polling: placers wake us.
 */
static void lazy_wait_placer(LazyBlock *lb, long hp)
{
    QEMU_LOCK_GUARD(&lazy.placed_lock);

    qatomic_inc(&lazy.placed_waiters);
    /* pairs with the barrier in lazy_wake_waiters() */
    smp_mb();
    while (!lazy_page_placed(lb, hp) && lazy_page_claimed(lb, hp)) {
        qemu_cond_wait(&lazy.placed_cond, &lazy.placed_lock);
    }
    qatomic_dec(&lazy.placed_waiters);
}

/*
 * Tests (x-mapped-ram-lazy-place-delay-ms): once the guest runs, a
 * thread that claimed a page for a fault holds it that long before
 * placing it, as a preempted vCPU on a busy host would.
 */
static void lazy_test_hold_claim(void)
{
    if (lazy.place_delay_ms && qatomic_read(&lazy.run_us)) {
        g_usleep(lazy.place_delay_ms * 1000ULL);
    }
}

/*
 * Place @len bytes at @host of @lb, from @src or as zero pages (NULL),
 * through partial placements.  @zero: the range holds no page of the
 * file.  Once every page is placed and the blocks are being
 * unregistered, only zero pages of shared RAM can still be placed: one
 * found there already or no longer registered reads as zero anyway.
 * Returns 0 or -errno.
 */
static int lazy_uffd_place(LazyBlock *lb, void *host, const void *src,
                           size_t len, bool zero)
{
    int tries = 0;
    int ret;

    do {
        uint64_t placed = 0;

        ret = uffd_place_range(lazy.uffd, host, src, len, false, &placed);
        host = (uint8_t *)host + placed;
        src = src ? (const uint8_t *)src + placed : NULL;
        len -= placed;
    } while (ret == -EAGAIN && ++tries < LAZY_EAGAIN_RETRIES &&
             (sched_yield(), true));
    if (ret && zero && lb->shared && qatomic_read(&lazy.draining) &&
        (ret == -EEXIST || ret == -ENOENT)) {
        trace_mapped_ram_lazy_zero_raced(lb->rb->idstr, ret);
        return 0;
    }
    return ret;
}

/*
 * Place target pages [first, first + n) of @lb, which the caller
 * claimed: from @buf (the file's pages, read already) or as zero pages
 * if @buf is NULL.  Either wakes the threads that fault on them.
 */
static bool lazy_place_pages(LazyBlock *lb, long first, long n, uint8_t *buf)
{
    void *host = lb->rb->host + ((size_t)first << TARGET_PAGE_BITS);
    int ret = lazy_uffd_place(lb, host, buf, (size_t)n << TARGET_PAGE_BITS,
                              !buf);

    if (ret) {
        return lazy_fail(lb->rb, first, ret == -ENOENT ?
                         "cannot place the page: the RAM is no longer "
                         "registered" : "cannot place the page",
                         ret == -ENOENT ? 0 : -ret);
    }
    lazy_mark_placed(lb, first, n);
    qatomic_add(buf ? &lazy.stats.copied : &lazy.stats.zeroed, n);
    return true;
}

/* Read @n pages of @lb from @first into @buf. */
static bool lazy_read_pages(LazyBlock *lb, long first, long n, uint8_t *buf)
{
    size_t len = n << TARGET_PAGE_BITS;
    off_t off = lb->rb->pages_offset + ((off_t)first << TARGET_PAGE_BITS);
    size_t done = 0;

    while (done < len) {
        ssize_t r = pread(lazy.fd, buf + done, len - done, off + done);

        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return lazy_fail(lb->rb, first,
                             "cannot read the page from the file", errno);
        }
        if (r == 0) {
            return lazy_fail(lb->rb, first + (done >> TARGET_PAGE_BITS),
                             "the file ends before the page (truncated?)",
                             0);
        }
        done += r;
    }
    return true;
}

/*
 * Build @n target pages of @lb from @first in @buf: the file's pages where
 * their bit is set, zeroes for the others.  Returns the number of pages
 * read, or -1 if the load failed.
 */
static long lazy_build_pages(LazyBlock *lb, long first, long n, uint8_t *buf)
{
    long end = first + n, in_file = MIN(end, lb->num_pages);
    long t = first, next, read = 0;

    while (t < end) {
        bool set = t < in_file && test_bit(t, lb->bitmap);
        uint8_t *at = buf + ((t - first) << TARGET_PAGE_BITS);

        if (t >= in_file) {
            next = end;
        } else if (set) {
            next = MIN(find_next_zero_bit(lb->bitmap, in_file, t), end);
        } else {
            next = MIN(find_next_bit(lb->bitmap, in_file, t), end);
        }
        if (set) {
            if (!lazy_read_pages(lb, t, next - t, at)) {
                return -1;
            }
            read += next - t;
        } else {
            memset(at, 0, (next - t) << TARGET_PAGE_BITS);
        }
        t = next;
    }
    return read;
}

/*
 * Place host page @hp of a block of huge pages, which the caller claimed:
 * built in @buf (psize bytes; hugetlbfs has no UFFDIO_ZEROPAGE) and
 * copied in at once.
 */
static bool lazy_place_huge(LazyBlock *lb, long hp, uint8_t *buf)
{
    long first = hp * lb->tpp;
    long read = lazy_build_pages(lb, first, lb->tpp, buf);
    int ret;

    if (read < 0) {
        return false;
    }
    ret = lazy_uffd_place(lb, lb->rb->host + hp * lb->psize, buf, lb->psize,
                          read == 0);
    if (ret) {
        return lazy_fail(lb->rb, first, "cannot place the page", -ret);
    }
    lazy_mark_placed(lb, hp, 1);
    qatomic_add(&lazy.stats.copied, read);
    qatomic_add(&lazy.stats.zeroed, lb->tpp - read);
    return true;
}

/* Whether the file has data for host page @hp of @lb. */
static bool lazy_host_page_in_file(LazyBlock *lb, long hp)
{
    long first = hp * lb->tpp;

    return first < lb->num_pages &&
           find_next_bit(lb->bitmap, MIN(first + lb->tpp, lb->num_pages),
                         first) < MIN(first + lb->tpp, lb->num_pages);
}

/*
 * Place host page @hp of @lb, which the caller claimed: from the file, or
 * zero.  On failure, the page is given up: whoever faults on it next
 * tries again, and fails again.
 */
static bool lazy_place_claimed(LazyBlock *lb, long hp, uint8_t *buf)
{
    bool ok;

    if (lb->tpp > 1) {
        ok = lazy_place_huge(lb, hp, buf);
    } else if (lazy_host_page_in_file(lb, hp)) {
        ok = lazy_read_pages(lb, hp, 1, buf) &&
             lazy_place_pages(lb, hp, 1, buf);
    } else {
        ok = lazy_place_pages(lb, hp, 1, NULL);
    }
    if (!ok) {
        lazy_unclaim_pages(lb, hp, 1);
    }
    return ok;
}

/*
 * For a thread that waits for target page @page of @lb: place its host
 * page, unless another thread claimed it.  Returns 1 if placed, 0 if
 * another thread has it, -1 if it cannot be placed (the load failed).
 */
static int lazy_place_for_fault(LazyBlock *lb, long page, uint8_t *buf)
{
    long hp = page / lb->tpp;

    if (!lazy_claim_page(lb, hp)) {
        return 0;
    }
    lazy_test_hold_claim();
    return lazy_place_claimed(lb, hp, buf) ? 1 : -1;
}

static void lazy_record_touch(LazyBlock *lb, long page, int64_t now)
{
    int64_t run_us = qatomic_read(&lazy.run_us);
    LazyTouch t = {
        .page = MAPPED_RAM_WS_PAGE(lb->index, page),
        .ms = run_us && now > run_us ? MIN((now - run_us) / 1000,
                                           UINT32_MAX) : 0,
    };

    QEMU_LOCK_GUARD(&lazy.touch_lock);
    if (lazy.touched->len < MAPPED_RAM_WS_MAX_PAGES) {
        g_array_append_val(lazy.touched, t);
    }
}

/*
 * Have target page @page of @lb present: place it, or wait for the
 * thread that claimed it.  Returns 1 if this thread placed it, 0 if
 * another one did, -1 if it cannot be placed (the load failed).
 */
static int lazy_ensure_page(LazyBlock *lb, long page, uint8_t *buf)
{
    long hp = page / lb->tpp;

    for (;;) {
        int r = lazy_place_for_fault(lb, page, buf);

        if (r) {
            return r;
        }
        if (lazy_page_placed(lb, hp)) {
            return 0;
        }
        /* being placed; if that fails, it is unclaimed and we try */
        lazy_wait_placer(lb, hp);
    }
}

/*
 * For a fault: place target page @page of @lb (small pages through
 * @small, one target page; huge pages through the one shared buffer,
 * one at a time), or, if @wait, wait for the thread that claimed it.
 * Returns what lazy_ensure_page() or lazy_place_for_fault() return.
 */
static int lazy_get_page(LazyBlock *lb, long page, uint8_t *small, bool wait)
{
    if (lb->tpp == 1) {
        return wait ? lazy_ensure_page(lb, page, small) :
                      lazy_place_for_fault(lb, page, small);
    }
    QEMU_LOCK_GUARD(&lazy.huge_lock);
    return wait ? lazy_ensure_page(lb, page, lazy.huge_buf) :
                  lazy_place_for_fault(lb, page, lazy.huge_buf);
}

/* Page @page of @lb was placed for a thread that touched it at @t0. */
static void lazy_count_fault(LazyBlock *lb, long page, int64_t t0)
{
    int64_t us = g_get_monotonic_time() - t0;

    qatomic_inc(&lazy.stats.faults);
    qatomic_add(&lazy.stats.fault_us, us);
    trace_mapped_ram_lazy_fault(lb->rb->idstr, page, us);
}

/* The vCPU whose thread is @tid, or NULL. */
static CPUState *lazy_vcpu_of_thread(uint32_t tid)
{
    CPUState *cpu;

    if (!tid) {
        return NULL;
    }
    RCU_READ_LOCK_GUARD();
    CPU_FOREACH(cpu) {
        if (cpu->thread_id == tid) {
            return cpu;
        }
    }
    return NULL;
}

/*
 * The page that thread @tid (0: the kernel did not say) faulted on
 * cannot be placed, and the thread waits for it.  Only a KVM vCPU that
 * faulted through KVM's MMU leaves the fault, when the VM stops
 * (lazy_fail() asked for it; if it faulted in KVM's instruction emulator
 * or in QEMU, the deadline ends QEMU).  Any other thread waits in the
 * kernel until QEMU exits.
 */
static void lazy_fault_failed(uint32_t tid)
{
    CPUState *cpu = lazy_vcpu_of_thread(tid);

    if (tid && !cpu) {
        lazy_fatal("QEMU's thread %" PRIu32 " waits for the page, and "
                   "cannot be stopped", tid);
    }
    if (!kvm_enabled()) {
        /* not through its TLB (mapped_ram_lazy_tlb_fill()): a device's */
        lazy_fatal("vCPU %d waits for the page in a device's emulation, "
                   "and a TCG vCPU cannot be stopped in a fault",
                   cpu ? cpu->cpu_index : -1);
    }
    /* a KVM vCPU (or a thread the kernel did not name): the VM stops */
    trace_mapped_ram_lazy_fault_failed(cpu ? cpu->cpu_index : -1);
}

/* UserfaultOps.fault: a thread of ours waits for a page. */
static void lazy_serve_fault(void *opaque, RAMBlock *rb, ram_addr_t offset,
                             uint64_t addr, uint32_t tid)
{
    int64_t t0 = g_get_monotonic_time();
    LazyBlock *lb = rb ? lazy_find_block(rb) : NULL;
    long page;
    int r;

    if (!lb || offset >= lb->length) {
        lazy_fatal("fault at 0x%" PRIx64 " outside lazy guest RAM", addr);
    }
    page = offset >> TARGET_PAGE_BITS;
    lazy_record_touch(lb, page, t0);
    r = lazy_get_page(lb, page, lazy.fault_buf, false);
    if (r == 0) {
        /* claimed by another thread: its UFFDIO_COPY wakes the fault */
        trace_mapped_ram_lazy_fault_claimed(rb->idstr, page);
        return;
    }
    if (r < 0) {
        lazy_fault_failed(tid);
        return;
    }
    lazy_count_fault(lb, page, t0);
}

/*
 * UserfaultOps.shared_fault: a back end faulted on @offset of @rb at
 * @client_addr (in its own address space): place the page, unless it is
 * there already or being placed (then wait for it), and wake the back
 * end.
 */
static int lazy_serve_shared_fault(void *opaque, struct PostCopyFD *pcfd,
                                   RAMBlock *rb, uint64_t client_addr,
                                   ram_addr_t offset)
{
    int64_t t0 = g_get_monotonic_time();
    LazyBlock *lb = lazy_find_block(rb);
    long page = offset >> TARGET_PAGE_BITS;

    if (!lb || offset >= lb->length) {
        /*
         * Not loaded lazily (plugged RAM, a part that grew, a block the
         * stream skipped): ordinary shared memory, where the back end
         * found a hole.  Waking it would have it fault again, forever:
         * fill the hole from here first (a read allocates the page, or
         * brings in the file's), as the back end's access would have.
         */
        qatomic_read((uint8_t *)rb->host +
                     QEMU_ALIGN_DOWN(offset, qemu_ram_pagesize(rb)));
        return postcopy_wake_shared(pcfd, client_addr, rb);
    }
    lazy_record_touch(lb, page, t0);
    /* if another thread places it, that wakes our vCPUs, not the back end */
    switch (lazy_get_page(lb, page, lazy.fault_buf, true)) {
    case -1:
        lazy_fatal("a vhost-user back end needs the page, and cannot be "
                   "stopped");
    case 1:
        qatomic_inc(&lazy.stats.remote_faults);
        break;
    }
    trace_mapped_ram_lazy_remote_fault(pcfd->idstr, rb->idstr, page,
                                       g_get_monotonic_time() - t0);
    return postcopy_wake_shared(pcfd, client_addr, rb);
}

/* UserfaultOps.timeout_ms: the deadline of a pending stop. */
static int lazy_stop_timeout_ms(void *opaque)
{
    int64_t deadline = qatomic_read(&lazy.failure.stop_deadline_us);
    int64_t left;

    if (!deadline) {
        return -1;
    }
    left = deadline - g_get_monotonic_time();
    return left <= 0 ? 0 : left / 1000 + 1;
}

/* UserfaultOps.timed_out */
static void lazy_stop_timed_out(void *opaque)
{
    lazy_fatal("the VM did not stop within " stringify(LAZY_STOP_TIMEOUT_MS)
               " ms after the failure: a thread waits for a page that "
               "cannot be placed");
}

/*
 * UserfaultOps.check_plug: a device that maps guest RAM in another
 * process would map shared RAM whose pages are not all there, and its
 * back end would not wait for them (it was not asked to, at setup): its
 * first access would create a page that the load then cannot place.
 */
static bool lazy_check_plug(void *opaque, const char *what, Error **errp)
{
    guint i;

    for (i = 0; lazy.blocks && i < lazy.blocks->len; i++) {
        LazyBlock *lb = g_ptr_array_index(lazy.blocks, i);

        if (lb->shared) {
            error_setg(errp, "%s while shared RAM block '%s' is still loaded "
                       "lazily (mapped-ram-load=lazy)", what, lb->rb->idstr);
            error_append_hint(errp, "Try again once the "
                              "MAPPED_RAM_LAZY_LOADED event came.\n");
            return false;
        }
    }
    return true;
}

static const UserfaultOps lazy_userfault_ops = {
    .fault = lazy_serve_fault,
    .shared_fault = lazy_serve_shared_fault,
    .timeout_ms = lazy_stop_timeout_ms,
    .timed_out = lazy_stop_timed_out,
    .check_plug = lazy_check_plug,
};

/* Stop this vCPU now, and the VM soon (vm_stop() from a vCPU thread). */
static void lazy_stop_this_vcpu(void)
{
    /* qemu_cpu_stop()'s wakeup of pause_all_vcpus() needs the BQL */
    BQL_LOCK_GUARD();

    vm_stop(RUN_STATE_INTERNAL_ERROR);
}

/* A buffer of one target page for the calling vCPU thread, kept. */
static __thread uint8_t *lazy_vcpu_page_buf;

static void lazy_vcpu_buf_free(Notifier *n, void *unused)
{
    g_free(lazy_vcpu_page_buf);
    lazy_vcpu_page_buf = NULL;
    g_free(n);
}

static uint8_t *lazy_vcpu_buf(void)
{
    if (!lazy_vcpu_page_buf) {
        Notifier *n = g_new0(Notifier, 1);

        lazy_vcpu_page_buf = g_malloc(TARGET_PAGE_SIZE);
        n->notify = lazy_vcpu_buf_free;
        qemu_thread_atexit_add(n);
    }
    return lazy_vcpu_page_buf;
}


bool mapped_ram_lazy_tlb_fill(RAMBlock *rb, void *host)
{
    GPtrArray *blocks;
    LazyBlock *lb;
    ram_addr_t offset;
    int64_t t0 = 0;
    long page;
    int r = 0;

    if (likely(!qatomic_read(&lazy.tlb_blocks))) {
        return true;            /* no lazy load runs */
    }
    WITH_RCU_READ_LOCK_GUARD() {
        blocks = qatomic_rcu_read(&lazy.tlb_blocks);
        lb = blocks ? lazy_find_block_in(blocks, rb) : NULL;
        offset = (uint8_t *)host - rb->host;
        if (!lb || offset >= lb->length) {
            return true;        /* not loaded lazily, or grown since */
        }
        page = offset >> TARGET_PAGE_BITS;
        if (lazy_page_placed(lb, page / lb->tpp)) {
            return true;
        }
        t0 = g_get_monotonic_time();
        lazy_record_touch(lb, page, t0);
        r = lazy_get_page(lb, page, lazy_vcpu_buf(), true);
        if (r > 0) {
            lazy_count_fault(lb, page, t0);
        }
        trace_mapped_ram_lazy_tlb_fill(rb->idstr, page, r, bql_locked(),
                                       g_get_monotonic_time() - t0);
    }
    if (r >= 0) {
        return true;
    }
    /* lazy_fail() asked for the stop: this vCPU stops now, the rest soon */
    trace_mapped_ram_lazy_tlb_fill_failed(current_cpu ?
                                          current_cpu->cpu_index : -1);
    lazy_stop_this_vcpu();
    return false;
}

/* Claim pages [first, end) of @lb one by one; returns the first not taken. */
static long lazy_claim_run(LazyBlock *lb, long first, long end)
{
    long p;

    for (p = first; p < end; p++) {
        if (!lazy_claim_page(lb, p)) {
            break;
        }
    }
    return p;
}

/*
 * Place chunk [first, first + LAZY_CHUNK_PAGES) of @lb, which the caller
 * claimed whole, through @chunk: memory of our own that the move left
 * empty, so the kernel gives it a transparent huge page when the build
 * writes to it.  Moved into guest RAM (UFFDIO_MOVE), that page becomes
 * guest RAM as it is, as a copy load's huge page would have: one copy of
 * the data and one page table entry, where UFFDIO_COPY would copy 512
 * small pages (and allocate each).  What the move does not take (the
 * kernel had no huge page, or cannot move) is copied.
 */
static bool lazy_place_chunk(LazyBlock *lb, long first, uint8_t *chunk)
{
    void *host = lb->rb->host + ((size_t)first << TARGET_PAGE_BITS);
    long read = lazy_build_pages(lb, first, LAZY_CHUNK_PAGES, chunk);
    struct uffdio_move mv = {
        .dst = (uintptr_t)host,
        .src = (uintptr_t)chunk,
        .len = LAZY_CHUNK_SIZE,
    };
    uint64_t moved;
    int ret, err;

    if (read < 0) {
        return false;
    }
    if (ioctl(lazy.uffd, UFFDIO_MOVE, &mv)) {
        err = errno;
        moved = mv.move > 0 ? mv.move : 0;
        trace_mapped_ram_lazy_move_failed(lb->rb->idstr, first, moved, err);
        if (err != EAGAIN && err != EBUSY) {
            lb->move = false;   /* for good: copy the rest of the block */
        }
        if (moved) {
            uffd_wakeup(lazy.uffd, host, moved);
        }
        ret = lazy_uffd_place(lb, host + moved, chunk + moved,
                              LAZY_CHUNK_SIZE - moved, false);
        if (ret) {
            return lazy_fail(lb->rb, first + (moved >> TARGET_PAGE_BITS),
                             "cannot place the page", -ret);
        }
    } else {
        qatomic_inc(&lazy.stats.moved);
    }
    lazy_mark_placed(lb, first, LAZY_CHUNK_PAGES);
    qatomic_add(&lazy.stats.copied, read);
    qatomic_add(&lazy.stats.zeroed, LAZY_CHUNK_PAGES - read);
    return true;
}

/*
 * Claim chunk [first, first + LAZY_CHUNK_PAGES) of @lb whole, if it holds
 * pages of the file and no thread touched it.  A fault may claim one of
 * its pages meanwhile: the pages claimed by then are placed one by one
 * (the faulting thread waits for them), and the chunk is not ours.
 */
static bool lazy_claim_chunk(LazyBlock *lb, long first, uint8_t *buf,
                             bool *ok)
{
    long end = first + LAZY_CHUNK_PAGES, p, run;

    *ok = true;
    if (first >= lb->num_pages ||
        find_next_bit(lb->bitmap, MIN(end, lb->num_pages), first) >=
        MIN(end, lb->num_pages) ||
        find_next_bit(lb->claimed, end, first) < end) {
        return false;
    }
    run = lazy_claim_run(lb, first, end);
    if (run == end) {
        return true;
    }
    for (p = first; p < run && *ok; p++) {
        *ok = lazy_place_claimed(lb, p, buf);
    }
    if (!*ok) {
        lazy_unclaim_pages(lb, p, run - p);
    }
    return false;
}

/*
 * Fill the huge pages of @lb; those of shared RAM the file has no data for
 * stay holes.
 */
static bool lazy_fill_huge_block(LazyBlock *lb, uint8_t *buf)
{
    long hp;

    for (hp = 0; hp < lb->host_pages; hp++) {
        if (lb->shared && !lazy_host_page_in_file(lb, hp)) {
            continue;
        }
        if (lazy_claim_page(lb, hp) && !lazy_place_claimed(lb, hp, buf)) {
            return false;
        }
    }
    return true;
}

/*
 * Place every page of @lb not placed yet, but the zero pages of shared
 * RAM; false if the load failed.  @chunk: LAZY_CHUNK_SIZE bytes,
 * aligned, if @lb moves chunks in.
 */
static bool lazy_fill_block(LazyBlock *lb, uint8_t *buf, uint8_t *chunk)
{
    long used = lb->host_pages;
    long p = 0;
    bool ok;

    if (lb->tpp > 1) {
        return lazy_fill_huge_block(lb, buf);
    }
    while (p < used) {
        bool in_file = p < lb->num_pages && test_bit(p, lb->bitmap);
        long end, run;

        if (lb->move && !(p % LAZY_CHUNK_PAGES) &&
            p + LAZY_CHUNK_PAGES <= used) {
            if (lazy_claim_chunk(lb, p, buf, &ok)) {
                if (!lazy_place_chunk(lb, p, chunk)) {
                    lazy_unclaim_pages(lb, p, LAZY_CHUNK_PAGES);
                    return false;
                }
                p += LAZY_CHUNK_PAGES;
                continue;
            }
            if (!ok) {
                return false;
            }
        }
        /* a run of pages alike (in the file or not) */
        if (p >= lb->num_pages) {
            end = used;
        } else if (in_file) {
            end = find_next_zero_bit(lb->bitmap, lb->num_pages, p);
        } else {
            end = find_next_bit(lb->bitmap, lb->num_pages, p);
        }
        if (!in_file && lb->shared) {
            p = end;            /* holes of the memory file: zero already */
            continue;
        }
        if (test_bit(p, lb->claimed)) {     /* a hint: claim_run() decides */
            p++;
            continue;
        }
        end = MIN(end, p + (in_file ? LAZY_FILL_BATCH : LAZY_ZERO_BATCH));
        if (lb->move) {
            /* stop at the next chunk: it may be moved in */
            end = MIN(end, ROUND_UP(p + 1, LAZY_CHUNK_PAGES));
        }
        run = lazy_claim_run(lb, p, end);
        if (run == p) {
            p++;
            continue;
        }
        if (in_file ? !lazy_read_pages(lb, p, run - p, buf) ||
                      !lazy_place_pages(lb, p, run - p, buf) :
                      !lazy_place_pages(lb, p, run - p, NULL)) {
            lazy_unclaim_pages(lb, p, run - p);
            return false;
        }
        p = run;
    }
    return true;
}

/*
 * The fill went over @lb: wait until the pages other threads claimed are
 * placed too, so that every page the load must place is there (all of
 * them, but the zero pages of shared RAM).  Places those given up by a
 * thread that failed (and fails too, then).
 */
static bool lazy_wait_block_placed(LazyBlock *lb, uint8_t *buf)
{
    long hp, p;

    if (lb->shared && lb->tpp == 1) {
        /* the pages of the file, not the many holes around them */
        for (p = find_next_bit(lb->bitmap, lb->num_pages, 0);
             p < lb->num_pages;
             p = find_next_bit(lb->bitmap, lb->num_pages, p + 1)) {
            if (!lazy_page_placed(lb, p) && lazy_ensure_page(lb, p, buf) < 0) {
                return false;
            }
        }
        return true;
    }
    for (hp = find_next_zero_bit(lb->placed, lb->host_pages, 0);
         hp < lb->host_pages;
         hp = find_next_zero_bit(lb->placed, lb->host_pages, hp + 1)) {
        if (lb->shared && !lazy_host_page_in_file(lb, hp)) {
            continue;
        }
        if (lazy_ensure_page(lb, hp * lb->tpp, buf) < 0) {
            return false;
        }
    }
    return true;
}

/*
 * Place the pages of the working set first, in its order.  Pages of
 * blocks this VM does not load lazily, or beyond them, are skipped: the
 * working set is a hint.
 */
static bool lazy_prefetch_working_set(uint8_t *buf)
{
    MappedRamWorkingSet *ws = lazy.ws;
    g_autofree LazyBlock **map = g_new0(LazyBlock *, ws->blocks->len);
    int64_t t0 = g_get_monotonic_time();
    uint64_t skipped = 0;
    guint i, j;

    for (i = 0; i < ws->blocks->len; i++) {
        for (j = 0; j < lazy.blocks->len; j++) {
            LazyBlock *lb = g_ptr_array_index(lazy.blocks, j);

            if (!strcmp(lb->rb->idstr, g_ptr_array_index(ws->blocks, i))) {
                map[i] = lb;
            }
        }
    }
    for (i = 0; i < ws->pages->len; i++) {
        uint64_t e = g_array_index(ws->pages, uint64_t, i);
        LazyBlock *lb = map[MAPPED_RAM_WS_BLOCK_OF(e)];
        uint64_t page = MAPPED_RAM_WS_PAGE_OF(e);
        long hp;

        if (!lb || page >= lb->length >> TARGET_PAGE_BITS) {
            skipped++;
            continue;
        }
        hp = page / lb->tpp;
        if (!lazy_claim_page(lb, hp)) {
            continue;
        }
        if (!lazy_place_claimed(lb, hp, buf)) {
            return false;
        }
        qatomic_inc(&lazy.stats.prefetched);
    }
    trace_mapped_ram_lazy_prefetch(ws->pages->len, lazy.stats.prefetched,
                                   skipped, g_get_monotonic_time() - t0);
    return true;
}

/*
 * Every page the load must place is placed: stop serving faults,
 * unregister the RAM, and hand what TLB fills may still look at to RCU.
 */
static void lazy_release(void)
{
    LazyRelease *r = g_new0(LazyRelease, 1);
    guint i;

    /* TLB fills need not look any more; those that did, see it placed */
    qatomic_rcu_set(&lazy.tlb_blocks, NULL);
    userfault_server_stop(&lazy.server);
    lazy.serving = false;
    g_ptr_array_free(lazy.remote_pcfds, true);
    lazy.remote_pcfds = NULL;
    g_free(lazy.fault_buf);
    lazy.fault_buf = NULL;
    /* a thread waiting for a zero page of shared RAM is woken, and retries */
    for (i = 0; i < lazy.blocks->len; i++) {
        LazyBlock *lb = g_ptr_array_index(lazy.blocks, i);

        uffd_unregister_memory(lazy.uffd, lb->rb->host, lb->length);
        /* the RAMBlock itself is freed after a grace period, if it goes */
        memory_region_unref(lb->rb->mr);
    }
    /* lazy.uffd and lazy.fd stay valid until the grace period ended */
    r->blocks = lazy.blocks;
    r->uffd = lazy.uffd;
    r->fd = lazy.fd;
    r->huge_buf = lazy.huge_buf;
    lazy.blocks = NULL;
    call_rcu(r, lazy_release_rcu, rcu);
    mapped_ram_ws_free(lazy.ws);
    lazy.ws = NULL;
    mapped_ram_map_release_file(&lazy.st);
}

/*
 * Every page is present: release userfaultfd and the file, and say so.
 * In the main loop, so that what the monitor and the outgoing migration
 * check (the files RAM loads from) changes under the BQL.
 */
static void lazy_complete_bh(void *opaque)
{
    MappedRamLazyStats *st = &lazy.stats;
    Error *err = NULL;
    int64_t total_us;

    /* the back ends may fault until they hear it: the server runs */
    if (lazy.server.nremote &&
        postcopy_notify(POSTCOPY_NOTIFY_INBOUND_END, &err)) {
        error_prepend(&err, "mapped-ram-load=lazy: a vhost-user back end "
                      "did not leave its postcopy mode: ");
        error_report_err(err);
    }
    lazy_release();
    ram_block_discard_disable(false);
    /* the server is gone: the counters hold still */
    total_us = lazy.total_us = g_get_monotonic_time() - lazy.start_us;
    st->skipped = lazy.total_pages - MIN(lazy.total_pages,
                                         st->copied + st->zeroed);
    lazy.completed = true;
    trace_mapped_ram_lazy_complete(total_us, lazy.fill_us, st->copied,
                                   st->zeroed, st->skipped, st->faults,
                                   st->fault_us);
    qapi_event_send_mapped_ram_lazy_loaded(total_us / 1000,
                                           lazy.fill_us / 1000, st->copied,
                                           st->zeroed, st->faults,
                                           st->fault_us, st->prefetched,
                                           st->skipped);
}

/*
 * Memory of our own to build chunks in, for blocks that move them in, or
 * NULL (*@area: what to unmap).  Without it, no block moves chunks in.
 */
static uint8_t *lazy_chunk_area(void **area)
{
    uint8_t *chunk;
    guint i;

    *area = MAP_FAILED;
    for (i = 0; i < lazy.blocks->len; i++) {
        LazyBlock *lb = g_ptr_array_index(lazy.blocks, i);

        if (lb->move) {
            break;
        }
    }
    if (i == lazy.blocks->len) {
        return NULL;
    }
    *area = mmap(NULL, 2 * LAZY_CHUNK_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (*area == MAP_FAILED) {
        for (i = 0; i < lazy.blocks->len; i++) {
            /* the fill copies instead */
            ((LazyBlock *)g_ptr_array_index(lazy.blocks, i))->move = false;
        }
        return NULL;
    }
    chunk = QEMU_ALIGN_PTR_UP((uint8_t *)*area, LAZY_CHUNK_SIZE);
    qemu_madvise(chunk, LAZY_CHUNK_SIZE, QEMU_MADV_HUGEPAGE);
    return chunk;
}

/* Place every page, wait for those others placed; false on failure. */
static bool lazy_fill_all(uint8_t *buf, uint8_t *chunk)
{
    guint i;

    if (qatomic_read(&lazy.failure.error) ||
        (lazy.ws && !lazy_prefetch_working_set(buf))) {
        return false;
    }
    for (i = 0; i < lazy.blocks->len; i++) {
        if (!lazy_fill_block(g_ptr_array_index(lazy.blocks, i), buf, chunk)) {
            return false;
        }
    }
    for (i = 0; i < lazy.blocks->len; i++) {
        if (!lazy_wait_block_placed(g_ptr_array_index(lazy.blocks, i),
                                    buf)) {
            return false;
        }
    }
    return true;
}

static void *lazy_fill_thread(void *opaque)
{
    g_autofree uint8_t *buf = g_malloc(MAX(LAZY_FILL_BATCH * TARGET_PAGE_SIZE,
                                           lazy.max_psize));
    uint32_t delay_ms = migrate_mapped_ram_lazy_fill_delay_ms();
    void *area;
    uint8_t *chunk = lazy_chunk_area(&area);
    int64_t t0;

    rcu_register_thread();
    if (delay_ms) {
        /* x-mapped-ram-lazy-fill-delay-ms (tests): faults only, for now */
        g_usleep(delay_ms * 1000ULL);
    }
    t0 = g_get_monotonic_time();
    if (lazy_fill_all(buf, chunk)) {
        lazy.fill_us = g_get_monotonic_time() - t0;
        trace_mapped_ram_lazy_fill(lazy.fill_us, lazy.stats.moved);
        /* from now on only zero pages of shared RAM can still be placed */
        qatomic_set(&lazy.draining, true);
        aio_bh_schedule_oneshot(qemu_get_aio_context(), lazy_complete_bh,
                                NULL);
    }
    /* else the VM stops (lazy_stop_bh); the load never completes */
    if (area != MAP_FAILED) {
        munmap(area, 2 * LAZY_CHUNK_SIZE);
    }
    rcu_unregister_thread();
    return NULL;
}

/*
 * The pages that faulted, in order, in the first @ms milliseconds after
 * the guest started (before it, too), once the load completed.
 */
static MappedRamWorkingSet *lazy_working_set(uint32_t ms, Error **errp)
{
    MappedRamWorkingSet *ws;
    guint i;

    if (!lazy.names) {
        error_setg(errp, "this VM was not loaded with mapped-ram-load=lazy");
        return NULL;
    }
    if (qatomic_read(&lazy.failure.error)) {
        error_setg(errp, "the lazy load failed: %s",
                   qatomic_read(&lazy.failure.error));
        return NULL;
    }
    if (!lazy.completed) {
        error_setg(errp, "the lazy load has not completed yet; wait for the "
                   "MAPPED_RAM_LAZY_LOADED event");
        return NULL;
    }
    ws = mapped_ram_ws_new();
    for (i = 0; i < lazy.names->len; i++) {
        g_ptr_array_add(ws->blocks,
                        g_strdup(g_ptr_array_index(lazy.names, i)));
    }
    QEMU_LOCK_GUARD(&lazy.touch_lock);
    for (i = 0; i < lazy.touched->len; i++) {
        LazyTouch *t = &g_array_index(lazy.touched, LazyTouch, i);

        if (t->ms <= ms) {
            g_array_append_val(ws->pages, t->page);
        }
    }
    return ws;
}

void qmp_mapped_ram_save_working_set(const char *filename,
                                     bool has_duration_ms,
                                     uint32_t duration_ms, Error **errp)
{
    MappedRamWorkingSet *ws;

    ws = lazy_working_set(has_duration_ms ? duration_ms : UINT32_MAX, errp);
    if (ws) {
        mapped_ram_ws_save(ws, filename, errp);
        mapped_ram_ws_free(ws);
    }
}

void mapped_ram_lazy_abort(void)
{
    Error *err = NULL;

    if (!lazy.serving || lazy.fill_started) {
        return;
    }
    trace_mapped_ram_lazy_abort();
    qatomic_set(&lazy.failure.error,
                g_strdup("mapped-ram-load=lazy: the incoming migration "
                         "failed before the guest ran; the load was given "
                         "up"));
    if (lazy.server.nremote &&
        postcopy_notify(POSTCOPY_NOTIFY_INBOUND_END, &err)) {
        error_report_err(err);
    }
    qemu_del_vm_change_state_handler(lazy.vmstate);
    lazy.vmstate = NULL;
    qatomic_set(&lazy.draining, true);
    lazy_release();
    ram_block_discard_disable(false);
}

bool mapped_ram_lazy_check_save(bool skips_shared, Error **errp)
{
    guint i;

    if (!skips_shared || !lazy.serving) {
        return true;
    }
    for (i = 0; i < lazy.blocks->len; i++) {
        LazyBlock *lb = g_ptr_array_index(lazy.blocks, i);

        if (lb->shared) {
            error_setg(errp, "shared RAM block '%s' is still loaded lazily "
                       "(mapped-ram-load=lazy): a save that leaves shared "
                       "memory out would leave its missing pages out too",
                       lb->rb->idstr);
            error_append_hint(errp, "Save once the MAPPED_RAM_LAZY_LOADED "
                              "event came, or without x-ignore-shared and "
                              "bypass-shared-memory.\n");
            return false;
        }
    }
    return true;
}

MappedRamLazyInfo *mapped_ram_lazy_query(void)
{
    MappedRamLazyStats *st = &lazy.stats;
    MappedRamLazyInfo *info;

    if (!lazy.names) {
        return NULL;
    }
    info = g_new0(MappedRamLazyInfo, 1);
    info->completed = lazy.completed;
    info->elapsed_ms = (lazy.completed ? lazy.total_us :
                        g_get_monotonic_time() - lazy.start_us) / 1000;
    info->total_pages = lazy.total_pages;
    info->pages_read = qatomic_read(&st->copied);
    info->pages_zeroed = qatomic_read(&st->zeroed);
    info->pages_skipped = qatomic_read(&st->skipped);
    info->pages_prefetched = qatomic_read(&st->prefetched);
    info->faults = qatomic_read(&st->faults);
    info->remote_faults = qatomic_read(&st->remote_faults);
    info->error_desc = g_strdup(qatomic_read(&lazy.failure.error));
    info->fault_us = qatomic_read(&st->fault_us);
    return info;
}

static void lazy_vm_running(void *opaque, bool running, RunState state)
{
    if (!running || lazy.fill_started) {
        return;
    }
    lazy.fill_started = true;
    qatomic_set(&lazy.run_us, g_get_monotonic_time());
    qemu_del_vm_change_state_handler(lazy.vmstate);
    lazy.vmstate = NULL;
    /* before the vCPUs run: TCG's TLB fills place the pages they map */
    qatomic_rcu_set(&lazy.tlb_blocks, lazy.blocks);
    qemu_thread_create(&lazy.fill_thread, "mapped-ram-fill",
                       lazy_fill_thread, NULL, QEMU_THREAD_DETACHED);
}

static bool lazy_block_can_be_lazy(RAMBlock *rb, Error **errp)
{
    const char *why = NULL;

    if (qemu_real_host_page_size() != TARGET_PAGE_SIZE) {
        why = "the host page size differs from the target page size";
    } else if (rb->guest_memfd >= 0) {
        why = "it uses guest_memfd";
    }
    if (why) {
        error_setg(errp, "mapped-ram-load=lazy: RAM block '%s': %s; load "
                   "it with mapped-ram-load=copy", rb->idstr, why);
        return false;
    }
    return true;
}

/* A back end's fault message, to its device's handler (a PostCopyFD). */
static int lazy_remote_handler(void *dev, void *msg)
{
    struct PostCopyFD *pcfd = dev;

    return pcfd->handler(pcfd, msg);
}

/*
 * @rb is shared with the vhost-user back ends (a device registered a
 * postcopy notifier): have them take part as they do in postcopy, and read
 * the userfaultfds they registered.  A back end that cannot fails the load.
 */
static bool lazy_remote_setup(RAMBlock *rb, Error **errp)
{
    GArray *fds = migration_incoming_get_current()->postcopy_remote_fds;
    unsigned n;

    if (postcopy_notify(POSTCOPY_NOTIFY_PROBE, errp) ||
        postcopy_notify(POSTCOPY_NOTIFY_INBOUND_ADVISE, errp)) {
        goto fail;
    }
    if (!fds) {
        error_setg(errp, "no back end sent its userfaultfd");
        goto fail;
    }
    for (n = 0; n < fds->len; n++) {
        struct PostCopyFD *pcfd = &g_array_index(fds, struct PostCopyFD, n);

        /*
         * A copy: the array goes with the incoming migration's state;
         * its handler and data are the device's, which tells
         * postcopy_unregister_shared_ufd() before it goes away.
         */
        pcfd = g_memdup2(pcfd, sizeof(*pcfd));
        g_ptr_array_add(lazy.remote_pcfds, pcfd);
        if (!userfault_server_add_remote(&lazy.server, pcfd->fd, pcfd->idstr,
                                         lazy_remote_handler, pcfd, errp)) {
            goto fail;
        }
    }
    if (postcopy_notify(POSTCOPY_NOTIFY_INBOUND_LISTEN, errp)) {
        goto fail;
    }
    trace_mapped_ram_lazy_remote_setup(rb->idstr, fds->len);
    return true;

fail:
    error_prepend(errp, "mapped-ram-load=lazy: RAM block '%s' is shared with "
                  "a vhost-user back end, which must wait for its pages: ",
                  rb->idstr);
    error_append_hint(errp, "Load it with mapped-ram-load=copy, or give the "
                      "back end userfaultfd (postcopy) support.\n");
    return false;
}

/* Undo what lazy_setup() did, after a failure before the guest ran. */
static void lazy_setup_undo(void)
{
    if (lazy.serving) {
        userfault_server_stop(&lazy.server);
        lazy.serving = false;
    }
    if (lazy.vmstate) {
        qemu_del_vm_change_state_handler(lazy.vmstate);
        lazy.vmstate = NULL;
    }
    mapped_ram_ws_free(lazy.ws);
    lazy.ws = NULL;
    if (lazy.uffd >= 0) {
        uffd_close_fd(lazy.uffd);
    }
    if (lazy.fd >= 0) {
        mapped_ram_map_release_file(&lazy.st);
        close(lazy.fd);
    }
    lazy.uffd = lazy.fd = -1;
    ram_block_discard_disable(false);
}

static bool lazy_setup(QEMUFile *f, Error **errp)
{
    uint64_t features;

    if (lazy.serving) {
        return true;            /* the load's first block set it up */
    }
    if (lazy.names) {
        error_setg(errp, "mapped-ram-load=lazy: a lazy load ran already in "
                   "this process");
        return false;
    }
    /*
     * A page discarded after it was placed would fault again, and nobody
     * would place it twice: no discard (balloon, virtio-mem, free page
     * reporting) until the load completes.  But those who disabled it
     * already pinned RAM: the pages placed later would not be theirs.
     */
    if (!mapped_ram_map_check_unpinned("lazy", errp)) {
        return false;
    }
    if (ram_block_discard_disable(true)) {
        error_setg(errp, "mapped-ram-load=lazy: a device needs to discard "
                   "RAM (virtio-mem?) while the load goes on; load with "
                   "mapped-ram-load=copy");
        return false;
    }
    if (migrate_mapped_ram_working_set()[0]) {
        lazy.ws = mapped_ram_ws_load(migrate_mapped_ram_working_set(), errp);
        if (!lazy.ws) {
            goto fail;
        }
    }
    lazy.fd = mapped_ram_map_open_file(f, "lazy", &lazy.st, errp);
    if (lazy.fd < 0) {
        goto fail;
    }
    mapped_ram_map_hold_file(&lazy.st, "is still being loaded from");
    /*
     * What the kernel has of: missing faults on tmpfs and hugetlbfs, and
     * moving pages into anonymous RAM (Linux 6.8)
     */
    if (uffd_query_features(&features) < 0) {
        features = 0;
    }
    lazy.features = features & (UFFD_FEATURE_MISSING_SHMEM |
                                UFFD_FEATURE_MISSING_HUGETLBFS |
                                UFFD_FEATURE_MOVE |
                                UFFD_FEATURE_THREAD_ID);
    lazy.uffd = uffd_create_fd(lazy.features, true);
    if (lazy.uffd < 0) {
        error_setg(errp, "mapped-ram-load=lazy: cannot create a userfaultfd "
                   "(see vm.unprivileged_userfaultfd, or run with "
                   "CAP_SYS_PTRACE); load with mapped-ram-load=copy or map");
        goto fail;
    }
    /* blocks come after the server starts: size for any of them */
    lazy.max_psize = MAX(qemu_maxrampagesize(), TARGET_PAGE_SIZE);
    lazy.fault_buf = g_malloc(TARGET_PAGE_SIZE);
    if (lazy.max_psize > TARGET_PAGE_SIZE) {
        /* address space: touched as huge pages are built */
        lazy.huge_buf = g_malloc(lazy.max_psize);
    }
    if (!userfault_server_start(&lazy.server, lazy.uffd, "mapped-ram-fault",
                                &lazy_userfault_ops, NULL, errp)) {
        error_prepend(errp, "mapped-ram-load=lazy: ");
        goto fail;
    }
    lazy.serving = true;
    /* no reallocation: the fault server reads it unlocked */
    lazy.blocks = g_ptr_array_new_full(RAM_BLOCKS_MAX, lazy_block_free);
    lazy.names = g_ptr_array_new_with_free_func(g_free);
    lazy.remote_pcfds = g_ptr_array_new_with_free_func(g_free);
    lazy.touched = g_array_new(false, false, sizeof(LazyTouch));
    qemu_mutex_init(&lazy.touch_lock);
    qemu_mutex_init(&lazy.placed_lock);
    qemu_cond_init(&lazy.placed_cond);
    qemu_mutex_init(&lazy.huge_lock);
    lazy.place_delay_ms = migrate_mapped_ram_lazy_place_delay_ms();
    lazy.start_us = g_get_monotonic_time();
    lazy.vmstate = qemu_add_vm_change_state_handler(lazy_vm_running, NULL);
    return true;

fail:
    g_free(lazy.fault_buf);
    lazy.fault_buf = NULL;
    g_free(lazy.huge_buf);
    lazy.huge_buf = NULL;
    lazy_setup_undo();
    return false;
}

bool mapped_ram_lazy_block(QEMUFile *f, RAMBlock *rb,
                           const unsigned long *bitmap, long num_pages,
                           Error **errp)
{
    uint64_t ioctls;
    LazyBlock *lb;

    if (!lazy_block_can_be_lazy(rb, errp) || !lazy_setup(f, errp) ||
        !mapped_ram_map_check_extent("lazy", rb, num_pages, &lazy.st, errp)) {
        return false;
    }
    if (lazy.blocks->len >= RAM_BLOCKS_MAX) {
        error_setg(errp, "mapped-ram-load=lazy: more than %d RAM blocks",
                   RAM_BLOCKS_MAX);
        return false;
    }
    if (rb->page_size > lazy.max_psize) {
        error_setg(errp, "mapped-ram-load=lazy: RAM block '%s': page size "
                   "0x%zx is larger than expected", rb->idstr,
                   rb->page_size);
        return false;
    }
    if (lazy_find_block(rb)) {
        error_setg(errp, "mapped-ram-load=lazy: RAM block '%s' appears twice "
                   "in the stream", rb->idstr);
        return false;
    }
    if (qemu_ram_is_shared(rb) && postcopy_has_notifiers() &&
        !lazy.remote_asked) {
        lazy.remote_asked = true;
        if (!lazy_remote_setup(rb, errp)) {
            return false;
        }
    }
    /* What ROMs or firmware wrote at reset must not hide the file's pages. */
    if (ram_block_discard_range(rb, 0, rb->used_length)) {
        error_setg(errp, "mapped-ram-load=lazy: RAM block '%s': cannot "
                   "discard its memory", rb->idstr);
        return false;
    }
    /* small pages are zeroed with UFFDIO_ZEROPAGE, huge ones copied */
    if (uffd_register_memory(lazy.uffd, rb->host, rb->used_length,
                             UFFDIO_REGISTER_MODE_MISSING, &ioctls) ||
        !(ioctls & BIT_ULL(_UFFDIO_COPY)) ||
        (rb->page_size == TARGET_PAGE_SIZE &&
         !(ioctls & BIT_ULL(_UFFDIO_ZEROPAGE)))) {
        error_setg(errp, "mapped-ram-load=lazy: RAM block '%s': cannot "
                   "register it with userfaultfd (anonymous, memfd, tmpfs "
                   "and hugetlbfs memory can be; a file on another file "
                   "system cannot); load it with mapped-ram-load=copy",
                   rb->idstr);
        return false;
    }
    lb = g_new0(LazyBlock, 1);
    lb->rb = rb;
    lb->index = lazy.blocks->len;
    lb->num_pages = num_pages;
    lb->bitmap = bitmap_new(num_pages);
    bitmap_copy(lb->bitmap, bitmap, num_pages);
    lb->length = rb->used_length;
    lb->psize = rb->page_size;
    lb->tpp = rb->page_size >> TARGET_PAGE_BITS;
    lb->host_pages = lb->length / lb->psize;
    lb->claimed = bitmap_new(lb->host_pages);
    lb->placed = bitmap_new(lb->host_pages);
    lb->shared = qemu_ram_is_shared(rb);
    /* UFFDIO_MOVE takes private anonymous memory only */
    lb->move = (lazy.features & UFFD_FEATURE_MOVE) &&
               (ioctls & BIT_ULL(_UFFDIO_MOVE)) && lb->tpp == 1 &&
               rb->fd < 0 && !lb->shared &&
               QEMU_PTR_IS_ALIGNED(rb->host, LAZY_CHUNK_SIZE);
    /*
     * The block must outlive the load: a device unplugged meanwhile (a
     * ROM, plugged RAM) keeps its memory until the load let go of it.
     */
    memory_region_ref(rb->mr);
    g_ptr_array_add(lazy.blocks, lb);
    g_ptr_array_add(lazy.names, g_strdup(rb->idstr));
    lazy.total_pages += lb->length >> TARGET_PAGE_BITS;
    trace_mapped_ram_lazy_block(rb->idstr, lb->length, rb->pages_offset,
                                lb->move, lb->shared);
    return true;
}
