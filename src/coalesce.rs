//! Write coalescing for gRPC connections: the responses that complete
//! together on a member's client connection leave in one system call (the
//! members' listener, [`crate::api::listener`], wraps every connection).
//! `localcluster bench` wraps its own connections too
//! ([`crate::bench::conn`]), so that the requests its
//! clients send together leave together, as grpc-go's clients batch theirs.
//!
//! Why: hyper runs every gRPC call in a task of its own, and a call that ends
//! wakes its connection's task. When a Raft batch commits, the Raft thread
//! wakes dozens of calls on one connection at once; a worker runs them one
//! after the other, and after each, the connection's task, which tokio runs
//! straight after the task that woke it (from its LIFO slot). So each response
//! used to be flushed alone: one `writev` of some 60 bytes per response, and
//! on loopback one wake-up of the client per response too.
//!
//! How: [`CoalescingStream`] wraps the connection below hyper, in three phases:
//! - *Idle*: a small write (under 16 KiB) returns `Pending` and starts a
//!   *round*: it hands a waker to [`tokio::task::yield_now`], which the worker
//!   fires only once it has no ready task left (local, injected or stolen), or
//!   at its periodic maintenance (every 61 scheduler ticks).
//! - *Waiting*: until the round ends, every small write from the same task
//!   returns `Pending`, however often the task is woken; meanwhile the calls
//!   that end add their frames to the HTTP/2 connection's buffer.
//! - *Open*: the first write after the round goes to the socket with them
//!   all, and so does every write until the worker next runs out of ready
//!   tasks (a second, silent waker marks that): a connection that has more
//!   to send than one write takes (h2 flushes when its buffer is full) does
//!   not wait a round per write. The next small write after that starts a
//!   round again.
//!
//! The stream says it cannot write vectored, so that h2 copies DATA frames
//! under 1 KiB into its write buffer (with vectored writes it keeps every
//! frame of 256 bytes or more apart and flushes each on its own, which would
//! leave a range response of a few hundred bytes uncoalesced).
//!
//! Invariants:
//! - Bytes are never reordered, held or dropped: a deferred write returns
//!   `Pending` without taking any byte, and the caller (h2, or hyper's HTTP/1)
//!   keeps its buffer and writes it again when woken.
//! - A write waits at most one round of its worker. A poll from another task
//!   than the round's (never the case under hyper) starts a round of its own.
//! - Large writes are never deferred; they already amortise their system call.
//! - Reads, flushes and shutdowns pass straight through.
//!
//! Costs: a response that ends alone pays one more poll of its connection's
//! task and a zero-timeout `epoll_wait` of the worker. While a write waits,
//! h2 may hold back reading the connection too (it sends what it must before
//! it reads more), for at most the same round. HTTP/1 responses (`/health`,
//! `/metrics`, the JSON gateway) wait a round like any small write, and gain
//! nothing from it.

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
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// The next small write starts a round.
    Idle,
    /// Small writes wait for this round to end.
    Waiting(Arc<EndOfRound>),
    /// Writes go through until this (silent) round ends.
    Open(Arc<EndOfRound>),
}

/// The waker handed to the scheduler for one round: when the scheduler fires
/// it, it sets `done`, then wakes the connection's task (if any).
#[derive(Debug)]
struct EndOfRound {
    done: AtomicBool,
    task: Option<Waker>,
}

impl EndOfRound {
    /// Starts a round that wakes `task` (or no one) when it ends.
    fn start(task: Option<Waker>) -> Arc<EndOfRound> {
        let round = Arc::new(EndOfRound {
            done: AtomicBool::new(false),
            task,
        });
        let waker = Waker::from(round.clone());
        // `yield_now`'s first poll hands the waker to the scheduler (outside a
        // tokio runtime it wakes it at once) and returns `Pending`; dropping
        // the future afterwards does not take the wake-up back.
        let _ = std::pin::pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(&waker));
        round
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

impl Wake for EndOfRound {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.done.store(true, Ordering::Release);
        if let Some(task) = &self.task {
            task.wake_by_ref();
        }
    }
}

impl<S> CoalescingStream<S> {
    pub fn new(inner: S) -> Self {
        CoalescingStream {
            inner,
            phase: Phase::Idle,
        }
    }

