//! The Election service (`v3electionpb.Election`): leader election on a name,
//! as etcd serves it (see [`super::recipes`]). The leader is the oldest key
//! under `<name>/`; its value is what the leader proclaims. A campaign naming
//! no lease gets a new 60 s one, as a lock does; one that gives up waiting
//! leaves no key behind.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::recipes::{
    claim, create_rev_is, delete_if_created_at, first_under, owner_key, prefix_of, put_op,
    session_lease, txn, wait_change, wait_predecessors, Claim, Claimed,
};
use super::Core;
use crate::apply::convert::kv_to_pb;
use crate::auth::Access;
use crate::pb::etcdserverpb::TxnRequest;
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};

const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
/// etcd's answer to a Proclaim or Resign that names no leader.
const MISSING_LEADER: &str = "\"leader\" field must be provided";

/// The Election service of one member.
pub struct ElectionService {
    core: Arc<Core>,
}

impl ElectionService {
    pub fn new(core: Arc<Core>) -> Self {
        ElectionService { core }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

/// Puts `value` under the leader's key if it still is the leader.
async fn proclaim(core: &Core, leader: &LeaderKey, value: &[u8]) -> Result<i64, Status> {
    let req = TxnRequest {
        compare: vec![create_rev_is(&leader.key, leader.rev)],
        success: vec![put_op(&leader.key, value, leader.lease)],
        failure: vec![],
    };
    let (resp, rev) = txn(core, req).await?;
    if !resp.succeeded {
        return Err(Status::new(Code::FailedPrecondition, NOT_LEADER));
    }
    Ok(rev)
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        // The recipe reads and writes keys under the election's prefix (an
        // empty name is an election like any other, as in etcd).

        let prefix = prefix_of(&request.get_ref().name);
        self.core
            .authorize_prefix(&request, &prefix, Access::Write)?;
        self.core
            .authorize_prefix(&request, &prefix, Access::Read)?;
        let req = request.into_inner();
        // As etcd's: a campaign naming no lease runs on a new one of its own
        // (with lease 0, two campaigners would share one key and both lead).
        let lease = session_lease(&self.core, req.lease).await?;
        let key = owner_key(&prefix, lease);
        let Claim {
            rev,
            header_rev,
            stale_value,
        } = claim(&self.core, &key, &req.value, lease).await?;
        let claimed = Claimed::new(self.core.clone(), key.clone(), rev);
        let leader = LeaderKey {
            name: req.name,
            key,
            rev,
            lease,
        };
        if stale_value.is_some() {
            proclaim(&self.core, &leader, &req.value).await?;
        }
        wait_predecessors(&self.core, &prefix, rev).await?;
        claimed.keep();
        // As etcd's: the header of the campaign's own claim, not of what
        // happened while it waited.
        Ok(Response::new(CampaignResponse {
            header: self.core.header(header_rev),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        if let Some(l) = &request.get_ref().leader {
            let key = l.key.clone();
            self.core
                .authorize_range(&request, &key, &[], Access::Write)?;
        }
        let req = request.into_inner();
        let leader = req
            .leader
            .ok_or_else(|| Status::new(Code::InvalidArgument, MISSING_LEADER))?;
        let rev = proclaim(&self.core, &leader, &req.value).await?;
        Ok(Response::new(ProclaimResponse {
            header: self.core.header(rev),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let prefix = prefix_of(&request.get_ref().name);
        self.core
            .authorize_prefix(&request, &prefix, Access::Read)?;
        let kv = first_under(&self.core, &prefix)
            .await?
            .ok_or_else(|| Status::new(Code::NotFound, NO_LEADER))?;
        let now = self.core.store.current_revision();
        Ok(Response::new(LeaderResponse {
            header: self.core.header(now),
            kv: Some(kv_to_pb(kv)),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let prefix = prefix_of(&request.get_ref().name);
        self.core
            .authorize_prefix(&request, &prefix, Access::Read)?;
        let core = self.core.clone();
        let (tx, rx) = mpsc::channel(16);
        // Ends when the client goes away (the send fails) or the member stops.
        tokio::spawn(async move {
            let mut last: Option<crate::mvcc::KeyValue> = None;
            loop {
                let current = match first_under(&core, &prefix).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if let Some(kv) = &current {
                    if last.as_ref() != Some(kv) {
                        let now = core.store.current_revision();
                        let resp = LeaderResponse {
                            header: core.header(now),
                            kv: Some(kv_to_pb(kv.clone())),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
                last = current.clone();
                let wait = async {
                    match &current {
                        Some(kv) => wait_change(&core, &prefix, kv).await,
                        None => wait_predecessors(&core, &prefix, i64::MAX)
                            .await
                            .and(Ok(())),
                    }
                };
                tokio::select! {
                    r = wait => if let Err(e) = r {
                        let _ = tx.send(Err(e)).await;
                        return;
                    },
                    _ = tx.closed() => return,
                }
                if current.is_none() {
                    // Nobody leads yet: poll for the first candidate.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        if let Some(l) = &request.get_ref().leader {
            let key = l.key.clone();
            self.core
                .authorize_range(&request, &key, &[], Access::Write)?;
        }
        let leader = request
            .into_inner()
            .leader
            .ok_or_else(|| Status::new(Code::InvalidArgument, MISSING_LEADER))?;
        let rev = delete_if_created_at(&self.core, &leader.key, leader.rev).await?;
        Ok(Response::new(ResignResponse {
            header: self.core.header(rev),
        }))
    }
}
