//! Shrinking a failing history to a minimal one, for reports a person can
//! read: delta debugging (Zeller's ddmin) over the operations, keeping a
//! subset as long as the checker still rejects it.
//!
//! [`shrink`] is generic over the items and the failure test; [`history`]
//! applies it to one register's history with [`linearizable::check`]. The
//! result still fails, and (when the budget of checks was not exhausted)
//! removing any single item from it makes it pass: it is 1-minimal, which is
//! usually a handful of operations out of thousands.

use super::linearizable::{self, Op, Operation, Verdict};

/// Shrinks `items`, which `fails`, to a subset that still fails, calling
/// `fails` at most about `budget` times. Order is kept.
pub fn shrink<T: Clone>(
    items: Vec<T>,
    mut fails: impl FnMut(&[T]) -> bool,
    budget: usize,
) -> Vec<T> {
    let mut current = items;
    let mut calls = 0usize;
    let mut n = 2usize;
    while current.len() >= 2 && calls < budget {
        let chunk = current.len().div_ceil(n);
        let mut reduced = false;
        // Try each complement (drop one chunk), then each chunk alone.
        let mut start = 0;
        while start < current.len() && calls < budget {
            let end = (start + chunk).min(current.len());
            let complement: Vec<T> = current[..start]
                .iter()
                .chain(&current[end..])
                .cloned()
                .collect();
            calls += 1;
            if fails(&complement) {
                current = complement;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
            start = end;
        }
        if reduced {
            continue;
        }
        if n < current.len() {
            let mut start = 0;
            while start < current.len() && calls < budget {
                let end = (start + chunk).min(current.len());
                let part = current[start..end].to_vec();
                calls += 1;
                if fails(&part) {
                    current = part;
                    n = 2;
                    reduced = true;
                    break;
                }
                start = end;
            }
        }
        if reduced {
            continue;
        }
        if n >= current.len() {
            break;
        }
        n = (2 * n).min(current.len());
    }
    current
}

/// Shrinks a register history that [`linearizable::check`] rejects (from
/// `initial`) to a minimal one that it still rejects. Only self-contained
/// sub-histories count: every value a read returned, or a successful
/// compare-and-set found, is written by an operation kept (or is the
/// initial value); otherwise a lone read of any written value would be the
/// trivial, and useless, answer.
pub fn history(initial: linearizable::Value, ops: &[Operation], budget: usize) -> Vec<Operation> {
    shrink(
        ops.to_vec(),
        |h| {
            self_contained(initial, h)
                && matches!(linearizable::check(initial, h), Verdict::Violation { .. })
        },
        budget,
    )
}

/// Whether every value `h` observes is written within `h` (or initial).
fn self_contained(initial: linearizable::Value, h: &[Operation]) -> bool {
    let written: std::collections::HashSet<u64> = h
        .iter()
        .filter_map(|o| match o.op {
            Op::Write(v) => Some(v),
            Op::Cas { to, ok, .. } if ok != Some(false) => Some(to),
            _ => None,
        })
        .collect();
    let known = |v: u64| written.contains(&v) || initial == Some(v);
    h.iter().all(|o| match &o.op {
        Op::Read(Some(Some(v))) => known(*v),
        Op::Cas {
            from,
            ok: Some(true),
            ..
        } => known(*from),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_keeps_exactly_the_items_that_make_it_fail() {
        let items: Vec<u32> = (0..100).collect();
        let out = shrink(items, |s| s.contains(&13) && s.contains(&77), 10_000);
        assert_eq!(out, vec![13, 77]);
        let out = shrink((0..10).collect(), |s: &[u32]| s.contains(&4), 10_000);
        assert_eq!(out, vec![4]);
    }

    #[test]
    fn shrinking_stops_at_the_budget_with_a_failing_subset() {
        let out = shrink((0..1000).collect(), |s: &[u32]| s.contains(&500), 3);
        assert!(out.contains(&500));
    }

    #[test]
    fn a_lost_write_among_many_operations_shrinks_to_one_write_and_the_read() {
        // Sequential writes 1..=200 by client 0, then a read of nothing.
        let mut ops: Vec<Operation> = (1..=200u64)
            .map(|v| Operation {
                client: 0,
                op: Op::Write(v),
                invoked: 10 * v,
                returned: Some(10 * v + 1),
            })
            .collect();
        ops.push(Operation {
            client: 1,
            op: Op::Read(Some(None)),
            invoked: 10_000,
            returned: Some(10_001),
        });
        assert!(matches!(
            linearizable::check(None, &ops),
            Verdict::Violation { .. }
        ));
        let min = history(None, &ops, 10_000);
        // Any one acknowledged write, and the read that missed it.
        assert_eq!(min.len(), 2, "{min:#?}");
        assert!(matches!(min[0].op, Op::Write(_)));
        assert_eq!(min[1].client, 1);
    }

    #[test]
    fn a_stale_read_shrinks_to_the_write_it_saw_the_write_that_hid_it_and_the_read() {
        let mut ops: Vec<Operation> = (1..=50u64)
            .map(|v| Operation {
                client: 0,
                op: Op::Write(v),
                invoked: 10 * v,
                returned: Some(10 * v + 5),
            })
            .collect();
        ops.push(Operation {
            client: 1,
            op: Op::Read(Some(Some(49))),
            invoked: 1000,
            returned: Some(1001),
        });
        let min = history(None, &ops, 10_000);
        assert_eq!(min.len(), 3, "{min:#?}");
        assert_eq!(min[0].op, Op::Write(49));
        assert_eq!(min[1].op, Op::Write(50));
    }
}
