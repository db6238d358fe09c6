#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# VMT guest agent: a line-based request/answer loop on a serial port.
# Started by /init of the test guest (tests/guest/init).  The protocol
# (requests, answers, prefixes) is documented in ONE place:
# docs/devel/vmt-guest-agent.rst -- keep it in sync with this file.
#
# Usage: agent.sh [PORT]   (default /dev/ttyS1)

port=${1:-/dev/ttyS1}
data=/data/pattern
version=1

cr=$(printf '\r')

# Raw mode: no echo of requests, no CR/LF translation, no signals.
stty -F "$port" raw -echo 2>/dev/null
exec < "$port" > "$port" 2>/dev/null

reply() {
    printf 'VMT-AGENT %s\n' "$*"
}

is_uint() {
    case $1 in ''|*[!0-9]*) return 1 ;; esac
    [ ${#1} -le 9 ]
}

# write SEED MIB: MIB MiB of pages of 4096 bytes; each page starts with a
# header naming the seed and the page number, the rest of the page is a
# window (at a seeded random offset) into a 4 KiB seeded random string.
do_write() {
    rm -f "$data"
    awk -v seed="$1" -v pages=$(($2 * 256)) 'BEGIN {
        srand(seed)
        r = ""
        for (i = 0; i < 64; i++) {
            c = ""
            for (j = 0; j < 64; j++)
                c = c sprintf("%c", 33 + int(rand() * 94))
            r = r c
        }
        r = r r
        for (p = 0; p < pages; p++) {
            h = sprintf("VMT-PATTERN seed=%d page=%d\n", seed, p)
            printf "%s%s", h, substr(r, 1 + int(rand() * 4096), 4096 - length(h))
        }
    }' > "$data"
}

do_genid() {
    drv=0
    dev=0
    if [ -d /sys/bus/acpi/drivers/vmgenid ]; then
        for f in /sys/bus/acpi/drivers/vmgenid/*:*; do
            [ -e "$f" ] && drv=1
        done
    fi
    for f in /sys/bus/acpi/devices/QEMUVGID:*; do
        [ -e "$f" ] && dev=1
    done
    crng=0
    [ -e /run/crng-ready ] && crng=1
    n=$(dmesg | grep -c 'crng reseeded due to virtual machine fork')
    reply "genid driver=$drv device=$dev reseeds=${n:-0} crng=$crng"
}

# net: the guest's network interfaces (not lo) and their MAC addresses
do_net() {
    out=""
    for d in /sys/class/net/*; do
        n=${d##*/}
        [ "$n" = lo ] || [ ! -e "$d/address" ] && continue
        out="$out $n=$(cat "$d/address")"
    done
    reply "net${out:- none}"
}

reply "READY $version"

while IFS= read -r line; do
    line=${line%"$cr"}
    set -f                      # split the request, never glob it
    # shellcheck disable=SC2086
    set -- $line
    set +f
    [ $# -gt 0 ] || continue
    case $1 in
    ping)
        reply pong
        ;;
    write)
        if [ $# -ne 3 ] || ! is_uint "$2" || ! is_uint "$3" ||
           [ "$3" -lt 1 ] || [ "$3" -gt 1024 ]; then
            reply "err usage write SEED MIB"
        elif do_write "$2" "$3"; then
            reply "ok write $3"
        else
            rm -f "$data"
            reply "err write failed"
        fi
        ;;
    sum)
        if [ -f "$data" ]; then
            s=$(sha256sum "$data")
            reply "sum ${s%% *}"
        else
            reply "err nodata"
        fi
        ;;
    rand)
        if [ $# -ne 2 ] || ! is_uint "$2" || [ "$2" -lt 1 ] ||
           [ "$2" -gt 4096 ]; then
            reply "err usage rand N"
        else
            h=$(head -c "$2" /dev/urandom | od -An -v -tx1 | tr -d ' \n')
            reply "rand $h"
        fi
        ;;
    genid)
        do_genid
        ;;
    net)
        do_net
        ;;
    disk)
        # read from the device, not from the page cache
        if [ ! -b /dev/vda ]; then
            reply "disk none"
        elif echo 3 > /proc/sys/vm/drop_caches &&
             s=$(sha256sum /dev/vda); then
            reply "disk ${s%% *}"
        else
            reply "err disk read failed"
        fi
        ;;
    diskloop)
        # the same reads, again and again, in the background
        if [ ! -b /dev/vda ]; then
            reply "disk none"
        else
            (while :; do
                echo 3 > /proc/sys/vm/drop_caches
                cat /dev/vda > /dev/null
            done) < /dev/null > /dev/null 2>&1 &
            reply "ok diskloop"
        fi
        ;;
    *)
        reply "err unknown $line"
        ;;
    esac
done

exit 1
