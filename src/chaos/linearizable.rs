//! A linearizability checker for histories of one register (read, write,
//! compare-and-set), in the style of Wing & Gong's search with Lowe's
//! memoization (the algorithm behind Porcupine and Knossos).
//!
//! A history is a set of operations, each with the time it was invoked, the
//! time it returned (or none: it timed out, so it may or may not have taken
//! effect) and what it returned. It is linearizable when the operations can be
//! put in one order that respects real time (an operation that returned before
//! another was invoked comes first) in which every operation sees the register
//! as the ones before it left it. An operation that never returned may take
//! effect at any point after its invocation, or never; it is modelled as
//! returning at the end of time with any result, which is equivalent.
//!
//! The search walks the events (invocations and returns) in time order. At an
//! invocation it tries to linearize that operation next, if the model accepts
//! it; at a return whose operation is not linearized yet it backtracks. States
//! already explored (the set of linearized operations and the register value)
//! are cached, which keeps the search polynomial on real histories. Keys of a
//! key-value store are independent registers, so a store's history is checked
//! key by key (linearizability is compositional).

use std::collections::HashSet;

/// A register's value: `None` when the key does not exist.
pub type Value = Option<u64>;

/// What an operation did, and what it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read the register; `None` result: unknown.
    Read(Option<Value>),
    /// Write a value.
    Write(u64),
    /// Set to `to` if the register holds `from`; result: whether it did.
    Cas {
        from: u64,
        to: u64,
        ok: Option<bool>,
    },
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Which client ran it (for reports only).
    pub client: usize,
    pub op: Op,
    /// When it was invoked (any monotonic unit).
    pub invoked: u64,
    /// When it returned; `None`: it never did (timeout, unknown outcome).
    pub returned: Option<u64>,
}

impl Operation {
    /// Whether the outcome is unknown (the operation may or may not have happened).
    pub fn is_unknown(&self) -> bool {
        self.returned.is_none()
    }
}

