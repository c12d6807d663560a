//! The KV service: Range, Put, DeleteRange, Txn and Compact.
//!
//! Requests are validated as etcd validates them (empty keys, ignore_* misuse,
//! too many txn operations, a txn writing one key twice) before they cost a Raft
//! round. Writes and txns go through [`Core::propose`]; ranges are served from
//! the local store, after a ReadIndex barrier unless `serializable` is set.

use std::collections::HashSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::access::Credentials;
use super::{errors, Core};
use crate::apply::convert::{range_options, range_response};
use crate::apply::Applied;
use crate::auth::Access;
use crate::mvcc::KeyRange;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::{
    response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use crate::pb::lcraftpb::request::Op as Proposal;

/// The KV service of one member.
pub struct KvService {
    core: Arc<Core>,
}

impl KvService {
    pub fn new(core: Arc<Core>) -> Self {
        KvService { core }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let caller = self.core.caller(&Credentials::of(&request))?;
        let req = request.into_inner();
        check_range(&req)?;
        self.core
            .require_range(&caller, &req.key, &req.range_end, Access::Read)?;
        if !req.serializable {
            if self.core.is_learner() {
                return Err(errors::not_supported_for_learner());
            }
            self.core.read_barrier().await?;
        } else {
            self.core.unpaused().await;
        }
        let view = self.core.store.read().map_err(errors::from_mvcc)?;
        self.core.metrics.mvcc_ops.ranges.inc();
        let result = view
            .range(&req.key, &req.range_end, &range_options(&req))
            .map_err(errors::from_mvcc)?;
        let revision = result.revision;
        let mut resp = range_response(result);
        resp.header = self.core.header(revision);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = self.core.caller(&Credentials::of(&request))?;
        let req = Proposal::Put(request.into_inner());
        if let Proposal::Put(p) = &req {
            check_put(p)?;
        }
        self.core.require_write(&caller, &req)?;
        self.core.check_quota().await?;
        match self.core.propose_as(req, &caller).await? {
            (Applied::Put(mut resp), rev) => {
                resp.header = self.core.header(rev);
                Ok(Response::new(resp))
            }
            _ => Err(Status::internal("unexpected apply result")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = self.core.caller(&Credentials::of(&request))?;
        if request.get_ref().key.is_empty() {
            return Err(errors::empty_key());
        }
        let req = Proposal::DeleteRange(request.into_inner());
        self.core.require_write(&caller, &req)?;
        match self.core.propose_as(req, &caller).await? {
            (Applied::DeleteRange(mut resp), rev) => {
                resp.header = self.core.header(rev);
                Ok(Response::new(resp))
            }
            _ => Err(Status::internal("unexpected apply result")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = self.core.caller(&Credentials::of(&request))?;
        let req = request.into_inner();
        check_txn(&req, self.core.limits.max_txn_ops)?;
        let puts = has_puts(&req);
        let req = Proposal::Txn(req);
        self.core.require_write(&caller, &req)?;
        if puts {
            self.core.check_quota().await?;
        }
        match self.core.propose_as(req, &caller).await? {
            (Applied::Txn(mut resp), rev) => {
                fill_headers(&self.core, &mut resp, rev);
                Ok(Response::new(resp))
            }
            _ => Err(Status::internal("unexpected apply result")),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // etcd lets any caller compact; only a bad token is refused.
        self.core.caller(&Credentials::of(&request))?;
        let req = request.into_inner();
        match self.core.propose(Proposal::Compaction(req)).await? {
            (Applied::Compaction(mut resp), rev) => {
                resp.header = self.core.header(rev);
                Ok(Response::new(resp))
            }
            _ => Err(Status::internal("unexpected apply result")),
        }
    }
}

/// Whether a txn may put anything (either branch, nested included).
fn has_puts(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(req.failure.iter())
        .any(|op| match &op.request {
            Some(Op::RequestPut(_)) => true,
            Some(Op::RequestTxn(t)) => has_puts(t),
            _ => false,
        })
}

/// Sets the header of a txn response (`rev`, the revision after it), and
/// the headers inside it as etcd fills them: the revision alone (no cluster
/// or member ID, no term), which is the revision before the txn for an
/// operation applied before its first change and `rev` from that change on;
/// a nested txn's own header is empty.
fn fill_headers(core: &Core, resp: &mut TxnResponse, rev: i64) {
    resp.header = core.header(rev);
    let before = if changes(&resp.responses) {
        rev - 1
    } else {
        rev
    };
    fill_inner_headers(&mut resp.responses, before, &mut false);
}

/// Whether any of these responses changed the store (a put, or a delete
/// that deleted something), nested txns included.
fn changes(responses: &[ResponseOp]) -> bool {
    responses.iter().any(|r| match &r.response {
        Some(response_op::Response::ResponsePut(_)) => true,
        Some(response_op::Response::ResponseDeleteRange(d)) => d.deleted > 0,
        Some(response_op::Response::ResponseTxn(t)) => changes(&t.responses),
        _ => false,
    })
}

/// Fills inner headers in the order the operations were applied; `changed`
/// tells whether an earlier one changed the store.
fn fill_inner_headers(responses: &mut [ResponseOp], before: i64, changed: &mut bool) {
    use response_op::Response as R;
    let header = |changed: bool| {
        Some(ResponseHeader {
            revision: if changed { before + 1 } else { before },
            ..Default::default()
        })
    };
    for r in responses {
        match &mut r.response {
            Some(R::ResponseRange(x)) => x.header = header(*changed),
            Some(R::ResponsePut(x)) => {
                *changed = true;
                x.header = header(true);
            }
            Some(R::ResponseDeleteRange(x)) => {
                *changed |= x.deleted > 0;
                x.header = header(*changed);
            }
            Some(R::ResponseTxn(x)) => {
                x.header = Some(ResponseHeader::default());
                fill_inner_headers(&mut x.responses, before, changed);
            }
            None => {}
        }
    }
}

fn check_range(req: &RangeRequest) -> Result<(), Status> {
    if req.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

fn check_put(req: &PutRequest) -> Result<(), Status> {
    if req.key.is_empty() {
        return Err(errors::empty_key());
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(errors::value_provided());
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(())
}

/// etcd's `checkTxnRequest` and `checkIntervals`.
pub fn check_txn(req: &TxnRequest, max_ops: usize) -> Result<(), Status> {
    check_ops(req, max_ops)?;
    writes_of(&req.success)?;
    writes_of(&req.failure)?;
    Ok(())
}

/// etcd's `checkTxnRequest`: no part of a txn has more than `max_ops`
/// operations, and a nested txn gets only what its parent's largest part left
/// (so deep nesting runs out of operations); no key is empty; no operation is
/// empty (etcd answers one with `key not found`).
fn check_ops(req: &TxnRequest, max_ops: usize) -> Result<(), Status> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_ops {
        return Err(errors::too_many_ops());
    }
    for c in &req.compare {
        if c.key.is_empty() {
            return Err(errors::empty_key());
        }
    }
    for op in req.success.iter().chain(req.failure.iter()) {
        match &op.request {
            Some(Op::RequestRange(r)) => check_range(r)?,
            Some(Op::RequestPut(p)) => check_put(p)?,
            Some(Op::RequestDeleteRange(d)) if d.key.is_empty() => return Err(errors::empty_key()),
            Some(Op::RequestDeleteRange(_)) => {}
            Some(Op::RequestTxn(t)) => check_ops(t, max_ops - ops)?,
            None => return Err(errors::key_not_found()),
        }
    }
    Ok(())
}

/// What one branch writes, for etcd's duplicate-key check.
#[derive(Default)]
struct Writes<'a> {
    /// The keys put.
    puts: HashSet<&'a [u8]>,
    /// The keys put keeping their value or lease (`ignore_value`,
    /// `ignore_lease`): they must still exist when their put runs.
    keeping: Vec<&'a [u8]>,
    /// The ranges deleted.
    dels: Vec<KeyRange>,
    /// The first keys of the deletes of every key from there on (a range
    /// end of "\0").
    from_keys: Vec<&'a [u8]>,
}

impl<'a> Writes<'a> {
    fn absorb(&mut self, other: Writes<'a>) {
        self.puts.extend(other.puts);
        self.keeping.extend(other.keeping);
        self.dels.extend(other.dels);
        self.from_keys.extend(other.from_keys);
    }
}

/// The writes of one branch; errors when a key would be written twice in
/// one revision.
fn writes_of(ops: &[RequestOp]) -> Result<Writes<'_>, Status> {
    let mut w = Writes::default();
    for op in ops {
        match &op.request {
            Some(Op::RequestPut(p)) if !w.puts.insert(&p.key) => {
                return Err(errors::duplicate_key());
            }
            Some(Op::RequestPut(p)) if p.ignore_value || p.ignore_lease => w.keeping.push(&p.key),
            // etcd checks a delete's range as the literal interval
            // [key, range_end): one ending at "\0" (every key from `key`
            // on) holds no key there, so a put beside it is accepted...
            Some(Op::RequestDeleteRange(d)) if d.range_end == [0] => w.from_keys.push(&d.key),
            Some(Op::RequestDeleteRange(d)) => w.dels.push(KeyRange::new(&d.key, &d.range_end)),
            Some(Op::RequestTxn(t)) => {
                // Either branch of a nested txn may run: check each against ours.
                let success = writes_of(&t.success)?;
                let failure = writes_of(&t.failure)?;
                for k in success.puts.iter().chain(failure.puts.iter()) {
                    if w.puts.contains(k) {
                        return Err(errors::duplicate_key());
                    }
                }
                w.absorb(success);
                w.absorb(failure);
            }
            _ => {}
        }
    }
    for k in &w.puts {
        if w.dels.iter().any(|d| d.contains(k)) {
            return Err(errors::duplicate_key());
        }
    }
    // ...but not one that keeps the value or lease of a key it deletes: the
    // put could not run (etcd panics on it), and the txn would fail halfway.
    for k in &w.keeping {
        if w.from_keys.iter().any(|from| k >= from) {
            return Err(errors::duplicate_key());
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_headers_carry_the_revision_each_operation_saw_as_in_etcd() {
        use response_op::Response as R;
        let op = |r: R| ResponseOp { response: Some(r) };
        let mut responses = vec![
            op(R::ResponseRange(Default::default())),
            op(R::ResponseDeleteRange(Default::default())), // deleted nothing
            op(R::ResponsePut(Default::default())),
            op(R::ResponseRange(Default::default())),
            op(R::ResponseTxn(TxnResponse {
                responses: vec![op(R::ResponseRange(Default::default()))],
                ..Default::default()
            })),
        ];
        assert!(changes(&responses));
        // The txn ends at revision 10: it began at 9.
        fill_inner_headers(&mut responses, 9, &mut false);
        let rev = |r: &ResponseOp| match &r.response {
            Some(R::ResponseRange(x)) => x.header.as_ref().map(|h| h.revision),
            Some(R::ResponseDeleteRange(x)) => x.header.as_ref().map(|h| h.revision),
            Some(R::ResponsePut(x)) => x.header.as_ref().map(|h| h.revision),
            Some(R::ResponseTxn(x)) => x.header.as_ref().map(|h| h.revision),
            None => None,
        };
        let revs: Vec<_> = responses.iter().map(rev).collect();
        assert_eq!(revs, [Some(9), Some(9), Some(10), Some(10), Some(0)]);
        let Some(R::ResponseTxn(nested)) = &responses[4].response else {
            unreachable!()
        };
        assert_eq!(rev(&nested.responses[0]), Some(10));
        // A txn that changed nothing: every operation saw its revision.
        let reads = [op(R::ResponseRange(Default::default()))];
        assert!(!changes(&reads));
    }

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: k.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_txn_putting_one_key_twice_is_refused() {
        let t = TxnRequest {
            success: vec![put_op("a"), put_op("a")],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&t, 128).unwrap_err().message(),
            errors::DUPLICATE_KEY
        );
    }

    #[test]
    fn a_txn_putting_inside_a_deleted_range_is_refused() {
        let t = TxnRequest {
            success: vec![put_op("b"), del_op("a", "c")],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&t, 128).unwrap_err().message(),
            errors::DUPLICATE_KEY
        );
    }

    #[test]
    fn both_branches_may_write_the_same_key() {
        let t = TxnRequest {
            success: vec![put_op("a")],
            failure: vec![put_op("a")],
            ..Default::default()
        };
        assert!(check_txn(&t, 128).is_ok());
    }

    fn txn_op(t: TxnRequest) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestTxn(t)),
        }
    }

    #[test]
    fn a_nested_txn_gets_only_the_ops_its_parent_left() {
        let inner = |n: usize| TxnRequest {
            success: (0..n).map(|i| put_op(&format!("in{i}"))).collect(),
            ..Default::default()
        };
        let outer = |n: usize| {
            let mut success: Vec<RequestOp> = (1..n).map(|i| put_op(&format!("out{i}"))).collect();
            success.push(txn_op(inner(128 - n)));
            success
        };
        // 100 ops leave 28 for the nested txn, as in etcd.
        let fits = TxnRequest {
            success: outer(100),
            ..Default::default()
        };
        assert!(check_txn(&fits, 128).is_ok());
        let mut over = fits.clone();
        over.success.push(put_op("one more"));
        assert_eq!(
            check_txn(&over, 128).unwrap_err().message(),
            errors::TOO_MANY_OPS
        );
    }

    #[test]
    fn nesting_deeper_than_the_op_limit_is_refused() {
        let mut t = TxnRequest {
            success: vec![put_op("deep")],
            ..Default::default()
        };
        for _ in 0..10 {
            t = TxnRequest {
                success: vec![txn_op(t)],
                ..Default::default()
            };
        }
        assert!(check_txn(&t, 11).is_ok());
        assert_eq!(
            check_txn(&t, 10).unwrap_err().message(),
            errors::TOO_MANY_OPS
        );
    }

    #[test]
    fn an_empty_op_is_refused_as_etcd_does() {
        for t in [
            TxnRequest {
                success: vec![RequestOp { request: None }],
                ..Default::default()
            },
            TxnRequest {
                failure: vec![txn_op(TxnRequest {
                    success: vec![RequestOp { request: None }],
                    ..Default::default()
                })],
                ..Default::default()
            },
        ] {
            let e = check_txn(&t, 128).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert_eq!(e.message(), errors::KEY_NOT_FOUND);
        }
    }

    #[test]
    fn too_many_ops_is_refused_with_etcds_message() {
        let t = TxnRequest {
            success: (0..129).map(|i| put_op(&format!("k{i}"))).collect(),
            ..Default::default()
        };
        assert_eq!(
            check_txn(&t, 128).unwrap_err().message(),
            errors::TOO_MANY_OPS
        );
    }
}
