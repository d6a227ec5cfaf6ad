#!/usr/bin/env bash
# peers-side-by-side.sh - dnsbridge measured in the SAME run as the peers of
# ../shared/bench/peers.sh (knot alone, dnsmasq, dnsmasq-c2k, unbound, dnsdist,
# null responder), with peers.sh's exact dnsperf command lines, interleaved,
# and reported as ratios (dnsbridge/dnsdist on cache misses, dnsbridge/null on
# cache hits, dnsbridge/unbound on the rewrite), never as a wall-clock verdict.
#
# Usage (from the repository root): bash bench/peers-side-by-side.sh [all|start|check|measure|table|stop]
#   all (default) = peers.sh install/configure/build, cargo build --release --locked,
#                   start everything, check, measure, stop everything, table + report.
#   start/check/measure leave the servers running; `stop` stops them by PID.
#
# The peers are installed, configured, built, started and stopped by the shared
# peers.sh (${SHARED_BENCH:-../shared/bench}/peers.sh, called by path). dnsbridge
# (target/release/dnsbridge) is started pinned like them (taskset -c $SRV_CPU) on
# 127.0.0.1:5305, forwarding to the same knot upstream (127.0.0.1:5300), with a
# generated config routing registry.private.test -> registry.public.test.
#
# Knobs (same names and defaults as peers.sh):
#   LIMIT [10] RUNS [2] HIT_NAMES [1000] MISS_NAMES [2000000] CLIENTS [4]
#   OUTSTANDING [100] DNSPERF_TIMEOUT [2] SRV_CPU [0] GEN_CPU [1]
#   WORK [/tmp/peers-bench]
# and of this script:
#   SIDE_OUT [$WORK/out/side-by-side]  results.tsv, raw/, table.md, ratios.md, results-latest.md
#   SIDE_TARGETS ["knot dnsmasq dnsmasq-c2k unbound dnsdist dnsbridge null"]  targets of hit/miss
#   SIDE_REWRITE ["dnsmasq dnsmasq-c2k unbound dnsdist dnsbridge"]            targets of the rewrite
#   BRIDGE_PORT [5305] BRIDGE_ARGS [] SKIP_BUILD [0] SHARED_BENCH [../shared/bench]
#
# Order: run 1 goes through the targets in list order, run 2 in reverse, and so
# on (ABBA), so that slow drift of the machine (other builds on the 2 cores)
# does not always favour the same target.
#
# Loopback only. Every load run is bounded by dnsperf -l plus an outer timeout;
# every dig by +time=1 +tries=1 plus timeout. Only processes this run started are
# stopped, by recorded PID (checked against /proc/PID/comm), at the end and on error.
set -euo pipefail