/// Applies `op` to `state`; `None` if the op's result contradicts the state.
fn step(state: Value, op: &Op, unknown: bool) -> Option<Value> {
    match op {
        Op::Read(result) => match result {
            Some(seen) if !unknown && *seen != state => None,
            _ => Some(state),
        },
        Op::Write(v) => Some(Some(*v)),
        Op::Cas { from, to, ok } => {
            let matches = state == Some(*from);
            match ok {
                Some(true) if !unknown && !matches => None,
                Some(false) if !unknown && matches => None,
                _ => Some(if matches { Some(*to) } else { state }),
            }
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists. `stuck` holds the operations that were pending or
    /// returned when the longest linearization attempt got stuck: the minimal
    /// window to look at.
    Violation {
        stuck: Vec<Operation>,
    },
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
}

/// Checks one register's history, starting from `initial`.
pub fn check(initial: Value, history: &[Operation]) -> Verdict {
    let n = history.len();
    // Events in time order; a return sorts before a call at the same instant
    // only if it belongs to another operation (ties are resolved as
    // "concurrent", which is the permissive reading).
    let mut events: Vec<(u64, u8, Event)> = Vec::with_capacity(2 * n);
    for (i, o) in history.iter().enumerate() {
        events.push((
            o.invoked,
            0,
            Event {
                op: i,
                is_call: true,
            },
        ));
        events.push((
            o.returned.unwrap_or(u64::MAX),
            1,
            Event {
                op: i,
                is_call: false,
            },
        ));
    }
    events.sort_by_key(|&(t, kind, e)| (t, kind, e.op));
    let events: Vec<Event> = events.into_iter().map(|(_, _, e)| e).collect();

    // A doubly linked list over the events, so linearized operations can be
    // lifted out and put back in O(1).
    let len = events.len();
    let head = len; // index of the sentinel before the first event
                    // next[i] = i + 1 (the last event has none); the sentinel's next is 0.
    let mut nxt: Vec<usize> = (1..len).chain([usize::MAX, 0]).collect();
    if len == 0 {
        nxt = vec![usize::MAX];
    }
    // prev[0] is the sentinel, prev[i] = i - 1.
    let mut prv: Vec<usize> = std::iter::once(head)
        .chain(0..len.saturating_sub(1))
        .chain([usize::MAX])
        .collect();
    prv.truncate(len + 1);
    // Where each operation's call and return sit in `events`.
    let mut call_of = vec![0usize; n];
    let mut ret_of = vec![0usize; n];
    for (i, e) in events.iter().enumerate() {
        if e.is_call {
            call_of[e.op] = i;
        } else {
            ret_of[e.op] = i;
        }
    }

    let lift = |nxt: &mut Vec<usize>, prv: &mut Vec<usize>, i: usize| {
        let (p, q) = (prv[i], nxt[i]);
        nxt[p] = q;
        if q != usize::MAX {
            prv[q] = p;
        }
    };
    let unlift = |nxt: &mut Vec<usize>, prv: &mut Vec<usize>, i: usize| {
        let (p, q) = (prv[i], nxt[i]);
        nxt[p] = i;
        if q != usize::MAX {
            prv[q] = i;
        }
    };

    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Value)> = HashSet::new();
    let mut stack: Vec<(usize, Value)> = Vec::new(); // (op, state before it)
    let mut state = initial;
    let mut best_depth = 0;
    let mut best_window: Vec<usize> = Vec::new();
    let mut entry = nxt[head];

    loop {
        if nxt[head] == usize::MAX {
            return Verdict::Linearizable;
        }
        if entry == usize::MAX {
            // Cannot happen: a return always precedes the end of the list.
            break;
        }
        let e = events[entry];
        if e.is_call {
            let o = &history[e.op];
            if let Some(new_state) = step(state, &o.op, o.is_unknown()) {
                let mut bits = linearized.clone();
                bits[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((bits.clone(), new_state)) {
                    stack.push((e.op, state));
                    linearized = bits;
                    state = new_state;
                    lift(&mut nxt, &mut prv, call_of[e.op]);
                    lift(&mut nxt, &mut prv, ret_of[e.op]);
                    entry = nxt[head];
                    continue;
                }
            }
            entry = nxt[entry];
        } else {
            // A return of an operation not linearized yet: backtrack.
            if stack.len() >= best_depth {
                best_depth = stack.len();
                best_window = pending_at(&events, &nxt, head, entry);
            }
            let Some((op, before)) = stack.pop() else {
                break;
            };
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut nxt, &mut prv, ret_of[op]);
            unlift(&mut nxt, &mut prv, call_of[op]);
            entry = nxt[call_of[op]];
        }
    }
    let mut stuck: Vec<Operation> = best_window
        .into_iter()
        .map(|i| history[i].clone())
        .collect();
    stuck.sort_by_key(|o| o.invoked);
    Verdict::Violation { stuck }
}

/// The operations whose calls remain in the list up to `upto` (inclusive):
/// those invoked and not linearized when the search got stuck there.
fn pending_at(events: &[Event], nxt: &[usize], head: usize, upto: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = nxt[head];
    while i != usize::MAX {
        if events[i].is_call {
            out.push(events[i].op);
        } else if i == upto {
            out.push(events[i].op);
            break;
        }
        i = nxt[i];
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op(client: usize, op: Op, invoked: u64, returned: Option<u64>) -> Operation {
        Operation {
            client,
            op,
            invoked,
            returned,
        }
    }

    #[test]
    fn sequential_reads_see_the_last_write() {
        let h = [
            op(0, Op::Write(1), 0, Some(1)),
            op(0, Op::Read(Some(Some(1))), 2, Some(3)),
            op(
                0,
                Op::Cas {
                    from: 1,
                    to: 2,
                    ok: Some(true),
                },
                4,
                Some(5),
            ),
            op(0, Op::Read(Some(Some(2))), 6, Some(7)),
        ];
        assert_eq!(check(None, &h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_a_violation() {
        let h = [
            op(0, Op::Write(1), 0, Some(1)),
            op(0, Op::Write(2), 2, Some(3)),
            op(1, Op::Read(Some(Some(1))), 4, Some(5)),
        ];
        match check(None, &h) {
            Verdict::Violation { stuck } => assert!(stuck.iter().any(|o| o.client == 1)),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps both writes: it may see either.
        for seen in [1, 2] {
            let h = [
                op(0, Op::Write(1), 0, Some(10)),
                op(1, Op::Write(2), 1, Some(9)),
                op(2, Op::Read(Some(Some(seen))), 2, Some(11)),
            ];
            assert_eq!(check(None, &h), Verdict::Linearizable, "saw {seen}");
        }
    }

    #[test]
    fn a_write_that_timed_out_may_or_may_not_have_happened() {
        let applied = [
            op(0, Op::Write(1), 0, None),
            op(1, Op::Read(Some(Some(1))), 5, Some(6)),
        ];
        assert_eq!(check(None, &applied), Verdict::Linearizable);
        let lost = [
            op(0, Op::Write(1), 0, None),
            op(1, Op::Read(Some(None)), 5, Some(6)),
        ];
        assert_eq!(check(None, &lost), Verdict::Linearizable);
        // But once seen, it cannot vanish.
        let flicker = [
            op(0, Op::Write(1), 0, None),
            op(1, Op::Read(Some(Some(1))), 5, Some(6)),
            op(1, Op::Read(Some(None)), 7, Some(8)),
        ];
        assert!(matches!(check(None, &flicker), Verdict::Violation { .. }));
    }

    #[test]
    fn two_successful_cas_from_the_same_value_are_a_violation() {
        let h = [
            op(0, Op::Write(1), 0, Some(1)),
            op(
                1,
                Op::Cas {
                    from: 1,
                    to: 2,
                    ok: Some(true),
                },
                2,
                Some(5),
            ),
            op(
                2,
                Op::Cas {
                    from: 1,
                    to: 3,
                    ok: Some(true),
                },
                3,
                Some(6),
            ),
        ];
        assert!(matches!(check(None, &h), Verdict::Violation { .. }));
    }

    #[test]
    fn a_failed_cas_must_have_seen_another_value() {
        let h = [
            op(0, Op::Write(1), 0, Some(1)),
            op(
                1,
                Op::Cas {
                    from: 1,
                    to: 2,
                    ok: Some(false),
                },
                2,
                Some(3),
            ),
        ];
        assert!(matches!(check(None, &h), Verdict::Violation { .. }));
    }

    /// Runs `ops` against a real register one at a time, with random gaps and
    /// overlaps that keep the real order consistent with the execution order.
    fn sequential_history(ops: Vec<(u8, u64, u64)>) -> Vec<Operation> {
        let mut state: Value = None;
        let mut t = 0;
        ops.into_iter()
            .enumerate()
            .map(|(i, (kind, a, b))| {
                let op = match kind % 3 {
                    0 => Op::Read(Some(state)),
                    1 => {
                        state = Some(a);
                        Op::Write(a)
                    }
                    _ => {
                        let ok = state == Some(a);
                        if ok {
                            state = Some(b);
                        }
                        Op::Cas {
                            from: a,
                            to: b,
                            ok: Some(ok),
                        }
                    }
                };
                t += 2;
                op_at(i, op, t)
            })
            .collect()
    }

    fn op_at(i: usize, op: Op, t: u64) -> Operation {
        Operation {
            client: i % 4,
            op,
            invoked: t,
            returned: Some(t + 1),
        }
    }

    proptest! {
        #[test]
        fn every_sequential_execution_is_linearizable(
            ops in proptest::collection::vec((0u8..3, 0u64..3, 0u64..3), 0..40)
        ) {
            let h = sequential_history(ops);
            prop_assert_eq!(check(None, &h), Verdict::Linearizable);
        }

        #[test]
        fn widening_operations_never_breaks_linearizability(
            ops in proptest::collection::vec((0u8..3, 0u64..3, 0u64..3), 0..30),
            widen in proptest::collection::vec((0u64..6, 0u64..6), 30)
        ) {
            // Making operations overlap more only adds allowed orders.
            let mut h = sequential_history(ops);
            for (o, (a, b)) in h.iter_mut().zip(widen) {
                o.invoked = o.invoked.saturating_sub(a);
                o.returned = o.returned.map(|r| r + b);
            }
            prop_assert_eq!(check(None, &h), Verdict::Linearizable);
        }
    }
}
