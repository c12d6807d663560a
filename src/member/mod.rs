//! One member: storage, Raft node, peer transport and client API, started and
//! stopped as a unit.
//!
//! [`Member::start`] does, in order:
//! 1. open the data dir: the Raft log (`member/raftlog/`, or under `--wal-dir`)
//!    and the MVCC store (`member/kv.redb`);
//! 2. establish identity: a new data dir is bootstrapped from `--initial-cluster`
//!    (member and cluster IDs derived as etcd derives them); an existing one keeps
//!    its stored identity and ignores the `--initial-*` flags, but is refused if it
//!    belongs to another member or cluster;
//! 3. bind the peer, client and `--listen-metrics-urls` listeners (so a taken
//!    port fails the start);
//! 4. start the Raft node thread and, on a tokio runtime owned by the member, the
//!    peer sender tasks, the peer, client and metrics servers, and the lifecycle tasks that
//!    publish the member to the cluster (logging etcd's milestones) and keep the
//!    peer senders in step with the membership.
//!
//! Files: [`bootstrap`] settles the identity, [`listen`] binds the listeners,
//! [`restore`] builds a data dir from a backup snapshot, [`discovery`] finds
//! a new cluster's members through etcd's v3 discovery,
//! [`tls`] resolves the TLS configs of the listeners and of peer dialling,
//! [`lifecycle`] holds the background duties (publish, cluster version,
//! membership following), [`heap`] hands freed memory back to the kernel when
//! the member goes quiet; this file wires them with the node and the API.
//!
//! Ownership: every task runs on the member's own runtime and the Raft node on its
//! own thread, so [`Member::kill`] ends all of them at once (sockets close, only
//! what is durable survives) and [`Member::stop`] ends them gracefully.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::prelude::ConfState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod bootstrap;
mod discovery;
mod heap;
mod lifecycle;
pub(crate) mod listen;
mod restore;
mod tls;

use bootstrap::{initial_membership, resolve_identity, Origin};
use lifecycle::{advance_ticks, decide_cluster_version, follow_membership, publish};
use listen::{bind_std, to_tokio};
pub use restore::restore_data_dir;
use tls::{peer_incoming, MemberTls};

use crate::api::{self, errors, Core, Limits};
use crate::apply::Applier;
use crate::config::MemberConfig;
use crate::disk::{DataFileError, FileState};
use crate::mvcc::{MvccError, Store};
use crate::pb::lcraftpb::raft_transport_server::RaftTransportServer;
use crate::raft::node::{self, Msg, Node, NodeConfig};
use crate::raft::transport::{
    serve_peer_connections, Faults, Inbox, PeerService, Peers, PeersOutbox,
};
use crate::raft::{RaftError, RaftHandle, RaftStorage};
use crate::wait::{IdGen, Waiters};

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    DataDir(String),
    #[error("cannot listen on {url}: {source}")]
    Bind { url: String, source: std::io::Error },
    #[error("{0}")]
    Raft(#[from] RaftError),
    #[error("{0}")]
    Mvcc(#[from] MvccError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    DataFile(#[from] DataFileError),
}

/// Listeners bound in advance (the embedded cluster binds port 0 and passes them).
#[derive(Debug, Default)]
pub struct Listeners {
    pub client: Vec<std::net::TcpListener>,
    pub peer: Vec<std::net::TcpListener>,
}

/// Extra knobs not expressed as etcd flags.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// Entries kept behind a log compaction for slow followers (etcd: 5000).
    pub catchup_entries: Option<u64>,
    /// Worker threads of the member's runtime (default 2).
    pub worker_threads: Option<usize>,
    /// How long a client request may wait for consensus before failing with
    /// `etcdserver: request timed out` (default, as etcd: 5 s + 2 × election timeout).
    pub request_timeout: Option<Duration>,
    /// Every member's data dir was made afresh for a new cluster (the
    /// embedded cluster does so): none can have published itself in a
    /// running cluster before, so a new member does not ask the others
    /// whether it did (see [`bootstrap`]), which would wait for peers whose
    /// listeners are bound but not served yet.
    pub fresh_cluster: bool,
    /// Raft traffic with these peers is dropped from the start, as by
    /// [`Member::block_peers`] (the embedded cluster's partitions): a peer's
    /// connection accepted before the member could be told would otherwise
    /// deliver what it had queued.
    pub blocked_peers: Vec<u64>,
}

