//! etcd's server-side Lock and Election services (`v3lockpb`, `v3electionpb`),
//! as the Rust `etcd-client` crate's `lock()`/`campaign()` and etcd's gRPC
//! gateway use them: mutual exclusion by lease, release on unlock or on lease
//! revocation, leader election with proclaim, observe and resign.

use std::time::Duration;

use localcluster::pb::etcdserverpb::lease_client::LeaseClient;
use localcluster::pb::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use localcluster::pb::v3electionpb::election_client::ElectionClient;
use localcluster::pb::v3electionpb::{
    CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
};
use localcluster::pb::v3lockpb::lock_client::LockClient;
use localcluster::pb::v3lockpb::{LockRequest, UnlockRequest};
use localcluster::LocalCluster;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

async fn channel(url: &str) -> Channel {
    localcluster::client::connect(url, Duration::from_secs(5))
        .await
        .unwrap()
}

async fn lease(ch: &Channel, ttl: i64) -> i64 {
    LeaseClient::new(ch.clone())
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_exclusive_and_passes_on_unlock_or_lease_revocation() {
    let cluster = LocalCluster::builder().members(3).start().await.unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let a = channel(&cluster.client_urls()[0]).await;
    let b = channel(&cluster.client_urls()[1]).await;
    let (la, lb) = (lease(&a, 60).await, lease(&b, 60).await);

    let held = LockClient::new(a.clone())
        .lock(LockRequest {
            name: b"res".to_vec(),
            lease: la,
        })
        .await
        .unwrap()
        .into_inner()
        .key;
    assert!(held.starts_with(b"res/"));

    // B waits while A holds the lock...
    let mut lb_client = LockClient::new(b.clone());
    let waiting = tokio::spawn(async move {
        lb_client
            .lock(LockRequest {
                name: b"res".to_vec(),
                lease: lb,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "B got the lock while A held it");

    // ... and gets it once A unlocks.
    LockClient::new(a.clone())
        .unlock(UnlockRequest { key: held })
        .await
        .unwrap();
    let b_key = tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner()
        .key;

    // A lease revocation releases a lock too.
    let la2 = lease(&a, 60).await;
    let mut la_client = LockClient::new(a.clone());
    let waiting = tokio::spawn(async move {
        la_client
            .lock(LockRequest {
                name: b"res".to_vec(),
                lease: la2,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "A got the lock while B held it");
    LeaseClient::new(b.clone())
        .lease_revoke(LeaseRevokeRequest { id: lb })
        .await
        .unwrap();
    let a_key = tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner()
        .key;
    assert_ne!(a_key, b_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_has_one_leader_who_proclaims_observes_and_resigns() {
    let cluster = LocalCluster::builder().members(3).start().await.unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let a = channel(&cluster.client_urls()[0]).await;
    let b = channel(&cluster.client_urls()[2]).await;
    let (la, lb) = (lease(&a, 60).await, lease(&b, 60).await);
    let name = b"svc".to_vec();

    let leader_a = ElectionClient::new(a.clone())
        .campaign(CampaignRequest {
            name: name.clone(),
            lease: la,
            value: b"a".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();

    let mut observe = ElectionClient::new(b.clone())
        .observe(LeaderRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.kv.unwrap().value, b"a");

    let mut eb = ElectionClient::new(b.clone());
    let n = name.clone();
    let campaign_b = tokio::spawn(async move {
        eb.campaign(CampaignRequest {
            name: n,
            lease: lb,
            value: b"b".to_vec(),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!campaign_b.is_finished(), "two leaders at once");

    ElectionClient::new(a.clone())
        .proclaim(ProclaimRequest {
            leader: Some(leader_a.clone()),
            value: b"a2".to_vec(),
        })
        .await
        .unwrap();
    let now = ElectionClient::new(b.clone())
        .leader(LeaderRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.kv.unwrap().value, b"a2");
    let seen = tokio::time::timeout(WAIT, observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.kv.unwrap().value, b"a2");

    ElectionClient::new(a.clone())
        .resign(ResignRequest {
            leader: Some(leader_a.clone()),
        })
        .await
        .unwrap();
    let leader_b = tokio::time::timeout(WAIT, campaign_b)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert_eq!(leader_b.lease, lb);
    let seen = tokio::time::timeout(WAIT, observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.kv.unwrap().value, b"b");

    // The old leader can no longer proclaim.
    let err = ElectionClient::new(a.clone())
        .proclaim(ProclaimRequest {
            leader: Some(leader_a),
            value: b"late".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "election: not leader");
}
