//! The durable Raft log: entries, hard state and conf state in a `redb` file,
//! mirrored in memory so that `raft::Storage` reads never touch the disk.
//!
//! Layout of `raft.redb`:
//! - table `entries`: log index -> protobuf-encoded `eraftpb::Entry`;
//! - table `meta`: `hard_state`, `conf_state`, `compacted` (index and term of the
//!   last entry dropped from the log) and `identity` (whose data dir this is).
//!
//! Invariants:
//! - The in-memory log holds exactly the entries `compacted.index + 1 ..= last`,
//!   contiguous, and matches the file after every [`RaftStorage::persist`] call.
//! - [`RaftStorage::persist`] writes new entries and the hard state in one write
//!   transaction, fsync'ed before it returns whenever it holds entries or a new
//!   term or vote, so nothing is acknowledged that is not on disk. A change of
//!   the commit index alone is only recorded in memory and rides along with the
//!   next synced write: after a crash the commit index is learned again from the
//!   leader, or from the state machine's applied index (`node::reconcile_log`).
//!   That saves a redb commit (several page writes) per Ready on the hot path.
//! - Snapshots are not stored: the state machine *is* the snapshot. When raft-rs
//!   needs one for a lagging follower, [`SnapshotSource`] builds it from the
//!   applied state, whose index is always at or beyond the compaction point.

use std::collections::VecDeque;
use std::path::Path;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, Durability, TableDefinition};

use super::RaftError;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_HARD_STATE: &str = "hard_state";
const KEY_CONF_STATE: &str = "conf_state";
const KEY_COMPACTED: &str = "compacted";
const KEY_IDENTITY: &str = "identity";

/// The index (at term 1) a new cluster's log starts from; see [`RaftStorage::bootstrap`].
pub const BOOTSTRAP_INDEX: u64 = 1;

/// Builds a Raft snapshot of the applied state on demand (implemented by the
/// state machine). Called on the Raft thread.
pub trait SnapshotSource: Send {
    /// A snapshot whose metadata index is the state machine's applied index.
    fn snapshot(&self) -> Result<Snapshot, RaftError>;
}

/// The Raft log of one member, durable in redb and cached in memory.
pub struct RaftStorage {
    db: Database,
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
    /// Opens (or creates) the log at `path` and loads it into memory.
    pub fn open(path: &Path) -> Result<Self, RaftError> {
        Self::open_with(path, &crate::disk::DiskOptions::default())
    }

