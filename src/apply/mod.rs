//! The replicated state machine: committed Raft entries -> MVCC, membership and
//! cluster version; results handed to the waiting request by request ID.
//!
//! The Raft node calls [`Applier::apply`] with each run of committed entries. The
//! whole run is applied in one MVCC [`Batch`](crate::mvcc::Batch) (one redb write
//! transaction, one fsync), through one [`Writer`](crate::mvcc::Writer) so the
//! tables are opened once per run, that also records the applied index and term, the Raft
//! configuration and the membership. So after a crash the state machine is exactly
//! at some applied index and raft-rs replays from there: every entry is applied
//! exactly once.
//!
//! Durability: the Raft log is fsync'ed before anything is acknowledged, so the
//! state machine need not be. Batches wait uncommitted in the store's pending
//! redb transaction (readers see them through its read buffer) and are
//! committed, with one fsync, at most [`BackendBatch::interval`] later, or
//! once [`BackendBatch::limit`] entries wait (etcd's
//! `--backend-batch-interval`, 100 ms, and `--backend-batch-limit`, 10000:
//! etcd's backend commits the same way); a crash rolls the store back to its
//! last durable applied index and raft-rs replays the entries after it. The
//! log is only compacted behind that durable index
//! ([`StateMachine::durable_index`]).
//!
//! Entry payloads are `lcraftpb::Request`s (one etcd request each, or a member's
//! publish, or the cluster version); configuration changes carry a
//! `lcraftpb::ConfChangeContext` describing the member and the change's
//! intent, by which the membership as applied so far accepts or refuses it
//! (a refused change reaches raft-rs as a change of no member), and an update
//! keeps the member's role as applied.

pub mod convert;
pub mod txn;

use std::sync::Arc;

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Snapshot,
    SnapshotMetadata,
};
use raft_proto::ConfChangeI;
use tokio::sync::{broadcast, watch};

use crate::auth::{Auth, AuthApplied, AuthError};
use crate::lease::{Expiry, LeaseTable};
use crate::membership::MembershipError;
use crate::mvcc::{self, MvccError, Store};
use crate::pb::etcdserverpb::alarm_request::AlarmAction;
use crate::pb::etcdserverpb::{AlarmMember, AlarmResponse, LeaseKeepAliveResponse};
use crate::pb::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse,
    TxnResponse,
};
use crate::pb::lcraftpb::{
    request::Op, AuthState, ConfChangeContext, ConfChangeIntent, LeaseRecords, MemberInfo,
    Membership, Request,
};
use crate::raft::{RaftError, SnapshotSource, StateMachine};
use crate::wait::Waiters;

const META_APPLIED: &str = "applied";
const META_CONF_STATE: &str = "conf_state";
const META_MEMBERSHIP: &str = "membership";
const META_LEASES: &str = "leases";
const META_ALARMS: &str = "alarms";
const META_AUTH: &str = "auth";

/// The meta key of lease `id`'s renewal index: the log index of the grant or
/// keep-alive that last renewed it (8 bytes, big-endian). Kept apart from the
/// lease records so that a keep-alive writes one small value, not every lease.
fn meta_lease_renewed(id: i64) -> String {
    format!("lease_renewed/{id:016x}")
}

/// The current cluster version this implementation announces.
pub const CLUSTER_VERSION: &str = "3.5.0";

/// The outcome of applying one request.
#[derive(Debug, Clone)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseKeepAlive(LeaseKeepAliveResponse),
    /// The alarms an activation or deactivation changed.
    Alarms(Vec<AlarmMember>),
    Members(Vec<MemberInfo>),
    Auth(AuthApplied),
    Done,
}

/// Why an applied request failed (the entry is applied all the same).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Mvcc(#[from] MvccError),
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("{0}")]
    Membership(#[from] MembershipError),
    #[error("{0}")]
    Auth(#[from] AuthError),
}

/// A request's result, as handed to its waiter.
pub type ApplyResult = Result<(Applied, i64), ApplyError>;

/// Changes applied in one batch, for watchers.
///
/// A batch collects its events only if someone subscribed to them when it
/// began: with no watch stream, lock or election waiting, puts copy no
/// key-value for events no one reads. Whoever subscribes while such a batch
/// is applied gets it with `omitted` set and no events, and reads its
/// changes from the store, as after lagging behind the broadcast.
#[derive(Debug, Clone)]
pub struct AppliedEvents {
    /// The store revision after the batch.
    pub revision: i64,
    pub events: Vec<mvcc::Event>,
    /// The batch changed the store but did not collect its events.
    pub omitted: bool,
}

/// The state machine of one member.
pub struct Applier {
    store: Arc<Store>,
    member_id: u64,
    applied: u64,
    applied_term: u64,
    membership: Membership,
    membership_tx: watch::Sender<Membership>,
    waiters: Arc<Waiters<ApplyResult>>,
    events: broadcast::Sender<Arc<AppliedEvents>>,
    leases: Arc<std::sync::Mutex<LeaseTable>>,
    alarms: SharedAlarms,
    /// Users, roles, tokens (shared with the API).
    auth: Arc<Auth>,
    /// The applied index that is known to be on disk (see [`Applier::flush`]).
    durable_applied: u64,
    /// Whether a batch that is not durable yet waits for a flush, and since when.
    dirty_since: Option<std::time::Instant>,
    /// When waiting applied state is made durable.
    batch: BackendBatch,
}

/// How long, and how many entries, applied state may stay in memory only
/// (the Raft log holds it meanwhile): etcd's `--backend-batch-interval` and
/// `--backend-batch-limit`. Longer batches mean fewer durable commits of the
/// store (each one waits for the disk on the Raft thread), a larger file
/// between them (pages freed since the last durable commit are not reused
/// before the next) and more entries to replay after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendBatch {
    /// The longest time applied state stays in memory only (etcd: 100 ms).
    pub interval: std::time::Duration,
    /// The most entries applied since the last durable commit (etcd: 10000).
    pub limit: u64,
}

