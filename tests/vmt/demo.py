#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
VMT demo: boot a template VM, save it, start instant clones from it.

  /usr/bin/python3 tests/vmt/demo.py [--qemu PATH] [--python DIR]
                                     [--mode ignore-shared|bypass|map|lazy|copy]
                                     [--clones N] [--mib N]

The template runs the bundled test guest (tests/guest/) with 256 MiB of
RAM; the guest agent (docs/devel/vmt-guest-agent.rst) writes some data,
then the template is saved and clones are started from what was saved,
one after the other, all kept running.  Two ways to make a template
(paths), each in two modes:

shared RAM file: the template's RAM is a share=on memory-backend-file on
/dev/shm and only its device state is saved; each clone maps the RAM file
with share=off (copy on write) and loads the state.

  ignore-shared  upstream QEMU: capability x-ignore-shared on both sides,
                 clones start with -S -incoming defer, then
                 migrate-incoming, then cont.
  bypass         capability bypass-shared-memory on the template only;
                 clones start with a plain -incoming "exec:cat STATE".

template from any VM: the template has ordinary anonymous RAM (plain -m)
and is saved, RAM included, with upstream's mapped-ram capability to one
fixed-ram file; clones start with -global migration.mapped-ram=on
-incoming file:FILE.

  map            -global migration.mapped-ram-load=map: each RAM block's
                 page region of the file is mapped copy-on-write over
                 guest RAM; clones share the clean pages.
  lazy           -global migration.mapped-ram-load=lazy: the guest runs at
                 once, its pages are read on fault through userfaultfd
                 and by a background fill.  The first clone's faults are
                 saved as a working set (mapped-ram-save-working-set),
                 which the next clones place first
                 (-global migration.mapped-ram-working-set=FILE).
  copy           upstream's load: the pages are read into anonymous RAM.

