//! Building blocks of the server-side lock and election services
//! ([`super::lock`], [`super::election`]), the same recipe etcd's
//! `clientv3/concurrency` uses: a waiter owns the key `<prefix><lease in hex>`,
//! created with its lease, and holds the lock (or leads) once no key under the
//! prefix has a lower create revision.
//!
//! Everything goes through [`Core`] like a client request would: writes are
//! proposals, reads are linearizable, and waiting for a predecessor's key to go
//! away follows the applied-changes broadcast (subscribed before each check, so
//! no deletion is missed). A waiter that gives up takes its key away
//! ([`Claimed`]).

use tonic::Status;

use super::{errors, Core};
use crate::apply::Applied;
use crate::mvcc::{self, EventKind, RangeOptions, SortOrder, SortTarget};
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::request_op::Request as OpReq;
use crate::pb::etcdserverpb::response_op::Response as OpResp;
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use crate::pb::lcraftpb::request::Op;

/// The key a lease's holder owns under `prefix`.
pub fn owner_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// `name` + "/", the prefix of a lock or election.
pub fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Runs a txn through Raft; returns the response and the revision after it.
pub async fn txn(core: &Core, req: TxnRequest) -> Result<(TxnResponse, i64), Status> {
    match core.propose(Op::Txn(req)).await? {
        (Applied::Txn(resp), rev) => Ok((resp, rev)),
        _ => Err(Status::internal("unexpected apply result")),
    }
}

/// Deletes `key` if it still has create revision `rev` (the holder's key
/// it was, not a later one); returns the revision after.
pub async fn delete_if_created_at(core: &Core, key: &[u8], rev: i64) -> Result<i64, Status> {
    let req = TxnRequest {
        compare: vec![create_rev_is(key, rev)],
        success: vec![delete_op(key)],
        failure: vec![],
    };
    txn(core, req).await.map(|(_, rev)| rev)
}

/// A compare on the create revision of `key`.
pub fn create_rev_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
    }
}

pub fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(OpReq::RequestPut(PutRequest {
            key: key.to_vec().into(),
            value: value.to_vec().into(),
            lease,
            ..Default::default()
        })),
    }
}

