//! How a member's redb files meet the disk: the MVCC store (`kv.redb`), and a
//! Raft log of the old format (`raft.redb`, read once to be moved into
//! `crate::raft::wal`), are opened through [`open`], which wraps redb's file
//! backend so that every fsync can be timed and, under `--unsafe-no-fsync`,
//! skipped.
//!
//! Skipping fsync keeps redb's commit protocol intact (writes, their order and
//! the commit slots are unchanged); only the wait for the disk goes. A process
//! crash loses nothing, since the page cache survives it; a machine crash or
//! power loss may lose acknowledged writes or corrupt the files. That is the
//! trade etcd's `--unsafe-no-fsync` makes, for test suites only.
//!
//! Integrity: [`open`] refuses a damaged file with [`DataFileError::Corrupt`]
//! instead of serving from it:
//! 1. Before redb sees the file, [`probe`] checks the header fields that redb
//!    trusts without a checksum (magic number, flags, page and region
//!    geometry, the allocator page) and the file's length against them; redb
//!    would assert, or allocate without bound, on a bad one. The primary
//!    commit slot must match its checksum (XXH3-128, as redb computes it):
//!    redb only checks it when recovering.
//! 2. The header is then marked "recovery required" (as redb marks every file
//!    it has open), so redb never reads its allocator state from an unchecked
//!    page.
//! 3. redb's `check_integrity` verifies the checksum of every reachable page
//!    (each branch page holds its children's checksums, the commit slot the
//!    root's), so a flipped byte anywhere in live keys, values or tree
//!    structure is found at start.
//!
//! Should redb still assert on a damaged file, [`open`] catches the panic and
//! reports the file as corrupt; [`quiet_caught_panics`] keeps such a panic
//! from also printing a backtrace under that one-line error.
//!
//! When only the last commit fails its checksums (what a power loss during a
//! commit leaves, or damage to exactly those pages), redb rolls the file back
//! to the commit before. For the store that is logged and accepted: the Raft
//! log replays what it lost, and `crate::member` checks that it can.
//!
//! Cost: one read of each file at start (see README, Reliability).

use std::cell::Cell;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use redb::backends::FileBackend;
use redb::{Database, DatabaseError, StorageBackend, StorageError};

/// What an operator should do about a corrupt data file.
pub const RECOVERY_HINT: &str =
    "restore from a snapshot or remove the member's data dir and re-add it";

/// Why a data file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataFileError {
    /// The file is damaged (truncated, or bytes changed behind redb's back).
    #[error("data file {} is corrupt: {detail}; {RECOVERY_HINT}", .path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// The file cannot be read or written (permissions, disk, in use).
    #[error("data file {}: {detail}", .path.display())]
    Io { path: PathBuf, detail: String },
}

impl DataFileError {
    /// A [`DataFileError::Corrupt`] for `path`.
    pub fn corrupt(path: &Path, detail: impl Into<String>) -> Self {
        DataFileError::Corrupt {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        DataFileError::Io {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    }

    /// Whether the file itself is damaged.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, DataFileError::Corrupt { .. })
    }
}

/// What a data file looked like before it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// No file: a new member.
    Missing,
    /// A file of 0 bytes: created but never written (a crash at the very
    /// first start), or truncated to nothing.
    Empty,
    /// A file with a sound redb header, as long as the header says.
    Present,
}

// redb's file header (stable within file format 2 and 3, see redb's
// `header.rs`): magic number, god byte, padding, then little-endian u32s.
const MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
const GOD_BYTE_AT: usize = 9;
/// Primary slot, recovery required, two-phase commit.
const GOD_BYTE_FLAGS: u8 = 0b111;
/// The god byte's flags: which commit slot is the primary, and whether the
/// file was left open (redb then recovers it).
const PRIMARY_SLOT: u8 = 0b001;
const RECOVERY_REQUIRED: u8 = 0b010;
/// The two commit slots follow the 64-byte header.
const SLOTS_AT: usize = 64;
const SLOT_LEN: usize = 128;
const PAGE_SIZE_AT: usize = 12;
const REGION_HEADER_PAGES_AT: usize = 16;
const REGION_MAX_DATA_PAGES_AT: usize = 20;
const FULL_REGIONS_AT: usize = 24;
const TRAILING_REGION_PAGES_AT: usize = 28;
const REGION_TRACKER_AT: usize = 32;
/// Where the header's unused bytes (always zero) start and end.
const UNUSED: std::ops::Range<usize> = 40..64;
/// The page size redb uses by default, which is what we create files with.
const PAGE_SIZE: u64 = 4096;
/// The region geometry redb derives from its default page and region sizes.
const REGION_HEADER_PAGES: u64 = 130;
const REGION_MAX_DATA_PAGES: u64 = 1 << 20;
/// Header plus the two commit slots.
const HEADER_LEN: usize = SLOTS_AT + 2 * SLOT_LEN;

