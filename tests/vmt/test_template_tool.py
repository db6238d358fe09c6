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

import json
import os
import shutil
import signal
import socket
import subprocess
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


class TemplateToolTest(unittest.TestCase):
    """Templates 'b' (bypass) and 'm' (mapped-ram), made once."""

    @classmethod
    def setUpClass(cls):
        cls.tool = vmt.template_tool()
        if not os.access(cls.tool, os.X_OK):
            raise unittest.SkipTest(f'{cls.tool} not built (upstream QEMU?)')
        cls.qemu = vmt.qemu_binary()
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
    def run_tool(cls, *args, check=False):
        r = subprocess.run([cls.tool, '--dir', cls.dir, *args],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=300)
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
            for f in os.listdir(d):
                self.assertEqual(os.stat(os.path.join(d, f)).st_mode & 0o222,
                                 0, f)

    # -- the pool

    def start_pool(self, name, size, *extra):
        p = subprocess.Popen([self.tool, '--dir', self.dir, 'pool', name,
                              '--size', str(size), *extra],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
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

    def pool_request(self, name, req):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)
            s.connect(os.path.join(self.dir, 'pools', f'{name}.sock'))
            f = s.makefile('rw')
            f.write(json.dumps(req) + '\n')
            f.flush()
            return json.loads(f.readline())

    def pooled_dirs(self):
        cdir = os.path.join(self.dir, 'clones')
        return [d for d in os.listdir(cdir)
                if os.path.exists(os.path.join(cdir, d, 'pooled'))]

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
        """Template files deleted under a running pool: requests fail with
        the reason, the pool stops, nothing is left."""
        d = self.damaged_copy('m', 'z')
        pool = self.start_pool('z', 1)
        os.unlink(os.path.join(d, 'template.fixed'))
        r = self.run_tool('clone', 'z')
        self.assertEqual(r.returncode, 1)
        self.assertIn('template.fixed', r.stderr)
        r = self.pool_request('z', {'execute': 'clone'})
        self.assertIn('template.fixed', r['error']['desc'])
        self.stop_pool(pool)
        self.run_tool('destroy', 'z', check=True)
        self.assert_leftovers('z')

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
            with open(os.path.join(d, 'manifest.json'), 'w') as f:
                f.write('{"format": 1, "name": "x", garbage')
            self.expect_clone_error('x', 'is not valid JSON')
            with open(os.path.join(d, 'manifest.json'), 'w') as f:
                json.dump({'format': 99, 'name': 'x'}, f)
            self.expect_clone_error('x', 'is not a format 1 manifest')
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
        self.assertIn("did not get ready: 'NEVER' did not appear", r.stderr)
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
        self.assertIn('did not answer guest-ping within 2 s', r.stderr)
        self.assert_leftovers('y')

    def start_create(self, name):
        """A create that waits forever; returns once QEMU runs."""
        p = subprocess.Popen([self.tool, '--dir', self.dir, 'create', name,
                              '--qemu', self.qemu, '--ready',
                              'log:@DIR@/console.log:NEVER', '--',
                              *self.args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
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
