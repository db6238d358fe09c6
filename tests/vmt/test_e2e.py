# SPDX-License-Identifier: GPL-2.0-or-later
"""
VMT end-to-end tests: the bundled test guest and the upstream template /
clone flow with x-ignore-shared.  Run with tests/vmt/run.py.

These tests assert behaviour only; they never check timings.
"""

import os
import re
import shutil
import time
import unittest

import vmt
from bench import smaps_entries, is_tcg_buffer

WRITE_MIB = 8


class HarnessTest(unittest.TestCase):
    """The harness's /proc parsers, on this Python process."""

    def test_smaps_file_mapping(self):
        import mmap
        with vmt.TempDir(prefix='vmt-e2e-smaps-') as tmp:
            path = tmp.join('f')
            with open(path, 'wb') as f:
                f.truncate(1 << 20)
            with open(path, 'r+b') as f:
                m = mmap.mmap(f.fileno(), 1 << 20, mmap.MAP_PRIVATE)
                for off in range(0, 256 << 10, 4096):
                    m[off] = 1          # 64 private dirty pages
                r = vmt.smaps_mapping(os.getpid(), path=path)
                m.close()
        self.assertEqual(r['Size'], 1024)
        self.assertEqual(r['mappings'], 1)
        self.assertGreaterEqual(r['Private_Dirty'], 256)
        self.assertGreaterEqual(r['Rss'], r['Private_Dirty'])

    def test_smaps_rollup(self):
        r = vmt.smaps_rollup(os.getpid())
        self.assertEqual(set(r), set(vmt.SMAPS_FIELDS))
        self.assertGreater(r['Rss'], 0)
        self.assertGreater(r['Pss'], 0)


class GuestAgentTest(unittest.TestCase):
    """Boot the bundled guest and exercise every agent request."""

    @classmethod
    def setUpClass(cls):
        cls.vm = vmt.VM(name='guest')
        try:
            cls.vm.launch()
            cls.banner = cls.vm.wait_banner()
        except BaseException:
            cls.vm.kill()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.vm.shutdown()

    def test_banner(self):
        self.assertRegex(self.banner, r'^READY \d+$')

    def test_ping(self):
        self.assertEqual(self.vm.agent.ping(), 'pong')

    def test_unknown_request(self):
        self.assertEqual(self.vm.agent.request('frobnicate 1 2'),
                         'err unknown frobnicate 1 2')

    def test_write_and_sum(self):
        a = self.vm.agent
        self.assertEqual(a.write(42, WRITE_MIB), f'ok write {WRITE_MIB}')
        s1 = a.sum()
        s2 = a.sum()
        self.assertRegex(s1, r'^[0-9a-f]{64}$')
        self.assertEqual(s1, s2)
        # deterministic: same seed, same data; other seed, other data
        self.assertEqual(a.write(42, WRITE_MIB), f'ok write {WRITE_MIB}')
        self.assertEqual(a.sum(), s1)
        self.assertEqual(a.write(43, WRITE_MIB), f'ok write {WRITE_MIB}')
        self.assertNotEqual(a.sum(), s1)

    def test_write_usage(self):
        self.assertTrue(self.vm.agent.request('write x 1').startswith('err '))

    def test_rand(self):
        a = self.vm.agent
        r1 = a.rand(32)
        r2 = a.rand(32)
        self.assertRegex(r1, r'^[0-9a-f]{64}$')
        self.assertRegex(r2, r'^[0-9a-f]{64}$')
        self.assertNotEqual(r1, r2)
        self.assertEqual(len(a.rand(1)), 2)

    def test_genid(self):
        ans = self.vm.agent.request('genid')
        self.assertRegex(ans, r'^genid driver=[01] device=[01] reseeds=\d+ '
                              r'crng=[01]( |$)')
        # no -device vmgenid here
        self.assertIn(' device=0 ', ans)


