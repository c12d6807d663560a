//! The Raft log's file format: an append-only write-ahead log, one record per
//! write, one `fdatasync` per [`Wal::append`].
//!
//! A member's log is a directory (`member/raftlog/`, or `raftlog/` under
//! `--wal-dir`) of segment files named by a sequence number
//! (`0000000000000001.wal`, ...). **Only the newest segment is ever read**:
//! each segment opens with a checkpoint record: a [`Checkpoint`] (identity,
//! hard state, conf state, compaction point) and the entries still live when
//! it was written, so it needs nothing older. A segment is born complete: it is written under
//! a temporary name, synced, renamed into place and the directory synced;
//! only then are the older segments deleted. A crash at any point leaves the
//! previous newest segment or the new one, never a half-made one.
//!
//! A new segment is started only when the log is compacted or replaced by a
//! snapshot (rare: every `--snapshot-count` entries); between those, records
//! are appended to the newest segment.
//!
//! **Zeroed ahead.** Past its last record, a segment holds zeros that were
//! written and synced before: whenever an append would reach the end of the
//! file, the same write adds [`ZERO_AHEAD`] bytes of zeros after it (up to a
//! page boundary), and so does the creation of a segment. Most
//! appends then overwrite blocks the file already has, and their
//! `fdatasync` writes the data alone; an append that grows the file must
//! also commit the new size to the file system's journal, which on this
//! project's reference machine made each sync about a quarter slower.
//! (etcd preallocates its 64 MB segments for the same reason; writing the
//! zeros, rather than `fallocate`, also spares the journal the conversion of
//! unwritten extents.) A zero tail is the clean end of a segment.
//!
//! Record layout, little-endian:
//!
//! ```text
//! len: u32 | len_check: u32 | checksum: u64 | payload: [u8; len] | end: u8
//! ```
//!
//! `len_check` is the low half of XXH3-64 of `len`, so a damaged length is
//! caught before it is trusted; `checksum` is XXH3-64 of the payload. The
//! payload is a kind byte and a body of length-delimited protobuf messages
//! (see [`Record`]). `end` is [`END`], never zero, so that a record whose
//! last sector never reached the disk always shows it, whatever its payload
//! ends with. Segments of the first version of the format (`LCRLOG01`, no
//! `end` byte, no zeros ahead), as earlier versions wrote them, are still
//! read, and rewritten in the current one as soon as they are opened (see
//! `RaftStorage::open_with`).
//!
//! Why a log of our own rather than a redb table: an append is one contiguous
//! write at the end of one file and one `fdatasync`, the cheapest durable
//! write a disk offers, where a redb commit rewrites the copy-on-write pages
//! of several B-trees on every `Ready`.
//!
//! **Torn writes and damage.** A power loss during an append can leave only
//! its own record incomplete, the last one before the zeros. A disk writes a
//! 512-byte sector whole or not at all, and a sector it never wrote reads as
//! the zeros it held before (or, past the old end of a growing file, as
//! nothing or zeros). So a torn record is one of:
//! - a record cut short by the end of the file;
//! - a record whose header fails its check, because all of the record's
//!   bytes in the sector where it starts, or in the next one when the header
//!   crosses into it, are zeros, with no whole record anywhere after it;
//! - a record followed by zeros only, that fails its checksum or its `end`
//!   byte, and whose bytes in its last sector, the `end` byte included, are
//!   all zeros (that sector was lost) or which holds a whole sector of zeros
//!   (a sector in its middle was lost), as etcd's WAL tells its torn
//!   entries.
//!
//! Such a tail was never acknowledged (the append had not returned); it is
//! cut off and the log opens. Any other failed check is damage, and the log
//! is refused with [`DataFileError::Corrupt`]. Damage to the last record
//! can still pass for a torn write, as in etcd's WAL, where the record's own
//! zeros look like a lost sector: a payload holding 512 aligned zero bytes;
//! a header whose bytes before a sector boundary are zeros of its length;
//! an `end` byte alone in its sector, damaged to zero.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use protobuf::{CodedInputStream, Message as _};
use raft::prelude::{ConfState, Entry, HardState};
use xxhash_rust::xxh3::xxh3_64;

use super::RaftError;
use crate::disk::{DataFileError, FileState};

/// The first bytes of every segment: format name and version.
const MAGIC: &[u8; 8] = b"LCRLOG02";
/// The first version: no `end` byte, no zeros ahead.
const MAGIC_V1: &[u8; 8] = b"LCRLOG01";
/// `len`, `len_check`, `checksum`.
const RECORD_HEADER: usize = 16;
/// The last byte of every record (several bits set: no single flipped bit
/// makes it zero).
const END: u8 = 0xA5;
/// The unit a disk writes atomically, for telling torn records (see module docs).
const SECTOR: usize = 512;
/// How many bytes of zeros an append that reaches the end of the file adds
/// after its record (see module docs).
pub const ZERO_AHEAD: u64 = 256 << 10;
/// Zeros to write from, a page at a time. Larger writes let the page cache
/// hold the zeros in large folios, and a sync writes a dirty folio whole: an
/// append of a few hundred bytes then cost up to the folio's size in disk
/// writes (measured: 24 KiB per put instead of 5 on Linux 6.18 ext4).
static ZEROS: [u8; PAGE] = [0; PAGE];
const PAGE: usize = 4096;
/// A record larger than this is damage, not data (entries are bounded by
/// `--max-request-bytes`; a checkpoint holds at most a log's worth of them).
const MAX_RECORD: u32 = 1 << 30;

