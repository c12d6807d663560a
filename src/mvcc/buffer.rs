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

//! Allocation: a batch encodes its records one after another into one
//! [`Records`] (one growing buffer, not one allocation per record), and the
//! read buffer keeps the batches' [`Records`] as they came. A put costs no
//! allocation of its own here (only the buffer's occasional growth), and a
//! generation is freed a batch at a time.

use std::sync::{RwLock, RwLockReadGuard};

use super::codec::{append_record, RecordRef};
use super::revision::Revision;

/// Encoded records of ascending revisions, back to back in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Records {
    bytes: Vec<u8>,
    /// Each record's revision and where it ends in `bytes` (it starts where
    /// the one before ends).
    ends: Vec<(Revision, usize)>,
}

impl Records {
    /// Appends the encoded record of `rev` (past every one held); returns
    /// its bytes.
    pub fn push(&mut self, rev: Revision, tombstone: bool, record: &RecordRef<'_>) -> &[u8] {
        debug_assert!(self.ends.last().is_none_or(|(last, _)| *last < rev));
        let start = self.bytes.len();
        append_record(&mut self.bytes, tombstone, record);
        self.ends.push((rev, self.bytes.len()));
        &self.bytes[start..]
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    fn first(&self) -> Option<Revision> {
        self.ends.first().map(|(rev, _)| *rev)
    }

    fn last(&self) -> Option<Revision> {
        self.ends.last().map(|(rev, _)| *rev)
    }

    /// The records and their revisions, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (Revision, &[u8])> + Clone + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The `i`-th record and its revision.
    fn get(&self, i: usize) -> (Revision, &[u8]) {
        let start = if i == 0 { 0 } else { self.ends[i - 1].1 };
        let (rev, end) = self.ends[i];
        (rev, &self.bytes[start..end])
    }

    /// Calls `f` with every record in `lo..=hi`, in revision order, until it
    /// fails; `Ok(false)` if it stopped at a record past `hi`.
    pub fn for_each_in<E>(
        &self,
        lo: Revision,
        hi: Revision,
        mut f: impl FnMut(Revision, &[u8]) -> Result<(), E>,
    ) -> Result<bool, E> {
        for i in self.position(lo)..self.len() {
            let (rev, bytes) = self.get(i);
            if rev > hi {
                return Ok(false);
            }
            f(rev, bytes)?;
        }
        Ok(true)
    }

    /// The record at `rev`, if held.
    pub fn find(&self, rev: Revision) -> Option<&[u8]> {
        let i = self.position(rev);
        (i < self.len() && self.ends[i].0 == rev).then(|| self.get(i).1)
    }

    /// Index of the first record at or past `rev`.
    fn position(&self, rev: Revision) -> usize {
        self.ends.partition_point(|(r, _)| *r < rev)
    }
}

/// Records of revisions past [`ReadBuffer::base`], in revision order: the
/// [`Records`] of each batch that waited, in the order they were applied.
#[derive(Debug)]
pub(crate) struct ReadBuffer {
    base: i64,
    batches: RwLock<Vec<Records>>,
}

impl ReadBuffer {
    /// An empty buffer over a redb state that holds every revision up to `base`.
    pub fn new(base: i64) -> ReadBuffer {
        ReadBuffer {
            base,
            batches: RwLock::new(Vec::new()),
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

    fn batches(&self) -> RwLockReadGuard<'_, Vec<Records>> {
        // Appends are the only writes and leave the vector whole.
        self.batches.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the records of one batch (revisions past every earlier one).
    pub fn extend(&self, batch: Records) {
        if batch.is_empty() {
            return;
        }
        let mut batches = self.batches.write().unwrap_or_else(|e| e.into_inner());
        debug_assert!(
            batch.first().is_some_and(|rev| rev.main > self.base),
            "{:?} is not past base {}",
            batch.first(),
            self.base
        );
        debug_assert!(batches
            .last()
            .and_then(Records::last)
            .is_none_or(|last| batch.first().is_some_and(|first| last < first)));
        batches.push(batch);
    }

    /// Calls `f` with the record at `rev`, if the buffer has it.
    pub fn with<T>(&self, rev: Revision, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let batches = self.batches();
        // The first batch whose last record is at or past `rev`.
        let b = batches.partition_point(|r| r.last().is_some_and(|last| last < rev));
        batches.get(b)?.find(rev).map(f)
    }

    /// Calls `f` with every record in `lo..=hi`, in revision order, until it
    /// fails.
    pub fn for_each_in<E>(
        &self,
        lo: Revision,
        hi: Revision,
        mut f: impl FnMut(Revision, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let batches = self.batches();
        let first = batches.partition_point(|r| r.last().is_some_and(|last| last < lo));
        for records in &batches[first..] {
            if !records.for_each_in(lo, hi, &mut f)? {
                break;
            }
        }
        Ok(())
    }

    /// Number of records held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.batches().iter().map(Records::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::mvcc::codec::encode_record;
    use crate::mvcc::types::KeyValue;

    /// A record of `rev` carrying `key`, and its encoding.
    fn rec(rev: Revision, key: &[u8]) -> (Revision, KeyValue, Vec<u8>) {
        let kv = KeyValue {
            key: key.to_vec(),
            value: b"v".to_vec(),
            mod_revision: rev.main,
            ..KeyValue::default()
        };
        let bytes = encode_record(false, &kv);
        (rev, kv, bytes)
    }

    fn records(list: &[(Revision, KeyValue, Vec<u8>)]) -> Records {
        let mut records = Records::default();
        for (rev, kv, bytes) in list {
            assert_eq!(records.push(*rev, false, &RecordRef::of(kv)), &bytes[..]);
        }
        records
    }

    fn r(main: i64, sub: i64) -> Revision {
        Revision::new(main, sub)
    }

    #[test]
    fn a_buffer_serves_the_revisions_past_its_base_it_was_given() {
        let buffer = ReadBuffer::new(4);
        assert!(!buffer.covers(r(4, 9)));
        assert!(buffer.covers(r(5, 0)));
        let (a, b, c) = (rec(r(5, 0), b"a"), rec(r(5, 1), b"b"), rec(r(7, 0), b"c"));
        buffer.extend(records(&[a.clone(), b.clone()]));
        buffer.extend(records(&[]));
        buffer.extend(records(std::slice::from_ref(&c)));
        assert_eq!(buffer.with(r(5, 1), <[u8]>::to_vec), Some(b.2.clone()));
        assert_eq!(buffer.with(r(6, 0), <[u8]>::to_vec), None);

        let mut seen = Vec::new();
        buffer
            .for_each_in(r(5, 1), Revision::last_of(7), |rev, bytes| {
                seen.push((rev, bytes.to_vec()));
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(seen, vec![(b.0, b.2), (c.0, c.2)]);
        assert_eq!(buffer.len(), 3);
    }

    #[test]
    fn records_pushed_are_returned_in_order_each_as_encoded() {
        let list = [rec(r(2, 0), b"ab"), rec(r(2, 1), b""), rec(r(3, 0), b"cde")];
        let records = records(&list);
        for (i, (rev, _, bytes)) in list.iter().enumerate() {
            assert_eq!(records.get(i), (*rev, &bytes[..]));
        }
    }

    /// Batches of records with ascending revisions past base 10, some
    /// empty; a main revision may have several sub-revisions.
    fn batches() -> impl Strategy<Value = Vec<Vec<(Revision, KeyValue, Vec<u8>)>>> {
        let steps = prop::collection::vec((0..3usize, 0..3i64, any::<u8>()), 0..40);
        steps.prop_map(|steps| {
            let (mut batches, mut batch, mut main, mut sub) = (Vec::new(), Vec::new(), 11, 0);
            for (cut, step, key) in steps {
                if cut == 0 {
                    batches.push(std::mem::take(&mut batch));
                }
                if step == 0 {
                    sub += 1;
                } else {
                    (main, sub) = (main + step, 0);
                }
                batch.push(rec(r(main, sub), &[key]));
            }
            batches.push(batch);
            batches
        })
    }

    proptest! {
        #[test]
        fn a_buffer_reads_like_a_map_of_its_records(
            batches in batches(),
            probes in prop::collection::vec((8..80i64, 0..4i64, 8..80i64), 1..20),
        ) {
            let buffer = ReadBuffer::new(10);
            let mut model = BTreeMap::new();
            for batch in &batches {
                buffer.extend(records(batch));
                model.extend(batch.iter().map(|(rev, _, bytes)| (*rev, bytes.clone())));
            }
            prop_assert_eq!(buffer.len(), model.len());
            for (main, sub, to) in probes {
                let rev = r(main, sub);
                prop_assert_eq!(buffer.with(rev, <[u8]>::to_vec), model.get(&rev).cloned());
                let hi = Revision::last_of(to);
                let mut seen = Vec::new();
                buffer
                    .for_each_in(rev, hi, |at, bytes| {
                        seen.push((at, bytes.to_vec()));
                        Ok::<_, ()>(())
                    })
                    .unwrap();
                let want: Vec<_> = if rev <= hi {
                    model.range(rev..=hi).map(|(at, b)| (*at, b.clone())).collect()
                } else {
                    Vec::new()
                };
                prop_assert_eq!(seen, want);
            }
        }
    }
}
