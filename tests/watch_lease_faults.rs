//! Watches, leases and compaction under faults, on an embedded cluster driven
//! through the etcd gRPC API: no watch event lost or duplicated across a leader
//! kill, leases expired once and only by the leader and never early after a
//! leader change, keep-alives through a leader change, compaction that really
//! gives disk space back, auto-compaction, and the watch protocol details
//! `etcdctl` cannot show (progress notifications, fragments).

mod common;
use common::retry;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use localcluster::pb::etcdserverpb::lease_client::LeaseClient;
use localcluster::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use localcluster::pb::etcdserverpb::watch_client::WatchClient;
use localcluster::pb::etcdserverpb::watch_request::RequestUnion;
use localcluster::pb::etcdserverpb::{
    CompactionRequest, DefragmentRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse,
};
use localcluster::pb::mvccpb::event::EventType;
use localcluster::LocalCluster;
use tokio::sync::{mpsc, watch, Mutex};
use tonic::transport::Channel;

/// Generous bound for waits that end as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(30);
/// Client-side timeout of one request.
const RPC: Duration = Duration::from_secs(3);

async fn channel(url: &str) -> Result<Channel, tonic::Status> {
    localcluster::client::connect(url, RPC)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))
}

/// One put; the revision it created.
async fn put_once(url: &str, key: &str, value: &[u8], lease: i64) -> Result<i64, tonic::Status> {
    let mut kv = localcluster::client::kv(url, RPC)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let resp = kv
        .put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.to_vec().into(),
            lease,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(resp.header.map(|h| h.revision).unwrap_or_default())
}

/// Whether `key` exists on the member at `url`; `serializable` reads its
/// local state without asking the leader.
async fn exists(url: &str, key: &str, serializable: bool) -> bool {
    let resp = retry("range", || async {
        let mut kv = localcluster::client::kv(url, RPC)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        kv.range(RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable,
            ..Default::default()
        })
        .await
    })
    .await;
    !resp.into_inner().kvs.is_empty()
}

async fn grant(url: &str, ttl: i64) -> i64 {
    retry("lease grant", || async {
        LeaseClient::new(channel(url).await?)
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await
    })
    .await
    .into_inner()
    .id
}

/// Opens a watch stream on `url` with `create`; returns the request sender
/// and the response stream, after the `created` response.
async fn open_watch(
    url: &str,
    create: WatchCreateRequest,
) -> Result<(mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>), tonic::Status> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    })
    .await
    .map_err(|_| tonic::Status::internal("closed"))?;
    let mut client = WatchClient::new(channel(url).await?);
    let mut stream = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let created = tokio::time::timeout(RPC, stream.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no created response"))??
        .ok_or_else(|| tonic::Status::unavailable("stream ended"))?;
    assert!(created.created, "{created:?}");
    Ok((tx, stream))
}

