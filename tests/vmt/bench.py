#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
VMT benchmarks: this series' QEMU against pristine upstream QEMU.

  /usr/bin/python3 tests/vmt/bench.py [--quick] [--out DIR] [--clones N]
                                      [--reps N] [--only LIST] [--check]

Both binaries run in the same run, with the same guest (tests/guest/) and
the same accelerator.  Scenarios (docs/devel/vmt-benchmarks.rst):

  floor    exec -> first QMP reply, -M pc and -M microvm
  boot     cold boot: exec -> agent banner and first pong
  clone    clone latency, exec -> pong, per template flow
  save     template save (device state) and fixed-ram (mapped-ram) save
  restore  migrate-incoming -> running vs RAM size, copy vs map
  density  N clones (and N cold-booted VMs) at once: memory per VM
  tool     qemu-template: clone, pool requests, pooled memory, refill
  breakdown  an idle clone's memory by cause, ours against upstream
  scale    up to 500 idle clones at once (qemu-template) against
           upstream's x-ignore-shared clones and cold boots

Writes report.md, results.json and PNG plots to build/bench (--quick:
build/bench-quick) and prints a summary table.  With --check the report
is validated afterwards; --check-only validates an existing report.  The
last line is "bench: report complete (N tables, N plots)" or "bench:
report incomplete: REASON".  Timings are measured, never asserted.
"""

import argparse
import asyncio
import mmap
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vmt  # noqa: E402
import bench_report  # noqa: E402
import bench_tool  # noqa: E402

OURS = os.path.join(vmt.BUILDDIR, 'qemu', 'qemu-system-x86_64')
UPSTREAM = os.path.join(vmt.BUILDDIR, 'qemu-upstream', 'qemu-system-x86_64')
BINS = ('ours', 'upstream')

DEVICES = ['-device', 'vmgenid']
TEMPLATE_SEED = 7
TEMPLATE_MIB = 4        # written by every template before its save
DENSITY_MIB = 4         # written by every VM of the density scenario
WARM_BYTES = 256 << 20  # touched and freed before each timed VM start
SCENARIOS = ('floor', 'boot', 'clone', 'save', 'restore', 'density',
             'tool', 'breakdown', 'scale')

# clone flows: (id, mode, binary, template id).  Templates: shared RAM
# file saved with x-ignore-shared or bypass-shared-memory, or one
# fixed-ram file (mapped-ram) saved from a VM with anonymous RAM.
CLONE_FLOWS = (
    ('ignore-shared/upstream', 'ignore-shared', 'upstream',
     'ignore-shared/upstream'),
    ('ignore-shared/ours', 'ignore-shared', 'ours', 'ignore-shared/ours'),
    ('bypass/ours', 'bypass', 'ours', 'bypass/ours'),
    ('copy/upstream', 'copy', 'upstream', 'fixed/upstream'),
    ('copy/ours', 'copy', 'ours', 'fixed/ours'),
    ('map/ours', 'map', 'ours', 'fixed/ours'),
    ('lazy/ours', 'lazy', 'ours', 'fixed/ours'),
)
TEMPLATES = (
    ('ignore-shared/upstream', 'ignore-shared', 'upstream'),
    ('ignore-shared/ours', 'ignore-shared', 'ours'),
    ('bypass/ours', 'bypass', 'ours'),
    ('fixed/upstream', 'fixed', 'upstream'),
    ('fixed/ours', 'fixed', 'ours'),
)
# density: (id, mode, binary); cold = booted from scratch, no template
DENSITY_FLOWS = (
    ('bypass/ours', 'bypass', 'ours'),
    ('map/ours', 'map', 'ours'),
    ('lazy/ours', 'lazy', 'ours'),
    ('ignore-shared/upstream', 'ignore-shared', 'upstream'),
    ('copy/upstream', 'copy', 'upstream'),
    ('cold/upstream', 'cold', 'upstream'),
)
# lazy-ws: lazy, given the working set that the first lazy restore of the
# same file saved (mapped-ram-save-working-set)
RESTORE_FLOWS = (
    ('copy/upstream', 'copy', 'upstream'),
    ('copy/ours', 'copy', 'ours'),
    ('map/ours', 'map', 'ours'),
    ('lazy/ours', 'lazy', 'ours'),
    ('lazy-ws/ours', 'lazy-ws', 'ours'),
    # shared memfd RAM (vhost-user's kind): what the load allocates
    ('copy-shm/ours', 'copy-shm', 'ours'),
    ('lazy-shm/ours', 'lazy-shm', 'ours'),
)
# the RAM block of -m is pc.ram: the shared backend takes its name
SHM_BACKEND = 'memory-backend-memfd,id=pc.ram,share=on,size={size}'


def ms(ns):
    return round(ns / 1e6, 3)


def mib_b(nbytes):
    return round(nbytes / (1 << 20), 2)


def mib_k(kib):
    return round(kib / 1024, 2)


def wall_offset_ns():
    """CLOCK_REALTIME minus perf_counter, to map QMP event timestamps."""
    return time.time_ns() - time.perf_counter_ns()


def event_perf_ns(ev):
    ts = ev['timestamp']
    wall = ts['seconds'] * 10**9 + ts['microseconds'] * 1000
    return wall - wall_offset_ns()


def warm_memory(nbytes):
    """Touch nbytes of fresh anonymous memory and free it again.

    On a VM host that takes freed memory back within seconds (free page
    reporting), the first touch of memory is slow.  Called right before a
    timed VM start, so that the memory that VM fills is warm whatever ran
    (or paused) before it, and flows are not favoured by their order.
    Transparent huge pages like QEMU's guest RAM (MADV_HUGEPAGE): warming
    with small pages made the following copy loads slower, not faster."""
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        if hasattr(mmap, 'MADV_HUGEPAGE'):
            m.madvise(mmap.MADV_HUGEPAGE)
        for off in range(0, nbytes, mmap.PAGESIZE):
            m[off] = 1
    finally:
        m.close()


def meminfo():
    """/proc/meminfo in KiB."""
    res = {}
    with open('/proc/meminfo') as f:
        for line in f:
            k, v = line.split(':', 1)
            res[k] = int(v.split()[0])
    return res


def mem_available_kib():
    return meminfo()['MemAvailable']


def settle_memory(max_s=15.0):
    """Wait until MemAvailable stops moving (freed memory goes back to the
    host within seconds here).  Returns MemAvailable in KiB."""
    deadline = time.monotonic() + max_s
    prev = mem_available_kib()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        cur = mem_available_kib()
        if abs(cur - prev) < 16 * 1024:
            return cur
        prev = cur
    return mem_available_kib()


# ---------------------------------------------------------------------------
# /proc/PID/smaps, all mappings: the TCG translation buffer

def smaps_entries(pid):
    """Every mapping of pid: dict with start, bytes, perms, name, the
    smaps fields in KiB and VmFlags (a set of the two-letter flags)."""
    maps = []
    cur = None
    with open(f'/proc/{pid}/smaps') as f:
        for line in f:
            first = line.split(' ', 1)[0]
            if '-' in first and not first.endswith(':'):
                fields = line.split(None, 5)
                start, end = (int(x, 16) for x in fields[0].split('-'))
                cur = {'start': start, 'bytes': end - start,
                       'perms': fields[1],
                       'name': fields[5].strip() if len(fields) > 5 else ''}
                maps.append(cur)
            elif cur is not None and ':' in line:
                key, rest = line.split(':', 1)
                parts = rest.split()
                if key == 'VmFlags':
                    cur[key] = set(parts)
                elif parts and parts[0].isdigit():
                    cur[key] = int(parts[0])
    return maps


def rss_shmem_kib(pid):
    """RssShmem of process pid (/proc/PID/status), KiB."""
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('RssShmem:'):
                return int(line.split()[1])
    raise RuntimeError(f'no RssShmem in /proc/{pid}/status')


def is_tcg_buffer(m):
    """TCG's code_gen_buffer: an anonymous executable mapping (rwxp, of
    the tb-size, 1 GiB by default), or with split-wx the executable alias
    of a memfd 'tcg-jit'.  No other anonymous mapping of QEMU is
    executable."""
    if 'x' not in m['perms']:
        return False
    return m['name'] == '' or 'tcg-jit' in m['name']


def tcg_memory(pid):
    """(Rss KiB, mapping size bytes) of the TCG translation buffer."""
    sel = [m for m in smaps_entries(pid) if is_tcg_buffer(m)]
    return (sum(m.get('Rss', 0) for m in sel), sum(m['bytes'] for m in sel))


# ---------------------------------------------------------------------------
# statistics

def stats(samples):
    """median, p90 (inclusive quantiles), min, max, n of a list of ms."""
    s = [x for x in samples if x is not None]
    if not s:
        return None
    if len(s) == 1:
        p90 = s[0]
    else:
        p90 = statistics.quantiles(s, n=10, method='inclusive')[8]
    return {'median': round(statistics.median(s), 3), 'p90': round(p90, 3),
            'min': round(min(s), 3), 'max': round(max(s), 3), 'n': len(s)}


# ---------------------------------------------------------------------------
# agent helpers

def agent_expect(agent, req, prefix, timeout=120.0):
    """Send req, return the first answer starting with prefix; answers to
    earlier pings and banners are skipped, errors raise."""
    agent.drain()
    agent.send(req)
    return agent_collect(agent, req, prefix, timeout)


def agent_collect(agent, req, prefix, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        ans = agent.read_answer(max(0.0, deadline - time.monotonic()))
        if ans is None:
            raise vmt.AgentError(f'no answer to {req!r} within {timeout} s')
        if ans.startswith(prefix):
            return ans
        if ans.startswith('err'):
            raise vmt.AgentError(f'{req!r}: {ans}')


def pong(vm, timeout=120.0):
    """First pong (pings every 0.2 s until one is answered)."""
    vm.t['pong'] = vm.agent.ping_until_pong(timeout, interval=0.2)
    return vm.t['pong']


def wait_running(vm, timeout=300.0):
    """Wait until the guest runs.  Sets vm.t['running'] from QEMU's RESUME
    event timestamp; if the guest ran before QMP was negotiated (no event
    for us), vm.t['running'] is the QMP reply (an upper bound) and
    vm.running_how is 'before-qmp'."""
    deadline = time.monotonic() + timeout
    next_status = 0.0
    while True:
        try:
            ev = vm.qmp.pull_event(wait=0.02)
        except (TimeoutError, asyncio.TimeoutError):
            ev = None
        if ev and ev.get('event') == 'RESUME':
            vm.t['running'] = event_perf_ns(ev)
            vm.running_how = 'event'
            return
        now = time.monotonic()
        if now >= next_status:
            vm._check_alive()
            if vm.status() == 'running':
                # the event, if any, precedes the reply on the wire
                while True:
                    ev = vm.qmp.pull_event(wait=False)
                    if ev is None:
                        break
                    if ev.get('event') == 'RESUME':
                        vm.t['running'] = event_perf_ns(ev)
                        vm.running_how = 'event'
                        return
                vm.t['running'] = vm.t['qmp']
                vm.running_how = 'before-qmp'
                return
            next_status = now + 0.1
        if now > deadline:
            raise vmt.VMTError(f'{vm.name}: not running after {timeout} s')


def wait_status(vm, want='running', timeout=60.0):
    deadline = time.monotonic() + timeout
    while vm.status() != want:
        if time.monotonic() > deadline:
            raise vmt.VMTError(f'{vm.name}: status not {want}')
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# the benchmark

class Template:
    def __init__(self, tid, mode, binary, d):
        self.id = tid
        self.mode = mode            # ignore-shared, bypass, fixed
        self.binary = binary        # ours, upstream
        self.dir = d
        os.makedirs(d, exist_ok=True)
        self.ram = os.path.join(d, 'template.ram') \
            if mode != 'fixed' else None
        self.state = os.path.join(d, 'template.fixed' if mode == 'fixed'
                                  else 'template.state')
        self.sum = None
        self.ok = False
        self.vm = None          # the template VM while it runs
        self.r = None           # its results


class Bench:

    def __init__(self, opts):
        self.o = opts
        self.bins = {'ours': opts.qemu, 'upstream': opts.upstream}
        self.res = {'meta': {}, 'errors': {}, 'notes': []}
        self.templates = {}
        self.tmp = None
        self.t_start = time.monotonic()
        self.nvm = 0
        self.avail0 = None

    # -- output
    def say(self, msg):
        el = time.monotonic() - self.t_start
        print(f'bench [{el:6.1f}s] {msg}', flush=True)

    def step(self, scen, i, n, msg):
        self.say(f'{scen} {i}/{n}: {msg}')

    def fail(self, key, e):
        """Record that one unit (a template, flow, size) failed; the
        scenario goes on without it.  Returns the message."""
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise e
        msg = ' '.join(f'{type(e).__name__}: {e}'.split())[:1000]
        self.res['errors'][key] = msg
        self.say(f'{key}: error: {msg}')
        traceback.print_exc()
        return msg

    # -- helpers
    def wait_binaries(self, timeout=600.0):
        """The lead may rebuild build/qemu: wait for a missing binary."""
        deadline = time.monotonic() + timeout
        for name, path in self.bins.items():
            warned = False
            while not os.access(path, os.X_OK):
                if time.monotonic() > deadline:
                    raise vmt.VMTError(f'{name} binary {path} missing')
                if not warned:
                    self.say(f'waiting for {path} (being rebuilt?)')
                    warned = True
                time.sleep(2)

    def vm(self, binary, name, extra=(), **kw):
        self.wait_binaries()
        self.nvm += 1
        return vmt.VM(self.bins[binary], name=f'{name}-{self.nvm}',
                      tmpdir=self.tmp.path, extra_args=list(extra),
                      accel=self.accel, **kw)

    def binary_ids(self):
        """(inode, mtime) of each binary; None while one is missing."""
        ids = {}
        for b, path in self.bins.items():
            try:
                st = os.stat(path)
                ids[b] = (st.st_ino, st.st_mtime_ns)
            except OSError:
                ids[b] = None
        return ids

    def probe(self):
        """Capabilities of both binaries, versions, machine support."""
        meta = self.res['meta']
        meta['binaries'] = {}
        for b in BINS:
            path = self.bins[b]
            info = {'path': path}
            try:
                out = subprocess.run([path, '--version'], capture_output=True,
                                     text=True, timeout=30).stdout
                info['version'] = out.splitlines()[0] if out else '?'
            except (OSError, subprocess.SubprocessError) as e:
                info['version'] = f'? ({e})'
            st = os.stat(path)
            info['mtime'] = time.strftime('%Y-%m-%d %H:%M:%S',
                                          time.localtime(st.st_mtime))
            with self.vm(b, 'probe', ['-S'], with_guest=False) as v:
                v.launch(connect_agent=False)
                caps = {c['capability']
                        for c in v.cmd('query-migrate-capabilities')}
                params = v.cmd('query-migrate-parameters')
                info['bypass-shared-memory'] = 'bypass-shared-memory' in caps
                info['x-ignore-shared'] = 'x-ignore-shared' in caps
                info['mapped-ram'] = 'mapped-ram' in caps
                info['mapped-ram-load'] = vmt.MAPPED_RAM_LOAD in params
                info['lazy'] = False
                if info['mapped-ram-load']:
                    try:
                        v.cmd('migrate-set-parameters',
                              **{vmt.MAPPED_RAM_LOAD: 'lazy'})
                        info['lazy'] = True
                    except Exception:
                        pass
            meta['binaries'][b] = info
        self.support = {
            'ignore-shared': {b: meta['binaries'][b]['x-ignore-shared']
                              for b in BINS},
            'bypass': {b: meta['binaries'][b]['bypass-shared-memory']
                       for b in BINS},
            'copy': {b: meta['binaries'][b]['mapped-ram'] for b in BINS},
            'map': {b: meta['binaries'][b]['mapped-ram-load'] for b in BINS},
            'lazy': {b: meta['binaries'][b]['lazy'] for b in BINS},
            'lazy-ws': {b: meta['binaries'][b]['lazy'] for b in BINS},
            'copy-shm': {b: meta['binaries'][b]['mapped-ram'] for b in BINS},
            'lazy-shm': {b: meta['binaries'][b]['lazy'] for b in BINS},
            'fixed': {b: meta['binaries'][b]['mapped-ram'] for b in BINS},
            'cold': {b: True for b in BINS},
        }

    def supported(self, mode, binary):
        return self.support[mode][binary]

    # -- memory guard (density, restore)
    def memory_ok(self, need_kib):
        """May we start something needing about need_kib more?  Our total
        (MemAvailable drop since the start) stays below --mem-budget and
        MemAvailable above --mem-floor."""
        avail = mem_available_kib()
        used = self.avail0 - avail
        budget = self.o.mem_budget * (1 << 20)
        floor = self.o.mem_floor * (1 << 20)
        if used + need_kib > budget:
            return False, (f'memory budget: {mib_k(used):.0f} MiB in use '
                           f'+ {mib_k(need_kib):.0f} MiB > '
                           f'{self.o.mem_budget} GiB')
        if avail - need_kib < floor:
            return False, (f'MemAvailable {mib_k(avail):.0f} MiB - '
                           f'{mib_k(need_kib):.0f} MiB < '
                           f'{self.o.mem_floor} GiB floor')
        return True, ''

    # =======================================================================
    # scenario a: process-start floor

    def run_floor(self):
        o = self.o
        res = {'reps': o.floor_reps, 'machines': {}}
        self.res['floor'] = res
        machines = ['pc', 'microvm']
        n = len(machines) * len(BINS) * (o.floor_reps + 1)
        i = 0
        for mach in machines:
            r = {b: {'first': None, 'samples': []} for b in BINS}
            res['machines'][mach] = r
            try:
                for rep in range(o.floor_reps + 1):
                    order = BINS if rep % 2 == 0 else BINS[::-1]
                    for b in order:
                        i += 1
                        with self.vm(b, f'floor-{mach}', ['-S'],
                                     machine=mach) as v:
                            v.launch(connect_agent=False)
                            t = ms(v.since_exec_ns('qmp'))
                        if rep == 0:
                            r[b]['first'] = t
                        else:
                            r[b]['samples'].append(t)
                        self.step('floor', i, n, f'-M {mach} {b}'
                                  f'{" (first run)" if rep == 0 else ""}: '
                                  f'exec -> QMP reply {t:.1f} ms')
            except vmt.VMTError as e:
                r['unsupported'] = ' '.join(str(e).split())[:300]
                self.say(f'floor: -M {mach} does not work: '
                         f'{r["unsupported"]}')
                i = (machines.index(mach) + 1) * len(BINS) * \
                    (o.floor_reps + 1)
            for b in BINS:
                r[b]['stats'] = stats(r[b]['samples'])

    # =======================================================================
    # scenario b: cold boot

    def run_boot(self):
        o = self.o
        res = {'reps': o.boot_reps, 'binaries': {}}
        self.res['boot'] = res
        keys = ('qmp', 'banner', 'pong')
        r = {b: {'first': None, 'samples': {k: [] for k in keys}}
             for b in BINS}
        res['binaries'] = r
        n = len(BINS) * (o.boot_reps + 1)
        i = 0
        for rep in range(o.boot_reps + 1):
            order = BINS if rep % 2 == 0 else BINS[::-1]
            for b in order:
                i += 1
                warm_memory(WARM_BYTES)
                with self.vm(b, 'boot', DEVICES) as v:
                    v.launch()
                    v.wait_banner()
                    pong(v)
                    t = {k: ms(v.since_exec_ns(k)) for k in keys}
                if rep == 0:
                    r[b]['first'] = t
                else:
                    for k in keys:
                        r[b]['samples'][k].append(t[k])
                first = ' (first run)' if rep == 0 else ''
                self.step('boot', i, n, f'{b}{first}'
                          f': QMP {t["qmp"]:.0f} ms, banner '
                          f'{t["banner"]:.0f} ms, pong {t["pong"]:.0f} ms')
        for b in BINS:
            r[b]['stats'] = {k: stats(r[b]['samples'][k]) for k in keys}

    # =======================================================================
    # templates (and scenario d: save)

    def make_templates(self):
        """Boot every template, then save them round-robin (so that
        ours and upstream's saves see the same conditions), o.save_reps
        times, resuming them in between; the last save is the one clones
        use."""
        o = self.o
        res = {'reps': o.save_reps, 'templates': {}}
        self.res['save'] = res
        todo = [t for t in TEMPLATES if self.supported(t[1], t[2])]
        for tid, mode, b in TEMPLATES:
            if (tid, mode, b) not in todo:
                res['templates'][tid] = {
                    'mode': mode, 'binary': b,
                    'unsupported': f'{b} QEMU has no '
                    f'{vmt.CAPABILITY.get(mode, "mapped-ram")}'}
        n = len(todo) * (1 + o.save_reps)
        i = 0
        live = []
        try:
            for tid, mode, b in todo:
                i += 1
                self.step('save', i, n, f'template {tid}: boot, write '
                          f'{TEMPLATE_MIB} MiB')
                tpl = Template(tid, mode, b, os.path.join(
                    self.tmp.path, 'tpl-' + tid.replace('/', '-')))
                tpl.r = {'mode': mode, 'binary': b, 'save_ms': [],
                         'qemu_total_ms': [], 'downtime_ms': [],
                         'apparent': [], 'allocated': []}
                res['templates'][tid] = tpl.r
                try:
                    tpl.vm = self.boot_template(tpl)
                    live.append(tpl)
                except Exception as e:
                    tpl.r['error'] = self.fail(f'save/{tid}', e)
            for k in range(o.save_reps):
                last = k == o.save_reps - 1
                j = k % max(1, len(live))
                for tpl in live[j:] + live[:j]:
                    i += 1
                    if tpl.r.get('error'):
                        continue
                    try:
                        self.save_template(tpl, k, last, i, n)
                    except Exception as e:
                        tpl.r['error'] = self.fail(f'save/{tpl.id}', e)
                        tpl.vm.kill()
            for tpl in live:
                if tpl.r.get('error'):
                    continue
                tpl.vm.shutdown()
                if tpl.ram:
                    tpl.r['ram_file'] = vmt.file_sizes(tpl.ram)
                tpl.r['stats'] = stats(tpl.r['save_ms'])
                tpl.ok = True
                self.templates[tpl.id] = tpl
        finally:
            for tpl in live:
                tpl.vm.kill()

    def boot_template(self, tpl):
        extra = (vmt.ram_backend_args(tpl.ram, share=True)
                 if tpl.mode != 'fixed' else []) + DEVICES
        v = self.vm(tpl.binary, 'template', extra)
        try:
            v.launch()
            v.wait_banner()
            agent_expect(v.agent, f'write {TEMPLATE_SEED} {TEMPLATE_MIB}',
                         'ok write')
            tpl.sum = v.agent.sum()
        except BaseException:
            v.kill()
            raise
        return v

    def save_template(self, tpl, k, last, i, n):
        v, r = tpl.vm, tpl.r
        path = tpl.state if last else f'{tpl.state}.{k}'
        if k:
            if tpl.mode == 'bypass':
                # A VM saved with bypass-shared-memory refuses to resume
                # while the capability is on: no clone maps the earlier
                # save's file, so say so.
                v.cmd('migrate-set-capabilities', capabilities=[
                    {'capability': vmt.CAPABILITY['bypass'], 'state': False}])
            v.cmd('cont')
            wait_status(v, 'running')
        warm_memory(WARM_BYTES)
        t0 = vmt.now_ns()
        info = self.save(v, tpl.mode, path)
        dt = ms(vmt.now_ns() - t0)
        app, alloc = vmt.file_sizes(path)
        r['save_ms'].append(dt)
        r['qemu_total_ms'].append(info.get('total-time'))
        r['downtime_ms'].append(info.get('downtime'))
        r['apparent'].append(app)
        r['allocated'].append(alloc)
        self.step('save', i, n, f'{tpl.id} save {k + 1}/{self.o.save_reps}'
                  f': {dt:.1f} ms, {mib_b(app):.2f} MiB '
                  f'({mib_b(alloc):.2f} MiB allocated)')
        if not last:
            os.unlink(path)

    def save(self, v, mode, path):
        """Save a running VM (not stopped first: the stream records it as
        running, so clones run as soon as they are loaded)."""
        v.cmd('migrate-set-parameters', **{'max-bandwidth': 0})
        if mode == 'fixed':
            v.set_caps(mapped_ram=True)
            v.cmd('migrate', uri=f'file:{path}')
        else:
            v.cmd('migrate-set-capabilities', capabilities=[
                {'capability': vmt.CAPABILITY[mode], 'state': True}])
            v.cmd('migrate', uri=f'file:{path}')
        return v.wait_migration()

    # =======================================================================
    # clones

    def clone_args(self, mode, tpl):
        if mode == 'ignore-shared':
            # upstream's flow, autostart: no -S, no cont
            return vmt.ram_backend_args(tpl.ram, share=False) + \
                ['-incoming', 'defer']
        if mode == 'bypass':
            return vmt.ram_backend_args(tpl.ram, share=False) + \
                ['-incoming', f'exec:cat {tpl.state}']
        args = ['-global', 'migration.mapped-ram=on']
        if mode in ('map', 'lazy'):
            args += ['-global', f'migration.{vmt.MAPPED_RAM_LOAD}={mode}']
        return args + ['-incoming', f'file:{tpl.state}']

    def start_clone(self, mode, b, tpl, name):
        """Launch a clone and wait for its first pong; t: exec, qmp,
        running, pong."""
        v = self.vm(b, name, self.clone_args(mode, tpl) + DEVICES)
        warm_memory(WARM_BYTES)
        v.launch()
        if mode == 'ignore-shared':
            v.set_caps(x_ignore_shared=True)
            v.cmd('migrate-incoming', uri=f'exec:cat {tpl.state}')
        wait_running(v)
        pong(v)
        return v

    def run_clone(self):
        o = self.o
        res = {'reps': o.reps, 'flows': {}}
        self.res['clone'] = res
        flows = []
        for fid, mode, b, tid in CLONE_FLOWS:
            r = {'mode': mode, 'binary': b, 'template': tid, 'first': None,
                 'samples': {'qmp': [], 'running': [], 'pong': []},
                 'running_before_qmp': 0}
            res['flows'][fid] = r
            tpl = self.templates.get(tid)
            if not self.supported(mode, b):
                r['unsupported'] = f'{b} QEMU cannot load with {mode}'
            elif not tpl:
                r['unsupported'] = f'template {tid} missing'
            else:
                flows.append((fid, mode, b, tpl))
        n = len(flows) * (o.reps + 1)
        i = 0
        for rep in range(o.reps + 1):
            k = rep % max(1, len(flows))
            for fid, mode, b, tpl in flows[k:] + flows[:k]:
                i += 1
                r = res['flows'][fid]
                if r.get('error'):
                    continue
                try:
                    v = self.start_clone(mode, b, tpl, 'clone')
                except Exception as e:
                    r['error'] = self.fail(f'clone/{fid}', e)
                    vmt.kill_all_vms()
                    continue
                try:
                    t = {key: ms(v.since_exec_ns(key))
                         for key in ('qmp', 'running', 'pong')}
                    before = v.running_how == 'before-qmp'
                    if rep == 0:
                        # warm-up, reported apart; check the data once
                        r['first'] = t
                        r['data_ok'] = v.agent.sum() == tpl.sum
                    else:
                        for key in t:
                            r['samples'][key].append(t[key])
                        r['running_before_qmp'] += before
                finally:
                    v.kill()
                self.step('clone', i, n, f'{fid}'
                          f'{" (first run)" if rep == 0 else f" #{rep}"}: '
                          f'QMP {t["qmp"]:.0f}, running '
                          f'{"<=" if before else ""}{t["running"]:.0f}, '
                          f'pong {t["pong"]:.0f} ms')
        for fid, r in res['flows'].items():
            if 'samples' in r:
                r['stats'] = {k: stats(s) for k, s in r['samples'].items()}

    # =======================================================================
    # scenario e: restore cost vs RAM size

    def run_restore(self):
        o = self.o
        res = {'reps': o.restore_reps, 'fill': o.restore_fill,
               'sizes': {}}
        self.res['restore'] = res
        flows = [f for f in RESTORE_FLOWS if self.supported(f[1], f[2])]
        res['unsupported'] = {f[0]: f'{f[2]} QEMU cannot load with {f[1]}'
                              for f in RESTORE_FLOWS if f not in flows}
        n = len(o.sizes) * (1 + len(flows) * (o.restore_reps + 1))
        i = 0
        for size in o.sizes:
            nbytes = vmt.parse_size(size)
            fill = max(1, min(1024, int(nbytes * o.restore_fill) >> 20))
            r = {'bytes': nbytes, 'fill_mib': fill, 'flows': {}}
            res['sizes'][size] = r
            i += 1
            try:
                i = self.restore_size(size, r, flows, i, n)
            except Exception as e:
                r['error'] = self.fail(f'restore/{size}', e)
                vmt.kill_all_vms()
            settle_memory()

    def restore_size(self, size, r, flows, i, n):
        o = self.o
        nbytes, fill = r['bytes'], r['fill_mib']
        self.step('restore', i, n, f'{size}: template (our QEMU) '
                  f'boots, writes {fill} MiB, mapped-ram save')
        d = os.path.join(self.tmp.path, f'restore-{size}')
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, 'vm.fixed')
        # Saved by our QEMU, as templates are: the file's extension
        # records let map skip the walk over its data extents; upstream
        # reads the same file (it ignores them).
        with self.vm('ours', f'restore-tpl-{size}', DEVICES,
                     mem=size) as v:
            v.launch()
            v.wait_banner(timeout=300)
            w0 = vmt.now_ns()
            agent_expect(v.agent, f'write 3 {fill}', 'ok write',
                         timeout=900)
            r['write_ms'] = ms(vmt.now_ns() - w0)
            r['template_ram_rss_kib'] = v.smaps(anon_size=nbytes)['Rss']
            t0 = vmt.now_ns()
            self.save(v, 'fixed', path)
            r['save_ms'] = ms(vmt.now_ns() - t0)
            v.shutdown()
        r['file_apparent'], r['file_allocated'] = vmt.file_sizes(path)
        self.say(f'restore: {size}: guest RAM populated '
                 f'{mib_k(r["template_ram_rss_kib"]):.0f} MiB, file '
                 f'{mib_b(r["file_allocated"]):.0f} MiB allocated of '
                 f'{mib_b(r["file_apparent"]):.0f} MiB')
        for fid, mode, b in flows:
            r['flows'][fid] = {'first': None, 'samples': [],
                               'pong_ms': [], 'rss_kib': []}
        for rep in range(o.restore_reps + 1):
            k = rep % len(flows)
            for fid, mode, b in flows[k:] + flows[:k]:
                i += 1
                fr = r['flows'][fid]
                if mode in ('copy', 'lazy', 'lazy-ws', 'copy-shm',
                            'lazy-shm'):
                    ok, why = self.memory_ok(r['file_allocated'] >> 10)
                    if not ok:
                        fr['skipped'] = why
                        continue
                warm_memory(r['file_allocated'] + WARM_BYTES)
                dt, t_pong, rss, lazy, shmem = self.restore_once(
                    b, mode, size, path)
                if rep == 0:
                    fr['first'] = dt
                else:
                    fr['samples'].append(dt)
                    fr['pong_ms'].append(t_pong)
                    fr['rss_kib'].append(rss)
                    if lazy:
                        fr.setdefault('lazy', []).append(lazy)
                    if shmem is not None:
                        fr.setdefault('shmem_kib', []).append(shmem)
                self.step('restore', i, n, f'{size} {fid}'
                          f'{" (first run)" if rep == 0 else ""}: '
                          f'migrate-incoming -> running {dt:.1f} ms')
        for fr in r['flows'].values():
            fr['stats'] = stats(fr['samples'])
        if os.path.exists(path + '.ws'):
            r['working_set_pages'] = vmt.working_set_header(path + '.ws')[2]
            os.unlink(path + '.ws')
        os.unlink(path)
        return i

    def restore_once(self, b, mode, size, path):
        """One VM loads path with -incoming defer; returns (ms from
        migrate-incoming to RESUME, ms from it to the first pong, process
        Rss KiB once running, and for lazy the MAPPED_RAM_LAZY_LOADED
        event's data: fill time and rate, faults served, and each fault's
        service time from the trace event mapped_ram_lazy_fault).
        The first lazy restore of a file saves its working set beside it
        (path + '.ws'); lazy-ws restores are given it.  The -shm modes
        load into shared memfd RAM, and also return the process's
        RssShmem (KiB) once the load completed."""
        extra = ['-incoming', 'defer'] + DEVICES
        trace = None
        ws = path + '.ws'
        shm = mode.endswith('-shm')
        if shm:
            extra += ['-object', SHM_BACKEND.format(size=size),
                      '-machine', 'memory-backend=pc.ram']
            mode = mode[:-len('-shm')]
        lazy_mode = mode in ('lazy', 'lazy-ws')
        if lazy_mode:
            trace = self.tmp.join(f'lazy-{size}.trace')
            extra += ['-trace', 'mapped_ram_lazy_fault',
                      '-trace', 'mapped_ram_lazy_tlb_fill', '-D', trace]
        with self.vm(b, f'restore-{mode}', extra, mem=size) as v:
            v.launch()
            v.set_caps(mapped_ram=True)
            if b == 'ours' and self.supported('map', b):
                v.cmd('migrate-set-parameters',
                      **{vmt.MAPPED_RAM_LOAD: 'lazy' if lazy_mode else mode})
            if mode == 'lazy-ws':
                if not os.path.exists(ws):
                    raise RuntimeError('no working set: the lazy restore '
                                       'did not save one')
                v.cmd('migrate-set-parameters',
                      **{'mapped-ram-working-set': ws})
            v.qmp.clear_events()
            t0 = vmt.now_ns()
            v.cmd('migrate-incoming', uri=f'file:{path}')
            wait_running(v)
            dt = ms(v.t['running'] - t0)
            rss = v.smaps_rollup()['Rss']
            pong(v)
            lazy = None
            if lazy_mode:
                lazy = v.wait_event('MAPPED_RAM_LAZY_LOADED',
                                    timeout=600)['data']
                if mode == 'lazy' and not shm and not os.path.exists(ws):
                    v.cmd('mapped-ram-save-working-set', filename=ws)
                with open(trace) as f:
                    text = f.read()
                lazy['fault_us'] = [int(x) for x in re.findall(
                    r'served in (\d+) us', text)]
                # TCG's TLB fills that found a page missing: who placed
                # it, whether the vCPU held the BQL, how long it took
                lazy['tlb_fills'] = [
                    (int(p), int(b), int(us)) for p, b, us in re.findall(
                        r'placed by this vCPU (-?\d+), BQL held (\d+), '
                        r'present after (\d+) us', text)]
                os.unlink(trace)
            shmem = rss_shmem_kib(v.pid) if shm else None
            return dt, ms(v.t['pong'] - t0), rss, lazy, shmem

    # =======================================================================
    # scenario f: density

    def measure_vm(self, v, mode, tpl):
        """Memory of one running VM, KiB."""
        if mode == 'cold':
            ram = v.smaps(anon_size=vmt.parse_size(v.mem))
        elif mode in ('ignore-shared', 'bypass'):
            ram = v.smaps(path=tpl.ram)
        elif mode == 'map':
            ram = v.smaps(path=tpl.state)
        else:
            ram = v.smaps(anon_size=vmt.parse_size(v.mem))
        roll = v.smaps_rollup()
        tcg_rss, tcg_size = tcg_memory(v.pid)
        uss = roll['Private_Clean'] + roll['Private_Dirty']
        return {
            'ram_rss': ram['Rss'],
            'ram_private': ram['Private_Clean'] + ram['Private_Dirty'],
            'ram_shared': ram['Shared_Clean'] + ram['Shared_Dirty'],
            'ram_anon': ram['Anonymous'],
            'ram_pss': ram['Pss'],
            'ram_file': ram['Rss'] - ram['Anonymous'],
            'rss': roll['Rss'], 'pss': roll['Pss'], 'uss': uss,
            'anon': roll['Anonymous'],
            'tcg_rss': tcg_rss, 'tcg_mapping_bytes': tcg_size,
            'uss_without_tcg': uss - tcg_rss,
            'pss_without_tcg': roll['Pss'] - tcg_rss,
        }

    def run_density(self):
        o = self.o
        res = {'n': o.clones, 'parallel': o.parallel,
               'write_mib': DENSITY_MIB, 'flows': {}}
        self.res['density'] = res
        flows = []
        for fid, mode, b in DENSITY_FLOWS:
            r = {'mode': mode, 'binary': b}
            res['flows'][fid] = r
            tpl = None
            if mode != 'cold':
                tid = {'map': 'fixed/ours', 'lazy': 'fixed/ours',
                       'copy': 'fixed/upstream'}.get(mode, fid)
                tpl = self.templates.get(tid)
                r['template'] = tid
                if not self.supported(mode, b):
                    r['unsupported'] = f'{b} QEMU cannot load with {mode}'
                    continue
                if not tpl:
                    r['unsupported'] = f'template {tid} missing'
                    continue
                files = [tpl.state] + ([tpl.ram] if tpl.ram else [])
                r['template_files'] = {os.path.basename(p): vmt.file_sizes(p)
                                       for p in files}
            flows.append((fid, mode, b, tpl))
        for j, (fid, mode, b, tpl) in enumerate(flows, 1):
            r = res['flows'][fid]
            try:
                self.density_flow(r, fid, mode, b, tpl, f'{j}/{len(flows)}')
            except Exception as e:
                r['error'] = self.fail(f'density/{fid}', e)
                vmt.kill_all_vms()

    def density_flow(self, r, fid, mode, b, tpl, flow_no):
        o = self.o
        n = o.clones
        vms = []
        r['curve'] = []            # (VMs running, MemAvailable drop KiB)
        r['started'] = 0
        r['per_vm'] = []
        base = settle_memory()
        r['avail_before_kib'] = base
        est = 512 * 1024            # KiB per VM until measured
        t0 = time.monotonic()
        try:
            while len(vms) < n:
                k = min(o.parallel, n - len(vms))
                ok, why = self.memory_ok(int(est * k * 1.25))
                if not ok:
                    r['stopped'] = f'stopped at {len(vms)} of {n} VMs: {why}'
                    self.say(f'density {fid}: {r["stopped"]}')
                    break
                batch = []
                for _ in range(k):
                    name = 'cold' if mode == 'cold' else 'clone'
                    if mode == 'cold':
                        v = self.vm(b, name, DEVICES)
                        v.launch()
                    else:
                        v = self.vm(b, name,
                                    self.clone_args(mode, tpl) + DEVICES)
                        v.launch()
                        if mode == 'ignore-shared':
                            v.set_caps(x_ignore_shared=True)
                            v.cmd('migrate-incoming',
                                  uri=f'exec:cat {tpl.state}')
                    vms.append(v)
                    batch.append(v)
                for v in batch:
                    if mode == 'cold':
                        v.wait_banner(timeout=600)
                    else:
                        wait_running(v, timeout=600)
                        pong(v, timeout=600)
                for j, v in enumerate(batch):
                    v.agent.drain()
                    v.agent.send(f'write {1000 + len(vms) - k + j} '
                                 f'{DENSITY_MIB}')
                for v in batch:
                    agent_collect(v.agent, 'write', 'ok write', timeout=600)
                drop = base - mem_available_kib()
                r['curve'].append((len(vms), drop))
                est = max(est // 2, drop // len(vms))
                self.say(f'density {flow_no} {fid}: {len(vms)}/{n} VMs '
                         f'running, each wrote {DENSITY_MIB} MiB; '
                         f'MemAvailable -{mib_k(drop):.0f} MiB '
                         f'({mib_k(drop / len(vms)):.0f} MiB/VM)')
            r['started'] = len(vms)
            r['start_s'] = round(time.monotonic() - t0, 1)
            if vms:
                # the last point of the curve: all VMs up, all written
                drop = r['curve'][-1][1]
                r['avail_drop_kib'] = drop
                r['avail_drop_per_vm_kib'] = drop / len(vms)
                for v in vms:
                    r['per_vm'].append(self.measure_vm(v, mode, tpl))
                keys = r['per_vm'][0].keys()
                r['median'] = {key: statistics.median(m[key]
                                                      for m in r['per_vm'])
                               for key in keys}
                r['total'] = {key: sum(m[key] for m in r['per_vm'])
                              for key in keys}
                self.say(f'density {fid}: median per VM: USS '
                         f'{mib_k(r["median"]["uss"]):.1f} MiB, Pss '
                         f'{mib_k(r["median"]["pss"]):.1f} MiB, TCG '
                         f'{mib_k(r["median"]["tcg_rss"]):.1f} MiB')
                # MemAvailable is host-wide: measure the same thing a
                # second time, as what killing the VMs gives back; drift
                # from other activity goes the other way and averages out
                running = base - drop
                for v in vms:
                    v.kill()
                after = settle_memory()
                r['avail_after_kib'] = after
                r['released_kib'] = after - running
                r['released_per_vm_kib'] = r['released_kib'] / len(vms)
                r['host_per_vm_kib'] = (drop + r['released_kib']) / 2 / \
                    len(vms)
                self.say(f'density {fid}: killing the VMs gave back '
                         f'{mib_k(r["released_kib"]):.0f} MiB; host memory '
                         f'per VM {mib_k(r["host_per_vm_kib"]):.1f} MiB '
                         '(mean of drop and release)')
        finally:
            for v in vms:
                v.kill()

    # =======================================================================
    # g. qemu-template: clones, pool requests, pooled memory, refill

    def run_tool(self):
        q = self.o.quick
        self.res['tool'] = bench_tool.run(self, stats,
                                          requests=10 if q else 50,
                                          clones=3 if q else 10,
                                          refill=3 if q else 5)

    # =======================================================================
    # i. many idle clones at once (tests/vmt/bench_scale.py)

    def run_scale(self):
        import bench_scale
        self.res['scale'] = bench_scale.run(
            self, sys.modules[__name__], self.o.scale,
            3.0 if self.o.quick else 10.0, self.o.scale_machine)

    # =======================================================================
    # h. an idle clone's memory by cause, ours against upstream

    BREAKDOWN_FLOWS = (('bypass', 'ours'), ('ignore-shared', 'upstream'),
                       ('map', 'ours'), ('copy', 'upstream'))

    def run_breakdown(self):
        import breakdown
        idle = 3.0 if self.o.quick else 10.0
        res = {'idle_s': idle, 'flows': {}}
        self.res['breakdown'] = res
        for i, (mode, b) in enumerate(self.BREAKDOWN_FLOWS):
            self.step('breakdown', i + 1, len(self.BREAKDOWN_FLOWS),
                      f'{mode}/{b}')
            res['flows'][f'{mode}/{b}'] = breakdown.clone_breakdown(
                self.bins[b], mode, idle, self.tmp)

    # =======================================================================

    def run(self):
        o = self.o
        meta = self.res['meta']
        meta.update({
            'started': time.strftime('%Y-%m-%d %H:%M:%S %z'),
            'quick': o.quick, 'args': sys.argv[1:],
            'host': {'kernel': platform.release(), 'cpus': os.cpu_count(),
                     'mem_total_kib': meminfo()['MemTotal'],
                     'cpu_model': cpu_model()},
            'guest': vmt.guest_dir(), 'guest_mem': vmt.GUEST_MEM,
            'python_qmp': vmt.python_dir(),
            'options': {k: getattr(o, k) for k in (
                'floor_reps', 'boot_reps', 'reps', 'save_reps', 'sizes',
                'restore_reps', 'restore_fill', 'clones', 'parallel',
                'mem_budget', 'mem_floor')},
            'scenarios': list(o.only),
        })
        self.wait_binaries()
        self.ids0 = self.binary_ids()
        self.accel = vmt.select_accel(self.bins['ours'])
        meta['accel'] = self.accel
        self.say(f'accelerator: {self.accel}; ours {self.bins["ours"]}, '
                 f'upstream {self.bins["upstream"]}')
        self.avail0 = settle_memory()
        meta['avail0_kib'] = self.avail0
        self.tmp = vmt.TempDir(prefix='vmt-bench-')
        try:
            self.probe()
            b = meta['binaries']
            self.say('ours: ' + ', '.join(
                f'{k}={"yes" if b["ours"][k] else "no"}' for k in (
                    'bypass-shared-memory', 'mapped-ram-load')))
            want = set(o.only)
            stages = [('floor', self.run_floor), ('boot', self.run_boot)]
            # templates (and their saves) serve clone and density
            if want & {'save', 'clone', 'density'}:
                stages.append(('save', self.make_templates))
            stages += [('clone', self.run_clone),
                       ('restore', self.run_restore),
                       ('density', self.run_density),
                       ('tool', self.run_tool),
                       ('breakdown', self.run_breakdown),
                       ('scale', self.run_scale)]
            for name, fn in stages:
                if name not in want and fn != self.make_templates:
                    continue
                t0 = time.monotonic()
                for attempt in (1, 2):
                    self.wait_binaries()
                    ids = self.binary_ids()
                    try:
                        fn()
                        break
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except Exception as e:
                        vmt.kill_all_vms()
                        msg = f'{type(e).__name__}: {e}'[:2000]
                        if attempt == 1 and self.binary_ids() != ids:
                            # build/qemu was replaced (rebuilt) meanwhile
                            self.say(f'{name}: failed while a QEMU binary '
                                     f'was replaced ({msg.splitlines()[0]}'
                                     '); running it again')
                            continue
                        self.res['errors'][name] = msg
                        self.say(f'{name}: error: {msg}')
                        traceback.print_exc()
                        break
                meta.setdefault('stage_s', {})[name] = \
                    round(time.monotonic() - t0, 1)
        finally:
            self.tmp.cleanup()
        meta['runtime_s'] = round(time.monotonic() - self.t_start, 1)
        if self.binary_ids() != self.ids0:
            changed = [b for b in BINS
                       if self.binary_ids()[b] != self.ids0[b]]
            meta['binaries_changed'] = changed
            self.say(f'note: {", ".join(changed)} binary replaced during '
                     'the run: its figures may mix two builds')
        return self.res


def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or '?'


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument('--quick', action='store_true',
                    help='small run (about 3 minutes): 3 clones per flow, '
                    '256M and 1G restores, density with 3 VMs')
    ap.add_argument('--out', help='output directory (default build/bench, '
                    'with --quick build/bench-quick)')
    ap.add_argument('--qemu', default=OURS, help=f'our QEMU (default {OURS})')
    ap.add_argument('--upstream', default=UPSTREAM,
                    help=f'upstream QEMU (default {UPSTREAM})')
    ap.add_argument('--python', help="directory with QEMU's python 'qemu' "
                    'package (default build/src/python)')
    ap.add_argument('--clones', type=int,
                    help='density: VMs at once per mode (default 50, '
                    'quick 3)')
    ap.add_argument('--reps', type=int,
                    help='clone latency: clones per flow after a warm-up '
                    'one (default 20, quick 3)')
    ap.add_argument('--sizes', help='restore: RAM sizes, comma separated '
                    '(default 256M,1G,4G, quick 256M)')
    ap.add_argument('--restore-fill', type=float, default=None,
                    help='restore: fraction of the RAM the guest writes '
                    'before the save (default 0.25, quick 0.125; at most '
                    '1024 MiB)')
    ap.add_argument('--scale', type=int,
                    help='scale: idle clones at once per mode of ours '
                    '(default 500, quick 2; upstream flows at most 50 '
                    'and 20)')
    ap.add_argument('--scale-machine', default='pc',
                    help='scale: the -machine of every VM (default pc: '
                    'with the HPET, whose idle cost patch 21 removes; '
                    'pc,hpet=off measures without it)')
    ap.add_argument('--parallel', type=int, default=2,
                    help='density: VMs started at once (default 2)')
    ap.add_argument('--mem-budget', type=float, default=16.0,
                    help='GiB this run may use (MemAvailable drop since '
                    'the start; default 16)')
    ap.add_argument('--mem-floor', type=float, default=3.0,
                    help='GiB of MemAvailable to leave (default 3)')
    ap.add_argument('--only', help='scenarios to run, comma separated '
                    f'({",".join(SCENARIOS)}); default all')
    ap.add_argument('--check', action='store_true',
                    help='validate the report after the run; exit 1 if it '
                    'is incomplete')
    ap.add_argument('--check-only', action='store_true',
                    help='only validate the report in --out')
    ap.add_argument('--no-build-guest', action='store_true')
    o = ap.parse_args(argv)
    q = o.quick
    o.out = os.path.abspath(o.out or os.path.join(
        vmt.BUILDDIR, 'bench-quick' if q else 'bench'))
    o.qemu = os.path.abspath(o.qemu)
    o.upstream = os.path.abspath(o.upstream)
    o.floor_reps = 3 if q else 10
    o.boot_reps = 2 if q else 5
    o.save_reps = 2 if q else 5
    o.restore_reps = 2 if q else 7
    if o.reps is None:
        o.reps = 3 if q else 20
    if o.clones is None:
        o.clones = 3 if q else 50
    if o.scale is None:
        o.scale = 2 if q else 500
    if o.restore_fill is None:
        o.restore_fill = 0.125 if q else 0.25
    if not 0 < o.restore_fill <= 0.5:
        ap.error('--restore-fill: between 0 and 0.5 (guest tmpfs is half '
                 'of its RAM)')
    o.sizes = (o.sizes or ('256M' if q else '256M,1G,4G')).split(',')
    o.only = (o.only or ','.join(SCENARIOS)).split(',')
    for s in o.only:
        if s not in SCENARIOS:
            ap.error(f'--only: unknown scenario {s}')
    if o.clones < 1 or o.reps < 1 or o.parallel < 1 or o.scale < 1:
        ap.error('--clones, --reps, --scale and --parallel must be at '
                 'least 1')
    for s in o.sizes:
        try:
            vmt.parse_size(s)
        except ValueError:
            ap.error(f'--sizes: bad size {s}')
    return o


def main():
    o = parse_args()
    if o.check_only:
        return bench_report.check_and_print(o.out)
    if o.python:
        os.environ['VMT_PYTHON'] = os.path.abspath(o.python)
    elif not os.environ.get('VMT_PYTHON'):
        os.environ['VMT_PYTHON'] = os.path.join(vmt.BUILDDIR, 'src',
                                                'python')
    if not o.no_build_guest:
        vmt.build_guest()
    b = Bench(o)
    res = b.run()
    os.makedirs(o.out, exist_ok=True)
    summary = bench_report.write_all(res, o.out)
    print()
    print(summary)
    print(f'bench: wrote {o.out}/report.md, results.json and plots '
          f'({res["meta"]["runtime_s"]:.0f} s)')
    if o.check:
        return bench_report.check_and_print(o.out)
    return 1 if res['errors'] else 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except vmt.VMTError as e:
        vmt.cleanup_all()
        print(f'bench: error: {e}', file=sys.stderr)
        print(f'bench: report incomplete: error: {str(e).splitlines()[0]}')
        sys.exit(1)
    except KeyboardInterrupt:
        vmt.cleanup_all()
        print('bench: interrupted', file=sys.stderr)
        sys.exit(128 + (vmt.terminated_by or 2))