impl BackendBatch {
    /// etcd's default `--backend-batch-interval`.
    pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
    /// etcd's default `--backend-batch-limit`.
    pub const DEFAULT_LIMIT: u64 = 10_000;

    /// Whether applied state not yet durable, `entries` entries of it waiting
    /// since `since` (`None`: until now, none waited), is due to be made durable.
    fn due(&self, since: Option<std::time::Instant>, entries: u64) -> bool {
        entries >= self.limit || since.is_some_and(|t| t.elapsed() >= self.interval)
    }
}

impl Default for BackendBatch {
    fn default() -> Self {
        BackendBatch {
            interval: Self::DEFAULT_INTERVAL,
            limit: Self::DEFAULT_LIMIT,
        }
    }
}

/// The raised alarms (replicated), shared with the API.
pub type SharedAlarms = Arc<std::sync::Mutex<Vec<AlarmMember>>>;

/// Shared handle to the lease table (the API and the leader's expiry task read it).
pub type SharedLeases = Arc<std::sync::Mutex<LeaseTable>>;

impl txn::Leases for LeaseTable {
    fn exists(&self, id: i64) -> bool {
        self.contains(id)
    }
}

/// What the state machine keeps beside the key-value data, in the store's meta
/// table: read back when the member starts and after a leader's snapshot.
struct Stored {
    applied: u64,
    applied_term: u64,
    membership: Membership,
    leases: LeaseTable,
    alarms: Vec<AlarmMember>,
    auth: AuthState,
}

impl Stored {
    fn read(view: &mvcc::ReadView) -> Result<Stored, RaftError> {
        let (applied, applied_term) = read_applied(view)?;
        let membership = match view.meta(META_MEMBERSHIP).map_err(apply_err)? {
            Some(b) => Membership::decode(b.as_slice()).map_err(RaftError::decode)?,
            None => Membership::default(),
        };
        let leases = match view.meta(META_LEASES).map_err(apply_err)? {
            Some(b) => LeaseRecords::decode(b.as_slice()).map_err(RaftError::decode)?,
            None => LeaseRecords::default(),
        };
        let alarms = match view.meta(META_ALARMS).map_err(apply_err)? {
            Some(b) => {
                AlarmResponse::decode(b.as_slice())
                    .map_err(RaftError::decode)?
                    .alarms
            }
            None => Vec::new(),
        };
        let auth = match view.meta(META_AUTH).map_err(apply_err)? {
            Some(b) => AuthState::decode(b.as_slice()).map_err(RaftError::decode)?,
            None => AuthState::default(),
        };
        Ok(Stored {
            applied,
            applied_term,
            membership,
            leases: LeaseTable::from_records(
                &leases,
                |id| read_renewed(view, id),
                applied,
                std::time::Instant::now(),
            )?,
            alarms,
            auth,
        })
    }
}

/// The index and term of the last applied entry, as stored.
fn read_applied(view: &mvcc::ReadView) -> Result<(u64, u64), RaftError> {
    Ok(match view.meta(META_APPLIED).map_err(apply_err)? {
        Some(b) if b.len() == 16 => (be_u64(&b[..8]), be_u64(&b[8..])),
        _ => (0, 0),
    })
}

/// Lease `id`'s stored renewal index (0 when none is stored).
fn read_renewed(view: &mvcc::ReadView, id: i64) -> Result<u64, RaftError> {
    Ok(
        match view.meta(&meta_lease_renewed(id)).map_err(apply_err)? {
            Some(b) if b.len() == 8 => be_u64(&b),
            _ => 0,
        },
    )
}

/// The Raft configuration as of the last applied entry, as stored.
fn read_conf_state(view: &mvcc::ReadView) -> Result<ConfState, RaftError> {
    Ok(match view.meta(META_CONF_STATE).map_err(apply_err)? {
        Some(b) => ConfState::parse_from_bytes(&b).map_err(RaftError::decode)?,
        None => ConfState::default(),
    })
}

impl Applier {
    /// Opens the state machine over `store`, reading what it last applied
    /// (the auth store is loaded into `auth`).
    pub fn open(
        store: Arc<Store>,
        member_id: u64,
        waiters: Arc<Waiters<ApplyResult>>,
        auth: Arc<Auth>,
    ) -> Result<(Applier, watch::Receiver<Membership>), RaftError> {
        let stored = Stored::read(&store.read().map_err(apply_err)?)?;
        let Stored {
            applied,
            applied_term,
            membership,
            leases,
            alarms,
            auth: auth_state,
        } = stored;
        auth.load(auth_state);
        let leases = Arc::new(std::sync::Mutex::new(leases));
        let alarms = Arc::new(std::sync::Mutex::new(alarms));
        let (membership_tx, membership_rx) = watch::channel(membership.clone());
        let (events, _) = broadcast::channel(1024);
        Ok((
            Applier {
                store,
                member_id,
                applied,
                applied_term,
                membership,
                membership_tx,
                waiters,
                events,
                leases,
                alarms,
                auth,
                durable_applied: applied,
                dirty_since: None,
                batch: BackendBatch::default(),
            },
            membership_rx,
        ))
    }

    /// Whether the applied state that is not yet durable has waited long
    /// enough, or is large enough, to be made durable now.
    fn flush_due(&self) -> bool {
        let waiting = self.applied.saturating_sub(self.durable_applied);
        self.batch.due(self.dirty_since, waiting)
    }

    /// Makes applied state durable as `batch` says instead of etcd's defaults.
    pub fn with_backend_batch(mut self, batch: BackendBatch) -> Applier {
        self.batch = batch;
        self
    }