pub fn get_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(OpReq::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

pub fn delete_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(OpReq::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// TTL of the lease etcd's lock service grants a caller that names none
/// (`concurrency`'s default session TTL, in seconds).
pub const SESSION_TTL: i64 = 60;

/// The lease a lock is held with: the caller's, or, for lease 0, a new one of
/// [`SESSION_TTL`] that nobody renews, as etcd's lock service does (its
/// orphaned session), so such a lock is released after a minute rather than
/// held for ever.
pub async fn session_lease(core: &Core, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let req = crate::pb::etcdserverpb::LeaseGrantRequest {
        ttl: SESSION_TTL.max(core.limits.min_lease_ttl),
        id: (core.ids.next() & (i64::MAX as u64)) as i64,
    };
    match core.propose(Op::LeaseGrant(req)).await? {
        (Applied::LeaseGrant(resp), _) => Ok(resp.id),
        _ => Err(Status::internal("unexpected apply result")),
    }
}

/// What [`claim`] found or made.
pub struct Claim {
    /// The key's create revision.
    pub rev: i64,
    /// The store revision the claim's txn answered with (its header's).
    pub header_rev: i64,
    /// The value the key held, if it existed with another one.
    pub stale_value: Option<Vec<u8>>,
}

/// Creates `key` with `value` and `lease` unless it exists.
pub async fn claim(core: &Core, key: &[u8], value: &[u8], lease: i64) -> Result<Claim, Status> {
    let req = TxnRequest {
        compare: vec![create_rev_is(key, 0)],
        success: vec![put_op(key, value, lease)],
        failure: vec![get_op(key)],
    };
    let (resp, header_rev) = txn(core, req).await?;
    if resp.succeeded {
        return Ok(Claim {
            rev: header_rev,
            header_rev,
            stale_value: None,
        });
    }
    match resp.responses.into_iter().next().and_then(|r| r.response) {
        Some(OpResp::ResponseRange(r)) => match r.kvs.into_iter().next() {
            Some(kv) => Ok(Claim {
                rev: kv.create_revision,
                header_rev,
                stale_value: (kv.value != value).then_some(kv.value),
            }),
            None => Err(Status::unavailable("lock key vanished; retry")),
        },
        _ => Err(Status::internal("unexpected txn response")),
    }
}

/// A waiter's key while it waits for its turn: deleted if the call ends
/// first (the caller gave up: a deadline, a cancel, or an error), as etcd's
/// `concurrency` recipes delete it, lest the lock or leadership pass to a
/// key nobody waits on. Deleted only while it still has the create revision
/// it was claimed at; [`Claimed::keep`] once the caller holds it.
pub struct Claimed {
    core: std::sync::Arc<Core>,
    key: Option<(Vec<u8>, i64)>,
}

impl Claimed {
    pub fn new(core: std::sync::Arc<Core>, key: Vec<u8>, rev: i64) -> Self {
        Claimed {
            core,
            key: Some((key, rev)),
        }
    }

    /// The caller holds the lock or leads: the key stays.
    pub fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let Some((key, rev)) = self.key.take() else {
            return;
        };
        // The call's task is going away: the delete goes on in a task of
        // the member's runtime (ended with it), one proposal long.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let core = self.core.clone();
        runtime.spawn(async move {
            if let Err(e) = delete_if_created_at(&core, &key, rev).await {
                tracing::debug!(error = %e.message(), "cannot delete an abandoned waiter's key");
            }
        });
    }
}

/// The oldest key under `prefix` (the holder), read linearizably.
pub async fn first_under(core: &Core, prefix: &[u8]) -> Result<Option<mvcc::KeyValue>, Status> {
    core.read_barrier().await?;
    let view = core.store.read().map_err(errors::from_mvcc)?;
    let opts = RangeOptions {
        limit: 1,
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        ..Default::default()
    };
    let r = view
        .range(prefix, &prefix_end(prefix), &opts)
        .map_err(errors::from_mvcc)?;
    Ok(r.kvs.into_iter().next())
}

/// Waits until no key under `prefix` has a create revision below `rev`.
pub async fn wait_predecessors(core: &Core, prefix: &[u8], rev: i64) -> Result<(), Status> {
    loop {
        let mut events = core.events.subscribe();
        core.read_barrier().await?;
        let last = {
            let view = core.store.read().map_err(errors::from_mvcc)?;
            let opts = RangeOptions {
                limit: 1,
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Create,
                max_create_revision: rev - 1,
                ..Default::default()
            };
            let r = view
                .range(prefix, &prefix_end(prefix), &opts)
                .map_err(errors::from_mvcc)?;
            r.kvs.into_iter().next()
        };
        let Some(last) = last else { return Ok(()) };
        // Wait for that key's deletion (or for the stream to lag, or to
        // leave a batch's events out: then re-check).
        loop {
            match events.recv().await {
                Ok(batch) if batch.omitted => break,
                Ok(batch) => {
                    if batch
                        .events
                        .iter()
                        .any(|e| e.kind == EventKind::Delete && e.kv.key == last.key)
                    {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Err(errors::stopped())
                }
            }
        }
    }
}

/// Waits until the key `key` is deleted or changed.
pub async fn wait_change(
    core: &Core,
    prefix: &[u8],
    current: &mvcc::KeyValue,
) -> Result<(), Status> {
    let mut events = core.events.subscribe();
    // It may already have changed.
    if first_under(core, prefix).await?.as_ref() != Some(current) {
        return Ok(());
    }
    loop {
        match events.recv().await {
            // Its events were left out: it may have changed (as on a lag).
            Ok(batch) if batch.omitted => return Ok(()),
            Ok(batch) => {
                if batch.events.iter().any(|e| e.kv.key.starts_with(prefix)) {
                    return Ok(());
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return Ok(()),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err(errors::stopped()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_keys_are_prefix_and_lease_in_hex() {
        assert_eq!(owner_key(b"lock/", 0x694d), b"lock/694d".to_vec());
        assert_eq!(prefix_of(b"lock"), b"lock/".to_vec());
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
