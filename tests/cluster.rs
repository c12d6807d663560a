//! Integration tests of the embedded cluster (`localcluster::LocalCluster`):
//! each test starts its own in-process cluster on free loopback ports, breaks
//! it with a fault hook and checks, through the etcd gRPC API, that writes go
//! on and that every member ends with the same data (revision and HashKV).

mod common;
use common::retry;

use std::time::{Duration, Instant};

use localcluster::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use localcluster::pb::etcdserverpb::{HashKvRequest, PutRequest, RangeRequest};
use localcluster::{LocalCluster, LocalClusterBuilder};

/// Generous bound for waits: they return as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(15);
/// Client-side timeout of one request.
const RPC: Duration = Duration::from_secs(5);

fn builder() -> LocalClusterBuilder {
    LocalCluster::builder().members(3)
}

/// One put on the member at `url`; returns the revision it created.
async fn put_once(url: &str, key: &str, value: &str) -> Result<i64, tonic::Status> {
    let mut kv = localcluster::client::kv(url, RPC)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let resp = kv
        .put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(resp.header.map(|h| h.revision).unwrap_or_default())
}

/// A put on the member at `url` that must succeed (retried while transient
/// errors last; a retried put may have been applied twice).
async fn put(url: &str, key: &str, value: &str) {
    retry("put", || put_once(url, key, value)).await;
}

