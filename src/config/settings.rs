//! The member settings localcluster honours, and the draft they are collected in.
//!
//! [`Setting`] names each supported etcd flag once; flags, `ETCD_*` variables
//! and config-file keys all resolve to it, so every source writes the same
//! field with the same parsing. [`Draft`] starts at etcd's defaults, records
//! which settings were given explicitly (etcd's `flags.IsSet`, which drives
//! the `--advertise-client-urls` rule), and is turned into a validated
//! `MemberConfig` by `config::finish`. Text values go through
//! [`Draft::apply_str`], which behaves like the Go `flag.Value.Set` of the
//! corresponding etcd flag.

use std::collections::BTreeSet;
use std::time::Duration;

use super::urls::{parse_initial_cluster, parse_url_list, EtcdUrl, InitialCluster};
use super::values::{parse_bool, parse_duration, parse_int, parse_uint};
use super::ClusterState;
use crate::tls::TlsSettings;

/// etcd's default member name.
pub const DEFAULT_NAME: &str = "default";
/// etcd's default `--listen-client-urls` and `--advertise-client-urls`.
pub const DEFAULT_CLIENT_URL: &str = "http://localhost:2379";
/// etcd's default `--listen-peer-urls` and `--initial-advertise-peer-urls`.
pub const DEFAULT_PEER_URL: &str = "http://localhost:2380";
/// etcd's default `--initial-cluster-token`.
pub const DEFAULT_CLUSTER_TOKEN: &str = "etcd-cluster";
/// etcd's default `--heartbeat-interval`, in milliseconds.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
/// etcd's default `--election-timeout`, in milliseconds.
pub const DEFAULT_ELECTION_MS: u64 = 1000;
/// etcd 3.4/3.5's default `--snapshot-count`.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;
/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1_572_864;
/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: u64 = 128;
/// etcd's default `--max-concurrent-streams` (Go's `math.MaxUint32`: no limit).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = u32::MAX;
/// etcd's default `--log-level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// etcd 3.5's default (and only) `--logger`.
pub const DEFAULT_LOGGER: &str = "zap";
/// etcd's default `--auto-compaction-mode`.
pub const DEFAULT_AUTO_COMPACTION_MODE: &str = "periodic";
/// etcd's default `--experimental-watch-progress-notify-interval`.
pub const DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);
/// etcd's default `--log-outputs`: standard error.
pub const DEFAULT_LOG_OUTPUT: &str = "default";
/// localcluster's default `--log-format`: human-readable lines (etcd's
/// default is `json`; pass `--log-format json` for machines).
pub const DEFAULT_LOG_FORMAT: &str = "console";

/// One supported etcd flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Setting {
    Name,
    DataDir,
    WalDir,
    ListenClientUrls,
    AdvertiseClientUrls,
    ListenPeerUrls,
    InitialAdvertisePeerUrls,
    InitialCluster,
    InitialClusterToken,
    InitialClusterState,
    HeartbeatInterval,
    ElectionTimeout,
    SnapshotCount,
    BackendBatchInterval,
    BackendBatchLimit,
    MaxRequestBytes,
    QuotaBackendBytes,
    MaxTxnOps,
    MaxConcurrentStreams,
    LogLevel,
    Logger,
    AutoCompactionMode,
    AutoCompactionRetention,
    WatchProgressNotifyInterval,
    DiscoveryEndpoints,
    DiscoveryToken,
    StrictReconfigCheck,
    LogOutputs,
    LogFormat,
    ListenMetricsUrls,
    Metrics,
    UnsafeNoFsync,
    AuthToken,
    BcryptCost,
    AuthTokenTtl,
    CertFile,
    KeyFile,
    TrustedCaFile,
    ClientCrlFile,
    ClientCertAuth,
    AutoTls,
    PeerCertFile,
    PeerKeyFile,
    PeerTrustedCaFile,
    PeerCrlFile,
    PeerClientCertAuth,
    PeerAutoTls,
    PeerCertAllowedCn,
}

