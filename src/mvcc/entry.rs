//! Entries of the `kv` table: one record, or a *group* of the records one
//! batch wrote.
//!
//! Why groups: a batch used to insert each of its records into redb on its
//! own, and each insert walked redb's B-tree, looked its pages up in redb's
//! page cache and dirtied them: under a put load that was two fifths of a
//! follower's Raft thread. A batch now inserts its records in groups of up
//! to [`MAX_GROUP_BYTES`], so a batch of hundreds of small puts costs a
//! handful of inserts. The cap bounds what reading one record costs: redb
//! reads an entry whole.
//!
//! Layout: an entry's key is the revision of its first record. Its value is a
//! record as [`super::codec`] encodes it (tag `p` or `t`), or a group: the tag
//! `g`, the record count (u32), for each record its revision (16 bytes, as
//! [`Revision::to_bytes`]) and where it ends in the data (u32), then the
//! records back to back. All integers are big-endian. Stores written before
//! groups hold single records only, and read as before.
//!
//! Invariants: entries never overlap: every record of an entry lies at or past
//! the entry's key and before the next entry's key, so the entry that may hold
//! a revision is the last one whose key is at or below it. A group holds at
//! least one record, in ascending revision order. Compaction keeps this
//! ([`remove_revisions`]): a group that loses records is written again under
//! the revision of its first remaining record, or removed if none remains.
//!
//! Decoding never panics: malformed bytes give [`MvccError::Corrupt`].

use redb::{AccessGuard, ReadableTable, Table};

use super::buffer::Records;
use super::error::{MvccError, Result};
use super::revision::{Revision, REVISION_LEN};

const TAG_GROUP: u8 = b'g';
/// Tag and count.
const GROUP_HEADER: usize = 1 + 4;
/// A record's revision and end, in a group's directory.
const SLOT: usize = REVISION_LEN + 4;

type Bytes = &'static [u8];

/// The most bytes a group's records and directory take (a record larger
/// than this is an entry of its own). Reading one record reads its whole
/// entry into redb's cache, so a group stays a few pages long; a batch of
/// small records still costs one insert per dozens of them (some fifty of
/// 256-byte puts) instead of one each.
pub(crate) const MAX_GROUP_BYTES: usize = 16 * 1024;

/// Inserts the records a batch wrote into `kv` (see [`insert_grouped`]).
pub(crate) fn insert_records(kv: &mut Table<'_, Bytes, Bytes>, records: &Records) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let parts: Vec<_> = records.iter().collect();
    insert_grouped(kv, &parts)
}

/// Inserts the records of `entries` (a snapshot's, in key order: single
/// records, or groups) into an empty `kv`, grouped.
pub(crate) fn insert_entries(
    kv: &mut Table<'_, Bytes, Bytes>,
    entries: &[(&[u8], &[u8])],
) -> Result<()> {
    let mut parts = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let entry = Entry::parse(key, value)?;
        for i in 0..entry.len() {
            parts.push(entry.get(i)?);
        }
    }
    if !parts.windows(2).all(|w| w[0].0 < w[1].0) {
        return Err(MvccError::corrupt("snapshot records out of revision order"));
    }
    insert_grouped(kv, &parts)
}

/// Inserts the records `(revision, encoded record)` of `parts`, in ascending
/// revision order, into `kv` as entries of at most [`MAX_GROUP_BYTES`] each
/// (or of one record).
pub(crate) fn insert_grouped(
    kv: &mut Table<'_, Bytes, Bytes>,
    parts: &[(Revision, &[u8])],
) -> Result<()> {
    write_grouped(parts, |key, value| {
        kv.insert(key, value)?;
        Ok(())
    })
}

