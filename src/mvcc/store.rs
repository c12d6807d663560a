//! The MVCC store: one redb file, written in batches, read through snapshots.
//!
//! * [`Store`] owns the redb [`Database`] and caches the committed current and
//!   compacted revisions so `current_revision()` is an atomic load.
//! * [`Batch`] wraps one redb write transaction. The Raft apply layer applies a
//!   batch of committed entries in it and calls [`Batch::commit`] once (one
//!   fsync). A batch that [`Batch::set_durable`] lets wait is not committed
//!   to redb: its transaction stays *pending*, the next batch goes on in it,
//!   and its records go to the [`ReadBuffer`] for readers (see
//!   [`super::buffer`]); [`Store::flush`] or the next durable batch commits
//!   them all at once. Dropping a batch without committing discards it, and
//!   if it changed anything, everything still pending with it.
//! * [`Writer`] is a batch with its tables open: the apply layer takes one per
//!   batch, so the tables are opened (and closed) once per batch rather than
//!   once per request. [`Batch`]'s own `txn`/`compact`/`set_meta` open them per
//!   call, which is handy in tests.
//! * [`RevTxn`] is one etcd revision transaction inside a batch: its reads see
//!   everything written earlier in the batch and in itself; its first change
//!   bumps the main revision by one, and each change gets the next sub-revision.
//! * [`ReadView`] is one redb read transaction and the read buffer: a
//!   consistent snapshot of the last committed batch, durable or not.
//!   [`Store::read_durable`] first commits what is pending, for the scans of
//!   the whole store (`hash`, `snapshot_bytes`), which read redb alone.
//!
//! One writer at a time: a batch, flush, restore or defragment claims the
//! store's writer slot for as long as it runs (the pending transaction is
//! redb's one write transaction, so nothing else may begin one); so does
//! [`Store::db_size_in_use`] when it computes its figure, but only if the
//! slot is free.
//!
//! Tables (all `&[u8] -> &[u8]`): `mvcc_kv` (revision -> record, or a group
//! of one batch's records keyed by the first one's revision: see
//! [`super::entry`]), `mvcc_state`
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
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{
    Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};

use super::buffer::{ReadBuffer, Records};
use super::codec::RecordRef;
use super::error::{MvccError, Result};
use super::hash::Crc32c;
use super::index::{Change, KeyIndex, PutMeta};
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

/// The store's figures, under etcd's metric names, for whoever collects them.
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    /// Observes the duration of batch commits
    /// (`etcd_disk_backend_commit_duration_seconds`).
    pub commit_seconds: Option<prometheus::Histogram>,
    /// Counts what revision transactions do.
    pub ops: Option<OpCounters>,
}

/// etcd's `etcd_mvcc_{range,put,delete,txn}_total`, close to how etcd counts
/// them: every range (a compare or check of a txn included), put and
/// delete-range of a revision transaction, on every member that applies it;
/// and as a txn, every revision transaction that did more than one of those.
/// (etcd runs a txn's compares in a read transaction of their own, counts
/// the ranges behind `prev_kv`, and serves read-only txns on one member: its
/// figures differ a little.) Added when a batch commits.
#[derive(Debug, Clone)]
pub struct OpCounters {
    pub ranges: prometheus::IntCounter,
    pub puts: prometheus::IntCounter,
    pub deletes: prometheus::IntCounter,
    pub txns: prometheus::IntCounter,
}

/// What the revision transactions of one batch did (see [`OpCounters`]).
#[derive(Debug, Default, Clone, Copy)]
struct OpCounts {
    ranges: u64,
    puts: u64,
    deletes: u64,
    txns: u64,
}

impl OpCounters {
    fn add(&self, n: &OpCounts) {
        self.ranges.inc_by(n.ranges);
        self.puts.inc_by(n.puts);
        self.deletes.inc_by(n.deletes);
        self.txns.inc_by(n.txns);
    }
}

/// The MVCC key-value store. `Send + Sync`; share it behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    /// Declared before `db`: a pending transaction ends before the database.
    writer: WriterSlot,
    /// Write-locked only by `defragment` (redb compaction needs `&mut`).
    db: RwLock<Database>,
    path: PathBuf,
    /// The current and compacted revision of the last batch, committed to
    /// redb or pending.
    current: AtomicI64,
    compact: AtomicI64,
    /// The records past the last redb commit, for new read views.
    buffer: RwLock<Arc<ReadBuffer>>,
    /// Set when the store lost applied batches (see [`Store::abandon`]).
    failed: std::sync::OnceLock<()>,
    /// The last computed `db_size_in_use`, and what it was computed from.
    size_in_use: Mutex<Option<SizeInUse>>,
    /// The database file's length as of the last batch, commit,
    /// defragmentation, restore or open (etcd's backend size): writes check
    /// the quota against it without a `stat` each.
    file_size: AtomicU64,
    /// Observes the duration of batch commits (etcd's backend commit metric).
    commit_seconds: Option<prometheus::Histogram>,
    /// Counts what revision transactions do (etcd's `etcd_mvcc_*_total`).
    op_counters: Option<OpCounters>,
    /// Every key's history, in memory (see [`super::index`]).
    index: Arc<RwLock<KeyIndex>>,
}

