#!/usr/bin/env bash
# profile.sh - where dnsbridge spends its CPU on the cache-hit and cache-miss
# paths of the peers benchmark, with perf (software event cpu-clock: this VM has
# no hardware PMU), on short bounded runs.
#
# Usage (from the repository root): bash bench/profile.sh
#   Starts knot and the peers through the shared peers.sh (only knot is used, as
#   dnsbridge's upstream) and dnsbridge through lib-side.sh, pinned as in the
#   benchmark (servers on CPU SRV_CPU, dnsperf on GEN_CPU); then for each of
#   hit and miss runs the benchmark's dnsperf command for PROF_LIMIT seconds
#   while `perf record` samples the dnsbridge process (two passes: a flat one
#   for self time, one with DWARF call graphs for inclusive time), and writes
#   the reports. Everything it started is stopped at the end and on error.
#
# Knobs: PROF_LIMIT [8] PROF_FREQ [1999] (flat) PROF_DWARF_FREQ [499]
#   PROF_QPS [] (empty: dnsperf at full speed, as peers.sh; a number: -Q, as cost.sh)
#   PROF_OUT [$WORK/out/profile] CLIENTS [4] OUTSTANDING [100] HIT_NAMES [1000]
#   plus lib-side.sh's (WORK, SRV_CPU, GEN_CPU, BRIDGE_*, SKIP_BUILD, SHARED_BENCH)
#
# Install perf with `apt-get install linux-perf` if missing. Loopback only.
set -euo pipefail

log() { printf '[profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=bench/lib-side.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-side.sh"

PROF_LIMIT=${PROF_LIMIT:-8}
PROF_FREQ=${PROF_FREQ:-1999}
PROF_DWARF_FREQ=${PROF_DWARF_FREQ:-499}
PROF_QPS=${PROF_QPS:-}
PROF_OUT=${PROF_OUT:-$WORK/out/profile}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}
HIT_NAMES=${HIT_NAMES:-1000}
DNSPERF_TIMEOUT=${DNSPERF_TIMEOUT:-2}

command -v perf >/dev/null || die "perf not found: apt-get install linux-perf"

# load name file extra-args... : dnsperf for PROF_LIMIT s against dnsbridge, bounded
load() {
    local out=$1 file=$2; shift 2
    # shellcheck disable=SC2046
    taskset -c "$GEN_CPU" timeout $((PROF_LIMIT + DNSPERF_TIMEOUT + 30)) \
        dnsperf -s "$ADDR" -p "$BRIDGE_PORT" -d "$file" -l "$PROF_LIMIT" -c "$CLIENTS" -q "$OUTSTANDING" \
        -T 1 -t "$DNSPERF_TIMEOUT" $([ -n "$PROF_QPS" ] && echo "-Q $PROF_QPS") "$@" >"$out" 2>&1 || log "dnsperf exit $?"
}

# record test mode file extra-dnsperf-args...
record() {
    local test=$1 mode=$2 file=$3; shift 3
    local pid data=$PROF_OUT/perf-$test-$mode.data args
    pid=$(pid_of dnsbridge)
    if [ "$mode" = flat ]; then args="-F $PROF_FREQ"; else args="-F $PROF_DWARF_FREQ -g --call-graph dwarf,16384"; fi
    # perf is started first and stops by itself after the load's duration (+1 s)
    # shellcheck disable=SC2086
    taskset -c "$GEN_CPU" timeout $((PROF_LIMIT + 20)) perf record -e cpu-clock $args -p "$pid" -o "$data" \
        -- sleep $((PROF_LIMIT + 1)) >"$PROF_OUT/perf-$test-$mode.record.log" 2>&1 &
    local ppid=$!
    sleep 0.5
    load "$PROF_OUT/dnsperf-$test-$mode.txt" "$file" "$@"
    wait "$ppid" || log "perf record exit $? ($test $mode)"
    log "  $test $mode: $(awk '/Queries per second:/ { printf "%.0f qps", $4 }' "$PROF_OUT/dnsperf-$test-$mode.txt"), $(grep -o '[0-9]* samples' "$PROF_OUT/perf-$test-$mode.record.log" | head -1)"
}

report() {
    local test=$1 d=$PROF_OUT
    timeout 300 perf report -i "$d/perf-$test-flat.data" --no-children --sort dso --stdio 2>/dev/null \
        | grep -v '^$' >"$d/report-$test-dso.txt" || true
    timeout 300 perf report -i "$d/perf-$test-flat.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
        | grep -v '^$' >"$d/report-$test-self.txt" || true
    timeout 600 perf report -i "$d/perf-$test-dwarf.data" --children --sort symbol --stdio -g none --percent-limit 1 2>/dev/null \
        | grep -v '^$' >"$d/report-$test-children.txt" || true
    timeout 600 perf report -i "$d/perf-$test-dwarf.data" --no-children --sort symbol --stdio -g caller,0.5,callee,function,percent --percent-limit 2 2>/dev/null \
        >"$d/report-$test-callgraph.txt" || true
    log "  wrote $d/report-$test-{dso,self,children,callgraph}.txt"
}

mkdir -p "$PROF_OUT" "$WORK"/{pids,pids-side,logs,q}
bridge_build; bridge_configure
taskset -pc "$GEN_CPU" $$ >/dev/null
stop_everything
trap stop_everything EXIT; trap 'exit 130' INT TERM
peers start
bridge_start

hit=$WORK/q/prof-hit.txt miss=$WORK/q/prof-miss.txt
awk -v n="$HIT_NAMES" 'BEGIN { for (i = 1; i <= n; i++) printf "h%d.bench.test A\n", i }' >"$hit"
tag=$(date +%s)
log "hit: warm-up pass, then $HIT_NAMES names looped for ${PROF_LIMIT}s per pass"
taskset -c "$GEN_CPU" timeout 30 dnsperf -s "$ADDR" -p "$BRIDGE_PORT" -d "$hit" -n 1 -l 20 -c "$CLIENTS" -q "$OUTSTANDING" >/dev/null 2>&1 || true
record hit flat "$hit"
record hit dwarf "$hit"
log "miss: unique names (-n 1) for ${PROF_LIMIT}s per pass"
for mode in flat dwarf; do
    awk -v n=2000000 -v p="p$tag${mode:0:1}" 'BEGIN { for (i = 1; i <= n; i++) printf "%s-%d.bench.test A\n", p, i }' >"$miss"
    record miss "$mode" "$miss" -n 1
done
rm -f "$miss"
stop_everything; trap - EXIT
report hit
report miss
log "done: $PROF_OUT"
