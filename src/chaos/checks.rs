//! Checkers for the parts of a chaos history that are not single registers:
//! lists built by appends, watch streams and leases. Each takes plain
//! records (times in any monotonic unit, here nanoseconds since the run
//! started) and returns the problems it found as sentences; an empty list
//! means the history is consistent.
//!
//! - Lists ([`check_list`]): every append is a read-then-compare-and-set of
//!   the whole list, so the list's final value is the order in which appends
//!   took effect. Every acknowledged append must be in it exactly once, none
//!   that definitely failed, every observed value must be a prefix of the
//!   final one, and real time must be respected (an append acknowledged
//!   before another was invoked comes first; a read sees every append
//!   acknowledged before it started and none invoked after it returned).
//! - Watch streams ([`check_watch_order`], [`check_watch_complete`],
//!   [`check_watch_agree`]): revisions never go back, no event twice, every
//!   acknowledged write in the stream with its key, and all streams agree on
//!   what each revision was.
//! - Leases ([`check_leases`]): no key of a lease is found missing before the
//!   lease's TTL has run out since the start of its last acknowledged grant
//!   or keep-alive (etcd may keep a lease longer, never shorter), unless the
//!   lease was revoked.

use std::collections::{BTreeMap, HashMap, HashSet};

/// How an append ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Acknowledged: the element is in the list.
    Ok,
    /// Definitely not applied (every compare-and-set attempt was refused,
    /// or none was sent).
    Failed,
    /// Timed out or failed mid-way: it may or may not be in the list.
    Unknown,
}

/// One append of a unique element to a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub client: usize,
    pub element: u64,
    pub invoked: u64,
    /// When it was acknowledged or refused; `None` if unknown.
    pub returned: Option<u64>,
    pub outcome: AppendOutcome,
}

/// A list value seen by a read between `invoked` and `returned`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRead {
    pub invoked: u64,
    pub returned: u64,
    pub value: Vec<u64>,
}

/// Checks one list's appends and reads against its final value (read after
/// every append ended).
pub fn check_list(appends: &[Append], reads: &[ListRead], final_value: &[u64]) -> Vec<String> {
    let mut problems = Vec::new();
    let by_element: HashMap<u64, &Append> = appends.iter().map(|a| (a.element, a)).collect();
    let mut position: HashMap<u64, usize> = HashMap::new();
    for (i, &e) in final_value.iter().enumerate() {
        if position.insert(e, i).is_some() {
            problems.push(format!("element {e} is in the final list twice"));
        }
    }
    for a in appends {
        match (a.outcome, position.contains_key(&a.element)) {
            (AppendOutcome::Ok, false) => problems.push(format!(
                "acknowledged append of {} (client {}) is lost: not in the final list",
                a.element, a.client
            )),
            (AppendOutcome::Failed, true) => problems.push(format!(
                "append of {} (client {}) failed but its element is in the final list",
                a.element, a.client
            )),
            _ => {}
        }
    }
    for e in final_value {
        if !by_element.contains_key(e) {
            problems.push(format!("element {e} in the final list was never appended"));
        }
    }
    // Acknowledged appends in the order they returned: one that returned
    // before another was invoked must come first in the list.
    let mut acked: Vec<&Append> = appends
        .iter()
        .filter(|a| a.outcome == AppendOutcome::Ok && a.returned.is_some())
        .collect();
    acked.sort_by_key(|a| a.returned);
    let mut by_invocation: Vec<&Append> = appends
        .iter()
        .filter(|a| a.outcome == AppendOutcome::Ok)
        .collect();
    by_invocation.sort_by_key(|a| a.invoked);
    let mut done = 0;
    // The acknowledged append furthest in the list among those that returned
    // before the current one was invoked.
    let mut furthest: Option<(usize, &Append)> = None;
    for b in by_invocation {
        while done < acked.len() && acked[done].returned < Some(b.invoked) {
            let a = acked[done];
            if let Some(&p) = position.get(&a.element) {
                if furthest.is_none_or(|(q, _)| p > q) {
                    furthest = Some((p, a));
                }
            }
            done += 1;
        }
        if let (Some((p, a)), Some(&q)) = (furthest, position.get(&b.element)) {
            if q < p {
                problems.push(format!(
                    "append of {} was acknowledged before the append of {} was invoked, yet comes after it",
                    a.element, b.element
                ));
            }
        }
    }
    for r in reads {
        if r.value.len() > final_value.len() || r.value[..] != final_value[..r.value.len()] {
            problems.push(format!(
                "a read saw {:?}, which is not a prefix of the final list {:?}",
                r.value, final_value
            ));
            continue;
        }
        let seen: HashSet<u64> = r.value.iter().copied().collect();
        for a in appends {
            if a.outcome == AppendOutcome::Ok
                && a.returned.is_some_and(|t| t < r.invoked)
                && !seen.contains(&a.element)
            {
                problems.push(format!(
                    "a read missed {}, acknowledged before the read started",
                    a.element
                ));
            }
            if a.invoked > r.returned && seen.contains(&a.element) {
                problems.push(format!(
                    "a read saw {}, appended only after the read returned",
                    a.element
                ));
            }
            if a.outcome == AppendOutcome::Failed && seen.contains(&a.element) {
                problems.push(format!("a read saw {}, whose append failed", a.element));
            }
        }
    }
    problems
}

