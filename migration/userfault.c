/*
 * Serve the page faults of guest RAM that a loader fills through
 * userfaultfd
 *
 * A loader that lets the guest run before guest RAM is all there
 * registers the RAM with a userfaultfd (missing mode) and starts a
 * UserfaultServer: a thread that waits on that userfaultfd, on the
 * userfaultfds of the vhost-user back ends that share the RAM, and on an
 * eventfd, and hands each fault to the loader's UserfaultOps.  The
 * loader places the pages; the server only reads faults and dispatches
 * them, so that the way faults reach a loader is written once.
 *
 * A back end's fault goes through its device's handler (vhost-user.c),
 * which turns the address into a block and an offset and calls
 * postcopy_request_shared_page(): that asks
 * userfault_request_shared_page() first, and the page is the running
 * server's to place rather than a migration source's.  Devices that
 * would map guest RAM in another process ask migration_ram_plug_check()
 * before they are plugged.  Neither postcopy-ram.c nor vhost-user.c
 * knows which loader runs.
 *
 * One server runs at a time; it is set and cleared in the main thread,
 * where plugging happens, and only its own thread reaches it through a
 * back end's fault.  A back end's userfaultfd is read through a
 * duplicate; when its device lets go of it (unplugged, or its back end
 * went away: postcopy_unregister_shared_ufd()), the server drops it at
 * the top of its loop and says so before the device goes on, so that it
 * never calls a handler whose device is gone.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <poll.h>
#include <sys/eventfd.h>
#include "qemu/error-report.h"
#include "qemu/lockable.h"
#include "qemu/rcu.h"
#include "qemu/userfaultfd.h"
#include "qapi/error.h"
#include "migration/misc.h"
#include "userfault.h"
#include "trace.h"

static UserfaultServer *active_server;

/* Hand the faults that @fd has to @s's ops; @r for a back end's. */
static void userfault_read_faults(UserfaultServer *s, int fd,
                                  UserfaultRemote *r)
{
    struct uffd_msg msg[16];
    int n = uffd_read_events(fd, msg, ARRAY_SIZE(msg));
    int i;

    for (i = 0; i < n; i++) {
        uint64_t addr = msg[i].arg.pagefault.address;
        ram_addr_t offset = 0;
        RAMBlock *rb;

        if (msg[i].event != UFFD_EVENT_PAGEFAULT) {
            continue;
        }
        if (r) {
            /* the device knows where its mapping is */
            if (r->handler(r->dev, &msg[i]) < 0) {
                /* it would wait forever, and the device with it */
                error_report("userfault: cannot serve a fault of %s at "
                             "0x%" PRIx64 "; exiting", r->name, addr);
                _exit(EXIT_FAILURE);
            }
            continue;
        }
        rb = qemu_ram_block_from_host((void *)(uintptr_t)addr, false,
                                      &offset);
        s->ops->fault(s->opaque, rb, offset, addr,
                      msg[i].arg.pagefault.feat.ptid);
    }
}

/* Let go of the back ends whose devices let go of theirs. */
static void userfault_drop_gone(UserfaultServer *s)
{
    unsigned r, n = qatomic_load_acquire(&s->nremote);
    bool dropped = false;

    QEMU_LOCK_GUARD(&s->remote_lock);
    for (r = 0; r < n; r++) {
        if (s->remote[r].gone && s->remote[r].fd >= 0) {
            close(s->remote[r].fd);
            s->remote[r].fd = -1;
            trace_userfault_server_drop_remote(s->remote[r].name);
            dropped = true;
        }
    }
    if (dropped) {
        qemu_cond_broadcast(&s->remote_cond);
    }
}

static void *userfault_server_thread(void *opaque)
{
    UserfaultServer *s = opaque;
    struct pollfd pfd[2 + USERFAULT_REMOTE_MAX];

    rcu_register_thread();
    for (;;) {
        unsigned nremote = qatomic_load_acquire(&s->nremote);
        int timeout = s->ops->timeout_ms ? s->ops->timeout_ms(s->opaque) : -1;
        unsigned r;
        int ret;

        if (timeout == 0) {
            s->ops->timed_out(s->opaque);
            continue;
        }
        userfault_drop_gone(s);
        pfd[0] = (struct pollfd) { .fd = s->uffd, .events = POLLIN };
        pfd[1] = (struct pollfd) { .fd = s->wake_fd, .events = POLLIN };
        for (r = 0; r < nremote; r++) {
            /* poll() passes over a negative descriptor: one that is gone */
            pfd[2 + r] = (struct pollfd) { .fd = s->remote[r].fd,
                                           .events = POLLIN };
        }
        ret = poll(pfd, 2 + nremote, timeout);
        if (ret < 0 && errno == EINTR) {
            continue;
        }
        if (ret < 0) {
            /* nothing can serve faults any more: they would wait forever */
            error_report("userfault: poll: %s; exiting", strerror(errno));
            _exit(EXIT_FAILURE);
        }
        if (pfd[1].revents) {
            uint64_t v;

            if (qatomic_read(&s->quit)) {
                break;
            }
            if (read(s->wake_fd, &v, sizeof(v)) < 0) {
                /* nothing to read: another look is harmless */
            }
            continue;
        }
        for (r = 0; r < nremote; r++) {
            if (pfd[2 + r].revents && !qatomic_read(&s->remote[r].gone)) {
                userfault_read_faults(s, s->remote[r].fd, &s->remote[r]);
            }
        }
        if (pfd[0].revents) {
            userfault_read_faults(s, s->uffd, NULL);
        }
    }
    rcu_unregister_thread();
    return NULL;
}

