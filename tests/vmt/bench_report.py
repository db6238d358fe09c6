# SPDX-License-Identifier: GPL-2.0-or-later
"""
VMT benchmarks: the report (report.md, results.json, PNG plots) from the
results of tests/vmt/bench.py, and its validation (--check).

Tables are Markdown.  A column whose header holds a unit in parentheses,
e.g. "median (ms)" or "ratio (ours/upstream)", is numeric: each of its
cells is a number, "n/a (reason)" or "-" (not applicable); the check
relies on this.
"""

import json
import os
import re

SECTIONS = (
    ('summary', 'Summary'),
    ('setup', 'Setup'),
    ('floor', 'a. Process-start floor'),
    ('boot', 'b. Cold boot'),
    ('clone', 'c. Clone latency'),
    ('save', 'd. Save'),
    ('restore', 'e. Restore cost vs RAM size'),
    ('density', 'f. Density'),
    ('tool', 'g. qemu-template'),
    ('breakdown', 'h. Idle clone memory by cause'),
    ('scale', 'i. Density at scale'),
    ('plots', 'Plots'),
    ('notes', 'Notes'),
)
PLOTS = (
    ('startup.png', 'process-start floor and cold boot, medians with p90'),
    ('latency.png', 'clone latency (exec -> pong) per flow, every clone'),
    ('restore.png', 'restore time (migrate-incoming -> running) vs RAM '
                    'size'),
    ('density.png', 'host memory vs number of VMs, and memory per VM per '
                    'mode'),
)
NA = 'n/a'
DASH = '-'

FLOW_LABEL = {
    'ignore-shared': 'x-ignore-shared, -incoming defer',
    'bypass': 'bypass-shared-memory, -incoming exec:cat',
    'copy': 'mapped-ram file, mapped-ram-load=copy',
    'map': 'mapped-ram file, mapped-ram-load=map',
    'lazy': 'mapped-ram file, mapped-ram-load=lazy',
    'lazy-ws': 'mapped-ram file, mapped-ram-load=lazy, with a working set',
    'copy-shm': 'mapped-ram file, mapped-ram-load=copy, shared memfd RAM',
    'lazy-shm': 'mapped-ram file, mapped-ram-load=lazy, shared memfd RAM',
    'cold': 'cold boot (no template)',
}


def fnum(x, nd=1):
    if x is None:
        return DASH
    return f'{x:.{nd}f}'


def fmib(kib, nd=1):
    return DASH if kib is None else f'{kib / 1024:.{nd}f}'


def fmib_b(nbytes, nd=1):
    return DASH if nbytes is None else f'{nbytes / (1 << 20):.{nd}f}'


def ratio(a, b):
    """a/b with 2 decimals, more when small (never 0.00 for a > 0)."""
    if a is None or b is None or b == 0:
        return DASH
    r = a / b
    for nd in (2, 3, 4, 5, 6):
        if r == 0 or abs(r) >= 10 ** (1 - nd):
            break
    return f'{r:.{nd}f}'


