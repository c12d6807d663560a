//! etcd's strict reconfiguration check (`--strict-reconfig-check`, on by
//! default): the rules that refuse a membership change which would leave the
//! cluster without a quorum of working voters, and a promotion of a learner
//! that has not caught up.
//!
//! The rules are pure functions of the membership and of what the member
//! asking knows about its peers, so they are tested here without a cluster;
//! [`super::cluster`] gathers the inputs and maps refusals to etcd's errors:
//!
//! - a member is *started* once it has published its name (etcd's
//!   `IsStarted`); adding or promoting a voter, or removing one, must leave a
//!   quorum of started voters ([`Refusal::NotEnoughStarted`]);
//! - a member is *connected* when this member's stream to it is up
//!   ([`crate::raft::transport::Peers::active_since`]); adding a member needs
//!   every voter connected now, removing a voter needs a quorum of the
//!   remaining voters connected for a while ([`Refusal::Unhealthy`]);
//! - a learner may be promoted once the leader knows its log to match at least
//!   90 % of the leader's own ([`Refusal::LearnerNotReady`]); as in etcd, this
//!   rule holds even with `--strict-reconfig-check=false`, which turns the
//!   others off.

use std::time::Instant;

use crate::pb::lcraftpb::{MemberInfo, Membership};
use crate::raft::node::LeaderProgress;

/// Why a reconfiguration is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("{}", super::errors::UNHEALTHY)]
    Unhealthy,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
}

/// How far a learner's log must match the leader's to be promoted (etcd's
/// `readyPercent`).
const READY_FRACTION: f64 = 0.9;

/// What the member checking a change knows about its peers' connections.
pub struct Peers<'a> {
    /// This member's ID (always counted as connected).
    pub self_id: u64,
    /// Since when the stream to a peer has been up; `None` when down.
    pub active_since: &'a dyn Fn(u64) -> Option<Instant>,
    /// Voters connected for less than this long do not count as healthy for a
    /// removal (etcd's `HealthInterval`).
    pub health_interval: std::time::Duration,
}

fn voters(m: &Membership) -> impl Iterator<Item = &MemberInfo> {
    m.members.iter().filter(|m| !m.is_learner)
}

fn started(m: &MemberInfo) -> bool {
    !m.name.is_empty()
}

fn quorum(n: usize) -> usize {
    n / 2 + 1
}

impl Peers<'_> {
    fn connected_since(&self, id: u64, since: Instant) -> bool {
        id == self.self_id || (self.active_since)(id).is_some_and(|t| t <= since)
    }
}

/// May a member (a voter unless `learner`) be added?
pub fn check_add(m: &Membership, learner: bool, peers: &Peers<'_>) -> Result<(), Refusal> {
    if !learner {
        let members = 1 + voters(m).count();
        let started_voters = voters(m).filter(|v| started(v)).count();
        // Growing a one-member cluster to two (as when restoring one) is allowed.
        let one_to_two = started_voters == 1 && members == 2;
        if !one_to_two && started_voters < quorum(members) {
            return Err(Refusal::NotEnoughStarted);
        }
    }
    let now = Instant::now();
    if !voters(m).all(|v| peers.connected_since(v.id, now)) {
        return Err(Refusal::Unhealthy);
    }
    Ok(())
}

/// May member `id` be removed?
pub fn check_remove(m: &Membership, id: u64, peers: &Peers<'_>) -> Result<(), Refusal> {
    if m.member(id).is_some_and(|x| x.is_learner) {
        return Ok(());
    }
    let rest: Vec<&MemberInfo> = voters(m).filter(|v| v.id != id).collect();
    if rest.iter().filter(|v| started(v)).count() < quorum(rest.len()) {
        return Err(Refusal::NotEnoughStarted);
    }
    // A member that is down is not part of the working quorum: safe to remove.
    if id != peers.self_id && (peers.active_since)(id).is_none() {
        return Ok(());
    }
    let since = Instant::now()
        .checked_sub(peers.health_interval)
        .unwrap_or_else(Instant::now);
    let all = voters(m).count();
    let active = voters(m)
        .filter(|v| peers.connected_since(v.id, since))
        .count();
    // After the removal, the remaining active voters must still be a quorum.
    if active.saturating_sub(1) < quorum(all.saturating_sub(1)) {
        return Err(Refusal::Unhealthy);
    }
    Ok(())
}

/// May learner `id` be promoted, as far as the membership goes?
pub fn check_promote_quorum(m: &Membership) -> Result<(), Refusal> {
    // The learner counts as a started voter of the future configuration.
    let members = 1 + voters(m).count();
    let started_voters = 1 + voters(m).filter(|v| started(v)).count();
    if started_voters < quorum(members) {
        return Err(Refusal::NotEnoughStarted);
    }
    Ok(())
}

