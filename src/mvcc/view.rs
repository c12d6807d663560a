//! Read logic shared by write-side revision transactions and read views.
//!
//! A [`View`] borrows the `kv` table of either a redb write transaction or a
//! read transaction (anything implementing `ReadableTable`) and the shared
//! [`KeyIndex`], together with the current and compacted revision as seen by
//! that transaction, and answers: ranges (with etcd's filter/sort/limit
//! pipeline), the latest version of a key, events from history, and the KV hash.
//!
//! Cost: a range walks the index over the keys of the range (in memory, under
//! a read lock held only for that walk), then reads one record per returned key
//! with [`View::records_at`], which reads the records one `kv` entry holds (a
//! group of one batch's records, see [`super::entry`]) with one lookup.
//! Revisions in the index past the
//! view's current revision belong to a batch not committed yet and are never
//! looked at.
//!
//! A read view's records past the last redb commit are in its
//! [`ReadBuffer`] (see [`super::buffer`]): record reads and scans take a
//! revision from the buffer when it covers it and from `kv` otherwise. A
//! batch's records are in `kv` only once it ends: until then its own reads
//! find them in its [`Records`].

use std::cmp::Ordering;

use redb::ReadableTable;

use std::sync::{RwLock, RwLockReadGuard};

use super::buffer::{ReadBuffer, Records};
use super::codec::{decode_record, Record};
use super::entry::{self, Entry};
use super::error::{MvccError, Result};
use super::hash::Crc32c;
use super::index::{Change, KeyIndex, PutMeta};
use super::key_range::KeyRange;
use super::revision::Revision;
use super::types::{
    Event, EventKind, HashKv, KeyValue, RangeOptions, RangeResult, SortOrder, SortTarget,
};

/// Label fed to the KV hash before any revision, like etcd feeds its bucket name.
const HASH_KV_LABEL: &[u8] = b"mvcc_kv";

/// An inclusive span of revisions.
type Span = (Revision, Revision);

/// Read access to the store as one transaction sees it.
pub(crate) struct View<'a, T> {
    /// The `kv` table (revision -> record, or group of records) of the
    /// transaction.
    pub kv: &'a T,
    /// For a read view, the records past its redb snapshot; `None` for a
    /// batch (its write transaction holds everything else).
    pub buffer: Option<&'a ReadBuffer>,
    /// For a batch, the records it wrote that are not in `kv` yet (a batch
    /// inserts them, grouped, when it ends); `None` for a read view.
    pub own: Option<&'a Records>,
    /// The shared key index.
    pub index: &'a RwLock<KeyIndex>,
    /// For a read view, the index epoch its snapshot belongs to; `None` for a
    /// batch (no restore can run while a batch is open).
    pub epoch: Option<u64>,
    /// The revision reads default to (the header revision of results).
    pub current: i64,
    /// The compacted revision (-1 if never compacted).
    pub compact: i64,
}

impl<'a, T: ReadableTable<&'static [u8], &'static [u8]>> View<'a, T> {
    /// The stored record at `rev`; its absence means the tables disagree.
    pub fn record_at(&self, rev: Revision) -> Result<Record> {
        if let Some(record) = self.record_in_memory(rev) {
            return record;
        }
        entry::with_record(self.kv, rev, decode_record)?.ok_or_else(|| missing_record(rev))
    }

    /// The record at `rev` if it is not in `kv` but in memory: among the
    /// batch's own records, or in the read view's buffer.
    fn record_in_memory(&self, rev: Revision) -> Option<Result<Record>> {
        if let Some(bytes) = self.own.and_then(|own| own.find(rev)) {
            return Some(decode_record(bytes));
        }
        let buffer = self.buffered(rev)?;
        Some(
            buffer
                .with(rev, decode_record)
                .unwrap_or_else(|| Err(missing_record(rev))),
        )
    }

