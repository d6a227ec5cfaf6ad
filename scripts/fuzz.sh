#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time and fails on the first crash.
#
#   scripts/fuzz.sh [SECONDS]      # default 30 s per target
#
# Environment:
#   FUZZ_TARGETS    space-separated targets (default: all three)
#   FUZZ_SANITIZER  address (default) or none; "address" falls back to none
#                   when the sanitizer runtime cannot be built here
#
# cargo-fuzz needs nightly-only flags (-Z); on the stable toolchain they are
# unlocked with RUSTC_BOOTSTRAP=1, which is all this script relies on. Seeds
# live in fuzz/seeds/TARGET (kept in git); what the fuzzer finds goes to
# fuzz/corpus/TARGET and crashes to fuzz/artifacts/TARGET (both ignored).
set -euo pipefail

SECS="${1:-30}"
case "$SECS" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
TARGETS="${FUZZ_TARGETS:-query_parse response_parse config_parse}"
SANITIZER="${FUZZ_SANITIZER:-address}"

cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

build() {
  # Bounded: a cold build of the three targets takes a few minutes on 2 cores.
  timeout 1800 cargo fuzz build -s "$1" >&2
}
if ! build "$SANITIZER"; then
  if [ "$SANITIZER" != none ]; then
    echo "== building with -s $SANITIZER failed; retrying without a sanitizer" >&2
    SANITIZER=none
    build none
  else
    exit 1
  fi
fi

status=0
summary=""
for t in $TARGETS; do
  mkdir -p "fuzz/corpus/$t"
  log="fuzz/artifacts/$t.log"
  mkdir -p fuzz/artifacts
  echo "== $t: ${SECS}s (sanitizer: $SANITIZER)" >&2
  set +e
  # -max_total_time bounds the run; the outer timeout is a backstop.
  seeds=("fuzz/seeds/$t")
  # The example configs are seeds for the config parser too.
  if [ "$t" = config_parse ] && [ -d examples ]; then seeds+=(examples); fi
  timeout $((SECS + 300)) cargo fuzz run -s "$SANITIZER" "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
    >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
  if [ "$rc" -ne 0 ]; then
    status=1
    echo "== $t FAILED (exit $rc); log: $log" >&2
    grep -E 'panicked|ERROR: AddressSanitizer|SUMMARY|Test unit written|deadly signal' "$log" >&2 || tail -30 "$log" >&2
    summary+="$t: FAILED after ${runs:-?} runs (log $log)"$'\n'
  else
    summary+="$t: ok, ${runs:-?} runs in ${secs:-$SECS}s, coverage ${cov:-?} edges"$'\n'
  fi
done

printf '%s' "$summary"
exit "$status"
