//! The multi-version key-value store behind the etcd KV API.
//!
//! This module reproduces the semantics of etcd's `server/storage/mvcc` on top of
//! a single `redb` database file:
//!
//! * Every write *revision transaction* ([`RevTxn`]) that changes something bumps
//!   the cluster-wide main revision by exactly one; the changes inside it get
//!   sub-revisions `0, 1, 2, ...`. An empty store is at revision 1, so the first
//!   write gets revision 2.
//! * Every key carries `create_revision`, `mod_revision`, `version` (1 on create,
//!   +1 per put, reset by a delete) and a lease id.
//! * History is kept until [`Batch::compact`]; ranges at past revisions see the
//!   keys as they were then.
//! * The Raft apply layer applies a whole batch of committed entries in one
//!   [`Batch`]. Batches that need not be durable yet share one redb write
//!   transaction, committed (one fsync) every 100 ms, as etcd's backend
//!   batches its bolt transaction. Readers use [`ReadView`], a consistent
//!   redb read snapshot plus the records of the batches not committed yet.
//!
//! Layout of the files: [`revision`] (revision numbers and their byte form),
//! [`codec`] (byte encoding of stored records), [`entry`] (entries of the
//! `kv` table: a record, or a group of one batch's records), [`key_range`] (etcd's
//! key/range_end forms), [`types`] (the public data types), [`hash`]
//! (CRC-32C), [`index`] (the in-memory key index), [`buffer`] (the records of
//! batches not committed to redb yet), [`view`] (read logic shared
//! by write and read transactions), [`store`] (the store, batches, revision
//! transactions and read views) and [`snapshot`] (whole-store snapshot bytes
//! for Raft).
//!
//! Invariants (kept by `store`, `index` and `view`):
//! * every stored revision of every key is a record in the `kv` table (once
//!   the batch that wrote it ends; each entry is one record or a group of one
//!   batch's records, keyed by revision; the record names its key and whether
//!   it is a tombstone), and a change in that key's history in the key index,
//!   which is rebuilt from the `kv` table when the store opens;
//! * on disk, only the `kv` table grows with writes, and only at its end: it
//!   is keyed by revision, like etcd's backend, so a batch dirties the same few
//!   pages however scattered its keys (a compaction rewrites the groups it
//!   takes records out of where they lie);
//! * the `state` table holds the current and the compacted revision; below the
//!   compacted revision only the newest non-tombstone revision of each key is kept.

pub mod buffer;
pub mod codec;
pub mod entry;
pub mod error;
pub mod hash;
pub mod index;
pub mod key_range;
pub mod revision;
pub mod snapshot;
pub mod store;
pub mod types;
pub mod view;

#[cfg(test)]
mod tests;

pub use error::{MvccError, Result};
pub use key_range::KeyRange;
pub use revision::Revision;
pub use store::{Batch, OpCounters, ReadView, RevTxn, Store, StoreMetrics, Writer};
pub use types::{
    Event, EventKind, HashKv, KeyValue, RangeOptions, RangeResult, SortOrder, SortTarget,
};
