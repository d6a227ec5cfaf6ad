#!/usr/bin/env bash
# cost-side-by-side.sh - the measures of ../shared/bench/cost.sh with dnsbridge
# next to the peers, in the same run:
#   1. server CPU per query at a FIXED offered load (dnsperf -Q), from the server
#      process's own utime+stime (/proc/PID/stat fields 14+15, all threads) and
#      its threads' schedstat; the upstream's (knot's) CPU read and reported apart.
#        hit  : HIT_NAMES names looped at HIT_QPS after a warm-up pass
#        miss : unique names at MISS_QPS, -n 1 (forwarders, dnsbridge and knot alone)
#   2. memory: VmRSS / VmHWM right after start and after FILL_NAMES distinct names
#      were asked once each at FILL_QPS, plus the cache entry count where the
#      server reports one.
#
# Servers: the peers are installed/configured/built/started/stopped by the shared
# peers.sh (called by path); dnsbridge is built (cargo build --release --locked),
# configured and started by lib-side.sh (127.0.0.1:5305, upstream knot
# 127.0.0.1:5300, pinned with taskset -c $SRV_CPU like the peers). For the memory
# phase unbound and dnsdist are restarted, as cost.sh does, from a copy of
# peers.sh's config with a local control channel added (unbound: remote-control on
# a unix socket + extended-statistics; dnsdist: console on 127.0.0.1:5199 with a
# random key), so that their cache can be counted; their new PIDs go into
# peers.sh's pid files so that `peers.sh stop` stops them. dnsbridge runs its
# metrics endpoint (--metrics 127.0.0.1:$BRIDGE_METRICS_PORT, when the binary has
# it) in the memory phase, to read dnsbridge_cache_entries / _bytes.
#
# Usage (from the repository root): bash bench/cost-side-by-side.sh [all|cost|memory|table|stop]
#   all (default) = peers.sh install/configure/build, cargo build, cost, memory, table.
#   Every server is stopped at the end and on error.
#
# Knobs (cost.sh's names and defaults): LIMIT [10] RUNS [2] HIT_QPS [80000]
#   MISS_QPS [12000] HIT_NAMES [1000] MISS_NAMES [MISS_QPS*(LIMIT+3)]
#   EXTRA_MISS ["dnsmasq:5000"] FILL_NAMES [100000] FILL_QPS [5000] FILL_LIMIT [60]
#   CLIENTS [4] OUTSTANDING [100] DNSPERF_TIMEOUT [2] SRV_CPU [0] GEN_CPU [1]
#   WORK [/tmp/peers-bench]
# and of this script: COST_OUT [$WORK/out/cost-side-by-side], BRIDGE_PORT [5305],
#   BRIDGE_ARGS [], SKIP_BUILD [0], SHARED_BENCH [../shared/bench],
#   HIT_TARGETS / MISS_TARGETS / MEM_TARGETS / FILL_ORDER (defaults below).
#
# Order within a phase: run 1 in list order, run 2 reversed (ABBA), so that drift
# of the shared machine does not always favour the same server.
#
# Loopback only. Every load run is bounded by dnsperf -l and an outer timeout;
# so is every control/dig call.
set -euo pipefail

log() { printf '[cost-side %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=bench/lib-side.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-side.sh"

COST_OUT=${COST_OUT:-$WORK/out/cost-side-by-side}
PEERS=${PEERS_DIR:-$WORK/peers}
LIMIT=${LIMIT:-10}
RUNS=${RUNS:-2}
HIT_QPS=${HIT_QPS:-80000}
MISS_QPS=${MISS_QPS:-12000}
HIT_NAMES=${HIT_NAMES:-1000}
MISS_NAMES=${MISS_NAMES:-$((MISS_QPS * (LIMIT + 3)))}
EXTRA_MISS=${EXTRA_MISS-dnsmasq:5000}
FILL_NAMES=${FILL_NAMES:-100000}
FILL_QPS=${FILL_QPS:-5000}
FILL_LIMIT=${FILL_LIMIT:-60}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}
DNSPERF_TIMEOUT=${DNSPERF_TIMEOUT:-2}
HZ=$(getconf CLK_TCK)
DNSDIST_CONSOLE=$ADDR:5199
BRIDGE_METRICS_PORT=${BRIDGE_METRICS_PORT:-5198}
BRIDGE_METRICS=

