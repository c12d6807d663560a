//! The error type of the MVCC store.
//!
//! `Compacted` and `FutureRevision` display exactly like etcd's `mvcc` errors, so
//! the API layer only has to add the `etcdserver: ` prefix. Every failure of the
//! underlying redb database becomes `Storage`; bytes that do not decode (a damaged
//! file or a bad snapshot) become `Corrupt`.

use thiserror::Error;

/// Result alias for the MVCC store.
pub type Result<T> = std::result::Result<T, MvccError>;

/// Everything that can go wrong in the MVCC store.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MvccError {
    /// The requested revision is older than the compacted revision.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// A put with `ignore_value` or `ignore_lease` named a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// The store cannot do this right now (for example: defragment while a batch
    /// or a read view is open). Retrying later may succeed.
    #[error("mvcc: store busy: {0}")]
    Busy(String),
    /// Stored or received bytes do not decode.
    #[error("mvcc: corrupt data: {0}")]
    Corrupt(String),
    /// The store's file cannot be opened, or is damaged.
    #[error(transparent)]
    DataFile(#[from] crate::disk::DataFileError),
    /// The database failed (I/O, redb internal error, ...).
    #[error("mvcc: storage error: {0}")]
    Storage(String),
    /// The store lost applied writes that readers saw (a storage error while
    /// they waited to be committed); only a restart makes it whole again.
    #[error("mvcc: the store lost applied writes after a storage error; restart the member")]
    Failed,
}

impl MvccError {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        MvccError::Corrupt(what.into())
    }
}

macro_rules! storage_error_from {
    ($($ty:ty),* $(,)?) => {
        $(impl From<$ty> for MvccError {
            fn from(e: $ty) -> Self {
                MvccError::Storage(e.to_string())
            }
        })*
    };
}

storage_error_from!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::CompactionError,
    std::io::Error,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacted_and_future_display_like_etcd() {
        assert_eq!(
            MvccError::Compacted.to_string(),
            "mvcc: required revision has been compacted"
        );
        assert_eq!(
            MvccError::FutureRevision.to_string(),
            "mvcc: required revision is a future revision"
        );
    }
}
