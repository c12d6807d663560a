//! The Cluster service: the membership, and runtime reconfiguration.
//!
//! `MemberList` answers from the replicated membership (names and client URLs
//! appear once each member has published itself). `MemberAdd`, `MemberRemove`,
//! `MemberUpdate` and `MemberPromote` propose a Raft configuration change whose
//! context carries the member's record; the call returns once the change is
//! applied on this member. A new member's ID is derived as etcd derives it for
//! runtime additions: from its peer URLs, the cluster token and the current time.
//! The new member then starts with `--initial-cluster-state existing` and learns
//! its identity from the running members (see `crate::member`).
//!
//! Before proposing, a change passes etcd's strict reconfiguration check
//! ([`super::reconfig`]): no change may leave the cluster without a quorum of
//! started, connected voters, and a learner is promoted only once it is in
//! sync with the leader (a follower asks the leader for its progress over the
//! peer `Progress` RPC, as etcd forwards a promotion to its leader). Then it
//! passes etcd's membership rules on this member's view
//! (`Membership::validate`), which every member checks again when it applies
//! the change (see `crate::membership`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use raft::prelude::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use tonic::{Code, Request, Response, Status};

use super::reconfig::{self, Refusal};
use super::{errors, Core};
use crate::apply::Applied;
use crate::config::EtcdUrl;
use crate::identity;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::pb::lcraftpb::{ConfChangeContext, ConfChangeIntent, MemberInfo};

/// The Cluster service of one member.
pub struct ClusterService {
    core: Arc<Core>,
}

impl ClusterService {
    pub fn new(core: Arc<Core>) -> Self {
        ClusterService { core }
    }

    /// Proposes one configuration change and waits for it to be applied here.
    async fn change(
        &self,
        kind: ConfChangeType,
        intent: ConfChangeIntent,
        id: u64,
        member: MemberInfo,
    ) -> Result<Vec<MemberInfo>, Status> {
        self.core.unpaused().await;
        self.core.wait_for_leader().await?;
        let request_id = self.core.ids.next();
        let context = ConfChangeContext {
            member: Some(member),
            request_id,
            intent: intent.into(),
        }
        .encode_to_vec();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.mut_changes().push(single);
        let rx = self.core.waiters.register(request_id);
        if let Err(e) = self.core.raft.propose_conf_change(cc, context).await {
            self.core.waiters.cancel(request_id);
            return Err(errors::from_raft(e));
        }
        match tokio::time::timeout(self.core.limits.request_timeout, rx).await {
            Ok(Ok(Ok((Applied::Members(members), _)))) => Ok(members),
            Ok(Ok(Ok(_))) => Err(Status::internal("unexpected apply result")),
            Ok(Ok(Err(e))) => Err(errors::from_apply(e)),
            Ok(Err(_)) => Err(errors::stopped()),
            Err(_) => {
                self.core.waiters.cancel(request_id);
                Err(errors::timeout())
            }
        }
    }

    /// etcd's Cluster service header: cluster and member ID and term, no
    /// revision (membership is not in the key-value store).
    fn header(&self) -> Option<crate::pb::etcdserverpb::ResponseHeader> {
        self.core.header(0)
    }

    /// Parses peer URLs as etcd does, normalised to their Go form.
    fn peer_urls(urls: &[String]) -> Result<Vec<String>, Status> {
        if urls.is_empty() {
            return Err(Status::new(Code::InvalidArgument, errors::MEMBER_BAD_URLS));
        }
        let mut out = Vec::new();
        for u in urls {
            let parsed = EtcdUrl::parse(u)
                .map_err(|_| Status::new(Code::InvalidArgument, errors::MEMBER_BAD_URLS))?;
            out.push(parsed.as_str().to_string());
        }
        out.sort();
        Ok(out)
    }

    /// Checks a change against this member's view of the membership, by
    /// the rules every member applies it by (see `crate::membership`): a
    /// change refused here is not proposed at all.
    fn validate(
        &self,
        intent: ConfChangeIntent,
        id: u64,
        member: &MemberInfo,
    ) -> Result<(), Status> {
        self.core
            .membership
            .borrow()
            .validate(intent, id, member)
            .map_err(errors::from_membership)
    }

