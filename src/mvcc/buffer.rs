//! The read buffer: the records of batches that are applied but not yet
//! committed to redb, for read views.
//!
//! A batch that need not be durable yet does not commit its redb write
//! transaction. The transaction stays open, *pending*, and the next batch
//! goes on in it, so a run of batches costs one redb commit (one
//! copy-on-write of the pages they touched, one fsync) instead of one each.
//! etcd's backend batches its bolt transaction the same way, and for the same
//! reason keeps a read buffer (`txReadBuffer`): readers cannot see into an
//! open write transaction, so each such batch hands its records (revision ->
//! encoded record) to the [`ReadBuffer`] as it ends.
//!
//! Generations: a buffer belongs to the interval between two redb commits.
//! It starts empty when the pending transaction commits, with
//! [`ReadBuffer::base`] the current revision that commit made durable, and
//! collects the records of every revision past `base` until the next commit,
//! which installs a new, empty buffer. A buffer is never emptied or changed
//! otherwise: a read view keeps the buffer it was opened with, and that
//! buffer holds every record past `base` the view can ask for. Old buffers
//! are freed with their last view.
//!
//! Invariant (kept by `store`): a read view pairs a redb snapshot, a buffer
//! and a current revision such that every stored revision up to that current
//! one is in the snapshot or, past the buffer's base, in the buffer.

use std::sync::{RwLock, RwLockReadGuard};

use super::revision::Revision;

/// Records of revisions past [`ReadBuffer::base`], in revision order.
#[derive(Debug)]
pub(crate) struct ReadBuffer {
    base: i64,
    records: RwLock<Vec<(Revision, Box<[u8]>)>>,
}

impl ReadBuffer {
    /// An empty buffer over a redb state that holds every revision up to `base`.
    pub fn new(base: i64) -> ReadBuffer {
        ReadBuffer {
            base,
            records: RwLock::new(Vec::new()),
        }
    }

    /// The revision every paired redb snapshot holds everything up to.
    pub fn base(&self) -> i64 {
        self.base
    }

    /// Whether the record at `rev` is to be read here rather than from redb.
    pub fn covers(&self, rev: Revision) -> bool {
        rev.main > self.base
    }

    fn records(&self) -> RwLockReadGuard<'_, Vec<(Revision, Box<[u8]>)>> {
        // Appends are the only writes and leave the vector whole.
        self.records.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the records of one batch (revisions past every earlier one).
    pub fn extend(&self, batch: Vec<(Revision, Vec<u8>)>) {
        let mut records = self.records.write().unwrap_or_else(|e| e.into_inner());
        records.reserve(batch.len());
        for (rev, bytes) in batch {
            debug_assert!(
                rev.main > self.base,
                "{rev:?} is not past base {}",
                self.base
            );
            debug_assert!(records.last().is_none_or(|(last, _)| *last < rev));
            records.push((rev, bytes.into_boxed_slice()));
        }
    }

    /// Calls `f` with the record at `rev`, if the buffer has it.
    pub fn with<T>(&self, rev: Revision, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let records = self.records();
        records
            .binary_search_by_key(&rev, |(r, _)| *r)
            .ok()
            .map(|i| f(&records[i].1))
    }

    /// Calls `f` with every record in `lo..=hi`, in revision order, until it
    /// fails.
    pub fn for_each_in<E>(
        &self,
        lo: Revision,
        hi: Revision,
        mut f: impl FnMut(Revision, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let records = self.records();
        let start = records.partition_point(|(r, _)| *r < lo);
        for (rev, bytes) in &records[start..] {
            if *rev > hi {
                break;
            }
            f(*rev, bytes)?;
        }
        Ok(())
    }

    /// Number of records held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(main: i64, sub: i64) -> (Revision, Vec<u8>) {
        (Revision::new(main, sub), vec![main as u8, sub as u8])
    }

    #[test]
    fn a_buffer_serves_the_revisions_past_its_base_it_was_given() {
        let buffer = ReadBuffer::new(4);
        assert!(!buffer.covers(Revision::new(4, 9)));
        assert!(buffer.covers(Revision::new(5, 0)));
        buffer.extend(vec![rec(5, 0), rec(5, 1)]);
        buffer.extend(vec![rec(7, 0)]);
        assert_eq!(
            buffer.with(Revision::new(5, 1), <[u8]>::to_vec),
            Some(vec![5, 1])
        );
        assert_eq!(buffer.with(Revision::new(6, 0), <[u8]>::to_vec), None);

        let mut seen = Vec::new();
        buffer
            .for_each_in(Revision::new(5, 1), Revision::last_of(7), |rev, bytes| {
                seen.push((rev, bytes.to_vec()));
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(seen, vec![rec(5, 1), rec(7, 0)]);
        assert_eq!(buffer.len(), 3);
    }
}
