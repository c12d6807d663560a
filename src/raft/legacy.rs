//! Upgrades a data dir written before the write-ahead log ([`super::wal`]):
//! its Raft log was a redb file, `raft.redb`, beside where `raftlog/` now is.
//!
//! [`migrate`] reads that file once (through [`crate::disk::open`], so a
//! damaged one is refused as before), writes the same state and entries as a
//! log under a staging name, syncs it, renames it into place and only then
//! deletes `raft.redb`. A crash at any step leaves either the old file alone
//! (the migration runs again) or the new log (the old file is deleted).
//!
//! The old layout: table `entries` (index -> encoded `eraftpb::Entry`) and
//! table `meta` with `hard_state`, `conf_state`, `compacted` (index and term,
//! 16 big-endian bytes) and `identity`.

use std::path::Path;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState};
use redb::TableDefinition;

use super::wal::{Checkpoint, Wal, WalOptions};
use super::RaftError;
use crate::disk::{DataFileError, FileState};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The old log's file name.
pub const LEGACY_FILE: &str = "raft.redb";

/// Moves the Raft log of `wal_dir/raft.redb`, if there is one, into the log
/// directory `log_dir`.
pub fn migrate(wal_dir: &Path, log_dir: &Path, options: &WalOptions) -> Result<(), RaftError> {
    let old = wal_dir.join(LEGACY_FILE);
    if !old.exists() {
        return Ok(());
    }
    if Wal::probe(log_dir)? == FileState::Present {
        // Migrated before a crash kept the old file from being deleted.
        std::fs::remove_file(&old).map_err(|e| DataFileError::io(&old, e))?;
        return Ok(());
    }
    let (checkpoint, entries) = read(&old)?;
    let staging = log_dir.with_extension("import");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| DataFileError::io(&staging, e))?;
    }
    {
        let (mut wal, _) = Wal::open(&staging, options.clone())?;
        wal.rotate(&checkpoint, entries.iter())?;
    }
    if log_dir.exists() {
        // An empty log a failed start may have created.
        std::fs::remove_dir_all(log_dir).map_err(|e| DataFileError::io(log_dir, e))?;
    }
    std::fs::rename(&staging, log_dir).map_err(|e| DataFileError::io(log_dir, e))?;
    if !options.no_fsync {
        std::fs::File::open(wal_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| DataFileError::io(wal_dir, e))?;
    }
    std::fs::remove_file(&old).map_err(|e| DataFileError::io(&old, e))?;
    tracing::info!(
        from = %old.display(),
        to = %log_dir.display(),
        entries = entries.len(),
        "moved the raft log to its write-ahead log format"
    );
    Ok(())
}

/// The state and entries of an old `raft.redb`.
fn read(path: &Path) -> Result<(Checkpoint, Vec<Entry>), RaftError> {
    let db = crate::disk::open(path, &crate::disk::DiskOptions::default())?;
    let read = db.begin_read().map_err(RaftError::db)?;
    let meta = read.open_table(META).map_err(RaftError::db)?;
    let get = |key: &str| -> Result<Option<Vec<u8>>, RaftError> {
        Ok(meta
            .get(key)
            .map_err(RaftError::db)?
            .map(|v| v.value().to_vec()))
    };
    let hard_state = match get("hard_state")? {
        Some(b) => HardState::parse_from_bytes(&b).map_err(RaftError::decode)?,
        None => HardState::default(),
    };
    let conf_state = match get("conf_state")? {
        Some(b) => ConfState::parse_from_bytes(&b).map_err(RaftError::decode)?,
        None => ConfState::default(),
    };
    let compacted = match get("compacted")? {
        Some(b) if b.len() == 16 => (be_u64(&b[..8]), be_u64(&b[8..])),
        _ => (0, 0),
    };
    let identity = get("identity")?;
    let table = read.open_table(ENTRIES).map_err(RaftError::db)?;
    let mut entries = Vec::new();
    for item in table.range(compacted.0 + 1..).map_err(RaftError::db)? {
        let (_, v) = item.map_err(RaftError::db)?;
        let e = Entry::parse_from_bytes(v.value()).map_err(RaftError::decode)?;
        let expected = compacted.0 + 1 + entries.len() as u64;
        if e.index != expected {
            return Err(DataFileError::corrupt(
                path,
                format!(
                    "the log has a gap: expected index {expected}, found {}",
                    e.index
                ),
            )
            .into());
        }
        entries.push(e);
    }
    Ok((
        Checkpoint {
            identity,
            hard_state,
            conf_state,
            compacted,
        },
        entries,
    ))
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::RaftStorage;
    use raft::Storage as _;
    use redb::Durability;

    /// Writes a log in the old format, as the old code did.
    fn write_legacy(path: &Path, entries: &[Entry], hs: &HardState, identity: &[u8]) {
        let db = redb::Database::create(path).unwrap();
        let mut tx = db.begin_write().unwrap();
        tx.set_durability(Durability::Immediate);
        {
            let mut t = tx.open_table(ENTRIES).unwrap();
            for e in entries {
                t.insert(e.index, e.write_to_bytes().unwrap().as_slice())
                    .unwrap();
            }
            let mut m = tx.open_table(META).unwrap();
            m.insert("hard_state", hs.write_to_bytes().unwrap().as_slice())
                .unwrap();
            let cs = ConfState::from((vec![1, 2, 3], vec![]));
            m.insert("conf_state", cs.write_to_bytes().unwrap().as_slice())
                .unwrap();
            let mut c = [0u8; 16];
            c[..8].copy_from_slice(&1u64.to_be_bytes());
            c[8..].copy_from_slice(&1u64.to_be_bytes());
            m.insert("compacted", c.as_slice()).unwrap();
            m.insert("identity", identity).unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn an_old_redb_log_is_moved_into_the_write_ahead_log_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (2..=6)
            .map(|i| Entry {
                index: i,
                term: 2,
                data: vec![i as u8].into(),
                ..Default::default()
            })
            .collect();
        let hs = HardState {
            term: 2,
            vote: 3,
            commit: 5,
            ..Default::default()
        };
        write_legacy(&dir.path().join(LEGACY_FILE), &entries, &hs, b"me");
        let log = dir.path().join("raftlog");
        migrate(dir.path(), &log, &WalOptions::default()).unwrap();
        assert!(!dir.path().join(LEGACY_FILE).exists());
        let s = RaftStorage::open(&log).unwrap();
        assert_eq!(s.identity().unwrap().as_deref(), Some(&b"me"[..]));
        assert_eq!(s.hard_state(), &hs);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
        assert_eq!((s.first(), s.last()), (2, 6));
        assert_eq!(s.term(1).unwrap(), 1);
        // Nothing left to move.
        migrate(dir.path(), &log, &WalOptions::default()).unwrap();
        assert_eq!(RaftStorage::open(&log).unwrap().last(), 6);
    }
}
