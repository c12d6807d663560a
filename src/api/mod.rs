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
//! - [`http`]: `GET /health`, `GET /version`, `GET /metrics`.
//! - [`gateway`]: etcd's JSON gateway (`POST /v3/kv/put`, ...), a JSON
//!   front of the gRPC services above.
//! - [`grpc_metrics`]: counts gRPC calls by service, method and status code.
//! - [`reconfig`]: etcd's strict reconfiguration check for membership changes.
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
pub mod dispatch;
pub mod election;
pub mod errors;
pub mod gateway;
pub mod grpc_metrics;
pub mod h2fix;
pub mod http;
pub mod kv;
pub mod lease;
pub mod listener;
pub mod lock;
pub mod maintenance;
pub mod recipes;
pub mod reconfig;
pub mod server;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

/// The gRPC metadata key by which a client asks for a leader (clientv3's
/// `WithRequireLeader`, which its watches and lease keep-alives use).
pub const REQUIRE_LEADER: &str = "hasleader";

/// Whether a call whose [`REQUIRE_LEADER`] metadata is `value` requires a
/// leader: then it is refused with `no leader` while this member knows none,
/// and a Watch or LeaseKeepAlive stream ends with that error once no leader
/// has been known for three election timeouts ([`Core::leader_lost`]).
pub fn leader_required(value: Option<&[u8]>) -> bool {
    value == Some(b"true".as_slice())
}

/// [`leader_required`] for a streaming call's metadata.
pub fn stream_requires_leader(metadata: &tonic::metadata::MetadataMap) -> bool {
    leader_required(metadata.get(REQUIRE_LEADER).map(|v| v.as_bytes()))
}

/// How long a member with sub-second election timeouts (test clusters:
/// the embedded cluster's 200 ms) waits without a leader before it ends the
/// streams that require one: three of its timeouts pass within one slow
/// election on a loaded machine, and ending every watch then costs clients
/// more than the election did (3 s was seen too short on a 2-core CI
/// machine running eight 3-member clusters). With etcd's default timeout
/// (1 s) or longer, three timeouts are waited, as etcd waits.
pub const MIN_LEADER_LOSS: Duration = Duration::from_secs(5);

/// etcd's wait with its default timeouts (three of 1 s): a member waiting
/// at least this long waits as etcd does.
const ETCD_LEADER_LOSS: Duration = Duration::from_secs(3);

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
    /// How often a watcher created with `progress_notify` hears the current
    /// revision while it has no events (etcd's
    /// `--experimental-watch-progress-notify-interval`).
    pub watch_progress_interval: Duration,
    /// How long a peer must have been connected to count as healthy when a
    /// voter is removed (etcd: 5 s; here 5 election timeouts, the same at
    /// etcd's default timings).
    pub health_interval: Duration,
    /// `--strict-reconfig-check`: refuse membership changes that would cost
    /// the cluster its quorum.
    pub strict_reconfig: bool,
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
    /// The peer senders (their connection state feeds the reconfiguration check).
    pub peers: Arc<crate::raft::transport::Peers>,
    /// The member's Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
    /// Users, roles, permissions and tokens (see [`access`]).
    pub auth: Arc<crate::auth::Auth>,
    /// `--client-cert-auth`: a verified certificate's common name names the
    /// caller when it sends no token.
    pub client_cert_auth: bool,
}

/// How the wait for a proposal's result ended.
enum Outcome {
    /// Applied on this member, with this result.
    Applied(ApplyResult),
    /// The member stopped first.
    Stopped,
    /// The leader it went to was replaced, and the new leader did not have it.
    LeaderLost,
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

    /// [`Core::leader_lost`] for a stream that `required` a leader; never
    /// resolves for one that did not.
    pub async fn leader_lost_if(&self, required: bool) {
        if required {
            self.leader_lost().await
        } else {
            std::future::pending().await
        }
    }