/// Looks at the file at `path` before it is opened: whether it exists, and if
/// it holds anything, whether its header is sound and the file as long as the
/// header says (a truncated file is reported as corrupt).
pub fn probe(path: &Path) -> Result<FileState, DataFileError> {
    Ok(inspect(path)?.0)
}

/// What the header says about the commit redb will open.
#[derive(Debug, Clone, Copy)]
struct Commit {
    /// The file was not closed cleanly: redb will recover it.
    recovery_required: bool,
    /// The primary commit slot's checksum holds.
    primary_valid: bool,
}

/// [`probe`], and the state of the commit slots of a present file.
fn inspect(path: &Path) -> Result<(FileState, Option<Commit>), DataFileError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((FileState::Missing, None)),
        Err(e) => return Err(DataFileError::io(path, e)),
    };
    let len = file
        .metadata()
        .map_err(|e| DataFileError::io(path, e))?
        .len();
    if len == 0 {
        return Ok((FileState::Empty, None));
    }
    let mut header = [0u8; HEADER_LEN];
    if len < PAGE_SIZE {
        return Err(DataFileError::corrupt(
            path,
            format!("truncated: {len} bytes, shorter than its {PAGE_SIZE}-byte header page"),
        ));
    }
    file.read_exact(&mut header)
        .map_err(|e| DataFileError::io(path, e))?;
    let expected = expected_len(&header).map_err(|detail| DataFileError::corrupt(path, detail))?;
    if len < expected {
        return Err(DataFileError::corrupt(
            path,
            format!("truncated: {len} bytes, but its header describes {expected} bytes"),
        ));
    }
    let god = header[GOD_BYTE_AT];
    let primary = usize::from(god & PRIMARY_SLOT);
    let commit = Commit {
        recovery_required: god & RECOVERY_REQUIRED != 0,
        primary_valid: slot_valid(&header, primary),
    };
    // A file closed cleanly is exactly as long as its header says (only a
    // crash while the file grows leaves it longer, and redb then recovers).
    if !commit.recovery_required && len != expected {
        return Err(DataFileError::corrupt(
            path,
            format!("{len} bytes, but its header describes {expected} bytes"),
        ));
    }
    Ok((FileState::Present, Some(commit)))
}

/// Whether commit slot `slot` (0 or 1) matches its checksum: XXH3-128 (seed
/// 0) of the slot before the checksum, stored little-endian at its end.
fn slot_valid(header: &[u8; HEADER_LEN], slot: usize) -> bool {
    let start = SLOTS_AT + slot * SLOT_LEN;
    let body = &header[start..start + SLOT_LEN - 16];
    let mut stored = [0u8; 16];
    stored.copy_from_slice(&header[start + SLOT_LEN - 16..start + SLOT_LEN]);
    xxhash_rust::xxh3::xxh3_128_with_seed(body, 0) == u128::from_le_bytes(stored)
}

