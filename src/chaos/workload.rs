//! The chaos workload: the tasks that talk to the cluster while the nemesis
//! breaks it, each recording what it did and saw.
//!
//! - [`client`]: reads, writes and compare-and-sets on a few registers, and
//!   appends to a few lists (a read, then a transaction that puts the longer
//!   list if the key's `mod_revision` is still the one read; retried a few
//!   times when another append got there first). Every value and element is
//!   unique. An operation that fails or times out has an unknown outcome.
//! - [`lease_client`]: grants short leases, attaches keys, keeps some alive,
//!   lets some expire and revokes others, probing its keys meanwhile.
//! - [`watcher`]: one watch on the run's key prefix through one member,
//!   reconnecting after faults from the revision after the last one it saw.
//!
//! Times are nanoseconds since the run started, on the monotonic clock.
//! Every task ends by itself at the run's deadline (the watchers when told
//! the last revision to wait for, or at their own deadline).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use super::checks::{Append, AppendOutcome, KeyProbe, LeaseLife, ListRead, WatchEvent};
use super::linearizable::{Op, Operation};
use super::ChaosConfig;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::lease_client::LeaseClient;
use crate::pb::etcdserverpb::watch_client::WatchClient;
use crate::pb::etcdserverpb::{
    request_op, response_op, watch_request, Compare, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchRequest,
};

/// Register `k`'s key.
pub fn register_key(prefix: &str, k: usize) -> String {
    format!("{prefix}{k}")
}

/// List `k`'s key.
pub fn list_key(prefix: &str, k: usize) -> String {
    format!("{prefix}list/{k}")
}

/// The prefix of every lease key.
pub fn lease_prefix(prefix: &str) -> String {
    format!("{prefix}lease/")
}

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The run's clock and where to reach the cluster.
#[derive(Clone)]
pub struct Run {
    pub urls: Vec<String>,
    pub cfg: ChaosConfig,
    pub start: Instant,
    pub deadline: Instant,
}

impl Run {
    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Channels to members, made on first use and dropped after an error.
struct Conns {
    timeout: Duration,
    urls: Vec<String>,
    open: HashMap<usize, Channel>,
}

impl Conns {
    fn new(run: &Run) -> Self {
        Conns {
            timeout: run.cfg.op_timeout,
            urls: run.urls.clone(),
            open: HashMap::new(),
        }
    }

    async fn get(&mut self, m: usize) -> Option<Channel> {
        if let Some(ch) = self.open.get(&m) {
            return Some(ch.clone());
        }
        let ch = crate::client::connect(&self.urls[m], self.timeout)
            .await
            .ok()?;
        self.open.insert(m, ch.clone());
        Some(ch)
    }

    fn drop_conn(&mut self, m: usize) {
        self.open.remove(&m);
    }
}

/// Runs `f` on member `m`'s channel within the operation timeout; `None` on
/// any failure (and the channel is dropped).
async fn call<T, F, Fut>(conns: &mut Conns, m: usize, f: F) -> Option<T>
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let timeout = conns.timeout;
    let ch = conns.get(m).await?;
    match tokio::time::timeout(timeout, f(ch)).await {
        Ok(Ok(v)) => Some(v),
        _ => {
            conns.drop_conn(m);
            None
        }
    }
}

/// What a register-and-list client recorded.
#[derive(Debug, Default)]
pub struct ClientRecord {
    /// Register operations, by register index.
    pub registers: Vec<(usize, Operation)>,
    /// Appends, by list index.
    pub appends: Vec<(usize, Append)>,
    /// List values seen, by list index.
    pub list_reads: Vec<(usize, ListRead)>,
    /// Acknowledged writes: (revision, key).
    pub acknowledged: Vec<(i64, String)>,
}

