#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
VMT demo: boot a template VM, save it, start instant clones from it.

  /usr/bin/python3 tests/vmt/demo.py [--qemu PATH] [--python DIR]
                                     [--mode ignore-shared|bypass]
                                     [--clones N] [--mib N]

The template runs the bundled test guest (tests/guest/) with its 256 MiB
of RAM in a share=on memory-backend-file on /dev/shm; the guest agent
(docs/devel/vmt-guest-agent.rst) writes some data, then the template is
stopped and its device state (without the RAM) is saved to a file.  Each
clone maps the same RAM file with share=off (copy on write) and loads the
state.  Modes:

  ignore-shared  upstream QEMU: capability x-ignore-shared on both sides,
                 clones start with -S -incoming defer, then
                 migrate-incoming, then cont.
  bypass         capability bypass-shared-memory on the template only;
                 clones start with a plain -incoming "exec:cat STATE".
                 Needs a QEMU that has the bypass-shared-memory capability.

Prints the timings of every step and the memory of every clone.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vmt  # noqa: E402

# every VM gets a VM generation ID device: each clone sees a new ID
DEVICES = ['-device', 'vmgenid']



def kib(n):
    return f'{n / 1024:.1f}'


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--qemu', help='QEMU binary (default: $VMT_QEMU or '
                    'build/qemu/qemu-system-x86_64)')
    ap.add_argument('--python', help="directory with QEMU's python 'qemu' "
                    'package')
    ap.add_argument('--mode', choices=vmt.MODES, default='ignore-shared')
    ap.add_argument('--clones', type=int, default=3)
    ap.add_argument('--mib', type=int, default=4,
                    help='MiB the template guest writes before the save')
    ap.add_argument('--seed', type=int, default=7)
    ap.add_argument('--no-build-guest', action='store_true')
    opts = ap.parse_args()

    if opts.qemu:
        os.environ['VMT_QEMU'] = os.path.abspath(opts.qemu)
    if opts.python:
        os.environ['VMT_PYTHON'] = os.path.abspath(opts.python)
    binary = vmt.qemu_binary()
    pydir = vmt.python_dir()
    if not opts.no_build_guest:
        vmt.build_guest()
    accel = vmt.select_accel(binary)
    mode = opts.mode
    cap = vmt.CAPABILITY[mode]

    print(f'QEMU:        {binary}')
    print(f'python:      {pydir}')
    print(f'accelerator: {accel}')
    print(f'mode:        {mode} (capability {cap})')
    print(f'guest:       {vmt.guest_dir()} ({vmt.GUEST_MEM} RAM)')

    ok = True
    with vmt.TempDir(prefix='vmt-demo-') as tmp:
        ram = tmp.join('template.ram')
        state = tmp.join('state')
        print(f'workdir:     {tmp.path}')
        print()

        # -- template
        with vmt.VM(name='template', tmpdir=tmp.path,
                    extra_args=vmt.ram_backend_args(ram, share=True) +
                    DEVICES) as t:
            t.launch()
            if not vmt.has_capability(t, cap):
                print(f'error: {binary} has no migration capability {cap}; '
                      f'--mode {mode} needs a QEMU that has it',
                      file=sys.stderr)
                return 2
            t.wait_banner()
            w0 = vmt.now_ns()
            ans = t.agent.write(opts.seed, opts.mib)
            w1 = vmt.now_ns()
            if ans != f'ok write {opts.mib}':
                raise vmt.VMTError(f'template write failed: {ans}')
            tsum = t.agent.sum()
            tgen = t.agent.genid()
            if tgen['driver'] == '1':
                # Linux only reseeds on a VM fork once its crng is up
                tgen = t.agent.wait_crng()
            tmem = t.smaps(path=ram)
            troll = t.smaps_rollup()
            s0 = vmt.now_ns()
            vmt.migrate_to_file(t, state, mode)
            s1 = vmt.now_ns()
            t.shutdown()
        state_size = os.path.getsize(state)
        ram_sha = vmt.sha256_file(ram)

        print('template')
        tq = vmt.ms(t.since_exec_ns('qmp'))
        tb = vmt.ms(t.since_exec_ns('banner'))
        print(f'  exec -> QMP reply          {tq:9.1f} ms')
        print(f'  exec -> agent banner       {tb:9.1f} ms')
        print(f'  guest write {opts.mib} MiB (seed {opts.seed}) '
              f'{vmt.ms(w1 - w0):9.1f} ms')
        print(f'  save (stop .. completed)   {vmt.ms(s1 - s0):9.1f} ms')
        print(f'  state file size            {state_size / 1024:9.1f} KiB')
        print(f'  data sum                   {tsum[:16]}...')
        print()

        # -- clones, started one after the other and all kept running
        clones = []
        try:
            for i in range(opts.clones):
                c = vmt.VM(name=f'clone{i}', tmpdir=tmp.path,
                           extra_args=vmt.clone_args(ram, state, mode) +
                           DEVICES)
                clones.append(c)
                c.launch()
                vmt.restore_clone(c, state, mode)
                c.wait_pong()
                c.sum_ok = c.agent.sum() == tsum
                c.ping_ok = c.agent.ping() == 'pong'
                c.genid = c.agent.genid()
                ok = ok and c.sum_ok and c.ping_ok
            # memory once all clones run (sharing shows in Pss)
            for c in clones:
                c.mem = c.smaps(path=ram)
                c.roll = c.smaps_rollup()

            print('clones (ms since exec)')
            hdr = (f'  {"clone":<7} {"QMP reply":>10} {"restored":>10} '
                   f'{"running":>10} {"pong":>10}  {"ping":<5} {"sum":<5} '
                   f'genid')
            print(hdr)
            for c in clones:
                print(f'  {c.name:<7} {vmt.ms(c.since_exec_ns("qmp")):10.1f} '
                      f'{vmt.ms(c.since_exec_ns("restored")):10.1f} '
                      f'{vmt.ms(c.since_exec_ns("running")):10.1f} '
                      f'{vmt.ms(c.since_exec_ns("pong")):10.1f}  '
                      f'{"ok" if c.ping_ok else "FAIL":<5} '
                      f'{"match" if c.sum_ok else "DIFF":<5} '
                      f'driver={c.genid["driver"]} '
                      f'reseeds={c.genid["reseeds"]}')
            print()
            print('memory (MiB); guest RAM = mapping of template.ram; '
                  'process Pss from smaps_rollup')
            print(f'  {"vm":<9} {"RAM Rss":>8} {"RAM priv":>9} '
                  f'{"RAM shared":>10} {"proc Rss":>9} {"proc Pss":>9}')

            def row(name, m, r):
                print(f'  {name:<9} {kib(m["Rss"]):>8} '
                      f'{kib(m["Private_Clean"] + m["Private_Dirty"]):>9} '
                      f'{kib(m["Shared_Clean"] + m["Shared_Dirty"]):>10} '
                      f'{kib(r["Rss"]):>9} {kib(r["Pss"]):>9}')
            row('template', tmem, troll)
            for c in clones:
                row(c.name, c.mem, c.roll)
            print('  (template row measured before its save, as the only '
                  'user of the file)')
        finally:
            for c in clones:
                c.kill()
        if vmt.sha256_file(ram) != ram_sha:
            print('error: template RAM file changed', file=sys.stderr)
            ok = False
    print()
    print(f'demo: {"ok" if ok else "FAILED"} ({len(clones)} clones, '
          f'mode {mode}, accel {accel})')
    return 0 if ok else 1


if __name__ == '__main__':
    try:
        sys.exit(main())
    except vmt.VMTError as e:
        print(f'demo: error: {e}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
