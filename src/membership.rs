//! The cluster's membership as every member records it: ID, name, peer URLs,
//! client URLs (filled in when the member publishes itself) and learner flag.
//!
//! It is part of the replicated state: created at bootstrap from
//! `--initial-cluster`, changed only by applied log entries (publish, conf
//! changes), stored with the key-value data and carried in snapshots.

use crate::pb::lcraftpb::{MemberInfo, Membership};

impl Membership {
    /// The member with `id`.
    pub fn member(&self, id: u64) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The member with `id`, mutably.
    pub fn member_mut(&mut self, id: u64) -> Option<&mut MemberInfo> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    /// Adds or replaces a member; keeps the list sorted by ID.
    pub fn upsert(&mut self, member: MemberInfo) {
        self.members.retain(|m| m.id != member.id);
        self.members.push(member);
        self.members.sort_by_key(|m| m.id);
    }

    /// Removes a member for good.
    pub fn remove(&mut self, id: u64) {
        self.members.retain(|m| m.id != id);
        if !self.removed.contains(&id) {
            self.removed.push(id);
        }
    }

    /// Whether every member has published its client URLs.
    pub fn all_published(&self) -> bool {
        self.members
            .iter()
            .all(|m| !m.name.is_empty() && !m.client_urls.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_keeps_members_sorted_and_unique() {
        let mut m = Membership::default();
        m.upsert(MemberInfo {
            id: 3,
            name: "c".into(),
            ..Default::default()
        });
        m.upsert(MemberInfo {
            id: 1,
            name: "a".into(),
            ..Default::default()
        });
        m.upsert(MemberInfo {
            id: 3,
            name: "c2".into(),
            ..Default::default()
        });
        assert_eq!(
            m.members.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(m.member(3).unwrap().name, "c2");
        m.remove(1);
        assert!(m.member(1).is_none());
        assert_eq!(m.removed, vec![1]);
    }
}