impl Setting {
    /// Every supported setting, in the order `--help` lists them.
    pub const ALL: [Setting; 48] = [
        Setting::Name,
        Setting::DataDir,
        Setting::WalDir,
        Setting::SnapshotCount,
        Setting::HeartbeatInterval,
        Setting::ElectionTimeout,
        Setting::ListenPeerUrls,
        Setting::ListenClientUrls,
        Setting::QuotaBackendBytes,
        Setting::BackendBatchInterval,
        Setting::BackendBatchLimit,
        Setting::MaxTxnOps,
        Setting::MaxRequestBytes,
        Setting::MaxConcurrentStreams,
        Setting::InitialAdvertisePeerUrls,
        Setting::InitialCluster,
        Setting::InitialClusterState,
        Setting::InitialClusterToken,
        Setting::AdvertiseClientUrls,
        Setting::AutoCompactionRetention,
        Setting::AutoCompactionMode,
        Setting::WatchProgressNotifyInterval,
        Setting::StrictReconfigCheck,
        Setting::DiscoveryEndpoints,
        Setting::DiscoveryToken,
        Setting::ListenMetricsUrls,
        Setting::Metrics,
        Setting::Logger,
        Setting::LogLevel,
        Setting::LogOutputs,
        Setting::LogFormat,
        Setting::UnsafeNoFsync,
        Setting::AuthToken,
        Setting::BcryptCost,
        Setting::AuthTokenTtl,
        Setting::CertFile,
        Setting::KeyFile,
        Setting::TrustedCaFile,
        Setting::ClientCrlFile,
        Setting::ClientCertAuth,
        Setting::AutoTls,
        Setting::PeerCertFile,
        Setting::PeerKeyFile,
        Setting::PeerTrustedCaFile,
        Setting::PeerCrlFile,
        Setting::PeerClientCertAuth,
        Setting::PeerAutoTls,
        Setting::PeerCertAllowedCn,
    ];

