//! The Maintenance service: Status, Hash, HashKV, Alarm, Defragment, Snapshot,
//! MoveLeader.
//!
//! `Status` reports what `etcdctl endpoint status` shows: version, database
//! size (and size in use), leader, Raft term, commit and applied indexes. Alarms
//! (NOSPACE, raised when the store outgrows `--quota-backend-bytes`) are
//! replicated: `Alarm` lists, raises and disarms them through Raft.
//! `Snapshot` streams a consistent snapshot of the store framed as a backup
//! file (`crate::backup`): what `etcdctl snapshot save` writes and
//! `localcluster snapshot restore` reads.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::{errors, Core};
use crate::apply::{Applied, CLUSTER_VERSION};
use crate::mvcc::MvccError;
use crate::pb::etcdserverpb::alarm_request::AlarmAction;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::pb::lcraftpb::request::Op;
use crate::raft::node::Msg;

/// The Maintenance service of one member.
pub struct MaintenanceService {
    core: Arc<Core>,
}

impl MaintenanceService {
    pub fn new(core: Arc<Core>) -> Self {
        MaintenanceService { core }
    }

    /// A read view whose redb tables hold every applied batch, for scans of
    /// the whole store. Committing what waits may wait for the disk, so it
    /// runs off the async workers.
    async fn durable_view(&self) -> Result<crate::mvcc::ReadView, Status> {
        let store = self.core.store.clone();
        tokio::task::spawn_blocking(move || store.read_durable())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(errors::from_mvcc)
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

const SNAPSHOT_CHUNK: usize = 32 * 1024;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        self.core.unpaused().await;
        let req = request.into_inner();
        if req.action == AlarmAction::Get as i32 {
            let alarms = self
                .core
                .alarms
                .lock()
                .map(|a| a.clone())
                .unwrap_or_default();
            let rev = self.core.store.current_revision();
            return Ok(Response::new(AlarmResponse {
                header: self.core.header(rev),
                alarms,
            }));
        }
        match self.core.propose(Op::Alarm(req)).await? {
            (Applied::Alarms(alarms), rev) => Ok(Response::new(AlarmResponse {
                header: self.core.header(rev),
                alarms,
            })),
            _ => Err(Status::internal("unexpected apply result")),
        }
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.core.unpaused().await;
        let st = self.core.raft.status();
        let rev = self.core.store.current_revision();
        let db_size = self.core.db_size();
        let in_use = self.core.db_size_in_use().await;
        let mut errors = Vec::new();
        if st.leader_id == 0 {
            errors.push(errors::NO_LEADER.to_string());
        }
        for a in self
            .core
            .alarms
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
        {
            let name = crate::pb::etcdserverpb::AlarmType::try_from(a.alarm)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| a.alarm.to_string());
            errors.push(format!("memberID:{} alarm:{name} ", a.member_id));
        }
        Ok(Response::new(StatusResponse {
            header: self.core.header(rev),
            version: CLUSTER_VERSION.to_string(),
            db_size,
            leader: st.leader_id,
            raft_index: st.commit_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            errors,
            db_size_in_use: in_use.min(db_size),
            is_learner: st.learners.contains(&self.core.member_id),
            storage_version: String::new(),
            db_size_quota: self.core.limits.quota_bytes.min(i64::MAX as u64) as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.core.authorize_admin(&r)?;
        self.core.unpaused().await;
        // Compaction of the redb file needs a moment without readers or writers.
        for _ in 0..50 {
            let store = self.core.store.clone();
            let res = tokio::task::spawn_blocking(move || store.defragment())
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            match res {
                Ok(()) => {
                    let rev = self.core.store.current_revision();
                    return Ok(Response::new(DefragmentResponse {
                        header: self.core.header(rev),
                    }));
                }
                Err(MvccError::Busy(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return Err(errors::from_mvcc(e)),
            }
        }
        Err(errors::timeout())
    }

    async fn hash(&self, r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.core.authorize_admin(&r)?;
        self.core.unpaused().await;
        // The hash covers the redb tables: commit what is pending first.
        let view = self.durable_view().await?;
        let (hash, _) = view.hash().map_err(errors::from_mvcc)?;
        let rev = view.current_revision();
        Ok(Response::new(HashResponse {
            header: self.core.header(rev),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.core.authorize_admin(&request)?;
        self.core.unpaused().await;
        let req = request.into_inner();
        let view = self.core.store.read().map_err(errors::from_mvcc)?;
        let h = view.hash_kv(req.revision).map_err(errors::from_mvcc)?;
        let rev = view.current_revision();
        Ok(Response::new(HashKvResponse {
            header: self.core.header(rev),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        r: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.core.authorize_admin(&r)?;
        self.core.unpaused().await;
        let view = self.durable_view().await?;
        let data = crate::backup::frame(&view.snapshot_bytes().map_err(errors::from_mvcc)?);
        let rev = view.current_revision();
        let header = self.core.header(rev);
        let total = data.len();
        let chunks: Vec<Result<SnapshotResponse, Status>> = data
            .chunks(SNAPSHOT_CHUNK)
            .enumerate()
            .map(|(i, c)| {
                let sent = (i * SNAPSHOT_CHUNK + c.len()) as u64;
                Ok(SnapshotResponse {
                    header,
                    remaining_bytes: total as u64 - sent,
                    blob: c.to_vec(),
                    version: CLUSTER_VERSION.to_string(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.core.authorize_admin(&request)?;
        self.core.unpaused().await;
        let target = request.into_inner().target_id;
        let st = self.core.raft.status();
        if !st.is_leader {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        // etcd's check: the transferee is a voting member.
        if !st.voters.contains(&target) {
            return Err(errors::bad_leader_transferee());
        }
        self.core.raft.send(Msg::TransferLeader(target))?;
        let mut rx = self.core.raft.watch_leadership();
        let wait = rx.wait_for(|l| l.leader_id == target);
        if tokio::time::timeout(self.core.limits.request_timeout, wait)
            .await
            .is_err()
        {
            return Err(errors::timeout_leader_transfer());
        }
        let rev = self.core.store.current_revision();
        Ok(Response::new(MoveLeaderResponse {
            header: self.core.header(rev),
        }))
    }

    async fn downgrade(
        &self,
        _r: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(errors::not_capable())
    }
}