/// A linearizable read of `key` on the member at `url`.
async fn get(url: &str, key: &str) -> Option<String> {
    let resp = retry("range", || async {
        let mut kv = localcluster::client::kv(url, RPC)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        kv.range(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
    })
    .await
    .into_inner();
    resp.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// (revision, HashKV hash) of the member at `url`.
async fn hash_kv(url: &str) -> (i64, u32) {
    let channel = localcluster::client::connect(url, RPC).await.unwrap();
    let resp = MaintenanceClient::new(channel)
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .unwrap()
        .into_inner();
    (resp.header.unwrap().revision, resp.hash)
}

/// Waits until every running member reports the same revision and HashKV,
/// and returns them.
async fn converged(cluster: &LocalCluster) -> (i64, u32) {
    cluster.wait_converged(WAIT).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut seen = Vec::new();
        for i in (0..cluster.len()).filter(|&i| cluster.is_running(i)) {
            seen.push(hash_kv(&cluster.member(i).client_url).await);
        }
        if seen.windows(2).all(|w| w[0] == w[1]) {
            return seen[0];
        }
        assert!(
            Instant::now() < deadline,
            "members never converged: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn clusters_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<LocalCluster>();
    send_sync::<LocalClusterBuilder>();
    send_sync::<localcluster::blocking::LocalCluster>();
}

fn follower_of(cluster: &LocalCluster, leader: usize) -> usize {
    (0..cluster.len())
        .find(|&i| i != leader && cluster.is_running(i))
        .unwrap()
}

#[tokio::test]
async fn a_killed_leader_is_replaced_and_writes_go_on() {
    let mut cluster = builder().start().await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    put(&cluster.member(leader).client_url, "before", "1").await;

    let killed = cluster.kill_leader().unwrap();
    assert_eq!(killed, leader);
    assert!(!cluster.is_running(killed));
    let new_leader = cluster.wait_leader(WAIT).await.unwrap();
    assert_ne!(new_leader, killed);

    // Writes go on, through the new leader and through a follower.
    put(&cluster.member(new_leader).client_url, "after", "2").await;
    let follower = (0..3).find(|&i| i != killed && i != new_leader).unwrap();
    put(&cluster.member(follower).client_url, "via-follower", "3").await;
    for i in [new_leader, follower] {
        let url = &cluster.member(i).client_url;
        assert_eq!(get(url, "before").await.as_deref(), Some("1"));
        assert_eq!(get(url, "after").await.as_deref(), Some("2"));
        assert_eq!(get(url, "via-follower").await.as_deref(), Some("3"));
    }
}

#[tokio::test]
async fn a_restarted_member_catches_up_to_the_same_revision_and_hash() {
    let mut cluster = builder().start().await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let victim = follower_of(&cluster, leader);
    let info = cluster.member(victim).clone();
    put(&info.client_url, "k0", "v0").await;

    cluster.kill(victim).unwrap();
    let url = cluster.member(leader).client_url.clone();
    for i in 1..20 {
        put(&url, &format!("k{i}"), &format!("v{i}")).await;
    }
    cluster.start(victim).unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();

    // Same name, ID, ports and data dir.
    assert_eq!(cluster.member(victim), &info);
    assert_eq!(cluster.member_handle(victim).unwrap().id(), info.id);
    let (revision, _) = converged(&cluster).await;
    assert!(revision >= 21, "revision {revision}"); // 20 puts on top of revision 1
    assert_eq!(get(&info.client_url, "k19").await.as_deref(), Some("v19"));
}

#[tokio::test]
async fn a_member_restarted_behind_a_compacted_log_catches_up_from_a_snapshot() {
    // Compact the Raft log every 5 entries, keeping none behind: the
    // returning member is too far behind for the log and needs a snapshot.
    let mut cluster = builder()
        .snapshot_count(5)
        .catchup_entries(1)
        .start()
        .await
        .unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let victim = follower_of(&cluster, leader);
    cluster.kill(victim).unwrap();
    let url = cluster.member(leader).client_url.clone();
    for i in 0..30 {
        put(&url, &format!("k{i}"), &format!("v{i}")).await;
    }
    cluster.start(victim).unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let (revision, _) = converged(&cluster).await;
    assert!(revision >= 31, "revision {revision}");
    let victim_url = cluster.member(victim).client_url.clone();
    assert_eq!(get(&victim_url, "k29").await.as_deref(), Some("v29"));

    // It keeps up with new writes afterwards.
    put(&url, "later", "x").await;
    assert!(converged(&cluster).await.0 > revision);
}

#[tokio::test]
async fn a_paused_leader_loses_leadership_and_steps_down_when_resumed() {
    let mut cluster = builder().start().await.unwrap();
    let old = cluster.wait_leader(WAIT).await.unwrap();
    put(&cluster.member(old).client_url, "k", "1").await;

    cluster.pause(old).unwrap();
    assert!(cluster.is_paused(old));
    let new = cluster.wait_leader(WAIT).await.unwrap();
    assert_ne!(new, old);
    put(&cluster.member(new).client_url, "k", "2").await;

    cluster.resume(old).unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    // It follows the current leader (wait_healthy checked every member).
    let leader = cluster.leader().unwrap();
    assert_eq!(
        cluster.status(old).unwrap().leader_id,
        cluster.member(leader).id
    );
    converged(&cluster).await;
    assert_eq!(
        get(&cluster.member(old).client_url, "k").await.as_deref(),
        Some("2")
    );
}

#[tokio::test]
async fn a_write_handed_to_a_leader_that_is_replaced_fails_when_the_new_leader_is_known() {
    // A long request timeout: without the early answer, the write would wait
    // all of it and fail with a plain `request timed out`.
    // An election timeout of etcd's default, so the election cannot end
    // before the put below reaches the follower.
    let mut cluster = builder()
        .election_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let old = cluster.wait_leader(WAIT).await.unwrap();
    let follower = follower_of(&cluster, old);
    let url = cluster.member(follower).client_url.clone();
    put(&url, "k", "1").await;
    let mut kv = localcluster::client::kv(&url, Duration::from_secs(60))
        .await
        .unwrap();

    // The paused leader holds the proposal the follower hands it.
    cluster.pause(old).unwrap();
    let err = kv
        .put(PutRequest {
            key: b"k".to_vec().into(),
            value: b"lost".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(
        err.message(),
        "etcdserver: request timed out, possibly due to previous leader failure"
    );
    let new = cluster.leader().unwrap();
    assert_ne!(new, old);
    put(&url, "k", "2").await;

    // Resumed, the old leader drops the proposal it held: it never applies.
    cluster.resume(old).unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    converged(&cluster).await;
    for i in 0..3 {
        let url = &cluster.member(i).client_url;
        assert_eq!(get(url, "k").await.as_deref(), Some("2"));
    }
}

#[tokio::test]
async fn a_partitioned_minority_cannot_commit_while_the_majority_goes_on() {
    let mut cluster = builder()
        .request_timeout(Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    let old = cluster.wait_leader(WAIT).await.unwrap();
    put(&cluster.member(old).client_url, "k", "before").await;
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();

    // Isolate the leader.
    cluster.partition(&[&[old], &majority]).unwrap();
    let new = cluster.wait_leader(WAIT).await.unwrap();
    assert!(majority.contains(&new));

    // The old leader is in the minority: its writes cannot commit.
    let err = put_once(&cluster.member(old).client_url, "lost", "x")
        .await
        .unwrap_err();
    assert!(
        err.message() == "etcdserver: no leader"
            || err.message() == "etcdserver: request timed out",
        "unexpected error: {err:?}"
    );
    // The majority goes on, through either of its members.
    for (n, &i) in majority.iter().enumerate() {
        put(&cluster.member(i).client_url, "k", &format!("during{n}")).await;
    }
    assert!(cluster
        .wait_healthy(Duration::from_millis(300))
        .await
        .is_err());

    cluster.heal();
    cluster.wait_healthy(WAIT).await.unwrap();
    let (revision, _) = converged(&cluster).await;
    assert!(revision >= 4, "revision {revision}");
    let url = cluster.member(old).client_url.clone();
    assert_eq!(get(&url, "k").await.as_deref(), Some("during1"));
    assert_eq!(get(&url, "lost").await, None);
}

#[tokio::test]
async fn a_partitioned_follower_refuses_writes_and_catches_up_after_heal() {
    let mut cluster = builder()
        .request_timeout(Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let lonely = follower_of(&cluster, leader);
    // `lonely` is in no group: it is alone.
    let rest: Vec<usize> = (0..3).filter(|&i| i != lonely).collect();
    cluster.partition(&[&rest]).unwrap();

    let err = put_once(&cluster.member(lonely).client_url, "lost", "x")
        .await
        .unwrap_err();
    assert!(
        err.message() == "etcdserver: no leader"
            || err.message() == "etcdserver: request timed out",
        "unexpected error: {err:?}"
    );
    for i in 0..10 {
        put(&cluster.member(leader).client_url, &format!("k{i}"), "v").await;
    }
    cluster.heal();
    cluster.wait_healthy(WAIT).await.unwrap();
    let (revision, _) = converged(&cluster).await;
    assert!(revision >= 11, "revision {revision}");
    assert_eq!(get(&cluster.member(lonely).client_url, "lost").await, None);
}

#[tokio::test]
async fn a_bridge_cut_keeps_the_cluster_writable_and_every_member_catches_up() {
    let mut cluster = builder()
        .request_timeout(Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    cluster.wait_leader(WAIT).await.unwrap();
    assert!(cluster.cut(&[(0, 5)]).is_err(), "no member 5");
    // 0 and 2 cannot talk; 1 links both (a bridge): a quorum stays connected.
    cluster.cut(&[(0, 2)]).unwrap();
    for n in 0..3 {
        put(&cluster.member(1).client_url, "k", &format!("during{n}")).await;
    }
    assert!(cluster.wait_leader(WAIT).await.is_ok());
    cluster.heal();
    cluster.wait_healthy(WAIT).await.unwrap();
    converged(&cluster).await;
    for i in 0..3 {
        assert_eq!(
            get(&cluster.member(i).client_url, "k").await.as_deref(),
            Some("during2"),
            "member {i}"
        );
    }
}

#[tokio::test]
async fn a_gracefully_stopped_leader_hands_over_and_restarts() {
    let mut cluster = builder().start().await.unwrap();
    let old = cluster.wait_leader(WAIT).await.unwrap();
    cluster.stop(old).await.unwrap();
    let new = cluster.wait_leader(WAIT).await.unwrap();
    assert_ne!(new, old);
    put(&cluster.member(new).client_url, "k", "v").await;
    cluster.restart(old).await.unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    converged(&cluster).await;
    assert_eq!(
        get(&cluster.member(old).client_url, "k").await.as_deref(),
        Some("v")
    );
    assert!(matches!(
        cluster.start(old),
        Err(localcluster::ClusterError::AlreadyRunning(_))
    ));
}

/// Whether `addr` is refused as by a dead process and taken for its member:
/// a socket that does not share ports cannot bind it.
fn reserved_and_refusing(addr: std::net::SocketAddr) -> bool {
    let refused = matches!(
        std::net::TcpStream::connect(addr),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    );
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let taken = matches!(
        socket.bind(&addr.into()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
    );
    refused && taken
}

#[tokio::test]
async fn a_down_members_ports_stay_reserved_for_it_until_it_starts_again() {
    let mut cluster = builder().start().await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let victim = follower_of(&cluster, leader);
    let info = cluster.member(victim).clone();
    for graceful in [false, true] {
        if graceful {
            cluster.stop(victim).await.unwrap();
        } else {
            cluster.kill(victim).unwrap();
        }
        for addr in [info.client_addr, info.peer_addr] {
            assert!(reserved_and_refusing(addr), "{addr} (graceful: {graceful})");
        }
        cluster.start(victim).unwrap();
        cluster.wait_healthy(WAIT).await.unwrap();
        put(&info.client_url, "k", "v").await;
    }
    assert_eq!(cluster.member(victim), &info);
}

#[tokio::test]
async fn a_member_added_during_a_partition_is_alone_until_the_heal() {
    let mut cluster = builder().start().await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    cluster.partition(&[&[0, 1, 2]]).unwrap();
    let added = cluster.add_member(true).await.unwrap();
    put(&cluster.member(leader).client_url, "k", "v").await;
    // Long enough for a heartbeat round of the test clusters' 20 ms ticks.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alone = cluster.member_handle(added).unwrap().status();
    assert_eq!(alone.leader_id, 0, "{alone:?}");
    cluster.heal();
    cluster.wait_converged(WAIT).await.unwrap();
    let joined = cluster.member_handle(added).unwrap().status();
    assert_ne!(joined.leader_id, 0, "{joined:?}");
}

#[tokio::test]
async fn the_blocking_cluster_refuses_to_start_inside_async_code() {
    let err = localcluster::blocking::LocalCluster::builder()
        .members(1)
        .start_blocking()
        .unwrap_err();
    assert!(
        matches!(err, localcluster::ClusterError::Runtime(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("inside async code"), "{err}");
}

#[tokio::test]
async fn dropping_the_cluster_frees_its_ports_and_data() {
    let cluster = builder().start().await.unwrap();
    let infos: Vec<_> = cluster.members().cloned().collect();
    assert!(infos.iter().all(|m| m.data_dir.exists()));
    drop(cluster);
    for m in &infos {
        std::net::TcpListener::bind(m.client_addr).unwrap();
        std::net::TcpListener::bind(m.peer_addr).unwrap();
        assert!(
            !m.data_dir.exists(),
            "{} still exists",
            m.data_dir.display()
        );
    }
}

#[tokio::test]
async fn a_kept_data_dir_restarts_the_cluster_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = builder().data_dir(dir.path()).start().await.unwrap();
    let ports: Vec<(u16, u16)> = cluster
        .members()
        .map(|m| (m.client_addr.port(), m.peer_addr.port()))
        .collect();
    let ids: Vec<u64> = cluster.members().map(|m| m.id).collect();
    put(&cluster.client_urls()[0], "kept", "yes").await;
    cluster.shutdown().await.unwrap();
    assert!(dir.path().join("m0").exists());

    let cluster = builder()
        .data_dir(dir.path())
        .ports(ports)
        .start()
        .await
        .unwrap();
    assert_eq!(cluster.members().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        get(&cluster.client_urls()[2], "kept").await.as_deref(),
        Some("yes")
    );
}

#[tokio::test]
async fn hooks_refuse_bad_indexes_and_states() {
    let mut cluster = LocalCluster::builder().members(1).start().await.unwrap();
    assert_eq!(cluster.leader(), Some(0));
    assert!(matches!(
        cluster.kill(5),
        Err(localcluster::ClusterError::NoSuchMember { index: 5, len: 1 })
    ));
    assert!(cluster.partition(&[&[0], &[0]]).is_err());
    cluster.kill(0).unwrap();
    assert!(matches!(
        cluster.kill(0),
        Err(localcluster::ClusterError::NotRunning(0))
    ));
    assert!(matches!(
        cluster.kill_leader(),
        Err(localcluster::ClusterError::NoLeader)
    ));
    assert!(LocalCluster::builder().members(0).start().await.is_err());
    assert!(LocalCluster::builder()
        .heartbeat_interval(Duration::from_millis(100))
        .election_timeout(Duration::from_millis(200))
        .start()
        .await
        .is_err());
}

#[test]
fn the_blocking_cluster_survives_a_leader_kill() {
    let mut cluster = localcluster::blocking::LocalCluster::builder()
        .members(3)
        .start_blocking()
        .unwrap();
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert!(endpoints.iter().all(|e| e.starts_with("127.0.0.1:")));

    let old = cluster.kill_leader().unwrap();
    let new = cluster.wait_leader(WAIT).unwrap();
    assert_ne!(old, new);
    let url = cluster.member(new).client_url.clone();
    cluster.block_on(put(&url, "k", "v"));
    cluster.start(old).unwrap();
    cluster.wait_healthy(WAIT).unwrap();
    cluster.wait_converged(WAIT).unwrap();
    let old_url = cluster.member(old).client_url.clone();
    assert_eq!(cluster.block_on(get(&old_url, "k")).as_deref(), Some("v"));
    cluster.shutdown().unwrap();
}

#[tokio::test]
async fn unsafe_no_fsync_skips_every_fsync_and_survives_killed_members() {
    let mut cluster = builder().unsafe_no_fsync(true).start().await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let url = cluster.member(leader).client_url.clone();
    put(&url, "fast", "1").await;
    // A killed process loses nothing: the page cache outlives it.
    cluster.kill(leader).unwrap();
    cluster.start(leader).unwrap();
    cluster.wait_converged(WAIT).await.unwrap();
    let url = cluster.member(leader).client_url.clone();
    assert_eq!(get(&url, "fast").await.as_deref(), Some("1"));
    for i in 0..3 {
        let member = cluster.member_handle(i).unwrap();
        assert_eq!(
            member.core().metrics.wal_fsync.get_sample_count(),
            0,
            "member {i} fsynced its log"
        );
    }

    // The default is safe: the log is fsynced.
    let safe = LocalCluster::builder().members(1).start().await.unwrap();
    safe.wait_leader(WAIT).await.unwrap();
    put(&safe.member(0).client_url, "safe", "1").await;
    let member = safe.member_handle(0).unwrap();
    assert!(member.core().metrics.wal_fsync.get_sample_count() > 0);
}
