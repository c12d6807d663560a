#!/usr/bin/env bash
# Benchmarks localcluster against real etcd 3.4 on this machine, with the same
# load generator (`localcluster bench`) and the same cluster layout.
#
# For each workload (put or linearizable range, with a client count) and each
# server (localcluster, then etcd), it starts a fresh 3-member cluster on loopback (distinct ports, data dirs in a temporary
# directory, etcd's default heartbeat 100 ms / election 1000 ms passed to both),
# waits until every member reports /health, runs the benchmark against all three
# endpoints, reads the members' RSS, CPU time and bytes written to the disk
# (write_bytes, shown per request) from /proc, stops the cluster,
# and finally prints a markdown table of both servers' figures and their ratio.
# The workloads run ROUNDS times, the two servers interleaved, since this
# machine's figures move by ±20% from one run to the next: the ratio table
# gives the ratio of the median figures and the spread of the rounds' ratios.
#
# Then the same for watch fan-out (`localcluster bench watch`): WATCHERS
# watchers on one prefix receive every one of WATCH_TOTAL puts.
#
# Then, per server, the operational figures: time from launch to the first
# acknowledged write, RSS per member idle (and PSS, which counts the binary
# text the three members share once) and after 100k 256-byte keys, time
# from SIGKILL of the leader to the next acknowledged write (etcd's default
# timings), and whether `etcdctl check perf --load=$CHECK_LOAD` passes.
#
# Usage: scripts/bench-vs-etcd.sh
# Knobs (environment): WORKLOADS ("put:1:2000 put:100 put:1000 put:1000::100
#   range:100": workload:clients[:total[:connections]]; put:1000::100 is the
#   layout of etcd's own published benchmark, 1000 clients over 100
#   connections), TOTAL (60000, the default total), ROUNDS (3),
#   CONNS (3, the default connections), KEY_SIZE (8),
#   WATCHERS ("100 1000"), WATCH_TOTAL (2000), WATCH_STREAMS (10),
#   WATCH_WRITERS (16),
#   VAL_SIZE (256), BASE_PORT (24000, below the ephemeral port range), ETCD (/usr/bin/etcd), SKIP_BUILD=1 to use
#   an existing binary, LOCALCLUSTER_BIN (target/release/localcluster), KEEP=1
#   to keep the data and logs.
# Needs: cargo, jq, curl, and etcd-server (apt-installed when missing).

set -euo pipefail

TOTAL=${TOTAL:-60000}
WORKLOADS=${WORKLOADS:-"put:1:2000 put:100 put:1000 put:1000::100 range:100"}
ROUNDS=${ROUNDS:-3}
if ! [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
    echo "bench-vs-etcd: ROUNDS must be a positive number, not \"$ROUNDS\"" >&2
    exit 2
fi
CONNS=${CONNS:-3}
KEY_SIZE=${KEY_SIZE:-8}
VAL_SIZE=${VAL_SIZE:-256}
WATCHERS=${WATCHERS:-"100 1000"}
CHECK_LOAD=${CHECK_LOAD:-l}
EXTRAS=${EXTRAS:-1}
WATCH_TOTAL=${WATCH_TOTAL:-2000}
WATCH_STREAMS=${WATCH_STREAMS:-10}
WATCH_WRITERS=${WATCH_WRITERS:-16}
BASE_PORT=${BASE_PORT:-24000}
ETCD=${ETCD:-/usr/bin/etcd}
HEARTBEAT_MS=100
ELECTION_MS=1000

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${LOCALCLUSTER_BIN:-"$ROOT/target/release/localcluster"}

log() { echo "bench-vs-etcd: $*" >&2; }

# apt-installs PACKAGE when COMMAND is missing.
need() {
    local cmd=$1 pkg=$2
    if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "$cmd" ]; then
        log "installing $pkg"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
    fi
}

need jq jq
need curl curl
need "$ETCD" etcd-server

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet)
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-vs-etcd.XXXXXX")
PIDS=()

stop_cluster() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