    /// The etcd flag name (also the config-file key).
    pub fn flag_name(self) -> &'static str {
        match self {
            Setting::Name => "name",
            Setting::DataDir => "data-dir",
            Setting::WalDir => "wal-dir",
            Setting::ListenClientUrls => "listen-client-urls",
            Setting::AdvertiseClientUrls => "advertise-client-urls",
            Setting::ListenPeerUrls => "listen-peer-urls",
            Setting::InitialAdvertisePeerUrls => "initial-advertise-peer-urls",
            Setting::InitialCluster => "initial-cluster",
            Setting::InitialClusterToken => "initial-cluster-token",
            Setting::InitialClusterState => "initial-cluster-state",
            Setting::HeartbeatInterval => "heartbeat-interval",
            Setting::ElectionTimeout => "election-timeout",
            Setting::SnapshotCount => "snapshot-count",
            Setting::BackendBatchInterval => "backend-batch-interval",
            Setting::BackendBatchLimit => "backend-batch-limit",
            Setting::MaxRequestBytes => "max-request-bytes",
            Setting::QuotaBackendBytes => "quota-backend-bytes",
            Setting::MaxTxnOps => "max-txn-ops",
            Setting::MaxConcurrentStreams => "max-concurrent-streams",
            Setting::LogLevel => "log-level",
            Setting::Logger => "logger",
            Setting::AutoCompactionMode => "auto-compaction-mode",
            Setting::AutoCompactionRetention => "auto-compaction-retention",
            Setting::WatchProgressNotifyInterval => "experimental-watch-progress-notify-interval",
            Setting::DiscoveryEndpoints => "discovery-endpoints",
            Setting::DiscoveryToken => "discovery-token",
            Setting::StrictReconfigCheck => "strict-reconfig-check",
            Setting::LogOutputs => "log-outputs",
            Setting::LogFormat => "log-format",
            Setting::ListenMetricsUrls => "listen-metrics-urls",
            Setting::Metrics => "metrics",
            Setting::UnsafeNoFsync => "unsafe-no-fsync",
            Setting::AuthToken => "auth-token",
            Setting::BcryptCost => "bcrypt-cost",
            Setting::AuthTokenTtl => "auth-token-ttl",
            Setting::CertFile => "cert-file",
            Setting::KeyFile => "key-file",
            Setting::TrustedCaFile => "trusted-ca-file",
            Setting::ClientCrlFile => "client-crl-file",
            Setting::ClientCertAuth => "client-cert-auth",
            Setting::AutoTls => "auto-tls",
            Setting::PeerCertFile => "peer-cert-file",
            Setting::PeerKeyFile => "peer-key-file",
            Setting::PeerTrustedCaFile => "peer-trusted-ca-file",
            Setting::PeerCrlFile => "peer-crl-file",
            Setting::PeerClientCertAuth => "peer-client-cert-auth",
            Setting::PeerAutoTls => "peer-auto-tls",
            Setting::PeerCertAllowedCn => "peer-cert-allowed-cn",
        }
    }

    /// Whether the flag is a Go boolean flag (`--flag` alone means true).
    pub fn is_boolean(self) -> bool {
        matches!(
            self,
            Setting::UnsafeNoFsync
                | Setting::StrictReconfigCheck
                | Setting::ClientCertAuth
                | Setting::AutoTls
                | Setting::PeerClientCertAuth
                | Setting::PeerAutoTls
        )
    }
    /// Whether the setting is one of the TLS flags (read from the
    /// `*-transport-security` sections of a config file, not its top level).
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            Setting::CertFile
                | Setting::KeyFile
                | Setting::TrustedCaFile
                | Setting::ClientCrlFile
                | Setting::ClientCertAuth
                | Setting::AutoTls
                | Setting::PeerCertFile
                | Setting::PeerKeyFile
                | Setting::PeerTrustedCaFile
                | Setting::PeerCrlFile
                | Setting::PeerClientCertAuth
                | Setting::PeerAutoTls
                | Setting::PeerCertAllowedCn
        )
    }

    /// The setting a flag name (without dashes) stands for. etcd 3.6's
    /// unprefixed name of a former `experimental-` flag is an alias.
    pub fn from_flag_name(name: &str) -> Option<Setting> {
        if name == "watch-progress-notify-interval" {
            return Some(Setting::WatchProgressNotifyInterval);
        }
        Setting::ALL.into_iter().find(|s| s.flag_name() == name)
    }

    /// Default as `--help` shows it, and a one-line description.
    pub fn help(self) -> (&'static str, &'static str) {
        match self {
            Setting::Name => ("default", "Human-readable name for this member."),
            Setting::DataDir => ("${name}.etcd", "Path to the data directory."),
            Setting::WalDir => ("", "Path to the dedicated wal directory."),
            Setting::SnapshotCount => (
                "100000",
                "Number of committed transactions to trigger a snapshot to disk.",
            ),
            Setting::HeartbeatInterval => {
                ("100", "Time (in milliseconds) of a heartbeat interval.")
            }
            Setting::ElectionTimeout => {
                ("1000", "Time (in milliseconds) for an election to timeout.")
            }
            Setting::ListenPeerUrls => (
                DEFAULT_PEER_URL,
                "List of URLs to listen on for peer traffic.",
            ),
            Setting::ListenClientUrls => (
                DEFAULT_CLIENT_URL,
                "List of URLs to listen on for client traffic.",
            ),
            Setting::QuotaBackendBytes => (
                "0",
                "Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).",
            ),
            Setting::BackendBatchInterval => (
                "0",
                "Longest time applied writes wait for the store's durable commit (0: 100ms).",
            ),
            Setting::BackendBatchLimit => (
                "0",
                "Most applied entries that wait for the store's durable commit (0: 10000).",
            ),
            Setting::MaxTxnOps => (
                "128",
                "Maximum number of operations permitted in a transaction.",
            ),
            Setting::MaxRequestBytes => (
                "1572864",
                "Maximum client request size in bytes the server will accept.",
            ),
            Setting::MaxConcurrentStreams => (
                "4294967295",
                "Maximum concurrent streams that each client can open at a time.",
            ),
            Setting::InitialAdvertisePeerUrls => (
                DEFAULT_PEER_URL,
                "List of this member's peer URLs to advertise to the rest of the cluster.",
            ),
            Setting::InitialCluster => (
                "default=http://localhost:2380",
                "Initial cluster configuration for bootstrapping.",
            ),
            Setting::InitialClusterState => ("new", "Initial cluster state ('new' or 'existing')."),
            Setting::InitialClusterToken => (
                DEFAULT_CLUSTER_TOKEN,
                "Initial cluster token for the etcd cluster during bootstrap.",
            ),
            Setting::AdvertiseClientUrls => (
                DEFAULT_CLIENT_URL,
                "List of this member's client URLs to advertise to the public.",
            ),
            Setting::Logger => (
                "zap",
                "Accepted for compatibility; localcluster always logs with its own logger.",
            ),
            Setting::LogLevel => (
                "info",
                "Configures log level: debug, info, warn, error, panic, or fatal.",
            ),
            Setting::AutoCompactionMode => (
                "periodic",
                "Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, defaulting to hours if no time unit is provided (e.g. '5m'). 'revision' for revision number based retention.",
            ),
            Setting::AutoCompactionRetention => (
                "0",
                "Auto compaction retention for mvcc key value store. 0 means disable auto compaction.",
            ),
            Setting::WatchProgressNotifyInterval => (
                "10m0s",
                "Duration of periodic watch progress notifications.",
            ),
            Setting::DiscoveryEndpoints => (
                "",
                "V3 discovery: comma-separated client endpoints of the cluster serving discovery.",
            ),
            Setting::DiscoveryToken => (
                "",
                "V3 discovery: the token that identifies the new cluster in the discovery service.",
            ),
            Setting::StrictReconfigCheck => (
                "true",
                "Reject reconfiguration requests that would cause quorum loss.",
            ),
            Setting::LogOutputs => (
                "default",
                "Where to write logs: 'default' or 'stderr', 'stdout', or a file path (comma-separated).",
            ),
            Setting::LogFormat => (
                "console",
                "Log format: 'console' (human-readable) or 'json' (one zap-style JSON object per line).",
            ),
            Setting::ListenMetricsUrls => (
                "",
                "List of URLs to serve /metrics, /health, /livez and /readyz on, besides the client URLs.",
            ),
            Setting::Metrics => (
                "basic",
                "'basic' or 'extensive' (adds grpc_server_handling_seconds histograms).",
            ),
            Setting::UnsafeNoFsync => (
                "false",
                "Never fsync the Raft log or the store: fast, but a machine crash can lose acknowledged writes (test suites only).",
            ),
            Setting::AuthToken => (
                "simple",
                "Specify auth token specific options ('simple'; 'jwt,...' falls back to simple tokens).",
            ),
            Setting::BcryptCost => (
                "10",
                "Specify bcrypt algorithm cost factor for auth password hashing (4..31).",
            ),
            Setting::AuthTokenTtl => ("300", "The lifetime in seconds of the auth token."),
            Setting::CertFile => ("", "Path to the client server TLS cert file."),
            Setting::KeyFile => ("", "Path to the client server TLS key file."),
            Setting::TrustedCaFile => ("", "Path to the client server TLS trusted CA cert file."),
            Setting::ClientCrlFile => ("", "Path to the client certificate revocation list file."),
            Setting::ClientCertAuth => ("false", "Enable client cert authentication."),
            Setting::AutoTls => ("false", "Client TLS using generated certificates."),
            Setting::PeerCertFile => ("", "Path to the peer server TLS cert file."),
            Setting::PeerKeyFile => ("", "Path to the peer server TLS key file."),
            Setting::PeerTrustedCaFile => ("", "Path to the peer server TLS trusted CA file."),
            Setting::PeerCrlFile => ("", "Path to the peer certificate revocation list file."),
            Setting::PeerClientCertAuth => ("false", "Enable peer client cert authentication."),
            Setting::PeerAutoTls => ("false", "Peer TLS using generated certificates."),
            Setting::PeerCertAllowedCn => ("", "Allowed CN for inter peer authentication."),
        }
    }
}