    /// Resolves once this member has known no leader for `leader_wait`
    /// (three election timeouts, as etcd's `monitorLeader` counts them;
    /// [`MIN_LEADER_LOSS`] for sub-second timeouts) without a break: then
    /// the streams that require a leader end. Never resolves once the Raft
    /// node is gone (the member is stopping).
    pub async fn leader_lost(&self) {
        let patience = if self.limits.leader_wait >= ETCD_LEADER_LOSS {
            self.limits.leader_wait
        } else {
            MIN_LEADER_LOSS
        };
        let mut leadership = self.raft.watch_leadership();
        loop {
            let lost = leadership.wait_for(|l| l.leader_id == 0).await.is_ok();
            if !lost {
                return std::future::pending().await;
            }
            let regained = leadership.wait_for(|l| l.leader_id != 0);
            // Some(true): a leader again; Some(false): the node is gone.
            let regained = tokio::time::timeout(patience, regained)
                .await
                .ok()
                .map(|r| r.is_ok());
            match regained {
                None => return,
                Some(true) => {}
                Some(false) => return std::future::pending().await,
            }
        }
    }

    /// Whether this member is a learner (it then serves only serializable
    /// reads and status).
    pub fn is_learner(&self) -> bool {
        self.membership
            .borrow()
            .member(self.member_id)
            .is_some_and(|m| m.is_learner)
    }

    /// Waits while the member is paused by a fault hook (like a SIGSTOPped process).
    pub async fn unpaused(&self) {
        let mut rx = self.raft.watch_status();
        let _ = rx.wait_for(|s| !s.paused).await;
    }

    /// Proposes `op` through Raft and waits for its application on this member.
    ///
    /// Metrics as etcd keeps them: the proposal is pending from its hand-over
    /// to Raft until its result (or until the caller gives up), and failed if
    /// Raft refused it, the member stopped or the wait timed out — not when
    /// it was applied with an error such as `requested lease not found`.
    /// For the member's own proposals (lease expiry, alarms, recipes); client
    /// writes go through [`Core::propose_as`].
    pub async fn propose(&self, op: Op) -> Result<(Applied, i64), Status> {
        self.propose_request(op, None, Some(self.limits.max_request_bytes))
            .await
    }

    /// Proposes a record of the cluster itself: a member's published name and
    /// URLs, the cluster version. etcd writes those through its v2 path, which
    /// `--max-request-bytes` does not cover, so a member publishes itself
    /// whatever the limit (even 0, which refuses every client write).
    pub async fn propose_cluster_record(&self, op: Op) -> Result<(Applied, i64), Status> {
        self.propose_request(op, None, None).await
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
        self.propose_request(op, Some(info), Some(self.limits.max_request_bytes))
            .await
    }

    /// Proposes `op` (refused if its encoding is over `size_limit`) and waits
    /// for its result.
    async fn propose_request(
        &self,
        op: Op,
        auth_info: Option<crate::pb::lcraftpb::AuthInfo>,
        size_limit: Option<usize>,
    ) -> Result<(Applied, i64), Status> {
        self.unpaused().await;
        let id = self.ids.next();
        let data = Request {
            id,
            op: Some(op),
            auth_info,
        }
        .encode_to_vec();
        if size_limit.is_some_and(|limit| data.len() > limit) {
            return Err(errors::request_too_large());
        }
        self.wait_for_leader().await?;
        let pending = PendingProposal::new(&self.metrics);
        let rx = self.waiters.register(id);
        let term = match self.raft.propose(data).await {
            Ok(term) => term,
            Err(e) => {
                self.waiters.cancel(id);
                return Err(pending.failed(errors::from_raft(e)));
            }
        };
        let waited =
            tokio::time::timeout(self.limits.request_timeout, self.wait_result(rx, term)).await;
        match waited {
            Ok(Outcome::Applied(Ok(applied))) => Ok(applied),
            Ok(Outcome::Applied(Err(e))) => Err(errors::from_apply(e)),
            Ok(Outcome::Stopped) => Err(pending.failed(errors::stopped())),
            Ok(Outcome::LeaderLost) => {
                self.waiters.cancel(id);
                Err(pending.failed(errors::timeout_due_to_leader_fail()))
            }
            Err(_) => {
                self.waiters.cancel(id);
                Err(pending.failed(errors::timeout()))
            }
        }
    }

