//! Leases: a TTL that keeps keys alive while a client keeps renewing it.
//!
//! The set of leases and their TTLs is replicated state: grants, revocations and
//! keep-alives are Raft entries, applied on every member, and the table is stored
//! with the key-value data (so it travels in snapshots). Deadlines are not
//! replicated: each member sets `deadline = now + ttl` when it applies a grant or
//! a keep-alive, and a member that becomes leader extends every deadline by a full
//! TTL (etcd's "promote"), so a leader change never expires a lease early.
//!
//! Only the leader revokes expired leases, by proposing an *expiry* that names
//! the log index the leader had applied when it found the lease expired
//! ([`LeaseTable::checked_index`]). Between that look and the expiry's place in
//! the log, a keep-alive may still be committed, applied and acknowledged (it
//! was already in flight, or a follower applied it first). Every member
//! therefore applies an expiry only if the lease was not renewed past the
//! checked index, so a keep-alive ordered before the expiry is never undone by
//! it. The index of each lease's last renewal ([`Lease::renewed`]) is
//! replicated state: set by the entries themselves and stored beside the lease
//! (see `apply`), so a member that restarts in between decides as the others
//! do. Renewals applied by a version that did not store the index read back as
//! 0; the leader decides only once it has applied every entry of earlier terms
//! (see `api::lease::expire_leases`), so such renewals are at or below any
//! checked index whether a member stored their index or not.

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
    /// Log index of the grant or keep-alive that last renewed the lease (0 when
    /// unknown: a lease stored before renewal indexes were kept, never renewed
    /// since). The same on every member at the same applied index, but for
    /// renewals a previous version applied (see the module docs).
    pub renewed: u64,
}

impl Lease {
    /// Whole seconds left, truncated toward zero as etcd truncates them (299
    /// just after a grant of 300): 0 in the first second past the deadline,
    /// while the expired lease waits for its revoke, and negative after.
    pub fn remaining_secs(&self, now: Instant) -> i64 {
        match self.deadline.checked_duration_since(now) {
            Some(left) => left.as_secs() as i64,
            None => -((now - self.deadline).as_secs() as i64),
        }
    }
}

/// All leases of the cluster, as this member knows them.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    /// The log index of the last entry applied to the table: every renewal
    /// the deadlines reflect is at or below it.
    applied: u64,
}

impl LeaseTable {
    /// Rebuilds the table, as of applied index `applied`, from its stored
    /// records and each lease's stored renewal index (`renewed`, 0 when none
    /// is stored); every lease gets a full TTL.
    pub fn from_records<E>(
        records: &LeaseRecords,
        mut renewed: impl FnMut(i64) -> Result<u64, E>,
        applied: u64,
        now: Instant,
    ) -> Result<Self, E> {
        let mut t = LeaseTable {
            applied,
            ..LeaseTable::default()
        };
        for r in &records.leases {
            t.grant(r.id, r.ttl, now, renewed(r.id)?);
        }
        Ok(t)
    }

