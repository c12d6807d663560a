//! Runtime reconfiguration, as etcd's runbook does it: `MemberAdd` on the
//! running cluster, then the new member starts with
//! `--initial-cluster-state existing`, learns its identity from the others and
//! is brought up by the leader's snapshot; learners are promoted; a removed
//! member notices and stops. The embedded cluster's hooks (`add_member`,
//! `promote_member`, `remove_member`) do the same.

mod common;
use common::retry;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use localcluster::config::{ClusterState, EtcdUrl, MemberConfig};
use localcluster::member::{Listeners, Tuning};
use localcluster::pb::etcdserverpb::cluster_client::ClusterClient;
use localcluster::pb::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, PutRequest,
    RangeRequest,
};
use localcluster::{LocalCluster, Member};

const WAIT: Duration = Duration::from_secs(20);
const RPC: Duration = Duration::from_secs(5);
const TOKEN: &str = "membership-test";

fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

async fn cluster_client(url: &str) -> ClusterClient<tonic::transport::Channel> {
    ClusterClient::new(localcluster::client::connect(url, RPC).await.unwrap())
}

/// The config of a member joining `cluster` under `name` on the given URLs.
fn joining_config(
    cluster: &LocalCluster,
    name: &str,
    dir: &std::path::Path,
    client: &str,
    peer: &str,
) -> MemberConfig {
    let mut initial: Vec<(String, Vec<EtcdUrl>)> = cluster
        .members()
        .map(|m| (m.name.clone(), vec![EtcdUrl::parse(&m.peer_url).unwrap()]))
        .collect();
    initial.push((name.to_string(), vec![EtcdUrl::parse(peer).unwrap()]));
    MemberConfig {
        name: name.to_string(),
        data_dir: dir.join(name),
        listen_client_urls: vec![EtcdUrl::parse(client).unwrap()],
        advertise_client_urls: vec![EtcdUrl::parse(client).unwrap()],
        listen_peer_urls: vec![EtcdUrl::parse(peer).unwrap()],
        initial_advertise_peer_urls: vec![EtcdUrl::parse(peer).unwrap()],
        initial_cluster: initial,
        initial_cluster_token: TOKEN.to_string(),
        initial_cluster_state: ClusterState::Existing,
        heartbeat_interval: Duration::from_millis(20),
        election_timeout: Duration::from_millis(200),
        ..MemberConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_member_joins_by_snapshot_is_promoted_and_leaves_when_removed() {
    let cluster = LocalCluster::builder()
        .members(3)
        .cluster_token(TOKEN)
        .start()
        .await
        .unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let url = cluster.client_urls()[0].clone();

    // Data written before the new member exists reaches it by snapshot.
    let kv = localcluster::client::kv(&url, RPC).await.unwrap();
    for i in 0..20 {
        let req = PutRequest {
            key: format!("before/{i}").into_bytes().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        };
        retry("put", || {
            let mut kv = kv.clone();
            let req = req.clone();
            async move { kv.put(req).await }
        })
        .await;
    }

    // 1. MemberAdd, as a learner.
    let (peer_listener, peer_url) = bind();
    let (client_listener, client_url) = bind();
    let mut cc = cluster_client(&url).await;
    let added = retry("member add", || {
        let mut cc = cc.clone();
        let peer_url = peer_url.clone();
        async move {
            cc.member_add(MemberAddRequest {
                peer_ur_ls: vec![peer_url],
                is_learner: true,
            })
            .await
        }
    })
    .await
    .into_inner();
    let new = added.member.expect("the added member");
    assert!(new.is_learner);
    assert!(new.name.is_empty(), "unstarted until it publishes");
    assert_eq!(added.members.len(), 4);

    // etcd allows one learner at a time.
    let (_, second_peer) = bind();
    let err = cc
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![second_peer],
            is_learner: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster"
        )
    );

    // 2. The new member starts with --initial-cluster-state existing.
    let dir = tempfile::tempdir().unwrap();
    let cfg = joining_config(&cluster, "joiner", dir.path(), &client_url, &peer_url);
    let listeners = Listeners {
        client: vec![client_listener],
        peer: vec![peer_listener],
    };
    let joiner = Member::start_with(&cfg, listeners, Tuning::default()).unwrap();
    assert_eq!(joiner.id(), new.id, "it finds the ID the cluster gave it");
    tokio::time::timeout(WAIT, joiner.wait_ready())
        .await
        .expect("joiner publishes itself");

    let mut jkv = localcluster::client::kv(&client_url, RPC).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let range = RangeRequest {
            key: b"before/".to_vec(),
            range_end: b"before0".to_vec(),
            serializable: true,
            count_only: true,
            ..Default::default()
        };
        let count = jkv
            .range(range)
            .await
            .map(|r| r.into_inner().count)
            .unwrap_or(0);
        if count == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the joiner has {count} of 20 keys"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(joiner.status().learners.contains(&new.id));

    // 3. MemberPromote makes it a voter.
    retry("member promote", || {
        let mut cc = cc.clone();
        async move { cc.member_promote(MemberPromoteRequest { id: new.id }).await }
    })
    .await;
    let list = cc
        .member_list(MemberListRequest { linearizable: true })
        .await
        .unwrap()
        .into_inner();
    let listed = list
        .members
        .iter()
        .find(|m| m.id == new.id)
        .expect("listed");
    assert!(!listed.is_learner);
    assert_eq!(listed.name, "joiner");
    assert_eq!(listed.client_ur_ls, vec![client_url.clone()]);

    // 4. MemberRemove: the member notices and the others carry on with three.
    retry("member remove", || {
        let mut cc = cc.clone();
        async move { cc.member_remove(MemberRemoveRequest { id: new.id }).await }
    })
    .await;
    tokio::time::timeout(WAIT, joiner.removed())
        .await
        .expect("the removed member is told");
    let list = cc
        .member_list(MemberListRequest { linearizable: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.members.len(), 3);
    joiner.kill();

    // A removed ID is not found any more, as etcd answers.
    let again = cc
        .member_remove(MemberRemoveRequest { id: new.id })
        .await
        .unwrap_err();
    assert_eq!(again.message(), "etcdserver: member not found");
    let promote = cc
        .member_promote(MemberPromoteRequest { id: new.id })
        .await
        .unwrap_err();
    assert_eq!(promote.message(), "etcdserver: member not found");

    // Adding the same peer URL twice is refused with etcd's error.
    let dup = cluster.member(1).peer_url.clone();
    let err = cc
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![dup],
            is_learner: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: Peer URLs already exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_again_right_after_its_removal_gets_a_new_id() {
    let cluster = LocalCluster::builder()
        .members(1)
        .cluster_token(TOKEN)
        .start()
        .await
        .unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let url = cluster.client_urls()[0].clone();
    let mut cc = cluster_client(&url).await;
    let (_peer, peer_url) = bind();
    // Learners, so that the unstarted member does not count for quorum.
    let add = MemberAddRequest {
        peer_ur_ls: vec![peer_url],
        is_learner: true,
    };
    let first = cc.member_add(add.clone()).await.unwrap().into_inner();
    let first = first.member.unwrap().id;
    cc.member_remove(MemberRemoveRequest { id: first })
        .await
        .unwrap();
    // Within the same second the same URLs derive the same ID; a removed
    // ID is never given again (its peers would take it for the removed one).
    let again = cc.member_add(add).await.unwrap().into_inner();
    let again = again.member.unwrap().id;
    assert_ne!(again, first);
    let listed = cc.member_list(MemberListRequest::default()).await.unwrap();
    assert!(listed.get_ref().members.iter().any(|m| m.id == again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_was_never_added_cannot_join() {
    let cluster = LocalCluster::builder()
        .members(1)
        .cluster_token(TOKEN)
        .start()
        .await
        .unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let (peer_listener, peer_url) = bind();
    let (client_listener, client_url) = bind();
    let dir = tempfile::tempdir().unwrap();
    let cfg = joining_config(&cluster, "stranger", dir.path(), &client_url, &peer_url);
    let listeners = Listeners {
        client: vec![client_listener],
        peer: vec![peer_listener],
    };
    let err = Member::start_with(&cfg, listeners, Tuning::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not in the running cluster's membership"),
        "{err}"
    );
    assert!(err.contains("etcdctl member add stranger"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_cluster_grows_with_a_promoted_learner_and_shrinks_with_its_hooks() {
    let mut cluster = LocalCluster::builder()
        .members(3)
        .cluster_token(TOKEN)
        .start()
        .await
        .unwrap();
    let url = cluster.client_urls()[0].clone();
    let kv = localcluster::client::kv(&url, RPC).await.unwrap();
    retry("put", || {
        let mut kv = kv.clone();
        async move {
            kv.put(PutRequest {
                key: b"grown".to_vec().into(),
                value: b"yes".to_vec().into(),
                ..Default::default()
            })
            .await
        }
    })
    .await;

    // A learner, then promoted; then a voter.
    let learner = cluster.add_member(true).await.unwrap();
    assert_eq!(learner, 3);
    cluster.wait_healthy(WAIT).await.unwrap();
    let id = cluster.member(learner).id;
    assert!(cluster.status(learner).unwrap().learners.contains(&id));
    cluster.promote_member(learner).await.unwrap();
    let voter = cluster.add_member(false).await.unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    assert_eq!(cluster.status(leader).unwrap().voters.len(), 5);

    // The new voter has the data.
    let vkv = localcluster::client::kv(&cluster.member(voter).client_url, RPC)
        .await
        .unwrap();
    let got = retry("range", || {
        let mut vkv = vkv.clone();
        async move {
            vkv.range(RangeRequest {
                key: b"grown".to_vec(),
                ..Default::default()
            })
            .await
        }
    })
    .await
    .into_inner();
    assert_eq!(got.kvs[0].value, b"yes");

    // Shrink: the leader first, then another; removed members never return.
    cluster.remove_member(leader).await.unwrap();
    assert!(!cluster.is_running(leader));
    assert!(matches!(
        cluster.start(leader),
        Err(localcluster::ClusterError::Removed(i)) if i == leader
    ));
    let next = cluster.wait_leader(WAIT).await.unwrap();
    let other = (0..cluster.len())
        .find(|&i| i != next && cluster.is_running(i))
        .unwrap();
    cluster.remove_member(other).await.unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    assert_eq!(cluster.status(leader).unwrap().voters.len(), 3);
    let mut cc = cluster_client(&cluster.member(leader).client_url).await;
    let list = cc
        .member_list(MemberListRequest { linearizable: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.members.len(), 3);
}

#[test]
fn the_blocking_cluster_adds_and_removes_members() {
    let mut cluster = localcluster::blocking::LocalCluster::builder()
        .members(1)
        .cluster_token(TOKEN)
        .start_blocking()
        .unwrap();
    let added = cluster.add_member(false).unwrap();
    cluster.wait_healthy(WAIT).unwrap();
    assert_eq!(cluster.status(0).unwrap().voters.len(), 2);
    cluster.remove_member(added).unwrap();
    cluster.wait_healthy(WAIT).unwrap();
    assert_eq!(cluster.status(0).unwrap().voters.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_neither_counts_for_quorum_nor_serves_linearizable_requests() {
    let mut cluster = LocalCluster::builder()
        .members(1)
        .cluster_token(TOKEN)
        .start()
        .await
        .unwrap();
    let learner = cluster.add_member(true).await.unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();

    // A learner refuses writes and linearizable reads, serves serializable ones.
    let mut lkv = localcluster::client::kv(&cluster.member(learner).client_url, RPC)
        .await
        .unwrap();
    let put = PutRequest {
        key: b"k".to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    };
    let err = lkv.put(put.clone()).await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: rpc not supported for learner");
    let read = RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    };
    let err = lkv.range(read.clone()).await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: rpc not supported for learner");
    let serializable = RangeRequest {
        serializable: true,
        ..read
    };
    lkv.range(serializable).await.unwrap();

    // With the learner down, the single voter is still a quorum.
    cluster.kill(learner).unwrap();
    let kv = localcluster::client::kv(&cluster.client_urls()[0], RPC)
        .await
        .unwrap();
    retry("put without the learner", || {
        let mut kv = kv.clone();
        let put = put.clone();
        async move { kv.put(put).await }
    })
    .await;
    assert_eq!(cluster.status(0).unwrap().voters.len(), 1);
}
