#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
Stream compatibility with the newest upstream QEMU Debian ships, both ways.

  compat_upstream.py --ours QEMU --bootblock HEADER [--machine TYPE]
                     [--chroot-script SH]

Upstream (qemu-system-x86 from trixie-backports, 11.1.3 when this was
written) runs in a trixie chroot that build-aux/upstream-chroot.sh makes
and caches; when it cannot be made here, the group is reported as one
skip, with the reason.

Each QEMU in turn boots the migration qtests' boot-block guest (HEADER is
their a-b-bootblock.h; the guest increments a byte in every page from
1 MiB to 100 MiB) on a 128 MiB machine (default pc-i440fx-10.0, TCG)
whose RAM is two NUMA nodes: node 0 in a shared memory file on /dev/shm
(memory-backend-file, share=on), node 1 anonymous.  Once the guest made
a full pass over its memory, the VM is stopped, its RAM dumped (pmemsave)
and saved, one boot per case:

  file          a plain file: stream;
  mapped-ram    the mapped-ram capability;
  ignore-shared mapped-ram and x-ignore-shared: node 0 is not saved, the
                loader maps the source's memory file, shared, then
                privately (share=off, the clones of Kata's templates).

The other QEMU loads the file (-S, -incoming defer) with the same
capabilities; upstream by copy, ours by copy, map, lazy-S and lazy
(mapped-ram-load; for the plain file only copy).  After each load the
guest RAM is dumped again and must be byte-identical to the source's
dump; lazy-S dumps it with the guest never run (every page read through
a userfaultfd fault); lazy runs the guest until MAPPED_RAM_LAZY_LOADED
and stops it: only the bytes the guest increments may differ, all by the
same count or one more.  A control loads a memory file with one byte
changed and must see that page, and only it, differ; upstream must
refuse a bypass-shared-memory stream of ours.

Needs root (chroot and bind mounts).  The mounts live in a private mount
namespace (unshare -m) and are unmounted on exit; every QEMU started is
killed and every temporary file removed, whatever happens.  Prints one
line per check and "compat-upstream: N passed, N failed, N skipped".
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

MACHINE = 'pc-i440fx-10.0'
NODE_MIB = 64                   # two nodes: 128 MiB of guest RAM
RAM_MIB = 2 * NODE_MIB
BOOT_START = 1 << 20            # what the boot block dirties
BOOT_END = 100 << 20
# Guest physical ranges that are RAM: below the VGA window, and from
# 1 MiB to the end (node 1 follows node 0).
RAM_RANGES = ((0, 0xa0000), (0x100000, (RAM_MIB << 20) - 0x100000))
CHROOT_WORK = '/vmt-compat-work'   # where the work folder shows in the chroot
TIMEOUT = 120

CASES = (
    ('file', []),
    ('mapped-ram', ['mapped-ram']),
    ('ignore-shared', ['mapped-ram', 'x-ignore-shared']),
)

procs = []                      # every QEMU we started
mounts = []                     # every mount we made, in order


class CheckError(Exception):
    pass


def pdeathsig(sig):
    # @sig when the parent dies (kept across exec: chroot, unshare).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, sig, 0, 0, 0)                 # PR_SET_PDEATHSIG


def child_setup():
    pdeathsig(signal.SIGKILL)


def kill_all():
    while procs:
        p = procs.pop()
        if p.poll() is None:
            p.kill()
        p.wait()


def umount_all():
    while mounts:
        m = mounts.pop()
        if subprocess.run(['umount', m]).returncode != 0:
            subprocess.run(['umount', '-l', m])


def on_signal(signum, frame):
    raise KeyboardInterrupt(f'signal {signum}')


class QMP:
    """A minimal QMP client on a unix socket; keeps the events it reads."""

    def __init__(self, path, proc, who):
        self.proc, self.who = proc, who
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise CheckError(f'{who}: no QMP socket: '
                                     f'{stderr_of(proc)}')
                time.sleep(0.05)
        self.sock.settimeout(TIMEOUT)
        self.file = self.sock.makefile('r')
        self.events = []
        try:
            self.read()             # greeting
            self.cmd('qmp_capabilities')
        except CheckError:
            self.sock.close()
            raise

    def read(self):
        try:
            line = self.file.readline()
        except OSError as e:
            raise CheckError(f'{self.who}: QMP: {e}: '
                             f'{stderr_of(self.proc, wait=True)}')
        if not line:
            raise CheckError(f'{self.who}: QEMU exited: '
                             f'{stderr_of(self.proc)}')
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {'execute': name}
        if args:
            msg['arguments'] = args
        try:
            self.sock.sendall((json.dumps(msg) + '\n').encode())
        except OSError as e:
            raise CheckError(f'{self.who}: QMP: {e}: '
                             f'{stderr_of(self.proc, wait=True)}')
        while True:
            r = self.read()
            if 'event' in r:
                self.events.append(r)
            elif 'error' in r:
                raise CheckError(f'{self.who}: {name}: '
                                 f'{r["error"]["desc"]}')
            else:
                return r['return']

    def wait_event(self, name):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            for e in self.events:
                if e['event'] == name:
                    return e
            r = self.read()
            if 'event' in r:
                self.events.append(r)
        raise CheckError(f'{self.who}: no {name} event')

    def close(self):
        self.file.close()
        self.sock.close()


def stderr_of(proc, wait=False):
    if wait:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        return 'still running'
    return (proc.stderr.read() or '').strip()[-1000:] or \
        f'exit status {proc.returncode}'


class Side:
    """One of the two QEMUs: ours on the host, or upstream in the chroot."""

    def __init__(self, name, binary, work, chroot=None):
        self.name, self.binary, self.work, self.chroot = \
            name, binary, work, chroot

    def path(self, host_path):
        """@host_path (in the work folder) as this QEMU sees it."""
        if self.chroot and host_path.startswith(self.work + '/'):
            return CHROOT_WORK + host_path[len(self.work):]
        return host_path

    def argv(self):
        if self.chroot:
            return ['chroot', self.chroot, self.binary]
        return [self.binary]

    def version(self):
        out = subprocess.run(self.argv() + ['--version'], check=True,
                             capture_output=True, text=True).stdout
        return out.splitlines()[0]

    def start(self, tag, node0, extra):
        """Start a VM; @node0 is the -object of node 0's memory."""
        sock = os.path.join(self.work, f'{self.name}-{tag}.qmp')
        args = self.argv() + [
            '-machine', MACHINE, '-accel', 'tcg', '-nodefaults',
            '-display', 'none', '-smp', '1', '-m', f'{RAM_MIB}M',
            '-object', node0,
            '-object', f'memory-backend-ram,id=ram1,size={NODE_MIB}M',
            '-numa', 'node,memdev=ram0', '-numa', 'node,memdev=ram1',
            '-drive', 'if=none,id=d0,format=raw,file=' +
            self.path(os.path.join(self.work, 'bootsect')),
            '-device', 'ide-hd,drive=d0,secs=1,cyls=1,heads=1',
            '-qmp', f'unix:{self.path(sock)},server=on,wait=off'] + extra
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=child_setup)
        procs.append(proc)
        try:
            return proc, QMP(sock, proc, f'{self.name} {tag}')
        except BaseException:
            stop(proc)
            raise

    def dump(self, qmp, host_file):
        """Guest RAM (RAM_RANGES) in one file at @host_file."""
        parts = []
        for i, (start, size) in enumerate(RAM_RANGES):
            part = f'{host_file}.{i}'
            qmp.cmd('pmemsave', val=start, size=size,
                    filename=self.path(part))
            parts.append(part)
        with open(host_file, 'wb') as out:
            for part in parts:
                with open(part, 'rb') as f:
                    shutil.copyfileobj(f, out)
                os.unlink(part)


