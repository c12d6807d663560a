//! etcd's `key` + `range_end` forms, turned into one [`KeyRange`].
//!
//! * `range_end` empty: the single key `key`;
//! * `range_end == [0]`: every key `>= key` (so `key == [0]` too means all keys,
//!   since etcd keys are never empty);
//! * otherwise: the half-open interval `[key, range_end)`, empty when
//!   `range_end <= key`.

use std::ops::Bound;

/// A set of keys addressed by a range request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key.
    Single(Vec<u8>),
    /// Every key `>= start`.
    From(Vec<u8>),
    /// Every key in `[start, end)`.
    Between(Vec<u8>, Vec<u8>),
}

impl KeyRange {
    /// Interprets etcd's `key`/`range_end` pair.
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::From(key.to_vec()),
            end => KeyRange::Between(key.to_vec(), end.to_vec()),
        }
    }

    /// True if `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => key == k.as_slice(),
            KeyRange::From(start) => key >= start.as_slice(),
            KeyRange::Between(start, end) => key >= start.as_slice() && key < end.as_slice(),
        }
    }

    /// True if no key can be in the range.
    pub fn is_empty(&self) -> bool {
        matches!(self, KeyRange::Between(start, end) if end <= start)
    }

    /// The range as bounds over keys (for scanning a table keyed by user key).
    /// Must not be called on an empty range.
    pub fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        match self {
            KeyRange::Single(k) => (Bound::Included(k), Bound::Included(k)),
            KeyRange::From(start) => (Bound::Included(start), Bound::Unbounded),
            KeyRange::Between(start, end) => (Bound::Included(start), Bound::Excluded(end)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_range_end_is_single_key() {
        let r = KeyRange::new(b"foo", b"");
        assert!(r.contains(b"foo"));
        assert!(!r.contains(b"foo0"));
        assert!(!r.contains(b"fo"));
    }

    #[test]
    fn zero_byte_range_end_is_all_keys_from_key() {
        let r = KeyRange::new(b"b", b"\0");
        assert!(r.contains(b"b"));
        assert!(r.contains(b"zzz"));
        assert!(!r.contains(b"a"));
        let all = KeyRange::new(b"\0", b"\0");
        assert!(all.contains(b"\0"));
        assert!(all.contains(b"a"));
        assert!(all.contains(&[0xFF, 0xFF]));
    }

    #[test]
    fn explicit_range_end_is_half_open() {
        let r = KeyRange::new(b"a", b"c");
        assert!(r.contains(b"a"));
        assert!(r.contains(b"bzz"));
        assert!(!r.contains(b"c"));
        assert!(!r.is_empty());
        assert!(KeyRange::new(b"c", b"a").is_empty());
        assert!(KeyRange::new(b"c", b"c").is_empty());
    }
}
