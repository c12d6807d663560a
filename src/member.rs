//! One member: storage, Raft node, peer transport and client API, started and
//! stopped as a unit.
//!
//! [`Member::start`] does, in order:
//! 1. open the data dir: the Raft log (`member/raft.redb`, or under `--wal-dir`)
//!    and the MVCC store (`member/kv.redb`);
//! 2. establish identity: a new data dir is bootstrapped from `--initial-cluster`
//!    (member and cluster IDs derived as etcd derives them); an existing one keeps
//!    its stored identity and ignores the `--initial-*` flags, but is refused if it
//!    belongs to another member or cluster;
//! 3. bind the peer and client listeners (so a taken port fails the start);
//! 4. start the Raft node thread and, on a tokio runtime owned by the member, the
//!    peer sender tasks, the peer and client servers, and the lifecycle tasks that
//!    publish the member to the cluster (logging etcd's milestones) and keep the
//!    peer senders in step with the membership.
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
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Core, Limits};
use crate::apply::{Applier, CLUSTER_VERSION};
use crate::config::{ClusterState, MemberConfig};
use crate::identity;
use crate::mvcc::{MvccError, Store};
use crate::pb::lcraftpb::raft_transport_server::RaftTransportServer;
use crate::pb::lcraftpb::{
    request::Op, ClusterVersionRequest, Identity, MemberInfo, Membership, PublishRequest,
};
use crate::raft::node::{self, Msg, Node, NodeConfig};
use crate::raft::transport::{Faults, PeerService, Peers, PeersOutbox};
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
        let raft_path = wal_dir.join("raft.redb");
        let kv_path = member_dir.join("kv.redb");

        let mut storage = RaftStorage::open(&raft_path)?;
        let store = Arc::new(Store::open(&kv_path)?);
        let waiters = Arc::new(Waiters::default());

        let identity = resolve_identity(cfg, &storage)?;
        let (mut applier, membership_rx) =
            Applier::open(store.clone(), identity.member_id, waiters.clone())?;
        if storage.identity()?.is_none() {
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
        } else {
            tracing::info!(
                name = %cfg.name,
                member_id = %format!("{:x}", identity.member_id),
                cluster_id = %format!("{:x}", identity.cluster_id),
                applied_index = storage_applied(&applier),
                "restarting member from its data dir"
            );
        }
        storage.set_snapshot_source(applier.snapshot_source());
        let events = applier.events();
        let leases = applier.leases();

        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(tuning.worker_threads.unwrap_or(2))
            .thread_name(format!("member-{}", cfg.name))
            .enable_all();
        // Until the member is built, a failed start must not drop the runtime in
        // place: that blocks, and panics when called from async code.
        let built = builder.build()?;
        let rt = built.handle().clone();
        let mut runtime = BackgroundShutdown(Some(built));
        let _guard = rt.enter();

        let client_listeners = bind_all(
            &cfg.listen_client_urls
                .iter()
                .map(|u| u.as_str().to_string())
                .collect::<Vec<_>>(),
            listeners.client,
            |u| {
                cfg.listen_client_urls
                    .iter()
                    .find(|x| x.as_str() == u)
                    .and_then(|x| x.bind_addr().ok())
            },
        )?;
        let peer_listeners = bind_all(
            &cfg.listen_peer_urls
                .iter()
                .map(|u| u.as_str().to_string())
                .collect::<Vec<_>>(),
            listeners.peer,
            |u| {
                cfg.listen_peer_urls
                    .iter()
                    .find(|x| x.as_str() == u)
                    .and_then(|x| x.bind_addr().ok())
            },
        )?;
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
        let (raft, inbox) = node::channel(identity.member_id);
        let peers = Peers::new(
            identity.cluster_id,
            identity.member_id,
            raft.clone(),
            faults.clone(),
            shutdown.child_token(),
        );
        for m in &membership_rx.borrow().members {
            if let Some(url) = m.peer_urls.first() {
                peers.add(m.id, url.clone());
            }
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
        };
        let node = Node::start(
            node_cfg,
            storage,
            Box::new(applier),
            Box::new(PeersOutbox(peers.clone())),
            (raft.clone(), inbox),
        )?;

        let request_timeout = Duration::from_secs(5) + 2 * cfg.election_timeout;
        let core = Arc::new(Core {
            cluster_id: identity.cluster_id,
            member_id: identity.member_id,
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
                min_lease_ttl: (cfg.election_timeout.as_millis() * 3 / 2).div_ceil(1000) as i64,
            },
            events,
            leases,
            db_files: vec![kv_path.clone(), raft_path.clone()],
        });

        let mut servers = Vec::new();
        // Peer server.
        for l in peer_listeners {
            let svc = RaftTransportServer::new(PeerService {
                cluster_id: identity.cluster_id,
                member_id: identity.member_id,
                raft: raft.clone(),
                faults: faults.clone(),
            })
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
            let token = shutdown.clone();
            let addr = l.local_addr().ok();
            servers.push(rt.spawn(async move {
                let incoming = TcpListenerStream::new(l);
                let res = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                    .await;
                if let Err(e) = res {
                    tracing::error!(?addr, error = %e, "peer listener failed");
                }
            }));
        }
        // Client servers.
        let router = api::server::router(core.clone());
        for l in client_listeners {
            let addr = l.local_addr().ok();
            tracing::info!(address = ?addr, "serving client traffic insecurely; this is strongly discouraged!");
            servers.push(rt.spawn(api::server::serve(l, router.clone(), shutdown.clone())));
        }

        // Lifecycle: publish, cluster version, peers in step with membership.
        let (ready_tx, ready_rx) = watch::channel(false);
        let advertise: Vec<String> = cfg
            .advertise_client_urls
            .iter()
            .map(|u| u.as_str().to_string())
            .collect();
        rt.spawn(publish(
            core.clone(),
            cfg.name.clone(),
            advertise.clone(),
            ready_tx,
            shutdown.clone(),
        ));
        rt.spawn(api::lease::expire_leases(core.clone(), shutdown.clone()));
        rt.spawn(decide_cluster_version(
            core.clone(),
            cfg.election_timeout,
            shutdown.clone(),
        ));
        rt.spawn(follow_membership(
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
            runtime: runtime.0.take(),
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

    /// Ends the member abruptly: tasks, sockets and the Raft thread stop at once.
    /// Only what was already durable survives, as after SIGKILL.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        self.shutdown.cancel();
        self.peers.abort();
        for s in self.servers.drain(..) {
            s.abort();
        }
        if let Some(mut node) = self.node.take() {
            node.stop();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Stops the member gracefully: a leader first hands leadership to a
    /// follower, then servers finish in-flight requests and the node stops.
    pub async fn stop(mut self) {
        let st = self.raft.status();
        if st.is_leader && st.voters.len() > 1 {
            if let Some(&to) = st.voters.iter().find(|&&v| v != self.id) {
                let _ = self.raft.send(Msg::TransferLeader(to));
                let mut rx = self.raft.watch_status();
                let _ = tokio::time::timeout(self.election_timeout, rx.wait_for(|s| !s.is_leader))
                    .await;
            }
        }
        self.shutdown.cancel();
        let deadline = Instant::now() + Duration::from_secs(2);
        for s in &self.servers {
            while !s.is_finished() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.kill_now();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill_now();
    }
}

fn storage_applied(applier: &Applier) -> u64 {
    use crate::raft::StateMachine;
    applier.applied_index()
}

/// Works out who this data dir belongs to: the stored identity, or a new one
/// derived from the flags.
fn resolve_identity(cfg: &MemberConfig, storage: &RaftStorage) -> Result<Identity, MemberError> {
    let derived = derive_identity(cfg);
    if let Some(bytes) = storage.identity()? {
        let stored = Identity::decode(bytes.as_slice()).map_err(|e| {
            MemberError::DataDir(format!(
                "corrupt identity record in {}: {e}",
                cfg.data_dir.display()
            ))
        })?;
        if stored.name != cfg.name {
            return Err(MemberError::DataDir(format!(
                "data dir {} belongs to member {:?} ({:x}), not {:?}",
                cfg.data_dir.display(),
                stored.name,
                stored.member_id,
                cfg.name
            )));
        }
        if stored.cluster_token != cfg.initial_cluster_token {
            if let Ok(d) = &derived {
                if d.cluster_id != stored.cluster_id {
                    return Err(MemberError::DataDir(format!(
                        "data dir {} belongs to cluster {:x} (token {:?}), but --initial-cluster-token is {:?}",
                        cfg.data_dir.display(),
                        stored.cluster_id,
                        stored.cluster_token,
                        cfg.initial_cluster_token
                    )));
                }
            }
        }
        return Ok(stored);
    }
    cfg.validate_bootstrap()
        .map_err(|e| MemberError::Config(e.to_string()))?;
    if cfg.initial_cluster_state == ClusterState::Existing {
        return Err(MemberError::Config(
            "joining a running cluster (--initial-cluster-state existing) with an empty data dir is not supported yet; start all members with --initial-cluster-state new".into(),
        ));
    }
    derived
}

fn derive_identity(cfg: &MemberConfig) -> Result<Identity, MemberError> {
    let ids: Vec<(String, u64)> = cfg
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            let urls: Vec<String> = urls.iter().map(|u| u.as_str().to_string()).collect();
            (
                name.clone(),
                identity::member_id(&urls, &cfg.initial_cluster_token, None),
            )
        })
        .collect();
    let mut member_ids: Vec<u64> = ids.iter().map(|(_, id)| *id).collect();
    member_ids.sort_unstable();
    member_ids.dedup();
    let cluster_id = identity::cluster_id(&member_ids);
    let member_id = ids
        .iter()
        .find(|(n, _)| n == &cfg.name)
        .map(|(_, id)| *id)
        .ok_or_else(|| {
            MemberError::Config(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                cfg.name
            ))
        })?;
    Ok(Identity {
        cluster_id,
        member_id,
        name: cfg.name.clone(),
        cluster_token: cfg.initial_cluster_token.clone(),
    })
}