def stop(proc):
    if proc in procs:
        procs.remove(proc)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def wait_migration(qmp):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        info = qmp.cmd('query-migrate')
        st = info.get('status')
        if st == 'completed':
            return info
        if st in ('failed', 'cancelled'):
            raise CheckError(f'{qmp.who}: migration {st}: '
                             f'{info.get("error-desc", "no error-desc")}')
        time.sleep(0.02)
    raise CheckError(f'{qmp.who}: migration not completed in {TIMEOUT} s')


def set_caps(qmp, on):
    caps = ['mapped-ram', 'x-ignore-shared'] + \
        [c for c in on if c not in ('mapped-ram', 'x-ignore-shared')]
    qmp.cmd('migrate-set-capabilities', capabilities=[
        {'capability': c, 'state': c in on} for c in caps])


def shm_backend(path, size=NODE_MIB):
    return (f'memory-backend-file,id=ram0,size={size}M,mem-path={path},'
            'share=on')


def anon_backend(size=NODE_MIB):
    return f'memory-backend-ram,id=ram0,size={size}M'


def check_dirtied(dump):
    """The boot block wrote in both nodes: the test is not vacuous."""
    with open(dump, 'rb') as f:
        data = f.read()
    base = 0xa0000 - 0x100000      # dump offset of a physical address >= 1M
    for lo, hi in ((BOOT_START, NODE_MIB << 20),
                   (NODE_MIB << 20, BOOT_END)):
        if not any(data[a + base] for a in range(lo, hi, 4096)):
            raise CheckError(f'the guest wrote nothing in '
                             f'[{lo:#x}, {hi:#x}): it did not run')