/// The file length that a redb header describes, or what is wrong with it.
///
/// These fields are not covered by redb's checksums, and redb trusts them:
/// a wrong one makes it assert, or allocate without bound.
fn expected_len(header: &[u8; HEADER_LEN]) -> Result<u64, String> {
    if header[..MAGIC.len()] != MAGIC {
        return Err("not a redb file (bad magic number)".into());
    }
    if header[GOD_BYTE_AT] & !GOD_BYTE_FLAGS != 0
        || header[GOD_BYTE_AT + 1..PAGE_SIZE_AT] != [0, 0]
        || header[UNUSED].iter().any(|&b| b != 0)
    {
        return Err("bad header: unknown flags or non-zero padding".into());
    }
    let u32_at = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&header[at..at + 4]);
        u64::from(u32::from_le_bytes(b))
    };
    let page_size = u32_at(PAGE_SIZE_AT);
    let region_header_pages = u32_at(REGION_HEADER_PAGES_AT);
    let region_max_data_pages = u32_at(REGION_MAX_DATA_PAGES_AT);
    if (page_size, region_header_pages, region_max_data_pages)
        != (PAGE_SIZE, REGION_HEADER_PAGES, REGION_MAX_DATA_PAGES)
    {
        return Err(format!(
            "bad header: page size {page_size}, region of {region_header_pages} + \
             {region_max_data_pages} pages; expected {PAGE_SIZE}, \
             {REGION_HEADER_PAGES} + {REGION_MAX_DATA_PAGES}"
        ));
    }
    let full_regions = u32_at(FULL_REGIONS_AT);
    let trailing = u32_at(TRAILING_REGION_PAGES_AT);
    if trailing >= region_max_data_pages || (full_regions == 0 && trailing == 0) {
        return Err(format!(
            "bad header: {full_regions} full regions and a trailing region of {trailing} pages"
        ));
    }
    let region_len = (region_header_pages + region_max_data_pages) * page_size;
    let trailing_len = if trailing > 0 {
        (region_header_pages + trailing) * page_size
    } else {
        0
    };
    let len = page_size + full_regions * region_len + trailing_len;

    // The page holding the allocator state (redb's `PageNumber` encoding:
    // order in the top 5 bits, region in bits 20..40, index below).
    let mut b = [0u8; 8];
    b.copy_from_slice(&header[REGION_TRACKER_AT..REGION_TRACKER_AT + 8]);
    let tracker = u64::from_le_bytes(b);
    let order = tracker >> 59;
    let region = (tracker >> 20) & 0xF_FFFF;
    let index = tracker & (0xF_FFFF >> order.min(20));
    let page_len = page_size << order.min(20);
    let start =
        page_size + region * region_len + region_header_pages * page_size + index * page_len;
    if order > 20 || start + page_len > len {
        return Err(format!(
            "bad header: allocator state page {tracker:#x} lies outside the file"
        ));
    }
    Ok(len)
}

/// How a database file is synced, and what damage it may be repaired from.
#[derive(Debug, Clone, Default)]
pub struct DiskOptions {
    /// `--unsafe-no-fsync`: never wait for the disk.
    pub no_fsync: bool,
    /// Observes the duration of every fsync, in seconds.
    pub fsync_seconds: Option<prometheus::Histogram>,
}

/// Opens (creating if needed) the redb database at `path` with `options`, and
/// verifies it: a damaged file gives [`DataFileError::Corrupt`] (see the
/// module docs).
pub fn open(path: &Path, options: &DiskOptions) -> Result<Database, DataFileError> {
    if let (_, Some(commit)) = inspect(path)? {
        if !commit.primary_valid {
            // redb trusts the primary slot of a cleanly closed file unchecked
            // (a flipped bit there can make the whole store look empty); when
            // recovering, it falls back to the previous commit.
            if !commit.recovery_required {
                return Err(DataFileError::corrupt(
                    path,
                    "its commit slot fails its checksum",
                ));
            }
        }
        require_recovery(path)?;
    }
    // The header checks above keep redb's assertions from firing on a damaged
    // file; this is the last line of defence should one still fire.
    catching_panics(|| open_and_verify(path, options)).unwrap_or_else(|what| {
        Err(DataFileError::corrupt(
            path,
            format!("redb cannot read it ({what})"),
        ))
    })
}

thread_local! {
    /// Set while [`catching_panics`] runs on this thread.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// Where the panic [`catching_panics`] caught was raised, as the quiet
    /// hook saw it (so that a bug of ours is not mistaken for damage).
    static CAUGHT_AT: Cell<Option<(String, u32)>> = const { Cell::new(None) };
}

