//! The client API: etcd's v3 gRPC services and its small HTTP endpoints, served
//! together on every `--listen-client-urls` address.
//!
//! - [`kv`]: Range, Put, DeleteRange, Txn, Compact.
//! - [`cluster`]: MemberList (and the rest of the Cluster service).
//! - [`maintenance`]: Status, Hash, HashKV, Alarm, Defragment, ...
//! - [`http`]: `GET /health`, `GET /version`.
//! - [`errors`]: etcd's error strings and gRPC codes.
//! - [`server`]: one listener serving gRPC (HTTP/2) and HTTP/1 side by side.
//! - [`h2fix`]: the connection shim under [`server`] that repairs the URL
//!   `:authority` etcdctl sends, which h2 would reject.
//!
//! Every service shares one [`Core`]: it turns a write into a proposal and waits
//! for the result of its application ([`Core::propose`]), makes reads
//! linearizable with Raft's ReadIndex ([`Core::read_barrier`]) and fills in
//! response headers ([`Core::header`]).

pub mod cluster;
pub mod errors;
pub mod h2fix;
pub mod http;
pub mod kv;
pub mod maintenance;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::watch;
use tonic::Status;

use crate::apply::{Applied, ApplyResult};
use crate::mvcc::Store;
use crate::pb::etcdserverpb::ResponseHeader;
use crate::pb::lcraftpb::{request::Op, Membership, Request};
use crate::raft::{RaftError, RaftHandle};
use crate::wait::{IdGen, Waiters};

/// Limits enforced on client requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest encoded request accepted (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Most operations in one txn (`--max-txn-ops`).
    pub max_txn_ops: usize,
    /// How long a request may wait for consensus before `request timed out`.
    pub request_timeout: Duration,
}

/// What every service of one member shares.
pub struct Core {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft: RaftHandle,
    pub store: Arc<Store>,
    pub waiters: Arc<Waiters<ApplyResult>>,
    pub ids: IdGen,
    pub membership: watch::Receiver<Membership>,
    pub limits: Limits,
    /// Files whose sizes make up the reported database size.
    pub db_files: Vec<std::path::PathBuf>,
}

impl Core {
    /// A response header as of `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.status().term,
        })
    }

    /// Waits while the member is paused by a fault hook (like a SIGSTOPped process).
    pub async fn unpaused(&self) {
        let mut rx = self.raft.watch_status();
        let _ = rx.wait_for(|s| !s.paused).await;
    }

    /// Proposes `op` through Raft and waits for its application on this member.
    pub async fn propose(&self, op: Op) -> Result<(Applied, i64), Status> {
        self.unpaused().await;
        let id = self.ids.next();
        let data = Request { id, op: Some(op) }.encode_to_vec();
        if data.len() > self.limits.max_request_bytes {
            return Err(errors::request_too_large());
        }
        if self.raft.status().leader_id == 0 {
            return Err(errors::no_leader());
        }
        let rx = self.waiters.register(id);
        if let Err(e) = self.raft.propose(data).await {
            self.waiters.cancel(id);
            return Err(errors::from_raft(e));
        }
        match tokio::time::timeout(self.limits.request_timeout, rx).await {
            Ok(Ok(Ok(applied))) => Ok(applied),
            Ok(Ok(Err(e))) => Err(errors::from_apply(e)),
            Ok(Err(_)) => Err(errors::stopped()),
            Err(_) => {
                self.waiters.cancel(id);
                Err(errors::timeout())
            }
        }
    }

    /// Returns once this member has applied everything committed when the call
    /// started, as confirmed by a quorum: reads after it are linearizable.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        self.unpaused().await;
        if self.raft.status().leader_id == 0 {
            return Err(errors::no_leader());
        }
        let wait = async {
            let index = self.raft.read_index().await.map_err(errors::from_raft)?;
            self.raft
                .wait_applied(index)
                .await
                .map_err(errors::from_raft)
        };
        match tokio::time::timeout(self.limits.request_timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(errors::timeout()),
        }
    }

    /// Total size of the database files.
    pub fn db_size(&self) -> i64 {
        self.db_files
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len() as i64)
            .sum()
    }
}

/// Maps a closed raft node to the client error etcd gives when stopping.
impl From<RaftError> for Status {
    fn from(e: RaftError) -> Status {
        errors::from_raft(e)
    }
}