const KIND_CHECKPOINT: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_CONF_STATE: u8 = 3;

/// Everything besides the entries that a restart needs; the first record of
/// every segment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// The member's identity record (encoded `lcraftpb::Identity`), once set.
    pub identity: Option<Vec<u8>>,
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// Index and term of the last entry dropped from the log.
    pub compacted: (u64, u64),
}

/// One record of a segment, as read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Resets the log: the state, and the entries after `compacted`.
    Checkpoint {
        checkpoint: Checkpoint,
        entries: Vec<Entry>,
    },
    /// Entries (replacing any from the first one's index on) and a new hard
    /// state, written together so that a torn write loses both or neither.
    Append {
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
    },
    /// A new configuration, after a conf change was applied.
    ConfState(ConfState),
}

/// How the log meets the disk.
#[derive(Debug, Clone, Default)]
pub struct WalOptions {
    /// `--unsafe-no-fsync`: never wait for the disk.
    pub no_fsync: bool,
    /// Observes the duration of every `fdatasync`, in seconds.
    pub fsync_seconds: Option<prometheus::Histogram>,
}

/// The open log: the newest segment, written at the end of its records.
pub struct Wal {
    dir: PathBuf,
    /// The newest segment.
    file: File,
    seq: u64,
    /// Where the records end.
    len: u64,
    /// The file's length: from `len` on, it holds zeros only (unless a
    /// failed write could not even be cut back).
    zeroed_to: u64,
    /// The segment is in the first version of the format: it is read, never
    /// appended to (the storage rewrites it first).
    v1: bool,
    options: WalOptions,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

impl Wal {
    /// What the log directory held before it was opened: no segment, a
    /// newest segment of zero bytes (truncated to nothing), or one with data.
    pub fn probe(dir: &Path) -> Result<FileState, DataFileError> {
        let segments = segments(dir)?;
        let Some((_, newest)) = segments.last() else {
            return Ok(FileState::Missing);
        };
        let len = std::fs::metadata(newest)
            .map_err(|e| DataFileError::io(newest, e))?
            .len();
        Ok(if len == 0 {
            FileState::Empty
        } else {
            FileState::Present
        })
    }

    /// Opens the log in `dir` (creating the directory and a first, empty
    /// segment if there is none), and returns the records of its newest
    /// segment, a torn tail cut off. Older segments left by a crash during a
    /// rotation are deleted.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Vec<Record>), RaftError> {
        std::fs::create_dir_all(dir).map_err(|e| DataFileError::io(dir, e))?;
        remove_temporaries(dir)?;
        let mut segments = segments(dir)?;
        let Some((seq, path)) = segments.pop() else {
            let wal = Wal::create(
                dir,
                1,
                &Checkpoint::default(),
                &mut std::iter::empty(),
                options,
            )?;
            let empty = Record::Checkpoint {
                checkpoint: Checkpoint::default(),
                entries: Vec::new(),
            };
            return Ok((wal, vec![empty]));
        };
        let bytes = std::fs::read(&path).map_err(|e| DataFileError::io(&path, e))?;
        let Segment {
            records,
            valid,
            end,
            v1,
        } = decode_segment(&path, &bytes)?;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| DataFileError::io(&path, e))?;
        let mut zeroed_to = bytes.len() as u64;
        if end == End::Torn {
            zeroed_to = valid as u64;
            tracing::warn!(
                file = %path.display(),
                kept = valid,
                dropped = bytes.len() - valid,
                "the raft log ends in a torn write (a crash during an append); cutting it off"
            );
            file.set_len(valid as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| DataFileError::io(&path, e))?;
        }
        for (_, old) in segments {
            std::fs::remove_file(&old).map_err(|e| DataFileError::io(&old, e))?;
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            file,
            seq,
            len: valid as u64,
            zeroed_to,
            v1,
            options,
            buf: Vec::new(),
        };
        Ok((wal, records))
    }

    /// Whether the newest segment is in an older version of the format, to
    /// be replaced (by [`Wal::rotate`]) before anything is appended.
    pub fn is_outdated(&self) -> bool {
        self.v1
    }

    /// Appends entries and a hard state as one record, durably.
    pub fn append(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), RaftError> {
        self.buf.clear();
        encode_append(&mut self.buf, hard_state, entries)?;
        self.write_buffered()
    }

    /// Appends a new configuration, durably.
    pub fn append_conf_state(&mut self, conf_state: &ConfState) -> Result<(), RaftError> {
        self.buf.clear();
        encode_record(&mut self.buf, |body| {
            body.push(KIND_CONF_STATE);
            conf_state
                .write_length_delimited_to_vec(body)
                .map_err(RaftError::decode)
        })?;
        self.write_buffered()
    }

    /// Starts a new segment holding `checkpoint` and `entries` (the log after
    /// a compaction, a snapshot or a bootstrap), then deletes the older ones.
    pub fn rotate<'e>(
        &mut self,
        checkpoint: &Checkpoint,
        entries: impl Iterator<Item = &'e Entry>,
    ) -> Result<(), RaftError> {
        let mut entries = entries;
        let next = Wal::create(
            &self.dir,
            self.seq + 1,
            checkpoint,
            &mut entries,
            self.options.clone(),
        )?;
        let old = std::mem::replace(self, next);
        let path = segment_path(&old.dir, old.seq);
        drop(old);
        std::fs::remove_file(&path).map_err(|e| DataFileError::io(&path, e))?;
        Ok(())
    }

    /// The newest segment's file (for messages and tests).
    pub fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.seq)
    }

    /// Writes a complete segment under a temporary name, syncs it, and moves
    /// it into place.
    fn create(
        dir: &Path,
        seq: u64,
        checkpoint: &Checkpoint,
        entries: &mut dyn Iterator<Item = &Entry>,
        options: WalOptions,
    ) -> Result<Wal, RaftError> {
        let path = segment_path(dir, seq);
        let tmp = path.with_extension("wal.tmp");
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        encode_checkpoint(&mut buf, checkpoint, entries)?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| DataFileError::io(&tmp, e))?;
        let len = buf.len() as u64;
        let zeroed_to = zero_ahead_end(len);
        file.write_all_at(&buf, 0)
            .and_then(|()| write_zeros(&file, len, zeroed_to))
            .map_err(|e| DataFileError::io(&tmp, e))?;
        sync(&file, &tmp, &options)?;
        std::fs::rename(&tmp, &path).map_err(|e| DataFileError::io(&path, e))?;
        sync_dir(dir, &options)?;
        buf.clear();
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            seq,
            len,
            zeroed_to,
            v1: false,
            options,
            buf,
        })
    }

    /// Writes the encoded records in `buf` at the end of the records (and,
    /// if they reach the end of the file, [`ZERO_AHEAD`] zeros after them),
    /// and waits for the disk. On failure the segment is cut back to where
    /// its records ended, so that no partial record stays in the log.
    fn write_buffered(&mut self) -> Result<(), RaftError> {
        if self.v1 {
            return Err(DataFileError::io(
                &self.path(),
                std::io::Error::other("an outdated segment is never appended to"),
            )
            .into());
        }
        let end = self.len + self.buf.len() as u64;
        let zeroed_to = if end > self.zeroed_to {
            zero_ahead_end(end)
        } else {
            self.zeroed_to
        };
        let written = self
            .file
            .write_all_at(&self.buf, self.len)
            .and_then(|()| write_zeros(&self.file, end.max(self.zeroed_to), zeroed_to))
            .and_then(|()| sync_io(&self.file, &self.options));
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            self.zeroed_to = self.len;
            return Err(DataFileError::io(&self.path(), e).into());
        }
        self.len = end;
        self.zeroed_to = zeroed_to;
        Ok(())
    }
}