def save(side, case, caps, work):
    """Boot, let the guest dirty its memory, stop, dump and save."""
    shm = os.path.join(work['shm'], f'{side.name}-{case}-node0')
    serial = os.path.join(work['dir'], f'{side.name}-{case}-serial')
    proc, qmp = side.start(f'save-{case}', shm_backend(shm),
                           ['-serial', f'file:{side.path(serial)}'])
    try:
        # 'A' when the guest starts, then a 'B' every 64 passes.
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with open(serial, 'rb') as f:
                    if b'B' in f.read():
                        break
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise CheckError(f'{side.name}: the boot block did not '
                                 f'run: {stderr_of(proc)}')
            time.sleep(0.05)
        qmp.cmd('stop')
        dump = os.path.join(work['dir'], f'{side.name}-{case}-source.ram')
        side.dump(qmp, dump)
        check_dirtied(dump)
        set_caps(qmp, caps)
        state = os.path.join(work['dir'], f'{side.name}-{case}.state')
        qmp.cmd('migrate', uri='file:' + side.path(state))
        wait_migration(qmp)
        qmp.close()
        return dump, shm, state
    finally:
        stop(proc)
        os.unlink(serial)


def load(side, case, caps, state, shm, mode, work, wrong_shm=None,
         private=False):
    """Load @state; return the path of the loaded guest RAM's dump.

    @mode: how our QEMU loads mapped-ram pages (None for upstream):
    copy, map, lazy-S (the guest never runs: the dump reads every page
    through a userfaultfd fault), or lazy (the guest runs until
    MAPPED_RAM_LAZY_LOADED says every page is present, then stops).
    With x-ignore-shared, node 0 maps the source's memory file @shm,
    shared, or with @private a private copy-on-write mapping of it (the
    clones of Kata's VM templating), or @wrong_shm instead.
    """
    node0 = shm_backend(shm) if case == 'ignore-shared' else anon_backend()
    tag = f'load-{case}-{mode or "copy"}'
    scratch = None
    if wrong_shm:
        node0 = shm_backend(wrong_shm)
        tag += '-wrong'
    elif private:
        node0 = node0.replace('share=on', 'share=off')
        tag += '-private'
    elif case == 'ignore-shared' and mode == 'lazy':
        # The guest runs and writes to node 0: a copy of the file, so
        # that the source's stays as it saved it for the next loads.
        scratch = os.path.join(work['shm'], 'running-node0')
        shutil.copyfile(shm, scratch)
        node0 = shm_backend(scratch)
    proc, qmp = side.start(tag, node0, ['-S', '-serial', 'null',
                                          '-incoming', 'defer'])
    try:
        set_caps(qmp, caps)
        if mode:
            qmp.cmd('migrate-set-parameters',
                    **{'mapped-ram-load': mode.split('-')[0]})
        qmp.cmd('migrate-incoming', uri='file:' + side.path(state))
        wait_migration(qmp)
        if mode == 'map':
            # What the load mapped: the state file's pages over RAM blocks.
            host = side.path(state)
            with open(f'/proc/{proc.pid}/maps') as f:
                sizes = [int(e, 16) - int(b, 16) for b, e in
                         (line.split()[0].split('-') for line in f
                          if line.rstrip().endswith(' ' + host))]
            if not sizes:
                raise CheckError('map: the state file is not mapped')
            print(f'compat-upstream:   map: {len(sizes)} mappings of the '
                  f'file, {sum(sizes) >> 10} KiB', flush=True)
        if mode == 'lazy':
            # The fill thread starts when the guest first runs.
            qmp.cmd('cont')
            ev = qmp.wait_event('MAPPED_RAM_LAZY_LOADED')['data']
            qmp.cmd('stop')
            print(f'compat-upstream:   lazy load: {ev["pages-read"]} '
                  f'pages read, {ev["pages-zeroed"]} zeroed, '
                  f'{ev.get("pages-skipped", 0)} skipped, {ev["faults"]} '
                  f'faults, {ev["total-ms"]} ms', flush=True)
        dump = os.path.join(work['dir'], f'{side.name}-{tag}.ram')
        side.dump(qmp, dump)
        qmp.close()
        return dump
    finally:
        stop(proc)
        if scratch:
            os.unlink(scratch)


