#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
What the template identity check costs, on save and on load.

  identity_cost.py [--qemu QEMU] [--sizes 256M,4G] [--runs 3]

For each RAM size and each bypass-shared-memory-check (sampled, full): a
stopped VM whose RAM is a memory file in /dev/shm (filled with data, so
that the file has no holes) is saved with bypass-shared-memory, then a
clone loads it.  The times come from QEMU's own trace events
(template_identity_compute on the source, template_identity_verify on the
clone); the save's downtime from query-migrate.  Prints a table of
medians.  A measurement, not a test: it asserts nothing about time.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))


def parse_size(s):
    units = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
    return int(s[:-1]) * units[s[-1].upper()] if s[-1].isalpha() else int(s)


def vm_args(mem, size, share):
    return ['-M', 'pc,memory-backend=mem0', '-m', size, '-object',
            f'memory-backend-file,id=mem0,size={size},mem-path={mem},'
            f'share={share}', '-nodefaults', '-display', 'none',
            '-accel', 'tcg']


def run_qmp(args, cmds, wait_event=None):
    """Run QEMU with QMP on stdio, send @cmds, wait for a MIGRATION event
    with status @wait_event; returns (replies, stderr)."""
    proc = subprocess.Popen(args + ['-qmp', 'stdio'], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    replies = []
    try:
        for c in cmds:
            proc.stdin.write(json.dumps(c) + '\n')
        proc.stdin.flush()
        for line in proc.stdout:
            msg = json.loads(line)
            replies.append(msg)
            if 'error' in msg:
                raise RuntimeError(msg['error']['desc'])
            if msg.get('event') == 'MIGRATION' and \
               msg['data']['status'] in ('completed', 'failed'):
                if wait_event and msg['data']['status'] == wait_event:
                    proc.stdin.write(json.dumps(
                        {'execute': 'query-migrate'}) + '\n')
                    proc.stdin.flush()
                    replies.append(json.loads(proc.stdout.readline()))
                break
        proc.stdin.write(json.dumps({'execute': 'quit'}) + '\n')
        proc.stdin.flush()
        _, err = proc.communicate(timeout=600)
        return replies, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def fill(path, size):
    """A memory file full of non-zero, varying data."""
    block = os.urandom(1 << 20)
    with open(path, 'wb') as f:
        for _ in range(size >> 20):
            f.write(block)


def measure(qemu, tmp, size, check):
    mem = os.path.join(tmp, 'mem')
    state = os.path.join(tmp, 'state')
    caps = {'execute': 'migrate-set-capabilities', 'arguments': {
        'capabilities': [{'capability': c, 'state': True}
                         for c in ('events', 'bypass-shared-memory')]}}
    params = {'execute': 'migrate-set-parameters', 'arguments': {
        'bypass-shared-memory-check': check, 'max-bandwidth': 0}}
    replies, err = run_qmp(
        [qemu] + vm_args(mem, size, 'on') + ['-S', '-trace',
                                            'template_identity_compute'],
        [{'execute': 'qmp_capabilities'}, caps, params,
         {'execute': 'migrate', 'arguments': {'uri': f'file:{state}'}}],
        wait_event='completed')
    save_us = int(re.search(r'took (\d+) us', err).group(1))
    downtime = replies[-1]['return'].get('downtime', 0)
    _, err = run_qmp(
        [qemu] + vm_args(mem, size, 'off') +
        ['-trace', 'template_identity_verify', '-incoming',
         f'file:{state}'],
        [{'execute': 'qmp_capabilities'},
         {'execute': 'migrate-set-capabilities', 'arguments': {
             'capabilities': [{'capability': 'events', 'state': True}]}}],
        wait_event='completed')
    load_us = int(re.search(r'passed in (\d+) us', err).group(1))
    return save_us, load_us, downtime


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--qemu', default=os.path.join(
        TOP, 'build/qemu/qemu-system-x86_64'))
    ap.add_argument('--sizes', default='256M,4G')
    ap.add_argument('--runs', type=int, default=3)
    opts = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix='vmt-idcost-', dir='/dev/shm')
    rows = []
    try:
        for size in opts.sizes.split(','):
            fill(os.path.join(tmp, 'mem'), parse_size(size))
            for check in ('sampled', 'full'):
                runs = [measure(opts.qemu, tmp, size, check)
                        for _ in range(opts.runs)]
                rows.append((size, check,
                             statistics.median(r[0] for r in runs) / 1000,
                             statistics.median(r[1] for r in runs) / 1000,
                             statistics.median(r[2] for r in runs)))
                print(f'identity-cost: {size} {check}: save '
                      f'{rows[-1][2]:.1f} ms (downtime {rows[-1][4]} ms), '
                      f'load {rows[-1][3]:.1f} ms', flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f'{"RAM":>6} {"check":>8} {"save: hash ms":>14} '
          f'{"save downtime ms":>17} {"load: check ms":>15}')
    for size, check, s, l, d in rows:
        print(f'{size:>6} {check:>8} {s:>14.1f} {d:>17} {l:>15.1f}')
    print(f'(median of {opts.runs} runs; times from the '
          'template_identity_compute/verify trace events)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