/// A member configuration being collected from flags, environment or file.
#[derive(Debug, Clone)]
pub struct Draft {
    pub name: String,
    /// Empty means `<name>.etcd`.
    pub data_dir: String,
    /// Empty means no dedicated WAL directory.
    pub wal_dir: String,
    pub listen_client_urls: Vec<EtcdUrl>,
    pub advertise_client_urls: Vec<EtcdUrl>,
    pub listen_peer_urls: Vec<EtcdUrl>,
    pub initial_advertise_peer_urls: Vec<EtcdUrl>,
    pub initial_cluster: InitialCluster,
    pub initial_cluster_token: String,
    pub initial_cluster_state: ClusterState,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    pub snapshot_count: u64,
    /// `--backend-batch-interval`; zero means etcd's default (100 ms).
    pub backend_batch_interval: Duration,
    /// `--backend-batch-limit`; zero means etcd's default (10000).
    pub backend_batch_limit: u64,
    pub max_request_bytes: u64,
    /// etcd semantics: 0 is the default quota, negative disables the quota.
    pub quota_backend_bytes: i64,
    pub max_txn_ops: u64,
    pub max_concurrent_streams: u32,
    pub log_level: String,
    pub logger: String,
    /// `--auto-compaction-mode`, checked when the draft is finished.
    pub auto_compaction_mode: String,
    /// `--auto-compaction-retention`, interpreted according to the mode.
    pub auto_compaction_retention: String,
    pub watch_progress_notify_interval: Duration,
    /// `--discovery-endpoints` (empty: no discovery).
    pub discovery_endpoints: Vec<String>,
    pub discovery_token: String,
    pub strict_reconfig_check: bool,
    pub log_outputs: Vec<String>,
    pub log_format: String,
    pub listen_metrics_urls: Vec<EtcdUrl>,
    pub metrics: String,
    pub unsafe_no_fsync: bool,
    /// `--auth-token`: `simple`, or `jwt,...` (served as simple tokens).
    pub auth_token: String,
    pub bcrypt_cost: u64,
    /// `--auth-token-ttl`, in seconds.
    pub auth_token_ttl: u64,
    /// `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-crl-file`,
    /// `--client-cert-auth`, `--auto-tls`.
    pub client_tls: TlsSettings,
    /// The `--peer-*` twins of `client_tls`.
    pub peer_tls: TlsSettings,
    explicitly_set: BTreeSet<Setting>,
}