def compare(src, got, guest_ran):
    """None if the dumps agree, else what differs.

    When the guest ran after the load, it incremented the first byte of
    pages in [BOOT_START, BOOT_END) in passes: every other byte must be
    the source's, and those first bytes must all have moved by the same
    count, or by one more (the pass it was in when it stopped).
    """
    with open(src, 'rb') as f:
        a = bytearray(f.read())
    with open(got, 'rb') as f:
        b = bytearray(f.read())
    if len(a) != len(b):
        return f'dump sizes differ ({len(a)} and {len(b)} bytes)'
    if guest_ran:
        base = 0xa0000 - 0x100000       # dump offset of an address >= 1M
        sl = slice(BOOT_START + base, BOOT_END + base, 4096)
        deltas = sorted({(y - x) & 0xff for x, y in zip(a[sl], b[sl])})
        if len(deltas) > 2 or (len(deltas) == 2 and
                               (deltas[1] - deltas[0]) & 0xff != 1):
            return (f'the bytes the guest increments moved by '
                    f'{len(deltas)} different counts, not by n or n+1 '
                    f'(first: {deltas[:4]})')
        zeros = bytes(len(range(BOOT_START, BOOT_END, 4096)))
        a[sl] = zeros
        b[sl] = zeros
    if a == b:
        return None
    diff = [i for i in range(0, len(a), 4096)
            if a[i:i + 4096] != b[i:i + 4096]]
    first = diff[0]
    addr = first if first < 0xa0000 else first - 0xa0000 + 0x100000
    return (f'{len(diff)} pages differ from the source\'s, the first at '
            f'guest physical {addr:#x}')


def run_checks(ours, upstream, work):
    passed = failed = 0
    for saver, loader in ((ours, upstream), (upstream, ours)):
        for case, caps in CASES:
            t0 = time.monotonic()
            try:
                src_dump, shm, state = save(saver, case, caps, work)
            except CheckError as e:
                failed += 1
                print(f'compat-upstream: {saver.name} -> {loader.name}: '
                      f'{case}: FAILED to save: {e}', flush=True)
                continue
            print(f'compat-upstream: {saver.name} saved {case} '
                  f'({os.path.getsize(state) >> 10} KiB, '
                  f'{time.monotonic() - t0:.1f} s)', flush=True)
            modes = [None]
            if loader is ours:
                modes = ['copy']
                if case != 'file':
                    modes = ['copy', 'map', 'lazy-S', 'lazy']
            loads = [(m, False) for m in modes]
            if case == 'ignore-shared':
                loads += [(m, True) for m in modes]
            for mode, private in loads:
                label = (f'{saver.name} -> {loader.name}: {case}'
                         f'{" (clone: node 0 share=off)" if private else ""}'
                         f', loaded by {mode or "copy"}')
                t0 = time.monotonic()
                try:
                    got = load(loader, case, caps, state, shm, mode, work,
                               private=private)
                    try:
                        why = compare(src_dump, got, mode == 'lazy')
                    finally:
                        os.unlink(got)
                    if why:
                        raise CheckError(why)
                    passed += 1
                    same = ('identical' if mode != 'lazy' else
                            'identical but for the guest\'s own writes')
                    print(f'compat-upstream: {label}: ok, RAM {same} '
                          f'({time.monotonic() - t0:.1f} s)', flush=True)
                except CheckError as e:
                    failed += 1
                    print(f'compat-upstream: {label}: FAILED: {e}',
                          flush=True)
            if case == 'ignore-shared' and loader is ours:
                ok = control(ours, case, caps, state, shm, src_dump, work)
                passed += ok
                failed += not ok
            for f in (src_dump, shm, state):
                os.unlink(f)
    ok = refused(ours, upstream, work)
    return passed + ok, failed + (not ok)


