#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Assemble a source tree:  tree.sh ours DEST   or   tree.sh upstream DEST
#
#   upstream: the pinned tarball as it is.
#   ours:     the pinned tarball + this repository's new files at their QEMU
#             paths (they may not replace an upstream file) + patches/series
#             applied in order with no fuzz.
#
# The tree is assembled in DEST.new and synced into DEST so that files whose
# content did not change keep their mtime (ninja rebuilds only what changed).
# Nothing is done when the inputs did not change since the last run.
set -eu

MODE=$1
DEST=$2
TOP=$(cd "$(dirname "$0")/.." && pwd)
DL=${DL:-build/dl}
TARBALL=$DL/qemu_10.0.13+ds.orig.tar.xz
OVERLAY_DIRS="migration include tests docs contrib scripts qapi hw system"

# The repository's new files that belong to QEMU's tree (not those that
# build-aux/repo-only lists).
overlay_files() {
    (cd "$TOP" && git ls-files --cached --others --exclude-standard -- $OVERLAY_DIRS |
     while read -r f; do [ -f "$f" ] && echo "$f"; done |
     grep -Ev -f "$TOP/build-aux/repo-only" | grep -v '^#' || true)
}

# series FILE: the patch names listed in a quilt-style series file
series() {
    grep -v '^[[:space:]]*\(#\|$\)' "$1" 2>/dev/null || true
}

# apply_series DIR: apply DIR/series to the tree, no fuzz allowed
apply_series() {
    for p in $(series "$1/series"); do
        if ! patch -d "$NEW" -p1 -F0 --batch --quiet --no-backup-if-mismatch \
                -i "$1/$p"; then
            echo "tree: $1/$p does not apply cleanly (no fuzz allowed)" >&2
            exit 1
        fi
        echo "tree: applied ${1#$TOP/}/$p"
    done
}

inputs_hash() {
    {
        cat "$TOP/build-aux/upstream.sha256"
        echo "mode $MODE"
        for p in $(series "$TOP/patches/build/series"); do
            sha256sum "$TOP/patches/build/$p"
        done
        if [ "$MODE" = ours ]; then
            for p in $(series "$TOP/patches/series"); do sha256sum "$TOP/patches/$p"; done
            overlay_files | (cd "$TOP" && xargs -r sha256sum)
        fi
    } | sha256sum | cut -d' ' -f1
}

h=$(inputs_hash)
if [ -f "$DEST/.tree-stamp" ] && [ "$(cat "$DEST/.tree-stamp")" = "$h" ]; then
    exit 0
fi

NEW=$DEST.new
rm -rf "$NEW"
mkdir -p "$NEW"
tar -xf "$TARBALL" -C "$NEW" --strip-components=1
# Packaging fixes for the +ds tarball, applied to both trees.
apply_series "$TOP/patches/build"

if [ "$MODE" = ours ]; then
    n=0
    for f in $(overlay_files); do
        if [ -e "$NEW/$f" ]; then
            echo "tree: $f exists upstream; change it with a patch in patches/" >&2
            exit 1
        fi
        mkdir -p "$NEW/$(dirname "$f")"
        cp "$TOP/$f" "$NEW/$f"
        n=$((n + 1))
    done
    echo "tree: $n new files"
    apply_series "$TOP/patches"
fi

mkdir -p "$DEST"
rsync -rlc --delete --exclude=.tree-stamp "$NEW/" "$DEST/"
rm -rf "$NEW"
echo "$h" > "$DEST/.tree-stamp"
echo "tree: $DEST ready ($MODE)"
