#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# libFuzzer on the incoming migration stream (tests/qtest/fuzz/
# vmt_migration_fuzz.c), with the ASan + UBSan build in build/qemu-asan:
#
#   fuzz.sh run       each target for $FUZZ_TIME seconds (default 60) with
#                     $FUZZ_JOBS processes (default 1) sharing its corpus;
#                     prints execs/s and total executions per target; a
#                     crash, timeout or OOM is kept under
#                     tests/qtest/fuzz/vmt-crashers/TARGET/ and fails the run
#   fuzz.sh regress   the stored crashers and the seeds, once each
#
# $FUZZ_TARGETS limits the targets.  Seeds are made first, by
# vmt-make-seeds.py with build/qemu/qemu-system-x86_64 ($FUZZ_SEED_QEMU),
# in build/fuzz, which also holds the corpora, artifacts and logs.
set -u

MODE=${1:-run}
TOP=$(cd "$(dirname "$0")/.." && pwd)
OBJ=${ASAN_OBJ:-$TOP/build/qemu-asan}
FUZZER=$OBJ/qemu-fuzz-x86_64
SEED_QEMU=${FUZZ_SEED_QEMU:-$TOP/build/qemu/qemu-system-x86_64}
DIR=$TOP/build/fuzz
CRASHERS=$TOP/tests/qtest/fuzz/vmt-crashers
FUZZ_TIME=${FUZZ_TIME:-60}
FUZZ_JOBS=${FUZZ_JOBS:-1}
TARGETS=${FUZZ_TARGETS:-"vmt-migration-bypass vmt-migration-mapped-ram-copy
 vmt-migration-mapped-ram-map vmt-migration-bypass-mapped-ram-copy
 vmt-migration-bypass-mapped-ram-map"}

for f in "$FUZZER" "$SEED_QEMU"; do
    [ -x "$f" ] || { echo "fuzz: $f missing (make asan build)" >&2; exit 1; }
done

/usr/bin/python3 "$TOP/tests/qtest/fuzz/vmt-make-seeds.py" \
    --qemu "$SEED_QEMU" --out "$DIR" > "$DIR.seeds.log" 2>&1 || {
    cat "$DIR.seeds.log" >&2
    echo "fuzz: making the seeds failed" >&2
    exit 1
}
mv "$DIR.seeds.log" "$DIR/seeds.log"

export VMT_FUZZ_DIR="$DIR"
# QEMU leaks at exit (and the children exit without freeing): no LSan.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:handle_abort=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

FAILED=0

# final_stat KEY FILE...: sum of libFuzzer's final "stat::KEY: N" lines
final_stat() {
    key=$1
    shift
    cat "$@" | sed -n "s/^stat::$key: *\([0-9]*\).*/\1/p" |
        awk '{ s += $1 } END { print s + 0 }'
}

run_target() {
    t=$1
    corpus=$DIR/corpus/$t
    art=$DIR/artifacts/$t
    logs=$DIR/logs/$t
    mkdir -p "$corpus" "$art" "$logs"
    rm -f "$logs"/*.log "$art"/*
    j=1
    pids=
    while [ "$j" -le "$FUZZ_JOBS" ]; do
        # New units go to the shared corpus; the seeds are read only.
        "$FUZZER" --fuzz-target="$t" -max_total_time="$FUZZ_TIME" \
            -max_len=262144 -timeout=20 -rss_limit_mb=4096 \
            -print_final_stats=1 -artifact_prefix="$art/" \
            "$corpus" "$DIR/seeds/$t" > "$logs/job$j.log" 2>&1 &
        pids="$pids $!"
        j=$((j + 1))
    done
    rc=0
    for p in $pids; do
        wait "$p" || rc=1
    done
    execs=$(final_stat number_of_executed_units "$logs"/*.log)
    rate=$(final_stat average_exec_per_sec "$logs"/*.log)
    units=$(ls "$corpus" | wc -l)
    found=$(ls "$art" 2>/dev/null | grep -E '^(crash|timeout|oom|leak)-' || true)
    printf 'fuzz: %-38s %9s execs %6s execs/s (%s x %s s) corpus %s\n' \
        "$t" "$execs" "$rate" "$FUZZ_JOBS" "$FUZZ_TIME" "$units"
    if [ -n "$found" ] || [ "$rc" != 0 ]; then
        mkdir -p "$CRASHERS/$t"
        for a in $found; do
            cp "$art/$a" "$CRASHERS/$t/$a"
            echo "fuzz: $t: kept tests/qtest/fuzz/vmt-crashers/$t/$a"
        done
        echo "fuzz: $t FAILED, logs in $logs"
        grep -h -m3 -E 'ERROR: (Address|Undefined|libFuzzer)|runtime error|vmt-migration:' \
            "$logs"/*.log | sed 's/^/  /'
        FAILED=$((FAILED + 1))
    fi
}

# regress_target TARGET: each seed and stored crasher, once
regress_target() {
    t=$1
    logs=$DIR/logs/regress
    mkdir -p "$logs"
    for f in "$DIR/seeds/$t"/* "$CRASHERS/$t"/*; do
        [ -f "$f" ] || continue
        log=$logs/$t.$(basename "$f").log
        if "$FUZZER" --fuzz-target="$t" -timeout=20 -rss_limit_mb=4096 \
                "$f" > "$log" 2>&1; then
            PASS=$((PASS + 1))
        else
            FAIL=$((FAIL + 1))
            echo "fuzz-regress: $t $(basename "$f") FAILED (log: $log)"
        fi
    done
}

case $MODE in
run)
    for t in $TARGETS; do
        run_target "$t"
    done
    [ "$FAILED" = 0 ] || { echo "fuzz: $FAILED target(s) failed"; exit 1; }
    ;;
regress)
    PASS=0 FAIL=0
    for t in $TARGETS; do
        regress_target "$t"
    done
    echo "fuzz-regress: $PASS passed, $FAIL failed"
    [ "$FAIL" = 0 ]
    ;;
*)
    echo "usage: fuzz.sh run|regress" >&2
    exit 2
    ;;
esac
