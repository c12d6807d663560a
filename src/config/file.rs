//! The `--config-file` YAML, read as etcd reads `etcd.conf.yml`.
//!
//! Keys are the flag names (`name`, `data-dir`, `listen-client-urls`, ...).
//! Value types follow etcd's `embed.Config` JSON fields: URL lists and
//! `initial-cluster` are comma-separated strings, `heartbeat-interval` and the
//! other counts are integers (a quoted number is refused, as etcd refuses it),
//! string settings accept any scalar (`name: 1` is the name "1", as etcd's YAML
//! loader converts it). A key with no value (`wal-dir:`) or an empty URL list
//! leaves the default. TLS settings are read from etcd's
//! `client-transport-security` and `peer-transport-security` sections
//! (`cert-file`, `key-file`, `client-cert-auth`, `trusted-ca-file`,
//! `auto-tls`). Keys etcd knows but localcluster does not implement, and
//! unknown keys, produce warnings. A syntax error or bad value is an error
//! naming the file, the key and the line (serde_yaml's location).

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::error::ConfigError;
use super::flags::{lookup, refusal, FlagKind, FILE_ONLY_KEYS, SECURITY_KEYS, SECURITY_SECTIONS};
use super::settings::{Draft, Setting, UnknownClusterState};
use super::urls::{parse_initial_cluster, parse_url_list, EtcdUrl, InitialCluster};
use super::ClusterState;

/// Reads `path` into a draft, with warnings about keys that are ignored.
pub fn load(path: &Path) -> Result<(Draft, Vec<String>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadConfigFile {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |message: String| ConfigError::ConfigFile {
        path: path.to_owned(),
        message,
    };

    let document: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| invalid(with_duplicate_line(&text, e)))?;
    let mapping = match document {
        // An empty file (or one with only comments) sets nothing.
        serde_yaml::Value::Null => return Ok((Draft::new(), Vec::new())),
        serde_yaml::Value::Mapping(mapping) => mapping,
        _ => {
            return Err(invalid(
                "expected a mapping of flag names to values at the top level".into(),
            ))
        }
    };
    let mut warnings = Vec::new();
    for (key, value) in &mapping {
        let Some(key) = key.as_str() else {
            warnings.push(format!(
                "unknown config file key {} ignored",
                scalar_text(key)
            ));
            continue;
        };
        match lookup(key) {
            Some(FlagKind::Setting(s)) if s.is_tls() => warnings.push(format!(
                "config file key {key} ignored at the top level; TLS settings go under client-transport-security / peer-transport-security"
            )),
            Some(FlagKind::Setting(_)) => {}
            _ if SECURITY_SECTIONS.contains(&key) => {
                if let serde_yaml::Value::Mapping(section) = value {
                    for (sub, v) in section {
                        let sub = sub.as_str().unwrap_or("?");
                        if !SECURITY_KEYS.contains(&sub) && !v.is_null() {
                            warnings.push(format!(
                                "config file key {key}.{sub} is not supported by localcluster; ignored"
                            ));
                        }
                    }
                }
            }
            Some(FlagKind::Unsupported { .. }) => {
                let given = match value {
                    serde_yaml::Value::Null => String::new(),
                    serde_yaml::Value::String(text) => text.clone(),
                    other => scalar_text(other),
                };
                if let Some(reason) = refusal(key, &given) {
                    return Err(invalid(format!(
                        "key {key} is not supported by localcluster: {reason}"
                    )));
                }
                if !value.is_null() {
                    warnings.push(format!(
                        "config file key {key} is not supported by localcluster; ignored"
                    ));
                }
            }
            _ if FILE_ONLY_KEYS.contains(&key) => {
                if !value.is_null() {
                    warnings.push(format!(
                        "config file key {key} is not supported by localcluster; ignored"
                    ));
                }
            }
            _ => warnings.push(format!("unknown config file key {key} ignored")),
        }
    }

    let file: FileConfig = serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    Ok((file.into_draft(), warnings))
}

