//! Peer transport: Raft messages between members over gRPC on the peer URLs.
//!
//! Each member runs the `lcraftpb.RaftTransport` service on its `--listen-peer-urls`
//! ([`PeerService`]) and, for every other member, one sender task ([`Peers`]) that
//! keeps a client-streaming `Send` call open and pushes batches of messages into it
//! in the order the Raft node produced them. When the stream breaks, the task
//! reports the peer unreachable to Raft (and, if the stream had been up, that
//! it broke: a follower that loses its leader this way campaigns sooner; see
//! `node::leader_lost`), drops what is queued (Raft retransmits) and reconnects
//! with a short backoff.
//!
//! Messages travel as protobuf bytes: a sender encodes them into shared blocks,
//! and a receiver parses each as a slice of its frame, then copies its entries'
//! data into one block per message (entries outlive the frame in the Raft
//! log): one allocation per message where parsing used to make one per entry.
//!
//! A receiver refuses batches stamped with another cluster ID, so two clusters
//! with different tokens never mix even when their ports are confused.
//!
//! Each sender records since when its stream to the peer has been up
//! ([`Peers::active_since`], etcd's `transport.ActiveSince`): the Cluster
//! service's strict reconfiguration check counts the peers this member is
//! connected to.
//!
//! [`Faults`] implements the embedded cluster's `partition`/`heal` hooks: messages
//! to or from a blocked peer are silently dropped on both sides, as a network
//! partition would, while client traffic is unaffected.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::node::{Msg, Outbox, RaftHandle};
use crate::pb::lcraftpb::raft_transport_client::RaftTransportClient;
use crate::pb::lcraftpb::raft_transport_server::RaftTransport;
use crate::pb::lcraftpb::{
    MemberMatch, Membership, ProbeRequest, ProbeResponse, ProgressResponse, RaftBatch, SendAck,
};

/// Peers whose messages are dropped (a simulated network partition).
#[derive(Default, Debug)]
pub struct Faults {
    blocked: RwLock<HashSet<u64>>,
}

impl Faults {
    /// Drops all traffic with these peers from now on (replaces the previous set).
    pub fn block(&self, peers: impl IntoIterator<Item = u64>) {
        if let Ok(mut b) = self.blocked.write() {
            *b = peers.into_iter().collect();
        }
    }

    /// Restores traffic with every peer.
    pub fn heal(&self) {
        if let Ok(mut b) = self.blocked.write() {
            b.clear();
        }
    }

    pub fn is_blocked(&self, peer: u64) -> bool {
        self.blocked
            .read()
            .map(|b| b.contains(&peer))
            .unwrap_or(false)
    }
}

/// The sending side: one queue and task per peer.
pub struct Peers {
    cluster_id: u64,
    member_id: u64,
    raft: RaftHandle,
    faults: Arc<Faults>,
    queues: Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
    active: Arc<ActiveSince>,
    /// The generation of the next sender.
    generations: std::sync::atomic::AtomicU64,
    metrics: Option<crate::metrics::Metrics>,
    /// How to dial `https://` peer URLs (the peer certificate and CA).
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// Since when the stream to each peer has been up (absent: down), with the
/// generation of the sender that reported it: a replaced sender winding down
/// must not mark its successor's stream down.
#[derive(Default, Debug)]
struct ActiveSince(Mutex<HashMap<u64, (u64, Instant)>>);

impl ActiveSince {
    fn up(&self, peer: u64, generation: u64) {
        if let Ok(mut a) = self.0.lock() {
            match a.get(&peer) {
                Some((g, _)) if *g == generation => {}
                _ => {
                    a.insert(peer, (generation, Instant::now()));
                }
            }
        }
    }

    fn down(&self, peer: u64, generation: Option<u64>) {
        if let Ok(mut a) = self.0.lock() {
            if generation.is_none() || a.get(&peer).map(|(g, _)| *g) == generation {
                a.remove(&peer);
            }
        }
    }