/// One event of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    pub revision: i64,
    pub key: String,
    /// The value put; `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// Revisions must not go back and no `(revision, key)` may come twice (one
/// revision holds several events only when one transaction or one lease
/// expiry touched several keys).
pub fn check_watch_order(events: &[WatchEvent]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: HashSet<(i64, &str)> = HashSet::new();
    let mut last = i64::MIN;
    for e in events {
        if e.revision < last {
            problems.push(format!(
                "event at revision {} ({}) after revision {last}",
                e.revision, e.key
            ));
        }
        last = last.max(e.revision);
        if !seen.insert((e.revision, &e.key)) {
            problems.push(format!(
                "event at revision {} ({}) delivered twice",
                e.revision, e.key
            ));
        }
    }
    problems
}

/// Every acknowledged write `(revision, key)` must be in the stream exactly once.
pub fn check_watch_complete(events: &[WatchEvent], acknowledged: &[(i64, String)]) -> Vec<String> {
    let mut count: HashMap<(i64, &str), usize> = HashMap::new();
    for e in events {
        *count.entry((e.revision, &e.key)).or_default() += 1;
    }
    let mut problems = Vec::new();
    for (rev, key) in acknowledged {
        match count.get(&(*rev, key.as_str())).copied().unwrap_or(0) {
            1 => {}
            0 => problems.push(format!(
                "acknowledged write of {key} at revision {rev} is missing from the stream"
            )),
            n => problems.push(format!(
                "acknowledged write of {key} at revision {rev} is in the stream {n} times"
            )),
        }
    }
    problems
}

/// Streams must agree on each revision's events where they overlap.
pub fn check_watch_agree(streams: &[Vec<WatchEvent>]) -> Vec<String> {
    // (revision, key) -> (value, first stream that had it)
    type Seen<'a> = BTreeMap<(i64, &'a str), (&'a Option<Vec<u8>>, usize)>;
    let mut canon: Seen = BTreeMap::new();
    let mut problems = Vec::new();
    for (s, events) in streams.iter().enumerate() {
        for e in events {
            match canon.get(&(e.revision, e.key.as_str())) {
                Some((v, first)) if *v != &e.value => problems.push(format!(
                    "streams {first} and {s} disagree on {} at revision {}",
                    e.key, e.revision
                )),
                Some(_) => {}
                None => {
                    canon.insert((e.revision, &e.key), (&e.value, s));
                }
            }
        }
    }
    problems
}

/// One lease as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLife {
    pub id: i64,
    /// The TTL granted, in the time unit of the records.
    pub ttl: u64,
    /// Each acknowledged grant or keep-alive: (invoked, returned).
    pub refreshes: Vec<(u64, u64)>,
    /// When a revoke was first invoked, if ever.
    pub revoked: Option<u64>,
    /// Keys attached, with when their put was acknowledged.
    pub keys: Vec<(String, u64)>,
}