/// How long a computed [`Store::db_size_in_use`] is served again.
pub const SIZE_IN_USE_MAX_AGE: Duration = Duration::from_secs(30);

/// A computed [`Store::db_size_in_use`]: the figure, when, and the store's
/// compacted revision and file size then. Defragmenting or restoring the
/// store forgets it.
#[derive(Debug)]
struct SizeInUse {
    bytes: u64,
    at: Instant,
    basis: Basis,
}

/// What a computed size in use holds for: the compacted revision and the
/// database file's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Basis {
    compacted: i64,
    file_size: u64,
}

impl SizeInUse {
    /// The figure to serve at `now` for a store at `basis`, if this one
    /// still stands for it: younger than [`SIZE_IN_USE_MAX_AGE`], with no
    /// compaction since and a file no smaller. A file that grew since adds
    /// its growth, capped at its size: redb grows the file only once its free
    /// pages are used up, so the estimate errs high, never low (a script
    /// that defragments when little of the file is in use is not misled).
    fn serve(&self, basis: Basis, now: Instant) -> Option<u64> {
        let fresh = now.saturating_duration_since(self.at) < SIZE_IN_USE_MAX_AGE;
        let stands =
            basis.compacted == self.basis.compacted && basis.file_size >= self.basis.file_size;
        (fresh && stands).then(|| self.estimate(basis))
    }

    /// The best figure for a store at `basis` when none can be computed now
    /// (a batch holds the writer): this one plus the file's growth, or the
    /// file size after a compaction or a shrink. High rather than low.
    fn estimate(&self, basis: Basis) -> u64 {
        match basis.file_size.checked_sub(self.basis.file_size) {
            Some(grown) if basis.compacted == self.basis.compacted => {
                self.bytes.saturating_add(grown).min(basis.file_size)
            }
            _ => basis.file_size,
        }
    }
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
    /// Whether the batch wrote anything (a revision, a compaction, meta).
    dirty: bool,
    /// The records written and not yet in `kv`: [`Batch::commit`] inserts
    /// them (a compaction first, see `compact_tables`), and hands them to
    /// the read buffer should the batch wait. The batch's own reads find
    /// them here meanwhile.
    written: Records,
    /// Whether revision transactions collect the events of their changes
    /// (see [`Batch::set_events`]).
    events: bool,
    /// What the batch's revision transactions did.
    ops: OpCounts,
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

/// The store's single writer, and the write transaction that batches
/// committed without waiting for the disk left pending.
#[derive(Default)]
struct WriterSlot {
    state: Mutex<SlotState>,
    free: Condvar,
}

#[derive(Default)]
struct SlotState {
    /// Whether a [`Claim`] holds the slot.
    claimed: bool,
    pending: Option<WriteTransaction>,
    /// Whether a batch that changed something waits in `pending`.
    published: bool,
    /// The current and compacted revision as last committed to redb.
    durable: (i64, i64),
}

impl std::fmt::Debug for WriterSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("WriterSlot")
            .field("claimed", &state.claimed)
            .field("pending", &state.pending.is_some())
            .field("durable", &state.durable)
            .finish()
    }
}

impl WriterSlot {
    fn new(durable: (i64, i64)) -> WriterSlot {
        WriterSlot {
            state: Mutex::new(SlotState {
                durable,
                ..SlotState::default()
            }),
            free: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Every change under the lock is a single assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no other writer runs, and becomes the writer.
    fn claim(&self) -> Claim<'_> {
        let mut state = self.lock();
        while state.claimed {
            state = self.free.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.claimed = true;
        Claim(self)
    }

    /// Becomes the writer if no other writer runs.
    fn try_claim(&self) -> Option<Claim<'_>> {
        let mut state = self.lock();
        if state.claimed {
            return None;
        }
        state.claimed = true;
        Some(Claim(self))
    }
}

/// The right to write to the store, until dropped.
struct Claim<'s>(&'s WriterSlot);

impl Claim<'_> {
    fn take_pending(&self) -> Option<WriteTransaction> {
        self.0.lock().pending.take()
    }

    /// Leaves `txn` pending for the next writer; `changed`: with a batch
    /// that changed something.
    fn park(&self, txn: WriteTransaction, changed: bool) {
        let mut state = self.0.lock();
        state.pending = Some(txn);
        state.published |= changed;
    }

    fn durable(&self) -> (i64, i64) {
        self.0.lock().durable
    }

    /// Records that redb holds everything: nothing waits.
    fn set_durable(&self, revisions: (i64, i64)) {
        let mut state = self.0.lock();
        state.durable = revisions;
        state.published = false;
    }

    /// Whether batches that changed something waited (and forgets it).
    fn take_published(&self) -> bool {
        std::mem::take(&mut self.0.lock().published)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.lock().claimed = false;
        self.0.free.notify_one();
    }
}

