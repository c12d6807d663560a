//! The key index: for every key, the revisions at which it was put or deleted,
//! kept in memory as etcd keeps its `treeIndex`.
//!
//! The store's only key-ordered structure lives here. On disk, the `mvcc_kv`
//! table is keyed by revision, so a write appends records at its end and dirties
//! the same few pages batch after batch; a key-ordered table on disk would dirty
//! one random page per written key instead. Records are self-describing (they
//! carry their key and a put/tombstone tag), so [`KeyIndex::rebuild`] recreates
//! the index from `mvcc_kv` whenever the store opens or restores a snapshot.
//!
//! Each put in a history also keeps its create revision, version and lease
//! (24 bytes), so that the next put of the key knows them without reading
//! the record: a put reads nothing from `mvcc_kv` unless it returns or keeps
//! the previous value.
//!
//! Invariants:
//! * every key's history is sorted by revision, strictly increasing, and never
//!   empty (a key whose history empties is removed);
//! * the history of a key holds exactly the revisions of its records in
//!   `mvcc_kv`, once committed batches are counted: a batch appends its changes
//!   at once (readers ignore revisions past their own), a batch that does not
//!   commit takes them back with [`KeyIndex::rollback`], and a compaction is
//!   applied as its batch commits, just before ([`KeyIndex::compact`]);
//! * at or below [`KeyIndex::compacted`], a key keeps only its newest
//!   revision, and only if that is a put.
//!
//! Readers lock the index briefly: they copy out the revisions they need and
//! read the records after the lock is released.

use std::collections::BTreeMap;
use std::ops::Bound;

use smallvec::SmallVec;

use redb::ReadableTable;

use super::codec::decode_record_head;
use super::error::Result;
use super::key_range::KeyRange;
use super::revision::Revision;

/// One change of a key: its revision, whether it was a delete, and for a put
/// the numbers the key's next put carries on from, so that a put needs no
/// read of the record before it (etcd's `keyIndex` keeps the same in its
/// generations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    pub rev: Revision,
    pub tombstone: bool,
    /// For a put, the key-value's numbers; zero for a delete.
    pub meta: PutMeta,
}

/// A put's `create_revision`, `version` and `lease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PutMeta {
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Change {
    pub fn put(rev: Revision, meta: PutMeta) -> Change {
        Change {
            rev,
            tombstone: false,
            meta,
        }
    }

    pub fn delete(rev: Revision) -> Change {
        Change {
            rev,
            tombstone: true,
            meta: PutMeta::default(),
        }
    }
}

/// A key as the index holds it: up to 16 bytes inline, in the tree's node,
/// longer ones on the heap. A lookup compares the key it looks for with
/// several keys of every node on its way down; keys stored inline are compared
/// where they lie, instead of each costing a load from elsewhere in memory
/// (with 100k short keys, those loads were most of a put's index lookup).
/// Same size as a `Vec<u8>`.
type Key = SmallVec<[u8; 16]>;

/// Every key's history of changes.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    keys: BTreeMap<Key, Vec<Change>>,
    /// The revision of the last compaction applied (-1 if none).
    compacted: i64,
    /// How many keys exist now: those whose newest change is a put.
    live: usize,
    /// Bumped when a snapshot replaces the whole store (or changes readers
    /// saw are taken back), so read views opened before can tell that the
    /// index no longer matches their snapshot.
    epoch: u64,
}

impl KeyIndex {
    /// An empty index of a store compacted at `compacted`.
    pub fn new(compacted: i64) -> Self {
        KeyIndex {
            keys: BTreeMap::new(),
            compacted,
            live: 0,
            epoch: 0,
        }
    }

    /// The index of the records in `kv` (see [`super::entry`]), read in
    /// revision order.
    pub fn rebuild<T: ReadableTable<&'static [u8], &'static [u8]>>(
        kv: &T,
        compacted: i64,
    ) -> Result<Self> {
        let mut index = KeyIndex::new(compacted);
        super::entry::for_each_stored(kv, |rev, bytes| {
            let head = decode_record_head(bytes)?;
            let change = if head.tombstone {
                Change::delete(rev)
            } else {
                Change::put(
                    rev,
                    PutMeta {
                        create_revision: head.create_revision,
                        version: head.version,
                        lease: head.lease,
                    },
                )
            };
            index.record(head.key, change);
            Ok(())
        })?;
        Ok(index)
    }