def refused(ours, upstream, work):
    """Upstream refuses a bypass-shared-memory stream, and says why."""
    label = 'ours -> upstream: bypass-shared-memory (ours only), refused'
    try:
        src_dump, shm, state = save(ours, 'bypass', ['bypass-shared-memory'],
                                    work)
    except CheckError as e:
        print(f'compat-upstream: {label}: FAILED to save: {e}', flush=True)
        return False
    try:
        got = load(upstream, 'ignore-shared', [], state, shm, None, work)
        os.unlink(got)
        why = 'upstream loaded it'
    except CheckError as e:
        why = str(e)
    finally:
        for f in (src_dump, shm, state):
            os.unlink(f)
    # 10.0 says "Unknown savevm section", 11.1 "Unknown section".
    m = re.search(r"Unknown (savevm )?section or instance "
                  r"'bypass-shared-memory'", why)
    if m:
        print(f'compat-upstream: {label}: ok, "{m.group(0)}"', flush=True)
        return True
    print(f'compat-upstream: {label}: FAILED: {why}', flush=True)
    return False


def control(side, case, caps, state, shm, src_dump, work):
    """The comparison is not vacuous: it finds one changed byte."""
    addr = 32 << 20                 # in node 0, where the guest writes
    label = f'control: {case} loaded on a memory file changed at {addr:#x}'
    wrong = os.path.join(work['shm'], 'wrong-node0')
    shutil.copyfile(shm, wrong)
    with open(wrong, 'r+b') as f:
        f.seek(addr + 100)
        byte = f.read(1)[0]
        f.seek(addr + 100)
        f.write(bytes([byte ^ 0xff]))
    try:
        got = load(side, case, caps, state, shm, 'copy', work, wrong)
        try:
            why = compare(src_dump, got, False)
        finally:
            os.unlink(got)
    except CheckError as e:
        why = f'the load failed: {e}'
    finally:
        os.unlink(wrong)
    expect = f'1 pages differ from the source\'s, the first at ' \
             f'guest physical {addr:#x}'
    if why == expect:
        print(f'compat-upstream: {label}: ok, noticed: {why}', flush=True)
        return True
    print(f'compat-upstream: {label}: FAILED: '
          f'{why or "RAM identical: the comparison sees nothing"}',
          flush=True)
    return False


def bootsect(header):
    """The qtests' x86 boot sector, from its generated header."""
    text = open(header).read()
    body = re.search(r'x86_bootsect\[\]\s*=\s*\{(.*?)\};', text, re.S)
    data = bytearray(int(x, 16) for x in re.findall(r'0x[0-9a-fA-F]+',
                                                     body.group(1)))
    syms = dict(re.findall(r'#define SYM_(\w+) (0x[0-9a-fA-F]+)', text))
    if len(data) != 512:
        raise CheckError(f'{header}: the boot sector is {len(data)} bytes')
    data[int(syms['suspend_me'], 16) - int(syms['start'], 16)] = 0
    return bytes(data)


