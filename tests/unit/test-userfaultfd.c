/*
 * Unit tests for util/userfaultfd.c: placing a range of pages in full
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/ioctl.h>
#include "qemu/bitops.h"
#include "qemu/userfaultfd.h"

#define NPAGES 8

typedef struct Fixture {
    int uffd;
    size_t psize;
    uint8_t *area;          /* NPAGES pages, registered (missing mode) */
    uint8_t *src;           /* NPAGES pages, page i filled with i + 1 */
} Fixture;

static bool fixture_init(Fixture *f)
{
    uint64_t ioctls;
    size_t i;

    f->psize = qemu_real_host_page_size();
    f->uffd = uffd_create_fd(0, false);
    if (f->uffd < 0) {
        g_test_skip("userfaultfd is not available here");
        return false;
    }
    f->area = mmap(NULL, NPAGES * f->psize, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    g_assert(f->area != MAP_FAILED);
    g_assert_cmpint(uffd_register_memory(f->uffd, f->area, NPAGES * f->psize,
                                         UFFDIO_REGISTER_MODE_MISSING,
                                         &ioctls), ==, 0);
    g_assert_true(ioctls & BIT_ULL(_UFFDIO_COPY));
    f->src = g_malloc(NPAGES * f->psize);
    for (i = 0; i < NPAGES; i++) {
        memset(f->src + i * f->psize, i + 1, f->psize);
    }
    return true;
}

static void fixture_destroy(Fixture *f)
{
    uffd_unregister_memory(f->uffd, f->area, NPAGES * f->psize);
    munmap(f->area, NPAGES * f->psize);
    uffd_close_fd(f->uffd);
    g_free(f->src);
}

/* Page @i of the area holds @byte (it is present: no fault, no wait). */
static void check_page(Fixture *f, size_t i, uint8_t byte)
{
    size_t j;

    for (j = 0; j < f->psize; j++) {
        g_assert_cmpint(f->area[i * f->psize + j], ==, byte);
    }
}

static void test_place_whole(void)
{
    Fixture f;
    uint64_t placed;
    size_t i;

    if (!fixture_init(&f)) {
        return;
    }
    g_assert_cmpint(uffd_place_range(f.uffd, f.area, f.src, 4 * f.psize,
                                     false, &placed), ==, 0);
    g_assert_cmpint(placed, ==, 4 * f.psize);
    g_assert_cmpint(uffd_place_range(f.uffd, f.area + 4 * f.psize, NULL,
                                     4 * f.psize, false, &placed), ==, 0);
    g_assert_cmpint(placed, ==, 4 * f.psize);
    for (i = 0; i < NPAGES; i++) {
        check_page(&f, i, i < 4 ? i + 1 : 0);
    }
    fixture_destroy(&f);
}

/*
 * A page in the middle of the range is there already: the kernel places
 * the pages before it and stops (EAGAIN, with its progress).  The range
 * is carried on, and the failure reported is the one of that page.
 */
static void place_over_present(bool zero)
{
    Fixture f;
    uint64_t placed;
    size_t i;

    if (!fixture_init(&f)) {
        return;
    }
    /* page 3 is present */
    g_assert_cmpint(uffd_place_range(f.uffd, f.area + 3 * f.psize,
                                     f.src + 3 * f.psize, f.psize, false,
                                     NULL), ==, 0);
    g_assert_cmpint(uffd_place_range(f.uffd, f.area, zero ? NULL : f.src,
                                     NPAGES * f.psize, false, &placed),
                    ==, -EEXIST);
    g_assert_cmpint(placed, ==, 3 * f.psize);
    for (i = 0; i < 4; i++) {
        check_page(&f, i, zero && i < 3 ? 0 : i + 1);
    }
    /* the rest can still be placed */
    g_assert_cmpint(uffd_place_range(f.uffd, f.area + 4 * f.psize,
                                     zero ? NULL : f.src + 4 * f.psize,
                                     4 * f.psize, false, &placed), ==, 0);
    for (i = 4; i < NPAGES; i++) {
        check_page(&f, i, zero ? 0 : i + 1);
    }
    fixture_destroy(&f);
}

static void test_copy_over_present(void)
{
    place_over_present(false);
}

static void test_zero_over_present(void)
{
    place_over_present(true);
}

/* A range that is not registered: nothing placed, the error says why. */
static void test_place_unregistered(void)
{
    Fixture f;
    uint64_t placed = 1;

    if (!fixture_init(&f)) {
        return;
    }
    g_assert_cmpint(uffd_unregister_memory(f.uffd, f.area, NPAGES * f.psize),
                    ==, 0);
    g_assert_cmpint(uffd_place_range(f.uffd, f.area, f.src, f.psize, false,
                                     &placed), ==, -ENOENT);
    g_assert_cmpint(placed, ==, 0);
    fixture_destroy(&f);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/userfaultfd/place/whole", test_place_whole);
    g_test_add_func("/userfaultfd/place/copy-over-present",
                    test_copy_over_present);
    g_test_add_func("/userfaultfd/place/zero-over-present",
                    test_zero_over_present);
    g_test_add_func("/userfaultfd/place/unregistered",
                    test_place_unregistered);
    return g_test_run();
}