/// A running member.
pub struct Member {
    name: String,
    id: u64,
    cluster_id: u64,
    client_urls: Vec<String>,
    peer_urls: Vec<String>,
    client_addrs: Vec<SocketAddr>,
    peer_addrs: Vec<SocketAddr>,
    data_dir: PathBuf,
    raft: RaftHandle,
    faults: Arc<Faults>,
    peers: Arc<Peers>,
    node: Option<Node>,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    ready: watch::Receiver<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    core: Arc<Core>,
    election_timeout: Duration,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("id", &format!("{:x}", self.id))
            .finish()
    }
}

impl Member {
    /// Starts a member, binding the listeners named in `cfg`.
    pub fn start(cfg: &MemberConfig) -> Result<Member, MemberError> {
        Self::start_with(cfg, Listeners::default(), Tuning::default())
    }

    /// Starts a member on pre-bound listeners (any list left empty is bound from `cfg`).
    pub fn start_with(
        cfg: &MemberConfig,
        listeners: Listeners,
        tuning: Tuning,
    ) -> Result<Member, MemberError> {
        let client_std = bind_std(&cfg.listen_client_urls, listeners.client)?;
        let metrics_std = bind_std(&cfg.listen_metrics_urls, Vec::new())?;
        let peer_reserved = listen::reserve(&cfg.listen_peer_urls, listeners.peer)?;
        let member_dir = cfg.data_dir.join("member");
        std::fs::create_dir_all(&member_dir).map_err(|e| {
            MemberError::DataDir(format!(
                "cannot create data dir {}: {e}",
                member_dir.display()
            ))
        })?;
        let wal_dir = cfg.wal_dir.clone().unwrap_or_else(|| member_dir.clone());
        std::fs::create_dir_all(&wal_dir).map_err(|e| {
            MemberError::DataDir(format!("cannot create wal dir {}: {e}", wal_dir.display()))
        })?;
        let raft_path = wal_dir.join(crate::raft::LOG_DIR);
        let kv_path = member_dir.join("kv.redb");

        let metrics =
            crate::metrics::Metrics::new(crate::apply::CLUSTER_VERSION, cfg.extensive_metrics)
                .map_err(|e| MemberError::Config(format!("cannot set up metrics: {e}")))?;
        if cfg.unsafe_no_fsync {
            tracing::warn!("--unsafe-no-fsync: the Raft log and the store are never fsync'ed; a machine crash may lose acknowledged writes");
        }
        let wal_options = crate::raft::WalOptions {
            no_fsync: cfg.unsafe_no_fsync,
            fsync_seconds: Some(metrics.wal_fsync.clone()),
        };
        crate::raft::legacy::migrate(&wal_dir, &raft_path, &wal_options)?;
        let files = DataFiles::probe(&raft_path, &kv_path)?;
        let mut storage = RaftStorage::open_with(&raft_path, wal_options)?;
        let store = Arc::new(Store::open_with(
            &kv_path,
            &crate::disk::DiskOptions {
                no_fsync: cfg.unsafe_no_fsync,
                fsync_seconds: None,
            },
            metrics.store_metrics(),
        )?);
        files.check_identity(storage.identity()?.is_some())?;
        let waiters = Arc::new(Waiters::default());

        let tls = MemberTls::resolve(cfg)?;
        // A new member bootstrapping by discovery learns --initial-cluster first.
        let discovered = if !cfg.discovery_endpoints.is_empty()
            && cfg.initial_cluster_state == crate::config::ClusterState::New
            && storage.identity()?.is_none()
        {
            Some(discovery::discover(cfg)?)
        } else {
            None
        };
        let cfg = discovered.as_ref().unwrap_or(cfg);
        let (identity, origin) = resolve_identity(
            cfg,
            &storage,
            tls.peer_client.clone(),
            !tuning.fresh_cluster,
        )?;
        // Who this member is is settled: its peers may reach it now.
        let peer_std = listen::listen(peer_reserved)?;
        metrics.set_member(identity.member_id, cfg.quota_backend_bytes);
        let auth = Arc::new(crate::auth::Auth::new(&cfg.auth));
        let (applier, membership_rx) = Applier::open(
            store.clone(),
            identity.member_id,
            waiters.clone(),
            auth.clone(),
        )?;
        let mut applier = applier.with_backend_batch(cfg.backend_batch);
        let mut join_peers: Vec<(u64, String)> = Vec::new();
        match origin {
            Origin::Joining(membership) => {
                // No configuration of our own; the leader's snapshot brings it.
                join_peers = membership
                    .members
                    .iter()
                    .filter_map(|m| m.peer_urls.first().map(|u| (m.id, u.clone())))
                    .collect();
                storage.bootstrap_joining(&identity.encode_to_vec())?;
                tracing::info!(
                    name = %cfg.name,
                    member_id = %format!("{:x}", identity.member_id),
                    cluster_id = %format!("{:x}", identity.cluster_id),
                    "joining a running cluster"
                );
            }
            Origin::New => {
                let membership = initial_membership(cfg, identity.cluster_id)?;
                let cs = ConfState::from((
                    membership.members.iter().map(|m| m.id).collect::<Vec<_>>(),
                    vec![],
                ));
                // Data first, then the identity record that marks the bootstrap complete.
                applier.bootstrap(membership, &cs)?;
                storage.bootstrap(&identity.encode_to_vec(), cs)?;
                tracing::info!(
                    name = %cfg.name,
                    member_id = %format!("{:x}", identity.member_id),
                    cluster_id = %format!("{:x}", identity.cluster_id),
                    "bootstrapped a new member of a new cluster"
                );
            }
            Origin::Stored => {
                files.check_replay(
                    crate::raft::StateMachine::applied_index(&applier),
                    storage.first(),
                )?;
                tracing::info!(
                    name = %cfg.name,
                    member_id = %format!("{:x}", identity.member_id),
                    cluster_id = %format!("{:x}", identity.cluster_id),
                    applied_index = crate::raft::StateMachine::applied_index(&applier),
                    "restarting member from its data dir"
                );
            }
        }
        storage.set_snapshot_source(applier.snapshot_source());
        let events = applier.events();
        let leases = applier.leases();
        let alarms = applier.alarms();

        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(tuning.worker_threads.unwrap_or(2))
            .thread_name(format!("member-{}", cfg.name))
            .enable_all();
        let runtime = OwnedRuntime(Some(builder.build()?));
        let _guard = runtime.enter();

        let client_listeners = to_tokio(client_std)?;
        let peer_listeners = to_tokio(peer_std)?;
        let metrics_listeners = to_tokio(metrics_std)?;
        let client_addrs: Vec<SocketAddr> = client_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let peer_addrs: Vec<SocketAddr> = peer_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();

        let shutdown = CancellationToken::new();
        let faults = Arc::new(Faults::default());
        if !tuning.blocked_peers.is_empty() {
            faults.block(tuning.blocked_peers.iter().copied());
        }
        let (raft, inbox) = node::channel(identity.member_id);
        let peers = Peers::new(
            identity.cluster_id,
            identity.member_id,
            raft.clone(),
            faults.clone(),
            shutdown.child_token(),
            Some(metrics.clone()),
            tls.peer_client.clone(),
        );
        for m in &membership_rx.borrow().members {
            if let Some(url) = m.peer_urls.first() {
                peers.add(m.id, url.clone());
            }
        }
        for (id, url) in join_peers {
            peers.add(id, url);
        }
        let tick = cfg.heartbeat_interval.max(Duration::from_millis(1));
        let election_ticks =
            (cfg.election_timeout.as_millis() / tick.as_millis().max(1)).max(2) as usize;
        let catchup = tuning
            .catchup_entries
            .unwrap_or(5000)
            .min(cfg.snapshot_count.max(1));
        let node_cfg = NodeConfig {
            id: identity.member_id,
            name: cfg.name.clone(),
            tick,
            election_ticks,
            snapshot_count: cfg.snapshot_count,
            catchup_entries: catchup,
            leader_changes: Some(metrics.leader_changes.clone()),
        };
        let node = Node::start(
            node_cfg,
            storage,
            Box::new(applier),
            Box::new(PeersOutbox(peers.clone())),
            (raft.clone(), inbox),
        )?;

        let request_timeout = tuning
            .request_timeout
            .unwrap_or_else(|| Duration::from_secs(5) + 2 * cfg.election_timeout);
        let core = Arc::new(Core {
            cluster_id: identity.cluster_id,
            member_id: identity.member_id,
            cluster_token: identity.cluster_token.clone(),
            raft: raft.clone(),
            store: store.clone(),
            waiters,
            ids: IdGen::new(identity.member_id),
            membership: membership_rx.clone(),
            limits: Limits {
                max_request_bytes: cfg.max_request_bytes,
                max_txn_ops: cfg.max_txn_ops,
                request_timeout,
                leader_wait: 3 * cfg.election_timeout,
                quota_bytes: cfg.quota_backend_bytes,
                min_lease_ttl: (cfg.election_timeout.as_millis() * 3 / 2).div_ceil(1000) as i64,
                watch_progress_interval: cfg.watch_progress_notify_interval,
                health_interval: 5 * cfg.election_timeout,
                strict_reconfig: cfg.strict_reconfig_check,
            },
            events,
            leases,
            alarms,
            peers: peers.clone(),
            metrics: metrics.clone(),
            auth,
            client_cert_auth: cfg.client_tls.client_cert_auth,
        });

        let mut servers = Vec::new();
        // Peer server.
        for (i, l) in peer_listeners.into_iter().enumerate() {
            let server_tls = tls.peer_server_for(cfg.listen_peer_urls.get(i));
            let allowed_cn = tls.peer_allowed_cn.clone();
            let inbox = Arc::new(Inbox {
                cluster_id: identity.cluster_id,
                member_id: identity.member_id,
                raft: raft.clone(),
                faults: faults.clone(),
                shutdown: shutdown.clone(),
                received: Some(metrics.peer_received.clone()),
                membership: membership_rx.clone(),
            });
            // Only small unary calls remain on gRPC: tonic's default limits.
            let svc = RaftTransportServer::new(PeerService {
                inbox: inbox.clone(),
                membership: membership_rx.clone(),
            });
            let token = shutdown.clone();
            let addr = local_addr(&l);
            servers.push(runtime.spawn(async move {
                // Raft streams are served beside tonic; the rest of the
                // connections (gRPC) go on to it.
                let incoming = peer_incoming(l, server_tls, allowed_cn);
                let (grpc_tx, grpc_rx) = tokio::sync::mpsc::channel(16);
                let sorter = serve_peer_connections(incoming, inbox, grpc_tx, token.clone());
                let server = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::ReceiverStream::new(grpc_rx),
                        token.cancelled_owned(),
                    );
                let (_, res) = tokio::join!(sorter, server);
                if let Err(e) = res {
                    tracing::error!(address = %addr, error = %e, "peer listener failed");
                }
            }));
        }
        // Client servers.
        let dispatch = api::server::dispatch(core.clone());
        for (i, l) in client_listeners.into_iter().enumerate() {
            let addr = local_addr(&l);
            let server_tls = tls.client_server_for(cfg.listen_client_urls.get(i));
            if server_tls.is_some() {
                tracing::info!(address = %addr, "serving client traffic securely");
            } else {
                tracing::info!(address = %addr, "serving client traffic insecurely; this is strongly discouraged!");
            }
            servers.push(runtime.spawn(api::server::serve(
                l,
                server_tls,
                dispatch.clone(),
                shutdown.clone(),
                cfg.max_concurrent_streams,
            )));
        }
        // --listen-metrics-urls: /metrics, /health, /livez and /readyz only.
        let metrics_port =
            api::dispatch::Dispatch::http_only(api::http::metrics_router(core.clone()));
        for l in metrics_listeners {
            let addr = local_addr(&l);
            tracing::info!(address = %addr, "serving metrics");
            servers.push(runtime.spawn(api::server::serve(
                l,
                None,
                metrics_port.clone(),
                shutdown.clone(),
                cfg.max_concurrent_streams,
            )));
        }

