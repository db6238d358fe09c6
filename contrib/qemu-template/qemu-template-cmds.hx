HXCOMM SPDX-License-Identifier: GPL-2.0-or-later
HXCOMM The commands of qemu-template: one source for the command table,
HXCOMM --help and the manual.  See docs/devel/docs.rst for the format.
HXCOMM DEF(command, function, synopsis, summary) makes the table entry and
HXCOMM the help text; the text between SRST and ERST goes to the manual
HXCOMM (docs/tools/qemu-template.rst) and is left out of the C version.

DEF("create", cmd_create,
    "create NAME [--mode bypass|mapped-ram] [--qemu PATH] [--ready COND]... [--timeout S] -- QEMU-ARGS...",
    "Boot a VM, wait until it is ready, save it as template NAME.")
SRST
.. option:: create NAME [--mode bypass|mapped-ram] [--qemu PATH] [--ready COND]... [--timeout S] -- QEMU-ARGS...

  Start QEMU with *QEMU-ARGS*, wait until the guest is ready, save the
  VM and publish it as template *NAME*.  The template is built in a
  hidden directory next to its final place and renamed into place once
  complete: a failed or interrupted ``create`` leaves no template.  Its
  files and directory lose their write permissions.

  ``--mode bypass`` (the default) puts guest RAM in a shared memory file
  of the template (``-m SIZE`` is required) and saves the device state
  only, while the guest runs; ``--mode mapped-ram`` keeps the RAM of the
  command line, stops the VM and saves its RAM and device state to one
  fixed-ram file (clones of it are resumed once loaded).

  QEMU starts paused (``-S``) and runs once the tool listens to its
  events.  Each ``--ready`` *COND* must hold in turn (without any,
  the VM is saved at once): ``delay:SECONDS``; ``event:NAME``, a QMP
  event (such as ``NIC_RX_FILTER_CHANGED`` when the guest's network
  driver starts) that came after the tool let the guest run, each
  ``event:`` condition taking one occurrence (none is lost while earlier
  conditions are waited for; the tool's own ``RESUME`` is not one);
  ``log:FILE:TEXT``,
  *FILE* (for example a serial port's file or a chardev ``logfile``)
  contains *TEXT*; ``ga:SOCKET``, the guest agent (qemu-ga) on the UNIX
  socket *SOCKET* of a chardev answers ``guest-ping``; ``signal``, the
  tool gets ``SIGUSR1``.  ``SIGUSR1`` also ends any wait: "save now".
  ``--timeout`` (300 s) bounds the wait for the guest, and again the
  save.  ``SIGINT``, ``SIGTERM`` and ``SIGHUP`` interrupt ``create``
  cleanly; if the tool is killed, its QEMU dies with it and the next
  ``create`` of the name removes what was left.

  In *QEMU-ARGS*, ``@DIR@`` stands for the directory of each VM: the
  template's while it is made, each clone's later.  Put sockets and logs
  there.  In the value of an option that takes an option list
  (``-chardev``, ``-netdev``, ``-device``, ``-object``, ``-drive`` and
  the like) a comma of the directory is doubled, or, in a JSON value,
  the directory is escaped as a JSON string; in the old character device
  syntax of ``-serial``, ``-monitor``, ``-qmp``, ``-gdb`` and the like a
  comma is doubled after ``unix:`` (an option list), and
  ``file:@DIR@/x`` gets the plain path.  The tool adds its QMP
  monitor, the ``vmgenid`` device, ``-uuid``, ``-name``, ``-S``,
  ``-incoming``, ``-add-fd`` and, in bypass mode, the RAM backend; these
  may not be given, nor ``-daemonize`` and ``-readconfig`` (whose file
  the tool could not check).
ERST

DEF("clone", cmd_clone,
    "clone NAME [--count N] [--no-pool] [--nic NETDEV]... [--qemu PATH] [--timeout S] [-- EXTRA-QEMU-ARGS...]",
    "Start N clones of NAME (from its pool when one runs).")
SRST
.. option:: clone NAME [--count N] [--no-pool] [--nic NETDEV]... [--qemu PATH] [--timeout S] [-- EXTRA-QEMU-ARGS...]

  Start *N* clones (1) of template *NAME*.  For each it prints the
  clone's id, ``pid``, QMP socket path ``qmp``, its ``vmgenid`` and
  ``uuid``, and the time from exec to the guest running; with ``--json``,
  a JSON array of clone records.  The clones run in sessions of their
  own and outlive the tool.  *EXTRA-QEMU-ARGS* are added to each clone's
  command line (for example a network backend); ``@DIR@`` works there
  too, and they follow the rules of ``create``'s arguments.

  Each clone starts with ``-incoming defer``; its QEMU version is
  checked against the template's before any of the template's state is
  loaded, then the state is loaded with ``migrate-incoming``; a clone
  that does not run ``--timeout`` seconds (120) after that fails.  Without
  a pool, up to eight clones start at once and each is reported as soon
  as it runs, with its own time from exec.  If one fails, the others not
  reported yet are stopped; the clones already reported keep running.
  A clone's record is written before its process starts: whatever
  happens to the tool, ``list`` shows every clone it started and
  ``destroy`` stops it.  ``SIGINT``, ``SIGTERM`` and ``SIGHUP`` stop the
  clones not reported yet.

  ``--nic NETDEV`` (repeatable) gives each clone, once it runs, a
  ``virtio-net-pci`` NIC with a new locally administered MAC address on
  the netdev *NETDEV*, which the extra arguments define (for example
  ``--nic n0 -- -netdev tap,id=n0,ifname=...``).  The NIC is hotplugged:
  the guest probes it and reads its MAC like any new device, so every
  clone has its own.  A NIC that was in the template keeps the template's
  MAC (see Limitations).  The record lists the NICs.

  The template's files must still have the sizes the manifest records,
  the QEMU binary (``--qemu``) must be the one that made the template,
  and it must report the version that made the template; otherwise the
  clone is refused and nothing is left behind.

  When a pool of the template runs, ``clone`` takes its clones from it
  (unless ``--no-pool``) if the pool's clones were started with the
  same extra arguments and NICs and the pool takes the connection;
  otherwise it says so and starts its own.  The record of a clone from a pool holds ``request-us`` (from the
  request to the answer, what the client waits for) and
  ``request-running-us`` (to the guest running) instead of ``qmp-us``,
  ``running-us`` and ``ready-us`` (from exec).
ERST

DEF("pool", cmd_pool,
    "pool NAME [--size N] [--nic NETDEV]... [--qemu PATH] [--timeout S] [--client-timeout S] [--daemonize] [--pidfile FILE] [-- EXTRA-QEMU-ARGS...]",
    "Keep N clones of NAME waiting for their state; serve requests.")
SRST
.. option:: pool NAME [--size N] [--nic NETDEV]... [--qemu PATH] [--timeout S] [--client-timeout S] [--daemonize] [--pidfile FILE] [-- EXTRA-QEMU-ARGS...]

  Keep *N* clones (1) of template *NAME* started, with everything but
  the state loaded (``-incoming defer``, their own identity, guest RAM
  mapped, QEMU version checked), and serve requests on
  ``DIR/pools/NAME.sock``: the pool loads the state into its oldest
  waiting clone, so a request costs the restore alone, and starts a new
  clone in its place, only while no request is being served.

  The pool prints ``pool NAME: N clones ready on SOCKET`` once it is
  full and runs until ``SIGTERM``, ``SIGINT``, ``SIGHUP``, ``qemu-template
  stop NAME`` or a ``quit`` request: the clones still waiting are
  stopped, the clones handed out keep running.  ``--daemonize`` returns
  once the pool is full (or failed, with its error) and leaves it
  running in the background, in ``/``, without the descriptors it was
  started with; ``--pidfile`` writes its pid (see Trust and permissions)
  and is removed when the pool stops.  A pool started after one was
  killed stops the waiting clones that the killed one left (their
  records say which).  The pool opens the template's files when it
  starts and clones those.  A clone that dies while it starts (killed,
  or out of memory) is replaced; if three in a row fail to start (a
  template that cannot be cloned), the pool reports the last error and
  stops.  ``--timeout`` is ``clone``'s.  A request whose client is gone
  before its clone runs has the clone stopped (``abandoned``).

  The socket is its user's alone: other users are refused (their
  ``SO_PEERCRED``).  It speaks one JSON object per line:
  ``{"execute": "clone"}`` (with ``"arguments": {"args": [...],
  "nics": [...]}``, which must match the pool's) answers ``{"return":
  CLONE-RECORD}``; ``{"execute": "status"}`` answers the template, pid,
  size, clones ready, starting and loading, requests waiting, clones
  served, failed requests, clones abandoned and being stopped, and the
  last error; ``{"execute": "quit"}`` stops the pool.  Errors are
  ``{"error": {"class": CLASS, "desc": TEXT}}``.  At most 32 clients are
  connected (class ``Busy`` for more); a client must send a whole
  request within ``--client-timeout`` seconds (60) of connecting or of
  its last answer, and read each answer within as long, else it is
  dropped, whatever it trickles meanwhile.
ERST

DEF("stop", cmd_stop,
    "stop NAME",
    "Stop the pool of template NAME.")
SRST
.. option:: stop NAME

  Stop the pool of template *NAME* and wait until it is gone.
ERST

DEF("list", cmd_list,
    "list [NAME]",
    "Templates, their clones and pools.")
SRST
.. option:: list [NAME], status [NAME]

  Templates, their pools (pid, size, clones ready, served and failed),
  their clones, whether each clone runs, its state and its memory
  (proportional set size, private and shared, from
  ``/proc/PID/smaps_rollup``).  A damaged template is listed with the
  reason.
ERST

DEF("status", cmd_list,
    "status [NAME]",
    "The same as list.")

DEF("destroy", cmd_destroy,
    "destroy NAME|CLONE",
    "Stop and remove a clone, or remove a template.")
SRST
.. option:: destroy NAME|CLONE

  Stop a clone and remove its directory, or remove a template.  A
  template with running clones or a running pool, or whose files any
  process maps, is not removed.
ERST

DEF("help", cmd_help,
    "help [COMMAND]",
    "This help, or a command's.")