    /// Records the initial membership and configuration of a new cluster.
    pub fn bootstrap(
        &mut self,
        membership: Membership,
        conf_state: &ConfState,
    ) -> Result<(), RaftError> {
        let mut batch = self.store.batch().map_err(apply_err)?;
        batch
            .set_meta(META_MEMBERSHIP, &membership.encode_to_vec())
            .map_err(apply_err)?;
        let cs = conf_state.write_to_bytes().map_err(RaftError::decode)?;
        batch.set_meta(META_CONF_STATE, &cs).map_err(apply_err)?;
        // The bootstrap state stands for log index 1, term 1 (see RaftStorage::bootstrap).
        let index = crate::raft::storage::BOOTSTRAP_INDEX;
        batch
            .set_meta(META_APPLIED, &applied_bytes(index, 1))
            .map_err(apply_err)?;
        batch.commit().map_err(apply_err)?;
        self.applied = index;
        self.applied_term = 1;
        self.durable_applied = index;
        self.membership = membership.clone();
        self.membership_tx.send_replace(membership);
        Ok(())
    }

    /// Tells whoever listens that the store reached `revision` with changes
    /// whose events were not collected (see [`AppliedEvents`]).
    fn tell_omitted(&self, revision: i64) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Arc::new(AppliedEvents {
                revision,
                events: Vec::new(),
                omitted: true,
            }));
        }
    }

    /// Watchers subscribe here to every applied change (batches applied
    /// while no one listened, or a snapshot restored meanwhile, come as an
    /// `omitted` marker: see [`AppliedEvents`]).
    pub fn events(&self) -> broadcast::Sender<Arc<AppliedEvents>> {
        self.events.clone()
    }

    /// The lease table.
    pub fn leases(&self) -> SharedLeases {
        self.leases.clone()
    }

    /// The raised alarms.
    pub fn alarms(&self) -> SharedAlarms {
        self.alarms.clone()
    }

    /// The builder of snapshots for lagging followers.
    pub fn snapshot_source(&self) -> Box<dyn SnapshotSource> {
        Box::new(StoreSnapshots {
            store: self.store.clone(),
        })
    }

    fn apply_request(
        &mut self,
        batch: &mut mvcc::Writer<'_>,
        index: u64,
        req: Request,
        events: &mut Vec<mvcc::Event>,
    ) -> Result<ApplyResult, RaftError> {
        let leases_handle = self.leases.clone();
        let mut leases = leases_handle
            .lock()
            .map_err(|_| RaftError::Apply("lease table poisoned".into()))?;
        let Some(op) = req.op else {
            return Ok(Ok((Applied::Done, self.store_rev(batch))));
        };
        if let Some(info) = &req.auth_info {
            if let Err(e) = self.auth.check_at_apply(info, &op) {
                return Ok(Err(ApplyError::Auth(e)));
            }
        }
        let result = match op {
            Op::Put(p) => {
                let mut rt = batch.txn().map_err(apply_err)?;
                let r = txn::put(&mut rt, &p, &*leases);
                let (rev, evs) = rt.end();
                events.extend(evs);
                r.map(|resp| (Applied::Put(resp), rev))
            }
            Op::DeleteRange(d) => {
                let mut rt = batch.txn().map_err(apply_err)?;
                let r = txn::delete_range(&mut rt, &d);
                let (rev, evs) = rt.end();
                events.extend(evs);
                r.map(|resp| (Applied::DeleteRange(resp), rev))
            }
            Op::Txn(t) => {
                let mut rt = batch.txn().map_err(apply_err)?;
                let r = txn::txn(&mut rt, &t, &*leases);
                let (rev, evs) = rt.end();
                events.extend(evs);
                r.map(|resp| (Applied::Txn(resp), rev))
            }
            Op::Compaction(c) => {
                let rev = self.store_rev(batch);
                batch
                    .compact(c.revision)
                    .map(|_| {
                        (
                            Applied::Compaction(CompactionResponse { header: None }),
                            rev,
                        )
                    })
                    .map_err(ApplyError::from)
            }
            Op::Publish(p) => {
                if let Some(m) = self.membership.member_mut(p.member_id) {
                    m.name = p.name.clone();
                    m.client_urls = p.client_urls.clone();
                    if p.member_id == self.member_id {
                        tracing::info!(
                            local_member_id = %format!("{:x}", self.member_id),
                            cluster_id = %format!("{:x}", self.membership.cluster_id),
                            name = %p.name,
                            client_urls = ?p.client_urls,
                            "published local member to cluster through raft"
                        );
                    }
                }
                Ok((Applied::Done, self.store_rev(batch)))
            }
            Op::ClusterVersion(v) => {
                if self.membership.cluster_version != v.version {
                    self.membership.cluster_version = v.version.clone();
                    let short: String = v.version.split('.').take(2).collect::<Vec<_>>().join(".");
                    tracing::info!(cluster_version = %short, "enabled capabilities for version {short}");
                }
                Ok((Applied::Done, self.store_rev(batch)))
            }
            Op::LeaseGrant(g) => {
                if leases.contains(g.id) {
                    Err(ApplyError::LeaseExists)
                } else {
                    leases.grant(g.id, g.ttl, std::time::Instant::now(), index);
                    batch
                        .set_meta(META_LEASES, &leases.records().encode_to_vec())
                        .map_err(apply_err)?;
                    set_renewed(batch, g.id, index)?;
                    let resp = LeaseGrantResponse {
                        header: None,
                        id: g.id,
                        ttl: g.ttl,
                        error: String::new(),
                    };
                    Ok((Applied::LeaseGrant(resp), self.store_rev(batch)))
                }
            }
            Op::LeaseRevoke(r) => {
                if !leases.revoke(r.id) {
                    Err(ApplyError::LeaseNotFound)
                } else {
                    revoked(batch, &leases, r.id, events)?
                }
            }
            Op::LeaseExpire(x) => match leases.expire(x.id, x.checked_index) {
                Expiry::Revoked => revoked(batch, &leases, x.id, events)?,
                Expiry::Renewed => {
                    tracing::debug!(
                        lease = %format!("{:x}", x.id),
                        "lease renewed past the index the leader found it expired at: kept"
                    );
                    Ok((Applied::Done, self.store_rev(batch)))
                }
                Expiry::NotFound => Err(ApplyError::LeaseNotFound),
            },
            Op::LeaseKeepAlive(k) => match leases.renew(k.id, std::time::Instant::now(), index) {
                Some(ttl) => {
                    set_renewed(batch, k.id, index)?;
                    let resp = LeaseKeepAliveResponse {
                        header: None,
                        id: k.id,
                        ttl,
                    };
                    Ok((Applied::LeaseKeepAlive(resp), self.store_rev(batch)))
                }
                None => Err(ApplyError::LeaseNotFound),
            },
            Op::Alarm(a) => {
                let target = AlarmMember {
                    member_id: a.member_id,
                    alarm: a.alarm,
                };
                let mut alarms = self
                    .alarms
                    .lock()
                    .map_err(|_| RaftError::Apply("alarm list poisoned".into()))?;
                let changed = match AlarmAction::try_from(a.action) {
                    Ok(AlarmAction::Activate) if a.alarm != 0 && !alarms.contains(&target) => {
                        tracing::warn!(member_id = %format!("{:x}", a.member_id), alarm = a.alarm, "alarm raised");
                        alarms.push(target);
                        vec![target]
                    }
                    Ok(AlarmAction::Deactivate) if alarms.contains(&target) => {
                        alarms.retain(|x| x != &target);
                        tracing::info!(member_id = %format!("{:x}", a.member_id), alarm = a.alarm, "alarm disarmed");
                        vec![target]
                    }
                    _ => Vec::new(),
                };
                let record = AlarmResponse {
                    header: None,
                    alarms: alarms.clone(),
                };
                batch
                    .set_meta(META_ALARMS, &record.encode_to_vec())
                    .map_err(apply_err)?;
                Ok((Applied::Alarms(changed), self.store_rev(batch)))
            }
            Op::Auth(a) => match a.op {
                Some(op) => {
                    let persist =
                        !matches!(op, crate::pb::lcraftpb::auth_request::Op::Authenticate(_));
                    match self.auth.apply(op) {
                        Ok(applied) => {
                            if persist {
                                batch
                                    .set_meta(META_AUTH, &self.auth.state().encode_to_vec())
                                    .map_err(apply_err)?;
                            }
                            Ok((Applied::Auth(applied), self.store_rev(batch)))
                        }
                        Err(e) => Err(ApplyError::Auth(e)),
                    }
                }
                None => Ok((Applied::Done, self.store_rev(batch))),
            },
        };
        match result {
            Err(ApplyError::Mvcc(MvccError::Storage(e)))
            | Err(ApplyError::Mvcc(MvccError::Corrupt(e))) => Err(RaftError::Apply(e)),
            other => Ok(other),
        }
    }

    fn store_rev(&self, batch: &mvcc::Writer<'_>) -> i64 {
        batch.current_revision()
    }

    fn apply_conf_change(
        &mut self,
        cc: ConfChangeV2,
        context: &[u8],
        conf: &mut dyn FnMut(&ConfChangeV2) -> Result<ConfState, RaftError>,
    ) -> Result<(u64, ApplyResult, ConfState), RaftError> {
        let ctx = ConfChangeContext::decode(context).unwrap_or_default();
        let mut cc = cc;
        if ctx.intent() == ConfChangeIntent::Update {
            // An update changes peer URLs, never the role: the proposer chose
            // the change type from its view, and a promotion applied since
            // would be undone by "add learner".
            for change in cc.mut_changes() {
                if let Some(m) = self.membership.member(change.node_id) {
                    change.set_change_type(if m.is_learner {
                        ConfChangeType::AddLearnerNode
                    } else {
                        ConfChangeType::AddNode
                    });
                }
            }
        }
        let refused = self.refusal(&ctx, &cc);
        if refused.is_some() {
            // Raft still applies the entry, as a change of no member: raft-rs
            // skips a change of node 0, as etcd's raft does for the changes
            // etcd refuses.
            for change in cc.mut_changes() {
                change.node_id = 0;
            }
        }
        let cs = conf(&cc)?;
        if let Some(e) = refused {
            tracing::warn!(request_id = ctx.request_id, error = %e, "refused a configuration change");
            return Ok((ctx.request_id, Err(ApplyError::Membership(e)), cs));
        }
        for change in cc.get_changes() {
            let id = change.node_id;
            match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    let learner = change.get_change_type() == ConfChangeType::AddLearnerNode;
                    let mut info = ctx.member.clone().unwrap_or_default();
                    if let Some(existing) = self.membership.member(id) {
                        // Promotion or update: keep what we know.
                        let mut e = existing.clone();
                        e.is_learner = learner;
                        if !info.peer_urls.is_empty() {
                            e.peer_urls = info.peer_urls.clone();
                        }
                        info = e;
                    }
                    info.id = id;
                    info.is_learner = learner;
                    self.membership.upsert(info);
                }
                ConfChangeType::RemoveNode => self.membership.remove(id),
            }
        }
        let members = self.membership.members.clone();
        Ok((ctx.request_id, Ok((Applied::Members(members), 0)), cs))
    }

    /// Why the membership as of this entry refuses the change, if it does:
    /// every member answers alike, whatever its proposer saw.
    fn refusal(&self, ctx: &ConfChangeContext, cc: &ConfChangeV2) -> Option<MembershipError> {
        let member = ctx.member.clone().unwrap_or_default();
        cc.get_changes().iter().find_map(|change| {
            self.membership
                .validate(ctx.intent(), change.node_id, &member)
                .err()
        })
    }
}