def in_namespace(opts, chroot):
    """The checks, in a private mount namespace, as root."""
    work = {'dir': tempfile.mkdtemp(prefix='vmt-compat-upstream-'),
            'shm': tempfile.mkdtemp(prefix='vmt-compat-upstream-',
                                    dir='/dev/shm')}
    try:
        # Nothing we mount may show outside this namespace.
        if (not opts.outer_ns or
                os.readlink('/proc/self/ns/mnt') == opts.outer_ns):
            raise CheckError('not in a mount namespace of its own: run '
                             'without --chroot')
        os.makedirs(chroot + CHROOT_WORK, exist_ok=True)
        for src, dst in (('/proc', '/proc'), ('/dev', '/dev'),
                         ('/dev/shm', '/dev/shm'),
                         (work['dir'], CHROOT_WORK)):
            subprocess.run(['mount', '--bind', src, chroot + dst],
                           check=True)
            mounts.append(chroot + dst)
        with open(os.path.join(work['dir'], 'bootsect'), 'wb') as f:
            f.write(bootsect(opts.bootblock))
        ours = Side('ours', os.path.abspath(opts.ours), work['dir'])
        upstream = Side('upstream', '/usr/bin/qemu-system-x86_64',
                        work['dir'], chroot)
        print(f'compat-upstream: ours: {ours.version()} ({ours.binary})')
        print(f'compat-upstream: upstream: {upstream.version()} '
              f'(chroot {chroot})')
        print(f'compat-upstream: machine {MACHINE}, TCG, {RAM_MIB} MiB '
              f'in two nodes (node 0 share=on on /dev/shm)', flush=True)
        return run_checks(ours, upstream, work)
    finally:
        kill_all()
        umount_all()
        shutil.rmtree(work['dir'], ignore_errors=True)
        shutil.rmtree(work['shm'], ignore_errors=True)


def summary(passed, failed, skipped):
    print(f'compat-upstream: {passed} passed, {failed} failed, '
          f'{skipped} skipped')
    return 1 if failed else 0


def main():
    global MACHINE
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--ours', required=True, help='our qemu-system-x86_64')
    ap.add_argument('--bootblock', required=True,
                    help="the qtests' a-b-bootblock.h")
    ap.add_argument('--chroot-script', default=os.path.join(
        here, '..', '..', 'build-aux', 'upstream-chroot.sh'))
    ap.add_argument('--machine', default=MACHINE,
                    help=f'a machine type both know (default {MACHINE})')
    ap.add_argument('--chroot', help=argparse.SUPPRESS)
    ap.add_argument('--outer-ns', help=argparse.SUPPRESS)
    opts = ap.parse_args()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    t0 = time.monotonic()
    MACHINE = opts.machine

    if opts.chroot:
        # Second stage, in the mount namespace.
        try:
            passed, failed = in_namespace(opts, opts.chroot)
        except (CheckError, OSError, subprocess.CalledProcessError) as e:
            print(f'compat-upstream: error: {e}')
            passed, failed = 0, 1
        print(f'compat-upstream: checks took {time.monotonic() - t0:.0f} s')
        return summary(passed, failed, 0)

    if os.geteuid() != 0:
        print('compat-upstream: SKIPPED: needs root (chroot, bind mounts)')
        return summary(0, 0, 1)
    # Its own process group: on a signal, every step of a chroot being
    # made (debootstrap, apt-get) gets it, and the script cleans up.
    ensure = subprocess.Popen(['sh', opts.chroot_script, 'ensure'],
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        out = ensure.communicate()[0]
    except KeyboardInterrupt:
        os.killpg(ensure.pid, signal.SIGTERM)
        ensure.wait()
        raise
    sys.stdout.write(out)
    r = subprocess.CompletedProcess(ensure.args, ensure.returncode, out)
    print(f'compat-upstream: the chroot step took '
          f'{time.monotonic() - t0:.0f} s', flush=True)
    if r.returncode == 77:
        reason = re.findall(r'unavailable: (.*)', r.stdout)
        print('compat-upstream: SKIPPED: no upstream QEMU to compare with: '
              + (reason[-1] if reason else 'the chroot cannot be made'))
        return summary(0, 0, 1)
    chroot = re.findall(r'^upstream-chroot: ready: (.*)$', r.stdout, re.M)
    if r.returncode != 0 or not chroot:
        print(f'compat-upstream: the chroot script failed '
              f'(exit status {r.returncode})')
        return summary(0, 1, 0)
    argv = ['unshare', '--mount', '--propagation', 'private',
            sys.executable, os.path.abspath(__file__),
            '--ours', opts.ours, '--bootblock', opts.bootblock,
            '--machine', opts.machine, '--chroot', chroot[-1],
            '--outer-ns', os.readlink('/proc/self/ns/mnt')]
    sys.stdout.flush()
    # The namespace (and its mounts) ends with this child, however it
    # ends; on a signal, the child cleans up before it exits.
    child = subprocess.Popen(argv, preexec_fn=lambda: pdeathsig(
        signal.SIGTERM))
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise


if __name__ == '__main__':
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print(f'compat-upstream: interrupted ({e}); cleaned up')
        sys.exit(130)
