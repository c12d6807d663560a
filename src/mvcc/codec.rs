//! Byte encodings of what the MVCC store keeps in redb.
//!
//! * **Records** (values of the `kv` table): one stored revision of one key.
//!   Layout: tag (`b'p'` put, `b't'` tombstone), then `create_revision`,
//!   `mod_revision`, `version`, `lease` as 8-byte big-endian, then the key length
//!   as 4-byte big-endian, the key, and the value (the rest of the buffer).
//! * **Index keys** (keys of the `index` table): the user key with every `0x00`
//!   byte escaped as `0x00 0xFF`, terminated by `0x00 0x00`, followed by the
//!   16-byte revision. The escaped prefix is order-preserving and prefix-free, so
//!   byte order of index keys is (user key, revision) order and all revisions of
//!   one key are contiguous.
//! * **Index values**: one byte, [`INDEX_PUT`] or [`INDEX_TOMBSTONE`].
//!
//! Decoding never panics: malformed bytes give [`MvccError::Corrupt`].

use super::error::{MvccError, Result};
use super::revision::{Revision, REVISION_LEN};
use super::types::KeyValue;

/// Index value of a put.
pub const INDEX_PUT: u8 = 0;
/// Index value of a tombstone (delete).
pub const INDEX_TOMBSTONE: u8 = 1;

const TAG_PUT: u8 = b'p';
const TAG_TOMBSTONE: u8 = b't';
const HEADER_LEN: usize = 1 + 4 * 8 + 4;

/// One stored revision of a key: a put with its key-value, or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// True for a delete.
    pub tombstone: bool,
    /// For a tombstone only `key` and `mod_revision` are meaningful.
    pub kv: KeyValue,
}

/// Encodes a record.
pub fn encode_record(tombstone: bool, kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record_into(&mut out, tombstone, kv);
    out
}

/// Encodes a record into `out`, replacing its contents (lets a loop reuse one
/// buffer).
pub fn encode_record_into(out: &mut Vec<u8>, tombstone: bool, kv: &KeyValue) {
    out.clear();
    out.reserve(HEADER_LEN + kv.key.len() + kv.value.len());
    out.push(if tombstone { TAG_TOMBSTONE } else { TAG_PUT });
    for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    // Keys are bounded far below 4 GiB by the API layer (etcd: 1.5 MiB requests).
    out.extend_from_slice(&(kv.key.len() as u32).to_be_bytes());
    out.extend_from_slice(&kv.key);
    out.extend_from_slice(&kv.value);
}

/// Decodes a record.
pub fn decode_record(bytes: &[u8]) -> Result<Record> {
    let (tombstone, key_len) = decode_header(bytes)?;
    let num = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[1 + 8 * i..9 + 8 * i]);
        i64::from_be_bytes(b)
    };
    let key_end = HEADER_LEN + key_len;
    Ok(Record {
        tombstone,
        kv: KeyValue {
            key: bytes[HEADER_LEN..key_end].to_vec(),
            create_revision: num(0),
            mod_revision: num(1),
            version: num(2),
            lease: num(3),
            value: bytes[key_end..].to_vec(),
        },
    })
}

/// Decodes only the key of a record.
pub fn decode_record_key(bytes: &[u8]) -> Result<&[u8]> {
    let (_, key_len) = decode_header(bytes)?;
    Ok(&bytes[HEADER_LEN..HEADER_LEN + key_len])
}

/// Validates the fixed header; returns (tombstone, key length).
fn decode_header(bytes: &[u8]) -> Result<(bool, usize)> {
    if bytes.len() < HEADER_LEN {
        return Err(MvccError::corrupt("record shorter than its header"));
    }
    let tombstone = match bytes[0] {
        TAG_PUT => false,
        TAG_TOMBSTONE => true,
        other => return Err(MvccError::corrupt(format!("unknown record tag {other}"))),
    };
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[HEADER_LEN - 4..HEADER_LEN]);
    let key_len = u32::from_be_bytes(len) as usize;
    if bytes.len() - HEADER_LEN < key_len {
        return Err(MvccError::corrupt("record key runs past its end"));
    }
    Ok((tombstone, key_len))
}

/// The escaped, terminated form of a user key: the prefix of all its index keys.
pub fn index_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + REVISION_LEN);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// An index key: [`index_prefix`] of `key` followed by the revision.
pub fn index_key(prefix: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + REVISION_LEN);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&rev.to_bytes());
    out
}