impl StateMachine for Applier {
    fn apply(
        &mut self,
        entries: Vec<Entry>,
        conf: &mut dyn FnMut(&ConfChangeV2) -> Result<ConfState, RaftError>,
    ) -> Result<(), RaftError> {
        let store = self.store.clone();
        let mut owner = store.batch().map_err(apply_err)?;
        // Read before the batch changes anything; see `AppliedEvents`.
        let listened = self.events.receiver_count() > 0;
        owner.set_events(listened);
        let revision_before = owner.current_revision();
        // One writer for the whole run: the tables are opened once per batch.
        let mut batch = owner.writer().map_err(apply_err)?;
        let mut results: Vec<(u64, ApplyResult)> = Vec::new();
        let mut events = Vec::new();
        let mut membership_changed = false;
        let mut conf_state = None;
        for e in entries {
            if e.index <= self.applied {
                continue; // already applied before a restart
            }
            match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => {
                    // From the entry's own buffer: a put's key and value
                    // are slices of it, not copies.
                    let req = Request::decode(e.data.clone()).map_err(RaftError::decode)?;
                    let id = req.id;
                    let is_member_op =
                        matches!(req.op, Some(Op::Publish(_)) | Some(Op::ClusterVersion(_)));
                    let res = self.apply_request(&mut batch, e.index, req, &mut events)?;
                    membership_changed |= is_member_op;
                    if self.waiters.is_waiting(id) {
                        results.push((id, res));
                    }
                }
                EntryType::EntryNormal => {} // a new leader's empty entry
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(RaftError::decode)?;
                    let (id, res, cs) = self.apply_conf_change(cc.into_v2(), &e.context, conf)?;
                    results.push((id, res));
                    conf_state = Some(cs);
                    membership_changed = true;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(RaftError::decode)?;
                    let (id, res, cs) = self.apply_conf_change(cc, &e.context, conf)?;
                    results.push((id, res));
                    conf_state = Some(cs);
                    membership_changed = true;
                }
            }
            self.applied = e.index;
            self.applied_term = e.term;
        }
        // The lease table learns how far the log is applied once per batch,
        // entries that are not requests (a new leader's empty entry, a
        // configuration change) included.
        if let Ok(mut t) = self.leases.lock() {
            t.applying(self.applied);
        }
        batch
            .set_meta(
                META_APPLIED,
                &applied_bytes(self.applied, self.applied_term),
            )
            .map_err(apply_err)?;
        if membership_changed {
            batch
                .set_meta(META_MEMBERSHIP, &self.membership.encode_to_vec())
                .map_err(apply_err)?;
        }
        if let Some(cs) = &conf_state {
            let bytes = cs.write_to_bytes().map_err(RaftError::decode)?;
            batch.set_meta(META_CONF_STATE, &bytes).map_err(apply_err)?;
        }
        let revision = batch.current_revision();
        drop(batch);
        let mut batch = owner;
        // Configuration changes are made durable at once; other batches may wait
        // for the next flush: the Raft log holds them meanwhile.
        let durable = conf_state.is_some() || self.flush_due();
        batch.set_durable(durable);
        batch.commit().map_err(apply_err)?;
        if durable {
            self.durable_applied = self.applied;
            self.dirty_since = None;
        } else if self.dirty_since.is_none() {
            self.dirty_since = Some(std::time::Instant::now());
        }

        if membership_changed {
            self.membership_tx.send_replace(self.membership.clone());
        }
        // After the commit: the store now shows the batch, so whoever
        // subscribes from here on finds its changes there.
        if !events.is_empty() {
            let _ = self.events.send(Arc::new(AppliedEvents {
                revision,
                events,
                omitted: false,
            }));
        } else if !listened && revision != revision_before {
            self.tell_omitted(revision);
        }
        for (id, res) in results {
            self.waiters.trigger(id, res);
        }
        Ok(())
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), RaftError> {
        self.store.restore(&snapshot.data).map_err(apply_err)?;
        let meta = snapshot.get_metadata();
        let stored = Stored::read(&self.store.read().map_err(apply_err)?)?;
        if let Ok(mut t) = self.leases.lock() {
            *t = stored.leases;
        }
        if let Ok(mut a) = self.alarms.lock() {
            *a = stored.alarms;
        }
        self.auth.load(stored.auth);
        self.applied = meta.index;
        self.applied_term = meta.term;
        self.durable_applied = meta.index;
        self.dirty_since = None;
        self.membership = stored.membership.clone();
        self.membership_tx.send_replace(stored.membership);
        // The store jumped to the snapshot's revision: listeners read what
        // they missed from it, as after a batch whose events were left out.
        self.tell_omitted(self.store.current_revision());
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "restored state from a leader's snapshot"
        );
        Ok(())
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn durable_index(&self) -> u64 {
        self.durable_applied
    }

    fn flush(&mut self, force: bool) -> Result<(), RaftError> {
        if self.dirty_since.is_none() {
            return Ok(());
        }
        if force || self.flush_due() {
            self.store.flush().map_err(apply_err)?;
            self.durable_applied = self.applied;
            self.dirty_since = None;
        }
        Ok(())
    }

    fn applied_metadata(&self) -> Result<SnapshotMetadata, RaftError> {
        let conf_state = read_conf_state(&self.store.read().map_err(apply_err)?)?;
        let mut meta = SnapshotMetadata {
            index: self.applied,
            term: self.applied_term,
            ..Default::default()
        };
        meta.set_conf_state(conf_state);
        Ok(meta)
    }
}

