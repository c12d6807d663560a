//! The Cluster service: the membership as this member has applied it.
//!
//! `MemberList` answers from the replicated membership (names and client URLs
//! appear once each member has published itself). Runtime reconfiguration
//! (`MemberAdd`, `MemberRemove`, `MemberUpdate`, `MemberPromote`) answers
//! `etcdserver: not capable` for now: clusters are formed statically with
//! `--initial-cluster`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{errors, Core};
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::pb::lcraftpb::MemberInfo;

/// The Cluster service of one member.
pub struct ClusterService {
    core: Arc<Core>,
}

impl ClusterService {
    pub fn new(core: Arc<Core>) -> Self {
        ClusterService { core }
    }
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
        _r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(errors::not_capable())
    }

    async fn member_remove(
        &self,
        _r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(errors::not_capable())
    }

    async fn member_update(
        &self,
        _r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(errors::not_capable())
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
        let revision = self.core.store.current_revision();
        Ok(Response::new(MemberListResponse {
            header: self.core.header(revision),
            members,
        }))
    }

    async fn member_promote(
        &self,
        _r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(errors::not_capable())
    }
}