/// Where the zeros written ahead of records ending at `end` end: a page
/// boundary, so that the file's last sector is never partial.
fn zero_ahead_end(end: u64) -> u64 {
    (end + ZERO_AHEAD).div_ceil(PAGE as u64) * PAGE as u64
}

/// Writes zeros from `from` to `to`.
fn write_zeros(file: &File, mut from: u64, to: u64) -> std::io::Result<()> {
    while from < to {
        let chunk = (to - from).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..chunk], from)?;
        from += chunk as u64;
    }
    Ok(())
}

fn sync_io(file: &File, options: &WalOptions) -> std::io::Result<()> {
    if options.no_fsync {
        return Ok(());
    }
    let start = Instant::now();
    file.sync_data()?;
    if let Some(h) = &options.fsync_seconds {
        h.observe(start.elapsed().as_secs_f64());
    }
    Ok(())
}

fn sync(file: &File, path: &Path, options: &WalOptions) -> Result<(), RaftError> {
    sync_io(file, options).map_err(|e| DataFileError::io(path, e).into())
}

fn sync_dir(dir: &Path, options: &WalOptions) -> Result<(), RaftError> {
    if options.no_fsync {
        return Ok(());
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DataFileError::io(dir, e).into())
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

/// The segments in `dir`, oldest first (none if `dir` does not exist).
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, DataFileError> {
    let listing = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DataFileError::io(dir, e)),
    };
    let mut found = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| DataFileError::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(seq) = u64::from_str_radix(stem, 16) {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes segments a crash left half-written under their temporary name.
fn remove_temporaries(dir: &Path) -> Result<(), DataFileError> {
    for entry in std::fs::read_dir(dir).map_err(|e| DataFileError::io(dir, e))? {
        let entry = entry.map_err(|e| DataFileError::io(dir, e))?;
        if entry.file_name().to_string_lossy().ends_with(".wal.tmp") {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| DataFileError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Frames the payload that `body` writes as one record at the end of `buf`.
fn encode_record(
    buf: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), RaftError>,
) -> Result<(), RaftError> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER]);
    body(buf)?;
    let len = u32::try_from(buf.len() - start - RECORD_HEADER)
        .ok()
        .filter(|&l| l <= MAX_RECORD)
        .ok_or_else(|| RaftError::Decode("raft log record too large".into()))?;
    let checksum = xxh3_64(&buf[start + RECORD_HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&len_check(len).to_le_bytes());
    buf[start + 8..start + 16].copy_from_slice(&checksum.to_le_bytes());
    buf.push(END);
    Ok(())
}

fn len_check(len: u32) -> u32 {
    xxh3_64(&len.to_le_bytes()) as u32
}

fn encode_append<'e>(
    buf: &mut Vec<u8>,
    hard_state: Option<&HardState>,
    entries: impl IntoIterator<Item = &'e Entry>,
) -> Result<(), RaftError> {
    encode_record(buf, |body| {
        body.push(KIND_APPEND);
        match hard_state {
            Some(hs) => {
                body.push(1);
                hs.write_length_delimited_to_vec(body)
                    .map_err(RaftError::decode)?;
            }
            None => body.push(0),
        }
        for e in entries {
            e.write_length_delimited_to_vec(body)
                .map_err(RaftError::decode)?;
        }
        Ok(())
    })
}

