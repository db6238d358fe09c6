# SPDX-License-Identifier: GPL-2.0-or-later
"""
Benchmark scenario "tool" (tests/vmt/bench.py): qemu-template's clones.

For each mode (bypass, mapped-ram) the tool makes a template of the
generic-kernel guest (build/guest-vmgenid), then measures:

- clone without a pool: the tool's exec -> running (clone record), and
  the time to the agent's answer to ping;
- a pool of POOL_SIZE: REQUESTS requests, each made once the pool is full
  again (a warm pool), timed by the pool (request received -> guest
  running) and by the client (request sent -> record received -> agent
  answers ping); each clone is destroyed before the next request;
- memory of an idle pooled clone (smaps_rollup), and the refill rate (a
  pool of REFILL clones started from empty).

Measures only; nothing here asserts a timing.
"""

import json
import os
import socket
import subprocess
import time

import vmt

TOOL_MODES = ('bypass', 'mapped-ram')
POOL_SIZE = 2


def _ms(ns):
    return ns / 1e6


class ToolBench:
    def __init__(self, bench, stats, requests, clones, refill):
        self.b = bench
        self.stats = stats
        self.requests = requests
        self.clones = clones
        self.refill = refill
        self.binary = bench.bins['ours']
        self.tool = vmt.template_tool(self.binary)
        self.dir = bench.tmp.join('tool')

    def run_tool(self, *args):
        r = subprocess.run([self.tool, '--dir', self.dir, '--json', *args],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=600,
                           env=vmt.template_tool_env(self.binary))
        if r.returncode:
            raise vmt.VMTError(f'qemu-template {args[0]}: {r.stderr.strip()}')
        return json.loads(r.stdout) if r.stdout.strip() else None

    def pong_ms(self, rec, t0):
        """ms from t0 (perf_counter_ns) to the clone's first pong."""
        agent = vmt.Agent(os.path.join(rec['dir'], 'agent.sock'))
        agent.connect()
        try:
            agent.ping()
            return _ms(time.perf_counter_ns() - t0)
        finally:
            agent.close()

    def pool_req(self, name, req):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(120)
            s.connect(os.path.join(self.dir, 'pools', f'{name}.sock'))
            f = s.makefile('rw')
            f.write(json.dumps(req) + '\n')
            f.flush()
            msg = json.loads(f.readline())
        if 'error' in msg:
            raise vmt.VMTError(f'pool: {msg["error"]["desc"]}')
        return msg['return']

    def start_pool(self, name, size):
        t0 = time.perf_counter_ns()
        p = subprocess.Popen([self.tool, '--dir', self.dir, 'pool', name,
                              '--size', str(size)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env=vmt.template_tool_env(self.binary))
        line = p.stdout.readline()
        if 'clones ready' not in line:
            p.kill()
            p.wait()
            raise vmt.VMTError(f'pool {name}: {line.strip()}')
        return p, _ms(time.perf_counter_ns() - t0)

    def stop_pool(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        p.stdout.close()

    def wait_full(self, name, size, timeout=60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.pool_req(name, {'execute': 'status'})['ready'] >= size:
                return
            time.sleep(0.01)
        raise vmt.VMTError(f'pool {name} not refilled in {timeout} s')

    def pooled_memory(self):
        """(Pss, private) KiB of each waiting pooled clone (its record
        says it waits in a pool)."""
        out = []
        cdir = os.path.join(self.dir, 'clones')
        for d in os.listdir(cdir):
            try:
                with open(os.path.join(cdir, d, 'clone.json')) as f:
                    rec = json.load(f)
                if not rec.get('pooled') or rec.get('state') == 'running':
                    continue
                with open(f'/proc/{rec["pid"]}/smaps_rollup') as f:
                    kv = {ln.split(':')[0]: int(ln.split()[1])
                          for ln in f if ln.endswith('kB\n')}
            except (OSError, ValueError, KeyError):
                continue
            out.append((kv['Pss'], kv['Private_Clean'] +
                        kv['Private_Dirty']))
        return out

    def mode(self, mode):
        stats = self.stats
        name = f'bench-{mode}'
        b = self.b
        r = {}
        man = self.run_tool('create', name, '--mode', mode, '--qemu',
                            self.binary, '--ready', vmt.TOOL_READY, '--',
                            *vmt.tool_guest_args(vmt.vmgenid_guest_dir(),
                                                 b.accel))
        r['create_ready_ms'] = man['times']['ready-ms']
        r['create_save_ms'] = man['times']['save-ms']
        try:
            run_ms, pong = [], []
            for i in range(self.clones):
                b.step('tool', i + 1, self.clones, f'{mode}: clone, no pool')
                t0 = time.perf_counter_ns()
                rec = self.run_tool('clone', name, '--no-pool')[0]
                try:
                    run_ms.append(rec['times']['running-us'] / 1000)
                    pong.append(self.pong_ms(rec, t0))
                finally:
                    self.run_tool('destroy', rec['id'])
            r['clone_running'] = stats(run_ms)
            r['clone_pong'] = stats(pong)

            pool, _ = self.start_pool(name, POOL_SIZE)
            try:
                time.sleep(2)
                mem = self.pooled_memory() or [(0, 0)]
                r['pooled_pss_kib'] = sum(m[0] for m in mem) / len(mem)
                r['pooled_private_kib'] = sum(m[1] for m in mem) / len(mem)
                req, run, rtt, pong = [], [], [], []
                for i in range(self.requests):
                    if i % 10 == 0:
                        b.step('tool', i + 1, self.requests,
                               f'{mode}: pool requests')
                    self.wait_full(name, POOL_SIZE)
                    t0 = time.perf_counter_ns()
                    rec = self.pool_req(name, {'execute': 'clone'})
                    rtt.append(_ms(time.perf_counter_ns() - t0))
                    try:
                        req.append(rec['times']['request-us'] / 1000)
                        # the request to the guest running (older tools:
                        # request-us meant that)
                        run.append(rec['times'].get(
                            'request-running-us',
                            rec['times']['request-us']) / 1000)
                        pong.append(self.pong_ms(rec, t0))
                    finally:
                        self.run_tool('destroy', rec['id'])
                r['pool_request'] = stats(req)
                r['pool_request_running'] = stats(run)
                r['pool_rtt'] = stats(rtt)
                r['pool_pong'] = stats(pong)
                r['pool_request_all'] = [round(x, 3) for x in req]
            finally:
                self.stop_pool(pool)

            pool, full_ms = self.start_pool(name, self.refill)
            self.stop_pool(pool)
            r['refill_n'] = self.refill
            r['refill_ms'] = round(full_ms, 1)
            r['refill_per_s'] = round(self.refill / (full_ms / 1000), 2)
        finally:
            self.run_tool('destroy', name)
        b.say(f'tool {mode}: pool request -> running median '
              f'{r["pool_request_running"]["median"]:.1f} ms, -> answer '
              f'{r["pool_request"]["median"]:.1f} ms (client '
              f'{r["pool_rtt"]["median"]:.1f} ms), -> pong '
              f'{r["pool_pong"]["median"]:.1f} ms; no pool exec -> running '
              f'{r["clone_running"]["median"]:.1f} ms; pooled clone Pss '
              f'{r["pooled_pss_kib"] / 1024:.1f} MiB; refill '
              f'{r["refill_per_s"]:.1f}/s')
        return r


def run(bench, stats, requests, clones, refill):
    """res['tool'] for bench.py (stats: bench.py's summary of samples)."""
    tb = ToolBench(bench, stats, requests, clones, refill)
    if not os.access(tb.tool, os.X_OK):
        raise vmt.VMTError(f'{tb.tool} not built')
    vmt.build_vmgenid_guest()
    res = {'requests': requests, 'clones': clones, 'pool_size': POOL_SIZE,
           'guest': vmt.vmgenid_guest_dir(), 'modes': {}}
    for mode in TOOL_MODES:
        res['modes'][mode] = tb.mode(mode)
    return res
