#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Install the Debian packages the build, the test guest, the tests and the
# benchmarks need.  Works on Debian 12 (bookworm) and 13 (trixie).  clang
# and its runtime libraries (libclang-rt-dev: libclang-rt-14-dev on 12)
# build the ASan + UBSan + libFuzzer flavour (make asan).  debootstrap
# makes the Debian 13 chroot that runs the newest upstream QEMU Debian
# ships, for make check's compatibility group (build-aux/upstream-chroot.sh).
#
# Debian 12 ships meson 1.0 (QEMU 10.0 needs >= 1.5) and no pycotap (QEMU's
# configure requires it): on Debian 12 both come from bookworm-backports,
# downloaded through a private apt configuration kept in $APT_DIR (the
# system's apt sources are never modified) and installed as local .debs.
set -eu

APT_DIR=${APT_DIR:-build/apt}
STAMP=${STAMP:-build/.deps-stamp}

PKGS="build-essential gcc-multilib ninja-build pkg-config ccache git
      python3 python3-venv libglib2.0-dev libpixman-1-dev libfdt-dev
      zlib1g-dev bzip2 xz-utils dpkg-dev
      seabios ipxe-qemu busybox-static cpio gzip
      python3-matplotlib procps util-linux rsync patch debootstrap
      clang libclang-rt-dev"
# From backports on Debian 12, from the main archive elsewhere.
NEWER_PKGS="meson python3-pycotap"

SUDO=
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || {
        echo "deps: need root or sudo to install packages" >&2; exit 1; }
    SUDO=sudo
fi

missing=
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done

newer_ok() {
    /usr/bin/python3 -c 'import pycotap' 2>/dev/null &&
    command -v meson >/dev/null &&
    python3 - "$(meson --version)" <<'PY'
import sys
v = tuple(int(x) for x in sys.argv[1].split('.')[:2])
sys.exit(0 if v >= (1, 5) else 1)
PY
}

if [ -z "$missing" ] && newer_ok; then
    echo "deps: all packages present"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
if [ -n "$missing" ]; then
    echo "deps: installing$missing"
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -q --no-install-recommends $missing
fi

if ! newer_ok; then
    . /etc/os-release
    if [ "${VERSION_CODENAME:-}" = bookworm ]; then
        echo "deps: $NEWER_PKGS from bookworm-backports (private apt config in $APT_DIR)"
        mkdir -p "$APT_DIR/etc" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
        cat > "$APT_DIR/etc/backports.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        abs=$(cd "$APT_DIR" && pwd)
        set -- -o Dir::State::Lists="$abs/lists" -o Dir::Etc::SourceList=/dev/null \
               -o Dir::Etc::SourceParts="$abs/etc" -o Dir::Cache="$abs/cache" \
               -o APT::Sandbox::User=root
        apt-get "$@" update -q
        # shellcheck disable=SC2086
        (cd "$abs" && rm -f ./*.deb && apt-get "$@" download $NEWER_PKGS)
        $SUDO apt-get install -y -q --no-install-recommends "$abs"/*.deb
    else
        # shellcheck disable=SC2086
        $SUDO apt-get install -y -q --no-install-recommends $NEWER_PKGS
    fi
fi
newer_ok || { echo "deps: meson >= 1.5 or pycotap is still not available" >&2; exit 1; }
echo "deps: done"
