#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Seeds for the vmt-migration-* fuzz targets (vmt_migration_fuzz.c): real
# streams saved by QEMU from the machine the targets load them into.
#
#   vmt-make-seeds.py --qemu build/qemu/qemu-system-x86_64 --out build/fuzz
#
# writes, in OUT:
#   bios.bin, template.mem   the files the fuzzed machine uses (VMT_FUZZ_DIR)
#   seeds/TARGET/*.bin       the seeds of each target
#
# The template's memory file gets deterministic content and modification
# time, so that streams and crashers saved against one run of this script
# still pass the template identity check against the next.  The guest never
# runs (-S): a generic loader writes a pattern into its RAM at reset, so
# that RAM and mapped-ram bitmaps are not all zero.
#
# The mapped-ram files (mostly holes) are stored as the list of their data
# extents, the input format of the mapped-ram targets:
#   be64 offset, be32 length, length bytes; the last extent ends the file.

import argparse
import json
import os
import struct
import subprocess
import sys

RAM = "4M"              # VMT_FUZZ_RAM in vmt_migration_fuzz.c
RAM_BYTES = 4 << 20
BIOS_BYTES = 64 << 10
PAGE = 4096
PATTERN_ADDR = 0x100000
TEMPLATE_MTIME_NS = 1767225600 * 10**9     # 2026-01-01T00:00:00Z


def machine_args(out, template, share):
    """The fuzzed machine's command line (vmt_cmdline()), source side."""
    args = ["-machine", "pc,suppress-vmdesc=on", "-accel", "qtest",
            "-m", RAM, "-nodefaults", "-display", "none",
            "-bios", os.path.join(out, "bios.bin")]
    if template:
        args += ["-object",
                 "memory-backend-file,id=mem0,size=%s,mem-path=%s,share=%s"
                 % (RAM, os.path.join(out, "template.mem"),
                    "on" if share else "off"),
                 "-machine", "memory-backend=mem0"]
    return args


class Qmp:
    def __init__(self, qemu, args):
        self.proc = subprocess.Popen(
            [qemu] + args + ["-S", "-qmp", "stdio"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.read()                 # greeting
        self.cmd("qmp_capabilities")

    def read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("QEMU exited (status %s)" % self.proc.wait())
        return json.loads(line)

    def cmd(self, name, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        while True:
            r = self.read()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError("%s: %s" % (name, r["error"]["desc"]))

    def migrate_to(self, path):
        self.cmd("migrate", uri="file:" + path)
        while True:
            st = self.cmd("query-migrate")
            if st.get("status") == "completed":
                return
            if st.get("status") in ("failed", "cancelled"):
                raise RuntimeError("migrate: %s" % st.get("error-desc"))

    def quit(self):
        try:
            self.cmd("quit")
        except RuntimeError:
            pass
        self.proc.wait(timeout=30)


def pattern():
    """64 KiB for guest RAM: data pages with two zero pages among them."""
    out = bytearray()
    for page in range(16):
        if page in (6, 7):
            out += bytes(PAGE)
            continue
        out += bytes(((i * 2654435761 + page * 40503) >> 13) & 0xff
                     for i in range(PAGE))
    return bytes(out)


def save(qemu, out, name, template, share, caps, params=None):
    path = os.path.join(out, "tmp-" + name)
    args = machine_args(out, template, share)
    args += ["-device", "loader,file=%s,addr=0x%x"
             % (os.path.join(out, "pattern.bin"), PATTERN_ADDR)]
    vm = Qmp(qemu, args)
    try:
        if template:
            # After the loader wrote the pattern through the shared mapping.
            os.utime(os.path.join(out, "template.mem"),
                     ns=(TEMPLATE_MTIME_NS, TEMPLATE_MTIME_NS))
        vm.cmd("migrate-set-capabilities",
               capabilities=[{"capability": c, "state": True} for c in caps])
        if params:
            vm.cmd("migrate-set-parameters", **params)
        if os.path.exists(path):
            os.unlink(path)
        vm.migrate_to(path)
    finally:
        vm.quit()
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data


def sparse(data):
    """The data extents of a file: be64 offset, be32 length, bytes."""
    out = bytearray()
    size = len(data)
    off = done = 0
    while off < size:
        if not any(data[off:off + PAGE]):
            off += PAGE
            continue
        start = off
        while off < size and any(data[off:off + PAGE]):
            off += PAGE
        done = min(off, size)
        out += struct.pack(">QI", start, done - start) + data[start:done]
    if done < size:
        # The stream ends where the file does: its last page is an extent.
        last = (size - 1) // PAGE * PAGE
        out += struct.pack(">QI", last, size - last) + data[last:]
    return bytes(out)


def strip_ext(data):
    """The file without its extension records (after each bitmap), as
    upstream QEMU writes it: the map loader then walks its data extents."""
    return data.replace(b"QMRAMEXT", bytes(8))


def write_seed(out, target, name, data):
    d = os.path.join(out, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    print("seeds: %s/%s: %d bytes" % (target, name, len(data)))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--qemu", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)

    with open(os.path.join(out, "bios.bin"), "wb") as f:
        f.write(bytes(BIOS_BYTES))
    with open(os.path.join(out, "pattern.bin"), "wb") as f:
        f.write(pattern())
    mem = os.path.join(out, "template.mem")
    if os.path.exists(mem):
        os.chmod(mem, 0o644)
        os.unlink(mem)
    with open(mem, "wb") as f:
        f.truncate(RAM_BYTES)

    bypass = ["bypass-shared-memory"]
    full = {"bypass-shared-memory-check": "full"}
    mr = ["mapped-ram"]

    # Plain streams into a clone of the template.
    t = "vmt-migration-bypass"
    write_seed(out, t, "bypass-sampled.bin",
               save(a.qemu, out, "b1", True, True, bypass))
    write_seed(out, t, "bypass-full.bin",
               save(a.qemu, out, "b2", True, True, bypass, full))
    write_seed(out, t, "no-bypass.bin",
               save(a.qemu, out, "b3", True, True, []))

    # mapped-ram files of a VM with anonymous RAM.
    raw = save(a.qemu, out, "m1", False, False, mr)
    anon = sparse(raw)
    for t in ("vmt-migration-mapped-ram-copy", "vmt-migration-mapped-ram-map"):
        write_seed(out, t, "mapped-ram.bin", anon)
    write_seed(out, "vmt-migration-mapped-ram-map", "mapped-ram-no-ext.bin",
               sparse(strip_ext(raw)))

    # mapped-ram files of the template, RAM bypassed (and sent, for copy).
    mb = sparse(save(a.qemu, out, "m2", True, True, mr + bypass))
    mbf = sparse(save(a.qemu, out, "m3", True, True, mr + bypass, full))
    ms = sparse(save(a.qemu, out, "m4", True, True, mr))
    for t in ("vmt-migration-bypass-mapped-ram-copy",
              "vmt-migration-bypass-mapped-ram-map"):
        write_seed(out, t, "mapped-ram-bypass.bin", mb)
        write_seed(out, t, "mapped-ram-bypass-full.bin", mbf)
    write_seed(out, "vmt-migration-bypass-mapped-ram-copy",
               "mapped-ram-sent.bin", ms)

    # Clones map the template read-only; keep it so.
    os.chmod(mem, 0o444)
    return 0


if __name__ == "__main__":
    sys.exit(main())