/// One client: random register operations and appends on random keys
/// through random members, until the deadline.
pub async fn client(id: usize, run: Run, seed: u64) -> ClientRecord {
    let cfg = &run.cfg;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rec = ClientRecord::default();
    let mut counter = 0u64;
    // The last value this client saw or wrote on each register.
    let mut last: HashMap<usize, u64> = HashMap::new();
    let mut conns = Conns::new(&run);
    while Instant::now() < run.deadline {
        let k = rng.gen_range(0..cfg.keys.max(1));
        let m = rng.gen_range(0..run.urls.len());
        counter += 1;
        let fresh = (id as u64 + 1) * 1_000_000_000 + counter;
        let roll = rng.gen_range(0..10);
        if roll >= 8 && cfg.lists > 0 {
            let l = rng.gen_range(0..cfg.lists);
            append(&mut conns, &run, id, m, l, fresh, &mut rec).await;
            continue;
        }
        let op = match roll {
            0..=3 => Op::Read(None),
            4..=5 => Op::Write(fresh),
            // A CAS mostly targets the value last read or written on this
            // key; value 0 is never written, so a CAS from it must fail.
            _ => Op::Cas {
                from: match last.get(&k) {
                    Some(&v) if rng.gen_bool(0.8) => v,
                    _ => 0,
                },
                to: fresh,
                ok: None,
            },
        };
        let key = register_key(&cfg.key_prefix, k);
        let invoked = run.now();
        let result = call(&mut conns, m, |ch| execute(ch, key.clone(), op.clone())).await;
        let returned = Some(run.now());
        let recorded = match (op, result) {
            (Op::Read(_), Some(Outcome::Read(v))) => Some((Op::Read(Some(v)), returned)),
            // A failed read changed nothing: not recorded.
            (Op::Read(_), _) => None,
            (Op::Write(v), Some(Outcome::Written(rev))) => {
                rec.acknowledged.push((rev, key));
                Some((Op::Write(v), returned))
            }
            (Op::Cas { from, to, .. }, Some(Outcome::Cas(ok, rev))) => {
                if ok {
                    rec.acknowledged.push((rev, key));
                }
                let ok = Some(ok);
                Some((Op::Cas { from, to, ok }, returned))
            }
            // Failed or timed out: it may still take effect.
            (op, _) => Some((op, None)),
        };
        if let Some((op, returned)) = recorded {
            let value = match op {
                Op::Read(Some(v)) => v,
                Op::Write(v) => Some(v),
                Op::Cas {
                    to, ok: Some(true), ..
                } => Some(to),
                _ => None,
            };
            if let Some(v) = value {
                last.insert(k, v);
            }
            rec.registers.push((
                k,
                Operation {
                    client: id,
                    op,
                    invoked,
                    returned,
                },
            ));
        }
    }
    rec
}

/// How many times an append retries after losing a race.
const APPEND_ATTEMPTS: usize = 4;

/// Appends `element` to list `l` through member `m`: read, then put the
/// longer list if the key did not change since; recorded in `rec`.
async fn append(
    conns: &mut Conns,
    run: &Run,
    id: usize,
    m: usize,
    l: usize,
    element: u64,
    rec: &mut ClientRecord,
) {
    let key = list_key(&run.cfg.key_prefix, l);
    let invoked = run.now();
    let mut sent_txn = false;
    let read_invoked = run.now();
    let mut current = call(conns, m, |ch| read_list(ch, key.clone())).await;
    if let Some((value, _)) = &current {
        rec.list_reads.push((
            l,
            ListRead {
                invoked: read_invoked,
                returned: run.now(),
                value: value.clone(),
            },
        ));
    }
    let mut outcome = AppendOutcome::Failed;
    for _ in 0..APPEND_ATTEMPTS {
        let Some((value, mod_rev)) = current.take() else {
            if sent_txn {
                outcome = AppendOutcome::Unknown;
            }
            break;
        };
        let mut next = value.clone();
        next.push(element);
        sent_txn = true;
        let txn_invoked = run.now();
        let result = call(conns, m, |ch| {
            cas_list(ch, key.clone(), mod_rev, encode_list(&next))
        })
        .await;
        match result {
            Some(ListCas::Done(rev)) => {
                rec.acknowledged.push((rev, key.clone()));
                outcome = AppendOutcome::Ok;
                break;
            }
            Some(ListCas::Changed(value, mod_rev)) => {
                rec.list_reads.push((
                    l,
                    ListRead {
                        invoked: txn_invoked,
                        returned: run.now(),
                        value: value.clone(),
                    },
                ));
                current = Some((value, mod_rev));
            }
            None => {
                outcome = AppendOutcome::Unknown;
                break;
            }
        }
    }
    let returned = (outcome != AppendOutcome::Unknown).then(|| run.now());
    rec.appends.push((
        l,
        Append {
            client: id,
            element,
            invoked,
            returned,
            outcome,
        },
    ));
}

