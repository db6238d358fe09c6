#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Put the pinned upstream tarball in $DL and verify it against the sums
# pinned in build-aux/upstream.sha256.  Uses ../shared/upstream when present,
# otherwise Debian's source tools with a private apt configuration.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
DL=${DL:-build/dl}
SHARED=${SHARED:-../shared}
TARBALL=qemu_10.0.13+ds.orig.tar.xz
DSC=qemu_10.0.13+ds-0+deb13u1.dsc
SRCPKG="qemu=1:10.0.13+ds-0+deb13u1"

mkdir -p "$DL"
verify() {
    (cd "$DL" && grep " $1\$" "$HERE/upstream.sha256" | sha256sum -c --quiet -)
}

if [ -f "$DL/$TARBALL" ] && verify "$TARBALL" 2>/dev/null; then
    exit 0
fi
rm -f "$DL/$TARBALL"

if [ -f "$SHARED/upstream/$TARBALL" ]; then
    echo "fetch: using $SHARED/upstream/$TARBALL"
    cp "$SHARED/upstream/$TARBALL" "$DL/$TARBALL.part"
    mv "$DL/$TARBALL.part" "$DL/$TARBALL"
else
    echo "fetch: $SRCPKG through apt (private configuration in $DL/apt)"
    A=$(cd "$DL" && pwd)/apt
    mkdir -p "$A/etc" "$A/lists/partial" "$A/cache/archives/partial"
    cat > "$A/etc/trixie-src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    set -- -o Dir::State::Lists="$A/lists" -o Dir::Etc::SourceList=/dev/null \
           -o Dir::Etc::SourceParts="$A/etc" -o Dir::Cache="$A/cache" \
           -o APT::Sandbox::User=root
    apt-get "$@" update -q
    (cd "$DL" && apt-get "$@" source --download-only "$SRCPKG")
fi

if ! verify "$TARBALL"; then
    echo "fetch: SHA-256 of $DL/$TARBALL does not match build-aux/upstream.sha256;" >&2
    echo "fetch: refusing to build from an unverified upstream. Remove it and retry." >&2
    mv "$DL/$TARBALL" "$DL/$TARBALL.bad"
    exit 1
fi
echo "fetch: $TARBALL verified"
