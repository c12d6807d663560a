//! The MVCC store: one redb file, written in batches, read through snapshots.
//!
//! * [`Store`] owns the redb [`Database`] and caches the committed current and
//!   compacted revisions so `current_revision()` is an atomic load.
//! * [`Batch`] wraps one redb write transaction. The Raft apply layer applies a
//!   batch of committed entries in it and calls [`Batch::commit`] once (one
//!   fsync). Dropping a batch without committing discards it.
//! * [`Writer`] is a batch with its tables open: the apply layer takes one per
//!   batch, so the tables are opened (and closed) once per batch rather than
//!   once per request. [`Batch`]'s own `txn`/`compact`/`set_meta` open them per
//!   call, which is handy in tests.
//! * [`RevTxn`] is one etcd revision transaction inside a batch: its reads see
//!   everything written earlier in the batch and in itself; its first change
//!   bumps the main revision by one, and each change gets the next sub-revision.
//! * [`ReadView`] is one redb read transaction: a consistent snapshot of the last
//!   committed batch.
//!
//! Tables (all `&[u8] -> &[u8]`): `mvcc_kv` (revision -> record), `mvcc_state`
//! (current and compacted revision) and `meta` (free-form entries of the apply
//! layer, written atomically with the data). Which revisions each key has is
//! the in-memory [`KeyIndex`], shared by the store, its batches and its read
//! views; a batch's view of it is everything, a read view's is what lies at or
//! below its revision, and a read view that a later compaction or restore has
//! overtaken answers `Compacted` rather than read a history that is gone.
//!
//! The current and compacted revision are tracked in memory while a batch runs
//! and written to `mvcc_state` once, by [`Batch::commit`], if they changed: the
//! committed contents are the same as if every change had written them.
//!
//! Failure rule: if a storage error happens while a batch is being written, the
//! batch is marked poisoned and refuses to commit, so a half-applied batch never
//! becomes durable. Non-storage errors (`KeyNotFound`, `Compacted`,
//! `FutureRevision`) are raised before the failing operation writes anything;
//! operations applied earlier in the same revision transaction stay applied, so
//! callers validate a request before applying it, as etcd's apply does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};

use super::codec::encode_record_into;
use super::error::{MvccError, Result};
use super::hash::Crc32c;
use super::index::KeyIndex;
use super::key_range::KeyRange;
use super::revision::Revision;
use super::snapshot;
use super::types::{Event, EventKind, HashKv, KeyValue, RangeOptions, RangeResult};
use super::view::View;

type Bytes = &'static [u8];
type Def = TableDefinition<'static, Bytes, Bytes>;

pub(crate) const KV: Def = TableDefinition::new("mvcc_kv");
pub(crate) const STATE: Def = TableDefinition::new("mvcc_state");
pub(crate) const META: Def = TableDefinition::new("meta");
/// Every table, in snapshot order.
pub(crate) const ALL_TABLES: [Def; 3] = [KV, STATE, META];
/// Key-ordered tables of stores written before the key index moved to memory:
/// ((key, revision) -> put/tombstone flag) and (live key -> revision). A store
/// that has them drops them when it opens; snapshots that carry them are read
/// without them.
pub(crate) const LEGACY_TABLES: [Def; 2] = [
    TableDefinition::new("mvcc_index"),
    TableDefinition::new("mvcc_live"),
];

const CURRENT_KEY: &[u8] = b"current_revision";
const COMPACT_KEY: &[u8] = b"compact_revision";
/// Revision of an empty store, as etcd.
const INITIAL_REVISION: i64 = 1;
/// Compacted revision of a never-compacted store, as etcd.
const NO_COMPACTION: i64 = -1;

/// The MVCC key-value store. `Send + Sync`; share it behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    /// Write-locked only by `defragment` (redb compaction needs `&mut`).
    db: RwLock<Database>,
    path: PathBuf,
    current: AtomicI64,
    compact: AtomicI64,
    /// Batches (and restores) between `begin_write` and their end.
    open_batches: AtomicUsize,
    /// Last computed `db_size_in_use`.
    size_in_use: AtomicU64,
    /// Observes the duration of batch commits (etcd's backend commit metric).
    commit_seconds: Option<prometheus::Histogram>,
    /// Every key's history, in memory (see [`super::index`]).
    index: Arc<RwLock<KeyIndex>>,
}

