#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""
Mutation test of the VM templating series over the real QEMU binary.

Makes real template streams and mapped-ram files with the QEMU under test,
writes thousands of corrupted copies of them and loads each one in a clone.
Every clone must end as a clean refusal or as a completed load; none may
end with a signal, a sanitizer report, or a hang.

Inputs (made once per run in a private temporary directory; a small VM,
-M pc -m 64M -nodefaults -accel tcg, running SeaBIOS for a moment, no
guest disk):

  bypass      a bypass-shared-memory template: RAM from memory-backend-file
              (share=on), saved with the capability to "exec:cat > STATE";
              clones map the memory file with share=off and start with
              -incoming "exec:cat STATE"
  mr-anon     a mapped-ram file of a VM with anonymous RAM
  mr-bypass   a mapped-ram file saved with bypass-shared-memory (shared RAM
              file, not in the mapped-ram file)
  mr-ignore   a mapped-ram file saved with x-ignore-shared (the clone needs
              x-ignore-shared too: -incoming defer and QMP)

Mapped-ram clones use -global migration.mapped-ram=on and take turns
with mapped-ram-load=copy, =map and =lazy (mutant i: copy if i % 3 is 0,
map if 1, lazy if 2); the summary shows them as mr-anon/copy,
mr-anon/map, mr-anon/lazy, and so on.

Mutation kinds:

  flip        1-8 random bytes of the file XORed with random values, chosen
              uniformly over the bytes the file stores (for a sparse
              mapped-ram file: stream, bitmaps and the pages written)
  flip-stream the same, restricted to the migration stream (not the
              mapped-ram bitmaps and pages, nor the trailing JSON)
  ours        a field of this series' records set to an interesting value
              (0, 1, 0x7f.., 0x80.., 0xff.., huge, -1, off by one, a bit
              flipped) or a byte array damaged: the bypass-shared-memory and
              bypass-shared-memory/identity sections (nr, idstr, every
              identity field, their section headers), the ram section's
              block list, the mapped-ram block headers (version,
              page_size, bitmap_offset, pages_offset) and the extension
              record after the first block's bitmap (every field; half
              the time with the record's CRC made right again, so that
              the loader gets past it)
  bitmap      mapped-ram bitmaps: bits flipped, words set to all ones/zero
  header      section headers and footers of every section (type byte,
              section id, name length and name, instance and version id,
              footer byte and id), the file header, the configuration
              section, the EOF byte
  trunc       truncation at every record boundary: start, end of header,
              end of content and end of footer of every section, every
              block record, mapped-ram header, bitmap and page region, the
              EOF byte and the JSON description (each boundary once, as
              the first mutants of a kind, when they fit in a quarter of
              --count: from --count 1200 on; else an evenly spaced
              subset)
  trunc-rand  truncation at a random offset

How the file is parsed (to find sections and records): the stream is
walked from its header: QEMU_VM_CONFIGURATION (its known subsections),
section start/full headers (type 0x01/0x04, be32 section id, u8 name
length, name, be32 instance id, be32 version id), part/end headers (type
0x02/0x03, be32 id) and footers (0x7e, be32 id), commands (0x08), EOF
(0x00) and the JSON description (0x06, be32 length).  The ram section's
content is parsed record by record (be64 address|flags; block list with
the mapped-ram headers, following the file offset past each block's
pages); the two bypass sections are parsed field by field (layouts of
docs/devel/migration/bypass-shared-memory.rst) and must end at their
footer; any other device section ends at the first footer carrying its
section id that is followed by a valid next section header (a heuristic;
a device's data could fake one, which would only move one truncation
point).  The pristine inputs must parse completely and load as "loaded",
or the run stops.

Outcomes of a clone (each with a timeout, default 20 s):

  refused   exited with a non-zero status, by itself, with an error message
            on stderr
  loaded    query-migrate reported "completed"; the clone then runs for a
            moment (--settle), answers query-status and exits with status
            0 on "quit"
  crashed   killed by a signal (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, ...), or
            a sanitizer report or an assertion message on stderr
  hung      no outcome before the timeout (QEMU killed)
  odd       anything else: exit status 0 without a completed load, a
            non-zero status with nothing on stderr, a clone that died after
            a completed load

