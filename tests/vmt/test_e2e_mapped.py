# SPDX-License-Identifier: GPL-2.0-or-later
"""
VMT end-to-end tests, "template from any VM": a VM with ordinary anonymous
RAM is saved with upstream's mapped-ram capability to one fixed-ram file;
clones load it with the migration parameter mapped-ram-load=map (the
file's page regions mapped copy-on-write over guest RAM) or =lazy (pages
read on fault through userfaultfd and by a background fill) and, for
comparison, one clone with upstream's copying load; and a lazy clone
whose vhost-user-blk back end waits for its pages as in postcopy.  Run
with tests/vmt/run.py.

The map and lazy tests are skipped when the QEMU under test has no such
mapped-ram-load value (upstream QEMU).  These tests assert behaviour only; they never
check timings.
"""

import os
import subprocess
import time
import unittest

import vmt

WRITE_MIB = 8
RAM_KIB = vmt.parse_size(vmt.GUEST_MEM) >> 10


class MappedRamCloneTest(unittest.TestCase):
    """Template with anonymous RAM saved with mapped-ram to
    template.fixed; NCLONES clones load it with mapped-ram-load=map (the
    last one over QMP: -incoming defer, migrate-set-parameters,
    migrate-incoming; the others with -global ... -incoming file:), two
    with mapped-ram-load=lazy (the same two ways), one clone with the
    default copy load."""

    NCLONES = 3
    TEMPLATE_SEED = 11
    CLONE_SEED = 1234
    DEVICES = ['-device', 'vmgenid']

    @classmethod
    def setUpClass(cls):
        cls.tmp = vmt.TempDir(prefix='vmt-e2e-mapped-')
        cls.fixed = cls.tmp.join('template.fixed')
        cls.clones = []
        cls.copy_clone = None
        cls.map_skip = None
        cls.lazy_skip = None
        cls.lazy_clones = []
        try:
            with vmt.VM(name='template', tmpdir=cls.tmp.path,
                        extra_args=cls.DEVICES) as t:
                t.launch()
                why = vmt.mode_unsupported(t, 'copy')
                if why:
                    raise unittest.SkipTest(why)
                cls.map_skip = vmt.mode_unsupported(t, 'map')
                cls.lazy_skip = vmt.mode_unsupported(t, 'lazy')
                t.wait_banner()
                a = t.agent
                ans = a.write(cls.TEMPLATE_SEED, WRITE_MIB)
                assert ans == f'ok write {WRITE_MIB}', ans
                cls.template_sum = a.sum()
                vmt.save_template(t, cls.fixed, 'map')
                cls.template_status = t.status()
                t.shutdown()
            cls.fixed_sha = vmt.sha256_file(cls.fixed)
            cls.copy_clone = cls._start_clone('copy', 'copy', defer=False)
            if not cls.map_skip:
                for i in range(cls.NCLONES):
                    cls.clones.append(cls._start_clone(
                        f'map{i}', 'map', defer=i == cls.NCLONES - 1))
            if not cls.lazy_skip:
                for i in range(2):
                    cls.lazy_clones.append(cls._start_clone(
                        f'lazy{i}', 'lazy', defer=i == 1))
            for c in [cls.copy_clone] + cls.clones + cls.lazy_clones:
                c.wait_pong()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _start_clone(cls, name, mode, defer):
        c = vmt.VM(name=name, tmpdir=cls.tmp.path,
                   extra_args=vmt.clone_args(None, cls.fixed, mode, defer) +
                   cls.DEVICES)
        c.load_mode = mode
        c.defer = defer
        # registered (for cleanup) as soon as launched
        c.launch()
        vmt.restore_clone(c, cls.fixed, mode, defer)
        return c

    @classmethod
    def tearDownClass(cls):
        for c in cls.clones + cls.lazy_clones + [cls.copy_clone]:
            if c:
                c.kill()
        cls.tmp.cleanup()

    def need_map(self):
        if self.map_skip:
            self.skipTest(self.map_skip)

    def need_lazy(self):
        if self.lazy_skip:
            self.skipTest(self.lazy_skip)

    # -- the template and its file (upstream mapped-ram)

    def test_a_saved_running_template(self):
        # migration stopped the VM at completion; it was not stopped before
        self.assertEqual(self.template_status, 'postmigrate')

    def test_b_file_is_fixed_ram(self):
        apparent, allocated = vmt.file_sizes(self.fixed)
        # every RAM page has its place in the file ...
        self.assertGreaterEqual(apparent, RAM_KIB << 10)
        # ... but zero pages are holes: a freshly booted 256 MiB guest
        # has not touched all of its RAM
        self.assertLess(allocated, RAM_KIB << 10)

    # -- the copying load, for comparison

    def test_c_copy_clone(self):
        c = self.copy_clone
        self.assertEqual(c.status(), 'running')
        self.assertEqual(c.agent.ping(), 'pong')
        self.assertEqual(c.agent.sum(), self.template_sum)
        # guest RAM stays an anonymous mapping of the RAM size
        m = vmt.clone_ram(c, self.fixed, None, 'copy')
        self.assertEqual(m['Size'], RAM_KIB)
        with self.assertRaises(vmt.VMTError):
            c.smaps(path=self.fixed)

    # -- mapped-ram-load=map

    def test_d_map_clones_run(self):
        self.need_map()
        for c in self.clones:
            self.assertEqual(c.status(), 'running', c.name)
            self.assertEqual(c.agent.ping(), 'pong', c.name)

    def test_e_map_clones_see_template_data(self):
        self.need_map()
        for c in self.clones:
            self.assertEqual(c.agent.sum(), self.template_sum, c.name)

    def test_f_map_ram_is_file_mapping(self):
        self.need_map()
        for c in self.clones:
            m = vmt.clone_ram(c, self.fixed, None, 'map')
            # the guest RAM (and the ROM blocks) map the file; ranges of
            # pages that the live save wrote and then found zero get
            # anonymous zero mappings, so allow for some of those
            self.assertGreater(m['Size'], RAM_KIB * 9 // 10, f'{c.name}: {m}')
            private = m['Private_Clean'] + m['Private_Dirty']
            self.assertLess(private, RAM_KIB // 2, f'{c.name}: {m}')
            # the clones run the same guest from the same file pages: most
            # of what is resident is shared (Shared_Dirty rather than
            # Shared_Clean when the file is on tmpfs, whose pages are
            # always dirty)
            shared = m['Shared_Clean'] + m['Shared_Dirty']
            self.assertGreater(shared, private, f'{c.name}: {m}')

    def test_g_map_clone_writes_are_private(self):
        self.need_map()
        a0 = self.clones[0].agent
        self.assertEqual(a0.write(self.CLONE_SEED, WRITE_MIB),
                         f'ok write {WRITE_MIB}')
        s0 = a0.sum()
        self.assertNotEqual(s0, self.template_sum)
        for c in self.clones[1:] + [self.copy_clone]:
            self.assertEqual(c.agent.sum(), self.template_sum, c.name)
        self.assertEqual(a0.sum(), s0)
        # the written pages are private copies of clone 0 (most of them
        # in the file mapping; a few may land in anonymous zero ranges) ...
        m = vmt.clone_ram(self.clones[0], self.fixed, None, 'map')
        self.assertGreaterEqual(m['Anonymous'], (WRITE_MIB << 10) * 3 // 4,
                                str(m))
        # ... and the file is never written
        self.assertEqual(vmt.sha256_file(self.fixed), self.fixed_sha)

    def test_h_map_clone_refuses_to_save_into_its_file(self):
        # writing the file would change the memory of every clone
        self.need_map()
        c = self.clones[-1]
        c.set_caps(mapped_ram=True)
        c.cmd('migrate-set-parameters', **{'max-bandwidth': 0})
        refused = False
        try:
            c.cmd('migrate', uri=f'file:{self.fixed}')
        except vmt.VMTError:
            raise
        except Exception:
            refused = True      # an error answer to the migrate command
        if not refused:
            # or the migration fails
            with self.assertRaises(vmt.VMTError):
                c.wait_migration(timeout=60)
        self.assertEqual(vmt.sha256_file(self.fixed), self.fixed_sha)
        self.assertEqual(c.status(), 'running')
        for x in self.clones:
            self.assertEqual(x.agent.ping(), 'pong', x.name)


    # -- mapped-ram-load=lazy

    def test_i_lazy_clones_see_template_data(self):
        self.need_lazy()
        for c in self.lazy_clones:
            ev = c.wait_event('MAPPED_RAM_LAZY_LOADED')['data']
            vmt.log(f'{c.name}: lazy load {ev}')
            # the guest's RAM came from the file, holes as zero pages
            self.assertGreater(ev['pages-read'], (WRITE_MIB << 20) // 4096)
            self.assertGreater(ev['pages-zeroed'], 0)
            self.assertEqual(c.status(), 'running', c.name)
            self.assertEqual(c.agent.sum(), self.template_sum, c.name)
            # loaded into anonymous memory: nothing maps the file
            m = vmt.clone_ram(c, self.fixed, None, 'lazy')
            self.assertEqual(m['Size'], RAM_KIB)
            with self.assertRaises(vmt.VMTError):
                c.smaps(path=self.fixed)

    def test_j_lazy_clone_writes_are_private(self):
        self.need_lazy()
        a0 = self.lazy_clones[0].agent
        self.assertEqual(a0.write(self.CLONE_SEED + 1, WRITE_MIB),
                         f'ok write {WRITE_MIB}')
        self.assertNotEqual(a0.sum(), self.template_sum)
        self.assertEqual(self.lazy_clones[1].agent.sum(), self.template_sum)
        self.assertEqual(vmt.sha256_file(self.fixed), self.fixed_sha)

    def test_k_lazy_clone_with_working_set(self):
        """The first lazy clone's working set (mapped-ram-save-working-set
        once its load completed) is given to a new lazy clone, which
        places those pages first and sees the template's data."""
        self.need_lazy()
        ws = self.tmp.join('template.ws')
        c0 = self.lazy_clones[0]
        deadline = time.monotonic() + 120
        while True:
            try:
                c0.cmd('mapped-ram-save-working-set', filename=ws)
                break
            except Exception as e:  # noqa: B902 (the QMP error class)
                # test_i waited for the event: only a slow fill gets here
                if ('not completed yet' not in str(e) or
                        time.monotonic() > deadline):
                    raise
                time.sleep(0.1)
        magic, _, pages = vmt.working_set_header(ws)
        self.assertEqual(magic, b'QEMUMRWS')
        vmt.log(f'working set of {c0.name}: {pages} pages')
        self.assertGreater(pages, 0)
        c = vmt.VM(name='lazy-ws', tmpdir=self.tmp.path,
                   extra_args=vmt.clone_args(None, self.fixed, 'lazy') +
                   ['-global', f'migration.mapped-ram-working-set={ws}'] +
                   self.DEVICES)
        self.lazy_clones.append(c)      # killed by tearDownClass
        c.launch()
        vmt.restore_clone(c, self.fixed, 'lazy')
        c.wait_pong()
        ev = c.wait_event('MAPPED_RAM_LAZY_LOADED')['data']
        vmt.log(f'{c.name}: lazy load {ev}')
        self.assertGreater(ev['pages-prefetched'], 0)
        self.assertLessEqual(ev['pages-prefetched'], pages)
        self.assertEqual(c.agent.sum(), self.template_sum)
        c.kill()


class LazyVhostUserTest(unittest.TestCase):
    """A template whose guest has a vhost-user-blk disk (served by
    contrib/vhost-user-blk, in another process) and shared memfd RAM is
    saved with mapped-ram; a clone with a back end of its own on the same
    disk image loads it with mapped-ram-load=lazy.  The back end maps the
    clone's RAM and writes what it reads from the disk into guest pages
    the fill may not have placed yet: it must wait for them, through its
    userfaultfd, as in postcopy.  The template's guest reads its disk in a
    loop when it is saved, so that the clone's reads start with it.  The
    clone reads the whole disk through it during and after the load."""

    DISK_MIB = 32
    SEED = 21
    # The guest must not zero the pages it reads the disk into (Debian's
    # kernel does, by default): then the back end is the first to touch
    # them.
    KERNEL_ARGS = 'init_on_alloc=0'
    TRIES = 3
    # the fill starts that long after the guest: until then, the faults
    # place the pages
    FILL_DELAY_MS = 3000

    def setUp(self):
        self.tmp = vmt.TempDir(prefix='vmt-e2e-vhost-user-')
        self.addCleanup(self.tmp.cleanup)
        self.backends = []
        self.addCleanup(self._kill_backends)
        probe = vmt.VM(name='probe', tmpdir=self.tmp.path, with_guest=False)
        self.addCleanup(probe.kill)
        probe.launch(connect_agent=False)
        why = vmt.mode_unsupported(probe, 'lazy')
        probe.kill()
        if why:
            self.skipTest(why)
        # our build makes it beside QEMU (build-aux/build.sh)
        self.backend = os.path.join(os.path.dirname(vmt.qemu_binary()),
                                    'contrib', 'vhost-user-blk',
                                    'vhost-user-blk')
        self.assertTrue(os.access(self.backend, os.X_OK),
                        f'{self.backend}: not built')
        self.guest = vmt.build_vmgenid_guest()
        self.disk = self.tmp.join('disk.img')
        with open(self.disk, 'wb') as f:
            f.write(os.urandom(self.DISK_MIB << 20))
        self.disk_sha = vmt.sha256_file(self.disk)

    def _kill_backends(self):
        for p in self.backends:
            if p.poll() is None:
                p.kill()
            p.wait()

    def _vm_args(self, name):
        """Start a back end for VM name; its QEMU arguments."""
        sock = self.tmp.join(f'{name}-vhost-user.sock')
        log = open(self.tmp.join(f'{name}-vhost-user.log'), 'wb')
        p = subprocess.Popen([self.backend, '-r', '-b', self.disk,
                              '-s', sock], stdin=subprocess.DEVNULL,
                             stdout=log, stderr=log)
        log.close()
        self.backends.append(p)
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if p.poll() is not None or time.monotonic() > deadline:
                self.fail(f'{self.backend} did not listen on {sock}')
            time.sleep(0.01)
        return ['-object', f'memory-backend-memfd,id=mem0,'
                           f'size={vmt.GUEST_MEM},share=on',
                '-machine', 'memory-backend=mem0',
                '-chardev', f'socket,id=vu,path={sock}',
                '-device', 'vhost-user-blk-pci,chardev=vu,num-queues=1']

    def test_lazy_clone_with_vhost_user_blk(self):
        fixed = self.tmp.join('template.fixed')
        with vmt.VM(name='template', tmpdir=self.tmp.path, guest=self.guest,
                    kernel_args=self.KERNEL_ARGS,
                    extra_args=self._vm_args('template')) as t:
            t.launch()
            t.wait_banner()
            self.assertEqual(t.agent.request('disk'),
                             f'disk {self.disk_sha}')
            ans = t.agent.write(self.SEED, WRITE_MIB)
            self.assertEqual(ans, f'ok write {WRITE_MIB}')
            template_sum = t.agent.sum()
            self.assertEqual(t.agent.request('diskloop'), 'ok diskloop')
            vmt.save_template(t, fixed, 'lazy')
            t.shutdown()
        # the back end writing into pages not placed yet is what this
        # tests; the fill can win the race
        for i in range(self.TRIES):
            remote = self._clone(f'clone{i}', fixed, template_sum)
            if remote:
                break
        self.assertGreater(remote, 0, f'in {self.TRIES} clones, the back '
                           'end never faulted: nothing tested')

    def _clone(self, name, fixed, template_sum):
        """Start a lazy clone; check its disk and memory; return how many
        faults of its back end were served."""
        c = vmt.VM(name=name, tmpdir=self.tmp.path, guest=self.guest,
                   kernel_args=self.KERNEL_ARGS,
                   extra_args=self._vm_args(name) +
                   vmt.clone_args(None, fixed, 'lazy') +
                   ['-global', 'migration.x-mapped-ram-lazy-fill-delay-ms='
                               f'{self.FILL_DELAY_MS}'])
        self.addCleanup(c.kill)
        c.launch()
        vmt.restore_clone(c, fixed, 'lazy')
        # at once: while the load goes on
        self.assertEqual(c.agent.request('disk'), f'disk {self.disk_sha}')
        ev = c.wait_event('MAPPED_RAM_LAZY_LOADED')['data']
        info = c.cmd('query-migrate')['mapped-ram-lazy']
        vmt.log(f'{name}: lazy load {ev}; back end faults served: '
                f'{info["remote-faults"]}')
        self.assertTrue(info['completed'])
        # the back end left its postcopy mode and goes on
        self.assertEqual(c.agent.request('disk'), f'disk {self.disk_sha}')
        self.assertEqual(c.agent.sum(), template_sum)
        self.assertEqual(c.status(), 'running')
        c.kill()
        return info['remote-faults']

if __name__ == '__main__':
    unittest.main()