/// The current and compacted revision as a batch sees them, whether a
/// storage error left the batch unfit to commit, and what the batch owes the
/// key index.
///
/// A batch appends its changes to the shared index as it makes them (readers
/// ignore revisions past their own); if it ends without committing, dropping
/// its state takes them back. Its compactions reach the index only as it
/// commits (just before the redb commit).
#[derive(Debug)]
struct BatchState {
    current: i64,
    compact: i64,
    /// The revisions as stored when the batch began (written back on commit
    /// only if they changed).
    stored: (i64, i64),
    poisoned: bool,
    index: Arc<RwLock<KeyIndex>>,
    /// The latest compaction of this batch, applied to the index on commit.
    pending_compact: Option<i64>,
    committed: bool,
}

impl Drop for BatchState {
    fn drop(&mut self) {
        if !self.committed && self.current > self.stored.0 {
            write_index(&self.index).rollback(self.stored.0);
        }
    }
}

fn read_index(index: &RwLock<KeyIndex>) -> RwLockReadGuard<'_, KeyIndex> {
    // A panic elsewhere while the lock was held leaves the index as the last
    // completed change made it.
    index.read().unwrap_or_else(|e| e.into_inner())
}

fn write_index(index: &RwLock<KeyIndex>) -> RwLockWriteGuard<'_, KeyIndex> {
    index.write().unwrap_or_else(|e| e.into_inner())
}

impl BatchState {
    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            Err(MvccError::Storage(
                "batch aborted by an earlier storage error".to_string(),
            ))
        } else {
            Ok(())
        }
    }

    /// Passes `result` on, marking the batch poisoned if it is an error.
    fn poison_on_err<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }
}

/// Decrements the open-batch counter when a batch ends, however it ends.
#[derive(Debug)]
struct OpenBatch<'s>(&'s AtomicUsize);

impl Drop for OpenBatch<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One redb write transaction holding any number of revision transactions,
/// compactions and meta writes; durable on [`Batch::commit`].
pub struct Batch<'s> {
    store: &'s Store,
    /// Declared before `txn`: a batch dropped without committing takes its
    /// changes back from the index while it still holds the write transaction.
    state: BatchState,
    txn: WriteTransaction,
    _open: OpenBatch<'s>,
}

/// The data table of a batch, open.
struct DataTables<'t> {
    txn: &'t WriteTransaction,
    kv: Table<'t, Bytes, Bytes>,
}

impl<'t> DataTables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(DataTables {
            txn,
            kv: txn.open_table(KV)?,
        })
    }
}

/// Tables a revision transaction opened itself, or borrowed from a [`Writer`].
enum TablesRef<'w, 't> {
    /// Boxed: a borrowed variant is the common one and stays small.
    Owned(Box<DataTables<'t>>),
    Borrowed(&'w mut DataTables<'t>),
}

impl<'t> std::ops::Deref for TablesRef<'_, 't> {
    type Target = DataTables<'t>;
    fn deref(&self) -> &DataTables<'t> {
        match self {
            TablesRef::Owned(t) => t,
            TablesRef::Borrowed(t) => t,
        }
    }
}

impl<'t> std::ops::DerefMut for TablesRef<'_, 't> {
    fn deref_mut(&mut self) -> &mut DataTables<'t> {
        match self {
            TablesRef::Owned(t) => t,
            TablesRef::Borrowed(t) => t,
        }
    }
}

/// A [`Batch`] with its tables open, for applying many requests: revision
/// transactions, compactions and meta writes through it share the open tables.
/// Drop it before committing the batch.
pub struct Writer<'b> {
    tables: DataTables<'b>,
    /// Opened on first use.
    meta: Option<Table<'b, Bytes, Bytes>>,
    state: &'b mut BatchState,
}

