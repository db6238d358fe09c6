#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
What a mapped-ram-load=map restore costs against the file's data extents.

  map_extents.py --qemu LABEL=QEMU [--qemu LABEL=QEMU ...]
                 [--sizes 256M,1G,4G] [--runs 5] [--data-mib 64]

For each RAM size and each layout of the guest's data, every QEMU given
saves a running VM (-M pc, no devices: the firmware finds nothing to
boot) whose RAM holds --data-mib MiB of data, written at reset by a
generic loader at 64 MiB:

  few    the data in one run of pages: a handful of data extents
  many   the same amount of data as every other 4 KiB page: one data
         extent per page

to a mapped-ram file.  Then each QEMU restores its own file with
mapped-ram-load=map and with copy (for reference), and the last QEMU also
restores the first one's file with map (a file without this series'
extension record, as upstream writes them, which the loader walks).  A
restore is a VM started with -incoming defer; the time runs from
migrate-incoming to the RESUME event (the VM runs).  The map time of the
pc.ram block comes from the trace event mapped_ram_map_block, with the
number of data extents the loader walked (only QEMUs whose event says
so).  Prints a table of medians over --runs restores, after one run that
is not counted.  A measurement, not a test: it asserts nothing about
time.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PAGE = 4096
DATA_ADDR = 64 << 20
LAYOUTS = ('few', 'many')


def parse_size(s):
    units = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
    return int(s[:-1]) * units[s[-1].upper()] if s[-1].isalpha() else int(s)


def vm_args(size):
    return ['-M', 'pc', '-m', size, '-nodefaults', '-display', 'none',
            '-accel', 'tcg']


def make_blob(path, layout, data_mib):
    """The guest's data: --data-mib MiB, in one run or every other page."""
    pages = (data_mib << 20) // PAGE
    with open(path, 'wb') as f:
        for n in range(pages):
            f.write(bytes([(n % 251) + 1]) * PAGE)
            if layout == 'many' and n + 1 < pages:
                f.write(bytes(PAGE))


