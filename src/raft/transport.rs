//! Peer transport: Raft messages between members on the peer URLs.
//!
//! For every other member, a member runs one sender task ([`Peers`]) that keeps
//! a Raft stream open to the peer's URL and writes batches of messages into it
//! in the order the Raft node produced them, each batch one frame (see
//! [`super::wire`]: a preamble, then length-delimited `RaftBatch`es, over TCP
//! or TLS). On its `--listen-peer-urls` a member sorts the connections
//! ([`serve_peer_connections`]): Raft streams go to its [`Inbox`], which steps
//! their messages into Raft; the rest is gRPC ([`PeerService`]: probes,
//! membership, progress).
//!
//! When a stream breaks (the peer closed it, refused it, or the kernel gave up
//! on it after [`PEER_TIMEOUT`] without acknowledgement or keepalive answer),
//! the sender reports the peer unreachable to Raft (and, if the stream had been
//! up, that it broke: a follower that loses its leader this way campaigns
//! sooner; see `node::leader_lost`), drops what is queued (Raft retransmits)
//! and reconnects with a short backoff.
//!
//! A sender takes every message queued for its peer at once (up to
//! `MAX_BATCH`), folds the appends that continue one another into one (see
//! [`super::merge`]: the follower steps and answers one, not one per Raft
//! cycle), and encodes them straight into the frame; a receiver parses
//! each as a slice of the frame, then copies its entries' data into one block
//! per message (entries outlive the frame in the Raft log): one allocation per
//! message where parsing used to make one per entry.
//!
//! A receiver refuses batches stamped with another cluster ID (and tells the
//! sender why), so two clusters with different tokens never mix even when their
//! ports are confused; and batches from a member removed from the cluster,
//! whose sender then knows it was removed ([`REMOVED`]) and stops its member,
//! as etcd's peers answer a removed member and it exits.
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

use bytes::BytesMut;
use futures::StreamExt;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::merge::merge_appends;
use super::node::{Msg, Outbox, RaftHandle};
use super::wire;
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
    /// Each sender's peer URL, which `add` may change under it.
    urls: Mutex<HashMap<u64, PeerUrl>>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
    active: Arc<ActiveSince>,
    /// The generation of the next sender.
    generations: std::sync::atomic::AtomicU64,
    metrics: Option<crate::metrics::Metrics>,
    /// How to dial `https://` peer URLs (the peer certificate and CA).
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// Set once this member learns it was removed from the cluster, from
    /// its own log ([`Peers::note_removed`]) or from a peer that refuses
    /// its stream for it.
    removed: Arc<tokio::sync::watch::Sender<bool>>,
}

/// A peer's URL, shared by its sender and [`Peers::add`].
type PeerUrl = Arc<Mutex<String>>;

