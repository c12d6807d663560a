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

/// The keys under `prefix`, read from the member at `ch`.
async fn keys_under(ch: &Channel, prefix: &[u8]) -> Vec<Vec<u8>> {
    use localcluster::pb::etcdserverpb::kv_client::KvClient;
    use localcluster::pb::etcdserverpb::RangeRequest;
    let mut end = prefix.to_vec();
    *end.last_mut().unwrap() += 1;
    KvClient::new(ch.clone())
        .range(RangeRequest {
            key: prefix.to_vec(),
            range_end: end,
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

/// Polls `keys_under` until it has `n` keys, within [`WAIT`].
async fn until_keys(ch: &Channel, prefix: &[u8], n: usize) -> Vec<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let keys = keys_under(ch, prefix).await;
        if keys.len() == n || tokio::time::Instant::now() > deadline {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_leaves_no_key_behind() {
    let cluster = LocalCluster::builder().members(1).start().await.unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let ch = channel(&cluster.client_urls()[0]).await;
    let (la, lb) = (lease(&ch, 60).await, lease(&ch, 60).await);
    LockClient::new(ch.clone())
        .lock(LockRequest {
            name: b"gone".to_vec(),
            lease: la,
        })
        .await
        .unwrap();
    // B waits, then gives up (its deadline passes).
    let mut request = tonic::Request::new(LockRequest {
        name: b"gone".to_vec(),
        lease: lb,
    });
    request.set_timeout(Duration::from_millis(300));
    let gave_up = LockClient::new(ch.clone()).lock(request).await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    // As with etcd, only the holder's key is left...
    assert_eq!(until_keys(&ch, b"gone/", 1).await.len(), 1);
    // ...so when the holder goes, the lock is free for the next caller
    // (it was handed to B's orphaned key, held by nobody).
    LeaseClient::new(ch.clone())
        .lease_revoke(LeaseRevokeRequest { id: la })
        .await
        .unwrap();
    let next = lease(&ch, 60).await;
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        LockClient::new(ch.clone()).lock(LockRequest {
            name: b"gone".to_vec(),
            lease: next,
        }),
    )
    .await;
    assert!(matches!(got, Ok(Ok(_))), "{got:?}");

    // The same for a campaign.
    let mut e = ElectionClient::new(ch.clone());
    e.campaign(CampaignRequest {
        name: b"poll".to_vec(),
        lease: next,
        value: b"first".to_vec(),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(CampaignRequest {
        name: b"poll".to_vec(),
        lease: lease(&ch, 60).await,
        value: b"second".to_vec(),
    });
    request.set_timeout(Duration::from_millis(300));
    assert!(e.campaign(request).await.is_err());
    assert_eq!(until_keys(&ch, b"poll/", 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_naming_no_lease_get_one_each_and_only_one_leads() {
    let cluster = LocalCluster::builder().members(1).start().await.unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let ch = channel(&cluster.client_urls()[0]).await;
    let mut e = ElectionClient::new(ch.clone());
    let first = e
        .campaign(CampaignRequest {
            name: b"nolease".to_vec(),
            lease: 0,
            value: b"c1".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert_ne!(first.lease, 0, "a lease of its own, as etcd's session");
    // A second one waits: it does not share the first one's key.
    let mut request = tonic::Request::new(CampaignRequest {
        name: b"nolease".to_vec(),
        lease: 0,
        value: b"c2".to_vec(),
    });
    request.set_timeout(Duration::from_millis(500));
    let second = e.campaign(request).await;
    assert!(second.is_err(), "both lead: {second:?}");
    let leader = e
        .leader(LeaderRequest {
            name: b"nolease".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .kv
        .unwrap();
    assert_eq!(leader.value, b"c1".to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_name_is_a_lock_and_an_election_like_any_other() {
    let cluster = LocalCluster::builder().members(1).start().await.unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let ch = channel(&cluster.client_urls()[0]).await;
    let (l1, l2) = (lease(&ch, 60).await, lease(&ch, 60).await);
    let locked = LockClient::new(ch.clone())
        .lock(LockRequest {
            name: Vec::new(),
            lease: l1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(locked.key, format!("/{l1:x}").into_bytes());
    LockClient::new(ch.clone())
        .unlock(UnlockRequest { key: locked.key })
        .await
        .unwrap();
    let mut election = ElectionClient::new(ch.clone());
    let leader = election
        .campaign(CampaignRequest {
            name: Vec::new(),
            lease: l2,
            value: b"v".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let key = leader.leader.unwrap().key;
    assert_eq!(key, format!("/{l2:x}").into_bytes());
    let found = election
        .leader(LeaderRequest { name: Vec::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.kv.unwrap().key, key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_answers_with_the_header_of_its_own_claim_as_etcd_does() {
    let cluster = LocalCluster::builder().members(1).start().await.unwrap();
    cluster.wait_healthy(WAIT).await.unwrap();
    let ch = channel(&cluster.client_urls()[0]).await;
    let (la, lb) = (lease(&ch, 60).await, lease(&ch, 60).await);
    let campaign = |lease: i64| {
        let mut e = ElectionClient::new(ch.clone());
        async move {
            e.campaign(CampaignRequest {
                name: b"hdr".to_vec(),
                lease,
                value: b"v".to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let a = campaign(la).await;
    let a_key = a.leader.unwrap();
    assert_eq!(a.header.unwrap().revision, a_key.rev);
    // b waits while a leads; a's resignation moves the store on before b's
    // answer, whose header stays that of b's own put.
    let b = tokio::spawn(campaign(lb));
    tokio::time::sleep(Duration::from_millis(200)).await;
    ElectionClient::new(ch.clone())
        .resign(ResignRequest {
            leader: Some(a_key),
        })
        .await
        .unwrap();
    let b = tokio::time::timeout(WAIT, b).await.unwrap().unwrap();
    let b_rev = b.leader.unwrap().rev;
    assert_eq!(b.header.unwrap().revision, b_rev);
}
