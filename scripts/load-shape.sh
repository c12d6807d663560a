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
#   check-perf puts/s 3921 ctxsw/put 3.70 syscw/put 6.19 fsync/put 0.533 cpu_ms/put 0.345
#
# Loads:
#   scripts/load-shape.sh check-perf          etcdctl check perf --load=$CHECK_LOAD (l)
#   scripts/load-shape.sh bench [flags...]    localcluster bench put [flags...]
# e.g. the same sizes as check perf from our own load generator:
#   scripts/load-shape.sh bench --clients 500 --conns 500 --key-size 256 --val-size 1024
#
# Knobs (environment): SERVER (target/release/localcluster), BENCH (the
#   localcluster binary that generates `bench` loads), CHECK_LOAD (l),
#   WARMUP (15), WINDOW (10), BASE_PORT (26000).
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

WORK=$(mktemp -d "${TMPDIR:-/tmp}/load-shape.XXXXXX")
PIDS=()
LOAD_PID=""
stop() {
    local pid
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}" $LOAD_PID; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    done
    rm -rf "$WORK"
}
trap stop EXIT

SUB=(member)
[ "$(basename "$SERVER")" = etcd ] && SUB=()
cluster=""
endpoints=""
for i in 1 2 3; do
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$((BASE_PORT + 10 + i))"
    endpoints+="${endpoints:+,}127.0.0.1:$((BASE_PORT + i))"
done
for i in 1 2 3; do
    client=http://127.0.0.1:$((BASE_PORT + i))
    peer=http://127.0.0.1:$((BASE_PORT + 10 + i))
    "$SERVER" "${SUB[@]}" --name "m$i" --data-dir "$WORK/m$i" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster-token load-shape --initial-cluster "$cluster" \
        >"$WORK/m$i.log" 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 100); do
    "$BENCH" bench put --endpoints "$endpoints" --total 1 --clients 1 >/dev/null 2>&1 && break
    sleep 0.1
done

# The load runs in its own process (exec), so that killing LOAD_PID stops it.
if [ "$LOAD" = check-perf ]; then
    ETCDCTL_API=3 exec etcdctl --endpoints="$endpoints" check perf --load="$CHECK_LOAD" \
        >"$WORK/load.out" 2>&1 &
else
    exec "$BENCH" bench put --endpoints "$endpoints" --total 100000000 "$@" \
        >"$WORK/load.out" 2>&1 &
fi
LOAD_PID=$!

# context switches, write syscalls, CPU ticks of the members
counters() {
    local cs=0 w=0 cpu=0 pid t
    for pid in "${PIDS[@]}"; do
        for t in /proc/"$pid"/task/*; do
            cs=$((cs + $(awk '/ctxt_switches/ {s += $2} END {print s + 0}' "$t/status")))
        done
        w=$((w + $(awk '/^syscw/ {print $2}' "/proc/$pid/io")))
        cpu=$((cpu + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$cs $w $cpu"
}
# sum of one metric over the members
metric() {
    local total=0 i v
    for i in 1 2 3; do
        v=$(curl -s "http://127.0.0.1:$((BASE_PORT + i))/metrics" |
            awk -v pat="$1" '$0 ~ pat {s += $NF} END {printf "%d", s}')
        total=$((total + v))
    done
    echo "$total"
}
PUTS='^grpc_server_handled_total.*method="Put"'
FSYNCS='^etcd_disk_wal_fsync_duration_seconds_count'

sleep "$WARMUP"
read -r cs0 w0 cpu0 < <(counters)
p0=$(metric "$PUTS")
f0=$(metric "$FSYNCS")
sleep "$WINDOW"
read -r cs1 w1 cpu1 < <(counters)
p1=$(metric "$PUTS")
f1=$(metric "$FSYNCS")

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
    "cpu_ms/put $(per "$(((cpu1 - cpu0) * 1000))/$hz" 3)"