class TemplateCloneTest(unittest.TestCase):
    """Upstream templating: save a template with x-ignore-shared, start
    three clones from its RAM file (share=off) and its state."""

    MODE = 'ignore-shared'      # see vmt.migrate_to_file()
    NCLONES = 3
    TEMPLATE_SEED = 7
    # a vmgenid device gives each clone (a new QEMU) a new generation ID
    DEVICES = ['-device', 'vmgenid']

    @classmethod
    def setUpClass(cls):
        cls.tmp = vmt.TempDir(prefix='vmt-e2e-tpl-')
        cls.ram = cls.tmp.join('template.ram')
        cls.state = cls.tmp.join('state')
        cls.clones = []
        try:
            with vmt.VM(name='template', tmpdir=cls.tmp.path,
                        extra_args=vmt.ram_backend_args(cls.ram, True) +
                        cls.DEVICES) as t:
                t.launch()
                cap = vmt.CAPABILITY[cls.MODE]
                if not vmt.has_capability(t, cap):
                    raise unittest.SkipTest(f'QEMU has no {cap} capability')
                t.wait_banner()
                a = t.agent
                assert a.write(cls.TEMPLATE_SEED, WRITE_MIB) == \
                    f'ok write {WRITE_MIB}'
                cls.template_sum = a.sum()
                cls.template_genid = a.genid()
                if cls.template_genid['driver'] == '1':
                    # Linux only reseeds on a VM fork once its crng is up
                    cls.template_genid = a.wait_crng()
                vmt.migrate_to_file(t, cls.state, cls.MODE)
                t.shutdown()
            cls.ram_sha = vmt.sha256_file(cls.ram)
            for i in range(cls.NCLONES):
                c = vmt.VM(name=f'clone{i}', tmpdir=cls.tmp.path,
                           extra_args=vmt.clone_args(cls.ram, cls.state,
                                                     cls.MODE) +
                           cls.DEVICES)
                cls.clones.append(c)
                c.launch()
                vmt.restore_clone(c, cls.state, cls.MODE)
            for c in cls.clones:
                c.wait_pong()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for c in cls.clones:
            c.kill()
        cls.tmp.cleanup()

    def test_a_state_small(self):
        # guest RAM is not in the state file: far less than 256 MiB
        self.assertLess(os.path.getsize(self.state), 32 << 20)

    def test_b_clones_run(self):
        for c in self.clones:
            self.assertEqual(c.status(), 'running', c.name)
            self.assertEqual(c.agent.ping(), 'pong', c.name)

    def test_c_clones_see_template_data(self):
        for c in self.clones:
            self.assertEqual(c.agent.sum(), self.template_sum, c.name)

    def test_d_clone_writes_are_private(self):
        a0 = self.clones[0].agent
        self.assertEqual(a0.write(1234, WRITE_MIB), f'ok write {WRITE_MIB}')
        s0 = a0.sum()
        self.assertNotEqual(s0, self.template_sum)
        for c in self.clones[1:]:
            self.assertEqual(c.agent.sum(), self.template_sum, c.name)
        self.assertEqual(a0.sum(), s0)
        # the template RAM file is never written by a share=off clone
        self.assertEqual(vmt.sha256_file(self.ram), self.ram_sha)

    def test_e_clone_ram_is_private_mapping(self):
        m = self.clones[0].smaps(path=self.ram)
        self.assertEqual(m['Size'], 256 << 10)
        # pages the clone wrote are private copies
        self.assertGreater(m['Private_Dirty'], 0)

    def test_f_genid_format(self):
        for c in self.clones:
            g = c.agent.genid()
            self.assertLessEqual({'driver', 'device', 'reseeds', 'crng'},
                                 set(g), c.name)
            self.assertTrue(re.fullmatch(r'\d+', g['reseeds']), c.name)
            self.assertEqual(g['device'], '1', c.name)

    def test_g_vmgenid_reseed_in_clones(self):
        if self.template_genid['driver'] != '1':
            self.skipTest('guest kernel has no vmgenid driver '
                          '(see docs/devel/vmt-guest-agent.rst)')
        self.assertEqual(self.template_genid['reseeds'], '0')
        for c in self.clones:
            for _ in range(40):
                g = c.agent.genid()
                if g['reseeds'] != '0':
                    break
                time.sleep(0.25)
            self.assertEqual(g['driver'], '1', c.name)
            self.assertEqual(g['reseeds'], '1', c.name)


    def test_h_small_ram_blocks_no_huge_pages(self):
        """RAM blocks smaller than a huge page opt out of transparent huge
        pages, larger ones still ask for them (patch 20): VmFlags 'nh'
        and 'hg' of the mappings that hold each block."""
        if not os.path.isdir('/sys/kernel/mm/transparent_hugepage'):
            self.skipTest('the host kernel has no transparent huge pages')
        c = self.clones[0]
        blocks = ram_blocks(c)
        self.assertIn('/rom@etc/acpi/tables', blocks)
        flags = vmflags(c.pid)
        for name, (hva, used) in blocks.items():
            got = [f for (start, end), f in flags.items()
                   if start <= hva < end]
            self.assertEqual(len(got), 1, name)
            if used >= 2 << 20:
                self.assertIn('hg', got[0], name)
            else:
                self.assertIn('nh', got[0], name)
                self.assertNotIn('hg', got[0], name)