    /// The revision of the last compaction applied to the index.
    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    /// Changes whenever a snapshot replaced the store.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Replaces the whole index (after a snapshot restore).
    pub fn replace(&mut self, other: KeyIndex) {
        let epoch = self.epoch + 1;
        *self = other;
        self.epoch = epoch;
    }

    /// How many keys exist at the newest revision the index holds (etcd's
    /// `etcd_debugging_mvcc_keys_total`).
    pub fn live(&self) -> usize {
        self.live
    }

    /// Number of keys with any history (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Number of changes held, over all keys (tests).
    #[cfg(test)]
    pub fn changes(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    /// Appends `change` to the history of `key`; its revision must be past
    /// every revision the index holds.
    pub fn record(&mut self, key: &[u8], change: Change) {
        let was_live = match self.keys.get_mut(key) {
            Some(history) => {
                debug_assert!(history.last().is_none_or(|c| c.rev < change.rev));
                let was_live = is_live(history);
                history.push(change);
                was_live
            }
            None => {
                self.keys.insert(Key::from_slice(key), vec![change]);
                false
            }
        };
        match (was_live, change.tombstone) {
            (false, false) => self.live += 1,
            (true, true) => self.live -= 1,
            _ => {}
        }
    }

    /// Records a put of `key` at `rev` (past every revision the index
    /// holds) and returns what it carries: the create revision and version
    /// go on from the key's current put, or start afresh if the key does not
    /// exist; the lease is `lease`, or the current put's if `None` (etcd's
    /// `ignore_lease`). One lookup where [`Self::newest_upto`] and
    /// [`Self::record`] would take two.
    pub fn record_put(&mut self, key: &[u8], rev: Revision, lease: Option<i64>) -> PutMeta {
        let carry = |newest: Option<&Change>| match newest.filter(|c| !c.tombstone) {
            Some(p) => PutMeta {
                create_revision: p.meta.create_revision,
                version: p.meta.version + 1,
                lease: lease.unwrap_or(p.meta.lease),
            },
            None => PutMeta {
                create_revision: rev.main,
                version: 1,
                lease: lease.unwrap_or(0),
            },
        };
        let (meta, was_live) = match self.keys.get_mut(key) {
            Some(history) => {
                debug_assert!(history.last().is_none_or(|c| c.rev < rev));
                let was_live = is_live(history);
                let meta = carry(history.last());
                history.push(Change::put(rev, meta));
                (meta, was_live)
            }
            None => {
                let meta = carry(None);
                self.keys
                    .insert(Key::from_slice(key), vec![Change::put(rev, meta)]);
                (meta, false)
            }
        };
        if !was_live {
            self.live += 1;
        }
        meta
    }

    /// The newest change of `key` at or below `upper`.
    pub fn newest_upto(&self, key: &[u8], upper: Revision) -> Option<Change> {
        newest_upto(self.keys.get(key)?, upper)
    }

    /// The put that `key` held just before its put at main revision `main`
    /// with `meta` (one revision may change a key more than once, but never
    /// twice to the same numbers): `None` if the key did not exist then, or
    /// if that put or the one before it has been compacted away.
    pub fn put_before(&self, key: &[u8], main: i64, meta: PutMeta) -> Option<Change> {
        let history = self.keys.get(key)?;
        let end = history.partition_point(|c| c.rev.main <= main);
        let at = history[..end]
            .iter()
            .rposition(|c| c.rev.main == main && !c.tombstone && c.meta == meta)?;
        at.checked_sub(1)
            .map(|i| history[i])
            .filter(|c| !c.tombstone)
    }

    /// Calls `visit` with every key that exists at revision `rev` in `range`
    /// and the revision of its put, in key order, until it returns `false`.
    pub fn for_each_live(
        &self,
        range: &KeyRange,
        rev: i64,
        mut visit: impl FnMut(&[u8], Revision) -> bool,
    ) {
        if range.is_empty() {
            return;
        }
        let upper = Revision::last_of(rev);
        if let KeyRange::Single(key) = range {
            if let Some(c) = self.newest_upto(key, upper).filter(|c| !c.tombstone) {
                visit(key, c.rev);
            }
            return;
        }
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = range.bounds();
        for (key, history) in self.keys.range::<[u8], _>(bounds) {
            if let Some(c) = newest_upto(history, upper).filter(|c| !c.tombstone) {
                if !visit(key, c.rev) {
                    return;
                }
            }
        }
    }

    /// The revisions a compaction at `rev` removes: for every key, its changes
    /// at or below `rev` but the newest, and that one too if it is a delete.
    pub fn compactable(&self, rev: i64) -> Vec<Revision> {
        let upper = Revision::last_of(rev);
        let mut out = Vec::new();
        for history in self.keys.values() {
            let drop = compacted_away(history, upper);
            out.extend(history[..drop].iter().map(|c| c.rev));
        }
        out
    }

    /// Applies a compaction at `rev` (removes what [`Self::compactable`]
    /// lists, and keys left with no history).
    pub fn compact(&mut self, rev: i64) {
        let upper = Revision::last_of(rev);
        self.keys.retain(|_, history| {
            history.drain(..compacted_away(history, upper));
            if history.capacity() > 4 * history.len() {
                history.shrink_to_fit();
            }
            !history.is_empty()
        });
        self.compacted = self.compacted.max(rev);
    }

    /// Takes back every change past revision `current` (a batch that did not
    /// commit). Visits every key; batches fail only on storage errors.
    /// `seen`: read views may have seen the changes, so they must stop
    /// trusting the index (as after a restore).
    pub fn rollback(&mut self, current: i64, seen: bool) {
        if seen {
            self.epoch += 1;
        }
        let mut live = 0;
        self.keys.retain(|_, history| {
            let keep = history.partition_point(|c| c.rev.main <= current);
            history.truncate(keep);
            live += usize::from(is_live(history));
            !history.is_empty()
        });
        self.live = live;
    }
}

/// Whether a history's key exists now (its newest change is a put). A
/// compaction never changes that: it keeps a key's newest put, and removes a
/// delete only with everything before it.
fn is_live(history: &[Change]) -> bool {
    history.last().is_some_and(|c| !c.tombstone)
}

/// How many of the oldest changes of a sorted history a compaction at
/// `upper` removes: all at or below it but the newest, and that one too if it
/// is a delete.
fn compacted_away(history: &[Change], upper: Revision) -> usize {
    let below = history.partition_point(|c| c.rev <= upper);
    match below.checked_sub(1).map(|i| history[i].tombstone) {
        Some(false) => below - 1,
        _ => below,
    }
}

/// The newest change in a sorted history at or below `upper`.
fn newest_upto(history: &[Change], upper: Revision) -> Option<Change> {
    // Reads at the current revision are the common case: the last change.
    match history.last() {
        Some(last) if last.rev <= upper => Some(*last),
        _ => {
            let n = history.partition_point(|c| c.rev <= upper);
            n.checked_sub(1).map(|i| history[i])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    fn live(index: &KeyIndex, range: &KeyRange, at: i64) -> Vec<(Vec<u8>, i64)> {
        let mut out = Vec::new();
        index.for_each_live(range, at, |k, r| {
            out.push((k.to_vec(), r.main));
            true
        });
        out
    }

    /// a: put 2, put 3, delete 4, put 6; b: put 5, delete 7.
    fn sample() -> KeyIndex {
        let mut index = KeyIndex::new(-1);
        for (key, main, tombstone) in [
            (b"a", 2, false),
            (b"a", 3, false),
            (b"a", 4, true),
            (b"b", 5, false),
            (b"a", 6, false),
            (b"b", 7, true),
        ] {
            index.record(key, change(main, tombstone));
        }
        index
    }

    fn change(main: i64, tombstone: bool) -> Change {
        if tombstone {
            Change::delete(rev(main))
        } else {
            Change::put(rev(main), PutMeta::default())
        }
    }

    #[test]
    fn live_keys_are_those_whose_newest_change_at_the_revision_is_a_put() {
        let index = sample();
        let all = KeyRange::new(b"\0", b"\0");
        assert_eq!(live(&index, &all, 3), vec![(b"a".to_vec(), 3)]);
        assert_eq!(live(&index, &all, 4), vec![]);
        assert_eq!(
            live(&index, &all, 5),
            vec![(b"b".to_vec(), 5)],
            "a deleted, b put"
        );
        assert_eq!(live(&index, &all, 6).len(), 2);
        assert_eq!(live(&index, &all, 7), vec![(b"a".to_vec(), 6)]);
        assert_eq!(
            live(&index, &KeyRange::new(b"b", b""), 5),
            vec![(b"b".to_vec(), 5)]
        );
        assert_eq!(live(&index, &KeyRange::new(b"b", b"a"), 6), vec![]);
    }

    #[test]
    fn compaction_keeps_each_keys_newest_put_at_or_below_the_revision() {
        let mut index = sample();
        assert_eq!(index.compactable(5), vec![rev(2), rev(3), rev(4)]);
        index.compact(5);
        assert_eq!(index.compacted(), 5);
        assert_eq!(index.newest_upto(b"a", Revision::last_of(5)), None);
        assert_eq!(
            index.newest_upto(b"b", Revision::last_of(5)).map(|c| c.rev),
            Some(rev(5))
        );
        assert_eq!(index.compactable(7), vec![rev(5), rev(7)]);
        index.compact(7);
        assert_eq!(index.len(), 1, "b is gone: its newest change is a delete");
        assert_eq!(live(&index, &KeyRange::new(b"\0", b"\0"), 7).len(), 1);
    }

    #[test]
    fn a_recorded_put_carries_on_the_keys_generation_or_starts_a_new_one() {
        let mut index = KeyIndex::default();
        let meta = |create_revision, version, lease| PutMeta {
            create_revision,
            version,
            lease,
        };
        assert_eq!(index.record_put(b"k", rev(2), Some(7)), meta(2, 1, 7));
        assert_eq!(
            index.record_put(b"k", rev(3), None),
            meta(2, 2, 7),
            "the lease kept"
        );
        assert_eq!(index.record_put(b"k", rev(4), Some(0)), meta(2, 3, 0));
        index.record(b"k", Change::delete(rev(5)));
        assert_eq!(
            index.record_put(b"k", rev(6), Some(0)),
            meta(6, 1, 0),
            "a put after a delete starts a new generation"
        );
        assert_eq!(
            index.newest_upto(b"k", Revision::last_of(6)),
            Some(Change::put(rev(6), meta(6, 1, 0)))
        );
        assert_eq!(index.changes(), 5);
    }

    #[test]
    fn the_put_before_a_put_is_the_previous_change_unless_it_is_a_delete() {
        let mut index = sample();
        // One revision that puts c, deletes it and puts it again.
        let meta = |version| PutMeta {
            create_revision: 8,
            version,
            lease: 0,
        };
        index.record(b"c", change(7, false));
        index.record(b"c", Change::put(Revision::new(8, 0), meta(2)));
        index.record(b"c", Change::delete(Revision::new(8, 1)));
        index.record(b"c", Change::put(Revision::new(8, 2), meta(1)));
        let before = |key: &[u8], main| {
            index
                .put_before(key, main, PutMeta::default())
                .map(|c| c.rev.main)
        };
        assert_eq!(before(b"a", 3), Some(2));
        assert_eq!(before(b"a", 2), None, "first put");
        assert_eq!(before(b"a", 6), None, "after a delete");
        assert_eq!(before(b"a", 4), None, "a delete has no put before it here");
        assert_eq!(before(b"a", 5), None, "no change of a at 5");
        assert_eq!(before(b"d", 5), None, "unknown key");
        assert_eq!(
            index.put_before(b"c", 8, meta(2)).map(|c| c.rev),
            Some(rev(7))
        );
        assert_eq!(index.put_before(b"c", 8, meta(1)), None, "after a delete");
        let mut compacted = sample();
        compacted.compact(3);
        assert_eq!(
            compacted.put_before(b"a", 3, PutMeta::default()),
            None,
            "compacted away"
        );
    }

    #[test]
    fn rollback_takes_back_changes_past_the_revision_and_empty_keys() {
        let mut index = sample();
        index.record(b"c", change(8, false));
        index.record(b"a", Change::delete(Revision::new(8, 1)));
        index.rollback(7, false);
        assert_eq!(index.len(), 2);
        assert_eq!(
            index.newest_upto(b"a", Revision::last_of(9)).map(|c| c.rev),
            Some(rev(6))
        );
    }
}