    /// Whether a write of `len` bytes must wait (see the phases above).
    fn should_defer(&mut self, len: usize, cx: &mut Context<'_>) -> bool {
        if len == 0 || len >= SMALL_WRITE {
            return false;
        }
        match &self.phase {
            Phase::Open(window) if !window.is_done() => return false,
            Phase::Waiting(round) if round.is_done() => {
                self.phase = Phase::Open(EndOfRound::start(None));
                return false;
            }
            Phase::Waiting(round)
                if round.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) =>
            {
                return true;
            }
            // Idle, a window that closed, or a round that will wake another task.
            _ => {}
        }
        self.phase = Phase::Waiting(EndOfRound::start(Some(cx.waker().clone())));
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

    /// No, so that h2 copies small DATA frames into its buffer (see above).
    /// A vectored write from a caller that tries one anyway still goes to the
    /// socket as one.
    fn is_write_vectored(&self) -> bool {
        false
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
    use std::sync::Mutex;
    use std::time::Duration;

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
            .enable_time()
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
                let shared = shared.clone();
                let notified = commit.clone().notified_owned();
                ended.push(tokio::spawn(async move {
                    notified.await;
                    shared.sent.lock().unwrap().extend(&response);
                    shared.queued.lock().unwrap().extend(response);
                    shared.connection.wake();
                }));
            }
            // The commit wakes every call from within the runtime.
            tokio::spawn(async move { commit.notify_waiters() })
                .await
                .unwrap();
            for call in ended {
                call.await.unwrap();
            }
            tokio::time::timeout(Duration::from_secs(10), connection)
                .await
                .expect("the connection never wrote every response")
                .unwrap();
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
        // Usually one or two writes; a loaded machine that preempts the
        // worker between wake-ups may split them a few more times. Without
        // the wrapper, at least ten (the next test).
        assert!(
            writes.len() < 10,
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

    /// Polls one write of `bytes` with a waker that counts its wake-ups.
    fn poll_counted(
        stream: &mut CoalescingStream<Recorder>,
        bytes: &[u8],
        wakes: &Arc<WakeCount>,
    ) -> Poll<io::Result<usize>> {
        let waker = Waker::from(wakes.clone());
        Pin::new(stream).poll_write(&mut Context::from_waker(&waker), bytes)
    }

    /// A stream over a recorder, and a waker that counts its wake-ups.
    fn counted_stream() -> (Recorder, CoalescingStream<Recorder>, Arc<WakeCount>) {
        let recorder = Recorder::default();
        let stream = CoalescingStream::new(recorder.clone());
        (recorder, stream, Arc::new(WakeCount::default()))
    }

    #[derive(Default)]
    struct WakeCount(std::sync::atomic::AtomicUsize);

    impl Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_small_write_waits_for_the_round_and_its_task_is_woken() {
        let (recorder, mut stream, wakes) = counted_stream();
        assert!(poll_counted(&mut stream, b"abc", &wakes).is_pending());
        assert!(
            poll_counted(&mut stream, b"abc", &wakes).is_pending(),
            "the round is not over"
        );
        assert!(recorder.writes().is_empty());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        // The round ends once the runtime has run its other ready tasks.
        tokio::task::yield_now().await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the task was not woken");
        assert!(matches!(
            poll_counted(&mut stream, b"abc", &wakes),
            Poll::Ready(Ok(3))
        ));
        assert_eq!(recorder.writes(), vec![b"abc".to_vec()]);
    }

    #[tokio::test]
    async fn after_a_round_writes_go_through_until_the_runtime_is_idle_again() {
        let (recorder, mut stream, wakes) = counted_stream();
        assert!(poll_counted(&mut stream, b"a", &wakes).is_pending());
        tokio::task::yield_now().await;
        // A connection with more than one write to make makes them all now.
        for bytes in [b"a", b"b", b"c"] {
            assert!(poll_counted(&mut stream, bytes, &wakes).is_ready());
        }
        // Once the runtime has run out of ready tasks, a new burst waits.
        tokio::task::yield_now().await;
        assert!(poll_counted(&mut stream, b"d", &wakes).is_pending());
        tokio::time::timeout(Duration::from_secs(10), stream.write_all(b"d"))
            .await
            .expect("a deferred write never completed")
            .unwrap();
        let expected: Vec<Vec<u8>> = [b"a", b"b", b"c", b"d"].map(|b| b.to_vec()).into();
        assert_eq!(recorder.writes(), expected);
    }

    #[test]
    fn the_stream_asks_h2_for_plain_writes() {
        // h2 keeps every DATA frame of 256 bytes or more apart when it can
        // write vectored, and flushes each alone: range responses would not
        // coalesce. Without vectored writes it copies frames under 1 KiB.
        assert!(!CoalescingStream::new(Recorder::default()).is_write_vectored());
    }
}
