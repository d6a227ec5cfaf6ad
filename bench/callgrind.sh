#!/usr/bin/env bash
# callgrind.sh - instructions per query of dnsbridge's own code (user space
# only) on the cache-hit and cache-miss paths, with valgrind --tool=callgrind,
# on short bounded runs at a low fixed rate (callgrind runs the proxy ~50x
# slower). Complements profile.sh: perf sees the kernel (which dominates), this
# counts the user-space work exactly and attributes it to functions.
#
# Usage (from the repository root): bash bench/callgrind.sh
#   knot (dnsbridge's upstream) is started by the shared peers.sh (with the
#   other peers, unused here); dnsbridge runs under callgrind on 127.0.0.1:5305
#   with the side-by-side config. Phases: hit warm-up (not counted), hit (counted),
#   miss (counted); counters are zeroed and dumped between phases with
#   callgrind_control. Everything started is stopped at the end and on error.
#
# Knobs: CG_QPS [2000] CG_LIMIT [10] CG_OUT [$WORK/out/callgrind] HIT_NAMES [1000]
#   plus lib-side.sh's (WORK, SRV_CPU, GEN_CPU, BRIDGE_*, SKIP_BUILD, SHARED_BENCH)
set -euo pipefail

log() { printf '[callgrind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=bench/lib-side.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-side.sh"

CG_QPS=${CG_QPS:-2000}
CG_LIMIT=${CG_LIMIT:-10}
CG_OUT=${CG_OUT:-$WORK/out/callgrind}
HIT_NAMES=${HIT_NAMES:-1000}
CG_PIDF=$WORK/pids-side/dnsbridge-callgrind.pid

command -v valgrind >/dev/null || die "valgrind not found: apt-get install valgrind"

cg_pid() {  # the recorded PID, if it is still valgrind running dnsbridge
    local pid
    pid=$(cat "$CG_PIDF" 2>/dev/null) || return 1
    grep -q 'callgrind' "/proc/$pid/comm" 2>/dev/null && grep -qa dnsbridge "/proc/$pid/cmdline" && echo "$pid"
}
cg_stop() {
    local pid i
    pid=$(cg_pid) || { rm -f "$CG_PIDF"; return 0; }
    kill -TERM "$pid"
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    log "stopped dnsbridge under callgrind (pid $pid)"
    rm -f "$CG_PIDF"
}
cleanup() { cg_stop || true; stop_everything; }

load() {  # out file extra...
    local out=$1 file=$2; shift 2
    taskset -c "$GEN_CPU" timeout $((CG_LIMIT + 40)) dnsperf -s "$ADDR" -p "$BRIDGE_PORT" -d "$file" -l "$CG_LIMIT" \
        -c 4 -q 100 -T 1 -t 5 -Q "$CG_QPS" "$@" >"$out" 2>&1 || log "dnsperf exit $?"
}

mkdir -p "$CG_OUT" "$WORK"/{pids,pids-side,logs,q}
rm -f "$CG_OUT"/callgrind.out*
bridge_build; bridge_configure
taskset -pc "$GEN_CPU" $$ >/dev/null
cg_stop; stop_everything
trap cleanup EXIT; trap 'exit 130' INT TERM
peers start

# shellcheck disable=SC2046
taskset -c "$SRV_CPU" valgrind --tool=callgrind --callgrind-out-file="$CG_OUT/callgrind.out" \
    $(bridge_cmd) >"$WORK/logs/dnsbridge-callgrind.log" 2>&1 &
echo $! >"$CG_PIDF"
for i in $(seq 1 60); do
    dig1 "$BRIDGE_PORT" h1.bench.test A 2>/dev/null | grep -q 'status: NOERROR' && break
    kill -0 "$(cat "$CG_PIDF")" 2>/dev/null || die "dnsbridge under callgrind exited, see $WORK/logs/dnsbridge-callgrind.log"
    sleep 1
done
pid=$(cg_pid) || die "dnsbridge under callgrind not running"
log "dnsbridge under callgrind up, pid $pid"
echo "rewrite check under callgrind: $(bridge_rewrite_check || true)" | tee "$CG_OUT/check.txt" >&2

hit=$WORK/q/cg-hit.txt miss=$WORK/q/cg-miss.txt
awk -v n="$HIT_NAMES" 'BEGIN { for (i = 1; i <= n; i++) printf "h%d.bench.test A\n", i }' >"$hit"
awk -v n=$((CG_QPS * (CG_LIMIT + 5))) -v p="c$(date +%s)" 'BEGIN { for (i = 1; i <= n; i++) printf "%s-%d.bench.test A\n", p, i }' >"$miss"

log "hit warm-up (not counted)"
taskset -c "$GEN_CPU" timeout 60 dnsperf -s "$ADDR" -p "$BRIDGE_PORT" -d "$hit" -n 1 -l 30 -c 4 -q 100 -T 1 -t 5 -Q "$CG_QPS" >/dev/null 2>&1 || true
for phase in hit miss; do
    timeout 30 callgrind_control -z "$pid" >/dev/null
    if [ $phase = hit ]; then load "$CG_OUT/dnsperf-hit.txt" "$hit"; else load "$CG_OUT/dnsperf-miss.txt" "$miss" -n 1; fi
    timeout 60 callgrind_control -d "$phase" "$pid" >/dev/null
    log "  $phase: $(awk '/Queries completed:/ { printf "%s completed", $3 } /Queries lost:/ { printf ", %s lost", $3 }' "$CG_OUT/dnsperf-$phase.txt")"
done
cg_stop
stop_everything; trap - EXIT
rm -f "$miss"

# one dump per phase: callgrind.out.<n> with "desc: Trigger: Client Request: <phase>" (or similar)
for f in "$CG_OUT"/callgrind.out.*; do
    phase=$(grep -m1 -o 'Trigger: .*' "$f" | grep -o -E 'hit|miss' | head -1 || true)
    [ -n "$phase" ] || continue
    q=$(awk '/Queries completed:/ { print $3 }' "$CG_OUT/dnsperf-$phase.txt")
    tot=$(grep -m1 -E '^(summary|totals):' "$f" | awk '{ print $2 }')
    {
        echo "# $phase: $tot instructions (Ir) in dnsbridge's user space for $q queries = $((tot / (q > 0 ? q : 1))) Ir per query"
        echo "# (all threads; includes the runtime's idle/park loop at ${CG_QPS} qps)"
        { timeout 300 callgrind_annotate --inclusive=yes --threshold=99 "$f" 2>/dev/null || true; } | head -80
        echo
        echo "# exclusive (self)"
        { timeout 300 callgrind_annotate --inclusive=no --threshold=95 "$f" 2>/dev/null || true; } | head -60
    } >"$CG_OUT/annotate-$phase.txt" || true
    log "  wrote $CG_OUT/annotate-$phase.txt: $(head -1 "$CG_OUT/annotate-$phase.txt")"
done