fn initial_membership(cfg: &MemberConfig, cluster_id: u64) -> Result<Membership, MemberError> {
    let mut membership = Membership {
        cluster_id,
        ..Default::default()
    };
    for (name, urls) in &cfg.initial_cluster {
        let urls: Vec<String> = urls.iter().map(|u| u.as_str().to_string()).collect();
        let id = identity::member_id(&urls, &cfg.initial_cluster_token, None);
        membership.upsert(MemberInfo {
            id,
            name: name.clone(),
            peer_urls: urls,
            client_urls: vec![],
            is_learner: false,
        });
    }
    // etcd leaves a member's name empty until it publishes; we record the
    // configured names so `member list` reads well from the start.
    Ok(membership)
}

/// Owns a runtime and shuts it down in the background when dropped (see
/// [`Member::start_with`]).
struct BackgroundShutdown(Option<tokio::runtime::Runtime>);

impl Drop for BackgroundShutdown {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn bind_all(
    urls: &[String],
    given: Vec<std::net::TcpListener>,
    addr_of: impl Fn(&str) -> Option<SocketAddr>,
) -> Result<Vec<tokio::net::TcpListener>, MemberError> {
    let std_listeners = if given.is_empty() {
        let mut out = Vec::new();
        for u in urls {
            let addr = addr_of(u)
                .ok_or_else(|| MemberError::Config(format!("cannot resolve listen URL {u}")))?;
            let l = std::net::TcpListener::bind(addr).map_err(|e| MemberError::Bind {
                url: u.clone(),
                source: e,
            })?;
            out.push(l);
        }
        out
    } else {
        given
    };
    std_listeners
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l).map_err(MemberError::from)
        })
        .collect()
}