/// How a receiver refuses the stream of a member removed from the cluster
/// (etcd's words), and how that member's sender recognises it.
pub const REMOVED: &str = "the member has been permanently removed from the cluster";

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
            urls: Mutex::new(HashMap::new()),
            shutdown,
            tasks: Mutex::new(Vec::new()),
            runtime: tokio::runtime::Handle::current(),
            active: Arc::new(ActiveSince::default()),
            generations: std::sync::atomic::AtomicU64::new(1),
            metrics,
            removed: Arc::new(tokio::sync::watch::channel(false).0),
        })
    }

    /// Resolves once this member knows it was removed from the cluster.
    pub async fn removed(&self) {
        let mut rx = self.removed.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// How this member dials peer URLs over TLS (its peer certificate and CA).
    pub fn tls(&self) -> Option<Arc<tokio_rustls::rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// Whether this member knows it was removed from the cluster.
    pub fn is_removed(&self) -> bool {
        *self.removed.borrow()
    }

    /// Records that this member was removed from the cluster (once, with
    /// etcd's log lines): it should stop, and its data dir is of no use.
    pub fn note_removed(&self) {
        note_removed(&self.removed, self.member_id);
    }

    /// Since when the stream to `peer` has been up; `None` while it is down
    /// (or for this member itself).
    pub fn active_since(&self, peer: u64) -> Option<Instant> {
        if self.faults.is_blocked(peer) {
            return None;
        }
        self.active.get(peer)
    }

    /// Starts the sender for `peer` at `url`; if it runs, gives it `url`
    /// for its next connection, as etcd's peers take an updated URL: a
    /// stream that is up stays up (the member may not listen there yet,
    /// `member update` coming before its restart).
    pub fn add(&self, peer: u64, url: String) {
        if peer == self.member_id {
            return;
        }
        // (`urls` and `queues` hold the same peers: added and removed together.)
        if let Some(current) = self.urls.lock().ok().and_then(|u| u.get(&peer).cloned()) {
            if let Ok(mut current) = current.lock() {
                *current = url;
            }
            return;
        }
        let url = Arc::new(Mutex::new(url));
        if let Ok(mut u) = self.urls.lock() {
            u.insert(peer, url.clone());
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
            warned_version: std::sync::atomic::AtomicBool::new(false),
            removed: self.removed.clone(),
            logged_active: std::sync::atomic::AtomicBool::new(false),
            warned_cluster: std::sync::atomic::AtomicBool::new(false),
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
        if let Ok(mut u) = self.urls.lock() {
            u.remove(&peer);
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

/// Sets `removed`, logging etcd's lines the first time.
fn note_removed(removed: &tokio::sync::watch::Sender<bool>, member_id: u64) {
    if removed.send_replace(true) {
        return;
    }
    tracing::warn!(member_id = %format!("{member_id:x}"), "{REMOVED}");
    tracing::info!("the data-dir used by this member must be removed.");
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
    /// Read at every connection: [`Peers::add`] may change it.
    url: PeerUrl,
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
    /// Set once the peer was found not to speak this version's Raft stream
    /// (warned once, not at every reconnect).
    warned_version: std::sync::atomic::AtomicBool,
    /// Set when the peer refuses the stream because this member was removed.
    removed: Arc<tokio::sync::watch::Sender<bool>>,
    /// Whether the peer was last logged active (etcd's `peer X became
    /// active` / `inactive` lines, logged on each change only).
    logged_active: std::sync::atomic::AtomicBool,
    /// Set once the peer was found in another cluster (logged once).
    warned_cluster: std::sync::atomic::AtomicBool,
}

const MAX_BATCH: usize = 512;

/// How often a sender measures the round trip to its peer (etcd's prober).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

impl Sender {
    /// The peer's URL as of now.
    fn url(&self) -> String {
        self.url.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// Probes the peer every [`PROBE_INTERVAL`] over gRPC and records the
    /// round trip (etcd's prober); never returns. Connects on its first
    /// probe, and again after a failed one.
    async fn probe_loop(&self) {
        let Some(rtt) = &self.rtt else {
            return std::future::pending().await;
        };
        let mut client = None;
        loop {
            if !self.faults.is_blocked(self.to) {
                self.probe_once(&mut client, rtt).await;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// One probe, connecting `client` first if it is not.
    async fn probe_once(
        &self,
        client: &mut Option<RaftTransportClient<tonic::transport::Channel>>,
        rtt: &prometheus::Histogram,
    ) {
        if client.is_none() {
            *client = crate::client::connect_with(&self.url(), PROBE_INTERVAL, self.tls.clone())
                .await
                .ok()
                .map(RaftTransportClient::new);
        }
        if let Some(c) = client {
            let start = std::time::Instant::now();
            match tokio::time::timeout(PROBE_INTERVAL, c.probe(ProbeRequest {})).await {
                Ok(Ok(_)) => rtt.observe(start.elapsed().as_secs_f64()),
                _ => *client = None,
            }
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
                Err(e) if e.ends_with(REMOVED) => {
                    // The cluster no longer knows this member: retrying is
                    // pointless, and the member should stop.
                    note_removed(&self.removed, self.from);
                    return;
                }
                Err(e) => {
                    self.log_failure(&e);
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
                    self.snapshots_done(1, false);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
    }

    /// Logs why a stream ended as etcd's peers do: a peer that was up
    /// `became inactive` (once, until it is up again), a peer of another
    /// cluster is an error (once); reconnects that fail again say nothing
    /// new, and go to the debug log.
    fn log_failure(&self, error: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let peer_id = format!("{:x}", self.to);
        if error.contains("cluster ID mismatch") {
            if !self.warned_cluster.swap(true, Relaxed) {
                tracing::error!(%peer_id, peer_url = %self.url(), %error, "request sent was ignored by the peer: it belongs to another cluster");
            }
        } else if self.logged_active.swap(false, Relaxed) {
            tracing::warn!(%peer_id, %error, "peer became inactive (message send to peer failed)");
        } else {
            tracing::debug!(%peer_id, %error, "peer stream broke");
        }
    }

    /// Tells Raft how `count` snapshots to the peer ended. Every snapshot
    /// must be reported, sent or not, or Raft waits for it forever and never
    /// replicates to this peer again.
    fn snapshots_done(&self, count: usize, ok: bool) {
        for _ in 0..count {
            let _ = self.raft.send(Msg::SnapshotDone { to: self.to, ok });
        }
    }

    /// Resolves when the receiver ends the stream, with why: the receiver
    /// writes only to refuse it.
    async fn closed<R: AsyncRead + Unpin>(&self, rd: R) -> String {
        let mut answers = FramedRead::new(rd, wire::FrameReader::new(wire::MAX_REFUSAL_FRAME));
        match answers.next().await {
            Some(Ok(reason)) => format!(
                "peer refused the stream: {}",
                String::from_utf8_lossy(&reason)
            ),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                let warned = self
                    .warned_version
                    .swap(true, std::sync::atomic::Ordering::Relaxed);
                if !warned {
                    tracing::warn!(
                        peer = %format!("{:x}", self.to),
                        url = %self.url(),
                        "the peer does not speak this version's Raft stream \
                         (an older localcluster, or not a member at all?); \
                         upgrade all members together"
                    );
                }
                format!("not a Raft stream: {e}")
            }
            Some(Err(e)) => e.to_string(),
            None => "peer closed the stream".to_string(),
        }
    }

    /// Runs one stream until it breaks (Err) or the sender is shut down (Ok).
    /// Sets `was_up` once the stream is open.
    async fn stream(
        &self,
        queue: &mut mpsc::UnboundedReceiver<Message>,
        was_up: &mut bool,
    ) -> Result<(), String> {
        let uri: tonic::transport::Uri = self.url().parse().map_err(|e| format!("{e}"))?;
        let conn = tokio::select! {
            c = tokio::time::timeout(CONNECT_TIMEOUT, crate::tls::connector::dial_uri(&uri, self.tls.clone())) => {
                c.map_err(|_| "connect timed out".to_string())?.map_err(|e| e.to_string())?
            }
            _ = self.shutdown.cancelled() => return Ok(()),
        };
        give_up_on_silence(crate::tls::connector::tcp_of(&conn));
        let (rd, mut wr) = tokio::io::split(conn);
        let closed = self.closed(rd);
        tokio::pin!(closed);
        let prober = self.probe_loop();
        tokio::pin!(prober);
        tokio::select! {
            r = wr.write_all(wire::PREAMBLE) => r.map_err(|e| e.to_string())?,
            reason = &mut closed => return Err(reason),
        }
        self.active.up(self.to, self.generation);
        *was_up = true;
        if !self
            .logged_active
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!(peer_id = %format!("{:x}", self.to), peer_url = %self.url(), "peer became active");
        }
        let mut frame = Vec::new();
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = &mut prober => {}
                reason = &mut closed => return Err(reason),
                m = queue.recv() => {
                    let Some(first) = m else { return Ok(()) };
                    batch.clear();
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    merge_appends(&mut batch);
                    let snapshots = snapshots_in(&batch);
                    if self.faults.is_blocked(self.to) {
                        // Dropped as by a partition.
                        self.snapshots_done(snapshots, false);
                        continue;
                    }
                    let written = async {
                        let sent = wire::encode_frame(&mut frame, self.cluster_id, self.from, &batch)
                            .map_err(|e| e.to_string())?;
                        if let Some(counter) = &self.sent {
                            counter.inc_by(sent);
                        }
                        // Flushed, so a TLS record never waits for the next batch.
                        tokio::select! {
                            r = async {
                                wr.write_all(&frame).await?;
                                wr.flush().await
                            } => r.map_err(|e| e.to_string()),
                            reason = &mut closed => Err(reason),
                        }
                    }
                    .await;
                    batch.clear();
                    if frame.capacity() > FRAME_KEEP {
                        // A snapshot went out: do not keep its buffer.
                        frame = Vec::new();
                    }
                    self.snapshots_done(snapshots, written.is_ok());
                    written?;
                }
                _ = self.shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// How many of `messages` are snapshots.
fn snapshots_in(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        .count()
}

/// Makes the kernel end a Raft stream whose peer vanished without closing
/// it (a cut network): written batches left unacknowledged for
/// [`PEER_TIMEOUT`] (Linux), or a quiet stream whose keepalive probes go
/// unanswered, as HTTP/2's keepalive pings did. Used on both ends.
pub fn give_up_on_silence(tcp: &tokio::net::TcpStream) {
    let sock = socket2::SockRef::from(tcp);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = sock.set_tcp_user_timeout(Some(PEER_TIMEOUT));
    let _ = sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(PEER_KEEPALIVE)
            .with_interval(PEER_KEEPALIVE),
    );
}

/// How long a sender waits for a peer to accept its connection (and, for
/// `https://`, to finish the TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a peer may leave written batches unacknowledged (TCP), and
/// how long a silent stream lasts once its keepalive probes go unanswered.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time before a keepalive probe, and between probes.
const PEER_KEEPALIVE: Duration = Duration::from_secs(2);
/// The largest frame buffer a sender keeps between batches.
const FRAME_KEEP: usize = 1 << 20;

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

/// The receiving side of the Raft streams ([`Inbox::serve_stream`], framed as
/// [`super::wire`] says).
pub struct Inbox {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft: RaftHandle,
    pub faults: Arc<Faults>,
    /// Ends the open streams when the member stops: peers keep their streams
    /// open for good, so a graceful server shutdown would otherwise wait for
    /// them until it gives up.
    pub shutdown: CancellationToken,
    /// Counts received bytes per sender (`etcd_network_peer_received_bytes_total`).
    pub received: Option<prometheus::IntCounterVec>,
    /// The applied membership: streams from removed members are refused.
    pub membership: tokio::sync::watch::Receiver<Membership>,
}

/// Why a receiver ends a stream.
#[derive(Debug)]
enum Refusal {
    /// The sender belongs to another cluster.
    OtherCluster(String),
    /// The sender was removed from the cluster.
    Removed,
    /// A batch or message does not decode.
    Garbled(String),
    /// The Raft node is gone.
    Stopping,
}

impl Refusal {
    fn reason(&self) -> &str {
        match self {
            Refusal::OtherCluster(r) | Refusal::Garbled(r) => r,
            Refusal::Removed => REMOVED,
            Refusal::Stopping => "member is stopping",
        }
    }
}

/// The sender's byte counter, looked up once per sender rather than per batch
/// (a stream comes from one peer).
type Counter = Option<(u64, prometheus::IntCounter)>;

impl Inbox {
    /// Steps the messages of one batch into Raft, unless the sender is
    /// blocked by a fault hook.
    fn deliver(&self, batch: RaftBatch, counter: &mut Counter) -> Result<(), Refusal> {
        if batch.cluster_id != self.cluster_id {
            return Err(Refusal::OtherCluster(format!(
                "cluster ID mismatch: this member belongs to cluster {:x}, the sender to {:x}",
                self.cluster_id, batch.cluster_id
            )));
        }
        if self.faults.is_blocked(batch.from) {
            return Ok(());
        }
        if self.membership.borrow().removed.contains(&batch.from) {
            tracing::warn!(
                remote_peer_id = %format!("{:x}", batch.from),
                "rejected stream from remote peer because it was removed"
            );
            return Err(Refusal::Removed);
        }
        if let Some(received) = &self.received {
            let bytes = batch.messages.iter().map(|m| m.len() as u64).sum();
            match counter {
                Some((from, c)) if *from == batch.from => c.inc_by(bytes),
                _ => {
                    let c = received.with_label_values(&[&format!("{:x}", batch.from)]);
                    c.inc_by(bytes);
                    *counter = Some((batch.from, c));
                }
            }
        }
        // A frame with a garbled message is refused whole: none of its
        // messages is stepped (Raft copes with lost messages; the sender is
        // told why).
        let mut messages = Vec::with_capacity(batch.messages.len());
        for bytes in batch.messages {
            // Zero-copy: the entries' data are slices of `bytes`, until
            // `own_entries` gives them a block of their own.
            let mut msg = Message::parse_from_carllerche_bytes(&bytes)
                .map_err(|e| Refusal::Garbled(format!("bad raft message: {e}")))?;
            if msg.to != self.member_id {
                continue;
            }
            own_entries(&mut msg);
            messages.push(msg);
        }
        if messages.is_empty() {
            return Ok(());
        }
        // The whole frame in one hand-over to the node's thread.
        self.raft.step(messages).map_err(|_| Refusal::Stopping)
    }

    /// Reads a Raft stream (its preamble already read) until it ends, the
    /// member stops, or the stream is refused: then the reason goes back to
    /// the sender in one frame.
    pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: S) {
        let (rd, wr) = tokio::io::split(conn);
        let mut frames = FramedRead::new(rd, wire::FrameReader::new(wire::MAX_BATCH_FRAME));
        let mut counter = None;
        let refusal = loop {
            let frame = tokio::select! {
                f = frames.next() => f,
                _ = self.shutdown.cancelled() => break Refusal::Stopping,
            };
            let frame = match frame {
                Some(Ok(frame)) => frame.freeze(),
                Some(Err(e)) => break Refusal::Garbled(format!("bad frame: {e}")),
                None => return,
            };
            let batch = match RaftBatch::decode(frame) {
                Ok(batch) => batch,
                Err(e) => break Refusal::Garbled(format!("bad raft batch: {e}")),
            };
            if let Err(refusal) = self.deliver(batch, &mut counter) {
                break refusal;
            }
        };
        match &refusal {
            Refusal::OtherCluster(reason) => {
                tracing::warn!(%reason, "rejected a raft stream: request cluster ID mismatch");
            }
            _ => tracing::debug!(reason = refusal.reason(), "refused a raft stream"),
        }
        let mut wr = wr;
        let answer = wire::frame_of(refusal.reason().as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            wr.write_all(&answer).await?;
            wr.shutdown().await
        })
        .await;
    }
}

/// Serves the peer listener's connections until `shutdown`: Raft streams
/// here (each on a task of its own, owned by this future), everything else
/// (HTTP/2 gRPC) to `grpc`, where tonic serves it.
pub async fn serve_peer_connections<S>(
    mut incoming: futures::stream::BoxStream<'static, std::io::Result<S>>,
    inbox: Arc<Inbox>,
    grpc: mpsc::Sender<std::io::Result<wire::Rewound<S>>>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            conn = incoming.next() => match conn {
                None => break,
                Some(Err(e)) => {
                    // Out of file descriptors, say: wait a little, keep serving.
                    tracing::warn!(error = %e, "cannot accept a peer connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(Ok(conn)) => {
                    let inbox = inbox.clone();
                    let grpc = grpc.clone();
                    conns.spawn(async move {
                        match tokio::time::timeout(wire::SORT_TIMEOUT, wire::sort(conn)).await {
                            Ok(Ok(wire::Sorted::Raft(conn))) => inbox.serve_stream(conn).await,
                            Ok(Ok(wire::Sorted::Other(conn))) => {
                                let _ = grpc.send(Ok(conn)).await;
                            }
                            Ok(Err(_)) | Err(_) => {}
                        }
                    });
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    conns.abort_all();
}

/// The gRPC service on the peer URLs: probes, membership and progress. `Send`,
/// the Raft stream of members older than [`super::wire`], is refused.
pub struct PeerService {
    pub inbox: Arc<Inbox>,
    pub membership: tokio::sync::watch::Receiver<Membership>,
}

#[tonic::async_trait]
impl RaftTransport for PeerService {
    async fn send(
        &self,
        _request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        Err(Status::unimplemented(
            "this member takes Raft batches on its own framed stream, not on gRPC: \
             upgrade all members together",
        ))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            cluster_id: self.inbox.cluster_id,
            member_id: self.inbox.member_id,
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
            .inbox
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
    use bytes::Bytes;
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

    /// One frame as a receiver reads it: the batch decoded from the frame's
    /// bytes.
    fn framed(messages: &[Message]) -> (Bytes, RaftBatch) {
        let mut frame = Vec::new();
        wire::encode_frame(&mut frame, 7, 1, messages).unwrap();
        let body = Bytes::from(frame).slice(8..);
        (body.clone(), RaftBatch::decode(body).unwrap())
    }

    #[test]
    fn received_messages_parse_back_with_entries_sliced_from_the_frame() {
        let sent: Vec<Message> = (1..=3)
            .map(|to| append(to, to as usize, b"payload"))
            .collect();
        let (frame, batch) = framed(&sent);
        let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        assert_eq!(batch.messages.len(), 3);
        for (m, bytes) in sent.iter().zip(&batch.messages) {
            assert!(
                range.contains(&(bytes.as_ptr() as usize)),
                "a slice of the frame"
            );
            let got = Message::parse_from_carllerche_bytes(bytes).unwrap();
            assert_eq!(&got, m);
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
        let mut sent = append(2, 3, b"payload");
        sent.mut_entries()[1].context = Bytes::from_static(b"ctx");
        let (frame, batch) = framed(std::slice::from_ref(&sent));
        let mut got = Message::parse_from_carllerche_bytes(&batch.messages[0]).unwrap();
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

    fn inbox(cluster_id: u64, member_id: u64) -> (Arc<Inbox>, std::sync::mpsc::Receiver<Msg>) {
        inbox_removing(cluster_id, member_id, &[])
    }

    /// An inbox of a member whose cluster removed `removed`.
    fn inbox_removing(
        cluster_id: u64,
        member_id: u64,
        removed: &[u64],
    ) -> (Arc<Inbox>, std::sync::mpsc::Receiver<Msg>) {
        let (raft, rx) = RaftHandle::detached();
        let membership = Membership {
            removed: removed.to_vec(),
            ..Default::default()
        };
        let inbox = Inbox {
            cluster_id,
            member_id,
            raft,
            faults: Arc::new(Faults::default()),
            shutdown: CancellationToken::new(),
            received: None,
            membership: tokio::sync::watch::channel(membership).1,
        };
        (Arc::new(inbox), rx)
    }

    #[tokio::test]
    async fn a_raft_stream_steps_the_messages_addressed_to_this_member_in_order() {
        let (inbox, steps) = inbox(7, 2);
        let (mut sender, receiver) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(async move { inbox.serve_stream(receiver).await });
        let mut frame = Vec::new();
        let first = vec![
            append(2, 1, b"a"),
            append(3, 1, b"not ours"),
            append(2, 2, b"b"),
        ];
        wire::encode_frame(&mut frame, 7, 1, &first).unwrap();
        sender.write_all(&frame).await.unwrap();
        wire::encode_frame(&mut frame, 7, 1, &[append(2, 3, b"c")]).unwrap();
        sender.write_all(&frame).await.unwrap();
        drop(sender);
        served.await.unwrap();
        let got: Vec<Message> = steps
            .try_iter()
            .flat_map(|m| match m {
                Msg::Step(m) => m,
                _ => panic!("only steps expected"),
            })
            .collect();
        assert_eq!(
            got,
            [append(2, 1, b"a"), append(2, 2, b"b"), append(2, 3, b"c")]
        );
    }

    #[tokio::test]
    async fn a_stream_from_another_cluster_is_refused_with_the_reason() {
        let (inbox, steps) = inbox(7, 2);
        let (sender, receiver) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(async move { inbox.serve_stream(receiver).await });
        let (rd, mut wr) = tokio::io::split(sender);
        let mut frame = Vec::new();
        wire::encode_frame(&mut frame, 8, 1, &[append(2, 1, b"a")]).unwrap();
        wr.write_all(&frame).await.unwrap();
        let reason = FramedRead::new(rd, wire::FrameReader::new(wire::MAX_REFUSAL_FRAME))
            .next()
            .await
            .expect("a refusal")
            .unwrap();
        let reason = String::from_utf8(reason.to_vec()).unwrap();
        assert!(reason.starts_with("cluster ID mismatch"), "{reason}");
        served.await.unwrap();
        assert!(steps.try_recv().is_err(), "nothing was stepped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_member_is_refused_by_its_peer_and_learns_it_was_removed() {
        // Member 1 was removed; member 2's inbox refuses its stream, and
        // member 1's sender, told why, marks its member removed.
        let (inbox, steps) = inbox_removing(7, 2, &[1]);
        let (listener, peers, _) = sender_to_a_listener().await;
        let served = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let conn = match wire::sort(conn).await.unwrap() {
                wire::Sorted::Raft(conn) => conn,
                wire::Sorted::Other(_) => panic!("not a raft stream"),
            };
            inbox.serve_stream(conn).await;
        });
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeatResponse);
        heartbeat.to = 2;
        PeersOutbox(peers.clone()).send(vec![heartbeat]);
        tokio::time::timeout(Duration::from_secs(10), peers.removed())
            .await
            .expect("the sender learns it was removed");
        served.await.unwrap();
        assert!(steps.try_recv().is_err(), "nothing was stepped");
        peers.abort();
    }

    /// A listener on a free loopback port, the URL to it, and this member's
    /// sender to peer 2 there.
    async fn sender_to_a_listener() -> (
        tokio::net::TcpListener,
        Arc<Peers>,
        std::sync::mpsc::Receiver<Msg>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (raft, steps) = RaftHandle::detached();
        let faults = Arc::new(Faults::default());
        let peers = Peers::new(7, 1, raft, faults, CancellationToken::new(), None, None);
        peers.add(2, url);
        (listener, peers, steps)
    }

    /// The first message to the node that `pick` takes, within 10 s; the
    /// others (the reconnects' reports, say) are skipped.
    async fn first_report<T: Send + 'static>(
        steps: std::sync::mpsc::Receiver<Msg>,
        pick: fn(Msg) -> Option<T>,
    ) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        tokio::task::spawn_blocking(move || loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match steps.recv_timeout(left) {
                Ok(m) => {
                    if let Some(t) = pick(m) {
                        return t;
                    }
                }
                Err(e) => panic!("no such report: {e}"),
            }
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_that_does_not_go_out_is_reported_failed() {
        use tokio::io::AsyncReadExt;
        let (listener, peers, steps) = sender_to_a_listener().await;
        // The peer takes the preamble, then refuses the stream without
        // reading the snapshot that is being written.
        let peer = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut preamble = [0u8; 8];
            conn.read_exact(&mut preamble).await.unwrap();
            assert_eq!(&preamble, wire::PREAMBLE);
            conn.write_all(&wire::frame_of(b"go away")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let mut snapshot = Message::default();
        snapshot.set_msg_type(MessageType::MsgSnapshot);
        snapshot.to = 2;
        // Larger than the socket buffers: its write cannot finish.
        snapshot.mut_snapshot().data = Bytes::from(vec![0u8; 64 << 20]);
        PeersOutbox(peers.clone()).send(vec![snapshot]);
        let done = first_report(steps, |m| match m {
            Msg::SnapshotDone { to, ok } => Some((to, ok)),
            _ => None,
        })
        .await;
        assert_eq!(done, (2, false));
        peers.abort();
        peer.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_answers_http2_is_reported_unreachable_without_a_huge_allocation() {
        use tokio::io::AsyncReadExt;
        let (listener, peers, steps) = sender_to_a_listener().await;
        // An older member: its HTTP/2 server writes its SETTINGS frame first,
        // whose bytes read as a length of terabytes.
        let peer = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.write_all(&[0, 0, 0x18, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100])
                .await
                .unwrap();
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest).await;
        });
        let reported = first_report(steps, |m| match m {
            Msg::Unreachable(to) => Some(to),
            _ => None,
        })
        .await;
        assert_eq!(reported, 2);
        peers.abort();
        peer.abort();
    }
}
