#!/usr/bin/env bash
# What one put costs a 3-member cluster under a given load generator, counted
# per put over a window of a running load: the members' context switches,
# write system calls, Raft log fsyncs and CPU time.
#
# Starts a fresh 3-member cluster of SERVER (a localcluster binary, or etcd) on
# loopback, starts the load, waits WARMUP seconds, reads the members' counters
# (/proc/PID/task/*/status, /proc/PID/io, /proc/PID/stat, and the Put and
# etcd_disk_wal_fsync_duration_seconds counters of their /metrics), waits
# WINDOW seconds, reads them again, stops everything and prints one line:
#
#   check-perf puts/s 3921 ctxsw/put 3.70 syscw/put 6.19 fsync/put 0.533 cpu_ms/put 0.345 load_cpu_ms/put 0.141
#
# (load_cpu_ms/put is the load generator's own CPU: etcdctl's, or bench's.)
#
# Loads:
#   scripts/load-shape.sh check-perf          etcdctl check perf --load=$CHECK_LOAD (l)
#   scripts/load-shape.sh bench [flags...]    localcluster bench put [flags...]
# e.g. the same sizes as check perf from our own load generator:
#   scripts/load-shape.sh bench --clients 500 --conns 500 --key-size 256 --val-size 1024
#
# Knobs (environment): SERVER (target/release/localcluster), BENCH (the
#   localcluster binary that generates `bench` loads and checks the cluster is
#   up), CHECK_LOAD (l), WARMUP (15), WINDOW (10; check perf runs 60 s, so
#   WARMUP + WINDOW must stay under that), BASE_PORT (26000).
# Context switches are those of the members' live threads (a thread that ends
# in the window takes its count with it); the other figures are per process.
# Needs: etcdctl (for check-perf), curl, bc.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVER=${SERVER:-"$ROOT/target/release/localcluster"}
BENCH=${BENCH:-"$ROOT/target/release/localcluster"}
CHECK_LOAD=${CHECK_LOAD:-l}
WARMUP=${WARMUP:-15}
WINDOW=${WINDOW:-10}
BASE_PORT=${BASE_PORT:-26000}
LOAD=${1:-}
case "$LOAD" in
check-perf | bench) shift ;;
*)
    echo "usage: scripts/load-shape.sh check-perf | bench [bench put flags...]" >&2
    exit 2
    ;;
esac

if [ "$LOAD" = check-perf ] && [ $((WARMUP + WINDOW)) -ge 55 ]; then
    echo "WARMUP + WINDOW must stay under 55 s: etcdctl check perf runs 60 s" >&2
    exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/load-shape.XXXXXX")
PIDS=()
# shellcheck source=lib/loopback-cluster.sh
. "$ROOT/scripts/lib/loopback-cluster.sh"
trap cluster_stop EXIT
cluster_start "$SERVER" load-shape
endpoints=$ENDPOINTS
MEMBERS=("${PIDS[@]}")

# $! is the load's own process; cluster_stop ends it with the members.
if [ "$LOAD" = check-perf ]; then
    ETCDCTL_API=3 etcdctl --endpoints="$endpoints" check perf --load="$CHECK_LOAD" \
        >"$WORK/load.out" 2>&1 &
else
    "$BENCH" bench put --endpoints "$endpoints" --total 100000000 "$@" \
        >"$WORK/load.out" 2>&1 &
fi
LOAD_PID=$!
PIDS+=("$LOAD_PID")

# context switches, write syscalls, CPU ticks of the members; CPU ticks of the
# load generator
counters() {
    local cs=0 w=0 cpu=0 pid t
    for pid in "${MEMBERS[@]}"; do
        for t in /proc/"$pid"/task/*; do
            cs=$((cs + $(awk '/ctxt_switches/ {s += $2} END {print s + 0}' "$t/status")))
        done
        w=$((w + $(awk '/^syscw/ {print $2}' "/proc/$pid/io")))
        cpu=$((cpu + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$cs $w $cpu $(awk '{print $14 + $15}' "/proc/$LOAD_PID/stat")"
}
# sum of the metric lines matching $2 over the members, into variable $1
metric() {
    local total=0 i v page
    for i in 1 2 3; do
        if ! page=$(curl -sf --max-time 5 "http://127.0.0.1:$((BASE_PORT + i))/metrics"); then
            echo "cannot read the metrics of member $i" >&2
            exit 1
        fi
        v=$(awk -v pat="$2" '$0 ~ pat {s += $NF} END {printf "%d", s}' <<<"$page")
        total=$((total + v))
    done
    printf -v "$1" '%s' "$total"
}
PUTS='^grpc_server_handled_total.*grpc_code="OK".*method="Put"'
FSYNCS='^etcd_disk_wal_fsync_duration_seconds_count'

sleep "$WARMUP"
# The scrapes stay out of the CPU window. A member's first /metrics computes
# the size its database uses, which walks the whole file: one scrape first,
# so that the counted ones are cheap.
# The put counts are read next to the CPU window's edges.
metric warm "$PUTS"
metric f0 "$FSYNCS"
metric p0 "$PUTS"
counters >"$WORK/c0"
sleep "$WINDOW"
counters >"$WORK/c1"
metric p1 "$PUTS"
metric f1 "$FSYNCS"
read -r cs0 w0 cpu0 load0 <"$WORK/c0"
read -r cs1 w1 cpu1 load1 <"$WORK/c1"

n=$((p1 - p0))
if [ "$n" -le 0 ]; then
    echo "no put completed in the window; the load said:" >&2
    cat "$WORK/load.out" >&2
    exit 1
fi
hz=$(getconf CLK_TCK)
per() { echo "scale=$2; $1 / $n" | bc; }
echo "$LOAD puts/s $((n / WINDOW))" \
    "ctxsw/put $(per "$((cs1 - cs0))" 2)" \
    "syscw/put $(per "$((w1 - w0))" 2)" \
    "fsync/put $(per "$((f1 - f0))" 3)" \
    "cpu_ms/put $(per "$(((cpu1 - cpu0) * 1000))/$hz" 3)" \
    "load_cpu_ms/put $(per "$(((load1 - load0) * 1000))/$hz" 3)"