/// One etcd revision transaction inside a [`Batch`]. End it with
/// [`RevTxn::end`] to get its revision and events; dropping it has the same
/// effect on the store (the events are then lost).
pub struct RevTxn<'w, 't> {
    state: &'w mut BatchState,
    tables: TablesRef<'w, 't>,
    /// The revision before this transaction.
    begin: i64,
    /// Number of changes so far (the next sub-revision).
    changes: i64,
    events: Vec<Event>,
}

/// A consistent read snapshot of the last committed batch.
pub struct ReadView {
    kv: ReadOnlyTable<Bytes, Bytes>,
    state: ReadOnlyTable<Bytes, Bytes>,
    meta: ReadOnlyTable<Bytes, Bytes>,
    index: Arc<RwLock<KeyIndex>>,
    /// The index epoch this snapshot belongs to.
    epoch: u64,
    current: i64,
    compact: i64,
    /// Declared last so the tables are dropped before their transaction.
    _txn: ReadTransaction,
}

fn read_i64<T: ReadableTable<Bytes, Bytes>>(table: &T, key: &[u8]) -> Result<Option<i64>> {
    match table.get(key)? {
        Some(guard) => {
            let bytes: [u8; 8] = guard
                .value()
                .try_into()
                .map_err(|_| MvccError::corrupt("state value is not 8 bytes"))?;
            Ok(Some(i64::from_be_bytes(bytes)))
        }
        None => Ok(None),
    }
}

/// Reads (current, compacted) revisions from a state table.
fn read_state<T: ReadableTable<Bytes, Bytes>>(table: &T) -> Result<(i64, i64)> {
    Ok((
        read_i64(table, CURRENT_KEY)?.unwrap_or(INITIAL_REVISION),
        read_i64(table, COMPACT_KEY)?.unwrap_or(NO_COMPACTION),
    ))
}