cleanup() {
    stop_cluster
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_cluster KIND DIR PORT_BASE: starts 3 members of KIND (localcluster|etcd);
# member i listens for clients on PORT_BASE+i and for peers on PORT_BASE+10+i.
start_cluster() {
    local kind=$1 dir=$2 base=$3 i cluster="" cmd
    for i in 1 2 3; do
        cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 10 + i))"
    done
    for i in 1 2 3; do
        local c="http://127.0.0.1:$((base + i))" p="http://127.0.0.1:$((base + 10 + i))"
        if [ "$kind" = etcd ]; then cmd=("$ETCD"); else cmd=("$BIN" member); fi
        "${cmd[@]}" --name "m$i" --data-dir "$dir/m$i" \
            --listen-client-urls "$c" --advertise-client-urls "$c" \
            --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
            --initial-cluster "$cluster" --initial-cluster-token "bench-$kind" \
            --initial-cluster-state new \
            --heartbeat-interval "$HEARTBEAT_MS" --election-timeout "$ELECTION_MS" \
            >"$dir/m$i.log" 2>&1 &
        PIDS+=($!)
    done
    for i in 1 2 3; do
        local url="http://127.0.0.1:$((base + i))/health" ok=0
        for _ in $(seq 300); do
            if curl -fsS -m 1 "$url" 2>/dev/null | grep -q '"health":"true"'; then ok=1; break; fi
            sleep 0.1
        done
        if [ "$ok" != 1 ]; then
            log "$kind member m$i never became healthy; its log:"
            tail -n 20 "$dir/m$i.log" >&2
            exit 1
        fi
    done
}

# sum_proc FILE FIELD: the sum over the running members of the number after
# "FIELD:" in /proc/PID/FILE.
sum_proc() {
    local file=$1 field=$2 pid sum=0 v
    for pid in "${PIDS[@]}"; do
        v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/$file")
        sum=$((sum + v))
    done
    echo "$sum"
}

# Resident set size (KiB) of the running members, summed.
rss_kib() { sum_proc status VmRSS; }

# Proportional set size (KiB), summed: pages shared between the members (the
# binary's text, mapped by all three) counted once in all.
pss_kib() { sum_proc smaps_rollup Pss; }

# Bytes (KiB) the running members caused to be written to the disk since
# they started (write_bytes: the log, the store, and the kernel's writeback
# of the pages they dirtied), summed.
disk_write_kib() { echo "$(($(sum_proc io write_bytes) / 1024))"; }

# Sum of user+system CPU time (seconds) of the running members.
cpu_seconds() {
    local pid ticks=0 t tck
    tck=$(getconf CLK_TCK)
    for pid in "${PIDS[@]}"; do
        # fields 14 and 15 of /proc/PID/stat, counted after the ")" closing comm
        t=$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
        ticks=$((ticks + t))
    done
    awk -v t="$ticks" -v h="$tck" 'BEGIN { printf "%.1f", t / h }'
}

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

# run_one KIND WORKLOAD CLIENTS TOTAL CONNS PORT_BASE ROUND
run_one() {
    local kind=$1 workload=$2 clients=$3 total=$4 conns=$5 base=$6 round=$7
    local dir="$WORK/$kind-$workload-c$clients-n$conns-r$round"
    mkdir -p "$dir"
    log "$kind: starting 3 members (clients on $((base + 1))-$((base + 3)))"
    start_cluster "$kind" "$dir" "$base"
    local eps="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
    log "$kind: bench $workload --total $total --clients $clients --conns $conns"
    local code=0
    "$BIN" bench "$workload" --endpoints "$eps" --total "$total" --clients "$clients" \
        --conns "$conns" --key-size "$KEY_SIZE" --val-size "$VAL_SIZE" -w json \
        >"$dir/bench.json" || code=$?
    if ! jq -e . "$dir/bench.json" >/dev/null 2>&1; then
        log "$kind: bench failed (exit $code)"
        exit 1
    fi
    local rss cpu disk
    rss=$(rss_kib)
    cpu=$(cpu_seconds)
    disk=$(disk_write_kib)
    stop_cluster
    jq -c --arg server "$kind" --arg workload "$workload" --argjson rss "$rss" --argjson cpu "$cpu" \
        --argjson disk "$disk" --argjson total "$total" --argjson round "$round" \
        --argjson conns "$conns" \
        '{server: $server, workload: $workload, round: $round, clients, conns: $conns, rps, errors, latency_ms, rss_kib: $rss, server_cpu_s: $cpu, disk_kib_per_req: ($disk / $total)}' \
        "$dir/bench.json" >>"$RESULTS"
}

WATCH_RESULTS="$WORK/watch.jsonl"
: >"$WATCH_RESULTS"

