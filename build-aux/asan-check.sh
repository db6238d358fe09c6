#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# This series' qtests (tests/qtest/vmt-*) with the ASan + UBSan build in
# build/qemu-asan, under TCG, then the fuzz regression inputs (the seeds
# and the stored crashers, once each).  Sanitizers log to files in
# build/check-logs/asan/reports/; a test fails on any such report, even
# when it passed.  Prints "asan: N passed, N failed, N skipped".
#   asan-check.sh [qtest|regress]     one part only
set -u

TOP=$(cd "$(dirname "$0")/.." && pwd)
OBJ=${ASAN_OBJ:-$TOP/build/qemu-asan}
LOGDIR=$TOP/build/check-logs/asan
REPORTS=$LOGDIR/reports
ONLY=${1:-}
# The source tree of the build (configure links its scripts/ there).
SRC=$(dirname "$(readlink -f "$OBJ/scripts")")

rm -rf "$LOGDIR"
mkdir -p "$REPORTS"

# QEMU leaks at exit: no LSan.  Reports go to files, one per process.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$REPORTS/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan"

PASS=0 FAIL=0 SKIP=0

# reports_since STAMP: sanitizer reports written after STAMP (ASan also
# logs there its warning about QEMU's coroutines: not a report)
reports_since() {
    find "$REPORTS" -type f -newer "$1" ! -name '.stamp*' \
        -exec grep -l -E 'ERROR: [A-Za-z]+Sanitizer|runtime error:|^SUMMARY: ' {} + |
        sort
}

run_qtest() {
    name=$1
    bin=$OBJ/tests/qtest/$name
    log=$LOGDIR/$name.log
    stamp=$REPORTS/.stamp-$name
    touch "$stamp"
    printf '%-44s ' "asan $name (tcg)"
    start=$(date +%s)
    (cd "$SRC" &&
     env QTEST_QEMU_BINARY="$OBJ/qemu-system-x86_64" VMT_QTEST_ACCEL=tcg \
         PYTHON=/usr/bin/python3 timeout 3600 "$bin" --tap -k) > "$log" 2>&1
    rc=$?
    p=$(grep -c '^ok .*' "$log" | tr -d ' ')
    s=$(grep -c '^ok .*# SKIP' "$log" | tr -d ' ')
    f=$(grep -c '^not ok' "$log" | tr -d ' ')
    p=$((p - s))
    [ "$rc" != 0 ] && [ "$f" = 0 ] && f=1
    r=$(reports_since "$stamp")
    if [ -n "$r" ]; then
        f=$((f + 1))
        echo "sanitizer reports:" >> "$log"
        echo "$r" >> "$log"
    fi
    PASS=$((PASS + p)) SKIP=$((SKIP + s)) FAIL=$((FAIL + f))
    echo "$p passed, $f failed, $s skipped ($(( $(date +%s) - start )) s)"
    for x in $r; do
        echo "  sanitizer report: $x"
        grep -m1 -E 'ERROR: AddressSanitizer|runtime error' "$x" | sed 's/^/    /'
    done
    [ "$f" = 0 ] || echo "  log: $log"
}

if [ -z "$ONLY" ] || [ "$ONLY" = qtest ]; then
    run_qtest vmt-bypass-shared-test
    run_qtest vmt-mapped-ram-test
    run_qtest vmt-lazy-test
fi

if [ -z "$ONLY" ] || [ "$ONLY" = regress ]; then
    printf '%-44s ' "asan fuzz regression inputs"
    start=$(date +%s)
    log=$LOGDIR/fuzz-regress.log
    # fuzz.sh sets its own sanitizer options: reports are in its logs.
    env -u ASAN_OPTIONS -u UBSAN_OPTIONS sh "$TOP/build-aux/fuzz.sh" regress \
        > "$log" 2>&1
    line=$(grep -E '^fuzz-regress: [0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    if [ -n "$line" ]; then
        p=$(echo "$line" | sed -E 's/^fuzz-regress: ([0-9]+) passed.*/\1/')
        f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    else
        p=0 f=1
    fi
    PASS=$((PASS + p)) FAIL=$((FAIL + f))
    echo "$p passed, $f failed ($(( $(date +%s) - start )) s)"
    [ "$f" = 0 ] || grep 'FAILED\|failed' "$log" | sed 's/^/  /'
fi

echo "asan: $PASS passed, $FAIL failed, $SKIP skipped"
[ "$FAIL" = 0 ]