fn encode_checkpoint<'e>(
    buf: &mut Vec<u8>,
    cp: &Checkpoint,
    entries: impl IntoIterator<Item = &'e Entry>,
) -> Result<(), RaftError> {
    encode_record(buf, |body| {
        body.push(KIND_CHECKPOINT);
        body.extend_from_slice(&cp.compacted.0.to_le_bytes());
        body.extend_from_slice(&cp.compacted.1.to_le_bytes());
        cp.hard_state
            .write_length_delimited_to_vec(body)
            .map_err(RaftError::decode)?;
        cp.conf_state
            .write_length_delimited_to_vec(body)
            .map_err(RaftError::decode)?;
        match &cp.identity {
            Some(id) => {
                let len = u32::try_from(id.len())
                    .map_err(|_| RaftError::Decode("identity record too large".into()))?;
                body.push(1);
                body.extend_from_slice(&len.to_le_bytes());
                body.extend_from_slice(id);
            }
            None => body.push(0),
        }
        for e in entries {
            e.write_length_delimited_to_vec(body)
                .map_err(RaftError::decode)?;
        }
        Ok(())
    })
}

/// How a segment's records end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// At the end of the file, or where only zeros follow.
    Clean,
    /// In a torn write (see module docs), to be cut off.
    Torn,
}

/// What the bytes at the start of a record hold.
enum Header {
    /// Its check fails.
    Damaged,
    /// A length that passed its check, and the payload's checksum.
    Valid { len: usize, checksum: u64 },
}

fn read_header(h: &[u8]) -> Header {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let check = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if check != len_check(len) || len > MAX_RECORD {
        return Header::Damaged;
    }
    let checksum = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    Header::Valid {
        len: len as usize,
        checksum,
    }
}

/// A segment as read back.
struct Segment {
    records: Vec<Record>,
    /// The length of the valid prefix: where the records end.
    valid: usize,
    /// How they end.
    end: End,
    /// The segment is of the first version of the format.
    v1: bool,
}

/// Reads a segment's records. The first one must be a checkpoint.
fn decode_segment(path: &Path, bytes: &[u8]) -> Result<Segment, DataFileError> {
    let corrupt =
        |at: usize, what: &str| DataFileError::corrupt(path, format!("{what} at byte {at}"));
    let v1 = match bytes.get(..MAGIC.len()) {
        Some(m) if m == MAGIC => false,
        Some(m) if m == MAGIC_V1 => true,
        _ => {
            return Err(corrupt(
                0,
                "not a localcluster raft log segment (bad magic)",
            ))
        }
    };
    let trailer = usize::from(!v1);
    let mut at = MAGIC.len();
    let mut records = Vec::new();
    let end = loop {
        let rest = &bytes[at..];
        if is_zeros(rest) {
            break End::Clean; // The end of the file, or the zeros ahead.
        }
        if rest.len() < RECORD_HEADER {
            break End::Torn; // A header cut short.
        }
        let Header::Valid { len, checksum } = read_header(&rest[..RECORD_HEADER]) else {
            if header_lost_sectors(at, rest) && !holds_record(bytes, at + 1, trailer) {
                break End::Torn; // A sector of the header never made it.
            }
            return Err(corrupt(at, "a damaged record length"));
        };
        let end = RECORD_HEADER + len + trailer;
        if rest.len() < end {
            break End::Torn; // A record cut short.
        }
        if !intact(&rest[..end], len, checksum, trailer) {
            // The last write, with a sector that never made it: its last
            // one (which holds the `end` byte) or any whole one.
            let last_sector = ((at + end - 1) / SECTOR * SECTOR).max(at) - at;
            let lost_last = !v1 && is_zeros(&rest[last_sector..end]);
            if is_zeros(&rest[end..]) && (lost_last || holds_zero_sector(at, &rest[..end])) {
                break End::Torn;
            }
            return Err(corrupt(at, "a record that fails its checksum"));
        }
        let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
        let record = decode_payload(payload).map_err(|e| corrupt(at, &e))?;
        if records.is_empty() && !matches!(record, Record::Checkpoint { .. }) {
            return Err(corrupt(
                at,
                "a segment that does not start with a checkpoint",
            ));
        }
        records.push(record);
        at += end;
    };
    if records.is_empty() {
        return Err(corrupt(at, "a segment without its checkpoint"));
    }
    Ok(Segment {
        records,
        valid: at,
        end,
        v1,
    })
}

