# SPDX-License-Identifier: GPL-2.0-or-later
"""
End-to-end tests of qemu-template (contrib/qemu-template/): templates of
the bundled guest made by the tool in both modes, clones started by it,
each with its own identity as the guest sees it, and bad input: unknown
or damaged templates, a QEMU without the capability, a guest that never
gets ready, arguments the tool owns.  Run with tests/vmt/run.py.

The guest is the generic-kernel build (build/guest-vmgenid), which has
CONFIG_VMGENID: a clone's kernel reseeds its RNG when QEMU announces the
clone's new generation ID.  Behaviour only; timings are never checked.
"""

import itertools
import json
import mmap
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import unittest

import vmt

def qmp(path, cmd):
    """One QMP command on a fresh connection; returns its 'return'."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        f = s.makefile('rw')
        json.loads(f.readline())
        for req in ({'execute': 'qmp_capabilities'}, {'execute': cmd}):
            f.write(json.dumps(req) + '\n')
            f.flush()
            while True:
                msg = json.loads(f.readline())
                if 'return' in msg or 'error' in msg:
                    break
        if 'error' in msg:
            raise vmt.VMTError(f'{cmd}: {msg["error"]}')
        return msg['return']


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f'/proc/{pid}/stat') as f:
        return f.read().split(') ')[1][0] != 'Z'


_ADV_SEQ = itertools.count()


class Adversary:
    """An unprivileged user made for one test (useradd) and removed after
    it (userdel), with every process it was made to start."""

    def __init__(self):
        self.name = f'vmtadv{os.getpid() % 100000}n{next(_ADV_SEQ)}'
        subprocess.run(['useradd', '--system', '--no-create-home',
                        '--shell', '/usr/sbin/nologin', self.name],
                       check=True, capture_output=True)
        pw = pwd.getpwnam(self.name)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.procs = []

    def _as(self):
        return dict(user=self.uid, group=self.gid, extra_groups=[], cwd='/')

    def run(self, *args):
        r = subprocess.run(list(args), capture_output=True, text=True,
                           timeout=60, **self._as())
        if r.returncode:
            raise AssertionError(f'{self.name}: {args}: {r.stderr}')
        return r

    def popen(self, *args):
        p = subprocess.Popen(list(args), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, **self._as())
        self.procs.append(p)
        return p

    def remove(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        subprocess.run(['userdel', self.name], capture_output=True)


class TemplateToolTest(unittest.TestCase):
    """Templates 'b' (bypass) and 'm' (mapped-ram), made once."""

    @classmethod
    def setUpClass(cls):
        cls.tool = vmt.template_tool()
        if not os.access(cls.tool, os.X_OK):
            raise unittest.SkipTest(f'{cls.tool} not built (upstream QEMU?)')
        cls.qemu = vmt.qemu_binary()
        # the QEMU the tool runs is the user's choice, never a manifest's
        cls.env = vmt.template_tool_env(cls.qemu)
        cls.guest = vmt.build_vmgenid_guest()
        cls.tmp = vmt.TempDir(prefix='vmt-tool-')
        cls.dir = cls.tmp.join('t')
        cls.args = vmt.tool_guest_args(cls.guest, vmt.select_accel())
        try:
            for name, mode in (('b', 'bypass'), ('m', 'mapped-ram')):
                r = cls.run_tool('create', name, '--mode', mode,
                                 '--qemu', cls.qemu,
                                 '--ready', vmt.TOOL_READY, '--', *cls.args)
                if r.returncode:
                    raise vmt.VMTError(f'create {mode}: {r.stderr}')
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        # the tool's clones are not children of this process: stop them
        # through their records, whatever the test left
        cdir = os.path.join(cls.dir, 'clones')
        for c in os.listdir(cdir) if os.path.isdir(cdir) else []:
            try:
                with open(os.path.join(cdir, c, 'clone.json')) as f:
                    os.kill(json.load(f)['pid'], signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass
        for root, dirs, _ in os.walk(cls.dir):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        cls.tmp.cleanup()

    @classmethod
    def run_tool(cls, *args, check=False, tool_dir=None, **kw):
        kw.setdefault('env', cls.env)
        kw.setdefault('timeout', 300)
        r = subprocess.run([cls.tool, '--dir', tool_dir or cls.dir, *args],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, **kw)
        if check and r.returncode:
            raise AssertionError(f'qemu-template {" ".join(args)}: '
                                 f'{r.returncode}: {r.stderr}')
        return r

    def tool_json(self, *args):
        return json.loads(self.run_tool('--json', *args, check=True).stdout)

    def manifest(self, name):
        with open(os.path.join(self.dir, 'templates', name,
                               'manifest.json')) as f:
            return json.load(f)

    def assert_leftovers(self, name=None):
        """No clone directory, no half-made template, no stray QEMU."""
        cdir = os.path.join(self.dir, 'clones')
        self.assertEqual(os.listdir(cdir) if os.path.isdir(cdir) else [], [])
        tdir = os.path.join(self.dir, 'templates')
        left = [e for e in os.listdir(tdir) if e.startswith('.')]
        self.assertEqual(left, [])
        if name:
            self.assertFalse(os.path.exists(os.path.join(tdir, name)))
        out = subprocess.run(['pgrep', '-f', self.dir], capture_output=True,
                             text=True).stdout.split()
        self.assertEqual([p for p in out if int(p) != os.getpid()], [])

    def clones_of(self, name, count, *extra):
        clones = self.tool_json('clone', name, '--count', str(count), *extra)
        self.assertEqual(len(clones), count)
        return clones

    def destroy_all(self, clones):
        for c in clones:
            self.run_tool('destroy', c['id'], check=True)
            self.assertFalse(os.path.exists(c['dir']))
            self.assertFalse(pid_alive(c['pid']))

    def check_clones(self, name, count, *extra):
        clones = self.clones_of(name, count, *extra)
        try:
            for c in clones:
                self.assertFalse(c['pooled'])
                self.assertIn('started', c)
                self.check_kernel_mapped(c['pid'])
            self.check_identities(name, clones)
            # list: the running clones with their memory
            listed = self.tool_json('list', name)
            self.assertEqual(len(listed), 1)
            self.assertEqual(listed[0]['running-clones'], count)
            for c in listed[0]['clones']:
                self.assertTrue(c['running'])
                self.assertGreater(c['memory']['pss-kib'], 0)

            # a template with running clones is not removed
            r = self.run_tool('destroy', name)
            self.assertEqual(r.returncode, 1)
            self.assertIn('running clones', r.stderr)
            self.assertTrue(os.path.isfile(os.path.join(
                self.dir, 'templates', name, 'manifest.json')))
        finally:
            self.destroy_all(clones)
        self.assert_leftovers()

    def check_kernel_mapped(self, pid):
        """-kernel is mapped from its file, not copied (patch 19): the
        clone's maps show the file."""
        kernel = os.path.join(self.guest, 'vmlinuz')
        with open(f'/proc/{pid}/maps') as f:
            maps = [ln.split(None, 5) for ln in f]
        self.assertTrue(any(len(m) == 6 and m[5].strip() == kernel and
                            m[1] == 'r--p' for m in maps),
                        f'{kernel} is not mapped by the clone')

    def check_identities(self, name, clones):
        """Each clone runs with the identity the tool printed; its guest
        saw a new generation ID and has random bytes of its own."""
        template = self.manifest(name)
        count = len(clones)
        guids = set()
        uuids = set()
        rand = set()
        for c in clones:
            self.assertTrue(pid_alive(c['pid']))
            st = qmp(c['qmp'], 'query-status')
            self.assertEqual(st['status'], 'running')
            # what QEMU gave the guest is what the tool printed
            g = qmp(c['qmp'], 'query-vm-generation-id')['guid']
            self.assertEqual(g, c['identity']['vmgenid'])
            u = qmp(c['qmp'], 'query-uuid')['UUID']
            self.assertEqual(u, c['identity']['uuid'])
            guids.add(g)
            uuids.add(u)
            # the guest: its kernel saw a new generation ID and
            # reseeded, and its random bytes are its own
            agent = vmt.Agent(os.path.join(c['dir'], 'agent.sock'))
            agent.connect()
            try:
                gen = agent.genid()
                self.assertEqual(gen['driver'], '1', gen)
                self.assertGreaterEqual(int(gen['reseeds']), 1, gen)
                rand.add(agent.rand(32))
            finally:
                agent.close()
        self.assertEqual(len(guids), count)
        self.assertEqual(len(uuids), count)
        self.assertEqual(len(rand), count)
        self.assertNotIn(template['identity']['vmgenid'], guids)
        self.assertNotIn(template['identity']['uuid'], uuids)
        self.check_nics(clones)

    def check_nics(self, clones):
        """Each NIC the tool added is in the guest with its new MAC."""
        macs = set()
        for c in clones:
            want = {n['mac'] for n in c['nics']}
            macs |= want
            if not want:
                continue
            agent = vmt.Agent(os.path.join(c['dir'], 'agent.sock'))
            agent.connect()
            try:
                # the hotplugged device is probed by the guest in its time
                end = time.monotonic() + 60
                while True:
                    ans = agent.request('net')
                    seen = {f.split('=', 1)[1] for f in ans.split()[1:]
                            if '=' in f}
                    if want <= seen or time.monotonic() > end:
                        break
                    time.sleep(0.2)
                self.assertEqual(seen, want, ans)
            finally:
                agent.close()
            for m in want:
                # locally administered, unicast
                self.assertEqual(int(m.split(':')[0], 16) & 3, 2, m)
        self.assertEqual(len(macs), sum(len(c['nics']) for c in clones))

    def test_bypass_clones(self):
        self.check_clones('b', 3, '--nic', 'n0', '--',
                          '-netdev', 'hubport,id=n0,hubid=0')

    def test_mapped_ram_clones(self):
        self.check_clones('m', 2)

    def test_template_read_only(self):
        for name in ('b', 'm'):
            d = os.path.join(self.dir, 'templates', name)
            m = self.manifest(name)
            self.assertEqual(sorted(os.listdir(d)),
                             sorted(list(m['files']) + ['manifest.json']))
            # read-only, and never more readable than QEMU made it
            self.assertEqual(os.stat(d).st_mode & 0o277, 0, d)
            for f in os.listdir(d):
                self.assertEqual(os.stat(os.path.join(d, f)).st_mode & 0o277,
                                 0, f)

    # -- the pool

    def start_pool(self, name, size, *extra, top=None):
        p = subprocess.Popen([self.tool, '--dir', top or self.dir, 'pool',
                              name, '--size', str(size), *extra],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env=self.env)
        self.addCleanup(self.stop_pool, p)
        line = p.stdout.readline()
        self.assertIn(f'pool {name}: {size} clones ready', line)
        return p

    def stop_pool(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        p.stdout.close()

    def pool_request(self, name, req, top=None):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)
            s.connect(os.path.join(top or self.dir, 'pools',
                                   f'{name}.sock'))
            f = s.makefile('rw')
            f.write(json.dumps(req) + '\n')
            f.flush()
            return json.loads(f.readline())

    def records(self, top=None):
        """The clone records: {id: record}."""
        cdir = os.path.join(top or self.dir, 'clones')
        out = {}
        for d in os.listdir(cdir) if os.path.isdir(cdir) else []:
            try:
                with open(os.path.join(cdir, d, 'clone.json')) as f:
                    out[d] = json.load(f)
            except (OSError, ValueError):
                out[d] = None
        return out

    def pooled_dirs(self):
        """Clones waiting in a pool (their records say so)."""
        return [d for d, r in self.records().items()
                if r and r['pooled'] and r['state'] != 'running']

    def check_pool(self, name, *extra):
        pool = self.start_pool(name, 2, *extra)
        self.assertEqual(len(self.pooled_dirs()), 2)
        # clone takes from the pool: 3 requests for a pool of 2 (refilled)
        clones = self.clones_of(name, 3)
        try:
            for c in clones:
                self.assertTrue(c['pooled'])
                self.assertIn('request-us', c['times'])
            self.check_identities(name, clones)
            st = self.pool_request(name, {'execute': 'status'})['return']
            self.assertEqual(st['served'], 3)
            self.assertEqual(st['size'], 2)
            err = self.pool_request(name, {'execute': 'nosuch'})['error']
            self.assertIn("unknown command 'nosuch'", err['desc'])
            # the pool's clones map the template
            r = self.run_tool('destroy', name)
            self.assertEqual(r.returncode, 1)
            self.assertIn("a pool of template", r.stderr)
            # quit: the waiting clones go, the clones handed out stay
            self.assertEqual(self.pool_request(name, {'execute': 'quit'}),
                             {'return': {}})
            self.assertEqual(pool.wait(30), 0)
            self.assertEqual(self.pooled_dirs(), [])
            self.assertFalse(os.path.exists(
                os.path.join(self.dir, 'pools', f'{name}.sock')))
            for c in clones:
                self.assertTrue(pid_alive(c['pid']))
        finally:
            self.destroy_all(clones)
        self.assert_leftovers()

    def test_pool_bypass(self):
        self.check_pool('b')

    def test_pool_mapped_ram(self):
        self.check_pool('m', '--nic', 'n0', '--',
                        '-netdev', 'hubport,id=n0,hubid=0')

    def test_pool_killed(self):
        """A pool killed with SIGKILL leaves waiting clones; the next pool
        of the template stops them; a second pool is refused."""
        pool = self.start_pool('b', 2)
        left = self.pooled_dirs()
        r = self.run_tool('pool', 'b')
        self.assertEqual(r.returncode, 1)
        self.assertIn("a pool of 'b' already runs", r.stderr)
        pool.kill()
        pool.wait()
        self.assertEqual(sorted(self.pooled_dirs()), sorted(left))
        pool = self.start_pool('b', 1)
        now = self.pooled_dirs()
        self.assertEqual(len(now), 1)
        self.assertFalse(set(now) & set(left))
        self.stop_pool(pool)
        self.assertEqual(self.pooled_dirs(), [])
        self.assert_leftovers()

    def test_pool_files_deleted(self):
        """Template files deleted under a running pool: a new clone is
        refused with the reason, but the pool goes on cloning the files
        it opened and checked when it started; nothing is left."""
        d = self.damaged_copy('m', 'z')
        pool = self.start_pool('z', 1)
        os.unlink(os.path.join(d, 'template.fixed'))
        r = self.run_tool('clone', 'z')
        self.assertEqual(r.returncode, 1)
        self.assertIn('template.fixed', r.stderr)
        clones = [self.pool_request('z', {'execute': 'clone'})['return']
                  for _ in range(2)]
        try:
            st = self.pool_request('z', {'execute': 'status'})['return']
            self.assertEqual((st['served'], st['failed']), (2, 0))
            for c in clones:
                self.assertEqual(qmp(c['qmp'], 'query-status')['status'],
                                 'running')
        finally:
            self.destroy_all(clones)
        self.stop_pool(pool)
        self.run_tool('destroy', 'z', check=True)
        self.assert_leftovers('z')

    # -- the pool: clients, refills, signals

    def pool_conn(self, name, timeout=30):
        s = socket.socket(socket.AF_UNIX)
        s.connect(os.path.join(self.dir, 'pools', f'{name}.sock'))
        s.settimeout(timeout)
        return s

    def test_pool_client_never_reads(self):
        """A client that sends requests and never reads its answers is
        dropped; the pool serves others meanwhile and stops on SIGTERM."""
        pool = self.start_pool('b', 1)
        flood = self.pool_conn('b')
        try:
            try:
                flood.sendall(b'{"execute": "status"}\n' * 20000)
            except OSError:
                pass        # dropped while sending: fine
            st = self.pool_request('b', {'execute': 'status'})['return']
            self.assertEqual(st['ready'], 1)
            pool.send_signal(signal.SIGTERM)
            self.assertEqual(pool.wait(30), 0)
        finally:
            flood.close()
        self.stop_pool(pool)
        self.assert_leftovers()

    def test_pool_connection_limit(self):
        """At most 32 clients: the next one is told so, and once they
        leave, the pool answers again."""
        pool = self.start_pool('b', 1)
        conns = [self.pool_conn('b') for _ in range(32)]
        try:
            extra = self.pool_conn('b')
            ans = json.loads(extra.makefile().readline())
            self.assertEqual(ans['error']['class'], 'Busy', ans)
            extra.close()
        finally:
            for c in conns:
                c.close()
        end = time.monotonic() + 30
        while True:
            try:
                st = self.pool_request('b', {'execute': 'status'})
                if 'return' in st:
                    break
            except (OSError, ValueError):
                pass
            self.assertLess(time.monotonic(), end, 'the pool did not '
                            'answer once the clients left')
            time.sleep(0.1)
        self.stop_pool(pool)
        self.assert_leftovers()

    def test_pool_refill_does_not_block(self):
        """A clone that starts slowly (its -chardev file is a FIFO nobody
        reads) does not hold up requests: the next request is served from
        the clone that is ready, one that must wait is told when the pool
        stops, and SIGTERM stops the pool while a clone starts."""
        fifo = self.tmp.join('slow.fifo')
        os.mkfifo(fifo, 0o600)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            pool = self.start_pool('b', 2, '--', '-chardev',
                                   f'file,id=slow,path={fifo}')
        finally:
            os.close(reader)        # from now on clones block at start
        served = [self.pool_request('b', {'execute': 'clone'})['return']
                  for _ in range(2)]
        try:
            waiting = self.pool_conn('b')
            waiting.sendall(b'{"execute": "clone"}\n')
            end = time.monotonic() + 30
            while self.pool_request('b', {'execute': 'status'})[
                    'return']['waiting-requests'] != 1:
                self.assertLess(time.monotonic(), end)
                time.sleep(0.05)
            pool.send_signal(signal.SIGTERM)
            self.assertEqual(pool.wait(30), 0)
            ans = json.loads(waiting.makefile().readline())
            self.assertIn('the pool stopped', ans['error']['desc'])
            waiting.close()
            self.assertEqual(self.pooled_dirs(), [])
        finally:
            self.destroy_all(served)
        self.stop_pool(pool)
        self.assert_leftovers()

    def test_pool_reaps_its_own_template(self):
        """A new pool stops the waiting clones that a killed pool of the
        same template left, identified by their records, not those of
        another template whose name starts the same."""
        self.damaged_copy('b', 'b-x')
        cdir = os.path.join(self.dir, 'clones')
        try:
            other = self.start_pool('b-x', 1)
            theirs = [d for d in os.listdir(cdir) if d.startswith('b-x-')]
            self.assertEqual(len(theirs), 1)
            pool = self.start_pool('b', 1)
            self.assertIn(theirs[0], os.listdir(cdir))
            self.assertTrue(subprocess.run(
                ['pgrep', '-f', os.path.join(cdir, theirs[0])],
                capture_output=True).stdout.split())
            self.stop_pool(pool)
            self.stop_pool(other)
        finally:
            self.run_tool('destroy', 'b-x', check=True)
        self.assert_leftovers('b-x')

    def qemu_fds(self, pid):
        """Where a QEMU's descriptors 3 and up point."""
        out = {}
        for fd in os.listdir(f'/proc/{pid}/fd'):
            if int(fd) > 2:
                try:
                    out[int(fd)] = os.readlink(f'/proc/{pid}/fd/{fd}')
                except OSError:
                    pass
        return out

    def test_no_fd_leaks(self):
        """Clones get no descriptor of the tool: not /dev/null beyond
        stdin, not a lock file, not the pool's sockets."""
        clones = self.clones_of('b', 1)
        pool = self.start_pool('b', 1)
        try:
            clones += [self.pool_request('b', {'execute': 'clone'})
                       ['return']]
            for c in clones:
                fds = self.qemu_fds(c['pid'])
                for fd, target in fds.items():
                    self.assertNotEqual(target, '/dev/null', (fd, fds))
                    self.assertNotIn('/locks/', target, (fd, fds))
                    self.assertNotIn('/pools/', target, (fd, fds))
        finally:
            self.destroy_all(clones)
        self.stop_pool(pool)
        self.assert_leftovers()

    def test_pool_daemonize(self):
        """--daemonize returns once the pool is ready; --pidfile names it;
        status reports it; stop stops it."""
        pidfile = self.tmp.join('pool.pid')
        r = self.run_tool('pool', 'b', '--size', '1', '--daemonize',
                          '--pidfile', pidfile)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('pool b: 1 clones ready', r.stdout)
        with open(pidfile) as f:
            pid = int(f.read())
        try:
            self.assertTrue(pid_alive(pid))
            st = self.tool_json('status', 'b')[0]['pool']
            self.assertEqual((st['pid'], st['size'], st['ready'],
                              st['served'], st['failed']), (pid, 1, 1, 0, 0))
            r = self.run_tool('stop', 'b')
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertFalse(pid_alive(pid))
            self.assertFalse(os.path.exists(pidfile))
            self.assertNotIn('pool', self.tool_json('status', 'b')[0])
        finally:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.assert_leftovers()

    def test_clone_arguments_and_pool(self):
        """clone with NICs or extra arguments that the pool's clones lack
        says so and starts its own; with the pool's, it is served."""
        nic = ['--nic', 'n0', '--', '-netdev', 'hubport,id=n0,hubid=0']
        pool = self.start_pool('b', 1, *nic)
        clones = []
        try:
            r = self.run_tool('--json', 'clone', 'b', '--nic', 'n1', '--',
                              '-netdev', 'hubport,id=n1,hubid=0')
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn('runs with other arguments', r.stderr)
            clones += json.loads(r.stdout)
            self.assertFalse(clones[-1]['pooled'])
            clones += self.clones_of('b', 1, *nic)
            self.assertTrue(clones[-1]['pooled'])
            t = clones[-1]['times']
            # what the client waits for, NICs included
            self.assertGreaterEqual(t['request-us'],
                                    t['request-running-us'])
        finally:
            self.destroy_all(clones)
        self.stop_pool(pool)
        self.assert_leftovers()

    # -- clones and create

    def slow_args(self):
        """Extra arguments that hold a clone before its QMP socket: a
        -chardev file on a FIFO that nobody reads."""
        fifo = self.tmp.join('hold.fifo')
        if not os.path.exists(fifo):
            os.mkfifo(fifo, 0o600)
        return ['--', '-chardev', f'file,id=hold,path={fifo}']

    def tool_processes(self):
        """pids of the processes that run in a clone directory."""
        out = subprocess.run(['pgrep', '-f', os.path.join(self.dir,
                                                          'clones')],
                             capture_output=True, text=True).stdout.split()
        return {int(p) for p in out if int(p) != os.getpid()}

    def wait_records(self, n):
        end = time.monotonic() + 30
        while True:
            recs = [r for r in self.records().values()
                    if r and r.get('pid')]
            if len(recs) >= n:
                return recs
            self.assertLess(time.monotonic(), end, 'no clone records')
            time.sleep(0.05)

    def start_clones(self, n, *extra):
        p = subprocess.Popen([self.tool, '--dir', self.dir, 'clone', 'b',
                              '--count', str(n), '--no-pool', *extra],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=self.env)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait(),
                                 p.stdout.close(), p.stderr.close()))
        return p

    def test_clone_interrupted(self):
        """SIGINT while clones start: the tool stops the clones it did not
        report, and no process is left that it does not account for."""
        p = self.start_clones(4, *self.slow_args())
        self.wait_records(4)
        p.send_signal(signal.SIGINT)
        self.assertEqual(p.wait(60), 1)
        self.assertIn('interrupted', p.stderr.read())
        self.assertEqual(self.tool_processes(), set())
        self.assert_leftovers()

    def test_clone_killed(self):
        """SIGKILL while clones start: every QEMU it started is recorded,
        list shows it, destroy stops it."""
        p = self.start_clones(4, *self.slow_args())
        self.wait_records(4)
        p.kill()
        p.wait()
        procs = self.tool_processes()
        self.assertEqual(len(procs), 4)
        listed = self.tool_json('list', 'b')[0]['clones']
        self.assertEqual({c['pid'] for c in listed if c['running']}, procs)
        for c in listed:
            self.run_tool('destroy', c['id'], check=True)
        self.assertEqual(self.tool_processes(), set())
        self.assert_leftovers()

    def test_destroy_record_without_pid(self):
        """A record written before its process had a pid: destroy finds
        the process of this user with the clone's -uuid and stops it."""
        cdir = os.path.join(self.dir, 'clones', 'b-0nopid00')
        os.makedirs(cdir, mode=0o700)
        uuid = '6f0ac5e2-3b4c-4d5e-8f90-0123456789ab'
        victim = subprocess.Popen([sys.executable, '-c',
                                   'import time; time.sleep(600)', cdir,
                                   '-uuid', uuid],
                                  stdout=subprocess.DEVNULL)
        try:
            with open(os.path.join(cdir, 'clone.json'), 'w') as f:
                json.dump({'id': 'b-0nopid00', 'template': 'b',
                           'state': 'starting', 'dir': cdir,
                           'identity': {'uuid': uuid}}, f)
            listed = self.tool_json('list', 'b')[0]['clones']
            self.assertEqual([c['running'] for c in listed], [True])
            self.run_tool('destroy', 'b-0nopid00', check=True)
            self.assertIsNotNone(victim.wait(30))
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()
        self.assert_leftovers()

    def test_list_malformed_records(self):
        """list reads clone records as untrusted input: members missing or
        of another type, a record that is not an object."""
        cdir = os.path.join(self.dir, 'clones')
        bad = {'b-0bad0000': {'id': 'b-0bad0000', 'template': 'b'},
               'b-0bad0001': {'template': 'b', 'pid': 'x', 'dir': 3,
                              'identity': 5, 'times': [], 'nics': 7},
               'b-0bad0002': [1, 2]}
        try:
            for d, rec in bad.items():
                os.makedirs(os.path.join(cdir, d), mode=0o700)
                with open(os.path.join(cdir, d, 'clone.json'), 'w') as f:
                    json.dump(rec, f)
            for args in (['list'], ['--json', 'list'], ['status', 'b']):
                r = self.run_tool(*args)
                self.assertEqual(r.returncode, 0, r.stderr)
            listed = self.tool_json('list', 'b')[0]['clones']
            self.assertEqual(sorted(c['id'] for c in listed),
                             ['b-0bad0000', 'b-0bad0001'])
            self.assertFalse(any(c['running'] for c in listed))
            for d in bad:
                self.run_tool('destroy', d, check=True)
        finally:
            for d in bad:
                shutil.rmtree(os.path.join(cdir, d), ignore_errors=True)
        self.assert_leftovers()

    def test_version_checked_before_running(self):
        """A template made by another QEMU version is refused before the
        clone runs: before its NICs are added (a NIC on a netdev that does
        not exist would fail first otherwise)."""
        self.damaged_copy('b', 'ov')
        try:
            self.edit_manifest('ov', lambda m: m['qemu'].update(
                version='0.0.0'))
            r = self.run_tool('clone', 'ov', '--nic', 'nosuch')
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn('was made by QEMU 0.0.0', r.stderr)
        finally:
            self.run_tool('destroy', 'ov', check=True)
        self.assert_leftovers('ov')

    def test_ram_size_checked(self):
        """A bypass manifest whose ram-size is not its memory file's size
        is refused with the reason, before QEMU runs."""
        self.damaged_copy('b', 'rs')
        try:
            self.edit_manifest('rs', lambda m: m.update(
                {'ram-size': 2 * m['ram-size']}))
            self.expect_clone_error('rs', 'is not the size of its memory '
                                    'file')
        finally:
            self.run_tool('destroy', 'rs', check=True)

    def test_json_errors(self):
        """With --json, an error is JSON on stdout too."""
        for args in (['clone', 'nosuch'], ['destroy', 'nosuch'],
                     ['list', '--mode', 'x'], ['nosuch-command']):
            r = self.run_tool('--json', *args)
            self.assertNotEqual(r.returncode, 0)
            err = json.loads(r.stdout)['error']
            self.assertIn(err['desc'], r.stderr)

    def test_command_options(self):
        """Each command takes its own options only; --version."""
        for args in (['list', '--mode', 'bypass'], ['destroy', 'x', '--size',
                                                     '2'],
                     ['clone', 'b', '--ready', 'delay:1']):
            r = self.run_tool(*args)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn('unknown option', r.stderr)
        r = self.run_tool('--version')
        self.assertEqual(r.returncode, 0)
        self.assertIn('qemu-template version', r.stdout)

    def test_clone_times_per_clone(self):
        """clone --count N: each clone's times run from its own exec."""
        clones = self.clones_of('b', 3)
        try:
            for c in clones:
                t = c['times']
                self.assertLessEqual(t['qmp-us'], t['running-us'])
                self.assertLessEqual(t['running-us'], t['ready-us'])
        finally:
            self.destroy_all(clones)
        self.assert_leftovers()

    def test_create_save_bounded(self):
        """A save that takes longer than --timeout is cancelled (here one
        throttled to 1 MiB/s, once the guest loaded its kernel); a
        mapped-ram template is saved stopped."""
        try:
            r = self.run_tool('create', 'y', '--mode', 'mapped-ram',
                              '--qemu', self.qemu, '--ready', 'delay:1.5',
                              '--timeout', '3', '--',
                              *self.args, '-global',
                              'migration.x-max-bandwidth=1048576',
                              timeout=120)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn('saving the template did not finish in 3 s',
                          r.stderr)
        finally:
            self.run_tool('destroy', 'y')
        self.assert_leftovers('y')
        self.assertTrue(self.manifest('m')['stopped'])

    def test_create_ready_event_and_signal(self):
        """Several conditions; SIGUSR1 says "save now"."""
        try:
            r = self.run_tool('create', 'e1', '--qemu', self.qemu,
                              '--ready', 'delay:0.1', '--ready',
                              'delay:0.2', '--timeout', '60', '--',
                              *self.args)
            self.assertEqual(r.returncode, 0, r.stderr)
            p = subprocess.Popen([self.tool, '--dir', self.dir, 'create',
                                  'e2', '--qemu', self.qemu, '--ready',
                                  'signal', '--', *self.args],
                                 stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env=self.env)
            self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait(),
                                     p.stdout.close(), p.stderr.close()))
            tdir = os.path.join(self.dir, 'templates')
            end = time.monotonic() + 60
            while not any(e.startswith('.e2.') and os.path.exists(
                    os.path.join(tdir, e, 'qmp.sock'))
                    for e in os.listdir(tdir)):
                self.assertLess(time.monotonic(), end)
                time.sleep(0.05)
            time.sleep(0.5)
            p.send_signal(signal.SIGUSR1)
            self.assertEqual(p.wait(60), 0, p.stderr.read())
            self.assertTrue(os.path.isdir(os.path.join(tdir, 'e2')))
        finally:
            self.run_tool('destroy', 'e1')
            self.run_tool('destroy', 'e2')
        self.assert_leftovers('e2')

    def test_pool_waiting_clone_destroyed(self):
        """A waiting clone destroyed under a running pool: the pool starts
        another and keeps serving."""
        pool = self.start_pool('b', 1)
        victim = self.pooled_dirs()[0]
        self.run_tool('destroy', victim, check=True)
        end = time.monotonic() + 60
        while True:
            st = self.pool_request('b', {'execute': 'status'})['return']
            if st['ready'] == 1 and victim not in self.pooled_dirs():
                break
            self.assertLess(time.monotonic(), end, st)
            time.sleep(0.05)
        self.assertIsNone(pool.poll())
        c = self.pool_request('b', {'execute': 'clone'})['return']
        self.destroy_all([c])
        self.stop_pool(pool)
        self.assert_leftovers()

    def test_create_interrupted_before_qmp(self):
        """SIGTERM while QEMU has not opened its QMP socket yet (it waits
        on a FIFO nobody reads): the tool stops it and cleans up."""
        fifo = self.tmp.join('create.fifo')
        os.mkfifo(fifo, 0o600)
        p = subprocess.Popen([self.tool, '--dir', self.dir, 'create', 'y',
                              '--', *self.args, '-chardev',
                              f'file,id=hold,path={fifo}'],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=self.env)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait(),
                                 p.stdout.close(), p.stderr.close()))
        tdir = os.path.join(self.dir, 'templates')
        end = time.monotonic() + 60
        while not any(e.startswith('.y.') and os.path.exists(
                os.path.join(tdir, e, 'qemu.log')) for e in os.listdir(tdir)):
            self.assertLess(time.monotonic(), end)
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 1)
        self.assertIn('interrupted', p.stderr.read())
        self.assert_leftovers('y')

    # -- bad input

    def damaged_copy(self, src, name):
        """A copy of template src under name (files copied, not linked)."""
        d = os.path.join(self.dir, 'templates', name)
        shutil.copytree(os.path.join(self.dir, 'templates', src), d)
        os.chmod(d, 0o755)
        for f in os.listdir(d):
            os.chmod(os.path.join(d, f), 0o644)
        m = self.manifest(src)
        m['name'] = name
        with open(os.path.join(d, 'manifest.json'), 'w') as f:
            json.dump(m, f)
        return d

    def expect_clone_error(self, name, text):
        r = self.run_tool('clone', name)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn(text, r.stderr)
        self.assert_leftovers()

    def test_unknown_template(self):
        self.expect_clone_error('nosuch', "no template 'nosuch'")
        r = self.run_tool('destroy', 'nosuch')
        self.assertEqual(r.returncode, 1)
        self.assertIn("no template or clone named 'nosuch'", r.stderr)

    def test_damaged_templates(self):
        d = self.damaged_copy('b', 'x')
        try:
            # an exact copy (same bytes, same mtime) is a good template
            c = self.clones_of('x', 1)
            self.destroy_all(c)
            # a memory file written after the save (its mtime moves) is
            # refused by the clone's load (identity check); nothing is left
            os.utime(os.path.join(d, 'memory'))
            self.expect_clone_error('x', 'modified')

            os.truncate(os.path.join(d, 'state'), 100)
            self.expect_clone_error('x', "/state' has 100 bytes, the "
                                    "manifest says")
            os.unlink(os.path.join(d, 'state'))
            self.expect_clone_error('x', 'cannot use')
            # every damaged manifest says what to do
            hint = 'destroy it and create it again'
            for text, error in (('{"format": 1, "name": "x", garbage',
                                 'is not valid JSON'),
                                ('', 'is not valid JSON'),
                                ('[1, 2]', 'is not a JSON object'),
                                ('{"format": 99, "name": "x"}',
                                 'is not a format 1 manifest')):
                with open(os.path.join(d, 'manifest.json'), 'w') as f:
                    f.write(text)
                self.expect_clone_error('x', error)
                self.expect_clone_error('x', hint)
            # list shows it as broken; destroy removes it
            listed = self.tool_json('list', 'x')
            self.assertIn('error', listed[0])
        finally:
            self.run_tool('destroy', 'x', check=True)
        self.assertFalse(os.path.exists(d))

    def test_create_refusals(self):
        # the name is taken
        r = self.run_tool('create', 'b', '--qemu', self.qemu, '--',
                          *self.args)
        self.assertEqual(r.returncode, 1)
        self.assertIn("template 'b' already exists", r.stderr)
        # arguments the tool owns
        for extra in (['-incoming', 'defer'], ['-device', 'vmgenid'],
                      ['-uuid', '00000000-0000-0000-0000-000000000001']):
            r = self.run_tool('create', 'y', '--qemu', self.qemu, '--',
                              *self.args, *extra)
            self.assertEqual(r.returncode, 1)
            self.assertIn('is managed by qemu-template', r.stderr)
        # bypass needs -m
        args = list(self.args)
        i = args.index('-m')
        del args[i:i + 2]
        r = self.run_tool('create', 'y', '--qemu', self.qemu, '--', *args)
        self.assertEqual(r.returncode, 1)
        self.assertIn('add -m SIZE', r.stderr)
        # no such QEMU
        r = self.run_tool('create', 'y', '--qemu', '/nonexistent/qemu',
                          '--', *self.args)
        self.assertEqual(r.returncode, 1)
        self.assertIn("QEMU binary '/nonexistent/qemu' not found", r.stderr)
        self.assert_leftovers('y')

    def test_nic_unknown_netdev(self):
        """A NIC on a netdev that does not exist: the clone is refused."""
        r = self.run_tool('clone', 'b', '--nic', 'nosuch')
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot add a NIC on netdev 'nosuch'", r.stderr)
        self.assert_leftovers()

    def test_create_not_ready(self):
        """A guest that never gets ready: no template, no QEMU left."""
        r = self.run_tool('create', 'y', '--qemu', self.qemu,
                          '--ready', 'log:@DIR@/console.log:NEVER',
                          '--timeout', '2', '--', *self.args)
        self.assertEqual(r.returncode, 1)
        self.assertIn("did not get ready: 'log:@DIR@/console.log:NEVER' "
                      "did not hold within 2 s", r.stderr)
        self.assert_leftovers('y')

    def test_create_ready_guest_agent(self):
        """--ready ga:SOCKET: ready once a guest agent answers guest-ping
        (a stand-in agent here: the bundled guest has no qemu-ga)."""
        path = self.tmp.join('ga.sock')
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(4)
        pings = []

        def serve():
            while len(pings) < 3:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    req = conn.recv(4096)
                    pings.append(req)
                    if len(pings) == 3:     # not ready twice, then ready
                        conn.sendall(b'{"return": {}}\n')
        th = threading.Thread(target=serve, daemon=True)
        th.start()
        try:
            r = self.run_tool('create', 'ga', '--qemu', self.qemu,
                              '--ready', f'ga:{path}', '--timeout', '60',
                              '--', *self.args)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(len(pings), 3)
            self.assertIn(b'guest-ping', pings[0])
            man = self.manifest('ga')
            self.assertEqual(man['ram-blocks']['qemu-template-ram'],
                             vmt.parse_size(vmt.GUEST_MEM))
        finally:
            srv.close()
            th.join(10)
            self.run_tool('destroy', 'ga')
        # an agent that never answers
        r = self.run_tool('create', 'y', '--qemu', self.qemu,
                          '--ready', f'ga:{path}', '--timeout', '2', '--',
                          *self.args)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"'ga:{path}' did not hold within 2 s", r.stderr)
        self.assert_leftovers('y')

    def start_create(self, name):
        """A create that waits forever; returns once QEMU runs."""
        p = subprocess.Popen([self.tool, '--dir', self.dir, 'create', name,
                              '--qemu', self.qemu, '--ready',
                              'log:@DIR@/console.log:NEVER', '--',
                              *self.args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=self.env)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait(),
                                 p.stdout.close(), p.stderr.close()))
        tdir = os.path.join(self.dir, 'templates')
        end = time.monotonic() + 60
        while time.monotonic() < end:
            tmps = [e for e in os.listdir(tdir) if e.startswith(f'.{name}.')]
            if tmps and os.path.exists(os.path.join(tdir, tmps[0],
                                                    'console.log')):
                return p, os.path.join(tdir, tmps[0])
            time.sleep(0.05)
        self.fail('create did not start QEMU')

    def test_create_interrupted(self):
        """SIGTERM: the tool stops QEMU and removes what it made."""
        p, _ = self.start_create('y')
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 1)
        self.assertIn('interrupted', p.stderr.read())
        self.assert_leftovers('y')

    def test_create_killed(self):
        """SIGKILL: QEMU dies with the tool; the next create of the name
        removes the half-made template."""
        p, tmpdir = self.start_create('y')
        p.kill()
        p.wait()
        end = time.monotonic() + 30
        while time.monotonic() < end and subprocess.run(
                ['pgrep', '-f', tmpdir], capture_output=True).returncode == 0:
            time.sleep(0.1)
        self.assertTrue(os.path.isdir(tmpdir))
        r = self.run_tool('create', 'y', '--qemu', '/nonexistent/qemu',
                          '--', *self.args)
        self.assertEqual(r.returncode, 1)
        self.assertFalse(os.path.exists(tmpdir))
        self.assert_leftovers('y')

    def test_create_qemu_exits(self):
        """QEMU refuses its command line: its error is shown."""
        r = self.run_tool('create', 'y', '--qemu', self.qemu, '--',
                          *self.args, '-device', 'no-such-device')
        self.assertEqual(r.returncode, 1)
        self.assertIn("'no-such-device' is not a valid device", r.stderr)
        self.assert_leftovers('y')

    # -- trust and permissions

    NOBODY = 65534

    def edit_manifest(self, name, change):
        path = os.path.join(self.dir, 'templates', name, 'manifest.json')
        m = self.manifest(name)
        change(m)
        with open(path, 'w') as f:
            json.dump(m, f)

    def test_manifest_does_not_choose_qemu(self):
        """The QEMU that runs is the user's choice: a manifest naming
        another binary is refused, and that binary never runs."""
        self.damaged_copy('b', 'ev')
        mark = self.tmp.join('ran')
        script = self.tmp.join('evil.sh')
        with open(script, 'w') as f:
            f.write(f'#!/bin/sh\ntouch {mark}\nexit 1\n')
        os.chmod(script, 0o755)
        try:
            self.edit_manifest('ev', lambda m: m['qemu'].update(path=script))
            for cmd in ('clone', 'pool'):
                r = self.run_tool(cmd, 'ev')
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn(f"was made with QEMU '{script}', not with "
                              f"'{self.qemu}'", r.stderr)
            # a binary that others can change is not run, even if chosen
            os.chmod(script, 0o777)
            r = self.run_tool('clone', 'ev', '--qemu', script)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn('can be changed by other users', r.stderr)
            self.assertFalse(os.path.exists(mark))
        finally:
            self.run_tool('destroy', 'ev', check=True)
        self.assert_leftovers('ev')

    def test_manifest_args_checked(self):
        """A manifest's arguments, and a clone's extra ones, get no more
        than create allows."""
        self.damaged_copy('b', 'ea')
        args = self.manifest('ea')['args']
        try:
            for extra in (['-uuid', '00000000-0000-0000-0000-000000000001'],
                          ['-readconfig', '/dev/null'],
                          ['--incoming', 'defer'],
                          ['-device', '{"driver": "vmgenid"}']):
                self.edit_manifest('ea', lambda m: m.update(args=args + extra))
                self.expect_clone_error('ea', 'is managed by qemu-template')
            r = self.run_tool('clone', 'b', '--', '-uuid',
                              '00000000-0000-0000-0000-000000000001')
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn('is managed by qemu-template', r.stderr)
        finally:
            self.run_tool('destroy', 'ea', check=True)
        self.assert_leftovers('ea')

    def test_untrusted_files(self):
        """Template files that others own or can change are not used."""
        d = self.damaged_copy('b', 'eu')
        man = os.path.join(d, 'manifest.json')
        mem = os.path.join(d, 'memory')
        try:
            os.chmod(man, 0o646)
            self.expect_clone_error('eu', "manifest.json' is writable by "
                                    "other users")
            os.chmod(man, 0o664)
            self.expect_clone_error('eu', "manifest.json' is writable by "
                                    "its group")
            os.chmod(man, 0o644)
            os.chmod(mem, 0o666)
            self.expect_clone_error('eu', "memory' is writable by other")
            os.chmod(mem, 0o644)
            os.chmod(d, 0o777)
            self.expect_clone_error('eu', "eu' is writable by other users")
            os.chmod(d, 0o755)
            if os.geteuid() == 0:
                os.chown(man, self.NOBODY, -1)
                self.expect_clone_error('eu', f'is owned by uid '
                                        f'{self.NOBODY}')
                os.chown(man, 0, -1)
        finally:
            self.run_tool('destroy', 'eu', check=True)
        self.assert_leftovers('eu')

    def test_untrusted_clone_record(self):
        """A clone record that another user could write does not say
        which process destroy stops."""
        if os.geteuid() != 0:
            self.skipTest('needs root to give a file to another user')
        cdir = os.path.join(self.dir, 'clones', 'b-0fake000')
        os.makedirs(cdir)
        # a process whose command line names the clone's directory
        victim = subprocess.Popen([sys.executable, '-c',
                                   'import time; time.sleep(600)', cdir],
                                  stdout=subprocess.DEVNULL)
        try:
            rec = os.path.join(cdir, 'clone.json')
            with open(rec, 'w') as f:
                json.dump({'id': 'b-0fake000', 'template': 'b',
                           'pid': victim.pid, 'dir': cdir}, f)
            os.chown(rec, self.NOBODY, -1)
            r = self.run_tool('destroy', 'b-0fake000')
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(f'is owned by uid {self.NOBODY}', r.stderr)
            self.assertIsNone(victim.poll())
        finally:
            victim.kill()
            victim.wait()
            shutil.rmtree(cdir, ignore_errors=True)

    def test_permissions_and_commas(self):
        """Under umask 002, in a directory whose path holds commas and
        ',offset=' (an option of file: URIs): everything the tool and its
        QEMUs make is the user's alone, and QEMU gets every path right,
        in the old chardev syntax too (-monitor unix:PATH,server=on)."""
        top = self.tmp.join('a,b,offset=1')
        self.addCleanup(self.kill_recorded, top)

        def umask002():
            os.umask(0o002)

        def run(*args):
            return self.run_tool(*args, tool_dir=top, preexec_fn=umask002,
                                 check=True)
        for name, mode in (('c', 'bypass'), ('d', 'mapped-ram')):
            run('create', name, '--mode', mode, '--qemu', self.qemu,
                '--ready', 'delay:0', '--', *self.args, '-monitor',
                'unix:@DIR@/mon.sock,server=on,wait=off')
            c = json.loads(run('--json', 'clone', name).stdout)[0]
            self.assertEqual(qmp(c['qmp'], 'query-status')['status'],
                             'running')
            # @DIR@ in -chardev socket,path=, -serial file:, -monitor unix:
            for f in ('agent.sock', 'console.log', 'qmp.sock', 'mon.sock'):
                self.assertTrue(os.path.exists(os.path.join(c['dir'], f)), f)
        pool = subprocess.Popen([self.tool, '--dir', top, 'pool', 'd'],
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, text=True,
                                env=self.env, preexec_fn=umask002)
        self.addCleanup(self.stop_pool, pool)
        self.assertIn('clones ready', pool.stdout.readline())
        c = json.loads(run('--json', 'clone', 'd').stdout)[0]
        self.assertTrue(c['pooled'])
        for root, dirs, files in os.walk(top):
            for e in dirs + files:
                path = os.path.join(root, e)
                mode = stat.S_IMODE(os.lstat(path).st_mode)
                self.assertEqual(mode & 0o077, 0, f'{path}: {mode:o}')
                if '/templates/' in path:
                    self.assertEqual(mode & 0o222, 0, f'{path}: {mode:o}')
        self.stop_pool(pool)
        for c in os.listdir(os.path.join(top, 'clones')):
            run('destroy', c)
        for name in ('c', 'd'):
            run('destroy', name)

    def kill_recorded(self, top):
        cdir = os.path.join(top, 'clones')
        for c in os.listdir(cdir) if os.path.isdir(cdir) else []:
            try:
                with open(os.path.join(cdir, c, 'clone.json')) as f:
                    os.kill(json.load(f)['pid'], signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass

    def test_pool_peer_check(self):
        """A pool serves its user only: another user who can reach its
        socket gets an error, not a clone, and cannot stop it."""
        if os.geteuid() != 0:
            self.skipTest('needs root to act as another user')
        pool = self.start_pool('b', 1)
        sock = os.path.join(self.dir, 'pools', 'b.sock')
        opened = [self.tmp.path, self.dir, os.path.dirname(sock), sock]
        modes = [os.stat(p).st_mode for p in opened]
        code = ('import socket, sys\n'
                's = socket.socket(socket.AF_UNIX)\n'
                's.settimeout(30)\n'
                's.connect(sys.argv[1])\n'
                'try:\n'
                '    s.sendall(b\'{"execute": "quit"}\\n\')\n'
                'except OSError:\n'
                '    pass\n'
                'print(s.makefile().readline())\n')
        try:
            for p in opened:
                os.chmod(p, 0o777 if p == sock else 0o711)
            r = subprocess.run([sys.executable, '-c', code, sock],
                               user=self.NOBODY, capture_output=True,
                               text=True, timeout=60)
        finally:
            for p, m in zip(opened, modes):
                os.chmod(p, m)
        self.assertEqual(r.returncode, 0, r.stderr)
        ans = json.loads(r.stdout)
        self.assertIn(f'of uid {self.NOBODY}, not a process of this user',
                      ans['error']['desc'])
        self.assertIsNone(pool.poll())
        st = self.pool_request('b', {'execute': 'status'})['return']
        self.assertEqual(st['served'], 0)
        self.stop_pool(pool)
        self.assert_leftovers()

    def test_destroy_relative_dir(self):
        """destroy with a relative --dir sees a process that maps the
        template (/proc/PID/maps holds absolute paths)."""
        d = self.damaged_copy('b', 'r')
        rel = dict(tool_dir=os.path.basename(self.dir),
                   cwd=os.path.dirname(self.dir))
        with open(os.path.join(d, 'memory'), 'rb') as f:
            mm = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)
        try:
            r = self.run_tool('destroy', 'r', **rel)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("template 'r' is mapped by processes", r.stderr)
            self.assertTrue(os.path.isdir(d))
        finally:
            mm.close()
        self.run_tool('destroy', 'r', check=True, **rel)
        self.assertFalse(os.path.exists(d))

    def test_create_locked(self):
        """A template being made is locked: a second create of the name is
        refused while the first runs."""
        p, _ = self.start_create('y')
        r = self.run_tool('create', 'y', '--qemu', self.qemu, '--',
                          *self.args)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("template 'y' is in use: another qemu-template "
                      "creates", r.stderr)
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 1)
        self.assert_leftovers('y')

    def test_upstream_qemu(self):
        """A QEMU without the series lacks the capability."""
        up = os.path.join(vmt.BUILDDIR, 'qemu-upstream',
                          'qemu-system-x86_64')
        if not os.access(up, os.X_OK):
            self.skipTest(f'{up} not built')
        r = self.run_tool('create', 'y', '--qemu', up, '--', *self.args)
        self.assertEqual(r.returncode, 1)
        self.assertIn("lacks the migration capability 'bypass-shared-memory'",
                      r.stderr)
        self.assert_leftovers('y')

    # -- the review of issue 26 (notes/tool-review.md): attacks by a user
    # made for the test, and the bugs it found

    def adversary(self):
        if os.geteuid() != 0:
            self.skipTest('needs root to make a user')
        adv = Adversary()
        self.addCleanup(adv.remove)
        return adv

    def reachable(self, *paths):
        """Let other users go through @paths (0711) for one test."""
        for p in paths:
            mode = stat.S_IMODE(os.stat(p).st_mode)
            self.addCleanup(os.chmod, p, mode)
            os.chmod(p, 0o711)

    def copy_template(self, src, top):
        """Template @src copied (mtimes kept) into a new tool dir @top."""
        os.makedirs(os.path.join(top, 'templates'), mode=0o700)
        os.chmod(top, 0o700)
        d = os.path.join(top, 'templates', src)
        shutil.copytree(os.path.join(self.dir, 'templates', src), d)
        self.addCleanup(self.kill_recorded, top)
        return d

    def wait_for(self, what, cond, timeout=60):
        end = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            self.assertLess(time.monotonic(), end, what)
            time.sleep(0.05)

    def test_adv_qemu_in_shared_dir(self):
        """Review 1: a QEMU binary in a directory another user can write
        is refused, so no pool runs what that user puts there later."""
        adv = self.adversary()
        self.reachable(self.tmp.path)
        bindir = self.tmp.join('shared-bin')
        os.mkdir(bindir)
        os.chmod(bindir, 0o777)
        qemu = os.path.join(bindir, 'qemu')
        shutil.copy2(self.qemu, qemu)
        datadir = subprocess.run([self.qemu, '-L', 'help'],
                                 capture_output=True,
                                 text=True).stdout.split()[-1]
        top = self.tmp.join('adv-bin')
        self.addCleanup(self.kill_recorded, top)
        mark = os.path.join(bindir, 'ran')
        r = self.run_tool('create', 'q', '--qemu', qemu, '--ready', 'delay:0',
                          '--', *self.args, '-L', datadir, tool_dir=top)
        if r.returncode == 0:
            self.attack_binary(adv, top, qemu, mark)
        self.assertFalse(os.path.exists(mark), 'root ran the binary that '
                         'another user put in place of QEMU')
        self.assertEqual(r.returncode, 1, 'a QEMU in a directory others '
                         'can write was accepted')
        self.assertIn(f"above the QEMU binary '{qemu}', can be changed by "
                      "other users", r.stderr)

    def attack_binary(self, adv, top, qemu, mark):
        """A pool of the template; the other user swaps the binary; a
        request makes the pool start a clone."""
        pool = self.start_pool('q', 1, '--qemu', qemu, top=top)
        evil = os.path.join(os.path.dirname(qemu), 'evil')
        adv.run('sh', '-c', f'printf "#!/bin/sh\\ntouch {mark}\\n" > {evil}'
                f' && chmod 755 {evil} && mv -f {evil} {qemu}')
        self.pool_request('q', {'execute': 'clone'}, top=top)
        end = time.monotonic() + 30
        while not os.path.exists(mark) and time.monotonic() < end:
            time.sleep(0.1)
        self.stop_pool(pool)

    def test_adv_template_dir_swapped(self):
        """Review 3: a templates/ that another user can write is refused;
        a pool started on a safe template clones the files it opened and
        checked, whatever that user puts at their paths later."""
        adv = self.adversary()
        top = self.tmp.join('adv-swap')
        d = self.copy_template('b', top)
        tdir = os.path.dirname(d)
        os.chmod(tdir, 0o777)
        r = self.run_tool('clone', 'b', '--no-pool', tool_dir=top)
        os.chmod(tdir, 0o700)
        self.assertEqual(r.returncode, 1, 'a clone through a templates/ '
                         'others can write')
        self.assertIn(f"'{tdir}' is writable by other users", r.stderr)
        pool = self.start_pool('b', 1, top=top)
        mine = os.stat(os.path.join(d, 'memory')).st_ino
        # later someone makes templates/ writable: the other user swaps b
        self.reachable(self.tmp.path, top)
        os.chmod(tdir, 0o777)
        size = os.stat(os.path.join(d, 'memory')).st_size
        adv.run('sh', '-c', f'cd {tdir} && mv b b.old && mkdir b && '
                'head -c 4096 /dev/urandom > b/state && '
                f'truncate -s {size} b/memory && chmod 755 b')
        theirs = os.stat(os.path.join(d, 'memory')).st_ino
        answers = [self.pool_request('b', {'execute': 'clone'}, top=top)
                   for _ in range(2)]
        os.chmod(tdir, 0o700)
        self.stop_pool(pool)
        for a in answers:
            self.assertIn('return', a, 'the pool loaded what the other user '
                          'put at the template\'s paths')
            with open(f'/proc/{a["return"]["pid"]}/maps') as f:
                inodes = {int(ln.split()[4]) for ln in f}
            self.assertIn(mine, inodes)
            self.assertNotIn(theirs, inodes)
            self.run_tool('destroy', a['return']['id'], tool_dir=top,
                          check=True)

    def test_adv_process_match(self):
        """Review 4: list and destroy believe a record only for a process
        of this user with the clone's own -uuid: not another user's
        process that names the clone's directory, nor a process of a
        clone whose id starts the same."""
        adv = self.adversary()
        cdir = os.path.join(self.dir, 'clones', 'b-0adv0000')
        os.makedirs(cdir, mode=0o700)
        uuid = '0e8c7a52-9d1b-4b7e-a9d4-3c2b1a098765'
        with open(os.path.join(cdir, 'clone.json'), 'w') as f:
            json.dump({'id': 'b-0adv0000', 'template': 'b',
                       'state': 'starting', 'dir': cdir,
                       'identity': {'uuid': uuid}}, f)
        sleeper = [sys.executable, '-c', 'import time; time.sleep(600)']
        theirs = adv.popen(*sleeper, f'path={cdir}/qmp.sock', '-uuid', uuid)
        mine = subprocess.Popen([*sleeper, f'{cdir}-x/console.log'],
                                stdout=subprocess.DEVNULL)
        self.addCleanup(lambda: (mine.kill(), mine.wait()))
        self.wait_for('the processes run', lambda: all(
            uuid.encode() in open(f'/proc/{p.pid}/cmdline', 'rb').read() or
            p is mine for p in (theirs, mine)))
        listed = self.tool_json('list', 'b')[0]['clones']
        self.assertEqual([c['running'] for c in listed], [False])
        self.run_tool('destroy', 'b-0adv0000', check=True)
        self.assertIsNone(theirs.poll(), 'root stopped another user\'s '
                          'process')
        self.assertIsNone(mine.poll(), 'destroy stopped a process of '
                          'another clone')
        self.assertFalse(os.path.exists(cdir))

    def test_adv_dir_through_symlink(self):
        """Review 5: a --dir that goes through a directory another user
        can write, or through another user's symbolic link, is refused."""
        adv = self.adversary()
        self.reachable(self.tmp.path)
        chosen = self.tmp.join('chosen')
        os.mkdir(chosen, 0o700)
        for name, mode, why in (('open', 0o777, 'can be changed by other '
                                 'users'),
                                ('sticky', 0o1777, 'is a symbolic link of '
                                 'uid')):
            shared = self.tmp.join(name)
            os.mkdir(shared)
            os.chmod(shared, mode)
            link = os.path.join(shared, 'qt')
            adv.run('ln', '-s', chosen, link)
            r = self.run_tool('list', tool_dir=link)
            self.assertEqual(r.returncode, 1, f'{name}: a --dir chosen by '
                             'another user was used')
            self.assertIn(why, r.stderr)

    def test_create_keeps_other_templates_tmp(self):
        """Review 6: create X removes only X's own half-made templates,
        not those of a template whose name starts with X.tmp-."""
        p, tmpdir = self.start_create('y.tmp-1')
        r = self.run_tool('create', 'y', '--qemu', '/nonexistent/qemu', '--',
                          *self.args)
        self.assertEqual(r.returncode, 1)
        self.assertTrue(os.path.isdir(tmpdir), 'create y removed the '
                        'template y.tmp-1 being made')
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 1)
        self.assert_leftovers('y.tmp-1')

    def fifo_clone_args(self, name):
        fifo = self.tmp.join(name)
        os.mkfifo(fifo, 0o600)
        return fifo, ['--', '-chardev', f'file,id=slow,path={fifo}']

    def test_pool_starting_clone_killed(self):
        """Review 8: a clone killed while it starts (the OOM killer,
        destroy) does not stop the pool: it starts another."""
        fifo, extra = self.fifo_clone_args('start.fifo')
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            pool = self.start_pool('b', 1, *extra)
        finally:
            os.close(reader)    # from now on clones wait at start
        served = self.pool_request('b', {'execute': 'clone'})['return']
        self.addCleanup(self.run_tool, 'destroy', served['id'])
        starting = self.wait_for('a clone starts', lambda: [
            r['pid'] for r in self.records().values()
            if r and r.get('state') == 'starting' and r.get('pid')])
        os.kill(starting[0], signal.SIGKILL)
        st = self.wait_for('the pool notices', lambda: (
            lambda s: s if s.get('last-error') else None)(
                self.pool_request('b', {'execute': 'status'})['return']))
        self.assertIsNone(pool.poll(), 'the pool stopped')
        self.assertIn('while it started', st['last-error'])
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            self.wait_for('a new clone is ready', lambda: self.pool_request(
                'b', {'execute': 'status'})['return']['ready'] == 1)
        finally:
            os.close(reader)
        self.stop_pool(pool)

    def test_pool_client_leaves(self):
        """Review 9: a request whose client is gone before its clone runs
        leaves no clone that nobody owns."""
        pool = self.start_pool('b', 1)
        s = self.pool_conn('b')
        s.sendall(b'{"execute": "clone"}\n')
        s.close()
        st = self.wait_for('the request ends', lambda: (
            lambda t: t if not t['loading'] and t['served'] + t['failed'] +
            t.get('abandoned', 0) else None)(
                self.pool_request('b', {'execute': 'status'})['return']))
        running = [d for d, r in self.records().items()
                   if r and r.get('state') == 'running']
        for d in running:
            self.run_tool('destroy', d)
        self.assertEqual(running, [], 'a clone nobody owns runs')
        self.assertEqual((st['served'], st.get('abandoned')), (0, 1))
        self.stop_pool(pool)
        self.wait_for('the abandoned clone is gone',
                      lambda: not self.tool_processes())
        self.assert_leftovers()

    def test_pool_busy(self):
        """Review 10: a pool with every connection taken: clone starts its
        own clones, stop says why it cannot stop the pool."""
        pool = self.start_pool('b', 1)
        conns = [self.pool_conn('b') for _ in range(32)]
        clones = []
        try:
            r = self.run_tool('--json', 'clone', 'b')
            clones = json.loads(r.stdout) if not r.returncode else []
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("the pool of 'b' is busy", r.stderr)
            self.assertFalse(clones[0]['pooled'])
            r = self.run_tool('stop', 'b', timeout=30)
            self.assertEqual(r.returncode, 1)
            self.assertIn('too many connections', r.stderr)
            self.assertIsNone(pool.poll())
        finally:
            for c in conns:
                c.close()
            self.destroy_all(clones)
        self.stop_pool(pool)
        self.assert_leftovers()

    def test_pool_pidfile_and_errors(self):
        """Review 11: an error of a daemonized pool is reported once (by
        the parent), and a pool that fails leaves no pidfile."""
        r = self.run_tool('pool', 'b', '--daemonize', '--pidfile',
                          self.tmp.join('nodir', 'p.pid'))
        self.assertEqual(r.returncode, 1)
        errors = [ln for ln in r.stderr.splitlines()
                  if ln.startswith('qemu-template:')]
        self.assertEqual(len(errors), 1, r.stderr)
        self.assertIn('--pidfile', errors[0])
        self.damaged_copy('b', 'pv')
        pidfile = self.tmp.join('pv.pid')
        try:
            self.edit_manifest('pv', lambda m: m['qemu'].update(
                version='0.0.0'))
            r = self.run_tool('pool', 'pv', '--daemonize', '--pidfile',
                              pidfile)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn('was made by QEMU 0.0.0', r.stderr)
            self.assertFalse(os.path.exists(pidfile), 'stale pidfile')
        finally:
            self.run_tool('destroy', 'pv', check=True)
        self.assert_leftovers('pv')

    def test_adv_pidfile_symlink(self):
        """Review 12: --pidfile does not follow another user's symlink
        (root would overwrite the file it points to), nor take over
        another user's file."""
        adv = self.adversary()
        self.reachable(self.tmp.path)
        sticky = self.tmp.join('run')
        os.mkdir(sticky)
        os.chmod(sticky, 0o1777)
        victim = self.tmp.join('victim')
        with open(victim, 'w') as f:
            f.write('precious')
        link = os.path.join(sticky, 'pool.pid')
        owned = os.path.join(sticky, 'other.pid')
        adv.run('ln', '-s', victim, link)
        adv.run('touch', owned)
        # ELOOP, or EACCES where fs.protected_regular refuses first
        for pidfile, why in ((link, 'cannot open the pidfile'),
                             (owned, 'is not a file of this user alone')):
            r = self.run_tool('pool', 'b', '--daemonize', '--pidfile',
                              pidfile)
            if r.returncode == 0:
                self.run_tool('stop', 'b')
            self.assertEqual(r.returncode, 1, f'{pidfile} was written')
            self.assertIn(why, r.stderr)
        with open(victim) as f:
            self.assertEqual(f.read(), 'precious')
        self.assert_leftovers()

    def test_create_usr1_no_busy_loop(self):
        """Review 13: after SIGUSR1, create waits for the save as it
        would without: every query-migrate it sends during the save is a
        progress line it prints (QEMU's trace counts them)."""
        trace = self.tmp.join('usr1.trace')
        p = subprocess.Popen([self.tool, '--dir', self.dir, 'create', 'u1',
                              '--mode', 'mapped-ram', '--qemu', self.qemu,
                              '--ready', 'signal', '--', *self.args,
                              '-global', 'migration.x-max-bandwidth=16777216',
                              '-trace', 'handle_qmp_command', '-D', trace],
                             stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=self.env)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait(),
                                 p.stdout.close(), p.stderr.close()))
        self.addCleanup(self.run_tool, 'destroy', 'u1')
        tdir = os.path.join(self.dir, 'templates')
        self.wait_for('QEMU runs', lambda: any(
            e.startswith('.u1.') and os.path.exists(
                os.path.join(tdir, e, 'console.log'))
            for e in os.listdir(tdir)))
        time.sleep(0.5)
        p.send_signal(signal.SIGUSR1)
        self.assertEqual(p.wait(120), 0, p.stderr.read())
        lines = p.stderr.read().count('qemu-template: saving:')
        with open(trace) as f:
            polls = sum('"query-migrate"' in ln for ln in f)
        self.assertLessEqual(polls, lines + 1, f'{polls} query-migrate for '
                             f'{lines} progress lines')

    def test_destroy_newline_dir(self):
        """Review 15: destroy sees a process that maps the template when
        the directory's path holds a newline (/proc/PID/maps writes it
        as \\012): it compares device and inode."""
        top = self.tmp.join('new\nline')
        d = self.copy_template('b', top)
        with open(os.path.join(d, 'memory'), 'rb') as f:
            mm = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)
        try:
            r = self.run_tool('destroy', 'b', tool_dir=top)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("template 'b' is mapped by processes", r.stderr)
            self.assertTrue(os.path.isdir(d))
        finally:
            mm.close()
        self.run_tool('destroy', 'b', tool_dir=top, check=True)
        self.assertFalse(os.path.exists(d))

    def test_pool_stopping_does_not_block(self):
        """Review 17: the pool answers while a clone it discards takes its
        time to die (a stopped process: SIGTERM waits, SIGKILL after 3 s)."""
        pool = self.start_pool('b', 2, '--timeout', '2')
        waiting = [r['pid'] for r in self.records().values()
                   if r and r.get('pooled') and r.get('state') == 'waiting']
        self.assertEqual(len(waiting), 2)
        for pid in waiting:
            os.kill(pid, signal.SIGSTOP)
        try:
            ans = self.pool_request('b', {'execute': 'clone'})
            self.assertIn('did not start running in 2 s',
                          ans['error']['desc'])
            st = self.pool_request('b', {'execute': 'status'})['return']
            self.assertEqual(st.get('stopping'), 1, st)
        finally:
            for pid in waiting:
                os.kill(pid, signal.SIGCONT)
        self.stop_pool(pool)
        self.assert_leftovers()

    def test_pool_client_trickle(self):
        """Review 18: a client that sends a byte now and then but never a
        whole request is dropped once --client-timeout passed."""
        pool = self.start_pool('b', 1, '--client-timeout', '2')
        s = self.pool_conn('b', timeout=0.5)
        closed = False
        end = time.monotonic() + 30
        try:
            while not closed and time.monotonic() < end:
                try:
                    s.sendall(b' ')
                    closed = s.recv(1) == b''
                except socket.timeout:
                    pass
                except OSError:
                    closed = True
        finally:
            s.close()
        self.assertTrue(closed, 'a client trickling bytes kept its slot')
        self.stop_pool(pool)

    def second_monitor(self, name):
        """The QMP socket a create's template has for the test (-qmp)."""
        tdir = os.path.join(self.dir, 'templates')
        path = self.wait_for('the second monitor', lambda: next(
            (os.path.join(tdir, e, 'm2.sock') for e in os.listdir(tdir)
             if e.startswith(f'.{name}.') and
             os.path.exists(os.path.join(tdir, e, 'm2.sock'))), None))
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(path)
        f = s.makefile('rw')
        json.loads(f.readline())
        return s, f

    def test_create_ready_events(self):
        """Review 20: --ready event:NAME counts only events after the
        tool's own cont (its RESUME is not one), and no event is lost
        while earlier conditions are waited for (here POWERDOWN followed
        by 300 others)."""
        r = self.run_tool('create', 'ev1', '--qemu', self.qemu, '--ready',
                          'event:RESUME', '--timeout', '3', '--', *self.args)
        self.assertEqual(r.returncode, 1, 'the tool\'s own RESUME counted')
        self.assertIn("'event:RESUME' did not hold within 3 s", r.stderr)
        gate = self.tmp.join('gate')
        p = subprocess.Popen([self.tool, '--dir', self.dir, 'create', 'ev2',
                              '--qemu', self.qemu, '--ready', f'log:{gate}:go',
                              '--ready', 'event:POWERDOWN', '--ready',
                              'event:RESUME', '--timeout', '60', '--',
                              *self.args, '-qmp',
                              'unix:@DIR@/m2.sock,server=on,wait=off'],
                             stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=self.env)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait(),
                                 p.stdout.close(), p.stderr.close()))
        self.addCleanup(self.run_tool, 'destroy', 'ev2')
        s, f = self.second_monitor('ev2')
        with s:
            cmds = ['qmp_capabilities', 'system_powerdown']
            cmds += ['stop', 'cont'] * 150
            for cmd in cmds:
                f.write(json.dumps({'execute': cmd}) + '\n')
                f.flush()
                while 'return' not in json.loads(f.readline()):
                    pass
        with open(gate, 'w') as g:
            g.write('go')
        self.assertEqual(p.wait(120), 0, p.stderr.read())

    # -- the review's nits

    def test_errors_and_options_anywhere(self):
        """--json errors carry the hint; --dir and --json may follow the
        command; a command that makes nothing makes no directory."""
        r = self.run_tool('clone', 'nosuch', '--json')
        self.assertEqual(r.returncode, 1)
        err = json.loads(r.stdout)['error']
        self.assertIn("'qemu-template list' shows the templates",
                      err['hint'])
        none = self.tmp.join('none')
        for args in (['list'], ['status', 'x'], ['destroy', 'x'],
                     ['stop', 'x']):
            r = subprocess.run([self.tool, *args, '--dir', none, '--json'],
                               capture_output=True, text=True, env=self.env)
            self.assertFalse(os.path.exists(none), args)
            if args == ['list']:
                self.assertEqual((r.returncode, json.loads(r.stdout)),
                                 (0, []))
            else:
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn('desc', json.loads(r.stdout)['error'])

    def test_pool_request_arguments_checked(self):
        """A clone request's arguments are checked: lists of strings
        under "args" and "nics", nothing else."""
        pool = self.start_pool('b', 1)
        for args in ({'args': 'junk'}, {'nics': [1]}, {'other': []}, 5):
            ans = self.pool_request('b', {'execute': 'clone',
                                          'arguments': args})
            self.assertIn('error', ans, args)
        st = self.pool_request('b', {'execute': 'status'})['return']
        self.assertEqual((st['served'], st['ready']), (0, 1))
        self.stop_pool(pool)
        self.assert_leftovers()

    def test_pool_daemon_detached(self):
        """A daemonized pool keeps none of the descriptors it was started
        with and works in "/"."""
        rfd, wfd = os.pipe()
        try:
            r = subprocess.run([self.tool, '--dir', self.dir, 'pool', 'b',
                                '--daemonize'], pass_fds=(rfd,),
                               stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, env=self.env, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            pid = self.pool_request('b', {'execute': 'status'})['return'][
                'pid']
            fds = {os.readlink(f'/proc/{pid}/fd/{fd}')
                   for fd in os.listdir(f'/proc/{pid}/fd')}
            inherited = os.readlink(f'/proc/self/fd/{rfd}')
            self.assertNotIn(inherited, fds)
            self.assertEqual(os.readlink(f'/proc/{pid}/cwd'), '/')
        finally:
            os.close(rfd)
            os.close(wfd)
            self.run_tool('stop', 'b')
        self.assert_leftovers()

    def test_qemu_output_sanitized(self):
        """QEMU's output quoted in an error reaches the terminal without
        its control characters."""
        r = self.run_tool('create', 'y', '--qemu', self.qemu, '--',
                          *self.args, '-device', 'no-such\x1b[31m')
        self.assertEqual(r.returncode, 1)
        self.assertIn('no-such\\x1b[31m', r.stderr)
        self.assertNotIn('\x1b', r.stderr)
        self.assert_leftovers('y')
