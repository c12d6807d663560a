//! Write coalescing for client connections: a small write waits until the
//! worker thread has run its other ready tasks, so the responses that complete
//! together leave in one system call.
//!
//! Why: hyper runs every gRPC call in a task of its own, and a call that ends
//! wakes its connection's task, which tokio runs next (from its LIFO slot).
//! When a Raft batch commits, dozens of calls on one connection end at once,
//! and each used to be flushed alone: one `writev` of some 60 bytes per
//! response, and on loopback one wake-up of the client per response too.
//!
//! How: [`CoalescingStream`] wraps the connection below hyper. The first small
//! write of a burst returns `Pending` after handing a waker to
//! [`tokio::task::yield_now`], which wakes it only once the worker has run out
//! of ready tasks (or at its periodic maintenance, every few dozen polls);
//! until then every write returns `Pending`. In the meantime the other calls
//! that ended add their frames to the HTTP/2 connection's buffer, and the
//! first write after the round carries them all.
//!
//! Invariants:
//! - Bytes are never reordered, held or dropped: a deferred write returns
//!   `Pending` without taking any byte, and the caller (h2, or hyper's HTTP/1)
//!   keeps its buffer and writes it again when woken.
//! - A burst waits for one round of the worker's queue, however often the
//!   connection's task is woken meanwhile (every call that ends wakes it);
//!   the first write after the round goes to the socket.
//! - Large writes are never deferred; they already amortise their system call.
//! - Reads, flushes and shutdowns pass straight through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes of fewer bytes than this are deferred.
const SMALL_WRITE: usize = 16 * 1024;

/// A connection whose small writes wait one round of the worker's ready tasks.
#[derive(Debug)]
pub struct CoalescingStream<S> {
    inner: S,
    /// The round the writes of the current burst wait for, if any.
    round: Option<Arc<EndOfRound>>,
}

/// The waker of one wait for the worker's ready tasks: the wake-up that ends
/// the round sets `done`, then wakes the connection's task.
#[derive(Debug)]
struct EndOfRound {
    done: AtomicBool,
    task: Waker,
}

impl Wake for EndOfRound {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.done.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl<S> CoalescingStream<S> {
    pub fn new(inner: S) -> Self {
        CoalescingStream { inner, round: None }
    }