    /// Waits for the result of a proposal that Raft took in `term` (as of the
    /// very step that took it: the published status can lag behind).
    ///
    /// A follower hands its proposals to the leader it knows; if that leader
    /// dies, they die with it, and waiting for them would take the whole
    /// request timeout. So when a leader of a later term is known first, this waits
    /// only until this member has applied everything the new leader has
    /// committed (a read barrier): a proposal the new leader had in its log is
    /// applied by then and answered as usual; one still unanswered is given
    /// up with etcd's `request timed out, possibly due to previous leader
    /// failure`, at once rather than when the timeout runs out. As with any
    /// timeout, the write may still apply (a deposed leader that was only
    /// slow can hand it on to the new one), so clients must not take the
    /// error for a refusal.
    async fn wait_result(
        &self,
        mut rx: tokio::sync::oneshot::Receiver<ApplyResult>,
        term: u64,
    ) -> Outcome {
        let from = |r: Result<ApplyResult, _>| match r {
            Ok(result) => Outcome::Applied(result),
            Err(_) => Outcome::Stopped,
        };
        // A later leader has a later term. (The published leadership can lag
        // behind `term`, so "another leader or term" would fire on a stale
        // one.) Its own watch: the status changes with every entry, and
        // would wake every waiting request each time.
        let mut leadership = self.raft.watch_leadership();
        let new_leader = async {
            leadership
                .wait_for(|l| l.leader_id != 0 && l.term > term)
                .await
                .map(|_| ())
        };
        tokio::select! {
            r = &mut rx => return from(r),
            changed = new_leader => {
                if changed.is_err() {
                    return from(rx.await);
                }
            }
        }
        tokio::select! {
            r = &mut rx => return from(r),
            barrier = self.read_barrier() => {
                if barrier.is_err() {
                    return from(rx.await);
                }
            }
        }
        // The waiter is answered during the apply, before the applied index
        // that ended the barrier was published.
        match rx.try_recv() {
            Ok(result) => Outcome::Applied(result),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => Outcome::LeaderLost,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Outcome::Stopped,
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
        let size = self.store.db_size();
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
        let mut rx = self.raft.watch_leadership();
        let waited =
            tokio::time::timeout(self.limits.leader_wait, rx.wait_for(|l| l.leader_id != 0))
                .await
                .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(errors::stopped()),
            Err(_) => Err(errors::no_leader()),
        }
    }

    /// Size of the database file (the store; etcd reports its backend
    /// without the WAL).
    pub fn db_size(&self) -> i64 {
        self.store.db_size() as i64
    }

    /// Bytes of the database in use (0 if the store cannot tell). Off the
    /// async workers: computing it may walk the whole file (see
    /// [`Store::db_size_in_use`]).
    pub async fn db_size_in_use(&self) -> i64 {
        let store = Arc::clone(&self.store);
        let in_use = tokio::task::spawn_blocking(move || store.db_size_in_use())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        in_use as i64
    }
}

/// One proposal in `etcd_server_proposals_pending` while it lives (a guard,
/// so a request dropped mid-wait by its client stops counting too).
struct PendingProposal<'a>(&'a crate::metrics::Metrics);

impl<'a> PendingProposal<'a> {
    fn new(metrics: &'a crate::metrics::Metrics) -> Self {
        metrics.proposals_pending.inc();
        PendingProposal(metrics)
    }

    /// Counts the proposal in `etcd_server_proposals_failed_total`.
    fn failed(&self, status: Status) -> Status {
        self.0.proposals_failed.inc();
        status
    }
}

impl Drop for PendingProposal<'_> {
    fn drop(&mut self) {
        self.0.proposals_pending.dec();
    }
}

/// Maps a closed raft node to the client error etcd gives when stopping.
impl From<RaftError> for Status {
    fn from(e: RaftError) -> Status {
        errors::from_raft(e)
    }
}
