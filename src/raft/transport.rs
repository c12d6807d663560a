//! Peer transport: Raft messages between members over gRPC on the peer URLs.
//!
//! Each member runs the `lcraftpb.RaftTransport` service on its `--listen-peer-urls`
//! ([`PeerService`]) and, for every other member, one sender task ([`Peers`]) that
//! keeps a client-streaming `Send` call open and pushes batches of messages into it
//! in the order the Raft node produced them. When the stream breaks, the task
//! reports the peer unreachable to Raft, drops what is queued (Raft retransmits)
//! and reconnects with a short backoff.
//!
//! A receiver refuses batches stamped with another cluster ID, so two clusters
//! with different tokens never mix even when their ports are confused.
//!
//! [`Faults`] implements the embedded cluster's `partition`/`heal` hooks: messages
//! to or from a blocked peer are silently dropped on both sides, as a network
//! partition would, while client traffic is unaffected.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::node::{Msg, Outbox, RaftHandle};
use crate::pb::lcraftpb::raft_transport_client::RaftTransportClient;
use crate::pb::lcraftpb::raft_transport_server::RaftTransport;
use crate::pb::lcraftpb::{Membership, ProbeRequest, ProbeResponse, RaftBatch, SendAck};

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
    /// How to dial `https://` peer URLs (the peer certificate and CA).
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl Peers {
    pub fn new(
        cluster_id: u64,
        member_id: u64,
        raft: RaftHandle,
        faults: Arc<Faults>,
        shutdown: CancellationToken,
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
        })
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
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

const MAX_BATCH: usize = 512;

impl Sender {
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Message>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            match self.stream(&mut queue).await {
                Ok(()) => return, // queue closed or shutdown
                Err(e) => {
                    tracing::debug!(peer = %format!("{:x}", self.to), error = %e, "peer stream broke");
                    let _ = self.raft.send(Msg::Unreachable(self.to));
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
    async fn stream(&self, queue: &mut mpsc::UnboundedReceiver<Message>) -> Result<(), String> {
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
        let call = client.send(ReceiverStream::new(rx));
        tokio::pin!(call);
        loop {
            tokio::select! {
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
                        messages.push(m.write_to_bytes().map_err(|e| e.to_string())?);
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
}

#[tonic::async_trait]
impl RaftTransport for PeerService {
    async fn send(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        let mut stream = request.into_inner();
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
            for bytes in batch.messages {
                let msg = Message::parse_from_bytes(&bytes)
                    .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
                if msg.to != self.member_id {
                    continue;
                }
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
}
