#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Configure (once) and build a minimal x86_64-softmmu QEMU out of tree:
#   build.sh SRC OBJ
# KVM + TCG, system libfdt, malloc_trim, vhost-user, no docs, no downloads, no blobs.
# Option ROMs are built from source; SeaBIOS and the NIC ROMs come from
# Debian's packages and are copied into the build's data folder.  ccache is used when present, with
# a cache outside the clone ($CCACHE_DIR, default ~/.cache/qemu-vmt-ccache).
#
# FLAVOUR=asan builds the sanitizer flavour instead: clang, ASan + UBSan
# (--enable-asan --enable-ubsan; 10.0 has no --enable-sanitizers) and
# libFuzzer (--enable-fuzzing), which builds
# qemu-fuzz-x86_64 beside qemu-system-x86_64 (both instrumented; the
# system emulator links with -fsanitize=fuzzer-no-link and runs as usual).
# Its ccache is $ASAN_CCACHE_DIR (default ~/.cache/qemu-vmt-ccache-asan).
#
# Ninja targets: qemu-system-x86_64, migration-test and vhost-user-blk
# (qemu-fuzz-x86_64 instead of the last two for asan), or $BUILD_TARGETS; plus
# $EXTRA_TARGETS.
set -eu

SRC=$(cd "$1" && pwd)
mkdir -p "$2"
OBJ=$(cd "$2" && pwd)
TOP=$(cd "$(dirname "$0")/.." && pwd)

FLAVOUR=${FLAVOUR:-gcc}

if [ "$FLAVOUR" = asan ]; then
    export CCACHE_DIR=${ASAN_CCACHE_DIR:-$HOME/.cache/qemu-vmt-ccache-asan}
else
    export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/qemu-vmt-ccache}
fi
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-3G}
# Hits across clones at other paths: paths below build/ are made relative.
export CCACHE_BASEDIR=$(dirname "$OBJ")
export CCACHE_NOHASHDIR=true
CC="gcc"
[ "$FLAVOUR" = asan ] && CC="clang"
command -v ccache >/dev/null && CC="ccache $CC"

CONFIGURE_ARGS="--target-list=x86_64-softmmu --without-default-features
 --enable-kvm --enable-tcg --enable-fdt=system --disable-docs
 --disable-download --disable-install-blobs --disable-werror
 --python=/usr/bin/python3 "
DEFAULT_TARGETS="qemu-system-x86_64 tests/qtest/migration-test"
if [ "$FLAVOUR" != asan ]; then
    # As distributions build QEMU (it is a default feature): the RCU thread
    # gives freed heap pages back with malloc_trim().  Without it an idle
    # VM keeps about 5 MiB of heap freed after start-up
    # (docs/devel/vmt-density.rst).  Not with ASan, which owns malloc.
    CONFIGURE_ARGS="$CONFIGURE_ARGS --enable-malloc-trim"
    # vhost-user devices (a default feature too), and the tools switch that
    # builds contrib/vhost-user-blk, the backend the lazy-load e2e test
    # gives its clones.  Only the targets asked for are built.
    CONFIGURE_ARGS="$CONFIGURE_ARGS --enable-vhost-user --enable-tools"
    DEFAULT_TARGETS="$DEFAULT_TARGETS contrib/vhost-user-blk/vhost-user-blk"
fi
if [ "$FLAVOUR" = asan ]; then
    # configure does not build option ROMs with clang: gcc, as binutils
    # for a cross target.
    CONFIGURE_ARGS="$CONFIGURE_ARGS --enable-asan --enable-ubsan --enable-fuzzing
 --cross-prefix-i386=x86_64-linux-gnu- "
    DEFAULT_TARGETS="qemu-system-x86_64 qemu-fuzz-x86_64"
fi

if [ ! -f "$OBJ/build.ninja" ] ||
   [ "$(cat "$OBJ/.configure-args" 2>/dev/null)" != "$CC $CONFIGURE_ARGS" ]; then
    echo "build: configuring $OBJ"
    # shellcheck disable=SC2086
    (cd "$OBJ" && "$SRC/configure" --cc="$CC" $CONFIGURE_ARGS) > "$OBJ/configure.log" 2>&1 || {
        tail -30 "$OBJ/configure.log" >&2
        echo "build: configure failed, see $OBJ/configure.log" >&2
        exit 1
    }
    echo "$CC $CONFIGURE_ARGS" > "$OBJ/.configure-args"
fi

# Option ROMs (linuxboot_dma.bin, kvmvapic.bin, ...) are built from source
# by configure's make fragment, not by ninja.
make -s -C "$OBJ/pc-bios/optionrom" >/dev/null

if [ "$FLAVOUR" = asan ]; then
    # Coverage is limited to the files named in the build's
    # instrumentation-filter, a file ccache does not hash by itself.
    export CCACHE_EXTRAFILES="$OBJ/instrumentation-filter"
fi
TARGETS="${BUILD_TARGETS:-$DEFAULT_TARGETS} ${EXTRA_TARGETS:-}"
# shellcheck disable=SC2086
ninja -C "$OBJ" ${NINJA_JOBS:+-j "$NINJA_JOBS"} $TARGETS

# Firmware from Debian's packages into the data folder QEMU searches when
# run from the build tree.
DATA=$(ls -d "$OBJ"/qemu-bundle/*/share/qemu "$OBJ"/qemu-bundle/*/*/share/qemu 2>/dev/null | head -1)
if [ -z "$DATA" ]; then
    DATA=$OBJ/qemu-bundle/usr/local/share/qemu
fi
mkdir -p "$DATA"
for f in /usr/share/seabios/bios-256k.bin /usr/share/seabios/bios-microvm.bin \
         /usr/share/seabios/bios.bin /usr/share/seabios/vgabios-stdvga.bin \
         /usr/lib/ipxe/qemu/efi-e1000e.rom /usr/lib/ipxe/qemu/efi-e1000.rom \
         /usr/lib/ipxe/qemu/efi-virtio.rom; do
    b=$(basename "$f")
    cmp -s "$f" "$DATA/$b" || cp "$f" "$DATA/$b"
done
for f in "$OBJ"/pc-bios/optionrom/*.bin; do
    [ -f "$f" ] || continue
    b=$(basename "$f")
    [ -e "$DATA/$b" ] || ln -sf "$f" "$DATA/$b"
done
echo "build: $OBJ/qemu-system-x86_64 ready"
