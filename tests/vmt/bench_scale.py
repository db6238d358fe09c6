# SPDX-License-Identifier: GPL-2.0-or-later
"""
Benchmark scenario "scale" (tests/vmt/bench.py): many idle VMs at once.

All flows run the generic-kernel guest (build/guest-vmgenid) with the same
command line, a vmgenid device and the same -machine (bench.py
--scale-machine, default pc), so their QEMUs differ only in how they start
and in what the series changes.  With the HPET (pc's default): a Linux
guest leaves the HPET timer it booted with periodic, with its interrupt
disabled, when it moves to the LAPIC timer; upstream QEMU 10.0 keeps
running that timer (about 250 wake-ups a second in the main loop of every
idle VM, 1.3 % of a core against 0.3 % without an HPET), and the series
parks it (patch "hw/timer/hpet: do not re-arm a periodic timer...").

- ours, bypass and mapped-ram: qemu-template makes a template, then
  "clone --no-pool --count BATCH" calls start clones (the tool spawns 8
  QEMUs at once) until --scale of them run (default 500); under TCG with
  -accel tcg,tb-huge-pages=off (patch "accel/tcg: add the tb-huge-pages
  property"), which upstream QEMU does not have;
- upstream, x-ignore-shared: the bench makes a template of the same guest
  with upstream QEMU and starts its clones (share=off backend, -incoming
  defer, x-ignore-shared, migrate-incoming exec:cat), BATCH at a time, at
  most UPSTREAM_MAX;
- upstream, cold boot: the guest booted from scratch, at most COLD_MAX
  (each costs seconds of CPU; per-VM memory is steady long before).

Before every batch the bench's memory guard (--mem-budget, --mem-floor)
may stop a flow early; the report says where.  Once a flow's VMs run
they idle for SETTLE seconds, then every one must answer the agent;
then: MemAvailable drop per VM (all running against before the first),
Pss, anonymous memory and TCG cache per VM (smaps_rollup, mean), the
start rate (VMs per second from the first start to the last running;
cold boots: to the agent's answer), and the memory that stopping them
all gives back.  Measures only; nothing here asserts a figure.
"""

import os
import signal
import subprocess
import json
import time

import vmt

TOOL_MODES = ('bypass', 'mapped-ram')
BATCH = 16
UPSTREAM_MAX = 50
COLD_MAX = 20
# A batch that takes longer than this, or three times the flow's first
# batch (cold boots), may mean that the VMs already running use the CPUs;
# further starts would only measure the overload.  The flow then measures
# what the running VMs use over PROBE_S seconds, and stops if that is
# more than SATURATED of all cores; otherwise the slow batch was a
# passing peak (the clones just started translating their guest's code).
SLOW_BATCH_S = 10.0
PROBE_S = 5.0
SATURATED = 0.75
FIRST = 64                  # the start rate is also given for the first


