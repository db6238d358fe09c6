#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The series as qemu-devel gets it: git format-patch files that add the new
# files too, applied with git am to the pinned upstream tree.
#
#   series.sh make       write build/series/: 0000-cover-letter.patch and
#                        one patch per entry of patches/series, each with
#                        the diffs of patches/NAME.patch plus the new files
#                        that patches/new-files assigns to it
#   series.sh apply DIR  apply build/series/ to the upstream tree in DIR
#                        (tree.sh uses it, so build/src is what git am makes)
#   series.sh verify     git am build/series/ on a fresh git tree of the
#                        pinned upstream tarball, compare it file by file
#                        with the tree make tree assembles (build/src
#                        before it is built), run checkpatch.pl on every
#                        patch
#   series.sh check      for every patch in turn: apply, build, run the
#                        qtests that exist at that point (this series'
#                        and the migration-test case it adds), checkpatch;
#                        the fuzz target builds only in the clang flavour
#                        (make asan), not here
#
# Inputs: patches/series, patches/*.patch (changes to upstream files, with
# their commit messages), patches/new-files (which patch adds which new
# file), patches/cover-letter (subject and body of the cover letter), the
# new files of the repository.  Every new file under the QEMU directories
# must be assigned, except the repository's own (build-aux/repo-only).
set -eu

TOP=$(cd "$(dirname "$0")/.." && pwd)
B=$TOP/build
OUT=$B/series
GITDIR=$B/series-git
DL=${DL:-$B/dl}
TARBALL=$DL/qemu_10.0.13+ds.orig.tar.xz
OVERLAY_DIRS="migration include tests docs contrib scripts qapi hw system"
NAME="VM templating series"
EMAIL="qemu-vmt@localhost"

g() {
    git -C "$GITDIR" -c user.name="$NAME" -c user.email="$EMAIL" \
        -c core.autocrlf=false -c advice.detachedHead=false "$@"
}

series() {
    grep -v '^[[:space:]]*\(#\|$\)' "$TOP/patches/series"
}

# The QEMU-tree new files of the repository (build-aux/repo-only lists
# the others).
new_files() {
    (cd "$TOP" && git ls-files --cached --others --exclude-standard -- \
        $OVERLAY_DIRS | while read -r f; do [ -f "$f" ] && echo "$f"; done |
        grep -Ev -f "$TOP/build-aux/repo-only" | grep -v '^#' || true)
}

# Files patches/new-files assigns to the patch with subject $1.
files_of() {
    awk -v s="$1" '
        /^[[:space:]]*(#|$)/ { next }
        { f = $1; $1 = ""; sub(/^ +/, ""); if ($0 == s) print f }
    ' "$TOP/patches/new-files"
}

subject_of() {
    # The Subject: header, unfolded, without "[PATCH]".
    sed -n '/^Subject:/,/^$/p' "$1" | sed '$d' | tr -d '\n' |
        sed -e 's/^Subject: *//' -e 's/^\[PATCH[^]]*\] *//' -e 's/  */ /g'
}

# A git tree of the pinned upstream tarball as it is, tagged 'upstream';
# rebuilt only when the tarball changes.
upstream_git() {
    stamp=$(cat "$TOP/build-aux/upstream.sha256")
    if [ -d "$GITDIR/.git" ] &&
       [ "$(cat "$GITDIR/.git/vmt-upstream" 2>/dev/null)" = "$stamp" ]; then
        g checkout -q -f upstream
        g clean -q -fdx
        return
    fi
    rm -rf "$GITDIR"
    mkdir -p "$GITDIR"
    tar -xf "$TARBALL" -C "$GITDIR" --strip-components=1
    g init -q
    g add -A -f
    g commit -q -m "QEMU 10.0.13 (Debian's +ds tarball)"
    g tag upstream
    echo "$stamp" > "$GITDIR/.git/vmt-upstream"
}

# The packaging fixes of the +ds tarball (not part of the series), in the
# working tree only.
packaging_fixes() {
    for p in $(grep -v '^[[:space:]]*\(#\|$\)' "$TOP/patches/build/series"); do
        patch -d "$GITDIR" -p1 -F0 --batch --quiet --no-backup-if-mismatch \
            -i "$TOP/patches/build/$p"
    done
}

cmd_make() {
    # Every new file assigned to a patch of the series, once.
    unassigned=""
    for f in $(new_files); do
        grep -q "^$f[[:space:]]" "$TOP/patches/new-files" ||
            unassigned="$unassigned $f"
    done
    if [ -n "$unassigned" ]; then
        echo "series: new files not assigned in patches/new-files:$unassigned" >&2
        exit 1
    fi
    upstream_git
    for p in $(series); do
        subject=$(subject_of "$TOP/patches/$p")
        g am -q --committer-date-is-author-date "$TOP/patches/$p" || {
            g am --abort 2>/dev/null || true
            echo "series: patches/$p does not apply" >&2
            exit 1
        }
        files=$(files_of "$subject")
        for f in $files; do
            [ -f "$TOP/$f" ] || {
                echo "series: patches/new-files: $f does not exist" >&2
                exit 1
            }
            [ ! -e "$GITDIR/$f" ] || {
                echo "series: $f exists upstream (or twice)" >&2
                exit 1
            }
            mkdir -p "$GITDIR/$(dirname "$f")"
            cp "$TOP/$f" "$GITDIR/$f"
            g add -- "$f"
        done
        # One identity for the project, in From: and Signed-off-by:.
        g commit -q --amend --no-edit --reset-author \
            --date="$(g log -1 --format=%aD)"
    done
    # Every assignment is used.
    awk '!/^[[:space:]]*(#|$)/ { print $1 }' "$TOP/patches/new-files" |
    while read -r f; do
        g cat-file -e "HEAD:$f" 2>/dev/null || {
            echo "series: patches/new-files: $f is assigned to no patch of the series" >&2
            exit 1
        }
    done
    rm -rf "$OUT"
    g format-patch -q --cover-letter --zero-commit --no-signature \
        --subject-prefix=PATCH -o "$OUT" upstream..HEAD
    cover_letter "$OUT/0000-cover-letter.patch"
    echo "series: $OUT ($(ls "$OUT" | grep -vc '^0000-') patches)"
}

# Fill format-patch's cover letter from patches/cover-letter: its first
# line is the subject, the rest the body.
cover_letter() {
    python3 - "$1" "$TOP/patches/cover-letter" <<'EOF'
import sys
path, src = sys.argv[1], sys.argv[2]
text = open(path).read()
lines = open(src).read().split('\n', 1)
subject, body = lines[0].strip(), lines[1].strip('\n') + '\n'
text = text.replace('*** SUBJECT HERE ***', subject, 1)
text = text.replace('*** BLURB HERE ***\n', body, 1)
open(path, 'w').write(text)
EOF
}

# apply DIR: the series on the (upstream) tree in DIR, as git am would.
cmd_apply() {
    dir=$1
    for p in "$OUT"/[0-9]*.patch; do
        case "$p" in */0000-cover-letter.patch) continue ;; esac
        (cd "$dir" && git apply --whitespace=nowarn "$p") || {
            echo "series: $(basename "$p") does not apply" >&2
            exit 1
        }
    done
}

