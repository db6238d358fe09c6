#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# A Debian chroot that runs the newest upstream QEMU Debian ships as a
# binary (qemu-system-x86 from trixie-backports: 11.1.3 when this was
# written), for the stream compatibility checks of make check
# (tests/vmt/compat_upstream.py).  Debian 12 has no such QEMU, so it runs
# in a trixie chroot made with debootstrap.
#
#   upstream-chroot.sh ensure    make the chroot when it is missing,
#                                broken or made for other packages; print
#                                its directory and the QEMU version
#
# The chroot is cached outside the clone (like the compiler cache) in
# $VMT_UPSTREAM_CHROOT, by default ~/.cache/qemu-vmt-trixie.  Its stamp
# file records what was asked for (suite, variant, packages, mirror) and
# what was installed; a different request, a missing stamp or a QEMU that
# does not run makes it again.  It is built in a temporary folder and
# renamed into place, under a lock, so a failed or interrupted build never
# leaves a half chroot behind.  Mounts made while building (/proc, for the
# packages' scripts) live in a private mount namespace (unshare -m) and
# are unmounted on exit, whatever happens.
#
# Exit status: 0 ready; 77 it cannot be made here (no network to the
# archive, debootstrap or apt failed, not root): the reason is printed on
# the last line, "upstream-chroot: unavailable: REASON".
set -eu

SUITE=trixie
BACKPORTS=trixie-backports
PKGS=qemu-system-x86
MIRROR=${VMT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DIR=${VMT_UPSTREAM_CHROOT:-${HOME:-/root}/.cache/qemu-vmt-trixie}
STAMP=$DIR/.vmt-stamp
KEY="suite=$SUITE variant=minbase backports=$BACKPORTS packages=$PKGS mirror=$MIRROR"

say() { echo "upstream-chroot: $*"; }
unavailable() { say "unavailable: $*"; exit 77; }

# The chroot is usable: its stamp matches the request and its QEMU runs.
usable() {
    [ -f "$STAMP" ] && [ "$(sed -n 's/^key: //p' "$STAMP")" = "$KEY" ] &&
    want=$(sed -n 's/^qemu: //p' "$STAMP") && [ -n "$want" ] &&
    got=$(chroot "$DIR" /usr/bin/qemu-system-x86_64 --version 2>/dev/null |
          head -1) &&
    [ "$got" = "$want" ]
}

report() {
    say "ready: $DIR"
    say "$(sed -n 's/^package: //p' "$STAMP")"
    say "$(sed -n 's/^qemu: //p' "$STAMP")"
}

# build TMPDIR: runs inside a private mount namespace (see ensure).
build() {
    tmp=$1
    log=$DIR.build.log
    : > "$log"
    # A quick probe first: debootstrap's wget retries for many minutes
    # when the network drops packets.
    if ! wget -q -T 15 -t 2 -O /dev/null "$MIRROR/dists/$SUITE/InRelease" \
            >> "$log" 2>&1; then
        unavailable "no answer from the Debian archive at $MIRROR (wget $MIRROR/dists/$SUITE/InRelease failed)"
    fi
    say "debootstrap --variant=minbase $SUITE (log: $log)"
    if ! debootstrap --variant=minbase "$SUITE" "$tmp" "$MIRROR" \
            >> "$log" 2>&1; then
        tail -5 "$log" | sed 's/^/  /'
        unavailable "debootstrap $SUITE from $MIRROR failed (log: $log)"
    fi
    # The chroot's own sources: the suite and its backports.
    cat > "$tmp/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $BACKPORTS main
EOF
    # A mirror that serves an archive snapshot has Release files whose
    # Valid-Until is past; nothing in the chroot starts services.
    echo 'Acquire::Check-Valid-Until "false";' \
        > "$tmp/etc/apt/apt.conf.d/99vmt-no-valid-until"
    printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/usr/sbin/policy-rc.d"
    mount -t proc proc "$tmp/proc"
    ok=1
    say "apt-get install -t $BACKPORTS $PKGS"
    chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        >> "$log" 2>&1 &&
    chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends -t "$BACKPORTS" $PKGS >> "$log" 2>&1 || ok=0
    chroot "$tmp" apt-get clean >> "$log" 2>&1 || true
    umount "$tmp/proc"
    if [ "$ok" = 0 ]; then
        tail -5 "$log" | sed 's/^/  /'
        unavailable "apt-get install -t $BACKPORTS $PKGS in the chroot failed (log: $log)"
    fi
    ver=$(chroot "$tmp" /usr/bin/qemu-system-x86_64 --version | head -1) ||
        unavailable "the chroot's qemu-system-x86_64 does not run (log: $log)"
    # shellcheck disable=SC2016
    pkg=$(chroot "$tmp" dpkg-query -W -f='${Package} ${Version}' \
          qemu-system-x86)
    {
        echo "key: $KEY"
        echo "package: $pkg"
        echo "qemu: $ver"
        echo "made: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } > "$tmp/.vmt-stamp"
}

ensure() {
    [ "$(id -u)" = 0 ] || unavailable "debootstrap and chroot need root"
    if usable; then
        report
        return 0
    fi
    command -v debootstrap >/dev/null 2>&1 || {
        say "installing debootstrap (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends debootstrap > /dev/null 2>&1 ||
            unavailable "debootstrap is not installed and apt-get could not install it"
    }
    mkdir -p "$(dirname "$DIR")"
    # One builder at a time; the others wait and then find it made.
    exec 9> "$DIR.lock"
    flock 9
    if usable; then
        report
        return 0
    fi
    [ -d "$DIR" ] && say "cached chroot $DIR is stale or broken: making it again"
    # Under the lock, a half chroot left by a builder that was killed.
    for old in "$DIR".new.*; do
        [ -d "$old" ] && rm -rf --one-file-system "$old"
    done
    tmp=$DIR.new.$$
    trap 'rm -rf --one-file-system "$tmp"' EXIT
    trap 'exit 130' INT TERM
    start=$(date +%s)
    rc=0
    unshare --mount --propagation private \
        sh "$0" build-in-namespace "$tmp" || rc=$?
    [ "$rc" = 0 ] || exit "$rc"
    # Never remove through a mount (a chroot someone left bind-mounted).
    if awk -v d="$DIR/" 'index($2 "/", d) == 1 { f = 1 } END { exit !f }' \
            /proc/self/mounts; then
        unavailable "something is mounted under $DIR: unmount it first"
    fi
    rm -rf --one-file-system "$DIR"
    mv "$tmp" "$DIR"
    trap - EXIT
    say "made in $(( $(date +%s) - start )) s"
    usable || unavailable "the chroot made in $DIR does not run its QEMU"
    report
}

case ${1:-} in
ensure) ensure ;;
build-in-namespace) build "$2" ;;
*) echo "usage: $0 ensure" >&2; exit 2 ;;
esac
