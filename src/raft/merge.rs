//! Appends to one peer, merged before they go out.
//!
//! A leader's Raft node queues a `MsgAppend` for a follower each time it has
//! something to tell it: new entries after a proposal, a higher commit index
//! after an answer (an append with no entries), more entries after the next
//! proposal. When the peer's sender drains its queue it often finds several in
//! a row, and each would cost the follower a step, an answer back, and the
//! leader a step of that answer.
//!
//! [`merge_appends`] folds each append that *continues* the one before it
//! into that one: same sender, receiver and term, and its previous entry
//! (`index`, `log_term`) is the last entry the first one carries (or the first
//! one's own previous entry, when it carries none). The merged append holds
//! the entries of both and the higher commit index. Both come from one
//! leader's log, which only grows within its term, so the merged append is one
//! that leader could have sent itself. A follower that takes it ends where
//! taking the two would have left it: the same entries (each carries its own
//! index and term), the same commit (at most the last new entry), and one
//! answer for the last index. The leader frees the in-flight slots of both
//! on that answer (raft-rs frees every slot up to an answered index). One
//! difference: raft-rs ignores an append whose previous entry lies below the
//! follower's commit index, and so ignores everything merged into it; that
//! costs what a lost message costs (the leader sends the rest again after the
//! follower's next refusal), and happens only after the follower's progress
//! went back.
//!
//! Invariants: only neighbours merge, so messages keep their order; nothing
//! but `MsgAppend`s merges; the merged append never claims a previous entry
//! other than the first one's; a merged append carries at most
//! [`MAX_MERGED_BYTES`] of entries (appends larger on their own stay as they
//! are). raft-rs's own `batch_append` is not used: it puts new entries into a
//! queued append without entries whenever there is one, without checking that
//! they start right after that append's previous entry, which they do not once
//! the follower's progress went back; the follower would then acknowledge
//! entries it never checked, or panic.

use raft::prelude::{Message, MessageType};

/// Most entry bytes (data and context) one merged append carries: well above
/// what a leader puts in one append (raft-rs's `max_size_per_msg`, 1 MiB), far
/// below what the wire and protobuf's sizes can hold.
pub const MAX_MERGED_BYTES: usize = 8 << 20;

/// Merges, in place, each `MsgAppend` of `messages` into the one just before it
/// when it continues it (see the module doc). The rest keep their order.
pub fn merge_appends(messages: &mut Vec<Message>) {
    let mut held = messages.first().map_or(0, entry_bytes);
    // `dedup_by` hands each message with the one kept before it, and drops it
    // when told so.
    messages.dedup_by(|next, prev| {
        let adds = entry_bytes(next);
        if !continues(prev, next) || held + adds > MAX_MERGED_BYTES {
            held = adds;
            return false;
        }
        held += adds;
        for entry in next.take_entries() {
            prev.mut_entries().push(entry);
        }
        prev.commit = prev.commit.max(next.commit);
        true
    });
}

/// The entry bytes an append carries.
fn entry_bytes(m: &Message) -> usize {
    m.entries
        .iter()
        .map(|e| e.data.len() + e.context.len())
        .sum()
}

