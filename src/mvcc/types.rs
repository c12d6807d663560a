//! Public data types of the MVCC store: key-values, events, range options and
//! results, and the result of a KV hash.
//!
//! These mirror etcd's `mvccpb.KeyValue`, `mvccpb.Event` and the fields of
//! `RangeRequest`/`RangeResponse` without depending on any generated protobuf
//! code; the API layer converts them.

/// One version of one key, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Revision of the put that created this generation of the key.
    pub create_revision: i64,
    /// Revision of the change that produced this version.
    pub mod_revision: i64,
    /// 1 on create, +1 per put; a delete ends the generation.
    pub version: i64,
    /// The value (empty for `keys_only` ranges and for tombstones).
    pub value: Vec<u8>,
    /// Lease id attached to the key, 0 for none.
    pub lease: i64,
}

impl KeyValue {
    /// The key-value etcd puts in a DELETE event: only the key and the revision
    /// of the delete are set.
    pub fn tombstone(key: Vec<u8>, mod_revision: i64) -> Self {
        KeyValue {
            key,
            mod_revision,
            ..KeyValue::default()
        }
    }
}

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A put of a key.
    Put,
    /// A delete of a key.
    Delete,
}

/// One change of one key, as etcd's `mvccpb.Event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// For a put: the new key-value. For a delete: [`KeyValue::tombstone`].
    pub kv: KeyValue,
    /// The key-value just before this change, if the key existed. A put
    /// applied by [`super::RevTxn::put_without_prev`] leaves it `None` even
    /// then; [`super::ReadView::load_prev_kvs`] fills it in.
    pub prev_kv: Option<KeyValue>,
}

/// Sort order of a range, as etcd's `RangeRequest.SortOrder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// No sorting requested (results come by key, ascending).
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// What a range sorts by, as etcd's `RangeRequest.SortTarget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// Options of a range, as the non-key fields of etcd's `RangeRequest`.
/// Zero values mean "not set", exactly as in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeOptions {
    /// Maximum number of key-values returned; 0 (or negative) for no limit.
    pub limit: i64,
    /// Revision to read at; 0 (or negative) for the current revision.
    pub revision: i64,
    /// Return only the count.
    pub count_only: bool,
    /// Omit values.
    pub keys_only: bool,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Drop key-values whose mod revision is lower (0 = no filter).
    pub min_mod_revision: i64,
    /// Drop key-values whose mod revision is higher (0 = no filter).
    pub max_mod_revision: i64,
    /// Drop key-values whose create revision is lower (0 = no filter).
    pub min_create_revision: i64,
    /// Drop key-values whose create revision is higher (0 = no filter).
    pub max_create_revision: i64,
}

/// The result of a range, as etcd's `RangeResponse` without the header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    /// The key-values (empty for `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range at the read revision, before filters and limit.
    pub count: i64,
    /// True when the limit cut the result short.
    pub more: bool,
    /// The store revision at read time (the header revision).
    pub revision: i64,
}

/// The result of a KV hash, as etcd's `HashKVResponse` without the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    /// CRC-32C over the revisions in `(compact_revision, hash_revision]`.
    pub hash: u32,
    /// The compacted revision at hash time (-1 if never compacted).
    pub compact_revision: i64,
    /// The revision the hash was taken at.
    pub hash_revision: i64,
}