/// Runs `f`, turning a panic into `Err(its message)`. redb asserts on some
/// damaged files (it reads a file closed cleanly without checking its
/// allocator state), and a damaged file is an error to report, not a bug.
/// Under [`quiet_caught_panics`] such a panic prints nothing: [`open`]'s
/// error says it all, with the panic's message.
fn catching_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = CATCHING.with(|c| c.replace(true));
    CAUGHT_AT.with(Cell::take);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result.map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        match CAUGHT_AT.with(Cell::take) {
            Some((file, line)) => format!("{what}, at {}:{line}", short_source(&file)),
            None => what,
        }
    })
}

/// A source path from its crate's directory on (`redb-2.6.4/src/db.rs`).
fn short_source(file: &str) -> &str {
    match file.rfind("/src/") {
        Some(src) => &file[file[..src].rfind('/').map_or(0, |i| i + 1)..],
        None => file,
    }
}

/// Wraps the process's panic hook so that a panic [`open`] catches (redb
/// asserting on a damaged file) is logged at debug level instead of printed
/// with a backtrace under the one-line error that reports it. Every other
/// panic goes to the hook as before. The binary installs it at start; a
/// program embedding members may too.
pub fn quiet_caught_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if CATCHING.with(Cell::get) {
            let at = info.location().map(|l| (l.file().to_owned(), l.line()));
            CAUGHT_AT.with(|caught| caught.set(at));
            tracing::debug!(%info, "redb panicked reading a data file; reported as corrupt");
        } else {
            previous(info);
        }
    }));
}

/// Sets the header's "recovery required" flag (as redb itself does while a
/// file is open), so that redb rebuilds its allocator state from the
/// checksummed trees, or loads it from a checksummed table, instead of
/// reading it from the page named by an unchecked header field of a file
/// closed cleanly. A crash right after this only means a recovery.
fn require_recovery(path: &Path) -> Result<(), DataFileError> {
    use std::os::unix::fs::FileExt as _;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| DataFileError::io(path, e))?;
    let mut god = [0u8; 1];
    file.read_exact_at(&mut god, GOD_BYTE_AT as u64)
        .map_err(|e| DataFileError::io(path, e))?;
    if god[0] & RECOVERY_REQUIRED == 0 {
        file.write_all_at(&[god[0] | RECOVERY_REQUIRED], GOD_BYTE_AT as u64)
            .map_err(|e| DataFileError::io(path, e))?;
    }
    Ok(())
}

fn open_and_verify(path: &Path, options: &DiskOptions) -> Result<Database, DataFileError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| DataFileError::io(path, e))?;
    let backend = Backend {
        file: FileBackend::new(file).map_err(|e| classify(path, e))?,
        no_fsync: options.no_fsync,
        fsync_seconds: options.fsync_seconds.clone(),
    };
    // redb repairs a file that was not closed cleanly; its second pass (at
    // progress 0.3) runs only when the last commit failed its checksums and
    // is about to be rolled back to the one before.
    let rolled_back = Arc::new(AtomicBool::new(false));
    let flag = rolled_back.clone();
    let mut db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .set_repair_callback(move |session| {
            if session.progress() > 0.0 && session.progress() < 0.5 {
                flag.store(true, Ordering::SeqCst);
            }
        })
        .create_with_backend(backend)
        .map_err(|e| classify(path, e))?;
    // A file closed cleanly was opened without reading its pages: verify
    // them all now. Its last commit used redb's two-phase commit, so damage
    // is an error here, not a roll-back.
    let clean = db.check_integrity().map_err(|e| classify(path, e))?;
    if rolled_back.load(Ordering::SeqCst) || !clean {
        tracing::warn!(
            file = %path.display(),
            "data file failed its checksums and was repaired (rolled back to its previous commit)"
        );
    }
    Ok(db)
}

/// Bytes of pages redb keeps in its own cache (its default is 1 GiB). Pages
/// past it are read from the file, so from the kernel's page cache, which the
/// members share and the kernel reclaims under pressure; the cache mostly
/// spares a hot page its copy out of the page cache. 64 MiB holds the
/// branches and the recent leaves of a store of millions of keys, and keeps a
/// member's memory from growing with the data it writes (redb also caches
/// every page it writes). redb gives a tenth of it (6.4 MiB) to the write
/// buffer of a transaction: a larger batch writes its pages out early and
/// reads them back, which costs time, not correctness.
const CACHE_BYTES: usize = 64 << 20;