    /// The buffer to read `rev` from, if it is not in `kv`.
    fn buffered(&self, rev: Revision) -> Option<&'a ReadBuffer> {
        self.buffer.filter(|b| b.covers(rev))
    }

    /// The revisions of `lo..=hi` that `kv` holds, and those the buffer holds.
    fn split(&self, lo: Revision, hi: Revision) -> (Option<Span>, Option<Span>) {
        let Some(buffer) = self.buffer else {
            return ((lo <= hi).then_some((lo, hi)), None);
        };
        let stored = Revision::last_of(buffer.base()).min(hi);
        let buffered = Revision::new(buffer.base().saturating_add(1), 0).max(lo);
        (
            (lo <= stored).then_some((lo, stored)),
            (buffered <= hi).then_some((buffered, hi)),
        )
    }

    /// Calls `f` with every record in `lo..=hi`, in revision order, from
    /// `kv` and then the buffer.
    fn for_each_record(
        &self,
        lo: Revision,
        hi: Revision,
        mut f: impl FnMut(Revision, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let (stored, buffered) = self.split(lo, hi);
        if let Some((lo, hi)) = stored {
            entry::for_each_record(self.kv, lo, hi, &mut f)?;
        }
        if let (Some((lo, hi)), Some(buffer)) = (buffered, self.buffer) {
            buffer.for_each_in(lo, hi, &mut f)?;
        }
        // A batch's own records come after everything in `kv`.
        if let Some(own) = self.own {
            own.for_each_in(lo, hi, &mut f)?;
        }
        Ok(())
    }

    /// The stored records at `revs` (distinct or not, in any order), returned
    /// in the order asked. Sorted by revision, they are read entry by entry:
    /// revisions that one entry of `kv` holds (a group, written by one batch)
    /// cost one lookup between them.
    pub fn records_at(&self, revs: &[Revision]) -> Result<Vec<Record>> {
        let mut order: Vec<usize> = (0..revs.len()).collect();
        order.sort_unstable_by_key(|&i| revs[i]);
        let mut found: Vec<Option<Record>> = (0..revs.len()).map(|_| None).collect();
        // The entry of `kv` read last: its key and value.
        let mut last: Option<(Vec<u8>, redb::AccessGuard<'_, &'static [u8]>)> = None;
        for (pos, &i) in order.iter().enumerate() {
            let want = revs[i];
            if pos > 0 && revs[order[pos - 1]] == want {
                found[i] = found[order[pos - 1]].clone();
                continue;
            }
            if let Some(record) = self.record_in_memory(want) {
                found[i] = Some(record?);
                continue;
            }
            let mut record = None;
            if let Some((key, value)) = &last {
                if let Some(bytes) = Entry::parse(key, value.value())?.find(want)? {
                    record = Some(decode_record(bytes)?);
                }
            }
            if record.is_none() {
                let (k, v) =
                    entry::at_or_below(self.kv, want)?.ok_or_else(|| missing_record(want))?;
                let (key, value) = &*last.insert((k.value().to_vec(), v));
                let bytes = Entry::parse(key, value.value())?
                    .find(want)?
                    .ok_or_else(|| missing_record(want))?;
                record = Some(decode_record(bytes)?);
            }
            found[i] = record;
        }
        found
            .into_iter()
            .zip(revs)
            .map(|(r, &rev)| r.ok_or_else(|| missing_record(rev)))
            .collect()
    }

    /// The key index, locked for reading. A read view whose snapshot a
    /// restore has replaced since gets `Compacted`: its history is gone.
    fn index(&self) -> Result<RwLockReadGuard<'a, KeyIndex>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        match self.epoch {
            Some(epoch) if epoch != index.epoch() => Err(MvccError::Compacted),
            _ => Ok(index),
        }
    }

    /// The compacted revision: this view's, or a later compaction's already
    /// applied to the shared index (history below it is gone from the index).
    fn compacted(&self, index: &KeyIndex) -> i64 {
        self.compact.max(index.compacted())
    }

    /// The put that made the current key-value of `key`, if the key exists,
    /// from the index alone.
    pub(crate) fn latest_put(&self, key: &[u8]) -> Result<Option<Change>> {
        Ok(self
            .index()?
            .newest_upto(key, Revision::last_of(self.current))
            .filter(|c| !c.tombstone))
    }

    /// Resolves a requested revision (0 or negative = current) against the
    /// current and compacted revisions, as etcd's `rangeKeys`.
    fn resolve_revision(&self, requested: i64, compacted: i64) -> Result<i64> {
        if requested > self.current {
            return Err(MvccError::FutureRevision);
        }
        let rev = if requested <= 0 {
            self.current
        } else {
            requested
        };
        if rev < compacted {
            return Err(MvccError::Compacted);
        }
        Ok(rev)
    }

    /// The keys existing at the requested revision in `range`: how many, and
    /// the revisions of the first `fetch` of them (all if `None`), in key order.
    fn live_revisions(
        &self,
        range: &KeyRange,
        requested: i64,
        fetch: Option<usize>,
    ) -> Result<(i64, Vec<Revision>)> {
        let index = self.index()?;
        let rev = self.resolve_revision(requested, self.compacted(&index))?;
        let mut count: i64 = 0;
        let mut revs = Vec::new();
        index.for_each_live(range, rev, |_, r| {
            count += 1;
            if fetch.is_none_or(|l| revs.len() < l) {
                revs.push(r);
            }
            true
        });
        Ok((count, revs))
    }

    /// A range with etcd's full semantics (see `server/etcdserver/txn/range.go`):
    /// `count` is the number of keys in the range at the read revision; the
    /// limit is pushed down to the scan only for the default order (none, or by
    /// key ascending) without revision filters; otherwise everything is read,
    /// filtered, sorted, then truncated to the limit.
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        let range = KeyRange::new(key, range_end);
        if opts.count_only {
            let (count, _) = self.live_revisions(&range, opts.revision, Some(0))?;
            return Ok(RangeResult {
                kvs: Vec::new(),
                count,
                more: false,
                revision: self.current,
            });
        }

        let has_filters = opts.min_mod_revision != 0
            || opts.max_mod_revision != 0
            || opts.min_create_revision != 0
            || opts.max_create_revision != 0;
        let fetch_limit = if !is_default_ordering(opts.sort_target, opts.sort_order) || has_filters
        {
            None
        } else if opts.limit > 0 {
            Some(
                usize::try_from(opts.limit)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
            )
        } else {
            None
        };
        let (count, revs) = self.live_revisions(&range, opts.revision, fetch_limit)?;
        let mut kvs: Vec<KeyValue> = self.records_at(&revs)?.into_iter().map(|r| r.kv).collect();

        filter(&mut kvs, opts);
        sort(&mut kvs, opts.sort_target, opts.sort_order);
        let mut more = false;
        if let Ok(limit) = usize::try_from(opts.limit) {
            if limit > 0 && kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
        }
        if opts.keys_only {
            for kv in &mut kvs {
                kv.value = Vec::new();
            }
        }
        Ok(RangeResult {
            kvs,
            count,
            more,
            revision: self.current,
        })
    }

    /// Fills in the previous key-value of the put events that were applied
    /// without reading it (see [`super::RevTxn::put_without_prev`]), as
    /// etcd's watch server reads them for the watchers that ask. A put whose
    /// previous key-value was compacted away keeps `None`.
    pub fn load_prev_kvs(&self, events: &mut [Event]) -> Result<()> {
        let wanted: Vec<(usize, Revision)> = {
            let index = self.index()?;
            events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.kind == EventKind::Put && e.prev_kv.is_none())
                .filter_map(|(i, e)| {
                    let meta = PutMeta {
                        create_revision: e.kv.create_revision,
                        version: e.kv.version,
                        lease: e.kv.lease,
                    };
                    let prev = index.put_before(&e.kv.key, e.kv.mod_revision, meta)?;
                    Some((i, prev.rev))
                })
                .collect()
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let revs: Vec<Revision> = wanted.iter().map(|&(_, rev)| rev).collect();
        for ((i, _), record) in wanted.into_iter().zip(self.records_at(&revs)?) {
            events[i].prev_kv = Some(record.kv);
        }
        Ok(())
    }

    /// The events of revisions in `(from_rev, to_rev]`, in revision order, each
    /// with its previous key-value. Errors with `FutureRevision` if `to_rev` is
    /// past the current revision and with `Compacted` if `from_rev + 1` (the
    /// first revision asked for) is below the compacted revision, as etcd's
    /// watch does; events at exactly the compacted revision are only those that
    /// survived compaction (no tombstones), as in etcd.
    pub fn events(&self, from_rev: i64, to_rev: i64) -> Result<Vec<Event>> {
        if to_rev > self.current {
            return Err(MvccError::FutureRevision);
        }
        if from_rev.saturating_add(1) < self.compact {
            return Err(MvccError::Compacted);
        }
        if to_rev <= from_rev {
            return Ok(Vec::new());
        }
        let lo = Revision::new(from_rev.saturating_add(1), 0);
        let hi = Revision::last_of(to_rev);
        let mut changes = Vec::new();
        self.for_each_record(lo, hi, |rev, bytes| {
            changes.push((rev, decode_record(bytes)?));
            Ok(())
        })?;
        // The revision of each change's previous put, if the key existed,
        // under one look at the index: a compaction applied to it since the
        // view was opened makes the whole answer `Compacted`, never one with
        // previous key-values missing.
        let prev_revs: Vec<Option<Revision>> = {
            let index = self.index()?;
            if from_rev.saturating_add(1) < self.compacted(&index) {
                return Err(MvccError::Compacted);
            }
            changes
                .iter()
                .map(|(rev, record)| {
                    let before = if rev.sub > 0 {
                        Revision::new(rev.main, rev.sub - 1)
                    } else {
                        Revision::last_of(rev.main - 1)
                    };
                    index
                        .newest_upto(&record.kv.key, before)
                        .filter(|c| !c.tombstone)
                        .map(|c| c.rev)
                })
                .collect()
        };
        let wanted: Vec<Revision> = prev_revs.iter().flatten().copied().collect();
        let mut prevs = self.records_at(&wanted)?.into_iter();
        let mut events = Vec::with_capacity(changes.len());
        for ((rev, record), prev_rev) in changes.into_iter().zip(prev_revs) {
            let prev_kv = match prev_rev {
                Some(_) => prevs.next().map(|r| r.kv),
                None => None,
            };
            events.push(if record.tombstone {
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue::tombstone(record.kv.key, rev.main),
                    prev_kv,
                }
            } else {
                Event {
                    kind: EventKind::Put,
                    kv: record.kv,
                    prev_kv,
                }
            });
        }
        Ok(events)
    }

    /// CRC-32C over every stored revision in `(compact, rev]` (revision bytes and
    /// record bytes, in revision order). Those revisions are never touched by
    /// compaction, so members with the same history agree. `rev == 0` means the
    /// current revision; errors as etcd's `HashByRev`.
    pub fn hash_kv(&self, rev: i64) -> Result<HashKv> {
        // The floor is the index's if a compaction reached it since the view
        // opened: the view's snapshot may already lack what it removed.
        let compact = self.compacted(&*self.index()?);
        if rev > 0 && rev <= compact {
            return Err(MvccError::Compacted);
        }
        if rev > self.current {
            return Err(MvccError::FutureRevision);
        }
        let rev = if rev <= 0 { self.current } else { rev };
        if rev < compact {
            return Err(MvccError::Compacted); // the index's floor passed this view
        }
        let mut h = Crc32c::new();
        h.update(HASH_KV_LABEL);
        let lo = Revision::new(compact.saturating_add(1), 0);
        let hi = Revision::last_of(rev);
        self.for_each_record(lo, hi, |rev, bytes| {
            h.update(&rev.to_bytes());
            h.update(bytes);
            Ok(())
        })?;
        Ok(HashKv {
            hash: h.sum(),
            compact_revision: compact,
            hash_revision: rev,
        })
    }
}

