#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
Where an idle clone's memory goes: one clone per mode, every mapping of
the process (/proc/PID/smaps) put in one class, by cause.

  /usr/bin/python3 tests/vmt/breakdown.py [--qemu PATH] [--mode M]...
                                          [--idle S] [--json FILE]

For each mode (default bypass and map) a template of the bundled guest
boots and is saved, one clone starts from it, answers the agent, idles
for --idle seconds (default 10), then its mappings are classified:

  guest RAM        the guest RAM block's host range (the template's RAM
                   file, the fixed-ram file's mappings, anonymous pages)
  other RAM blocks ROMs, firmware, VGA memory, ACPI tables (each RAM
                   block by its host address, from "info ramblock")
  kernel image     the -kernel file, mapped or as an anonymous copy (an
                   anonymous mapping of the image's size)
  initrd           the same for -initrd
  TCG cache        the translation buffer (anonymous and executable)
  QEMU code        the QEMU binary's executable mapping
  QEMU data        the binary's other mappings (data, relocations, bss)
  libraries        shared libraries
  thread stacks    [stack] and anonymous 8 MiB mappings (thread stacks)
  heap, other anon [heap], malloc arenas and other anonymous memory
  other files      any other file mapping

Per class: Rss, Pss, private (Private_Clean + Private_Dirty) and
anonymous, in MiB.  Measures only.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vmt  # noqa: E402
from bench import smaps_entries, is_tcg_buffer  # noqa: E402

CLASSES = ('guest RAM', 'other RAM blocks', 'kernel image', 'initrd',
           'TCG cache', 'QEMU code', 'QEMU data', 'libraries',
           'thread stacks', 'heap, other anon', 'other files')
FIELDS = ('Rss', 'Pss', 'private', 'Anonymous')
GUEST_RAM_BLOCKS = ('pc.ram', 'mem0')
STACK_BYTES = 8 << 20


def ramblocks(vm):
    """{name: (hva, bytes)} from HMP info ramblock."""
    out = vm.cmd('human-monitor-command', **{'command-line':
                                             'info ramblock'})
    blocks = {}
    for line in out.splitlines()[1:]:
        f = line.split()
        hexes = [int(x, 16) for x in f if x.startswith('0x')]
        if len(hexes) == 4:         # offset, used, total, HVA
            blocks[f[0]] = (hexes[3], hexes[2])
    return blocks


def near(size, want):
    """An anonymous copy of a file of want bytes (malloc adds a header
    and rounds to pages)."""
    return want <= size <= want + 2 * 4096


def classify(pid, binary, kernel, initrd, blocks):
    """{class: {field: KiB}} for every mapping of pid."""
    ksize = os.path.getsize(kernel)
    isize = os.path.getsize(initrd)
    binary = os.path.realpath(binary)
    ram = [r for n, r in blocks.items() if n in GUEST_RAM_BLOCKS]
    other = [r for n, r in blocks.items() if n not in GUEST_RAM_BLOCKS]
    res = {c: dict.fromkeys(FIELDS, 0) for c in CLASSES}

    def inside(m, ranges):
        return any(h <= m['start'] < h + n for h, n in ranges)

    for m in smaps_entries(pid):
        name = m['name']
        anon = name == '' or name.startswith('[anon')
        if inside(m, ram):
            c = 'guest RAM'
        elif inside(m, other):
            c = 'other RAM blocks'
        elif name == kernel or (anon and near(m['bytes'], ksize)):
            c = 'kernel image'
        elif name == initrd or (anon and near(m['bytes'], isize)):
            c = 'initrd'
        elif is_tcg_buffer(m):
            c = 'TCG cache'
        elif name.split(' (deleted)')[0] == binary:
            c = 'QEMU code' if 'x' in m['perms'] else 'QEMU data'
        elif '.so' in name:
            c = 'libraries'
        elif name == '[stack]' or (anon and m['bytes'] == STACK_BYTES):
            c = 'thread stacks'
        elif anon or name == '[heap]':
            c = 'heap, other anon'
        else:
            c = 'other files'
        r = res[c]
        r['Rss'] += m.get('Rss', 0)
        r['Pss'] += m.get('Pss', 0)
        r['private'] += m.get('Private_Clean', 0) + m.get('Private_Dirty', 0)
        r['Anonymous'] += m.get('Anonymous', 0)
    return res


def clone_breakdown(binary, mode, idle, tmp):
    """Boot a template, save it, start one clone; classify the clone."""
    state = os.path.join(tmp.path, f'{mode}.state')
    ram = os.path.join(tmp.path, f'{mode}.ram')
    extra = ['-device', 'vmgenid']
    if mode in vmt.SHARED_MODES:
        extra = vmt.ram_backend_args(ram, True) + extra
    with vmt.VM(binary, name=f'{mode}-template', tmpdir=tmp.path,
                extra_args=extra) as t:
        t.launch()
        t.wait_banner()
        vmt.save_template(t, state, mode)
        t.shutdown()
    c = vmt.VM(binary, name=f'{mode}-clone', tmpdir=tmp.path,
               extra_args=vmt.clone_args(ram, state, mode) +
               ['-device', 'vmgenid'])
    with c:
        c.launch()
        vmt.restore_clone(c, state, mode)
        c.wait_pong()
        time.sleep(idle)
        kernel, initrd = vmt.guest_files()
        return classify(c.pid, binary, kernel, initrd, ramblocks(c))


def table(results):
    modes = list(results)
    lines = [f'{"class":<18}' + ''.join(
        f'{m + " " + f:>16}' for m in modes for f in ('Pss', 'private',
                                                      'anon'))]
    total = {m: dict.fromkeys(FIELDS, 0) for m in modes}
    for c in CLASSES:
        row = f'{c:<18}'
        for m in modes:
            r = results[m][c]
            for f in FIELDS:
                total[m][f] += r[f]
            row += ''.join(f'{r[f] / 1024:>16.1f}'
                           for f in ('Pss', 'private', 'Anonymous'))
        lines.append(row)
    lines.append(f'{"total":<18}' + ''.join(
        f'{total[m][f] / 1024:>16.1f}' for m in modes
        for f in ('Pss', 'private', 'Anonymous')))
    return '\n'.join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--qemu', help='QEMU binary (default: $VMT_QEMU or '
                    'build/qemu/qemu-system-x86_64)')
    ap.add_argument('--mode', action='append', choices=vmt.MODES)
    ap.add_argument('--idle', type=float, default=10.0)
    ap.add_argument('--json', help='also write the figures (KiB) here')
    o = ap.parse_args()
    binary = vmt.qemu_binary(o.qemu)
    modes = o.mode or ['bypass', 'map']
    print(f'breakdown: {binary}, accel {vmt.select_accel(binary)}, guest '
          f'{vmt.guest_dir()}, idle {o.idle:g} s (MiB)')
    results = {}
    with vmt.TempDir(prefix='vmt-breakdown-') as tmp:
        for mode in modes:
            results[mode] = clone_breakdown(binary, mode, o.idle, tmp)
    print(table(results))
    if o.json:
        with open(o.json, 'w') as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except vmt.VMTError as e:
        vmt.cleanup_all()
        print(f'breakdown: error: {e}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        vmt.cleanup_all()
        sys.exit(130)