run_watch() {
    local kind=$1 watchers=$2 base=$3
    local dir="$WORK/$kind-w$watchers"
    mkdir -p "$dir"
    log "$kind: starting 3 members (clients on $((base + 1))-$((base + 3)))"
    start_cluster "$kind" "$dir" "$base"
    local eps="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
    log "$kind: bench watch --watchers $watchers --total $WATCH_TOTAL"
    local code=0
    "$BIN" bench watch --endpoints "$eps" --total "$WATCH_TOTAL" --watchers "$watchers" \
        --streams "$WATCH_STREAMS" --clients "$WATCH_WRITERS" --val-size "$VAL_SIZE" -w json \
        >"$dir/bench.json" || code=$?
    if ! jq -e . "$dir/bench.json" >/dev/null 2>&1; then
        log "$kind: bench watch failed (exit $code)"
        exit 1
    fi
    local rss
    rss=$(rss_kib)
    stop_cluster
    jq -c --arg server "$kind" --argjson rss "$rss" \
        '{server: $server, watchers, rps, put_rps, errors, latency_ms, rss_kib: $rss}' \
        "$dir/bench.json" >>"$WATCH_RESULTS"
}

EXTRA_RESULTS="$WORK/extras.jsonl"
: >"$EXTRA_RESULTS"

now_ms() { date +%s%3N; }

# put_until_ok ENDPOINTS: retries one put until it is acknowledged.
put_until_ok() {
    for _ in $(seq 600); do
        if ETCDCTL_API=3 etcdctl --endpoints="$1" --command-timeout=1s --dial-timeout=1s \
            put bench-vs-etcd/probe x >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.02
    done
    return 1
}

