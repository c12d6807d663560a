#!/usr/bin/env bash
# What one put (or, with WORKLOAD=range, one linearizable read) costs a
# 3-member cluster: throughput, p50, and the members' CPU time and disk writes
# per request, with how busy the machine was.
#
# Starts a fresh 3-member cluster of SERVER (a localcluster binary, or etcd) on
# loopback, sends 1000 warm-up puts, then measures one `localcluster bench put`
# run while reading /proc (the members' utime+stime and write_bytes, the
# machine's busy and iowait ticks), stops the cluster and prints one line:
#
#   rps 6313 p50 14.73 busy% 83 iowait% 8 diskKiB/put 3.33 cpu_ms/put 0.20 maxRSS_MiB 41
#
# Run it for each server in turn, several times, and compare the lines side by
# side (interleaved runs: this machine's figures move by ±20% between runs):
#
#   for r in 1 2 3; do for s in /usr/bin/etcd target/release/localcluster; do
#       SERVER=$s scripts/put-cost.sh 100 20000; done; done
#
# Usage: scripts/put-cost.sh [CLIENTS (100)] [TOTAL (20000)] [extra bench flags]
# Knobs (environment): SERVER (target/release/localcluster), BENCH (the
#   localcluster binary that generates the load; target/release/localcluster),
#   MEMBER_FLAGS (extra member flags, e.g. --unsafe-no-fsync), BASE_PORT (25000),
#   WORKLOAD (put; or range, txn-put, mixed: what the measured run sends; the
#   warm-up is always 1000 puts).
# Needs: jq.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVER=${SERVER:-"$ROOT/target/release/localcluster"}
BENCH=${BENCH:-"$ROOT/target/release/localcluster"}
WORKLOAD=${WORKLOAD:-put}
CLIENTS=${1:-100}
TOTAL=${2:-20000}
shift $(($# < 2 ? $# : 2))
BASE_PORT=${BASE_PORT:-25000}
read -r -a MEMBER_FLAGS <<<"${MEMBER_FLAGS:-}"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/put-cost.XXXXXX")
PIDS=()
# shellcheck source=lib/loopback-cluster.sh
. "$ROOT/scripts/lib/loopback-cluster.sh"
trap cluster_stop EXIT
cluster_start "$SERVER" put-cost "${MEMBER_FLAGS[@]}"
endpoints=$ENDPOINTS
"$BENCH" bench put --endpoints "$endpoints" --total 1000 --clients "$CLIENTS" --conns 3 "$@" >/dev/null

# busy, idle and iowait ticks of the whole machine
ticks() { head -1 /proc/stat | awk '{print $2+$3+$4+$7+$8, $5, $6}'; }
members_sum() { # field: write_bytes from io, or cpu ticks from stat
    local total=0 pid v
    for pid in "${PIDS[@]}"; do
        if [ "$1" = io ]; then
            v=$(awk '/^write_bytes/{print $2}' "/proc/$pid/io")
        else
            v=$(awk '{print $14+$15}' "/proc/$pid/stat")
        fi
        total=$((total + v))
    done
    echo "$total"
}

read -r b0 i0 w0 < <(ticks)
io0=$(members_sum io)
cpu0=$(members_sum cpu)
out=$("$BENCH" bench "$WORKLOAD" --endpoints "$endpoints" --total "$TOTAL" --clients "$CLIENTS" --conns 3 -w json "$@")
read -r b1 i1 w1 < <(ticks)
io1=$(members_sum io)
cpu1=$(members_sum cpu)
rss=$(for pid in "${PIDS[@]}"; do awk '/^VmRSS/{print $2}' "/proc/$pid/status"; done | sort -n | tail -1)
hz=$(getconf CLK_TCK)

echo "$out" | jq -r \
    --argjson b $((b1 - b0)) --argjson i $((i1 - i0)) --argjson w $((w1 - w0)) \
    --argjson io $((io1 - io0)) --argjson cpu $((cpu1 - cpu0)) --argjson hz "$hz" \
    --argjson t "$TOTAL" --argjson rss "$rss" --arg wl "$WORKLOAD" \
    '"rps \(.rps | floor) p50 \(.latency_ms.p50 * 100 | round / 100)"
     + " busy% \($b * 100 / ($b + $i + $w) | floor) iowait% \($w * 100 / ($b + $i + $w) | floor)"
     + " diskKiB/\($wl) \($io / 1024 / $t * 100 | round / 100)"
     + " cpu_ms/\($wl) \($cpu * 1000 / $hz / $t * 100 | round / 100)"
     + " maxRSS_MiB \($rss / 1024 | floor)"'