        // Lifecycle: publish, cluster version, peers in step with membership.
        let (ready_tx, ready_rx) = watch::channel(false);
        let advertise: Vec<String> = cfg
            .advertise_client_urls
            .iter()
            .map(|u| u.as_str().to_string())
            .collect();
        runtime.spawn(publish(
            core.clone(),
            cfg.name.clone(),
            advertise.clone(),
            ready_tx,
            shutdown.clone(),
        ));
        runtime.spawn(api::lease::expire_leases(core.clone(), shutdown.clone()));
        if let Some(policy) = cfg.auto_compaction {
            runtime.spawn(crate::compactor::run(
                core.clone(),
                policy,
                shutdown.clone(),
            ));
        }
        runtime.spawn(decide_cluster_version(
            core.clone(),
            cfg.election_timeout,
            shutdown.clone(),
        ));
        runtime.spawn(advance_ticks(
            core.clone(),
            peers.clone(),
            election_ticks,
            shutdown.clone(),
        ));
        runtime.spawn(heap::release_when_quiet(core.clone(), shutdown.clone()));
        runtime.spawn(follow_membership(
            peers.clone(),
            membership_rx,
            identity.member_id,
            shutdown.clone(),
        ));

        drop(_guard);
        Ok(Member {
            name: cfg.name.clone(),
            id: identity.member_id,
            cluster_id: identity.cluster_id,
            client_urls: advertise,
            peer_urls: cfg
                .initial_advertise_peer_urls
                .iter()
                .map(|u| u.as_str().to_string())
                .collect(),
            client_addrs,
            peer_addrs,
            data_dir: cfg.data_dir.clone(),
            raft,
            faults,
            peers,
            node: Some(node),
            runtime: runtime.into_inner(),
            shutdown,
            ready: ready_rx,
            servers,
            core,
            election_timeout: cfg.election_timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }
    /// The advertised client URLs.
    pub fn client_urls(&self) -> &[String] {
        &self.client_urls
    }
    /// The advertised peer URLs.
    pub fn peer_urls(&self) -> &[String] {
        &self.peer_urls
    }
    /// The addresses the client listeners are bound to.
    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }
    pub fn peer_addrs(&self) -> &[SocketAddr] {
        &self.peer_addrs
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// The Raft node's latest status (leader, term, indexes).
    pub fn status(&self) -> crate::raft::NodeStatus {
        self.raft.status()
    }
    /// A receiver of every status change.
    pub fn watch_status(&self) -> watch::Receiver<crate::raft::NodeStatus> {
        self.raft.watch_status()
    }

    /// Waits until the member has published itself and serves clients.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.clone();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Resolves when this member has been removed from the cluster (it should stop).
    pub async fn removed(&self) {
        self.peers.removed().await;
    }

    /// Whether the member has published itself.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Freezes the member: no ticks, no Raft processing, no client answers, as if
    /// the process got SIGSTOP. Messages queue up until [`Member::resume`].
    pub fn pause(&self) {
        let _ = self.raft.send(Msg::Pause);
    }

    /// Undoes [`Member::pause`].
    pub fn resume(&self) {
        let _ = self.raft.send(Msg::Resume);
    }

    /// Drops all Raft traffic with these peers (both ways).
    pub fn block_peers(&self, peers: impl IntoIterator<Item = u64>) {
        self.faults.block(peers);
    }

    /// Restores Raft traffic with every peer.
    pub fn heal(&self) {
        self.faults.heal();
    }

    /// Asks the node to hand leadership to `to`.
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.raft.send(Msg::TransferLeader(to));
    }

