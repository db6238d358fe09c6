#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Build the bundled VMT test guest: a Debian kernel plus a small busybox
# initrd that runs the guest agent described in
# docs/devel/vmt-guest-agent.rst.
#
# Usage: tests/guest/build-guest.sh OUTDIR
#
# Produces OUTDIR/vmlinuz and OUTDIR/initrd.img.  Only Debian packages are
# used: the kernel package is fetched with "apt-get download" (nothing is
# installed on the host) and busybox comes from the host's busybox-static.
# Re-running is cheap: the kernel is only fetched again when the package
# version changes and the initrd is only rebuilt when one of its inputs
# changes.
#
# Environment:
#   VMT_GUEST_KERNEL_META  meta package whose linux-image-* dependency is used
#                          (default: the one OUTDIR was last built with,
#                          else linux-image-cloud-amd64)
#   VMT_GUEST_MODULES      kernel modules wanted in the guest if the kernel
#                          has them as modules, each NAME or NAME=CONFIG_OPT
#                          (default: "vmgenid", i.e. CONFIG_VMGENID)
#   VMT_GUEST_FLAVOUR      "vmgenid": the generic kernel (linux-image-amd64)
#                          and the modules vmgenid, virtio_pci, virtio_net,
#                          virtio_blk
#   BUSYBOX                static busybox binary (default: /bin/busybox)

set -eu

die() { echo "build-guest: error: $*" >&2; exit 1; }
note() { echo "build-guest: $*"; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
srcdir=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

# OUTDIR remembers the meta package it was built with, so that a plain
# re-run keeps the kernel flavour chosen earlier.
# VMT_GUEST_FLAVOUR=vmgenid: Debian's generic kernel, which has
# CONFIG_VMGENID, with the virtio-net driver (qemu-template's identity
# tests: a clone's new generation ID and hotplugged NIC) and the virtio-blk
# driver (a lazy clone with a vhost-user-blk disk)
if [ "${VMT_GUEST_FLAVOUR:-}" = vmgenid ]; then
    VMT_GUEST_KERNEL_META=linux-image-amd64
    VMT_GUEST_MODULES=${VMT_GUEST_MODULES:-vmgenid virtio_pci virtio_net virtio_blk}
fi
if [ -n "${VMT_GUEST_KERNEL_META:-}" ]; then
    meta=$VMT_GUEST_KERNEL_META
elif [ -s "$out/kernel-meta" ]; then
    meta=$(cat "$out/kernel-meta")
else
    meta=linux-image-cloud-amd64
fi
wanted_modules=${VMT_GUEST_MODULES:-vmgenid}
busybox=${BUSYBOX:-/bin/busybox}

for tool in apt-cache apt-get dpkg dpkg-deb cpio gzip sha256sum find sort; do
    command -v "$tool" >/dev/null 2>&1 || die "missing host tool: $tool"
done
[ -x "$busybox" ] || die "$busybox not found (apt-get install busybox-static)"
if command -v file >/dev/null 2>&1; then
    file -L "$busybox" | grep -q 'statically linked' ||
        die "$busybox is not statically linked (apt-get install busybox-static)"
fi

# --- 1. resolve and fetch the kernel package ------------------------------

kpkg=$(apt-cache depends "$meta" 2>/dev/null |
       sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)
[ -n "$kpkg" ] || die "cannot resolve the kernel package of $meta (apt-get update?)"
kver=$(apt-cache show --no-all-versions "$kpkg" 2>/dev/null |
       sed -n 's/^Version: //p' | head -n 1)
[ -n "$kver" ] || die "no candidate version for $kpkg"
kid="$kpkg $kver"
echo "$meta" > "$out/kernel-meta"

if [ -f "$out/kernel-pkg/.vmt-package" ] &&
   [ "$(cat "$out/kernel-pkg/.vmt-package")" = "$kid" ] &&
   [ -f "$out/vmlinuz" ]; then
    note "kernel $kid: up to date"
else
    note "kernel: $meta -> $kid"
    rm -rf "$out/dl" "$out/kernel-pkg" "$out/vmlinuz"
    mkdir -p "$out/dl"
    # Download as root into our own directory: no sandbox user needed.
    (cd "$out/dl" &&
     apt-get -q -o APT::Sandbox::User=root download "$kpkg=$kver") ||
        die "apt-get download $kpkg=$kver failed"
    deb=$(ls "$out/dl"/*.deb)
    mkdir -p "$out/kernel-pkg.tmp"
    dpkg -x "$deb" "$out/kernel-pkg.tmp"
    echo "$kid" > "$out/kernel-pkg.tmp/.vmt-package"
    mv "$out/kernel-pkg.tmp" "$out/kernel-pkg"
    rm -rf "$out/dl"
fi

kimg=$(ls "$out"/kernel-pkg/boot/vmlinuz-* 2>/dev/null | head -n 1)
[ -n "$kimg" ] || die "no vmlinuz in $kpkg"
krel=${kimg##*/vmlinuz-}
kconfig="$out/kernel-pkg/boot/config-$krel"
[ -f "$kconfig" ] || die "no kernel config in $kpkg"
if ! cmp -s "$kimg" "$out/vmlinuz" 2>/dev/null; then
    cp "$kimg" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
fi
for d in "$out/kernel-pkg/lib/modules/$krel" \
         "$out/kernel-pkg/usr/lib/modules/$krel"; do
    [ -d "$d" ] && moddir=$d && break
done
moddir=${moddir:-}

# --- 2. kernel features the agent relies on -------------------------------

kopt() { sed -n "s/^CONFIG_$1=\\(.*\\)\$/\\1/p" "$kconfig"; }
[ "$(kopt SERIAL_8250)" = y ] ||
    die "$krel: CONFIG_SERIAL_8250 is not built in; the agent needs ttyS1 early"
for opt in BLK_DEV_INITRD RD_GZIP DEVTMPFS TMPFS PROC_FS SYSFS; do
    [ "$(kopt $opt)" = y ] || die "$krel: CONFIG_$opt is not built in"
done

# Modules: a module's dependencies are read from its .modinfo section
# (the package ships no modules.dep; depmod only runs at install time).
find_module() {
    [ -n "$moddir" ] || return 0
    # module names use "_" where file names may use "-", and vice versa
    u=$(echo "$1" | tr - _)
    d=$(echo "$1" | tr _ -)
    find "$moddir/kernel" \( -name "$u.ko" -o -name "$d.ko" \
        -o -name "$u.ko.*" -o -name "$d.ko.*" \) | head -n 1
}
module_deps() {
    tr '\000' '\n' < "$1" | sed -n 's/^depends=//p' | tr ',' ' '
}
modlist=""          # in load order, dependencies first
add_module() {
    case " $modlist " in *" $1 "*) return 0 ;; esac
    f=$(find_module "$1")
    [ -n "$f" ] || die "module $1 not found in $kpkg"
    case $f in *.ko) ;; *) die "compressed module $f is not supported" ;; esac
    for dep in $(module_deps "$f"); do
        add_module "$dep"
    done
    modlist="$modlist $1"
}
for spec in $wanted_modules; do
    m=${spec%%=*}
    if [ "$spec" != "$m" ]; then
        opt=${spec#*=}
    else
        opt=$(echo "$m" | tr 'a-z-' 'A-Z_')
    fi
    case $(kopt "$opt") in
    y) note "CONFIG_$opt=y in $krel (built in)" ;;
    m) note "CONFIG_$opt=m in $krel (module, added to the initrd)"
       add_module "$m" ;;
    *) note "warning: CONFIG_$opt is not set in $krel: the guest has no $m" ;;
    esac
