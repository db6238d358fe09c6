/*
 * Load a mapped-ram file lazily, through userfaultfd
 *
 * mapped-ram-load=lazy registers each RAM block that the file holds with
 * userfaultfd (missing mode) and lets the load go on without reading a
 * page.  A fault thread serves the pages the guest (or QEMU) touches: a
 * page whose bit is set is read from its fixed offset in the file and
 * placed with UFFDIO_COPY, one whose bit is clear is placed with
 * UFFDIO_ZEROPAGE (no I/O, whatever the file holds there).  Once the VM
 * runs, a fill thread places every page not yet present, in file order;
 * when none is left, the RAM is unregistered and the load is complete.
 *
 * The faults are recorded, in order: mapped-ram-save-working-set writes
 * those of the guest's first milliseconds to a file, and a later load
 * given it (mapped-ram-working-set) places those pages first, when the
 * guest starts, before the rest of the fill.
 *
 * Pages are placed with QEMU's userfaultfd helpers (util/userfaultfd.c),
 * several at a time where they are alike.  Into private anonymous RAM,
 * the fill builds each 2 MiB chunk that holds pages of the file, and that
 * no fault touched yet, in memory of its own (a transparent huge page)
 * and moves it in whole (UFFDIO_MOVE, Linux 6.8): the guest gets the huge
 * pages a copy load gives it, and the kernel allocates one page instead
 * of 512.  postcopy-ram.c's own placing
 * keeps the incoming migration's state (received bitmaps, requested
 * pages), which is freed once the device state is loaded: a lazy load
 * outlives it.
 *
 * A device that maps shared guest RAM in another process (a vhost-user
 * back end) waits for its pages as it does in postcopy: the postcopy
 * notifiers have it create a userfaultfd of its own and register its
 * mapping (ADVISE, LISTEN), the fault thread reads that userfaultfd too,
 * and the device's handler (vhost-user.c) turns each fault into a block
 * and an offset for mapped_ram_lazy_request_shared(), which places the
 * page and wakes the back end.  On completion the back end is told
 * (INBOUND_END) before the fault thread stops.
 *
 * Invariants:
 * - each page is placed exactly once: a thread places a page only after
 *   claiming its bit in the block's 'claimed' bitmap; a fault on a page
 *   another thread claimed is woken by that thread's UFFDIO_COPY, and a
 *   back end's fault on it waits for its bit in 'placed';
 * - RAM that userfaultfd can register: anonymous, memfd, tmpfs or
 *   hugetlbfs, private or shared;
 * - a host page is placed whole: huge pages are built in a buffer from
 *   the file's target pages and zeroes (hugetlbfs has no ZEROPAGE);
 * - a page that cannot be read (I/O error, file truncated under the VM)
 *   is never replaced by another: the guest must not see wrong memory.
 *   It stops the VM for good (internal-error) and blocks migration.  A
 *   KVM vCPU that faulted on it through the MMU leaves the fault when it
 *   is asked to stop (KVM's fault is interruptible), and stops with the
 *   others.  A TCG vCPU does not fault on guest RAM through its TLB: TCG
 *   asks mapped_ram_lazy_tlb_fill() for each page before it maps it, and
 *   the vCPU places the page itself, or stops.  Any other thread (a TCG
 *   vCPU in a device's emulation, QEMU's own threads) waits in the kernel
 *   and cannot be stopped: QEMU exits at once.  The fault
 *   thread makes sure the VM stops within LAZY_STOP_TIMEOUT_MS of a
 *   failure, or ends QEMU: never a hang.  (KVM's instruction emulator
 *   reads guest memory with a plain copy, which faults again instead of
 *   leaving: under PVM, where the qtests' boot code is emulated, that
 *   is how it ends.)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <poll.h>
#include <sys/eventfd.h>
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
#include "qapi/qapi-events-migration.h"
#include "block/aio.h"
#include "exec/ramblock.h"
#include "exec/target_page.h"
#include "hw/core/cpu.h"
#include "system/hostmem.h"
#include "system/kvm.h"
#include "system/runstate.h"
#include "migration/blocker.h"
#include "migration.h"
#include "options.h"
#include "postcopy-ram.h"
#include "qemu-file.h"
#include "mapped-ram-map.h"
#include "mapped-ram-lazy.h"
#include "mapped-ram-working-set.h"
#include "trace.h"

/* Pages the fill thread reads with one pread(), and zeroes at once. */
#define LAZY_FILL_BATCH 64
#define LAZY_ZERO_BATCH 512
/* Anonymous private RAM is filled in chunks of a huge page, if it can. */
#define LAZY_CHUNK_SIZE (2 * MiB)
#define LAZY_CHUNK_PAGES (LAZY_CHUNK_SIZE >> TARGET_PAGE_BITS)
/* RAM blocks a lazy load handles (x86 VMs have about ten). */
#define RAM_BLOCKS_MAX  MAPPED_RAM_WS_MAX_BLOCKS
/* Userfaultfds of vhost-user back ends the fault thread reads. */
#define LAZY_REMOTE_MAX 16
/* After a failure, the VM must stop within this time, or QEMU exits. */
#define LAZY_STOP_TIMEOUT_MS 2000