run_extras() {
    local kind=$1 base=$2
    local dir="$WORK/$kind-extras"
    mkdir -p "$dir"
    local eps="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
    log "$kind: start-up, memory, failover and check perf"
    local t0 first_write idle idle_pss loaded failover check
    t0=$(now_ms)
    start_cluster "$kind" "$dir" "$base"
    put_until_ok "$eps"
    first_write=$(($(now_ms) - t0))
    sleep 3
    idle=$(($(rss_kib) / 3))
    idle_pss=$(($(pss_kib) / 3))
    "$BIN" bench put --endpoints "$eps" --total 100000 --clients 64 --conns 3 \
        --sequential-keys --key-size 16 --val-size 256 -w json >"$dir/load.json"
    sleep 2
    loaded=$(($(rss_kib) / 3))
    if ETCDCTL_API=3 etcdctl --endpoints="$eps" check perf --load="$CHECK_LOAD" \
        >"$dir/check.txt" 2>&1; then check=PASS; else check=FAIL; fi
    # The leader: the member whose own ID is the leader ID in its status.
    local i leader_idx=0 others=""
    for i in 1 2 3; do
        local st
        st=$(ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$((base + i))" endpoint status -w json)
        if [ "$(echo "$st" | jq '.[0].Status.header.member_id == .[0].Status.leader')" = true ]; then
            leader_idx=$i
        fi
    done
    for i in 1 2 3; do
        [ "$i" = "$leader_idx" ] || others+="${others:+,}127.0.0.1:$((base + i))"
    done
    t0=$(now_ms)
    kill -KILL "${PIDS[$((leader_idx - 1))]}"
    wait "${PIDS[$((leader_idx - 1))]}" 2>/dev/null || true
    put_until_ok "$others"
    failover=$(($(now_ms) - t0))
    stop_cluster
    jq -nc --arg server "$kind" --argjson first "$first_write" --argjson idle "$idle" --argjson idle_pss "$idle_pss" \
        --argjson loaded "$loaded" --argjson failover "$failover" --arg check "$check" \
        '{server: $server, first_write_ms: $first, idle_rss_kib: $idle, idle_pss_kib: $idle_pss, rss_100k_kib: $loaded, failover_ms: $failover, check_perf: $check}' \
        >>"$EXTRA_RESULTS"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$EXTRAS" = 1 ]; then
    # Ports of their own: the killed leader's sockets may linger a while.
    run_extras localcluster "$((BASE_PORT + 200))"
    run_extras etcd "$((BASE_PORT + 300))"
fi
for round in $(seq "$ROUNDS"); do
    for w in $WORKLOADS; do
        IFS=: read -r workload clients total conns <<<"$w"
        total=${total:-$TOTAL}
        conns=${conns:-$CONNS}
        run_one localcluster "$workload" "$clients" "$total" "$conns" "$BASE_PORT" "$round"
        run_one etcd "$workload" "$clients" "$total" "$conns" "$((BASE_PORT + 100))" "$round"
    done
done
for w in $WATCHERS; do
    run_watch localcluster "$w" "$BASE_PORT"
    run_watch etcd "$w" "$((BASE_PORT + 100))"
done

etcd_version=$("$ETCD" --version | awk '/etcd Version/ {print $3}')
echo
echo "Workloads $WORKLOADS (workload:clients[:requests[:connections]], default $TOTAL requests over $CONNS connections), $ROUNDS rounds, ${KEY_SIZE}-byte keys, ${VAL_SIZE}-byte values," \
    "3 members on loopback; localcluster $("$BIN" --version | awk '{print $2}') vs etcd $etcd_version;" \
    "$(nproc) cores; load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after"
echo
echo "| server | workload | clients | conns | round | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU s | disk KiB/req (3 members) | RSS MiB (3 members) |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
jq -r '"| \(.server) | \(.workload) | \(.clients) | \(.conns) | \(.round) | \(.rps | floor) | \(.latency_ms.p50 * 100 | round / 100) | \(.latency_ms.p90 * 100 | round / 100) | \(.latency_ms.p99 * 100 | round / 100) | \(.latency_ms.max * 100 | round / 100) | \(.errors) | \(.server_cpu_s) | \(.disk_kib_per_req * 10 | round / 10) | \(.rss_kib / 1024 | round) |"' "$RESULTS"
echo
echo "Ratios of the median figures over the rounds; in brackets, the lowest and highest of the rounds' own ratios (each round's localcluster run against the etcd run next to it)."
echo
echo "| workload | clients | conns | req/s localcluster / etcd | p50 localcluster / etcd | p99 localcluster / etcd | server CPU localcluster / etcd | disk writes localcluster / etcd | RSS localcluster / etcd |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
jq -rs '
  def r2: . * 100 | round / 100;
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  # ratio(f): the ratio of the medians of f, and the range of the ratios of
  # the rounds that both servers ran (a zero figure gives no ratio).
  def ratio(f; $l; $e):
    ([$l[] | f] | median) as $lm | ([$e[] | f] | median) as $em
    | if $lm == null or $em == null or $em == 0 then "-"
      else [$l[] as $x | $e[] | select(.round == $x.round and (f) != 0) | ($x | f) / f] as $rs
      | "\($lm / $em | r2)" + (if ($rs | length) > 1 then " (\($rs | min | r2)–\($rs | max | r2))" else "" end)
      end;
  group_by([.workload, .clients, .conns])[]
  | (map(select(.server == "localcluster")) | sort_by(.round)) as $l
  | (map(select(.server == "etcd")) | sort_by(.round)) as $e
  | "| \($l[0].workload) | \($l[0].clients) | \($l[0].conns) | \(ratio(.rps; $l; $e)) | \(ratio(.latency_ms.p50; $l; $e)) | \(ratio(.latency_ms.p99; $l; $e)) | \(ratio(.server_cpu_s; $l; $e)) | \(ratio(.disk_kib_per_req; $l; $e)) | \(ratio(.rss_kib; $l; $e)) |"
' "$RESULTS"
echo
echo "Watch fan-out: $WATCH_TOTAL puts from $WATCH_WRITERS writers, each delivered to every watcher ($WATCH_STREAMS streams)"
echo
echo "| server | watchers | events/s | puts/s | delivery p50 ms | p99 ms | missing | RSS MiB (3 members) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
jq -r '"| \(.server) | \(.watchers) | \(.rps | floor) | \(.put_rps | floor) | \(.latency_ms.p50 * 100 | round / 100) | \(.latency_ms.p99 * 100 | round / 100) | \(.errors) | \(.rss_kib / 1024 | round) |"' "$WATCH_RESULTS"
echo
echo "| watchers | events/s localcluster / etcd | delivery p99 localcluster / etcd |"
echo "|---:|---:|---:|"
jq -rs '
  def r2: . * 100 | round / 100;
  group_by(.watchers)[]
  | (map(select(.server == "localcluster"))[0]) as $l
  | (map(select(.server == "etcd"))[0]) as $e
  | "| \($l.watchers) | \($l.rps / $e.rps | r2) | \($l.latency_ms.p99 / $e.latency_ms.p99 | r2) |"
' "$WATCH_RESULTS"
if [ "$EXTRAS" = 1 ]; then
    echo
    echo "Operations (3 members, default heartbeat 100 ms / election 1000 ms):"
    echo
    echo "| server | launch to first acked write ms | idle RSS MiB per member | idle PSS MiB per member | RSS MiB per member after 100k keys | leader SIGKILL to next acked write ms | etcdctl check perf --load=$CHECK_LOAD |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    jq -r '"| \(.server) | \(.first_write_ms) | \(.idle_rss_kib / 1024 * 10 | round / 10) | \(.idle_pss_kib / 1024 * 10 | round / 10) | \(.rss_100k_kib / 1024 * 10 | round / 10) | \(.failover_ms) | \(.check_perf) |"' "$EXTRA_RESULTS"
fi