    /// Runs one rule of the strict reconfiguration check against the current
    /// membership and this member's peer connections.
    fn check(
        &self,
        rule: impl FnOnce(&crate::pb::lcraftpb::Membership, &reconfig::Peers<'_>) -> Result<(), Refusal>,
    ) -> Result<(), Status> {
        if !self.core.limits.strict_reconfig {
            return Ok(());
        }
        let membership = self.core.membership.borrow().clone();
        let active = |id: u64| self.core.peers.active_since(id);
        let peers = reconfig::Peers {
            self_id: self.core.member_id,
            active_since: &active,
            health_interval: self.core.limits.health_interval,
        };
        rule(&membership, &peers).map_err(|r| {
            tracing::warn!(refusal = %r, "rejecting a membership change");
            refusal(r)
        })
    }

    /// Refuses to promote learner `id` unless the leader finds it in sync.
    async fn check_learner_ready(&self, id: u64) -> Result<(), Status> {
        self.core.wait_for_leader().await?;
        let progress = match self.core.raft.progress().await? {
            Some(p) => p,
            None => self.leader_progress().await?,
        };
        reconfig::check_learner_ready(&progress, id).map_err(refusal)
    }

    /// The leader's progress tracker, fetched over its peer URL.
    async fn leader_progress(&self) -> Result<crate::raft::node::LeaderProgress, Status> {
        let leader = self.core.raft.leader_id();
        let url = self
            .core
            .membership
            .borrow()
            .member(leader)
            .and_then(|m| m.peer_urls.first().cloned())
            .ok_or_else(errors::no_leader)?;
        // A peer URL: dialed as the member dials its peers (with its peer
        // certificate, which a peer CA requires).
        let channel =
            crate::client::connect_with(&url, self.core.limits.leader_wait, self.core.peers.tls())
                .await
                .map_err(|_| errors::no_leader())?;
        let answer = crate::pb::lcraftpb::raft_transport_client::RaftTransportClient::new(channel)
            .progress(crate::pb::lcraftpb::ProbeRequest {})
            .await
            .map_err(|_| errors::no_leader())?
            .into_inner();
        if !answer.is_leader {
            return Err(Status::new(Code::Unavailable, errors::LEADER_CHANGED));
        }
        Ok(crate::raft::node::LeaderProgress {
            leader_id: answer.leader_id,
            matched: answer.matched.iter().map(|m| (m.id, m.index)).collect(),
        })
    }

    /// The member `id`; a removed ID is not found either, as in etcd.
    fn existing(&self, id: u64) -> Result<MemberInfo, Status> {
        self.core
            .membership
            .borrow()
            .member(id)
            .cloned()
            .ok_or_else(errors::member_not_found)
    }
}

/// A refused reconfiguration as etcd reports it.
fn refusal(r: Refusal) -> Status {
    let code = match r {
        Refusal::NotEnoughStarted | Refusal::LearnerNotReady => Code::FailedPrecondition,
        Refusal::Unhealthy => Code::Unavailable,
    };
    Status::new(code, r.to_string())
}

/// A recorded member as etcd's wire `Member`.
pub fn member_to_pb(m: &MemberInfo) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.core.authorize_admin(&request)?;
        let req = request.into_inner();
        let urls = Self::peer_urls(&req.peer_ur_ls)?;
        // In etcd's order: the strict check, then what its apply validates.
        self.check(|m, p| reconfig::check_add(m, req.is_learner, p))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // An ID the cluster gave before (removed since) is never given
        // again: its peers would take the new member for the removed one.
        // A second earlier add and remove of the same URLs derive the same
        // ID, so the next second's is taken (IDs only need to be unique).
        let id = {
            let membership = self.core.membership.borrow();
            let mut at = now;
            loop {
                let id = identity::member_id(&urls, &self.core.cluster_token, Some(at));
                if !membership.removed.contains(&id) && membership.member(id).is_none() {
                    break id;
                }
                at += 1;
            }
        };
        let info = MemberInfo {
            id,
            name: String::new(),
            peer_urls: urls,
            client_urls: vec![],
            is_learner: req.is_learner,
        };
        self.validate(ConfChangeIntent::Add, id, &info)?;
        let kind = if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = self
            .change(kind, ConfChangeIntent::Add, id, info.clone())
            .await?;
        tracing::info!(member_id = %format!("{id:x}"), peer_urls = ?info.peer_urls, learner = req.is_learner, "added member to cluster");
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(member_to_pb(&info)),
            members: members.iter().map(member_to_pb).collect(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.core.authorize_admin(&request)?;
        let id = request.into_inner().id;
        let info = self.existing(id)?;
        self.check(|m, p| reconfig::check_remove(m, id, p))?;
        let members = self
            .change(
                ConfChangeType::RemoveNode,
                ConfChangeIntent::Remove,
                id,
                info,
            )
            .await?;
        tracing::info!(member_id = %format!("{id:x}"), "removed member from cluster");
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: members.iter().map(member_to_pb).collect(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.core.authorize_admin(&request)?;
        let req = request.into_inner();
        let mut info = self.existing(req.id)?;
        info.peer_urls = Self::peer_urls(&req.peer_ur_ls)?;
        self.validate(ConfChangeIntent::Update, req.id, &info)?;
        let kind = if info.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = self
            .change(kind, ConfChangeIntent::Update, req.id, info)
            .await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: members.iter().map(member_to_pb).collect(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.core.read_barrier().await?;
        } else {
            self.core.unpaused().await;
        }
        let members = self
            .core
            .membership
            .borrow()
            .members
            .iter()
            .map(member_to_pb)
            .collect();
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.core.authorize_admin(&request)?;
        let id = request.into_inner().id;
        let info = self.existing(id)?;
        // In etcd's order: a member the leader finds behind is "not in sync"
        // (even a voter that never started), then the strict check, then
        // what its apply validates.
        self.check_learner_ready(id).await?;
        self.check(|m, _| reconfig::check_promote_quorum(m))?;
        self.validate(ConfChangeIntent::Promote, id, &info)?;
        let members = self
            .change(ConfChangeType::AddNode, ConfChangeIntent::Promote, id, info)
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: members.iter().map(member_to_pb).collect(),
        }))
    }
}
