//! The client API: etcd's v3 gRPC services and its small HTTP endpoints, served
//! together on every `--listen-client-urls` address.
//!
//! - [`kv`]: Range, Put, DeleteRange, Txn, Compact.
//! - [`cluster`]: MemberList (and the rest of the Cluster service).
//! - [`maintenance`]: Status, Hash, HashKV, Alarm, Defragment, ...
//! - [`lease`]: leases, and the leader's task that revokes expired ones.
//! - [`watch`]: Watch streams, fed by the applied-changes broadcast.
//! - [`lock`], [`election`]: etcd's server-side lock and election services,
//!   built on [`recipes`] (the `clientv3/concurrency` recipe).
//! - [`http`]: `GET /health`, `GET /version`.
//! - [`auth`]: the Auth service (users, roles, permissions, tokens).
//! - [`access`]: who calls, and whether they may (used by every service).
//! - [`errors`]: etcd's error strings and gRPC codes.
//! - [`server`]: one listener serving gRPC (HTTP/2) and HTTP/1 side by side.
//! - [`listener`]: the client listener, plain or TLS, under the h2 shim.
//! - [`h2fix`]: the connection shim under [`server`] that repairs the URL
//!   `:authority` etcdctl sends, which h2 would reject.
//!
//! Every service shares one [`Core`]: it turns a write into a proposal and waits
//! for the result of its application ([`Core::propose`]), makes reads
//! linearizable with Raft's ReadIndex ([`Core::read_barrier`]) and fills in
//! response headers ([`Core::header`]).

pub mod access;
pub mod auth;
pub mod cluster;
pub mod election;
pub mod errors;
pub mod h2fix;
pub mod http;
pub mod kv;
pub mod lease;
pub mod listener;
pub mod lock;
pub mod maintenance;
pub mod recipes;
pub mod server;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;

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
    /// How long a request waits for a leader to be elected before failing with
    /// `etcdserver: no leader` (etcd blocks in the same situation).
    pub leader_wait: Duration,
    /// `--quota-backend-bytes`: past it the member raises the NOSPACE alarm and
    /// refuses writes until the alarm is disarmed.
    pub quota_bytes: u64,
    /// Shortest lease TTL granted, in seconds (etcd: 1.5 election timeouts).
    pub min_lease_ttl: i64,
}

/// What every service of one member shares.
pub struct Core {
    pub cluster_id: u64,
    pub member_id: u64,
    /// `--initial-cluster-token`: part of the IDs of members added at runtime.
    pub cluster_token: String,
    pub raft: RaftHandle,
    pub store: Arc<Store>,
    pub waiters: Arc<Waiters<ApplyResult>>,
    pub ids: IdGen,
    pub membership: tokio::sync::watch::Receiver<Membership>,
    pub limits: Limits,
    /// The raised alarms.
    pub alarms: crate::apply::SharedAlarms,
    /// The lease table (replicated TTLs, local deadlines).
    pub leases: crate::apply::SharedLeases,
    /// Every applied batch of changes, for watchers.
    pub events: tokio::sync::broadcast::Sender<Arc<crate::apply::AppliedEvents>>,
    /// Files whose sizes make up the reported database size.
    pub db_files: Vec<std::path::PathBuf>,
    /// Users, roles, permissions and tokens (see [`access`]).
    pub auth: Arc<crate::auth::Auth>,
    /// `--client-cert-auth`: a verified certificate's common name names the
    /// caller when it sends no token.
    pub client_cert_auth: bool,
}

impl Core {
    /// A response header as of `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.term(),
        })
    }

    /// Waits while the member is paused by a fault hook (like a SIGSTOPped process).
    pub async fn unpaused(&self) {
        let mut rx = self.raft.watch_status();
        let _ = rx.wait_for(|s| !s.paused).await;
    }

    /// Proposes `op` through Raft and waits for its application on this member.
    /// For the member's own proposals (lease expiry, alarms, recipes); client
    /// writes go through [`Core::propose_as`].
    pub async fn propose(&self, op: Op) -> Result<(Applied, i64), Status> {
        self.propose_with(op, None).await
    }

    /// Proposes a client's `op` stamped with its caller, so the apply checks it
    /// again if the auth store changed since it was checked here.
    pub async fn propose_as(
        &self,
        op: Op,
        caller: &access::Caller,
    ) -> Result<(Applied, i64), Status> {
        let info = crate::pb::lcraftpb::AuthInfo {
            user: caller.user.clone(),
            revision: caller.revision,
        };
        self.propose_with(op, Some(info)).await
    }

    async fn propose_with(
        &self,
        op: Op,
        auth_info: Option<crate::pb::lcraftpb::AuthInfo>,
    ) -> Result<(Applied, i64), Status> {
        self.unpaused().await;
        let id = self.ids.next();
        let data = Request {
            id,
            op: Some(op),
            auth_info,
        }
        .encode_to_vec();
        if data.len() > self.limits.max_request_bytes {
            return Err(errors::request_too_large());
        }
        self.wait_for_leader().await?;
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
        self.wait_for_leader().await?;
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

    /// etcd's quota check before a write that may grow the store: refuses it
    /// while a NOSPACE alarm is raised, and raises one when the store is over
    /// `--quota-backend-bytes`.
    pub async fn check_quota(&self) -> Result<(), Status> {
        let nospace = crate::pb::etcdserverpb::AlarmType::Nospace as i32;
        let raised = self
            .alarms
            .lock()
            .map(|a| a.iter().any(|x| x.alarm == nospace))
            .unwrap_or(false);
        if raised {
            return Err(errors::no_space());
        }
        let size = self.store.db_size().unwrap_or(0);
        if size > self.limits.quota_bytes {
            use crate::pb::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest};
            let req = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: self.member_id,
                alarm: nospace,
            };
            let _ = self.propose(Op::Alarm(req)).await;
            return Err(errors::no_space());
        }
        Ok(())
    }

    /// Waits (a bounded time) until a leader is known, as during an election.
    pub async fn wait_for_leader(&self) -> Result<(), Status> {
        if self.raft.leader_id() != 0 {
            return Ok(());
        }
        let mut rx = self.raft.watch_status();
        let waited =
            tokio::time::timeout(self.limits.leader_wait, rx.wait_for(|s| s.leader_id != 0))
                .await
                .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(errors::stopped()),
            Err(_) => Err(errors::no_leader()),
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