/// Builds snapshots from the applied state.
struct StoreSnapshots {
    store: Arc<Store>,
}

impl SnapshotSource for StoreSnapshots {
    fn snapshot(&self) -> Result<Snapshot, RaftError> {
        // The redb tables as last committed: data and applied index of the
        // last durable batch, consistent with each other. (Not
        // `read_durable`: raft-rs may ask from inside an apply, which holds
        // the store's writer.)
        let view = self.store.read().map_err(apply_err)?;
        let (index, term) = read_applied(&view)?;
        let conf_state = read_conf_state(&view)?;
        let data = view.snapshot_bytes().map_err(apply_err)?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        tracing::info!(
            index,
            term,
            bytes = snap.data.len(),
            "sending a snapshot to a lagging follower"
        );
        Ok(snap)
    }
}

/// Stores lease `id`'s renewal index.
fn set_renewed(batch: &mut mvcc::Writer<'_>, id: i64, index: u64) -> Result<(), RaftError> {
    batch
        .set_meta(&meta_lease_renewed(id), &index.to_be_bytes())
        .map_err(apply_err)
}

/// After lease `id` left `leases`: stores the lease records without it and
/// deletes its keys, in one revision.
fn revoked(
    batch: &mut mvcc::Writer<'_>,
    leases: &LeaseTable,
    id: i64,
    events: &mut Vec<mvcc::Event>,
) -> Result<ApplyResult, RaftError> {
    batch
        .set_meta(META_LEASES, &leases.records().encode_to_vec())
        .map_err(apply_err)?;
    batch
        .delete_meta(&meta_lease_renewed(id))
        .map_err(apply_err)?;
    let mut rt = batch.txn().map_err(apply_err)?;
    let deleted = txn::delete_leased(&mut rt, id);
    let (rev, evs) = rt.end();
    events.extend(evs);
    Ok(deleted.map(|_| {
        (
            Applied::LeaseRevoke(LeaseRevokeResponse { header: None }),
            rev,
        )
    }))
}

