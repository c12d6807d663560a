//! The Lock service (`v3lockpb.Lock`): a distributed mutex held as long as the
//! caller's lease lives, as etcd serves it (see [`super::recipes`]). A caller
//! naming no lease (0) holds the lock with a new 60 s lease nobody renews, as
//! with etcd's orphaned session: released after a minute, never stuck. A
//! caller that gives up waiting leaves no key behind.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::recipes::{claim, owner_key, prefix_of, session_lease, wait_predecessors, Claimed};
use super::{errors, Core};
use crate::apply::Applied;
use crate::auth::Access;
use crate::pb::etcdserverpb::DeleteRangeRequest;
use crate::pb::lcraftpb::request::Op;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::pb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

/// etcd's answer when a waiter's key went away before its turn came.
const SESSION_EXPIRED: &str = "mutex: session is expired";

/// The Lock service of one member.
pub struct LockService {
    core: Arc<Core>,
}

impl LockService {
    pub fn new(core: Arc<Core>) -> Self {
        LockService { core }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        // An empty name is a lock like any other (its keys are `/<lease>`),
        // as in etcd.
        let prefix = prefix_of(&request.get_ref().name);
        // The recipe reads and writes keys under the lock's prefix.
        self.core
            .authorize_prefix(&request, &prefix, Access::Write)?;
        self.core
            .authorize_prefix(&request, &prefix, Access::Read)?;
        let req = request.into_inner();
        let lease = session_lease(&self.core, req.lease).await?;
        let key = owner_key(&prefix, lease);
        let rev = claim(&self.core, &key, b"", lease).await?.rev;
        let claimed = Claimed::new(self.core.clone(), key.clone(), rev);
        wait_predecessors(&self.core, &prefix, rev).await?;
        // As etcd's mutex: the key must still be ours (its lease may have
        // expired meanwhile, or an abandoned call of the same lease taken it
        // away), or someone else may hold the lock too.
        let view = self.core.store.read().map_err(errors::from_mvcc)?;
        let ours = view
            .range(&key, &[], &Default::default())
            .map_err(errors::from_mvcc)?
            .kvs
            .first()
            .is_some_and(|kv| kv.create_revision == rev);
        if !ours {
            return Err(Status::unknown(SESSION_EXPIRED));
        }
        claimed.keep();
        let now = self.core.store.current_revision();
        Ok(Response::new(LockResponse {
            header: self.core.header(now),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        self.core
            .authorize_range(&request, &request.get_ref().key, &[], Access::Write)?;
        let key = request.into_inner().key;
        if key.is_empty() {
            return Err(errors::empty_key());
        }
        match self
            .core
            .propose(Op::DeleteRange(DeleteRangeRequest {
                key,
                ..Default::default()
            }))
            .await?
        {
            (Applied::DeleteRange(_), rev) => Ok(Response::new(UnlockResponse {
                header: self.core.header(rev),
            })),
            _ => Err(Status::internal("unexpected apply result")),
        }
    }
}