/// A read of one key: whether it was there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProbe {
    pub key: String,
    pub invoked: u64,
    pub returned: u64,
    pub present: bool,
}

/// Finds keys that vanished before their lease could have expired: a probe
/// that found a key missing and returned before `invoked + ttl - slack` of
/// the lease's last refresh acknowledged before the probe started (and
/// before any revoke), after the key's put had been acknowledged.
pub fn check_leases(leases: &[LeaseLife], probes: &[KeyProbe], slack: u64) -> Vec<String> {
    let mut owner: HashMap<&str, (&LeaseLife, u64)> = HashMap::new();
    for l in leases {
        for (k, put) in &l.keys {
            owner.insert(k, (l, *put));
        }
    }
    let mut problems = Vec::new();
    for p in probes.iter().filter(|p| !p.present) {
        let Some(&(lease, put)) = owner.get(p.key.as_str()) else {
            continue;
        };
        if put >= p.invoked || lease.revoked.is_some_and(|r| r <= p.returned) {
            continue;
        }
        let Some(deadline) = lease
            .refreshes
            .iter()
            .filter(|(_, returned)| *returned <= p.invoked)
            .map(|(invoked, _)| invoked + lease.ttl)
            .max()
        else {
            continue;
        };
        if p.returned + slack < deadline {
            problems.push(format!(
                "key {} of lease {:x} was gone {} ms before the lease could expire",
                p.key,
                lease.id,
                (deadline - p.returned) / 1_000_000
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(element: u64, invoked: u64, returned: Option<u64>, outcome: AppendOutcome) -> Append {
        Append {
            client: 0,
            element,
            invoked,
            returned,
            outcome,
        }
    }

    #[test]
    fn a_consistent_list_history_passes() {
        let appends = [
            append(1, 0, Some(10), AppendOutcome::Ok),
            append(2, 5, Some(20), AppendOutcome::Ok),
            append(3, 21, None, AppendOutcome::Unknown),
            append(4, 22, Some(30), AppendOutcome::Failed),
        ];
        let reads = [ListRead {
            invoked: 11,
            returned: 12,
            value: vec![1],
        }];
        assert_eq!(
            check_list(&appends, &reads, &[1, 2, 3]),
            Vec::<String>::new()
        );
        // Concurrent appends may land in either order; the unknown one may be lost.
        assert!(check_list(&appends[..3], &[], &[2, 1]).is_empty());
    }

    #[test]
    fn lost_duplicated_failed_and_reordered_appends_are_caught() {
        let appends = [
            append(1, 0, Some(10), AppendOutcome::Ok),
            append(2, 11, Some(20), AppendOutcome::Ok),
            append(3, 21, Some(30), AppendOutcome::Failed),
        ];
        assert_eq!(check_list(&appends, &[], &[1]).len(), 1, "2 lost");
        assert_eq!(check_list(&appends, &[], &[1, 2, 2]).len(), 1);
        assert_eq!(check_list(&appends, &[], &[1, 2, 3]).len(), 1);
        assert_eq!(check_list(&appends, &[], &[2, 1]).len(), 1, "order");
        assert_eq!(check_list(&appends, &[], &[1, 2, 9]).len(), 1, "unknown 9");
    }

    #[test]
    fn reads_must_be_prefixes_that_respect_real_time() {
        let appends = [
            append(1, 0, Some(10), AppendOutcome::Ok),
            append(2, 11, Some(20), AppendOutcome::Ok),
        ];
        let read = |invoked, returned, value: Vec<u64>| ListRead {
            invoked,
            returned,
            value,
        };
        assert_eq!(
            check_list(&appends, &[read(15, 16, vec![2])], &[1, 2]).len(),
            1
        );
        // Misses 1, acknowledged before the read started.
        assert_eq!(
            check_list(&appends, &[read(12, 13, vec![])], &[1, 2]).len(),
            1
        );
        // Sees 2 before it was appended.
        assert_eq!(
            check_list(&appends, &[read(5, 6, vec![1, 2])], &[1, 2]).len(),
            1
        );
        assert!(check_list(&appends, &[read(12, 13, vec![1, 2])], &[1, 2]).is_empty());
    }

    fn ev(revision: i64, key: &str) -> WatchEvent {
        WatchEvent {
            revision,
            key: key.to_string(),
            value: Some(b"v".to_vec()),
        }
    }

    #[test]
    fn watch_streams_out_of_order_or_duplicated_are_caught() {
        let ok = [ev(3, "a"), ev(4, "a"), ev(4, "b"), ev(7, "a")];
        assert!(check_watch_order(&ok).is_empty());
        let dup = [ev(3, "a"), ev(4, "a"), ev(4, "a")];
        assert_eq!(check_watch_order(&dup).len(), 1);
        let back = [ev(3, "a"), ev(5, "a"), ev(4, "b")];
        assert_eq!(check_watch_order(&back).len(), 1);
    }

    #[test]
    fn a_gap_in_a_watch_stream_is_caught() {
        let acked = vec![
            (3, "a".to_string()),
            (4, "b".to_string()),
            (5, "a".to_string()),
        ];
        assert!(check_watch_complete(&[ev(3, "a"), ev(4, "b"), ev(5, "a")], &acked).is_empty());
        let gap = check_watch_complete(&[ev(3, "a"), ev(5, "a")], &acked);
        assert_eq!(gap.len(), 1, "{gap:?}");
        assert!(gap[0].contains("revision 4"));
        // The right revision with the wrong key is a gap too.
        assert_eq!(
            check_watch_complete(&[ev(3, "a"), ev(4, "x"), ev(5, "a")], &acked).len(),
            1
        );
        assert_eq!(
            check_watch_complete(&[ev(3, "a"), ev(3, "a"), ev(4, "b"), ev(5, "a")], &acked).len(),
            1
        );
    }

    #[test]
    fn watch_streams_that_disagree_are_caught() {
        let mut other = ev(4, "a");
        other.value = None;
        assert!(check_watch_agree(&[vec![ev(3, "a"), ev(4, "a")], vec![ev(4, "a")]]).is_empty());
        assert_eq!(check_watch_agree(&[vec![ev(4, "a")], vec![other]]).len(), 1);
    }

    fn lease(refreshes: Vec<(u64, u64)>, revoked: Option<u64>) -> LeaseLife {
        LeaseLife {
            id: 7,
            ttl: 100,
            refreshes,
            revoked,
            keys: vec![("k".to_string(), 5)],
        }
    }

    fn probe(invoked: u64, returned: u64, present: bool) -> KeyProbe {
        KeyProbe {
            key: "k".to_string(),
            invoked,
            returned,
            present,
        }
    }

    #[test]
    fn a_lease_key_gone_before_its_ttl_is_caught() {
        // Granted at 0..2 with TTL 100: gone at 50 is early.
        let l = lease(vec![(0, 2)], None);
        assert_eq!(
            check_leases(std::slice::from_ref(&l), &[probe(49, 50, false)], 0).len(),
            1
        );
        // Gone after 100: fine. Present: fine.
        assert!(check_leases(std::slice::from_ref(&l), &[probe(101, 102, false)], 0).is_empty());
        assert!(check_leases(&[l], &[probe(49, 50, true)], 0).is_empty());
        // A keep-alive at 60 pushes the deadline to 160.
        let kept = lease(vec![(0, 2), (60, 61)], None);
        assert_eq!(
            check_leases(std::slice::from_ref(&kept), &[probe(120, 130, false)], 0).len(),
            1
        );
        // ... but only once it was acknowledged before the probe started.
        assert!(check_leases(&[kept], &[probe(60, 130, false)], 0).is_empty());
        // A revoked lease may lose its keys at once; slack forgives a little.
        assert!(
            check_leases(&[lease(vec![(0, 2)], Some(10))], &[probe(49, 50, false)], 0).is_empty()
        );
        assert!(check_leases(&[lease(vec![(0, 2)], None)], &[probe(95, 96, false)], 10).is_empty());
    }
}