/// A watcher that follows `prefix` from `start`, as clientv3 does: when its
/// member dies it resumes on the next endpoint from the revision after the
/// last one it saw. Returns the revisions of the events it got, in order of
/// arrival, once it has seen `until` (or panics after [`WAIT`] past it being
/// set).
async fn resilient_watcher(
    urls: Vec<String>,
    first: usize,
    prefix: &'static str,
    start: i64,
    mut until: watch::Receiver<i64>,
) -> Vec<i64> {
    let mut seen: Vec<i64> = Vec::new();
    let mut next = first;
    let mut end_deadline: Option<Instant> = None;
    loop {
        let from = seen.last().map_or(start, |r| r + 1);
        let url = urls[next % urls.len()].clone();
        next += 1;
        let create = WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix),
            start_revision: from,
            ..Default::default()
        };
        let Ok((_tx, mut stream)) = open_watch(&url, create).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let target = *until.borrow();
            if target > 0 && seen.last().is_some_and(|&r| r >= target) {
                return seen;
            }
            if target > 0 {
                let deadline = *end_deadline.get_or_insert(Instant::now() + WAIT);
                assert!(
                    Instant::now() < deadline,
                    "watcher stuck at {:?} < {target}",
                    seen.last()
                );
            }
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = until.changed() => continue,
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
            };
            match msg {
                Ok(Some(resp)) => {
                    assert!(!resp.canceled, "watch canceled: {resp:?}");
                    for ev in resp.events {
                        seen.push(ev.kv.map(|kv| kv.mod_revision).unwrap_or_default());
                    }
                }
                _ => break,
            }
        }
    }
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    end
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watch_event_is_lost_or_duplicated_when_the_leader_is_killed() {
    let mut cluster = LocalCluster::builder().members(3).start().await.unwrap();
    let urls = cluster.client_urls();
    let start = put_once(&urls[0], "other", b"x", 0).await.unwrap() + 1;
    let (until_tx, until_rx) = watch::channel(0i64);
    let watchers: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(resilient_watcher(
                urls.clone(),
                i,
                "nl/",
                start,
                until_rx.clone(),
            ))
        })
        .collect();

    // The writer: sequential puts, each to the next member, through the kill.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let urls = urls.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            for n in 0..300 {
                let url = &urls[n % urls.len()];
                if let Ok(rev) = put_once(url, &format!("nl/{n}"), b"v", 0).await {
                    acked.lock().await.push(rev);
                }
            }
        })
    };
    while acked.lock().await.len() < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old = cluster.kill_leader().unwrap();
    cluster.wait_leader(WAIT).await.unwrap();
    writer.await.unwrap();
    cluster.start(old).unwrap();

    let acked = acked.lock().await.clone();
    assert!(
        acked.len() > 150,
        "the writer went on after the kill: {}",
        acked.len()
    );
    let last = *acked.iter().max().unwrap();
    until_tx.send(last).unwrap();

    // The full history of the prefix, read after the fact from a survivor.
    let survivor = &urls[(old + 1) % 3];
    let (_tx, mut history) = open_watch(
        survivor,
        WatchCreateRequest {
            key: b"nl/".to_vec(),
            range_end: prefix_end("nl/"),
            start_revision: start,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    while all.last().is_none_or(|&r| r < last) {
        let resp = history.message().await.unwrap().unwrap();
        all.extend(
            resp.events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }

    for (i, w) in watchers.into_iter().enumerate() {
        let seen = w.await.unwrap();
        let upto: Vec<i64> = seen.iter().copied().filter(|&r| r <= last).collect();
        assert!(
            upto.windows(2).all(|p| p[0] < p[1]),
            "watcher {i}: out of order or duplicated: {upto:?}"
        );
        let got: BTreeSet<i64> = upto.iter().copied().collect();
        let missing: Vec<&i64> = acked.iter().filter(|r| !got.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "watcher {i} lost acknowledged revisions {missing:?}"
        );
        let expected: Vec<i64> = all.iter().copied().filter(|&r| r <= last).collect();
        assert_eq!(upto, expected, "watcher {i} saw exactly the history");
    }
    cluster.shutdown().await.unwrap();
}

/// Collects the DELETE events of `key` from revision `from` for `span`.
async fn deletes_of(url: &str, key: &str, from: i64, span: Duration) -> Vec<i64> {
    let (_tx, mut stream) = open_watch(
        url,
        WatchCreateRequest {
            key: key.as_bytes().to_vec(),
            start_revision: from,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut deletes = Vec::new();
    let deadline = tokio::time::Instant::now() + span;
    while let Ok(Ok(Some(resp))) = tokio::time::timeout_at(deadline, stream.message()).await {
        for ev in resp.events {
            if ev.r#type == EventType::Delete as i32 {
                deletes.push(ev.kv.unwrap().mod_revision);
            }
        }
    }
    deletes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_gives_every_lease_a_full_ttl_and_expires_it_once() {
    let mut cluster = LocalCluster::builder().members(3).start().await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let url = cluster.member(leader).client_url.clone();
    let granted = Instant::now();
    let id = grant(&url, 6).await;
    let rev = put_once(&url, "ttl/k", b"v", id).await.unwrap();

    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.kill(leader).unwrap();
    let new = cluster.wait_leader(WAIT).await.unwrap();
    let new_url = cluster.member(new).client_url.clone();
    // The old deadline (6 s after the grant) passes; the new leader counts a
    // full TTL from its election (at least 3 s after the grant).
    let at = granted + Duration::from_millis(7000);
    tokio::time::sleep_until(at.into()).await;
    assert!(
        exists(&new_url, "ttl/k", false).await,
        "the lease expired early, {:?} after its grant",
        granted.elapsed()
    );
    common::retry("expiry", || async {
        if exists(&new_url, "ttl/k", false).await {
            Err(tonic::Status::unavailable("not yet"))
        } else {
            Ok(())
        }
    })
    .await;
    assert!(granted.elapsed() >= Duration::from_secs(9));
    cluster.start(leader).unwrap();
    // Expired exactly once: one deletion, on every member.
    cluster.wait_converged(WAIT).await.unwrap();
    for m in cluster.client_urls() {
        assert_eq!(
            deletes_of(&m, "ttl/k", rev, Duration::from_secs(1))
                .await
                .len(),
            1
        );
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_never_expires_a_lease_on_its_own() {
    let mut cluster = LocalCluster::builder().members(3).start().await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let urls = cluster.client_urls();
    let id = grant(&urls[leader], 2).await;
    let rev = put_once(&urls[leader], "iso/k", b"v", id).await.unwrap();
    cluster.wait_converged(WAIT).await.unwrap();

    cluster.partition(&[&[follower], &[leader, other]]).unwrap();
    common::retry("expiry on the majority", || async {
        if exists(&urls[leader], "iso/k", true).await {
            Err(tonic::Status::unavailable("not yet"))
        } else {
            Ok(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        exists(&urls[follower], "iso/k", true).await,
        "the cut-off follower still has the key: only a leader revokes, through Raft"
    );
    cluster.heal();
    cluster.wait_converged(WAIT).await.unwrap();
    assert!(!exists(&urls[follower], "iso/k", true).await);
    assert_eq!(
        deletes_of(&urls[follower], "iso/k", rev, Duration::from_secs(1))
            .await
            .len(),
        1
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_hold_a_lease_through_a_leader_change() {
    let mut cluster = LocalCluster::builder().members(3).start().await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let follower = (leader + 1) % 3;
    let url = cluster.member(follower).client_url.clone();
    let id = grant(&url, 2).await;
    put_once(&url, "ka/k", b"v", id).await.unwrap();

    // A client renewing every 500 ms, reopening its stream after errors.
    let stop = tokio_util::sync::CancellationToken::new();
    let renewer = {
        let url = url.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut renewals = 0;
            while !stop.is_cancelled() {
                let Ok(ch) = channel(&url).await else {
                    continue;
                };
                let (tx, rx) = mpsc::channel(1);
                let Ok(resp) = LeaseClient::new(ch)
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut stream = resp.into_inner();
                while !stop.is_cancelled() {
                    if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(RPC, stream.message()).await {
                        Ok(Ok(Some(r))) => {
                            assert!(r.ttl > 0, "the lease was lost: {r:?}");
                            renewals += 1;
                        }
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            renewals
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill(leader).unwrap();
    cluster.wait_leader(WAIT).await.unwrap();
    // Three TTLs after the kill.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        exists(&url, "ka/k", false).await,
        "the key outlived the old leader"
    );
    stop.cancel();
    assert!(renewer.await.unwrap() > 8);
    let ttl = LeaseClient::new(channel(&url).await.unwrap())
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    // Not expired (-1); under a second left reads as 0, as in etcd.
    assert!(ttl.ttl >= 0, "{ttl:?}");
    assert_eq!(ttl.keys, vec![b"ka/k".to_vec()]);
    cluster.shutdown().await.unwrap();
}

fn kv_file_size(cluster: &LocalCluster, i: usize) -> u64 {
    let path = cluster.member(i).data_dir.join("member").join("kv.redb");
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_then_defragment_gives_the_disk_space_back() {
    let cluster = LocalCluster::builder().members(3).start().await.unwrap();
    let url = cluster.client_urls()[0].clone();
    // 8 MiB of history on one key.
    let value = vec![b'x'; 32 * 1024];
    let mut last = 0;
    for _ in 0..256 {
        last = retry("put", || put_once(&url, "big", &value, 0)).await;
    }
    cluster.wait_converged(WAIT).await.unwrap();
    let before: Vec<u64> = (0..3).map(|i| kv_file_size(&cluster, i)).collect();
    assert!(before.iter().all(|&s| s > 8 << 20), "{before:?}");

    let ch = channel(&url).await.unwrap();
    localcluster::pb::etcdserverpb::kv_client::KvClient::new(ch)
        .compact(CompactionRequest {
            revision: last,
            physical: true,
        })
        .await
        .unwrap();
    for m in cluster.client_urls() {
        MaintenanceClient::new(channel(&m).await.unwrap())
            .defragment(DefragmentRequest {})
            .await
            .unwrap();
    }
    let after: Vec<u64> = (0..3).map(|i| kv_file_size(&cluster, i)).collect();
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a * 4 < *b,
            "compaction + defrag shrank the store: {before:?} -> {after:?}"
        );
    }
    // The latest value is intact.
    assert!(exists(&url, "big", false).await);
    cluster.shutdown().await.unwrap();
}

/// Waits until the compacted revision of the member at `url` satisfies `done`.
async fn wait_compacted(url: &str, done: impl Fn(i64) -> bool) {
    retry("compaction", || async {
        let st = MaintenanceClient::new(channel(url).await?)
            .hash_kv(localcluster::pb::etcdserverpb::HashKvRequest { revision: 0 })
            .await?
            .into_inner();
        if done(st.compact_revision) {
            Ok(())
        } else {
            let at = st.compact_revision;
            Err(tonic::Status::unavailable(format!("compacted at {at}")))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_in_revision_mode_keeps_the_last_n_revisions() {
    use localcluster::compactor::AutoCompaction;
    let cluster = LocalCluster::builder()
        .members(3)
        .configure(|_, cfg| {
            cfg.auto_compaction = Some(AutoCompaction::Revision {
                retention: 10,
                interval: Duration::from_millis(200),
            })
        })
        .start()
        .await
        .unwrap();
    let url = cluster.client_urls()[1].clone();
    let mut last = 0;
    for n in 0..40 {
        let key = format!("ac/{n}");
        last = retry("put", || put_once(&url, &key, b"v", 0)).await;
    }
    for m in cluster.client_urls() {
        wait_compacted(&m, |c| c == last - 10).await;
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_in_periodic_mode_compacts_what_is_older_than_the_retention() {
    let cluster = LocalCluster::builder()
        .members(1)
        .configure(|_, cfg| {
            cfg.auto_compaction =
                localcluster::compactor::AutoCompaction::parse("periodic", "1s").unwrap();
        })
        .start()
        .await
        .unwrap();
    let url = cluster.client_urls()[0].clone();
    let first = put_once(&url, "pc/a", b"1", 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    put_once(&url, "pc/a", b"2", 0).await.unwrap();
    wait_compacted(&url, |c| c >= first).await;
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_progress_notify_watchers_and_progress_requests_get_the_current_revision() {
    let cluster = LocalCluster::builder()
        .members(1)
        .configure(|_, cfg| cfg.watch_progress_notify_interval = Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let url = cluster.client_urls()[0].clone();
    let rev = put_once(&url, "pn/a", b"1", 0).await.unwrap();
    let (tx, mut stream) = open_watch(
        &url,
        WatchCreateRequest {
            key: b"pn/".to_vec(),
            range_end: prefix_end("pn/"),
            progress_notify: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Nothing happens: a progress notification at the current revision.
    let resp = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        resp.events.is_empty() && !resp.canceled && !resp.created,
        "{resp:?}"
    );
    assert_eq!(resp.watch_id, 0);
    assert_eq!(resp.header.unwrap().revision, rev);

    // A write elsewhere moves the revision the next notification reports.
    let other = put_once(&url, "zz", b"1", 0).await.unwrap();
    let resp = loop {
        let r = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if r.header.as_ref().unwrap().revision == other {
            break r;
        }
    };
    assert!(resp.events.is_empty());

    // An explicit request is answered on watch ID -1 (etcd 3.4+).
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    })
    .await
    .unwrap();
    let resp = loop {
        let r = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if r.watch_id == -1 {
            break r;
        }
    };
    assert_eq!(resp.header.unwrap().revision, other);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_watcher_gets_large_responses_in_pieces_below_the_request_limit_and_grpcs_overhead(
) {
    let cluster = LocalCluster::builder()
        .members(1)
        .configure(|_, cfg| cfg.max_request_bytes = 64 * 1024)
        .start()
        .await
        .unwrap();
    let url = cluster.client_urls()[0].clone();
    // Twenty 60 KiB values, written before the watch starts so its history
    // replay carries them all in one logical response: 1.2 MB, over etcd's
    // threshold of the request limit and gRPC's overhead (64 + 512 KiB).
    let value = vec![b'f'; 60 * 1024];
    let mut first = 0;
    for n in 0..20 {
        let r = put_once(&url, &format!("fr/{n}"), &value, 0).await.unwrap();
        if n == 0 {
            first = r;
        }
    }
    let (_tx, mut stream) = open_watch(
        &url,
        WatchCreateRequest {
            key: b"fr/".to_vec(),
            range_end: prefix_end("fr/"),
            start_revision: first,
            fragment: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut parts = Vec::new();
    loop {
        let r = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let last = !r.fragment;
        parts.push(r);
        if last {
            break;
        }
    }
    assert!(parts.len() >= 3, "split into pieces: {}", parts.len());
    for p in &parts {
        assert!(prost::Message::encoded_len(p) < (64 + 512) * 1024);
    }
    let revs: Vec<i64> = parts
        .iter()
        .flat_map(|p| p.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision))
        .collect();
    assert_eq!(revs, (first..first + 20).collect::<Vec<_>>());
    cluster.shutdown().await.unwrap();
}

/// The mod revisions of the events `stream` delivers, in order of arrival,
/// once there are at least `count` (each response within [`WAIT`], none
/// canceled).
async fn revisions(stream: &mut tonic::Streaming<WatchResponse>, count: usize) -> Vec<i64> {
    let mut revs = Vec::new();
    while revs.len() < count {
        let resp = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .unwrap();
        assert!(!resp.canceled, "{resp:?}");
        revs.extend(
            resp.events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
    revs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_caught_up_not_dropped() {
    let cluster = LocalCluster::builder().members(1).start().await.unwrap();
    let url = cluster.client_urls()[0].clone();
    let (_tx, mut stream) = open_watch(
        &url,
        WatchCreateRequest {
            key: b"slow/".to_vec(),
            range_end: prefix_end("slow/"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Far more changes than the member buffers for one stream (its queue of
    // responses and the applied-changes broadcast), while nobody reads.
    let total = 3000;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let url = url.clone();
        writers.spawn(async move {
            for n in (w..total).step_by(4) {
                let key = format!("slow/{n:05}");
                retry("put", || put_once(&url, &key, b"v", 0)).await;
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    let revs = revisions(&mut stream, total).await;
    assert_eq!(revs.len(), total);
    assert!(
        revs.windows(2).all(|p| p[1] == p[0] + 1),
        "in order, no gap, no duplicate"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_opened_while_puts_flow_misses_no_revision() {
    // A member collects no events while no one listens; a watch stream that
    // opens in the middle of such a batch must still get every revision
    // after the one its watcher was created at.
    let cluster = LocalCluster::builder().members(1).start().await.unwrap();
    let url = cluster.client_urls()[0].clone();
    let (stop, stopped) = watch::channel(false);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (url, stopped) = (url.clone(), stopped.clone());
        writers.spawn(async move {
            let mut n = 0;
            while !*stopped.borrow() {
                let key = format!("flow/{w}/{n}");
                retry("put", || put_once(&url, &key, b"v", 0)).await;
                n += 1;
            }
        });
    }
    let mut kv = localcluster::client::kv(&url, RPC).await.unwrap();
    for _ in 0..60 {
        let from = kv
            .range(RangeRequest {
                key: b"flow/".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision
            + 1;
        // Each stream is mostly the member's only listener (the server may
        // still be closing the one before), so batches often begin unheard.
        let (tx, mut stream) = open_watch(
            &url,
            WatchCreateRequest {
                key: b"flow/".to_vec(),
                range_end: prefix_end("flow/"),
                start_revision: from,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let revs = revisions(&mut stream, 20).await;
        assert_eq!(revs[0], from, "from the revision asked for");
        assert!(
            revs.windows(2).all(|p| p[1] == p[0] + 1),
            "every revision, in order: {revs:?}"
        );
        drop((tx, stream));
    }
    stop.send(true).unwrap();
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_can_be_granted_with_its_own_id_once() {
    let cluster = LocalCluster::builder().members(1).start().await.unwrap();
    let url = cluster.client_urls()[0].clone();
    let mut leases = LeaseClient::new(channel(&url).await.unwrap());
    let resp = leases
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 4242 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.id, resp.ttl), (4242, 30));
    let err = leases
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 4242 })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: lease already exists");
    let err = leases
        .lease_grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: too large lease TTL");
    let err = put_once(&url, "k", b"v", 777).await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: requested lease not found");
    cluster.shutdown().await.unwrap();
}

/// The next response with events on `stream`: (type, value, previous value)
/// of each event.
async fn next_events(
    stream: &mut tonic::Streaming<WatchResponse>,
) -> Vec<(EventType, Vec<u8>, Option<Vec<u8>>)> {
    loop {
        let resp = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        if !resp.events.is_empty() {
            return resp
                .events
                .into_iter()
                .map(|e| {
                    let kind = e.r#type();
                    let value = e.kv.map(|kv| kv.value).unwrap_or_default();
                    (kind, value, e.prev_kv.map(|p| p.value))
                })
                .collect();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_watch_events_carry_the_previous_value_only_for_watchers_that_ask() {
    // Puts are applied without reading the previous value (their requests do
    // not ask for it); the watch server reads it for the watcher that does.
    let cluster = LocalCluster::builder().members(1).start().await.unwrap();
    let url = cluster.client_urls()[0].clone();
    put_once(&url, "pk/a", b"v1", 0).await.unwrap();
    let create = |prev_kv| WatchCreateRequest {
        key: b"pk/".to_vec(),
        range_end: prefix_end("pk/"),
        prev_kv,
        ..Default::default()
    };
    let (_tx1, mut with) = open_watch(&url, create(true)).await.unwrap();
    let (_tx2, mut without) = open_watch(&url, create(false)).await.unwrap();

    put_once(&url, "pk/a", b"v2", 0).await.unwrap();
    put_once(&url, "pk/b", b"new", 0).await.unwrap();
    let mut kv = localcluster::client::kv(&url, RPC).await.unwrap();
    kv.delete_range(localcluster::pb::etcdserverpb::DeleteRangeRequest {
        key: b"pk/a".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    put_once(&url, "pk/a", b"v3", 0).await.unwrap();

    let mut got = Vec::new();
    while got.len() < 4 {
        got.extend(next_events(&mut with).await);
    }
    use EventType::{Delete, Put};
    assert_eq!(
        got,
        vec![
            (Put, b"v2".to_vec(), Some(b"v1".to_vec())),
            (Put, b"new".to_vec(), None),
            (Delete, Vec::new(), Some(b"v2".to_vec())),
            (Put, b"v3".to_vec(), None),
        ]
    );
    let mut got = Vec::new();
    while got.len() < 4 {
        got.extend(next_events(&mut without).await);
    }
    assert!(got.iter().all(|(_, _, prev)| prev.is_none()), "{got:?}");
    cluster.shutdown().await.unwrap();
}

/// A request carrying clientv3's `WithRequireLeader` metadata.
fn requiring_leader<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_streams_that_require_a_leader_end_with_no_leader_once_it_is_lost() {
    let mut cluster = LocalCluster::builder().members(3).start().await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let url = cluster.client_urls()[follower].clone();
    let id = grant(&url, 60).await;

    // A watch and a keep-alive stream that require a leader, and a watch
    // that does not, all on the follower.
    let create = |key: &str| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    };
    let (watch_tx, watch_rx) = mpsc::channel(8);
    watch_tx.send(create("required")).await.unwrap();
    let mut required = WatchClient::new(channel(&url).await.unwrap())
        .watch(requiring_leader(
            tokio_stream::wrappers::ReceiverStream::new(watch_rx),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(required.message().await.unwrap().unwrap().created);
    let (_plain_tx, mut plain) = open_watch(
        &url,
        WatchCreateRequest {
            key: b"plain".to_vec(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (ka_tx, ka_rx) = mpsc::channel(8);
    ka_tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    let mut keep_alive = LeaseClient::new(channel(&url).await.unwrap())
        .lease_keep_alive(requiring_leader(
            tokio_stream::wrappers::ReceiverStream::new(ka_rx),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(keep_alive.message().await.unwrap().unwrap().ttl > 0);

    // Cut off, the follower loses its leader; after three election
    // timeouts without one, the streams that require it end, as in etcd.
    cluster.partition(&[&[follower], &[leader, other]]).unwrap();
    let no_leader = |end: Result<Option<_>, tonic::Status>, what: &str| match end {
        Err(s) => assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::Unavailable, "etcdserver: no leader"),
            "{what}"
        ),
        Ok(m) => panic!("{what} went on: {m:?}"),
    };
    let end = tokio::time::timeout(WAIT, required.message())
        .await
        .unwrap();
    no_leader(
        end.map(|m| m.map(|_| ())),
        "the watch that requires a leader",
    );
    let end = tokio::time::timeout(WAIT, keep_alive.message())
        .await
        .unwrap();
    no_leader(
        end.map(|m| m.map(|_| ())),
        "the keep-alive that requires a leader",
    );

    // A call that requires a leader is refused at once; the watch that
    // did not ask for one stays open.
    let mut kv = localcluster::client::kv(&url, RPC).await.unwrap();
    let put = kv
        .put(requiring_leader(PutRequest {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        }))
        .await;
    no_leader(put.map(|_| None::<()>), "a put that requires a leader");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), plain.message())
            .await
            .is_err(),
        "the watch that did not require a leader ended"
    );
    cluster.heal();
    cluster.shutdown().await.unwrap();
}
