#!/usr/bin/env bash
# The long form of the chaos test: builds a release binary, then runs
# `localcluster chaos` for DURATION against an embedded cluster, against
# separate member processes on loopback, and (as root) against member
# processes on network-namespace hosts, where network faults apply too; prints
# the figures of every run (operations checked, faults injected, violations).
# Exits 1 if any run found a violation.
#
#   scripts/chaos.sh                 # 5 minutes each
#   scripts/chaos.sh 20m             # 20 minutes each
#   CHAOS_ROUND=30s CHAOS_SEED=7 CHAOS_MEMBERS=5 scripts/chaos.sh 10m
#   CHAOS_BIN=target/debug/localcluster scripts/chaos.sh 1m   # no release build
set -euo pipefail

duration="${1:-${CHAOS_DURATION:-5m}}"
round="${CHAOS_ROUND:-15s}"
seed="${CHAOS_SEED:-1}"
members="${CHAOS_MEMBERS:-3}"

cd "$(dirname "$0")/.."
if [ -n "${CHAOS_BIN:-}" ]; then
    bin="$(realpath "$CHAOS_BIN")"
else
    cargo build --release --bin localcluster
    bin="$PWD/target/release/localcluster"
fi
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

status=0
run() {
    local name="$1"
    shift
    echo "== $name: $duration in rounds of $round, $members members, seed $seed"
    if ! "$bin" chaos --duration "$duration" --round "$round" --members "$members" \
        --seed "$seed" "$@" | tee "$logs/$name.log"; then
        status=1
    fi
}
run embedded
run processes --processes
runs="embedded processes"
if [ "$(id -u)" -eq 0 ]; then
    run netns --processes --netns
    runs="$runs netns"
else
    echo "== netns: SKIPPED (network namespaces need root; run as root for network faults on processes)" >&2
fi

echo
echo "== figures"
for name in $runs; do
    echo "$name: $(grep '^chaos: ' "$logs/$name.log" | tail -n 1)"
done
exit "$status"
