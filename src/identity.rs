//! Member and cluster IDs, derived the way etcd derives them.
//!
//! etcd never stores a random ID for a member that bootstraps a cluster: every
//! member of a new cluster computes the IDs of all members (and so the cluster
//! ID) from `--initial-cluster` and `--initial-cluster-token` alone, so all of
//! them agree without talking to each other. A member added later with
//! `member add` mixes the current time in, so re-adding the same peer URL gives
//! a fresh ID.
//!
//! * member ID: the first 8 bytes (big-endian) of SHA-1 over the member's peer
//!   URLs in Go string form (`http://host:port`, no trailing slash), sorted
//!   byte-wise and concatenated with no separator, followed by the cluster
//!   token and, when given, the decimal Unix time in seconds.
//! * cluster ID: the first 8 bytes (big-endian) of SHA-1 over the member IDs,
//!   sorted ascending, each as 8 big-endian bytes.
//!
//! IDs print as lowercase hex without zero padding (Go's `%x`, which is what
//! etcdctl and etcd's logs show). Invariant: the functions here are pure, so the
//! same inputs give the same IDs on every member and on every run.

use sha1::{Digest, Sha1};

/// The ID etcd gives a member with these peer URLs in a cluster with this token.
///
/// `peer_urls` must be in Go string form (see [`crate::config::EtcdUrl`], whose
/// `Display` is that form); their order does not matter. `now_unix_secs` is
/// `None` for members listed in `--initial-cluster` and `Some(now)` for a member
/// added at run time.
pub fn member_id<S: AsRef<str>>(
    peer_urls: &[S],
    cluster_token: &str,
    now_unix_secs: Option<u64>,
) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(AsRef::as_ref).collect();
    urls.sort_unstable();
    let mut hasher = Sha1::new();
    for url in urls {
        hasher.update(url.as_bytes());
    }
    hasher.update(cluster_token.as_bytes());
    if let Some(now) = now_unix_secs {
        hasher.update(now.to_string().as_bytes());
    }
    first_eight_bytes(&hasher.finalize())
}

/// The ID etcd gives a cluster whose members have these IDs.
///
/// The order of `member_ids` does not matter; they are expected to be distinct
/// (etcd refuses to build a cluster with two members of the same ID).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = Sha1::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    first_eight_bytes(&hasher.finalize())
}

/// An ID as etcd and etcdctl print it: lowercase hex, no zero padding.
pub fn fmt_id(id: u64) -> String {
    format!("{id:x}")
}

/// Parses an ID the way etcdctl reads one (`member remove 8e9e05c52164694d`):
/// hex, 1 to 16 digits, either case. `None` if it is not such a number.
pub fn parse_id(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

fn first_eight_bytes(digest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1984-12-23T15:04:05Z, the instant etcd's own member tests use.
    const ETCD_TEST_TIME: u64 = 472_662_245;

    #[test]
    fn default_single_member_matches_etcd_well_known_ids() {
        // `etcd` with no flags logs: added member 8e9e05c52164694d
        // [http://localhost:2380] to cluster cdf818194e3a8c32.
        let id = member_id(&["http://localhost:2380"], "etcd-cluster", None);
        assert_eq!(fmt_id(id), "8e9e05c52164694d");
        assert_eq!(fmt_id(cluster_id(&[id])), "cdf818194e3a8c32");
    }

    #[test]
    fn member_ids_match_etcd_member_test_vectors() {
        // From etcd's membership TestMemberTime (empty cluster token).
        assert_eq!(
            member_id(&["http://10.0.0.8:2379"], "", None),
            14544069596553697298
        );
        assert_eq!(
            member_id(&["http://10.0.0.8:2379"], "", Some(ETCD_TEST_TIME)),
            2448790162483548276
        );
        assert_eq!(
            member_id(&["http://10.0.0.8:2379"], "etcd", Some(ETCD_TEST_TIME)),
            6973882743191604649
        );
        assert_eq!(
            member_id(&["http://10.0.0.1:2379"], "", Some(ETCD_TEST_TIME)),
            1466075294948436910
        );
        assert_eq!(
            member_id(&["http://10.0.0.1:2379", "http://10.0.0.2:2379"], "", None),
            16552244735972308939
        );
    }

    #[test]
    fn member_id_ignores_peer_url_order() {
        let a = member_id(&["http://10.0.0.2:2379", "http://10.0.0.1:2379"], "t", None);
        let b = member_id(&["http://10.0.0.1:2379", "http://10.0.0.2:2379"], "t", None);
        assert_eq!(a, b);
        assert_eq!(
            a,
            member_id(
                &["http://10.0.0.1:2379", "http://10.0.0.2:2379"].map(String::from),
                "t",
                None
            )
        );
    }

    #[test]
    fn member_id_depends_on_token_and_time() {
        let urls = ["http://127.0.0.1:2380"];
        let base = member_id(&urls, "etcd-cluster", None);
        assert_ne!(base, member_id(&urls, "etcd-cluster-2", None));
        assert_ne!(base, member_id(&urls, "etcd-cluster", Some(1)));
    }

    #[test]
    fn cluster_id_ignores_member_order() {
        let a = member_id(&["http://127.0.0.1:12380"], "tok", None);
        let b = member_id(&["http://127.0.0.1:22380"], "tok", None);
        let c = member_id(&["http://127.0.0.1:32380"], "tok", None);
        assert_eq!(cluster_id(&[a, b, c]), cluster_id(&[c, a, b]));
        assert_ne!(cluster_id(&[a, b, c]), cluster_id(&[a, b]));
    }

    #[test]
    fn ids_print_like_go_percent_x_without_padding() {
        assert_eq!(fmt_id(0x8e9e05c52164694d), "8e9e05c52164694d");
        assert_eq!(fmt_id(0x0abc), "abc");
        assert_eq!(fmt_id(0), "0");
    }

    #[test]
    fn parse_id_reads_what_fmt_id_prints() {
        for id in [0, 1, 0xabc, 0x8e9e05c52164694d, u64::MAX] {
            assert_eq!(parse_id(&fmt_id(id)), Some(id));
        }
        assert_eq!(parse_id("8E9E05C52164694D"), Some(0x8e9e05c52164694d));
        assert_eq!(parse_id(""), None);
        assert_eq!(parse_id("+1"), None);
        assert_eq!(parse_id("xyz"), None);
        assert_eq!(parse_id("11112222333344445"), None);
    }
}