    /// The shared API core (for in-process tools).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Ends the member abruptly, as SIGKILL would: tasks, sockets and the
    /// Raft thread stop at once, connections are dropped without a GOAWAY, and
    /// nothing is flushed; only what was already durable survives (applied
    /// state not flushed yet is applied again from the Raft log at the next
    /// start). When this returns the member's listeners are closed and its
    /// data files released (unless the caller still holds a clone of
    /// [`Member::core`]), so the same ports and data dir can be used again at
    /// once. Dropping a `Member` does the same.
    pub fn kill(mut self) {
        self.end(Ending::Crash);
    }

    /// Ends the member's tasks and Raft thread (see [`Ending`]).
    fn end(&mut self, how: Ending) {
        if how == Ending::Graceful {
            self.shutdown.cancel();
        }
        self.peers.abort();
        for s in self.servers.drain(..) {
            s.abort();
        }
        if let Some(mut node) = self.node.take() {
            match how {
                Ending::Graceful => node.stop(),
                Ending::Crash => node.kill(),
            }
        }
        if let Some(rt) = self.runtime.take() {
            shutdown_runtime(rt);
        }
        // Whoever else watches the token (a crash's connections are gone
        // with the runtime already).
        self.shutdown.cancel();
    }

    /// Stops the member gracefully: a leader first hands leadership to a
    /// follower, then servers finish in-flight requests and the node stops.
    pub async fn stop(mut self) {
        self.transfer_leadership().await;
        self.shutdown.cancel();
        let deadline = Instant::now() + Duration::from_secs(2);
        for s in &self.servers {
            while !s.is_finished() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.end(Ending::Graceful);
    }

    /// A stopping leader's handover (etcd's `TransferLeadership`): leadership
    /// goes to the voter this member has been connected to longest, and the
    /// member waits until it is no longer leader, at most an election
    /// timeout. A removed member skips it. It fails at once when no other
    /// voter is connected, and is
    /// given up when the transferee goes away: when a whole cluster stops at
    /// once, no follower is left to take over, and the leader need not wait.
    /// Logged with etcd's messages.
    async fn transfer_leadership(&self) {
        let st = self.raft.status();
        let local_member_id = format!("{:x}", self.id);
        if !st.is_leader {
            tracing::info!(%local_member_id, "skipped leadership transfer; local server is not leader");
            return;
        }
        if self.peers.is_removed() {
            // As etcd's: a removed member stops at once, with no one to hand
            // over to (its successor is elected without it).
            tracing::info!(%local_member_id, "skipped leadership transfer; local server was removed from the cluster");
            return;
        }
        if st.voters.len() < 2 {
            tracing::info!(%local_member_id, "skipped leadership transfer for single voting member cluster");
            return;
        }
        let active = |v: u64| self.peers.active_since(v);
        let Some(to) = longest_connected(&st.voters, self.id, active) else {
            tracing::warn!(%local_member_id, error = errors::UNHEALTHY, "leadership transfer failed");
            return;
        };
        let transferee_member_id = format!("{to:x}");
        tracing::info!(
            %local_member_id,
            %transferee_member_id,
            "leadership transfer starting"
        );
        let _ = self.raft.send(Msg::TransferLeader(to));
        let mut status = self.raft.watch_status();
        let handed_over =
            tokio::time::timeout(self.election_timeout, status.wait_for(|s| !s.is_leader));
        let transferee_gone = async {
            while active(to).is_some() {
                tokio::time::sleep(TRANSFEREE_POLL).await;
            }
        };
        let error = tokio::select! {
            done = handed_over => match done {
                Ok(Ok(_)) => None,
                Ok(Err(_)) => Some(errors::STOPPED),
                Err(_) => Some(errors::TIMEOUT_LEADER_TRANSFER),
            },
            () = transferee_gone => Some(TRANSFEREE_GONE),
        };
        match error {
            None => tracing::info!(
                %local_member_id,
                %transferee_member_id,
                "leadership transfer finished"
            ),
            Some(error) => tracing::warn!(
                %local_member_id,
                %transferee_member_id,
                error,
                "leadership transfer failed"
            ),
        }
    }
}

/// How a member's tasks end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Connections are told to go away (GOAWAY) and applied state is
    /// flushed: the end of [`Member::stop`].
    Graceful,
    /// Everything stops where it is, as on SIGKILL: [`Member::kill`].
    Crash,
}

