//! Whose data dir is this? A member's identity (member ID, cluster ID, name,
//! cluster token) is settled once, when its data dir is first used, and stored
//! in it:
//!
//! - a new member of a new cluster derives every ID from `--initial-cluster` and
//!   `--initial-cluster-token`, exactly as etcd does (see [`crate::identity`]),
//!   so all members agree without talking to each other; it only asks the
//!   others whether it already published itself in a running cluster (a lost
//!   data dir), and is refused if so ([`refuse_if_bootstrapped`]);
//! - a member joining a running cluster (`--initial-cluster-state existing`)
//!   asks the running members for the membership and finds itself by its peer
//!   URLs (it must have been added with `MemberAdd` first);
//! - a restarted member uses the stored identity and ignores the `--initial-*`
//!   flags, token included, as etcd does (a guide's restart may leave them
//!   out), but is refused when the data dir belongs to another member.

use std::time::Duration;

use futures::StreamExt as _;

use prost::Message as _;

use super::MemberError;
use crate::config::{ClusterState, MemberConfig};
use crate::identity;
use crate::pb::lcraftpb::{Identity, MemberInfo, Membership};
use crate::raft::RaftStorage;

/// Where a member's identity came from.
pub(super) enum Origin {
    /// The data dir already had it: a restart.
    Stored,
    /// A new member of a new cluster, derived from `--initial-cluster`.
    New,
    /// A new member of a running cluster, with the membership it fetched.
    Joining(Membership),
}

/// How this member dials `https://` peer URLs.
pub(super) type PeerTls = std::sync::Arc<tokio_rustls::rustls::ClientConfig>;

/// Works out who this data dir belongs to: the stored identity, or a new one
/// derived from the flags (or fetched from the running cluster).
/// `ask_peers`: whether a new member of a new cluster asks the others if it
/// already published itself ([`refuse_if_bootstrapped`]).
pub(super) fn resolve_identity(
    cfg: &MemberConfig,
    storage: &RaftStorage,
    peer_tls: Option<PeerTls>,
    ask_peers: bool,
) -> Result<(Identity, Origin), MemberError> {
    if let Some(bytes) = storage.identity()? {
        let stored = Identity::decode(bytes.as_slice()).map_err(|e| {
            MemberError::DataDir(format!(
                "corrupt identity record in {}: {e}",
                cfg.data_dir.display()
            ))
        })?;
        check_stored(cfg, &stored)?;
        return Ok((stored, Origin::Stored));
    }
    cfg.validate_bootstrap()
        .map_err(|e| MemberError::Config(e.to_string()))?;
    if cfg.initial_cluster_state == ClusterState::Existing {
        let (identity, membership) = join_identity(cfg, peer_tls)?;
        return Ok((identity, Origin::Joining(membership)));
    }
    let identity = derive_identity(cfg)?;
    if ask_peers {
        refuse_if_bootstrapped(cfg, &identity, peer_tls)?;
    }
    Ok((identity, Origin::New))
}

/// Refuses to bootstrap a new cluster when the other members listed in
/// `--initial-cluster` already run one in which this member (its ID) has
/// published itself: its data dir was lost or is another one, and starting
/// afresh would forget its Raft term, vote and log (etcd's
/// `isMemberBootstrapped`, `member <id> has already been bootstrapped`).
/// The first member to answer settles it; when none answers within
/// [`BOOTSTRAP_CHECK`] (a first bootstrap: the others are starting too),
/// the member goes on, as etcd's does.
fn refuse_if_bootstrapped(
    cfg: &MemberConfig,
    identity: &Identity,
    peer_tls: Option<PeerTls>,
) -> Result<(), MemberError> {
    let others = other_peer_urls(cfg, &own_peer_urls(cfg));
    if others.is_empty() {
        return Ok(());
    }
    let answer = block_on_aside(async move {
        let mut asks: futures::stream::FuturesUnordered<_> = others
            .iter()
            .map(|url| fetch_membership(url, peer_tls.clone()))
            .collect();
        let first = async {
            while let Some(answer) = asks.next().await {
                if let Ok(membership) = answer {
                    return Some(membership);
                }
            }
            None
        };
        tokio::time::timeout(BOOTSTRAP_CHECK, first)
            .await
            .ok()
            .flatten()
    })
    .ok()
    .flatten();
    let published = answer.as_ref().and_then(|m| {
        m.members
            .iter()
            .find(|m| m.id == identity.member_id && !m.client_urls.is_empty())
    });
    match published {
        Some(m) => Err(MemberError::DataDir(format!(
            "member {:x} has already been bootstrapped: the other members run the cluster it belongs to, but data dir {} is empty; restart it with its own data dir, or remove it (etcdctl member remove {:x}) and add it again",
            m.id,
            cfg.data_dir.display(),
            m.id
        ))),
        None => Ok(()),
    }
}

/// How long a new member waits for the other members' answer to whether
/// it already belongs to their cluster (etcd's bootstrap timeout, at least).
const BOOTSTRAP_CHECK: Duration = Duration::from_secs(1);

/// This member's `--initial-advertise-peer-urls`, sorted.
fn own_peer_urls(cfg: &MemberConfig) -> Vec<String> {
    let mut mine: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .map(|u| u.as_str().to_string())
        .collect();
    mine.sort();
    mine
}

