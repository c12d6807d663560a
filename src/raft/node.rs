//! The Raft node: the one thread that owns `raft::RawNode`.
//!
//! Everything reaches the node as a [`Msg`] on one channel: proposals from the API,
//! Raft messages from peers, fault hooks. Linearizable reads wait in a shared
//! [`ReadQueue`] and are confirmed by one read-index round at a time. The loop:
//!
//! 1. wait for a message or the next tick, then drain the channel, so that what
//!    arrives together goes into one Ready; consecutive proposals go to
//!    raft-rs as one proposal of many entries, which a leader streaming
//!    appends to a follower sends in one append (one answer back), not one
//!    per proposal;
//! 2. tick when due;
//! 3. when raft-rs has a Ready: send the leader's messages at once (they may go out
//!    before the leader's own fsync), restore a snapshot if one arrived, apply
//!    committed entries through the [`StateMachine`], persist new entries and the
//!    hard state (one fsync), only then send the messages that depend on them
//!    (votes, append responses), advance, and repeat for the `LightReady`;
//! 4. publish a [`NodeStatus`] (leader, term, commit and applied indexes) on a
//!    watch channel that the API reads without touching the node.
//!
//! Invariants: nothing is acknowledged to a peer before it is durable; entries are
//! applied exactly once, in order (the state machine records its applied index in
//! the same transaction as the data, and raft-rs is told that index on restart);
//! the log is compacted only behind the applied index.

use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::prelude::{ConfChangeV2, ConfState, Entry, Message, Snapshot, SnapshotMetadata};
use raft::{Config, RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};

use super::reads::{ReadQueue, ReadReply};
use super::storage::RaftStorage;
use super::RaftError;
use crate::wait::IdGen;

/// The replicated state machine driven by the node (see `crate::apply`).
pub trait StateMachine: Send + 'static {
    /// Applies committed entries, in order. Configuration changes are applied to
    /// Raft through `conf`, which returns the new configuration.
    fn apply(
        &mut self,
        entries: Vec<Entry>,
        conf: &mut dyn FnMut(&ConfChangeV2) -> Result<ConfState, RaftError>,
    ) -> Result<(), RaftError>;
    /// Replaces the whole state by a snapshot's data.
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), RaftError>;
    /// The index of the last applied entry.
    fn applied_index(&self) -> u64;
    /// The index of the last applied entry that is on disk; the log is kept
    /// from there on.
    fn durable_index(&self) -> u64;
    /// Makes applied state durable when it has waited long enough (or now, with
    /// `force`).
    fn flush(&mut self, force: bool) -> Result<(), RaftError>;
    /// The index and term of the last applied entry and the configuration as of
    /// it (durable): what a snapshot of the current state would carry.
    fn applied_metadata(&self) -> Result<SnapshotMetadata, RaftError>;
}

/// Sends Raft messages to peers (see [`super::transport`]).
pub trait Outbox: Send + 'static {
    fn send(&self, messages: Vec<Message>);
}

/// What the node last published about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub is_leader: bool,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// True while paused by a fault hook.
    pub paused: bool,
}

/// Who leads, in which term: published beside [`NodeStatus`] on a watch of
/// its own that changes only with elections, so a request waiting for a new
/// leader is not woken by every entry the node commits or applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leadership {
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub term: u64,
}

/// Where the node answers a request.
pub(super) type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

/// How far the leader knows each member's log to match its own (Raft's
/// progress tracker); only a leader has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderProgress {
    /// The leader's ID.
    pub leader_id: u64,
    /// `(member ID, highest log index known to match the leader's)`, the
    /// leader included.
    pub matched: Vec<(u64, u64)>,
}

impl LeaderProgress {
    /// The match index of `id`, if the leader tracks it.
    pub fn matched(&self, id: u64) -> Option<u64> {
        self.matched.iter().find(|(m, _)| *m == id).map(|(_, i)| *i)
    }
}

/// Messages to the node.
pub enum Msg {
    Propose {
        data: Vec<u8>,
        reply: Reply<u64>,
    },
    ProposeConfChange {
        cc: ConfChangeV2,
        context: Vec<u8>,
        reply: Reply<()>,
    },
    /// Reads wait in the [`ReadQueue`]; sent by the first one since the node
    /// last took the queue.
    ReadsWaiting,
    /// The leader's progress tracker; `None` when this node is not the leader.
    Progress {
        reply: Reply<Option<LeaderProgress>>,
    },
    /// Messages from one peer's frame, stepped in order (one hand-over,
    /// however many the frame held).
    Step(Vec<Message>),
    Unreachable(u64),
    /// An open stream to this peer broke (see [`leader_lost`]).
    StreamBroke(u64),
    SnapshotDone {
        to: u64,
        ok: bool,
    },
    TransferLeader(u64),
    /// Moves the election clock this many ticks forward, unless a leader is
    /// known (a faster first election; see `member::lifecycle::advance_ticks`).
    AdvanceTicks(usize),
    Pause,
    Resume,
    /// Flushes applied state and the hard state, then ends the loop.
    Stop,
    /// Ends the loop at once, as a crash would: what is not durable yet is
    /// recovered from the Raft log at the next start.
    Kill,
}

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub name: String,
    pub tick: Duration,
    pub election_ticks: usize,
    /// Compact the log when this many entries have been applied since the last
    /// compaction point (etcd's --snapshot-count).
    pub snapshot_count: u64,
    /// Entries kept behind the compaction point so slow followers catch up from
    /// the log rather than by snapshot.
    pub catchup_entries: u64,
    /// Counts every new leader seen (`etcd_server_leader_changes_seen_total`).
    pub leader_changes: Option<prometheus::IntCounter>,
}

/// A clonable handle to a running node.
#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Msg>,
    status: watch::Receiver<NodeStatus>,
    leadership: watch::Receiver<Leadership>,
    reads: Arc<ReadQueue>,
}

