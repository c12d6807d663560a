//! [`LocalClusterBuilder`]: the settings of an embedded cluster, and the start.
//!
//! `start` binds every member's client and peer listener first (port 0 unless
//! ports were given), so the whole `--initial-cluster` is known before any
//! member runs and no port can be taken between choosing and binding it; then
//! it starts each member on its pre-bound listeners and waits until the
//! cluster is healthy.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ClusterState, EtcdUrl, MemberConfig};
use crate::member::{Listeners, Member, Tuning};

use super::{ClusterError, LocalCluster, MemberInfo, Slot};

/// Heartbeat interval of an embedded cluster unless set (etcd: 100 ms).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(20);
/// Election timeout of an embedded cluster unless set (etcd: 1000 ms).
pub const DEFAULT_ELECTION: Duration = Duration::from_millis(200);
/// Request timeout of an embedded cluster unless set (etcd: 5 s + 2 × election).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`LocalClusterBuilder::start`] waits for a healthy cluster unless set.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Cluster token unless set.
pub const DEFAULT_TOKEN: &str = "localcluster-embedded";

type Configure = Arc<dyn Fn(usize, &mut MemberConfig) + Send + Sync>;

/// Settings of an embedded cluster; made by [`LocalCluster::builder`].
///
/// Every setting has a default tuned for fast tests; see each method.
#[derive(Clone)]
pub struct LocalClusterBuilder {
    size: usize,
    heartbeat: Duration,
    election: Duration,
    snapshot_count: u64,
    catchup_entries: Option<u64>,
    request_timeout: Duration,
    worker_threads: usize,
    data_dir: Option<PathBuf>,
    ports: Option<Vec<(u16, u16)>>,
    token: String,
    start_timeout: Duration,
    unsafe_no_fsync: bool,
    configure: Option<Configure>,
}

impl fmt::Debug for LocalClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalClusterBuilder")
            .field("size", &self.size)
            .field("heartbeat", &self.heartbeat)
            .field("election", &self.election)
            .field("snapshot_count", &self.snapshot_count)
            .field("catchup_entries", &self.catchup_entries)
            .field("request_timeout", &self.request_timeout)
            .field("worker_threads", &self.worker_threads)
            .field("data_dir", &self.data_dir)
            .field("ports", &self.ports)
            .field("token", &self.token)
            .field("start_timeout", &self.start_timeout)
            .field("unsafe_no_fsync", &self.unsafe_no_fsync)
            .field("configure", &self.configure.is_some())
            .finish()
    }
}

impl Default for LocalClusterBuilder {
    fn default() -> Self {
        LocalClusterBuilder {
            size: 3,
            heartbeat: DEFAULT_HEARTBEAT,
            election: DEFAULT_ELECTION,
            snapshot_count: crate::config::DEFAULT_SNAPSHOT_COUNT,
            catchup_entries: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            worker_threads: 1,
            data_dir: None,
            ports: None,
            token: DEFAULT_TOKEN.to_string(),
            start_timeout: DEFAULT_START_TIMEOUT,
            unsafe_no_fsync: false,
            configure: None,
        }
    }
}

impl LocalClusterBuilder {
    /// Number of members (default 3). Members are named `m0`, `m1`, ... after
    /// their index.
    pub fn members(mut self, n: usize) -> Self {
        self.size = n;
        self
    }

