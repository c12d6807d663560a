//! Membership hooks of the embedded cluster: grow it with
//! [`LocalCluster::add_member`] (a voter or a learner), promote a learner with
//! [`LocalCluster::promote_member`], shrink it with
//! [`LocalCluster::remove_member`], all through the Cluster service of a
//! running member, as `etcdctl member add|promote|remove` would.
//!
//! A new member gets the next index (`m{len}`), free loopback ports and a data
//! dir beside the others, and starts with `--initial-cluster-state existing`:
//! it learns its ID from the running members and catches up by the leader's
//! snapshot. A removed member keeps its index (indices never shift) but is
//! stopped for good: [`LocalCluster::start`] refuses it.
//!
//! Refusals of the cluster (etcd's strict reconfiguration check, a learner not
//! yet in sync) come back as [`ClusterError::Reconfig`] with etcd's message.

use std::time::{Duration, Instant};

use tonic::Code;

use super::builder::{self, local_addr, url_of};
use super::{ClusterError, LocalCluster, MemberInfo, Slot};
use crate::config::{ClusterState, EtcdUrl};
use crate::member::{Listeners, Member};
use crate::pb::etcdserverpb::cluster_client::ClusterClient;
use crate::pb::etcdserverpb::{MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest};

/// How long a membership call retries while the cluster is unavailable (an
/// election, a member still connecting).
const PATIENCE: Duration = Duration::from_secs(10);

impl LocalCluster {
    /// Adds a member (a learner if `learner`) and starts it; returns its index.
    /// Returns once the member runs, not once it caught up (see
    /// [`LocalCluster::wait_healthy`]).
    pub async fn add_member(&mut self, learner: bool) -> Result<usize, ClusterError> {
        let index = self.slots.len();
        let name = format!("m{index}");
        let template = self
            .slots
            .first()
            .map(|s| s.config.clone())
            .ok_or(ClusterError::NoMembers)?;
        let client = builder::bind(&name, 0)?;
        let peer = builder::bind(&name, 0)?;
        let client_addr = local_addr(&name, &client)?;
        let peer_addr = local_addr(&name, &peer)?;
        let client_url = url_of(&name, client_addr)?;
        let peer_url = url_of(&name, peer_addr)?;

        let req = MemberAddRequest {
            peer_ur_ls: vec![peer_url.as_str().to_string()],
            is_learner: learner,
        };
        let added = self
            .call("member add", None, |mut c| {
                let req = req.clone();
                async move { c.member_add(req).await }
            })
            .await?;
        let id = added.member.map(|m| m.id).unwrap_or_default();

        let mut initial_cluster: Vec<(String, Vec<EtcdUrl>)> = Vec::new();
        for s in self.slots.iter().filter(|s| !s.removed) {
            initial_cluster.push((s.info.name.clone(), vec![url_of(&name, s.info.peer_addr)?]));
        }
        initial_cluster.push((name.clone(), vec![peer_url.clone()]));
        let base = template
            .data_dir
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        let mut config = template;
        config.name = name.clone();
        config.data_dir = base.join(&name);
        config.listen_client_urls = vec![client_url.clone()];
        config.advertise_client_urls = vec![client_url.clone()];
        config.listen_peer_urls = vec![peer_url.clone()];
        config.initial_advertise_peer_urls = vec![peer_url.clone()];
        config.initial_cluster = initial_cluster;
        config.initial_cluster_state = ClusterState::Existing;

        let mut tuning = self.tuning.clone();
        if let Some(groups) = &mut self.groups {
            // A member added during a partition is alone until the heal: the
            // others drop its traffic before it can say or hear anything, and
            // it drops theirs from its start (a peer's connection reached its
            // listener as soon as the member add was applied).
            let own = groups.iter().max().map_or(0, |g| g + 1);
            groups.push(own);
            for (i, s) in self.slots.iter().enumerate() {
                if let Some(m) = &s.member {
                    m.block_peers(self.blocked_for(i).into_iter().chain([id]));
                }
            }
            tuning.blocked_peers = self.slots.iter().map(|s| s.info.id).collect();
        }
        let started = Member::start_with(
            &config,
            Listeners {
                client: vec![client],
                peer: vec![peer],
            },
            tuning,
        )
        .map_err(|source| ClusterError::Start {
            name: name.clone(),
            source,
        })
        .and_then(|member| {
            if member.id() == id {
                Ok(member)
            } else {
                Err(ClusterError::Config {
                    name: name.clone(),
                    reason: format!("joined with ID {:x}, added as {id:x}", member.id()),
                })
            }
        });
        let member = match started {
            Ok(member) => member,
            Err(e) => {
                // The cluster counts the added member already: a voter that
                // never runs would cost it a member of its quorum, and the
                // caller has no index to remove it by.
                let undone = self
                    .call("member remove", None, |mut c| async move {
                        c.member_remove(MemberRemoveRequest { id }).await
                    })
                    .await;
                if let Err(undo) = undone {
                    tracing::warn!(member_id = %format!("{id:x}"), error = %undo, "cannot remove a member that failed to start");
                }
                if let Some(groups) = &mut self.groups {
                    groups.truncate(index);
                }
                return Err(e);
            }
        };
        self.slots.push(Slot {
            info: MemberInfo {
                index,
                name,
                id,
                client_url: client_url.as_str().to_string(),
                peer_url: peer_url.as_str().to_string(),
                client_addr,
                peer_addr,
                data_dir: config.data_dir.clone(),
            },
            config,
            member: Some(member),
            paused: false,
            removed: false,
            held: Default::default(),
        });
        if self.groups.is_some() {
            self.block_all();
        }
        Ok(index)
    }

