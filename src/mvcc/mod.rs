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
//!   [`Batch`] (one redb write transaction, one fsync). Readers use [`ReadView`],
//!   a consistent redb read snapshot.
//!
//! Layout of the files: [`revision`] (revision numbers and their byte form),
//! [`codec`] (byte encodings of stored records and index keys), [`key_range`]
//! (etcd's key/range_end forms), [`types`] (the public data types), [`hash`]
//! (CRC-32C), [`view`] (read logic shared by write and read transactions),
//! [`store`] (the store, batches, revision transactions and read views) and
//! [`snapshot`] (whole-store snapshot bytes for Raft).
//!
//! Invariants (kept by `store` and `view`):
//! * every stored revision of every key is in the `kv` table (revision -> record)
//!   and in the `index` table ((key, revision) -> put/tombstone flag);
//! * the `live` table maps each key that currently exists to the revision of its
//!   latest put, and holds nothing else;
//! * the `state` table holds the current and the compacted revision; below the
//!   compacted revision only the newest non-tombstone revision of each key is kept.

pub mod codec;
pub mod error;
pub mod hash;
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
pub use store::{Batch, ReadView, RevTxn, Store, Writer};
pub use types::{
    Event, EventKind, HashKv, KeyValue, RangeOptions, RangeResult, SortOrder, SortTarget,
};