/// Splits `parts` (ascending) into entries as [`insert_grouped`] says and
/// calls `write` with each one's key and value.
fn write_grouped(
    parts: &[(Revision, &[u8])],
    mut write: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    debug_assert!(parts.windows(2).all(|w| w[0].0 < w[1].0));
    let mut start = 0;
    while start < parts.len() {
        let mut end = start + 1;
        let mut bytes = SLOT + parts[start].1.len();
        while end < parts.len() && bytes + SLOT + parts[end].1.len() <= MAX_GROUP_BYTES {
            bytes += SLOT + parts[end].1.len();
            end += 1;
        }
        if let Some((key, value)) = encode(parts[start..end].iter().copied()) {
            write(&key, &value)?;
        }
        start = end;
    }
    Ok(())
}

/// Encodes the records `(revision, encoded record)` of `parts`, in ascending
/// revision order, as one entry: the record itself if there is one, a group
/// otherwise. Returns the entry's key and value.
fn encode<'a>(
    parts: impl ExactSizeIterator<Item = (Revision, &'a [u8])> + Clone,
) -> Option<([u8; REVISION_LEN], Vec<u8>)> {
    let count = parts.len();
    let mut iter = parts.clone();
    let (first, first_bytes) = iter.next()?;
    if count == 1 {
        return Some((first.to_bytes(), first_bytes.to_vec()));
    }
    let data: usize = parts.clone().map(|(_, bytes)| bytes.len()).sum();
    let mut out = Vec::with_capacity(GROUP_HEADER + count * SLOT + data);
    out.push(TAG_GROUP);
    // Groups hold at most `MAX_GROUP_BYTES`, far below 4 GiB.
    out.extend_from_slice(&(count as u32).to_be_bytes());
    let mut end = 0usize;
    for (rev, bytes) in parts.clone() {
        end += bytes.len();
        out.extend_from_slice(&rev.to_bytes());
        out.extend_from_slice(&(end as u32).to_be_bytes());
    }
    for (_, bytes) in parts {
        out.extend_from_slice(bytes);
    }
    Some((first.to_bytes(), out))
}

/// One entry of the `kv` table, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Entry<'a> {
    /// A single record and its revision (the entry's key).
    One(Revision, &'a [u8]),
    /// A group of records.
    Group { dir: &'a [u8], data: &'a [u8] },
}

impl<'a> Entry<'a> {
    /// Reads the entry stored under `key`.
    pub fn parse(key: &[u8], value: &'a [u8]) -> Result<Entry<'a>> {
        if value.first() != Some(&TAG_GROUP) {
            return Ok(Entry::One(Revision::from_bytes(key)?, value));
        }
        let count = value
            .get(1..GROUP_HEADER)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| MvccError::corrupt("group without a record count"))?;
        let dir_end = count
            .checked_mul(SLOT)
            .and_then(|n| n.checked_add(GROUP_HEADER))
            .filter(|&end| end <= value.len() && count > 0)
            .ok_or_else(|| MvccError::corrupt("group directory out of bounds"))?;
        let (dir, data) = (&value[GROUP_HEADER..dir_end], &value[dir_end..]);
        // Cheap checks that catch a group under the wrong key (which would
        // break the rule that finds entries) or cut short.
        if dir[..REVISION_LEN] != *key || Self::end(dir, count - 1) != data.len() {
            return Err(MvccError::corrupt("group does not match its key or length"));
        }
        Ok(Entry::Group { dir, data })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        match self {
            Entry::One(..) => 1,
            Entry::Group { dir, .. } => dir.len() / SLOT,
        }
    }

    fn revision(&self, i: usize) -> Result<Revision> {
        match self {
            Entry::One(rev, _) => Ok(*rev),
            Entry::Group { dir, .. } => {
                Revision::from_bytes(&dir[i * SLOT..i * SLOT + REVISION_LEN])
            }
        }
    }

    fn end(dir: &[u8], i: usize) -> usize {
        let at = i * SLOT + REVISION_LEN;
        u32::from_be_bytes([dir[at], dir[at + 1], dir[at + 2], dir[at + 3]]) as usize
    }