fn is_zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Whether a record at file offset `at` (`rest` holds it and what follows)
/// whose header fails its check can be a torn write: the sector where it
/// starts never made it (all of the record's bytes in it are zeros), or the
/// header crosses into the next sector and that one never made it (all of
/// its bytes are zeros).
fn header_lost_sectors(at: usize, rest: &[u8]) -> bool {
    let in_first = (at / SECTOR + 1) * SECTOR - at;
    let first = &rest[..in_first.min(rest.len())];
    let next = &rest[first.len()..(in_first + SECTOR).min(rest.len())];
    is_zeros(first) || (in_first < RECORD_HEADER && is_zeros(next))
}

/// Whether a whole, valid record starts anywhere at or after `from`. A torn
/// header must have none after it: records past it would be writes that
/// were acknowledged, and losing them is damage, not a torn write. (A
/// payload that embeds a whole record's image makes a torn header before it
/// refused: a false alarm, never a loss.)
fn holds_record(bytes: &[u8], from: usize, trailer: usize) -> bool {
    (from..bytes.len().saturating_sub(RECORD_HEADER)).any(|at| {
        let Header::Valid { len, checksum } = read_header(&bytes[at..at + RECORD_HEADER]) else {
            return false;
        };
        let end = at + RECORD_HEADER + len + trailer;
        len > 0 && end <= bytes.len() && intact(&bytes[at..end], len, checksum, trailer)
    })
}

/// Whether `record` (header, payload and `trailer` end byte), whose header
/// passed its check with `len` and `checksum`, holds the payload it names
/// and ends in [`END`] (in the current format).
fn intact(record: &[u8], len: usize, checksum: u64, trailer: usize) -> bool {
    (trailer == 0 || record[RECORD_HEADER + len] == END)
        && xxh3_64(&record[RECORD_HEADER..RECORD_HEADER + len]) == checksum
}

/// Whether some sector-aligned 512 bytes of `record` (which starts at file
/// offset `offset`) are all zeros.
fn holds_zero_sector(offset: usize, record: &[u8]) -> bool {
    let first = offset.div_ceil(SECTOR) * SECTOR;
    let mut s = first;
    while s + SECTOR <= offset + record.len() {
        if is_zeros(&record[s - offset..s - offset + SECTOR]) {
            return true;
        }
        s += SECTOR;
    }
    false
}

/// Length-delimited entries up to the end of a record.
fn read_entries(is: &mut CodedInputStream) -> protobuf::ProtobufResult<Vec<Entry>> {
    let mut entries = Vec::new();
    while !is.eof()? {
        entries.push(is.read_message::<Entry>()?);
    }
    Ok(entries)
}

fn decode_payload(payload: &[u8]) -> Result<Record, String> {
    let (&kind, body) = payload
        .split_first()
        .ok_or_else(|| "an empty record".to_string())?;
    let mut is = CodedInputStream::from_bytes(body);
    let bad = |e: protobuf::ProtobufError| format!("an undecodable record ({e})");
    match kind {
        KIND_CHECKPOINT => {
            let index = is.read_raw_little_endian64().map_err(bad)?;
            let term = is.read_raw_little_endian64().map_err(bad)?;
            let hard_state = is.read_message::<HardState>().map_err(bad)?;
            let conf_state = is.read_message::<ConfState>().map_err(bad)?;
            let identity = match is.read_raw_byte().map_err(bad)? {
                0 => None,
                1 => {
                    let len = is.read_raw_little_endian32().map_err(bad)?;
                    Some(is.read_raw_bytes(len).map_err(bad)?)
                }
                other => return Err(format!("a checkpoint with identity flag {other}")),
            };
            let entries = read_entries(&mut is).map_err(bad)?;
            Ok(Record::Checkpoint {
                checkpoint: Checkpoint {
                    identity,
                    hard_state,
                    conf_state,
                    compacted: (index, term),
                },
                entries,
            })
        }
        KIND_APPEND => {
            let hard_state = match is.read_raw_byte().map_err(bad)? {
                0 => None,
                1 => Some(is.read_message::<HardState>().map_err(bad)?),
                other => return Err(format!("an append record with flag {other}")),
            };
            let entries = read_entries(&mut is).map_err(bad)?;
            Ok(Record::Append {
                hard_state,
                entries,
            })
        }
        KIND_CONF_STATE => {
            let cs = is.read_message::<ConfState>().map_err(bad)?;
            if !is.eof().map_err(bad)? {
                return Err("trailing bytes after a conf state".into());
            }
            Ok(Record::ConfState(cs))
        }
        other => Err(format!("a record of unknown kind {other}")),
    }
}

/// Where each record of a current segment starts, and its payload's length
/// (for tests: nothing is checked).
#[cfg(test)]
fn record_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut at = MAGIC.len();
    let mut spans = Vec::new();
    while at + RECORD_HEADER <= bytes.len() && !is_zeros(&bytes[at..at + RECORD_HEADER]) {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        spans.push((at, len as usize));
        at += RECORD_HEADER + len as usize + 1;
    }
    spans
}