/// A list as stored: elements joined by commas.
pub fn encode_list(list: &[u64]) -> Vec<u8> {
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// Parses a stored list (an empty or missing value is the empty list).
pub fn decode_list(bytes: &[u8]) -> Vec<u64> {
    std::str::from_utf8(bytes)
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A linearizable read of a list: its elements and `mod_revision` (0 when missing).
pub async fn read_list(ch: Channel, key: String) -> Result<(Vec<u64>, i64), tonic::Status> {
    let resp = KvClient::new(ch)
        .range(RangeRequest {
            key: key.into_bytes(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(resp
        .kvs
        .first()
        .map(|kv| (decode_list(&kv.value), kv.mod_revision))
        .unwrap_or_default())
}

enum ListCas {
    /// Put at this revision.
    Done(i64),
    /// The key changed: its current list and `mod_revision`.
    Changed(Vec<u64>, i64),
}

async fn cas_list(
    ch: Channel,
    key: String,
    mod_rev: i64,
    value: Vec<u8>,
) -> Result<ListCas, tonic::Status> {
    let k = key.into_bytes();
    let resp = KvClient::new(ch)
        .txn(TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: k.clone(),
                target_union: Some(TargetUnion::ModRevision(mod_rev)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: k.clone().into(),
                    value: value.into(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: k,
                    ..Default::default()
                })),
            }],
        })
        .await?
        .into_inner();
    if resp.succeeded {
        return Ok(ListCas::Done(
            resp.header.map(|h| h.revision).unwrap_or_default(),
        ));
    }
    let current = resp
        .responses
        .into_iter()
        .find_map(|r| match r.response {
            Some(response_op::Response::ResponseRange(range)) => Some(range),
            _ => None,
        })
        .and_then(|range| range.kvs.into_iter().next())
        .map(|kv| (decode_list(&kv.value), kv.mod_revision))
        .unwrap_or_default();
    Ok(ListCas::Changed(current.0, current.1))
}

/// What one register operation returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The value read (`None`: no key, or not a number).
    Read(Option<u64>),
    /// The revision of the acknowledged put.
    Written(i64),
    /// Whether the compare-and-set took, and the revision of its txn.
    Cas(bool, i64),
}