log() { printf '[side %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=bench/lib-side.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-side.sh"

export LIMIT=${LIMIT:-10}
export RUNS=${RUNS:-2}
export HIT_NAMES=${HIT_NAMES:-1000}
export MISS_NAMES=${MISS_NAMES:-2000000}
export CLIENTS=${CLIENTS:-4}
export OUTSTANDING=${OUTSTANDING:-100}
export DNSPERF_TIMEOUT=${DNSPERF_TIMEOUT:-2}
OUT=${SIDE_OUT:-$WORK/out/side-by-side}
SIDE_TARGETS=${SIDE_TARGETS:-knot dnsmasq dnsmasq-c2k unbound dnsdist dnsbridge null}
SIDE_REWRITE=${SIDE_REWRITE:-dnsmasq dnsmasq-c2k unbound dnsdist dnsbridge}
HZ=$(getconf CLK_TCK)

# ---------------------------------------------------------------- helpers
answer_of() {  # port name type -> "STATUS: rr | rr"  (as peers.sh)
    local o
    o=$(dig1 "$1" "$2" "${3:-A}" +noall +comments +answer 2>&1) || true
    printf '%s: %s\n' "$(grep -o 'status: [A-Z]*' <<<"$o" | head -1 | cut -d' ' -f2)" \
        "$(grep -v '^;' <<<"$o" | grep -v '^$' | awk '{printf "%s%s %s %s %s", (NR>1?" | ":""), $1, $2, $4, $5}')"
}
cpu_ticks() {  # cpuN -> "busy total" (as peers.sh)
    awk -v c="cpu$1" '$1==c {t=0; for(i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat
}
proc_ticks() {  # utime+stime of a whole process (all threads), clock ticks
    awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"
}
proc_cs() {  # context switches (voluntary + involuntary) summed over a process's threads
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { printf "%.0f\n", s }'
}
reverse() { local w out=""; for w in "$@"; do out="$w $out"; done; echo "$out"; }
order_for_run() {  # run -> target list (odd runs in order, even runs reversed)
    # shellcheck disable=SC2086
    if [ $(($1 % 2)) = 1 ]; then echo "$2"; else reverse $2; fi
}
index_of() {  # target list -> 1-based position (stable across runs: used in miss names)
    local i=0 t
    for t in $2; do i=$((i + 1)); [ "$t" = "$1" ] && { echo "$i"; return; }; done
    die "$1 not in list"
}

start_all() {
    peers start
    bridge_start
}

check() {
    mkdir -p "$OUT"
    local f=$OUT/checks-dnsbridge.txt
    {
        echo "# dnsbridge functional checks $(date -u +%FT%TZ)"
        echo "## dnsbridge ($ADDR:$BRIDGE_PORT)"
        echo "registry.private.test A (cold) rewrite check -> $(bridge_rewrite_check || true)"
        echo "h1.bench.test A            -> $(answer_of "$BRIDGE_PORT" h1.bench.test)"
        echo "registry.public.test A     -> $(answer_of "$BRIDGE_PORT" registry.public.test)"
        echo "registry.private.test A (target cached) -> $(answer_of "$BRIDGE_PORT" registry.private.test)"
        echo "registry.private.test AAAA -> $(answer_of "$BRIDGE_PORT" registry.private.test AAAA)"
        echo "Registry.PRIVATE.test A (case echo) -> $(dig1 "$BRIDGE_PORT" Registry.PRIVATE.test A +noall +question 2>&1 | tr -d ';' | xargs)"
    } | tee "$f" >&2
    # peers.sh's own checks of the peers, written to $OUT/checks.txt
    OUT=$OUT bash "$PEERS_SH" check 2>/dev/null || log "peers.sh check failed"
}

# ---------------------------------------------------------------- measure
# run_one name test run file extra-dnsperf-args...   (peers.sh's run_one, plus per-process CPU)
run_one() {
    local name=$1 test=$2 run=$3 file=$4; shift 4
    local port raw a0 a1 b0 b1 pid kpid s0 s1 k0 k1 la x0 x1 y0 y1
    port=$(port_of "$name"); raw=$OUT/raw/$name-$test-$run.txt
    pid=$(pid_of "$name"); kpid=$(pid_of knot)
    la=$(cut -d' ' -f1 /proc/loadavg)
    a0=$(cpu_ticks "$SRV_CPU"); a1=$(cpu_ticks "$GEN_CPU"); s0=$(proc_ticks "$pid"); k0=$(proc_ticks "$kpid")
    x0=$(proc_cs "$pid"); y0=$(proc_cs "$kpid")
    taskset -c "$GEN_CPU" timeout $((LIMIT + DNSPERF_TIMEOUT + 30)) \
        dnsperf -s "$ADDR" -p "$port" -d "$file" -l "$LIMIT" -c "$CLIENTS" -q "$OUTSTANDING" \
        -T 1 -t "$DNSPERF_TIMEOUT" "$@" >"$raw" 2>&1 || log "dnsperf exit $? for $name $test $run"
    b0=$(cpu_ticks "$SRV_CPU"); b1=$(cpu_ticks "$GEN_CPU"); s1=$(proc_ticks "$pid"); k1=$(proc_ticks "$kpid")
    x1=$(proc_cs "$pid"); y1=$(proc_cs "$kpid")
    [ "$name" = knot ] && { k1=$k0; y1=$y0; }
    awk -v name="$name" -v test="$test" -v run="$run" -v a0="$a0" -v b0="$b0" -v a1="$a1" -v b1="$b1" \
        -v ds=$((s1 - s0)) -v dk=$((k1 - k0)) -v hz="$HZ" -v la="$la" -v dx=$((x1 - x0)) -v dy=$((y1 - y0)) '
        function pct(a, b,  x, y) { split(a, x, " "); split(b, y, " "); return (y[2]-x[2]) ? 100*(y[1]-x[1])/(y[2]-x[2]) : 0 }
        /Queries sent:/      { sent=$3 }
        /Queries completed:/ { done=$3 }
        /Queries lost:/      { lost=$3 }
        /Response codes:/    { sub(/.*Response codes: */, ""); rc=$0; gsub(/ \([0-9.]+%\)/, "", rc); gsub(/, /, ",", rc); gsub(/ /, "=", rc) }
        /Average packet size:/ { resp=$NF }
        /Run time \(s\):/    { rt=$4 }
        /Queries per second:/ { qps=$4 }
        /Average Latency/    { avg=$4; max=$NF; sub(/\)/, "", max) }
        END { q = done > 0 ? done : 1
              printf "%s\t%s\t%s\t%.0f\t%.3f\t%.3f\t%s\t%s\t%s\t%.2f\t%s\t%s\t%.0f\t%.0f\t%.2f\t%.2f\t%s\t%.3f\t%.3f\n",
                     name, test, run, qps, avg*1000, max*1000, lost, sent, done, rt, resp, rc, pct(a0, b0), pct(a1, b1),
                     ds * 1e6 / hz / q, dk * 1e6 / hz / q, la, dx / q, dy / q }
    ' "$raw" >>"$OUT/results.tsv"
    tail -1 "$OUT/results.tsv" | awk -F'\t' '{printf "  %-12s %-7s run%s  %8s qps  avg %s ms  max %s ms  lost %s  cpu%s/%s %%  srv %s us/q  knot %s us/q  ctxsw/q srv %s knot %s  load %s\n", $1,$2,$3,$4,$5,$6,$7,$13,$14,$15,$16,$18,$19,$17}' >&2
}

