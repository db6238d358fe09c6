#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
TCG translation cache size for clones: memory against guest speed.

  /usr/bin/python3 tests/vmt/tb_size.py [--qemu PATH] [--sizes LIST]
                                        [--idle S] [--reps N]
                                        [--tb-huge-pages on|off]

One bypass template of the bundled guest; for each tb-size (MiB; default
1024 (QEMU's default), 256, 64, 32, 16, 8) clones start with
-accel tcg,tb-size=N (the translation cache is not part of the migrated
state, so a clone may use any size).  Per clone: the TCG cache's resident
memory and the process Pss after --idle seconds (default 5), then the
time of guest work that runs much code: the agent writes 16 MiB (awk)
and checksums it.  Medians over --reps clones (default 2).
--tb-huge-pages passes that TCG option to the clones (QEMU's default:
on).  Measures only; TCG only.
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vmt  # noqa: E402
from bench import tcg_memory  # noqa: E402


def pss_kib(pid):
    with open(f'/proc/{pid}/smaps_rollup') as f:
        for line in f:
            if line.startswith('Pss:'):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--qemu')
    ap.add_argument('--sizes', default='1024,256,64,32,16,8')
    ap.add_argument('--idle', type=float, default=5.0)
    ap.add_argument('--reps', type=int, default=2)
    ap.add_argument('--tb-huge-pages', choices=('on', 'off'))
    o = ap.parse_args()
    binary = vmt.qemu_binary(o.qemu)
    sizes = [int(x) for x in o.sizes.split(',')]
    hp = f',tb-huge-pages={o.tb_huge_pages}' if o.tb_huge_pages else ''
    print(f'tb-size: {binary}, guest {vmt.guest_dir()}, idle {o.idle:g} s, '
          f'{o.reps} clones per size{hp}')
    print(f'{"tb-size (MiB)":>14} {"TCG idle (MiB)":>15} {"Pss idle (MiB)":>15}'
          f' {"TCG after (MiB)":>16} {"write 16 MiB (s)":>17}'
          f' {"sum (s)":>8}')
    with vmt.TempDir(prefix='vmt-tbsize-') as tmp:
        ram = tmp.join('t.ram')
        state = tmp.join('t.state')
        with vmt.VM(binary, name='template', tmpdir=tmp.path, accel='tcg',
                    extra_args=vmt.ram_backend_args(ram, True)) as t:
            t.launch()
            t.wait_banner()
            vmt.save_template(t, state, 'bypass')
            t.shutdown()
        for size in sizes:
            rows = []
            for i in range(o.reps):
                c = vmt.VM(binary, name=f'c{size}-{i}', tmpdir=tmp.path,
                           accel=f'tcg,tb-size={size}' + hp,
                           extra_args=vmt.clone_args(ram, state, 'bypass'))
                with c:
                    c.launch()
                    vmt.restore_clone(c, state, 'bypass')
                    c.wait_pong()
                    time.sleep(o.idle)
                    idle_tcg = tcg_memory(c.pid)[0]
                    idle_pss = pss_kib(c.pid)
                    t0 = time.monotonic()
                    ans = c.agent.write(1, 16)
                    t_write = time.monotonic() - t0
                    if ans != 'ok write 16':
                        raise vmt.VMTError(f'write: {ans}')
                    t0 = time.monotonic()
                    c.agent.sum()
                    t_sum = time.monotonic() - t0
                    rows.append((idle_tcg, idle_pss, tcg_memory(c.pid)[0],
                                 t_write, t_sum))
            med = [statistics.median(r[k] for r in rows) for k in range(5)]
            print(f'{size:>14} {med[0] / 1024:>15.1f} {med[1] / 1024:>15.1f}'
                  f' {med[2] / 1024:>16.1f} {med[3]:>17.2f} {med[4]:>8.2f}',
                  flush=True)
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except vmt.VMTError as e:
        vmt.cleanup_all()
        print(f'tb-size: error: {e}', file=sys.stderr)
        sys.exit(1)
