//! The Lease service: grant, revoke, keep alive, time-to-live, list.
//!
//! Grants, revocations and keep-alives are proposals like any write, so every
//! member agrees on which leases exist (see [`crate::lease`]). `TimeToLive` and
//! `Leases` answer from this member's table after a ReadIndex barrier; as in
//! etcd, `TimeToLive` rounds the seconds left down and `Leases` lists the
//! soonest to expire first. A `LeaseKeepAlive` stream that requires a leader
//! (`hasleader`, as clientv3's keep-alives send) ends with `etcdserver: no
//! leader` once the member has had none for three election timeouts.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::access::Credentials;
use super::{errors, Core};
use crate::apply::Applied;
use crate::auth::Access;
use crate::mvcc::RangeOptions;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::pb::lcraftpb::request::Op;
use crate::pb::lcraftpb::LeaseExpireRequest;

/// etcd's largest lease TTL, in seconds.
const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// The Lease service of one member.
pub struct LeaseService {
    core: Arc<Core>,
}

impl LeaseService {
    pub fn new(core: Arc<Core>) -> Self {
        LeaseService { core }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

/// Renews one lease through Raft; a TTL of 0 means the lease is gone.
///
/// This member answers once it has applied the keep-alive, which on a lagging
/// follower may be well after the leader renewed the lease from that entry.
/// All that is certain is that the renewal came after the request arrived, so
/// the TTL answered is what is left of a full TTL counted from then (whole
/// seconds, rounded up, at least 1: the same full TTL etcd answers unless
/// this member lagged), and 0 if the lease is gone by the time it looks (an
/// expiry or a revoke applied after the keep-alive).
async fn keep_alive_once(core: &Core, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    let received = Instant::now();
    match core
        .propose(Op::LeaseKeepAlive(LeaseKeepAliveRequest { id }))
        .await
    {
        Ok((Applied::LeaseKeepAlive(mut resp), rev)) => {
            let alive = core.leases.lock().is_ok_and(|t| t.contains(id));
            resp.ttl = answered_ttl(alive, resp.ttl, received.elapsed());
            resp.header = core.header(rev);
            Ok(resp)
        }
        Ok(_) => Err(Status::internal("unexpected apply result")),
        Err(s) if s.code() == Code::NotFound => {
            let rev = core.store.current_revision();
            Ok(LeaseKeepAliveResponse {
                header: core.header(rev),
                id,
                ttl: 0,
            })
        }
        Err(s) => Err(s),
    }
}

/// The TTL a keep-alive answers: 0 if the lease is gone by the time this
/// member looks after applying it, else the whole seconds left (rounded up,
/// at least 1) of a `ttl`-second lease renewed no earlier than `elapsed` ago.
fn answered_ttl(alive: bool, ttl: i64, elapsed: std::time::Duration) -> i64 {
    if !alive {
        return 0;
    }
    let left_ms = ttl
        .saturating_mul(1000)
        .saturating_sub(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX));
    (left_ms.saturating_add(999) / 1000).max(1)
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        // etcd lets any caller grant a lease; only a bad token is refused.
        self.core.caller(&Credentials::of(&request))?;
        let mut req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(Status::new(
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ));
        }
        req.ttl = req.ttl.max(self.core.limits.min_lease_ttl);
        self.core.check_quota().await?;
        if req.id == 0 {
            req.id = (self.core.ids.next() & (i64::MAX as u64)) as i64;
        }
        match self.core.propose(Op::LeaseGrant(req)).await? {
            (Applied::LeaseGrant(mut resp), rev) => {
                resp.header = self.core.header(rev);
                Ok(Response::new(resp))
            }
            _ => Err(Status::internal("unexpected apply result")),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = self.core.caller(&Credentials::of(&request))?;
        let req = request.into_inner();
        if self.core.auth.enabled() {
            // etcd: revoking deletes the attached keys, so the caller must be
            // allowed to write each of them.
            for key in leased_keys(&self.core, req.id)? {
                self.core.require_range(&caller, &key, &[], Access::Write)?;
            }
        }
        match self.core.propose(Op::LeaseRevoke(req)).await? {
            (Applied::LeaseRevoke(mut resp), rev) => {
                resp.header = self.core.header(rev);
                Ok(Response::new(resp))
            }
            _ => Err(Status::internal("unexpected apply result")),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let leader_required = super::stream_requires_leader(request.metadata());
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let core = self.core.clone();
        // Ends when the client closes its stream or stops reading, or (if it
        // requires one, as clientv3's keep-alives do) when the member has
        // lost its leader: etcd then ends the stream with `no leader`.
        tokio::spawn(async move {
            let leader_lost = core.leader_lost_if(leader_required);
            tokio::pin!(leader_lost);
            loop {
                let message = tokio::select! {
                    () = &mut leader_lost => {
                        let _ = tx.send(Err(errors::no_leader())).await;
                        return;
                    }
                    message = input.message() => message,
                };
                let resp = match message {
                    Ok(Some(req)) => keep_alive_once(&core, req.id).await,
                    Ok(None) => return,
                    // A request that cannot be read ends the stream with
                    // its status, as in etcd.
                    Err(e) => Err(errors::from_transport(e)),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = self.core.caller(&Credentials::of(&request))?;
        let req = request.into_inner();
        self.core.read_barrier().await?;
        let lease = self
            .core
            .leases
            .lock()
            .ok()
            .and_then(|t| t.get(req.id).cloned());
        let rev = self.core.store.current_revision();
        let Some(lease) = lease else {
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: self.core.header(rev),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
        };
        let keys = if req.keys {
            let keys = leased_keys(&self.core, req.id)?;
            for key in &keys {
                self.core.require_range(&caller, key, &[], Access::Read)?;
            }
            keys
        } else {
            Vec::new()
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.core.header(rev),
            id: req.id,
            ttl: lease.remaining_secs(Instant::now()),
            granted_ttl: lease.ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.core.read_barrier().await?;
        let ids = self
            .core
            .leases
            .lock()
            .map(|t| t.ids_by_expiry())
            .unwrap_or_default();
        let rev = self.core.store.current_revision();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.core.header(rev),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}

/// The keys attached to lease `id`, from this member's store.
fn leased_keys(core: &Core, id: i64) -> Result<Vec<Vec<u8>>, Status> {
    let view = core.store.read().map_err(errors::from_mvcc)?;
    let all = view
        .range(
            b"\0",
            b"\0",
            &RangeOptions {
                keys_only: true,
                ..Default::default()
            },
        )
        .map_err(errors::from_mvcc)?;
    Ok(all
        .kvs
        .into_iter()
        .filter(|kv| kv.lease == id)
        .map(|kv| kv.key)
        .collect())
}

/// On the leader: proposes the expiry of expired leases (each member drops it if
/// a keep-alive ordered before it renewed the lease, see [`crate::lease`]); on
/// becoming leader, gives every lease a full TTL first. Runs until `shutdown`.
pub async fn expire_leases(core: Arc<Core>, shutdown: tokio_util::sync::CancellationToken) {
    let mut was_leader = false;
    // The last log index when this member became leader: every entry of
    // earlier terms is at or below it.
    let mut leading_from = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            _ = shutdown.cancelled() => return,
        }
        let status = core.raft.status();
        if status.is_leader && !was_leader {
            leading_from = status.last_index;
            if let Ok(mut t) = core.leases.lock() {
                t.promote(Instant::now());
            }
        }
        was_leader = status.is_leader;
        if !status.is_leader {
            continue;
        }
        let (expired, checked_index) = core
            .leases
            .lock()
            .map(|t| (t.expired(Instant::now()), t.checked_index()))
            .unwrap_or_default();
        if checked_index < leading_from {
            // Decide only once the entries of earlier terms are applied here:
            // a renewal a previous version applied reads back as 0 on some
            // members and as its index on others, and both must be at or
            // below the checked index for the members to agree.
            continue;
        }
        for id in expired {
            tracing::debug!(lease = %format!("{id:x}"), "revoking expired lease");
            let _ = core
                .propose(Op::LeaseExpire(LeaseExpireRequest { id, checked_index }))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_keep_alive_answered_at_once_reports_the_full_ttl() {
        assert_eq!(answered_ttl(true, 5, Duration::from_millis(3)), 5);
        assert_eq!(answered_ttl(true, 5, Duration::ZERO), 5);
    }

    #[test]
    fn a_keep_alive_answered_late_reports_what_is_left_of_the_ttl() {
        assert_eq!(answered_ttl(true, 5, Duration::from_millis(1500)), 4);
        assert_eq!(answered_ttl(true, 5, Duration::from_secs(4)), 1);
        assert_eq!(
            answered_ttl(true, 5, Duration::from_secs(9)),
            1,
            "never 0: it is there"
        );
    }

    #[test]
    fn a_keep_alive_of_a_lease_gone_since_reports_zero() {
        assert_eq!(answered_ttl(false, 5, Duration::ZERO), 0);
    }
}