checkpatch_all() {
    cp_fail=0
    for p in "$OUT"/[0-9]*.patch; do
        case "$p" in */0000-cover-letter.patch) continue ;; esac
        out=$(cd "$GITDIR" && perl scripts/checkpatch.pl --no-tree "$p" 2>&1 || true)
        sum=$(echo "$out" | grep '^total:' | tail -1)
        case "$sum" in
        "total: 0 errors, 0 warnings,"*)
            echo "series: checkpatch $(basename "$p"): clean" ;;
        *)
            echo "series: checkpatch $(basename "$p"): ${sum:-no summary}"
            echo "$out" | grep -E '^(ERROR|WARNING)' | sed 's/^/    /'
            cp_fail=$((cp_fail + 1)) ;;
        esac
    done
    return $cp_fail
}

cmd_verify() {
    cmd_make
    upstream_git
    for p in "$OUT"/[0-9]*.patch; do
        case "$p" in */0000-cover-letter.patch) continue ;; esac
        g am -q "$p" || {
            g am --abort 2>/dev/null || true
            echo "series: git am $(basename "$p") failed"
            echo "series-verify: 0 passed, 1 failed"
            exit 1
        }
    done
    passed=0 failed=0
    echo "series: applied $(g rev-list --count upstream..HEAD) patches with git am"
    packaging_fixes
    # The tree git am made is the tree make tree assembles (upstream, the
    # new files, patches/series, with patch(1)), file by file.
    ref=$B/series-ref
    rm -rf "$ref"
    sh "$TOP/build-aux/tree.sh" ours "$ref" >/dev/null
    # Files and symbolic links only: git keeps no empty directory.
    diffs=$(cd "$GITDIR" && { find . -path ./.git -prune -o \
                \( -type f -o -type l \) -print | sort > "$ref.list.am"; }
            cd "$ref" && { find . \( -type f -o -type l \) \
                ! -name .tree-stamp -print | sort > "$ref.list.tree"; }
            diff "$ref.list.am" "$ref.list.tree" | sed -n 's/^[<>] //p' |
                sed 's/^/only in one tree: /'
            while read -r f; do
                if [ -L "$GITDIR/$f" ] || [ -L "$ref/$f" ]; then
                    [ "$(readlink "$GITDIR/$f")" = "$(readlink "$ref/$f")" ] ||
                        echo "differs: $f"
                else
                    cmp -s "$GITDIR/$f" "$ref/$f" || echo "differs: $f"
                fi
            done < "$ref.list.am")
    rm -f "$ref.list.am" "$ref.list.tree"
    if [ -z "$diffs" ]; then
        passed=$((passed + 1))
        echo "series: git am reproduces the assembled tree, file by file ($(g ls-files | wc -l) files)"
    else
        failed=$((failed + 1))
        echo "series: git am does not reproduce the assembled tree:"
        echo "$diffs" | head -20 | sed 's/^/    /'
    fi
    rm -rf "$ref"
    if checkpatch_all; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
    echo "series-verify: $passed passed, $failed failed"
    [ "$failed" = 0 ]
}

