//! Leases: a TTL that keeps keys alive while a client keeps renewing it.
//!
//! The set of leases and their TTLs is replicated state: grants, revocations and
//! keep-alives are Raft entries, applied on every member, and the table is stored
//! with the key-value data (so it travels in snapshots). Deadlines are not
//! replicated: each member sets `deadline = now + ttl` when it applies a grant or
//! a keep-alive, and a member that becomes leader extends every deadline by a full
//! TTL (etcd's "promote"), so a leader change never expires a lease early. Only the
//! leader revokes expired leases, by proposing a revoke like any client would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::pb::lcraftpb::{LeaseRecord, LeaseRecords};

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// Seconds, as granted.
    pub ttl: i64,
    pub deadline: Instant,
}

impl Lease {
    /// Whole seconds left (rounded up), or -1 once expired.
    pub fn remaining_secs(&self, now: Instant) -> i64 {
        match self.deadline.checked_duration_since(now) {
            Some(d) if !d.is_zero() => d.as_millis().div_ceil(1000) as i64,
            _ => -1,
        }
    }
}

/// All leases of the cluster, as this member knows them.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
}

impl LeaseTable {
    /// Rebuilds the table from its stored records; every lease gets a full TTL.
    pub fn from_records(records: &LeaseRecords, now: Instant) -> Self {
        let mut t = LeaseTable::default();
        for r in &records.leases {
            t.grant(r.id, r.ttl, now);
        }
        t
    }

    /// The records to store.
    pub fn records(&self) -> LeaseRecords {
        LeaseRecords {
            leases: self
                .leases
                .values()
                .map(|l| LeaseRecord {
                    id: l.id,
                    ttl: l.ttl,
                })
                .collect(),
        }
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// Adds a lease expiring `ttl` seconds from `now`.
    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant) {
        let deadline = now + Duration::from_secs(ttl.max(0) as u64);
        self.leases.insert(id, Lease { id, ttl, deadline });
    }

    /// Removes a lease; false if it did not exist.
    pub fn revoke(&mut self, id: i64) -> bool {
        self.leases.remove(&id).is_some()
    }

    /// Renews a lease for a full TTL; returns the TTL, or None if unknown.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let l = self.leases.get_mut(&id)?;
        l.deadline = now + Duration::from_secs(l.ttl.max(0) as u64);
        Some(l.ttl)
    }

    /// Gives every lease a full TTL from `now` (on becoming leader).
    pub fn promote(&mut self, now: Instant) {
        for l in self.leases.values_mut() {
            l.deadline = now + Duration::from_secs(l.ttl.max(0) as u64);
        }
    }

    /// Leases whose deadline has passed.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        self.leases
            .values()
            .filter(|l| l.deadline <= now)
            .map(|l| l.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_after_its_ttl_unless_renewed() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.grant(1, 5, t0);
        assert!(t.expired(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(t.renew(1, t0 + Duration::from_secs(4)), Some(5));
        assert!(t.expired(t0 + Duration::from_secs(8)).is_empty());
        assert_eq!(t.expired(t0 + Duration::from_secs(9)), vec![1]);
    }

    #[test]
    fn remaining_time_rounds_up_and_is_minus_one_when_expired() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.grant(7, 10, t0);
        let l = t.get(7).unwrap();
        assert_eq!(l.remaining_secs(t0 + Duration::from_millis(500)), 10);
        assert_eq!(l.remaining_secs(t0 + Duration::from_secs(11)), -1);
    }

    #[test]
    fn records_round_trip() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.grant(1, 5, t0);
        t.grant(2, 60, t0);
        let back = LeaseTable::from_records(&t.records(), t0);
        assert_eq!(back.ids(), vec![1, 2]);
        assert_eq!(back.get(2).unwrap().ttl, 60);
    }
}