/// The peer URLs of `--initial-cluster` that are not `mine`.
fn other_peer_urls(cfg: &MemberConfig, mine: &[String]) -> Vec<String> {
    cfg.initial_cluster
        .iter()
        .flat_map(|(_, urls)| urls.iter().map(|u| u.as_str().to_string()))
        .filter(|u| !mine.contains(u))
        .collect()
}

/// Refuses a data dir that belongs to another member. The `--initial-*`
/// flags are ignored, as etcd ignores them once a member has bootstrapped
/// (`the server is already initialized as member before`): a token that
/// differs from the stored one is only noted.
fn check_stored(cfg: &MemberConfig, stored: &Identity) -> Result<(), MemberError> {
    if stored.name != cfg.name {
        return Err(MemberError::DataDir(format!(
            "data dir {} belongs to member {:?} ({:x}), not {:?}",
            cfg.data_dir.display(),
            stored.name,
            stored.member_id,
            cfg.name
        )));
    }
    if stored.cluster_token != cfg.initial_cluster_token {
        tracing::info!(
            data_dir = %cfg.data_dir.display(),
            cluster_id = %format!("{:x}", stored.cluster_id),
            stored_token = %stored.cluster_token,
            given_token = %cfg.initial_cluster_token,
            "the server is already initialized as member before, starting as etcd member; --initial-cluster-token and the other --initial-cluster flags are ignored"
        );
    }
    Ok(())
}

/// A member joining a running cluster: asks the members listed in
/// `--initial-cluster` for the membership and finds itself by its peer URLs (it
/// must have been added with `MemberAdd` first, as with etcd).
fn join_identity(
    cfg: &MemberConfig,
    peer_tls: Option<PeerTls>,
) -> Result<(Identity, Membership), MemberError> {
    let mine = own_peer_urls(cfg);
    let others = other_peer_urls(cfg, &mine);
    let fetched = block_on_aside(async move {
        let mut last = "no other member in --initial-cluster".to_string();
        for url in others {
            match fetch_membership(&url, peer_tls.clone()).await {
                Ok(m) => return Ok(m),
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(last)
    })
    .map_err(MemberError::Config)?
    .map_err(|e| {
        MemberError::Config(format!("cannot reach the running cluster to join it: {e}"))
    })?;
    let me = fetched.members.iter().find(|m| {
        let mut urls = m.peer_urls.clone();
        urls.sort();
        urls == mine
    });
    let Some(me) = me else {
        return Err(MemberError::Config(format!(
            "peer URLs {} are not in the running cluster's membership; add the member first (etcdctl member add {} --peer-urls={})",
            mine.join(","),
            cfg.name,
            mine.join(",")
        )));
    };
    let identity = Identity {
        cluster_id: fetched.cluster_id,
        member_id: me.id,
        name: cfg.name.clone(),
        cluster_token: cfg.initial_cluster_token.clone(),
    };
    Ok((identity, fetched))
}

/// Runs `work` to its end on a runtime of its own, on a thread of its own
/// that is joined before returning: a member may be started from inside a
/// tokio runtime, where blocking on another would panic.
fn block_on_aside<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime to ask the peers: {e}"))?;
        Ok(rt.block_on(work))
    })
    .join()
    .map_err(|_| "asking the peers panicked".to_string())?
}

async fn fetch_membership(url: &str, peer_tls: Option<PeerTls>) -> Result<Membership, String> {
    let channel = crate::client::connect_with(url, Duration::from_secs(2), peer_tls)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = crate::pb::lcraftpb::raft_transport_client::RaftTransportClient::new(channel);
    client
        .members(crate::pb::lcraftpb::ProbeRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
}

pub(super) fn derive_identity(cfg: &MemberConfig) -> Result<Identity, MemberError> {
    let ids: Vec<(String, u64)> = cfg
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            let urls: Vec<String> = urls.iter().map(|u| u.as_str().to_string()).collect();
            (
                name.clone(),
                identity::member_id(&urls, &cfg.initial_cluster_token, None),
            )
        })
        .collect();
    let mut member_ids: Vec<u64> = ids.iter().map(|(_, id)| *id).collect();
    member_ids.sort_unstable();
    member_ids.dedup();
    let cluster_id = identity::cluster_id(&member_ids);
    let member_id = ids
        .iter()
        .find(|(n, _)| n == &cfg.name)
        .map(|(_, id)| *id)
        .ok_or_else(|| {
            MemberError::Config(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                cfg.name
            ))
        })?;
    Ok(Identity {
        cluster_id,
        member_id,
        name: cfg.name.clone(),
        cluster_token: cfg.initial_cluster_token.clone(),
    })
}

pub(super) fn initial_membership(
    cfg: &MemberConfig,
    cluster_id: u64,
) -> Result<Membership, MemberError> {
    let mut membership = Membership {
        cluster_id,
        ..Default::default()
    };
    for (_name, urls) in &cfg.initial_cluster {
        let urls: Vec<String> = urls.iter().map(|u| u.as_str().to_string()).collect();
        let id = identity::member_id(&urls, &cfg.initial_cluster_token, None);
        // As in etcd, a member's name and client URLs stay empty ("unstarted")
        // until it publishes them itself.
        membership.upsert(MemberInfo {
            id,
            name: String::new(),
            peer_urls: urls,
            client_urls: vec![],
            is_learner: false,
        });
    }
    Ok(membership)
}
