//! The key-value operations of applied requests: Put, DeleteRange and Txn (with
//! its compares, nested txns and ranges), run inside one MVCC revision
//! transaction, with etcd's semantics.
//!
//! A Txn decides every branch it takes, nested txns' included, from the store
//! as it was before the txn, then checks the ops of those branches before
//! anything is written (etcd's `compareToPath` and `checkRequests`): a put
//! with `ignore_value`/`ignore_lease` on a missing key, a put naming an
//! unknown lease, or a range at a future or compacted revision fails the
//! whole request with no partial effect.

use crate::mvcc::{KeyValue, MvccError, RangeOptions, RevTxn};
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::response_op::Response as OpResponse;
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RequestOp,
    ResponseOp, TxnRequest, TxnResponse,
};

use super::convert::{kv_to_pb, range_options, range_response};
use super::ApplyError;

/// Looks up whether a lease exists (leases live outside the MVCC store).
pub trait Leases {
    fn exists(&self, id: i64) -> bool;
}

/// Applies a Put.
pub fn put(
    rt: &mut RevTxn<'_, '_>,
    req: &PutRequest,
    leases: &dyn Leases,
) -> Result<PutResponse, ApplyError> {
    check_put(rt, req, leases)?;
    let (key, value) = (&req.key, &req.value);
    let prev_kv = if req.prev_kv {
        rt.put(key, value, req.lease, req.ignore_value, req.ignore_lease)?
            .map(kv_to_pb)
    } else {
        rt.put_without_prev(key, value, req.lease, req.ignore_value, req.ignore_lease)?;
        None
    };
    Ok(PutResponse {
        header: None,
        prev_kv,
    })
}

