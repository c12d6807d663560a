//! Discovery bootstrap (etcd 3.5's v3 discovery, `--discovery-endpoints` and
//! `--discovery-token`): a new cluster of N members finds its
//! `--initial-cluster` through an existing etcd-compatible cluster instead of
//! a static list.
//!
//! The layout in the discovery cluster is etcd's:
//! - `/_etcd/registry/<token>/_config/size` holds N (written beforehand by
//!   the operator);
//! - each member registers `/_etcd/registry/<token>/members/<member ID in
//!   hex>` with the value `name=peerURL[,name=peerURL...]`.
//!
//! The members that registered first (by the keys' create revision), up to
//! N, form the cluster; each member waits until N have registered and uses
//! them as its `--initial-cluster`. A member that arrives when N others are
//! already registered is refused with etcd's `discovery: cluster is full`
//! before it registers. Member IDs are derived from the peer URLs and
//! `--initial-cluster-token` as for a static bootstrap, so the ID a member
//! registers under is the ID it will have.
//!
//! Only a new member of a new cluster runs discovery; a restart uses its
//! data dir and never contacts the discovery service.

use std::time::Duration;

use super::MemberError;
use crate::api::recipes::prefix_end;
use crate::config::{format_initial_cluster, parse_initial_cluster, MemberConfig};
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::{PutRequest, RangeRequest};

/// etcd's discovery errors, word for word.
const FULL: &str = "discovery: cluster is full";
const SIZE_NOT_FOUND: &str = "discovery: size key not found";
const BAD_SIZE: &str = "discovery: size key is bad";

/// How often the registered members are read again while waiting for peers.
const POLL: Duration = Duration::from_millis(200);
/// Longest pause between attempts to reach the discovery service.
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// The keys of one cluster token.
struct Keys {
    size: String,
    members: String,
    mine: String,
}

impl Keys {
    fn new(token: &str, member_id: u64) -> Keys {
        let base = format!("/_etcd/registry/{token}");
        let members = format!("{base}/members");
        Keys {
            size: format!("{base}/_config/size"),
            mine: format!("{members}/{member_id:x}"),
            members,
        }
    }
}

/// One registered member: its key, `name=peerURL` value and create revision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registered {
    key: String,
    value: String,
    create_revision: i64,
}

/// Why one step of discovery failed.
enum Failure {
    /// The discovery service could not be reached or answered an error: retry.
    Transient(String),
    /// Discovery cannot succeed (full cluster, no or bad size key).
    Fatal(&'static str),
}

/// Returns `cfg` with `--initial-cluster` found by discovery. Blocks until
/// the cluster's size of members have registered.
pub(super) fn discover(cfg: &MemberConfig) -> Result<MemberConfig, MemberError> {
    let mut peer_urls: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .map(|u| u.as_str().to_string())
        .collect();
    peer_urls.sort();
    let member_id = crate::identity::member_id(&peer_urls, &cfg.initial_cluster_token, None);
    let mine =
        format_initial_cluster(&[(cfg.name.clone(), cfg.initial_advertise_peer_urls.clone())]);
    let keys = Keys::new(&cfg.discovery_token, member_id);
    let endpoints = cfg.discovery_endpoints.clone();
    tracing::info!(
        discovery_endpoints = %endpoints.join(","),
        discovery_token = %cfg.discovery_token,
        member_id = %format!("{member_id:x}"),
        "bootstrapping by discovery"
    );
    let found = std::thread::spawn(move || -> Result<String, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(join(&endpoints, &keys, &mine))
    })
    .join()
    .map_err(|_| MemberError::Config("discovery panicked".into()))?
    .map_err(MemberError::Config)?;
    let initial_cluster = parse_initial_cluster(&found).map_err(|_| {
        MemberError::Config(format!(
            "discovery: invalid peer URL (the discovery service returned {found:?})"
        ))
    })?;
    tracing::info!(cluster = %found, "discovery found the initial cluster");
    let mut cfg = cfg.clone();
    cfg.initial_cluster = initial_cluster;
    Ok(cfg)
}