/// Has learner `id` caught up with the leader, by the leader's progress?
pub fn check_learner_ready(progress: &LeaderProgress, id: u64) -> Result<(), Refusal> {
    let Some(learner) = progress.matched(id) else {
        return Ok(());
    };
    let leader = progress.matched(progress.leader_id).unwrap_or(0);
    if (learner as f64) < (leader as f64) * READY_FRACTION {
        return Err(Refusal::LearnerNotReady);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn member(id: u64, started: bool, learner: bool) -> MemberInfo {
        MemberInfo {
            id,
            name: if started {
                format!("m{id}")
            } else {
                String::new()
            },
            is_learner: learner,
            ..Default::default()
        }
    }

    fn membership(members: Vec<MemberInfo>) -> Membership {
        Membership {
            members,
            ..Default::default()
        }
    }

    /// Peers where `up` have been connected for a minute, the rest are down.
    fn check<R>(up: &[u64], f: impl FnOnce(&Peers<'_>) -> R) -> R {
        let long_ago = Instant::now() - Duration::from_secs(60);
        let active = |id: u64| up.contains(&id).then_some(long_ago);
        f(&Peers {
            self_id: 1,
            active_since: &active,
            health_interval: Duration::from_secs(5),
        })
    }

    #[test]
    fn adding_a_voter_needs_a_quorum_of_started_voters_after_the_change() {
        let m = membership(vec![
            member(1, true, false),
            member(2, true, false),
            member(3, true, false),
        ]);
        assert_eq!(check(&[2, 3], |p| check_add(&m, false, p)), Ok(()));
        // One member plus an unstarted one: growing to 2 is allowed, to 3 not.
        let m = membership(vec![member(1, true, false)]);
        assert_eq!(check(&[], |p| check_add(&m, false, p)), Ok(()));
        let m = membership(vec![member(1, true, false), member(2, false, false)]);
        assert_eq!(
            check(&[], |p| check_add(&m, false, p)),
            Err(Refusal::NotEnoughStarted)
        );
        // A learner needs no quorum, only connected voters.
        let m = membership(vec![member(1, true, false), member(2, true, false)]);
        assert_eq!(check(&[2], |p| check_add(&m, true, p)), Ok(()));
    }

    #[test]
    fn adding_needs_every_voter_connected() {
        let m = membership(vec![
            member(1, true, false),
            member(2, true, false),
            member(3, true, false),
            member(4, false, true),
        ]);
        assert_eq!(
            check(&[2], |p| check_add(&m, true, p)),
            Err(Refusal::Unhealthy)
        );
        // A learner that is down does not matter.
        assert_eq!(check(&[2, 3], |p| check_add(&m, false, p)), Ok(()));
    }

    #[test]
    fn removing_a_voter_keeps_a_quorum_of_connected_voters() {
        let m = membership(vec![
            member(1, true, false),
            member(2, true, false),
            member(3, true, false),
        ]);
        assert_eq!(check(&[2, 3], |p| check_remove(&m, 2, p)), Ok(()));
        // m3 down: removing m2 would leave m1 alone of {m1, m3}.
        assert_eq!(
            check(&[2], |p| check_remove(&m, 2, p)),
            Err(Refusal::Unhealthy)
        );
        // Removing the member that is down is fine.
        assert_eq!(check(&[2], |p| check_remove(&m, 3, p)), Ok(()));
        // The leader may remove itself when the others are up.
        assert_eq!(check(&[2, 3], |p| check_remove(&m, 1, p)), Ok(()));
    }

    #[test]
    fn removing_needs_a_quorum_of_started_voters_left() {
        let m = membership(vec![
            member(1, true, false),
            member(2, false, false),
            member(3, false, false),
            member(4, true, false),
        ]);
        assert_eq!(
            check(&[2, 3, 4], |p| check_remove(&m, 4, p)),
            Err(Refusal::NotEnoughStarted)
        );
        let m = membership(vec![member(1, true, false), member(5, false, true)]);
        assert_eq!(check(&[], |p| check_remove(&m, 5, p)), Ok(()));
    }

    #[test]
    fn peers_connected_only_recently_do_not_count_for_a_removal() {
        let m = membership(vec![
            member(1, true, false),
            member(2, true, false),
            member(3, true, false),
        ]);
        let just_now = Instant::now();
        let active = |id: u64| (id != 1).then_some(just_now);
        let p = Peers {
            self_id: 1,
            active_since: &active,
            health_interval: Duration::from_secs(5),
        };
        assert_eq!(check_remove(&m, 2, &p), Err(Refusal::Unhealthy));
    }

    #[test]
    fn promotion_needs_the_learner_within_ninety_percent_of_the_leader() {
        let progress = LeaderProgress {
            leader_id: 1,
            matched: vec![(1, 100), (2, 100), (4, 89)],
        };
        assert_eq!(
            check_learner_ready(&progress, 4),
            Err(Refusal::LearnerNotReady)
        );
        let progress = LeaderProgress {
            leader_id: 1,
            matched: vec![(1, 100), (4, 90)],
        };
        assert_eq!(check_learner_ready(&progress, 4), Ok(()));
        let m = membership(vec![member(1, true, false), member(2, false, false)]);
        assert_eq!(check_promote_quorum(&m), Ok(()));
        let m = membership(vec![
            member(1, true, false),
            member(2, false, false),
            member(3, false, false),
        ]);
        assert_eq!(check_promote_quorum(&m), Err(Refusal::NotEnoughStarted));
    }
}