A load is also flagged "accepted" when the mutation must have been
refused: a truncation before the EOF byte, a changed value of a field the
destination verifies (bypass list and identity records, except the
``full`` digest of a sampled record and the padding after an id's NUL; a
mapped-ram page_size; the offsets of a bypassed block's header), or a
changed header of the bypass sections (except an instance id of
0xffffffff, which upstream's find_se() matches as the alias id -1 of
every section registered without an alias).

Every crashed, hung, odd or accepted mutant is kept under --out (default
build/mutate/) as DIR = KIND-INDEX-OUTCOME/: the mutant file, repro.sh
(the clone's command line; for mr-ignore also its QMP steps), stderr.txt
and meta.json (what was mutated, where, the outcome); the memory files
the clones map are copied once to inputs/, with their timestamps, and so
are the pristine inputs.  The run prints counts per outcome per input
kind and mutation kind, then the failures grouped by signature (stderr
with numbers left out), and ends with one line, "mutate: PASS: ..." or
"mutate: FAIL: ...".  Exit status: 1 if any clone crashed or hung, 2 for
a setup error (an input that cannot be made, parsed or loaded), 130 when
interrupted.

Failures of upstream code that the series does not touch are labelled
"known" (the KNOWN table: each was reproduced with pristine upstream
QEMU); they still fail the run unless --ignore-known is given.

--index reruns the recipe of mutant INDEX (same --seed and --count) on
freshly made inputs, which differ a little from run to run (RAM content,
modification times, identity seeds): to reproduce a failure exactly, run
the kept repro.sh.

Usage:

  tests/vmt/mutate.py --quick           # smoke: 600 mutants, seed 1
  tests/vmt/mutate.py --count 1000      # per input kind (4 kinds)
  tests/vmt/mutate.py --kinds bypass --seed 7 --index 123   # one mutant

With a sanitizer build as --qemu, ASAN_OPTIONS defaults to detect_leaks=0
(error paths leak; a leak is not a crash) and UBSAN_OPTIONS to
print_stacktrace=1; set them to override.

Only the Python standard library is used.  Every QEMU started runs in its
own process group, is killed with its children when it is done, on
Ctrl-C and on errors, and dies with this script (setpriv --pdeathsig,
when available); the temporary directory is always removed.
"""

import argparse
import collections
import concurrent.futures
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

TOPDIR = os.path.normpath(os.path.join(os.path.dirname(
    os.path.abspath(__file__)), '..', '..'))
DEFAULT_QEMU = os.path.join(TOPDIR, 'build', 'qemu', 'qemu-system-x86_64')
DEFAULT_OUT = os.path.join(TOPDIR, 'build', 'mutate')

MEM = '64M'
KINDS = ('bypass', 'mr-anon', 'mr-bypass', 'mr-ignore')
OUTCOMES = ('refused', 'loaded', 'crashed', 'hung', 'odd')
MUTATIONS = ('flip', 'flip-stream', 'ours', 'bitmap', 'header', 'trunc',
             'trunc-rand')
CRASH_MARKS = ('AddressSanitizer', 'LeakSanitizer', 'ThreadSanitizer',
               'UndefinedBehaviorSanitizer', 'runtime error:',
               'Assertion `', 'assertion failed', '**ERROR**',
               'Bail out!', 'qemu: fatal:', 'core dumped')

# Stream constants (migration/savevm.c, migration/ram.c)
QEMU_VM_FILE_MAGIC = 0x5145564d
EOF_, START, PART, END, FULL, SUBSECTION, VMDESC, CONFIG, COMMAND = range(9)
FOOTER = 0x7e
RAM_FLAG_ZERO, RAM_FLAG_MEM_SIZE, RAM_FLAG_PAGE = 0x02, 0x04, 0x08
RAM_FLAG_EOS, RAM_FLAG_CONTINUE, RAM_FLAG_XBZRLE = 0x10, 0x20, 0x40
RAM_FLAG_HOOK, RAM_FLAG_MULTIFD_FLUSH = 0x80, 0x200
PAGE = 4096
ID_LEN = 256                    # TEMPLATE_ID_NAME_LEN
MR_HDR = 28                     # MappedRamHeader: be32 + 3 x be64
# the extension record after a mapped-ram bitmap (migration/mapped-ram-ext.c)
MR_EXT_MAGIC = b'QMRAMEXT'
MR_EXT_LEN = 56
MR_EXT_CRC = 16
MR_EXT_FIELDS = ((0, 8, 'magic', 'bytes'), (8, 4, 'version', 'int'),
                 (12, 4, 'length', 'int'), (16, 4, 'crc', 'int'),
                 (20, 4, 'reserved', 'int'), (24, 8, 'num_pages', 'int'),
                 (32, 8, 'pages_offset', 'int'), (40, 8, 'compat', 'int'),
                 (48, 8, 'incompat', 'int'))


def crc32c(data):
    crc = 0xffffffff
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82f63b78 if crc & 1 else 0)
    return crc ^ 0xffffffff


class SetupError(Exception):
    pass


def log(msg):
    print(f'mutate: {msg}', file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# processes: every QEMU in its own process group, all killed on the way out

_procs = set()
_procs_lock = threading.Lock()
_stopping = threading.Event()
_SETPRIV = shutil.which('setpriv')
# A sanitizer build (--qemu): report errors, not the leaks of error paths.
CHILD_ENV = dict(os.environ)
CHILD_ENV.setdefault('ASAN_OPTIONS', 'detect_leaks=0')
CHILD_ENV.setdefault('UBSAN_OPTIONS', 'print_stacktrace=1')


def spawn(argv, stderr_path):
    """Start @argv in a new process group, stderr to a file."""
    if _stopping.is_set():
        raise KeyboardInterrupt
    cmd = list(argv)
    if _SETPRIV:
        cmd = [_SETPRIV, '--pdeathsig', 'KILL', '--'] + cmd
    with open(stderr_path, 'wb') as err:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=err,
                             process_group=0, close_fds=True, env=CHILD_ENV)
    with _procs_lock:
        _procs.add(p)
    if _stopping.is_set():          # raced with kill_all()
        release(p)
        raise KeyboardInterrupt
    return p


def kill_group(p):
    """SIGKILL the process group of @p (QEMU and the cat of exec:) and
    reap it."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def release(p):
    """Done with @p: make sure nothing of its group survives."""
    kill_group(p)
    with _procs_lock:
        _procs.discard(p)


def kill_all():
    with _procs_lock:
        procs = list(_procs)
    for p in procs:
        kill_group(p)


# ---------------------------------------------------------------------------
# QMP over a unix socket, with deadlines

class ProcExited(Exception):
    pass


class Deadline(Exception):
    pass


class QMP:
    def __init__(self, path, proc, deadline):
        self.proc = proc
        self.deadline = deadline
        self.buf = b''
        while True:
            if proc.poll() is not None:
                raise ProcExited()
            if time.monotonic() > deadline:
                raise Deadline()
            if os.path.exists(path):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(path)
                    self.sock = s
                    break
                except OSError:
                    s.close()
            time.sleep(0.02)
        self._recv()                                    # greeting
        self.cmd('qmp_capabilities')

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _line(self):
        while b'\n' not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise Deadline()
            self.sock.settimeout(min(left, 1.0))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                raise ProcExited()
            if not data:
                raise ProcExited()
            self.buf += data
        line, self.buf = self.buf.split(b'\n', 1)
        return line

    def _recv(self):
        while True:
            line = self._line().strip()
            if not line:
                continue
            msg = json.loads(line)
            if 'event' not in msg:
                return msg

    def cmd(self, name, **args):
        msg = {'execute': name}
        if args:
            msg['arguments'] = args
        try:
            self.sock.sendall(json.dumps(msg).encode() + b'\n')
        except OSError:
            raise ProcExited()
        return self._recv()

    def ok(self, name, **args):
        r = self.cmd(name, **args)
        if 'error' in r:
            raise SetupError(f'QMP {name}: {r["error"].get("desc")}')
        return r.get('return')


# ---------------------------------------------------------------------------
# machines

def vm_argv(qemu, backend, sock):
    return [qemu, '-M', 'pc,memory-backend=mem0', '-m', MEM,
            '-object', f'{backend},id=mem0,size={MEM}',
            '-nodefaults', '-display', 'none', '-accel', 'tcg',
            '-qmp', f'unix:{sock},server=on,wait=off']


def file_backend(path, share):
    return f'memory-backend-file,mem-path={path},share={share}'


class Input:
    """A pristine input: its file, how clones load it, its parsed
    layout."""

    def __init__(self, kind, path, mem):
        self.kind = kind
        self.path = path
        self.mem = mem          # shared memory file, or None
        self.data = b''
        self.extents = []
        self.layout = None

    def clone_setup(self, qemu, state, sock, mode):
        """(argv, QMP commands to run before the load, or None)."""
        k = self.kind
        backend = (file_backend(self.mem, 'off') if self.mem
                   else 'memory-backend-ram')
        argv = vm_argv(qemu, backend, sock)
        if k == 'bypass':
            return argv + ['-incoming', f'exec:cat {state}'], None
        if k == 'mr-ignore':
            cmds = [('migrate-set-capabilities', {'capabilities': [
                        {'capability': 'mapped-ram', 'state': True},
                        {'capability': 'x-ignore-shared', 'state': True}]}),
                    ('migrate-set-parameters', {'mapped-ram-load': mode}),
                    ('migrate-incoming', {'uri': f'file:{state}'})]
            return argv + ['-incoming', 'defer'], cmds
        return argv + ['-global', 'migration.mapped-ram=on',
                       '-global', f'migration.mapped-ram-load={mode}',
                       '-incoming', f'file:{state}'], None


def make_input(qemu, kind, tmp, run_seconds=1.0):
    """Run a small VM for a moment and save it as @kind."""
    mem = os.path.join(tmp, f'{kind}.ram') if kind != 'mr-anon' else None
    state = os.path.join(tmp, f'{kind}.state')
    sock = os.path.join(tmp, f'{kind}-src.qmp')
    backend = file_backend(mem, 'on') if mem else 'memory-backend-ram'
    err = os.path.join(tmp, f'{kind}-src.err')
    p = spawn(vm_argv(qemu, backend, sock), err)
    try:
        q = QMP(sock, p, time.monotonic() + 60)
        time.sleep(run_seconds)                 # SeaBIOS writes some RAM
        caps = {'bypass': ['bypass-shared-memory'],
                'mr-anon': ['mapped-ram'],
                'mr-bypass': ['mapped-ram', 'bypass-shared-memory'],
                'mr-ignore': ['mapped-ram', 'x-ignore-shared']}[kind]
        q.ok('migrate-set-capabilities', capabilities=[
            {'capability': c, 'state': True} for c in caps])
        uri = (f'exec:cat > {state}' if kind == 'bypass'
               else f'file:{state}')
        q.ok('migrate', uri=uri)
        t_end = time.monotonic() + 120
        while True:
            st = q.ok('query-migrate').get('status')
            if st == 'completed':
                break
            if st in ('failed', 'cancelled') or time.monotonic() > t_end:
                raise SetupError(f'saving {kind}: migration {st}: '
                                 + open(err, errors='replace').read())
            time.sleep(0.05)
        q.cmd('quit')
        q.close()
        p.wait(timeout=30)
    except (ProcExited, Deadline, subprocess.TimeoutExpired) as e:
        raise SetupError(f'saving {kind}: {type(e).__name__}: '
                         + open(err, errors='replace').read())
    finally:
        release(p)
    inp = Input(kind, state, mem)
    load_input(inp)
    return inp


def data_extents(path):
    """The (start, end) ranges of @path that hold data (not holes)."""
    ext = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                s = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            e = os.lseek(fd, s, os.SEEK_HOLE)
            ext.append((s, e))
            pos = e
    finally:
        os.close(fd)
    return ext


def load_input(inp):
    with open(inp.path, 'rb') as f:
        inp.data = f.read()
    inp.extents = data_extents(inp.path) or [(0, len(inp.data))]
    inp.layout = parse_stream(inp.data, inp.kind)


# ---------------------------------------------------------------------------
# parsing the stream

class Field:
    """A field of a record: offset, size, what it is."""
    __slots__ = ('off', 'size', 'name', 'kind', 'verified', 'value', 'ok',
                 'ext')

    def __init__(self, off, size, name, kind='int', verified=False,
                 value=None, ok=(), ext=None):
        self.off, self.size, self.name = off, size, name
        self.kind, self.verified, self.value = kind, verified, value
        self.ok = ok            # other values a load may accept
        self.ext = ext          # offset of the extension record it is in


class Layout:
    def __init__(self):
        self.sections = []      # dicts: type, id, name, start, hdr_end,
                                #        end (footer start), foot_end
        self.header_fields = []     # section headers/footers, file header
        self.ours = []              # fields of this series' records
        self.bitmaps = []           # (start, end, block)
        self.pages = []             # (start, end, block)
        self.boundaries = {}        # offset -> label
        self.stream_ranges = []     # (start, end) of stream bytes
        self.eof = None             # offset of the EOF byte
        self.vmdesc = None          # (start, end) of the JSON description
        self.regions = []           # (start, end, label) for where()
        self.kind_bypass = False
        self.skips = []             # (start, end) the stream jumps over

    def boundary(self, off, label):
        self.boundaries.setdefault(off, label)

    def where(self, off):
        best = None
        for s, e, label in self.regions:
            if s <= off < e and (best is None or e - s < best[1] - best[0]):
                best = (s, e, label)
        if best is None:
            return f'offset {off:#x} (outside every known record)'
        return f'{best[2]} +{off - best[0]:#x}'


class ParseError(Exception):
    pass


class Reader:
    def __init__(self, data, pos=0):
        self.d, self.pos = data, pos

    def need(self, n):
        if self.pos + n > len(self.d):
            raise ParseError(f'short read at {self.pos:#x}')

    def u8(self):
        self.need(1)
        self.pos += 1
        return self.d[self.pos - 1]

    def be16(self):
        self.need(2)
        self.pos += 2
        return struct.unpack_from('>H', self.d, self.pos - 2)[0]

    def be32(self):
        self.need(4)
        self.pos += 4
        return struct.unpack_from('>I', self.d, self.pos - 4)[0]

    def be64(self):
        self.need(8)
        self.pos += 8
        return struct.unpack_from('>Q', self.d, self.pos - 8)[0]

    def raw(self, n):
        self.need(n)
        self.pos += n
        return self.d[self.pos - n:self.pos]


def _printable(b):
    return all(0x20 < c < 0x7f for c in b)


def _valid_next(d, p, known_ids):
    """Whether a section (or EOF, a command) plausibly starts at @p."""
    if p >= len(d):
        return False
    t = d[p]
    if t == EOF_:
        return p + 1 == len(d) or d[p + 1] == VMDESC
    if t in (PART, END):
        return (p + 5 <= len(d) and
                struct.unpack_from('>I', d, p + 1)[0] in known_ids)
    if t in (START, FULL):
        if p + 6 > len(d):
            return False
        n = d[p + 5]
        return (n > 0 and p + 6 + n + 8 <= len(d) and
                _printable(d[p + 6:p + 6 + n]))
    return t == COMMAND


def parse_stream(d, kind):
    """Walk the stream of @d (kind tells the capabilities it was saved
    with) and return its Layout; raise ParseError if it does not parse."""
    mapped = kind.startswith('mr-')
    ignore = kind == 'mr-ignore'
    L = Layout()
    L.kind_bypass = kind == 'mr-bypass'
    r = Reader(d)
    if r.be32() != QEMU_VM_FILE_MAGIC or r.be32() != 3:
        raise ParseError('not a QEMU_VM_FILE_MAGIC v3 stream')
    L.header_fields += [Field(0, 4, 'file magic'),
                        Field(4, 4, 'file version')]
    L.regions.append((0, 8, 'file header'))
    L.boundary(0, 'empty file')
    L.boundary(4, 'inside file header')
    L.boundary(8, 'after file header')
    stream_start = 0
    ids = {}
    while True:
        p = r.pos
        t = r.u8()
        L.boundary(p, f'before section byte {t:#x}')
        L.header_fields.append(Field(p, 1, f'section type @{p:#x}'))
        if t == EOF_:
            L.eof = p
            L.boundary(p + 1, 'after EOF byte')
            L.stream_ranges.append((stream_start, p + 1))
            L.regions.append((p, p + 1, 'EOF byte'))
            if r.pos < len(d) and d[r.pos] == VMDESC:
                q = r.pos
                r.u8()
                n = r.be32()
                L.header_fields.append(Field(q + 1, 4, 'vmdesc length'))
                r.raw(n)
                L.vmdesc = (q, r.pos)
                L.regions.append((q, r.pos, 'JSON description'))
                L.boundary(q + 1, 'after vmdesc type')
                L.boundary(q + 5, 'after vmdesc length')
                L.boundary(q + 5 + n // 2, 'middle of JSON description')
                L.boundary(r.pos, 'end of JSON description')
            break
        if t == CONFIG:
            n = r.be32()
            name = r.raw(n)
            L.header_fields.append(Field(p + 1, 4, 'configuration name len'))
            L.header_fields.append(Field(p + 5, n, 'configuration name',
                                         'bytes'))
            while r.pos < len(d) and d[r.pos] == SUBSECTION:
                q = r.pos
                r.u8()
                sl = r.u8()
                sname = r.raw(sl).decode(errors='replace')
                r.be32()
                L.boundary(q, f'configuration subsection {sname}')
                L.header_fields.append(Field(q + 1, 1 + sl + 4,
                                             f'subsection {sname} header',
                                             'bytes'))
                if sname == 'configuration/target-page-bits':
                    L.header_fields.append(Field(r.pos, 4,
                                                 'target-page-bits'))
                    r.be32()
                elif sname == 'configuration/capabilities':
                    L.header_fields.append(Field(r.pos, 4, 'caps_count'))
                    for _ in range(r.be32()):
                        r.raw(r.u8())
                elif sname == 'configuration/uuid':
                    r.raw(16)
                else:
                    raise ParseError(f'unknown configuration subsection '
                                     f'{sname}')
            L.regions.append((p, r.pos, f'configuration {name!r}'))
            L.boundary(r.pos, 'after configuration')
            continue
        if t == COMMAND:
            cmd = r.be16()
            n = r.be16()
            r.raw(n)
            L.header_fields.append(Field(p + 1, 4, f'command {cmd} header'))
            L.regions.append((p, r.pos, f'command {cmd}'))
            L.boundary(r.pos, f'after command {cmd}')
            continue
        if t in (START, FULL):
            sid = r.be32()
            nl = r.u8()
            name = r.raw(nl).decode(errors='replace')
            inst = r.be32()
            ver = r.be32()
            ids[sid] = name
            hdr = [Field(p + 1, 4, 'section id'), Field(p + 5, 1, 'name len'),
                   Field(p + 6, nl, 'name', 'bytes'),
                   # find_se() also matches an instance id equal to the
                   # section's alias id, -1 when it has none
                   Field(p + 6 + nl, 4, 'instance id', ok=(0xffffffff,)),
                   Field(p + 10 + nl, 4, 'version id')]
        elif t in (PART, END):
            sid = r.be32()
            if sid not in ids:
                raise ParseError(f'unknown section id {sid} at {p:#x}')
            name = ids[sid]
            hdr = [Field(p + 1, 4, 'section id')]
        else:
            raise ParseError(f'unknown section type {t:#x} at {p:#x}')
        tname = {START: 'start', PART: 'part', END: 'end', FULL: 'full'}[t]
        label = f'section {name!r} ({tname}, id {sid})'
        ours = name.startswith('bypass-shared-memory')
        for f in hdr:
            f.name = f'{label} {f.name}'
            f.verified = ours
            (L.ours if ours else L.header_fields).append(f)
            if ours:
                L.header_fields.append(f)
        hdr_end = r.pos
        L.boundary(hdr_end, f'after header of {label}')
        if name == 'ram':
            parse_ram(r, L, t, mapped, ignore, label)
            end = r.pos
            if d[end:end + 5] != bytes([FOOTER]) + struct.pack('>I', sid):
                raise ParseError(f'no footer after {label} at {end:#x}')
        elif name == 'bypass-shared-memory':
            parse_bypass_list(r, L, label)
            end = r.pos
        elif name == 'bypass-shared-memory/identity':
            parse_bypass_identity(r, L, label)
            end = r.pos
        else:
            foot = bytes([FOOTER]) + struct.pack('>I', sid)
            q = hdr_end
            while True:
                q = d.find(foot, q)
                if q < 0:
                    raise ParseError(f'no footer for {label}')
                if _valid_next(d, q + 5, ids):
                    break
                q += 1
            end = q
        if d[end:end + 5] != bytes([FOOTER]) + struct.pack('>I', sid):
            raise ParseError(f'{label}: content does not end at its footer '
                             f'({end:#x})')
        r.pos = end + 5
        L.header_fields += [Field(end, 1, f'{label} footer byte'),
                            Field(end + 1, 4, f'{label} footer id')]
        L.boundary(end, f'end of content of {label}')
        L.boundary(end + 1, f'inside footer of {label}')
        L.boundary(end + 5, f'after footer of {label}')
        L.sections.append(dict(type=t, id=sid, name=name, start=p,
                               hdr_end=hdr_end, end=end, foot_end=end + 5))
        L.regions.append((p, end + 5, label))
    # the stream ranges: everything but what a mapped-ram block header
    # makes the stream skip (bitmap, alignment, pages) and the JSON
    ranges, s = [], 0
    for hs, he in sorted(L.skips):
        if hs > s:
            ranges.append((s, hs))
        s = max(s, he)
    end = L.eof + 1
    ranges.append((s, end))
    L.stream_ranges = [(a, min(b, end)) for a, b in ranges if a < end]
    for s, e, blk in L.bitmaps:
        L.regions.append((s, e, f'mapped-ram bitmap of {blk}'))
    for s, e, blk in L.pages:
        L.regions.append((s, e, f'mapped-ram pages of {blk}'))
    return L


def parse_ram(r, L, t, mapped, ignore, label):
    """The ram section's content up to RAM_SAVE_FLAG_EOS."""
    blk = None
    while True:
        q = r.pos
        v = r.be64()
        flags = v & 0xfff
        L.boundary(q, f'{label}: record at {q:#x}')
        if flags & RAM_FLAG_MEM_SIZE:
            total = v & ~0xfff
            L.ours.append(Field(q, 8, f'{label} total RAM | MEM_SIZE'))
            while total:
                b = r.pos
                n = r.u8()
                name = r.raw(n).decode(errors='replace')
                length = r.be64()
                L.boundary(b, f'{label}: block {name} record')
                L.ours += [Field(b, 1, f'block {name} id length'),
                           Field(b + 1, n, f'block {name} id', 'bytes'),
                           Field(b + 1 + n, 8, f'block {name} used_length')]
                if ignore:
                    L.ours.append(Field(r.pos, 8, f'block {name} mr_addr'))
                    r.be64()
                if mapped:
                    h = r.pos
                    ver, psz, bmo, pgo = struct.unpack_from('>IQQQ', r.d, h)
                    r.raw(MR_HDR)
                    nopages = not bmo and not pgo
                    # a bypassed block's header has both offsets 0
                    L.ours += [
                        Field(h, 4, f'block {name} mapped-ram version'),
                        Field(h + 4, 8, f'block {name} mapped-ram page_size',
                              verified=True),
                        Field(h + 12, 8,
                              f'block {name} mapped-ram bitmap_offset',
                              verified=nopages and L.kind_bypass),
                        Field(h + 20, 8,
                              f'block {name} mapped-ram pages_offset',
                              verified=nopages and L.kind_bypass)]
                    L.boundary(h, f'mapped-ram header of {name}')
                    L.boundary(h + MR_HDR, f'after mapped-ram header of '
                               f'{name}')
                    L.regions.append((b, h + MR_HDR,
                                      f'block record {name}'))
                    if pgo:
                        nbits = length // PAGE
                        bsize = (nbits + 63) // 64 * 8
                        L.bitmaps.append((bmo, bmo + bsize, name))
                        L.pages.append((pgo, pgo + length, name))
                        L.boundary(bmo, f'bitmap of {name}')
                        L.boundary(bmo + bsize, f'end of bitmap of {name}')
                        L.boundary(pgo, f'pages of {name}')
                        L.boundary(pgo + length // 2,
                                   f'middle of pages of {name}')
                        L.boundary(pgo + length - 1,
                                   f'last byte of pages of {name}')
                        L.boundary(pgo + length, f'end of pages of {name}')
                        L.skips.append((h + MR_HDR, pgo + length))
                        ext = bmo + bsize
                        # The first block's record (guest RAM): the
                        # others' would outnumber every other field.
                        if (r.d[ext:ext + 8] == MR_EXT_MAGIC and
                                all(f.ext is None for f in L.ours)):
                            L.ours += [Field(ext + o, n, f'block {name} '
                                             f'extension record {f}', k,
                                             ext=ext)
                                       for o, n, f, k in MR_EXT_FIELDS]
                            L.boundary(ext, f'extension record of {name}')
                            L.regions.append((ext, ext + MR_EXT_LEN,
                                              f'extension record of {name}'))
                        r.pos = pgo + length
                else:
                    L.regions.append((b, r.pos, f'block record {name}'))
                if length > total:
                    raise ParseError('block lengths exceed the total')
                total -= length
            continue
        if flags & RAM_FLAG_EOS:
            return
        if flags & RAM_FLAG_MULTIFD_FLUSH and not flags & ~RAM_FLAG_MULTIFD_FLUSH:
            continue
        if flags & (RAM_FLAG_ZERO | RAM_FLAG_PAGE):
            if not flags & RAM_FLAG_CONTINUE:
                blk = r.raw(r.u8()).decode(errors='replace')
            if flags & RAM_FLAG_ZERO:
                r.u8()
            else:
                r.raw(PAGE)
            L.regions.append((q, r.pos, f'{label} page of {blk} at '
                              f'{v & ~0xfff:#x}'))
            continue
        raise ParseError(f'{label}: unexpected RAM flags {flags:#x} at '
                         f'{q:#x}')


def parse_bypass_list(r, L, label):
    q = r.pos
    nr = r.be32()
    L.ours.append(Field(q, 4, f'{label} nr', verified=True, value=nr))
    L.boundary(q + 4, f'{label}: after nr')
    for i in range(nr):
        b = r.pos
        idstr = r.raw(ID_LEN)
        n = idstr.index(0)
        L.boundary(b, f'{label}: name {i}')
        L.ours += [Field(b, n + 1, f'{label} name[{i}] (id and NUL)',
                         'bytes', verified=True),
                   Field(b + n + 1, ID_LEN - n - 1,
                         f'{label} name[{i}] padding', 'bytes')]
    L.regions.append((q, r.pos, f'{label} content'))


IDENTITY = (('used_length', 8), ('page_size', 8), ('file_size', 8),
            ('fd_offset', 8), ('mr_addr', 8), ('mtime_ns', 8), ('check', 1),
            ('seed', 8), ('samples', 4), ('sampled', 32), ('full', 32))


def parse_bypass_identity(r, L, label):
    q = r.pos
    nr = r.be32()
    L.ours.append(Field(q, 4, f'{label} nr', verified=True, value=nr))
    L.boundary(q + 4, f'{label}: after nr')
    for i in range(nr):
        b = r.pos
        idstr = r.raw(ID_LEN)
        n = idstr.index(0)
        L.boundary(b, f'{label}: record {i}')
        L.ours += [Field(b, n + 1, f'{label} [{i}].idstr (id and NUL)',
                         'bytes', verified=True),
                   Field(b + n + 1, ID_LEN - n - 1,
                         f'{label} [{i}].idstr padding', 'bytes')]
        check = r.d[r.pos + 48]
        for name, size in IDENTITY:
            f = r.pos
            r.raw(size)
            L.boundary(f, f'{label}: [{i}].{name}')
            L.ours.append(Field(f, size, f'{label} [{i}].{name}',
                                'bytes' if size == 32 else 'int',
                                verified=(name != 'full' or check == 1)))
    L.regions.append((q, r.pos, f'{label} content'))


# ---------------------------------------------------------------------------
# mutations

def interesting(size):
    bits = size * 8
    mask = (1 << bits) - 1
    vals = {0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0xfff, 0x1000, 0x7fff, 0x8000,
            0xffff, 0x7fffffff, 0x80000000, 0xffffffff, 0x100000000,
            1 << 40, 0x7fffffffffffffff, 0x8000000000000000, mask,
            mask - 1}
    return sorted(v & mask for v in vals)


class Mutant:
    def __init__(self, kind, index, mode, mutation):
        self.kind, self.index, self.mode = kind, index, mode
        self.mutation = mutation
        self.patches = []           # (offset, bytes)
        self.trunc = None           # new file size
        self.what = []              # descriptions
        self.must_refuse = False

    def label(self):
        return f'{self.kind}/{self.mode}' if self.mode else self.kind

    def describe(self):
        return '; '.join(self.what)


def pick_data_offset(rng, ranges):
    total = sum(e - s for s, e in ranges)
    x = rng.randrange(total)
    for s, e in ranges:
        if x < e - s:
            return s + x
        x -= e - s
    raise AssertionError


def mutate_flip(rng, inp, m, ranges):
    for _ in range(rng.choice((1, 1, 1, 2, 3, 4, 8))):
        off = pick_data_offset(rng, ranges)
        x = rng.choice((1 << rng.randrange(8), rng.randrange(1, 256)))
        m.patches.append((off, bytes([inp.data[off] ^ x])))
        m.what.append(f'byte {off:#x} ^= {x:#04x} '
                      f'({inp.layout.where(off)})')


def mutate_field(rng, inp, m, f):
    """Damage field @f; note whether a load must be refused."""
    old = inp.data[f.off:f.off + f.size]
    if f.kind == 'bytes' or f.size not in (1, 2, 4, 8):
        how = rng.randrange(6)
        b = bytearray(old)
        if how == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
            desc = f'bit flipped in byte {i}'
        elif how == 1 and b:
            i = rng.randrange(len(b))
            b[i] = rng.choice((0, 0xff, 0x41, 0x2f))
            desc = f'byte {i} set to {b[i]:#x}'
        elif how == 2:
            b = bytearray(len(b))
            desc = 'all zero'
        elif how == 3:
            b = bytearray(b'\xff' * len(b))
            desc = 'all 0xff'
        elif how == 4:
            b = bytearray(b'A' * len(b))
            desc = "all 'A' (no NUL)"
        else:
            b = bytearray(rng.randbytes(len(b)))
            desc = 'random'
        new = bytes(b)
    else:
        fmt = {1: '>B', 2: '>H', 4: '>I', 8: '>Q'}[f.size]
        mask = (1 << (8 * f.size)) - 1
        v = struct.unpack(fmt, old)[0]
        how = rng.randrange(4)
        if how == 0:
            nv = rng.choice(interesting(f.size))
        elif how == 1:
            nv = v ^ (1 << rng.randrange(8 * f.size))
        elif how == 2:
            nv = (v + rng.choice((1, -1, 2, -2, PAGE, -PAGE, 1 << 20,
                                  -(1 << 20), v, -(v // 2)))) & mask
        else:
            nv = rng.getrandbits(8 * f.size)
        new = struct.pack(fmt, nv & mask)
        desc = f'{v:#x} -> {nv & mask:#x}'
    m.patches.append((f.off, new))
    if (f.ext is not None and f.off != f.ext + MR_EXT_CRC and
            rng.randrange(2)):
        # The CRC made right again: the loader looks at the field.
        rec = bytearray(inp.data[f.ext:f.ext + MR_EXT_LEN])
        rec[f.off - f.ext:f.off - f.ext + f.size] = new
        rec[MR_EXT_CRC:MR_EXT_CRC + 4] = bytes(4)
        m.patches.append((f.ext + MR_EXT_CRC,
                          struct.pack('>I', crc32c(rec))))
        desc += ', CRC made right'
    m.what.append(f'{f.name} @{f.off:#x}: {desc}')
    if (f.verified and new != old and
            int.from_bytes(new, 'big') not in f.ok):
        m.must_refuse = True


def make_mutant(inp, kind, index, seed, trunc_points):
    rng = random.Random(f'{seed}:{kind}:{index}')
    L = inp.layout
    mode = None
    if kind != 'bypass':
        mode = ('copy', 'map', 'lazy')[index % 3]
    # the first mutants: truncations at the boundaries
    if index < len(trunc_points):
        m = Mutant(kind, index, mode, 'trunc')
        off, label = trunc_points[index]
        m.trunc = off
        m.what.append(f'truncated to {off:#x} ({label})')
        m.must_refuse = off <= L.eof
        return m
    choices = [('flip', 20), ('flip-stream', 20), ('ours', 35),
               ('header', 15), ('trunc-rand', 5)]
    if L.bitmaps:
        choices.append(('bitmap', 10))
    names, weights = zip(*choices)
    mut = rng.choices(names, weights)[0]
    m = Mutant(kind, index, mode, mut)
    if mut == 'flip':
        mutate_flip(rng, inp, m, inp.extents)
    elif mut == 'flip-stream':
        mutate_flip(rng, inp, m, L.stream_ranges)
    elif mut == 'ours':
        for _ in range(rng.choice((1, 1, 1, 2))):
            mutate_field(rng, inp, m, rng.choice(L.ours))
    elif mut == 'header':
        mutate_field(rng, inp, m, rng.choice(L.header_fields))
    elif mut == 'bitmap':
        s, e, blk = rng.choice(L.bitmaps)
        how = rng.randrange(3)
        if how == 0:
            for _ in range(rng.choice((1, 1, 2, 8))):
                off = rng.randrange(s, e)
                bit = rng.randrange(8)
                m.patches.append((off, bytes([inp.data[off] ^ (1 << bit)])))
                m.what.append(f'bitmap of {blk}: bit {(off - s) * 8 + bit} '
                              'flipped')
        else:
            w = s + rng.randrange((e - s) // 8) * 8
            val = b'\xff' * 8 if how == 1 else b'\0' * 8
            m.patches.append((w, val))
            m.what.append(f'bitmap of {blk}: word {(w - s) // 8} set to '
                          f'{val[0]:#x}s')
    elif mut == 'trunc-rand':
        off = rng.randrange(len(inp.data))
        m.trunc = off
        m.what.append(f'truncated to {off:#x} ({L.where(off)})')
        m.must_refuse = off <= L.eof
    return m


def truncation_points(inp, count):
    """Boundary truncation offsets for @count mutants of @inp: all of
    them when they fit in a quarter of @count, else an even subset."""
    pts = sorted((o, lbl) for o, lbl in inp.layout.boundaries.items()
                 if 0 <= o < len(inp.data))
    room = max(1, count // 4)
    if len(pts) <= room:
        return pts, len(pts)
    step = len(pts) / room
    return [pts[int(i * step)] for i in range(room)], len(pts)


def write_mutant(inp, m, path):
    size = len(inp.data) if m.trunc is None else m.trunc
    data = memoryview(inp.data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for s, e in inp.extents:
            e = min(e, size)
            if s < e:
                os.pwrite(fd, data[s:e], s)
        for off, b in m.patches:
            if off < size:
                os.pwrite(fd, b[:size - off], off)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# one clone

class Result:
    def __init__(self, outcome, detail, argv, stderr, rc, secs):
        self.outcome, self.detail, self.argv = outcome, detail, argv
        self.stderr, self.rc, self.secs = stderr, rc, secs
        self.known = None


def classify_exit(rc, err, loaded):
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f'signal {-rc}'
        return 'crashed', f'killed by {name}'
    for mark in CRASH_MARKS:
        if mark in err:
            return 'crashed', f'stderr has {mark!r}, exit {rc}'
    if rc in (128 + signal.SIGABRT, 128 + signal.SIGSEGV):
        return 'crashed', f'exit status {rc}'
    if loaded:
        return 'odd', f'exited with status {rc} after a completed load'
    if rc == 0:
        return 'odd', 'exit status 0 without a completed load'
    if not err.strip():
        return 'odd', f'exit status {rc}, nothing on stderr'
    return 'refused', f'exit status {rc}'


def run_clone(qemu, inp, state, work, mode, timeout, settle):
    sock = os.path.join(work, 'qmp.sock')
    errp = os.path.join(work, 'stderr')
    argv, cmds = inp.clone_setup(qemu, state, sock, mode)
    t0 = time.monotonic()
    deadline = t0 + timeout
    p = spawn(argv, errp)
    outcome = detail = None
    loaded = False
    q = None
    try:
        try:
            q = QMP(sock, p, deadline)
            for name, args in cmds or ():
                r = q.cmd(name, **args)
                if 'error' in r:
                    raise SetupError(f'clone QMP {name}: {r["error"]}')
            while True:
                info = q.cmd('query-migrate').get('return', {})
                st = info.get('status')
                if st == 'completed':
                    break
                time.sleep(0.05)
            loaded = True
            s1 = q.cmd('query-status').get('return', {}).get('status')
            time.sleep(settle)
            s2 = q.cmd('query-status').get('return', {}).get('status')
            q.cmd('quit')
            detail = f'loaded, status {s1} then {s2}'
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise Deadline()
        except ProcExited:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                outcome, detail = 'hung', 'QMP closed but QEMU did not exit'
        except Deadline:
            outcome = 'hung'
            detail = (f'no outcome after {timeout} s'
                      + (' (load completed, quit did not end it)'
                         if loaded else ''))
    finally:
        if q:
            q.close()
        rc = p.poll()
        release(p)
    secs = time.monotonic() - t0
    try:
        with open(errp, errors='replace') as f:
            err = f.read()
    except OSError:
        err = ''
    if outcome is None:
        o, d = classify_exit(rc, err, loaded)
        if loaded and o == 'odd' and rc == 0:
            o = 'loaded'
        elif loaded and o == 'odd':
            d = f'{d} ({detail})'
        if o != 'loaded' or detail is None:
            detail = d
        outcome = o
    return Result(outcome, detail, argv, err, rc, secs)


# ---------------------------------------------------------------------------
# the run

def shell_quote(a):
    if a and all(c.isalnum() or c in '-_=/.,:+@%' for c in a):
        return a
    return "'" + a.replace("'", "'\\''") + "'"


REPRO_QMP = """python3 - <<'EOF'
import json, socket, time
s = socket.socket(socket.AF_UNIX)
for _ in range(500):
    try:
        s.connect('qmp.sock')
        break
    except OSError:
        time.sleep(0.02)
f = s.makefile('rw')
f.readline()
for c in ({'execute': 'qmp_capabilities'},
          {'execute': 'migrate-set-capabilities', 'arguments': {
              'capabilities': [{'capability': 'mapped-ram', 'state': True},
                               {'capability': 'x-ignore-shared',
                                'state': True}]}},
          {'execute': 'migrate-set-parameters',
           'arguments': {'mapped-ram-load': '%s'}},
          {'execute': 'migrate-incoming',
           'arguments': {'uri': 'file:mutant.state'}}):
    f.write(json.dumps(c) + '\\n')
    f.flush()
    print(f.readline().strip())
EOF
"""


def keep(out, inp, m, res, state, why):
    d = os.path.join(out, f'{m.kind}-{m.index:05d}-{why}')
    os.makedirs(d, exist_ok=True)
    st = os.path.join(d, 'mutant.state')
    write_mutant(inp, m, st)
    argv = [a.replace(state, st) for a in res.argv]
    if inp.mem:
        kept = os.path.join(out, 'inputs', os.path.basename(inp.mem))
        argv = [a.replace(inp.mem, kept) for a in argv]
    argv = [a.replace(os.path.dirname(state), d) if a.startswith('unix:')
            else a for a in argv]
    with open(os.path.join(d, 'repro.sh'), 'w') as f:
        f.write('#!/bin/sh\n# mutant %s #%d (%s): %s\n' % (
            m.label(), m.index, m.mutation, m.describe()))
        f.write('cd "$(dirname "$0")" && rm -f qmp.sock\n')
        cmd = ' '.join(shell_quote(a) for a in argv)
        if inp.kind == 'mr-ignore':
            # x-ignore-shared has no -global: set it over QMP
            f.write(cmd + ' &\n' + REPRO_QMP % m.mode + 'wait $!\n')
        else:
            f.write(cmd + '\n')
        f.write('echo "exit status $?"\n')
    os.chmod(os.path.join(d, 'repro.sh'), 0o755)
    with open(os.path.join(d, 'stderr.txt'), 'w') as f:
        f.write(res.stderr)
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump(dict(kind=m.kind, mode=m.mode, index=m.index,
                       mutation=m.mutation, what=m.what,
                       must_refuse=m.must_refuse, outcome=res.outcome,
                       detail=res.detail, rc=res.rc, seconds=res.secs,
                       argv=argv), f, indent=1)
    return d


def keep_inputs(out, inputs):
    d = os.path.join(out, 'inputs')
    os.makedirs(d, exist_ok=True)
    for inp in inputs.values():
        dst = os.path.join(d, os.path.basename(inp.path))
        write_mutant(inp, Mutant(inp.kind, -1, None, ''), dst)
        if inp.mem:
            dst = os.path.join(d, os.path.basename(inp.mem))
            src_ext = data_extents(inp.mem)
            size = os.path.getsize(inp.mem)
            with open(inp.mem, 'rb') as fi, open(dst, 'wb') as fo:
                for s, e in src_ext:
                    fi.seek(s)
                    fo.seek(s)
                    fo.write(fi.read(e - s))
                fo.truncate(size)
            st = os.stat(inp.mem)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def main():
    ap = argparse.ArgumentParser(
        description='Mutation test: corrupted template streams and '
        'mapped-ram files, each loaded by a clone.')
    ap.add_argument('--qemu', default=DEFAULT_QEMU)
    ap.add_argument('--count', type=int, default=500,
                    help='mutants per input kind (default 500)')
    ap.add_argument('--seed', type=int, default=None,
                    help='random seed (default: time based, printed; 1 '
                    'with --quick)')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--out', default=DEFAULT_OUT)
    ap.add_argument('--timeout', type=float, default=20.0,
                    help='seconds a clone may take (default 20)')
    ap.add_argument('--settle', type=float, default=0.2,
                    help='seconds a loaded clone runs before quit')
    ap.add_argument('--quick', action='store_true',
                    help='smoke run: 150 mutants per kind (600 in all), '
                    'seed 1 unless --seed')
    ap.add_argument('--kinds', default=','.join(KINDS),
                    help='comma-separated input kinds (default: all)')
    ap.add_argument('--index', type=int, action='append',
                    help='run only mutant INDEX (repeatable), to reproduce')
    ap.add_argument('--ignore-known', action='store_true',
                    help='known failures of upstream code (listed in '
                    'KNOWN) do not make the exit status non-zero')
    ap.add_argument('--tmpdir', default=None,
                    help='where the private temp dir goes (default '
                    '/dev/shm if writable, else $TMPDIR)')
    args = ap.parse_args()
    if args.quick:
        args.count = 150
    if args.seed is None:
        args.seed = 1 if args.quick else int(time.time()) % 100000
    kinds = [k for k in args.kinds.split(',') if k]
    for k in kinds:
        if k not in KINDS:
            ap.error(f'unknown kind {k}; kinds: {", ".join(KINDS)}')
    qemu = os.path.abspath(args.qemu)
    if not os.access(qemu, os.X_OK):
        log(f'QEMU binary {qemu} not found')
        return 2
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))    # no core files
    base = args.tmpdir
    if base is None:
        base = '/dev/shm' if os.access('/dev/shm', os.W_OK) else None
    tmp = tempfile.mkdtemp(prefix='vmt-mutate-', dir=base)

    def on_signal(signum, frame):
        _stopping.set()
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return run(args, qemu, kinds, tmp)
    except KeyboardInterrupt:
        _stopping.set()
        log('interrupted: killing QEMU processes, removing ' + tmp)
        return 130
    except SetupError as e:
        log(f'setup failed: {e}')
        return 2
    finally:
        _stopping.set()
        kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, qemu, kinds, tmp):
    t_start = time.monotonic()
    print(f'mutate: QEMU {qemu}, seed {args.seed}, {args.count} mutants per '
          f'kind, {args.workers} workers, timeout {args.timeout:g} s',
          flush=True)
    inputs = {}
    for k in kinds:
        t = time.monotonic()
        try:
            inputs[k] = make_input(qemu, k, tmp)
        except ParseError as e:
            raise SetupError(f'{k}: the pristine file does not parse: {e}')
        L = inputs[k].layout
        print(f'mutate: input {k}: {len(inputs[k].data)} bytes '
              f'({sum(e - s for s, e in inputs[k].extents)} stored), '
              f'{len(L.sections)} sections, {len(L.ours)} fields of ours, '
              f'{len(L.boundaries)} boundaries '
              f'({time.monotonic() - t:.1f} s)', flush=True)

    # the pristine inputs must load, in each mode
    base = os.path.join(tmp, 'baseline')
    os.makedirs(base)
    for k, inp in inputs.items():
        for mode in ((None,) if k == 'bypass' else ('copy', 'map', 'lazy')):
            res = run_clone(qemu, inp, inp.path, base, mode, args.timeout,
                            args.settle)
            if res.outcome != 'loaded':
                raise SetupError(f'pristine {k} ({mode}) did not load: '
                                 f'{res.outcome}, {res.detail}: '
                                 f'{res.stderr.strip()}')
            print(f'mutate: pristine {k}{"/" + mode if mode else ""} '
                  f'loads: {res.detail} ({res.secs:.2f} s)', flush=True)

    jobs = []
    covered = {}
    for k, inp in inputs.items():
        pts, nb = truncation_points(inp, args.count)
        covered[k] = (len(pts), nb)
        idx = args.index if args.index else range(args.count)
        for i in idx:
            jobs.append(make_mutant(inp, k, i, args.seed, pts))
    random.Random(args.seed).shuffle(jobs)      # mix kinds across workers

    os.makedirs(args.out, exist_ok=True)
    kept_inputs = False
    stats = collections.defaultdict(collections.Counter)
    kept = []
    accepted = []
    lock = threading.Lock()
    must = collections.Counter()
    done = [0]

    def one(m):
        if _stopping.is_set():
            return None
        inp = inputs[m.kind]
        w = tempfile.mkdtemp(dir=tmp, prefix='m')
        try:
            state = os.path.join(w, 'mutant.state')
            write_mutant(inp, m, state)
            res = run_clone(qemu, inp, state, w, m.mode, args.timeout,
                            args.settle)
            res.known = known(m, res, os.path.getsize(state))
            why = None
            if res.outcome in ('crashed', 'hung', 'odd'):
                why = res.outcome
            elif res.outcome == 'loaded' and m.must_refuse:
                why = 'accepted'
            path = None
            if why:
                nonlocal kept_inputs
                with lock:
                    if not kept_inputs:
                        keep_inputs(args.out, inputs)
                        kept_inputs = True
                path = keep(args.out, inp, m, res, state, why)
            return m, res, why, path
        finally:
            shutil.rmtree(w, ignore_errors=True)

    t_mut = time.monotonic()
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=args.workers)
    try:
        futs = [ex.submit(one, m) for m in jobs]
        for fut in concurrent.futures.as_completed(futs):
            r = fut.result()
            if r is None:
                continue
            m, res, why, path = r
            with lock:
                stats[(m.label(), m.mutation)][res.outcome] += 1
                if m.must_refuse:
                    must[res.outcome] += 1
                if why == 'accepted':
                    stats[(m.label(), m.mutation)]['accepted'] += 1
                    accepted.append((m, res, path))
                elif why:
                    kept.append((m, res, path))
                done[0] += 1
            if why:
                print(f'mutate: {why.upper()}'
                      f'{" (known)" if res.known else ""}: {m.label()} #{m.index} '
                      f'{m.mutation}: {m.describe()} -> {res.detail} '
                      f'[{path}]', flush=True)
            if done[0] % 100 == 0:
                print(f'mutate: {done[0]}/{len(jobs)} '
                      f'({time.monotonic() - t_mut:.0f} s)', flush=True)
    except KeyboardInterrupt:
        _stopping.set()
        for f in futs:
            f.cancel()
        kill_all()
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)

    report(stats, covered, kept, accepted, len(jobs),
           time.monotonic() - t_mut, time.monotonic() - t_start)
    print(f'mutate: {sum(must.values())} mutants had to be refused '
          '(truncated before EOF, a verified field changed): '
          + ', '.join(f'{must[o]} {o}' for o in OUTCOMES))
    bad = [r for _, r, _ in kept if r.outcome in ('crashed', 'hung')
           and not (args.ignore_known and r.known)]
    nk = sum(1 for _, r, _ in kept if r.known and
             r.outcome in ('crashed', 'hung'))
    verdict = 'FAIL' if bad else 'PASS'
    print(f'mutate: {verdict}: {len(bad)} crashed or hung'
          + (f' ({nk} known upstream failures ignored)'
             if args.ignore_known and nk else
             f' ({nk} of them known upstream failures)' if nk else ''),
          flush=True)
    return 1 if bad else 0


def _norm(line):
    """@line with its numbers (not those inside identifiers) as N."""
    return re.sub(r'(?<![A-Za-z0-9_])(0x[0-9a-fA-F]+|[0-9]+)', 'N', line)


def signature(res):
    """What a failure looks like, numbers and paths left out."""
    lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
    key = ''
    for ln in lines:
        if any(k in ln for k in ('Unexpected error', 'Assertion', 'assertion',
                                 'ERROR', 'Sanitizer', 'runtime error',
                                 'fatal')):
            key = ln
            break
    if not key and lines:
        key = lines[-1]
    key = _norm(key.replace('qemu-system-x86_64: ', ''))[:150]
    return f'{res.outcome}: {res.detail.split(" (")[0]}: {key or "(no stderr)"}'


# Failures of upstream QEMU 10.0 code that this series does not touch,
# with the reason; --ignore-known keeps them out of the exit status.
# The upstream crashes this test found earlier are fixed by the series
# (exec: hanging on an empty stream, qemu_ram_resize() wrapping, the
# configuration section's allocations, fw_cfg's error_abort, IDE retrying
# a PIO write on a unit without a drive) and are no longer listed: a
# regression fails the run.
# An entry is (name, predicate(mutant, result, size), reason).
KNOWN = (
    ('upstream timers: a virtual clock years ahead, caught up tick by tick',
     lambda m, res, size: (res.outcome == 'hung' and
                           any("section 'timer'" in w for w in m.what)),
     'the "timer" section holds the virtual clock; a flipped high byte of '
     'cpu_clock_offset moves it years ahead, and the main loop then runs '
     'periodic device timers one period at a time to catch up (100% CPU, '
     'QMP never answers); pristine upstream hangs the same way on a plain '
     'precopy stream with that byte flipped'),
)


def known(m, res, size):
    for name, pred, _ in KNOWN:
        if pred(m, res, size):
            return name
    return None


def report(stats, covered, kept, accepted, njobs, t_mut, t_all):
    cols = OUTCOMES + ('accepted',)
    print()
    print(f'{"input/load":18} {"mutation":12}' +
          ''.join(f'{c:>9}' for c in cols))
    tot_kind = collections.defaultdict(collections.Counter)
    total = collections.Counter()
    for (label, mut) in sorted(stats, key=lambda x: (
            x[0], MUTATIONS.index(x[1]))):
        c = stats[(label, mut)]
        print(f'{label:18} {mut:12}' + ''.join(f'{c[o]:9}' for o in cols))
        tot_kind[label].update(c)
        total.update(c)
    print()
    for label in sorted(tot_kind):
        c = tot_kind[label]
        print(f'{label:18} {"(all)":12}' + ''.join(f'{c[o]:9}'
                                                  for o in cols))
    print(f'{"total":18} {"":12}' + ''.join(f'{total[o]:9}' for o in cols))
    for k, (n, nb) in covered.items():
        print(f'mutate: {k}: {n} of {nb} boundary truncations run')
    print(f'mutate: {sum(total[o] for o in OUTCOMES)} of {njobs} mutants '
          f'in {t_mut:.0f} s ({t_all:.0f} s with the inputs); '
          + ', '.join(f'{total[o]} {o}' for o in cols))
    groups = collections.OrderedDict()
    for m, res, path in kept:
        groups.setdefault(signature(res), []).append((m, res, path))
    for sig, items in groups.items():
        kn = items[0][1].known
        print(f'mutate: {len(items)} x {sig}' +
              (f'  [known: {kn}]' if kn else ''))
        for m, res, path in items[:5]:
            print(f'    {m.label()} #{m.index} {m.mutation}: '
                  f'{m.describe()[:200]}')
            print(f'      kept in {path}')
        if len(items) > 5:
            print(f'    ... and {len(items) - 5} more')
    for name, _, why in KNOWN:
        if any(res.known == name for _, res, _ in kept):
            print(f'mutate: known: {name}: {why}')
    if accepted:
        fields = collections.Counter(m.describe().split(' @')[0].split(' (')[0]
                                     for m, _, _ in accepted)
        print(f'mutate: {len(accepted)} loads of mutants that should have '
              'been refused, kept as *-accepted:')
        for f, n in fields.most_common():
            print(f'    {n} x {f}')


if __name__ == '__main__':
    sys.exit(main())