Without --mode the demo runs bypass (ignore-shared on a QEMU without
bypass-shared-memory), map and lazy (when the QEMU has them), and
prints one table per path and a summary side by side.  For every path it
prints the template's boot and save times, the size of the files the
clones need (apparent and allocated), for every clone the times from exec
to the first QMP reply, to the end of the restore, to the guest running
and to the agent's answer, and the memory of the clone's guest-RAM mapping
(private vs shared, /proc/PID/smaps) and of the whole process (PSS).
"""

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vmt  # noqa: E402
import demo_tool  # noqa: E402

# every VM gets a VM generation ID device: each clone sees a new ID
DEVICES = ['-device', 'vmgenid']

TITLE = {
    'ignore-shared': 'shared RAM file, upstream x-ignore-shared',
    'bypass': 'shared RAM file, bypass-shared-memory',
    'map': 'template from any VM: fixed-ram file, mapped-ram-load=map',
    'lazy': 'template from any VM: fixed-ram file, mapped-ram-load=lazy',
    'copy': 'template from any VM: fixed-ram file, mapped-ram-load=copy '
            '(upstream)',
}


def mib(kib):
    return f'{kib / 1024:.1f}'


def mib_b(nbytes):
    return f'{nbytes / (1 << 20):.1f}'


def probe_modes(binary):
    """{mode: None if usable, else the reason}, from a QEMU without guest."""
    with vmt.VM(binary, name='probe', with_guest=False,
                extra_args=['-S']) as vm:
        vm.launch(connect_agent=False)
        return {m: vmt.mode_unsupported(vm, m) for m in vmt.MODES}


def default_modes(support):
    modes = ['bypass' if support['bypass'] is None else 'ignore-shared']
    for m in ('map', 'lazy'):
        if support[m] is None:
            modes.append(m)
    return modes


class PathRun:
    """One path: a template, its save and opts.clones clones."""

    def __init__(self, mode, opts):
        self.mode = mode
        self.opts = opts
        self.ok = True
        self.clones = []
        self.tmp = vmt.TempDir(prefix=f'vmt-demo-{mode}-')
        if mode in vmt.SHARED_MODES:
            self.ram = self.tmp.join('template.ram')
            self.state = self.tmp.join('state')
            # the files a clone needs, and the one clones must not change
            self.files = [('template.ram (RAM)', self.ram),
                          ('state', self.state)]
            self.watched = self.ram
        else:
            self.ram = None
            self.state = self.tmp.join('template.fixed')
            self.files = [('template.fixed', self.state)]
            self.watched = self.state

    def run(self):
        try:
            self._template()
            self._clones()
        finally:
            for c in self.clones:
                c.kill()
            self.tmp.cleanup()

    def _template(self):
        o = self.opts
        with vmt.VM(name='template', tmpdir=self.tmp.path,
                    extra_args=vmt.template_args(self.ram, self.mode) +
                    DEVICES) as t:
            t.launch()
            why = vmt.mode_unsupported(t, self.mode)
            if why:
                raise vmt.VMTError(f'mode {self.mode}: {why}')
            t.wait_banner()
            w0 = vmt.now_ns()
            ans = t.agent.write(o.seed, o.mib)
            self.write_ns = vmt.now_ns() - w0
            if ans != f'ok write {o.mib}':
                raise vmt.VMTError(f'template write failed: {ans}')
            self.sum = t.agent.sum()
            gen = t.agent.genid()
            if gen['driver'] == '1':
                # Linux only reseeds on a VM fork once its crng is up
                t.agent.wait_crng()
            if self.mode in vmt.SHARED_MODES:
                self.tmem = t.smaps(path=self.ram)
            else:
                self.tmem = t.smaps(anon_size=vmt.parse_size(t.mem))
            self.troll = t.smaps_rollup()
            s0 = vmt.now_ns()
            self.save_info = vmt.save_template(t, self.state, self.mode)
            self.save_ns = vmt.now_ns() - s0
            t.shutdown()
        self.template = t
        self.sizes = [(name, vmt.file_sizes(path))
                      for name, path in self.files]
        self.sha = vmt.sha256_file(self.watched)

    def _clones(self):
        ws = self.tmp.join('template.ws')
        for i in range(self.opts.clones):
            extra = []
            if self.mode == 'lazy' and i > 0:
                extra = ['-global', f'migration.mapped-ram-working-set={ws}']
            c = vmt.VM(name=f'clone{i}', tmpdir=self.tmp.path,
                       extra_args=vmt.clone_args(self.ram, self.state,
                                                 self.mode) + extra + DEVICES)
            self.clones.append(c)
            c.launch()
            vmt.restore_clone(c, self.state, self.mode)
            c.wait_pong()
            if self.mode == 'lazy':
                c.lazy = c.wait_event('MAPPED_RAM_LAZY_LOADED')['data']
                if i == 0:
                    c.cmd('mapped-ram-save-working-set', filename=ws)
            c.sum_ok = c.agent.sum() == self.sum
            c.ping_ok = c.agent.ping() == 'pong'
            c.genid = c.agent.genid()
            self.ok = self.ok and c.sum_ok and c.ping_ok
        # memory once all clones run (sharing shows in Pss)
        for c in self.clones:
            c.mem = vmt.clone_ram(c, self.state, self.ram, self.mode)
            c.roll = c.smaps_rollup()
        self.file_ok = vmt.sha256_file(self.watched) == self.sha
        self.ok = self.ok and self.file_ok

    # -- output
    def print(self):
        o, t = self.opts, self.template
        print(f'== {self.mode}: {TITLE[self.mode]}')
        print('template')

        def line(label, ns):
            print(f'  {label:<27}{vmt.ms(ns):9.1f} ms')
        line('exec -> QMP reply', t.since_exec_ns('qmp'))
        line('exec -> agent banner', t.since_exec_ns('banner'))
        line(f'guest write {o.mib} MiB (seed {o.seed})', self.write_ns)
        how = ('stop .. completed' if self.mode == 'ignore-shared'
               else 'migrate .. completed')
        line(f'save ({how})', self.save_ns)
        si = self.save_info
        ram = si.get('ram', {})
        print(f'    QEMU: total {si.get("total-time", "?")} ms, downtime '
              f'{si.get("downtime", "?")} ms, '
              f'{ram.get("dirty-sync-count", "?")} dirty syncs, '
              f'{mib_b(ram.get("transferred", 0))} MiB of RAM written')
        print(f'  {"files for clones (MiB)":<24} {"apparent":>11} '
              f'{"allocated":>11}')
        for name, (app, alloc) in self.sizes:
            print(f'    {name:<22} {mib_b(app):>11} {mib_b(alloc):>11}')
        print(f'  data sum                   {self.sum[:16]}...')
        print()
        print('clones (ms since exec)')
        print(f'  {"clone":<9} {"QMP reply":>9} {"restored":>9} '
              f'{"running":>9} {"pong":>9}  {"ping":<4} {"sum":<5} genid')
        for c in self.clones:
            print(f'  {c.name:<9} '
                  f'{vmt.ms(c.since_exec_ns("qmp")):9.1f} '
                  f'{vmt.ms(c.since_exec_ns("restored")):9.1f} '
                  f'{vmt.ms(c.since_exec_ns("running")):9.1f} '
                  f'{vmt.ms(c.since_exec_ns("pong")):9.1f}  '
                  f'{"ok" if c.ping_ok else "FAIL":<4} '
                  f'{"match" if c.sum_ok else "DIFF":<5} '
                  f'driver={c.genid["driver"]} '
                  f'reseeds={c.genid["reseeds"]}')
        print()
        print('memory (MiB): guest RAM mapping, process (smaps_rollup)')
        print(f'  {"vm":<9} {"RAM Rss":>8} {"RAM priv":>9} {"(anon)":>9} '
              f'{"RAM shared":>10} {"proc Rss":>9} {"proc Pss":>9}')

        def row(name, m, r):
            print(f'  {name:<9} {mib(m["Rss"]):>8} '
                  f'{mib(m["Private_Clean"] + m["Private_Dirty"]):>9} '
                  f'{mib(m["Anonymous"]):>9} '
                  f'{mib(m["Shared_Clean"] + m["Shared_Dirty"]):>10} '
                  f'{mib(r["Rss"]):>9} {mib(r["Pss"]):>9}')
        row('template', self.tmem, self.troll)
        for c in self.clones:
            row(c.name, c.mem, c.roll)
        for note in self.ram_notes():
            print(f'  {note}')
        if self.mode == 'lazy':
            print()
            print('lazy loads (MAPPED_RAM_LAZY_LOADED): clone0 ran without '
                  'a working set and saved its own; the others were given '
                  'it')
            print(f'  {"clone":<9} {"complete (ms)":>13} {"pages read":>10} '
                  f'{"zeroed":>7} {"prefetched":>10} {"faults":>7}')
            for c in self.clones:
                e = c.lazy
                print(f'  {c.name:<9} {e["total-ms"]:>13} '
                      f'{e["pages-read"]:>10} {e["pages-zeroed"]:>7} '
                      f'{e["pages-prefetched"]:>10} {e["faults"]:>7}')
        if not self.file_ok:
            print(f'  error: {os.path.basename(self.watched)} changed '
                  'while clones ran')
        print()

    def ram_notes(self):
        notes = ['template: measured before its save, alone']
        if self.mode in vmt.SHARED_MODES:
            notes.append('guest RAM: the mapping of template.ram')
        elif self.mode == 'map':
            notes += ['guest RAM: template: anonymous; clones: the '
                      'mappings of template.fixed',
                      '(RAM and ROM blocks)']
        else:
            notes.append('guest RAM: anonymous, the size of the RAM')
        if self.mode != 'copy':
            notes.append('(anon): anonymous pages of the mapping; in a '
                         'clone, copies made on write')
        return notes

    def summary(self):
        """Rows of the side by side summary: (label, value)."""
        # medians: robust against one clone delayed by a busy host
        def median_ms(key):
            return statistics.median(vmt.ms(c.since_exec_ns(key))
                                     for c in self.clones)

        def median_kib(f):
            return statistics.median(f(c) for c in self.clones)
        return [
            ('save (ms)', f'{vmt.ms(self.save_ns):.1f}'),
            ('files apparent (MiB)',
             mib_b(sum(a for _, (a, _) in self.sizes))),
            ('files allocated (MiB)',
             mib_b(sum(b for _, (_, b) in self.sizes))),
            ('clone exec -> QMP reply (ms)', f'{median_ms("qmp"):.1f}'),
            ('clone exec -> restored (ms)', f'{median_ms("restored"):.1f}'),
            ('clone exec -> pong (ms)', f'{median_ms("pong"):.1f}'),
            ('clone guest RAM private (MiB)',
             mib(median_kib(lambda c: c.mem['Private_Clean'] +
                          c.mem['Private_Dirty']))),
            ('  of which anonymous (MiB)',
             mib(median_kib(lambda c: c.mem['Anonymous']))),
            ('clone guest RAM shared (MiB)',
             mib(median_kib(lambda c: c.mem['Shared_Clean'] +
                          c.mem['Shared_Dirty']))),
            ('clone process Pss (MiB)',
             mib(median_kib(lambda c: c.roll['Pss']))),
            ('clones ok', f'{sum(c.sum_ok and c.ping_ok for c in self.clones)}'
                          f'/{len(self.clones)}'),
        ]


def print_summary(runs):
    rows = [r.summary() for r in runs]
    print('summary: medians over the clones of each path')
    print(f'  {"":<30}' + ''.join(f' {r.mode:>13}' for r in runs))
    for i, (label, _) in enumerate(rows[0]):
        print(f'  {label:<30}' + ''.join(f' {row[i][1]:>13}' for row in rows))
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--qemu', help='QEMU binary (default: $VMT_QEMU or '
                    'build/qemu/qemu-system-x86_64)')
    ap.add_argument('--python', help="directory with QEMU's python 'qemu' "
                    'package')
    ap.add_argument('--mode', choices=vmt.MODES,
                    help='run one mode only (default: bypass or '
                    'ignore-shared, and map when available)')
    ap.add_argument('--clones', type=int, default=3)
    ap.add_argument('--mib', type=int, default=4,
                    help='MiB the template guest writes before the save')
    ap.add_argument('--seed', type=int, default=7)
    ap.add_argument('--no-build-guest', action='store_true')
    ap.add_argument('--no-tool', action='store_true',
                    help='leave out the qemu-template part')
    opts = ap.parse_args()
    if opts.clones < 1:
        ap.error('--clones must be at least 1')

    if opts.qemu:
        os.environ['VMT_QEMU'] = os.path.abspath(opts.qemu)
    if opts.python:
        os.environ['VMT_PYTHON'] = os.path.abspath(opts.python)
    binary = vmt.qemu_binary()
    pydir = vmt.python_dir()
    if not opts.no_build_guest:
        vmt.build_guest()
    accel = vmt.select_accel(binary)
    support = probe_modes(binary)

    print(f'QEMU:        {binary}')
    print(f'python:      {pydir}')
    print(f'accelerator: {accel}')
    print(f'guest:       {vmt.guest_dir()} ({vmt.GUEST_MEM} RAM)')
    if opts.mode:
        if support[opts.mode]:
            print(f'error: --mode {opts.mode}: {support[opts.mode]}',
                  file=sys.stderr)
            return 2
        modes = [opts.mode]
    else:
        modes = default_modes(support)
    print(f'paths:       {", ".join(modes)}')
    for m in ('bypass', 'map', 'lazy'):
        if m not in modes and not opts.mode and support[m]:
            print(f'             ({m} not run: {support[m]})')
    print()

    runs = []
    for mode in modes:
        r = PathRun(mode, opts)
        runs.append(r)
        r.run()
        r.print()
    if len(runs) > 1:
        print_summary(runs)
    ok = all(r.ok for r in runs)
    tool = None
    if not opts.no_tool and not opts.mode:
        tool = demo_tool.run(binary, accel, opts.clones)
        ok = ok and tool is not False
    print(f'demo: {"ok" if ok else "FAILED"} (paths {", ".join(modes)}'
          f'{", qemu-template" if tool is not None else ""}; '
          f'{opts.clones} clones each, accel {accel})')
    return 0 if ok else 1


if __name__ == '__main__':
    try:
        sys.exit(main())
    except vmt.VMTError as e:
        print(f'demo: error: {e}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        vmt.cleanup_all()
        sys.exit(128 + (vmt.terminated_by or 2))
