#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
How fast QEMU starts clones when the guest costs nothing to resume.

  /usr/bin/python3 tests/vmt/start_rate.py [--qemu PATH] [--mode M]...
                                           [--batches N] [--json FILE]

The guest is a 512-byte boot sector that only halts with interrupts on
(sti; hlt; jmp back to the hlt): SeaBIOS's timer interrupt handler, 18.2
times a second, is all that runs, and it counts the ticks in the BIOS
data area (the dword at 0x46c).  For each mode (default bypass and
mapped-ram) qemu-template makes a template of it (256 MiB, 3 s after
boot), then starts N batches of 16 clones ("clone --no-pool --count
16", as the scale bench does) back to back.  Reported per mode: the
clones started per second, the CPU time the clones used from exec until
the last batch ran (ms per clone; the tool's own time is not in it), the
CPU the idle clones use (% of one core per clone), Pss per clone, and
how many clones are alive: their tick count moved within a second.

With the bundled Linux guest, tests/vmt/bench.py --only scale measures
the same start rate; the difference is the guest's resume (under TCG,
translating it again in every clone).  Under TCG with
tb-huge-pages=off, as the scale bench starts its clones.  The
accelerator is $VMT_ACCEL's, else the probe's (see vmt.py); under PVM
(KVM in a VM), this real-mode guest runs in KVM's instruction emulator
and its figures say nothing about KVM.  Measures only.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import vmt
from bench_scale import cpu_ticks, rollup

BATCH = 16
# sti; hlt; jmp $-1 (back to the hlt), then the boot signature
IDLE_BOOTSECT = bytes([0xfb, 0xf4, 0xeb, 0xfd]) + bytes(506) + b'\x55\xaa'
BIOS_TICKS = 0x46c


class Flow:
    def __init__(self, binary, tmp, mode, accel):
        self.binary = binary
        self.tool = vmt.template_tool(binary)
        self.dir = os.path.join(tmp.path, 'templates')
        self.mode = mode
        self.accel = accel
        self.disk = os.path.join(tmp.path, 'idle.img')
        with open(self.disk, 'wb') as f:
            f.write(IDLE_BOOTSECT)
        self.name = f'idle-{mode}'
        self.clones = []

    def run_tool(self, *args):
        r = subprocess.run([self.tool, '--dir', self.dir, '--json', *args],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=600,
                           env=vmt.template_tool_env(self.binary))
        if r.returncode:
            raise vmt.VMTError(f'qemu-template {args[0]}: {r.stderr.strip()}')
        return json.loads(r.stdout) if r.stdout.strip() else None

    def create(self):
        accel = self.accel
        if accel == 'tcg':
            accel += ',tb-huge-pages=off'
        self.run_tool('create', self.name, '--mode', self.mode, '--qemu',
                      self.binary, '--ready', 'delay:3', '--',
                      '-M', 'pc', '-m', '256M', '-nodefaults',
                      '-no-user-config', '-display', 'none', '-accel', accel,
                      '-drive', f'if=none,id=d0,file={self.disk},format=raw,'
                                'file.locking=off',
                      '-device', 'ide-hd,drive=d0,secs=1,cyls=1,heads=1')

    def ticks(self, qmp_path):
        q = vmt.qmp_class()(qmp_path)
        q.connect()
        try:
            out = q.cmd('human-monitor-command',
                        **{'command-line': f'xp /1wx {BIOS_TICKS:#x}'})
        finally:
            q.close()
        return int(out.split(':')[1].split()[0], 16)

    def measure(self, batches):
        t0 = time.monotonic()
        for _ in range(batches):
            self.clones += self.run_tool('clone', self.name, '--qemu',
                                         self.binary, '--no-pool',
                                         '--count', str(BATCH))
        start_s = time.monotonic() - t0
        pids = [c['pid'] for c in self.clones]
        hz = os.sysconf('SC_CLK_TCK')
        start_cpu = cpu_ticks(pids) / hz
        before = [self.ticks(c['qmp']) for c in self.clones]
        time.sleep(1.0)
        alive = sum(self.ticks(c['qmp']) != t
                    for c, t in zip(self.clones, before))
        idle0 = cpu_ticks(pids)
        time.sleep(5.0)
        idle = (cpu_ticks(pids) - idle0) / hz / 5.0
        n = len(pids)
        return {'clones': n, 'start_s': round(start_s, 2),
                'per_s': round(n / start_s, 1),
                'cpu_ms_per_clone': round(1000 * start_cpu / n, 1),
                'idle_cpu_pct': round(100 * idle / n, 2),
                'pss_mib': round(sum(rollup(p)['Pss'] for p in pids) /
                                 n / 1024, 1),
                'alive': alive}

    def stop(self):
        for c in self.clones:
            try:
                os.kill(c['pid'], signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and \
                any(os.path.exists(f'/proc/{c["pid"]}') for c in self.clones):
            time.sleep(0.05)
        for c in self.clones:
            try:
                self.run_tool('destroy', c['id'])
            except vmt.VMTError as e:
                print(f'start_rate: {e}', file=sys.stderr)
        self.clones = []
        self.run_tool('destroy', self.name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--qemu', help='QEMU binary (default: $VMT_QEMU or '
                    'build/qemu/qemu-system-x86_64)')
    ap.add_argument('--mode', action='append',
                    choices=('bypass', 'mapped-ram'))
    ap.add_argument('--batches', type=int, default=8,
                    help=f'batches of {BATCH} clones (default 8)')
    ap.add_argument('--json', help='also write the figures here')
    o = ap.parse_args()
    binary = vmt.qemu_binary(o.qemu)
    accel = vmt.select_accel(binary)
    results = {}
    print(f'start_rate: {binary}, accel {accel}, {o.batches} x {BATCH} '
          'clones of an idle boot sector')
    with vmt.TempDir(prefix='vmt-start-rate-') as tmp:
        for mode in o.mode or ['bypass', 'mapped-ram']:
            flow = Flow(binary, tmp, mode, accel)
            flow.create()
            try:
                results[mode] = r = flow.measure(o.batches)
            finally:
                flow.stop()
            print(f'{mode:10}  {r["clones"]} clones in {r["start_s"]} s: '
                  f'{r["per_s"]}/s, {r["cpu_ms_per_clone"]} ms of CPU per '
                  f'clone; idle {r["idle_cpu_pct"]} % of a core, Pss '
                  f'{r["pss_mib"]} MiB per clone; {r["alive"]} alive')
    if o.json:
        with open(o.json, 'w') as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except vmt.VMTError as e:
        vmt.cleanup_all()
        print(f'start_rate: error: {e}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        vmt.cleanup_all()
        sys.exit(130)
