# SPDX-License-Identifier: GPL-2.0-or-later
"""
VMT end-to-end harness library.

Launches QEMU VMs running the bundled test guest (tests/guest/), talks to
them over QMP and to the guest agent over a serial line, measures start-up
latencies and reads memory accounting from /proc.  The agent protocol is
documented in docs/devel/vmt-guest-agent.rst.

Only the Python standard library is used, plus QEMU's in-tree QMP library
(``qemu.qmp.legacy``) from a QEMU source tree's python/ directory.

Environment variables:

  VMT_QEMU     QEMU binary (default: build/qemu/qemu-system-x86_64)
  VMT_PYTHON   directory holding QEMU's python package "qemu" (default:
               build/src/python, else build/upstream-src/python)
  VMT_GUEST    directory with vmlinuz and initrd.img (default: build/guest)
  VMT_ACCEL    kvm|tcg; default: probe once, cache in build/guest/accel-probe
  VMT_TMPDIR   where per-test directories go (default: /dev/shm, else /tmp)
  VMT_KEEP     set to 1 to keep per-test directories (for debugging)
  VMT_VERBOSE  set to 1 to print every QEMU command line
"""

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SRCDIR = os.path.dirname(os.path.abspath(__file__))
TOPDIR = os.path.normpath(os.path.join(SRCDIR, '..', '..'))
BUILDDIR = os.path.join(TOPDIR, 'build')

DEFAULT_QEMU = os.path.join(BUILDDIR, 'qemu', 'qemu-system-x86_64')
DEFAULT_GUEST = os.path.join(BUILDDIR, 'guest')
ACCEL_CACHE = os.path.join(DEFAULT_GUEST, 'accel-probe')

AGENT_PREFIX = 'VMT-AGENT '
# quiet: a slow emulated console; mitigations=off, cryptomgr.notests: the
# guest is a test fixture, skip work that costs 0.2-0.5 s of boot under TCG.
# An idle guest wakes up less (docs/devel/vmt-density.rst): tsc=reliable
# (no clocksource watchdog), nowatchdog (no lockup detector timers),
# vmstat every 120 s; 8 idle clones under TCG use 0.19 % of a core each
# instead of 0.35 %.  vm.compaction_proactiveness=0: kcompactd no longer
# wakes every 500 ms, which woke the tick and TCP's deferrable orphan
# timer with it; 8 idle VMs 0.004-0.012 % instead of 0.28-0.30 %.
KERNEL_CMDLINE = ('console=ttyS0 quiet panic=-1 vmt_agent=ttyS1 '
                  'no_timer_check mitigations=off cryptomgr.notests '
                  'tsc=reliable nowatchdog sysctl.vm.stat_interval=120 '
                  'sysctl.vm.compaction_proactiveness=0')
GUEST_MEM = '256M'


class VMTError(Exception):
    pass


def now_ns():
    return time.perf_counter_ns()


def ms(ns):
    """Nanoseconds to milliseconds (float)."""
    return ns / 1e6


