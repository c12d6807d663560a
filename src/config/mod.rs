//! Member configuration: etcd's flags, `ETCD_*` variables and `--config-file`,
//! turned into one validated [`MemberConfig`].
//!
//! A localcluster member is started the way an etcd member is, so existing
//! Procfiles, systemd units and `etcd.conf.yml` files work unchanged:
//!
//! * [`MemberConfig::from_args`] parses the command line with Go `flag`
//!   semantics (`flags`), then either loads the YAML file named by
//!   `--config-file`/`ETCD_CONFIG_FILE` (`file`) — in which case, as in etcd,
//!   every other flag and variable is ignored — or applies `ETCD_*` variables
//!   (`env`) under the flags. Both paths fill a `settings::Draft` that starts at
//!   etcd's defaults, and [`MemberConfig::validate`] checks the result.
//! * etcd's derived defaults are reproduced: `--data-dir` is `<name>.etcd`;
//!   with `--name` set and `--initial-cluster` left at its default
//!   (`default=http://localhost:2380`), the initial cluster becomes
//!   `<name>=<initial-advertise-peer-urls>`; setting `--listen-client-urls`
//!   (flag or variable) without `--advertise-client-urls` is an error.
//! * Flags etcd has but localcluster does not implement are accepted with a
//!   warning; warnings are collected in [`MemberConfig::warnings`] for the
//!   caller to log once logging is set up.
//!
//! Invariant: a `MemberConfig` returned by `from_args`/`from_yaml_file` has
//! passed `validate`; URL lists are sorted and free of duplicates.

mod env;
mod error;
mod file;
mod flags;
mod settings;
mod urls;
pub(crate) mod values;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use error::ConfigError;
pub use flags::help_text;
pub use settings::{
    UnknownClusterState, DEFAULT_CLIENT_URL, DEFAULT_CLUSTER_TOKEN, DEFAULT_ELECTION_MS,
    DEFAULT_HEARTBEAT_MS, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TXN_OPS, DEFAULT_NAME, DEFAULT_PEER_URL, DEFAULT_SNAPSHOT_COUNT,
};
pub use urls::{
    format_initial_cluster, format_url_list, parse_initial_cluster, parse_url_list, EtcdUrl,
    InitialCluster, UrlError,
};

use flags::FlagKind;
use settings::{Draft, Setting};

/// etcd's backend quota when `--quota-backend-bytes` is 0 (2 GiB).
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Above this quota etcd warns (8 GiB).
pub const MAX_QUOTA_BACKEND_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// Above this request size etcd warns (10 MiB).
pub const RECOMMENDED_MAX_REQUEST_BYTES: u64 = 10 * 1024 * 1024;
/// etcd's upper bound for `--election-timeout`, in milliseconds.
pub const MAX_ELECTION_MS: u64 = 50_000;

/// Log levels etcd (zap) accepts.
const LOG_LEVELS: &[&str] = &["debug", "info", "warn", "error", "dpanic", "panic", "fatal"];

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `--initial-cluster`.
    #[default]
    New,
    /// Join a cluster this member was already added to (`member add`).
    Existing,
}

impl ClusterState {
    /// The flag value: `new` or `existing`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ClusterState {
    type Err = UnknownClusterState;
    /// Exactly `new` or `existing`, case-sensitive as in etcd.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "new" => Ok(ClusterState::New),
            "existing" => Ok(ClusterState::Existing),
            other => Err(UnknownClusterState(other.to_owned())),
        }
    }
}

/// `--log-format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    /// Human-readable lines (localcluster's default).
    #[default]
    Console,
    /// One JSON object per line in etcd's zap shape
    /// (`{"level":"info","ts":"...","caller":"...","msg":"...",...}`).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    /// etcd's values `json` and `console` (`text` is taken as `console`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "console" | "text" | "" => Ok(LogFormat::Console),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (valid: json, console)"
            )),
        }
    }
}

