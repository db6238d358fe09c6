/*
 * Serve the page faults of guest RAM that a loader fills through
 * userfaultfd
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_USERFAULT_H
#define QEMU_MIGRATION_USERFAULT_H

#include "exec/cpu-common.h"
#include "qemu/thread.h"

struct PostCopyFD;

/* What a loader does with the faults its server reads. */
typedef struct UserfaultOps {
    /*
     * A thread of this process (@tid: its id, 0 if the kernel did not
     * say) waits for the page at @offset of @rb (NULL, @addr being
     * outside guest RAM).  The page must be placed, or the thread is
     * the loader's to deal with.
     */
    void (*fault)(void *opaque, RAMBlock *rb, ram_addr_t offset,
                  uint64_t addr, uint32_t tid);
    /*
     * The back end behind @pcfd (a vhost-user device; its handler turned
     * the fault into a block and an offset) waits for the page at
     * @offset of @rb, at @client_addr in its own address space: have the
     * page there, and wake the back end.  Returns what the wake returned.
     */
    int (*shared_fault)(void *opaque, struct PostCopyFD *pcfd,
                        RAMBlock *rb, uint64_t client_addr,
                        ram_addr_t offset);
    /*
     * Milliseconds until the server must call @timed_out (-1: never).
     * Asked before each wait, and again after userfault_server_kick().
     */
    int (*timeout_ms)(void *opaque);
    void (*timed_out)(void *opaque);
    /*
     * A device that maps guest RAM in another process is about to be
     * plugged, or its back end to connect again (@what says it cannot,
     * for the message): false with @errp set if it cannot while this
     * loader runs.
     */
    bool (*check_plug)(void *opaque, const char *what, Error **errp);
} UserfaultOps;

/* The userfaultfds of vhost-user back ends a server reads, at most. */
#define USERFAULT_REMOTE_MAX 16

/*
 * A userfaultfd of another process (a vhost-user back end) that a server
 * reads: each fault message goes to @handler, the device's, which turns
 * it into a block and an offset and calls back through
 * postcopy_request_shared_page().
 */
typedef struct UserfaultRemote {
    int fd;                     /* our duplicate; -1 once gone */
    int dev_fd;                 /* the device's, to know it again */
    char *name;
    int (*handler)(void *dev, void *msg);
    void *dev;
    bool gone;                  /* the device let go of it */
} UserfaultRemote;

typedef struct UserfaultServer {
    int uffd;
    int wake_fd;                /* eventfd: look again, or quit */
    bool quit;
    const UserfaultOps *ops;
    void *opaque;
    QemuThread thread;
    UserfaultRemote *remote;
    unsigned nremote;
    /* removing a back end: the server acknowledges it let go */
    QemuMutex remote_lock;
    QemuCond remote_cond;
} UserfaultServer;

#ifdef CONFIG_LINUX
/*
 * Start a thread named @name that reads the faults of @uffd and hands
 * them to @ops.  @s is the server of this process until
 * userfault_server_stop(): back ends' faults that reach
 * postcopy_request_shared_page() go to its @ops.  One server at a time.
 */
bool userfault_server_start(UserfaultServer *s, int uffd, const char *name,
                            const UserfaultOps *ops, void *opaque,
                            Error **errp);

/*
 * Read the faults of a back end's userfaultfd @fd too (a duplicate of
 * it, closed on stop or when the device lets go of it): each goes to
 * @handler(@dev, message).  @name names it in messages.
 */
bool userfault_server_add_remote(UserfaultServer *s, int fd,
                                 const char *name,
                                 int (*handler)(void *dev, void *msg),
                                 void *dev, Error **errp);

/* Have the server ask @ops->timeout_ms again. */
void userfault_server_kick(UserfaultServer *s);

/*
 * Stop the thread and wait for it; from then on, back ends' faults go to
 * postcopy again.  @uffd stays open: it is the caller's.
 */
void userfault_server_stop(UserfaultServer *s);

/*
 * For postcopy_request_shared_page(): if a server runs, hand it the back
 * end's fault (*@ret: what its @ops returned) and return true.
 */
bool userfault_request_shared_page(struct PostCopyFD *pcfd, RAMBlock *rb,
                                   uint64_t client_addr, uint64_t offset,
                                   int *ret);

/*
 * For postcopy_unregister_shared_ufd(): the device whose userfaultfd is
 * @fd lets go of it (it is being unplugged, or its back end went away).
 * Returns once the running server, if any, no longer reads it nor calls
 * its handler.
 */
void userfault_remote_gone(int fd);
#else
static inline bool userfault_request_shared_page(struct PostCopyFD *pcfd,
                                                 RAMBlock *rb,
                                                 uint64_t client_addr,
                                                 uint64_t offset, int *ret)
{
    return false;
}

static inline void userfault_remote_gone(int fd)
{
}
#endif

#endif
