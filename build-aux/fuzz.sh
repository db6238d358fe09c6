#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# libFuzzer on the incoming migration stream (tests/qtest/fuzz/
# vmt_migration_fuzz.c), with the ASan + UBSan build in build/qemu-asan:
#
#   fuzz.sh run       each target for $FUZZ_TIME seconds (default 60) with
#                     $FUZZ_JOBS processes (default 1) sharing its corpus;
#                     prints execs/s and total executions per target.  A
#                     crash, timeout or OOM fails the run; libFuzzer starts
#                     again after each until the time is spent, and the
#                     first input of each kind of crash (its signature: the
#                     report's kind and first QEMU frames, in FILE.sig) is
#                     kept under tests/qtest/fuzz/vmt-crashers/TARGET/
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
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:handle_abort=1:quarantine_size_mb=16:malloc_context_size=10${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

FAILED=0

# final_stat KEY FILE...: sum of libFuzzer's final "stat::KEY: N" lines
final_stat() {
    key=$1
    shift
    cat "$@" | sed -n "s/^stat::$key: *\([0-9]*\).*/\1/p" |
        awk '{ s += $1 } END { print s + 0 }'
}

# signature LOG: the kind and first QEMU frames of the first report in LOG
# (the child's, printed before the parent aborts), to tell crashes apart
signature() {
    awk '
        /^SUMMARY: / && !kind { kind = $2 " " $3 }
        /ALARM: working on the last Unit/ && !kind { kind = "timeout" }
        /ERROR: libFuzzer: out-of-memory/ && !kind { kind = "out-of-memory" }
        /^ *#[0-9]+ 0x[0-9a-f]+ in / && n < 3 && !done {
            f = $4
            if ($0 ~ /\.c:[0-9]+/ && $0 !~ /tests\/qtest\/fuzz\// &&
                $0 !~ /(malloc|calloc|realloc|g_malloc|g_malloc0|g_realloc)[ (]/)
                frames = frames (n++ ? ">" : "") f
        }
        /^$/ && n { done = 1 }
        END { print (kind ? kind : "crash") ": " frames }' "$1"
}

# job TARGET N: fuzz until FUZZ_TIME is spent, starting again after each
# crash (libFuzzer stops at the first one): known bugs do not end the run.
job() {
    t=$1 j=$2
    end=$(( $(date +%s) + FUZZ_TIME ))
    n=0
    while left=$((end - $(date +%s))); [ "$left" -gt 0 ]; do
        n=$((n + 1))
        log=$logs/job$j.$n.log
        # New units go to the shared corpus; the seeds are read only.
        "$FUZZER" --fuzz-target="$t" -max_total_time="$left" \
            -max_len=262144 -timeout=20 -rss_limit_mb=0 -malloc_limit_mb=2048 \
            -print_final_stats=1 -artifact_prefix="$art/job$j.$n." \
            "$corpus" "$DIR/seeds/$t" > "$log" 2>&1 && break
    done
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
        job "$t" "$j" &
        pids="$pids $!"
        j=$((j + 1))
    done
    for p in $pids; do
        wait "$p"
    done
    execs=$(final_stat number_of_executed_units "$logs"/*.log)
    rate=$((execs / FUZZ_TIME))
    units=$(ls "$corpus" | wc -l)
    printf 'fuzz: %-38s %9s execs %6s execs/s (%s x %s s) corpus %s\n' \
        "$t" "$execs" "$rate" "$FUZZ_JOBS" "$FUZZ_TIME" "$units"
    crashes=0
    for a in "$art"/*; do
        [ -f "$a" ] || continue
        crashes=$((crashes + 1))
        log=$logs/$(basename "$a" | sed -E 's/^(job[0-9]+\.[0-9]+)\..*/\1/').log
        sig=$(signature "$log")
        name=$(basename "$a" | sed -E 's/^job[0-9]+\.[0-9]+\.//')
        mkdir -p "$CRASHERS/$t"
        if ! grep -qxF "$sig" "$CRASHERS/$t"/*.sig 2>/dev/null; then
            cp "$a" "$CRASHERS/$t/$name"
            echo "$sig" > "$CRASHERS/$t/$name.sig"
            cp "$log" "$DIR/logs/$t-$name.log"
            echo "fuzz: $t: new: $sig"
            echo "      kept tests/qtest/fuzz/vmt-crashers/$t/$name (log: $DIR/logs/$t-$name.log)"
        fi
    done
    if [ "$crashes" != 0 ]; then
        echo "fuzz: $t: $crashes crash(es), signatures:"
        for a in "$art"/*; do
            log=$logs/$(basename "$a" | sed -E 's/^(job[0-9]+\.[0-9]+)\..*/\1/').log
            signature "$log"
        done | sort | uniq -c | sed 's/^/  /'
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
        case $f in *.sig) continue ;; esac
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
