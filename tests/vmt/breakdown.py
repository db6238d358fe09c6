#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
Where an idle clone's memory goes: one clone per mode, every mapping of
the process (/proc/PID/smaps) put in one class, by cause.

  /usr/bin/python3 tests/vmt/breakdown.py [--qemu PATH] [--mode M]...
                                          [--idle S] [--json FILE]
                                          [--guest linux|bootblock]

For each mode (default bypass and map) a template of the bundled guest
boots and is saved, one clone starts from it, answers the agent, idles
for --idle seconds (default 10), then its mappings are classified.
--guest bootblock uses the qtests' guest instead (upstream's migration
boot sector, from the source tree: it increments a byte in every page
of its first 100 MiB, forever), for the accelerators where the Linux
guest does not boot; its clones run their loop instead of answering an
agent, and their guest RAM is what the loop writes.  The accelerator is
$VMT_ACCEL's, else the probe's (see vmt.py).  Classes:

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
    """{class: {field: KiB}} for every mapping of pid; kernel and initrd
    may be None (a VM without -kernel)."""
    ksize = os.path.getsize(kernel) if kernel else -1
    isize = os.path.getsize(initrd) if initrd else -1
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


BOOTBLOCK_H = 'tests/qtest/migration/i386/a-b-bootblock.h'
BOOTBLOCK_RUNS_S = 3.0      # SeaBIOS and the loop's first passes


def bootblock_file(path):
    """Write the qtests' x86 boot sector (x86_bootsect[] of upstream's
    a-b-bootblock.h, in build/src) to path; return the -drive arguments
    that boot it as the qtests do."""
    src = os.path.join(vmt.TOPDIR, 'build', 'src', BOOTBLOCK_H)
    try:
        with open(src) as f:
            text = f.read()
    except OSError as e:
        raise vmt.VMTError(f'{src}: {e.strerror} (run make tree)') from None
    body = text[text.index('x86_bootsect[]'):]
    body = body[body.index('{') + 1:body.index('}')]
    code = bytes(int(x, 16) for x in body.replace(',', ' ').split())
    if len(code) != 512 or code[510:] != b'\x55\xaa':
        raise vmt.VMTError(f'{src}: not a 512-byte boot sector')
    with open(path, 'wb') as f:
        f.write(code)
    return ['-drive', f'if=none,id=d0,file={path},format=raw',
            '-device', 'ide-hd,drive=d0,secs=1,cyls=1,heads=1']


def guest_byte(vm, addr):
    out = vm.cmd('human-monitor-command',
                 **{'command-line': f'xp /1bx {addr:#x}'})
    return int(out.split(':')[1].split()[0], 16)


def clone_breakdown(binary, mode, idle, tmp, guest='linux'):
    """Boot a template, save it, start one clone; classify the clone."""
    state = os.path.join(tmp.path, f'{mode}.state')
    ram = os.path.join(tmp.path, f'{mode}.ram')
    linux = guest == 'linux'
    dev = ['-device', 'vmgenid'] if linux else \
        bootblock_file(os.path.join(tmp.path, 'bootsect'))
    extra = dev
    if mode in vmt.SHARED_MODES:
        extra = vmt.ram_backend_args(ram, True) + dev
    with vmt.VM(binary, name=f'{mode}-template', tmpdir=tmp.path,
                with_guest=linux, extra_args=extra) as t:
        t.launch(connect_agent=linux)
        if linux:
            t.wait_banner()
        else:
            time.sleep(BOOTBLOCK_RUNS_S)
        vmt.save_template(t, state, mode)
        t.shutdown()
    c = vmt.VM(binary, name=f'{mode}-clone', tmpdir=tmp.path,
               with_guest=linux,
               extra_args=vmt.clone_args(ram, state, mode) + dev)
    with c:
        c.launch(connect_agent=linux)
        vmt.restore_clone(c, state, mode)
        if linux:
            c.wait_pong()
            time.sleep(idle)
            kernel, initrd = vmt.guest_files()
        else:
            # the loop runs on in the clone: the byte at 1 MiB moves
            before = guest_byte(c, 1 << 20)
            time.sleep(idle)
            if guest_byte(c, 1 << 20) == before:
                raise vmt.VMTError(f'{mode}: the boot block does not run '
                                   'in the clone')
            kernel = initrd = None
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
    ap.add_argument('--guest', choices=('linux', 'bootblock'),
                    default='linux')
    o = ap.parse_args()
    binary = vmt.qemu_binary(o.qemu)
    modes = o.mode or ['bypass', 'map']
    guest = vmt.guest_dir() if o.guest == 'linux' else 'boot block'
    print(f'breakdown: {binary}, accel {vmt.select_accel(binary)}, guest '
          f'{guest}, idle {o.idle:g} s (MiB)')
    results = {}
    with vmt.TempDir(prefix='vmt-breakdown-') as tmp:
        for mode in modes:
            results[mode] = clone_breakdown(binary, mode, o.idle, tmp,
                                            o.guest)
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