def log(msg):
    print(f'vmt: {msg}', file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# configuration

def qemu_binary(path=None):
    path = path or os.environ.get('VMT_QEMU') or DEFAULT_QEMU
    if not os.access(path, os.X_OK):
        raise VMTError(f'QEMU binary {path} not found (set VMT_QEMU '
                       'or pass --qemu)')
    return os.path.abspath(path)


def python_dir(path=None, binary=None):
    """The python dir: explicit, $VMT_PYTHON, else the one matching the
    QEMU binary (build/qemu-upstream -> build/upstream-src/python,
    build/qemu -> build/src/python), else whichever exists."""
    cands = [path, os.environ.get('VMT_PYTHON')]
    try:
        bdir = os.path.dirname(qemu_binary(binary))
    except VMTError:
        bdir = ''
    if bdir == os.path.join(BUILDDIR, 'qemu-upstream'):
        cands.append(os.path.join(BUILDDIR, 'upstream-src', 'python'))
    cands += [os.path.join(BUILDDIR, 'src', 'python'),
              os.path.join(BUILDDIR, 'upstream-src', 'python')]
    for c in cands:
        if c and os.path.isdir(os.path.join(c, 'qemu', 'qmp')):
            return os.path.abspath(c)
    raise VMTError('QEMU python directory (with qemu/qmp) not found; '
                   'set VMT_PYTHON')


_QMP_CLASS = None


def qmp_class(pydir=None):
    """Import qemu.qmp.legacy.QEMUMonitorProtocol from the python dir."""
    global _QMP_CLASS
    if _QMP_CLASS is None:
        d = python_dir(pydir)
        if d not in sys.path:
            sys.path.insert(0, d)
        from qemu.qmp.legacy import QEMUMonitorProtocol
        _QMP_CLASS = QEMUMonitorProtocol
    return _QMP_CLASS


def guest_dir(guestdir=None):
    return os.path.abspath(guestdir or os.environ.get('VMT_GUEST') or
                           DEFAULT_GUEST)


def build_guest(guestdir=None):
    """Run tests/guest/build-guest.sh (cheap when up to date)."""
    subprocess.run([os.path.join(TOPDIR, 'tests', 'guest', 'build-guest.sh'),
                    guest_dir(guestdir)], check=True,
                   stdout=subprocess.DEVNULL)


# The guest for identity tests (build-guest.sh's "vmgenid" flavour):
# Debian's generic kernel has CONFIG_VMGENID (the cloud kernel of the
# default guest does not), at the price of a slower boot (about 6 s
# instead of 3 s under TCG here); its initrd has the virtio-net driver.
DEFAULT_VMGENID_GUEST = os.path.join(BUILDDIR, 'guest-vmgenid')


def vmgenid_guest_dir():
    return os.path.abspath(os.environ.get('VMT_GUEST_VMGENID') or
                           DEFAULT_VMGENID_GUEST)


def build_vmgenid_guest():
    """The generic-kernel guest (cheap when up to date)."""
    env = dict(os.environ, VMT_GUEST_FLAVOUR='vmgenid')
    subprocess.run([os.path.join(TOPDIR, 'tests', 'guest', 'build-guest.sh'),
                    vmgenid_guest_dir()], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    return vmgenid_guest_dir()


def template_tool(binary=None):
    """qemu-template (contrib/qemu-template/) built next to the QEMU."""
    env = os.environ.get('VMT_TEMPLATE_TOOL')
    if env:
        return env
    return os.path.join(os.path.dirname(qemu_binary(binary)), 'contrib',
                        'qemu-template', 'qemu-template')


def template_tool_env(binary=None, env=None):
    """The environment to run qemu-template in: the QEMU binary it runs
    ($QEMU_TEMPLATE_QEMU; clone and pool never take it from a manifest)."""
    return dict(env or os.environ, QEMU_TEMPLATE_QEMU=qemu_binary(binary))


# qemu-template: the template is ready when the guest's crng is (so that a
# clone's reseed shows); @DIR@ is each VM's directory
TOOL_READY = 'log:@DIR@/console.log:vmt-init: crng ready'


def tool_guest_args(guest, accel):
    """QEMU arguments of the bundled guest for qemu-template create: the
    console in @DIR@/console.log, the agent on @DIR@/agent.sock."""
    return ['-M', 'pc', '-m', GUEST_MEM, '-nodefaults',
            '-no-user-config', '-display', 'none', '-no-reboot',
            '-accel', accel,
            '-serial', 'file:@DIR@/console.log',
            '-chardev', 'socket,id=agent,path=@DIR@/agent.sock,'
                        'server=on,wait=off',
            '-serial', 'chardev:agent',
            '-kernel', os.path.join(guest, 'vmlinuz'),
            '-initrd', os.path.join(guest, 'initrd.img'),
            '-append', KERNEL_CMDLINE]


def guest_files(guestdir=None):
    d = guest_dir(guestdir)
    kernel = os.path.join(d, 'vmlinuz')
    initrd = os.path.join(d, 'initrd.img')
    for f in (kernel, initrd):
        if not os.path.isfile(f):
            raise VMTError(f'{f} missing: run tests/guest/build-guest.sh {d}')
    return kernel, initrd


def tmp_base():
    base = os.environ.get('VMT_TMPDIR')
    if not base:
        base = '/dev/shm' if os.path.isdir('/dev/shm') else '/tmp'
    return base


# ---------------------------------------------------------------------------
# cleanup: every VM and temp dir we create is registered here

_vms = []
_tmpdirs = []
_cleanup_lock = threading.RLock()


def kill_all_vms():
    """Kill every VM started so far (their directories stay)."""
    with _cleanup_lock:
        for vm in list(_vms):
            try:
                vm.kill()
            except Exception:
                pass


def cleanup_all():
    with _cleanup_lock:
        kill_all_vms()
        for d in list(_tmpdirs):
            remove_tmpdir(d)


def remove_tmpdir(d):
    with _cleanup_lock:
        if d in _tmpdirs:
            _tmpdirs.remove(d)
    if os.environ.get('VMT_KEEP') == '1':
        log(f'keeping {d}')
        return
    shutil.rmtree(d, ignore_errors=True)


terminated_by = None      # the signal number once SIGTERM/SIGHUP came


def _on_signal(signum, frame):
    # Turn SIGTERM/SIGHUP into KeyboardInterrupt, like SIGINT: context
    # managers run, and unittest stops the run instead of recording an
    # error and going on with the next test.  atexit is the last resort.
    global terminated_by
    terminated_by = signum
    cleanup_all()
    raise KeyboardInterrupt(f'signal {signum}')


atexit.register(cleanup_all)
for _sig in (signal.SIGTERM, signal.SIGHUP):
    try:
        signal.signal(_sig, _on_signal)
    except (ValueError, OSError):
        pass


class TempDir:
    """A per-test directory (on tmpfs by default), removed on exit."""

    def __init__(self, prefix='vmt-'):
        self.path = tempfile.mkdtemp(prefix=prefix, dir=tmp_base())
        with _cleanup_lock:
            _tmpdirs.append(self.path)

    def join(self, *names):
        return os.path.join(self.path, *names)

    def cleanup(self):
        remove_tmpdir(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False


def _child_setup():
    # Own process group (Ctrl-C goes to us, we kill QEMU ourselves) and
    # SIGKILL when the harness dies without cleaning up.
    os.setpgid(0, 0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)     # PR_SET_PDEATHSIG
    except Exception:
        pass


# ---------------------------------------------------------------------------
# guest agent client

class AgentError(VMTError):
    pass


class Agent:
    """Client of the guest agent on a unix socket chardev.

    Lines not starting with AGENT_PREFIX are noise and skipped."""

    def __init__(self, path):
        self.path = path
        self.sock = None
        self.buf = b''

    def connect(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                self.sock = s
                return
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise AgentError(f'cannot connect to {self.path}')
                time.sleep(0.002)

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None

    def send(self, line):
        self.sock.sendall(line.encode() + b'\n')

    def read_answer(self, timeout):
        """Next prefixed answer (without the prefix), None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            while b'\n' in self.buf:
                raw, self.buf = self.buf.split(b'\n', 1)
                line = raw.decode('utf-8', 'replace').strip('\r\x00 ')
                i = line.find(AGENT_PREFIX)
                if i >= 0:
                    return line[i + len(AGENT_PREFIX):]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                raise AgentError('agent connection closed')
            self.buf += data

    def drain(self):
        """Forget anything received so far (stale banners etc.)."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
        except (BlockingIOError, socket.timeout):
            pass
        self.buf = b''

    def wait_banner(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            ans = self.read_answer(max(0.0, deadline - time.monotonic()))
            if ans is None:
                raise AgentError(f'no agent banner within {timeout} s')
            if ans.startswith('READY'):
                return ans

    def request(self, req, timeout=60.0):
        """Send one request, return its answer (prefix stripped).

        Banners are skipped; an answer to an earlier request that timed
        out could still arrive late, so callers use wait-free requests."""
        self.drain()
        self.send(req)
        deadline = time.monotonic() + timeout
        while True:
            ans = self.read_answer(max(0.0, deadline - time.monotonic()))
            if ans is None:
                raise AgentError(f'no answer to {req!r} within {timeout} s')
            if not ans.startswith('READY'):
                return ans

    def ping_until_pong(self, timeout=60.0, interval=1.0):
        """Ping repeatedly until a pong arrives (the first ping may be
        lost while the guest is not listening yet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send('ping')
            end = min(deadline, time.monotonic() + interval)
            while True:
                ans = self.read_answer(max(0.0, end - time.monotonic()))
                if ans is None:
                    break
                if ans == 'pong':
                    t = now_ns()
                    # drop answers to earlier, delayed pings
                    time.sleep(0.05)
                    self.drain()
                    return t
        raise AgentError(f'no pong within {timeout} s')

    # convenience wrappers for the documented requests
    def ping(self, timeout=30.0):
        return self.request('ping', timeout)

    def write(self, seed, mib, timeout=120.0):
        return self.request(f'write {seed} {mib}', timeout)

    def sum(self, timeout=60.0):
        ans = self.request('sum', timeout)
        if not ans.startswith('sum '):
            raise AgentError(f'sum failed: {ans}')
        return ans.split()[1]

    def rand(self, n, timeout=30.0):
        ans = self.request(f'rand {n}', timeout)
        if not ans.startswith('rand '):
            raise AgentError(f'rand failed: {ans}')
        return ans.split()[1]

    def wait_crng(self, timeout=120.0):
        """Wait until the guest's crng is initialised (genid crng=1)."""
        deadline = time.monotonic() + timeout
        while True:
            g = self.genid()
            if g.get('crng') == '1':
                return g
            if time.monotonic() > deadline:
                raise AgentError(f'guest crng not ready after {timeout} s')
            time.sleep(0.5)

    def genid(self, timeout=30.0):
        """Returns the genid answer as a dict of its key=value fields."""
        ans = self.request('genid', timeout)
        f = ans.split()
        if not f or f[0] != 'genid':
            raise AgentError(f'genid failed: {ans}')
        return dict(kv.split('=', 1) for kv in f[1:])


# ---------------------------------------------------------------------------
# accelerator selection

_accel = None


def _probe_kvm(binary):
    if not os.access('/dev/kvm', os.R_OK | os.W_OK):
        return False, 'no usable /dev/kvm'
    try:
        with VM(binary, accel='kvm', name='accel-probe') as vm:
            vm.launch()
            try:
                vm.agent.wait_banner(timeout=15.0)
            except AgentError:
                return False, 'guest did not reach the agent banner ' \
                    'within 15 s under KVM'
            return True, 'guest reached the agent banner under KVM'
    except VMTError as e:
        return False, f'KVM launch failed: {e}'


def select_accel(binary=None):
    """kvm or tcg: VMT_ACCEL, else the cached probe result, else probe."""
    global _accel
    if _accel:
        return _accel
    how = ''
    env = os.environ.get('VMT_ACCEL')
    if env:
        if env not in ('kvm', 'tcg'):
            raise VMTError(f'VMT_ACCEL must be kvm or tcg, not {env}')
        _accel, how = env, 'from VMT_ACCEL'
    else:
        try:
            with open(ACCEL_CACHE) as f:
                cached = f.readline().split()
            if cached and cached[0] in ('kvm', 'tcg'):
                _accel, how = cached[0], f'cached in {ACCEL_CACHE}'
        except OSError:
            pass
    if not _accel:
        log('probing KVM (up to 15 s) ...')
        ok, why = _probe_kvm(qemu_binary(binary))
        _accel = 'kvm' if ok else 'tcg'
        how = f'probed: {why}'
        try:
            os.makedirs(os.path.dirname(ACCEL_CACHE), exist_ok=True)
            with open(ACCEL_CACHE, 'w') as f:
                f.write(f'{_accel}\n# {why}\n')
        except OSError:
            pass
    log(f'accelerator: {_accel} ({how})')
    return _accel


# ---------------------------------------------------------------------------
# the VM

class VM:
    """One QEMU process running the test guest.

    The per-VM directory holds qmp.sock, agent.sock (the guest's ttyS1)
    and console.log (the guest's ttyS0).  Timestamps (perf_counter_ns) are
    kept in self.t: 'exec', 'qmp' (first QMP reply), 'banner', 'pong'.
    """

    def __init__(self, binary=None, extra_args=(), accel=None, name='vm',
                 tmpdir=None, guest=None, mem=GUEST_MEM, kernel_args='',
                 with_guest=True, pydir=None, machine='pc'):
        self.binary = qemu_binary(binary)
        self.machine = machine
        self.extra_args = list(extra_args)
        self.accel = accel
        self.name = name
        self.mem = mem
        self.kernel_args = kernel_args
        self.with_guest = with_guest
        self.guest = guest
        self.pydir = pydir
        self._own_tmp = tmpdir is None
        self.tmp = TempDir(prefix=f'vmt-{name}-') if tmpdir is None else None
        base = self.tmp.path if self.tmp else tmpdir
        self.dir = os.path.join(base, name) if tmpdir else base
        os.makedirs(self.dir, exist_ok=True)
        self.qmp_path = os.path.join(self.dir, 'qmp.sock')
        self.agent_path = os.path.join(self.dir, 'agent.sock')
        self.console = os.path.join(self.dir, 'console.log')
        self.stderr_path = os.path.join(self.dir, 'qemu.stderr')
        self.proc = None
        self.qmp = None
        self.agent = Agent(self.agent_path)
        self.t = {}

    # -- command line
    def args(self):
        accel = self.accel or select_accel(self.binary)
        a = [self.binary, '-M', self.machine, '-m', self.mem, '-nodefaults',
             '-no-user-config', '-display', 'none', '-no-reboot',
             '-accel', accel,
             '-chardev', f'socket,id=qmp,path={self.qmp_path},'
                         'server=on,wait=off',
             '-mon', 'chardev=qmp,mode=control',
             '-serial', f'file:{self.console}',
             '-chardev', f'socket,id=agent,path={self.agent_path},'
                         'server=on,wait=off',
             '-serial', 'chardev:agent']
        if self.with_guest:
            kernel, initrd = guest_files(self.guest)
            cmdline = KERNEL_CMDLINE
            if self.kernel_args:
                cmdline += ' ' + self.kernel_args
            a += ['-kernel', kernel, '-initrd', initrd, '-append', cmdline]
        return a + self.extra_args

    # -- life cycle
    def launch(self, connect_agent=True):
        """Start QEMU; connect QMP (and the agent socket).  Returns the
        exec timestamp."""
        args = self.args()
        qmp_class(self.pydir)       # import before the clock starts
        if os.environ.get('VMT_VERBOSE') == '1':
            log(f'{self.name}: ' + ' '.join(args))
        stderr = open(self.stderr_path, 'wb')
        with _cleanup_lock:
            self.t['exec'] = now_ns()
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=stderr, stderr=stderr,
                                         preexec_fn=_child_setup)
            _vms.append(self)
        stderr.close()
        self.connect_qmp()
        if connect_agent:
            self.agent.connect()
        return self.t['exec']

    def connect_qmp(self, timeout=30.0):
        """Connect (retrying until the socket is there) and negotiate;
        the qmp_capabilities reply is the first QMP reply."""
        cls = qmp_class(self.pydir)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if os.path.exists(self.qmp_path):
                q = cls(self.qmp_path)
                try:
                    q.connect(negotiate=True)
                    self.t['qmp'] = now_ns()
                    self.qmp = q
                    return
                except Exception:
                    try:
                        q.close()
                    except Exception:
                        pass
            if time.monotonic() > deadline:
                raise VMTError(f'{self.name}: QMP not reachable')
            time.sleep(0.001)

    def _check_alive(self):
        if self.proc and self.proc.poll() is not None:
            raise VMTError(f'{self.name}: QEMU exited with '
                           f'{self.proc.returncode}: {self.stderr_tail()}')

    def stderr_tail(self, n=2000):
        try:
            with open(self.stderr_path, 'rb') as f:
                return f.read()[-n:].decode('utf-8', 'replace').strip()
        except OSError:
            return ''

    def console_tail(self, n=2000):
        try:
            with open(self.console, 'rb') as f:
                return f.read()[-n:].decode('utf-8', 'replace')
        except OSError:
            return ''

    @property
    def pid(self):
        return self.proc.pid

    def wait_banner(self, timeout=120.0):
        try:
            ans = self.agent.wait_banner(timeout)
        except AgentError as e:
            raise AgentError(f'{self.name}: {e}; console:\n'
                             f'{self.console_tail()}') from None
        self.t['banner'] = now_ns()
        return ans

    def wait_pong(self, timeout=60.0):
        self.t['pong'] = self.agent.ping_until_pong(timeout)
        return self.t['pong']

    # -- timing helpers (perf_counter_ns based)
    def since_exec_ns(self, key):
        """ns from exec to the event recorded as self.t[key]: 'qmp' is the
        first QMP reply (to qmp_capabilities, not the greeting), 'banner'
        the agent banner, 'pong' the first pong, 'restored'/'running' see
        restore_clone()."""
        return self.t[key] - self.t['exec']

    def answer_since_exec_ns(self, req, timeout=60.0):
        """Send an agent request; return (answer, ns from exec to it)."""
        ans = self.agent.request(req, timeout)
        return ans, now_ns() - self.t['exec']

    def shutdown(self, timeout=10.0):
        """quit via QMP, then make sure the process is gone."""
        if self.proc and self.proc.poll() is None and self.qmp:
            try:
                self.qmp.cmd('quit')
            except Exception:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self):
        self.agent.close()
        if self.qmp:
            try:
                self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait()
        with _cleanup_lock:
            if self in _vms:
                _vms.remove(self)
        if self.tmp and self._own_tmp:
            self.tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        return False

    # -- QMP helpers
    def cmd(self, name, **args):
        self._check_alive()
        return self.qmp.cmd(name, **args)

    def set_caps(self, **caps):
        self.cmd('migrate-set-capabilities',
                 capabilities=[{'capability': k.replace('_', '-'),
                                'state': bool(v)} for k, v in caps.items()])

    def status(self):
        return self.cmd('query-status')['status']

    def wait_migration(self, timeout=300.0, poll=0.002):
        """Poll query-migrate until completed; raise on failure."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.cmd('query-migrate')
            st = info.get('status')
            if st == 'completed':
                return info
            if st in ('failed', 'cancelled'):
                raise VMTError(f'{self.name}: migration {st}: '
                               f'{info.get("error-desc", "")} '
                               f'{self.stderr_tail()}')
            if time.monotonic() > deadline:
                raise VMTError(f'{self.name}: migration not completed '
                               f'after {timeout} s (status {st})')
            time.sleep(poll)

    def wait_event(self, name, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VMTError(f'{self.name}: no {name} event')
            try:
                ev = self.qmp.pull_event(wait=float(left))
            except Exception:
                raise VMTError(f'{self.name}: no {name} event') from None
            if ev and ev.get('event') == name:
                return ev

    # -- memory
    def smaps(self, path=None, anon_size=None):
        return smaps_mapping(self.pid, path=path, anon_size=anon_size)

    def smaps_rollup(self):
        return smaps_rollup(self.pid)


# ---------------------------------------------------------------------------
# memory accounting (all values in KiB)

SMAPS_FIELDS = ('Rss', 'Pss', 'Shared_Clean', 'Shared_Dirty',
                'Private_Clean', 'Private_Dirty', 'Anonymous')


def _parse_size(line):
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


def _is_header(line):
    first = line.split(' ', 1)[0]
    return '-' in first and not first.endswith(':')


def smaps_mapping(pid, path=None, anon_size=None):
    """Memory of one mapping of process pid, from /proc/PID/smaps.

    Select it by file path (all mappings of that file are summed), or as
    the anonymous mapping of anon_size bytes (the guest RAM of a VM
    without a file backend; if none has exactly that size, the smallest
    larger one).  Returns a dict of SMAPS_FIELDS in KiB plus 'Size' and
    'mappings' (how many were summed)."""
    if (path is None) == (anon_size is None):
        raise ValueError('give exactly one of path and anon_size')
    maps = []
    cur = None
    with open(f'/proc/{pid}/smaps') as f:
        for line in f:
            if _is_header(line):
                fields = line.split(None, 5)
                start, end = (int(x, 16) for x in fields[0].split('-'))
                name = fields[5].strip() if len(fields) > 5 else ''
                cur = {'name': name, 'bytes': end - start}
                maps.append(cur)
            elif cur is not None and ':' in line:
                key = line.split(':', 1)[0]
                if key in SMAPS_FIELDS or key == 'Size':
                    cur[key] = _parse_size(line)
    if path is not None:
        real = os.path.realpath(path)
        sel = [m for m in maps
               if m['name'] in (path, real, path + ' (deleted)')]
    else:
        anon = [m for m in maps if m['name'] == '']
        sel = [m for m in anon if m['bytes'] == anon_size]
        if not sel:
            bigger = sorted((m for m in anon if m['bytes'] > anon_size),
                            key=lambda m: m['bytes'])
            sel = bigger[:1]
    if not sel:
        raise VMTError(f'pid {pid}: no mapping for '
                       f'{path or f"anonymous {anon_size} bytes"}')
    res = {k: sum(m.get(k, 0) for m in sel) for k in SMAPS_FIELDS + ('Size',)}
    res['mappings'] = len(sel)
    return res


def smaps_rollup(pid):
    """Whole-process totals from /proc/PID/smaps_rollup, in KiB."""
    res = {}
    with open(f'/proc/{pid}/smaps_rollup') as f:
        for line in f:
            if _is_header(line):
                continue
            key = line.split(':', 1)[0]
            if key in SMAPS_FIELDS:
                res[key] = _parse_size(line)
    return res


def sha256_file(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# the template / clone flow

def ram_backend_args(ram_path, share, size=GUEST_MEM):
    return ['-object', f'memory-backend-file,id=mem0,size={size},'
                       f'mem-path={ram_path},share={"on" if share else "off"}',
            '-machine', 'memory-backend=mem0']


# Template modes.  ignore-shared and bypass: the template's RAM is a
# share=on memory-backend-file, saved as device state only; clones map the
# RAM file with share=off.  map and copy ("template from any VM"): the
# template has ordinary anonymous RAM and is saved with upstream's
# mapped-ram capability to one fixed-ram file; clones load that file with
# the migration parameter mapped-ram-load=map (the file's page regions are
# mapped copy-on-write over guest RAM), =lazy (read on fault through
# userfaultfd, and by a background fill) or =copy (upstream's pread; the
# default, and the only way on a QEMU without mapped-ram-load).
SHARED_MODES = ('ignore-shared', 'bypass')
FILE_MODES = ('map', 'lazy', 'copy')
MODES = SHARED_MODES + FILE_MODES


CAPABILITY = {'ignore-shared': 'x-ignore-shared',
              'bypass': 'bypass-shared-memory',
              'map': 'mapped-ram',
              'lazy': 'mapped-ram',
              'copy': 'mapped-ram'}

MAPPED_RAM_LOAD = 'mapped-ram-load'


def has_capability(vm, cap):
    """Does vm's QEMU know the migration capability cap?"""
    return any(c['capability'] == cap
               for c in vm.cmd('query-migrate-capabilities'))


def has_parameter(vm, param):
    """Does vm's QEMU know the migration parameter param?"""
    return param in vm.cmd('query-migrate-parameters')


def mode_unsupported(vm, mode):
    """None if vm's QEMU can make and start clones in mode, else why not."""
    cap = CAPABILITY[mode]
    if not has_capability(vm, cap):
        return f'QEMU has no migration capability {cap}'
    if mode in ('map', 'lazy') and not has_parameter(vm, MAPPED_RAM_LOAD):
        return (f'QEMU has no migration parameter {MAPPED_RAM_LOAD} '
                f'(mapped-ram-load={mode} not built in)')
    if mode == 'lazy':
        try:
            vm.cmd('migrate-set-parameters', **{MAPPED_RAM_LOAD: 'lazy'})
        except Exception as e:      # an error answer: an older series
            return f'QEMU refuses mapped-ram-load=lazy: {e}'
        vm.cmd('migrate-set-parameters', **{MAPPED_RAM_LOAD: 'copy'})
    return None


def template_args(ram_path, mode):
    """Extra QEMU arguments of a template (besides the guest)."""
    if mode in SHARED_MODES:
        return ram_backend_args(ram_path, share=True)
    return []       # plain -m: anonymous RAM


def migrate_to_file(vm, state_path, mode='ignore-shared', timeout=300.0):
    """Save vm's state (without shared RAM) to state_path.

    mode ignore-shared: upstream capability x-ignore-shared, the Kata flow
    (stop, then migrate; clones are continued with 'cont');
    mode bypass: our bypass-shared-memory capability; the VM is not
    stopped first (migration stops it and records it as running), so
    clones started with a plain -incoming run by themselves."""
    cap = CAPABILITY[mode]
    if mode == 'ignore-shared':
        vm.cmd('stop')
    vm.cmd('migrate-set-capabilities',
           capabilities=[{'capability': cap, 'state': True}])
    vm.cmd('migrate', uri=f'file:{state_path}')
    return vm.wait_migration(timeout)


def migrate_to_mapped_ram(vm, path, timeout=300.0):
    """Save the running vm, RAM included, to the fixed-ram file path.

    Capability mapped-ram, no bandwidth limit (file saves are throttled
    otherwise).  The VM is not stopped first: migration stops it at
    completion, and the stream records it as running, so clones start
    running."""
    vm.set_caps(mapped_ram=True)
    vm.cmd('migrate-set-parameters', **{'max-bandwidth': 0})
    vm.cmd('migrate', uri=f'file:{path}')
    return vm.wait_migration(timeout)


def save_template(vm, state_path, mode, timeout=300.0):
    """Save vm as a template in mode: the state file (shared modes) or the
    fixed-ram file (file modes) is state_path."""
    if mode in SHARED_MODES:
        return migrate_to_file(vm, state_path, mode, timeout)
    return migrate_to_mapped_ram(vm, state_path, timeout)


def clone_args(ram_path, state_path, mode='ignore-shared', defer=False):
    """Extra QEMU arguments of a clone (besides the guest).

    File modes: the fixed-ram file is state_path (ram_path is unused);
    with defer, the clone waits for restore_clone() to set the capability
    and parameter over QMP, else they are given with -global and the
    restore starts at once."""
    if mode in FILE_MODES:
        if defer:
            return ['-incoming', 'defer']
        args = ['-global', 'migration.mapped-ram=on']
        if mode in ('map', 'lazy'):
            args += ['-global', f'migration.{MAPPED_RAM_LOAD}={mode}']
        return args + ['-incoming', f'file:{state_path}']
    args = ram_backend_args(ram_path, share=False)
    if mode == 'ignore-shared':
        return args + ['-S', '-incoming', 'defer']
    return args + ['-incoming', f'exec:cat {state_path}']


def restore_clone(vm, state_path, mode='ignore-shared', defer=False,
                  timeout=300.0):
    """After vm.launch() with clone_args(): load the state and run.

    Sets vm.t['restored'] when the incoming migration has completed and
    vm.t['running'] once the guest runs."""
    if mode == 'ignore-shared':
        vm.set_caps(x_ignore_shared=True)
        vm.cmd('migrate-incoming', uri=f'exec:cat {state_path}')
    elif mode in FILE_MODES and defer:
        vm.set_caps(mapped_ram=True)
        if mode != 'copy' or has_parameter(vm, MAPPED_RAM_LOAD):
            vm.cmd('migrate-set-parameters', **{MAPPED_RAM_LOAD: mode})
        vm.cmd('migrate-incoming', uri=f'file:{state_path}')
    vm.wait_migration(timeout)
    vm.t['restored'] = now_ns()
    if mode == 'ignore-shared':
        vm.cmd('cont')
    else:
        # A plain -incoming clone runs by itself once the state is loaded.
        deadline = time.monotonic() + 10.0
        while vm.status() != 'running':
            if time.monotonic() > deadline:
                raise VMTError(f'{vm.name}: not running after the restore '
                              f'(status {vm.status()})')
            time.sleep(0.001)
    vm.t['running'] = now_ns()


def clone_ram(vm, state_path, ram_path, mode, mem=GUEST_MEM):
    """smaps_mapping() of a clone's guest RAM: the template RAM file
    (shared modes), the fixed-ram file (map; all mappings of it, i.e. the
    RAM blocks mapped from it, ROMs included), the anonymous mapping of
    the RAM size (copy, lazy)."""
    if mode in SHARED_MODES:
        return vm.smaps(path=ram_path)
    if mode == 'map':
        return vm.smaps(path=state_path)
    return vm.smaps(anon_size=parse_size(mem))


def parse_size(s):
    """'256M' -> bytes (K, M, G suffixes, binary)."""
    mult = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
    s = str(s).strip().upper()
    if s and s[-1] in mult:
        return int(s[:-1]) * mult[s[-1]]
    return int(s)


def working_set_header(path):
    """(magic, blocks, pages) from the header of a working set file
    (mapped-ram-save-working-set; format in
    migration/mapped-ram-working-set.c)."""
    with open(path, 'rb') as f:
        head = f.read(24)
    return (head[:8], int.from_bytes(head[12:16], 'big'),
            int.from_bytes(head[16:20], 'big'))


def file_sizes(path):
    """(apparent, allocated) size of a file in bytes."""
    st = os.stat(path)
    return st.st_size, st.st_blocks * 512