impl Draft {
    /// etcd's defaults (`embed.NewConfig`), nothing explicitly set.
    pub fn new() -> Draft {
        let client = vec![default_url(DEFAULT_CLIENT_URL)];
        let peer = vec![default_url(DEFAULT_PEER_URL)];
        Draft {
            name: DEFAULT_NAME.to_owned(),
            data_dir: String::new(),
            wal_dir: String::new(),
            listen_client_urls: client.clone(),
            advertise_client_urls: client,
            listen_peer_urls: peer.clone(),
            initial_advertise_peer_urls: peer.clone(),
            initial_cluster: default_initial_cluster(),
            initial_cluster_token: DEFAULT_CLUSTER_TOKEN.to_owned(),
            initial_cluster_state: ClusterState::New,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_ms: DEFAULT_ELECTION_MS,
            snapshot_count: DEFAULT_SNAPSHOT_COUNT,
            backend_batch_interval: Duration::ZERO,
            backend_batch_limit: 0,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            quota_backend_bytes: 0,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            log_level: DEFAULT_LOG_LEVEL.to_owned(),
            logger: DEFAULT_LOGGER.to_owned(),
            auto_compaction_mode: DEFAULT_AUTO_COMPACTION_MODE.to_owned(),
            auto_compaction_retention: "0".to_owned(),
            watch_progress_notify_interval: DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
            discovery_endpoints: Vec::new(),
            discovery_token: String::new(),
            strict_reconfig_check: true,
            log_outputs: vec![DEFAULT_LOG_OUTPUT.to_owned()],
            log_format: DEFAULT_LOG_FORMAT.to_owned(),
            listen_metrics_urls: Vec::new(),
            metrics: "basic".to_owned(),
            unsafe_no_fsync: false,
            auth_token: "simple".to_owned(),
            bcrypt_cost: crate::auth::DEFAULT_BCRYPT_COST as u64,
            auth_token_ttl: crate::auth::DEFAULT_TOKEN_TTL_SECS,
            client_tls: TlsSettings::default(),
            peer_tls: TlsSettings::default(),
            explicitly_set: BTreeSet::new(),
        }
    }

    /// Records that `setting` was given explicitly (even with its default value).
    pub fn mark_set(&mut self, setting: Setting) {
        self.explicitly_set.insert(setting);
    }

    /// Whether `setting` was given explicitly.
    pub fn is_set(&self, setting: Setting) -> bool {
        self.explicitly_set.contains(&setting)
    }