/// Why a handover failed when its transferee went away (etcd has no such
/// case: it waits out its request timeout).
const TRANSFEREE_GONE: &str = "the transferee went away";

/// How often a stopping leader checks that its transferee is still there.
const TRANSFEREE_POLL: Duration = Duration::from_millis(10);

/// Of `voters` other than `me`, the one whose stream has been up the longest
/// according to `active_since` (etcd's `longestConnected`); `None` if no
/// other voter is connected.
fn longest_connected(
    voters: &[u64],
    me: u64,
    active_since: impl Fn(u64) -> Option<Instant>,
) -> Option<u64> {
    voters
        .iter()
        .filter(|&&v| v != me)
        .filter_map(|&v| active_since(v).map(|since| (since, v)))
        .min()
        .map(|(_, v)| v)
}

impl Drop for Member {
    fn drop(&mut self) {
        self.end(Ending::Crash);
    }
}

/// The member's two data files as found at start, and the checks that they
/// still belong together (each file's own integrity is checked by
/// [`crate::disk::open`]). The Raft log is created first and holds the
/// identity record; the store is created next. So a store without a log,
/// or an initialized log without a store, means a file was lost or
/// truncated to nothing, and a store behind the start of the log cannot be
/// brought up to date by replaying it.
struct DataFiles<'p> {
    raft: (&'p Path, FileState),
    kv: (&'p Path, FileState),
}

impl<'p> DataFiles<'p> {
    /// Looks at both files before they are opened (which creates them).
    fn probe(raft: &'p Path, kv: &'p Path) -> Result<Self, DataFileError> {
        let files = DataFiles {
            raft: (raft, crate::raft::wal::Wal::probe(raft)?),
            kv: (kv, crate::disk::probe(kv)?),
        };
        if files.kv.1 == FileState::Present && files.raft.1 != FileState::Present {
            return Err(DataFileError::corrupt(
                raft,
                format!("{} but {} holds data", describe(files.raft.1), kv.display()),
            ));
        }
        Ok(files)
    }

    /// After the log is open: an initialized member must have had a store.
    fn check_identity(&self, initialized: bool) -> Result<(), DataFileError> {
        if initialized && self.kv.1 != FileState::Present {
            return Err(DataFileError::corrupt(
                self.kv.0,
                format!(
                    "{} but the raft log {} says this member was initialized",
                    describe(self.kv.1),
                    self.raft.0.display()
                ),
            ));
        }
        Ok(())
    }

    /// On restart: the log must hold every entry after the store's applied
    /// index (or a later snapshot, which `reconcile_log` records).
    fn check_replay(&self, applied: u64, log_first: u64) -> Result<(), DataFileError> {
        if applied + 1 < log_first {
            return Err(DataFileError::corrupt(
                self.kv.0,
                format!(
                    "it is at applied index {applied} but the raft log {} starts at index \
                     {log_first}: the entries in between are gone",
                    self.raft.0.display()
                ),
            ));
        }
        Ok(())
    }
}

/// A listener's address for the log (`127.0.0.1:2379`), or `?`.
fn local_addr(listener: &tokio::net::TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string())
}