fn missing_record(rev: Revision) -> MvccError {
    MvccError::corrupt(format!("missing record {rev:?}"))
}

/// etcd's `isDefaultOrdering`: results already come sorted by key ascending.
fn is_default_ordering(target: SortTarget, order: SortOrder) -> bool {
    order == SortOrder::None || (target == SortTarget::Key && order == SortOrder::Ascend)
}

/// etcd's `filterRangeResults`.
fn filter(kvs: &mut Vec<KeyValue>, opts: &RangeOptions) {
    if opts.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= opts.max_mod_revision);
    }
    if opts.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= opts.min_mod_revision);
    }
    if opts.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= opts.max_create_revision);
    }
    if opts.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= opts.min_create_revision);
    }
}

/// etcd's `sortRangeResults`: a non-key target with no order sorts ascending.
/// The sort is stable, so ties stay in key order.
fn sort(kvs: &mut [KeyValue], target: SortTarget, order: SortOrder) {
    let order = if target != SortTarget::Key && order == SortOrder::None {
        SortOrder::Ascend
    } else {
        order
    };
    if is_default_ordering(target, order) {
        return;
    }
    if target == SortTarget::Key && order == SortOrder::Descend {
        kvs.reverse();
        return;
    }
    let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    if order == SortOrder::Descend {
        kvs.sort_by(|a, b| cmp(b, a));
    } else {
        kvs.sort_by(cmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::codec::encode_record;
    use proptest::prelude::*;
    use redb::{Database, TableDefinition};

    type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
    const KV: Def = TableDefinition::new("kv");

    fn record(rev: Revision) -> KeyValue {
        KeyValue {
            key: format!("k{}", rev.main).into_bytes(),
            mod_revision: rev.main,
            version: rev.sub + 1,
            value: vec![rev.sub as u8; rev.main as usize % 7],
            ..KeyValue::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever the density and order of the revisions asked for, the
        /// range-scan reads return exactly what point lookups return, and a
        /// revision that is not stored is corruption.
        #[test]
        fn records_at_matches_point_lookups(
            stored in proptest::collection::btree_set((1i64..60, 0i64..3), 0..80),
            picks in proptest::collection::vec(any::<proptest::sample::Index>(), 0..40),
            missing in 1i64..70,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::create(dir.path().join("db")).unwrap();
            let stored: Vec<Revision> = stored.into_iter().map(|(m, s)| Revision::new(m, s)).collect();
            let txn = db.begin_write().unwrap();
            {
                let mut kv = txn.open_table(KV).unwrap();
                for &rev in &stored {
                    let bytes = encode_record(rev.sub == 2, &record(rev));
                    kv.insert(rev.to_bytes().as_slice(), bytes.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
            let read = db.begin_read().unwrap();
            let kv = read.open_table(KV).unwrap();
            let index = RwLock::new(KeyIndex::new(-1));
            let view = View { kv: &kv, buffer: None, own: None, index: &index, epoch: None, current: 70, compact: -1 };

            let asked: Vec<Revision> = if stored.is_empty() {
                Vec::new()
            } else {
                picks.iter().map(|i| stored[i.index(stored.len())]).collect()
            };
            let want: Vec<Record> = asked.iter().map(|&r| view.record_at(r).unwrap()).collect();
            prop_assert_eq!(view.records_at(&asked)?, want);

            let mut with_missing = asked.clone();
            // Sub-revision 3 is never stored: this one lies between, or past, the others.
            with_missing.insert(asked.len() / 2, Revision::new(missing, 3));
            prop_assert!(matches!(view.records_at(&with_missing), Err(MvccError::Corrupt(_))));
        }
    }
}
