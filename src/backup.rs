//! Backup snapshot files: `localcluster snapshot save|status|restore`.
//!
//! A snapshot file is exactly what `Maintenance.Snapshot` streams (so
//! `etcdctl snapshot save` writes the same file), framed as etcd frames its
//! database in that stream ([`frame`]): a body whose length is a multiple of
//! 512 bytes, then the SHA-256 of the body (etcdctl checks that shape). The
//! body is the whole MVCC store in the format of [`crate::mvcc::snapshot`]
//! (which ends with its own CRC-32C), zero padding, and the store bytes'
//! length (u64, big-endian) in its last 8 bytes. Every command validates the
//! whole file first (SHA-256, padding, CRC, structure), so a truncated or
//! damaged file is refused with one clear error and nothing is written.
//! Only the frame is etcd's: the body is not a bbolt database, so
//! `etcdctl snapshot status|restore` and `etcdutl` refuse our files, and we
//! refuse theirs (the README says so).
//!
//! - [`save`]: stream a member's snapshot into a file (written to `FILE.part`,
//!   synced, then renamed, so a failed save never leaves a partial `FILE`);
//! - [`status`]: the snapshot's `HashKV` hash at its revision (comparable with
//!   `etcdctl endpoint hashkv`), revision, number of keys and size;
//! - [`restore`]: the data dir of a member of a new cluster, holding the
//!   snapshot's data with its revisions (see [`crate::member::restore_data_dir`]).

use std::io::Write as _;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::MemberConfig;
use crate::member::MemberError;
use crate::mvcc::{MvccError, RangeOptions, Store};
use crate::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::pb::etcdserverpb::SnapshotRequest;
use crate::pb::lcraftpb::Identity;

/// Why a snapshot command failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read snapshot {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write snapshot {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path} is corrupt or truncated: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("snapshot {path} is an etcd (bbolt) snapshot, which localcluster cannot read: it reads snapshots saved from localcluster members; restore this one with etcdutl into an etcd data dir")]
    EtcdSnapshot { path: PathBuf },
    #[error("cannot fetch a snapshot from {endpoint}: {reason}")]
    Fetch { endpoint: String, reason: String },
    #[error("{0}")]
    Restore(#[from] MemberError),
    #[error("cannot read the snapshot's contents: {0}")]
    Store(#[from] MvccError),
}

/// What `localcluster snapshot status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// `HashKV` of the data at `revision`.
    pub hash: u32,
    /// The store's revision when the snapshot was taken.
    pub revision: i64,
    /// Keys alive at `revision`.
    pub total_keys: i64,
    /// Size of the file in bytes.
    pub total_size: u64,
}

/// Size of etcd's pages: a snapshot body is a whole number of them.
const PAGE: usize = 512;
/// Length of the SHA-256 trailer.
const SHA_LEN: usize = 32;

/// Frames store snapshot bytes as a snapshot file (see the module doc).
pub fn frame(store_bytes: &[u8]) -> Vec<u8> {
    let len = store_bytes.len() + 8;
    let padded = len.div_ceil(PAGE) * PAGE;
    let mut out = Vec::with_capacity(padded + SHA_LEN);
    out.extend_from_slice(store_bytes);
    out.resize(padded - 8, 0);
    out.extend_from_slice(&(store_bytes.len() as u64).to_be_bytes());
    let sha = Sha256::digest(&out);
    out.extend_from_slice(&sha);
    out
}

/// Checks a snapshot file whole and returns the store snapshot bytes in it.
pub fn unframe(file: &[u8]) -> Result<&[u8], String> {
    if file.len() < PAGE + SHA_LEN || file.len() % PAGE != SHA_LEN {
        return Err(format!(
            "{} bytes is not a whole snapshot with its SHA-256",
            file.len()
        ));
    }
    let (body, sha) = file.split_at(file.len() - SHA_LEN);
    if Sha256::digest(body).as_slice() != sha {
        return Err("SHA-256 mismatch".into());
    }
    let (rest, len) = body.split_at(body.len() - 8);
    let mut n = [0u8; 8];
    n.copy_from_slice(len);
    let n = usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX);
    if n > rest.len() || rest[n..].iter().any(|b| *b != 0) {
        return Err("bad length or padding".into());
    }
    let store = &rest[..n];
    crate::mvcc::snapshot::validate(store).map_err(|e| match e {
        MvccError::Corrupt(reason) => reason,
        other => other.to_string(),
    })?;
    Ok(store)
}

/// Whether `file` starts as a bbolt database does (etcd's snapshots): a meta
/// page whose header (16 bytes) is followed by bbolt's magic, 0xED0CDAED,
/// little-endian.
fn is_bbolt(file: &[u8]) -> bool {
    file.get(16..20) == Some(&0xED0C_DAEDu32.to_le_bytes()[..])
}