/// Rewrites the segment at `path` in the first version of the format (for
/// tests of the upgrade).
#[cfg(test)]
pub(super) fn downgrade_to_v1(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let mut v1 = MAGIC_V1.to_vec();
    for (at, len) in record_spans(&bytes) {
        v1.extend_from_slice(&bytes[at..at + RECORD_HEADER + len]);
    }
    std::fs::write(path, v1).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, len: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![7u8; len].into(),
            ..Default::default()
        }
    }

    /// A log with a checkpoint and three appends; returns its segment and
    /// where its records end.
    fn sample(dir: &Path) -> (PathBuf, usize) {
        let (mut wal, _) = Wal::open(dir, WalOptions::default()).unwrap();
        for i in 1..=3 {
            let hs = HardState {
                term: 1,
                commit: i - 1,
                ..Default::default()
            };
            wal.append(Some(&hs), &[entry(i, 1, 600)]).unwrap();
        }
        (wal.path(), wal.len as usize)
    }

    fn open_ok(dir: &Path) -> (Wal, Vec<Record>) {
        Wal::open(dir, WalOptions::default()).unwrap()
    }

    fn open_err(dir: &Path) -> String {
        match Wal::open(dir, WalOptions::default()) {
            Ok(_) => panic!("damage accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// Where each record of a segment starts, the checkpoint's included.
    fn starts(path: &Path) -> Vec<usize> {
        let bytes = std::fs::read(path).unwrap();
        record_spans(&bytes).into_iter().map(|(at, _)| at).collect()
    }

    /// Changes the segment's bytes in place.
    fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(path).unwrap();
        f(&mut bytes);
        std::fs::write(path, &bytes).unwrap();
    }

    fn appended(records: &[Record]) -> Vec<u64> {
        records
            .iter()
            .flat_map(|r| match r {
                Record::Append { entries, .. } | Record::Checkpoint { entries, .. } => {
                    entries.iter().map(|e| e.index).collect()
                }
                Record::ConfState(_) => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn records_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sample(dir.path());
        let (mut wal, records) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let empty = Record::Checkpoint {
            checkpoint: Checkpoint::default(),
            entries: Vec::new(),
        };
        assert_eq!(records[0], empty);
        assert_eq!(appended(&records), vec![1, 2, 3]);
        let cs = ConfState::from((vec![1, 2], vec![3]));
        wal.append_conf_state(&cs).unwrap();
        drop(wal);
        let (wal, records) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(records.last(), Some(&Record::ConfState(cs)));
        assert_eq!(wal.path(), path);
    }

    #[test]
    fn appends_write_zeros_ahead_then_overwrite_them() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open_ok(dir.path());
        let path = wal.path();
        let file_len = || std::fs::metadata(&path).unwrap().len();
        // A new segment is zeroed ahead, to a page boundary.
        let zeroed = file_len();
        assert_eq!(zeroed, zero_ahead_end(wal.len));
        assert_eq!(zeroed % 4096, 0);
        drop(wal);
        // Appends overwrite those zeros.
        let (_, whole) = sample(dir.path());
        assert_eq!(file_len(), zeroed);
        assert!(is_zeros(&std::fs::read(&path).unwrap()[whole..]));
        // Reopened, the zeros are the clean end: kept, and written over.
        let (mut wal, records) = open_ok(dir.path());
        assert_eq!(appended(&records), vec![1, 2, 3]);
        assert_eq!(file_len(), zeroed);
        wal.append(None, &[entry(4, 1, 10)]).unwrap();
        assert_eq!(file_len(), zeroed);
        // An append past the zeros zeroes ahead again.
        wal.append(None, &[entry(5, 1, 2 * ZERO_AHEAD as usize)])
            .unwrap();
        assert_eq!(file_len(), zero_ahead_end(wal.len));
        drop(wal);
        let (_, records) = open_ok(dir.path());
        assert_eq!(appended(&records), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_segment_without_zeros_ahead_opens_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let (path, whole) = sample(dir.path());
        edit(&path, |b| b.truncate(whole));
        let (mut wal, records) = open_ok(dir.path());
        assert_eq!(appended(&records), vec![1, 2, 3]);
        wal.append(None, &[entry(4, 1, 10)]).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            zero_ahead_end(wal.len)
        );
    }

    #[test]
    fn a_record_cut_short_is_a_torn_write_and_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (path, whole) = sample(dir.path());
        let third = starts(&path)[3];
        let full = std::fs::read(&path).unwrap()[..whole].to_vec();
        for cut in [whole - 1, whole - 300, whole - 620] {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (mut wal, records) = open_ok(dir.path());
            assert_eq!(appended(&records), vec![1, 2], "cut at {cut}");
            assert_eq!(wal.len as usize, third, "cut at {cut}");
            // The log goes on from the last whole record.
            wal.append(None, &[entry(3, 2, 10)]).unwrap();
            drop(wal);
            let (_, records) = open_ok(dir.path());
            assert_eq!(appended(&records), vec![1, 2, 3]);
        }
    }

    #[test]
    fn a_last_record_missing_a_sector_is_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open_ok(dir.path());
        wal.append(None, &[entry(1, 1, 1000)]).unwrap();
        let start = wal.len as usize;
        wal.append(None, &[entry(2, 1, 4000)]).unwrap();
        let end = wal.len as usize;
        let path = wal.path();
        drop(wal);
        let pristine = std::fs::read(&path).unwrap();
        let first_sector = start.div_ceil(SECTOR) * SECTOR;
        let last_sector = (end - 1) / SECTOR * SECTOR;
        // A sector in the middle; the last one, which the record fills only
        // in part; and the one holding its start and header, which keeps the
        // end of the record before (written and synced before).
        for lost in [first_sector + SECTOR, last_sector, first_sector - SECTOR] {
            edit(&path, |b| {
                *b = pristine.clone();
                b[lost.max(start)..lost + SECTOR].fill(0);
            });
            let (wal, records) = open_ok(dir.path());
            assert_eq!(appended(&records), vec![1], "sector at {lost}");
            assert_eq!(wal.len as usize, start);
        }
    }

    /// A log whose last record, of `len` bytes of data, starts `before`
    /// bytes ahead of a sector boundary; returns its segment and that start.
    fn straddling(dir: &Path, before: usize, len: usize) -> (PathBuf, usize) {
        let (mut wal, _) = open_ok(dir);
        let want = (wal.len as usize / SECTOR + 2) * SECTOR - before;
        let fits = |n: &usize| {
            let mut buf = Vec::new();
            encode_append(&mut buf, None, &[entry(1, 1, *n)]).unwrap();
            wal.len as usize + buf.len() == want
        };
        let pad = (0..SECTOR * 2).find(fits).unwrap();
        wal.append(None, &[entry(1, 1, pad)]).unwrap();
        assert_eq!(wal.len as usize, want);
        wal.append(None, &[entry(2, 1, len)]).unwrap();
        (wal.path(), want)
    }

    #[test]
    fn a_header_torn_at_a_sector_boundary_is_a_torn_write() {
        // The boundary cuts the header at every byte; the record is short
        // (its payload ends in the sector after the boundary) or long.
        for before in 1..RECORD_HEADER {
            for len in [20, 2000] {
                let case = format!("{before} bytes before the boundary, {len} bytes");
                let dir = tempfile::tempdir().unwrap();
                let (path, at) = straddling(dir.path(), before, len);
                let pristine = std::fs::read(&path).unwrap();
                let boundary = at + before;
                // The sector before the boundary never made it (it keeps the
                // end of the record before), or every sector from it on.
                for lost in [at..boundary, boundary..pristine.len()] {
                    edit(&path, |b| {
                        *b = pristine.clone();
                        b[lost.clone()].fill(0);
                    });
                    let (wal, records) = open_ok(dir.path());
                    assert_eq!(appended(&records), vec![1], "{case}, lost {lost:?}");
                    assert_eq!(wal.len as usize, at);
                }
                // Zeros that start past a sector boundary are damage (when
                // the byte at the boundary is not a zero of the length).
                edit(&path, |b| {
                    *b = pristine.clone();
                    b[boundary + 1..at + RECORD_HEADER].fill(0);
                });
                if boundary + 1 < at + RECORD_HEADER && pristine[boundary] != 0 {
                    assert!(open_err(dir.path()).contains("is corrupt"), "{case}");
                }
            }
        }
    }

    #[test]
    fn a_lost_header_before_whole_records_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sample(dir.path());
        let pristine = std::fs::read(&path).unwrap();
        let [_, _, second, third] = starts(&path)[..] else {
            panic!("four records")
        };
        let sector_end = |at: usize| (at / SECTOR + 1) * SECTOR;
        // The sector holding the second append's start, with the third after it.
        edit(&path, |b| b[second..sector_end(second)].fill(0));
        assert!(open_err(dir.path()).contains("a damaged record length"));
        // The one holding the last one's start: a torn write.
        edit(&path, |b| {
            *b = pristine.clone();
            b[third..sector_end(third)].fill(0);
        });
        let (_, records) = open_ok(dir.path());
        assert_eq!(appended(&records), vec![1, 2]);
        // Its header alone zeroed, the rest of its sector intact: damage.
        edit(&path, |b| {
            *b = pristine.clone();
            b[third..third + RECORD_HEADER].fill(0);
        });
        assert!(open_err(dir.path()).contains("a damaged record length"));
    }

    #[test]
    fn a_whole_last_record_with_its_end_byte_zeroed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, whole) = sample(dir.path());
        // The record's other bytes in that sector are intact: no lost sector.
        assert_ne!((whole - 1) % SECTOR, 0);
        edit(&path, |b| b[whole - 1] = 0);
        assert!(open_err(dir.path()).contains("fails its checksum"));
    }

    #[test]
    fn a_flipped_byte_in_a_whole_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, whole) = sample(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        // In every record's length, checksum and payload, the last one included.
        for at in (MAGIC.len()..whole).step_by(97).chain([whole - 1]) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            std::fs::write(&path, &damaged).unwrap();
            let err = Wal::open(dir.path(), WalOptions::default())
                .err()
                .unwrap_or_else(|| panic!("byte {at}: damage accepted"));
            assert!(err.to_string().contains("is corrupt"), "byte {at}: {err}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                damaged,
                "refused, yet changed"
            );
        }
    }

    #[test]
    fn a_segment_of_the_first_format_is_read_and_never_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sample(dir.path());
        downgrade_to_v1(&path);
        let v1 = std::fs::read(&path).unwrap();
        let (mut wal, records) = open_ok(dir.path());
        assert!(wal.is_outdated());
        assert_eq!(appended(&records), vec![1, 2, 3]);
        assert!(wal.append(None, &[entry(4, 1, 10)]).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), v1, "appended to");
        // A torn tail of the first format is cut off as before.
        std::fs::write(&path, &v1[..v1.len() - 10]).unwrap();
        let (wal, records) = open_ok(dir.path());
        assert_eq!(appended(&records), vec![1, 2]);
        // Rotating starts a segment of the current format.
        let mut wal = wal;
        wal.rotate(&Checkpoint::default(), [entry(1, 1, 5)].iter())
            .unwrap();
        assert!(!wal.is_outdated());
        wal.append(None, &[entry(2, 1, 10)]).unwrap();
        assert_eq!(&std::fs::read(wal.path()).unwrap()[..8], MAGIC);
    }

    /// Entry data: `len` bytes, nonzero but for the last `zeros` of them.
    fn data_entry(index: u64, len: usize, zeros: usize) -> Entry {
        let mut data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        let n = data.len();
        data[n.saturating_sub(zeros)..].fill(0);
        Entry {
            index,
            term: 1,
            data: data.into(),
            ..Default::default()
        }
    }

    /// A log of appends of these (length, trailing zeros) entries; returns
    /// its segment and where each record starts and where the last one ends.
    fn written(dir: &Path, sizes: &[(usize, usize)]) -> (PathBuf, Vec<usize>, usize) {
        let (mut wal, _) = open_ok(dir);
        for (i, &(len, zeros)) in sizes.iter().enumerate() {
            wal.append(None, &[data_entry(i as u64 + 1, len, zeros)])
                .unwrap();
        }
        let path = wal.path();
        (path.clone(), starts(&path), wal.len as usize)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// The last append, with any set of its sectors lost (each reads as
        /// what it held before: zeros, and the end of the record before in
        /// the sector where the last record starts), opens as the log before
        /// or after that append: never refused, never anything else.
        #[test]
        fn a_torn_last_append_opens_as_before_or_after_it(
            sizes in proptest::collection::vec((1usize..1500, 0usize..40), 1..6),
            lost in proptest::prelude::any::<u64>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (path, starts, whole) = written(dir.path(), &sizes);
            let start = starts[starts.len() - 1];
            let sectors = start / SECTOR..whole.div_ceil(SECTOR);
            edit(&path, |b| {
                for (i, s) in sectors.clone().enumerate() {
                    if lost >> (i % 64) & 1 == 1 {
                        b[(s * SECTOR).max(start)..(s + 1) * SECTOR].fill(0);
                    }
                }
            });
            let (_, records) = open_ok(dir.path());
            let n = sizes.len() as u64;
            let got = appended(&records);
            proptest::prop_assert!(
                got == (1..n).collect::<Vec<_>>() || got == (1..=n).collect::<Vec<_>>(),
                "{got:?}"
            );
        }

        /// A flipped byte anywhere in the records is refused, the last
        /// record's payload included, even when that payload ends in zeros
        /// that a lost last sector would also leave. (The last record's
        /// header is left out: its length's own zero bytes can pass for a
        /// lost sector, see the module docs.)
        #[test]
        fn a_flipped_byte_in_the_records_is_refused(
            sizes in proptest::collection::vec((1usize..1500, 0usize..40), 1..6),
            pick in proptest::prelude::any::<proptest::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (path, starts, whole) = written(dir.path(), &sizes);
            let last_header = starts[starts.len() - 1]..starts[starts.len() - 1] + RECORD_HEADER;
            let candidates: Vec<usize> =
                (MAGIC.len()..whole).filter(|i| !last_header.contains(i)).collect();
            let at = candidates[pick.index(candidates.len())];
            // An `end` byte alone in its sector, damaged to zero, is a lost
            // sector (see the module docs).
            proptest::prop_assume!(!(at == whole - 1 && at.is_multiple_of(SECTOR) && mask == END));
            edit(&path, |b| b[at] ^= mask);
            let err = open_err(dir.path());
            proptest::prop_assert!(err.contains("is corrupt"), "byte {}: {}", at, err);
        }
    }

    #[test]
    fn rotation_keeps_only_the_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = sample(dir.path());
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let cp = Checkpoint {
            identity: Some(b"id".to_vec()),
            compacted: (2, 1),
            ..Default::default()
        };
        let live = [entry(3, 1, 5)];
        wal.rotate(&cp, live.iter()).unwrap();
        assert!(!old.exists());
        wal.append(None, &[entry(4, 1, 5)]).unwrap();
        drop(wal);
        // A segment left half-made by a crash is ignored.
        std::fs::write(dir.path().join("0000000000000009.wal.tmp"), b"junk").unwrap();
        let (wal, records) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert!(matches!(&records[0], Record::Checkpoint { checkpoint, .. } if *checkpoint == cp));
        assert_eq!(appended(&records), vec![3, 4]);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        assert!(wal.path().ends_with("0000000000000002.wal"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn probe_tells_a_missing_an_empty_and_a_present_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("raftlog");
        assert_eq!(Wal::probe(&log).unwrap(), FileState::Missing);
        let (path, _) = sample(&log);
        assert_eq!(Wal::probe(&log).unwrap(), FileState::Present);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(Wal::probe(&log).unwrap(), FileState::Empty);
        assert!(Wal::open(&log, WalOptions::default()).is_err());
    }
}