/// serde_yaml's message, with the lines of a duplicate top-level key, which
/// it does not give (etcd takes the last value silently; a repeated key is
/// more likely a mistake, so it is refused, pointing at both).
fn with_duplicate_line(text: &str, e: serde_yaml::Error) -> String {
    let message = e.to_string();
    // serde_yaml names where the mapping starts (` at line 2 column 1`),
    // unless that is the file's very start.
    let Some(key) = message
        .strip_prefix("duplicate entry with key \"")
        .and_then(|rest| {
            rest.split_once("\" at line ")
                .map_or(rest.strip_suffix('"'), |(k, _)| Some(k))
        })
    else {
        return message;
    };
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            [key.to_owned(), format!("\"{key}\""), format!("'{key}'")]
                .iter()
                .any(|k| {
                    line.strip_prefix(k.as_str())
                        .is_some_and(|r| r.trim_start().starts_with(':'))
                })
        })
        .map(|(i, _)| i + 1)
        .collect();
    match lines[..] {
        [first, second, ..] => {
            format!("line {second}: key {key:?} given again (first at line {first})")
        }
        _ => message,
    }
}

fn scalar_text(value: &serde_yaml::Value) -> String {
    serde_yaml::to_string(value).map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned())
}

/// The supported keys; everything else is ignored by serde and warned about
/// by [`load`].
#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    name: Option<Text>,
    #[serde(rename = "data-dir")]
    data_dir: Option<Text>,
    #[serde(rename = "wal-dir")]
    wal_dir: Option<Text>,
    #[serde(rename = "listen-client-urls")]
    listen_client_urls: Option<Urls>,
    #[serde(rename = "advertise-client-urls")]
    advertise_client_urls: Option<Urls>,
    #[serde(rename = "listen-peer-urls")]
    listen_peer_urls: Option<Urls>,
    #[serde(rename = "initial-advertise-peer-urls")]
    initial_advertise_peer_urls: Option<Urls>,
    #[serde(rename = "initial-cluster")]
    initial_cluster: Option<Cluster>,
    #[serde(rename = "initial-cluster-token")]
    initial_cluster_token: Option<Text>,
    #[serde(rename = "initial-cluster-state")]
    initial_cluster_state: Option<State>,
    #[serde(rename = "heartbeat-interval")]
    heartbeat_interval: Option<u64>,
    #[serde(rename = "election-timeout")]
    election_timeout: Option<u64>,
    #[serde(rename = "snapshot-count")]
    snapshot_count: Option<u64>,
    /// Nanoseconds, as etcd's config file holds a Go duration.
    #[serde(rename = "backend-batch-interval")]
    backend_batch_interval: Option<u64>,
    #[serde(rename = "backend-batch-limit")]
    backend_batch_limit: Option<u64>,
    #[serde(rename = "max-request-bytes")]
    max_request_bytes: Option<u64>,
    #[serde(rename = "quota-backend-bytes")]
    quota_backend_bytes: Option<i64>,
    #[serde(rename = "max-txn-ops")]
    max_txn_ops: Option<u64>,
    #[serde(rename = "max-concurrent-streams")]
    max_concurrent_streams: Option<u32>,
    #[serde(rename = "log-level")]
    log_level: Option<Text>,
    logger: Option<Text>,
    #[serde(rename = "strict-reconfig-check")]
    strict_reconfig_check: Option<bool>,
    #[serde(rename = "log-outputs")]
    log_outputs: Option<TextList>,
    #[serde(rename = "log-format")]
    log_format: Option<Text>,
    #[serde(rename = "listen-metrics-urls")]
    listen_metrics_urls: Option<Urls>,
    metrics: Option<Text>,
    #[serde(rename = "unsafe-no-fsync")]
    unsafe_no_fsync: Option<Bool>,
    #[serde(rename = "auth-token")]
    auth_token: Option<Text>,
    #[serde(rename = "bcrypt-cost")]
    bcrypt_cost: Option<u64>,
    #[serde(rename = "auth-token-ttl")]
    auth_token_ttl: Option<u64>,
    #[serde(rename = "client-transport-security")]
    client_security: Option<Security>,
    #[serde(rename = "peer-transport-security")]
    peer_security: Option<Security>,
}