class KernelImageTest(unittest.TestCase):
    """The -kernel file modified, truncated or replaced under a running
    QEMU (patch "hw/i386/x86-common: map the -kernel image...").  A VM
    that boots copies the image at start, so it boots whatever happens to
    the file.  A clone (-incoming) maps it and copies it when its guest
    boots again: it reboots on a file replaced by rename, and refuses one
    changed in place (shut down with reason host-error), without SIGBUS.
    Each test has its own copy of the guest's kernel."""

    @staticmethod
    def guest_copy(tmp):
        kernel, initrd = vmt.guest_files()
        d = tmp.join('guest')
        os.makedirs(d)
        shutil.copyfile(kernel, os.path.join(d, 'vmlinuz'))
        os.symlink(initrd, os.path.join(d, 'initrd.img'))
        return d

    @staticmethod
    def truncate(path):
        os.truncate(path, 0)

    @staticmethod
    def garbage(size):
        """size bytes of ud2: a guest that runs them triple-faults, and
        QEMU (-no-reboot) exits."""
        return (b'\x0f\x0b' * (size // 2 + 1))[:size]

    @classmethod
    def rewrite(cls, path):
        """Other bytes in place: same inode, same size."""
        with open(path, 'r+b') as f:
            f.write(cls.garbage(os.path.getsize(path)))

    @classmethod
    def replace(cls, path):
        with open(path + '.new', 'wb') as f:
            f.write(cls.garbage(os.path.getsize(path)))
        os.rename(path + '.new', path)

    def boot_after(self, change):
        with vmt.TempDir(prefix='vmt-e2e-kernel-') as tmp:
            guest = self.guest_copy(tmp)
            with vmt.VM(name='vm', tmpdir=tmp.path, guest=guest,
                        extra_args=['-S']) as vm:
                vm.launch()
                change(os.path.join(guest, 'vmlinuz'))
                vm.cmd('cont')
                self.assertRegex(vm.wait_banner(), r'^READY \d+$')
                self.assertEqual(vm.status(), 'running')

    def test_boot_truncated(self):
        self.boot_after(self.truncate)

    def test_boot_rewritten(self):
        self.boot_after(self.rewrite)

    def test_clone_reboot(self):
        with vmt.TempDir(prefix='vmt-e2e-kernel-') as tmp:
            guest = self.guest_copy(tmp)
            kernel = os.path.join(guest, 'vmlinuz')
            state = tmp.join('state')
            with vmt.VM(name='template', tmpdir=tmp.path,
                        guest=guest) as t:
                t.launch()
                t.wait_banner()
                vmt.migrate_to_mapped_ram(t, state)
                t.shutdown()
            for name, change in (('replaced', self.replace),
                                 ('truncated', self.truncate),
                                 ('rewritten', self.rewrite)):
                shutil.copyfile(vmt.guest_files()[0], kernel)
                # system_reset reboots (the harness's -no-reboot would
                # make it a shutdown)
                with vmt.VM(name=f'clone-{name}', tmpdir=tmp.path,
                            guest=guest,
                            extra_args=vmt.clone_args(None, state, 'copy') +
                            ['-action', 'reboot=reset']) as c:
                    c.launch()
                    vmt.restore_clone(c, state, 'copy')
                    c.wait_pong()
                    # mapped, nothing of it resident
                    self.assertEqual(c.smaps(path=kernel)['Rss'], 0, name)
                    change(kernel)
                    c.cmd('system_reset')
                    if change == self.replace:
                        # boots the image it mapped, not the new file
                        self.assertRegex(c.wait_banner(), r'^READY \d+$')
                        self.assertEqual(c.status(), 'running')
                        continue
                    ev = c.wait_event('SHUTDOWN')
                    self.assertEqual(ev['data']['reason'], 'host-error',
                                     name)
                    self.assertEqual(c.proc.wait(30), 0, name)
                    self.assertIn(f"kernel image '{kernel}' was modified or "
                                  'truncated since QEMU started',
                                  c.stderr_tail(), name)


class ResizedRamBlockHugePagesTest(unittest.TestCase):
    """A resizable RAM block decides again on transparent huge pages when
    its used length changes (patch 20): the ACPI tables block (2 MiB
    reserved) of a VM whose tables fill 2 MiB asks for them, one whose
    tables fill 128 KiB opts out, also when the incoming migration resized
    the block from the other size; and so do the ranges a map clone maps
    over its blocks.  No guest: the VMs are stopped (-S), the source has
    large tables from -acpitable."""

    BLOCK = '/rom@etc/acpi/tables'
    # 31 tables of 65000 bytes, plus QEMU's own (about 10 KiB): the
    # tables are padded to a multiple of 128 KiB, here 2 MiB
    BIG_TABLES = 31
    BODY = 65000

    def vm(self, tmp, name, big, incoming=None):
        args = ['-S']
        if big:
            body = tmp.join('table.dat')
            with open(body, 'wb') as f:
                f.write(b'\0' * self.BODY)
            for i in range(self.BIG_TABLES):
                args += ['-acpitable', f'sig=VT{i:02d},data={body}']
        if incoming:
            args += ['-incoming', f'file:{incoming}']
        return vmt.VM(name=name, tmpdir=tmp.path, accel='tcg',
                      with_guest=False, extra_args=args)

    def block_flags(self, vm):
        hva, used = ram_blocks(vm)[self.BLOCK]
        got = [f for (start, end), f in vmflags(vm.pid).items()
               if start <= hva < end]
        self.assertEqual(len(got), 1)
        return used, got[0]

    def check(self, src_big):
        if not os.path.isdir('/sys/kernel/mm/transparent_hugepage'):
            self.skipTest('the host kernel has no transparent huge pages')
        want = (2 << 20, 'hg', 'nh') if src_big else (128 << 10, 'nh', 'hg')
        other = (128 << 10, 'nh', 'hg') if src_big else (2 << 20, 'hg', 'nh')
        with vmt.TempDir(prefix='vmt-e2e-resize-') as tmp:
            state = tmp.join('state')
            with self.vm(tmp, 'source', src_big) as src:
                src.launch(connect_agent=False)
                used, flags = self.block_flags(src)
                self.assertEqual(used, want[0])
                self.assertIn(want[1], flags)
                src.cmd('migrate', uri=f'file:{state}')
                src.wait_migration()
            with self.vm(tmp, 'destination', not src_big, state) as dst:
                dst.launch(connect_agent=False)
                dst.wait_migration()
                used, flags = self.block_flags(dst)
                # resized by the incoming migration from the other size
                self.assertNotEqual(other[0], used)
                self.assertEqual(used, want[0])
                self.assertIn(want[1], flags)
                self.assertNotIn(want[2], flags)

    def test_grows(self):
        self.check(src_big=True)

    def test_shrinks(self):
        self.check(src_big=False)

    def test_map_clone(self):
        """The same choice for the ranges that mapped-ram-load=map maps
        over a block: a clone's small blocks opt out, guest RAM asks."""
        if not os.path.isdir('/sys/kernel/mm/transparent_hugepage'):
            self.skipTest('the host kernel has no transparent huge pages')
        with vmt.TempDir(prefix='vmt-e2e-resize-') as tmp:
            state = tmp.join('fixed')
            with self.vm(tmp, 'source', False) as src:
                src.launch(connect_agent=False)
                why = vmt.mode_unsupported(src, 'map')
                if why:
                    self.skipTest(why)
                vmt.migrate_to_mapped_ram(src, state)
            with vmt.VM(name='clone', tmpdir=tmp.path, accel='tcg',
                        with_guest=False,
                        extra_args=['-S'] +
                        vmt.clone_args(None, state, 'map')) as c:
                c.launch(connect_agent=False)
                c.wait_migration()
                flags = vmflags(c.pid)
                blocks = ram_blocks(c)
                self.assertIn(self.BLOCK, blocks)
                for name, (hva, used) in blocks.items():
                    # every mapping of the block: the file's, the holes'
                    got = [f for (start, end), f in flags.items()
                           if hva <= start < hva + used]
                    self.assertTrue(got, name)
                    for f in got:
                        self.assertIn('hg' if used >= 2 << 20 else 'nh', f,
                                      name)

    def test_postcopy(self):
        """A postcopy destination gives every block back the advice its
        used length calls for when userfaultfd lets go of it (postcopy
        turns huge pages off for its duration): the small blocks opt out
        again, guest RAM asks."""
        if not os.path.isdir('/sys/kernel/mm/transparent_hugepage'):
            self.skipTest('the host kernel has no transparent huge pages')
        caps = [{'capability': 'postcopy-ram', 'state': True}]
        with vmt.TempDir(prefix='vmt-e2e-resize-') as tmp:
            sock = tmp.join('migration.sock')
            with self.vm(tmp, 'source', False) as src, \
                    vmt.VM(name='destination', tmpdir=tmp.path, accel='tcg',
                           with_guest=False,
                           extra_args=['-S', '-incoming', 'defer']) as dst:
                src.launch(connect_agent=False)
                dst.launch(connect_agent=False)
                dst.cmd('migrate-set-capabilities', capabilities=caps)
                dst.cmd('migrate-incoming', uri=f'unix:{sock}')
                src.cmd('migrate-set-capabilities', capabilities=caps)
                # slow enough that postcopy starts before precopy ends
                src.cmd('migrate-set-parameters', **{'max-bandwidth': 4096})
                src.cmd('migrate', uri=f'unix:{sock}')
                src.cmd('migrate-start-postcopy')
                src.cmd('migrate-set-parameters',
                        **{'max-bandwidth': 1 << 30,
                           'max-postcopy-bandwidth': 1 << 30})
                src.wait_migration()
                dst.wait_migration()
                info = dst.cmd('query-migrate')
                self.assertEqual(info['status'], 'completed')
                flags = vmflags(dst.pid)
                for name, (hva, used) in ram_blocks(dst).items():
                    got = [f for (start, end), f in flags.items()
                           if start <= hva < end]
                    self.assertEqual(len(got), 1, name)
                    self.assertIn('hg' if used >= 2 << 20 else 'nh', got[0],
                                  name)


class TcgHugePagesTest(unittest.TestCase):
    """-accel tcg,tb-huge-pages=off (patch "accel/tcg: tb-huge-pages...")
    opts the translation buffer out of transparent huge pages
    (MADV_NOHUGEPAGE, which holds also where the host's THP setting is
    "always"); on, QEMU's default, asks for them: VmFlags 'nh' and 'hg'
    of the buffer's mapping (the only anonymous executable one) in a VM
    with -M none."""

    def test_tb_huge_pages(self):
        if not os.path.isdir('/sys/kernel/mm/transparent_hugepage'):
            self.skipTest('the host kernel has no transparent huge pages')
        with vmt.TempDir(prefix='vmt-e2e-tbhp-') as tmp:
            for name, opt, want in (
                    ('default', '', True),
                    ('on', ',tb-huge-pages=on', True),
                    ('off', ',tb-huge-pages=off', False)):
                with vmt.VM(name=f'tbhp-{name}',
                            tmpdir=tmp.path, accel='tcg' + opt,
                            machine='none', mem='16M', with_guest=False,
                            extra_args=['-S']) as vm:
                    vm.launch(connect_agent=False)
                    flags = tcg_buffer_flags(vm.pid)
                    self.assertEqual(len(flags), 1, opt)
                    self.assertEqual('hg' in flags[0], want, opt)
                    self.assertEqual('nh' in flags[0], not want, opt)


def tcg_buffer_flags(pid):
    """VmFlags of the TCG translation buffer's mappings of pid."""
    return [m['VmFlags'] for m in smaps_entries(pid) if is_tcg_buffer(m)]


def ram_blocks(vm):
    """{name: (host address, used length)} from 'info ramblock'."""
    out = vm.cmd('human-monitor-command', **{'command-line': 'info ramblock'})
    blocks = {}
    for line in out.splitlines()[1:]:
        # name, page size ("4 KiB"), offset, used, total, HVA, RO
        f = line.split()
        if len(f) >= 8:
            blocks[f[0]] = (int(f[6], 16), int(f[4], 16))
    return blocks


def vmflags(pid):
    """{(start, end): set of VmFlags} of every mapping of pid."""
    return {(m['start'], m['start'] + m['bytes']): m['VmFlags']
            for m in smaps_entries(pid)}


class BypassCloneTest(TemplateCloneTest):
    """The same with the bypass-shared-memory capability: set on the
    template only; clones start with a plain -incoming "exec:cat STATE".
    Skipped when the QEMU under test lacks the capability."""

    MODE = 'bypass'
