//! Whole-store snapshot bytes, for Raft snapshots (and, framed by
//! `crate::backup`, for backup files).
//!
//! Format: the magic `LCMVCC02`, then for each table of [`ALL_TABLES`] in
//! order: its name (u32-length prefixed), its entry count (u64), and its
//! entries (u32-length-prefixed key, then value; `mvcc_kv` one record per
//! entry, as stores wrote it before batches grouped their records, see
//! [`super::entry`]); finally the CRC-32C of everything before it (u32). All
//! integers are big-endian. [`decode`] checks the magic, the checksum, the table names and
//! that nothing trails, so a restore never starts from damaged bytes.
//!
//! Version 1 (`LCMVCC01`, written before the key index moved to memory) holds
//! the two key-ordered index tables between `mvcc_kv` and `mvcc_state`; it is
//! still read, and those tables are skipped (the index is rebuilt from the
//! records), so old snapshots and backup files restore.

use redb::{ReadableTable, TableHandle};

use super::codec::{put_chunk, Reader};
use super::error::{MvccError, Result};
use super::hash::crc32c;
use super::store::{ALL_TABLES, KV, LEGACY_TABLES};

const MAGIC: &[u8; 8] = b"LCMVCC02";
/// The magic of version 1 snapshots.
const MAGIC_V1: &[u8; 8] = b"LCMVCC01";

/// Entries of one table, borrowed from the snapshot bytes.
pub(crate) type TableEntries<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Serializes `tables`, which must be given in `ALL_TABLES` order.
pub(crate) fn encode<T: ReadableTable<&'static [u8], &'static [u8]>>(
    tables: &[&T; ALL_TABLES.len()],
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    for (def, table) in ALL_TABLES.iter().zip(tables) {
        put_chunk(&mut out, def.name().as_bytes());
        let count_at = out.len();
        out.extend_from_slice(&0u64.to_be_bytes());
        let mut count: u64 = 0;
        if def.name() == KV.name() {
            // Record by record, whatever groups hold them (see
            // `super::entry`), so that a snapshot depends on the records
            // alone, not on how this member's batches grouped them.
            super::entry::for_each_stored(*table, |rev, record| {
                put_chunk(&mut out, &rev.to_bytes());
                put_chunk(&mut out, record);
                count += 1;
                Ok(())
            })?;
        } else {
            for entry in table.iter()? {
                let (k, v) = entry?;
                put_chunk(&mut out, k.value());
                put_chunk(&mut out, v.value());
                count += 1;
            }
        }
        out[count_at..count_at + 8].copy_from_slice(&count.to_be_bytes());
    }
    let sum = crc32c(&out);
    out.extend_from_slice(&sum.to_be_bytes());
    Ok(out)
}

/// Checks snapshot bytes whole (checksum, magic, tables, no trailing bytes).
pub fn validate(bytes: &[u8]) -> Result<()> {
    decode(bytes).map(|_| ())
}

/// Parses and validates snapshot bytes into per-table entries, in
/// `ALL_TABLES` order.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<TableEntries<'_>>> {
    if bytes.len() < MAGIC.len() + 4 {
        return Err(MvccError::corrupt("snapshot too short"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 4);
    let mut want = [0u8; 4];
    want.copy_from_slice(sum);
    if crc32c(body) != u32::from_be_bytes(want) {
        return Err(MvccError::corrupt("snapshot checksum mismatch"));
    }
    let mut r = Reader::new(body);
    let magic = r.bytes(MAGIC.len())?;
    let [kv, state, meta] = ALL_TABLES;
    let [index, live] = LEGACY_TABLES;
    // Each table in the order stored, and whether it is kept.
    let layout = if magic == MAGIC {
        vec![(kv, true), (state, true), (meta, true)]
    } else if magic == MAGIC_V1 {
        vec![
            (kv, true),
            (index, false),
            (live, false),
            (state, true),
            (meta, true),
        ]
    } else {
        return Err(MvccError::corrupt("not an mvcc snapshot"));
    };
    let mut tables = Vec::with_capacity(ALL_TABLES.len());
    for (def, keep) in layout {
        let name = r.chunk()?;
        if name != def.name().as_bytes() {
            return Err(MvccError::corrupt(format!(
                "snapshot table {:?}, want {:?}",
                String::from_utf8_lossy(name),
                def.name()
            )));
        }
        let count = r.u64()?;
        let mut entries = Vec::new();
        for _ in 0..count {
            let k = r.chunk()?;
            let v = r.chunk()?;
            if keep {
                entries.push((k, v));
            }
        }
        if keep {
            tables.push(entries);
        }
    }
    if r.remaining() != 0 {
        return Err(MvccError::corrupt("trailing bytes after snapshot"));
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_snapshots_are_rejected() {
        assert!(decode(b"").is_err());
        assert!(decode(b"LCMVCC01\0\0\0\0").is_err());
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(b"junk");
        let sum = crc32c(&body);
        body.extend_from_slice(&sum.to_be_bytes());
        assert!(matches!(decode(&body), Err(MvccError::Corrupt(_))));
    }
}
