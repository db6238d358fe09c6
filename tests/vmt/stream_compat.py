#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
Compare the streams of two QEMU binaries with the series' capabilities off.

  stream_compat.py --ours QEMU --upstream QEMU --scripts DIR

Each binary saves the same stopped VM (-M pc, 64 MiB, no devices) to a file,
plain and with mapped-ram; scripts/analyze-migration.py (from DIR, which
must read mapped-ram streams: this series' copy) lists the
sections of each stream as "name (section id)" in stream order.  The lists
must be equal: this series adds no section and moves no section id unless
its capabilities are used.  Then each binary loads the other's mapped-ram
file (ours with mapped-ram-load=copy and map).  Our mapped-ram file has
this series' extension record after each block's bitmap (which upstream
ignores), upstream's has none; our map load of upstream's file must walk
its data extents (trace event mapped_ram_map_block).  Prints one line per
comparison and "stream-compat: N passed, N failed"; exits 1 on any
difference.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

VM_ARGS = ['-M', 'pc', '-m', '64M', '-nodefaults', '-display', 'none',
           '-accel', 'tcg', '-S']


def save(qemu, path, caps):
    """Save a stopped VM to @path with the capabilities @caps on."""
    cmds = [{'execute': 'qmp_capabilities'}]
    if caps:
        cmds.append({'execute': 'migrate-set-capabilities', 'arguments': {
            'capabilities': [{'capability': c, 'state': True}
                             for c in caps]}})
    cmds.append({'execute': 'migrate',
                 'arguments': {'uri': 'file:' + path}})
    qmp = ''.join(json.dumps(c) + '\n' for c in cmds)
    proc = subprocess.Popen([qemu] + VM_ARGS + ['-qmp', 'stdio'],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(qmp)
        proc.stdin.flush()
        for line in proc.stdout:
            msg = json.loads(line)
            if 'error' in msg:
                raise RuntimeError(f'{qemu}: {msg["error"]["desc"]}')
            if msg.get('event') == 'MIGRATION' and \
               msg['data']['status'] in ('completed', 'failed'):
                if msg['data']['status'] == 'failed':
                    raise RuntimeError(f'{qemu}: migration failed')
                break
    finally:
        proc.kill()
        proc.wait()


def load(qemu, path, globals_, extra=()):
    """Load the stopped VM saved in @path; True if the load completed."""
    args = [qemu] + VM_ARGS + list(extra) + ['-qmp', 'stdio']
    for g in globals_:
        args += ['-global', g]
    args += ['-incoming', 'file:' + path]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        proc.stdin.write(json.dumps({'execute': 'qmp_capabilities'}) + '\n')
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proc.stdin.write(json.dumps({'execute': 'query-migrate'}) + '\n')
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                return False, proc.stderr.read().strip()
            msg = json.loads(line)
            status = msg.get('return', {}).get('status')
            if status == 'completed':
                return True, ''
            if status == 'failed':
                return False, proc.stderr.read().strip()
            time.sleep(0.05)
        return False, 'timeout'
    finally:
        proc.kill()
        proc.wait()


def sections(scripts, path):
    out = subprocess.run([sys.executable,
                          os.path.join(scripts, 'analyze-migration.py'),
                          '-f', path], check=True, capture_output=True,
                         text=True).stdout
    return list(json.loads(out).keys())


def ext_records(scripts, path):
    """What analyze-migration.py says of the extension record of each
    mapped-ram block of @path: 'valid', 'none' or why it is not valid."""
    out = subprocess.run([sys.executable,
                          os.path.join(scripts, 'analyze-migration.py'),
                          '-f', path], check=True, capture_output=True,
                         text=True).stdout
    ram = [v for k, v in json.loads(out).items() if k.startswith('ram (')]
    blocks = ram[0]['mapped-ram'] if ram else {}
    res = {}
    for name, info in blocks.items():
        ext = info.get('extension', 'none')
        if isinstance(ext, dict):
            ok = (ext['valid'] == 'yes' and
                  ext['compat'] == ['clear pages read as zero'])
            ext = 'valid' if ok else f'invalid ({ext})'
        res[name] = 'none' if ext.startswith('none') else ext
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--ours', required=True)
    ap.add_argument('--upstream', required=True)
    ap.add_argument('--scripts', required=True,
                    help="directory with analyze-migration.py")
    opts = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix='vmt-compat-')
    passed = failed = 0
    try:
        # MIGRATION events need the events capability.
        for label, caps in (('plain', ['events']),
                            ('mapped-ram', ['events', 'mapped-ram'])):
            lists = {}
            for who, qemu in (('ours', opts.ours),
                              ('upstream', opts.upstream)):
                path = os.path.join(tmp, f'{who}-{label}.state')
                save(qemu, path, caps)
                lists[who] = sections(opts.scripts, path)
            if lists['ours'] == lists['upstream']:
                passed += 1
                print(f'stream-compat: {label}: same {len(lists["ours"])} '
                      'sections and section ids')
            else:
                failed += 1
                print(f'stream-compat: {label}: sections differ')
                print(f'  ours:     {lists["ours"]}')
                print(f'  upstream: {lists["upstream"]}')
        # Our file has a valid extension record for every block, which
        # says that its clear pages are holes; upstream's has none.
        for saver, want in (('ours', 'valid'), ('upstream', 'none')):
            recs = ext_records(opts.scripts, os.path.join(
                tmp, f'{saver}-mapped-ram.state'))
            bad = {b: r for b, r in recs.items() if r != want}
            label = f'{saver} mapped-ram file: extension records {want}'
            if recs and not bad:
                passed += 1
                print(f'stream-compat: {label} ({len(recs)} blocks)')
            else:
                failed += 1
                print(f'stream-compat: {label}: FAILED: {bad or recs}')
        # Each loads the other's mapped-ram files (map and copy).
        for saver, loader in (('ours', 'upstream'), ('upstream', 'ours')):
            path = os.path.join(tmp, f'{saver}-mapped-ram.state')
            qemu = opts.ours if loader == 'ours' else opts.upstream
            modes = ['copy', 'map'] if loader == 'ours' else ['copy']
            for mode in modes:
                g = ['migration.mapped-ram=on']
                extra = []
                trace = os.path.join(tmp, 'map.trace')
                if loader == 'ours':
                    g.append(f'migration.mapped-ram-load={mode}')
                if mode == 'map':
                    extra = ['-trace', 'mapped_ram_map_block', '-D', trace]
                ok, err = load(qemu, path, g, extra)
                if ok and mode == 'map':
                    # No record: the loader must look for stale data.
                    with open(trace) as f:
                        log = f.read()
                    os.unlink(trace)
                    if ('block pc.ram mapped' not in log or
                            'clear pages are holes 1' in log):
                        ok, err = False, f'not walked: {log.strip()}'
                label = f'{saver} mapped-ram file loaded by {loader} ({mode})'
                if ok:
                    passed += 1
                    print(f'stream-compat: {label}')
                else:
                    failed += 1
                    print(f'stream-compat: {label}: FAILED: {err}')
    except (RuntimeError, subprocess.CalledProcessError) as e:
        failed += 1
        print(f'stream-compat: error: {e}')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f'stream-compat: {passed} passed, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