    /// Whether a write of `len` bytes must wait: it starts a round if none is
    /// on, and waits until the round is over.
    fn should_defer(&mut self, len: usize, cx: &mut Context<'_>) -> bool {
        if len == 0 || len >= SMALL_WRITE {
            return false;
        }
        if let Some(round) = &self.round {
            if round.done.load(Ordering::Acquire) {
                self.round = None;
                return false;
            }
            if round.task.will_wake(cx.waker()) {
                return true;
            }
            // Polled from another task than the one the round will wake:
            // start a round for this one.
        }
        let round = Arc::new(EndOfRound {
            done: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(round.clone());
        // `yield_now` hands the waker to the scheduler on its first poll (or,
        // outside a tokio runtime, wakes it at once). Dropping the future
        // afterwards does not take the wake-up back.
        let yielded =
            std::pin::pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(&waker));
        if yielded.is_ready() {
            return false;
        }
        self.round = Some(round);
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescingStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescingStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.should_defer(buf.len(), cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if this.should_defer(len, cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::task::AtomicWaker;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Records every write it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap().clone()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.lock().unwrap().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What the calls of one HTTP/2 connection share: the frames they queued
    /// and the connection task's waker.
    #[derive(Default)]
    struct Shared {
        queued: Mutex<Vec<u8>>,
        /// Everything ever queued, in order.
        sent: Mutex<Vec<u8>>,
        connection: AtomicWaker,
    }

    /// Stands in for h2's connection task: whenever it runs, it moves the
    /// queued frames to its buffer and writes the buffer, keeping what a
    /// write did not take, until `expected` bytes are out.
    struct Connection<W> {
        io: W,
        shared: Arc<Shared>,
        buf: Vec<u8>,
        left: usize,
    }

    impl<W: AsyncWrite + Unpin> Future for Connection<W> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let this = self.get_mut();
            this.shared.connection.register(cx.waker());
            this.buf
                .extend(this.shared.queued.lock().unwrap().drain(..));
            while !this.buf.is_empty() {
                match Pin::new(&mut this.io).poll_write(cx, &this.buf) {
                    Poll::Ready(Ok(n)) => {
                        this.buf.drain(..n);
                        this.left -= n;
                    }
                    Poll::Ready(Err(e)) => panic!("write failed: {e}"),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if this.left == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    /// Ends `calls` gRPC calls at once on one connection written through
    /// `io`, as a Raft batch that commits does, on a one-worker runtime, and
    /// returns the bytes the calls queued, in order.
    fn end_calls_together<W>(calls: usize, io: W) -> Vec<u8>
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let shared = Arc::new(Shared::default());
        let responses: Vec<Vec<u8>> = (0..calls)
            .map(|i| format!("response {i:03};").into_bytes())
            .collect();
        let total = responses.iter().map(Vec::len).sum();
        runtime.block_on(async {
            let connection = tokio::spawn(Connection {
                io,
                shared: shared.clone(),
                buf: Vec::new(),
                left: total,
            });
            // Each call waits for the commit, then queues its response and
            // wakes the connection.
            let commit = Arc::new(tokio::sync::Notify::new());
            let mut ended = Vec::new();
            for response in responses {
                let (shared, commit) = (shared.clone(), commit.clone());
                let notified = commit.clone().notified_owned();
                ended.push(tokio::spawn(async move {
                    notified.await;
                    let _ = &commit;
                    shared.sent.lock().unwrap().extend(&response);
                    shared.queued.lock().unwrap().extend(response);
                    shared.connection.wake();
                }));
            }
            tokio::task::yield_now().await;
            // The commit wakes every call from within the runtime.
            tokio::spawn(async move { commit.notify_waiters() })
                .await
                .unwrap();
            for call in ended {
                call.await.unwrap();
            }
            connection.await.unwrap();
        });
        let sent = shared.sent.lock().unwrap().clone();
        sent
    }

    #[test]
    fn responses_ending_together_share_one_write() {
        let recorder = Recorder::default();
        let expected = end_calls_together(20, CoalescingStream::new(recorder.clone()));
        let writes = recorder.writes();
        assert_eq!(writes.concat(), expected, "bytes lost or reordered");
        assert!(
            writes.len() <= 2,
            "{} writes for 20 responses",
            writes.len()
        );
    }

    #[test]
    fn without_coalescing_each_response_is_written_alone() {
        // The behaviour CoalescingStream exists for: if tokio stops running a
        // woken task straight after its waker, this fails and the wrapper
        // may no longer be needed.
        let recorder = Recorder::default();
        end_calls_together(20, recorder.clone());
        assert!(
            recorder.writes().len() >= 10,
            "{:?}",
            recorder.writes().len()
        );
    }

    #[tokio::test]
    async fn large_writes_go_through_at_once() {
        let recorder = Recorder::default();
        let mut stream = CoalescingStream::new(recorder.clone());
        let big = vec![7u8; SMALL_WRITE];
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let r = Pin::new(&mut stream).poll_write(&mut cx, &big);
        assert!(matches!(r, Poll::Ready(Ok(n)) if n == SMALL_WRITE));
    }

    #[tokio::test]
    async fn a_small_write_waits_for_the_round_then_goes_through() {
        let recorder = Recorder::default();
        let mut stream = CoalescingStream::new(recorder.clone());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut stream)
            .poll_write(&mut cx, b"abc")
            .is_pending());
        assert!(
            Pin::new(&mut stream)
                .poll_write(&mut cx, b"abc")
                .is_pending(),
            "the round is not over"
        );
        assert!(recorder.writes().is_empty());
        // The round ends once the runtime has run its other ready tasks.
        tokio::task::yield_now().await;
        assert!(matches!(
            Pin::new(&mut stream).poll_write(&mut cx, b"abc"),
            Poll::Ready(Ok(3))
        ));
        // The next burst waits for a round of its own.
        stream.write_all(b"de").await.unwrap();
        assert_eq!(recorder.writes(), vec![b"abc".to_vec(), b"de".to_vec()]);
    }
}