    /// Promotes learner `i` to a voter. The cluster refuses while the learner
    /// has not caught up with the leader; this retries that refusal for a
    /// while, then returns it.
    pub async fn promote_member(&mut self, i: usize) -> Result<(), ClusterError> {
        let id = self.slot(i)?.info.id;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r = self
                .call("member promote", None, |mut c| async move {
                    c.member_promote(MemberPromoteRequest { id }).await
                })
                .await;
            match r {
                Err(ClusterError::Reconfig(m))
                    if m.contains("in sync with leader") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// Removes member `i` from the cluster (asking another member), then stops
    /// it for good. Its index stays taken; it can never start again.
    pub async fn remove_member(&mut self, i: usize) -> Result<(), ClusterError> {
        let id = self.slot(i)?.info.id;
        if self.slot(i)?.removed {
            return Err(ClusterError::Removed(i));
        }
        self.call("member remove", Some(i), |mut c| async move {
            c.member_remove(MemberRemoveRequest { id }).await
        })
        .await?;
        let slot = self.slot_mut(i)?;
        slot.removed = true;
        slot.paused = false;
        // Never to run again: its ports are let go.
        slot.held = Default::default();
        if let Some(member) = slot.member.take() {
            member.stop().await;
        }
        Ok(())
    }

    /// Runs one Cluster call on a running member (other than `avoid` when
    /// possible), retrying while it is unavailable.
    async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        avoid: Option<usize>,
        op: F,
    ) -> Result<T, ClusterError>
    where
        F: Fn(ClusterClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + PATIENCE;
        let mut last = String::from("no running member to ask");
        loop {
            let mut asked = false;
            let targets = self
                .slots
                .iter()
                .filter(|s| s.live().is_some())
                .filter(|s| Some(s.info.index) != avoid)
                .chain(
                    self.slots
                        .iter()
                        .filter(|s| Some(s.info.index) == avoid && s.live().is_some()),
                );
            for slot in targets {
                asked = true;
                let channel =
                    match crate::client::connect(&slot.info.client_url, Duration::from_secs(2))
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            last = e.to_string();
                            continue;
                        }
                    };
                match op(ClusterClient::new(channel)).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s)
                        if s.code() == Code::Unavailable && s.message().contains("unhealthy") =>
                    {
                        last = s.message().to_string();
                        break;
                    }
                    Err(s) if s.code() == Code::Unavailable => last = s.message().to_string(),
                    Err(s) => return Err(ClusterError::Reconfig(s.message().to_string())),
                }
            }
            if Instant::now() >= deadline {
                return Err(if asked {
                    ClusterError::Reconfig(format!("{what}: {last}"))
                } else {
                    ClusterError::NoLeader
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
