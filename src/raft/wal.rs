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
//! file, the same write adds [`ZERO_AHEAD`] bytes of zeros after it. Most
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
//! len: u32 | len_check: u32 | checksum: u64 | payload: [u8; len]
//! ```
//!
//! `len_check` is the low half of XXH3-64 of `len`, so a damaged length is
//! caught before it is trusted; `checksum` is XXH3-64 of the payload. The
//! payload is a kind byte and a body of length-delimited protobuf messages
//! (see [`Record`]).
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
//! - a header whose check fails because its bytes from the start or from a
//!   sector boundary on are zeros, with no whole record anywhere after it;
//! - a record whose checksum fails, that holds (with the zeros after it, up
//!   to its sector's end) a sector of zeros, and is followed by zeros only,
//!   as etcd's WAL tells its torn entries.
//!
//! Such a tail was never acknowledged (the append had not returned); it is
//! cut off and the log opens. Any other failed check is damage, and the log
//! is refused with [`DataFileError::Corrupt`].

use std::fs::{File, OpenOptions};
use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use protobuf::{CodedInputStream, Message as _};
use raft::prelude::{ConfState, Entry, HardState};
use xxhash_rust::xxh3::xxh3_64;

use super::RaftError;
use crate::disk::{DataFileError, FileState};

/// The first bytes of every segment: format name and version.
const MAGIC: &[u8; 8] = b"LCRLOG01";
/// `len`, `len_check`, `checksum`.
const RECORD_HEADER: usize = 16;
/// The unit a disk writes atomically, for telling torn records (see module docs).
const SECTOR: usize = 512;
/// How many bytes of zeros an append that reaches the end of the file adds
/// after its record (see module docs).
pub const ZERO_AHEAD: u64 = 256 << 10;
/// Zeros to write from, a page at a time. Larger writes let the page cache
/// hold the zeros in large folios, and a sync writes a dirty folio whole: an
/// append of a few hundred bytes then cost up to the folio's size in disk
/// writes (measured: 24 KiB per put instead of 5 on Linux 6.18 ext4).
static ZEROS: [u8; 4096] = [0; 4096];
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

/// The open log: the newest segment, positioned at its end.
pub struct Wal {
    dir: PathBuf,
    /// The newest segment, open for writing at `len`.
    file: File,
    seq: u64,
    /// Where the records end.
    len: u64,
    /// The file's length: from `len` on, it holds zeros only.
    zeroed_to: u64,
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
        let (records, valid, end) = decode_segment(&path, &bytes)?;
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
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            file,
            seq,
            len: valid as u64,
            zeroed_to,
            options,
            buf: Vec::new(),
        };
        wal.seek_end()?;
        Ok((wal, records))
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
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| DataFileError::io(&tmp, e))?;
        file.write_all(&buf)
            .map_err(|e| DataFileError::io(&tmp, e))?;
        sync(&file, &tmp, &options)?;
        std::fs::rename(&tmp, &path).map_err(|e| DataFileError::io(&path, e))?;
        sync_dir(dir, &options)?;
        let len = buf.len() as u64;
        buf.clear();
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            seq,
            len,
            zeroed_to: len,
            options,
            buf,
        })
    }

    fn seek_end(&mut self) -> Result<(), RaftError> {
        let path = self.path();
        self.file
            .seek(std::io::SeekFrom::Start(self.len))
            .map_err(|e| DataFileError::io(&path, e))?;
        Ok(())
    }

    /// Writes the encoded records in `buf` at the end of the records (and,
    /// if they reach the end of the file, [`ZERO_AHEAD`] zeros after them),
    /// and waits for the disk. On failure the segment is cut back to where
    /// its records ended, so that no partial record stays in the log.
    fn write_buffered(&mut self) -> Result<(), RaftError> {
        let path = self.path();
        let end = self.len + self.buf.len() as u64;
        let zeros = if end > self.zeroed_to { ZERO_AHEAD } else { 0 };
        let written = self
            .file
            .write_all(&self.buf)
            .and_then(|()| write_zeros(&mut self.file, zeros))
            .and_then(|()| sync_io(&self.file, &self.options));
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            self.zeroed_to = self.len;
            let _ = self.seek_end();
            return Err(DataFileError::io(&path, e).into());
        }
        if zeros > 0 {
            self.zeroed_to = end + zeros;
            self.file
                .seek(std::io::SeekFrom::Start(end))
                .map_err(|e| DataFileError::io(&path, e))?;
        }
        self.len = end;
        Ok(())
    }
}

