# A 3-member cluster on loopback for the measurement scripts (sourced by
# scripts/put-cost.sh and scripts/load-shape.sh).
#
# The caller sets WORK (a scratch directory the cluster may fill), BASE_PORT
# (clients on BASE_PORT+1..3, peers on BASE_PORT+11..13), BENCH (a localcluster
# binary, used to check that the cluster takes writes) and an empty PIDS
# array, and installs `trap cluster_stop EXIT`.

# cluster_start SERVER TOKEN [member flags...]
# Starts three members of SERVER (etcd directly, localcluster through its
# `member` subcommand), waits until the cluster takes a write, and sets
# ENDPOINTS. Exits 1 with member 1's last log lines if it never does.
cluster_start() {
    local server=$1 token=$2 i client peer cluster="" sub=(member)
    shift 2
    [ "$(basename "$server")" = etcd ] && sub=()
    ENDPOINTS=""
    for i in 1 2 3; do
        cluster+="${cluster:+,}m$i=http://127.0.0.1:$((BASE_PORT + 10 + i))"
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((BASE_PORT + i))"
    done
    for i in 1 2 3; do
        client=http://127.0.0.1:$((BASE_PORT + i))
        peer=http://127.0.0.1:$((BASE_PORT + 10 + i))
        "$server" "${sub[@]}" --name "m$i" --data-dir "$WORK/m$i" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster-token "$token" --initial-cluster "$cluster" \
            "$@" >"$WORK/m$i.log" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 100); do
        "$BENCH" bench put --endpoints "$ENDPOINTS" --total 1 --clients 1 >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the cluster did not take a write in 10 s; member 1 said:" >&2
    tail -5 "$WORK/m1.log" >&2
    exit 1
}

# cluster_stop: ends every process in PIDS (SIGTERM, then SIGKILL after 10 s)
# and removes WORK.
cluster_stop() {
    local pid i
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