impl RaftHandle {
    /// Proposes `data`; resolves once the node took it (not when committed),
    /// with the term in which it did (handing it to that term's leader, or
    /// appending it as that leader).
    pub async fn propose(&self, data: Vec<u8>) -> Result<u64, RaftError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Propose { data, reply })?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Proposes a configuration change.
    pub async fn propose_conf_change(
        &self,
        cc: ConfChangeV2,
        context: Vec<u8>,
    ) -> Result<(), RaftError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::ProposeConfChange { cc, context, reply })?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// The leader's commit index as confirmed by a quorum (Raft's ReadIndex);
    /// reading state applied up to it is linearizable.
    /// Reads that arrive together share one round (see [`super::reads`]).
    pub async fn read_index(&self) -> Result<u64, RaftError> {
        let (reply, rx) = oneshot::channel();
        if self.reads.push(reply)? {
            if let Err(e) = self.send(Msg::ReadsWaiting) {
                // No node will ever take the queue (it never started, or it
                // ended): tell the reads waiting behind this one too.
                self.reads.close();
                return Err(e);
            }
        }
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// The leader's view of every member's log, or `None` on a follower.
    pub async fn progress(&self) -> Result<Option<LeaderProgress>, RaftError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Progress { reply })?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Waits until the state machine has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), RaftError> {
        let mut rx = self.status.clone();
        rx.wait_for(|s| s.applied_index >= index)
            .await
            .map_err(|_| RaftError::Stopped)?;
        Ok(())
    }

    /// Hands messages from a peer to the node, to be stepped in order.
    pub fn step(&self, messages: Vec<Message>) -> Result<(), RaftError> {
        self.send(Msg::Step(messages))
    }

    /// Sends a control message.
    pub fn send(&self, msg: Msg) -> Result<(), RaftError> {
        self.tx.send(msg).map_err(|_| RaftError::Stopped)
    }

    /// A handle to no node: what it is sent arrives on the receiver (tests).
    #[cfg(test)]
    pub(crate) fn detached() -> (RaftHandle, mpsc::Receiver<Msg>) {
        let (tx, rx) = mpsc::channel();
        let (_, status) = watch::channel(NodeStatus::default());
        let (_, leadership) = watch::channel(Leadership::default());
        let handle = RaftHandle {
            tx,
            status,
            leadership,
            reads: Arc::new(ReadQueue::default()),
        };
        (handle, rx)
    }

    /// The latest status.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// The current term (without copying the whole status).
    pub fn term(&self) -> u64 {
        self.status.borrow().term
    }

    /// The current leader, 0 when none is known.
    pub fn leader_id(&self) -> u64 {
        self.status.borrow().leader_id
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// A receiver that sees every change of leader or term, and nothing else.
    pub fn watch_leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }
}