/// Sorts a redb error into damage and trouble with the disk.
fn classify(path: &Path, e: impl Into<DatabaseError>) -> DataFileError {
    match e.into() {
        DatabaseError::Storage(StorageError::Io(io))
            if io.kind() != io::ErrorKind::UnexpectedEof =>
        {
            DataFileError::io(path, io)
        }
        DatabaseError::DatabaseAlreadyOpen => DataFileError::io(path, "in use by another process"),
        other => DataFileError::corrupt(path, format!("integrity check failed: {other}")),
    }
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
    use redb::{ReadableTableMetadata, TableDefinition};

    #[test]
    fn a_panic_caught_while_opening_prints_nothing_and_every_other_panic_still_does() {
        // Count what reaches the hook beneath ours, on this thread only:
        // tests run in parallel and the hook is the process's.
        thread_local! { static SEEN: Cell<usize> = const { Cell::new(0) }; }
        const OTHER: &str = "a panic outside open (deliberate, in a test)";
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            SEEN.with(|s| s.set(s.get() + 1));
            if info.payload().downcast_ref::<&str>() != Some(&OTHER) {
                default(info);
            }
        }));
        quiet_caught_panics();

        let caught = catching_panics(|| -> u32 { panic!("assertion on a damaged page") });
        let caught = caught.unwrap_err();
        // Where it was raised is kept: a bug of ours must not pass for damage.
        assert!(
            caught.starts_with("assertion on a damaged page, at src/disk.rs:"),
            "{caught}"
        );
        assert_eq!(SEEN.with(Cell::get), 0, "the caught panic reached the hook");
        assert_eq!(catching_panics(|| 7), Ok(7));

        assert_eq!(
            short_source("/root/.cargo/registry/src/index.crates.io-1/redb-2.6.4/src/db.rs"),
            "redb-2.6.4/src/db.rs"
        );

        assert!(std::panic::catch_unwind(|| std::panic::panic_any(OTHER)).is_err());
        assert_eq!(SEEN.with(Cell::get), 1, "another panic was silenced");
    }

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

    const V: TableDefinition<u64, &[u8]> = TableDefinition::new("v");
    const OTHER: TableDefinition<u64, u64> = TableDefinition::new("other");

    fn value(i: u64) -> Vec<u8> {
        format!("value-{i:04}-{}", "x".repeat(40)).into_bytes()
    }

    /// A closed database with 200 values written in one commit and a later
    /// commit elsewhere, so the values' pages belong to both commit slots.
    fn sample(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = dir.join("sample.redb");
        {
            let db = open(&path, &DiskOptions::default()).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(V).unwrap();
                for i in 0..200 {
                    t.insert(i, value(i).as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
            write_one(&db, 1);
            let tx = db.begin_write().unwrap();
            tx.open_table(OTHER).unwrap().insert(1, 1).unwrap();
            tx.commit().unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    }

    /// Whether `db` holds exactly the sample's values.
    fn holds_sample(db: &Database) -> bool {
        let tx = db.begin_read().unwrap();
        let Ok(t) = tx.open_table(V) else {
            return false;
        };
        (0..200).all(|i| matches!(t.get(i), Ok(Some(v)) if v.value() == value(i).as_slice()))
            && t.len().ok() == Some(200)
    }

    #[test]
    fn a_sound_file_opens_clean() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sample(dir.path());
        assert_eq!(probe(&path).unwrap(), FileState::Present);
        let db = open(&path, &DiskOptions::default()).unwrap();
        assert!(holds_sample(&db));
    }

    #[test]
    fn missing_and_empty_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        assert_eq!(probe(&path).unwrap(), FileState::Missing);
        std::fs::File::create(&path).unwrap();
        assert_eq!(probe(&path).unwrap(), FileState::Empty);
    }

    #[test]
    fn a_truncated_file_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = sample(dir.path());
        for len in [
            1,
            100,
            320,
            4095,
            4096,
            5000,
            bytes.len() / 2,
            bytes.len() - 1,
        ] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            let err = open(&path, &DiskOptions::default()).unwrap_err();
            assert!(err.is_corrupt(), "length {len}: {err}");
            let text = err.to_string();
            assert!(text.contains("truncated"), "length {len}: {text}");
            assert!(text.contains(RECOVERY_HINT), "{text}");
        }
    }

    #[test]
    fn a_flipped_byte_in_a_stored_value_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = sample(dir.path());
        let needle = value(123);
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .unwrap();
        let mut damaged = bytes.clone();
        damaged[at + 6] ^= 0x01;
        std::fs::write(&path, &damaged).unwrap();
        let err = open(&path, &DiskOptions::default()).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
    }

    const LAST: TableDefinition<u64, &[u8]> = TableDefinition::new("last");
    const ONLY_IN_LAST: &[u8] = b"only-in-the-last-commit";

    /// The sample, then one more commit in a table of its own, then a crash:
    /// the file as it was before the database was closed. The last commit's
    /// pages are its own.
    fn crashed_sample(dir: &Path) -> (PathBuf, Vec<u8>) {
        let (path, _) = sample(dir);
        let crashed = {
            let db = open(&path, &DiskOptions::default()).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(LAST)
                .unwrap()
                .insert(1, ONLY_IN_LAST)
                .unwrap();
            tx.commit().unwrap();
            std::fs::read(&path).unwrap()
        };
        std::fs::write(&path, &crashed).unwrap();
        (path, crashed)
    }

    #[test]
    fn a_crashed_file_opens_with_its_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = crashed_sample(dir.path());
        let db = open(&path, &DiskOptions::default()).unwrap();
        assert!(holds_sample(&db));
        let tx = db.begin_read().unwrap();
        let last = tx.open_table(LAST).unwrap();
        assert_eq!(last.get(1).unwrap().unwrap().value(), ONLY_IN_LAST);
    }

    #[test]
    fn a_damaged_last_commit_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = crashed_sample(dir.path());
        let at = bytes
            .windows(ONLY_IN_LAST.len())
            .position(|w| w == ONLY_IN_LAST)
            .unwrap();
        // In the last commit's own page, and in its commit slot.
        let god = bytes[GOD_BYTE_AT];
        let primary_slot = SLOTS_AT + SLOT_LEN * usize::from(god & PRIMARY_SLOT);
        for at in [at + 3, primary_slot + 20] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            std::fs::write(&path, &damaged).unwrap();
            let db = open(&path, &DiskOptions::default()).unwrap();
            assert!(holds_sample(&db));
            let tx = db.begin_read().unwrap();
            assert!(tx.open_table(LAST).is_err(), "the last commit survived");
        }
    }

    #[test]
    fn a_damaged_commit_slot_of_a_closed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = sample(dir.path());
        let god = bytes[GOD_BYTE_AT];
        let primary_slot = SLOTS_AT + SLOT_LEN * usize::from(god & PRIMARY_SLOT);
        let mut damaged = bytes.clone();
        // The "user root present" flag: unchecked, the store would look empty.
        damaged[primary_slot + 1] ^= 0x01;
        std::fs::write(&path, &damaged).unwrap();
        let err = open(&path, &DiskOptions::default()).unwrap_err();
        assert!(err.to_string().contains("commit slot"), "{err}");
    }

    #[test]
    fn a_flipped_header_byte_is_refused_or_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = sample(dir.path());
        // Not the default: redb's fsyncs would make 320 opens slow.
        let options = DiskOptions {
            no_fsync: true,
            ..Default::default()
        };
        for at in 0..HEADER_LEN {
            // A low bit of every byte, or all of its bits, in turn.
            let mask = if at % 2 == 0 { 0x01u8 } else { 0xff };
            let mut damaged = bytes.clone();
            damaged[at] ^= mask;
            std::fs::write(&path, &damaged).unwrap();
            match open(&path, &options) {
                Ok(db) => assert!(holds_sample(&db), "byte {at} ^ {mask:#x}: wrong data"),
                Err(e) => {
                    assert!(e.is_corrupt(), "byte {at} ^ {mask:#x}: {e}");
                    // Refused by the checks, not by a panic caught in `open`.
                    assert!(!e.to_string().contains("cannot read"), "byte {at}: {e}");
                }
            }
        }
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