/// One redb write transaction holding any number of revision transactions,
/// compactions and meta writes; durable on [`Batch::commit`] unless
/// [`Batch::set_durable`] said it may wait.
pub struct Batch<'s> {
    store: &'s Store,
    state: BatchState,
    /// Taken when the batch ends.
    txn: Option<WriteTransaction>,
    /// Whether `txn` was pending when the batch began.
    was_pending: bool,
    durable: bool,
    /// Declared last: the batch ends (and undoes what it must) before the
    /// next writer may begin.
    claim: Claim<'s>,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let Some(txn) = self.txn.take() else {
            return; // committed, or failed and undone
        };
        if self.state.dirty || self.state.poisoned {
            drop(txn);
            self.store.abandon(&self.claim);
        } else if self.was_pending {
            self.claim.park(txn, false);
        }
    }
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
    /// Ranges so far (a `Cell`: reads take `&self`), puts and delete-ranges.
    ranges: std::cell::Cell<u64>,
    puts: u64,
    deletes: u64,
}

impl Drop for RevTxn<'_, '_> {
    /// Counts what the transaction did into its batch (see [`OpCounters`]).
    fn drop(&mut self) {
        let ops = &mut self.state.ops;
        let (ranges, puts, deletes) = (self.ranges.get(), self.puts, self.deletes);
        ops.ranges += ranges;
        ops.puts += puts;
        ops.deletes += deletes;
        if ranges + puts + deletes > 1 {
            ops.txns += 1;
        }
    }
}