/// Publishes this member's name and client URLs through Raft once a leader is
/// known, retrying until it is applied; then the member is ready.
async fn publish(
    core: Arc<Core>,
    name: String,
    client_urls: Vec<String>,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut status = core.raft.watch_status();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = status.wait_for(|s| s.leader_id != 0) => {}
            _ = shutdown.cancelled() => return,
        }
        let already = core
            .membership
            .borrow()
            .member(core.member_id)
            .map(|m| m.client_urls == client_urls && m.name == name)
            .unwrap_or(false);
        let result = if already {
            Ok(())
        } else {
            let op = Op::Publish(PublishRequest {
                member_id: core.member_id,
                name: name.clone(),
                client_urls: client_urls.clone(),
            });
            core.propose(op).await.map(|_| ())
        };
        match result {
            Ok(()) => {
                let _ = ready.send(true);
                tracing::info!(name = %name, client_urls = ?client_urls, "ready to serve client requests");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e.message(), "publish failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// On the leader: sets the cluster version once every member published (or
/// after a while with some members down), as etcd's leader does.
async fn decide_cluster_version(
    core: Arc<Core>,
    election_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut leader_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.cancelled() => return,
        }
        let st = core.raft.status();
        if !st.is_leader {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        let (done, all) = {
            let m = core.membership.borrow();
            (m.cluster_version == CLUSTER_VERSION, m.all_published())
        };
        if done {
            return;
        }
        if all || since.elapsed() > election_timeout * 2 {
            let op = Op::ClusterVersion(ClusterVersionRequest {
                version: CLUSTER_VERSION.to_string(),
            });
            if core.propose(op).await.is_ok() {
                tracing::info!(
                    cluster_version = CLUSTER_VERSION,
                    "set initial cluster version"
                );
            }
        }
    }
}

/// Keeps the peer senders in step with the applied membership.
async fn follow_membership(
    peers: Arc<Peers>,
    mut membership: watch::Receiver<Membership>,
    self_id: u64,
    shutdown: CancellationToken,
) {
    let mut known: std::collections::HashMap<u64, String> = membership
        .borrow()
        .members
        .iter()
        .filter_map(|m| m.peer_urls.first().map(|u| (m.id, u.clone())))
        .collect();
    loop {
        tokio::select! {
            r = membership.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
        let now: std::collections::HashMap<u64, String> = membership
            .borrow()
            .members
            .iter()
            .filter_map(|m| m.peer_urls.first().map(|u| (m.id, u.clone())))
            .collect();
        for (id, url) in &now {
            if *id != self_id && known.get(id) != Some(url) {
                peers.add(*id, url.clone());
            }
        }
        for id in known.keys() {
            if !now.contains_key(id) {
                peers.remove(*id);
            }
        }
        known = now;
    }
}