/// Registers this member and waits for the others: etcd's `JoinCluster`.
async fn join(endpoints: &[String], keys: &Keys, mine: &str) -> Result<String, String> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt(endpoints, keys, mine).await {
            Ok(cluster) => return Ok(cluster),
            Err(Failure::Fatal(e)) => return Err(e.to_string()),
            Err(Failure::Transient(e)) => {
                tracing::warn!(error = %e, backoff = ?backoff, "retry connecting to discovery service");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn attempt(endpoints: &[String], keys: &Keys, mine: &str) -> Result<String, Failure> {
    let mut kv = connect(endpoints).await?;
    let (size, registered) = check(&mut kv, keys).await?;
    if !registered.iter().any(|r| r.key == keys.mine) {
        kv.put(PutRequest {
            key: keys.mine.clone().into_bytes().into(),
            value: mine.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .await
        .map_err(|s| Failure::Transient(s.message().to_string()))?;
        tracing::info!(member_key = %keys.mine, member_info = %mine, "registered with the discovery service");
    }
    loop {
        let (_, registered) = check(&mut kv, keys).await?;
        if registered.len() >= size {
            let values: Vec<&str> = registered
                .iter()
                .take(size)
                .map(|r| r.value.as_str())
                .collect();
            return Ok(values.join(","));
        }
        tracing::info!(
            cluster_size = size,
            found_peers = registered.len(),
            "waiting for peers from discovery service"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Reads the size and the registered members (in registration order), and
/// refuses when the cluster is full without this member.
async fn check(
    kv: &mut KvClient<tonic::transport::Channel>,
    keys: &Keys,
) -> Result<(usize, Vec<Registered>), Failure> {
    let got = kv
        .range(RangeRequest {
            key: keys.size.clone().into_bytes(),
            ..Default::default()
        })
        .await
        .map_err(|s| Failure::Transient(s.message().to_string()))?
        .into_inner();
    let value = got.kvs.first().ok_or(Failure::Fatal(SIZE_NOT_FOUND))?;
    let size = std::str::from_utf8(&value.value)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|n| *n > 0)
        .ok_or(Failure::Fatal(BAD_SIZE))? as usize;
    let prefix = keys.members.clone().into_bytes();
    let got = kv
        .range(RangeRequest {
            range_end: prefix_end(&prefix),
            key: prefix,
            ..Default::default()
        })
        .await
        .map_err(|s| Failure::Transient(s.message().to_string()))?
        .into_inner();
    let mut registered: Vec<Registered> = got
        .kvs
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(&kv.key).trim().to_string();
            let value = String::from_utf8_lossy(&kv.value).trim().to_string();
            value.contains('=').then_some(Registered {
                key,
                value,
                create_revision: kv.create_revision,
            })
        })
        .collect();
    registered.sort_by_key(|r| r.create_revision);
    if is_full(&registered, size, &keys.mine) {
        return Err(Failure::Fatal(FULL));
    }
    Ok((size, registered))
}

/// Whether `size` members registered before `mine` (which may not be registered yet).
fn is_full(registered: &[Registered], size: usize, mine: &str) -> bool {
    registered
        .iter()
        .position(|r| r.key == mine)
        .unwrap_or(registered.len())
        >= size
}

/// A KV client on the first discovery endpoint that answers.
async fn connect(endpoints: &[String]) -> Result<KvClient<tonic::transport::Channel>, Failure> {
    let mut last = "no --discovery-endpoints".to_string();
    for e in endpoints {
        match crate::client::kv(e, Duration::from_secs(2)).await {
            Ok(kv) => return Ok(kv),
            Err(err) => last = format!("{e}: {err}"),
        }
    }
    Err(Failure::Transient(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(key: &str, rev: i64) -> Registered {
        Registered {
            key: key.into(),
            value: format!("{key}=http://127.0.0.1:1"),
            create_revision: rev,
        }
    }

    #[test]
    fn keys_follow_etcds_layout() {
        let k = Keys::new("tok", 0xabc);
        assert_eq!(k.size, "/_etcd/registry/tok/_config/size");
        assert_eq!(k.members, "/_etcd/registry/tok/members");
        assert_eq!(k.mine, "/_etcd/registry/tok/members/abc");
    }

    #[test]
    fn the_first_registered_up_to_the_size_are_in_and_later_ones_are_refused() {
        let three = vec![reg("a", 1), reg("b", 2), reg("c", 3)];
        assert!(!is_full(&three, 3, "b"));
        assert!(!is_full(&three[..2], 3, "new"));
        assert!(is_full(&three, 3, "new"));
        assert!(is_full(
            &[reg("a", 1), reg("b", 2), reg("c", 3), reg("d", 4)],
            3,
            "d"
        ));
    }
}