typedef struct LazyBlock {
    RAMBlock *rb;
    unsigned index;             /* in lazy.blocks and lazy.names */
    long num_pages;             /* target pages the file holds */
    unsigned long *bitmap;      /* set: the target page is in the file */
    size_t psize;               /* host page size of the block */
    long tpp;                   /* target pages per host page */
    unsigned long *claimed;     /* of host pages: placed, or being placed */
    unsigned long *placed;      /* of host pages: placed */
    bool move;                  /* anonymous private: chunks are moved in */
} LazyBlock;

/* A page the guest (or QEMU) touched before it was placed. */
typedef struct LazyTouch {
    uint64_t page;              /* MAPPED_RAM_WS_PAGE(block index, page) */
    uint32_t ms;                /* since the guest started; 0 before */
} LazyTouch;

static struct {
    int uffd;
    int fd;                     /* our descriptor of the file */
    struct stat st;             /* of the file */
    GPtrArray *blocks;          /* of LazyBlock */
    QemuThread fault_thread;
    QemuThread fill_thread;
    bool fill_started;
    int quit_fd;                /* eventfd: the fault thread looks again */
    bool quit;                  /* ... and stops */
    uint8_t *fault_buf;         /* the fault thread's, max_psize bytes */
    /* back ends' userfaultfds (our duplicates), added before the VM runs */
    struct PostCopyFD remote[LAZY_REMOTE_MAX];
    unsigned nremote;
    bool remote_asked;          /* the back ends were asked (ADVISE) */
    VMChangeStateEntry *vmstate;
    size_t max_psize;           /* the largest page size of guest RAM */
    int64_t start_us;
    int64_t run_us;             /* when the guest started */
    int64_t fill_us;
    int64_t total_us;           /* set on completion */
    uint64_t total_pages;       /* target pages of the blocks */
    uint64_t faults, fault_us, copied, zeroed;  /* atomic */
    uint64_t remote_faults;     /* atomic */
    char *error;                /* the first failure, or NULL */
    bool reported;              /* ... was (main loop) */
    int64_t stop_deadline_us;   /* a stop is pending, due by then; or 0 */
    bool completed;
    GPtrArray *names;           /* of the blocks, in order */
    GArray *touched;            /* of LazyTouch; under touch_lock */
    QemuMutex touch_lock;
    /* lazy.blocks while the guest runs and the load goes on; RCU */
    GPtrArray *tlb_blocks;
    MappedRamWorkingSet *ws;    /* to place first, or NULL */
    uint64_t prefetched;        /* pages of @ws placed by the fill */
    uint64_t features;          /* of the kernel's userfaultfd */
    uint64_t moved;             /* chunks moved in; the fill thread's */
} lazy = { .uffd = -1, .fd = -1, .quit_fd = -1 };

static LazyBlock *find_block_in(GPtrArray *blocks, RAMBlock *rb)
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

static LazyBlock *find_block(RAMBlock *rb)
{
    return find_block_in(lazy.blocks, rb);
}

static void lazy_block_free(gpointer p)
{
    LazyBlock *lb = p;

    g_free(lb->bitmap);
    g_free(lb->claimed);
    g_free(lb->placed);
    g_free(lb);
}

/* lazy.blocks, freed when no TLB fill looks at it any more */
typedef struct LazyBlocksFree {
    struct rcu_head rcu;
    GPtrArray *blocks;
} LazyBlocksFree;