    /// [`RaftStorage::open`] with fsyncs timed or skipped as `disk` says.
    pub fn open_with(path: &Path, disk: &crate::disk::DiskOptions) -> Result<Self, RaftError> {
        let disk = crate::disk::DiskOptions {
            keep_last_commit: true,
            ..disk.clone()
        };
        let db = crate::disk::open(path, &disk)?;
        let tx = db.begin_write().map_err(RaftError::db)?;
        {
            tx.open_table(ENTRIES).map_err(RaftError::db)?;
            tx.open_table(META).map_err(RaftError::db)?;
        }
        tx.commit().map_err(RaftError::db)?;

        let read = db.begin_read().map_err(RaftError::db)?;
        let meta = read.open_table(META).map_err(RaftError::db)?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, RaftError> {
            Ok(meta
                .get(key)
                .map_err(RaftError::db)?
                .map(|v| v.value().to_vec()))
        };
        let hard_state = match get(KEY_HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(RaftError::decode)?,
            None => HardState::default(),
        };
        let conf_state = match get(KEY_CONF_STATE)? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(RaftError::decode)?,
            None => ConfState::default(),
        };
        let compacted = match get(KEY_COMPACTED)? {
            Some(b) if b.len() == 16 => (be_u64(&b[..8]), be_u64(&b[8..])),
            _ => (0, 0),
        };
        let table = read.open_table(ENTRIES).map_err(RaftError::db)?;
        let mut entries = VecDeque::new();
        for item in table.range(compacted.0 + 1..).map_err(RaftError::db)? {
            let (_, v) = item.map_err(RaftError::db)?;
            let e = Entry::parse_from_bytes(v.value()).map_err(RaftError::decode)?;
            let expected = compacted.0 + 1 + entries.len() as u64;
            if e.index != expected {
                return Err(RaftError::Corrupt(format!(
                    "raft log has a gap: expected index {expected}, found {}",
                    e.index
                )));
            }
            entries.push_back(e);
        }
        drop(table);
        drop(meta);
        drop(read);
        Ok(Self {
            db,
            hard_state,
            conf_state,
            compacted,
            entries,
            snapshots: None,
            hard_state_unsaved: false,
        })
    }

    /// Sets the state machine that builds snapshots for lagging followers.
    pub fn set_snapshot_source(&mut self, source: Box<dyn SnapshotSource>) {
        self.snapshots = Some(source);
    }

    /// The stored identity record (encoded `lcraftpb::Identity`), if any.
    pub fn identity(&self) -> Result<Option<Vec<u8>>, RaftError> {
        let read = self.db.begin_read().map_err(RaftError::db)?;
        let meta = read.open_table(META).map_err(RaftError::db)?;
        Ok(meta
            .get(KEY_IDENTITY)
            .map_err(RaftError::db)?
            .map(|v| v.value().to_vec()))
    }

    /// Records the identity and the initial configuration of a brand-new member,
    /// durably and atomically.
    ///
    /// The log starts as if index [`BOOTSTRAP_INDEX`] (term 1) had been compacted:
    /// the initial configuration is state, not log entries, so a member that joins
    /// later must start from a snapshot, and it will, because the log never holds
    /// the entries before it.
    pub fn bootstrap(&mut self, identity: &[u8], conf_state: ConfState) -> Result<(), RaftError> {
        let cs = conf_state.write_to_bytes().map_err(RaftError::decode)?;
        let hs = HardState {
            term: 1,
            commit: BOOTSTRAP_INDEX,
            ..Default::default()
        };
        let hsb = hs.write_to_bytes().map_err(RaftError::decode)?;
        let mut tx = self.db.begin_write().map_err(RaftError::db)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut meta = tx.open_table(META).map_err(RaftError::db)?;
            meta.insert(KEY_IDENTITY, identity).map_err(RaftError::db)?;
            meta.insert(KEY_CONF_STATE, cs.as_slice())
                .map_err(RaftError::db)?;
            meta.insert(KEY_HARD_STATE, hsb.as_slice())
                .map_err(RaftError::db)?;
            meta.insert(
                KEY_COMPACTED,
                compacted_bytes(BOOTSTRAP_INDEX, 1).as_slice(),
            )
            .map_err(RaftError::db)?;
        }
        tx.commit().map_err(RaftError::db)?;
        self.conf_state = conf_state;
        self.hard_state = hs;
        self.compacted = (BOOTSTRAP_INDEX, 1);
        self.entries.clear();
        Ok(())
    }

    /// Records the identity of a member that joins a running cluster: no
    /// configuration and no log; the leader's first snapshot provides both.
    pub fn bootstrap_joining(&mut self, identity: &[u8]) -> Result<(), RaftError> {
        let mut tx = self.db.begin_write().map_err(RaftError::db)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut meta = tx.open_table(META).map_err(RaftError::db)?;
            meta.insert(KEY_IDENTITY, identity).map_err(RaftError::db)?;
        }
        tx.commit().map_err(RaftError::db)?;
        Ok(())
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
    /// in one fsync'ed transaction.
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
        // A commit index recorded only in memory goes out with this write.
        let hard_state = match hard_state {
            Some(hs) => Some(hs.clone()),
            None if self.hard_state_unsaved => Some(self.hard_state.clone()),
            None => None,
        };
        let hard_state = hard_state.as_ref();
        let mut tx = self.db.begin_write().map_err(RaftError::db)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut table = tx.open_table(ENTRIES).map_err(RaftError::db)?;
            if let Some(first) = entries.first() {
                if first.index <= self.compacted.0 {
                    return Err(RaftError::Corrupt(format!(
                        "append at index {} behind compaction point {}",
                        first.index, self.compacted.0
                    )));
                }
                let last = self.last();
                if first.index <= last {
                    // A new leader overwrote our uncommitted suffix.
                    for idx in first.index..=last {
                        table.remove(idx).map_err(RaftError::db)?;
                    }
                }
                for e in entries {
                    let bytes = e.write_to_bytes().map_err(RaftError::decode)?;
                    table
                        .insert(e.index, bytes.as_slice())
                        .map_err(RaftError::db)?;
                }
            }
            if let Some(hs) = hard_state {
                let mut meta = tx.open_table(META).map_err(RaftError::db)?;
                let bytes = hs.write_to_bytes().map_err(RaftError::decode)?;
                meta.insert(KEY_HARD_STATE, bytes.as_slice())
                    .map_err(RaftError::db)?;
            }
        }
        tx.commit().map_err(RaftError::db)?;

        if let Some(first) = entries.first() {
            let keep = (first.index - self.compacted.0 - 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend(entries.iter().cloned());
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
            self.hard_state_unsaved = false;
        }
        Ok(())
    }

    /// Writes a commit index that is only in memory (on a clean stop).
    pub fn save_hard_state(&mut self) -> Result<(), RaftError> {
        if !self.hard_state_unsaved {
            return Ok(());
        }
        let hs = self.hard_state.clone();
        let bytes = hs.write_to_bytes().map_err(RaftError::decode)?;
        let mut tx = self.db.begin_write().map_err(RaftError::db)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut meta = tx.open_table(META).map_err(RaftError::db)?;
            meta.insert(KEY_HARD_STATE, bytes.as_slice())
                .map_err(RaftError::db)?;
        }
        tx.commit().map_err(RaftError::db)?;
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
        let bytes = cs.write_to_bytes().map_err(RaftError::decode)?;
        let mut tx = self.db.begin_write().map_err(RaftError::db)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut meta = tx.open_table(META).map_err(RaftError::db)?;
            meta.insert(KEY_CONF_STATE, bytes.as_slice())
                .map_err(RaftError::db)?;
        }
        tx.commit().map_err(RaftError::db)?;
        self.conf_state = cs;
        Ok(())
    }

    /// Replaces the log by a snapshot received from the leader (the state machine
    /// has already been restored from its data).
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), RaftError> {
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        let cs = meta.get_conf_state().clone();
        let mut tx = self.db.begin_write().map_err(RaftError::db)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut table = tx.open_table(ENTRIES).map_err(RaftError::db)?;
            table.retain(|_, _| false).map_err(RaftError::db)?;
            let mut m = tx.open_table(META).map_err(RaftError::db)?;
            m.insert(
                KEY_COMPACTED,
                compacted_bytes(meta.index, meta.term).as_slice(),
            )
            .map_err(RaftError::db)?;
            let hsb = hs.write_to_bytes().map_err(RaftError::decode)?;
            m.insert(KEY_HARD_STATE, hsb.as_slice())
                .map_err(RaftError::db)?;
            let csb = cs.write_to_bytes().map_err(RaftError::decode)?;
            m.insert(KEY_CONF_STATE, csb.as_slice())
                .map_err(RaftError::db)?;
        }
        tx.commit().map_err(RaftError::db)?;
        self.entries.clear();
        self.compacted = (meta.index, meta.term);
        self.hard_state = hs;
        self.conf_state = cs;
        Ok(())
    }

    /// Drops every entry up to and including `index` (which must be applied).
    pub fn compact(&mut self, index: u64) -> Result<(), RaftError> {
        if index <= self.compacted.0 || index > self.last() {
            return Ok(());
        }
        let term = self.term_of(index).ok_or_else(|| {
            RaftError::Corrupt(format!("no term for index {index} in the raft log"))
        })?;
        let mut tx = self.db.begin_write().map_err(RaftError::db)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut table = tx.open_table(ENTRIES).map_err(RaftError::db)?;
            table
                .retain_in(..=index, |_, _| false)
                .map_err(RaftError::db)?;
            let mut m = tx.open_table(META).map_err(RaftError::db)?;
            m.insert(KEY_COMPACTED, compacted_bytes(index, term).as_slice())
                .map_err(RaftError::db)?;
        }
        tx.commit().map_err(RaftError::db)?;
        let drop_n = (index - self.compacted.0) as usize;
        self.entries.drain(..drop_n);
        self.compacted = (index, term);
        Ok(())
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

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn compacted_bytes(index: u64, term: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_be_bytes());
    b[8..].copy_from_slice(&term.to_be_bytes());
    b
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
        let path = dir.path().join("raft.redb");
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
        let path = dir.path().join("raft.redb");
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
        let path = dir.path().join("raft.redb");
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
        let path = dir.path().join("raft.redb");
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
        let path = dir.path().join("raft.redb");
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
}