/// The running node: its thread and a handle. Dropping it does not stop the
/// thread; call [`Node::stop`].
pub struct Node {
    handle: RaftHandle,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    /// Starts the node thread. `channel` is the pair made by [`channel`], so that the
    /// transport could get a handle before the node existed.
    pub fn start(
        config: NodeConfig,
        mut storage: RaftStorage,
        state_machine: Box<dyn StateMachine>,
        outbox: Box<dyn Outbox>,
        channel: (RaftHandle, NodeInbox),
    ) -> Result<Node, RaftError> {
        let (handle, inbox) = channel;
        let applied = state_machine.applied_index();
        reconcile_log(&mut storage, state_machine.as_ref())?;
        let raft_config = raft_config(&config, applied);
        raft_config.validate()?;
        let logger = super::logger::logger(&config.name);
        let raw = RawNode::new(&raft_config, storage, &logger)?;
        let mut looper = Loop {
            raw,
            sm: state_machine,
            outbox,
            rx: inbox.rx,
            status: inbox.status,
            leadership: inbox.leadership,
            config,
            reads: inbox.reads,
            inflight_read: None,
            read_ids: IdGen::new(raft_config.id),
            paused: false,
            held: VecDeque::new(),
            taken: Vec::new(),
            last_leader: 0,
        };
        let name = format!("raft-{}", looper.config.name);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                if let Err(e) = looper.run() {
                    tracing::error!(error = %e, "raft node stopped on error");
                }
            })
            .map_err(|e| RaftError::Apply(format!("cannot start raft thread: {e}")))?;
        Ok(Node {
            handle,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> &RaftHandle {
        &self.handle
    }

    /// Stops the node thread and waits for it to end.
    pub fn stop(&mut self) {
        self.end(Msg::Stop);
    }

    /// Ends the node thread without flushing anything, as a crash would, and
    /// waits for it to end.
    pub fn kill(&mut self) {
        self.end(Msg::Kill);
    }

    fn end(&mut self, how: Msg) {
        let _ = self.handle.send(how);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The receiving half of a node's channel.
pub struct NodeInbox {
    rx: mpsc::Receiver<Msg>,
    status: watch::Sender<NodeStatus>,
    leadership: watch::Sender<Leadership>,
    reads: Arc<ReadQueue>,
}

/// Makes a node's channel: a handle for everyone else and the inbox for the node.
pub fn channel(id: u64) -> (RaftHandle, NodeInbox) {
    let (tx, rx) = mpsc::channel();
    let (status_tx, status_rx) = watch::channel(NodeStatus {
        id,
        ..Default::default()
    });
    let (leadership_tx, leadership_rx) = watch::channel(Leadership::default());
    let reads = Arc::new(ReadQueue::default());
    (
        RaftHandle {
            tx,
            status: status_rx,
            leadership: leadership_rx,
            reads: reads.clone(),
        },
        NodeInbox {
            rx,
            status: status_tx,
            leadership: leadership_tx,
            reads,
        },
    )
}

struct Loop {
    raw: RawNode<RaftStorage>,
    sm: Box<dyn StateMachine>,
    outbox: Box<dyn Outbox>,
    rx: mpsc::Receiver<Msg>,
    status: watch::Sender<NodeStatus>,
    leadership: watch::Sender<Leadership>,
    config: NodeConfig,
    /// Reads waiting for the next read-index round; closed when the loop ends.
    reads: Arc<ReadQueue>,
    /// The read-index round sent to raft-rs and not yet answered: one at a time.
    inflight_read: Option<InflightRead>,
    /// Read-index contexts. The leader keeps pending reads by context and
    /// ignores a request whose context is already pending, so contexts must
    /// be unique across members and restarts, not just within this node.
    read_ids: IdGen,
    paused: bool,
    /// Messages received while paused, handled on resume.
    held: VecDeque<Msg>,
    /// Proposals taken since the last hand-over to raft-rs
    /// ([`Loop::propose_taken`]).
    taken: Vec<(Vec<u8>, Reply<u64>)>,
    last_leader: u64,
}

enum Flow {
    Continue,
    Stop,
}

/// One batch of read-index requests sent to raft-rs under one context.
struct InflightRead {
    ctx: u64,
    replies: Vec<ReadReply>,
    sent: Instant,
    /// The leader this node knew when it sent the round (0: none).
    leader: u64,
    /// Sent before this node knew a leader that had committed an entry of its
    /// term: raft-rs dropped it, and it goes again as soon as one has.
    early: bool,
}

impl Drop for Loop {
    /// However the loop ends, reads still waiting are told the node stopped.
    fn drop(&mut self) {
        self.reads.close();
    }
}

/// raft-rs's settings for a node of `config` that has applied `applied`.
fn raft_config(config: &NodeConfig, applied: u64) -> Config {
    Config {
        id: config.id,
        election_tick: config.election_ticks,
        heartbeat_tick: 1,
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::Safe,
        ..Default::default()
    }
}

impl Loop {
    fn run(&mut self) -> Result<(), RaftError> {
        let mut next_tick = Instant::now() + self.config.tick;
        self.publish_status();
        loop {
            // Reads left waiting when a round was dropped go out at once.
            let timeout = if self.reads_can_go() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            match self.rx.recv_timeout(timeout) {
                Ok(msg) => {
                    if let Flow::Stop = self.handle(msg)? {
                        return Ok(());
                    }
                    // Drain whatever else is queued, to batch it into one Ready.
                    for _ in 0..4096 {
                        match self.rx.try_recv() {
                            Ok(msg) => {
                                if let Flow::Stop = self.handle(msg)? {
                                    return Ok(());
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            self.propose_taken();
            if self.paused {
                next_tick = Instant::now() + self.config.tick;
                continue;
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                self.retry_reads();
                next_tick += self.config.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.config.tick;
                }
            }
            self.drive_reads();
            while self.raw.has_ready() {
                self.on_ready()?;
                // A round answered in this Ready lets the next one go now.
                self.drive_reads();
            }
            self.sm.flush(false)?;
            self.maybe_compact()?;
            self.publish_status();
        }
    }

    fn handle(&mut self, msg: Msg) -> Result<Flow, RaftError> {
        if self.paused {
            match msg {
                Msg::Resume => {
                    self.paused = false;
                    let held: Vec<Msg> = self.held.drain(..).collect();
                    for m in held {
                        if let Flow::Stop = self.handle(m)? {
                            return Ok(Flow::Stop);
                        }
                    }
                }
                Msg::Stop => return self.stop_gracefully(),
                Msg::Kill => return Ok(Flow::Stop),
                other => self.held.push_back(other),
            }
            self.publish_status();
            return Ok(Flow::Continue);
        }
        // Proposals wait for the next message of another kind, or the end of
        // the queue, and then go to raft-rs together, in the order taken.
        if let Msg::Propose { data, reply } = msg {
            self.taken.push((data, reply));
            return Ok(Flow::Continue);
        }
        self.propose_taken();
        match msg {
            // Taken above; kept for the next hand-over all the same.
            Msg::Propose { data, reply } => self.taken.push((data, reply)),
            Msg::ProposeConfChange { cc, context, reply } => {
                let r = self
                    .raw
                    .propose_conf_change(context, cc)
                    .map_err(RaftError::from);
                let _ = reply.send(r);
            }
            // The loop takes the queue after handling its messages.
            Msg::ReadsWaiting => {}
            Msg::Progress { reply } => {
                let raft = &self.raw.raft;
                let progress = (raft.state == StateRole::Leader).then(|| LeaderProgress {
                    leader_id: raft.id,
                    matched: raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect(),
                });
                let _ = reply.send(Ok(progress));
            }
            Msg::Step(messages) => {
                for m in messages {
                    // Messages for a stale configuration are refused by
                    // raft-rs; that is normal.
                    if let Err(e) = self.raw.step(m) {
                        tracing::debug!(target: "raft", error = %e, "step refused");
                    }
                }
            }
            Msg::Unreachable(id) => self.raw.report_unreachable(id),
            Msg::StreamBroke(id) => leader_lost(&mut self.raw, id),
            Msg::SnapshotDone { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Msg::TransferLeader(to) => self.raw.transfer_leader(to),
            Msg::AdvanceTicks(n) => {
                if self.raw.raft.leader_id == 0 {
                    for _ in 0..n {
                        self.raw.tick();
                    }
                }
            }
            Msg::Pause => {
                self.paused = true;
                self.publish_status();
            }
            Msg::Resume => {}
            Msg::Stop => return self.stop_gracefully(),
            Msg::Kill => return Ok(Flow::Stop),
        }
        Ok(Flow::Continue)
    }

    /// The end of [`Msg::Stop`]: applied state and the hard state are made
    /// durable first (paused or not).
    fn stop_gracefully(&mut self) -> Result<Flow, RaftError> {
        self.sm.flush(true)?;
        self.raw.mut_store().save_hard_state()?;
        Ok(Flow::Stop)
    }

    /// Whether the next round may start and has reads to confirm.
    fn reads_can_go(&self) -> bool {
        !self.paused && self.inflight_read.is_none() && self.reads.has_waiting()
    }

    /// Resends a round that went out too early, then starts the next round.
    fn drive_reads(&mut self) {
        self.resend_early_reads();
        self.flush_reads();
    }

    /// Whether a read-index request sent now can be answered: raft-rs drops
    /// one, without a word, on a node that knows no leader and on a leader
    /// that has not yet committed an entry of its term (a follower learns
    /// that commit from the leader, so it knows it only once it holds).
    fn reads_servable(&self) -> bool {
        let raft = &self.raw.raft;
        raft.leader_id != 0 && raft.commit_to_current_term()
    }

    /// Starts a read-index round for every read waiting, unless a round is in
    /// flight: its end (answer or leader change) lets the next one go.
    fn flush_reads(&mut self) {
        if self.inflight_read.is_some() {
            return;
        }
        let replies = self.reads.take();
        if replies.is_empty() {
            return;
        }
        let ctx = self.read_ids.next();
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        self.inflight_read = Some(InflightRead {
            ctx,
            replies,
            sent: Instant::now(),
            leader: self.raw.raft.leader_id,
            early: !self.reads_servable(),
        });
    }

    /// Sends again, at once, a round that went out before it could be served
    /// (after an election, say), instead of waiting for [`Self::retry_reads`]:
    /// every read waits behind the round in flight.
    fn resend_early_reads(&mut self) {
        // Looked at on every pass of the loop: the term lookup only when a
        // round waits for it.
        let early = self.inflight_read.as_ref().is_some_and(|r| r.early);
        if !early || !self.reads_servable() {
            return;
        }
        if let Some(read) = self.inflight_read.as_mut() {
            self.raw.read_index(read.ctx.to_be_bytes().to_vec());
            read.early = false;
            read.sent = Instant::now();
        }
    }

    /// Sends again the read-index requests that got no answer for half an
    /// election timeout (as etcd retries its read index): a leader drops them
    /// silently until it has committed an entry of its term, and a message can
    /// be lost on the way. The leader ignores a context it already has pending.
    fn retry_reads(&mut self) {
        let patience = self.config.tick * (self.config.election_ticks as u32 / 2).max(1);
        if let Some(read) = self.inflight_read.as_mut() {
            if read.sent.elapsed() >= patience {
                self.raw.read_index(read.ctx.to_be_bytes().to_vec());
                read.sent = Instant::now();
            }
        }
    }

    /// Hands the proposals taken since the last call to raft-rs as one
    /// proposal of many entries: they are appended together and go to each
    /// follower in one append, not one append (and one answer back) each. A
    /// follower forwards them to its leader in one message. Each is told the
    /// term that took it, or why it was refused (all of them alike: raft-rs
    /// takes or drops a proposal whole).
    fn propose_taken(&mut self) {
        if self.taken.is_empty() {
            return;
        }
        let term = self.raw.raft.term;
        let (entries, replies): (Vec<Entry>, Vec<Reply<u64>>) = self
            .taken
            .drain(..)
            .map(|(data, reply)| {
                let entry = Entry {
                    data: data.into(),
                    ..Default::default()
                };
                (entry, reply)
            })
            .unzip();
        let mut proposal = Message::default();
        proposal.set_msg_type(raft::prelude::MessageType::MsgPropose);
        proposal.from = self.raw.raft.id;
        proposal.set_entries(entries.into());
        let refused = self.raw.raft.step(proposal).err();
        for reply in replies {
            let outcome = match &refused {
                None => Ok(term),
                Some(raft::Error::ProposalDropped) => {
                    Err(RaftError::Raft(raft::Error::ProposalDropped))
                }
                // raft-rs 0.7 refuses a proposal with ProposalDropped only.
                Some(other) => Err(RaftError::Refused(other.to_string())),
            };
            let _ = reply.send(outcome);
        }
    }

    fn on_ready(&mut self) -> Result<(), RaftError> {
        let mut ready = self.raw.ready();

        if !ready.messages().is_empty() {
            self.outbox.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.sm.restore(&snap)?;
            self.raw.mut_store().apply_snapshot(snap.get_metadata())?;
        }
        for rs in ready.take_read_states() {
            let ctx = ctx_of(&rs.request_ctx);
            // An answer for a round already failed (or answered) is ignored.
            if let Some(read) = self.inflight_read.take_if(|r| r.ctx == ctx) {
                for r in read.replies {
                    let _ = r.send(Ok(rs.index));
                }
            }
        }
        // Persist and answer first, then apply: the acknowledgements (and the
        // leader's own vote for its entries) go out without waiting for the
        // state machine. Committed entries are already durable here (raft-rs
        // hands out only persisted ones), so their order does not matter.
        let hs = ready.hs().cloned();
        self.raw.mut_store().persist(ready.entries(), hs.as_ref())?;
        if !ready.persisted_messages().is_empty() {
            self.outbox.send(ready.take_persisted_messages());
        }
        let committed = ready.take_committed_entries();
        self.apply(committed)?;

        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        if !light.messages().is_empty() {
            self.outbox.send(light.take_messages());
        }
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.raw.advance_apply();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        if entries.is_empty() {
            return Ok(());
        }
        let raw = &mut self.raw;
        let mut conf = |cc: &ConfChangeV2| -> Result<ConfState, RaftError> {
            let cs = raw.apply_conf_change(cc)?;
            raw.mut_store().set_conf_state(cs.clone())?;
            Ok(cs)
        };
        self.sm.apply(entries, &mut conf)
    }

    /// Drops applied entries from the log every `snapshot_count` entries, keeping
    /// `catchup_entries` behind for slow followers.
    fn maybe_compact(&mut self) -> Result<(), RaftError> {
        let applied = self.sm.durable_index();
        let first = self.raw.store().first();
        let count = self.config.snapshot_count.max(1);
        if applied >= first + count + self.config.catchup_entries {
            let to = applied - self.config.catchup_entries;
            self.raw.mut_store().compact(to)?;
            tracing::debug!(target: "raft", compacted_to = to, applied, "compacted raft log");
        }
        Ok(())
    }

    fn publish_status(&mut self) {
        let raft = &self.raw.raft;
        let leader_id = raft.leader_id;
        let is_leader = raft.state == StateRole::Leader;
        let cs = self.raw.store().conf_state();
        let mut voters = cs.voters.clone();
        voters.sort_unstable();
        let mut learners = cs.learners.clone();
        learners.sort_unstable();
        let status = NodeStatus {
            id: raft.id,
            leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: self.sm.applied_index(),
            last_index: raft.raft_log.last_index(),
            is_leader,
            voters,
            learners,
            paused: self.paused,
        };
        if leader_id != self.last_leader {
            if leader_id != 0 {
                if let Some(c) = &self.config.leader_changes {
                    c.inc();
                }
            }
            log_leader_change(&status, self.last_leader);
            // A round sent to another leader may never be answered: it fails
            // (etcd's "leader changed"). One sent while no leader was known was
            // dropped, and goes to the new leader once it can serve reads.
            let sent_elsewhere = |r: &mut InflightRead| r.leader != 0 && r.leader != leader_id;
            if let Some(read) = self.inflight_read.take_if(sent_elsewhere) {
                for r in read.replies {
                    let _ = r.send(Err(RaftError::LeaderChanged));
                }
            }
            self.last_leader = leader_id;
        }
        let leadership = Leadership {
            leader_id,
            term: status.term,
        };
        self.leadership.send_if_modified(|l| {
            let changed = *l != leadership;
            *l = leadership;
            changed
        });
        self.status.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }
}

/// Logs a change of leader with etcd's raft messages (`elected leader`,
/// `changed leader from`, `lost leader`), which scripts wait on; `unapplied`
/// is how many committed entries this member has yet to apply.
fn log_leader_change(status: &NodeStatus, old_leader: u64) {
    let unapplied = status.commit_index.saturating_sub(status.applied_index);
    let (id, term, leader) = (status.id, status.term, status.leader_id);
    let change = match (old_leader, leader) {
        (_, 0) => format!("lost leader {old_leader:x}"),
        (0, _) => format!("elected leader {leader:x}"),
        _ => format!("changed leader from {old_leader:x} to {leader:x}"),
    };
    tracing::info!(target: "raft", unapplied, "{id:x} {change} at term {term}");
}

/// Brings the log in line with what the state machine durably holds after a
/// crash (raft-rs refuses to start with an applied index beyond the commit index
/// or the log):
/// - a commit index that moved alone is not synced (see `storage`), so the
///   stored one may be behind the applied one: those entries were committed,
///   so the commit index catches up;
/// - a leader's snapshot is restored into the state machine before it is
///   recorded in the log, so the log may not hold the applied entry (or hold a
///   stale one in its place): the snapshot is recorded now.
fn reconcile_log(storage: &mut RaftStorage, sm: &dyn StateMachine) -> Result<(), RaftError> {
    let meta = sm.applied_metadata()?;
    let logged_term = match raft::Storage::term(storage, meta.index) {
        Ok(term) => Some(term),
        Err(raft::Error::Store(raft::StorageError::Unavailable)) => None,
        // Behind the compaction point: the log is ahead; nothing to do.
        Err(_) => return Ok(()),
    };
    if logged_term != Some(meta.term) {
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "recording the leader's snapshot restored before a crash"
        );
        storage.apply_snapshot(&meta)?;
    } else if storage.hard_state().commit < meta.index {
        storage.set_commit(meta.index)?;
    }
    Ok(())
}

/// The read-index context in a read state (see `flush_reads`).
fn ctx_of(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if bytes.len() == 8 {
        a.copy_from_slice(bytes);
    }
    u64::from_be_bytes(a)
}

/// A follower whose open stream to its leader broke stops counting on that
/// leader's lease.
///
/// Raft waits a whole randomized election timeout (1–2 s by default) from
/// the leader's last message before it elects another. When the leader's
/// process dies on this machine, its connections close at once and the
/// transport reports the stream broken; the follower then moves its election
/// clock to the end of the fixed part of the timeout. It grants (pre-)votes
/// from then on and campaigns after the random part alone (0–1 s by default),
/// which still spreads the survivors' campaigns apart.
///
/// A live leader's next heartbeat sets the clock back. A member that still
/// hears the leader refuses the pre-vote of one that lost only its
/// connection (raft-rs's check-quorum lease), so a broken connection by
/// itself never deposes a healthy leader. Only a stream that was up counts:
/// reconnects that keep failing (to a live leader, say with a bad
/// certificate) do not reopen the window after every heartbeat.
fn leader_lost<T: raft::Storage>(raw: &mut RawNode<T>, peer: u64) {
    let raft = &mut raw.raft;
    if raft.state == StateRole::Follower && raft.leader_id == peer {
        let fixed = raft.election_timeout();
        raft.election_elapsed = raft.election_elapsed.max(fixed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::HardState;

    /// Remembers the index and term of the last applied entry; nothing else.
    struct Counter(u64, u64);

    impl StateMachine for Counter {
        fn apply(
            &mut self,
            entries: Vec<Entry>,
            _conf: &mut dyn FnMut(&ConfChangeV2) -> Result<ConfState, RaftError>,
        ) -> Result<(), RaftError> {
            if let Some(e) = entries.last() {
                self.0 = e.index;
                self.1 = e.term;
            }
            Ok(())
        }
        fn restore(&mut self, snapshot: &Snapshot) -> Result<(), RaftError> {
            self.0 = snapshot.get_metadata().index;
            self.1 = snapshot.get_metadata().term;
            Ok(())
        }
        fn applied_index(&self) -> u64 {
            self.0
        }
        fn durable_index(&self) -> u64 {
            self.0
        }
        fn flush(&mut self, _force: bool) -> Result<(), RaftError> {
            Ok(())
        }
        fn applied_metadata(&self) -> Result<SnapshotMetadata, RaftError> {
            let mut meta = SnapshotMetadata {
                index: self.0,
                term: self.1,
                ..Default::default()
            };
            meta.set_conf_state(ConfState::from((vec![1], vec![])));
            Ok(meta)
        }
    }

    /// A [`Counter`] that counts the flushes it is made to force.
    struct Forced(Counter, Arc<std::sync::atomic::AtomicUsize>);

    impl StateMachine for Forced {
        fn apply(
            &mut self,
            entries: Vec<Entry>,
            conf: &mut dyn FnMut(&ConfChangeV2) -> Result<ConfState, RaftError>,
        ) -> Result<(), RaftError> {
            self.0.apply(entries, conf)
        }
        fn restore(&mut self, snapshot: &Snapshot) -> Result<(), RaftError> {
            self.0.restore(snapshot)
        }
        fn applied_index(&self) -> u64 {
            self.0.applied_index()
        }
        fn durable_index(&self) -> u64 {
            self.0.durable_index()
        }
        fn flush(&mut self, force: bool) -> Result<(), RaftError> {
            if force {
                self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
        fn applied_metadata(&self) -> Result<SnapshotMetadata, RaftError> {
            self.0.applied_metadata()
        }
    }

    struct Nowhere;

    impl Outbox for Nowhere {
        fn send(&self, _messages: Vec<Message>) {}
    }

    /// A single-voter log holding entries 2..=6 of term 1 (index 1 is the
    /// bootstrap's compaction point), commit index 3.
    fn log_of_five(dir: &std::path::Path) -> RaftStorage {
        let mut storage = RaftStorage::open(&dir.join("raftlog")).unwrap();
        storage
            .bootstrap(b"id", ConfState::from((vec![1], vec![])))
            .unwrap();
        let entries: Vec<Entry> = (2..=6)
            .map(|index| Entry {
                index,
                term: 1,
                ..Default::default()
            })
            .collect();
        let hs = HardState {
            term: 1,
            vote: 1,
            commit: 3,
            ..Default::default()
        };
        storage.persist(&entries, Some(&hs)).unwrap();
        storage
    }

    /// Node 1's settings in the tests (10 ticks to an election).
    fn test_config(tick: Duration) -> NodeConfig {
        NodeConfig {
            id: 1,
            name: "t".into(),
            tick,
            election_ticks: 10,
            snapshot_count: 1000,
            catchup_entries: 10,
            leader_changes: None,
        }
    }

    /// Starts a single-voter node (10 ticks to an election) over `storage` and `sm`.
    fn start_node(storage: RaftStorage, sm: Counter, tick: Duration) -> (Node, RaftHandle) {
        start_node_with(storage, sm, tick, Box::new(Nowhere))
    }

    /// Starts node 1 over `storage` and `sm`, sending its messages to `outbox`.
    fn start_node_with(
        storage: RaftStorage,
        sm: Counter,
        tick: Duration,
        outbox: Box<dyn Outbox>,
    ) -> (Node, RaftHandle) {
        let (handle, inbox) = channel(1);
        let node = Node::start(
            test_config(tick),
            storage,
            Box::new(sm),
            outbox,
            (handle.clone(), inbox),
        )
        .unwrap();
        (node, handle)
    }

    /// Starts a node over `storage` and `sm`; waits until it leads and has
    /// committed at least `index`.
    fn start_and_lead(storage: RaftStorage, sm: Counter, index: u64) {
        let (mut node, handle) = start_node(storage, sm, Duration::from_millis(10));
        wait_status(&handle, |s| s.is_leader && s.commit_index > index);
        node.stop();
    }

    /// Waits (up to 10 s) until the node's status satisfies `done`.
    fn wait_status(handle: &RaftHandle, done: impl Fn(&NodeStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&handle.status()) {
            assert!(Instant::now() < deadline, "{:?}", handle.status());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts a lone voter over a fresh log; returns once it leads.
    fn lone_leader(dir: &std::path::Path) -> (Node, RaftHandle) {
        let (node, handle) = start_node(log_of_five(dir), Counter(3, 1), Duration::from_millis(10));
        wait_status(&handle, |s| s.is_leader);
        (node, handle)
    }

    /// A read of `handle`'s node, running on its own task.
    fn spawn_read(handle: &RaftHandle) -> tokio::task::JoinHandle<Result<u64, RaftError>> {
        let h = handle.clone();
        tokio::spawn(async move { h.read_index().await })
    }

    /// A lone leader, paused (once it says so: a read sent before could still
    /// be answered), with one read sent 100 ms ago.
    async fn paused_leader_with_a_waiting_read(
        dir: &std::path::Path,
    ) -> (
        Node,
        RaftHandle,
        tokio::task::JoinHandle<Result<u64, RaftError>>,
    ) {
        let (node, handle) = lone_leader(dir);
        handle.send(Msg::Pause).unwrap();
        wait_status(&handle, |s| s.paused);
        let read = spawn_read(&handle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        (node, handle, read)
    }

    #[test]
    fn a_stop_flushes_applied_state_and_a_kill_leaves_it_to_the_log() {
        for (kill, paused) in [(false, false), (false, true), (true, false), (true, true)] {
            let dir = tempfile::tempdir().unwrap();
            let forced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (handle, inbox) = channel(1);
            let mut node = Node::start(
                test_config(Duration::from_millis(10)),
                log_of_five(dir.path()),
                Box::new(Forced(Counter(3, 1), forced.clone())),
                Box::new(Nowhere),
                (handle.clone(), inbox),
            )
            .unwrap();
            wait_status(&handle, |s| s.is_leader);
            if paused {
                handle.send(Msg::Pause).unwrap();
                wait_status(&handle, |s| s.paused);
            }
            let before = forced.load(std::sync::atomic::Ordering::SeqCst);
            if kill {
                node.kill();
            } else {
                node.stop();
            }
            let at_the_end = forced.load(std::sync::atomic::Ordering::SeqCst) - before;
            assert_eq!(
                at_the_end,
                usize::from(!kill),
                "kill: {kill}, paused: {paused}"
            );
        }
    }

    #[tokio::test]
    async fn a_read_sent_before_a_leader_was_elected_is_answered_once_one_is() {
        let dir = tempfile::tempdir().unwrap();
        // No tick comes during the test, so neither an election nor the retry
        // of an unanswered read happens on its own.
        let (mut node, handle) = start_node(
            log_of_five(dir.path()),
            Counter(3, 1),
            Duration::from_secs(3600),
        );
        let read = spawn_read(&handle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!read.is_finished(), "no leader, no read index");
        handle.send(Msg::AdvanceTicks(20)).unwrap();
        let index = tokio::time::timeout(Duration::from_secs(5), read).await;
        assert!(index.expect("answered without a retry").unwrap().unwrap() >= 6);
        node.stop();
    }

    #[tokio::test]
    async fn leadership_changes_with_elections_not_with_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (mut node, handle) = lone_leader(dir.path());
        let mut leadership = handle.watch_leadership();
        let mut status = handle.watch_status();
        let seen = *leadership.borrow_and_update();
        assert_eq!(seen.leader_id, 1);
        status.mark_unchanged();
        for _ in 0..5 {
            handle.propose(b"x".to_vec()).await.unwrap();
        }
        let last = handle.status().last_index;
        handle.wait_applied(last).await.unwrap();
        assert!(status.has_changed().unwrap(), "entries change the status");
        assert!(
            !leadership.has_changed().unwrap(),
            "but not who leads: {:?}",
            *leadership.borrow()
        );
        node.stop();
    }

    /// Pauses the node and sends it 20 proposals, which it holds until it
    /// resumes and then hands to raft-rs together; their answers.
    async fn propose_twenty_while_paused(
        handle: &RaftHandle,
    ) -> Vec<tokio::task::JoinHandle<Result<u64, RaftError>>> {
        handle.send(Msg::Pause).unwrap();
        let proposals = (0..20u8)
            .map(|i| {
                let h = handle.clone();
                tokio::spawn(async move { h.propose(vec![i]).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        proposals
    }

    #[tokio::test]
    async fn proposals_sent_together_are_all_taken_in_one_term_and_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut node, handle) = lone_leader(dir.path());
        let before = handle.status();
        let proposals = propose_twenty_while_paused(&handle).await;
        handle.send(Msg::Resume).unwrap();
        for p in proposals {
            assert_eq!(p.await.unwrap().unwrap(), before.term);
        }
        let last = before.last_index + 20;
        handle.wait_applied(last).await.unwrap();
        assert_eq!(handle.status().last_index, last);
        node.stop();
    }

    /// An outbox that keeps what it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<std::sync::Mutex<Vec<Message>>>);

    impl Outbox for Recorder {
        fn send(&self, messages: Vec<Message>) {
            self.0.lock().unwrap().extend(messages);
        }
    }

    #[tokio::test]
    async fn proposals_taken_together_leave_a_follower_in_one_message() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = RaftStorage::open(&dir.path().join("raftlog")).unwrap();
        storage
            .bootstrap(b"id", ConfState::from((vec![1, 2, 3], vec![])))
            .unwrap();
        let outbox = Recorder::default();
        let (mut node, handle) = start_node_with(
            storage,
            Counter(1, 1),
            Duration::from_secs(3600),
            Box::new(outbox.clone()),
        );
        // Leader 2's heartbeat makes this node its follower.
        handle.step(vec![heartbeat_from_2(1)]).unwrap();
        wait_status(&handle, |s| s.leader_id == 2);
        let proposals = propose_twenty_while_paused(&handle).await;
        outbox.0.lock().unwrap().clear();
        handle.send(Msg::Resume).unwrap();
        for p in proposals {
            assert_eq!(p.await.unwrap().unwrap(), 1);
        }
        // A proposal is answered once Raft took it; the message forwarding
        // it leaves with the next Ready, a moment later.
        let forwarded = || -> Vec<(u64, usize)> {
            outbox
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|m| m.get_msg_type() == raft::prelude::MessageType::MsgPropose)
                .map(|m| (m.to, m.entries.len()))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while forwarded().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(forwarded(), vec![(2, 20)]);
        node.stop();
    }

    #[test]
    fn a_proposal_of_many_entries_reaches_each_follower_in_one_append() {
        let node = test_config(Duration::from_millis(100));
        let storage = raft::storage::MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
        let logger = super::super::logger::logger("test");
        let mut raw = RawNode::new(&raft_config(&node, 0), storage, &logger).unwrap();
        raw.raft.become_candidate();
        raw.raft.become_leader();
        // Both followers acknowledge the leader's first entry, so the leader
        // streams appends to them (Replicate) rather than probing.
        let last = raw.raft.raft_log.last_index();
        for from in [2, 3] {
            let mut ack = Message::default();
            ack.set_msg_type(raft::prelude::MessageType::MsgAppendResponse);
            ack.from = from;
            ack.to = 1;
            ack.term = raw.raft.term;
            ack.index = last;
            raw.step(ack).unwrap();
        }
        raw.raft.msgs.clear();
        // What `Loop::propose_taken` hands over for five proposals.
        let mut proposal = Message::default();
        proposal.set_msg_type(raft::prelude::MessageType::MsgPropose);
        proposal.from = 1;
        let entries: Vec<Entry> = (0..5u8)
            .map(|i| Entry {
                data: vec![i].into(),
                ..Default::default()
            })
            .collect();
        proposal.set_entries(entries.into());
        raw.raft.step(proposal).unwrap();
        let mut appends: Vec<(u64, usize)> = raw
            .raft
            .msgs
            .iter()
            .filter(|m| m.get_msg_type() == raft::prelude::MessageType::MsgAppend)
            .map(|m| (m.to, m.entries.len()))
            .collect();
        appends.sort_unstable();
        assert_eq!(appends, vec![(2, 5), (3, 5)]);
    }

    #[tokio::test]
    async fn reads_arriving_together_are_all_confirmed_at_the_commit_index() {
        let dir = tempfile::tempdir().unwrap();
        let (mut node, handle) = lone_leader(dir.path());
        let committed = handle.status().commit_index;
        let reads: Vec<_> = (0..50).map(|_| spawn_read(&handle)).collect();
        for read in reads {
            let index = tokio::time::timeout(Duration::from_secs(5), read).await;
            assert!(index.unwrap().unwrap().unwrap() >= committed);
        }
        node.stop();
    }

    #[tokio::test]
    async fn reads_waiting_on_a_paused_node_are_confirmed_when_it_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut node, handle, read) = paused_leader_with_a_waiting_read(dir.path()).await;
        assert!(!read.is_finished(), "a paused node confirms nothing");
        handle.send(Msg::Resume).unwrap();
        let index = tokio::time::timeout(Duration::from_secs(5), read).await;
        assert!(index.unwrap().unwrap().is_ok());
        node.stop();
    }

    #[tokio::test]
    async fn reads_waiting_when_the_node_stops_are_told_and_later_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut node, handle, read) = paused_leader_with_a_waiting_read(dir.path()).await;
        node.stop();
        let waiting = tokio::time::timeout(Duration::from_secs(5), read).await;
        assert!(matches!(waiting.unwrap().unwrap(), Err(RaftError::Stopped)));
        assert!(matches!(handle.read_index().await, Err(RaftError::Stopped)));
    }

    #[test]
    fn advancing_the_election_clock_elects_a_lone_voter_without_waiting_for_ticks() {
        let dir = tempfile::tempdir().unwrap();
        let storage = log_of_five(dir.path());
        // No tick comes during the test: only the advance can elect.
        let (mut node, handle) = start_node(storage, Counter(3, 1), Duration::from_secs(3600));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!handle.status().is_leader);
        // Past the largest randomized election timeout (2 x election_ticks).
        handle.send(Msg::AdvanceTicks(20)).unwrap();
        wait_status(&handle, |s| s.is_leader);
        node.stop();
    }

    /// A follower of leader 2 in a cluster of 1, 2, 3 (raft-rs's memory storage).
    fn follower_of_2() -> RawNode<raft::storage::MemStorage> {
        let storage = raft::storage::MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
        let config = Config {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 1,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let logger = super::super::logger::logger("test");
        let mut raw = RawNode::new(&config, storage, &logger).unwrap();
        raw.step(heartbeat_from_2(1)).unwrap();
        assert_eq!(raw.raft.leader_id, 2);
        raw
    }

    /// Leader 2's heartbeat to 1 in `term`.
    fn heartbeat_from_2(term: u64) -> Message {
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
        heartbeat.from = 2;
        heartbeat.to = 1;
        heartbeat.term = term;
        heartbeat
    }

    /// Whether `raw` answers a pre-vote from 3 for the next term with a grant.
    fn grants_pre_vote_to_3(raw: &mut RawNode<raft::storage::MemStorage>) -> bool {
        let mut pre_vote = Message::default();
        pre_vote.set_msg_type(raft::prelude::MessageType::MsgRequestPreVote);
        pre_vote.from = 3;
        pre_vote.to = 1;
        pre_vote.term = raw.raft.term + 1;
        pre_vote.log_term = raw.raft.raft_log.last_term();
        pre_vote.index = raw.raft.raft_log.last_index();
        raw.step(pre_vote).unwrap();
        raw.raft.msgs.drain(..).any(|m| {
            m.get_msg_type() == raft::prelude::MessageType::MsgRequestPreVoteResponse
                && m.to == 3
                && !m.reject
        })
    }

    #[test]
    fn a_follower_that_loses_its_stream_to_the_leader_leaves_the_leaders_lease() {
        let mut raw = follower_of_2();
        assert!(
            !grants_pre_vote_to_3(&mut raw),
            "within the lease, a pre-vote is ignored"
        );
        leader_lost(&mut raw, 3);
        assert_eq!(raw.raft.election_elapsed, 0, "3 is not the leader");
        leader_lost(&mut raw, 2);
        assert_eq!(raw.raft.election_elapsed, raw.raft.election_timeout());
        assert!(grants_pre_vote_to_3(&mut raw));
        // It campaigns after the random part of its timeout alone.
        let ticks_left = raw.raft.randomized_election_timeout() - raw.raft.election_timeout();
        for _ in 0..ticks_left.max(1) {
            raw.tick();
        }
        assert_eq!(raw.raft.state, StateRole::PreCandidate);
    }

    #[test]
    fn a_heartbeat_from_the_leader_puts_a_follower_back_in_its_lease() {
        let mut raw = follower_of_2();
        leader_lost(&mut raw, 2);
        let term = raw.raft.term;
        raw.step(heartbeat_from_2(term)).unwrap();
        assert_eq!(raw.raft.election_elapsed, 0);
        assert!(!grants_pre_vote_to_3(&mut raw));
    }

    #[test]
    fn restarts_when_the_state_machine_applied_past_the_stored_commit_index() {
        let dir = tempfile::tempdir().unwrap();
        // Killed after applying entry 5 but before saving commit = 5.
        let storage = log_of_five(dir.path());
        start_and_lead(storage, Counter(5, 1), 5);
        let storage = RaftStorage::open(&dir.path().join("raftlog")).unwrap();
        assert!(storage.hard_state().commit > 5);
    }

    #[test]
    fn restarts_when_a_restored_snapshot_was_not_yet_recorded_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        // Killed after restoring a snapshot at index 50, term 2, before
        // recording it in the log.
        let storage = log_of_five(dir.path());
        start_and_lead(storage, Counter(50, 2), 50);
        // Or at index 4 of term 2, where the log holds an entry of term 1.
        let dir = tempfile::tempdir().unwrap();
        let storage = log_of_five(dir.path());
        start_and_lead(storage, Counter(4, 2), 4);
        let storage = RaftStorage::open(&dir.path().join("raftlog")).unwrap();
        assert_eq!(storage.first(), 5);
    }
}