    fn get(&self, peer: u64) -> Option<Instant> {
        self.0
            .lock()
            .ok()
            .and_then(|a| a.get(&peer).map(|(_, t)| *t))
    }
}

impl Peers {
    pub fn new(
        cluster_id: u64,
        member_id: u64,
        raft: RaftHandle,
        faults: Arc<Faults>,
        shutdown: CancellationToken,
        metrics: Option<crate::metrics::Metrics>,
        tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    ) -> Arc<Peers> {
        Arc::new(Peers {
            cluster_id,
            member_id,
            raft,
            faults,
            tls,
            queues: Mutex::new(HashMap::new()),
            shutdown,
            tasks: Mutex::new(Vec::new()),
            runtime: tokio::runtime::Handle::current(),
            active: Arc::new(ActiveSince::default()),
            generations: std::sync::atomic::AtomicU64::new(1),
            metrics,
        })
    }

    /// Since when the stream to `peer` has been up; `None` while it is down
    /// (or for this member itself).
    pub fn active_since(&self, peer: u64) -> Option<Instant> {
        if self.faults.is_blocked(peer) {
            return None;
        }
        self.active.get(peer)
    }

    /// Starts (or replaces) the sender for `peer` at `url`.
    pub fn add(&self, peer: u64, url: String) {
        if peer == self.member_id {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = Sender {
            cluster_id: self.cluster_id,
            from: self.member_id,
            to: peer,
            url,
            raft: self.raft.clone(),
            faults: self.faults.clone(),
            shutdown: self.shutdown.child_token(),
            active: self.active.clone(),
            generation: self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            rtt: self
                .metrics
                .as_ref()
                .map(|m| m.peer_rtt.with_label_values(&[&format!("{peer:x}")])),
            sent: self
                .metrics
                .as_ref()
                .map(|m| m.peer_sent.with_label_values(&[&format!("{peer:x}")])),
            tls: self.tls.clone(),
        };
        let task = self.runtime.spawn(sender.run(rx));
        if let Ok(mut q) = self.queues.lock() {
            q.insert(peer, tx);
        }
        if let Ok(mut t) = self.tasks.lock() {
            t.retain(|t| !t.is_finished());
            t.push(task);
        }
    }

    /// Stops sending to `peer` (it was removed from the cluster).
    pub fn remove(&self, peer: u64) {
        if let Ok(mut q) = self.queues.lock() {
            q.remove(&peer);
        }
        self.active.down(peer, None);
    }

    /// Aborts every sender task at once.
    pub fn abort(&self) {
        self.shutdown.cancel();
        if let Ok(mut t) = self.tasks.lock() {
            for task in t.drain(..) {
                task.abort();
            }
        }
    }
}

/// The Raft node's outbox: routes messages to the per-peer queues.
pub struct PeersOutbox(pub Arc<Peers>);

impl Outbox for PeersOutbox {
    fn send(&self, messages: Vec<Message>) {
        let Ok(queues) = self.0.queues.lock() else {
            return;
        };
        for m in messages {
            if let Some(q) = queues.get(&m.to) {
                let _ = q.send(m);
            }
        }
    }
}

struct Sender {
    cluster_id: u64,
    from: u64,
    to: u64,
    url: String,
    raft: RaftHandle,
    faults: Arc<Faults>,
    shutdown: CancellationToken,
    active: Arc<ActiveSince>,
    generation: u64,
    /// Observes probe round trips to this peer.
    rtt: Option<prometheus::Histogram>,
    /// Counts the bytes of Raft messages sent to this peer.
    sent: Option<prometheus::IntCounter>,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

const MAX_BATCH: usize = 512;

/// How often a sender measures the round trip to its peer (etcd's prober).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

impl Sender {
    /// Probes the peer every [`PROBE_INTERVAL`] on the stream's connection
    /// and records the round trip; never returns.
    async fn probe_loop(&self, mut client: RaftTransportClient<tonic::transport::Channel>) {
        loop {
            match &self.rtt {
                Some(h) if !self.faults.is_blocked(self.to) => {
                    let start = std::time::Instant::now();
                    if client.probe(ProbeRequest {}).await.is_ok() {
                        h.observe(start.elapsed().as_secs_f64());
                    }
                }
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    async fn run(self, mut queue: mpsc::UnboundedReceiver<Message>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let mut was_up = false;
            let result = self.stream(&mut queue, &mut was_up).await;
            self.active.down(self.to, Some(self.generation));
            match result {
                Ok(()) => return, // queue closed or shutdown
                Err(e) => {
                    tracing::debug!(peer = %format!("{:x}", self.to), error = %e, "peer stream broke");
                    let _ = self.raft.send(Msg::Unreachable(self.to));
                    // Only a stream that was up: a reconnect that fails again
                    // says nothing new about the peer.
                    if was_up {
                        let _ = self.raft.send(Msg::StreamBroke(self.to));
                    }
                }
            }
            // Drop what queued up while the peer was away: Raft will resend.
            while let Ok(m) = queue.try_recv() {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    let _ = self.raft.send(Msg::SnapshotDone {
                        to: self.to,
                        ok: false,
                    });
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
    }

    /// Runs one stream until it breaks (Err) or the sender is shut down (Ok).
    /// Sets `was_up` once the stream is open.
    async fn stream(
        &self,
        queue: &mut mpsc::UnboundedReceiver<Message>,
        was_up: &mut bool,
    ) -> Result<(), String> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.url.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(crate::member::PEER_WINDOW))
            .initial_connection_window_size(Some(crate::member::PEER_WINDOW))
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3));
        let channel = tokio::select! {
            c = crate::tls::connector::connect(&endpoint, self.tls.clone()) => c.map_err(|e| e.to_string())?,
            _ = self.shutdown.cancelled() => return Ok(()),
        };
        let mut client = RaftTransportClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let (tx, rx) = mpsc::channel::<RaftBatch>(64);
        let mut scratch = BytesMut::new();
        let prober = self.probe_loop(client.clone());
        let call = client.send(ReceiverStream::new(rx));
        tokio::pin!(call);
        self.active.up(self.to, self.generation);
        *was_up = true;
        tokio::pin!(prober);
        loop {
            tokio::select! {
                _ = &mut prober => {}
                res = &mut call => {
                    return Err(match res {
                        Ok(_) => "peer closed the stream".to_string(),
                        Err(s) => s.message().to_string(),
                    });
                }
                m = queue.recv() => {
                    let Some(first) = m else { return Ok(()) };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    if self.faults.is_blocked(self.to) {
                        // Dropped as by a partition. A dropped snapshot must be
                        // reported, or Raft waits for it forever and never
                        // replicates to this peer again after the heal.
                        for m in &batch {
                            if m.get_msg_type() == MessageType::MsgSnapshot {
                                let _ = self.raft.send(Msg::SnapshotDone { to: self.to, ok: false });
                            }
                        }
                        continue;
                    }
                    let mut snapshots = 0;
                    let mut messages = Vec::with_capacity(batch.len());
                    for m in &batch {
                        if m.get_msg_type() == MessageType::MsgSnapshot {
                            snapshots += 1;
                        }
                        messages.push(encode(&mut scratch, m).map_err(|e| e.to_string())?);
                    }
                    if let Some(sent) = &self.sent {
                        sent.inc_by(messages.iter().map(|m| m.len() as u64).sum());
                    }
                    let out = RaftBatch { cluster_id: self.cluster_id, from: self.from, messages };
                    tokio::select! {
                        r = tx.send(out) => r.map_err(|_| "stream closed".to_string())?,
                        res = &mut call => {
                            return Err(match res {
                                Ok(_) => "peer closed the stream".to_string(),
                                Err(s) => s.message().to_string(),
                            });
                        }
                    }
                    for _ in 0..snapshots {
                        let _ = self.raft.send(Msg::SnapshotDone { to: self.to, ok: true });
                    }
                }
                _ = self.shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// How much buffer the sender's messages are encoded into at a time.
const SCRATCH_BLOCK: usize = 64 * 1024;

/// Encodes `m` into `scratch`, returning it as a slice of a block shared with
/// the messages before it: one allocation for many small messages.
fn encode(scratch: &mut BytesMut, m: &Message) -> protobuf::ProtobufResult<Bytes> {
    let size = m.compute_size() as usize;
    if scratch.capacity() < size {
        scratch.reserve(size.max(SCRATCH_BLOCK));
    }
    scratch.resize(size, 0);
    let mut os = protobuf::CodedOutputStream::bytes(&mut scratch[..]);
    m.write_to_with_cached_sizes(&mut os)?;
    os.check_eof();
    Ok(scratch.split().freeze())
}

/// Moves the data of `msg`'s entries out of the frame they arrived in, into
/// one block of their own.
///
/// Entries stay in the in-memory Raft log until it is compacted (up to
/// `--snapshot-count` of them), and a slice keeps its whole allocation
/// alive: left as slices of the frames, 100k entries held on to the frames'
/// headers, the heartbeats beside them and the decode buffers' spare room
/// (about 24 MiB more per member after 100k 256-byte puts). One copy per
/// message still replaces the copy per entry that parsing used to make.
fn own_entries(msg: &mut Message) {
    let total: usize = msg
        .get_entries()
        .iter()
        .map(|e| e.data.len() + e.context.len())
        .sum();
    if total == 0 {
        return;
    }
    let mut block = BytesMut::with_capacity(total);
    for e in msg.get_entries() {
        block.extend_from_slice(&e.data);
        block.extend_from_slice(&e.context);
    }
    let mut block = block.freeze();
    for e in msg.mut_entries().iter_mut() {
        e.data = block.split_to(e.data.len());
        e.context = block.split_to(e.context.len());
    }
}

/// The receiving side: the gRPC service on the peer URLs.
pub struct PeerService {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft: RaftHandle,
    pub faults: Arc<Faults>,
    pub membership: tokio::sync::watch::Receiver<Membership>,
    /// Ends the open streams when the member stops: peers keep their streams
    /// open for good, so a graceful server shutdown would otherwise wait for
    /// them until it gives up.
    pub shutdown: CancellationToken,
    /// Counts received bytes per sender (`etcd_network_peer_received_bytes_total`).
    pub received: Option<prometheus::IntCounterVec>,
}

#[tonic::async_trait]
impl RaftTransport for PeerService {
    async fn send(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        let mut stream = request.into_inner();
        // The sender's byte counter, looked up once per sender rather than
        // per batch (a stream comes from one peer).
        let mut counter: Option<(u64, prometheus::IntCounter)> = None;
        loop {
            let batch = tokio::select! {
                b = stream.message() => match b? {
                    Some(b) => b,
                    None => break,
                },
                _ = self.shutdown.cancelled() => {
                    return Err(Status::unavailable("member is stopping"));
                }
            };
            if batch.cluster_id != self.cluster_id {
                return Err(Status::failed_precondition(format!(
                    "cluster ID mismatch: this member belongs to cluster {:x}, the sender to {:x}",
                    self.cluster_id, batch.cluster_id
                )));
            }
            if self.faults.is_blocked(batch.from) {
                continue;
            }
            if let Some(received) = &self.received {
                let bytes = batch.messages.iter().map(|m| m.len() as u64).sum();
                match &counter {
                    Some((from, c)) if *from == batch.from => c.inc_by(bytes),
                    _ => {
                        let c = received.with_label_values(&[&format!("{:x}", batch.from)]);
                        c.inc_by(bytes);
                        counter = Some((batch.from, c));
                    }
                }
            }
            for bytes in batch.messages {
                // Zero-copy: the entries' data are slices of `bytes`, until
                // `own_entries` gives them a block of their own.
                let mut msg = Message::parse_from_carllerche_bytes(&bytes)
                    .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
                if msg.to != self.member_id {
                    continue;
                }
                own_entries(&mut msg);
                self.raft
                    .step(msg)
                    .map_err(|_| Status::unavailable("member is stopping"))?;
            }
        }
        Ok(Response::new(SendAck {}))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
        }))
    }

    async fn members(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<Membership>, Status> {
        Ok(Response::new(self.membership.borrow().clone()))
    }

    async fn progress(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProgressResponse>, Status> {
        let progress = self
            .raft
            .progress()
            .await
            .map_err(|_| Status::unavailable("member is stopping"))?;
        Ok(Response::new(match progress {
            Some(p) => ProgressResponse {
                is_leader: true,
                leader_id: p.leader_id,
                matched: p
                    .matched
                    .into_iter()
                    .map(|(id, index)| MemberMatch { id, index })
                    .collect(),
            },
            None => ProgressResponse::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::Entry;

    fn append(to: u64, entries: usize, data: &[u8]) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = to;
        m.set_entries(
            (0..entries)
                .map(|i| Entry {
                    index: i as u64 + 1,
                    data: Bytes::copy_from_slice(data),
                    ..Default::default()
                })
                .collect::<Vec<_>>()
                .into(),
        );
        m
    }

    #[test]
    fn messages_encoded_into_one_block_parse_back_with_entries_sliced_from_the_frame() {
        let mut scratch = BytesMut::new();
        let sent: Vec<Message> = (1..=3)
            .map(|to| append(to, to as usize, b"payload"))
            .collect();
        let frames: Vec<Bytes> = sent
            .iter()
            .map(|m| encode(&mut scratch, m).unwrap())
            .collect();
        // One block holds all three.
        let block = frames[0].as_ptr() as usize;
        assert!(frames.iter().all(|f| {
            let at = f.as_ptr() as usize;
            at >= block && at + f.len() <= block + SCRATCH_BLOCK
        }));
        for (m, frame) in sent.iter().zip(&frames) {
            assert_eq!(frame.len(), m.compute_size() as usize);
            let got = Message::parse_from_carllerche_bytes(frame).unwrap();
            assert_eq!(&got, m);
            let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
            for e in got.get_entries() {
                assert!(
                    range.contains(&(e.data.as_ptr() as usize)),
                    "entry data is a slice of the frame, not a copy"
                );
            }
        }
    }

    #[test]
    fn received_entries_get_one_block_of_their_own_and_keep_their_contents() {
        let mut scratch = BytesMut::new();
        let mut sent = append(2, 3, b"payload");
        sent.mut_entries()[1].context = Bytes::from_static(b"ctx");
        let frame = encode(&mut scratch, &sent).unwrap();
        let mut got = Message::parse_from_carllerche_bytes(&frame).unwrap();
        own_entries(&mut got);
        assert_eq!(got, sent);
        let frame_range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        let first = got.get_entries()[0].data.as_ptr() as usize;
        for e in got.get_entries() {
            for part in [&e.data, &e.context].into_iter().filter(|p| !p.is_empty()) {
                let at = part.as_ptr() as usize;
                assert!(!frame_range.contains(&at), "no longer a slice of the frame");
                assert!(at >= first && at < first + 3 * 7 + 3, "all in one block");
            }
        }
        let mut empty = append(2, 0, b"");
        own_entries(&mut empty);
        assert!(empty.get_entries().is_empty());
    }

    #[test]
    fn a_message_larger_than_a_block_gets_a_block_of_its_own() {
        let mut scratch = BytesMut::new();
        let first = encode(&mut scratch, &append(3, 1, b"x")).unwrap();
        let big = append(1, 2, &vec![7; SCRATCH_BLOCK]);
        let frame = encode(&mut scratch, &big).unwrap();
        assert!(frame.len() > SCRATCH_BLOCK);
        let block = first.as_ptr() as usize..first.as_ptr() as usize + SCRATCH_BLOCK;
        assert!(
            !block.contains(&(frame.as_ptr() as usize)),
            "not squeezed into the block of the message before"
        );
        assert_eq!(Message::parse_from_carllerche_bytes(&frame).unwrap(), big);
        let small = append(2, 1, b"x");
        let frame = encode(&mut scratch, &small).unwrap();
        assert_eq!(Message::parse_from_carllerche_bytes(&frame).unwrap(), small);
    }
}
