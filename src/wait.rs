//! Request IDs and the waiters that get an applied request's result.
//!
//! A member proposes a request under a fresh ID and registers a waiter for it;
//! when the entry is applied (on this member, in log order) the state machine
//! hands the result to the waiter. IDs are made as etcd makes them: the low 16
//! bits of the member ID, then a counter started from the clock, so IDs from
//! different members and different runs do not collide.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

/// Generates unique request IDs for one member.
#[derive(Debug)]
pub struct IdGen {
    prefix: u64,
    suffix: AtomicU64,
}

const SUFFIX_BITS: u32 = 48;
const SUFFIX_MASK: u64 = (1 << SUFFIX_BITS) - 1;

impl IdGen {
    pub fn new(member_id: u64) -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        IdGen {
            prefix: (member_id & 0xffff) << SUFFIX_BITS,
            suffix: AtomicU64::new((millis << 8) & SUFFIX_MASK),
        }
    }

    pub fn next(&self) -> u64 {
        let s = self.suffix.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.prefix | (s & SUFFIX_MASK)
    }
}

/// Waiters by request ID.
#[derive(Debug)]
pub struct Waiters<T> {
    inner: Mutex<HashMap<u64, oneshot::Sender<T>>>,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters {
            inner: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Waiters<T> {
    /// Registers a waiter for `id`.
    pub fn register(&self, id: u64) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.inner.lock() {
            m.insert(id, tx);
        }
        rx
    }

    /// Hands `value` to the waiter of `id`, if any.
    pub fn trigger(&self, id: u64, value: T) {
        let tx = self.inner.lock().ok().and_then(|mut m| m.remove(&id));
        if let Some(tx) = tx {
            let _ = tx.send(value);
        }
    }

    /// Forgets the waiter of `id` (it gave up).
    pub fn cancel(&self, id: u64) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(&id);
        }
    }

    /// Whether anyone waits for `id`.
    pub fn is_waiting(&self, id: u64) -> bool {
        self.inner
            .lock()
            .map(|m| m.contains_key(&id))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_carry_the_member_prefix() {
        let g = IdGen::new(0x8e9e05c52164694d);
        let a = g.next();
        let b = g.next();
        assert_ne!(a, b);
        assert_eq!(a >> 48, 0x694d);
    }

    #[tokio::test]
    async fn a_triggered_waiter_gets_its_value_once() {
        let w: Waiters<u32> = Waiters::default();
        let rx = w.register(7);
        w.trigger(7, 42);
        w.trigger(7, 43);
        assert_eq!(rx.await.unwrap(), 42);
        assert!(!w.is_waiting(7));
    }
}