fn apply_err(e: MvccError) -> RaftError {
    RaftError::Apply(e.to_string())
}

fn applied_bytes(index: u64, term: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_be_bytes());
    b[8..].copy_from_slice(&term.to_be_bytes());
    b
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::PutRequest;

    fn applier(dir: &std::path::Path, batch: BackendBatch) -> Applier {
        let store = Arc::new(Store::open(dir.join("kv.redb")).unwrap());
        let auth = Arc::new(Auth::new(&crate::auth::AuthOptions::default()));
        let (applier, _) = Applier::open(store, 1, Arc::new(Waiters::default()), auth).unwrap();
        applier.with_backend_batch(batch)
    }

    fn puts(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes
            .map(|index| {
                let put = PutRequest {
                    key: format!("k{index}").into_bytes().into(),
                    value: b"v".to_vec().into(),
                    ..Default::default()
                };
                entry(index, Op::Put(put))
            })
            .collect()
    }

    fn apply(applier: &mut Applier, entries: Vec<Entry>) {
        let mut no_conf = |_: &ConfChangeV2| -> Result<ConfState, RaftError> {
            unreachable!("no configuration change is applied here")
        };
        applier.apply(entries, &mut no_conf).unwrap();
    }

    /// The log entry at `index` (term 1) of a request for `op`.
    fn entry(index: u64, op: Op) -> Entry {
        let request = Request {
            id: index,
            op: Some(op),
            auth_info: None,
        };
        Entry {
            index,
            term: 1,
            data: request.encode_to_vec().into(),
            ..Default::default()
        }
    }

    fn lease_entries(grant: u64, keep_alive: u64) -> Vec<Entry> {
        use crate::pb::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest};
        vec![
            entry(grant, Op::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 7 })),
            entry(
                grant + 1,
                Op::Put(PutRequest {
                    key: b"leased".to_vec().into(),
                    value: b"v".to_vec().into(),
                    lease: 7,
                    ..Default::default()
                }),
            ),
            entry(
                keep_alive,
                Op::LeaseKeepAlive(LeaseKeepAliveRequest { id: 7 }),
            ),
        ]
    }

    fn expire(index: u64, checked_index: u64) -> Entry {
        entry(
            index,
            Op::LeaseExpire(crate::pb::lcraftpb::LeaseExpireRequest {
                id: 7,
                checked_index,
            }),
        )
    }

    fn has_lease_and_key(a: &Applier) -> (bool, bool) {
        let lease = a.leases().lock().unwrap().contains(7);
        let key = a
            .store
            .read()
            .unwrap()
            .range(b"leased", b"", &Default::default())
            .unwrap()
            .count
            > 0;
        (lease, key)
    }

    #[test]
    fn an_expiry_decided_before_a_keep_alive_it_follows_in_the_log_keeps_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = applier(dir.path(), BackendBatch::default());
        apply(&mut a, lease_entries(1, 3));
        expiries_keep_then_revoke(&mut a);
    }

    /// After [`lease_entries`]`(1, 3)`: an expiry checked at 1 keeps the lease
    /// (the keep-alive at 3 is past it), one checked at 3 revokes it and its key.
    fn expiries_keep_then_revoke(a: &mut Applier) {
        apply(a, vec![expire(4, 1)]);
        assert_eq!(has_lease_and_key(a), (true, true), "renewed past the check");
        apply(a, vec![expire(5, 3)]);
        assert_eq!(
            has_lease_and_key(a),
            (false, false),
            "checked after renewal"
        );
    }

    #[test]
    fn a_restarted_member_decides_an_expiry_as_the_others_do() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut a = applier(dir.path(), BackendBatch::default());
            apply(&mut a, lease_entries(1, 3));
            a.flush(true).unwrap();
        }
        // Restarted after the keep-alive: the renewal index came back from disk.
        let mut a = applier(dir.path(), BackendBatch::default());
        assert_eq!(a.leases().lock().unwrap().get(7).unwrap().renewed, 3);
        expiries_keep_then_revoke(&mut a);
        a.flush(true).unwrap();
        drop(a);
        // The stored renewal index went with the lease.
        let a = applier(dir.path(), BackendBatch::default());
        let view = a.store.read().unwrap();
        assert_eq!(view.meta(&meta_lease_renewed(7)).unwrap(), None);
    }

    #[test]
    fn a_member_brought_up_by_a_snapshot_decides_an_expiry_as_the_others_do() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = applier(from.path(), BackendBatch::default());
        apply(&mut leader, lease_entries(1, 3));
        leader.flush(true).unwrap();
        let snapshot = leader.snapshot_source().snapshot().unwrap();
        let mut follower = applier(to.path(), BackendBatch::default());
        follower.restore(&snapshot).unwrap();
        let leases = follower.leases();
        let lease = leases.lock().unwrap().get(7).cloned().unwrap();
        assert_eq!(lease.renewed, 3);
        assert_eq!(leases.lock().unwrap().checked_index(), 3);
        apply(&mut follower, vec![expire(4, 2)]);
        assert_eq!(has_lease_and_key(&follower), (true, true));
    }

    #[test]
    fn a_restored_snapshot_tells_listeners_to_read_what_it_brought_from_the_store() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = applier(from.path(), BackendBatch::default());
        apply(&mut leader, puts(1..=3));
        leader.flush(true).unwrap();
        let snapshot = leader.snapshot_source().snapshot().unwrap();
        let mut follower = applier(to.path(), BackendBatch::default());
        let mut listener = follower.events().subscribe();
        follower.restore(&snapshot).unwrap();
        let told = listener.try_recv().unwrap();
        assert!(told.omitted);
        assert_eq!(told.revision, 4);
        assert_eq!(follower.store.current_revision(), 4);
    }

    #[test]
    fn a_new_leaders_empty_entry_counts_as_applied_for_expiries() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = applier(dir.path(), BackendBatch::default());
        apply(&mut a, lease_entries(1, 3));
        let empty = Entry {
            index: 4,
            term: 2,
            ..Default::default()
        };
        apply(&mut a, vec![empty]);
        // A leader elected with index 4 last decides expiries from here on.
        assert_eq!(a.leases().lock().unwrap().checked_index(), 4);
    }

    #[test]
    fn a_lease_granted_again_under_the_same_id_outlives_an_old_expiry() {
        use crate::pb::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
        let dir = tempfile::tempdir().unwrap();
        let mut a = applier(dir.path(), BackendBatch::default());
        apply(&mut a, lease_entries(1, 3));
        apply(
            &mut a,
            vec![
                entry(4, Op::LeaseRevoke(LeaseRevokeRequest { id: 7 })),
                entry(5, Op::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 7 })),
            ],
        );
        a.flush(true).unwrap(); // meta is read from the last durable commit
        assert_eq!(
            a.store
                .read()
                .unwrap()
                .meta(&meta_lease_renewed(7))
                .unwrap(),
            Some(5u64.to_be_bytes().to_vec()),
            "the revoke dropped the old renewal, the grant stored its own"
        );
        // An expiry the leader decided before the revoke and the new grant.
        apply(&mut a, vec![expire(6, 3)]);
        assert!(a.leases().lock().unwrap().contains(7));
    }

    #[test]
    fn applied_state_becomes_durable_once_the_batch_limit_of_entries_waits() {
        let dir = tempfile::tempdir().unwrap();
        let hour = std::time::Duration::from_secs(3600);
        let mut a = applier(
            dir.path(),
            BackendBatch {
                interval: hour,
                limit: 3,
            },
        );
        apply(&mut a, puts(1..=2));
        a.flush(false).unwrap();
        assert_eq!((a.applied_index(), a.durable_index()), (2, 0));
        apply(&mut a, puts(3..=3));
        assert_eq!((a.applied_index(), a.durable_index()), (3, 3));
        apply(&mut a, puts(4..=4));
        assert_eq!(a.durable_index(), 3);
        a.flush(true).unwrap();
        assert_eq!(a.durable_index(), 4);
    }

    #[test]
    fn applied_state_becomes_durable_once_it_waited_the_batch_interval() {
        let dir = tempfile::tempdir().unwrap();
        let batch = BackendBatch {
            interval: std::time::Duration::ZERO,
            limit: u64::MAX,
        };
        let mut a = applier(dir.path(), batch);
        apply(&mut a, puts(1..=1));
        assert_eq!(a.durable_index(), 0, "nothing waited before this batch");
        apply(&mut a, puts(2..=2));
        assert_eq!(a.durable_index(), 2);
        apply(&mut a, puts(3..=3));
        a.flush(false).unwrap();
        assert_eq!(a.durable_index(), 3);
    }

    #[test]
    fn a_batch_sends_its_events_only_to_those_who_listened_when_it_began() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = applier(dir.path(), BackendBatch::default());
        let sender = a.events();
        apply(&mut a, puts(1..=2)); // unheard (see the next test)
        let mut rx = sender.subscribe();
        apply(&mut a, puts(3..=4));
        let batch = rx.try_recv().unwrap();
        assert!(!batch.omitted);
        assert_eq!(batch.revision, 5);
        let keys: Vec<_> = batch.events.iter().map(|e| e.kv.key.clone()).collect();
        assert_eq!(keys, vec![b"k3".to_vec(), b"k4".to_vec()]);
    }

    /// The entry at `index` of a configuration change of member `id`, as the
    /// Cluster service proposes it.
    fn conf_entry(
        index: u64,
        kind: ConfChangeType,
        intent: crate::pb::lcraftpb::ConfChangeIntent,
        member: MemberInfo,
    ) -> Entry {
        let mut single = raft::prelude::ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = member.id;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let context = ConfChangeContext {
            member: Some(member),
            request_id: 100 + index,
            intent: intent.into(),
        };
        let mut e = Entry {
            index,
            term: 1,
            data: cc.write_to_bytes().unwrap().into(),
            context: context.encode_to_vec().into(),
            ..Default::default()
        };
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e
    }

    #[test]
    fn a_change_the_applied_membership_refuses_is_answered_with_etcds_error_and_changes_no_member()
    {
        use crate::pb::lcraftpb::ConfChangeIntent::{Add, Promote};
        let dir = tempfile::tempdir().unwrap();
        let waiters = Arc::new(Waiters::default());
        let store = Arc::new(Store::open(dir.path().join("kv.redb")).unwrap());
        let auth = Arc::new(Auth::new(&crate::auth::AuthOptions::default()));
        let (mut a, members) = Applier::open(store, 1, waiters.clone(), auth).unwrap();
        let learner = |id: u64| MemberInfo {
            id,
            peer_urls: vec!["http://127.0.0.1:9".into()],
            is_learner: true,
            ..Default::default()
        };
        // Two proposers saw the same free URLs (and IDs from different
        // seconds), a third promoted a member that is not a learner: all were
        // proposed, only the first can be applied.
        let entries = vec![
            conf_entry(1, ConfChangeType::AddLearnerNode, Add, learner(7)),
            conf_entry(2, ConfChangeType::AddLearnerNode, Add, learner(8)),
            conf_entry(3, ConfChangeType::AddNode, Promote, learner(9)),
        ];
        let answers: Vec<_> = (1..=3).map(|i| waiters.register(100 + i)).collect();
        let mut told = Vec::new();
        let mut conf = |cc: &ConfChangeV2| -> Result<ConfState, RaftError> {
            told.push(cc.get_changes()[0].node_id);
            Ok(ConfState::default())
        };
        a.apply(entries, &mut conf).unwrap();
        assert_eq!(told, vec![7, 0, 0], "raft-rs is told a change of no member");
        let mut answers = answers.into_iter().map(|mut rx| rx.try_recv().unwrap());
        assert!(matches!(answers.next(), Some(Ok((Applied::Members(_), _)))));
        for expected in [MembershipError::PeerUrlExists, MembershipError::IdNotFound] {
            match answers.next() {
                Some(Err(ApplyError::Membership(e))) => assert_eq!(e, expected),
                other => panic!("expected {expected:?}, got {other:?}"),
            }
        }
        let ids: Vec<u64> = members.borrow().members.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![7]);
        assert_eq!(a.applied_index(), 3, "refused changes are applied entries");
    }

    #[test]
    fn an_update_proposed_before_a_promotion_keeps_the_promoted_voter_a_voter() {
        use crate::pb::lcraftpb::ConfChangeIntent::{Add, Promote, Update};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("kv.redb")).unwrap());
        let auth = Arc::new(Auth::new(&crate::auth::AuthOptions::default()));
        let (mut a, members) = Applier::open(store, 1, Arc::new(Waiters::default()), auth).unwrap();
        let seven = |url: &str, is_learner: bool| MemberInfo {
            id: 7,
            peer_urls: vec![url.into()],
            is_learner,
            ..Default::default()
        };
        // The update's proposer still saw 7 as a learner.
        let entries = vec![
            conf_entry(
                1,
                ConfChangeType::AddLearnerNode,
                Add,
                seven("http://a:1", true),
            ),
            conf_entry(
                2,
                ConfChangeType::AddNode,
                Promote,
                seven("http://a:1", true),
            ),
            conf_entry(
                3,
                ConfChangeType::AddLearnerNode,
                Update,
                seven("http://a:2", true),
            ),
        ];
        let mut told = Vec::new();
        let mut conf = |cc: &ConfChangeV2| -> Result<ConfState, RaftError> {
            told.push(cc.get_changes()[0].get_change_type());
            Ok(ConfState::default())
        };
        a.apply(entries, &mut conf).unwrap();
        use ConfChangeType::{AddLearnerNode, AddNode};
        assert_eq!(told, vec![AddLearnerNode, AddNode, AddNode]);
        let m = members.borrow().member(7).cloned().unwrap();
        assert!(!m.is_learner);
        assert_eq!(m.peer_urls, vec!["http://a:2".to_string()]);
    }

    #[test]
    fn one_who_subscribes_while_a_silent_batch_applies_is_told_its_events_were_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = applier(dir.path(), BackendBatch::default());
        let sender = a.events();
        // A configuration change runs its closure in the middle of the
        // batch: the subscriber arrives there, after the batch chose not to
        // collect events.
        let mut entries = puts(1..=2);
        let mut cc = ConfChangeV2::default();
        let mut single = raft::prelude::ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::AddLearnerNode);
        single.node_id = 9;
        cc.mut_changes().push(single);
        let mut e = Entry {
            index: 3,
            term: 1,
            data: cc.write_to_bytes().unwrap().into(),
            ..Default::default()
        };
        e.set_entry_type(EntryType::EntryConfChangeV2);
        entries.push(e);
        entries.extend(puts(4..=4));
        let mut rx = None;
        let mut conf = |_: &ConfChangeV2| -> Result<ConfState, RaftError> {
            rx = Some(sender.subscribe());
            Ok(ConfState::default())
        };
        a.apply(entries, &mut conf).unwrap();
        let batch = rx.unwrap().try_recv().unwrap();
        assert!(batch.omitted);
        assert!(batch.events.is_empty());
        assert_eq!(batch.revision, a.store.current_revision());
        assert_eq!(batch.revision, 4);
    }
}