/// Whether `next` is an append that picks up exactly where `prev` ends.
fn continues(prev: &Message, next: &Message) -> bool {
    let appends = |m: &Message| m.get_msg_type() == MessageType::MsgAppend;
    if !appends(prev) || !appends(next) {
        return false;
    }
    if prev.to != next.to || prev.from != next.from || prev.term != next.term {
        return false;
    }
    let (end_index, end_term) = match prev.entries.last() {
        Some(e) => (e.index, e.term),
        None => (prev.index, prev.log_term),
    };
    next.index == end_index && next.log_term == end_term
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use raft::prelude::{ConfState, Entry};
    use raft::storage::MemStorage;
    use raft::ProgressState;
    use raft::{Config, RawNode};

    const TERM: u64 = 3;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    /// An append from 1 to 2 in `TERM` of `entries` after `(index, log_term)`.
    fn append(index: u64, log_term: u64, entries: Vec<Entry>, commit: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 1;
        m.to = 2;
        m.term = TERM;
        m.index = index;
        m.log_term = log_term;
        m.set_entries(entries.into());
        m.commit = commit;
        m
    }

    fn heartbeat() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = 1;
        m.to = 2;
        m.term = TERM;
        m
    }

    fn shape(messages: &[Message]) -> Vec<(MessageType, u64, Vec<u64>, u64)> {
        messages
            .iter()
            .map(|m| {
                let indexes = m.entries.iter().map(|e| e.index).collect();
                (m.get_msg_type(), m.index, indexes, m.commit)
            })
            .collect()
    }

    #[test]
    fn an_append_that_continues_the_one_before_joins_it() {
        let mut ms = vec![
            append(4, 2, vec![entry(5, 3), entry(6, 3)], 4),
            append(6, 3, vec![entry(7, 3)], 5),
            append(7, 3, vec![], 7),
        ];
        merge_appends(&mut ms);
        assert_eq!(
            shape(&ms),
            vec![(MessageType::MsgAppend, 4, vec![5, 6, 7], 7)]
        );
    }

    #[test]
    fn an_empty_append_takes_the_entries_that_follow_its_previous_entry() {
        let mut ms = vec![append(6, 3, vec![], 5), append(6, 3, vec![entry(7, 3)], 6)];
        merge_appends(&mut ms);
        assert_eq!(shape(&ms), vec![(MessageType::MsgAppend, 6, vec![7], 6)]);
    }

    #[test]
    fn appends_that_do_not_continue_each_other_stay_apart() {
        let mut gap = vec![
            append(4, 2, vec![entry(5, 3)], 4),
            append(6, 3, vec![entry(7, 3)], 4),
        ];
        // The follower's progress went back: the second starts lower.
        let mut back = vec![append(8, 3, vec![], 7), append(3, 2, vec![entry(4, 2)], 7)];
        // The same index under another term is another log.
        let mut other_term = vec![
            append(4, 2, vec![entry(5, 3)], 4),
            append(5, 2, vec![entry(6, 3)], 4),
        ];
        // To another peer, or from another sender.
        let mut other_peer = vec![append(4, 2, vec![entry(5, 3)], 4), {
            let mut m = append(5, 3, vec![entry(6, 3)], 4);
            m.to = 3;
            m
        }];
        let mut other_sender = vec![append(4, 2, vec![entry(5, 3)], 4), {
            let mut m = append(5, 3, vec![entry(6, 3)], 4);
            m.from = 3;
            m
        }];
        for ms in [
            &mut gap,
            &mut back,
            &mut other_term,
            &mut other_peer,
            &mut other_sender,
        ] {
            let before = shape(ms);
            merge_appends(ms);
            assert_eq!(shape(ms), before);
        }
    }

    #[test]
    fn only_neighbours_merge_and_other_messages_keep_their_place() {
        let mut ms = vec![
            append(4, 2, vec![entry(5, 3)], 4),
            heartbeat(),
            append(5, 3, vec![entry(6, 3)], 4),
        ];
        let before = shape(&ms);
        merge_appends(&mut ms);
        assert_eq!(shape(&ms), before);

        let mut newer_term = vec![append(4, 2, vec![entry(5, 3)], 4), {
            let mut m = append(5, 3, vec![entry(6, 4)], 4);
            m.term = TERM + 1;
            m
        }];
        let before = shape(&newer_term);
        merge_appends(&mut newer_term);
        assert_eq!(shape(&newer_term), before);
    }

    #[test]
    fn a_merged_append_stops_growing_at_its_byte_limit() {
        let sized = |index: u64, bytes: usize| Entry {
            index,
            term: TERM,
            data: vec![0; bytes].into(),
            ..Default::default()
        };
        let quarter = MAX_MERGED_BYTES / 4;
        let mut ms: Vec<Message> = (0..6)
            .map(|i| {
                append(
                    i,
                    if i == 0 { 0 } else { TERM },
                    vec![sized(i + 1, quarter)],
                    i,
                )
            })
            .collect();
        merge_appends(&mut ms);
        let runs: Vec<Vec<u64>> = ms
            .iter()
            .map(|m| m.entries.iter().map(|e| e.index).collect())
            .collect();
        assert_eq!(runs, vec![vec![1, 2, 3, 4], vec![5, 6]]);
        assert_eq!(ms[0].commit, 3);
        assert_eq!(ms[1].index, 4);

        // An append larger than the limit on its own goes as it is.
        let mut ms = vec![
            append(0, 0, vec![sized(1, MAX_MERGED_BYTES + 1)], 0),
            append(1, TERM, vec![sized(2, 1)], 0),
        ];
        merge_appends(&mut ms);
        assert_eq!(ms.len(), 2);
    }

    /// A raft-rs node (`id` of voters 1 and 2) with `log` already in its Raft
    /// log, `committed` of it committed, and at most 4 appends in flight to a
    /// peer.
    fn node_with(id: u64, log: &[Entry], committed: u64) -> RawNode<MemStorage> {
        let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2], vec![])));
        storage.wl().append(log).unwrap();
        storage.wl().mut_hard_state().commit = committed;
        let config = Config {
            id,
            max_inflight_msgs: 4,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        RawNode::new(&config, storage, &logger).unwrap()
    }

    /// Node 2 over `log` (`committed` of it committed), a follower of node 1
    /// in `TERM`.
    fn follower(log: &[Entry], committed: u64) -> RawNode<MemStorage> {
        let mut node = node_with(2, log, committed);
        node.raft.become_follower(TERM, 1);
        node
    }

    /// What a follower holds: every entry's (index, term), and its commit
    /// index.
    fn held(node: &RawNode<MemStorage>) -> (Vec<(u64, u64)>, u64) {
        let raft_log = &node.raft.raft_log;
        let entries = (1..=raft_log.last_index())
            .map(|i| (i, raft_log.term(i).unwrap()))
            .collect();
        (entries, raft_log.committed)
    }

    /// The highest index a follower acknowledged.
    fn acknowledged(node: &RawNode<MemStorage>) -> Option<u64> {
        let answers = node.raft.msgs.iter();
        let accepted =
            answers.filter(|m| m.get_msg_type() == MessageType::MsgAppendResponse && !m.reject);
        accepted.map(|m| m.index).max()
    }

    /// Groups `messages` into the runs [`merge_appends`] makes one of.
    fn runs(messages: &[Message]) -> Vec<&[Message]> {
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..=messages.len() {
            if i == messages.len() || !continues(&messages[i - 1], &messages[i]) {
                runs.push(&messages[start..i]);
                start = i;
            }
        }
        runs
    }

    /// The leader's log: entries 1..=len, the first `old` of term 2, the
    /// rest of `TERM`.
    fn leader_log(len: u64, old: u64) -> Vec<Entry> {
        (1..=len)
            .map(|i| entry(i, if i <= old { 2 } else { TERM }))
            .collect()
    }

    /// One Ready cycle of the leader (its entries persisted in its storage at
    /// once): what it sends to node 2.
    fn to_follower(leader: &mut RawNode<MemStorage>) -> Vec<Message> {
        let mut sent = Vec::new();
        if !leader.has_ready() {
            return sent;
        }
        let mut ready = leader.ready();
        sent.extend(ready.take_messages());
        leader.mut_store().wl().append(ready.entries()).unwrap();
        if let Some(hs) = ready.hs() {
            leader.mut_store().wl().set_hardstate(hs.clone());
        }
        sent.extend(ready.take_persisted_messages());
        let mut light = leader.advance(ready);
        sent.extend(light.take_messages());
        leader.advance_apply();
        sent.retain(|m| m.to == 2);
        sent
    }

    #[test]
    fn a_leader_whose_appends_go_merged_ends_with_its_follower_matched_and_nothing_in_flight() {
        let mut leader = node_with(1, &[], 0);
        leader.raft.become_candidate();
        leader.raft.become_leader();
        let mut follower = node_with(2, &[], 0);
        follower.raft.become_follower(leader.raft.term, 1);
        let mut merged_away = 0;
        let mut held = Vec::new();
        // Rounds of three proposals each (persisted on the leader at once, so
        // that its commit moves and it sends appends without entries too);
        // every third round what the leader sent is merged and delivered,
        // and the answers go back, except in round 5, where it is lost (the
        // next heartbeat's answer makes the leader send again, the follower
        // refuses the gap, and the leader probes back to where it matches).
        for round in 0..60u8 {
            for _ in 0..3 {
                leader.propose(vec![], vec![round]).unwrap();
            }
            held.extend(to_follower(&mut leader));
            if round % 3 != 2 {
                continue;
            }
            // A heartbeat goes with them, as a tick would send one: it is how
            // a leader learns that appends were lost.
            leader.raft.ping();
            held.extend(to_follower(&mut leader));
            let before = held.len();
            merge_appends(&mut held);
            merged_away += before - held.len();
            if round == 5 {
                held.clear();
                continue;
            }
            for m in held.drain(..) {
                follower.step(m).unwrap();
            }
            for answer in follower.raft.msgs.drain(..) {
                leader.step(answer).unwrap();
            }
            held.extend(to_follower(&mut leader));
        }
        // Then until the leader has nothing more to send.
        while !held.is_empty() {
            merge_appends(&mut held);
            for m in held.drain(..) {
                follower.step(m).unwrap();
            }
            for answer in follower.raft.msgs.drain(..) {
                leader.step(answer).unwrap();
            }
            held.extend(to_follower(&mut leader));
        }
        assert!(merged_away > 20, "only {merged_away} appends merged");
        let last = leader.raft.raft_log.last_index();
        assert_eq!(last, 1 + 60 * 3);
        let progress = leader.raft.prs().get(2).unwrap();
        assert_eq!(progress.matched, last);
        assert_eq!(progress.ins.count(), 0);
        assert_eq!(progress.state, ProgressState::Replicate);
        assert_eq!(follower.raft.raft_log.last_index(), last);
        assert_eq!(leader.raft.raft_log.committed, last);
    }

    proptest! {
        /// A follower that takes the merged appends ends with the same log and
        /// commit index as one that takes them one by one, whatever it had
        /// before (nothing, part of the leader's log, maybe with a tail of an
        /// older term the leader never had) and whatever the appends (runs of
        /// entries, empty ones that only move the commit index, ones that
        /// start over lower, as after the follower's progress went back). One
        /// difference is allowed, the one a lost message makes: raft-rs
        /// ignores an append whose previous entry is below its commit index,
        /// so it ignores the rest of a run merged into such an append.
        /// It acknowledges the same last index, and every index it
        /// acknowledges holds the leader's entries.
        #[test]
        fn merged_appends_leave_a_follower_where_the_separate_ones_would(
            len in 1u64..24,
            old in 0u64..24,
            had in 0u64..24,
            stale in 0u64..4,
            committed in 0u64..24,
            cuts in proptest::collection::vec((0u64..24, 0u64..8, any::<bool>(), 0u64..24), 1..12),
        ) {
            let old = old.min(len);
            let log = leader_log(len, old);
            // The follower has a prefix of the leader's log; if that is all
            // the leader's term-2 entries, maybe term-2 entries after them
            // that the leader never had (a deposed leader's).
            let had = had.min(len);
            let mut before: Vec<Entry> = log[..had as usize].to_vec();
            if had == old {
                before.extend((had + 1..=had + stale).map(|i| entry(i, 2)));
            }
            let committed = committed.min(had);
            // Appends of the leader's entries from..=to after entry from-1
            // (none when `empty`), with the leader's commit index, which only
            // grows (and a follower takes only up to what it matched).
            let term_of = |i: u64| if i == 0 { 0 } else { log[(i - 1) as usize].term };
            let mut leader_commit = 0;
            let messages: Vec<Message> = cuts
                .iter()
                .map(|&(from, n, empty, commit)| {
                    let from = from.min(len) + 1;
                    let to = if empty { from - 1 } else { (from + n).min(len) };
                    let entries = (from..=to).map(|i| log[(i - 1) as usize].clone()).collect();
                    leader_commit = leader_commit.max(commit.min(len));
                    append(from - 1, term_of(from - 1), entries, leader_commit)
                })
                .collect();
            let mut merged = messages.clone();
            merge_appends(&mut merged);
            // Nothing lost, nothing reordered.
            let indexes = |ms: &[Message]| -> Vec<u64> {
                ms.iter().flat_map(|m| m.entries.iter().map(|e| e.index)).collect()
            };
            prop_assert_eq!(indexes(&merged), indexes(&messages));
            prop_assert!(merged.len() <= messages.len());

            let mut separate = follower(&before, committed);
            for run in runs(&messages) {
                let ignored = run[0].index < separate.raft.raft_log.committed;
                let taken = if ignored { &run[..1] } else { run };
                for m in taken {
                    separate.step(m.clone()).unwrap();
                }
            }
            let mut together = follower(&before, committed);
            for m in &merged {
                together.step(m.clone()).unwrap();
            }
            prop_assert_eq!(held(&separate), held(&together));
            prop_assert_eq!(acknowledged(&separate), acknowledged(&together));
            let (entries, _) = held(&together);
            for answer in &together.raft.msgs {
                if answer.get_msg_type() == MessageType::MsgAppendResponse && !answer.reject {
                    for i in 1..=answer.index {
                        prop_assert_eq!(entries[(i - 1) as usize].1, term_of(i));
                    }
                }
            }
        }
    }
}