    /// The `i`-th record (`i < len()`) and its revision.
    pub fn get(&self, i: usize) -> Result<(Revision, &'a [u8])> {
        match *self {
            Entry::One(rev, bytes) => Ok((rev, bytes)),
            Entry::Group { dir, data } => {
                let start = if i == 0 { 0 } else { Self::end(dir, i - 1) };
                let end = Self::end(dir, i);
                let bytes = data
                    .get(start..end)
                    .ok_or_else(|| MvccError::corrupt("group record out of bounds"))?;
                Ok((self.revision(i)?, bytes))
            }
        }
    }

    /// Index of the first record at or past `rev` (`len()` if none).
    pub fn position(&self, rev: Revision) -> Result<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.revision(mid)? < rev {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The record at `rev`, if the entry holds it.
    pub fn find(&self, rev: Revision) -> Result<Option<&'a [u8]>> {
        let i = self.position(rev)?;
        if i < self.len() {
            let (at, bytes) = self.get(i)?;
            if at == rev {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    /// Calls `f` with each record in `lo..=hi`, in revision order; stops
    /// early (returning `Ok(false)`) at the first record past `hi`.
    pub fn for_each_in(
        &self,
        lo: Revision,
        hi: Revision,
        f: &mut impl FnMut(Revision, &'a [u8]) -> Result<()>,
    ) -> Result<bool> {
        for i in self.position(lo)?..self.len() {
            let (rev, bytes) = self.get(i)?;
            if rev > hi {
                return Ok(false);
            }
            f(rev, bytes)?;
        }
        Ok(true)
    }
}

/// A `kv` entry as read: its key and value.
pub(crate) type Stored<'t> = (AccessGuard<'t, Bytes>, AccessGuard<'t, Bytes>);

/// The entry that may hold `rev`: the last one at or below it.
pub(crate) fn at_or_below<T: ReadableTable<Bytes, Bytes>>(
    kv: &T,
    rev: Revision,
) -> Result<Option<Stored<'_>>> {
    let bytes = rev.to_bytes();
    match kv.range::<&[u8]>(..=bytes.as_slice())?.next_back() {
        Some(entry) => Ok(Some(entry?)),
        None => Ok(None),
    }
}

/// Calls `f` with the record at `rev` in `kv`, if it holds one.
pub(crate) fn with_record<T: ReadableTable<Bytes, Bytes>, R>(
    kv: &T,
    rev: Revision,
    f: impl FnOnce(&[u8]) -> Result<R>,
) -> Result<Option<R>> {
    let Some((k, v)) = at_or_below(kv, rev)? else {
        return Ok(None);
    };
    match Entry::parse(k.value(), v.value())?.find(rev)? {
        Some(record) => f(record).map(Some),
        None => Ok(None),
    }
}

/// Calls `f` with every record of `kv` in `lo..=hi`, in revision order.
pub(crate) fn for_each_record<T: ReadableTable<Bytes, Bytes>>(
    kv: &T,
    lo: Revision,
    hi: Revision,
    mut f: impl FnMut(Revision, &[u8]) -> Result<()>,
) -> Result<()> {
    if lo > hi {
        return Ok(());
    }
    // A group that begins before `lo` may hold records from `lo` on.
    let start = match at_or_below(kv, lo)? {
        Some((k, _)) => Revision::from_bytes(k.value())?.to_bytes(),
        None => lo.to_bytes(),
    };
    let end = hi.to_bytes();
    for entry in kv.range::<&[u8]>(start.as_slice()..=end.as_slice())? {
        let (k, v) = entry?;
        if !Entry::parse(k.value(), v.value())?.for_each_in(lo, hi, &mut f)? {
            break;
        }
    }
    Ok(())
}

/// Calls `f` with every record of `kv`, in revision order.
pub(crate) fn for_each_stored<T: ReadableTable<Bytes, Bytes>>(
    kv: &T,
    f: impl FnMut(Revision, &[u8]) -> Result<()>,
) -> Result<()> {
    for_each_record(
        kv,
        Revision::new(0, 0),
        Revision::new(i64::MAX, i64::MAX),
        f,
    )
}

/// Number of records in `kv`.
#[cfg(test)]
pub(crate) fn count<T: ReadableTable<Bytes, Bytes>>(kv: &T) -> Result<u64> {
    let mut n = 0;
    for entry in kv.iter()? {
        let (k, v) = entry?;
        n += Entry::parse(k.value(), v.value())?.len() as u64;
    }
    Ok(n)
}

/// Removes the records at `revs` (ascending; revisions `kv` does not hold
/// are skipped). A group that keeps some of its records is written again
/// under the revision of the first one kept.
pub(crate) fn remove_revisions(kv: &mut Table<'_, Bytes, Bytes>, revs: &[Revision]) -> Result<()> {
    debug_assert!(revs.windows(2).all(|w| w[0] <= w[1]));
    let mut pos = 0;
    while pos < revs.len() {
        let Some((k, v)) = at_or_below(kv, revs[pos])? else {
            pos += 1;
            continue;
        };
        let (key, value) = (k.value().to_vec(), v.value().to_vec());
        drop((k, v));
        let entry = Entry::parse(&key, &value)?;
        // The revisions to remove that this entry may hold: those before the
        // next entry's key, which is past its last record.
        let (last, _) = entry.get(entry.len() - 1)?;
        let mine = revs[pos..].partition_point(|r| *r <= last);
        let doomed = &revs[pos..pos + mine];
        pos += mine.max(1);
        let mut kept = Vec::with_capacity(entry.len());
        for i in 0..entry.len() {
            let (rev, bytes) = entry.get(i)?;
            if doomed.binary_search(&rev).is_err() {
                kept.push((rev, bytes));
            }
        }
        if kept.len() == entry.len() {
            continue;
        }
        kv.remove(key.as_slice())?;
        insert_grouped(kv, &kept)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use redb::{Database, TableDefinition};

    use super::*;

    const KV: TableDefinition<Bytes, Bytes> = TableDefinition::new("kv");

    fn r(main: i64, sub: i64) -> Revision {
        Revision::new(main, sub)
    }

    /// Records as batches would write them: runs of ascending revisions,
    /// each run inserted as one batch inserts its records; each with the
    /// size of its record (small, a few KiB, or past the group limit).
    fn runs() -> impl Strategy<Value = Vec<Vec<(Revision, usize)>>> {
        let size = prop_oneof![
            6 => 0..64usize,
            2 => 3000..6000usize,
            1 => MAX_GROUP_BYTES..MAX_GROUP_BYTES + 100,
        ];
        prop::collection::vec((1..4usize, 0..3i64, size), 1..60).prop_map(|steps| {
            let (mut runs, mut run, mut main, mut sub) = (Vec::new(), Vec::new(), 2, 0);
            for (cut, step, size) in steps {
                if cut == 1 && !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                }
                if step == 0 {
                    sub += 1;
                } else {
                    (main, sub) = (main + step, 0);
                }
                run.push((r(main, sub), size));
            }
            runs.push(run);
            runs
        })
    }

    /// A record of `size` bytes or more that says which revision it is.
    fn value_of(rev: Revision, size: usize) -> Vec<u8> {
        let mut v = format!("p{}.{}.", rev.main, rev.sub).into_bytes();
        v.resize(v.len().max(size), b'.');
        v
    }

    fn write(db: &Database, runs: &[Vec<(Revision, usize)>]) {
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.open_table(KV).unwrap();
            for run in runs {
                let values: Vec<_> = run
                    .iter()
                    .map(|&(rev, n)| (rev, value_of(rev, n)))
                    .collect();
                let parts: Vec<_> = values.iter().map(|(rev, v)| (*rev, v.as_slice())).collect();
                insert_grouped(&mut kv, &parts).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// The layout's invariants: each entry's key is its first record's
    /// revision, its records ascend and end before the next entry's key, and
    /// a group holds at least two records and at most `MAX_GROUP_BYTES`.
    fn check_layout(
        kv: &impl ReadableTable<Bytes, Bytes>,
    ) -> std::result::Result<(), TestCaseError> {
        let mut previous: Option<Revision> = None;
        for item in kv.iter().unwrap() {
            let (k, v) = item.unwrap();
            let entry = Entry::parse(k.value(), v.value()).unwrap();
            let key = Revision::from_bytes(k.value()).unwrap();
            prop_assert_eq!(entry.get(0).unwrap().0, key);
            if let Entry::Group { .. } = entry {
                prop_assert!(entry.len() >= 2);
                prop_assert!(v.value().len() <= GROUP_HEADER + MAX_GROUP_BYTES);
            }
            for i in 0..entry.len() {
                let (rev, _) = entry.get(i).unwrap();
                prop_assert!(
                    previous.is_none_or(|p| p < rev),
                    "{:?} after {:?}",
                    rev,
                    previous
                );
                previous = Some(rev);
            }
        }
        Ok(())
    }

    fn check(
        kv: &impl ReadableTable<Bytes, Bytes>,
        model: &BTreeMap<Revision, Vec<u8>>,
        probes: &[(i64, i64, i64)],
    ) -> std::result::Result<(), TestCaseError> {
        check_layout(kv)?;
        prop_assert_eq!(count(kv).unwrap(), model.len() as u64);
        let mut all = Vec::new();
        for_each_stored(kv, |rev, bytes| {
            all.push((rev, bytes.to_vec()));
            Ok(())
        })
        .unwrap();
        let want: Vec<_> = model.iter().map(|(r, v)| (*r, v.clone())).collect();
        prop_assert_eq!(all, want);
        for &(main, sub, to) in probes {
            let rev = r(main, sub);
            let got = with_record(kv, rev, |b| Ok(b.to_vec())).unwrap();
            prop_assert_eq!(got, model.get(&rev).cloned());
            let hi = Revision::last_of(to);
            let mut seen = Vec::new();
            for_each_record(kv, rev, hi, |at, bytes| {
                seen.push((at, bytes.to_vec()));
                Ok(())
            })
            .unwrap();
            let want: Vec<_> = if rev <= hi {
                model
                    .range(rev..=hi)
                    .map(|(at, b)| (*at, b.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            prop_assert_eq!(seen, want);
        }
        Ok(())
    }

    /// Removes the records `removals` picks, twice each (as two compactions
    /// of one batch pass them), with revisions no entry holds: before, after
    /// and inside the entries' spans.
    fn remove(db: &Database, model: &mut BTreeMap<Revision, Vec<u8>>, removals: &[bool]) {
        let mut doomed: Vec<Revision> = model
            .keys()
            .zip(removals)
            .filter(|(_, &gone)| gone)
            .flat_map(|(rev, _)| [*rev, *rev, r(rev.main, rev.sub + 7)])
            .collect();
        doomed.extend([r(1, 0), r(500, 0)]);
        doomed.sort();
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.open_table(KV).unwrap();
            remove_revisions(&mut kv, &doomed).unwrap();
        }
        txn.commit().unwrap();
        for rev in &doomed {
            model.remove(rev);
        }
    }

    proptest! {
        #[test]
        fn entries_read_and_compact_like_a_map_of_their_records(
            runs in runs(),
            probes in prop::collection::vec((0..130i64, 0..9i64, 0..130i64), 1..20),
            first in prop::collection::vec(any::<bool>(), 0..200),
            second in prop::collection::vec(any::<bool>(), 0..200),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::create(dir.path().join("db")).unwrap();
            write(&db, &runs);
            let mut model: BTreeMap<Revision, Vec<u8>> = runs
                .iter()
                .flatten()
                .map(|&(rev, n)| (rev, value_of(rev, n)))
                .collect();
            for removals in [&first, &second] {
                {
                    let txn = db.begin_read().unwrap();
                    check(&txn.open_table(KV).unwrap(), &model, &probes)?;
                }
                remove(&db, &mut model, removals);
            }
            let txn = db.begin_read().unwrap();
            check(&txn.open_table(KV).unwrap(), &model, &probes)?;
        }
    }

    #[test]
    fn groups_stay_under_the_size_limit_and_large_records_stand_alone() {
        let small = vec![b'p'; 1000];
        let large = vec![b'p'; MAX_GROUP_BYTES + 1];
        let mut parts: Vec<(Revision, &[u8])> =
            (0..40).map(|i| (r(2 + i, 0), small.as_slice())).collect();
        parts.insert(20, (r(100, 0), large.as_slice()));
        parts.sort_by_key(|(rev, _)| *rev);
        let mut entries = Vec::new();
        write_grouped(&parts, |k, v| {
            entries.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        // 16 records of 1000 bytes fit a group; the 40 small ones take three
        // groups (16, 16, 8), the large one an entry of its own, last.
        let sizes: Vec<usize> = entries
            .iter()
            .map(|(k, v)| Entry::parse(k, v).unwrap().len())
            .collect();
        assert_eq!(sizes, vec![16, 16, 8, 1]);
        assert_eq!(entries[3].1, large);
        let mut seen = Vec::new();
        for (k, v) in &entries {
            let entry = Entry::parse(k, v).unwrap();
            for i in 0..entry.len() {
                seen.push(entry.get(i).unwrap().0);
            }
        }
        let want: Vec<Revision> = parts.iter().map(|(rev, _)| *rev).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_single_record_is_stored_as_itself() {
        let rec = value_of(r(5, 0), 0);
        let (k, v) = encode([(r(5, 0), rec.as_slice())].into_iter()).unwrap();
        assert_eq!((k, v), (r(5, 0).to_bytes(), rec));
        assert!(encode(std::iter::empty::<(Revision, &[u8])>()).is_none());
    }

    #[test]
    fn malformed_groups_are_corrupt_not_a_panic() {
        let key = r(2, 0).to_bytes();
        for value in [
            b"g".to_vec(),
            b"g\0\0\0\x01".to_vec(),
            b"g\0\0\0\0".to_vec(),
            b"g\xff\xff\xff\xff".to_vec(),
        ] {
            assert!(Entry::parse(&key, &value).is_err(), "{value:?}");
        }
        // A group of two records: (revision, end) pairs, then the data.
        let group = |slots: [(Revision, u32); 2], data: &[u8]| {
            let mut value = b"g\0\0\0\x02".to_vec();
            for (rev, end) in slots {
                value.extend_from_slice(&rev.to_bytes());
                value.extend_from_slice(&end.to_be_bytes());
            }
            value.extend_from_slice(data);
            value
        };
        let good = group([(r(2, 0), 1), (r(3, 0), 2)], b"pp");
        assert_eq!(
            Entry::parse(&key, &good).unwrap().get(1).unwrap(),
            (r(3, 0), &b"p"[..])
        );
        // Under another key than its first revision; ending past its data.
        assert!(Entry::parse(&r(1, 0).to_bytes(), &good).is_err());
        assert!(Entry::parse(&key, &group([(r(2, 0), 1), (r(3, 0), 100)], b"pp")).is_err());
        // Ends out of order: the record between them is refused when read.
        let entry_bytes = group([(r(2, 0), 3), (r(3, 0), 2)], b"ppp");
        let entry = Entry::parse(&key, &entry_bytes[..entry_bytes.len() - 1]).unwrap();
        assert!(entry.get(1).is_err());
        assert!(entry.find(r(3, 0)).is_err());
    }
}