bool userfault_server_start(UserfaultServer *s, int uffd, const char *name,
                            const UserfaultOps *ops, void *opaque,
                            Error **errp)
{
    assert(!active_server && ops->fault);
    *s = (UserfaultServer) {
        .uffd = uffd,
        .ops = ops,
        .opaque = opaque,
        .wake_fd = -1,
        .remote = g_new0(UserfaultRemote, USERFAULT_REMOTE_MAX),
    };
    qemu_mutex_init(&s->remote_lock);
    qemu_cond_init(&s->remote_cond);
    s->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (s->wake_fd < 0) {
        error_setg_errno(errp, errno, "cannot create an eventfd for the "
                         "thread that serves page faults");
        g_free(s->remote);
        return false;
    }
    active_server = s;
    qemu_thread_create(&s->thread, name, userfault_server_thread, s,
                       QEMU_THREAD_JOINABLE);
    trace_userfault_server_start(name);
    return true;
}

bool userfault_server_add_remote(UserfaultServer *s, int fd,
                                 const char *name,
                                 int (*handler)(void *dev, void *msg),
                                 void *dev, Error **errp)
{
    UserfaultRemote *r;

    if (s->nremote == USERFAULT_REMOTE_MAX) {
        error_setg(errp, "more than %d vhost-user back ends share guest RAM",
                   USERFAULT_REMOTE_MAX);
        return false;
    }
    r = &s->remote[s->nremote];
    *r = (UserfaultRemote) {
        /* ours: the device closes its own when it leaves postcopy mode */
        .fd = fcntl(fd, F_DUPFD_CLOEXEC, 0),
        .dev_fd = fd,
        .handler = handler,
        .dev = dev,
    };
    if (r->fd < 0) {
        error_setg_errno(errp, errno, "cannot duplicate the userfaultfd of "
                         "%s", name);
        return false;
    }
    r->name = g_strdup(name);
    qatomic_store_release(&s->nremote, s->nremote + 1);
    userfault_server_kick(s);
    trace_userfault_server_add_remote(name);
    return true;
}

void userfault_server_kick(UserfaultServer *s)
{
    uint64_t one = 1;

    if (s->wake_fd < 0) {
        return;                 /* stopped: nothing to look at */
    }
    if (write(s->wake_fd, &one, sizeof(one)) < 0) {
        error_report("userfault: cannot wake the thread that serves page "
                     "faults: %s", strerror(errno));
    }
}

void userfault_server_stop(UserfaultServer *s)
{
    unsigned r;

    qatomic_set(&s->quit, true);
    userfault_server_kick(s);
    qemu_thread_join(&s->thread);
    /* the thread is gone: no back end's fault reaches us any more */
    active_server = NULL;
    for (r = 0; r < s->nremote; r++) {
        if (s->remote[r].fd >= 0) {
            close(s->remote[r].fd);
        }
        g_free(s->remote[r].name);
    }
    s->nremote = 0;
    g_free(s->remote);
    s->remote = NULL;
    close(s->wake_fd);
    s->wake_fd = -1;
    qemu_cond_destroy(&s->remote_cond);
    qemu_mutex_destroy(&s->remote_lock);
    trace_userfault_server_stop();
}

bool userfault_request_shared_page(struct PostCopyFD *pcfd, RAMBlock *rb,
                                   uint64_t client_addr, uint64_t offset,
                                   int *ret)
{
    UserfaultServer *s = active_server;

    if (!s || !s->ops->shared_fault) {
        return false;
    }
    *ret = s->ops->shared_fault(s->opaque, pcfd, rb, client_addr, offset);
    return true;
}

void userfault_remote_gone(int fd)
{
    UserfaultServer *s = active_server;
    unsigned r;

    if (!s) {
        return;
    }
    for (r = 0; r < s->nremote; r++) {
        UserfaultRemote *rem = &s->remote[r];

        if (rem->dev_fd != fd || rem->gone) {
            continue;
        }
        QEMU_LOCK_GUARD(&s->remote_lock);
        qatomic_set(&rem->gone, true);
        userfault_server_kick(s);
        while (rem->fd >= 0) {
            qemu_cond_wait(&s->remote_cond, &s->remote_lock);
        }
        return;
    }
}

bool migration_ram_plug_check(const char *what, Error **errp)
{
    UserfaultServer *s = active_server;

    return !s || !s->ops->check_plug ||
           s->ops->check_plug(s->opaque, what, errp);
}