/// Runs one register operation on `key` through `channel`: a read is a
/// linearizable range, a write a put of the value, a compare-and-set a txn
/// that puts `to` only if the value is `from`.
pub async fn execute(channel: Channel, key: String, op: Op) -> Result<Outcome, tonic::Status> {
    let mut kv = KvClient::new(channel);
    let k = key.into_bytes();
    match op {
        Op::Read(_) => {
            let resp = kv
                .range(RangeRequest {
                    key: k,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let v = resp
                .kvs
                .first()
                .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok());
            Ok(Outcome::Read(v))
        }
        Op::Write(v) => {
            let resp = kv
                .put(PutRequest {
                    key: k.into(),
                    value: v.to_string().into_bytes().into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok(Outcome::Written(
                resp.header.map(|h| h.revision).unwrap_or_default(),
            ))
        }
        Op::Cas { from, to, .. } => {
            let resp = kv
                .txn(TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Value as i32,
                        key: k.clone(),
                        target_union: Some(TargetUnion::Value(from.to_string().into_bytes())),
                        ..Default::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: k.into(),
                            value: to.to_string().into_bytes().into(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                })
                .await?
                .into_inner();
            Ok(Outcome::Cas(
                resp.succeeded,
                resp.header.map(|h| h.revision).unwrap_or_default(),
            ))
        }
    }
}

/// What the lease client recorded.
#[derive(Debug, Default)]
pub struct LeaseRecord {
    pub leases: Vec<LeaseLife>,
    pub probes: Vec<KeyProbe>,
    /// Acknowledged puts of lease keys: (revision, key).
    pub acknowledged: Vec<(i64, String)>,
    /// Grants, keep-alives, revokes and probes sent.
    pub operations: usize,
    /// Of which with an unknown outcome.
    pub unknown: usize,
}

/// Keys attached to each lease.
const KEYS_PER_LEASE: usize = 2;

/// Grants leases one after another until the deadline: each gets keys, then
/// is kept alive for a while, left to expire, or revoked, while its keys
/// are probed.
pub async fn lease_client(run: Run, seed: u64) -> LeaseRecord {
    let cfg = &run.cfg;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rec = LeaseRecord::default();
    let mut conns = Conns::new(&run);
    let ttl_secs = cfg.lease_ttl.as_secs().max(1) as i64;
    let probe_every = Duration::from_millis(150);
    let mut n = 0usize;
    while Instant::now() < run.deadline {
        let m = rng.gen_range(0..run.urls.len());
        let invoked = run.now();
        rec.operations += 1;
        let granted = call(&mut conns, m, |ch| async move {
            LeaseClient::new(ch)
                .lease_grant(LeaseGrantRequest {
                    ttl: ttl_secs,
                    id: 0,
                })
                .await
        })
        .await
        .map(|r| r.into_inner());
        let Some(granted) = granted.filter(|g| g.error.is_empty() && g.id != 0) else {
            rec.unknown += 1;
            tokio::time::sleep(probe_every).await;
            continue;
        };
        let mut life = LeaseLife {
            id: granted.id,
            ttl: Duration::from_secs(granted.ttl.max(0) as u64).as_nanos() as u64,
            refreshes: vec![(invoked, run.now())],
            revoked: None,
            keys: Vec::new(),
        };
        for j in 0..KEYS_PER_LEASE {
            let key = format!("{}{n}/{j}", lease_prefix(&cfg.key_prefix));
            rec.operations += 1;
            let put = call(&mut conns, m, |ch| {
                let key = key.clone();
                async move {
                    KvClient::new(ch)
                        .put(PutRequest {
                            key: key.into_bytes().into(),
                            value: b"leased".to_vec().into(),
                            lease: granted.id,
                            ..Default::default()
                        })
                        .await
                }
            })
            .await;
            match put {
                Some(resp) => {
                    let rev = resp.into_inner().header.map(|h| h.revision).unwrap_or(0);
                    rec.acknowledged.push((rev, key.clone()));
                    life.keys.push((key, run.now()));
                }
                None => rec.unknown += 1,
            }
        }
        n += 1;
        // 0: keep alive for a while then let expire; 1: let expire; 2: revoke.
        let plan = rng.gen_range(0..3);
        let keep_until = Instant::now() + cfg.lease_ttl * 2;
        let revoke_at = Instant::now() + cfg.lease_ttl / 2;
        let watch_until = Instant::now() + cfg.lease_ttl * 4;
        let mut next_keepalive = Instant::now() + cfg.lease_ttl / 3;
        while Instant::now() < watch_until.min(run.deadline) {
            let now = Instant::now();
            let m = rng.gen_range(0..run.urls.len());
            if plan == 0 && now < keep_until && now >= next_keepalive {
                next_keepalive = now + cfg.lease_ttl / 3;
                let invoked = run.now();
                rec.operations += 1;
                match call(&mut conns, m, |ch| keep_alive(ch, life.id)).await {
                    Some(ttl) if ttl > 0 => life.refreshes.push((invoked, run.now())),
                    Some(_) => {}
                    None => rec.unknown += 1,
                }
            }
            if plan == 2 && life.revoked.is_none() && now >= revoke_at {
                life.revoked = Some(run.now());
                rec.operations += 1;
                let id = life.id;
                let revoked = call(&mut conns, m, |ch| async move {
                    LeaseClient::new(ch)
                        .lease_revoke(LeaseRevokeRequest { id })
                        .await
                })
                .await;
                if revoked.is_none() {
                    rec.unknown += 1;
                }
            }
            let mut gone = 0;
            for (key, _) in &life.keys {
                let invoked = run.now();
                rec.operations += 1;
                let present = call(&mut conns, m, |ch| {
                    let key = key.clone();
                    async move {
                        let r = KvClient::new(ch)
                            .range(RangeRequest {
                                key: key.into_bytes(),
                                count_only: true,
                                ..Default::default()
                            })
                            .await?;
                        Ok(r.into_inner().count > 0)
                    }
                })
                .await;
                match present {
                    Some(present) => {
                        gone += usize::from(!present);
                        rec.probes.push(KeyProbe {
                            key: key.clone(),
                            invoked,
                            returned: run.now(),
                            present,
                        });
                    }
                    None => rec.unknown += 1,
                }
            }
            if plan != 0 && gone == life.keys.len() && life.keys.len() == KEYS_PER_LEASE {
                break;
            }
            tokio::time::sleep(probe_every).await;
        }
        rec.leases.push(life);
    }
    rec
}

/// One keep-alive round trip; the TTL the server answered (0: lease gone).
async fn keep_alive(ch: Channel, id: i64) -> Result<i64, tonic::Status> {
    let mut stream = LeaseClient::new(ch)
        .lease_keep_alive(tokio_stream::once(LeaseKeepAliveRequest { id }))
        .await?
        .into_inner();
    match stream.message().await? {
        Some(resp) => Ok(resp.ttl),
        None => Err(tonic::Status::unavailable("keep-alive stream ended")),
    }
}

/// What one watcher received.
#[derive(Debug, Default)]
pub struct WatchRecord {
    pub member: usize,
    pub events: Vec<WatchEvent>,
    /// Times the stream was opened again after breaking.
    pub reconnects: usize,
    /// The member compacted past what the watcher needed: not checkable.
    pub compacted: bool,
}

/// Watches `prefix` on member `m` from `start_revision`, reconnecting after
/// the last revision seen, until it has seen the revision sent on `until`
/// (a revision of 0 means "keep going") or `hard_deadline` passes after that
/// revision was sent.
pub async fn watcher(
    m: usize,
    url: String,
    prefix: String,
    start_revision: i64,
    mut until: tokio::sync::watch::Receiver<Option<i64>>,
    patience: Duration,
) -> WatchRecord {
    let mut rec = WatchRecord {
        member: m,
        ..Default::default()
    };
    let mut next = start_revision;
    let mut give_up: Option<Instant> = None;
    let mut opened = 0usize;
    loop {
        if let Some(target) = *until.borrow() {
            if next > target {
                return rec;
            }
            let deadline = *give_up.get_or_insert_with(|| Instant::now() + patience);
            if Instant::now() > deadline {
                return rec;
            }
        }
        if opened > 0 {
            rec.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        opened += 1;
        let Ok(ch) = crate::client::connect(&url, Duration::from_secs(1)).await else {
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: prefix.clone().into_bytes(),
                    range_end: prefix_end(&prefix),
                    start_revision: next,
                    ..Default::default()
                },
            )),
        };
        if tx.send(create).await.is_err() {
            continue;
        }
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let opening =
            tokio::time::timeout(Duration::from_secs(2), WatchClient::new(ch).watch(stream)).await;
        let Ok(Ok(resp)) = opening else { continue };
        let mut responses = resp.into_inner();
        loop {
            let message = tokio::select! {
                m = responses.message() => m,
                changed = until.changed() => {
                    if changed.is_err() {
                        return rec;
                    }
                    if let Some(target) = *until.borrow() {
                        if next > target {
                            return rec;
                        }
                        give_up.get_or_insert_with(|| Instant::now() + patience);
                    }
                    continue;
                }
                _ = tokio::time::sleep(Duration::from_millis(200)), if give_up.is_some() => {
                    if give_up.is_some_and(|d| Instant::now() > d) {
                        return rec;
                    }
                    continue;
                }
            };
            let Ok(Some(w)) = message else { break };
            if w.compact_revision != 0 {
                rec.compacted = true;
                return rec;
            }
            if w.canceled {
                break;
            }
            for e in w.events {
                let Some(kv) = e.kv else { continue };
                let is_put = e.r#type == 0;
                next = next.max(kv.mod_revision + 1);
                rec.events.push(WatchEvent {
                    revision: kv.mod_revision,
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    value: is_put.then_some(kv.value),
                });
            }
            if let Some(target) = *until.borrow() {
                if next > target {
                    return rec;
                }
            }
        }
        drop(tx);
    }
}