HIT_TARGETS=${HIT_TARGETS:-knot dnsmasq dnsmasq-c2k unbound dnsdist dnsbridge null}
MISS_TARGETS=${MISS_TARGETS:-knot dnsmasq dnsmasq-c2k unbound dnsdist dnsbridge}
MEM_TARGETS=${MEM_TARGETS:-knot dnsmasq dnsmasq-c2k unbound dnsdist dnsbridge null}
FILL_ORDER=${FILL_ORDER:-dnsmasq dnsmasq-c2k unbound dnsdist dnsbridge knot null}   # knot after the forwarders

# ---------------------------------------------------------------- probes (as cost.sh)
proc_ticks() {  # utime+stime of the whole process (all threads), clock ticks
    awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"
}
proc_ns() {     # on-CPU time summed over the threads' schedstat, ns (cross-check)
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'
}
cpu_busy() {    # cpuN busy ticks (user+nice+system+irq+softirq, steal excluded)
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}
ksoftirqd_pid() {
    ps -eo pid=,comm= | awk -v c="ksoftirqd/$1" '$2 == c { print $1; exit }'
}
mem_of() {      # "VmRSS VmHWM Threads" (kB kB n)
    awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } /^Threads:/ { t = $2 } END { print r, h, t }' "/proc/$1/status"
}
reverse() { local w out=""; for w in "$@"; do out="$w $out"; done; echo "$out"; }
order_for_run() {  # odd runs in list order, even runs reversed
    # shellcheck disable=SC2086
    if [ $(($1 % 2)) = 1 ]; then echo "$2"; else reverse $2; fi
}

# ---------------------------------------------------------------- cost
# run_cost name test run qps file extra-dnsperf-args...
run_cost() {
    local name=$1 test=$2 run=$3 qps=$4 file=$5; shift 5
    local port pid kpid spid raw s0 s1 n0 n1 k0 k1 kn0 kn1 c0 c1 q0 q1 la
    port=$(port_of "$name"); pid=$(pid_of "$name"); kpid=$(pid_of knot); spid=$(ksoftirqd_pid "$SRV_CPU")
    raw=$COST_OUT/raw/$name-$test-$qps-$run.txt
    la=$(cut -d' ' -f1 /proc/loadavg)
    s0=$(proc_ticks "$pid"); n0=$(proc_ns "$pid"); k0=$(proc_ticks "$kpid"); kn0=$(proc_ns "$kpid"); c0=$(cpu_busy "$SRV_CPU"); q0=$(proc_ns "$spid")
    taskset -c "$GEN_CPU" timeout $((LIMIT + DNSPERF_TIMEOUT + 30)) \
        dnsperf -s "$ADDR" -p "$port" -d "$file" -l "$LIMIT" -c "$CLIENTS" -q "$OUTSTANDING" \
        -T 1 -t "$DNSPERF_TIMEOUT" -Q "$qps" "$@" >"$raw" 2>&1 || log "dnsperf exit $? for $name $test $run"
    s1=$(proc_ticks "$pid"); n1=$(proc_ns "$pid"); k1=$(proc_ticks "$kpid"); kn1=$(proc_ns "$kpid"); c1=$(cpu_busy "$SRV_CPU"); q1=$(proc_ns "$spid")
    [ "$name" = knot ] && { k1=$k0; kn1=$kn0; }
    awk -v name="$name" -v test="$test" -v run="$run" -v oq="$qps" -v hz="$HZ" -v la="$la" \
        -v ds=$((s1 - s0)) -v dn=$((n1 - n0)) -v dk=$((k1 - k0)) -v dkn=$((kn1 - kn0)) -v dc=$((c1 - c0)) -v dq=$((q1 - q0)) '
        /Queries sent:/      { sent = $3 }
        /Queries completed:/ { done = $3 }
        /Queries lost:/      { lost = $3 }
        /Run time \(s\):/    { rt = $4 }
        /Queries per second:/ { qps = $4 }
        /Average Latency/    { avg = $4; max = $NF; sub(/\)/, "", max) }
        /Testing complete/   { end = $0; sub(/.*\(/, "", end); sub(/\).*/, "", end); gsub(/ /, "_", end) }
        END { q = done > 0 ? done : 1
              printf "%s\t%s\t%s\t%s\t%.0f\t%s\t%s\t%s\t%.3f\t%.3f\t%.2f\t%s\t%d\t%.2f\t%.2f\t%d\t%.2f\t%.2f\t%.0f\t%.3f\t%.0f\t%s\n",
                name, test, run, oq, qps, sent, done, lost, avg * 1000, max * 1000, rt, end,
                ds, ds * 1e6 / hz / q, dn / 1000 / q, dk, dk * 1e6 / hz / q, dkn / 1000 / q,
                (rt > 0 ? 100 * ds / hz / rt : 0), dq / 1000 / q, (rt > 0 ? 100 * dc / hz / rt : 0), la }
    ' "$raw" >>"$COST_OUT/cost.tsv"
    tail -1 "$COST_OUT/cost.tsv" | awk -F'\t' '{ printf "  %-12s %-4s run%s  offered %6s  got %6s qps  lost %s  srv %6.2f us/q (sched %6.2f, %s%% cpu)  knot %5.2f us/q  ksoftirqd %.3f us/q  avg %s ms max %s ms  load %s\n", $1, $2, $3, $4, $5, $8, $14, $15, $19, $17, $20, $9, $10, $22 }' >&2
}

