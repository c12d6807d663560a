//! Revision numbers and their stored byte form.
//!
//! A [`Revision`] is a `(main, sub)` pair: `main` is the cluster-wide revision of
//! a revision transaction, `sub` numbers the changes inside it. Stored revisions
//! are 16 bytes: `main` then `sub`, each big-endian, so byte order equals numeric
//! order. Only non-negative revisions are ever stored.

use super::error::{MvccError, Result};

/// Length of a revision in bytes.
pub const REVISION_LEN: usize = 16;

/// A `(main, sub)` revision; ordering is by `main`, then `sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The revision of the revision transaction.
    pub main: i64,
    /// The index of the change inside its revision transaction.
    pub sub: i64,
}

impl Revision {
    /// A revision from its two parts.
    pub fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The largest revision with this `main`.
    pub fn last_of(main: i64) -> Self {
        Revision {
            main,
            sub: i64::MAX,
        }
    }

    /// The stored 16-byte big-endian form. Negative parts are clamped to 0, which
    /// never happens for stored revisions and keeps lower bounds of scans valid.
    pub fn to_bytes(self) -> [u8; REVISION_LEN] {
        let mut out = [0u8; REVISION_LEN];
        out[..8].copy_from_slice(&(self.main.max(0) as u64).to_be_bytes());
        out[8..].copy_from_slice(&(self.sub.max(0) as u64).to_be_bytes());
        out
    }

    /// Parses the stored form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != REVISION_LEN {
            return Err(MvccError::corrupt(format!(
                "revision of {} bytes, want {REVISION_LEN}",
                bytes.len()
            )));
        }
        let mut main = [0u8; 8];
        let mut sub = [0u8; 8];
        main.copy_from_slice(&bytes[..8]);
        sub.copy_from_slice(&bytes[8..]);
        let main = u64::from_be_bytes(main);
        let sub = u64::from_be_bytes(sub);
        if main > i64::MAX as u64 || sub > i64::MAX as u64 {
            return Err(MvccError::corrupt("revision out of range"));
        }
        Ok(Revision {
            main: main as i64,
            sub: sub as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bytes_roundtrip_and_reject_bad_length() {
        let r = Revision::new(7, 3);
        assert_eq!(Revision::from_bytes(&r.to_bytes()), Ok(r));
        assert!(matches!(
            Revision::from_bytes(&[0u8; 15]),
            Err(MvccError::Corrupt(_))
        ));
    }

    proptest! {
        #[test]
        fn byte_order_equals_revision_order(
            a in (0i64..i64::MAX, 0i64..i64::MAX),
            b in (0i64..i64::MAX, 0i64..i64::MAX),
        ) {
            let ra = Revision::new(a.0, a.1);
            let rb = Revision::new(b.0, b.1);
            prop_assert_eq!(ra.cmp(&rb), ra.to_bytes().cmp(&rb.to_bytes()));
            prop_assert_eq!(Revision::from_bytes(&ra.to_bytes()), Ok(ra));
        }
    }
}
