//! Linearizable reads waiting for the node, shared by the API and the node.
//!
//! A linearizable read needs the leader's commit index, confirmed by a quorum
//! (Raft's ReadIndex): one heartbeat round from the leader to its peers and
//! back. Reads that arrive together share one round. As etcd's linearizable
//! read loop, a node runs one round at a time; every read that arrives while a
//! round is in flight waits for the next one. Under load, a member confirms
//! its reads once per round trip, not once per read.
//!
//! The queue also spares the node a wake-up per read. A reader pushes its reply
//! here, and only the first reader since the node last took the queue sends the
//! node a message ([`super::node::Msg::ReadsWaiting`]). The others push and
//! wait.
//!
//! Invariant: while `signalled` is set, the node will look at the queue. Either
//! a message is on its way, or a round is in flight and the node takes the
//! queue when the round ends (answered, or dropped on a leader change). When the
//! node stops, the queue is closed: waiting reads are told, and later ones are
//! refused at once.

use std::sync::{Mutex, MutexGuard};

use super::RaftError;

/// Where a read's index is sent once a quorum has confirmed it.
pub type ReadReply = super::node::Reply<u64>;

/// The reads waiting for the next read-index round.
#[derive(Default)]
pub struct ReadQueue {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    waiting: Vec<ReadReply>,
    /// The node will look at the queue without being told again.
    signalled: bool,
    /// The node has stopped.
    closed: bool,
}

impl ReadQueue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing in the critical sections can panic; a poisoned lock still
        // holds a consistent queue.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a read. Returns `true` when the caller must tell the node, which
    /// happens once until the node next takes the queue.
    pub fn push(&self, reply: ReadReply) -> Result<bool, RaftError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(RaftError::Stopped);
        }
        inner.waiting.push(reply);
        Ok(!std::mem::replace(&mut inner.signalled, true))
    }

    /// Takes every waiting read. The next read to arrive tells the node.
    pub fn take(&self) -> Vec<ReadReply> {
        let mut inner = self.lock();
        inner.signalled = false;
        std::mem::take(&mut inner.waiting)
    }

    /// Whether reads are waiting.
    pub fn has_waiting(&self) -> bool {
        !self.lock().waiting.is_empty()
    }

    /// The node has stopped: answers the waiting reads with
    /// [`RaftError::Stopped`] and refuses later ones.
    pub fn close(&self) {
        let waiting = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.waiting)
        };
        for reply in waiting {
            let _ = reply.send(Err(RaftError::Stopped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn read() -> (ReadReply, oneshot::Receiver<Result<u64, RaftError>>) {
        oneshot::channel()
    }

    #[test]
    fn only_the_first_read_since_a_take_signals_the_node() {
        let q = ReadQueue::default();
        let signals: Vec<bool> = (0..3).map(|_| q.push(read().0).unwrap()).collect();
        assert_eq!(signals, [true, false, false]);
        assert_eq!(q.take().len(), 3);
        assert!(!q.has_waiting());
        assert!(q.push(read().0).unwrap(), "a take re-arms the signal");
        assert!(!q.push(read().0).unwrap());
        assert_eq!(q.take().len(), 2);
    }

    #[test]
    fn taking_an_empty_queue_re_arms_the_signal() {
        let q = ReadQueue::default();
        assert!(q.push(read().0).unwrap());
        q.take();
        assert!(q.take().is_empty());
        assert!(q.push(read().0).unwrap());
    }

    #[test]
    fn closing_answers_waiting_reads_and_refuses_later_ones() {
        let q = ReadQueue::default();
        let (reply, mut rx) = read();
        q.push(reply).unwrap();
        q.close();
        assert!(matches!(rx.try_recv(), Ok(Err(RaftError::Stopped))));
        assert!(matches!(q.push(read().0), Err(RaftError::Stopped)));
        assert!(!q.has_waiting());
    }
}