fn describe(state: FileState) -> &'static str {
    match state {
        FileState::Missing => "missing",
        FileState::Empty => "empty (0 bytes)",
        FileState::Present => "present",
    }
}

/// How long a killed member's runtime gets to drop its tasks.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Shuts a member's runtime down and waits until its tasks are dropped, so that
/// its sockets are closed and its files released when this returns (a restart
/// can bind the same ports and open the same files at once).
///
/// Tokio refuses to block on a runtime's shutdown from async code, so inside a
/// runtime the waiting is done on a helper thread that this thread joins.
fn shutdown_runtime(rt: tokio::runtime::Runtime) {
    if tokio::runtime::Handle::try_current().is_err() {
        rt.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel::<tokio::runtime::Runtime>();
    let helper = std::thread::Builder::new()
        .name("member-shutdown".into())
        .spawn(move || {
            if let Ok(rt) = rx.recv() {
                rt.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
            }
        });
    match helper {
        Ok(helper) => {
            if let Err(std::sync::mpsc::SendError(rt)) = tx.send(rt) {
                rt.shutdown_background();
            }
            let _ = helper.join();
        }
        Err(_) => rt.shutdown_background(),
    }
}

/// The member's runtime while `start_with` builds the member: if a later step
/// fails, the runtime is shut down without blocking, since `start_with` may be
/// called from async code, where dropping a runtime panics.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    fn into_inner(mut self) -> Option<tokio::runtime::Runtime> {
        self.0.take()
    }
}