/// The index key of `key` at `rev` written into `out`, replacing its contents:
/// the same bytes as `index_key(&index_prefix(key), rev)` without the two
/// allocations.
pub fn index_key_into(out: &mut Vec<u8>, key: &[u8], rev: Revision) {
    out.clear();
    out.reserve(key.len() + 2 + REVISION_LEN);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&rev.to_bytes());
}

/// Splits an index key into its prefix and its revision.
pub fn split_index_key(bytes: &[u8]) -> Result<(&[u8], Revision)> {
    if bytes.len() < REVISION_LEN + 2 {
        return Err(MvccError::corrupt("index key too short"));
    }
    let (prefix, rev) = bytes.split_at(bytes.len() - REVISION_LEN);
    Ok((prefix, Revision::from_bytes(rev)?))
}

/// Recovers the user key from an index prefix.
pub fn decode_index_prefix(prefix: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(prefix.len());
    let mut i = 0;
    while i < prefix.len() {
        let b = prefix[i];
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match prefix.get(i + 1) {
            Some(0xFF) => {
                out.push(0);
                i += 2;
            }
            Some(0) if i + 2 == prefix.len() => return Ok(out),
            _ => break,
        }
    }
    Err(MvccError::corrupt("malformed index key prefix"))
}

/// A cursor over a byte buffer that reads length-prefixed fields and fails with
/// [`MvccError::Corrupt`] instead of panicking on short input.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Reads `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(MvccError::corrupt("unexpected end of data"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_be_bytes(b))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_be_bytes(b))
    }

    /// Reads a u32-length-prefixed byte string.
    pub fn chunk(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
}

/// Appends a u32-length-prefixed byte string.
pub fn put_chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kv_strategy() -> impl Strategy<Value = KeyValue> {
        (
            proptest::collection::vec(any::<u8>(), 0..20),
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
        )
            .prop_map(|(key, value, c, m, v, l)| KeyValue {
                key,
                value,
                create_revision: c,
                mod_revision: m,
                version: v,
                lease: l,
            })
    }

    #[test]
    fn truncated_or_mistagged_records_are_corrupt() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..KeyValue::default()
        };
        let enc = encode_record(false, &kv);
        assert!(matches!(
            decode_record(&enc[..HEADER_LEN - 1]),
            Err(MvccError::Corrupt(_))
        ));
        assert!(matches!(
            decode_record(&enc[..HEADER_LEN]),
            Err(MvccError::Corrupt(_))
        ));
        let mut bad = enc.clone();
        bad[0] = b'x';
        assert!(matches!(decode_record(&bad), Err(MvccError::Corrupt(_))));
    }

    #[test]
    fn malformed_index_prefixes_are_corrupt() {
        assert!(decode_index_prefix(b"ab").is_err());
        assert!(decode_index_prefix(&[b'a', 0, 1]).is_err());
        assert!(decode_index_prefix(&[0, 0, b'a', 0, 0]).is_err());
        assert!(split_index_key(&[0; 17]).is_err());
    }

    proptest! {
        #[test]
        fn records_roundtrip(kv in kv_strategy(), tombstone in any::<bool>()) {
            let enc = encode_record(tombstone, &kv);
            let mut buf = vec![7u8; 5];
            encode_record_into(&mut buf, tombstone, &kv);
            prop_assert_eq!(&buf, &enc);
            prop_assert_eq!(decode_record_key(&enc)?, kv.key.as_slice());
            let rec = decode_record(&enc)?;
            prop_assert_eq!(rec, Record { tombstone, kv });
        }

        #[test]
        fn index_keys_sort_by_key_then_revision(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..6),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..6),
            ra in (0i64..100, 0i64..4),
            rb in (0i64..100, 0i64..4),
        ) {
            let ra = Revision::new(ra.0, ra.1);
            let rb = Revision::new(rb.0, rb.1);
            let ka = index_key(&index_prefix(&a), ra);
            let kb = index_key(&index_prefix(&b), rb);
            prop_assert_eq!((&a, ra).cmp(&(&b, rb)), ka.cmp(&kb));
            let mut buf = vec![7u8; 3];
            index_key_into(&mut buf, &a, ra);
            prop_assert_eq!(&buf, &ka);
            let (prefix, rev) = split_index_key(&ka)?;
            prop_assert_eq!(rev, ra);
            prop_assert_eq!(decode_index_prefix(prefix)?, a);
        }
    }
}
