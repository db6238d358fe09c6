# SPDX-License-Identifier: GPL-2.0-or-later
"""
The qemu-template part of the demo (tests/vmt/demo.py): the tool makes a
template of the bundled guest (generic kernel, build/guest-vmgenid, which
has CONFIG_VMGENID), starts clones, then starts a pool and takes clones
from it; each clone gets a NIC with a new MAC (--nic) and shows its
identity as QEMU and the guest see it, its start time and its memory;
then the tool removes everything.
"""

import json
import os
import statistics
import subprocess
import time

import vmt

TOOL_MODES = ('bypass', 'mapped-ram')
# each clone gets a NIC with its own MAC, on a netdev of its own
NIC = ['--nic', 'n0', '--', '-netdev', 'hubport,id=n0,hubid=0']


class ToolRun:
    def __init__(self, binary, accel, clones, guest):
        self.binary = binary
        self.tool = vmt.template_tool(binary)
        self.accel = accel
        self.clones = clones
        self.guest = guest
        self.tmp = vmt.TempDir(prefix='vmt-demo-tool-')
        self.dir = self.tmp.join('templates')

    def run_tool(self, *args):
        r = subprocess.run([self.tool, '--dir', self.dir, '--json', *args],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=600,
                           env=vmt.template_tool_env(self.binary))
        if r.returncode:
            raise vmt.VMTError(f'qemu-template {args[0]}: {r.stderr.strip()}')
        return json.loads(r.stdout) if r.stdout.strip() else None

    def mode(self, mode):
        name = f'demo-{mode}'
        man = self.run_tool('create', name, '--mode', mode,
                            '--qemu', self.binary, '--ready', vmt.TOOL_READY,
                            '--', *vmt.tool_guest_args(self.guest,
                                                       self.accel))
        print(f'qemu-template create {name} --mode {mode}: ready after '
              f'{man["times"]["ready-ms"] / 1000:.1f} s, saved in '
              f'{man["times"]["save-ms"]} ms; template identity vmgenid '
              f'{man["identity"]["vmgenid"][:8]}… uuid '
              f'{man["identity"]["uuid"][:8]}…')
        self.show_clones(name, 'clone', 'running-us', 'exec to running',
                         NIC)
        pool = subprocess.Popen([self.tool, '--dir', self.dir, 'pool', name,
                                 '--size', str(self.clones), *NIC],
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env=vmt.template_tool_env(self.binary))
        try:
            line = pool.stdout.readline().strip()
            if 'clones ready' not in line:
                raise vmt.VMTError(f'pool: {line}')
            print(f'qemu-template pool {name} --size {self.clones}: {line}')
            self.show_clones(name, 'clone (from the pool)', 'request-running-us',
                             'request to running', [])
        finally:
            pool.terminate()
            pool.wait(60)
            pool.stdout.close()
        self.run_tool('destroy', name)
        print()

    @staticmethod
    def guest_mac(agent, timeout=30.0):
        """The guest's eth0 MAC once it probed the hotplugged NIC."""
        end = time.monotonic() + timeout
        while True:
            ans = agent.request('net')
            if 'eth0=' in ans or time.monotonic() > end:
                return ans.split('eth0=')[1].split()[0] \
                    if 'eth0=' in ans else '-'
            time.sleep(0.2)

    def show_clones(self, name, what, key, label, extra):
        clones = self.run_tool('clone', name, '--count', str(self.clones),
                               *extra)
        try:
            listed = {c['id']: c for c in self.run_tool('list', name)[0]
                      ['clones']}
            print(f'qemu-template {what} {name} --count {self.clones}'
                  f'{" " + " ".join(extra) if extra else ""}:')
            print(f'  {"clone":<26} {"vmgenid":<9} {"uuid":<9} '
                  f'{"ms":>9} {"reseeds":>7} {"rand (guest)":<17} '
                  f'{"MAC (guest)":<17} {"PSS":>7} {"private":>8}')
            times = []
            for c in clones:
                agent = vmt.Agent(os.path.join(c['dir'], 'agent.sock'))
                agent.connect()
                try:
                    gen = agent.genid()
                    rnd = agent.rand(8)
                    mac = self.guest_mac(agent)
                finally:
                    agent.close()
                mem = listed.get(c['id'], {}).get('memory', {})
                t = c['times'][key] / 1000
                times.append(t)
                print(f'  {c["id"]:<26} {c["identity"]["vmgenid"][:8]:<9} '
                      f'{c["identity"]["uuid"][:8]:<9} {t:>7.1f}ms '
                      f'{gen["reseeds"]:>7} {rnd:<17} {mac:<17} '
                      f'{mem.get("pss-kib", 0) / 1024:>5.1f}Mi '
                      f'{mem.get("private-kib", 0) / 1024:>6.1f}Mi')
            print(f'  median {label}: {statistics.median(times):.1f}'
                  f' ms ({len(times)} clones)')
        finally:
            for c in clones:
                self.run_tool('destroy', c['id'])

    def run(self):
        try:
            for mode in TOOL_MODES:
                self.mode(mode)
            return True
        finally:
            self.tmp.cleanup()


def run(binary, accel, clones):
    """The tool's part of the demo; False if it failed, None if the tool
    is not built (upstream QEMU)."""
    if not os.access(vmt.template_tool(binary), os.X_OK):
        return None
    print('qemu-template: templates and unique clones in two commands '
          f'(guest {vmt.vmgenid_guest_dir()}, generic kernel)')
    guest = vmt.build_vmgenid_guest()
    try:
        return ToolRun(binary, accel, clones, guest).run()
    except (vmt.VMTError, OSError, ValueError) as e:
        print(f'qemu-template demo: FAILED: {e}')
        return False
