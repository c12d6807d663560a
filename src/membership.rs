//! The cluster's membership as every member records it: ID, name, peer URLs,
//! client URLs (filled in when the member publishes itself) and learner flag.
//!
//! It is part of the replicated state: created at bootstrap from
//! `--initial-cluster`, changed only by applied log entries (publish, conf
//! changes), stored with the key-value data and carried in snapshots.
//!
//! A configuration change is checked twice, by the same rules
//! ([`Membership::validate`], etcd's `ValidateConfigurationChange`): by the
//! member that proposes it, against its view, and by every member when it
//! applies the entry, against the membership as of that entry. Only the
//! second is authoritative: two changes proposed at the same moment (the same
//! URLs added through two members, two learners) both pass the first, and
//! every member refuses the later one alike.

use crate::pb::lcraftpb::{ConfChangeIntent, MemberInfo, Membership};

/// How many learners a cluster may hold at once (etcd's `maxLearners`).
pub const MAX_LEARNERS: usize = 1;

/// Why a configuration change is refused; the messages are etcd's
/// `membership` errors as its gRPC API words them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The ID was removed from the cluster; it never comes back.
    #[error("member not found")]
    IdRemoved,
    #[error("member not found")]
    IdNotFound,
    #[error("member ID already exist")]
    IdExists,
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    #[error("can only promote a learner member")]
    NotLearner,
    #[error("too many learner members in cluster")]
    TooManyLearners,
}

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

    /// Whether a member other than `except` listens on one of `urls`.
    pub fn peer_urls_taken(&self, urls: &[String], except: u64) -> bool {
        self.members
            .iter()
            .filter(|m| m.id != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    /// How many members are learners.
    pub fn learners(&self) -> usize {
        self.members.iter().filter(|m| m.is_learner).count()
    }

    /// Checks a configuration change of member `id` against this membership,
    /// as etcd's `ValidateConfigurationChange` does. `member` is the member
    /// as the change describes it (its peer URLs, whether a learner).
    pub fn validate(
        &self,
        intent: ConfChangeIntent,
        id: u64,
        member: &MemberInfo,
    ) -> Result<(), MembershipError> {
        if intent == ConfChangeIntent::Unspecified {
            return Ok(());
        }
        if self.removed.contains(&id) {
            return Err(MembershipError::IdRemoved);
        }
        let existing = self.member(id);
        match intent {
            ConfChangeIntent::Unspecified => Ok(()),
            ConfChangeIntent::Add => {
                if existing.is_some() {
                    return Err(MembershipError::IdExists);
                }
                if self.peer_urls_taken(&member.peer_urls, id) {
                    return Err(MembershipError::PeerUrlExists);
                }
                if member.is_learner && self.learners() >= MAX_LEARNERS {
                    return Err(MembershipError::TooManyLearners);
                }
                Ok(())
            }
            ConfChangeIntent::Promote => match existing {
                None => Err(MembershipError::IdNotFound),
                Some(m) if !m.is_learner => Err(MembershipError::NotLearner),
                Some(_) => Ok(()),
            },
            ConfChangeIntent::Update => {
                if existing.is_none() {
                    return Err(MembershipError::IdNotFound);
                }
                if self.peer_urls_taken(&member.peer_urls, id) {
                    return Err(MembershipError::PeerUrlExists);
                }
                Ok(())
            }
            ConfChangeIntent::Remove => match existing {
                None => Err(MembershipError::IdNotFound),
                Some(_) => Ok(()),
            },
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

    fn member(id: u64, url: &str, is_learner: bool) -> MemberInfo {
        MemberInfo {
            id,
            peer_urls: vec![url.to_string()],
            is_learner,
            ..Default::default()
        }
    }

    /// Voter 1 on :1, learner 2 on :2, 3 removed.
    fn three() -> Membership {
        let mut m = Membership::default();
        m.upsert(member(1, "http://h:1", false));
        m.upsert(member(2, "http://h:2", true));
        m.upsert(member(3, "http://h:3", false));
        m.remove(3);
        m
    }

    #[test]
    fn adds_are_refused_for_taken_ids_urls_removed_ids_and_a_second_learner() {
        use ConfChangeIntent::Add;
        use MembershipError::*;
        let m = three();
        assert_eq!(m.validate(Add, 4, &member(4, "http://h:4", false)), Ok(()));
        assert_eq!(
            m.validate(Add, 1, &member(1, "http://h:4", false)),
            Err(IdExists)
        );
        assert_eq!(
            m.validate(Add, 3, &member(3, "http://h:4", false)),
            Err(IdRemoved)
        );
        assert_eq!(
            m.validate(Add, 4, &member(4, "http://h:2", false)),
            Err(PeerUrlExists)
        );
        // The removed member's URLs are free again.
        assert_eq!(m.validate(Add, 4, &member(4, "http://h:3", false)), Ok(()));
        assert_eq!(
            m.validate(Add, 4, &member(4, "http://h:4", true)),
            Err(TooManyLearners)
        );
    }

    #[test]
    fn promotions_updates_and_removals_need_a_present_member_of_the_right_kind() {
        use ConfChangeIntent::*;
        use MembershipError::*;
        let m = three();
        assert_eq!(
            m.validate(Promote, 2, &member(2, "http://h:2", false)),
            Ok(())
        );
        assert_eq!(
            m.validate(Promote, 1, &member(1, "http://h:1", false)),
            Err(NotLearner)
        );
        assert_eq!(
            m.validate(Promote, 9, &member(9, "http://h:9", false)),
            Err(IdNotFound)
        );
        assert_eq!(
            m.validate(Update, 1, &member(1, "http://h:9", false)),
            Ok(())
        );
        assert_eq!(
            m.validate(Update, 1, &member(1, "http://h:1", false)),
            Ok(())
        );
        assert_eq!(
            m.validate(Update, 1, &member(1, "http://h:2", false)),
            Err(PeerUrlExists)
        );
        assert_eq!(
            m.validate(Update, 3, &member(3, "http://h:3", false)),
            Err(IdRemoved)
        );
        assert_eq!(m.validate(Remove, 2, &member(2, "", true)), Ok(()));
        assert_eq!(m.validate(Remove, 3, &member(3, "", false)), Err(IdRemoved));
        assert_eq!(
            m.validate(Remove, 9, &member(9, "", false)),
            Err(IdNotFound)
        );
        // Entries written before intents were recorded are applied unchecked.
        assert_eq!(
            m.validate(Unspecified, 1, &member(1, "http://h:2", false)),
            Ok(())
        );
    }
}