impl Store {
    /// Opens the store at `path`, creating the file and its tables if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(path, &crate::disk::DiskOptions::default(), None)
    }

    /// [`Store::open`] with fsyncs skipped as `disk` says, and the duration of
    /// every batch commit observed by `commit_seconds`.
    pub fn open_with(
        path: impl AsRef<Path>,
        disk: &crate::disk::DiskOptions,
        commit_seconds: Option<prometheus::Histogram>,
    ) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let db = crate::disk::open(&path, disk)?;
        let txn = db.begin_write()?;
        let mut migrated = false;
        for def in LEGACY_TABLES {
            migrated |= txn.delete_table(def)?;
        }
        let (current, compact, index) = {
            for def in ALL_TABLES {
                txn.open_table(def)?;
            }
            let (current, compact) = read_state(&txn.open_table(STATE)?)?;
            let index = KeyIndex::rebuild(&txn.open_table(KV)?, compact)?;
            (current, compact, index)
        };
        if migrated {
            tracing::info!(path = %path.display(), "dropped the on-disk key index tables: the key index is kept in memory");
        }
        txn.commit()?;
        Ok(Store {
            db: RwLock::new(db),
            path,
            current: AtomicI64::new(current),
            compact: AtomicI64::new(compact),
            open_batches: AtomicUsize::new(0),
            size_in_use: AtomicU64::new(0),
            commit_seconds,
            index: Arc::new(RwLock::new(index)),
        })
    }

    fn db(&self) -> RwLockReadGuard<'_, Database> {
        // The database keeps its own consistency; a panic elsewhere while the
        // lock was held does not make it unusable.
        self.db.read().unwrap_or_else(|e| e.into_inner())
    }

    fn db_mut(&self) -> RwLockWriteGuard<'_, Database> {
        self.db.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a batch (a redb write transaction; waits while another is open).
    pub fn batch(&self) -> Result<Batch<'_>> {
        let db = self.db();
        self.open_batches.fetch_add(1, Ordering::SeqCst);
        let open = OpenBatch(&self.open_batches);
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let (current, compact) = read_state(&txn.open_table(STATE)?)?;
        Ok(Batch {
            store: self,
            txn,
            state: BatchState {
                current,
                compact,
                stored: (current, compact),
                poisoned: false,
                index: Arc::clone(&self.index),
                pending_compact: None,
                committed: false,
            },
            _open: open,
        })
    }

    /// Opens a read snapshot of the last committed batch.
    pub fn read(&self) -> Result<ReadView> {
        // Under the index lock, so a restore cannot slip between the snapshot
        // and the epoch it is paired with. The database lock comes first, as
        // everywhere (a restore holds it while it waits for the index).
        let db = self.db();
        let (txn, epoch) = {
            let index = read_index(&self.index);
            (db.begin_read()?, index.epoch())
        };
        drop(db);
        let state = txn.open_table(STATE)?;
        let (current, compact) = read_state(&state)?;
        Ok(ReadView {
            kv: txn.open_table(KV)?,
            meta: txn.open_table(META)?,
            state,
            index: Arc::clone(&self.index),
            epoch,
            current,
            compact,
            _txn: txn,
        })
    }

    /// Number of keys the in-memory index holds (live or with history).
    #[cfg(test)]
    pub(crate) fn indexed_keys(&self) -> usize {
        read_index(&self.index).len()
    }

    /// The revision of the last committed change.
    pub fn current_revision(&self) -> i64 {
        self.current.load(Ordering::SeqCst)
    }

    /// The last committed compaction revision (-1 if never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact.load(Ordering::SeqCst)
    }

    /// Size of the database file in bytes.
    pub fn db_size(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path)?.len())
    }

    /// Estimated bytes in use (allocated pages). Computed from redb statistics,
    /// which needs the write lock: while a batch is open it returns the last
    /// computed value (or the file size if none) instead of waiting.
    pub fn db_size_in_use(&self) -> Result<u64> {
        let cached = self.size_in_use.load(Ordering::SeqCst);
        if self.open_batches.load(Ordering::SeqCst) > 0 {
            return if cached > 0 {
                Ok(cached)
            } else {
                self.db_size()
            };
        }
        let db = self.db();
        let txn = db.begin_write()?;
        let stats = txn.stats()?;
        txn.abort()?;
        let in_use = stats.allocated_pages() * stats.page_size() as u64;
        self.size_in_use.store(in_use, Ordering::SeqCst);
        Ok(in_use)
    }

    /// Makes every earlier non-durable commit durable (one fsync).
    pub fn flush(&self) -> Result<()> {
        let db = self.db();
        self.open_batches.fetch_add(1, Ordering::SeqCst);
        let _open = OpenBatch(&self.open_batches);
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        txn.commit()?;
        Ok(())
    }

    /// Compacts the database file (etcd's defragment). Fails with `Busy` while a
    /// batch or a read view is open.
    pub fn defragment(&self) -> Result<()> {
        let busy = || MvccError::Busy("defragment needs the store idle".to_string());
        if self.open_batches.load(Ordering::SeqCst) > 0 {
            return Err(busy());
        }
        let mut db = self.db_mut();
        // Batches count themselves while holding the read lock, so this is exact.
        if self.open_batches.load(Ordering::SeqCst) > 0 {
            return Err(busy());
        }
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        txn.commit()?;
        match db.compact() {
            Ok(_) => Ok(()),
            Err(redb::CompactionError::TransactionInProgress) => Err(busy()),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the whole store with the contents of `bytes` (from
    /// [`ReadView::snapshot_bytes`]) in one durable write transaction. The bytes
    /// are fully validated before anything is changed.
    pub fn restore(&self, bytes: &[u8]) -> Result<()> {
        let tables = snapshot::decode(bytes)?;
        let db = self.db();
        self.open_batches.fetch_add(1, Ordering::SeqCst);
        let _open = OpenBatch(&self.open_batches);
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        for def in LEGACY_TABLES {
            txn.delete_table(def)?;
        }
        for (def, entries) in ALL_TABLES.iter().zip(&tables) {
            txn.delete_table(*def)?;
            let mut table = txn.open_table(*def)?;
            for (k, v) in entries {
                table.insert(*k, *v)?;
            }
        }
        let (current, compact) = read_state(&txn.open_table(STATE)?)?;
        let rebuilt = KeyIndex::rebuild(&txn.open_table(KV)?, compact)?;
        // Readers opening a view wait here, so none pairs the new snapshot
        // with the old index; views opened before see the epoch change.
        let mut index = write_index(&self.index);
        txn.commit()?;
        index.replace(rebuilt);
        drop(index);
        self.current.store(current, Ordering::SeqCst);
        self.compact.store(compact, Ordering::SeqCst);
        Ok(())
    }
}

impl Batch<'_> {
    /// Starts a revision transaction (opening the data tables for it; a
    /// [`Writer`] opens them once for many).
    pub fn txn(&mut self) -> Result<RevTxn<'_, '_>> {
        self.state.check_usable()?;
        let tables = DataTables::open(&self.txn)?;
        Ok(RevTxn::new(
            TablesRef::Owned(Box::new(tables)),
            &mut self.state,
        ))
    }

    /// Opens the tables for a run of revision transactions, compactions and
    /// meta writes.
    pub fn writer(&mut self) -> Result<Writer<'_>> {
        self.state.check_usable()?;
        Ok(Writer {
            tables: DataTables::open(&self.txn)?,
            meta: None,
            state: &mut self.state,
        })
    }

    /// Current revision as of this batch (including its own changes).
    pub fn current_revision(&self) -> i64 {
        self.state.current
    }

    /// Compacted revision as of this batch.
    pub fn compact_revision(&self) -> i64 {
        self.state.compact
    }

    /// Compacts history at `rev` (see [`Writer::compact`]).
    pub fn compact(&mut self, rev: i64) -> Result<()> {
        self.writer()?.compact(rev)
    }

    /// Stores an apply-layer meta entry, atomically with the rest of the batch.
    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.writer()?.set_meta(key, value)
    }

    /// Removes an apply-layer meta entry.
    pub fn delete_meta(&mut self, key: &str) -> Result<()> {
        self.writer()?.delete_meta(key)
    }

    /// Reads an apply-layer meta entry (seeing this batch's writes).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let table = self.txn.open_table(META)?;
        let value = table.get(key.as_bytes())?.map(|g| g.value().to_vec());
        Ok(value)
    }

    /// Chooses whether [`Batch::commit`] waits for the disk (the default) or not.
    /// A non-durable commit is visible at once and becomes durable with the next
    /// durable commit or [`Store::flush`]; a crash before that loses it, which the
    /// Raft layer tolerates by replaying its log from the last durable applied index.
    pub fn set_durable(&mut self, durable: bool) {
        self.txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
    }

    /// Writes the current and compacted revision if the batch changed them.
    fn write_state(&self) -> Result<()> {
        let (current, compact) = self.state.stored;
        if (self.state.current, self.state.compact) == (current, compact) {
            return Ok(());
        }
        let mut table = self.txn.open_table(STATE)?;
        if self.state.current != current {
            table.insert(CURRENT_KEY, self.state.current.to_be_bytes().as_slice())?;
        }
        if self.state.compact != compact {
            table.insert(COMPACT_KEY, self.state.compact.to_be_bytes().as_slice())?;
        }
        Ok(())
    }

    /// Makes the batch visible to new read views, and durable (fsync) unless
    /// [`Batch::set_durable`] said otherwise.
    pub fn commit(self) -> Result<()> {
        self.state.check_usable()?;
        self.write_state()?;
        let Batch {
            store,
            txn,
            mut state,
            ..
        } = self;
        let start = std::time::Instant::now();
        // The compaction reaches the index first: a reader pairing the index
        // with the snapshot from before answers `Compacted` below the new
        // floor, where the other way round it would look for records the
        // compaction removed. (Should the commit fail, the index lacks only
        // revisions below a floor no reader gets past; reopening rebuilds it.)
        if let Some(rev) = state.pending_compact {
            write_index(&state.index).compact(rev);
        }
        txn.commit()?;
        state.committed = true;
        if let Some(h) = &store.commit_seconds {
            h.observe(start.elapsed().as_secs_f64());
        }
        store.current.store(state.current, Ordering::SeqCst);
        store.compact.store(state.compact, Ordering::SeqCst);
        Ok(())
    }
}