done

# --- 3. the initrd --------------------------------------------------------

# Everything that goes into the initrd, identified by content.
stamp=$( {
    echo "kernel $kid"
    echo "modules $modlist"
    sha256sum "$busybox" "$srcdir/init" "$srcdir/agent.sh" "$srcdir/build-guest.sh" |
        sed 's/ .*//'
} | sha256sum | sed 's/ .*//')

if [ -f "$out/initrd.img" ] && [ -f "$out/initrd.stamp" ] &&
   [ "$(cat "$out/initrd.stamp")" = "$stamp" ]; then
    note "initrd: up to date"
    note "guest: $out/vmlinuz $out/initrd.img"
    exit 0
fi

root="$out/initrd-root"
rm -rf "$root"
mkdir -p "$root"
for d in bin sbin usr/bin usr/sbin dev proc sys tmp data run etc lib/modules; do
    mkdir -p "$root/$d"
done
cp "$busybox" "$root/bin/busybox"
"$busybox" --list-full | while read -r applet; do
    case $applet in bin/busybox|"") continue ;; esac
    [ -e "$root/$applet" ] && continue
    case $applet in
    bin/*|sbin/*) ln -s /bin/busybox "$root/$applet" ;;
    usr/bin/*|usr/sbin/*) ln -s /bin/busybox "$root/$applet" ;;
    esac
done
cp "$srcdir/init" "$root/init"
cp "$srcdir/agent.sh" "$root/agent.sh"
chmod 755 "$root/init" "$root/agent.sh"
: > "$root/etc/vmt-modules"
for m in $modlist; do
    cp "$(find_module "$m")" "$root/lib/modules/$m.ko"
    echo "$m" >> "$root/etc/vmt-modules"
done
echo "$kid" > "$root/etc/vmt-kernel"

# Reproducible archive: sorted names, owner root, fixed times.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . | LC_ALL=C sort |
     cpio -o -H newc -R 0:0 --reproducible --quiet) |
    gzip -n -6 > "$out/initrd.img.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
echo "$stamp" > "$out/initrd.stamp"
rm -rf "$root"
note "initrd: $(wc -c < "$out/initrd.img") bytes, modules:${modlist:- none}"
note "guest: $out/vmlinuz $out/initrd.img"