/// A `*-transport-security` section (etcd's `securityConfig`).
#[derive(Debug, Default, Deserialize)]
struct Security {
    #[serde(rename = "cert-file")]
    cert_file: Option<Text>,
    #[serde(rename = "key-file")]
    key_file: Option<Text>,
    #[serde(rename = "client-cert-auth")]
    client_cert_auth: Option<bool>,
    #[serde(rename = "trusted-ca-file")]
    trusted_ca_file: Option<Text>,
    #[serde(rename = "auto-tls")]
    auto_tls: Option<bool>,
}

impl Security {
    fn apply(self, tls: &mut crate::tls::TlsSettings) {
        let path = |t: Option<Text>| {
            t.filter(|Text(p)| !p.is_empty())
                .map(|Text(p)| std::path::PathBuf::from(p))
        };
        if let Some(p) = path(self.cert_file) {
            tls.cert_file = Some(p);
        }
        if let Some(p) = path(self.key_file) {
            tls.key_file = Some(p);
        }
        if let Some(p) = path(self.trusted_ca_file) {
            tls.trusted_ca_file = Some(p);
        }
        if let Some(b) = self.client_cert_auth {
            tls.client_cert_auth = b;
        }
        if let Some(b) = self.auto_tls {
            tls.auto_tls = b;
        }
    }
}

impl FileConfig {
    fn into_draft(self) -> Draft {
        let mut draft = Draft::new();
        let mut text =
            |setting: Setting, value: Option<Text>, field: fn(&mut Draft) -> &mut String| {
                if let Some(Text(value)) = value {
                    *field(&mut draft) = value;
                    draft.mark_set(setting);
                }
            };
        text(Setting::Name, self.name, |d| &mut d.name);
        text(Setting::DataDir, self.data_dir, |d| &mut d.data_dir);
        text(Setting::WalDir, self.wal_dir, |d| &mut d.wal_dir);
        text(
            Setting::InitialClusterToken,
            self.initial_cluster_token,
            |d| &mut d.initial_cluster_token,
        );
        text(Setting::LogLevel, self.log_level, |d| &mut d.log_level);
        text(Setting::Logger, self.logger, |d| &mut d.logger);
        text(Setting::LogFormat, self.log_format, |d| &mut d.log_format);
        text(Setting::Metrics, self.metrics, |d| &mut d.metrics);
        text(Setting::AuthToken, self.auth_token, |d| &mut d.auth_token);
        if let Some(TextList(outputs)) = self.log_outputs {
            draft.log_outputs = outputs;
            draft.mark_set(Setting::LogOutputs);
        }
        if let Some(Bool(on)) = self.unsafe_no_fsync {
            draft.unsafe_no_fsync = on;
            draft.mark_set(Setting::UnsafeNoFsync);
        }
        if let Some(s) = self.client_security {
            s.apply(&mut draft.client_tls);
        }
        if let Some(s) = self.peer_security {
            s.apply(&mut draft.peer_tls);
        }

        for (setting, value) in [
            (Setting::ListenClientUrls, self.listen_client_urls),
            (Setting::AdvertiseClientUrls, self.advertise_client_urls),
            (Setting::ListenPeerUrls, self.listen_peer_urls),
            (Setting::ListenMetricsUrls, self.listen_metrics_urls),
            (
                Setting::InitialAdvertisePeerUrls,
                self.initial_advertise_peer_urls,
            ),
        ] {
            // As in etcd, an empty string leaves the default in place.
            if let Some(Urls(Some(urls))) = value {
                *draft.urls_mut(setting) = urls;
                draft.mark_set(setting);
            }
        }
        if let Some(Cluster(cluster)) = self.initial_cluster {
            draft.initial_cluster = cluster;
            draft.mark_set(Setting::InitialCluster);
        }
        if let Some(State(state)) = self.initial_cluster_state {
            draft.initial_cluster_state = state;
            draft.mark_set(Setting::InitialClusterState);
        }

        let mut number =
            |setting: Setting, value: Option<u64>, field: fn(&mut Draft) -> &mut u64| {
                if let Some(value) = value {
                    *field(&mut draft) = value;
                    draft.mark_set(setting);
                }
            };
        number(Setting::HeartbeatInterval, self.heartbeat_interval, |d| {
            &mut d.heartbeat_ms
        });
        number(Setting::ElectionTimeout, self.election_timeout, |d| {
            &mut d.election_ms
        });
        number(Setting::SnapshotCount, self.snapshot_count, |d| {
            &mut d.snapshot_count
        });
        number(Setting::BackendBatchLimit, self.backend_batch_limit, |d| {
            &mut d.backend_batch_limit
        });
        number(Setting::MaxRequestBytes, self.max_request_bytes, |d| {
            &mut d.max_request_bytes
        });
        number(Setting::MaxTxnOps, self.max_txn_ops, |d| &mut d.max_txn_ops);
        number(Setting::BcryptCost, self.bcrypt_cost, |d| {
            &mut d.bcrypt_cost
        });
        number(Setting::AuthTokenTtl, self.auth_token_ttl, |d| {
            &mut d.auth_token_ttl
        });
        if let Some(nanos) = self.backend_batch_interval {
            draft.backend_batch_interval = std::time::Duration::from_nanos(nanos);
            draft.mark_set(Setting::BackendBatchInterval);
        }
        if let Some(streams) = self.max_concurrent_streams {
            draft.max_concurrent_streams = streams;
            draft.mark_set(Setting::MaxConcurrentStreams);
        }
        if let Some(quota) = self.quota_backend_bytes {
            draft.quota_backend_bytes = quota;
            draft.mark_set(Setting::QuotaBackendBytes);
        }
        if let Some(strict) = self.strict_reconfig_check {
            draft.strict_reconfig_check = strict;
            draft.mark_set(Setting::StrictReconfigCheck);
        }
        draft
    }
}