measure() {
    mkdir -p "$OUT/raw" "$WORK/q"
    rm -f "$OUT"/raw/*.txt
    printf 'target\ttest\trun\tqps\tavg_ms\tmax_ms\tlost\tsent\tcompleted\truntime_s\tresp_bytes\trcodes\tcpu%s_busy\tcpu%s_busy\tsrv_us_per_q\tknot_us_per_q\tloadavg1\tsrv_ctxsw_per_q\tknot_ctxsw_per_q\n' "$SRV_CPU" "$GEN_CPU" >"$OUT/results.tsv"
    : >"$OUT/checks-rewrite.txt"
    local hit=$WORK/q/hit.txt rew=$WORK/q/rewrite.txt miss=$WORK/q/side-miss.txt tag r t port idx
    awk -v n="$HIT_NAMES" 'BEGIN { for (i = 1; i <= n; i++) printf "h%d.bench.test A\n", i }' >"$hit"
    echo "registry.private.test A" >"$rew"
    tag=$(date +%s)
    log "(a) cache hit: $HIT_NAMES names looped for ${LIMIT}s, after one warm-up pass"
    for r in $(seq 1 "$RUNS"); do for t in $(order_for_run "$r" "$SIDE_TARGETS"); do
        port=$(port_of "$t")
        taskset -c "$GEN_CPU" timeout 30 dnsperf -s "$ADDR" -p "$port" -d "$hit" -n 1 -l 20 -c "$CLIENTS" -q "$OUTSTANDING" >/dev/null 2>&1 || true
        run_one "$t" hit "$r" "$hit"
    done; done
    log "(b) cache miss: up to $MISS_NAMES unique names per run, each asked once (-n 1), ${LIMIT}s limit"
    for r in $(seq 1 "$RUNS"); do for t in $(order_for_run "$r" "$SIDE_TARGETS"); do
        idx=$(index_of "$t" "$SIDE_TARGETS")
        # same name length for every target: m<epoch><target#><run>-<n> (as peers.sh; 's' marks this script)
        awk -v n="$MISS_NAMES" -v p="s$tag$idx$r" 'BEGIN { for (i = 1; i <= n; i++) printf "%s-%d.bench.test A\n", p, i }' >"$miss"
        run_one "$t" miss "$r" "$miss" -n 1
        rm -f "$miss"
    done; done
    log "(c) rewrite: registry.private.test A looped for ${LIMIT}s (target warmed just before)"
    for r in $(seq 1 "$RUNS"); do for t in $(order_for_run "$r" "$SIDE_REWRITE"); do
        port=$(port_of "$t")
        dig1 "$port" registry.public.test A >/dev/null 2>&1 || true
        dig1 "$port" registry.private.test A >/dev/null 2>&1 || true
        run_one "$t" rewrite "$r" "$rew"
        echo "$t rewrite run $r, answer right after: $(answer_of "$port" registry.private.test)" >>"$OUT/checks-rewrite.txt"
        if [ "$t" = dnsbridge ]; then
            echo "dnsbridge rewrite run $r, check right after: $(bridge_rewrite_check || true)" >>"$OUT/checks-rewrite.txt"
        fi
    done; done
}

# ---------------------------------------------------------------- report
table() {
    [ -s "$OUT/results.tsv" ] || die "no $OUT/results.tsv; run measure first"
    awk -F'\t' -v cs="$SRV_CPU" -v cg="$GEN_CPU" '
        NR == 1 { next }
        { k = $2 SUBSEP $1; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
          j = (k in cnt) ? " / " : ""
          qps[k] = qps[k] j $4; avg[k] = avg[k] j $5; mx[k] = mx[k] j $6; lost[k] = lost[k] j $7
          c0[k] = c0[k] j $13; c1[k] = c1[k] j $14; su[k] = su[k] j $15; ku[k] = ku[k] j ($1 == "knot" ? "-" : $16)
          la[k] = la[k] j $17; xs[k] = xs[k] j $18; kc[k] = kc[k] j ($1 == "knot" ? "-" : $19); resp[k] = $11; r = $12; gsub(/=[0-9]+/, "", r); rc[k] = r; cnt[k]++ }
        END {
          printf "| test | target | QPS | avg latency ms | max latency ms | lost | server CPU us/query | knot CPU us/query | server ctx switches/query | knot ctx switches/query | CPU%s busy %% | CPU%s busy %% (dnsperf) | load avg | resp bytes | rcodes |\n", cs, cg
          print  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
          # hit, miss, rewrite blocks, targets in first-seen order
          split("hit miss rewrite", tests, " ")
          for (ti = 1; ti <= 3; ti++) for (i = 1; i <= n; i++) { k = order[i]; split(k, p, SUBSEP); if (p[1] != tests[ti]) continue
            b = (p[2] == "dnsbridge") ? "**" : ""
            printf "| %s | %s%s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p[1], b, p[2], b, qps[k], avg[k], mx[k], lost[k], su[k], ku[k], xs[k], kc[k], c0[k], c1[k], la[k], resp[k], rc[k] }
        }' "$OUT/results.tsv" | tee "$OUT/table.md"
    echo
    ratios | tee "$OUT/ratios.md"
}

# ratio rows: dnsbridge vs a peer, per run (paired within a run) and of the run means
ratios() {
    awk -F'\t' '
        NR == 1 { next }
        { q[$1, $2, $3] = $4; c[$1, $2, $3] = $15; k[$1, $2, $3] = ($1 == "knot" ? 0 : $16); if ($3 + 0 > maxr) maxr = $3 + 0 }
        function row(test, peer, goal, what,   r, s, sb, sp, nb, np, x) {
          s = ""; sb = sp = nb = np = 0
          for (r = 1; r <= maxr; r++) {
            if ((("dnsbridge", test, r) in q) && ((peer, test, r) in q) && q[peer, test, r] > 0) {
              x = q["dnsbridge", test, r] / q[peer, test, r]; s = s (s == "" ? "" : " / ") sprintf("%.2f", x)
              sb += q["dnsbridge", test, r]; nb++; sp += q[peer, test, r]; np++ }
          }
          if (nb == 0) return
          printf "| %s | dnsbridge / %s | %s | %.2f | %s | %s |\n", test, peer, s, (sb / nb) / (sp / np), goal, what
        }
        END {
          print "| test | ratio of QPS | per run (same run, paired) | of run means | goal | note |"
          print "|---|---|---|---|---|---|"
          row("miss", "dnsdist", ">= 1.30", "the cache-miss forwarding target (issue 2/3)")
          row("hit", "null", ">= ~0.97", "cache hits within a few percent of the null responder")
          row("rewrite", "unbound", "-", "the only peer that answers the rewrite correctly")
          row("hit", "dnsdist", "-", "context")
          row("miss", "unbound", "-", "context")
          row("miss", "knot", "-", "context: knot answering dnsperf directly, no forwarder")
          row("rewrite", "null", "-", "context: the rewrite answer is served from cache")
          print ""
          print "CPU-cost view of the same runs (less sensitive to other load on the machine): capacity = 1 / CPU per query,"
          print "so the ratio dnsbridge / peer = peer CPU us/query / dnsbridge CPU us/query (utime+stime of the process, each at"
          print "its own saturation rate); for misses the upstream knot shares the core, so its us/query behind each"
          print "forwarder is added on both sides."
          print ""
          print "| test | capacity ratio from CPU per query | per run | of run sums | dnsbridge us/query (mean) | peer us/query (mean) |"
          print "|---|---|---|---|---|---|"
          crow("miss", "dnsdist", 1); crow("hit", "null", 0); crow("rewrite", "unbound", 0); crow("hit", "dnsdist", 0)
        }
        function crow(test, peer, withknot,   r, s, b, p, sb, sp, n) {
          s = ""; sb = sp = n = 0
          for (r = 1; r <= maxr; r++) {
            if (!((("dnsbridge", test, r) in c) && ((peer, test, r) in c))) continue
            b = c["dnsbridge", test, r] + (withknot ? k["dnsbridge", test, r] : 0)
            p = c[peer, test, r] + (withknot ? k[peer, test, r] : 0)
            if (b <= 0) continue
            s = s (s == "" ? "" : " / ") sprintf("%.2f", p / b); sb += b; sp += p; n++
          }
          if (n == 0) return
          printf "| %s | dnsbridge / %s%s | %s | %.2f | %.2f | %.2f |\n", test, peer, (withknot ? " (each + its knot)" : ""), s, sp / sb, sb / n, sp / n
        }' "$OUT/results.tsv"
}

write_results() {
    local f=$OUT/results-latest.md
    {
        echo "# dnsbridge side by side with the DNS peers - raw results (generated by bench/peers-side-by-side.sh)"
        echo
        echo "- date: $(date -u +'%F %T UTC')"
        echo "- dnsbridge: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) ($(git -C "$ROOT" log -1 --format=%s 2>/dev/null | cut -c1-80)), $(bridge_cmd)"
        echo "- machine: nproc=$(nproc), CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(lscpu | sed -n 's/^Hypervisor vendor: *//p' | sed 's/^/hypervisor /'), kernel $(uname -r)"
        echo "- versions: dnsperf $(dnsperf -h 2>&1 | sed -n 's/^Version //p'), $(dnsmasq --version | head -1 | awk '{print $1, $3}'), unbound $(unbound -V | sed -n 's/^Version //p'), $(dnsdist --version | head -1 | awk '{print $1, $2}'), knot $(knotd --version | awk '{print $NF}')"
        echo "- pinning: every server (dnsbridge too) on CPU $SRV_CPU, dnsperf on CPU $GEN_CPU; forwarders share CPU $SRV_CPU with knot"
        echo "- dnsperf: -s $ADDR -l $LIMIT -c $CLIENTS -q $OUTSTANDING -T 1 -t $DNSPERF_TIMEOUT; hit: $HIT_NAMES names looped; miss: $MISS_NAMES unique names, -n 1; rewrite: one name looped; runs: $RUNS (odd runs in list order, even runs reversed)"
        echo "- load average (1 min) at the start of each measurement is in the table: other builds on this 2-core machine compete with both CPUs"
        echo
        echo "## Table (run 1 / run 2 ...)"
        echo
        cat "$OUT/table.md"
        echo
        echo "## Ratios"
        echo
        cat "$OUT/ratios.md"
        echo
        echo "## Functional checks"
        echo
        echo '```'
        cat "$OUT/checks-dnsbridge.txt" "$OUT/checks.txt" "$OUT/checks-rewrite.txt" 2>/dev/null
        echo '```'
        echo
        echo "## Exact dnsperf command lines (run 1)"
        echo
        echo '```'
        grep -h 'Command line' "$OUT"/raw/*-1.txt | sed 's/.*Command line: //' | sed "s|$WORK/q/side-miss.txt|<miss file: $MISS_NAMES unique names s<epoch><target#><run>-N.bench.test A>|"
        echo '```'
    } >"$f"
    log "wrote $f"
}

# ---------------------------------------------------------------- main
mkdir -p "$WORK"/{pids,pids-side,logs} "$OUT"
# keep this script's own helpers (awk, dig) off the servers' CPU (after any cargo build)
pin_self() { taskset -pc "$GEN_CPU" $$ >/dev/null; }
action=${1:-all}
case $action in
    start)   bridge_build; bridge_configure; pin_self; start_all ;;
    check)   pin_self; check ;;
    measure) pin_self; measure; table ;;
    table)   table ;;
    report)  table >/dev/null; write_results ;;
    stop)    stop_everything ;;
    all)
        peers install; peers configure; peers build
        bridge_build; bridge_configure; pin_self
        stop_everything   # anything left running by an earlier `start` (by recorded PID)
        trap stop_everything EXIT
        trap 'exit 130' INT TERM
        start_all; check; measure
        stop_everything; trap - EXIT
        table >/dev/null; write_results
        echo; cat "$OUT/table.md"; echo; cat "$OUT/ratios.md" ;;
    *) die "unknown action $action" ;;
esac