    /// Raft heartbeat interval, which is also the tick (default
    /// [`DEFAULT_HEARTBEAT`], 20 ms). The election timeout must be at least 5
    /// times as long, as etcd requires.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat = d;
        self
    }

    /// Raft election timeout (default [`DEFAULT_ELECTION`], 200 ms). A follower
    /// that hears nothing from the leader for this long (randomised up to twice
    /// as long) starts an election; a leader that hears from no quorum for this
    /// long steps down.
    pub fn election_timeout(mut self, d: Duration) -> Self {
        self.election = d;
        self
    }

    /// etcd's `--snapshot-count`: the Raft log is compacted every this many
    /// applied entries (default 100 000, as etcd). Set it low to make a
    /// restarted or partitioned member catch up from a snapshot instead of
    /// the log.
    pub fn snapshot_count(mut self, n: u64) -> Self {
        self.snapshot_count = n;
        self
    }

    /// Entries kept behind a log compaction for slow followers (default: the
    /// smaller of 5000, as etcd, and the snapshot count).
    pub fn catchup_entries(mut self, n: u64) -> Self {
        self.catchup_entries = Some(n);
        self
    }

    /// How long a client request waits for consensus before it fails with
    /// `etcdserver: request timed out` (default [`DEFAULT_REQUEST_TIMEOUT`],
    /// 2 s; etcd waits 5 s + 2 × election timeout). Writes sent to a
    /// partitioned minority fail after at most this long.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Never fsync the members' Raft logs and stores (etcd's
    /// `--unsafe-no-fsync`; default off). **Unsafe**: a machine crash or power
    /// loss may lose acknowledged writes or corrupt the data; killing members
    /// (the fault hooks) loses nothing, since the page cache survives. Meant
    /// for test suites on slow disks, where it can speed writes up a lot.
    pub fn unsafe_no_fsync(mut self, on: bool) -> Self {
        self.unsafe_no_fsync = on;
        self
    }

    /// Worker threads of each member's runtime (default 1). Each member also
    /// has one Raft thread.
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = n.max(1);
        self
    }

    /// Keeps the members' data under `dir` (`dir/m0`, `dir/m1`, ...) and
    /// leaves it there when the cluster is dropped. By default the data lives
    /// in a temporary directory removed on drop.
    ///
    /// A data dir that already holds a member restarts it from its data (the
    /// ports must then be the ones it had: see [`LocalClusterBuilder::ports`]).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Uses these `(client, peer)` ports on 127.0.0.1, one pair per member,
    /// instead of free ports chosen by the system. The member count becomes
    /// the number of pairs.
    pub fn ports(mut self, ports: impl IntoIterator<Item = (u16, u16)>) -> Self {
        let ports: Vec<(u16, u16)> = ports.into_iter().collect();
        self.size = ports.len();
        self.ports = Some(ports);
        self
    }

    /// `--initial-cluster-token` (default [`DEFAULT_TOKEN`]). Member and
    /// cluster IDs derive from it and the peer URLs.
    pub fn cluster_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// How long [`LocalClusterBuilder::start`] waits for the cluster to be
    /// healthy (default [`DEFAULT_START_TIMEOUT`], 15 s).
    pub fn start_timeout(mut self, d: Duration) -> Self {
        self.start_timeout = d;
        self
    }

    /// Adjusts each member's configuration (after the builder filled it in,
    /// before it is validated): `f(index, &mut config)`. For settings the
    /// builder does not name, such as `max_request_bytes` or `max_txn_ops`.
    /// Changing names, URLs or the data dir is not supported.
    pub fn configure(
        mut self,
        f: impl Fn(usize, &mut MemberConfig) + Send + Sync + 'static,
    ) -> Self {
        self.configure = Some(Arc::new(f));
        self
    }

    /// Starts every member and waits until the cluster is healthy (see
    /// [`LocalCluster::wait_healthy`]).
    ///
    /// Must be called inside a tokio runtime (members run on runtimes of their
    /// own; the caller's runtime only drives the waiting).
    pub async fn start(self) -> Result<LocalCluster, ClusterError> {
        let timeout = self.start_timeout;
        let cluster = self.launch()?;
        cluster.wait_healthy(timeout).await?;
        Ok(cluster)
    }

    /// Starts the cluster with its own runtime, for code that is not async;
    /// see [`crate::cluster::blocking`].
    pub fn start_blocking(self) -> Result<super::blocking::LocalCluster, ClusterError> {
        super::blocking::LocalCluster::new(self)
    }

    /// Binds every listener, builds every configuration and starts every
    /// member, without waiting for a leader.
    fn launch(self) -> Result<LocalCluster, ClusterError> {
        if self.size == 0 {
            return Err(ClusterError::NoMembers);
        }
        let (temp, base) = match &self.data_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("localcluster-")
                    .tempdir()
                    .map_err(|source| ClusterError::DataDir {
                        path: std::env::temp_dir().display().to_string(),
                        source,
                    })?;
                let base = temp.path().to_path_buf();
                (Some(temp), base)
            }
        };
        std::fs::create_dir_all(&base).map_err(|source| ClusterError::DataDir {
            path: base.display().to_string(),
            source,
        })?;

        if let Some(ports) = &self.ports {
            if ports.len() != self.size {
                return Err(ClusterError::Config {
                    name: "m0".into(),
                    reason: format!("{} port pairs given for {} members", ports.len(), self.size),
                });
            }
        }
        let names: Vec<String> = (0..self.size).map(|i| format!("m{i}")).collect();
        let mut bound = Vec::with_capacity(self.size);
        for (i, name) in names.iter().enumerate() {
            let (client_port, peer_port) = self
                .ports
                .as_ref()
                .and_then(|p| p.get(i).copied())
                .unwrap_or((0, 0));
            let client = bind(name, client_port)?;
            let peer = bind(name, peer_port)?;
            bound.push((client, peer));
        }
        let mut urls = Vec::with_capacity(self.size);
        for ((client, peer), name) in bound.iter().zip(&names) {
            let client_addr = local_addr(name, client)?;
            let peer_addr = local_addr(name, peer)?;
            urls.push((
                url_of(name, client_addr)?,
                url_of(name, peer_addr)?,
                client_addr,
                peer_addr,
            ));
        }
        let initial_cluster: Vec<(String, Vec<EtcdUrl>)> = names
            .iter()
            .zip(&urls)
            .map(|(name, (_, peer, _, _))| (name.clone(), vec![peer.clone()]))
            .collect();

        let tuning = Tuning {
            catchup_entries: self.catchup_entries,
            worker_threads: Some(self.worker_threads),
            request_timeout: Some(self.request_timeout),
            // Its own temporary dirs are fresh; dirs it is given may hold a
            // member's data, or have lost it (then the check matters).
            fresh_cluster: self.data_dir.is_none(),
            blocked_peers: Vec::new(),
        };
        let mut slots = Vec::with_capacity(self.size);
        for (i, (name, (client_url, peer_url, client_addr, peer_addr))) in
            names.iter().zip(urls).enumerate()
        {
            let mut config = MemberConfig {
                name: name.clone(),
                data_dir: base.join(name),
                listen_client_urls: vec![client_url.clone()],
                advertise_client_urls: vec![client_url.clone()],
                listen_peer_urls: vec![peer_url.clone()],
                initial_advertise_peer_urls: vec![peer_url.clone()],
                initial_cluster: initial_cluster.clone(),
                initial_cluster_token: self.token.clone(),
                initial_cluster_state: ClusterState::New,
                heartbeat_interval: self.heartbeat,
                election_timeout: self.election,
                snapshot_count: self.snapshot_count,
                unsafe_no_fsync: self.unsafe_no_fsync,
                ..MemberConfig::default()
            };
            if let Some(f) = &self.configure {
                f(i, &mut config);
            }
            config.validate().map_err(|e| ClusterError::Config {
                name: name.clone(),
                reason: e.to_string(),
            })?;
            slots.push(Slot {
                info: MemberInfo {
                    index: i,
                    name: name.clone(),
                    id: 0,
                    client_url: client_url.as_str().to_string(),
                    peer_url: peer_url.as_str().to_string(),
                    client_addr,
                    peer_addr,
                    data_dir: config.data_dir.clone(),
                },
                config,
                member: None,
                paused: false,
                removed: false,
                held: Default::default(),
            });
        }

        // From here on, a failure drops `cluster`, which kills what started.
        let mut cluster = LocalCluster {
            slots,
            groups: None,
            cuts: Default::default(),
            tuning,
            temp,
        };
        for (i, (client, peer)) in bound.into_iter().enumerate() {
            let slot = &mut cluster.slots[i];
            let member = Member::start_with(
                &slot.config,
                Listeners {
                    client: vec![client],
                    peer: vec![peer],
                },
                cluster.tuning.clone(),
            )
            .map_err(|source| ClusterError::Start {
                name: slot.info.name.clone(),
                source,
            })?;
            slot.info.id = member.id();
            slot.member = Some(member);
        }
        Ok(cluster)
    }
}

/// Binds 127.0.0.1:`port` (0: a free port).
pub(super) fn bind(name: &str, port: u16) -> Result<TcpListener, ClusterError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpListener::bind(addr).map_err(|source| ClusterError::Bind {
        name: name.to_string(),
        addr,
        source,
    })
}

pub(super) fn local_addr(name: &str, l: &TcpListener) -> Result<SocketAddr, ClusterError> {
    l.local_addr().map_err(|source| ClusterError::Bind {
        name: name.to_string(),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        source,
    })
}

pub(super) fn url_of(name: &str, addr: SocketAddr) -> Result<EtcdUrl, ClusterError> {
    EtcdUrl::parse(&format!("http://{addr}")).map_err(|e| ClusterError::Config {
        name: name.to_string(),
        reason: e.to_string(),
    })
}
