#!/usr/bin/env bash
# Run the whole dnsbridge test suite on a fresh Debian 12 machine:
#   1. install the Debian packages the tests use (scripts/install-deps.sh),
#   2. build every target with the committed Cargo.lock,
#   3. run every test (unit, integration, end to end) and print a summary.
# Exits non-zero on any failure. Run it as root: the end-to-end tests bind port 53
# on a spare loopback address and use a private mount namespace (unshare -m).
# All test traffic stays on loopback.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
bash scripts/install-deps.sh

step "checking the Rust toolchain"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install the stable Rust toolchain (1.95 or newer) with rustup first" >&2
  exit 2
fi
cargo --version
rustc --version

step "cargo build --locked --all-targets"
cargo build --locked --all-targets

step "cargo test --locked"
log=$(mktemp /tmp/dnsbridge-test.XXXXXX.log)
status=0
# Every test bounds its own waits; this is only a last-resort guard.
timeout --signal=TERM --kill-after=30 1320 \
  cargo test --locked --no-fail-fast 2>&1 | tee "$log" || status=$?

step "summary"
passed=0 failed=0 ignored=0 suites=0
while read -r p f i; do
  passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i)) suites=$((suites + 1))
done < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$log")
echo "test suites: $suites, passed: $passed, failed: $failed, ignored: $ignored"
if grep -q '^failures:' "$log"; then
  echo "failed tests:"
  sed -n '/^failures:$/,/^test result:/p' "$log" | grep -E '^    [A-Za-z0-9_:]+$' | sort -u || true
fi
rm -f "$log"
if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$suites" -eq 0 ]; then
  echo "RESULT: FAIL (cargo test exit status $status)"
  exit 1
fi
echo "RESULT: PASS"