    /// Sets `setting` from its textual form, as the etcd flag would.
    ///
    /// The error is the reason only (e.g. `parse error`); the caller adds
    /// which flag, variable or key it came from.
    pub fn apply_str(&mut self, setting: Setting, raw: &str) -> Result<(), String> {
        match setting {
            Setting::Name => self.name = raw.to_owned(),
            Setting::DataDir => self.data_dir = raw.to_owned(),
            Setting::WalDir => self.wal_dir = raw.to_owned(),
            Setting::InitialClusterToken => self.initial_cluster_token = raw.to_owned(),
            Setting::LogLevel => self.log_level = raw.to_owned(),
            Setting::Logger => self.logger = raw.to_owned(),
            Setting::AutoCompactionMode => self.auto_compaction_mode = raw.to_owned(),
            Setting::AutoCompactionRetention => self.auto_compaction_retention = raw.to_owned(),
            Setting::WatchProgressNotifyInterval => {
                self.watch_progress_notify_interval = parse_duration(raw)?;
            }
            Setting::BackendBatchInterval => self.backend_batch_interval = parse_duration(raw)?,
            Setting::BackendBatchLimit => self.backend_batch_limit = uint(raw)?,
            Setting::DiscoveryToken => self.discovery_token = raw.to_owned(),
            Setting::StrictReconfigCheck => {
                self.strict_reconfig_check = parse_bool(raw).ok_or("parse error")?;
            }
            Setting::DiscoveryEndpoints => {
                self.discovery_endpoints = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            Setting::LogFormat => self.log_format = raw.to_owned(),
            Setting::Metrics => self.metrics = raw.to_owned(),
            Setting::LogOutputs => self.log_outputs = split_list(raw),
            Setting::UnsafeNoFsync => {
                // A Go boolean flag: written alone it is true.
                self.unsafe_no_fsync = raw.is_empty()
                    || parse_bool(raw)
                        .ok_or_else(|| "parse error (expected a boolean)".to_owned())?;
            }
            Setting::AuthToken => self.auth_token = raw.to_owned(),
            Setting::BcryptCost => self.bcrypt_cost = uint(raw)?,
            Setting::AuthTokenTtl => self.auth_token_ttl = uint(raw)?,
            Setting::PeerCertAllowedCn => {
                self.peer_tls.allowed_cn = (!raw.is_empty()).then(|| raw.to_owned())
            }
            Setting::CertFile => self.client_tls.cert_file = path(raw),
            Setting::KeyFile => self.client_tls.key_file = path(raw),
            Setting::TrustedCaFile => self.client_tls.trusted_ca_file = path(raw),
            Setting::ClientCrlFile => self.client_tls.crl_file = path(raw),
            Setting::PeerCertFile => self.peer_tls.cert_file = path(raw),
            Setting::PeerKeyFile => self.peer_tls.key_file = path(raw),
            Setting::PeerTrustedCaFile => self.peer_tls.trusted_ca_file = path(raw),
            Setting::PeerCrlFile => self.peer_tls.crl_file = path(raw),
            Setting::ClientCertAuth => self.client_tls.client_cert_auth = boolean(raw)?,
            Setting::AutoTls => self.client_tls.auto_tls = boolean(raw)?,
            Setting::PeerClientCertAuth => self.peer_tls.client_cert_auth = boolean(raw)?,
            Setting::PeerAutoTls => self.peer_tls.auto_tls = boolean(raw)?,

            Setting::ListenMetricsUrls
            | Setting::ListenClientUrls
            | Setting::AdvertiseClientUrls
            | Setting::ListenPeerUrls
            | Setting::InitialAdvertisePeerUrls => {
                // etcd's URL flags treat "" as an allowed no-op value.
                if !raw.is_empty() {
                    let urls = parse_url_list(raw).map_err(|e| e.to_string())?;
                    *self.urls_mut(setting) = urls;
                }
            }
            Setting::InitialCluster => {
                self.initial_cluster = parse_initial_cluster(raw).map_err(|e| e.to_string())?;
            }
            Setting::InitialClusterState => {
                self.initial_cluster_state = raw
                    .parse()
                    .map_err(|e: UnknownClusterState| e.to_string())?;
            }
            Setting::HeartbeatInterval => self.heartbeat_ms = uint(raw)?,
            Setting::ElectionTimeout => self.election_ms = uint(raw)?,
            Setting::SnapshotCount => self.snapshot_count = uint(raw)?,
            Setting::MaxRequestBytes => self.max_request_bytes = uint(raw)?,
            Setting::MaxTxnOps => self.max_txn_ops = uint(raw)?,
            Setting::MaxConcurrentStreams => {
                let streams = parse_uint(raw, 32)
                    .map_err(|e| format!("{e} (expected an unsigned integer)"))?;
                self.max_concurrent_streams = u32::try_from(streams)
                    .map_err(|_| "value out of range (expected an unsigned integer)".to_owned())?;
            }
            Setting::QuotaBackendBytes => {
                self.quota_backend_bytes =
                    parse_int(raw, 64).map_err(|e| format!("{e} (expected an integer)"))?;
            }
        }
        self.mark_set(setting);
        Ok(())
    }

    /// The URL list field for a URL setting.
    pub fn urls_mut(&mut self, setting: Setting) -> &mut Vec<EtcdUrl> {
        match setting {
            Setting::ListenClientUrls => &mut self.listen_client_urls,
            Setting::AdvertiseClientUrls => &mut self.advertise_client_urls,
            Setting::ListenPeerUrls => &mut self.listen_peer_urls,
            Setting::ListenMetricsUrls => &mut self.listen_metrics_urls,
            _ => &mut self.initial_advertise_peer_urls,
        }
    }
}

impl Default for Draft {
    fn default() -> Self {
        Draft::new()
    }
}

/// `--initial-cluster-state` was neither `new` nor `existing`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected clusterState {0:?} (valid values are \"new\" and \"existing\")")]
pub struct UnknownClusterState(pub String);

/// etcd's default initial cluster, `default=http://localhost:2380`.
pub fn default_initial_cluster() -> InitialCluster {
    vec![(DEFAULT_NAME.to_owned(), vec![default_url(DEFAULT_PEER_URL)])]
}

fn default_url(text: &str) -> EtcdUrl {
    // The defaults are constants known to be valid; a failure here would be
    // a programming error caught by the tests, not a user input.
    match EtcdUrl::parse(text) {
        Ok(url) => url,
        Err(e) => unreachable!("built-in default URL {text} is invalid: {e}"),
    }
}

/// A comma-separated list flag (Go's `flags.StringSlice`): empty items dropped.
pub fn split_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A path flag; empty means unset (etcd's default "").
fn path(raw: &str) -> Option<std::path::PathBuf> {
    (!raw.is_empty()).then(|| std::path::PathBuf::from(raw))
}

/// A Go boolean flag: given alone (empty value) it means true.
fn boolean(raw: &str) -> Result<bool, String> {
    if raw.is_empty() {
        return Ok(true);
    }
    super::values::parse_bool(raw).ok_or_else(|| "parse error".to_owned())
}

fn uint(raw: &str) -> Result<u64, String> {
    parse_uint(raw, 64).map_err(|e| format!("{e} (expected an unsigned integer)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names_round_trip() {
        for setting in Setting::ALL {
            assert_eq!(Setting::from_flag_name(setting.flag_name()), Some(setting));
        }
        assert_eq!(Setting::from_flag_name("enable-v2"), None);
    }

    #[test]
    fn new_draft_has_etcd_defaults() {
        let d = Draft::new();
        assert_eq!(d.name, "default");
        assert_eq!(d.listen_client_urls[0].as_str(), "http://localhost:2379");
        assert_eq!(
            d.initial_advertise_peer_urls[0].as_str(),
            "http://localhost:2380"
        );
        assert_eq!(d.initial_cluster, default_initial_cluster());
        assert_eq!(d.snapshot_count, 100_000);
        assert_eq!(d.max_request_bytes, 1_572_864);
        assert!(!d.is_set(Setting::Name));
    }

    #[test]
    fn apply_str_parses_like_etcd_flags_and_marks_set() {
        let mut d = Draft::new();
        d.apply_str(Setting::HeartbeatInterval, "0x20").unwrap();
        assert_eq!(d.heartbeat_ms, 32);
        assert!(d.is_set(Setting::HeartbeatInterval));
        d.apply_str(Setting::QuotaBackendBytes, "-1").unwrap();
        assert_eq!(d.quota_backend_bytes, -1);
        d.apply_str(Setting::InitialClusterState, "existing")
            .unwrap();
        assert_eq!(d.initial_cluster_state, ClusterState::Existing);
    }

    #[test]
    fn apply_str_reports_reason_only() {
        let mut d = Draft::new();
        assert_eq!(
            d.apply_str(Setting::ElectionTimeout, "soon").unwrap_err(),
            "parse error (expected an unsigned integer)"
        );
        assert_eq!(
            d.apply_str(Setting::InitialClusterState, "New")
                .unwrap_err(),
            "unexpected clusterState \"New\" (valid values are \"new\" and \"existing\")"
        );
        assert!(!d.is_set(Setting::ElectionTimeout));
    }

    #[test]
    fn empty_url_flag_value_keeps_the_default_but_counts_as_set() {
        let mut d = Draft::new();
        d.apply_str(Setting::ListenClientUrls, "").unwrap();
        assert_eq!(d.listen_client_urls[0].as_str(), DEFAULT_CLIENT_URL);
        assert!(d.is_set(Setting::ListenClientUrls));
    }
}
