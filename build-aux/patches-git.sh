#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Edit the series as git commits.
#
#   patches-git.sh init DIR     DIR becomes a git tree: commit 'upstream'
#                               (pinned tarball + packaging fixes), commit
#                               'overlay' (this repository's new files), then
#                               one commit per patch of patches/series.
#   patches-git.sh export DIR   writes each commit after 'overlay' back to
#                               patches/ (git format-patch) and rewrites
#                               patches/series.
#
# New files are edited in the repository itself (make tree copies them);
# upstream files are edited here, one commit per logical change.
set -eu

CMD=$1
DIR=$2
TOP=$(cd "$(dirname "$0")/.." && pwd)
DL=${DL:-build/dl}

# patches_hash: the content of patches/series and of the patches it lists
patches_hash() {
    (cd "$TOP/patches" && cat series $(grep -v '^[[:space:]]*\(#\|$\)' series)) |
        sha256sum | cut -d' ' -f1
}

g() { git -C "$DIR" -c user.name="${GIT_AUTHOR_NAME:-vmt}" \
          -c user.email="${GIT_AUTHOR_EMAIL:-vmt@localhost}" "$@"; }

case "$CMD" in
init)
    if [ -d "$DIR/.git" ]; then
        echo "patches-git: $DIR exists; remove it first" >&2
        exit 1
    fi
    # Reuse tree.sh for upstream + packaging fixes, then add the rest.
    sh "$TOP/build-aux/tree.sh" upstream "$DIR"
    rm -f "$DIR/.tree-stamp"
    g init -q
    g add -A && g commit -qm "upstream QEMU 10.0.13 (+ds) with packaging fixes"
    g tag -f upstream >/dev/null
    (cd "$TOP" && git ls-files --cached --others --exclude-standard -- \
        migration include tests docs contrib scripts qapi hw) |
    while read -r f; do
        [ -f "$TOP/$f" ] || continue
        mkdir -p "$DIR/$(dirname "$f")"
        cp "$TOP/$f" "$DIR/$f"
    done
    g add -A && g commit -qm "overlay: new files of the series" --allow-empty
    g tag -f overlay >/dev/null
    grep -v '^[[:space:]]*\(#\|$\)' "$TOP/patches/series" 2>/dev/null |
    while read -r p; do
        g am -q --whitespace=nowarn "$TOP/patches/$p" || {
            echo "patches-git: $p does not apply" >&2; exit 1; }
    done
    # what patches/ held, so that export can refuse to overwrite newer
    # patches (from a merge) with those of a stale tree
    patches_hash > "$DIR/.git/vmt-patches-hash"
    echo "patches-git: $DIR ready ($(g rev-list --count overlay..HEAD) patches)"
    ;;
export)
    [ -d "$DIR/.git" ] || { echo "patches-git: run 'make patches-git' first" >&2; exit 1; }
    if [ -n "$(g status --porcelain)" ]; then
        echo "patches-git: $DIR has uncommitted changes; commit them first" >&2
        exit 1
    fi
    if [ "$(patches_hash)" != "$(cat "$DIR/.git/vmt-patches-hash" 2>/dev/null)" ]; then
        echo "patches-git: patches/ changed since $DIR was made (a merge?);" \
             "exporting would undo that: remove $DIR, run 'make patches-git'" \
             "and redo your change there" >&2
        exit 1
    fi
    old=$(grep -v '^[[:space:]]*\(#\|$\)' "$TOP/patches/series" 2>/dev/null || true)
    for p in $old; do rm -f "$TOP/patches/$p"; done
    g format-patch -q --no-signature --zero-commit --no-numbered --abbrev=8 \
        -o "$TOP/patches" overlay..HEAD
    g log --reverse --format=%H overlay..HEAD | {
        n=1
        while read -r c; do
            ls "$TOP/patches" | grep "^$(printf %04d $n)-" 
            n=$((n + 1))
        done
    } > "$TOP/patches/series"
    patches_hash > "$DIR/.git/vmt-patches-hash"
    echo "patches-git: exported $(wc -l < "$TOP/patches/series") patches"
    ;;
*)
    echo "usage: $0 init|export DIR" >&2
    exit 2
    ;;
esac