/// Applies a DeleteRange.
pub fn delete_range(
    rt: &mut RevTxn<'_, '_>,
    req: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, ApplyError> {
    if req.prev_kv {
        let deleted = rt.delete_range(&req.key, &req.range_end)?;
        Ok(DeleteRangeResponse {
            header: None,
            deleted: deleted.len() as i64,
            prev_kvs: deleted.into_iter().map(kv_to_pb).collect(),
        })
    } else {
        let deleted = rt.delete_range_count(&req.key, &req.range_end)?;
        Ok(DeleteRangeResponse {
            header: None,
            deleted: deleted as i64,
            prev_kvs: Vec::new(),
        })
    }
}

/// Applies a Txn as etcd does: every compare, nested ones included, is
/// evaluated first, against the store as it was before the txn
/// ([`branches`]); the ops of the branches taken are then checked, with no
/// partial effect should one fail ([`check_ops`]); and only then run.
pub fn txn(
    rt: &mut RevTxn<'_, '_>,
    req: &TxnRequest,
    leases: &dyn Leases,
) -> Result<TxnResponse, ApplyError> {
    let mut path = Vec::new();
    branches(rt, req, &mut path)?;
    check_ops(rt, req, &path, leases)?;
    run(rt, req, &mut path.into_iter(), leases)
}

/// Appends to `path` whether each txn's compares hold, `req`'s first, then
/// those of the nested txns in the branch it takes, in the order they run
/// (etcd's `compareToPath`).
fn branches(rt: &RevTxn<'_, '_>, req: &TxnRequest, path: &mut Vec<bool>) -> Result<(), ApplyError> {
    let succeeded = compares_hold(rt, &req.compare)?;
    path.push(succeeded);
    for op in taken(req, succeeded) {
        if let Some(Op::RequestTxn(t)) = &op.request {
            branches(rt, t, path)?;
        }
    }
    Ok(())
}

/// The ops of the branch a txn takes.
fn taken(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

/// Runs the branches `path` chose (see [`branches`]).
fn run(
    rt: &mut RevTxn<'_, '_>,
    req: &TxnRequest,
    path: &mut impl Iterator<Item = bool>,
    leases: &dyn Leases,
) -> Result<TxnResponse, ApplyError> {
    let succeeded = path.next().unwrap_or(false);
    let ops = taken(req, succeeded);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(op) = &op.request else {
            responses.push(ResponseOp { response: None });
            continue;
        };
        let response = match op {
            Op::RequestRange(r) => {
                let res = rt.range(&r.key, &r.range_end, &range_options(r))?;
                OpResponse::ResponseRange(range_response(res))
            }
            Op::RequestPut(p) => OpResponse::ResponsePut(put(rt, p, leases)?),
            Op::RequestDeleteRange(d) => OpResponse::ResponseDeleteRange(delete_range(rt, d)?),
            Op::RequestTxn(t) => OpResponse::ResponseTxn(run(rt, t, path, leases)?),
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

/// Deletes every key attached to lease `id` (a revoke or an expiry).
pub fn delete_leased(rt: &mut RevTxn<'_, '_>, id: i64) -> Result<(), ApplyError> {
    let all = rt.range(
        b"\0",
        b"\0",
        &RangeOptions {
            keys_only: true,
            ..Default::default()
        },
    )?;
    for kv in all.kvs.into_iter().filter(|kv| kv.lease == id) {
        rt.delete_range_count(&kv.key, &[])?;
    }
    Ok(())
}

/// Whether every compare holds against the current state of `rt`.
pub fn compares_hold(rt: &RevTxn<'_, '_>, compares: &[Compare]) -> Result<bool, ApplyError> {
    for c in compares {
        if !compare_holds(rt, c)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn compare_holds(rt: &RevTxn<'_, '_>, c: &Compare) -> Result<bool, ApplyError> {
    let res = rt.range(&c.key, &c.range_end, &RangeOptions::default())?;
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    if res.kvs.is_empty() {
        // A missing key compares as zero, except that no value equals a missing value.
        if target == CompareTarget::Value {
            return Ok(false);
        }
        return Ok(compare_kv(c, target, &KeyValue::default()));
    }
    Ok(res.kvs.iter().all(|kv| compare_kv(c, target, kv)))
}

fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match target {
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        CompareTarget::Version => kv.version.cmp(&int_target(c)),
        CompareTarget::Create => kv.create_revision.cmp(&int_target(c)),
        CompareTarget::Mod => kv.mod_revision.cmp(&int_target(c)),
        CompareTarget::Lease => kv.lease.cmp(&int_target(c)),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

fn int_target(c: &Compare) -> i64 {
    match &c.target_union {
        Some(TargetUnion::Version(v))
        | Some(TargetUnion::CreateRevision(v))
        | Some(TargetUnion::ModRevision(v))
        | Some(TargetUnion::Lease(v)) => *v,
        _ => 0,
    }
}

fn check_put(rt: &RevTxn<'_, '_>, req: &PutRequest, leases: &dyn Leases) -> Result<(), ApplyError> {
    if req.ignore_value || req.ignore_lease {
        let found = rt.range(
            &req.key,
            &[],
            &RangeOptions {
                count_only: true,
                ..Default::default()
            },
        )?;
        if found.count == 0 {
            return Err(ApplyError::KeyNotFound);
        }
    }
    if req.lease != 0 && !req.ignore_lease && !leases.exists(req.lease) {
        return Err(ApplyError::LeaseNotFound);
    }
    Ok(())
}

/// Checks the ops of the branches `path` chose, before anything runs
/// (etcd's `checkRequests`, in its order: every put first, then every
/// range): puts as [`check_put`] does, and ranges at a revision against the
/// store's revisions before the txn (past the head, the txn's own revision
/// included, is in the future; below the compacted revision, -1 when
/// nothing was compacted, is compacted, as etcd has it for negative ones).
fn check_ops(
    rt: &RevTxn<'_, '_>,
    req: &TxnRequest,
    path: &[bool],
    leases: &dyn Leases,
) -> Result<(), ApplyError> {
    check_each(req, &mut path.iter().copied(), &mut |op| match op {
        Op::RequestPut(p) => check_put(rt, p, leases),
        _ => Ok(()),
    })?;
    check_each(req, &mut path.iter().copied(), &mut |op| match op {
        Op::RequestRange(r) if r.revision != 0 && r.revision > rt.revision() => {
            Err(MvccError::FutureRevision.into())
        }
        Op::RequestRange(r) if r.revision != 0 && r.revision < rt.compact_revision() => {
            Err(MvccError::Compacted.into())
        }
        _ => Ok(()),
    })
}

/// Calls `check` with every op of the branches `path` chose, nested txns'
/// included, in the order they run.
fn check_each(
    req: &TxnRequest,
    path: &mut impl Iterator<Item = bool>,
    check: &mut dyn FnMut(&Op) -> Result<(), ApplyError>,
) -> Result<(), ApplyError> {
    let succeeded = path.next().unwrap_or(false);
    for op in taken(req, succeeded) {
        match &op.request {
            Some(Op::RequestTxn(t)) => check_each(t, path, check)?,
            Some(op) => check(op)?,
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{Event, Store};

    struct NoLeases;

    impl Leases for NoLeases {
        fn exists(&self, _id: i64) -> bool {
            false
        }
    }

    /// Puts `a`..`e` twice and deletes `b`..`d`, then everything, asking for
    /// previous key-values or not; returns the responses' prev kvs, the delete
    /// counts and every event.
    fn run(store: &Store, prev_kv: bool) -> (Vec<Vec<u8>>, Vec<i64>, Vec<Event>) {
        let mut batch = store.batch().unwrap();
        let mut w = batch.writer().unwrap();
        let (mut prevs, mut counts, mut events) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..2u8 {
            for k in b'a'..=b'e' {
                let mut rt = w.txn().unwrap();
                let req = PutRequest {
                    key: vec![k].into(),
                    value: vec![round].into(),
                    prev_kv,
                    ..Default::default()
                };
                let resp = put(&mut rt, &req, &NoLeases).unwrap();
                prevs.extend(resp.prev_kv.map(|kv| kv.value));
                events.extend(rt.end().1);
            }
        }
        for (key, range_end) in [(&b"b"[..], &b"d"[..]), (b"\0", b"\0")] {
            let mut rt = w.txn().unwrap();
            let req = DeleteRangeRequest {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                prev_kv,
            };
            let resp = delete_range(&mut rt, &req).unwrap();
            counts.push(resp.deleted);
            prevs.extend(resp.prev_kvs.into_iter().map(|kv| kv.key));
            events.extend(rt.end().1);
        }
        drop(w);
        batch.commit().unwrap();
        (prevs, counts, events)
    }

    #[test]
    fn prev_kv_only_changes_what_the_response_carries() {
        let dir = tempfile::tempdir().unwrap();
        let with = Store::open(dir.path().join("with")).unwrap();
        let without = Store::open(dir.path().join("without")).unwrap();
        let (prevs, counts, events) = run(&with, true);
        let (no_prevs, no_counts, mut no_events) = run(&without, false);
        assert_eq!(counts, vec![2, 3]);
        assert_eq!(no_counts, counts);
        // Puts without `prev_kv` leave it out of their events too, for a
        // watcher that asks to read.
        assert!(no_events
            .iter()
            .filter(|e| e.kind == crate::mvcc::EventKind::Put)
            .all(|e| e.prev_kv.is_none()));
        let view = without.read().unwrap();
        view.load_prev_kvs(&mut no_events).unwrap();
        assert_eq!(no_events, events);
        assert!(no_prevs.is_empty());
        // Five previous values of the second round of puts, then the keys the
        // deletes removed.
        let want: Vec<Vec<u8>> = [
            &[0u8][..],
            &[0],
            &[0],
            &[0],
            &[0],
            b"b",
            b"c",
            b"a",
            b"d",
            b"e",
        ]
        .iter()
        .map(|v| v.to_vec())
        .collect();
        assert_eq!(prevs, want);
        // Every delete event carries the previous key-value, asked for or not
        // (watchers may want it).
        assert!(events
            .iter()
            .filter(|e| e.kind == crate::mvcc::EventKind::Delete)
            .all(|e| e.prev_kv.as_ref().is_some_and(|p| p.key == e.kv.key)));
        assert_eq!(
            with.read().unwrap().hash().unwrap(),
            without.read().unwrap().hash().unwrap()
        );
    }
}