impl<'b> Writer<'b> {
    /// Starts a revision transaction on the open tables.
    pub fn txn(&mut self) -> Result<RevTxn<'_, 'b>> {
        self.state.check_usable()?;
        Ok(RevTxn::new(
            TablesRef::Borrowed(&mut self.tables),
            &mut *self.state,
        ))
    }

    /// Current revision as of this batch (including its own changes).
    pub fn current_revision(&self) -> i64 {
        self.state.current
    }

    /// Compacted revision as of this batch.
    pub fn compact_revision(&self) -> i64 {
        self.state.compact
    }

    /// Compacts history at `rev`: for every key, revisions `<= rev` are removed
    /// except the newest one if it is not a tombstone. Errors as etcd:
    /// `FutureRevision` if `rev` is past the current revision, `Compacted` if it
    /// is not past the last compaction. Does not change the revision.
    pub fn compact(&mut self, rev: i64) -> Result<()> {
        self.state.check_usable()?;
        if rev > self.state.current {
            return Err(MvccError::FutureRevision);
        }
        if rev <= self.state.compact {
            return Err(MvccError::Compacted);
        }
        let result = self.compact_tables(rev);
        self.state.poison_on_err(result)
    }

    /// Removes the compacted records now; the index follows when the batch
    /// commits (an earlier compaction of the same batch may have removed some
    /// of them already, which is harmless).
    fn compact_tables(&mut self, rev: i64) -> Result<()> {
        let doomed = read_index(&self.state.index).compactable(rev);
        for r in doomed {
            self.tables.kv.remove(r.to_bytes().as_slice())?;
        }
        self.state.compact = rev;
        self.state.pending_compact = Some(rev);
        Ok(())
    }