    /// Notes that the log is applied up to `index`.
    pub fn applying(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// The index an expiry decided now names: every renewal reflected in the
    /// deadlines is at or below it, every later one above.
    pub fn checked_index(&self) -> u64 {
        self.applied
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

    /// The IDs of all leases, soonest to expire first (as etcd lists them).
    pub fn ids_by_expiry(&self) -> Vec<i64> {
        let mut leases: Vec<&Lease> = self.leases.values().collect();
        leases.sort_by_key(|l| (l.deadline, l.id));
        leases.into_iter().map(|l| l.id).collect()
    }

    /// Adds a lease expiring `ttl` seconds from `now`, granted at log index `index`.
    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant, index: u64) {
        let deadline = now + Duration::from_secs(ttl.max(0) as u64);
        self.leases.insert(
            id,
            Lease {
                id,
                ttl,
                deadline,
                renewed: index,
            },
        );
    }

    /// Removes a lease; false if it did not exist.
    pub fn revoke(&mut self, id: i64) -> bool {
        self.leases.remove(&id).is_some()
    }

    /// Renews a lease for a full TTL by the keep-alive at log index `index`;
    /// returns the TTL, or None if unknown.
    pub fn renew(&mut self, id: i64, now: Instant, index: u64) -> Option<i64> {
        let l = self.leases.get_mut(&id)?;
        l.deadline = now + Duration::from_secs(l.ttl.max(0) as u64);
        l.renewed = index;
        Some(l.ttl)
    }

    /// Applies the leader's expiry of lease `id`, decided when it had applied
    /// the log up to `checked_index`: removes the lease unless an entry past
    /// that index renewed it.
    pub fn expire(&mut self, id: i64, checked_index: u64) -> Expiry {
        match self.leases.get(&id) {
            None => Expiry::NotFound,
            Some(l) if l.renewed > checked_index => Expiry::Renewed,
            Some(_) => {
                self.leases.remove(&id);
                Expiry::Revoked
            }
        }
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

/// What applying an expiry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The lease is gone: its keys must be deleted.
    Revoked,
    /// A keep-alive past the checked index renewed it: kept.
    Renewed,
    /// No such lease (already revoked).
    NotFound,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_after_its_ttl_unless_renewed() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.grant(1, 5, t0, 10);
        assert!(t.expired(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(t.renew(1, t0 + Duration::from_secs(4), 12), Some(5));
        assert!(t.expired(t0 + Duration::from_secs(8)).is_empty());
        assert_eq!(t.expired(t0 + Duration::from_secs(9)), vec![1]);
    }

    #[test]
    fn an_expiry_is_dropped_when_a_later_keep_alive_renewed_the_lease() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.grant(1, 5, t0, 10);
        // The leader saw the deadline of the grant pass with the log applied
        // up to 12, but a keep-alive at index 14 was ordered before its expiry.
        assert_eq!(t.renew(1, t0, 14), Some(5));
        assert_eq!(t.expire(1, 12), Expiry::Renewed);
        assert!(t.contains(1));
        // Expired once the leader had applied that keep-alive: gone.
        assert_eq!(t.expire(1, 14), Expiry::Revoked);
        assert!(!t.contains(1));
        assert_eq!(t.expire(1, 14), Expiry::NotFound);
    }

    #[test]
    fn members_that_did_and_did_not_store_a_renewal_agree_on_an_expiry() {
        // A keep-alive at 5 was applied by a version that stored no renewal
        // index on one member (0 after its restart) and by this one on another.
        let t0 = Instant::now();
        let (mut stored, mut unstored) = (LeaseTable::default(), LeaseTable::default());
        stored.grant(1, 5, t0, 5);
        unstored.grant(1, 5, t0, 0);
        // The leader had applied 5 before it looked: both revoke.
        assert_eq!(stored.expire(1, 7), Expiry::Revoked);
        assert_eq!(unstored.expire(1, 7), Expiry::Revoked);
    }

    #[test]
    fn the_checked_index_is_the_last_entry_applied() {
        let mut t = LeaseTable::default();
        t.applying(4);
        t.grant(1, 5, Instant::now(), 4);
        t.applying(9);
        assert_eq!(t.checked_index(), 9);
    }

    #[test]
    fn remaining_time_is_truncated_toward_zero_as_etcds() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.grant(7, 10, t0, 1);
        let l = t.get(7).unwrap();
        assert_eq!(l.remaining_secs(t0), 10);
        assert_eq!(l.remaining_secs(t0 + Duration::from_millis(500)), 9);
        assert_eq!(l.remaining_secs(t0 + Duration::from_millis(9_999)), 0);
        // Expired, not yet revoked: 0, then negative, never -1 at once.
        assert_eq!(l.remaining_secs(t0 + Duration::from_secs(10)), 0);
        assert_eq!(l.remaining_secs(t0 + Duration::from_millis(10_900)), 0);
        assert_eq!(l.remaining_secs(t0 + Duration::from_millis(12_500)), -2);
    }

    #[test]
    fn leases_are_listed_soonest_to_expire_first() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        for (id, ttl) in [(1, 300), (2, 200), (3, 400), (4, 100), (5, 100)] {
            t.grant(id, ttl, t0, 1);
        }
        assert_eq!(t.ids_by_expiry(), vec![4, 5, 2, 1, 3]);
    }

    #[test]
    fn records_round_trip() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.grant(1, 5, t0, 3);
        t.grant(2, 60, t0, 4);
        let renewed = |id: i64| Ok::<_, ()>(if id == 2 { 9 } else { 0 });
        let back = LeaseTable::from_records(&t.records(), renewed, 11, t0).unwrap();
        assert_eq!(back.checked_index(), 11);
        assert_eq!(back.ids_by_expiry(), vec![1, 2]);
        assert_eq!(back.get(2).unwrap().ttl, 60);
        assert_eq!(back.get(2).unwrap().renewed, 9);
        assert_eq!(back.get(1).unwrap().renewed, 0);
    }
}