class Qmp:
    """QEMU with QMP on stdio."""

    def __init__(self, args):
        self.proc = subprocess.Popen(args + ['-qmp', 'stdio'],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.read()                     # greeting
        self.cmd('qmp_capabilities')

    def read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError('QEMU exited: ' + self.proc.stderr.read())
        return json.loads(line)

    def send(self, name, **arguments):
        msg = {'execute': name}
        if arguments:
            msg['arguments'] = arguments
        self.proc.stdin.write(json.dumps(msg) + '\n')
        self.proc.stdin.flush()

    def cmd(self, name, **arguments):
        self.send(name, **arguments)
        while True:
            r = self.read()
            if 'return' in r:
                return r['return']
            if 'error' in r:
                raise RuntimeError(f'{name}: {r["error"]["desc"]}')

    def wait_event(self, name, status=None):
        while True:
            r = self.read()
            if 'error' in r:
                raise RuntimeError(r['error']['desc'])
            if r.get('event') == 'MIGRATION' and \
               r['data']['status'] == 'failed':
                raise RuntimeError('migration failed: ' +
                                   self.proc.stderr.read())
            if r.get('event') == name and \
               (status is None or r['data'].get('status') == status):
                return r

    def close(self):
        self.proc.kill()
        self.proc.wait()


def save(qemu, size, blob, path):
    vm = Qmp([qemu] + vm_args(size) + ['-device',
             f'loader,file={blob},addr={DATA_ADDR:#x}'])
    try:
        vm.cmd('migrate-set-capabilities', capabilities=[
            {'capability': c, 'state': True} for c in ('events', 'mapped-ram')])
        vm.cmd('migrate-set-parameters', **{'max-bandwidth': 1 << 40})
        vm.cmd('migrate', uri='file:' + path)
        vm.wait_event('MIGRATION', 'completed')
    finally:
        vm.close()


def data_extents(path):
    """The number of data extents of @path (SEEK_DATA/SEEK_HOLE)."""
    n = off = 0
    with open(path, 'rb') as f:
        fd = f.fileno()
        while True:
            try:
                off = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                return n
            off = os.lseek(fd, off, os.SEEK_HOLE)
            n += 1


def restore(qemu, size, path, mode, trace):
    """One restore; returns (ms to RESUME, pc.ram map us, extents walked)."""
    vm = Qmp([qemu] + vm_args(size) + ['-incoming', 'defer',
             '-trace', 'mapped_ram_map_block', '-D', trace])
    try:
        vm.cmd('migrate-set-capabilities', capabilities=[
            {'capability': c, 'state': True} for c in ('events', 'mapped-ram')])
        vm.cmd('migrate-set-parameters', **{'mapped-ram-load': mode})
        t0 = time.monotonic()
        vm.send('migrate-incoming', uri='file:' + path)
        vm.wait_event('RESUME')
        dt = (time.monotonic() - t0) * 1000
    finally:
        vm.close()
    us = walked = None
    with open(trace) as f:
        line = re.search(r'block pc\.ram mapped .*', f.read())
    os.unlink(trace)
    if line:
        us = int(re.search(r'in (\d+) us', line.group(0)).group(1))
        m = re.search(r'data extents walked (\d+)', line.group(0))
        walked = int(m.group(1)) if m else None
    return dt, us, walked


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--qemu', action='append', required=True,
                    help='LABEL=PATH; may be given more than once')
    ap.add_argument('--sizes', default='256M,1G,4G')
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--data-mib', type=int, default=64)
    ap.add_argument('--tmp', help='directory for the files (default: a '
                    'private one under the system temporary directory)')
    o = ap.parse_args()
    qemus = [q.split('=', 1) for q in o.qemu]
    # Clean up on SIGTERM too: the finally clauses run.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))

    tmp = tempfile.mkdtemp(prefix='vmt-map-extents-', dir=o.tmp)
    rows = []
    try:
        for size in o.sizes.split(','):
            if parse_size(size) < DATA_ADDR + (2 * o.data_mib << 20):
                sys.exit(f'map_extents: {size} is too small for the data')
            for layout in LAYOUTS:
                blob = os.path.join(tmp, 'data.bin')
                make_blob(blob, layout, o.data_mib)
                files = {}
                for label, qemu in qemus:
                    files[label] = os.path.join(tmp, f'{label}.fixed')
                    save(qemu, size, blob, files[label])
                os.unlink(blob)
                extents = data_extents(files[qemus[0][0]])
                loads = [(label, qemu, label, mode) for mode in ('map', 'copy')
                         for label, qemu in qemus]
                if len(qemus) > 1:
                    loads.append(qemus[-1] + [qemus[0][0], 'map'])
                res = {i: [] for i in range(len(loads))}
                for run in range(o.runs + 1):
                    for i, (label, qemu, flabel, mode) in enumerate(loads):
                        r = restore(qemu, size, files[flabel], mode,
                                    os.path.join(tmp, 'trace'))
                        if run:
                            res[i].append(r)
                for i, (label, qemu, flabel, mode) in enumerate(loads):
                    rows.append((size, layout, extents, label, flabel, mode,
                                 med([r[0] for r in res[i]]),
                                 med([r[1] for r in res[i]]),
                                 med([r[2] for r in res[i]])))
                    print('map_extents: %s %s %s loads %s (%s): %.1f ms' %
                          (size, layout, label, flabel, mode, rows[-1][6]),
                          file=sys.stderr, flush=True)
                for f in files.values():
                    os.unlink(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f'Medians of {o.runs} restores; {o.data_mib} MiB of guest data; '
          'extents: data extents of the file')
    print('| RAM | data | extents | QEMU | file of | load | '
          'migrate-incoming -> running (ms) | pc.ram mapped (ms) | '
          'extents walked |')
    print('|---|---|---|---|---|---|---|---|---|')
    for (size, layout, extents, label, flabel, mode, dt, us,
         walked) in rows:
        print('| %s | %s | %d | %s | %s | %s | %.1f | %s | %s |' %
              (size, layout, extents, label, flabel, mode, dt,
               '%.2f' % (us / 1000) if us is not None and mode == 'map'
               else '-', '%d' % walked if walked is not None else '-'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
