//! The durable Raft log: entries, hard state and conf state, kept in memory
//! for `raft::Storage` reads and made durable in a write-ahead log
//! ([`super::wal`]) before anything depends on them.
//!
//! Invariants:
//! - The in-memory log holds exactly the entries `compacted.index + 1 ..= last`,
//!   contiguous, and is what replaying the log's newest segment gives, after
//!   every call that returns.
//! - [`RaftStorage::persist`] appends new entries and the hard state as one
//!   record, fsync'ed before it returns whenever it holds entries or a new
//!   term or vote, so nothing is acknowledged that is not on disk. A change of
//!   the commit index alone is only recorded in memory and rides along with the
//!   next synced write: after a crash the commit index is learned again from the
//!   leader, or from the state machine's applied index (`node::reconcile_log`).
//! - Compaction, a snapshot and a bootstrap start a new segment holding the
//!   whole remaining state (see [`super::wal`]), so the log on disk never
//!   grows beyond what memory holds plus the appends since.
//! - Snapshots are not stored: the state machine *is* the snapshot. When raft-rs
//!   needs one for a lagging follower, [`SnapshotSource`] builds it from the
//!   applied state, whose index is always at or beyond the compaction point.

use std::collections::VecDeque;
use std::path::Path;

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::wal::{Checkpoint, Record, Wal, WalOptions};
use super::RaftError;

/// The index (at term 1) a new cluster's log starts from; see [`RaftStorage::bootstrap`].
pub const BOOTSTRAP_INDEX: u64 = 1;

/// Builds a Raft snapshot of the applied state on demand (implemented by the
/// state machine). Called on the Raft thread.
pub trait SnapshotSource: Send {
    /// A snapshot whose metadata index is the state machine's applied index.
    fn snapshot(&self) -> Result<Snapshot, RaftError>;
}

/// The Raft log of one member, durable in its write-ahead log and cached in memory.
pub struct RaftStorage {
    wal: Wal,
    identity: Option<Vec<u8>>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry removed from the log (0, 0 when none).
    compacted: (u64, u64),
    /// Entries `compacted.0 + 1 ..`.
    entries: VecDeque<Entry>,
    snapshots: Option<Box<dyn SnapshotSource>>,
    /// The in-memory hard state is ahead of the file (a newer commit index).
    hard_state_unsaved: bool,
}

impl RaftStorage {
    /// Opens (or creates) the log in directory `dir` and loads it into memory.
    pub fn open(dir: &Path) -> Result<Self, RaftError> {
        Self::open_with(dir, WalOptions::default())
    }

    /// [`RaftStorage::open`] with fsyncs timed or skipped as `options` say.
    pub fn open_with(dir: &Path, options: WalOptions) -> Result<Self, RaftError> {
        let (wal, records) = Wal::open(dir, options)?;
        let mut s = Self {
            wal,
            identity: None,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            compacted: (0, 0),
            entries: VecDeque::new(),
            snapshots: None,
            hard_state_unsaved: false,
        };
        for record in records {
            s.replay(record)?;
        }
        if s.hard_state.commit > s.last() {
            return Err(s.corrupt(format!(
                "its commit index {} is beyond its last entry {}",
                s.hard_state.commit,
                s.last()
            )));
        }
        if s.wal.is_outdated() {
            // Written by an earlier version: carried over whole into a
            // segment of the current format before anything is appended.
            s.rewrite()?;
        }
        Ok(s)
    }

    fn corrupt(&self, detail: String) -> RaftError {
        crate::disk::DataFileError::corrupt(&self.wal.path(), detail).into()
    }

    fn replay(&mut self, record: Record) -> Result<(), RaftError> {
        match record {
            Record::Checkpoint {
                checkpoint: cp,
                entries,
            } => {
                self.identity = cp.identity;
                self.hard_state = cp.hard_state;
                self.conf_state = cp.conf_state;
                self.compacted = cp.compacted;
                self.entries.clear();
                self.append_replayed(entries)?;
            }
            Record::Append {
                hard_state,
                entries,
            } => {
                self.append_replayed(entries)?;
                if let Some(hs) = hard_state {
                    self.hard_state = hs;
                }
            }
            Record::ConfState(cs) => self.conf_state = cs,
        }
        Ok(())
    }

    /// Replays appended entries: they replace the log from their first index on.
    fn append_replayed(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.compacted.0 || first.index > self.last() + 1 {
            return Err(self.corrupt(format!(
                "entries from index {} do not follow the log ({}..={})",
                first.index,
                self.first(),
                self.last()
            )));
        }
        if entries.windows(2).any(|w| w[1].index != w[0].index + 1) {
            return Err(self.corrupt("entries out of order".into()));
        }
        self.entries
            .truncate((first.index - self.compacted.0 - 1) as usize);
        self.entries.extend(entries);
        Ok(())
    }