impl std::ops::Deref for OwnedRuntime {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &Self::Target {
        // Only `into_inner` (which consumes `self`) empties the option.
        self.0.as_ref().expect("runtime present until into_inner")
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files<'p>(raft: (&'p Path, FileState), kv: (&'p Path, FileState)) -> DataFiles<'p> {
        DataFiles { raft, kv }
    }

    #[test]
    fn leadership_goes_to_the_voter_connected_longest_and_never_to_a_disconnected_one() {
        let t0 = Instant::now();
        let since = |v: u64| match v {
            2 => Some(t0 + Duration::from_secs(5)),
            3 => Some(t0),
            _ => None,
        };
        assert_eq!(longest_connected(&[1, 2, 3, 4], 1, since), Some(3));
        assert_eq!(longest_connected(&[1, 2, 4], 1, since), Some(2));
        assert_eq!(
            longest_connected(&[3, 4], 3, since),
            None,
            "only itself is up"
        );
        assert_eq!(longest_connected(&[1, 4], 1, since), None);
    }

    #[test]
    fn a_store_without_its_raft_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raft = dir.path().join(crate::raft::LOG_DIR);
        let segment = raft.join("0000000000000001.wal");
        let kv = dir.path().join("kv.redb");
        {
            crate::disk::open(&kv, &Default::default()).unwrap();
        }
        std::fs::create_dir_all(&raft).unwrap();
        std::fs::File::create(&segment).unwrap();
        let err = DataFiles::probe(&raft, &kv).err().unwrap();
        assert!(err.is_corrupt());
        assert!(
            err.to_string()
                .contains("raftlog is corrupt: empty (0 bytes)"),
            "{err}"
        );
        std::fs::remove_dir_all(&raft).unwrap();
        let err = DataFiles::probe(&raft, &kv).err().unwrap();
        assert!(
            err.to_string().contains("raftlog is corrupt: missing"),
            "{err}"
        );
    }

