//! The key-value operations of applied requests: Put, DeleteRange and Txn (with
//! its compares, nested txns and ranges), run inside one MVCC revision
//! transaction, with etcd's semantics.
//!
//! A Txn is checked before anything is written (etcd's `checkRequests`): a put
//! with `ignore_value`/`ignore_lease` on a missing key, or a put naming an
//! unknown lease, fails the whole request with no partial effect.

use crate::mvcc::{KeyValue, RangeOptions, RevTxn};
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::response_op::Response as OpResponse;
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, ResponseOp,
    TxnRequest, TxnResponse,
};

use super::convert::{kv_to_pb, range_options, range_response};
use super::ApplyError;

/// Looks up whether a lease exists (leases live outside the MVCC store).
pub trait Leases {
    fn exists(&self, id: i64) -> bool;
}

/// Applies a Put.
pub fn put(
    rt: &mut RevTxn<'_>,
    req: &PutRequest,
    leases: &dyn Leases,
) -> Result<PutResponse, ApplyError> {
    check_put(rt, req, leases)?;
    let prev = rt.put(
        &req.key,
        &req.value,
        req.lease,
        req.ignore_value,
        req.ignore_lease,
    )?;
    Ok(PutResponse {
        header: None,
        prev_kv: if req.prev_kv {
            prev.map(kv_to_pb)
        } else {
            None
        },
    })
}

/// Applies a DeleteRange.
pub fn delete_range(
    rt: &mut RevTxn<'_>,
    req: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, ApplyError> {
    let deleted = rt.delete_range(&req.key, &req.range_end)?;
    Ok(DeleteRangeResponse {
        header: None,
        deleted: deleted.len() as i64,
        prev_kvs: if req.prev_kv {
            deleted.into_iter().map(kv_to_pb).collect()
        } else {
            Vec::new()
        },
    })
}

/// Applies a Txn: evaluates the compares, checks the chosen branch, runs it.
pub fn txn(
    rt: &mut RevTxn<'_>,
    req: &TxnRequest,
    leases: &dyn Leases,
) -> Result<TxnResponse, ApplyError> {
    let succeeded = compares_hold(rt, &req.compare)?;
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    check_ops(rt, ops, leases)?;
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
            Op::RequestTxn(t) => OpResponse::ResponseTxn(txn(rt, t, leases)?),
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
pub fn delete_leased(rt: &mut RevTxn<'_>, id: i64) -> Result<(), ApplyError> {
    let all = rt.range(
        b"\0",
        b"\0",
        &RangeOptions {
            keys_only: true,
            ..Default::default()
        },
    )?;
    for kv in all.kvs.into_iter().filter(|kv| kv.lease == id) {
        rt.delete_range(&kv.key, &[])?;
    }
    Ok(())
}

/// Whether every compare holds against the current state of `rt`.
pub fn compares_hold(rt: &mut RevTxn<'_>, compares: &[Compare]) -> Result<bool, ApplyError> {
    for c in compares {
        if !compare_holds(rt, c)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn compare_holds(rt: &mut RevTxn<'_>, c: &Compare) -> Result<bool, ApplyError> {
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

fn check_put(rt: &mut RevTxn<'_>, req: &PutRequest, leases: &dyn Leases) -> Result<(), ApplyError> {
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

fn check_ops(
    rt: &mut RevTxn<'_>,
    ops: &[crate::pb::etcdserverpb::RequestOp],
    leases: &dyn Leases,
) -> Result<(), ApplyError> {
    for op in ops {
        match &op.request {
            Some(Op::RequestPut(p)) => check_put(rt, p, leases)?,
            Some(Op::RequestTxn(t)) => {
                let branch = if compares_hold(rt, &t.compare)? {
                    &t.success
                } else {
                    &t.failure
                };
                check_ops(rt, branch, leases)?;
            }
            _ => {}
        }
    }
    Ok(())
}