    /// Sets the state machine that builds snapshots for lagging followers.
    pub fn set_snapshot_source(&mut self, source: Box<dyn SnapshotSource>) {
        self.snapshots = Some(source);
    }

    /// The stored identity record (encoded `lcraftpb::Identity`), if any.
    pub fn identity(&self) -> Result<Option<Vec<u8>>, RaftError> {
        Ok(self.identity.clone())
    }

    /// The state to start a new segment with.
    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            identity: self.identity.clone(),
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
            compacted: self.compacted,
        }
    }

    /// Writes the whole log as a new segment (after a change that is not an append).
    fn rewrite(&mut self) -> Result<(), RaftError> {
        let cp = self.checkpoint();
        self.wal.rotate(&cp, self.entries.iter())?;
        self.hard_state_unsaved = false;
        Ok(())
    }

    /// Records the identity and the initial configuration of a brand-new member,
    /// durably and atomically.
    ///
    /// The log starts as if index [`BOOTSTRAP_INDEX`] (term 1) had been compacted:
    /// the initial configuration is state, not log entries, so a member that joins
    /// later must start from a snapshot, and it will, because the log never holds
    /// the entries before it.
    pub fn bootstrap(&mut self, identity: &[u8], conf_state: ConfState) -> Result<(), RaftError> {
        self.identity = Some(identity.to_vec());
        self.conf_state = conf_state;
        self.hard_state = HardState {
            term: 1,
            commit: BOOTSTRAP_INDEX,
            ..Default::default()
        };
        self.compacted = (BOOTSTRAP_INDEX, 1);
        self.entries.clear();
        self.rewrite()
    }

    /// Records the identity of a member that joins a running cluster: no
    /// configuration and no log; the leader's first snapshot provides both.
    pub fn bootstrap_joining(&mut self, identity: &[u8]) -> Result<(), RaftError> {
        self.identity = Some(identity.to_vec());
        self.rewrite()
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The current configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Appends `entries` (truncating any conflicting suffix) and saves `hard_state`,
    /// in one fsync'ed record.
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), RaftError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        // Entries, term and vote must be on disk before anything depends on them;
        // a commit index alone need not be (it is learned again after a crash),
        // so it rides along with the next synced write.
        let must_sync = !entries.is_empty()
            || hard_state.is_some_and(|hs| {
                hs.term != self.hard_state.term || hs.vote != self.hard_state.vote
            });
        if !must_sync {
            if let Some(hs) = hard_state {
                self.hard_state = hs.clone();
                self.hard_state_unsaved = true;
            }
            return Ok(());
        }
        if let Some(first) = entries.first() {
            if first.index <= self.compacted.0 || first.index > self.last() + 1 {
                return Err(RaftError::Corrupt(format!(
                    "append at index {} outside the log {}..={}",
                    first.index,
                    self.first(),
                    self.last()
                )));
            }
        }
        // A commit index recorded only in memory goes out with this write.
        let hard_state = match hard_state {
            Some(hs) => Some(hs.clone()),
            None if self.hard_state_unsaved => Some(self.hard_state.clone()),
            None => None,
        };
        self.wal.append(hard_state.as_ref(), entries)?;

        if let Some(first) = entries.first() {
            let keep = (first.index - self.compacted.0 - 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend(entries.iter().cloned());
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs;
            self.hard_state_unsaved = false;
        }
        Ok(())
    }

    /// Writes a commit index that is only in memory (on a clean stop).
    pub fn save_hard_state(&mut self) -> Result<(), RaftError> {
        if !self.hard_state_unsaved {
            return Ok(());
        }
        self.wal.append(Some(&self.hard_state), &[])?;
        self.hard_state_unsaved = false;
        Ok(())
    }

    /// Records a new commit index (from a `LightReady`); in memory only until
    /// the next synced write (see the module doc).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), RaftError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.persist(&[], Some(&hs))
    }

    /// Saves a new configuration (after applying a conf change).
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), RaftError> {
        self.wal.append_conf_state(&cs)?;
        self.conf_state = cs;
        Ok(())
    }

    /// Replaces the log by a snapshot received from the leader (the state machine
    /// has already been restored from its data).
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), RaftError> {
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.compacted = (meta.index, meta.term);
        self.rewrite()
    }

    /// Drops every entry up to and including `index` (which must be applied),
    /// rewriting the log without them.
    pub fn compact(&mut self, index: u64) -> Result<(), RaftError> {
        if index <= self.compacted.0 || index > self.last() {
            return Ok(());
        }
        let term = self.term_of(index).ok_or_else(|| {
            RaftError::Corrupt(format!("no term for index {index} in the raft log"))
        })?;
        let drop_n = (index - self.compacted.0) as usize;
        self.entries.drain(..drop_n);
        self.compacted = (index, term);
        self.rewrite()
    }

    /// The first index still in the log.
    pub fn first(&self) -> u64 {
        self.compacted.0 + 1
    }

    /// The last index in the log (or the compaction point when empty).
    pub fn last(&self) -> u64 {
        self.compacted.0 + self.entries.len() as u64
    }

    fn term_of(&self, idx: u64) -> Option<u64> {
        if idx == self.compacted.0 {
            return Some(self.compacted.1);
        }
        if idx < self.compacted.0 || idx > self.last() {
            return None;
        }
        self.entries
            .get((idx - self.compacted.0 - 1) as usize)
            .map(|e| e.term)
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.compacted.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let start = (low - self.compacted.0 - 1) as usize;
        let end = (high - self.compacted.0 - 1) as usize;
        let mut out: Vec<Entry> = self.entries.range(start..end).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.compacted.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let source = self.snapshots.as_ref().ok_or(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))?;
        let snap = source
            .snapshot()
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        if snap.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    #[test]
    fn persisted_entries_and_hard_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raftlog");
        {
            let mut s = RaftStorage::open(&path).unwrap();
            let hs = HardState {
                term: 2,
                vote: 7,
                commit: 2,
                ..Default::default()
            };
            s.persist(&[entry(1, 1), entry(2, 2), entry(3, 2)], Some(&hs))
                .unwrap();
        }
        let s = RaftStorage::open(&path).unwrap();
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(s.hard_state().vote, 7);
        assert_eq!(s.hard_state().commit, 2);
    }

    #[test]
    fn conflicting_suffix_is_truncated_on_disk_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raftlog");
        {
            let mut s = RaftStorage::open(&path).unwrap();
            s.persist(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
                .unwrap();
            s.persist(&[entry(2, 2)], None).unwrap();
            assert_eq!(s.last_index().unwrap(), 2);
        }
        let s = RaftStorage::open(&path).unwrap();
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
    }

    #[test]
    fn compaction_drops_prefix_and_keeps_term_of_compaction_point() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raftlog");
        {
            let mut s = RaftStorage::open(&path).unwrap();
            s.persist(
                &(1..=10).map(|i| entry(i, 1 + i / 5)).collect::<Vec<_>>(),
                None,
            )
            .unwrap();
            s.compact(6).unwrap();
            assert_eq!(s.first_index().unwrap(), 7);
            assert_eq!(s.term(6).unwrap(), 2);
            assert!(matches!(
                s.term(5),
                Err(raft::Error::Store(StorageError::Compacted))
            ));
            let ctx = GetEntriesContext::empty(false);
            assert!(s.entries(6, 8, None, ctx).is_err());
        }
        let s = RaftStorage::open(&path).unwrap();
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.last_index().unwrap(), 10);
        let ctx = GetEntriesContext::empty(false);
        let got = s.entries(7, 11, None, ctx).unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
    }

    #[test]
    fn a_commit_index_alone_waits_in_memory_for_the_next_synced_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raftlog");
        let hs = |commit| HardState {
            term: 2,
            vote: 1,
            commit,
            ..Default::default()
        };
        {
            let mut s = RaftStorage::open(&path).unwrap();
            s.persist(&[entry(1, 2), entry(2, 2), entry(3, 2)], Some(&hs(1)))
                .unwrap();
            s.set_commit(2).unwrap();
            assert_eq!(s.hard_state().commit, 2);
        }
        // Not written: a restart learns it again.
        let mut s = RaftStorage::open(&path).unwrap();
        assert_eq!(s.hard_state().commit, 1);
        s.set_commit(3).unwrap();
        // The next append carries it along.
        s.persist(&[entry(4, 2)], None).unwrap();
        drop(s);
        let s = RaftStorage::open(&path).unwrap();
        assert_eq!(s.hard_state(), &hs(3));
        assert_eq!(s.last_index().unwrap(), 4);
    }

    #[test]
    fn applying_a_snapshot_resets_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raftlog");
        let mut s = RaftStorage::open(&path).unwrap();
        s.persist(&[entry(1, 1), entry(2, 1)], None).unwrap();
        let mut meta = SnapshotMetadata {
            index: 50,
            term: 3,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1, 2, 3];
        s.apply_snapshot(&meta).unwrap();
        assert_eq!(s.first_index().unwrap(), 51);
        assert_eq!(s.last_index().unwrap(), 50);
        assert_eq!(s.term(50).unwrap(), 3);
        assert_eq!(s.hard_state().commit, 50);
        s.persist(&[entry(51, 3)], None).unwrap();
        drop(s);
        let s = RaftStorage::open(&path).unwrap();
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        assert_eq!(s.last_index().unwrap(), 51);
    }

    /// What a reopened log must show: bounds, terms, hard and conf state.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        first: u64,
        last: u64,
        terms: Vec<u64>,
        hard_state: HardState,
        voters: Vec<u64>,
    }

    fn seen(s: &RaftStorage) -> Seen {
        Seen {
            first: s.first(),
            last: s.last(),
            terms: (s.first() - 1..=s.last())
                .map(|i| s.term(i).unwrap())
                .collect(),
            hard_state: s.hard_state().clone(),
            voters: s.conf_state().voters.clone(),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Append `n` entries at `back` entries before the end (overwriting).
        Append {
            back: u64,
            n: u64,
            term_up: bool,
        },
        Commit,
        Compact {
            keep: u64,
        },
        Conf(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..3u64, 1..5u64, any::<bool>())
                .prop_map(|(back, n, term_up)| Op::Append { back, n, term_up }),
            1 => Just(Op::Commit),
            1 => (0..4u64).prop_map(|keep| Op::Compact { keep }),
            1 => (1..6u64).prop_map(Op::Conf),
        ]
    }

    #[test]
    fn a_log_of_the_first_format_is_rewritten_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raftlog");
        let mut s = RaftStorage::open(&path).unwrap();
        let es: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).collect();
        let hs = HardState {
            term: 1,
            commit: 2,
            ..Default::default()
        };
        s.persist(&es, Some(&hs)).unwrap();
        let before = seen(&s);
        let old = s.wal.path();
        drop(s);
        super::super::wal::downgrade_to_v1(&old);
        let mut s = RaftStorage::open(&path).unwrap();
        assert_eq!(seen(&s), before);
        assert!(!s.wal.is_outdated());
        assert!(!old.exists(), "the old segment is replaced");
        s.persist(&[entry(4, 1)], None).unwrap();
        drop(s);
        let s = RaftStorage::open(&path).unwrap();
        assert_eq!(s.last(), 4);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// After any sequence of writes, a reopened log is the log in memory;
        /// and a log cut at any byte, or zeroed from any byte to the end of
        /// its records, reopens as the log after some earlier write (a torn
        /// tail), or is refused: never another log, never a panic.
        #[test]
        fn a_reopened_or_torn_log_is_one_the_writes_made(
            ops in proptest::collection::vec(op(), 1..25),
            cut in 0.0f64..1.0,
            zero in proptest::bool::ANY,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("raftlog");
            let mut s = RaftStorage::open(&path).unwrap();
            let mut states = vec![seen(&s)];
            let mut term = 1;
            for op in ops {
                match op {
                    Op::Append { back, n, term_up } => {
                        let start = (s.last() + 1).saturating_sub(back).max(s.first());
                        term += u64::from(term_up);
                        let es: Vec<Entry> = (start..start + n).map(|i| entry(i, term)).collect();
                        let mut hs = s.hard_state().clone();
                        hs.term = term;
                        hs.commit = hs.commit.min(start - 1);
                        s.persist(&es, Some(&hs)).unwrap();
                    }
                    Op::Commit => {
                        let last = s.last();
                        s.set_commit(last).unwrap();
                        s.save_hard_state().unwrap();
                    }
                    Op::Compact { keep } => {
                        let to = s.hard_state().commit.saturating_sub(keep);
                        s.compact(to).unwrap();
                    }
                    Op::Conf(n) => s.set_conf_state(ConfState::from(((1..=n).collect::<Vec<_>>(), vec![]))).unwrap(),
                }
                let reopened = RaftStorage::open(&path).unwrap();
                proptest::prop_assert_eq!(seen(&reopened), seen(&s));
                states.push(seen(&s));
            }
            drop(s);
            let segment = std::fs::read_dir(&path).unwrap().next().unwrap().unwrap().path();
            let mut bytes = std::fs::read(&segment).unwrap();
            // Where the records end and the zeros ahead begin.
            let data = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            let at = (data as f64 * cut) as usize;
            if zero {
                bytes[at..data].fill(0);
            } else {
                bytes.truncate(at);
            }
            std::fs::write(&segment, &bytes).unwrap();
            if let Ok(torn) = RaftStorage::open(&path) {
                let got = seen(&torn);
                proptest::prop_assert!(states.contains(&got), "{got:?} was never written");
            }
        }
    }
}