def sget(d, *keys):
    """Nested get that returns None on any missing level."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


class Table:
    def __init__(self, title, headers):
        self.title = title
        self.headers = list(headers)
        self.rows = []

    def add(self, *cells):
        assert len(cells) == len(self.headers), (self.title, cells)
        self.rows.append([str(c) for c in cells])

    def markdown(self):
        w = [max(len(h), *(len(r[i]) for r in self.rows))
             if self.rows else len(h) for i, h in enumerate(self.headers)]
        num = [is_numeric_header(h) for h in self.headers]

        def line(cells):
            return '| ' + ' | '.join(
                c.rjust(w[i]) if num[i] else c.ljust(w[i])
                for i, c in enumerate(cells)) + ' |'
        out = [line(self.headers),
               '|' + '|'.join(('-' * (w[i] + 1) + ':') if num[i]
                              else ('-' * (w[i] + 2))
                              for i in range(len(w))) + '|']
        out += [line(r) for r in self.rows]
        return '\n'.join(out)


def is_numeric_header(h):
    return '(' in h and ')' in h


# ---------------------------------------------------------------------------
# tables per scenario

def _binrow(st, key=None):
    """(median, p90) of a stats dict (optionally st[key])."""
    if key is not None:
        st = sget(st, key)
    return sget(st, 'median'), sget(st, 'p90')


def table_floor(res):
    t = Table('exec -> first QMP reply (ms)', [
        'machine', 'ours median (ms)', 'ours p90 (ms)',
        'upstream median (ms)', 'upstream p90 (ms)',
        'ratio (ours/upstream)', 'n (per binary)',
        'ours first run (ms)', 'upstream first run (ms)'])
    for mach, r in res['machines'].items():
        if r.get('unsupported'):
            na = f'{NA} (does not start)'
            t.add(f'-M {mach}', na, na, na, na, na, na, na, na)
            continue
        om, op = _binrow(r['ours'].get('stats'))
        um, up = _binrow(r['upstream'].get('stats'))
        t.add(f'-M {mach}', fnum(om), fnum(op), fnum(um), fnum(up),
              ratio(om, um), sget(r, 'ours', 'stats', 'n') or 0,
              fnum(r['ours']['first']), fnum(r['upstream']['first']))
    return t


def table_boot(res):
    t = Table('cold boot (ms since exec)', [
        'event', 'ours median (ms)', 'ours p90 (ms)',
        'upstream median (ms)', 'upstream p90 (ms)',
        'ratio (ours/upstream)', 'n (per binary)',
        'ours first run (ms)', 'upstream first run (ms)'])
    r = res['binaries']
    for key, label in (('qmp', 'exec -> first QMP reply'),
                       ('banner', 'exec -> agent banner'),
                       ('pong', 'exec -> first pong')):
        om, op = _binrow(r['ours'].get('stats'), key)
        um, up = _binrow(r['upstream'].get('stats'), key)
        t.add(label, fnum(om), fnum(op), fnum(um), fnum(up), ratio(om, um),
              sget(r, 'ours', 'stats', key, 'n') or 0,
              fnum(sget(r, 'ours', 'first', key)),
              fnum(sget(r, 'upstream', 'first', key)))
    return t


# (our flow, upstream flow it is compared with, label)
CLONE_ROWS = (
    ('ignore-shared/ours', 'ignore-shared/upstream',
     'upstream template flow (x-ignore-shared, -incoming defer, '
     'migrate-incoming) on our binary'),
    ('bypass/ours', 'ignore-shared/upstream',
     'bypass-shared-memory, plain -incoming "exec:cat STATE"'),
    ('copy/ours', 'copy/upstream',
     'mapped-ram file, mapped-ram-load=copy (upstream pread) on our binary'),
    ('map/ours', 'copy/upstream', 'mapped-ram file, mapped-ram-load=map'),
    ('lazy/ours', 'copy/upstream', 'mapped-ram file, mapped-ram-load=lazy'),
)


def table_clone(res):
    t = Table('clone latency: exec -> agent answers ping (ms)', [
        'our flow, our binary', 'median (ms)', 'p90 (ms)',
        'compared with, upstream binary', 'upstream median (ms)',
        'upstream p90 (ms)', 'ratio (ours/upstream)', 'n (clones each)',
        'first run (ms)', 'upstream first run (ms)'])
    fl = res['flows']
    for ours, up, label in CLONE_ROWS:
        r, u = fl.get(ours, {}), fl.get(up, {})
        um, up90 = _binrow(u.get('stats'), 'pong')
        upl = f'{up.split("/")[0]} ({FLOW_LABEL[up.split("/")[0]]})'
        why = (r.get('unsupported') or u.get('unsupported') or
               (r.get('error') and 'failed') or
               (u.get('error') and 'upstream failed'))
        if why:
            na = why if why.startswith(NA) else f'{NA} ({why})'
            t.add(label, na, na, upl, fnum(um) if um else na,
                  fnum(up90) if up90 else na, na, na, na,
                  fnum(sget(u, 'first', 'pong')) if um else na)
            continue
        om, op = _binrow(r.get('stats'), 'pong')
        t.add(label, fnum(om), fnum(op), upl, fnum(um), fnum(up90),
              ratio(om, um), sget(r, 'stats', 'pong', 'n') or 0,
              fnum(sget(r, 'first', 'pong')), fnum(sget(u, 'first', 'pong')))
    return t


def table_clone_detail(res):
    t = Table('clone flows: medians (ms since exec)', [
        'flow', 'binary', 'QMP reply (ms)', 'running (ms)', 'pong (ms)',
        'pong p90 (ms)', 'pong min (ms)', 'pong max (ms)', 'n (clones)',
        'running before QMP reply (clones)', 'data after first clone'])
    for fid, r in res['flows'].items():
        if 'stats' not in r:
            continue
        st = r['stats']
        t.add(FLOW_LABEL[r['mode']], r['binary'],
              fnum(sget(st, 'qmp', 'median')),
              fnum(sget(st, 'running', 'median')),
              fnum(sget(st, 'pong', 'median')),
              fnum(sget(st, 'pong', 'p90')), fnum(sget(st, 'pong', 'min')),
              fnum(sget(st, 'pong', 'max')), sget(st, 'pong', 'n') or 0,
              r.get('running_before_qmp', 0),
              'template data intact' if r.get('data_ok')
              else 'DIFFERS' if 'data_ok' in r else 'not checked')
    return t


def table_save(res):
    t = Table('save', [
        'quantity', 'ours: flow', 'ours (value)', 'upstream: flow',
        'upstream (value)', 'ratio (ours/upstream)'])
    tp = res['templates']

    def get(tid, what):
        r = tp.get(tid, {})
        if r.get('unsupported') or not r.get('save_ms'):
            return None
        if what == 'time':
            return sget(r, 'stats', 'median')
        if what == 'downtime':
            d = [x for x in r['downtime_ms'] if x is not None]
            return sorted(d)[len(d) // 2] if d else None
        if what == 'apparent_k':
            return r['apparent'][-1] / 1024
        if what == 'apparent':
            return r['apparent'][-1] / (1 << 20)
        if what == 'allocated':
            return r['allocated'][-1] / (1 << 20)
        if what == 'ramfile':
            return r['ram_file'][1] / (1 << 20) if r.get('ram_file') else None
        return None

    def row(q, ours, up, what, nd=1):
        a, b = get(ours, what), get(up, what)
        t.add(q, ours, fnum(a, nd) if a is not None else f'{NA}',
              up, fnum(b, nd) if b is not None else f'{NA}', ratio(a, b))
    n = res['reps']
    row(f'template save time, median of {n} (ms)', 'bypass/ours',
        'ignore-shared/upstream', 'time')
    row(f'template save time, median of {n} (ms)', 'ignore-shared/ours',
        'ignore-shared/upstream', 'time')
    row('template save: QEMU downtime (ms)', 'bypass/ours',
        'ignore-shared/upstream', 'downtime', 0)
    row('template state file (KiB)', 'bypass/ours',
        'ignore-shared/upstream', 'apparent_k')
    row('template state file (KiB)', 'ignore-shared/ours',
        'ignore-shared/upstream', 'apparent_k')
    row('template RAM file, allocated (MiB)', 'bypass/ours',
        'ignore-shared/upstream', 'ramfile')
    row(f'fixed-ram save time, median of {n} (ms)', 'fixed/ours',
        'fixed/upstream', 'time')
    row('fixed-ram save: QEMU downtime (ms)', 'fixed/ours',
        'fixed/upstream', 'downtime', 0)
    row('fixed-ram file, apparent (MiB)', 'fixed/ours', 'fixed/upstream',
        'apparent')
    row('fixed-ram file, allocated (MiB)', 'fixed/ours', 'fixed/upstream',
        'allocated')
    return t


def table_restore(res):
    t = Table('restore: migrate-incoming -> running (ms), same file', [
        'RAM', 'guest wrote (MiB)', 'RAM populated (MiB)',
        'file allocated (MiB)', 'file apparent (MiB)',
        'map, ours: median (ms)', 'map p90 (ms)',
        'copy, upstream: median (ms)', 'copy upstream p90 (ms)',
        'ratio (map ours/copy upstream)', 'copy, ours: median (ms)',
        'ratio (copy ours/copy upstream)', 'lazy, ours: median (ms)',
        'lazy p90 (ms)', 'ratio (lazy ours/copy upstream)', 'n (per mode)',
        'first run map (ms)', 'first run copy upstream (ms)'])
    for size, r in res['sizes'].items():
        f = r['flows']
        if r.get('error') or 'file_allocated' not in r:
            na = f'{NA} (failed)'
            t.add(size, r['fill_mib'], *([na] * (len(t.headers) - 2)))
            continue

        def med(fid):
            return sget(f, fid, 'stats', 'median')

        def p90(fid):
            return sget(f, fid, 'stats', 'p90')

        def cell(fid, x):
            if fid not in f:
                return f'{NA} ({res["unsupported"].get(fid, "not run")})'
            if f[fid].get('skipped'):
                return f'{NA} (skipped: memory)'
            return fnum(x)
        t.add(size, r['fill_mib'], fmib(r['template_ram_rss_kib']),
              fmib_b(r['file_allocated']), fmib_b(r['file_apparent']),
              cell('map/ours', med('map/ours')),
              cell('map/ours', p90('map/ours')),
              cell('copy/upstream', med('copy/upstream')),
              cell('copy/upstream', p90('copy/upstream')),
              ratio(med('map/ours'), med('copy/upstream')),
              cell('copy/ours', med('copy/ours')),
              ratio(med('copy/ours'), med('copy/upstream')),
              cell('lazy/ours', med('lazy/ours')),
              cell('lazy/ours', p90('lazy/ours')),
              ratio(med('lazy/ours'), med('copy/upstream')),
              sget(f, 'copy/upstream', 'stats', 'n') or 0,
              cell('map/ours', sget(f, 'map/ours', 'first')),
              cell('copy/upstream', sget(f, 'copy/upstream', 'first')))
    return t


def table_restore_lazy(res):
    t = Table('lazy load: the background fill and the faults it did not '
              'beat (medians of the MAPPED_RAM_LAZY_LOADED events); '
              'with a working set: the first lazy restore\'s faults, '
              'placed first', [
                  'RAM', 'working set', 'n', 'load complete after (ms)',
                  'fill (ms)', 'fill rate (GB/s, RAM size / fill)',
                  'data rate (GB/s, pages read / fill)',
                  'pages read', 'pages zeroed',
                  'pages left as holes (shared RAM)', 'pages prefetched',
                  'faults served', 'fault service, mean (us)',
                  'fault service p50 (us)', 'p99 (us)'])
    for size, r in res['sizes'].items():
        for fid, label in (('lazy/ours', 'without'),
                           ('lazy-ws/ours', 'given'),
                           ('lazy-shm/ours', 'without (shared memfd)')):
            ev = sget(r, 'flows', fid, 'lazy')
            if not ev:
                continue

            def med(k):
                return sorted(e.get(k, 0) for e in ev)[len(ev) // 2]
            pages = med('pages-read') + med('pages-zeroed')
            fill = med('fill-ms')
            faults = med('faults')
            served = sorted(x for e in ev for x in e.get('fault_us', []))
            if fid == 'lazy-ws/ours' and 'working_set_pages' in r:
                label += f' ({r["working_set_pages"]} pages)'
            t.add(size, label, len(ev), med('total-ms'), fill,
                  fnum(pages * 4096 / (fill * 1e6)) if fill else NA,
                  fnum(med('pages-read') * 4096 / (fill * 1e6))
                  if fill else NA,
                  med('pages-read'), med('pages-zeroed'),
                  med('pages-skipped'), med('pages-prefetched'), faults,
                  fnum(med('fault-us') / faults) if faults else NA,
                  served[len(served) // 2] if served else NA,
                  served[len(served) * 99 // 100] if served else NA)
    return t


def table_restore_tlb(res):
    t = Table('lazy load under TCG: TLB fills that found their page '
              'missing (mapped_ram_lazy_tlb_fill), over all lazy restores '
              'of a size', [
                  'RAM', 'fills', 'placed by the vCPU', 'waited for '
                  'another thread', 'with the BQL held',
                  'time p50 (us)', 'p99 (us)', 'max (us)',
                  'max with the BQL held (us)'])
    for size, r in res['sizes'].items():
        fills = [x for fid in ('lazy/ours', 'lazy-ws/ours', 'lazy-shm/ours')
                 for e in (sget(r, 'flows', fid, 'lazy') or [])
                 for x in e.get('tlb_fills', [])]
        if not fills:
            continue
        us = sorted(x[2] for x in fills)
        bql = [x[2] for x in fills if x[1]]
        t.add(size, len(fills), sum(1 for x in fills if x[0] > 0),
              sum(1 for x in fills if x[0] == 0), len(bql),
              us[len(us) // 2], us[len(us) * 99 // 100], us[-1],
              max(bql) if bql else DASH)
    return t


def table_restore_after(res):
    t = Table('after the restore (medians)', [
        'RAM', 'flow', 'binary', 'migrate-incoming -> pong (ms)',
        'process Rss once running (MiB)',
        'RssShmem once loaded (MiB, shared RAM)'])
    for size, r in res['sizes'].items():
        for fid, fr in r['flows'].items():
            if not fr.get('pong_ms'):
                continue
            p = sorted(fr['pong_ms'])[len(fr['pong_ms']) // 2]
            rss = sorted(fr['rss_kib'])[len(fr['rss_kib']) // 2]
            shm = fr.get('shmem_kib')
            mode, b = fid.split('/')
            t.add(size, FLOW_LABEL[mode], b, fnum(p), fmib(rss),
                  fmib(sorted(shm)[len(shm) // 2]) if shm else DASH)
    return t


DENSITY_KEYS = (
    ('ram_private', 'guest RAM private (MiB/VM)'),
    ('ram_shared', 'guest RAM shared (MiB/VM)'),
    ('ram_anon', 'guest RAM anonymous (MiB/VM)'),
    ('pss', 'process Pss (MiB/VM)'),
    ('uss', 'process USS (MiB/VM)'),
    ('anon', 'process anonymous (MiB/VM)'),
    ('tcg_rss', 'TCG translation cache (MiB/VM)'),
    ('pss_without_tcg', 'Pss without TCG cache (MiB/VM)'),
)


def table_density(res):
    t = Table('density: memory per VM (medians over the VMs)', [
        'mode', 'binary', 'VMs (n)'] + [h for _, h in DENSITY_KEYS] + [
        'MemAvailable drop (MiB/VM)', 'MemAvailable released (MiB/VM)',
        'host memory (MiB/VM)', 'start + write all (s)'])
    for fid, r in res['flows'].items():
        label = FLOW_LABEL[r['mode']]
        if r.get('unsupported') or not r.get('median'):
            why = (r.get('unsupported') or r.get('stopped') or
                   (r.get('error') and 'failed') or 'no VM started')
            na = f'{NA} ({why})'
            t.add(label, r['binary'], r.get('started', 0),
                  *([na] * (len(DENSITY_KEYS) + 3)))
            continue
        m = r['median']
        t.add(label, r['binary'], r['started'],
              *[fmib(m[k]) for k, _ in DENSITY_KEYS],
              fmib(r['avail_drop_per_vm_kib']),
              fmib(r.get('released_per_vm_kib')),
              fmib(r.get('host_per_vm_kib')), fnum(r.get('start_s')))
    return t


DENSITY_CMP = (
    ('bypass/ours', 'ignore-shared/upstream'),
    ('bypass/ours', 'copy/upstream'),
    ('map/ours', 'copy/upstream'),
    ('bypass/ours', 'cold/upstream'),
    ('map/ours', 'cold/upstream'),
)


def density_value(r, key):
    if not r or not r.get('median'):
        return None
    if key == 'drop':
        return r.get('host_per_vm_kib', r['avail_drop_per_vm_kib'])
    return r['median'][key]


def table_density_cmp(res):
    t = Table('density: ours against upstream (per VM)', [
        'ours', 'compared with, upstream', 'quantity', 'ours (MiB/VM)',
        'upstream (MiB/VM)', 'ratio (ours/upstream)'])
    fl = res['flows']
    for ours, up in DENSITY_CMP:
        for key, label in (('drop', 'host memory (MemAvailable)'),
                           ('anon', 'process anonymous'),
                           ('pss', 'process Pss'),
                           ('pss_without_tcg', 'Pss without TCG cache'),
                           ('uss', 'process USS')):
            a = density_value(fl.get(ours), key)
            b = density_value(fl.get(up), key)
            t.add(ours, up, label, fmib(a) if a is not None else NA,
                  fmib(b) if b is not None else NA, ratio(a, b))
    return t


# ---------------------------------------------------------------------------
# summary

TOOL_ROWS = (
    ('clone_running', 'clone, no pool: exec -> running (clone record)'),
    ('clone_pong', 'clone, no pool: exec -> agent pong'),
    ('pool_request_running', 'pool: request -> running (the pool)'),
    ('pool_request', 'pool: request -> answer ready (the pool)'),
    ('pool_rtt', 'pool: request sent -> record received (client)'),
    ('pool_pong', 'pool: request sent -> agent pong'),
)


def table_tool(res):
    t = Table('qemu-template: clone and pool latency (ms)', [
        'measure', 'mode', 'median (ms)', 'p90 (ms)', 'min (ms)',
        'max (ms)', 'n (count)'])
    for mode, r in res['modes'].items():
        for key, label in TOOL_ROWS:
            st = r.get(key) or {}
            t.add(label, mode, fnum(st.get('median'), 2),
                  fnum(st.get('p90'), 2), fnum(st.get('min'), 2),
                  fnum(st.get('max'), 2), st.get('n', 0))
    return t


def table_breakdown(res):
    flows = list(res['flows'])
    t = Table('idle clone: anonymous memory by cause (MiB)',
              ['class'] + [f'{f} (MiB)' for f in flows])
    classes = list(next(iter(res['flows'].values())))
    for c in classes + ['total']:
        row = []
        for f in flows:
            r = res['flows'][f]
            v = sum(x['Anonymous'] for x in r.values()) if c == 'total' \
                else r[c]['Anonymous']
            row.append(fmib(v))
        t.add(c, *row)
    t2 = Table('idle clone: Pss by cause (MiB)',
               ['class'] + [f'{f} (MiB)' for f in flows])
    for c in classes + ['total']:
        row = []
        for f in flows:
            r = res['flows'][f]
            v = sum(x['Pss'] for x in r.values()) if c == 'total' \
                else r[c]['Pss']
            row.append(fmib(v))
        t2.add(c, *row)
    return t, t2


SCALE_TARGETS = (
    # (measure, result key, target, its unit, True if higher is better)
    ('Pss per idle clone', 'pss_kib', 20, 'MiB', False),
    ('Pss per idle clone without the TCG cache', 'pss_without_tcg_kib', 10,
     'MiB', False),
    ('host memory per idle clone', 'host_per_vm_kib', 15, 'MiB', False),
    ('clones running at once', 'started', 500, 'clones', True),
    ('start rate', 'per_s', 20, 'clones/s', True),
    ('start rate of the first 64', 'first_per_s', 20, 'clones/s', True),
)


def _scale_cell(r, key):
    if r is None:
        return None
    v = r.get(key)
    return v / 1024 if v is not None and key.endswith('_kib') else v


def table_scale(res):
    t = Table(f'scale: idle VMs at once, {res["settle_s"]:g} s idle (per VM: '
              'means)', [
                  'flow', 'asked (VMs)', 'running (VMs)', 'answering (VMs)',
                  'start rate (VMs/s)', 'first 64: start rate (VMs/s)',
                  'Pss (MiB)', 'anonymous (MiB)',
                  'TCG cache (MiB)', 'Pss without TCG (MiB)',
                  'MemAvailable drop (MiB)', 'given back (MiB)',
                  'host memory (MiB)', 'idle CPU (% of a core)'])
    for fid, r in res['flows'].items():
        if r.get('error'):
            t.add(fid, *([f'{NA} (failed)'] * 13))
            continue
        t.add(fid, r['asked'], r['started'], r.get('answered', 0),
              fnum(r.get('per_s')), fnum(r.get('first_per_s')),
              fmib(r.get('pss_kib')),
              fmib(r.get('anon_kib')), fmib(r.get('tcg_kib')),
              fmib(r.get('pss_without_tcg_kib')),
              fmib(r.get('avail_drop_per_vm_kib')),
              fmib(r.get('released_per_vm_kib')),
              fmib(r.get('host_per_vm_kib')), fnum(r.get('idle_cpu_pct'), 2))
    t2 = Table('scale: issue targets and upstream, this run', [
        'measure', 'target', 'bypass/ours (value)', 'mapped-ram/ours (value)',
        'ignore-shared/upstream (value)', 'cold/upstream (value)',
        'ratio (bypass/ignore-shared)'])
    f = res['flows']
    for label, key, target, unit, higher in SCALE_TARGETS:
        vals = [_scale_cell(f.get(fid), key) for fid in (
            'bypass/ours', 'mapped-ram/ours', 'ignore-shared/upstream',
            'cold/upstream')]
        cells = [fnum(v) if v is not None else NA for v in vals]
        if key == 'started':
            # upstream flows are capped (bench_scale.py): no ratio
            rt = DASH
        else:
            rt = ratio(vals[0], vals[2])
        t2.add(f'{label} ({unit})',
               f'{">=" if higher else "<="} {target}', *cells, rt)
    return t, t2


def table_tool_mem(res):
    t = Table('qemu-template: pooled clones and templates', [
        'mode', 'pooled idle clone Pss (MiB)', 'pooled idle clone private '
        '(MiB)', 'refill (clones/s)', 'template ready (ms)',
        'template save (ms)'])
    for mode, r in res['modes'].items():
        t.add(mode, fmib(r.get('pooled_pss_kib')),
              fmib(r.get('pooled_private_kib')), fnum(r.get('refill_per_s')),
              fnum(r.get('create_ready_ms'), 0),
              fnum(r.get('create_save_ms'), 0))
    return t


def summary_table(res):
    t = Table('summary', [
        'scenario', 'ours: flow', 'ours (value)', 'upstream: flow',
        'upstream (value)', 'ratio (ours/upstream)'])
    fl = res.get('floor')
    if fl:
        for mach, r in fl['machines'].items():
            if r.get('unsupported'):
                t.add(f'floor -M {mach}, exec -> QMP reply (ms)', 'ours',
                      f'{NA} (does not start)', 'upstream',
                      f'{NA} (does not start)', DASH)
                continue
            a = sget(r, 'ours', 'stats', 'median')
            b = sget(r, 'upstream', 'stats', 'median')
            t.add(f'floor -M {mach}, exec -> QMP reply (ms)', 'ours',
                  fnum(a), 'upstream', fnum(b), ratio(a, b))
    bt = res.get('boot')
    if bt:
        a = sget(bt, 'binaries', 'ours', 'stats', 'pong', 'median')
        b = sget(bt, 'binaries', 'upstream', 'stats', 'pong', 'median')
        t.add('cold boot, exec -> first pong (ms)', 'ours', fnum(a),
              'upstream', fnum(b), ratio(a, b))
    cl = res.get('clone')
    if cl:
        f = cl['flows']
        for ours, up, _ in CLONE_ROWS:
            a = sget(f, ours, 'stats', 'pong', 'median')
            b = sget(f, up, 'stats', 'pong', 'median')
            t.add('clone exec -> pong, median (ms)', ours,
                  fnum(a) if a else NA, up, fnum(b) if b else NA,
                  ratio(a, b))
        if bt:
            b = sget(bt, 'binaries', 'upstream', 'stats', 'pong', 'median')
            for ours in ('bypass/ours', 'map/ours'):
                a = sget(f, ours, 'stats', 'pong', 'median')
                t.add('clone vs cold boot, exec -> pong (ms)', ours,
                      fnum(a) if a else NA, 'cold boot/upstream',
                      fnum(b) if b else NA, ratio(a, b))
    sv = res.get('save')
    if sv:
        tp = sv['templates']

        def med(tid):
            return sget(tp, tid, 'stats', 'median')

        def last(tid, k, div):
            v = sget(tp, tid, k)
            return v[-1] / div if v else None
        a, b = med('bypass/ours'), med('ignore-shared/upstream')
        t.add('template save (ms)', 'bypass/ours', fnum(a),
              'ignore-shared/upstream', fnum(b), ratio(a, b))
        a = last('bypass/ours', 'apparent', 1024)
        b = last('ignore-shared/upstream', 'apparent', 1024)
        t.add('template state file (KiB)', 'bypass/ours', fnum(a),
              'ignore-shared/upstream', fnum(b), ratio(a, b))
        a, b = med('fixed/ours'), med('fixed/upstream')
        t.add('fixed-ram save (ms)', 'fixed/ours', fnum(a),
              'fixed/upstream', fnum(b), ratio(a, b))
        a = last('fixed/ours', 'allocated', 1 << 20)
        b = last('fixed/upstream', 'allocated', 1 << 20)
        t.add('fixed-ram file allocated (MiB)', 'fixed/ours', fnum(a),
              'fixed/upstream', fnum(b), ratio(a, b))
    rs = res.get('restore')
    if rs:
        for size, r in rs['sizes'].items():
            a = sget(r, 'flows', 'map/ours', 'stats', 'median')
            b = sget(r, 'flows', 'copy/upstream', 'stats', 'median')
            t.add(f'restore {size} ({r["fill_mib"]} MiB written), '
                  'migrate-incoming -> running (ms)', 'map/ours',
                  fnum(a) if a else NA, 'copy/upstream',
                  fnum(b) if b else NA, ratio(a, b))
    dn = res.get('density')
    if dn:
        f = dn['flows']
        for key, label in (('pss', 'process Pss'),
                           ('drop', 'host memory (MemAvailable)')):
            for ours, up in DENSITY_CMP[:3]:
                a = density_value(f.get(ours), key)
                b = density_value(f.get(up), key)
                n = sget(f, ours, 'started')
                t.add(f'density, {n} VMs: {label} per VM (MiB)', ours,
                      fmib(a) if a is not None else NA, up,
                      fmib(b) if b is not None else NA, ratio(a, b))
        a = density_value(f.get('bypass/ours'), 'drop')
        b = density_value(f.get('cold/upstream'), 'drop')
        n = sget(f, 'cold/upstream', 'started')
        t.add(f'density: host memory per VM vs {n} cold-booted (MiB)',
              'bypass/ours', fmib(a) if a is not None else NA,
              'cold/upstream', fmib(b) if b is not None else NA, ratio(a, b))
    bd = res.get('breakdown')
    if bd:
        for ours, up in (('bypass/ours', 'ignore-shared/upstream'),
                         ('map/ours', 'copy/upstream')):
            a = sget(bd, 'flows', ours)
            b = sget(bd, 'flows', up)
            a = sum(x['Anonymous'] for x in a.values()) if a else None
            b = sum(x['Anonymous'] for x in b.values()) if b else None
            t.add('idle clone anonymous memory (MiB)', ours, fmib(a), up,
                  fmib(b), ratio(a, b))
    tl = res.get('tool')
    if tl:
        # a clone that answers: from the pool's request vs upstream's
        # template flow from exec
        b = sget(res, 'clone', 'flows', 'ignore-shared/upstream', 'stats',
                 'pong', 'median')
        for mode, r in tl['modes'].items():
            a = sget(r, 'pool_pong', 'median')
            t.add('qemu-template pool request -> pong vs exec -> pong (ms)',
                  f'pool {mode}/ours', fnum(a) if a else NA,
                  'ignore-shared/upstream', fnum(b) if b else NA,
                  ratio(a, b))
    sc = res.get('scale')
    if sc:
        f = sc['flows']
        up = f.get('ignore-shared/upstream') or {}
        for ours in ('bypass/ours', 'mapped-ram/ours'):
            r = f.get(ours) or {}
            for key, label in (('pss_kib', 'Pss'),
                               ('host_per_vm_kib', 'host memory')):
                a, b = r.get(key), up.get(key)
                t.add(f'scale, {r.get("started", 0)} idle clones: {label} '
                      'per clone (MiB)', ours,
                      fmib(a) if a is not None else NA,
                      f'ignore-shared/upstream ({up.get("started", 0)})',
                      fmib(b) if b is not None else NA, ratio(a, b))
    return t


# ---------------------------------------------------------------------------
# plots

def plots(res, out):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    made = []
    colors = {'ours': '#1f77b4', 'upstream': '#ff7f0e'}

    # startup
    if res.get('floor') or res.get('boot'):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        labels, vals = [], {b: [] for b in colors}
        errs = {b: [] for b in colors}
        for mach, r in (sget(res, 'floor', 'machines') or {}).items():
            if r.get('unsupported'):
                continue
            labels.append(f'floor\n-M {mach}')
            for b in colors:
                m, p = _binrow(r[b].get('stats'))
                vals[b].append(m or 0)
                errs[b].append((p or 0) - (m or 0))
        bt = sget(res, 'boot', 'binaries')
        if bt:
            for key in ('qmp', 'banner', 'pong'):
                labels.append(f'cold boot\n{key}')
                for b in colors:
                    m, p = _binrow(bt[b].get('stats'), key)
                    vals[b].append(m or 0)
                    errs[b].append((p or 0) - (m or 0))
        x = range(len(labels))
        for j, b in enumerate(colors):
            ax.bar([i + (j - 0.5) * 0.38 for i in x], vals[b], 0.38,
                   yerr=[[0] * len(x), errs[b]], label=b, color=colors[b],
                   capsize=3)
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels)
        ax.set_yscale('log')
        ax.set_ylabel('ms since exec (log), median, bar to p90')
        ax.set_title(f'process start and cold boot ({_accel(res)})')
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, 'startup.png'), dpi=100)
        plt.close(fig)
        made.append('startup.png')

    cl = res.get('clone')
    if cl:
        fig, ax = plt.subplots(figsize=(9, 5))
        names, data = [], []
        for fid, r in cl['flows'].items():
            s = sget(r, 'samples', 'pong')
            if not s:
                continue
            mode, b = fid.split('/')
            names.append(f'{mode}\n({b})')
            data.append(s)
        if data:
            ax.boxplot(data, whis=(10, 90), showfliers=False)
            for i, s in enumerate(data, 1):
                xs = [i + ((k % 7) - 3) * 0.03 for k in range(len(s))]
                ax.scatter(xs, s, s=12, alpha=0.7, zorder=3,
                           color=colors['ours' if '(ours)' in names[i - 1]
                                        else 'upstream'])
            ax.set_xticks(range(1, len(names) + 1))
            ax.set_xticklabels(names)
        floor = sget(res, 'floor', 'machines', 'pc', 'ours', 'stats',
                     'median')
        if floor:
            ax.axhline(floor, ls=':', color='grey',
                       label=f'process floor -M pc (ours) {floor:.0f} ms')
            ax.legend()
        ax.set_ylim(bottom=0)
        ax.set_ylabel('exec -> pong (ms); box p25-p75, whiskers p10-p90')
        ax.set_title(f'clone latency per flow ({_accel(res)})')
        fig.tight_layout()
        fig.savefig(os.path.join(out, 'latency.png'), dpi=100)
        plt.close(fig)
        made.append('latency.png')

    rs = res.get('restore')
    if rs:
        fig, ax = plt.subplots(figsize=(8, 5))
        fids = []
        for r in rs['sizes'].values():
            fids += [f for f in r['flows'] if f not in fids]
        for fid in fids:
            xs, ys, lo, hi = [], [], [], []
            for size, r in rs['sizes'].items():
                st = sget(r, 'flows', fid, 'stats')
                if st:
                    xs.append(r['bytes'] / (1 << 20))
                    ys.append(st['median'])
                    lo.append(st['median'] - st['min'])
                    hi.append(st['p90'] - st['median'])
            if xs:
                mode, b = fid.split('/')
                ax.errorbar(xs, ys, yerr=[lo, hi], marker='o', capsize=3,
                            ls='--' if b == 'upstream' else '-',
                            label=f'{mode} ({b})')
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ticks = sorted((r['bytes'] / (1 << 20), size)
                       for size, r in rs['sizes'].items())
        ax.set_xticks([x for x, _ in ticks])
        ax.set_xticklabels([size for _, size in ticks])
        ax.minorticks_off()
        ax.set_xlabel('guest RAM')
        ax.set_ylabel('migrate-incoming -> running (ms), median, min..p90')
        ax.set_title(f'restore from one mapped-ram file ({_accel(res)}); '
                     f'guest wrote {rs["fill"]:g} of its RAM')
        ax.legend()
        ax.grid(True, which='both', alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out, 'restore.png'), dpi=100)
        plt.close(fig)
        made.append('restore.png')

    dn = res.get('density')
    if dn:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
        for fid, r in dn['flows'].items():
            c = r.get('curve')
            if c:
                c = [(0, 0)] + c
                a1.plot([p[0] for p in c], [p[1] / 1024 for p in c],
                        marker='.', label=fid)
        a1.set_xlabel('VMs running (each wrote '
                      f'{dn["write_mib"]} MiB)')
        a1.set_ylabel('host MemAvailable drop (MiB)')
        a1.set_title('host memory vs number of VMs')
        a1.legend()
        a1.grid(True, alpha=0.3)
        fids = [f for f, r in dn['flows'].items() if r.get('median')]
        keys = (('ram_private', 'guest RAM private'),
                ('anon', 'process anonymous'), ('pss', 'process Pss'),
                ('tcg_rss', 'TCG cache'),
                ('drop', 'host memory (MemAvailable)'))
        w = 0.8 / len(keys)
        for j, (k, label) in enumerate(keys):
            vals = [(density_value(dn['flows'][f], k) or 0) / 1024
                    for f in fids]
            a2.bar([i + (j - len(keys) / 2 + 0.5) * w
                    for i in range(len(fids))], vals, w, label=label)
        a2.set_xticks(range(len(fids)))
        a2.set_xticklabels([f.replace('/', '\n') for f in fids])
        a2.set_ylabel('MiB per VM (medians)')
        a2.set_title('memory per VM per mode')
        a2.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, 'density.png'), dpi=100)
        plt.close(fig)
        made.append('density.png')
    return made


def _accel(res):
    return sget(res, 'meta', 'accel') or '?'


# ---------------------------------------------------------------------------
# report.md

def setup_lines(res):
    m = res['meta']
    h = m['host']
    lines = [
        f'- started {m["started"]}, run time {m.get("runtime_s", 0):.0f} s'
        f' ({"--quick" if m["quick"] else "default run"}; arguments: '
        f'`{" ".join(m["args"]) or "none"}`)',
        f'- host: Linux {h["kernel"]}, {h["cpus"]} CPUs ({h["cpu_model"]}), '
        f'{h["mem_total_kib"] / (1 << 20):.1f} GiB RAM; MemAvailable at the '
        f'start {m.get("avail0_kib", 0) / (1 << 20):.1f} GiB',
        f'- accelerator: **{m.get("accel", "?")}** (both binaries)',
        f'- guest: `{m["guest"]}` (bundled Linux guest and agent), '
        f'{m["guest_mem"]} RAM unless stated, `-M pc`, `-device vmgenid`',
        f'- QMP client library: `{m["python_qmp"]}` (used for both '
        'binaries; the protocol is the same)',
    ]
    for b, info in sorted(m.get('binaries', {}).items()):
        feats = ', '.join(k for k in ('x-ignore-shared', 'mapped-ram',
                                      'bypass-shared-memory',
                                      'mapped-ram-load') if info.get(k))
        lines.append(f'- {b}: `{info["path"]}` ({info["version"]}, built '
                     f'{info["mtime"]}); has {feats}')
    o = m['options']
    lines.append(
        f'- repetitions: floor {o["floor_reps"]}, cold boot '
        f'{o["boot_reps"]}, clones {o["reps"]} per flow, saves '
        f'{o["save_reps"]}, restores {o["restore_reps"]} per mode and size, '
        'each after one warm-up run (reported as "first run"); density '
        f'{o["clones"]} VMs per mode, started {o["parallel"]} at a time')
    if m.get('stage_s'):
        lines.append('- time per stage (s): ' + ', '.join(
            f'{k} {v:.0f}' for k, v in m['stage_s'].items()))
    return lines


def write_report(res, out, made_plots):
    md = ['# VM templating benchmarks: this series against upstream', '']
    md += ['All figures come from one run: both binaries, the same guest, '
           'the same accelerator.  Ratios are ours/upstream (below 1: ours '
           'is faster or smaller).  Medians unless stated.  See '
           '`docs/devel/vmt-benchmarks.rst` for what each scenario '
           'measures.', '']
    if res['errors']:
        md += ['**Errors:**', '']
        md += [f'- {k}: `{v.splitlines()[0]}`' for k, v in
               res['errors'].items()]
        md.append('')

    def section(key):
        md.extend([f'## {dict(SECTIONS)[key]}', ''])

    def table(t):
        md.extend([f'**{t.title}**', '', t.markdown(), ''])

    section('summary')
    table(summary_table(res))
    section('setup')
    md += setup_lines(res) + ['']

    if 'floor' in res:
        section('floor')
        md += ['Time from exec to the reply to `qmp_capabilities` (the '
               'first QMP reply, not the greeting), with the command line '
               'of a clone without RAM backend and `-incoming` (kernel, '
               'initrd, serial ports, sockets) and `-S`.', '']
        table(table_floor(res['floor']))
    if 'boot' in res:
        section('boot')
        md += ['A VM boots the guest from scratch: exec to the agent\'s '
               'banner and to the answer to the first `ping`.', '']
        table(table_boot(res['boot']))
    if 'clone' in res:
        section('clone')
        md += ['Each clone: exec, the load, the guest runs, the agent '
               'answers `ping` (pinged once the guest runs, again every '
               '0.2 s).  Flows alternate round-robin; each clone is killed '
               'before the next starts.  Templates: booted, wrote '
               f'{4} MiB, saved while running.  "upstream template flow": '
               '`-incoming defer`, `migrate-set-capabilities '
               'x-ignore-shared`, `migrate-incoming exec:cat STATE`; the '
               'clone runs by itself once loaded (no `-S`, no `cont`).  '
               'The lazy load\'s upstream comparison is the copy load.', '']
        table(table_clone(res['clone']))
        table(table_clone_detail(res['clone']))
    if 'save' in res:
        section('save')
        md += ['Templates are saved while running (not stopped first), '
               '`max-bandwidth` 0.  Shared RAM file templates: device state '
               'only, to `file:STATE`; fixed-ram: `mapped-ram` to '
               '`file:`, RAM included.  Time from `migrate` to '
               '`completed` (QMP polled every 2 ms).  Files on /dev/shm '
               '(tmpfs).', '']
        table(table_save(res['save']))
    if 'restore' in res:
        section('restore')
        rs = res['restore']
        md += ['One template per RAM size (our binary) boots, its '
               f'agent writes {rs["fill"]:g} of the RAM size (at most '
               '1024 MiB) into guest tmpfs, and it is saved with '
               '`mapped-ram` to one file (its extension records tell map '
               'that clear pages are holes; upstream reads it as its '
               'own).  Every load uses that same file: '
               '`-incoming defer`, `mapped-ram` on, `mapped-ram-load` '
               'copy, map or lazy (ours only), then the time from sending '
               '`migrate-incoming` to the `RESUME` event\'s timestamp.  '
               '"RAM populated": the template\'s guest RAM Rss before the '
               'save (boot plus written data); "file allocated": the data '
               'the file holds.', '']
        table(table_restore(rs))
        table(table_restore_lazy(rs))
        table(table_restore_tlb(rs))
        table(table_restore_after(rs))
    if 'density' in res:
        section('density')
        dn = res['density']
        md += [f'{dn["n"]} VMs per mode run at once; each VM\'s agent '
               f'writes {dn["write_mib"]} MiB (own seed) after the clone '
               'answers `ping` (cold: after the banner).  Per VM: the '
               'guest-RAM mapping from `/proc/PID/smaps` (template RAM '
               'file, the fixed-ram file\'s mappings for map, the '
               'anonymous RAM for copy and cold), process Pss and USS '
               '(Private_Clean + Private_Dirty) from `smaps_rollup`, the '
               'TCG translation cache (below).  MemAvailable drop: host '
               '`/proc/meminfo` before the first VM and with all running; '
               'released: from all running to after killing them; host '
               'memory: the mean of the two (drift from other activity on '
               'the host moves them in opposite directions).  The '
               'template files were already there (listed below).  copy '
               'and cold run on the upstream binary (upstream behaviour); '
               'bypass and map on ours.', '',
               'How to read it: in the template modes the guest RAM is a '
               'private mapping of a tmpfs file.  "private" counts the '
               'pages only this VM maps, file pages included (a template '
               'page that one clone touched is "private" to it but costs '
               'nothing extra); "anonymous" counts the copies made on '
               'write, the real per-VM cost.  For the same reason USS '
               'overstates a clone\'s own memory; process anonymous and '
               'the MemAvailable drop do not.  MemAvailable is host-wide: '
               'other jobs on the host move it too.', '']
        table(table_density(dn))
        table(table_density_cmp(dn))
        for fid, r in dn['flows'].items():
            if r.get('stopped'):
                md.append(f'- {fid}: {r["stopped"]}')
            if r.get('template_files'):
                md.append(f'- {fid}: template files (tmpfs, counted once, '
                          'not in the drop): ' + ', '.join(
                              f'{n} {fmib_b(a)} MiB apparent, '
                              f'{fmib_b(b)} MiB allocated'
                              for n, (a, b) in r['template_files'].items()))
        md.append('')
    if 'tool' in res:
        section('tool')
        tl = res['tool']
        md += ['`qemu-template` (contrib/qemu-template) makes one template '
               'per mode of the generic-kernel guest (it has '
               '`CONFIG_VMGENID`: each clone gets a new generation ID).  '
               f'No pool: {tl["clones"]} clones, one at a time, each '
               'destroyed before the next.  Pool: a pool of '
               f'{tl["pool_size"]} clones waiting with `-incoming defer`; '
               f'{tl["requests"]} requests, each sent once the pool is '
               'full again, each clone destroyed before the next request.  '
               '"request -> running" is timed by the pool (from the '
               'request to the `RESUME` event: `migrate-incoming` and the '
               'load, with its identity check for bypass).  '
               'Pooled clone memory: `smaps_rollup` of the waiting clones '
               'after 2 s idle.  Refill: a pool of '
               f'{tl["modes"].get("bypass", {}).get("refill_n", "-")} '
               'started from empty, clones per second until it is full.',
               '']
        table(table_tool(tl))
        table(table_tool_mem(tl))
    if 'breakdown' in res:
        section('breakdown')
        bd = res['breakdown']
        md += ['One clone per flow (ours: bypass and map; upstream: its '
               'template flow and the mapped-ram copy load), idle '
               f'{bd["idle_s"]:g} s after the agent answers, every mapping '
               'of `/proc/PID/smaps` put in one class by '
               '`tests/vmt/breakdown.py` (see `docs/devel/vmt-density.rst`)'
               '.  Anonymous memory is what each further clone costs; Pss '
               'of a single clone also holds file pages (template RAM, '
               'QEMU code) that more clones would share.', '']
        for tb in table_breakdown(bd):
            table(tb)
    if 'scale' in res:
        section('scale')
        sc = res['scale']
        md += ['`tests/vmt/bench_scale.py`: up to '
               f'{sc["n"]} idle clones per mode of ours at once, started '
               'with `qemu-template clone --no-pool --count '
               f'{sc["batch"]}` calls (the tool spawns 8 QEMUs at once), '
               "against upstream's x-ignore-shared clones and cold boots "
               '(at most 50 and 20: their per-VM figures are steady long '
               'before).  Every flow runs the generic-kernel guest with '
               'the same command line, a vmgenid device and `-M '
               f'{sc.get("machine", "pc,hpet=off")}` (with an HPET, '
               'upstream QEMU 10.0 keeps running the periodic timer Linux '
               'leaves behind, about 1.3 % of a core per idle VM against '
               '0.3 %; the series parks it: see '
               '`docs/devel/vmt-density.rst`).  Per VM: '
               '`smaps_rollup` means; host memory is the mean of the '
               'MemAvailable drop with all running and what stopping them '
               'gave back.  The start rate counts from the first start to '
               'the last guest running (cold boots: to the agent\'s '
               'answer), and for the first 64 (before the running VMs '
               'load the CPUs).  Idle CPU: the VMs\' CPU time during the idle '
               'period, per VM.  The memory guard may stop a flow early, '
               'and so may saturated CPUs: after a batch that takes over '
               '10 s (and 3 times the first) to start, the running VMs\' '
               'CPU use is measured for 5 s, and over 75 % of all cores '
               'stops the flow: '
               + ('; '.join(f'{k}: {v["stopped"]}' for k, v in
                            sc['flows'].items() if v.get('stopped'))
                  or 'it did not') + '.', '']
        for tb in table_scale(sc):
            table(tb)
    section('plots')
    for name, what in PLOTS:
        if name in made_plots:
            md.append(f'- `{name}`: {what}')
    md += [''] + [f'![{n}]({n})' for n in made_plots] + ['']
    section('notes')
    md += notes(res)
    with open(os.path.join(out, 'report.md'), 'w') as f:
        f.write('\n'.join(md) + '\n')


def notes(res):
    m = res['meta']
    n = []
    if m.get('accel') == 'tcg':
        n.append('- The guest runs under TCG (software emulation): the '
                 'guest\'s own work after a restore (answering `ping`) '
                 'and booting are much slower than under KVM, and each '
                 'QEMU process has a TCG translation cache that does not '
                 'exist under KVM.  Restore and QEMU start-up costs are '
                 'host work and do not depend on the accelerator.')
    n.append('- TCG translation cache: identified in `/proc/PID/smaps` as '
             'the anonymous mapping with execute permission (`rwxp`, the '
             'size of TCG\'s code buffer, 1 GiB by default; with split-wx '
             'the `tcg-jit` memfd alias); QEMU has no other executable '
             'anonymous mapping.  Its Rss is reported apart and subtracted '
             'in "Pss without TCG cache".')
    n.append('- First runs (a warm-up per series) are reported apart: '
             'memory freed on this host goes back to it within seconds, so '
             'first touches after a pause are slower.  Before each timed VM '
             'start the harness also touches and frees the memory that VM '
             'will fill (huge pages, like guest RAM), so that no flow pays '
             'for the one before it; remaining outliers show in p90.')
    if m.get('binaries_changed'):
        n.append('- **The ' + ' and '.join(m['binaries_changed']) +
                 ' binary was replaced (rebuilt) during the run**: its '
                 'figures may mix two builds.')
    n.append('- The host is shared (2 CPUs); other jobs add noise.  p90s '
             'and the plots show the spread; timings are measured, never '
             'asserted.')
    cl = res.get('clone')
    if cl:
        before = sum(r.get('running_before_qmp', 0)
                     for r in cl['flows'].values())
        if before:
            n.append(f'- {before} clone(s) already ran when QMP was '
                     'negotiated; their "running" time is the QMP reply '
                     '(an upper bound).')
    fl = res.get('floor')
    if fl:
        for mach, r in fl['machines'].items():
            if r.get('unsupported'):
                n.append(f'- -M {mach} does not start: {r["unsupported"]}')
    rs = res.get('restore')
    if rs:
        for size, r in rs['sizes'].items():
            if 'file_allocated' not in r:
                continue
            n.append(f'- restore {size}: the guest wrote {r["fill_mib"]} '
                     f'MiB; its RAM held {fmib(r["template_ram_rss_kib"])} '
                     f'MiB (boot included) before the save, the file '
                     f'{fmib_b(r["file_allocated"])} MiB of data.')
    dn = res.get('density')
    if dn:
        for fid, r in dn['flows'].items():
            if r.get('stopped'):
                n.append(f'- density {fid}: {r["stopped"]} (memory does '
                         'not allow more).')
            host = r.get('host_per_vm_kib')
            anon = sget(r, 'median', 'anon')
            if host and anon and abs(host - anon) > 0.25 * anon:
                drop = fmib(r['avail_drop_per_vm_kib'])
                rel = fmib(r['released_per_vm_kib'])
                n.append(f'- density {fid}: host memory per VM '
                         f'({fmib(host)} MiB; drop {drop}, '
                         f'release {rel}) differs '
                         f'from the process\'s anonymous memory '
                         f'({fmib(anon)} MiB) by more than 25 %: other '
                         'activity on the host moved MemAvailable; trust '
                         'the per-process figures.')
    return n


def write_all(res, out):
    """results.json, plots, report.md; returns the summary as Markdown."""
    os.makedirs(out, exist_ok=True)
    for name, _ in PLOTS:
        try:
            os.unlink(os.path.join(out, name))
        except FileNotFoundError:
            pass
    def dump():
        with open(os.path.join(out, 'results.json'), 'w') as f:
            json.dump(res, f, indent=1)
    dump()                      # the raw data first, whatever follows
    try:
        made = plots(res, out)
    except Exception as e:      # a report without plots beats none
        res['errors']['plots'] = f'{type(e).__name__}: {e}'
        made = []
    try:
        write_report(res, out, made)
        summary = summary_table(res).markdown()
    except Exception as e:
        res['errors']['report'] = f'{type(e).__name__}: {e}'
        summary = f'report failed: {res["errors"]["report"]}'
        with open(os.path.join(out, 'report.md'), 'w') as f:
            f.write(f'# VM templating benchmarks\n\n{summary}\n')
    dump()
    return summary


# ---------------------------------------------------------------------------
# --check

NUM_RE = re.compile(r'^-?\d+(\.\d+)?$')


def parse_tables(text):
    """Markdown tables of text: list of (headers, rows)."""
    tables = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith('|') and i + 1 < len(lines) and \
                re.match(r'^\|[-:| ]+\|$', lines[i + 1]):
            hdr = [c.strip() for c in lines[i].strip('|').split('|')]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith('|'):
                rows.append([c.strip()
                             for c in lines[i].strip('|').split('|')])
                i += 1
            tables.append((hdr, rows))
        else:
            i += 1
    return tables


def check(out):
    """(ok, reason, ntables, nplots)."""
    rep = os.path.join(out, 'report.md')
    js = os.path.join(out, 'results.json')
    try:
        with open(js) as f:
            res = json.load(f)
    except (OSError, ValueError) as e:
        return False, f'results.json: {e}', 0, 0
    try:
        with open(rep) as f:
            text = f.read()
    except OSError as e:
        return False, f'report.md: {e}', 0, 0
    if res.get('errors'):
        k, v = next(iter(res['errors'].items()))
        return False, f'{k} failed: {v.splitlines()[0][:200]}', 0, 0
    for key, title in SECTIONS:
        if f'\n## {title}\n' not in text:
            return False, f'section "{title}" missing', 0, 0
        if key in ('floor', 'boot', 'clone', 'save', 'restore', 'density',
                   'tool', 'breakdown', 'scale') \
                and key not in res:
            return False, f'no results for {key}', 0, 0
    tables = parse_tables(text)
    if len(tables) < 8:
        return False, f'only {len(tables)} tables', len(tables), 0
    for hdr, rows in tables:
        if not rows:
            return False, f'table "{hdr[0]}" has no rows', len(tables), 0
        nums = 0
        for r in rows:
            if len(r) != len(hdr):
                return False, f'table "{hdr[0]}": row {r[0]!r} has ' \
                    f'{len(r)} cells, not {len(hdr)}', len(tables), 0
            for h, c in zip(hdr, r):
                if not c or c.lower() in ('nan', 'none', 'inf'):
                    return False, f'table "{hdr[0]}": empty or bad cell ' \
                        f'in {r[0]!r}', len(tables), 0
                if not is_numeric_header(h):
                    continue
                if NUM_RE.match(c):
                    float(c)
                    nums += 1
                elif c != DASH and not c.startswith(NA):
                    return False, f'table "{hdr[0]}", row {r[0]!r}, ' \
                        f'column "{h}": {c!r} is not a number', \
                        len(tables), 0
        if not nums:
            return False, f'table "{hdr[0]}" has no numbers', len(tables), 0
    nplots = 0
    for name, _ in PLOTS:
        p = os.path.join(out, name)
        try:
            with open(p, 'rb') as f:
                head = f.read(8)
            if head != b'\x89PNG\r\n\x1a\n' or os.path.getsize(p) < 2000:
                return False, f'{name} is not a PNG plot', len(tables), \
                    nplots
        except OSError:
            return False, f'plot {name} missing', len(tables), nplots
        if f']({name})' not in text:
            return False, f'plot {name} not in report.md', len(tables), \
                nplots
        nplots += 1
    return True, '', len(tables), nplots


def check_and_print(out):
    ok, why, nt, npl = check(out)
    if ok:
        print(f'bench: report complete ({nt} tables, {npl} plots)',
              flush=True)
        return 0
    print(f'bench: report incomplete: {why}', flush=True)
    return 1