/// A consistent read snapshot of the last committed batch.
pub struct ReadView {
    kv: ReadOnlyTable<Bytes, Bytes>,
    /// The records past the redb snapshot.
    buffer: Arc<ReadBuffer>,
    index: Arc<RwLock<KeyIndex>>,
    /// The index epoch this snapshot belongs to.
    epoch: u64,
    current: i64,
    compact: i64,
    /// Opened from `txn` the first time apply state is read (see `txn`).
    meta: OnceLock<ReadOnlyTable<Bytes, Bytes>>,
    /// Declared last so the tables are dropped before their transaction. The
    /// `state` and `meta` tables are opened from it when asked for (hashes,
    /// snapshots, apply state), not for every read: opening a table looks it
    /// up in redb's table of tables.
    txn: ReadTransaction,
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
        Self::open_with(
            path,
            &crate::disk::DiskOptions::default(),
            StoreMetrics::default(),
        )
    }

    /// [`Store::open`] with fsyncs skipped as `disk` says, and its figures
    /// recorded in `metrics`.
    pub fn open_with(
        path: impl AsRef<Path>,
        disk: &crate::disk::DiskOptions,
        metrics: StoreMetrics,
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
            writer: WriterSlot::new((current, compact)),
            db: RwLock::new(db),
            path: path.clone(),
            current: AtomicI64::new(current),
            compact: AtomicI64::new(compact),
            buffer: RwLock::new(Arc::new(ReadBuffer::new(current))),
            failed: std::sync::OnceLock::new(),
            size_in_use: Mutex::new(None),
            file_size: AtomicU64::new(std::fs::metadata(&path)?.len()),
            commit_seconds: metrics.commit_seconds,
            op_counters: metrics.ops,
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

    fn buffer(&self) -> Arc<ReadBuffer> {
        Arc::clone(&self.buffer.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sets the revisions of the last batch and the buffer new read views
    /// get. Under the buffer's lock: a view opening meanwhile pairs its redb
    /// snapshot with the old buffer and revisions or with the new ones, and
    /// the new buffer's base is durable in every snapshot opened after it.
    fn publish(&self, buffer: ReadBuffer, current: i64, compact: i64) {
        let mut slot = self.buffer.write().unwrap_or_else(|e| e.into_inner());
        *slot = Arc::new(buffer);
        self.current.store(current, Ordering::SeqCst);
        self.compact.store(compact, Ordering::SeqCst);
    }

    /// Records that redb now holds everything up to `(current, compact)`.
    fn committed(&self, claim: &Claim<'_>, current: i64, compact: i64) {
        self.publish(ReadBuffer::new(current), current, compact);
        claim.set_durable((current, compact));
        self.note_file_size();
    }

    /// Reads the database file's length again (after it may have changed).
    fn note_file_size(&self) {
        if let Ok(m) = std::fs::metadata(&self.path) {
            self.file_size.store(m.len(), Ordering::SeqCst);
        }
    }

    /// Forgets everything since the last redb commit: the pending
    /// transaction is gone (a batch ended without committing, or a commit
    /// failed). The index loses the revisions past the durable one.
    ///
    /// If batches that readers (and the apply layer) already saw went with
    /// it, the store fails for good: it no longer holds what was applied,
    /// and only reopening it (the Raft layer then replays its log from the
    /// durable applied index) makes it whole again. Read views opened before
    /// answer `Compacted` from then on.
    fn abandon(&self, claim: &Claim<'_>) {
        let (current, compact) = claim.durable();
        let lost = claim.take_published();
        if lost {
            // Before the rollback is published: a reader checks this under
            // the buffer's lock (see `read`), so none gets the older state.
            let _ = self.failed.set(());
            tracing::error!(
                durable_revision = current,
                "the MVCC store lost applied batches that were not committed yet; it refuses reads and writes until the member restarts"
            );
        }
        self.publish(ReadBuffer::new(current), current, compact);
        write_index(&self.index).rollback(current, lost);
    }

    /// Fails once [`Store::abandon`] lost applied batches.
    fn check_failed(&self) -> Result<()> {
        match self.failed.get() {
            Some(()) => Err(MvccError::Failed),
            None => Ok(()),
        }
    }

    /// Commits the pending transaction, if any, and waits for the disk.
    fn commit_pending(&self, claim: &Claim<'_>) -> Result<()> {
        let Some(txn) = claim.take_pending() else {
            return Ok(());
        };
        let current = self.current.load(Ordering::SeqCst);
        let compact = self.compact.load(Ordering::SeqCst);
        self.commit_durably(claim, txn, current, compact)
    }

    /// Commits `txn` (everything up to `(current, compact)`), waiting for
    /// the disk; on failure, everything since the last commit is abandoned.
    fn commit_durably(
        &self,
        claim: &Claim<'_>,
        mut txn: WriteTransaction,
        current: i64,
        compact: i64,
    ) -> Result<()> {
        txn.set_durability(Durability::Immediate);
        let start = Instant::now();
        if let Err(e) = txn.commit() {
            self.abandon(claim);
            return Err(e.into());
        }
        if let Some(h) = &self.commit_seconds {
            h.observe(start.elapsed().as_secs_f64());
        }
        self.committed(claim, current, compact);
        Ok(())
    }

    /// Starts a batch: goes on in the pending write transaction, or begins
    /// one (waits while another batch, flush or restore runs).
    pub fn batch(&self) -> Result<Batch<'_>> {
        let claim = self.writer.claim();
        self.check_failed()?;
        let (txn, was_pending) = match claim.take_pending() {
            Some(txn) => (txn, true),
            None => (self.db().begin_write()?, false),
        };
        let state = txn
            .open_table(STATE)
            .map_err(MvccError::from)
            .and_then(|table| read_state(&table));
        let (current, compact) = match state {
            Ok(state) => state,
            Err(e) => {
                drop(txn);
                if was_pending {
                    self.abandon(&claim);
                }
                return Err(e);
            }
        };
        Ok(Batch {
            store: self,
            txn: Some(txn),
            was_pending,
            durable: true,
            state: BatchState {
                current,
                compact,
                stored: (current, compact),
                poisoned: false,
                index: Arc::clone(&self.index),
                pending_compact: None,
                dirty: false,
                written: Records::default(),
                events: true,
                ops: OpCounts::default(),
            },
            claim,
        })
    }

    /// Opens a read snapshot of the last batch, committed to redb or pending.
    pub fn read(&self) -> Result<ReadView> {
        // Under the index lock, so a restore cannot slip between the snapshot
        // and the epoch it is paired with; under the buffer's, so a commit
        // cannot slip between the snapshot and the buffer and revisions (see
        // `publish`). The database lock comes first, as everywhere (a restore
        // holds it while it waits for the index).
        let db = self.db();
        let (txn, epoch, buffer, current, compact) = {
            let index = read_index(&self.index);
            let buffer = self.buffer.read().unwrap_or_else(|e| e.into_inner());
            // Here, not before: a failure marked while this view opens is
            // seen before its rollback can be (see `abandon`).
            self.check_failed()?;
            (
                db.begin_read()?,
                index.epoch(),
                Arc::clone(&buffer),
                self.current.load(Ordering::SeqCst),
                self.compact.load(Ordering::SeqCst),
            )
        };
        drop(db);
        Ok(ReadView {
            kv: txn.open_table(KV)?,
            buffer,
            index: Arc::clone(&self.index),
            epoch,
            current,
            compact,
            meta: OnceLock::new(),
            txn,
        })
    }

    /// Commits whatever is pending (waiting for a running batch to end),
    /// then opens a read snapshot whose redb tables hold everything: what
    /// the scans of the whole store (`hash`, `snapshot_bytes`, `meta`) need.
    pub fn read_durable(&self) -> Result<ReadView> {
        let claim = self.writer.claim();
        self.check_failed()?;
        self.commit_pending(&claim)?;
        let view = self.read();
        drop(claim);
        view
    }

    /// How many keys exist, as of the last batch (pending or committed).
    pub fn live_keys(&self) -> usize {
        read_index(&self.index).live()
    }

    /// Number of keys the in-memory index holds (live or with history).
    #[cfg(test)]
    pub(crate) fn indexed_keys(&self) -> usize {
        read_index(&self.index).len()
    }

    /// Number of records in the read buffer of new read views.
    #[cfg(test)]
    pub(crate) fn buffered_records(&self) -> usize {
        self.buffer().len()
    }

    /// The revision of the last change.
    pub fn current_revision(&self) -> i64 {
        self.current.load(Ordering::SeqCst)
    }

    /// The last compaction revision (-1 if never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact.load(Ordering::SeqCst)
    }

    /// Size of the database file in bytes, as of the last batch (or
    /// commit, defragmentation, restore).
    pub fn db_size(&self) -> u64 {
        self.file_size.load(Ordering::SeqCst)
    }

    /// Estimated bytes in use (allocated pages), from redb's statistics.
    ///
    /// Computing them walks every page of the database, with the writer slot
    /// held (about 0.2 s for a 500 MB file, during which no batch applies).
    /// So a figure is served again for [`SIZE_IN_USE_MAX_AGE`] (plus what
    /// the file grew since), unless a compaction, a defragmentation or a
    /// restore happened since (a store that grows into its free pages shows
    /// it when the figure ages); and while a batch runs, the last figure
    /// with the same growth added (or the file size) is served instead of
    /// waiting.
    pub fn db_size_in_use(&self) -> Result<u64> {
        let basis = Basis {
            compacted: self.compact_revision(),
            file_size: self.db_size(),
        };
        let mut cached = self.size_in_use();
        if let Some(bytes) = cached.as_ref().and_then(|c| c.serve(basis, Instant::now())) {
            return Ok(bytes);
        }
        let Some(claim) = self.writer.try_claim() else {
            return Ok(cached
                .as_ref()
                .map_or(basis.file_size, |last| last.estimate(basis)));
        };
        let stats = match claim.take_pending() {
            Some(txn) => {
                let stats = txn.stats();
                claim.park(txn, false);
                stats?
            }
            None => {
                let txn = self.db().begin_write()?;
                let stats = txn.stats();
                txn.abort()?;
                stats?
            }
        };
        let bytes = stats.allocated_pages() * stats.page_size() as u64;
        *cached = Some(SizeInUse {
            bytes,
            at: Instant::now(),
            basis,
        });
        Ok(bytes)
    }

    /// Makes every batch so far durable: commits the pending transaction, if
    /// any (one fsync).
    pub fn flush(&self) -> Result<()> {
        let claim = self.writer.claim();
        self.check_failed()?;
        self.commit_pending(&claim)
    }

    /// Compacts the database file (etcd's defragment). Fails with `Busy` while a
    /// batch or a read view is open.
    pub fn defragment(&self) -> Result<()> {
        let busy = || MvccError::Busy("defragment needs the store idle".to_string());
        let claim = self.writer.try_claim().ok_or_else(busy)?;
        self.check_failed()?;
        self.commit_pending(&claim)?;
        let mut db = self.db_mut();
        let result = match db.compact() {
            Ok(_) => Ok(()),
            Err(redb::CompactionError::TransactionInProgress) => Err(busy()),
            Err(e) => Err(e.into()),
        };
        self.note_file_size();
        *self.size_in_use() = None;
        result
    }

    fn size_in_use(&self) -> MutexGuard<'_, Option<SizeInUse>> {
        // The figure is replaced whole, or not at all.
        self.size_in_use.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the whole store with the contents of `bytes` (from
    /// [`ReadView::snapshot_bytes`]) in one durable write transaction. The bytes
    /// are fully validated before anything is changed.
    pub fn restore(&self, bytes: &[u8]) -> Result<()> {
        let result = self.replace_with(bytes);
        *self.size_in_use() = None;
        if result.is_err() {
            // The failed transaction may have grown the file.
            self.note_file_size();
        }
        result
    }

    /// [`Store::restore`]'s work.
    fn replace_with(&self, bytes: &[u8]) -> Result<()> {
        let tables = snapshot::decode(bytes)?;
        let claim = self.writer.claim();
        self.check_failed()?;
        self.commit_pending(&claim)?;
        let db = self.db();
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        for def in LEGACY_TABLES {
            txn.delete_table(def)?;
        }
        for (def, entries) in ALL_TABLES.iter().zip(&tables) {
            txn.delete_table(*def)?;
            let mut table = txn.open_table(*def)?;
            if redb::TableHandle::name(def) == redb::TableHandle::name(&KV) {
                // Records go in grouped, as batches write them.
                super::entry::insert_entries(&mut table, entries)?;
                continue;
            }
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
        self.committed(&claim, current, compact);
        drop(index);
        Ok(())
    }
}

impl Batch<'_> {
    /// Starts a revision transaction (opening the data tables for it; a
    /// [`Writer`] opens them once for many).
    pub fn txn(&mut self) -> Result<RevTxn<'_, '_>> {
        self.state.check_usable()?;
        let tables = DataTables::open(live(&self.txn)?)?;
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
            tables: DataTables::open(live(&self.txn)?)?,
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
        let table = self.write_txn()?.open_table(META)?;
        let value = table.get(key.as_bytes())?.map(|g| g.value().to_vec());
        Ok(value)
    }

    /// Chooses whether [`Batch::commit`] commits to redb and waits for the
    /// disk (the default) or not (ignored for a batch that compacts). A batch that waits is visible at once (its
    /// records through the read buffer) and becomes durable with the next
    /// durable batch or [`Store::flush`]; a crash before that loses it, which
    /// the Raft layer tolerates by replaying its log from the last durable
    /// applied index.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// Whether the batch's revision transactions collect the events of their
    /// changes (they do unless told otherwise). Without, [`RevTxn::end`]
    /// returns none, and a put or delete builds no [`KeyValue`] copy: the
    /// apply layer leaves them out when no one listens for events.
    pub fn set_events(&mut self, events: bool) {
        self.state.events = events;
    }

    fn write_txn(&self) -> Result<&WriteTransaction> {
        live(&self.txn)
    }

    /// Inserts the records in `written` into `kv`, grouped (see
    /// [`super::entry`]); `written` keeps them for the read buffer.
    fn write_records(&self) -> Result<()> {
        if self.state.written.is_empty() {
            return Ok(());
        }
        let mut kv = self.write_txn()?.open_table(KV)?;
        super::entry::insert_records(&mut kv, &self.state.written)
    }

    /// Writes the current and compacted revision if the batch changed them.
    fn write_state(&self) -> Result<()> {
        let (current, compact) = self.state.stored;
        if (self.state.current, self.state.compact) == (current, compact) {
            return Ok(());
        }
        let mut table = self.write_txn()?.open_table(STATE)?;
        if self.state.current != current {
            table.insert(CURRENT_KEY, self.state.current.to_be_bytes().as_slice())?;
        }
        if self.state.compact != compact {
            table.insert(COMPACT_KEY, self.state.compact.to_be_bytes().as_slice())?;
        }
        Ok(())
    }

    /// Makes the batch visible to new read views, and durable (one redb
    /// commit, with everything pending before it, and an fsync) unless
    /// [`Batch::set_durable`] said otherwise. A failed commit loses the
    /// batch and everything pending with it (see [`Batch`]'s drop).
    pub fn commit(mut self) -> Result<()> {
        self.state.check_usable()?;
        live(&self.txn)?;
        let result = self.write_records().and_then(|()| self.write_state());
        self.state.poison_on_err(result)?;
        let store = self.store;
        // Counted once the batch is visible (parked or committed).
        let count = |ops: &OpCounts| {
            if let Some(counters) = &store.op_counters {
                counters.add(ops);
            }
        };
        let (current, compact) = (self.state.current, self.state.compact);
        // The compaction reaches the index first: a reader pairing the index
        // with the snapshot from before answers `Compacted` below the new
        // floor, where the other way round it would look for records the
        // compaction removed. (Should the commit fail, the index lacks only
        // revisions below a floor no reader gets past; reopening rebuilds it.)
        if let Some(rev) = self.state.pending_compact {
            write_index(&self.state.index).compact(rev);
        }
        // (The transaction stays in `self` until it is parked or committed:
        // should anything before panic, the drop undoes the batch.)
        //
        // A compaction is always committed: the buffer would still hold the
        // records it removed (and it is rare).
        if !self.durable && self.state.pending_compact.is_none() {
            // (Never a batch that compacted: `compact_tables` took the records
            // it wrote before the compaction out of `written`.)
            // Records first, then the revision that lets readers ask for them.
            store
                .buffer()
                .extend(std::mem::take(&mut self.state.written));
            store.current.store(current, Ordering::SeqCst);
            store.compact.store(compact, Ordering::SeqCst);
            if let Some(txn) = self.txn.take() {
                self.claim.park(txn, self.state.dirty);
            }
            // redb grows the file as a transaction allocates pages, not only
            // as it commits: one look per batch keeps the quota check current.
            store.note_file_size();
            count(&self.state.ops);
            return Ok(());
        }
        match self.txn.take() {
            Some(txn) => {
                store.commit_durably(&self.claim, txn, current, compact)?;
                count(&self.state.ops);
                Ok(())
            }
            None => Err(MvccError::Storage("batch already ended".to_string())),
        }
    }
}

/// A batch's write transaction, unless the batch has ended.
fn live(txn: &Option<WriteTransaction>) -> Result<&WriteTransaction> {
    txn.as_ref()
        .ok_or_else(|| MvccError::Storage("batch already ended".to_string()))
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
        // The batch's own records go in first, so that the compaction finds
        // them. (A batch that compacts is committed, never handed to the read
        // buffer, so `written` is not needed afterwards.)
        let written = std::mem::take(&mut self.state.written);
        super::entry::insert_records(&mut self.tables.kv, &written)?;
        let mut doomed = read_index(&self.state.index).compactable(rev);
        doomed.sort_unstable();
        super::entry::remove_revisions(&mut self.tables.kv, &doomed)?;
        self.state.compact = rev;
        self.state.pending_compact = Some(rev);
        self.state.dirty = true;
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
        self.state.dirty = true;
        let result = self.meta_table().and_then(|t| {
            t.insert(key.as_bytes(), value)?;
            Ok(())
        });
        self.state.poison_on_err(result)
    }

    /// Removes an apply-layer meta entry.
    pub fn delete_meta(&mut self, key: &str) -> Result<()> {
        self.state.check_usable()?;
        self.state.dirty = true;
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
            ranges: std::cell::Cell::new(0),
            puts: 0,
            deletes: 0,
        }
    }

    fn view(&self) -> Result<View<'_, Table<'t, Bytes, Bytes>>> {
        Ok(View {
            kv: &self.tables.kv,
            buffer: None,
            own: Some(&self.state.written),
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

    /// The compacted revision this transaction's reads see.
    pub fn compact_revision(&self) -> i64 {
        self.state.compact
    }

    /// A range over everything written so far (see [`ReadView::range`]).
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        self.ranges.set(self.ranges.get() + 1);
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

    /// [`RevTxn::put`] without the previous key-value: the key index alone
    /// gives what the new one carries on from it, so its record is not read
    /// (unless `ignore_value` keeps its value), and the put's event carries no
    /// `prev_kv` ([`ReadView::load_prev_kvs`] reads it for a watcher that
    /// asks).
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
        self.puts += 1;
        // The index knows what the new key-value carries on from the old one
        // (`record_put`); the old record is read only when the caller wants
        // it back or keeps its value, and the key looked up first only when
        // it must exist.
        let mut prev = None;
        if return_prev || ignore_value || ignore_lease {
            let (exists, record) = self.guard(|t| {
                let view = t.view()?;
                let prev_put = view.latest_put(key)?;
                let record = match prev_put {
                    Some(c) if return_prev || ignore_value => Some(view.record_at(c.rev)?.kv),
                    _ => None,
                };
                Ok((prev_put.is_some(), record))
            })?;
            if (ignore_value || ignore_lease) && !exists {
                return Err(MvccError::KeyNotFound);
            }
            prev = record;
        }
        self.guard(|t| {
            let rev = t.next_revision();
            let lease = (!ignore_lease).then_some(lease);
            let meta = write_index(&t.state.index).record_put(key, rev, lease);
            // (`ignore_value` found the key, so `prev` holds its value.)
            let kept = match (&prev, ignore_value) {
                (Some(p), true) => Some(p.value.clone()),
                _ => None,
            };
            let value = kept.as_deref().unwrap_or(value);
            let returned = if return_prev { prev.clone() } else { None };
            t.write_put(key, value, rev, meta, prev);
            Ok(returned)
        })
    }

    /// Writes the record of a put already in the index, and its event if
    /// the batch collects them.
    ///
    /// The record is encoded once, into the batch's [`Records`]; the batch
    /// inserts it into redb with the others when it ends.
    fn write_put(
        &mut self,
        key: &[u8],
        value: &[u8],
        rev: Revision,
        meta: PutMeta,
        prev_kv: Option<KeyValue>,
    ) {
        let record = RecordRef {
            key,
            value,
            create_revision: meta.create_revision,
            mod_revision: rev.main,
            version: meta.version,
            lease: meta.lease,
        };
        self.state.written.push(rev, false, &record);
        if self.state.events {
            self.events.push(Event {
                kind: EventKind::Put,
                kv: record.to_kv(),
                prev_kv,
            });
        }
    }

    /// Deletes every existing key in the range, returning their key-values
    /// before the delete, in key order. Deleting nothing changes nothing.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>> {
        let mut deleted = Vec::new();
        self.delete_range_with(key, range_end, Some(&mut deleted))?;
        Ok(deleted)
    }

    /// [`RevTxn::delete_range`] returning only how many keys it deleted,
    /// without copying out their key-values (their events still carry them,
    /// if the batch collects events).
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
        self.deletes += 1;
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
            // Each tombstone's revision and the key-value it deleted.
            let mut tombstones = Vec::with_capacity(count);
            for (key, prev) in keys.iter().zip(prevs) {
                if prev.tombstone || prev.kv.key != *key {
                    return Err(MvccError::corrupt(
                        "key index points at another key's record",
                    ));
                }
                let rev = t.next_revision();
                let tomb = RecordRef::tombstone(key, rev.main);
                t.state.written.push(rev, true, &tomb);
                if let Some(out) = deleted.as_deref_mut() {
                    out.push(prev.kv.clone());
                }
                tombstones.push((rev, prev.kv));
            }
            let mut index = write_index(&t.state.index);
            for (key, (rev, _)) in keys.iter().zip(&tombstones) {
                index.record(key, Change::delete(*rev));
            }
            drop(index);
            if t.state.events {
                let events = keys
                    .into_iter()
                    .zip(tombstones)
                    .map(|(key, (rev, prev))| Event {
                        kind: EventKind::Delete,
                        kv: KeyValue::tombstone(key, rev.main),
                        prev_kv: Some(prev),
                    });
                t.events.extend(events);
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
            self.state.dirty = true;
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
    /// the events of its changes, in order (none if the batch does not
    /// collect events, see [`Batch::set_events`]).
    pub fn end(mut self) -> (i64, Vec<Event>) {
        (self.revision(), std::mem::take(&mut self.events))
    }
}

impl ReadView {
    fn view(&self) -> View<'_, ReadOnlyTable<Bytes, Bytes>> {
        View {
            kv: &self.kv,
            buffer: Some(&self.buffer),
            own: None,
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

    /// Fills in the `prev_kv` of put events applied without it (see
    /// `View::load_prev_kvs`); the events must be at or below this
    /// snapshot's revision.
    pub fn load_prev_kvs(&self, events: &mut [Event]) -> Result<()> {
        self.view().load_prev_kvs(events)
    }

    /// CRC-32C over the revisions in `(compact_revision, rev]`; `rev` 0 means
    /// the current revision.
    pub fn hash_kv(&self, rev: i64) -> Result<HashKv> {
        self.view().hash_kv(rev)
    }

    /// CRC-32C over the whole MVCC state (the stored records and revisions;
    /// not `meta`, which holds member-local apply state, nor the index, which
    /// is derived from the records), and the revision it was taken at. Reads
    /// the redb tables alone: open the view with [`Store::read_durable`] for
    /// batches that waited to be included.
    pub fn hash(&self) -> Result<(u32, i64)> {
        let mut h = Crc32c::new();
        let state = self.txn.open_table(STATE)?;
        // Record by record, as if each were an entry of its own: members
        // group the same records differently (each groups what one of its
        // batches wrote), and the hash is of the records.
        h.update(b"mvcc_kv");
        super::entry::for_each_stored(&self.kv, |rev, record| {
            h.update(&rev.to_bytes());
            h.update(record);
            Ok(())
        })?;
        h.update(b"mvcc_state");
        for entry in state.iter()? {
            let (k, v) = entry?;
            h.update(k.value());
            h.update(v.value());
        }
        Ok((h.sum(), read_state(&state)?.0))
    }

    /// Reads an apply-layer meta entry, as last committed to redb.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let value = self.meta_table()?.get(key.as_bytes())?;
        Ok(value.map(|g| g.value().to_vec()))
    }

    /// The `meta` table, opened once per view.
    fn meta_table(&self) -> Result<&ReadOnlyTable<Bytes, Bytes>> {
        if let Some(table) = self.meta.get() {
            return Ok(table);
        }
        let table = self.txn.open_table(META)?;
        Ok(self.meta.get_or_init(|| table))
    }

    /// Number of stored revisions in the `kv` table and in the key index
    /// (tests use it to check that compaction really removes history).
    #[cfg(test)]
    pub(crate) fn stored_revisions(&self) -> Result<(u64, u64)> {
        let changes = read_index(&self.index).changes() as u64;
        Ok((super::entry::count(&self.kv)?, changes))
    }

    /// Number of entries in the `kv` table (a batch's records share one).
    #[cfg(test)]
    pub(crate) fn stored_entries(&self) -> Result<u64> {
        use redb::ReadableTableMetadata as _;
        Ok(self.kv.len()?)
    }

    /// The entire store (every table, `meta` included) as bytes for a Raft
    /// snapshot; [`Store::restore`] reads them back. The tables as last
    /// committed to redb, consistent with each other (see [`ReadView::hash`]).
    pub fn snapshot_bytes(&self) -> Result<Vec<u8>> {
        let state = self.txn.open_table(STATE)?;
        snapshot::encode(&[&self.kv, &state, self.meta_table()?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_in_use_is_served_again_with_the_files_growth_until_it_ages_or_the_store_compacts() {
        let at = Instant::now();
        let basis = Basis {
            compacted: 7,
            file_size: 1 << 20,
        };
        let last = SizeInUse {
            bytes: 4096,
            at,
            basis,
        };
        assert_eq!(last.serve(basis, at), Some(4096));
        assert_eq!(last.serve(basis, at + SIZE_IN_USE_MAX_AGE / 2), Some(4096));
        assert_eq!(last.serve(basis, at + SIZE_IN_USE_MAX_AGE), None, "aged");
        let compacted = Basis {
            compacted: 8,
            ..basis
        };
        assert_eq!(last.serve(compacted, at), None, "compacted since");
        let grown = Basis {
            file_size: (1 << 20) + 8192,
            ..basis
        };
        assert_eq!(
            last.serve(grown, at),
            Some(4096 + 8192),
            "the growth counts"
        );
        let full = SizeInUse {
            bytes: 1 << 20,
            at,
            basis,
        };
        assert_eq!(
            full.serve(grown, at),
            Some(grown.file_size),
            "never past the file"
        );
        let shrunk = Basis {
            file_size: 1 << 19,
            ..basis
        };
        assert_eq!(last.serve(shrunk, at), None, "the file shrank");
        // While a batch holds the writer, an aged figure is estimated the
        // same way, or is the file size after a compaction.
        assert_eq!(last.estimate(grown), 4096 + 8192);
        assert_eq!(last.estimate(compacted), compacted.file_size);
    }
}