    fn meta_table(&mut self) -> Result<&mut Table<'b, Bytes, Bytes>> {
        match &mut self.meta {
            Some(t) => Ok(t),
            slot => Ok(slot.insert(self.tables.txn.open_table(META)?)),
        }
    }

    /// Stores an apply-layer meta entry, atomically with the rest of the batch.
    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.state.check_usable()?;
        let result = self.meta_table().and_then(|t| {
            t.insert(key.as_bytes(), value)?;
            Ok(())
        });
        self.state.poison_on_err(result)
    }

    /// Removes an apply-layer meta entry.
    pub fn delete_meta(&mut self, key: &str) -> Result<()> {
        self.state.check_usable()?;
        let result = self.meta_table().and_then(|t| {
            t.remove(key.as_bytes())?;
            Ok(())
        });
        self.state.poison_on_err(result)
    }

    /// Reads an apply-layer meta entry (seeing this batch's writes).
    pub fn meta(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        let table = self.meta_table()?;
        let value = table.get(key.as_bytes())?.map(|g| g.value().to_vec());
        Ok(value)
    }
}

impl<'w, 't> RevTxn<'w, 't> {
    fn new(tables: TablesRef<'w, 't>, state: &'w mut BatchState) -> Self {
        let begin = state.current;
        RevTxn {
            state,
            tables,
            begin,
            changes: 0,
            events: Vec::new(),
        }
    }

    fn view(&self) -> Result<View<'_, Table<'t, Bytes, Bytes>>> {
        Ok(View {
            kv: &self.tables.kv,
            index: &self.state.index,
            epoch: None,
            current: self.revision(),
            compact: self.state.compact,
        })
    }

    /// The revision reads in this transaction see: the previous revision until
    /// the first change, then the revision this transaction writes.
    pub fn revision(&self) -> i64 {
        if self.changes > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }

    /// A range over everything written so far (see [`ReadView::range`]).
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        self.view()?.range(key, range_end, opts)
    }

    /// Puts `key`, returning its previous key-value. `ignore_value` keeps the
    /// current value and `ignore_lease` the current lease; both fail with
    /// `KeyNotFound` when the key does not exist.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        ignore_value: bool,
        ignore_lease: bool,
    ) -> Result<Option<KeyValue>> {
        self.put_with(key, value, lease, ignore_value, ignore_lease, true)
    }

    /// [`RevTxn::put`] without copying out the previous key-value (its event
    /// still carries it).
    pub fn put_without_prev(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        ignore_value: bool,
        ignore_lease: bool,
    ) -> Result<()> {
        self.put_with(key, value, lease, ignore_value, ignore_lease, false)
            .map(|_| ())
    }

    fn put_with(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        ignore_value: bool,
        ignore_lease: bool,
        return_prev: bool,
    ) -> Result<Option<KeyValue>> {
        let prev = self.guard(|t| t.view()?.latest(key))?;
        if (ignore_value || ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        self.guard(|t| {
            let rev = t.next_revision();
            let kv = KeyValue {
                key: key.to_vec(),
                create_revision: prev.as_ref().map_or(rev.main, |p| p.create_revision),
                mod_revision: rev.main,
                version: prev.as_ref().map_or(1, |p| p.version + 1),
                value: match (&prev, ignore_value) {
                    (Some(p), true) => p.value.clone(),
                    _ => value.to_vec(),
                },
                lease: match (&prev, ignore_lease) {
                    (Some(p), true) => p.lease,
                    _ => lease,
                },
            };
            let rev_bytes = rev.to_bytes();
            let mut buf = Vec::new();
            encode_record_into(&mut buf, false, &kv);
            t.tables.kv.insert(rev_bytes.as_slice(), buf.as_slice())?;
            write_index(&t.state.index).record(key, rev, false);
            let returned = if return_prev { prev.clone() } else { None };
            t.events.push(Event {
                kind: EventKind::Put,
                kv,
                prev_kv: prev,
            });
            Ok(returned)
        })
    }

    /// Deletes every existing key in the range, returning their key-values
    /// before the delete, in key order. Deleting nothing changes nothing.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>> {
        let mut deleted = Vec::new();
        self.delete_range_with(key, range_end, Some(&mut deleted))?;
        Ok(deleted)
    }

    /// [`RevTxn::delete_range`] returning only how many keys it deleted,
    /// without copying out their key-values (their events still carry them).
    pub fn delete_range_count(&mut self, key: &[u8], range_end: &[u8]) -> Result<usize> {
        self.delete_range_with(key, range_end, None)
    }

    /// Reads the live keys of the range from the index and their current
    /// records, then writes a tombstone per key.
    fn delete_range_with(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        mut deleted: Option<&mut Vec<KeyValue>>,
    ) -> Result<usize> {
        let range = KeyRange::new(key, range_end);
        if range.is_empty() {
            return Ok(0);
        }
        self.guard(|t| {
            let mut keys = Vec::new();
            let mut targets = Vec::new();
            read_index(&t.state.index).for_each_live(&range, t.revision(), |k, r| {
                keys.push(k.to_vec());
                targets.push(r);
                true
            });
            if keys.is_empty() {
                return Ok(0);
            }
            let prevs = t.view()?.records_at(&targets)?;
            drop(targets);
            let count = keys.len();
            if let Some(out) = deleted.as_deref_mut() {
                out.reserve(count);
            }
            t.events.reserve(count);
            let mut record = Vec::new();
            let mut tombstones = Vec::with_capacity(count);
            for (key, prev) in keys.into_iter().zip(prevs) {
                if prev.tombstone || prev.kv.key != key {
                    return Err(MvccError::corrupt(
                        "key index points at another key's record",
                    ));
                }
                let rev = t.next_revision();
                let tomb = KeyValue::tombstone(key, rev.main);
                encode_record_into(&mut record, true, &tomb);
                t.tables
                    .kv
                    .insert(rev.to_bytes().as_slice(), record.as_slice())?;
                tombstones.push(rev);
                if let Some(out) = deleted.as_deref_mut() {
                    out.push(prev.kv.clone());
                }
                t.events.push(Event {
                    kind: EventKind::Delete,
                    kv: tomb,
                    prev_kv: Some(prev.kv),
                });
            }
            let mut index = write_index(&t.state.index);
            let first = t.events.len() - count;
            for (event, rev) in t.events[first..].iter().zip(tombstones) {
                index.record(&event.kv.key, rev, true);
            }
            Ok(count)
        })
    }

    /// Allocates the next sub-revision; the first one also moves the current
    /// revision forward (stored when the batch commits).
    fn next_revision(&mut self) -> Revision {
        let main = self.begin + 1;
        if self.changes == 0 {
            self.state.current = main;
        }
        let rev = Revision::new(main, self.changes);
        self.changes += 1;
        rev
    }

    /// Runs `f`, poisoning the batch if it fails with a storage-level error.
    fn guard<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.state.check_usable()?;
        let result = f(self);
        if let Err(MvccError::Storage(_) | MvccError::Corrupt(_)) = &result {
            self.state.poisoned = true;
        }
        result
    }

    /// Ends the transaction: its revision (unchanged if it changed nothing) and
    /// the events of its changes, in order.
    pub fn end(self) -> (i64, Vec<Event>) {
        (self.revision(), self.events)
    }
}

