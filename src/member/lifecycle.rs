//! The member's background duties once it runs, each a task on the member's
//! runtime that ends with its shutdown token:
//!
//! - [`publish`]: announce the member's name and client URLs through Raft once a
//!   leader is known (etcd's `published local member to cluster`), after which
//!   the member is ready (`ready to serve client requests`);
//! - [`decide_cluster_version`]: on the leader, set the cluster version once
//!   every member has published (`enabled capabilities for version`);
//! - [`follow_membership`]: keep the peer senders in step with the applied
//!   membership, and notice when this member has been removed;
//! - [`advance_ticks`]: at start, bring the first election forward once the
//!   peers are reachable (etcd's `--initial-election-tick-advance`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::Core;
use crate::apply::CLUSTER_VERSION;
use crate::pb::lcraftpb::{request::Op, ClusterVersionRequest, Membership, PublishRequest};
use crate::raft::node::Msg;
use crate::raft::transport::Peers;

/// How long [`advance_ticks`] waits for peer connections (etcd's
/// `rafthttp.ConnReadTimeout`).
const PEER_WAIT: Duration = Duration::from_secs(5);

/// At start, moves the election clock forward so that the first election
/// does not wait a whole election timeout, as etcd does: a lone voter
/// advances by `election_ticks - 1` at once; in a cluster, once more than
/// one peer stream is up (within 5 s), by `election_ticks - 2`, leaving the
/// peers a couple of ticks to make a leader they already have known. The
/// node ignores it when it already knows a leader.
pub(super) async fn advance_ticks(
    core: Arc<Core>,
    peers: Arc<Peers>,
    election_ticks: usize,
    shutdown: CancellationToken,
) {
    let deadline = Instant::now() + PEER_WAIT;
    while Instant::now() < deadline {
        // The node publishes its configuration once its thread runs.
        let status = core.raft.status();
        if status.leader_id != 0 {
            return;
        }
        if status.voters == [core.member_id] {
            let ticks = election_ticks.saturating_sub(1);
            let _ = core.raft.send(Msg::AdvanceTicks(ticks));
            return;
        }
        let active = status
            .voters
            .iter()
            .filter(|&&v| v != core.member_id && peers.active_since(v).is_some())
            .count();
        if active > 1 {
            let ticks = election_ticks.saturating_sub(2);
            let _ = core.raft.send(Msg::AdvanceTicks(ticks));
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Publishes this member's name and client URLs through Raft once a leader is
/// known, retrying until it is applied; then the member is ready.
pub(super) async fn publish(
    core: Arc<Core>,
    name: String,
    client_urls: Vec<String>,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut status = core.raft.watch_status();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = status.wait_for(|s| s.leader_id != 0) => {}
            _ = shutdown.cancelled() => return,
        }
        let already = core
            .membership
            .borrow()
            .member(core.member_id)
            .map(|m| m.client_urls == client_urls && m.name == name)
            .unwrap_or(false);
        let result = if already {
            Ok(())
        } else {
            let op = Op::Publish(PublishRequest {
                member_id: core.member_id,
                name: name.clone(),
                client_urls: client_urls.clone(),
            });
            core.propose_cluster_record(op).await.map(|_| ())
        };
        match result {
            Ok(()) => {
                // Logged first: whoever waits for readiness (systemd's
                // notification) acts after the milestone is in the log.
                tracing::info!(name = %name, client_urls = ?client_urls, "ready to serve client requests");
                let _ = ready.send(true);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e.message(), "publish failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// On the leader: sets the cluster version once every member published (or
/// after a while with some members down), as etcd's leader does.
pub(super) async fn decide_cluster_version(
    core: Arc<Core>,
    election_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut leader_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.cancelled() => return,
        }
        let st = core.raft.status();
        if !st.is_leader {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        let (done, all) = {
            let m = core.membership.borrow();
            (m.cluster_version == CLUSTER_VERSION, m.all_published())
        };
        if done {
            return;
        }
        if all || since.elapsed() > election_timeout * 2 {
            let op = Op::ClusterVersion(ClusterVersionRequest {
                version: CLUSTER_VERSION.to_string(),
            });
            if core.propose_cluster_record(op).await.is_ok() {
                tracing::info!(
                    cluster_version = CLUSTER_VERSION,
                    "set initial cluster version"
                );
            }
        }
    }
}

/// Keeps the peer senders in step with the applied membership.
pub(super) async fn follow_membership(
    peers: Arc<Peers>,
    mut membership: watch::Receiver<Membership>,
    self_id: u64,
    shutdown: CancellationToken,
) {
    // A restart after the removal was applied finds it at once.
    if membership.borrow().removed.contains(&self_id) {
        peers.note_removed();
    }
    let mut known: std::collections::HashMap<u64, String> = membership
        .borrow()
        .members
        .iter()
        .filter_map(|m| m.peer_urls.first().map(|u| (m.id, u.clone())))
        .collect();
    loop {
        tokio::select! {
            r = membership.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
        if membership.borrow().removed.contains(&self_id) {
            peers.note_removed();
        }
        let now: std::collections::HashMap<u64, String> = membership
            .borrow()
            .members
            .iter()
            .filter_map(|m| m.peer_urls.first().map(|u| (m.id, u.clone())))
            .collect();
        for (id, url) in &now {
            if *id != self_id && known.get(id) != Some(url) {
                peers.add(*id, url.clone());
            }
        }
        for id in known.keys() {
            if !now.contains_key(id) {
                peers.remove(*id);
            }
        }
        known = now;
    }
}
