//! Byte encodings of what the MVCC store keeps in redb.
//!
//! * **Records** (values of the `kv` table): one stored revision of one key.
//!   Layout: tag (`b'p'` put, `b't'` tombstone), then `create_revision`,
//!   `mod_revision`, `version`, `lease` as 8-byte big-endian, then the key length
//!   as 4-byte big-endian, the key, and the value (the rest of the buffer).
//!   Records are self-describing: the key index (`super::index`) is rebuilt
//!   from their tags and keys alone.
//!
//! Decoding never panics: malformed bytes give [`MvccError::Corrupt`].

use super::error::{MvccError, Result};
use super::types::KeyValue;

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

/// Encodes a record into `out`, replacing its contents. (Batches append
/// their records to one buffer with [`append_record`].)
pub fn encode_record_into(out: &mut Vec<u8>, tombstone: bool, kv: &KeyValue) {
    out.clear();
    append_record(out, tombstone, &RecordRef::of(kv));
}

/// The parts of a record, borrowed: what a write encodes without building a
/// [`KeyValue`] first.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl<'a> RecordRef<'a> {
    pub fn of(kv: &'a KeyValue) -> Self {
        RecordRef {
            key: &kv.key,
            value: &kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }

    /// A tombstone's parts (as [`KeyValue::tombstone`]).
    pub fn tombstone(key: &'a [u8], mod_revision: i64) -> Self {
        RecordRef {
            key,
            value: &[],
            create_revision: 0,
            mod_revision,
            version: 0,
            lease: 0,
        }
    }

    /// An owned copy.
    pub fn to_kv(&self) -> KeyValue {
        KeyValue {
            key: self.key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }
}

/// Appends the encoding of a record to `out`.
pub fn append_record(out: &mut Vec<u8>, tombstone: bool, r: &RecordRef<'_>) {
    out.reserve(HEADER_LEN + r.key.len() + r.value.len());
    out.push(if tombstone { TAG_TOMBSTONE } else { TAG_PUT });
    for n in [r.create_revision, r.mod_revision, r.version, r.lease] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    // Keys are bounded far below 4 GiB by the API layer (etcd: 1.5 MiB requests).
    out.extend_from_slice(&(r.key.len() as u32).to_be_bytes());
    out.extend_from_slice(r.key);
    out.extend_from_slice(r.value);
}

/// Decodes a record.
pub fn decode_record(bytes: &[u8]) -> Result<Record> {
    let (tombstone, key_len) = decode_header(bytes)?;
    let key_end = HEADER_LEN + key_len;
    Ok(Record {
        tombstone,
        kv: KeyValue {
            key: bytes[HEADER_LEN..key_end].to_vec(),
            create_revision: header_number(bytes, 0),
            mod_revision: header_number(bytes, 1),
            version: header_number(bytes, 2),
            lease: header_number(bytes, 3),
            value: bytes[key_end..].to_vec(),
        },
    })
}

/// A record without its value: what the key index is rebuilt from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHead<'a> {
    pub tombstone: bool,
    pub key: &'a [u8],
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// Decodes a record's tag, key and numbers, not its value.
pub fn decode_record_head(bytes: &[u8]) -> Result<RecordHead<'_>> {
    let (tombstone, key_len) = decode_header(bytes)?;
    Ok(RecordHead {
        tombstone,
        key: &bytes[HEADER_LEN..HEADER_LEN + key_len],
        create_revision: header_number(bytes, 0),
        version: header_number(bytes, 2),
        lease: header_number(bytes, 3),
    })
}

/// The `i`-th 8-byte number of a record's header (0 create revision, 1 mod
/// revision, 2 version, 3 lease); `bytes` holds at least a header.
fn header_number(bytes: &[u8], i: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[1 + 8 * i..9 + 8 * i]);
    i64::from_be_bytes(b)
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

    proptest! {
        #[test]
        fn records_roundtrip(kv in kv_strategy(), tombstone in any::<bool>()) {
            let enc = encode_record(tombstone, &kv);
            let mut buf = vec![7u8; 5];
            encode_record_into(&mut buf, tombstone, &kv);
            prop_assert_eq!(&buf, &enc);
            let head = decode_record_head(&enc)?;
            prop_assert_eq!(
                (head.tombstone, head.key, head.create_revision, head.version, head.lease),
                (tombstone, kv.key.as_slice(), kv.create_revision, kv.version, kv.lease)
            );
            let rec = decode_record(&enc)?;
            prop_assert_eq!(rec, Record { tombstone, kv });
        }

    }
}