    #[test]
    fn a_new_member_has_no_files_or_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let raft = dir.path().join(crate::raft::LOG_DIR);
        let segment = raft.join("0000000000000001.wal");
        let kv = dir.path().join("kv.redb");
        let f = DataFiles::probe(&raft, &kv).unwrap();
        f.check_identity(false).unwrap();
        std::fs::create_dir_all(&raft).unwrap();
        std::fs::File::create(&segment).unwrap();
        let f = DataFiles::probe(&raft, &kv).unwrap();
        f.check_identity(false).unwrap();
    }

    #[test]
    fn an_initialized_member_without_its_store_is_refused() {
        let raft = Path::new("/d/raftlog");
        let kv = Path::new("/d/kv.redb");
        for state in [FileState::Missing, FileState::Empty] {
            let err = files((raft, FileState::Present), (kv, state))
                .check_identity(true)
                .unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("data file /d/kv.redb is corrupt"),
                "{err}"
            );
        }
        files((raft, FileState::Present), (kv, FileState::Present))
            .check_identity(true)
            .unwrap();
    }

    #[test]
    fn a_store_behind_the_start_of_the_log_is_refused() {
        let f = files(
            (Path::new("/d/raftlog"), FileState::Present),
            (Path::new("/d/kv.redb"), FileState::Present),
        );
        f.check_replay(0, 1).unwrap();
        f.check_replay(9, 10).unwrap();
        f.check_replay(20, 10).unwrap();
        let err = f.check_replay(8, 10).unwrap_err();
        assert!(err.to_string().contains("at applied index 8"), "{err}");
        assert!(err.to_string().contains("starts at index 10"), "{err}");
    }
}