# The qtests that exist at the current commit of $GITDIR.
step_qtests() {
    for t in vmt-bypass-shared-test vmt-mapped-ram-test vmt-lazy-test \
             hpet-test x86-kernel-image-test; do
        grep -q "'$t'" "$GITDIR/tests/qtest/meson.build" && echo "$t"
    done
    return 0
}

# Unit tests that the series adds, once they exist.
step_unit_tests() {
    grep -q "'test-userfaultfd'" "$GITDIR/tests/unit/meson.build" &&
        echo test-userfaultfd
    return 0
}

# Upstream qtests that the series adds a case to, once the case exists
# (run whole: they are short).
step_upstream_qtests() {
    grep -q 'retry_nodev' "$GITDIR/tests/qtest/ide-test.c" && echo ide-test
    return 0
}

# migration-test cases that the series adds, once they exist.
step_migration_tests() {
    grep -q 'mapped-ram/ignore-shared' \
        "$GITDIR/tests/qtest/migration/file-tests.c" &&
        echo /x86_64/migration/multifd/file/mapped-ram/ignore-shared
    return 0
}

cmd_check() {
    cmd_make
    upstream_git
    packaging_fixes
    obj=$B/series-obj
    logs=$B/series-logs
    rm -rf "$logs"
    mkdir -p "$logs"
    passed=0 failed=0 n=0
    t0=$(date +%s)
    for p in "$OUT"/[0-9]*.patch; do
        case "$p" in */0000-cover-letter.patch) continue ;; esac
        n=$((n + 1))
        name=$(basename "$p" .patch)
        ts=$(date +%s)
        if ! g am -q "$p" > "$logs/$name.log" 2>&1; then
            echo "series-check: $name: does not apply"
            failed=$((failed + 1))
            break
        fi
        tests="$(step_upstream_qtests) $(step_qtests)"
        mtests=$(step_migration_tests)
        utests=$(step_unit_tests)
        targets="tests/qtest/migration-test"
        # the template tool, once a patch adds it
        [ -f "$GITDIR/contrib/qemu-template/meson.build" ] &&
            targets="$targets contrib/qemu-template/qemu-template"
        for t in $tests; do targets="$targets tests/qtest/$t"; done
        for t in $utests; do targets="$targets tests/unit/$t"; done
        if ! EXTRA_TARGETS="$targets" sh "$TOP/build-aux/build.sh" \
                "$GITDIR" "$obj" >> "$logs/$name.log" 2>&1; then
            echo "series-check: $name: build FAILED (log: $logs/$name.log)"
            failed=$((failed + 1))
            continue
        fi
        ok=1
        for t in $mtests; do
            if ! (cd "$GITDIR" && QTEST_QEMU_BINARY="$obj/qemu-system-x86_64" \
                  PYTHON=/usr/bin/python3 "$obj/tests/qtest/migration-test" \
                  --tap -k --full -p "$t") >> "$logs/$name.log" 2>&1; then
                ok=0
            fi
        done
        for t in $tests; do
            if ! (cd "$GITDIR" && QTEST_QEMU_BINARY="$obj/qemu-system-x86_64" \
                  VMT_QTEST_ACCEL=tcg PYTHON=/usr/bin/python3 \
                  "$obj/tests/qtest/$t" --tap -k) >> "$logs/$name.log" 2>&1; then
                ok=0
            fi
        done
        for t in $utests; do
            "$obj/tests/unit/$t" --tap -k >> "$logs/$name.log" 2>&1 || ok=0
        done
        cp=$(cd "$GITDIR" && perl scripts/checkpatch.pl --no-tree "$p" 2>&1 |
             grep '^total:' | tail -1)
        case "$cp" in "total: 0 errors, 0 warnings,"*) ;; *) ok=0 ;; esac
        if [ "$ok" = 1 ]; then
            passed=$((passed + 1))
            echo "series-check: $name: builds, tests [$(echo $tests $mtests $utests)] pass, checkpatch clean ($(( $(date +%s) - ts )) s)"
        else
            failed=$((failed + 1))
            echo "series-check: $name: FAILED: tests [$(echo $tests $mtests $utests)] or checkpatch ($cp) (log: $logs/$name.log)"
        fi
    done
    echo "series-check: $n patches in $(( $(date +%s) - t0 )) s"
    echo "series-check: $passed passed, $failed failed"
    [ "$failed" = 0 ]
}

case "${1:-}" in
make) cmd_make ;;
apply) cmd_apply "$2" ;;
verify) cmd_verify ;;
check) cmd_check ;;
*)
    echo "usage: $0 make|apply DIR|verify|check" >&2
    exit 2 ;;
esac