/// Deserializes a YAML scalar as text and converts it with `convert`.
///
/// The conversion runs inside the visitor so that serde_yaml attaches the key
/// and line to a conversion error.
fn scalar<'de, D, T>(
    deserializer: D,
    convert: fn(String) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct ScalarVisitor<T> {
        convert: fn(String) -> Result<T, String>,
    }
    impl<T> ScalarVisitor<T> {
        fn finish<E: de::Error>(self, text: String) -> Result<T, E> {
            (self.convert)(text).map_err(E::custom)
        }
    }
    impl<T> Visitor<'_> for ScalarVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            self.finish(v.to_owned())
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
            self.finish(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            self.finish(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            self.finish(v.to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            self.finish(v.to_string())
        }
    }
    deserializer.deserialize_any(ScalarVisitor { convert })
}

/// A string setting: any YAML scalar, taken as text.
#[derive(Debug)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, |text| Ok(Text(text)))
    }
}

/// A list of strings: a YAML sequence (etcd's `log-outputs: [stderr]`) or
/// one comma-separated scalar.
#[derive(Debug)]
struct TextList(Vec<String>);

impl<'de> Deserialize<'de> for TextList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            List(Vec<String>),
            One(Text),
        }
        Ok(TextList(match Shape::deserialize(deserializer)? {
            Shape::List(items) => items,
            Shape::One(Text(text)) => super::settings::split_list(&text),
        }))
    }
}

/// A boolean: YAML `true`/`false`, or Go's spellings as text.
#[derive(Debug)]
struct Bool(bool);

impl<'de> Deserialize<'de> for Bool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, |text| {
            super::values::parse_bool(&text)
                .map(Bool)
                .ok_or_else(|| format!("invalid boolean {text:?}"))
        })
    }
}

