//! Whether a set of key permissions covers a requested key or range.
//!
//! etcd's ranges: an empty `range_end` is the single key `key`; a `range_end`
//! of `"\0"` is every key from `key` on; otherwise `[key, range_end)`. A
//! request is permitted only when the union of the user's matching permissions
//! covers every key it may touch, so a range is checked as a whole, never key
//! by key. Invariant: every span here is half-open, `[start, end)`, with
//! `end == None` meaning "no upper bound".

use crate::pb::authpb::permission::Type as PermType;
use crate::pb::authpb::Permission;

/// The kind of access a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    /// Whether a permission of type `t` grants this access.
    pub fn granted_by(self, t: i32) -> bool {
        let rw = PermType::Readwrite as i32;
        match self {
            Access::Read => t == PermType::Read as i32 || t == rw,
            Access::Write => t == PermType::Write as i32 || t == rw,
        }
    }
}

/// A half-open key span; `end == None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Span {
    /// The keys etcd means by `key` and `range_end`.
    fn of(key: &[u8], range_end: &[u8]) -> Span {
        match range_end {
            [] => {
                // The single key: [key, key + "\0").
                let mut end = key.to_vec();
                end.push(0);
                Span {
                    start: key.to_vec(),
                    end: Some(end),
                }
            }
            [0] => Span {
                start: key.to_vec(),
                end: None,
            },
            end => Span {
                start: key.to_vec(),
                end: Some(end.to_vec()),
            },
        }
    }

    fn is_empty(&self) -> bool {
        matches!(&self.end, Some(end) if end <= &self.start)
    }
}

/// Whether `perms` (already filtered to those granting the access) cover
/// every key of `[key, range_end)` in etcd's sense.
pub fn covers<'a>(
    perms: impl IntoIterator<Item = &'a Permission>,
    key: &[u8],
    range_end: &[u8],
) -> bool {
    let want = Span::of(key, range_end);
    if want.is_empty() {
        // Nothing to read or write, but etcd still wants the first key allowed.
        return covers_inner(perms, &Span::of(key, &[]));
    }
    covers_inner(perms, &want)
}

fn covers_inner<'a>(perms: impl IntoIterator<Item = &'a Permission>, want: &Span) -> bool {
    let mut spans: Vec<Span> = perms
        .into_iter()
        .map(|p| Span::of(&p.key, &p.range_end))
        .filter(|s| !s.is_empty())
        .collect();
    spans.sort_by(|a, b| a.start.cmp(&b.start));
    // Sweep: `reached` is the end of the covered prefix of `want`.
    let mut reached = want.start.clone();
    for s in spans {
        if s.start > reached {
            break; // a gap before this span
        }
        match s.end {
            None => return true,
            Some(end) if end > reached => reached = end,
            Some(_) => {}
        }
        if matches!(&want.end, Some(e) if &reached >= e) {
            return true;
        }
    }
    matches!(&want.end, Some(e) if &reached >= e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(key: &str, end: &str) -> Permission {
        Permission {
            perm_type: PermType::Readwrite as i32,
            key: key.into(),
            range_end: end.into(),
        }
    }

    #[test]
    fn a_single_key_permission_covers_only_that_key() {
        let p = [perm("foo", "")];
        assert!(covers(&p, b"foo", b""));
        assert!(!covers(&p, b"foo0", b""));
        assert!(!covers(&p, b"foo", b"fop"));
    }

    #[test]
    fn a_prefix_permission_covers_keys_and_sub_ranges_inside_it() {
        let p = [perm("app/", "app0")];
        assert!(covers(&p, b"app/x", b""));
        assert!(covers(&p, b"app/", b"app0"));
        assert!(covers(&p, b"app/a", b"app/b"));
        assert!(!covers(&p, b"apq", b""));
        assert!(!covers(&p, b"app/", b"\0"));
        assert!(!covers(&p, b"a", b"app0"));
    }

    #[test]
    fn adjacent_permissions_join_into_one_range() {
        let p = [perm("b", "c"), perm("a", "b")];
        assert!(covers(&p, b"a", b"c"));
        assert!(!covers(&p, b"a", b"d"));
    }

    #[test]
    fn from_key_permissions_cover_everything_after_their_key() {
        let p = [perm("m", "\0")];
        assert!(covers(&p, b"m", b"\0"));
        assert!(covers(&p, b"zzz", b""));
        assert!(!covers(&p, b"a", b"\0"));
    }

    #[test]
    fn access_kinds_match_etcds_permission_types() {
        assert!(Access::Read.granted_by(PermType::Read as i32));
        assert!(Access::Read.granted_by(PermType::Readwrite as i32));
        assert!(!Access::Read.granted_by(PermType::Write as i32));
        assert!(Access::Write.granted_by(PermType::Write as i32));
        assert!(!Access::Write.granted_by(PermType::Read as i32));
    }
}