static void lazy_blocks_free(LazyBlocksFree *f)
{
    g_ptr_array_unref(f->blocks);
    g_free(f);
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

/* Have the fault thread look at its descriptors and its deadline again. */
static void kick_fault_thread(void)
{
    uint64_t eventfd_one = 1;

    if (write(lazy.quit_fd, &eventfd_one, sizeof(eventfd_one)) < 0) {
        error_report("mapped-ram-load=lazy: cannot wake the fault thread: %s",
                     strerror(errno));
    }
}

/* The VM stopped: no vCPU waits in a fault any more. */
static void lazy_stop_notify(void *opaque, bool running, RunState state)
{
    if (!running) {
        qatomic_set(&lazy.stop_deadline_us, 0);
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
    if (lazy.reported) {
        return;
    }
    lazy.reported = true;
    qemu_add_vm_change_state_handler(lazy_stop_notify, NULL);
    error_setg(&blocker, "%s", lazy.error);
    if (migrate_add_blocker(&blocker, NULL) < 0) {
        /* a save is running: it stops at the page, like the guest */
        error_free(blocker);
    }
    qapi_event_send_mapped_ram_lazy_failed(lazy.error);
}

/*
 * Stop the VM, and have the fault thread make sure it stops soon: a
 * thread that waits for a page that failed may keep it from stopping.
 * After every failure, as a reset VM may run into the page again; a
 * failure while a stop is pending (a vCPU that faults again and again)
 * neither asks again nor moves the deadline.
 */
static void lazy_request_stop(void)
{
    int64_t deadline = g_get_monotonic_time() + LAZY_STOP_TIMEOUT_MS * 1000;

    if (qatomic_cmpxchg(&lazy.stop_deadline_us, 0, deadline)) {
        return;
    }
    aio_bh_schedule_oneshot(qemu_get_aio_context(), lazy_stop_bh, NULL);
    kick_fault_thread();
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
    if (!qatomic_read(&lazy.error)) {
        msg = g_strdup_printf("mapped-ram-load=lazy: RAM block '%s', page "
                              "%ld: %s%s%s; the VM cannot go on without it",
                              rb->idstr, page, why, err ? ": " : "",
                              err ? strerror(err) : "");
        if (qatomic_cmpxchg(&lazy.error, NULL, msg)) {
            g_free(msg);        /* another thread's came first */
        } else {
            error_report("%s", msg);
        }
    }
    lazy_request_stop();
    return false;
}

/* Claim host page @page of @lb; false if another thread has it. */
static bool claim_page(LazyBlock *lb, long page)
{
    unsigned long mask = BIT_MASK(page);

    return !(qatomic_fetch_or(&lb->claimed[BIT_WORD(page)], mask) & mask);
}

/* Give up host pages [first, first + n) of @lb, which were not placed. */
static void unclaim_pages(LazyBlock *lb, long first, long n)
{
    long p;

    for (p = first; p < first + n; p++) {
        qatomic_and(&lb->claimed[BIT_WORD(p)], ~BIT_MASK(p));
    }
}

/*
 * Place pages [first, first + n) of @lb, which the caller claimed: from
 * @buf (the file's pages, read already) or as zero pages if @buf is NULL.
 * Either wakes the threads that fault on them.
 */
static bool place_pages(LazyBlock *lb, long first, long n, uint8_t *buf)
{
    void *host = lb->rb->host + ((size_t)first << TARGET_PAGE_BITS);
    size_t len = (size_t)n << TARGET_PAGE_BITS;
    int ret;

    if (buf) {
        ret = uffd_copy_page(lazy.uffd, host, buf, len, false);
    } else {
        ret = uffd_zero_page(lazy.uffd, host, len, false);
    }
    if (ret) {
        return lazy_fail(lb->rb, first, "cannot place the page", -ret);
    }
    bitmap_set_atomic(lb->placed, first, n);
    qatomic_add(buf ? &lazy.copied : &lazy.zeroed, n);
    return true;
}

/* Read @n pages of @lb from @first into @buf. */
static bool read_pages(LazyBlock *lb, long first, long n, uint8_t *buf)
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
static long build_pages(LazyBlock *lb, long first, long n, uint8_t *buf)
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
            if (!read_pages(lb, t, next - t, at)) {
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
static bool place_huge(LazyBlock *lb, long hp, uint8_t *buf)
{
    long first = hp * lb->tpp;
    long read = build_pages(lb, first, lb->tpp, buf);
    int ret;

    if (read < 0) {
        return false;
    }
    ret = uffd_copy_page(lazy.uffd, lb->rb->host + hp * lb->psize, buf,
                         lb->psize, false);
    if (ret) {
        return lazy_fail(lb->rb, first, "cannot place the page", -ret);
    }
    bitmap_set_atomic(lb->placed, hp, 1);
    qatomic_add(&lazy.copied, read);
    qatomic_add(&lazy.zeroed, lb->tpp - read);
    return true;
}

/*
 * Place host page @hp of @lb, which the caller claimed: from the file, or
 * zero.  On failure, the page is given up: whoever faults on it next
 * tries again, and fails again.
 */
static bool place_claimed(LazyBlock *lb, long hp, uint8_t *buf)
{
    bool ok;

    if (lb->tpp > 1) {
        ok = place_huge(lb, hp, buf);
    } else if (hp < lb->num_pages && test_bit(hp, lb->bitmap)) {
        ok = read_pages(lb, hp, 1, buf) && place_pages(lb, hp, 1, buf);
    } else {
        ok = place_pages(lb, hp, 1, NULL);
    }
    if (!ok) {
        unclaim_pages(lb, hp, 1);
    }
    return ok;
}

/*
 * Place the host page of @lb that holds target page @page, unless another
 * thread claimed it: from the file, or zero.  Returns 1 if placed, 0 if
 * another thread has it, -1 if it cannot be placed (the load failed).
 */
static int place_host_page(LazyBlock *lb, long page, uint8_t *buf)
{
    long hp = page / lb->tpp;

    if (!claim_page(lb, hp)) {
        return 0;
    }
    return place_claimed(lb, hp, buf) ? 1 : -1;
}

static void record_touch(LazyBlock *lb, long page, int64_t now)
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

/* Whether host page @hp of @lb is present. */
static bool page_placed(LazyBlock *lb, long hp)
{
    return qatomic_read(&lb->placed[BIT_WORD(hp)]) & BIT_MASK(hp);
}

/*
 * Have target page @page of @lb present: place it, or wait for the
 * thread that claimed it.  Returns 1 if this thread placed it, 0 if
 * another one did, -1 if it cannot be placed (the load failed).
 */
static int get_page(LazyBlock *lb, long page, uint8_t *buf)
{
    for (;;) {
        int r = place_host_page(lb, page, buf);

        if (r) {
            return r;
        }
        if (page_placed(lb, page / lb->tpp)) {
            return 0;
        }
        /* being placed; if that fails, it is unclaimed and we try */
        g_usleep(20);
    }
}

/* Page @page of @lb was placed for a thread that touched it at @t0. */
static void served(LazyBlock *lb, long page, int64_t t0)
{
    int64_t us = g_get_monotonic_time() - t0;

    qatomic_inc(&lazy.faults);
    qatomic_add(&lazy.fault_us, us);
    trace_mapped_ram_lazy_fault(lb->rb->idstr, page, us);
}

/* The vCPU whose thread is @tid, or NULL. */
static CPUState *vcpu_of_thread(uint32_t tid)
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
static void fault_failed(uint32_t tid)
{
    CPUState *cpu = vcpu_of_thread(tid);

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

static void serve_fault(struct uffd_msg *msg)
{
    uint64_t addr = msg->arg.pagefault.address;
    int64_t t0 = g_get_monotonic_time();
    ram_addr_t offset;
    RAMBlock *rb = qemu_ram_block_from_host((void *)(uintptr_t)addr, false,
                                            &offset);
    LazyBlock *lb = rb ? find_block(rb) : NULL;
    long page;
    int r;

    if (!lb) {
        lazy_fatal("fault at 0x%" PRIx64 " outside lazy guest RAM", addr);
    }
    page = offset >> TARGET_PAGE_BITS;
    record_touch(lb, page, t0);
    r = place_host_page(lb, page, lazy.fault_buf);
    if (r == 0) {
        /* claimed by the fill thread: its UFFDIO_COPY wakes the fault */
        trace_mapped_ram_lazy_fault_claimed(rb->idstr, page);
        return;
    }
    if (r < 0) {
        fault_failed(msg->arg.pagefault.feat.ptid);
        return;
    }
    served(lb, page, t0);
}

/* Stop this vCPU now, and the VM soon (vm_stop() from a vCPU thread). */
static void stop_this_vcpu(void)
{
    /* qemu_cpu_stop()'s wakeup of pause_all_vcpus() needs the BQL */
    BQL_LOCK_GUARD();

    vm_stop(RUN_STATE_INTERNAL_ERROR);
}

bool mapped_ram_lazy_tlb_fill(RAMBlock *rb, void *host)
{
    g_autofree uint8_t *buf = NULL;
    GPtrArray *blocks;
    LazyBlock *lb;
    int64_t t0;
    long page;
    int r;

    if (likely(!qatomic_read(&lazy.tlb_blocks))) {
        return true;            /* no lazy load runs */
    }
    RCU_READ_LOCK_GUARD();
    blocks = qatomic_rcu_read(&lazy.tlb_blocks);
    lb = blocks ? find_block_in(blocks, rb) : NULL;
    if (!lb) {
        return true;
    }
    page = ((uint8_t *)host - rb->host) >> TARGET_PAGE_BITS;
    if (page_placed(lb, page / lb->tpp)) {
        return true;
    }
    t0 = g_get_monotonic_time();
    record_touch(lb, page, t0);
    buf = g_malloc(lb->psize);
    r = get_page(lb, page, buf);
    if (r > 0) {
        served(lb, page, t0);
    }
    if (r >= 0) {
        return true;
    }
    /* lazy_fail() asked for the stop: this vCPU stops now, the rest soon */
    trace_mapped_ram_lazy_tlb_fill_failed(current_cpu ?
                                          current_cpu->cpu_index : -1);
    stop_this_vcpu();
    return false;
}

bool mapped_ram_lazy_active(void)
{
    return qatomic_read(&lazy.uffd) >= 0;
}

/*
 * A back end faulted on @offset of @rb at @client_addr (in its own address
 * space): place the page, unless it is there already or being placed (then
 * wait for it), and wake the back end.  In the fault thread, through the
 * device's handler and postcopy_request_shared_page().
 */
int mapped_ram_lazy_request_shared(struct PostCopyFD *pcfd, RAMBlock *rb,
                                   uint64_t client_addr, uint64_t offset)
{
    int64_t t0 = g_get_monotonic_time();
    LazyBlock *lb = find_block(rb);
    long page = offset >> TARGET_PAGE_BITS;

    if (!lb || offset >= rb->used_length) {
        /* not loaded lazily: its pages are all there */
        return postcopy_wake_shared(pcfd, client_addr, rb);
    }
    record_touch(lb, page, t0);
    /* if another thread places it, that wakes our vCPUs, not the back end */
    switch (get_page(lb, page, lazy.fault_buf)) {
    case -1:
        lazy_fatal("a vhost-user back end needs the page, and cannot be "
                   "stopped");
    case 1:
        qatomic_inc(&lazy.remote_faults);
        break;
    }
    trace_mapped_ram_lazy_remote_fault(pcfd->idstr, rb->idstr, page,
                                       g_get_monotonic_time() - t0);
    return postcopy_wake_shared(pcfd, client_addr, rb);
}

/* Serve the faults of the back end behind @pcfd. */
static void serve_remote(struct PostCopyFD *pcfd)
{
    struct uffd_msg msg[16];
    int n = uffd_read_events(pcfd->fd, msg, ARRAY_SIZE(msg));
    int i;

    for (i = 0; i < n; i++) {
        if (msg[i].event == UFFD_EVENT_PAGEFAULT &&
            pcfd->handler(pcfd, &msg[i]) < 0) {
            lazy_fatal("cannot serve a fault of %s at 0x%" PRIx64,
                       pcfd->idstr, (uint64_t)msg[i].arg.pagefault.address);
        }
    }
}

static void *fault_thread(void *opaque)
{
    struct pollfd pfd[2 + LAZY_REMOTE_MAX];

    rcu_register_thread();
    for (;;) {
        unsigned nremote = qatomic_load_acquire(&lazy.nremote);
        int64_t deadline = qatomic_read(&lazy.stop_deadline_us);
        struct uffd_msg msg[16];
        int timeout = -1;
        unsigned r;
        int n, i;

        if (deadline) {
            int64_t left = deadline - g_get_monotonic_time();

            if (left <= 0) {
                lazy_fatal("the VM did not stop within "
                           stringify(LAZY_STOP_TIMEOUT_MS) " ms after the "
                           "failure: a thread waits for a page that cannot "
                           "be placed");
            }
            timeout = left / 1000 + 1;
        }

        pfd[0] = (struct pollfd) { .fd = lazy.uffd, .events = POLLIN };
        pfd[1] = (struct pollfd) { .fd = lazy.quit_fd, .events = POLLIN };
        for (r = 0; r < nremote; r++) {
            pfd[2 + r] = (struct pollfd) { .fd = lazy.remote[r].fd,
                                           .events = POLLIN };
        }
        if (poll(pfd, 2 + nremote, timeout) < 0) {
            if (errno == EINTR) {
                continue;
            }
            lazy_fatal("nobody can serve faults: poll: %s", strerror(errno));
        }
        if (pfd[1].revents) {
            uint64_t v;

            if (qatomic_read(&lazy.quit)) {
                break;
            }
            /* back ends were added, or a failure set the deadline */
            if (read(lazy.quit_fd, &v, sizeof(v)) < 0) {
                /* nothing to read: another look is harmless */
            }
            continue;
        }
        for (r = 0; r < nremote; r++) {
            if (pfd[2 + r].revents) {
                serve_remote(&lazy.remote[r]);
            }
        }
        if (!pfd[0].revents) {
            continue;
        }
        n = uffd_read_events(lazy.uffd, msg, ARRAY_SIZE(msg));
        for (i = 0; i < n; i++) {
            if (msg[i].event == UFFD_EVENT_PAGEFAULT) {
                serve_fault(&msg[i]);
            }
        }
    }
    rcu_unregister_thread();
    return NULL;
}

/* Claim pages [first, end) of @lb one by one; returns the first not taken. */
static long claim_run(LazyBlock *lb, long first, long end)
{
    long p;

    for (p = first; p < end; p++) {
        if (!claim_page(lb, p)) {
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
static bool place_chunk(LazyBlock *lb, long first, uint8_t *chunk)
{
    void *host = lb->rb->host + ((size_t)first << TARGET_PAGE_BITS);
    long read = build_pages(lb, first, LAZY_CHUNK_PAGES, chunk);
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
        ret = uffd_copy_page(lazy.uffd, host + moved, chunk + moved,
                             LAZY_CHUNK_SIZE - moved, false);
        if (ret) {
            return lazy_fail(lb->rb, first + (moved >> TARGET_PAGE_BITS),
                             "cannot place the page", -ret);
        }
    } else {
        lazy.moved++;
    }
    bitmap_set_atomic(lb->placed, first, LAZY_CHUNK_PAGES);
    qatomic_add(&lazy.copied, read);
    qatomic_add(&lazy.zeroed, LAZY_CHUNK_PAGES - read);
    return true;
}

/*
 * Claim chunk [first, first + LAZY_CHUNK_PAGES) of @lb whole, if it holds
 * pages of the file and no thread touched it.  A fault may claim one of
 * its pages meanwhile: the pages claimed by then are placed one by one
 * (the faulting thread waits for them), and the chunk is not ours.
 */
static bool claim_chunk(LazyBlock *lb, long first, uint8_t *buf, bool *ok)
{
    long end = first + LAZY_CHUNK_PAGES, p, run;

    *ok = true;
    if (first >= lb->num_pages ||
        find_next_bit(lb->bitmap, MIN(end, lb->num_pages), first) >=
        MIN(end, lb->num_pages) ||
        find_next_bit(lb->claimed, end, first) < end) {
        return false;
    }
    run = claim_run(lb, first, end);
    if (run == end) {
        return true;
    }
    for (p = first; p < run && *ok; p++) {
        *ok = place_claimed(lb, p, buf);
    }
    if (!*ok) {
        unclaim_pages(lb, p, run - p);
    }
    return false;
}

/*
 * Place every page of @lb not placed yet; false if the load failed.
 * @chunk: LAZY_CHUNK_SIZE bytes, aligned, if @lb moves chunks in.
 */
static bool fill_block(LazyBlock *lb, uint8_t *buf, uint8_t *chunk)
{
    long used = lb->rb->used_length >> TARGET_PAGE_BITS;
    long p = 0;
    bool ok;

    if (lb->tpp > 1) {
        for (p = 0; p < used; p += lb->tpp) {
            if (place_host_page(lb, p, buf) < 0) {
                return false;
            }
        }
        return true;
    }

    while (p < used) {
        bool in_file = p < lb->num_pages && test_bit(p, lb->bitmap);
        long end, run;

        if (lb->move && !(p % LAZY_CHUNK_PAGES) &&
            p + LAZY_CHUNK_PAGES <= used) {
            if (claim_chunk(lb, p, buf, &ok)) {
                if (!place_chunk(lb, p, chunk)) {
                    unclaim_pages(lb, p, LAZY_CHUNK_PAGES);
                    return false;
                }
                p += LAZY_CHUNK_PAGES;
                continue;
            }
            if (!ok) {
                return false;
            }
        }
        if (test_bit(p, lb->claimed)) {     /* a hint: claim_run() decides */
            p++;
            continue;
        }
        /* a run of pages alike (in the file or not), not claimed yet */
        if (p >= lb->num_pages) {
            end = used;
        } else if (in_file) {
            end = find_next_zero_bit(lb->bitmap, lb->num_pages, p);
        } else {
            end = find_next_bit(lb->bitmap, lb->num_pages, p);
        }
        end = MIN(end, p + (in_file ? LAZY_FILL_BATCH : LAZY_ZERO_BATCH));
        if (lb->move) {
            /* stop at the next chunk: it may be moved in */
            end = MIN(end, ROUND_UP(p + 1, LAZY_CHUNK_PAGES));
        }
        run = claim_run(lb, p, end);
        if (run == p) {
            p++;
            continue;
        }
        if (in_file ? !read_pages(lb, p, run - p, buf) ||
                      !place_pages(lb, p, run - p, buf) :
                      !place_pages(lb, p, run - p, NULL)) {
            unclaim_pages(lb, p, run - p);
            return false;
        }
        p = run;
    }
    return true;
}

/*
 * Place the pages of the working set first, in its order.  Pages of
 * blocks this VM does not load lazily, or beyond them, are skipped: the
 * working set is a hint.
 */
static bool prefetch(uint8_t *buf)
{
    g_autofree LazyBlock **map = g_new0(LazyBlock *, lazy.ws->blocks->len);
    int64_t t0 = g_get_monotonic_time();
    uint64_t skipped = 0;
    guint i, j;
    int r;

    for (i = 0; i < lazy.ws->blocks->len; i++) {
        for (j = 0; j < lazy.blocks->len; j++) {
            LazyBlock *lb = g_ptr_array_index(lazy.blocks, j);

            if (!strcmp(lb->rb->idstr, g_ptr_array_index(lazy.ws->blocks, i))) {
                map[i] = lb;
            }
        }
    }
    for (i = 0; i < lazy.ws->pages->len; i++) {
        uint64_t e = g_array_index(lazy.ws->pages, uint64_t, i);
        LazyBlock *lb = map[MAPPED_RAM_WS_BLOCK_OF(e)];
        uint64_t page = MAPPED_RAM_WS_PAGE_OF(e);

        if (!lb || page >= lb->rb->used_length >> TARGET_PAGE_BITS) {
            skipped++;
            continue;
        }
        r = place_host_page(lb, page, buf);
        if (r < 0) {
            return false;
        }
        if (r > 0) {
            qatomic_inc(&lazy.prefetched);
        }
    }
    trace_mapped_ram_lazy_prefetch(lazy.ws->pages->len, lazy.prefetched,
                                   skipped, g_get_monotonic_time() - t0);
    return true;
}

static void finish(void)
{
    LazyBlocksFree *f = g_new(LazyBlocksFree, 1);
    guint i;

    /* every page is present: TLB fills need not look any more */
    qatomic_rcu_set(&lazy.tlb_blocks, NULL);
    qatomic_set(&lazy.quit, true);
    kick_fault_thread();
    qemu_thread_join(&lazy.fault_thread);
    for (i = 0; i < lazy.nremote; i++) {
        close(lazy.remote[i].fd);
    }
    lazy.nremote = 0;
    g_free(lazy.fault_buf);
    lazy.fault_buf = NULL;
    for (i = 0; i < lazy.blocks->len; i++) {
        LazyBlock *lb = g_ptr_array_index(lazy.blocks, i);

        uffd_unregister_memory(lazy.uffd, lb->rb->host, lb->rb->used_length);
    }
    f->blocks = lazy.blocks;
    lazy.blocks = NULL;
    call_rcu(f, lazy_blocks_free, rcu);
    mapped_ram_ws_free(lazy.ws);
    lazy.ws = NULL;
    uffd_close_fd(lazy.uffd);
    close(lazy.quit_fd);
    mapped_ram_map_release_file(&lazy.st);
    close(lazy.fd);
    lazy.uffd = lazy.quit_fd = lazy.fd = -1;
}

/*
 * Every page is present: release userfaultfd and the file, and say so.
 * In the main loop, so that what the monitor and the outgoing migration
 * check (lazy.fd) changes under the BQL.
 */
static void complete(void *opaque)
{
    Error *err = NULL;
    int64_t total_us;

    /* the back ends may fault until they hear it: the fault thread runs */
    if (lazy.nremote &&
        postcopy_notify(POSTCOPY_NOTIFY_INBOUND_END, &err)) {
        error_prepend(&err, "mapped-ram-load=lazy: a vhost-user back end "
                      "did not leave its postcopy mode: ");
        error_report_err(err);
    }
    finish();
    ram_block_discard_disable(false);
    /* the fault thread is gone: the counters hold still */
    total_us = lazy.total_us = g_get_monotonic_time() - lazy.start_us;
    lazy.completed = true;
    trace_mapped_ram_lazy_complete(total_us, lazy.fill_us, lazy.copied,
                                   lazy.zeroed, lazy.faults, lazy.fault_us);
    qapi_event_send_mapped_ram_lazy_loaded(total_us / 1000,
                                           lazy.fill_us / 1000, lazy.copied,
                                           lazy.zeroed, lazy.faults,
                                           lazy.fault_us, lazy.prefetched);
}

/*
 * Memory of our own to build chunks in, for blocks that move them in, or
 * NULL (*@area: what to unmap).  Without it, no block moves chunks in.
 */
static uint8_t *chunk_area(void **area)
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

static void *fill_thread(void *opaque)
{
    g_autofree uint8_t *buf = g_malloc(MAX(LAZY_FILL_BATCH * TARGET_PAGE_SIZE,
                                           lazy.max_psize));
    uint32_t delay_ms = migrate_mapped_ram_lazy_fill_delay_ms();
    void *area;
    uint8_t *chunk = chunk_area(&area);
    int64_t t0;
    guint i;

    rcu_register_thread();
    if (delay_ms) {
        /* x-mapped-ram-lazy-fill-delay-ms (tests): faults only, for now */
        g_usleep(delay_ms * 1000ULL);
    }
    t0 = g_get_monotonic_time();
    if (qatomic_read(&lazy.error) || (lazy.ws && !prefetch(buf))) {
        goto failed;
    }
    for (i = 0; i < lazy.blocks->len; i++) {
        if (!fill_block(g_ptr_array_index(lazy.blocks, i), buf, chunk)) {
            goto failed;
        }
    }
    lazy.fill_us = g_get_monotonic_time() - t0;
    trace_mapped_ram_lazy_fill(lazy.fill_us, lazy.moved);
    aio_bh_schedule_oneshot(qemu_get_aio_context(), complete, NULL);
failed:
    /* the VM stops (lazy_stop_bh); the load never completes */
    if (area != MAP_FAILED) {
        munmap(area, 2 * LAZY_CHUNK_SIZE);
    }
    rcu_unregister_thread();
    return NULL;
}

MappedRamWorkingSet *mapped_ram_lazy_working_set(uint32_t ms, Error **errp)
{
    MappedRamWorkingSet *ws;
    guint i;

    if (!lazy.completed) {
        error_setg(errp, lazy.names ? "the lazy load has not completed yet; "
                   "wait for the MAPPED_RAM_LAZY_LOADED event" :
                   "this VM was not loaded with mapped-ram-load=lazy");
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

MappedRamLazyInfo *mapped_ram_lazy_query(void)
{
    MappedRamLazyInfo *info;

    if (!lazy.names) {
        return NULL;
    }
    info = g_new0(MappedRamLazyInfo, 1);
    info->completed = lazy.completed;
    info->elapsed_ms = (lazy.completed ? lazy.total_us :
                        g_get_monotonic_time() - lazy.start_us) / 1000;
    info->total_pages = lazy.total_pages;
    info->pages_read = qatomic_read(&lazy.copied);
    info->pages_zeroed = qatomic_read(&lazy.zeroed);
    info->pages_prefetched = qatomic_read(&lazy.prefetched);
    info->faults = qatomic_read(&lazy.faults);
    info->remote_faults = qatomic_read(&lazy.remote_faults);
    info->error_desc = g_strdup(qatomic_read(&lazy.error));
    info->fault_us = qatomic_read(&lazy.fault_us);
    return info;
}

static void vm_running(void *opaque, bool running, RunState state)
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
    qemu_thread_create(&lazy.fill_thread, "mapped-ram-fill", fill_thread,
                       NULL, QEMU_THREAD_DETACHED);
}

static bool block_can_be_lazy(RAMBlock *rb, Error **errp)
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

/*
 * @rb is shared with the vhost-user back ends (a device registered a
 * postcopy notifier): have them take part as they do in postcopy, and read
 * the userfaultfds they registered.  A back end that cannot fails the load.
 */
static bool lazy_remote_setup(RAMBlock *rb, Error **errp)
{
    GArray *fds = migration_incoming_get_current()->postcopy_remote_fds;
    unsigned n = 0;

    if (postcopy_notify(POSTCOPY_NOTIFY_PROBE, errp) ||
        postcopy_notify(POSTCOPY_NOTIFY_INBOUND_ADVISE, errp)) {
        goto fail;
    }
    if (!fds || fds->len > LAZY_REMOTE_MAX) {
        error_setg(errp, "%u back ends, at most %d are supported",
                   fds ? fds->len : 0, LAZY_REMOTE_MAX);
        goto fail;
    }
    for (n = 0; n < fds->len; n++) {
        struct PostCopyFD *pcfd = &g_array_index(fds, struct PostCopyFD, n);

        lazy.remote[n] = *pcfd;
        /* ours: the device closes its own at INBOUND_END */
        lazy.remote[n].fd = fcntl(pcfd->fd, F_DUPFD_CLOEXEC, 0);
        if (lazy.remote[n].fd < 0) {
            error_setg_errno(errp, errno, "cannot duplicate the userfaultfd "
                             "of %s", pcfd->idstr);
            goto fail;
        }
    }
    if (postcopy_notify(POSTCOPY_NOTIFY_INBOUND_LISTEN, errp)) {
        goto fail;
    }
    trace_mapped_ram_lazy_remote_setup(rb->idstr, n);
    qatomic_store_release(&lazy.nremote, n);
    kick_fault_thread();
    return true;

fail:
    while (n--) {
        close(lazy.remote[n].fd);
    }
    error_prepend(errp, "mapped-ram-load=lazy: RAM block '%s' is shared with "
                  "a vhost-user back end, which must wait for its pages: ",
                  rb->idstr);
    error_append_hint(errp, "Load it with mapped-ram-load=copy, or give the "
                      "back end userfaultfd (postcopy) support.\n");
    return false;
}

static bool lazy_setup(QEMUFile *f, Error **errp)
{
    uint64_t features;

    if (lazy.uffd >= 0) {
        return true;
    }
    if (lazy.fill_started) {
        error_setg(errp, "mapped-ram-load=lazy: a lazy load ran already in "
                   "this process");
        return false;
    }
    if (migrate_postcopy_ram()) {
        error_setg(errp, "mapped-ram-load=lazy cannot be used with "
                   "postcopy-ram");
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
    lazy.quit_fd = eventfd(0, EFD_CLOEXEC);
    if (lazy.quit_fd < 0) {
        error_setg_errno(errp, errno, "mapped-ram-load=lazy: eventfd");
        goto fail;
    }
    /* no reallocation: the fault thread reads it unlocked */
    lazy.blocks = g_ptr_array_new_full(RAM_BLOCKS_MAX, lazy_block_free);
    lazy.names = g_ptr_array_new_with_free_func(g_free);
    lazy.touched = g_array_new(false, false, sizeof(LazyTouch));
    qemu_mutex_init(&lazy.touch_lock);
    lazy.start_us = g_get_monotonic_time();
    /* blocks come after the fault thread starts: size for any of them */
    lazy.max_psize = MAX(qemu_maxrampagesize(), TARGET_PAGE_SIZE);
    lazy.fault_buf = g_malloc(lazy.max_psize);
    lazy.quit = false;
    qemu_thread_create(&lazy.fault_thread, "mapped-ram-fault", fault_thread,
                       NULL, QEMU_THREAD_JOINABLE);
    lazy.vmstate = qemu_add_vm_change_state_handler(vm_running, NULL);
    return true;

fail:
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
    return false;
}

bool mapped_ram_lazy_block(QEMUFile *f, RAMBlock *rb,
                           const unsigned long *bitmap, long num_pages,
                           Error **errp)
{
    uint64_t ioctls;
    LazyBlock *lb;

    if (!block_can_be_lazy(rb, errp) || !lazy_setup(f, errp) ||
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
    if (find_block(rb)) {
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
    lb->psize = rb->page_size;
    lb->tpp = rb->page_size >> TARGET_PAGE_BITS;
    lb->claimed = bitmap_new(rb->used_length / rb->page_size);
    lb->placed = bitmap_new(rb->used_length / rb->page_size);
    /* UFFDIO_MOVE takes private anonymous memory only */
    lb->move = (lazy.features & UFFD_FEATURE_MOVE) &&
               (ioctls & BIT_ULL(_UFFDIO_MOVE)) && lb->tpp == 1 &&
               rb->fd < 0 && !qemu_ram_is_shared(rb) &&
               QEMU_PTR_IS_ALIGNED(rb->host, LAZY_CHUNK_SIZE);
    g_ptr_array_add(lazy.blocks, lb);
    g_ptr_array_add(lazy.names, g_strdup(rb->idstr));
    lazy.total_pages += rb->used_length >> TARGET_PAGE_BITS;
    trace_mapped_ram_lazy_block(rb->idstr, rb->used_length, rb->pages_offset,
                                lb->move);
    return true;
}