warm() {  # one full-speed pass over the hit file
    taskset -c "$GEN_CPU" timeout 30 dnsperf -s "$ADDR" -p "$(port_of "$1")" -d "$2" -n 1 -l 20 \
        -c "$CLIENTS" -q "$OUTSTANDING" >/dev/null 2>&1 || true
}

names() {  # count prefix -> unique names <prefix>-N.bench.test A
    awk -v n="$1" -v p="$2" 'BEGIN { for (i = 1; i <= n; i++) printf "%s-%d.bench.test A\n", p, i }'
}

MEM_HDR='phase\ttarget\tpid\tvmrss_kb\tvmhwm_kb\tthreads\tcache\n'
record_mem() {  # file phase name [cache-info]
    local pid m
    pid=$(pid_of "$3"); m=$(mem_of "$pid")
    printf '%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$pid" "$(tr ' ' '\t' <<<"$m")" "${4:-}" >>"$1"
    log "  mem $2 $3: VmRSS/VmHWM/threads $m ${4:-}"
}

start_all() { peers start; bridge_start; }

cost() {
    mkdir -p "$COST_OUT/raw" "$WORK/q"
    rm -f "$COST_OUT"/raw/*-hit-*.txt "$COST_OUT"/raw/*-miss-*.txt
    printf 'target\ttest\trun\toffered_qps\tqps\tsent\tcompleted\tlost\tavg_ms\tmax_ms\truntime_s\tend\tsrv_ticks\tsrv_us_per_q\tsrv_sched_us_per_q\tknot_ticks\tknot_us_per_q\tknot_sched_us_per_q\tsrv_cpu_pct\tksoftirqd_us_per_q\tcpu_srv_busy_pct_procstat\tloadavg1\n' >"$COST_OUT/cost.tsv"
    printf "$MEM_HDR" >"$COST_OUT/mem-cost.tsv"
    start_all
    local t r idx tag hit=$WORK/q/cost-hit.txt miss=$WORK/q/cost-side-miss.txt spec qps
    for t in $MEM_TARGETS; do record_mem "$COST_OUT/mem-cost.tsv" "start, peers.sh config (cost phase)" "$t"; done
    awk -v n="$HIT_NAMES" 'BEGIN { for (i = 1; i <= n; i++) printf "h%d.bench.test A\n", i }' >"$hit"
    tag=$(date +%s)
    log "(a) hit: $HIT_NAMES names looped at $HIT_QPS qps for ${LIMIT}s, after a warm-up pass"
    for r in $(seq 1 "$RUNS"); do for t in $(order_for_run "$r" "$HIT_TARGETS"); do
        warm "$t" "$hit"
        run_cost "$t" hit "$r" "$HIT_QPS" "$hit"
    done; done
    log "(b) miss: unique names at $MISS_QPS qps, -n 1, $MISS_NAMES names per run, ${LIMIT}s"
    for r in $(seq 1 "$RUNS"); do
        idx=0
        for t in $(order_for_run "$r" "$MISS_TARGETS"); do
            idx=$((idx + 1)); names "$MISS_NAMES" "d${tag}t${idx}r$r" >"$miss"
            run_cost "$t" miss "$r" "$MISS_QPS" "$miss" -n 1
        done
        for spec in $EXTRA_MISS; do
            t=${spec%%:*}; qps=${spec##*:}; idx=$((idx + 1)); names "$MISS_NAMES" "d${tag}t${idx}r$r" >"$miss"
            run_cost "$t" miss "$r" "$qps" "$miss" -n 1
        done
    done
    rm -f "$miss"
    stop_everything
}

# ---------------------------------------------------------------- memory (as cost.sh, plus dnsbridge)
control_configs() {
    local d=$WORK/cost-side
    mkdir -p "$d"
    awk -v sock="$d/unbound.ctl" '
        /^server:/ { print; print "    extended-statistics: yes"; next }
        /^remote-control:/ { print; print "    control-enable: yes"; print "    control-interface: " sock; print "    control-use-cert: no"; skip = 1; next }
        skip && /^[[:space:]]/ { next }
        { skip = 0; print }' "$PEERS/unbound/unbound.conf" >"$d/unbound.conf"
    { cat "$PEERS/dnsdist/dnsdist.conf"
      echo "-- added by cost-side-by-side.sh: local console, to read the packet cache's entry count"
      echo "controlSocket(\"$DNSDIST_CONSOLE\")"
      echo "setKey(\"$(head -c 32 /dev/urandom | base64)\")"
    } >"$d/dnsdist.conf"
    chmod 600 "$d/dnsdist.conf"
    unbound-checkconf "$d/unbound.conf" >/dev/null || die "control unbound config invalid"
    dnsdist --check-config -C "$d/dnsdist.conf" >/dev/null || die "control dnsdist config invalid"
}

restart_with_control() {  # name: stop peers.sh's instance by its PID, start the control variant
    local name=$1 pid port i cfg=$WORK/cost-side/$1.conf
    pid=$(pid_of "$name"); port=$(port_of "$name")
    kill -TERM "$pid"
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "$name (pid $pid) did not stop"
    case $name in
        unbound) taskset -c "$SRV_CPU" unbound -d -c "$cfg" >"$WORK/logs/$name.log" 2>&1 & ;;
        dnsdist) taskset -c "$SRV_CPU" dnsdist --supervised --disable-syslog -C "$cfg" >"$WORK/logs/$name.log" 2>&1 & ;;
    esac
    echo $! >"$WORK/pids/$name.pid"
    for i in $(seq 1 30); do
        dig1 "$port" h1.bench.test A | grep -q 'status: NOERROR' && { log "$name restarted with control channel, pid $(cat "$WORK/pids/$name.pid")"; return; }
        kill -0 "$(cat "$WORK/pids/$name.pid")" 2>/dev/null || die "$name exited, see $WORK/logs/$name.log"
        sleep 0.5
    done
    die "$name not answering after restart"
}

cache_info() {  # name -> one-line cache description
    local port; port=$(port_of "$1")
    case $1 in
        dnsmasq|dnsmasq-c2k)
            local cs ins ev
            cs=$(dig1 "$port" +short -c CH -t TXT cachesize.bind | tr -d '"')
            ins=$(dig1 "$port" +short -c CH -t TXT insertions.bind | tr -d '"')
            ev=$(dig1 "$port" +short -c CH -t TXT evictions.bind | tr -d '"')
            echo "cache-size $cs; insertions $ins, evictions of live entries $ev => $((ins - ev)) entries" ;;
        unbound)
            timeout 10 unbound-control -c "$WORK/cost-side/unbound.conf" stats_noreset 2>&1 |
                awk -F= '/^(msg\.cache\.count|rrset\.cache\.count|mem\.cache\.message|mem\.cache\.rrset)=/ { printf "%s%s %s", (n++ ? ", " : ""), $1, $2 }' ;;
        dnsdist)
            timeout 10 dnsdist -c -C "$WORK/cost-side/dnsdist.conf" -e 'getPool(""):getCache():printStats()' 2>&1 |
                awk -F': *' '/^Entries:/ { e = $2 } /^Insert Collisions:/ { c = $2 } END { printf "packet cache entries %s, insert collisions %s", e, c }' ;;
        dnsbridge)
            # its Prometheus endpoint (memory phase only, when the binary has --metrics)
            if [ -n "$BRIDGE_METRICS" ]; then
                timeout 5 curl -s --noproxy '*' "http://$BRIDGE_METRICS/metrics" 2>/dev/null |
                    awk '/^dnsbridge_cache_(entries|bytes) / { printf "%s%s %s", (n++ ? ", " : ""), $1, $2 }
                         END { if (!n) printf "metrics unreachable" }'
            else
                echo "no cache counter (this build serves no metrics); bound: default 64 MiB of weight"
            fi ;;
        *) echo "no cache" ;;
    esac
}

memory() {
    mkdir -p "$COST_OUT/raw" "$WORK/q"
    printf "$MEM_HDR" >"$COST_OUT/mem.tsv"
    # like the peers' control channels: dnsbridge's own metrics endpoint, to count its cache
    if "$BRIDGE_BIN" serve --help 2>/dev/null | grep -q -- '--metrics'; then
        BRIDGE_METRICS=$ADDR:$BRIDGE_METRICS_PORT
        BRIDGE_ARGS="$BRIDGE_ARGS --metrics $BRIDGE_METRICS"
    fi
    start_all
    control_configs
    restart_with_control unbound
    restart_with_control dnsdist
    local t tag idx=0 fill=$WORK/q/cost-side-fill.txt raw
    for t in $MEM_TARGETS; do record_mem "$COST_OUT/mem.tsv" start "$t" "$(cache_info "$t")"; done
    tag=$(date +%s)
    log "fill: $FILL_NAMES distinct names, once each, at $FILL_QPS qps (-l $FILL_LIMIT)"
    for t in $FILL_ORDER; do
        idx=$((idx + 1)); names "$FILL_NAMES" "g${tag}t$idx" >"$fill"
        raw=$COST_OUT/raw/$t-fill.txt
        taskset -c "$GEN_CPU" timeout $((FILL_LIMIT + DNSPERF_TIMEOUT + 30)) \
            dnsperf -s "$ADDR" -p "$(port_of "$t")" -d "$fill" -n 1 -l "$FILL_LIMIT" -c "$CLIENTS" -q "$OUTSTANDING" \
            -T 1 -t "$DNSPERF_TIMEOUT" -Q "$FILL_QPS" >"$raw" 2>&1 || log "dnsperf exit $? for $t fill"
        log "  $t fill: $(awk '/Queries completed:|Queries lost:/ { printf "%s %s %s  ", $2, $3, $4 } /Queries per second:/ { printf "%.0f qps  ", $4 } /Testing complete/ { sub(/.*complete /, ""); printf "%s", $0 }' "$raw")"
        record_mem "$COST_OUT/mem.tsv" "after $FILL_NAMES names" "$t" "$(cache_info "$t")"
    done
    rm -f "$fill"
    stop_everything
}

# ---------------------------------------------------------------- table
table() {
    [ -s "$COST_OUT/cost.tsv" ] || [ -s "$COST_OUT/mem.tsv" ] || die "no $COST_OUT/cost.tsv nor mem.tsv"
    [ -s "$COST_OUT/cost.tsv" ] && { cost_tables; echo; }
    mem_table
}

cost_tables() {
    awk -F'\t' '
        NR == 1 { next }
        { k = $2 SUBSEP $1 SUBSEP $4; if (!(k in cnt)) order[++n] = k
          j = (k in cnt) ? " / " : ""; cnt[k]++
          q[k] = q[k] j $5; lo[k] = lo[k] j $8; su[k] = su[k] j sprintf("%.1f", $14); ss[k] = ss[k] j sprintf("%.1f", $15)
          ku[k] = ku[k] j ($1 == "knot" ? "-" : sprintf("%.1f", $17)); pc[k] = pc[k] j $19
          av[k] = av[k] j $9; mx[k] = mx[k] j $10; la[k] = la[k] j $22; if ($20 > mq) mq = $20 }
        END {
          print "| test | server | offered qps | achieved qps | lost | server CPU us/query (utime+stime) | (schedstat) | server CPU % | knot CPU us/query (upstream, apart) | avg latency ms | max latency ms | load avg |"
          print "|---|---|---|---|---|---|---|---|---|---|---|---|"
          split("hit miss", tests, " ")
          for (ti = 1; ti <= 2; ti++) for (i = 1; i <= n; i++) { k = order[i]; split(k, p, SUBSEP); if (p[1] != tests[ti]) continue
            b = (p[2] == "dnsbridge") ? "**" : ""
            printf "| %s | %s%s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p[1], b, p[2], b, p[3], q[k], lo[k], su[k], ss[k], pc[k], ku[k], av[k], mx[k], la[k] }
          printf "\nksoftirqd on the servers'"'"' CPU: at most %.3f us/query in any run.\n", mq }
    ' "$COST_OUT/cost.tsv" | tee "$COST_OUT/table-cost.md"
    echo
    # dnsbridge against the peers, per query (same run): differences and ratios of CPU us/query
    awk -F'\t' -v hq="$HIT_QPS" -v mq="$MISS_QPS" '
        NR == 1 { next }
        { if (!(($1, $2, $4) in n)) n[$1, $2, $4] = 0; n[$1, $2, $4]++; s[$1, $2, $4] += $14; kn[$1, $2, $4] += $17 }
        function m(t, test, q) { return ((t, test, q) in n) && n[t, test, q] ? s[t, test, q] / n[t, test, q] : -1 }
        function mk(t, test, q) { return ((t, test, q) in n) && n[t, test, q] ? kn[t, test, q] / n[t, test, q] : -1 }
        function row(test, q, peer, note,   b, p) {
          b = m("dnsbridge", test, q); p = m(peer, test, q); if (b < 0 || p < 0) return
          printf "| %s at %s qps | %s | %.1f | %.1f | %+.1f | %.2f | %s |\n", test, q, peer, b, p, b - p, (p > 0 ? b / p : 0), note }
        END {
          print "| test | peer | dnsbridge us/query (mean of runs) | peer us/query | dnsbridge - peer | dnsbridge / peer | note |"
          print "|---|---|---|---|---|---|---|"
          row("hit", hq, "null", "above the null responder: dnsbridge'"'"'s own work on a hit")
          row("hit", hq, "dnsdist", "")
          row("hit", hq, "unbound", "")
          row("miss", mq, "dnsdist", "forwarder only; knot apart (below)")
          row("miss", mq, "unbound", "")
          row("miss", mq, "dnsmasq-c2k", "")
          b = mk("dnsbridge", "miss", mq); p = mk("dnsdist", "miss", mq)
          if (b >= 0 && p >= 0) printf "| miss at %s qps, knot upstream | knot behind dnsdist | %.1f | %.1f | %+.1f | %.2f | the upstream'"'"'s cost per forwarded query (same knot) |\n", mq, b, p, b - p, (p > 0 ? b / p : 0)
        }' "$COST_OUT/cost.tsv" | tee "$COST_OUT/table-compare.md"
}

mem_table() {
    [ -s "$COST_OUT/mem.tsv" ] || return 0
    awk -F'\t' '
        FNR == 1 { next }
        { t = $2; if (!(t in seen)) { seen[t] = 1; order[++n] = t } }
        $1 ~ /cost phase/ { r0[t] = $4 }
        $1 == "start"     { r1[t] = $4; h1[t] = $5; th[t] = $6; c1[t] = $7 }
        $1 ~ /^after/     { r2[t] = $4; h2[t] = $5; c2[t] = $7; ph = $1 }
        function mib(x) { return x == "" ? "-" : sprintf("%.1f", x / 1024) }
        END {
          print "| server | threads | VmRSS MiB at start, peers.sh config | VmRSS / VmHWM MiB at start (memory phase) | VmRSS / VmHWM MiB " ph " | RSS growth MiB | cache after |"
          print "|---|---|---|---|---|---|---|"
          for (i = 1; i <= n; i++) { t = order[i]; b = (t == "dnsbridge") ? "**" : ""
            printf "| %s%s%s | %s | %s | %s / %s | %s / %s | %s | %s |\n", b, t, b, th[t], mib(r0[t]), mib(r1[t]), mib(h1[t]), mib(r2[t]), mib(h2[t]),
                   (r2[t] == "" ? "-" : sprintf("%+.1f", (r2[t] - r1[t]) / 1024)), c2[t] } }
    ' "$COST_OUT/mem.tsv" "$([ -s "$COST_OUT/mem-cost.tsv" ] && echo "$COST_OUT/mem-cost.tsv" || echo /dev/null)" | tee "$COST_OUT/table-mem.md"
}

# ---------------------------------------------------------------- main
mkdir -p "$WORK"/{pids,pids-side,logs} "$COST_OUT"
pin_self() { taskset -pc "$GEN_CPU" $$ >/dev/null; }
action=${1:-all}
case $action in
    cost|memory)
        bridge_build; bridge_configure; pin_self
        stop_everything; trap stop_everything EXIT; trap 'exit 130' INT TERM
        "$action"; trap - EXIT ;;
    table) table ;;
    stop) stop_everything ;;
    all)
        peers install; peers configure; peers build
        bridge_build; bridge_configure; pin_self
        stop_everything   # anything left running by an earlier `start` (by recorded PID)
        trap stop_everything EXIT; trap 'exit 130' INT TERM
        cost; memory
        trap - EXIT
        table ;;
    *) die "unknown action $action" ;;
esac