/// Everything one member needs to start, with etcd's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// `--name`, default `default`.
    pub name: String,
    /// `--data-dir`, default `<name>.etcd`.
    pub data_dir: PathBuf,
    /// `--wal-dir`; `None` keeps the WAL under the data directory.
    pub wal_dir: Option<PathBuf>,
    /// `--listen-client-urls`, default `http://localhost:2379`.
    pub listen_client_urls: Vec<EtcdUrl>,
    /// `--advertise-client-urls`, default `http://localhost:2379`.
    pub advertise_client_urls: Vec<EtcdUrl>,
    /// `--listen-peer-urls`, default `http://localhost:2380`.
    pub listen_peer_urls: Vec<EtcdUrl>,
    /// `--initial-advertise-peer-urls`, default `http://localhost:2380`.
    pub initial_advertise_peer_urls: Vec<EtcdUrl>,
    /// `--initial-cluster`: members in order of first appearance, each with
    /// its sorted peer URLs. See the module doc for the default.
    pub initial_cluster: InitialCluster,
    /// `--initial-cluster-token`, default `etcd-cluster`.
    pub initial_cluster_token: String,
    /// `--initial-cluster-state`, default `new`.
    pub initial_cluster_state: ClusterState,
    /// `--heartbeat-interval` (milliseconds), default 100 ms.
    pub heartbeat_interval: Duration,
    /// `--election-timeout` (milliseconds), default 1000 ms.
    pub election_timeout: Duration,
    /// `--snapshot-count`, default 100000 (etcd 3.4/3.5).
    pub snapshot_count: u64,
    /// `--backend-batch-interval` and `--backend-batch-limit` (etcd's
    /// defaults 100 ms and 10000 where they were 0): when applied state is
    /// made durable.
    pub backend_batch: crate::apply::BackendBatch,
    /// `--max-request-bytes`, default 1.5 MiB.
    pub max_request_bytes: usize,
    /// Effective backend quota: `--quota-backend-bytes`, with etcd's meaning
    /// of 0 (the 2 GiB default) already applied; a negative flag value
    /// (etcd: quota disabled) is `u64::MAX`.
    pub quota_backend_bytes: u64,
    /// `--max-txn-ops`, default 128.
    pub max_txn_ops: usize,
    /// `--max-concurrent-streams`: calls one client connection may carry at
    /// once; default no limit (`u32::MAX`), as etcd. 0 also means no limit,
    /// as it does to etcd's gRPC server (grpc-go).
    pub max_concurrent_streams: u32,
    /// `--log-level`, lowercase, default `info`.
    pub log_level: String,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`; `None`
    /// (retention 0, the default) disables auto-compaction.
    pub auto_compaction: Option<crate::compactor::AutoCompaction>,
    /// `--experimental-watch-progress-notify-interval`, default 10 minutes.
    pub watch_progress_notify_interval: Duration,
    /// `--discovery-endpoints`: client endpoints of the cluster serving etcd's
    /// v3 discovery; when set, a new member finds its `--initial-cluster` there.
    pub discovery_endpoints: Vec<String>,
    /// `--discovery-token`: the new cluster's name in the discovery service.
    pub discovery_token: String,
    /// `--strict-reconfig-check`, default true: refuse membership changes
    /// that would cost the cluster its quorum (see `crate::api::reconfig`).
    pub strict_reconfig_check: bool,
    /// `--log-outputs`: `default`/`stderr`, `stdout`, or file paths.
    pub log_outputs: Vec<String>,
    /// `--log-format`.
    pub log_format: LogFormat,
    /// `--listen-metrics-urls`: extra listeners serving `/metrics`, `/health`,
    /// `/livez` and `/readyz`.
    pub listen_metrics_urls: Vec<EtcdUrl>,
    /// `--metrics extensive` (default `basic`): also time every gRPC call.
    pub extensive_metrics: bool,
    /// `--unsafe-no-fsync`: never fsync the Raft log or the store. Unsafe: a
    /// machine crash loses acknowledged writes. For test suites only.
    pub unsafe_no_fsync: bool,
    /// `--bcrypt-cost` and `--auth-token-ttl`.
    pub auth: crate::auth::AuthOptions,
    /// TLS of the client URLs (`--cert-file`, `--client-cert-auth`, ...).
    pub client_tls: crate::tls::TlsSettings,
    /// TLS of the peer URLs (`--peer-cert-file`, ...).
    pub peer_tls: crate::tls::TlsSettings,
    /// Things to log as warnings once logging is set up.
    pub warnings: Vec<String>,
}

impl Default for MemberConfig {
    /// etcd's defaults: `etcd` run with no flags.
    fn default() -> Self {
        let draft = Draft::new();
        MemberConfig {
            data_dir: PathBuf::from(format!("{DEFAULT_NAME}.etcd")),
            wal_dir: None,
            heartbeat_interval: Duration::from_millis(draft.heartbeat_ms),
            election_timeout: Duration::from_millis(draft.election_ms),
            snapshot_count: draft.snapshot_count,
            backend_batch: crate::apply::BackendBatch::default(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES as usize,
            quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS as usize,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            name: draft.name,
            listen_client_urls: draft.listen_client_urls,
            advertise_client_urls: draft.advertise_client_urls,
            listen_peer_urls: draft.listen_peer_urls,
            initial_advertise_peer_urls: draft.initial_advertise_peer_urls,
            initial_cluster: draft.initial_cluster,
            initial_cluster_token: draft.initial_cluster_token,
            initial_cluster_state: draft.initial_cluster_state,
            log_level: draft.log_level,
            auto_compaction: None,
            watch_progress_notify_interval: draft.watch_progress_notify_interval,
            discovery_endpoints: draft.discovery_endpoints,
            discovery_token: draft.discovery_token,
            strict_reconfig_check: draft.strict_reconfig_check,
            log_outputs: draft.log_outputs,
            log_format: LogFormat::Console,
            listen_metrics_urls: draft.listen_metrics_urls,
            extensive_metrics: false,
            unsafe_no_fsync: draft.unsafe_no_fsync,
            auth: crate::auth::AuthOptions::default(),
            client_tls: Default::default(),
            peer_tls: Default::default(),
            warnings: Vec::new(),
        }
    }
}

impl MemberConfig {
    /// Builds the configuration from command-line `args` (without `argv[0]`
    /// and the subcommand) and the process environment `env`.
    ///
    /// `Err(ConfigError::HelpRequested)` / `Err(ConfigError::VersionRequested)`
    /// ask the caller to print help ([`help_text`]) or the version and exit 0;
    /// see [`ConfigError::exit_code`] for the other outcomes.
    pub fn from_args<I, S>(
        args: I,
        env: &HashMap<String, String>,
    ) -> Result<MemberConfig, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let raw = flags::tokenize_etcd(&args)?;

        let mut draft = Draft::new();
        let mut given: BTreeSet<&'static str> = BTreeSet::new();
        let mut unknown_warnings = Vec::new();
        let mut ignored_warnings = Vec::new();
        // Flags that cannot be ignored (see `flags::refusal`), each as its
        // last occurrence sets it (`--force-new-cluster=false` after
        // `--force-new-cluster` takes it back, as Go's last value wins).
        let mut refused: Vec<(&str, ConfigError)> = Vec::new();
        let mut config_file = None;
        let mut version = false;
        for flags::RawFlag { name, value } in &raw {
            let Some(kind) = flags::lookup(name) else {
                unknown_warnings.push(format!("unknown flag --{name} ignored"));
                continue;
            };
            if let Some((canonical, _)) = flags::all_flags().find(|(n, _)| n == name) {
                given.insert(canonical);
            }
            match kind {
                FlagKind::Setting(setting) => {
                    // A boolean flag given alone means true.
                    let alone = if setting.is_boolean() { "true" } else { "" };
                    let value = value.as_deref().unwrap_or(alone);
                    draft.apply_str(setting, value).map_err(|reason| {
                        ConfigError::Flag(format!(
                            "invalid value {value:?} for flag --{name}: {reason}"
                        ))
                    })?;
                }
                FlagKind::ConfigFile => config_file = value.clone(),
                FlagKind::Version => version = bool_flag(name, value.as_deref())?,
                FlagKind::Unsupported { boolean } => {
                    if boolean {
                        bool_flag(name, value.as_deref())?;
                    }
                    let given = value.as_deref().unwrap_or("true");
                    refused.retain(|(flag, _)| flag != name);
                    if let Some(reason) = flags::refusal(name, given) {
                        refused.push((
                            name,
                            ConfigError::Invalid(format!(
                                "--{name} is not supported by localcluster: {reason}"
                            )),
                        ));
                    }
                    ignored_warnings.push(format!(
                        "flag --{name} is not supported by localcluster; ignored"
                    ));
                }
                FlagKind::Obsolete => ignored_warnings.push(format!("flag --{name} is ignored")),
            }
        }
        if version {
            return Err(ConfigError::VersionRequested);
        }

        let config_file = config_file.filter(|path| !path.is_empty()).or_else(|| {
            env.get("ETCD_CONFIG_FILE")
                .filter(|path| !path.is_empty())
                .cloned()
        });
        let mut warnings = unknown_warnings;
        if let Some(path) = config_file {
            // etcd: "loaded server configuration, other configuration command
            // line flags and environment variables will be ignored if provided".
            for name in given.iter().filter(|name| **name != "config-file") {
                warnings.push(format!(
                    "flag --{name} ignored because a config file is used ({path})"
                ));
            }
            let mut keys: Vec<&String> = env
                .keys()
                .filter(|k| k.starts_with("ETCD_") && *k != "ETCD_CONFIG_FILE")
                .collect();
            keys.sort();
            for key in keys {
                warnings.push(format!(
                    "environment variable {key} ignored because a config file is used ({path})"
                ));
            }
            let mut config = MemberConfig::from_yaml_file(Path::new(&path))?;
            warnings.append(&mut config.warnings);
            config.warnings = warnings;
            return Ok(config);
        }
        // Only now: a config file makes the flags moot, --version wins.
        if let Some((_, refusal)) = refused.into_iter().next() {
            return Err(refusal);
        }

        warnings.append(&mut ignored_warnings);
        env::apply(&mut draft, env, &given, &mut warnings)?;
        if draft.is_set(Setting::ListenClientUrls) && !draft.is_set(Setting::AdvertiseClientUrls) {
            // etcd drops the default advertise URL here, which makes
            // validation fail with "--advertise-client-urls is required ...".
            draft.advertise_client_urls.clear();
        }
        finish(draft, warnings)
    }

    /// Builds the configuration from an etcd YAML config file alone.
    pub fn from_yaml_file(path: &Path) -> Result<MemberConfig, ConfigError> {
        let (draft, warnings) = file::load(path)?;
        finish(draft, warnings)
    }

    /// Checks the configuration as etcd does before starting a member
    /// (`embed.Config.Validate`, then `VerifyBootstrap` for a new cluster or
    /// `VerifyJoinExisting` for an existing one). Returns the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return invalid(format!(
                "unknown log level {:?} (valid: debug, info, warn, error, panic, fatal)",
                self.log_level
            ));
        }
        if self.watch_progress_notify_interval.is_zero() {
            return invalid(
                "--experimental-watch-progress-notify-interval must be >0 (set to 0s)".into(),
            );
        }
        for (flag, urls) in [
            ("--listen-peer-urls", &self.listen_peer_urls),
            ("--listen-client-urls", &self.listen_client_urls),
            (
                "--initial-advertise-peer-urls",
                &self.initial_advertise_peer_urls,
            ),
            ("--advertise-client-urls", &self.advertise_client_urls),
        ] {
            if let Some(url) = first_duplicate(urls.iter()) {
                return invalid(format!("{flag} has duplicate url {url}"));
            }
        }
        if self.listen_peer_urls.is_empty() {
            return invalid("--listen-peer-urls must not be empty".into());
        }
        if self.listen_client_urls.is_empty() {
            return invalid("--listen-client-urls must not be empty".into());
        }
        let mut bound = HashMap::new();
        for url in self.listen_peer_urls.iter().chain(&self.listen_client_urls) {
            let addr = url
                .bind_addr()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if let Some(other) = bound.insert(addr, url) {
                return invalid(format!("listen URLs {other} and {url} both bind {addr}"));
            }
        }

        let heartbeat_ms = self.heartbeat_interval.as_millis();
        let election_ms = self.election_timeout.as_millis();
        if heartbeat_ms == 0 {
            return invalid(format!(
                "--heartbeat-interval must be >0 (set to {heartbeat_ms}ms)"
            ));
        }
        if election_ms == 0 {
            return invalid(format!(
                "--election-timeout must be >0 (set to {election_ms}ms)"
            ));
        }
        if 5 * heartbeat_ms > election_ms {
            return invalid(format!(
                "--election-timeout[{election_ms}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat_ms}ms]"
            ));
        }
        if election_ms > u128::from(MAX_ELECTION_MS) {
            return invalid(format!(
                "--election-timeout[{election_ms}ms] is too long, and should be set less than {MAX_ELECTION_MS}ms"
            ));
        }
        if self.advertise_client_urls.is_empty() {
            return invalid(
                "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                    .into(),
            );
        }
        validate_tls("client", "", &self.client_tls, &self.listen_client_urls)?;
        validate_tls("peer", "peer-", &self.peer_tls, &self.listen_peer_urls)?;

        Ok(())
    }

    /// The checks that only matter when a new data dir is bootstrapped from the
    /// `--initial-*` flags (etcd ignores those flags on restart): the local name
    /// is in `--initial-cluster` and its URLs match `--initial-advertise-peer-urls`.
    pub fn validate_bootstrap(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        let mut names = HashSet::new();
        for (name, urls) in &self.initial_cluster {
            if !names.insert(name.as_str()) {
                return invalid(format!(
                    "--initial-cluster lists member {name:?} more than once"
                ));
            }
            if urls.is_empty() {
                return invalid(format!("empty URL given for {name:?}"));
            }
        }
        let Some((_, local_urls)) = self
            .initial_cluster
            .iter()
            .find(|(name, _)| *name == self.name)
        else {
            return invalid(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            ));
        };
        if self.initial_cluster_state == ClusterState::New {
            advertise_matches_cluster(&self.name, local_urls, &self.initial_advertise_peer_urls)?;
        }
        if first_duplicate(self.initial_cluster.iter().flat_map(|(_, urls)| urls)).is_some() {
            return invalid(format!(
                "initial cluster {} has duplicate url",
                urls::format_initial_cluster_sorted(&self.initial_cluster)
            ));
        }
        Ok(())
    }

    /// Election timeout in heartbeat ticks (etcd's `ElectionTicks`).
    pub fn election_ticks(&self) -> usize {
        let heartbeat = self.heartbeat_interval.as_millis().max(1);
        usize::try_from(self.election_timeout.as_millis() / heartbeat).unwrap_or(usize::MAX)
    }

    /// `--initial-cluster` in flag form: `name=url,name=url,...`.
    pub fn initial_cluster_string(&self) -> String {
        format_initial_cluster(&self.initial_cluster)
    }
}

/// Applies etcd's derived defaults to a draft, builds the config, validates it.
fn finish(draft: Draft, mut warnings: Vec<String>) -> Result<MemberConfig, ConfigError> {
    let data_dir = if draft.data_dir.is_empty() {
        let default = format!("{}.etcd", draft.name);
        warnings.push(format!("'data-dir' was empty; using default: {default}"));
        default
    } else {
        draft.data_dir
    };

    // etcd's UpdateDefaultClusterFromName: a renamed member whose
    // --initial-cluster was left at the default gets <name>=<advertise urls>.
    let mut initial_cluster = draft.initial_cluster;
    if draft.name != DEFAULT_NAME && initial_cluster == settings::default_initial_cluster() {
        initial_cluster = vec![(
            draft.name.clone(),
            draft.initial_advertise_peer_urls.clone(),
        )];
    }

    let quota_backend_bytes = match u64::try_from(draft.quota_backend_bytes) {
        Ok(0) => DEFAULT_QUOTA_BACKEND_BYTES,
        Ok(quota) => {
            if quota > MAX_QUOTA_BACKEND_BYTES {
                warnings.push(format!(
                    "quota-backend-bytes {quota} exceeds the maximum recommended value {MAX_QUOTA_BACKEND_BYTES}"
                ));
            }
            quota
        }
        Err(_) => u64::MAX,
    };
    if draft.max_request_bytes > RECOMMENDED_MAX_REQUEST_BYTES {
        warnings.push(format!(
            "max-request-bytes {} exceeds the recommended request limit {RECOMMENDED_MAX_REQUEST_BYTES}",
            draft.max_request_bytes
        ));
    }
    if draft.logger != settings::DEFAULT_LOGGER {
        warnings.push(format!(
            "--logger={} ignored; localcluster uses its own structured logger",
            draft.logger
        ));
    }
    for (urls, tls) in [
        (&draft.listen_client_urls, &draft.client_tls),
        (&draft.listen_peer_urls, &draft.peer_tls),
    ] {
        for url in urls.iter().filter(|u| !u.is_https()) {
            if !tls.is_empty() {
                warnings.push(format!(
                    "scheme is HTTP while key and cert files are present; ignoring key and cert files for {url}"
                ));
            }
            if tls.client_cert_auth {
                warnings.push(format!(
                    "scheme is HTTP while --client-cert-auth is enabled; ignoring client cert auth for {url}"
                ));
            }
        }
    }
    let log_level = match draft.log_level.to_ascii_lowercase() {
        level if level.is_empty() => settings::DEFAULT_LOG_LEVEL.to_owned(),
        level => level,
    };

    let auth = auth_options(
        &draft.auth_token,
        draft.bcrypt_cost,
        draft.auth_token_ttl,
        &mut warnings,
    )?;
    let backend_batch =
        resolve_backend_batch(draft.backend_batch_interval, draft.backend_batch_limit);

    let config = MemberConfig {
        name: draft.name,
        data_dir: PathBuf::from(data_dir),
        wal_dir: (!draft.wal_dir.is_empty()).then(|| PathBuf::from(draft.wal_dir)),
        listen_client_urls: draft.listen_client_urls,
        advertise_client_urls: draft.advertise_client_urls,
        listen_peer_urls: draft.listen_peer_urls,
        initial_advertise_peer_urls: draft.initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_token: draft.initial_cluster_token,
        initial_cluster_state: draft.initial_cluster_state,
        heartbeat_interval: Duration::from_millis(draft.heartbeat_ms),
        election_timeout: Duration::from_millis(draft.election_ms),
        snapshot_count: draft.snapshot_count,
        backend_batch,
        max_request_bytes: to_usize("max-request-bytes", draft.max_request_bytes)?,
        quota_backend_bytes,
        max_txn_ops: to_usize("max-txn-ops", draft.max_txn_ops)?,
        max_concurrent_streams: match draft.max_concurrent_streams {
            0 => DEFAULT_MAX_CONCURRENT_STREAMS,
            n => n,
        },
        log_level,
        auto_compaction: crate::compactor::AutoCompaction::parse(
            &draft.auto_compaction_mode,
            &draft.auto_compaction_retention,
        )
        .map_err(ConfigError::Invalid)?,
        watch_progress_notify_interval: draft.watch_progress_notify_interval,
        discovery_endpoints: draft.discovery_endpoints,
        discovery_token: draft.discovery_token,
        strict_reconfig_check: draft.strict_reconfig_check,
        log_outputs: if draft.log_outputs.is_empty() {
            vec![settings::DEFAULT_LOG_OUTPUT.to_owned()]
        } else {
            draft.log_outputs
        },
        log_format: draft.log_format.parse().map_err(ConfigError::Invalid)?,
        listen_metrics_urls: draft.listen_metrics_urls,
        extensive_metrics: match draft.metrics.as_str() {
            "basic" | "" => false,
            "extensive" => true,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown --metrics {other:?} (valid: basic, extensive)"
                )))
            }
        },
        unsafe_no_fsync: draft.unsafe_no_fsync,
        auth,
        client_tls: draft.client_tls,
        peer_tls: draft.peer_tls,
        warnings,
    };
    config.validate()?;
    Ok(config)
}

/// `--auth-token`, `--bcrypt-cost` and `--auth-token-ttl`, checked as etcd
/// checks them. JWT tokens are not implemented: `jwt,...` is served with
/// simple tokens (clients treat tokens as opaque), with a warning.
fn auth_options(
    token: &str,
    bcrypt_cost: u64,
    ttl: u64,
    warnings: &mut Vec<String>,
) -> Result<crate::auth::AuthOptions, ConfigError> {
    match token.split(',').next().unwrap_or_default() {
        "simple" => {}
        "jwt" => warnings.push(format!(
            "--auth-token={token}: JWT tokens are not supported; using simple tokens"
        )),
        other => {
            return Err(ConfigError::Invalid(format!(
                "unknown token type: {other:?} (--auth-token must be simple or jwt,...)"
            )))
        }
    }
    if !(4..=31).contains(&bcrypt_cost) {
        return Err(ConfigError::Invalid(format!(
            "invalid bcrypt-cost: {bcrypt_cost} (must be between 4 and 31)"
        )));
    }
    Ok(crate::auth::AuthOptions {
        bcrypt_cost: bcrypt_cost as u32,
        token_ttl: Duration::from_secs(ttl.max(1)),
    })
}

/// etcd's checks of one side's TLS flags against its listen URLs.
fn validate_tls(
    side: &str,
    prefix: &str,
    tls: &crate::tls::TlsSettings,
    listen: &[EtcdUrl],
) -> Result<(), ConfigError> {
    let invalid = |message: String| Err(ConfigError::Invalid(message));
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return invalid(format!(
            "--{prefix}cert-file and --{prefix}key-file must be given together"
        ));
    }
    for url in listen.iter().filter(|u| u.is_https()) {
        if tls.is_empty() && !tls.auto_tls {
            return invalid(format!(
                "TLS key/cert (--{prefix}cert-file, --{prefix}key-file) must be provided for {side} url {url} with HTTPS scheme"
            ));
        }
    }
    if tls.client_cert_auth && tls.trusted_ca_file.is_none() {
        return invalid(format!(
            "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file: the CA that {side} certificates must be signed by"
        ));
    }
    // A trusted CA alone has the other side's certificate verified (see
    // `tls::server_config`), so these need the CA, not --client-cert-auth.
    if tls.allowed_cn.is_some() && tls.trusted_ca_file.is_none() {
        return invalid(format!(
            "--{prefix}cert-allowed-cn needs --{prefix}trusted-ca-file: only a verified certificate has a common name to check"
        ));
    }
    if tls.crl_file.is_some() && tls.trusted_ca_file.is_none() {
        return invalid(format!(
            "--{}crl-file needs --{prefix}trusted-ca-file",
            if prefix.is_empty() { "client-" } else { prefix }
        ));
    }
    Ok(())
}

/// `--backend-batch-interval` and `--backend-batch-limit`, 0 standing for
/// etcd's defaults as in etcd.
fn resolve_backend_batch(interval: Duration, limit: u64) -> crate::apply::BackendBatch {
    let default = crate::apply::BackendBatch::default();
    crate::apply::BackendBatch {
        interval: if interval.is_zero() {
            default.interval
        } else {
            interval
        },
        limit: if limit == 0 { default.limit } else { limit },
    }
}

fn to_usize(flag: &str, value: u64) -> Result<usize, ConfigError> {
    usize::try_from(value)
        .map_err(|_| ConfigError::Invalid(format!("--{flag} {value} is out of range")))
}

/// A Go boolean flag value: absent means `true`.
fn bool_flag(name: &str, value: Option<&str>) -> Result<bool, ConfigError> {
    match value {
        None => Ok(true),
        Some(text) => values::parse_bool(text).ok_or_else(|| {
            ConfigError::Flag(format!(
                "invalid boolean value {text:?} for --{name}: parse error"
            ))
        }),
    }
}

fn first_duplicate<'a>(urls: impl Iterator<Item = &'a EtcdUrl>) -> Option<&'a EtcdUrl> {
    let mut seen = HashSet::new();
    urls.into_iter().find(|url| !seen.insert(url.as_str()))
}

/// etcd's `advertiseMatchesCluster`: this member's `--initial-cluster` URLs
/// must be its `--initial-advertise-peer-urls`. Like etcd, URLs that differ
/// only in spelling of the same address (`localhost` vs `127.0.0.1`) match;
/// unlike etcd, other host names are compared without DNS.
fn advertise_matches_cluster(
    name: &str,
    cluster_urls: &[EtcdUrl],
    advertised: &[EtcdUrl],
) -> Result<(), ConfigError> {
    let mut a: Vec<&str> = cluster_urls.iter().map(EtcdUrl::as_str).collect();
    let mut b: Vec<&str> = advertised.iter().map(EtcdUrl::as_str).collect();
    a.sort_unstable();
    b.sort_unstable();
    if a == b {
        return Ok(());
    }
    let resolved = |urls: &[EtcdUrl]| {
        let mut out: Vec<String> = urls
            .iter()
            .map(|u| {
                u.bind_addr()
                    .map_or_else(|_| u.host_port().to_owned(), |addr| addr.to_string())
            })
            .collect();
        out.sort_unstable();
        out
    };
    if resolved(cluster_urls) == resolved(advertised) {
        return Ok(());
    }
    let advertised_list = b.join(",");
    let missing: Vec<String> = a
        .iter()
        .filter(|url| !b.contains(url))
        .map(|url| format!("{name}={url}"))
        .collect();
    if !missing.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "--initial-cluster has {} but missing from --initial-advertise-peer-urls={advertised_list}",
            missing.join(",")
        )));
    }
    let extra: Vec<&str> = b.iter().filter(|url| !a.contains(url)).copied().collect();
    let local: Vec<String> = b.iter().map(|url| format!("{name}={url}")).collect();
    if !extra.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "--initial-advertise-peer-urls has {} but missing from --initial-cluster={}",
            extra.join(","),
            local.join(",")
        )));
    }
    Err(ConfigError::Invalid(format!(
        "failed to resolve {advertised_list} to match --initial-cluster={}",
        local.join(",")
    )))
}

#[cfg(test)]
mod tests;