/// Reads a snapshot file, checks it whole and returns the store snapshot bytes.
pub fn read(path: &Path) -> Result<Vec<u8>, BackupError> {
    let bytes = std::fs::read(path).map_err(|source| BackupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if is_bbolt(&bytes) {
        return Err(BackupError::EtcdSnapshot {
            path: path.to_path_buf(),
        });
    }
    let store = unframe(&bytes).map_err(|reason| BackupError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(store.to_vec())
}

/// Hash, revision, keys and size of a snapshot file.
pub fn status(path: &Path) -> Result<SnapshotStatus, BackupError> {
    let bytes = read(path)?;
    let scratch = tempfile::tempdir().map_err(|source| BackupError::Write {
        path: std::env::temp_dir(),
        source,
    })?;
    let store = Store::open(scratch.path().join("kv.redb"))?;
    store.restore(&bytes)?;
    let view = store.read()?;
    let revision = view.current_revision();
    let hash = view.hash_kv(revision)?.hash;
    let opts = RangeOptions {
        count_only: true,
        ..Default::default()
    };
    let total_keys = view.range(&[0], &[0], &opts)?.count;
    let total_size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(SnapshotStatus {
        hash,
        revision,
        total_keys,
        total_size,
    })
}

/// Builds the data dir `cfg.data_dir` of member `cfg.name` of the new cluster
/// `cfg.initial_cluster` from the snapshot file at `path`.
pub fn restore(path: &Path, cfg: &MemberConfig) -> Result<Identity, BackupError> {
    let bytes = read(path)?;
    Ok(crate::member::restore_data_dir(cfg, &bytes)?)
}

/// Streams the snapshot of the member at `endpoint` into `path`; returns its size.
pub async fn save(endpoint: &str, path: &Path, timeout: Duration) -> Result<u64, BackupError> {
    let fetch = |reason: String| BackupError::Fetch {
        endpoint: endpoint.to_string(),
        reason,
    };
    let url = crate::client::url_of(endpoint);
    let channel = crate::client::connect(&url, timeout)
        .await
        .map_err(|e| fetch(e.to_string()))?;
    let mut client = MaintenanceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut stream = client
        .snapshot(SnapshotRequest {})
        .await
        .map_err(|s| fetch(s.message().to_string()))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| fetch(s.message().to_string()))?
    {
        bytes.extend_from_slice(&chunk.blob);
    }
    check_received(&bytes).map_err(fetch)?;
    let part = path.with_extension("part");
    let write = |source| BackupError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::create(&part).map_err(write)?;
    file.write_all(&bytes).map_err(write)?;
    file.sync_all().map_err(write)?;
    std::fs::rename(&part, path).map_err(write)?;
    Ok(bytes.len() as u64)
}

/// Checks a snapshot received from a member: a real etcd's (a bbolt
/// database) is named as such, not reported as damaged.
fn check_received(bytes: &[u8]) -> Result<(), String> {
    if is_bbolt(bytes) {
        return Err("the endpoint sent an etcd (bbolt) snapshot, which localcluster cannot read: save snapshots of etcd with `etcdctl snapshot save`".into());
    }
    unframe(bytes)
        .map(|_| ())
        .map_err(|e| format!("the received snapshot is damaged: {e}"))
}

/// A size as etcd prints it (SI units: `2.1 MB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let exp = ((bytes as f64).ln() / 1000f64.ln()).floor() as usize;
    let exp = exp.min(UNITS.len() - 1);
    let value = bytes as f64 / 1000f64.powi(exp as i32);
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exp])
    } else {
        format!("{value:.0} {}", UNITS[exp])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_etcds() {
        assert_eq!(human_size(5), "5 B");
        assert_eq!(human_size(20_480), "20 kB");
        assert_eq!(human_size(2_100_000), "2.1 MB");
    }

    #[test]
    fn a_truncated_or_damaged_file_is_refused_with_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("kv.redb")).unwrap();
        let good = frame(&store.read().unwrap().snapshot_bytes().unwrap());
        assert_eq!(good.len() % 512, 32, "shaped as etcdctl expects");
        let path = dir.path().join("snap.db");
        std::fs::write(&path, &good).unwrap();
        assert!(read(&path).is_ok());
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("is corrupt or truncated"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let mut bad = good.clone();
        bad[10] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(read(&path), Err(BackupError::Corrupt { .. })));
    }

    #[test]
    fn an_etcd_snapshot_is_named_for_what_it_is() {
        // The first page of a bbolt file: a page header, then the magic.
        let mut bbolt = vec![0u8; 4096];
        bbolt[8] = 0x04; // a meta page
        bbolt[16..20].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.db");
        std::fs::write(&path, &bbolt).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("is an etcd (bbolt) snapshot"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        // The same bytes received by `snapshot save` from a real etcd.
        let err = check_received(&bbolt).unwrap_err();
        assert!(err.contains("sent an etcd (bbolt) snapshot"), "{err}");
        assert!(check_received(&[1u8; 100]).unwrap_err().contains("damaged"));
    }
}
