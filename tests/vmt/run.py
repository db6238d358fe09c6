#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
Run the VMT end-to-end suite (tests/vmt/test_e2e*.py: MODULES).

  /usr/bin/python3 tests/vmt/run.py [--qemu PATH] [--python DIR] [-k FILTER]

Builds the test guest first (cheap when up to date), prints the QEMU
binary and the accelerator, and ends with the line
"e2e: N passed, N failed[, N skipped]"; exits 1 if anything failed.
"""

import argparse
import os
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
# test_e2e: the guest, templates with a shared RAM file (ignore-shared,
# bypass); test_e2e_mapped: template from any VM (mapped-ram, map/copy);
# test_e2e_load: 50 clones at once, failed saves, publishing by rename;
# test_template_tool: qemu-template (contrib/qemu-template)
MODULES = ('test_e2e', 'test_e2e_mapped', 'test_e2e_load',
           'test_template_tool')


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--qemu', help='QEMU binary (default: $VMT_QEMU or '
                    'build/qemu/qemu-system-x86_64)')
    ap.add_argument('--python', help="directory with QEMU's python 'qemu' "
                    'package (default: $VMT_PYTHON or build/src/python)')
    ap.add_argument('-k', dest='filters', action='append', default=[],
                    help='only tests whose name contains this (repeatable)')
    ap.add_argument('-v', '--verbose', action='store_true')
    ap.add_argument('--no-build-guest', action='store_true',
                    help='do not run tests/guest/build-guest.sh first')
    opts = ap.parse_args()

    if opts.qemu:
        os.environ['VMT_QEMU'] = os.path.abspath(opts.qemu)
    if opts.python:
        os.environ['VMT_PYTHON'] = os.path.abspath(opts.python)
    sys.path.insert(0, HERE)
    import vmt

    try:
        binary = vmt.qemu_binary()
        pydir = vmt.python_dir()
        if not opts.no_build_guest:
            vmt.build_guest()
        print(f'e2e: qemu {binary}', flush=True)
        print(f'e2e: python {pydir}', flush=True)
        accel = vmt.select_accel(binary)
        print(f'e2e: accel {accel}', flush=True)
    except (vmt.VMTError, subprocess.CalledProcessError) as e:
        print(f'e2e: setup failed: {e}', file=sys.stderr)
        print('e2e: 0 passed, 1 failed')
        return 1

    loader = unittest.TestLoader()
    if opts.filters:
        loader.testNamePatterns = [f'*{f}*' for f in opts.filters]
    suite = loader.loadTestsFromNames(MODULES)
    start = time.monotonic()
    try:
        result = unittest.TextTestRunner(verbosity=2 if opts.verbose else 1,
                                         stream=sys.stdout).run(suite)
    except KeyboardInterrupt:
        vmt.cleanup_all()
        sig = vmt.terminated_by or 2
        print(f'e2e: interrupted (signal {sig})', flush=True)
        return 128 + sig
    finally:
        vmt.cleanup_all()

    failed = len(result.failures) + len(result.errors) + \
        len(result.unexpectedSuccesses)
    in_test_errors = sum(1 for t, _ in result.errors
                         if isinstance(t, unittest.TestCase))
    skipped = len(result.skipped)
    passed = result.testsRun - len(result.failures) - in_test_errors - \
        skipped - len(result.unexpectedSuccesses)
    line = f'e2e: {passed} passed, {failed} failed'
    if skipped:
        line += f', {skipped} skipped'
    print(f'e2e: {time.monotonic() - start:.1f} s')
    print(line, flush=True)
    return 1 if failed or result.testsRun == 0 and not skipped else 0


if __name__ == '__main__':
    sys.exit(main())