/// Writes `n` zeros at the file's position.
fn write_zeros(file: &mut File, mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let chunk = n.min(ZEROS.len() as u64) as usize;
        file.write_all(&ZEROS[..chunk])?;
        n -= chunk as u64;
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

/// The records of a segment, the length of its valid prefix, and how they
/// end. The first record must be a checkpoint.
fn decode_segment(path: &Path, bytes: &[u8]) -> Result<(Vec<Record>, usize, End), DataFileError> {
    let corrupt =
        |at: usize, what: &str| DataFileError::corrupt(path, format!("{what} at byte {at}"));
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(
            0,
            "not a localcluster raft log segment (bad magic)",
        ));
    }
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
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let check = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if check != len_check(len) || len > MAX_RECORD {
            if header_lost_sectors(at, &rest[..RECORD_HEADER]) && !holds_record(bytes, at + 1) {
                break End::Torn; // The sector of the header never made it.
            }
            return Err(corrupt(at, "a damaged record length"));
        }
        let end = RECORD_HEADER + len as usize;
        if rest.len() < end {
            break End::Torn; // A record cut short.
        }
        let checksum = u64::from_le_bytes(rest[8..16].try_into().unwrap_or_default());
        let payload = &rest[RECORD_HEADER..end];
        if xxh3_64(payload) != checksum {
            // The record with the zeros after it, up to its last sector's end.
            let to_sector_end = ((at + end).div_ceil(SECTOR) * SECTOR).min(bytes.len()) - at;
            if is_zeros(&rest[end..]) && holds_zero_sector(at, &rest[..to_sector_end]) {
                break End::Torn; // Some sectors of the last write never made it.
            }
            return Err(corrupt(at, "a record that fails its checksum"));
        }
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
    Ok((records, at, end))
}

fn is_zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Whether a record `header` at file offset `at` that fails its check can be
/// a torn write: its bytes are zeros from its start, or from a sector
/// boundary inside it, to its end.
fn header_lost_sectors(at: usize, header: &[u8]) -> bool {
    let boundary = at.div_ceil(SECTOR) * SECTOR;
    let from = if boundary < at + header.len() {
        boundary - at
    } else {
        header.len()
    };
    is_zeros(header) || (from < header.len() && is_zeros(&header[from..]))
}

/// Whether a whole, valid record starts anywhere at or after `from`. A torn
/// header must have none after it: records past it would be writes that
/// were acknowledged, and losing them is damage, not a torn write.
fn holds_record(bytes: &[u8], from: usize) -> bool {
    (from..bytes.len().saturating_sub(RECORD_HEADER)).any(|at| {
        let h = &bytes[at..at + RECORD_HEADER];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let check = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len == 0 || len > MAX_RECORD || check != len_check(len) {
            return false;
        }
        let end = at + RECORD_HEADER + len as usize;
        let checksum = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        end <= bytes.len() && xxh3_64(&bytes[at + RECORD_HEADER..end]) == checksum
    })
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
        let mut at = MAGIC.len();
        let mut starts = Vec::new();
        while at + RECORD_HEADER <= bytes.len() && !is_zeros(&bytes[at..at + RECORD_HEADER]) {
            starts.push(at);
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            at += RECORD_HEADER + len as usize;
        }
        starts
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
        let (path, whole) = sample(dir.path());
        let file_len = || std::fs::metadata(&path).unwrap().len();
        // The first append reached the end of the file and zeroed ahead; the
        // next two overwrote those zeros.
        let first_end = file_len() - ZERO_AHEAD;
        assert!(first_end < whole as u64);
        let bytes = std::fs::read(&path).unwrap();
        assert!(is_zeros(&bytes[whole..]));
        // Reopened, the zeros are the clean end: kept, and written over.
        let (mut wal, records) = open_ok(dir.path());
        assert_eq!(appended(&records), vec![1, 2, 3]);
        assert_eq!(file_len(), first_end + ZERO_AHEAD);
        wal.append(None, &[entry(4, 1, 10)]).unwrap();
        assert_eq!(file_len(), first_end + ZERO_AHEAD);
        // An append past the zeros zeroes ahead again.
        let big = ZERO_AHEAD as usize;
        wal.append(None, &[entry(5, 1, big)]).unwrap();
        let end = wal.len;
        assert_eq!(file_len(), end + ZERO_AHEAD);
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
            wal.len + ZERO_AHEAD
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
        // The boundary cuts the length's check, or the checksum; the record
        // after it is short or long.
        for (before, len) in [(4, 20), (4, 2000), (12, 20), (12, 2000)] {
            let dir = tempfile::tempdir().unwrap();
            let (path, at) = straddling(dir.path(), before, len);
            let pristine = std::fs::read(&path).unwrap();
            // Every sector from the boundary on never made it.
            edit(&path, |b| b[at + before..].fill(0));
            let (wal, records) = open_ok(dir.path());
            assert_eq!(appended(&records), vec![1], "{before} {len}");
            assert_eq!(wal.len as usize, at);
            drop(wal);
            // Zeros that do not start at a sector boundary are damage.
            edit(&path, |b| {
                *b = pristine.clone();
                b[at + before + 2..at + RECORD_HEADER].fill(0);
            });
            assert!(
                open_err(dir.path()).contains("is corrupt"),
                "{before} {len}"
            );
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
        // The header of the second append, with the third after it.
        edit(&path, |b| b[second..second + RECORD_HEADER].fill(0));
        assert!(open_err(dir.path()).contains("a damaged record length"));
        // The header of the last one: a torn write.
        edit(&path, |b| {
            *b = pristine.clone();
            b[third..third + RECORD_HEADER].fill(0);
        });
        let (_, records) = open_ok(dir.path());
        assert_eq!(appended(&records), vec![1, 2]);
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