def cpu_ticks(pids):
    """utime + stime of the processes, in clock ticks."""
    total = 0
    for pid in pids:
        try:
            with open(f'/proc/{pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def rollup(pid):
    out = {}
    with open(f'/proc/{pid}/smaps_rollup') as f:
        for line in f:
            k, _, rest = line.partition(':')
            if rest.strip().endswith('kB'):
                out[k] = int(rest.split()[0])
    return out


class Scale:
    def __init__(self, bench, bm, n, settle, machine):
        self.b = bench
        self.machine = machine
        self.bm = bm            # bench.py's module: memory and VM helpers
        self.n = n
        self.settle = settle
        self.tool = vmt.template_tool(bench.bins['ours'])
        self.dir = bench.tmp.join('scale')
        self.guest = vmt.vmgenid_guest_dir()

    def run_tool(self, *args):
        r = subprocess.run([self.tool, '--dir', self.dir, '--json', *args],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=600,
                           env=vmt.template_tool_env(self.b.bins['ours']))
        if r.returncode:
            raise vmt.VMTError(f'qemu-template {args[0]}: {r.stderr.strip()}')
        return json.loads(r.stdout) if r.stdout.strip() else None

    @staticmethod
    def cpu_use(pids):
        """Share of all cores that @pids use over PROBE_S seconds."""
        w0 = time.monotonic()
        t0 = cpu_ticks(pids)
        time.sleep(PROBE_S)
        used = (cpu_ticks(pids) - t0) / os.sysconf('SC_CLK_TCK')
        # the sleep ends late on loaded CPUs: divide by what it took
        return used / (time.monotonic() - w0) / os.cpu_count()

    # -- one flow: start, idle, ask, measure, stop

    def flow(self, fid, n, start, stop):
        """start(k) -> list of {'pid', 'agent', ...}: 'agent' is the
        VM's connected vmt.Agent or the path of its socket; stop(list)."""
        b, bm = self.b, self.bm
        r = {'asked': n, 'started': 0}
        vms = []
        base = bm.settle_memory()
        est = 64 * 1024             # KiB per VM until measured
        slow = None
        t0 = time.monotonic()
        try:
            while len(vms) < n:
                k = min(BATCH, n - len(vms))
                ok, why = b.memory_ok(int(est * k * 1.25))
                if not ok:
                    r['stopped'] = f'stopped at {len(vms)} of {n}: {why}'
                    b.say(f'scale {fid}: {r["stopped"]}')
                    break
                t_batch = time.monotonic()
                vms += start(k)
                t_batch = time.monotonic() - t_batch
                if 'first_per_s' not in r and len(vms) >= FIRST:
                    # before the running VMs load the CPUs
                    r['first_per_s'] = round(
                        len(vms) / (time.monotonic() - t0), 2)
                est = max(4096, (base - bm.mem_available_kib()) // len(vms))
                slow = slow or max(SLOW_BATCH_S, 3 * t_batch)
                if t_batch > slow and len(vms) < n:
                    use = self.cpu_use([v['pid'] for v in vms])
                    t0 += PROBE_S       # not starting: out of the rate
                    # (about: the probe may take a little longer)
                    b.say(f'scale {fid}: the last {k} took {t_batch:.0f} s '
                          f'to start; the {len(vms)} running use '
                          f'{100 * use:.0f} % of the CPUs')
                    r['slow_batches'] = r.get('slow_batches', 0) + 1
                    if use > SATURATED:
                        r['stopped'] = (
                            f'stopped at {len(vms)} of {n}: the CPUs are '
                            f'saturated (the last {k} took {t_batch:.0f} s '
                            f'to start; the VMs running used '
                            f'{100 * use:.0f} % of all cores)')
                        b.say(f'scale {fid}: {r["stopped"]}')
                        break
                if len(vms) % 100 < k or len(vms) == n:
                    b.say(f'scale {fid}: {len(vms)}/{n} running, '
                          f'{est / 1024:.1f} MiB each so far')
            r['started'] = len(vms)
            r['start_s'] = round(time.monotonic() - t0, 2)
            if not vms:
                return r
            r['per_s'] = round(len(vms) / r['start_s'], 2)
            pids = [v['pid'] for v in vms]
            ticks = cpu_ticks(pids)
            time.sleep(self.settle)
            # CPU time of the idle VMs, in % of one core per VM
            r['idle_cpu_pct'] = round(
                (cpu_ticks(pids) - ticks) / os.sysconf('SC_CLK_TCK') /
                self.settle / len(pids) * 100, 2)
            r['answered'] = answered = self.ask_all(fid, vms)
            avail = bm.mem_available_kib()
            r['avail_drop_per_vm_kib'] = (base - avail) / len(vms)
            ru = [rollup(v['pid']) for v in vms]
            tcg = [bm.tcg_memory(v['pid'])[0] for v in vms]
            for key, name in (('Pss', 'pss'), ('Anonymous', 'anon')):
                r[f'{name}_kib'] = sum(x[key] for x in ru) / len(ru)
            r['tcg_kib'] = sum(tcg) / len(tcg)
            r['pss_without_tcg_kib'] = r['pss_kib'] - r['tcg_kib']
            stop(vms)
            vms = []
            r['released_per_vm_kib'] = (bm.settle_memory() - avail) / \
                r['started']
            r['host_per_vm_kib'] = (r['avail_drop_per_vm_kib'] +
                                    r['released_per_vm_kib']) / 2
            b.say(f'scale {fid}: {r["started"]} VMs at {r["per_s"]:.1f}/s, '
                  f'{answered} answered; per VM: Pss '
                  f'{r["pss_kib"] / 1024:.1f} MiB, host '
                  f'{r["host_per_vm_kib"] / 1024:.1f} MiB')
            return r
        finally:
            stop(vms)

    def ask_all(self, fid, vms, timeout=600.0):
        """Ping every VM's agent at once, then collect the answers: the
        wait is the slowest answer, not the sum.  Returns how many
        answered."""
        asked = []
        for v in vms:
            a = v['agent']
            own = not isinstance(a, vmt.Agent)
            try:
                if own:
                    a = vmt.Agent(a)
                    a.connect()
                a.drain()
                a.send('ping')
                asked.append((v, a, own))
            except Exception as e:
                self.b.say(f'scale {fid}: pid {v["pid"]}: cannot ask: {e}')
                if own:
                    a.close()
        deadline = time.monotonic() + timeout
        answered = 0
        for v, a, own in asked:
            try:
                while True:
                    ans = a.read_answer(max(0.0,
                                            deadline - time.monotonic()))
                    if ans is None:
                        self.b.say(f'scale {fid}: pid {v["pid"]}: no pong '
                                   f'within {timeout:g} s')
                        break
                    if ans == 'pong':
                        answered += 1
                        break
            finally:
                if own:
                    a.close()
        return answered

    # -- ours: qemu-template

    def tool_flow(self, mode):
        name = f'scale-{mode}'
        accel = self.b.accel
        if accel == 'tcg':
            accel += ',tb-huge-pages=off'       # dense clones (our option)
        self.run_tool('create', name, '--mode', mode, '--qemu',
                      self.b.bins['ours'], '--ready', vmt.TOOL_READY, '--',
                      *[self.machine if a == 'pc' else a for a in
                        vmt.tool_guest_args(self.guest, accel)])

        def start(k):
            recs = self.run_tool('clone', name, '--no-pool', '--count',
                                 str(k))
            return [{'pid': c['pid'], 'id': c['id'],
                     'agent': os.path.join(c['dir'], 'agent.sock')}
                    for c in recs]

        def stop(vms):
            for v in vms:
                try:
                    os.kill(v['pid'], signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for v in vms:
                self.run_tool('destroy', v['id'])
            vms.clear()

        try:
            return self.flow(f'{mode}/ours', self.n, start, stop)
        finally:
            self.run_tool('destroy', name)

    # -- upstream: the bench's own VMs

    def upstream_template(self):
        b, bm = self.b, self.bm
        tpl = type('Tpl', (), {})()
        tpl.ram = b.tmp.join('scale-upstream.ram')
        tpl.state = b.tmp.join('scale-upstream.state')
        v = b.vm('upstream', 'scale-template',
                 vmt.ram_backend_args(tpl.ram, share=True) + bm.DEVICES,
                 guest=self.guest, machine=self.machine)
        try:
            v.launch()
            v.wait_banner(timeout=600)
            bm.pong(v, timeout=600)
            b.save(v, 'ignore-shared', tpl.state)
        finally:
            v.kill()
        return tpl

    def vm_flow(self, fid, n, mode, tpl=None):
        b, bm = self.b, self.bm

        def start(k):
            batch = []
            try:
                for _ in range(k):
                    extra = (b.clone_args(mode, tpl) if tpl else []) + \
                        bm.DEVICES
                    v = b.vm('upstream', 'scale', extra, guest=self.guest,
                             machine=self.machine)
                    batch.append(v)
                    v.launch()
                    if tpl:
                        v.set_caps(x_ignore_shared=True)
                        v.cmd('migrate-incoming',
                              uri=f'exec:cat {tpl.state}')
                for v in batch:
                    if tpl:
                        bm.wait_running(v, timeout=600)
                    else:
                        v.wait_banner(timeout=600)
                        bm.pong(v, timeout=600)
            except BaseException:
                for v in batch:
                    v.kill()
                raise
            # the agent socket takes one client: the VM's own
            return [{'pid': v.proc.pid, 'vm': v, 'agent': v.agent}
                    for v in batch]

        def stop(vms):
            for v in vms:
                v['vm'].kill()
            vms.clear()

        return self.flow(fid, n, start, stop)


def run(bench, bm, n, settle, machine):
    """res['scale'] for bench.py; bm: bench.py's module."""
    s = Scale(bench, bm, n, settle, machine)
    if not os.access(s.tool, os.X_OK):
        raise vmt.VMTError(f'{s.tool} not built')
    vmt.build_vmgenid_guest()
    res = {'n': n, 'settle_s': settle, 'batch': BATCH, 'machine': machine,
           'guest': s.guest, 'flows': {}}
    flows = res['flows']
    for mode in TOOL_MODES:
        try:
            flows[f'{mode}/ours'] = s.tool_flow(mode)
        except Exception as e:
            flows[f'{mode}/ours'] = {'error': bench.fail(f'scale/{mode}', e)}
            vmt.kill_all_vms()
    try:
        tpl = s.upstream_template()
        flows['ignore-shared/upstream'] = s.vm_flow(
            'ignore-shared/upstream', min(n, UPSTREAM_MAX), 'ignore-shared',
            tpl)
        for p in (tpl.ram, tpl.state):
            if os.path.exists(p):
                os.unlink(p)
    except Exception as e:
        flows['ignore-shared/upstream'] = {
            'error': bench.fail('scale/ignore-shared', e)}
        vmt.kill_all_vms()
    try:
        flows['cold/upstream'] = s.vm_flow('cold/upstream',
                                           min(n, COLD_MAX), 'cold')
    except Exception as e:
        flows['cold/upstream'] = {'error': bench.fail('scale/cold', e)}
        vmt.kill_all_vms()
    return res