/// A comma-separated URL list; `None` for the empty string.
#[derive(Debug)]
struct Urls(Option<Vec<EtcdUrl>>);

impl<'de> Deserialize<'de> for Urls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, |text| {
            if text.is_empty() {
                return Ok(Urls(None));
            }
            parse_url_list(&text)
                .map(|urls| Urls(Some(urls)))
                .map_err(|e| e.to_string())
        })
    }
}

/// An `initial-cluster` string.
#[derive(Debug)]
struct Cluster(InitialCluster);

impl<'de> Deserialize<'de> for Cluster {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, |text| {
            parse_initial_cluster(&text)
                .map(Cluster)
                .map_err(|e| e.to_string())
        })
    }
}

/// An `initial-cluster-state`; empty means `new`, as in etcd.
#[derive(Debug)]
struct State(ClusterState);

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        scalar(deserializer, |text| {
            if text.is_empty() {
                return Ok(State(ClusterState::New));
            }
            text.parse()
                .map(State)
                .map_err(|e: UnknownClusterState| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn write(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file
    }

    fn load_str(contents: &str) -> Result<(Draft, Vec<String>), ConfigError> {
        let file = write(contents);
        load(file.path())
    }

    #[test]
    fn classic_etcd_yaml_keys_are_read() {
        let (d, warnings) = load_str(
            "name: infra0\n\
             data-dir: /var/lib/etcd/infra0\n\
             wal-dir:\n\
             snapshot-count: 5000\n\
             heartbeat-interval: 50\n\
             election-timeout: 500\n\
             quota-backend-bytes: 0\n\
             listen-peer-urls: http://127.0.0.1:12380\n\
             listen-client-urls: http://127.0.0.1:12379,http://localhost:12379\n\
             initial-advertise-peer-urls: http://127.0.0.1:12380\n\
             advertise-client-urls: http://127.0.0.1:12379\n\
             initial-cluster: infra0=http://127.0.0.1:12380,infra1=http://127.0.0.1:22380\n\
             initial-cluster-token: 'tok'\n\
             initial-cluster-state: 'new'\n\
             max-txn-ops: 256\n\
             max-request-bytes: 2097152\n\
             log-level: debug\n\
             logger: zap\n",
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(d.name, "infra0");
        assert_eq!(d.data_dir, "/var/lib/etcd/infra0");
        assert_eq!(d.wal_dir, "");
        assert_eq!(
            (d.heartbeat_ms, d.election_ms, d.snapshot_count),
            (50, 500, 5000)
        );
        assert_eq!(d.listen_client_urls.len(), 2);
        assert_eq!(d.initial_cluster.len(), 2);
        assert_eq!(d.initial_cluster_token, "tok");
        assert_eq!((d.max_txn_ops, d.max_request_bytes), (256, 2_097_152));
        assert_eq!(d.log_level, "debug");
        assert!(d.is_set(Setting::ListenClientUrls));
        assert!(!d.is_set(Setting::WalDir));
    }

    #[test]
    fn sample_file_keys_that_are_unsupported_warn_only_when_set() {
        let (_, warnings) = load_str(
            "name: a\n\
             enable-v2: true\n\
             discovery:\n\
             experimental-corrupt-check-time: 1m\n\
             client-transport-security:\n  cert-file:\n  auto-tls: false\n  allowed-cn: x\n\
             peer-transport-security:\n\
             frobnicate: 3\n",
        )
        .unwrap();
        assert_eq!(
            warnings,
            vec![
                "config file key enable-v2 is not supported by localcluster; ignored",
                "config file key experimental-corrupt-check-time is not supported by localcluster; ignored",
                "config file key client-transport-security.allowed-cn is not supported by localcluster; ignored",
                "unknown config file key frobnicate ignored",
            ]
        );
    }

    #[test]
    fn transport_security_sections_and_auth_keys_are_read() {
        let (d, warnings) = load_str(
            "name: a\n\
             bcrypt-cost: 4\n\
             auth-token: simple\n\
             client-transport-security:\n  cert-file: /etc/s.pem\n  key-file: /etc/s-key.pem\n  client-cert-auth: true\n  trusted-ca-file: /etc/ca.pem\n\
             peer-transport-security:\n  auto-tls: true\n",
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(d.bcrypt_cost, 4);
        assert_eq!(
            d.client_tls.cert_file.as_deref(),
            Some(Path::new("/etc/s.pem"))
        );
        assert!(d.client_tls.client_cert_auth);
        assert!(d.peer_tls.auto_tls);
        assert!(d.peer_tls.is_empty());
    }

    #[test]
    fn scalars_become_text_for_string_keys() {
        let (d, _) = load_str("name: 123\ninitial-cluster-token: true\n").unwrap();
        assert_eq!(d.name, "123");
        assert_eq!(d.initial_cluster_token, "true");
    }

    #[test]
    fn empty_url_strings_keep_defaults_and_empty_state_is_new() {
        let (d, _) = load_str("listen-client-urls: ''\ninitial-cluster-state: ''\n").unwrap();
        assert_eq!(d.listen_client_urls[0].as_str(), "http://localhost:2379");
        assert!(!d.is_set(Setting::ListenClientUrls));
        assert_eq!(d.initial_cluster_state, ClusterState::New);
    }

    #[test]
    fn empty_file_sets_nothing() {
        let (d, w) = load_str("# nothing here\n").unwrap();
        assert_eq!(d.name, "default");
        assert!(w.is_empty());
    }

    #[test]
    fn quoted_number_is_an_error_naming_key_and_line() {
        let file = write("name: a\nheartbeat-interval: '100'\n");
        let err = load(file.path()).unwrap_err().to_string();
        let path = file.path().display().to_string();
        assert!(
            err.starts_with(&format!("invalid config file {path}: heartbeat-interval: ")),
            "{err}"
        );
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_url_is_an_error_naming_key_and_line() {
        let err = load_str("name: a\n\nlisten-peer-urls: ftp://127.0.0.1:2380\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("listen-peer-urls: URL scheme must be http, https, unix, or unixs: ftp://127.0.0.1:2380"),
            "{err}"
        );
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_cluster_state_is_an_error_naming_key_and_line() {
        let err = load_str("initial-cluster-state: maybe\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("initial-cluster-state: unexpected clusterState \"maybe\""),
            "{err}"
        );
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn bad_initial_cluster_is_an_error() {
        let err = load_str("initial-cluster: a=,b=http://x:1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("initial-cluster: empty URL given for \"a\""),
            "{err}"
        );
    }

    #[test]
    fn yaml_syntax_error_names_file_and_line() {
        let err = load_str("name: a\nlisten-peer-urls: [unclosed\n").unwrap_err();
        assert!(matches!(err, ConfigError::ConfigFile { .. }));
        assert!(err.to_string().contains("line"), "{err}");
    }

    #[test]
    fn negative_count_is_an_error() {
        let err = load_str("max-txn-ops: -1\n").unwrap_err().to_string();
        assert!(err.contains("max-txn-ops: "), "{err}");
    }

    #[test]
    fn non_mapping_top_level_is_an_error() {
        let err = load_str("- a\n- b\n").unwrap_err().to_string();
        assert!(err.contains("expected a mapping"), "{err}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&dir.path().join("nope.yml")).unwrap_err();
        assert!(matches!(err, ConfigError::ReadConfigFile { .. }));
        assert!(err.to_string().starts_with("cannot read config file "));
    }

    /// One line of a config file: a known or made-up key with a value of any
    /// shape, a comment, an indented line, or anything.
    fn yaml_line() -> impl Strategy<Value = String> {
        let known: Vec<&'static str> = crate::config::flags::all_flags()
            .map(|(n, _)| n)
            .chain(SECURITY_SECTIONS.iter().copied())
            .collect();
        let key = prop_oneof![
            4 => proptest::sample::select(known).prop_map(str::to_string),
            1 => "[a-z][a-z-]{0,10}",
        ];
        let value = prop_oneof![
            ".{0,12}",
            "-?[0-9]{1,22}",
            "\\[.{0,10}\\]",
            "\\{.{0,10}\\}",
            "'.{0,8}'",
            "\"[^\"]{0,8}\"",
            "(true|false|yes|no|~|null|0x1F|1e9|.inf)",
            "http://[a-z0-9.:]{0,12}(,https://[a-z0-9.:]{0,12})?",
            Just(String::new()),
        ];
        prop_oneof![
            6 => (key, value).prop_map(|(k, v)| format!("{k}: {v}")),
            1 => "#.{0,12}",
            1 => "  [a-z-]{1,12}: .{0,10}",
            1 => "- .{0,8}",
            1 => ".{0,20}",
        ]
    }

    /// The line numbers a message points at (`line N`).
    fn lines_named(message: &str) -> Vec<usize> {
        message
            .match_indices("line ")
            .filter_map(|(at, _)| {
                let digits: String = message[at + 5..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn arbitrary_files_never_panic_and_errors_name_the_file(
            lines in proptest::collection::vec(yaml_line(), 0..8),
            crlf in any::<bool>(),
        ) {
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            let file = write(&text);
            if let Err(e) = load(file.path()) {
                let message = e.to_string();
                let path = file.path().display().to_string();
                prop_assert!(message.contains(&path), "{message:?} does not name {path}");
                // Lines as YAML 1.1 counts them: a lone CR breaks a line too,
                // and so do NEL, LS and PS.
                let yaml_lines = text
                    .replace("\r\n", "\n")
                    .split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
                    .count();
                for line in lines_named(&message) {
                    prop_assert!(
                        (1..=yaml_lines + 1).contains(&line),
                        "{message:?} points past the {yaml_lines} lines of {text:?}"
                    );
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(&bytes).unwrap();
            if let Err(e) = load(file.path()) {
                let path = file.path().display().to_string();
                prop_assert!(e.to_string().contains(&path), "{e}");
            }
        }

        #[test]
        fn a_bad_number_is_reported_with_its_key_and_line(
            before in 0usize..5,
            key in proptest::sample::select(vec![
                "heartbeat-interval", "election-timeout", "snapshot-count",
                "max-request-bytes", "max-txn-ops", "max-concurrent-streams", "bcrypt-cost",
                "auth-token-ttl",
            ]),
            bad in prop_oneof!["x[a-z]{0,7}", "-[1-9][0-9]{0,5}", "[1-9][0-9]{24}", "'[0-9]{1,4}'", "\\[1\\]"],
        ) {
            let mut text: String = (0..before).map(|i| format!("# comment {i}\n")).collect();
            text.push_str(&format!("{key}: {bad}\nname: n\n"));
            let message = load_str(&text).unwrap_err().to_string();
            prop_assert!(message.contains(key), "{message:?} does not name {key}");
            prop_assert!(
                lines_named(&message).contains(&(before + 1)),
                "{message:?} does not point at line {}", before + 1
            );
        }
    }

    #[test]
    fn operations_keys_are_read() {
        let (d, warnings) = load_str(
            "log-outputs: [stderr, /var/log/m.log]\n\
             log-format: json\n\
             listen-metrics-urls: http://127.0.0.1:9101\n\
             unsafe-no-fsync: true\n",
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(d.log_outputs, vec!["stderr", "/var/log/m.log"]);
        assert_eq!(d.log_format, "json");
        assert_eq!(d.listen_metrics_urls[0].as_str(), "http://127.0.0.1:9101");
        assert!(d.unsafe_no_fsync);
        let (d, _) = load_str("log-outputs: stdout\n").unwrap();
        assert_eq!(d.log_outputs, vec!["stdout"]);
    }
}