impl ReadView {
    fn view(&self) -> View<'_, ReadOnlyTable<Bytes, Bytes>> {
        View {
            kv: &self.kv,
            index: &self.index,
            epoch: Some(self.epoch),
            current: self.current,
            compact: self.compact,
        }
    }

    /// The revision of this snapshot.
    pub fn current_revision(&self) -> i64 {
        self.current
    }

    /// The compacted revision of this snapshot (-1 if never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact
    }

    /// A range with etcd's semantics: `revision` 0 is the current revision, a
    /// later one is `FutureRevision`, one below the compacted revision is
    /// `Compacted`; `count` counts the keys in the range before filters and
    /// limit; `more` tells the limit cut results.
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        self.view().range(key, range_end, opts)
    }

    /// Events of revisions in `(from_rev, to_rev]` (see `View::events`).
    pub fn events(&self, from_rev: i64, to_rev: i64) -> Result<Vec<Event>> {
        self.view().events(from_rev, to_rev)
    }

    /// CRC-32C over the revisions in `(compact_revision, rev]`; `rev` 0 means
    /// the current revision.
    pub fn hash_kv(&self, rev: i64) -> Result<HashKv> {
        self.view().hash_kv(rev)
    }

    /// CRC-32C over the whole MVCC state (the stored records and revisions;
    /// not `meta`, which holds member-local apply state, nor the index, which
    /// is derived from the records), and the revision it was taken at.
    pub fn hash(&self) -> Result<(u32, i64)> {
        let mut h = Crc32c::new();
        for (name, table) in [("mvcc_kv", &self.kv), ("mvcc_state", &self.state)] {
            h.update(name.as_bytes());
            for entry in table.iter()? {
                let (k, v) = entry?;
                h.update(k.value());
                h.update(v.value());
            }
        }
        Ok((h.sum(), self.current))
    }

    /// Reads an apply-layer meta entry.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key.as_bytes())?.map(|g| g.value().to_vec()))
    }

    /// Number of stored revisions in the `kv` table and in the key index
    /// (tests use it to check that compaction really removes history).
    #[cfg(test)]
    pub(crate) fn stored_revisions(&self) -> Result<(u64, u64)> {
        use redb::ReadableTableMetadata as _;
        let changes = read_index(&self.index).changes() as u64;
        Ok((self.kv.len()?, changes))
    }

    /// The entire store (every table, `meta` included) as bytes for a Raft
    /// snapshot; [`Store::restore`] reads them back.
    pub fn snapshot_bytes(&self) -> Result<Vec<u8>> {
        snapshot::encode(&[&self.kv, &self.state, &self.meta])
    }
}
