#!/usr/bin/env bash
# Fleet-sized run of `dnsbridge validate`: generates N instance config.yaml
# files of R routes each (default 1,000 x 50) in a temporary directory and
# validates them all in one command, then prints the elapsed time. The time is
# a figure to report, not a pass/fail threshold.
#
#   scripts/fleet-validate.sh [FILES] [ROUTES]
#
# Uses the release build of `dnsbridge validate`.
set -euo pipefail

files=${1:-1000}
routes=${2:-50}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cargo build --release --quiet --bin dnsbridge
bin=(target/release/dnsbridge validate)

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# One instance file per customer; routes cycle through the shapes the fleet
# uses: exact name, wildcard, wildcard to wildcard, AWS regional endpoint with
# a resolverIP, public IP destinations.
awk -v files="$files" -v routes="$routes" -v dir="$dir" 'BEGIN {
    for (f = 0; f < files; f++) {
        out = sprintf("%s/instance-%04d.yaml", dir, f)
        printf "apiVersion: v1\nkind: Instance\nmetadata:\n  name: customer-%d\n", f > out
        printf "spec:\n  domain: customer-%d.sourcegraph.example\n  infrastructure:\n", f > out
        printf "    gcp:\n      projectId: instance-%d\n", f > out
        printf "    executorPrivateDNS:\n      proxyTag: 202311201628\n      routes:\n" > out
        for (r = 0; r < routes; r++) {
            k = r % 5
            if (k == 0) {
                printf "        - source: registry-%d.c%d.internal\n          destination: lb-%d.c%d.example.com\n", r, f, r, f > out
            } else if (k == 1) {
                printf "        - source: \"*.pkg-%d.c%d.internal\"\n          destination: pkg-lb-%d.c%d.example.com\n", r, f, r, f > out
            } else if (k == 2) {
                printf "        - source: \"*.mirror-%d.c%d.internal\"\n          destination: \"*.mirror-%d.c%d.example.com\"\n", r, f, r, f > out
            } else if (k == 3) {
                printf "        - source: maven-%d.c%d.internal\n          destination: vpce-0a1b2c3d4e5f6%05d-abcd1234.vpce-svc-0123456789abcdef0.us-east-1.vpce.amazonaws.com\n          resolverIP: 172.31.0.2\n", r, f, r > out
            } else {
                printf "        - source: npm-%d.c%d.internal\n          destination: [203.0.113.%d, 2001:db8::%x]\n", r, f, r % 250 + 1, r + 1 > out
            }
        }
        close(out)
    }
}'

count=$(find "$dir" -name '*.yaml' | wc -l)
echo "generated $count files of $routes routes in $dir"
start=$(date +%s.%N)
set +e
"${bin[@]}" --color never "$dir" | tail -n 1
rc=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" -v n="$count" -v r="$routes" \
    'BEGIN { t = e - s; printf "validated %d files (%d routes) in %.3f s: %.1f us per file\n", n, n * r, t, t * 1e6 / n }'
exit "$rc"
