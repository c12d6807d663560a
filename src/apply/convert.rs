//! Conversions between the MVCC store's own types and etcd's wire types.

use crate::mvcc;
use crate::pb::etcdserverpb::{range_request, RangeRequest, RangeResponse};
use crate::pb::mvccpb;

/// `mvcc::KeyValue` -> `mvccpb::KeyValue`.
pub fn kv_to_pb(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// `mvcc::Event` -> `mvccpb::Event`.
pub fn event_to_pb(ev: mvcc::Event) -> mvccpb::Event {
    let kind = match ev.kind {
        mvcc::EventKind::Put => mvccpb::event::EventType::Put,
        mvcc::EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv_to_pb(ev.kv)),
        prev_kv: ev.prev_kv.map(kv_to_pb),
    }
}

/// The non-key fields of a `RangeRequest` as MVCC range options.
pub fn range_options(req: &RangeRequest) -> mvcc::RangeOptions {
    let sort_order = match range_request::SortOrder::try_from(req.sort_order) {
        Ok(range_request::SortOrder::Ascend) => mvcc::SortOrder::Ascend,
        Ok(range_request::SortOrder::Descend) => mvcc::SortOrder::Descend,
        _ => mvcc::SortOrder::None,
    };
    let sort_target = match range_request::SortTarget::try_from(req.sort_target) {
        Ok(range_request::SortTarget::Version) => mvcc::SortTarget::Version,
        Ok(range_request::SortTarget::Create) => mvcc::SortTarget::Create,
        Ok(range_request::SortTarget::Mod) => mvcc::SortTarget::Mod,
        Ok(range_request::SortTarget::Value) => mvcc::SortTarget::Value,
        _ => mvcc::SortTarget::Key,
    };
    mvcc::RangeOptions {
        limit: req.limit,
        revision: req.revision,
        count_only: req.count_only,
        keys_only: req.keys_only,
        sort_order,
        sort_target,
        min_mod_revision: req.min_mod_revision,
        max_mod_revision: req.max_mod_revision,
        min_create_revision: req.min_create_revision,
        max_create_revision: req.max_create_revision,
    }
}

/// An MVCC range result as a `RangeResponse` (header left for the caller).
pub fn range_response(r: mvcc::RangeResult) -> RangeResponse {
    RangeResponse {
        header: None,
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}
