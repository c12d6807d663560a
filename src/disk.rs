//! How a member's redb files meet the disk: the Raft log (`raft.redb`) and the
//! MVCC store (`kv.redb`) are opened through [`open`], which wraps redb's file
//! backend so that every fsync is timed (the `etcd_disk_wal_fsync_duration_seconds`
//! histogram for the log) and, under `--unsafe-no-fsync`, skipped.
//!
//! Skipping fsync keeps redb's commit protocol intact (writes, their order and
//! the commit slots are unchanged); only the wait for the disk goes. A process
//! crash loses nothing, since the page cache survives it; a machine crash or
//! power loss may lose acknowledged writes or corrupt the files. That is the
//! trade etcd's `--unsafe-no-fsync` makes, for test suites only.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::time::Instant;

use redb::backends::FileBackend;
use redb::{Database, DatabaseError, StorageBackend};

/// How a database file is synced.
#[derive(Debug, Clone, Default)]
pub struct DiskOptions {
    /// `--unsafe-no-fsync`: never wait for the disk.
    pub no_fsync: bool,
    /// Observes the duration of every fsync, in seconds.
    pub fsync_seconds: Option<prometheus::Histogram>,
}

/// Opens (creating if needed) the redb database at `path` with `options`.
pub fn open(path: &Path, options: &DiskOptions) -> Result<Database, DatabaseError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let backend = Backend {
        file: FileBackend::new(file)?,
        no_fsync: options.no_fsync,
        fsync_seconds: options.fsync_seconds.clone(),
    };
    Database::builder().create_with_backend(backend)
}

/// redb's file backend with fsyncs timed or skipped.
#[derive(Debug)]
struct Backend {
    file: FileBackend,
    no_fsync: bool,
    fsync_seconds: Option<prometheus::Histogram>,
}

impl StorageBackend for Backend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        self.file.read(offset, len)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.file.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> Result<(), io::Error> {
        if self.no_fsync {
            return Ok(());
        }
        let start = Instant::now();
        let result = self.file.sync_data(eventual);
        if let Some(h) = &self.fsync_seconds {
            h.observe(start.elapsed().as_secs_f64());
        }
        result
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.file.write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn write_one(db: &Database, k: u64) {
        let tx = db.begin_write().unwrap();
        tx.open_table(T).unwrap().insert(k, k).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn fsyncs_are_timed_unless_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let h = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
        let synced = DiskOptions {
            no_fsync: false,
            fsync_seconds: Some(h.clone()),
        };
        let db = open(&dir.path().join("a.redb"), &synced).unwrap();
        write_one(&db, 1);
        let after_durable = h.get_sample_count();
        assert!(after_durable > 0);

        let unsynced = DiskOptions {
            no_fsync: true,
            fsync_seconds: Some(h.clone()),
        };
        let db2 = open(&dir.path().join("b.redb"), &unsynced).unwrap();
        write_one(&db2, 1);
        assert_eq!(h.get_sample_count(), after_durable);
    }

    #[test]
    fn unsynced_data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.redb");
        let options = DiskOptions {
            no_fsync: true,
            fsync_seconds: None,
        };
        {
            let db = open(&path, &options).unwrap();
            write_one(&db, 7);
        }
        let db = open(&path, &options).unwrap();
        let tx = db.begin_read().unwrap();
        let v = tx.open_table(T).unwrap().get(7).unwrap().map(|g| g.value());
        assert_eq!(v, Some(7));
    }
}
