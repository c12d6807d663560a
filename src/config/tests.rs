//! End-to-end tests of `MemberConfig::from_args`: flags, environment, config
//! file, derived defaults and validation messages, checked against what etcd
//! 3.4/3.5 does with the same input.

use super::*;
use std::io::Write;

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(args: &[&str]) -> Result<MemberConfig, ConfigError> {
    MemberConfig::from_args(args, &no_env())
}

/// The error of parsing `args` and validating them for a bootstrap.
fn error(args: &[&str]) -> String {
    match parse(args).and_then(|c| c.validate_bootstrap().map(|()| c)) {
        Ok(config) => panic!("{args:?} unexpectedly parsed: {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn urls(config_urls: &[EtcdUrl]) -> String {
    format_url_list(config_urls)
}

fn yaml_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    file
}

/// The three-member cluster from etcd's Procfile, member infra1.
const INFRA1: &[&str] = &[
    "--name",
    "infra1",
    "--listen-client-urls",
    "http://127.0.0.1:2379",
    "--advertise-client-urls",
    "http://127.0.0.1:2379",
    "--listen-peer-urls",
    "http://127.0.0.1:12380",
    "--initial-advertise-peer-urls",
    "http://127.0.0.1:12380",
    "--initial-cluster-token",
    "etcd-cluster-1",
    "--initial-cluster",
    "infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380",
    "--initial-cluster-state",
    "new",
    "--enable-pprof",
    "--logger=zap",
    "--log-outputs=stderr",
];

#[test]
fn no_flags_gives_etcd_defaults() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.name, "default");
    assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
    assert_eq!(c.wal_dir, None);
    assert_eq!(urls(&c.listen_client_urls), "http://localhost:2379");
    assert_eq!(urls(&c.advertise_client_urls), "http://localhost:2379");
    assert_eq!(urls(&c.listen_peer_urls), "http://localhost:2380");
    assert_eq!(
        urls(&c.initial_advertise_peer_urls),
        "http://localhost:2380"
    );
    assert_eq!(c.initial_cluster_string(), "default=http://localhost:2380");
    assert_eq!(c.initial_cluster_token, "etcd-cluster");
    assert_eq!(c.initial_cluster_state, ClusterState::New);
    assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(c.election_timeout, Duration::from_millis(1000));
    assert_eq!(c.snapshot_count, 100_000);
    assert_eq!(c.max_request_bytes, 1_572_864);
    assert_eq!(c.quota_backend_bytes, 2 * 1024 * 1024 * 1024);
    assert_eq!(c.max_txn_ops, 128);
    assert_eq!(c.log_level, "info");
    assert_eq!(c.election_ticks(), 10);
    assert_eq!(
        c.warnings,
        vec!["'data-dir' was empty; using default: default.etcd"]
    );
    assert_eq!(
        MemberConfig {
            warnings: Vec::new(),
            ..c
        },
        MemberConfig::default()
    );
    assert!(MemberConfig::default().validate().is_ok());
}

#[test]
fn default_member_has_etcd_well_known_ids() {
    let c = parse(&[]).unwrap();
    let (_, peer_urls) = &c.initial_cluster[0];
    let id = crate::identity::member_id(peer_urls, &c.initial_cluster_token, None);
    assert_eq!(crate::identity::fmt_id(id), "8e9e05c52164694d");
    assert_eq!(
        crate::identity::fmt_id(crate::identity::cluster_id(&[id])),
        "cdf818194e3a8c32"
    );
}

#[test]
fn procfile_member_parses_with_warnings_for_unsupported_flags() {
    let c = parse(INFRA1).unwrap();
    assert_eq!(c.name, "infra1");
    assert_eq!(c.data_dir, PathBuf::from("infra1.etcd"));
    assert_eq!(c.initial_cluster.len(), 3);
    assert_eq!(c.initial_cluster[1].0, "infra2");
    assert_eq!(c.initial_cluster_token, "etcd-cluster-1");
    assert_eq!(
        c.warnings,
        vec![
            "flag --enable-pprof is not supported by localcluster; ignored",
            "'data-dir' was empty; using default: infra1.etcd",
        ]
    );
}

#[test]
fn single_dash_and_equals_spellings_work_end_to_end() {
    let c = parse(&[
        "-name=n1",
        "-data-dir",
        "/tmp/n1",
        "--wal-dir=/tmp/w",
        "-heartbeat-interval",
        "0x32",
    ])
    .unwrap();
    assert_eq!(c.name, "n1");
    assert_eq!(c.data_dir, PathBuf::from("/tmp/n1"));
    assert_eq!(c.wal_dir, Some(PathBuf::from("/tmp/w")));
    assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
    assert!(c.warnings.is_empty());
}

#[test]
fn name_alone_derives_initial_cluster_from_advertise_urls() {
    let c = parse(&["--name", "infra0"]).unwrap();
    assert_eq!(c.initial_cluster_string(), "infra0=http://localhost:2380");
    let c = parse(&[
        "--name",
        "n2",
        "--listen-peer-urls",
        "http://127.0.0.1:22380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:22380,http://localhost:22381",
    ])
    .unwrap();
    assert_eq!(
        c.initial_cluster_string(),
        "n2=http://127.0.0.1:22380,n2=http://localhost:22381"
    );
}

#[test]
fn default_name_with_moved_peer_url_fails_like_etcd() {
    assert_eq!(
        error(&["--listen-peer-urls", "http://127.0.0.1:12380", "--initial-advertise-peer-urls", "http://127.0.0.1:12380"]),
        "--initial-cluster has default=http://localhost:2380 but missing from --initial-advertise-peer-urls=http://127.0.0.1:12380"
    );
}

#[test]
fn advertise_url_missing_from_cluster_is_reported() {
    assert_eq!(
        error(&[
            "--name",
            "a",
            "--initial-cluster",
            "a=http://127.0.0.1:12380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:12380,http://127.0.0.1:12381",
        ]),
        "--initial-advertise-peer-urls has http://127.0.0.1:12381 but missing from --initial-cluster=a=http://127.0.0.1:12380,a=http://127.0.0.1:12381"
    );
}

#[test]
fn localhost_and_loopback_ip_match_as_etcd_resolves_them() {
    let c = parse(&[
        "--name",
        "a",
        "--initial-cluster",
        "a=http://127.0.0.1:2380",
    ])
    .unwrap();
    assert_eq!(
        urls(&c.initial_advertise_peer_urls),
        "http://localhost:2380"
    );
}

#[test]
fn existing_cluster_state_skips_the_advertise_check() {
    let c = parse(&[
        "--name",
        "a",
        "--initial-cluster",
        "a=http://127.0.0.1:9,b=http://127.0.0.1:22380",
        "--initial-cluster-state",
        "existing",
    ])
    .unwrap();
    assert_eq!(c.initial_cluster_state, ClusterState::Existing);
}

#[test]
fn local_name_missing_from_initial_cluster_is_reported() {
    assert_eq!(
        error(&["--name", "x", "--initial-cluster", "a=http://127.0.0.1:1"]),
        "couldn't find local name \"x\" in the initial cluster configuration"
    );
    assert_eq!(
        error(&["--initial-cluster", ""]),
        "couldn't find local name \"default\" in the initial cluster configuration"
    );
}

#[test]
fn duplicate_url_in_initial_cluster_is_reported() {
    assert_eq!(
        error(&["--initial-cluster", "default=http://localhost:2380,other=http://localhost:2380"]),
        "initial cluster default=http://localhost:2380,other=http://localhost:2380 has duplicate url"
    );
}

#[test]
fn duplicate_url_in_a_flag_is_reported() {
    assert_eq!(
        error(&[
            "--listen-client-urls",
            "http://127.0.0.1:2379,http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379"
        ]),
        "--listen-client-urls has duplicate url http://127.0.0.1:2379"
    );
}

#[test]
fn listen_urls_binding_the_same_address_are_reported() {
    assert_eq!(
        error(&[
            "--listen-client-urls",
            "http://127.0.0.1:2380",
            "--advertise-client-urls",
            "http://127.0.0.1:2380"
        ]),
        "listen URLs http://localhost:2380 and http://127.0.0.1:2380 both bind 127.0.0.1:2380"
    );
}

#[test]
fn bad_initial_cluster_syntax_names_the_flag() {
    assert_eq!(
        error(&["--initial-cluster", "infra0"]),
        "invalid value \"infra0\" for flag --initial-cluster: empty URL given for \"infra0\""
    );
    assert_eq!(
        error(&["--initial-cluster", "a=localhost:2380"]),
        "invalid value \"a=localhost:2380\" for flag --initial-cluster: URL scheme must be http, https, unix, or unixs: localhost:2380"
    );
}

#[test]
fn bad_cluster_state_names_the_flag() {
    let err = parse(&["--initial-cluster-state", "maybe"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value \"maybe\" for flag --initial-cluster-state: unexpected clusterState \"maybe\" (valid values are \"new\" and \"existing\")"
    );
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn non_numeric_numbers_name_the_flag() {
    for flag in [
        "--heartbeat-interval",
        "--election-timeout",
        "--snapshot-count",
        "--max-request-bytes",
        "--max-txn-ops",
        "--max-concurrent-streams",
    ] {
        assert_eq!(
            error(&[flag, "fast"]),
            format!("invalid value \"fast\" for flag {flag}: parse error (expected an unsigned integer)")
        );
    }
    assert_eq!(
        error(&["--quota-backend-bytes", "2GB"]),
        "invalid value \"2GB\" for flag --quota-backend-bytes: parse error (expected an integer)"
    );
}

#[test]
fn election_timeout_must_be_five_heartbeats() {
    assert_eq!(
        error(&["--heartbeat-interval", "300"]),
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"
    );
    assert!(parse(&["--heartbeat-interval", "200"]).is_ok());
    assert_eq!(
        error(&["--heartbeat-interval", "0"]),
        "--heartbeat-interval must be >0 (set to 0ms)"
    );
    assert_eq!(
        error(&["--election-timeout", "0"]),
        "--election-timeout must be >0 (set to 0ms)"
    );
    assert_eq!(
        error(&["--election-timeout", "50001"]),
        "--election-timeout[50001ms] is too long, and should be set less than 50000ms"
    );
}

#[test]
fn bad_urls_are_reported_with_the_flag() {
    assert_eq!(
        error(&["--listen-peer-urls", "localhost:2380"]),
        "invalid value \"localhost:2380\" for flag --listen-peer-urls: URL scheme must be http, https, unix, or unixs: localhost:2380"
    );
    let tls = error(&[
        "--listen-client-urls",
        "https://127.0.0.1:2379",
        "--advertise-client-urls",
        "https://127.0.0.1:2379",
    ]);
    assert_eq!(
        tls,
        "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"
    );
    let unix = error(&["--listen-client-urls", "unix://localhost:2379"]);
    assert!(unix.contains("unix sockets are not supported"), "{unix}");
}

#[test]
fn listen_urls_must_be_ip_or_localhost() {
    assert_eq!(
        error(&[
            "--listen-client-urls",
            "http://example.com:2379",
            "--advertise-client-urls",
            "http://example.com:2379"
        ]),
        "expected IP in URL for binding (http://example.com:2379)"
    );
}

#[test]
fn wildcard_listen_url_binds_every_interface() {
    let c = parse(&[
        "--listen-client-urls",
        "http://0.0.0.0:2379",
        "--advertise-client-urls",
        "http://127.0.0.1:2379",
    ])
    .unwrap();
    assert_eq!(
        c.listen_client_urls[0].bind_addr().unwrap(),
        "0.0.0.0:2379".parse().unwrap()
    );
    assert_eq!(
        c.listen_peer_urls[0].bind_addr().unwrap(),
        "127.0.0.1:2380".parse().unwrap()
    );
}

#[test]
fn listen_client_urls_without_advertise_client_urls_is_an_error() {
    let expected =
        "--advertise-client-urls is required when --listen-client-urls is set explicitly";
    assert_eq!(
        error(&["--listen-client-urls", "http://127.0.0.1:2379"]),
        expected
    );
    let err = MemberConfig::from_args(
        Vec::<String>::new(),
        &env(&[("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:2379")]),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), expected);
}

#[test]
fn positional_argument_is_an_error() {
    let err = parse(&["--name", "a", "serve"]).unwrap_err();
    assert_eq!(err.to_string(), "\"serve\" is not a valid flag");
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn unknown_and_obsolete_flags_only_warn() {
    let c = parse(&[
        "--frobnicate",
        "3",
        "--experimental-corrupt-check-time",
        "1h",
        "-v",
        "--name",
        "a",
    ])
    .unwrap();
    assert_eq!(c.name, "a");
    assert_eq!(
        &c.warnings[..3],
        &[
            "unknown flag --frobnicate ignored",
            "flag --experimental-corrupt-check-time is not supported by localcluster; ignored",
            "flag --v is ignored",
        ]
    );
}

#[test]
fn unsupported_boolean_flag_with_bad_value_is_an_error_as_in_go() {
    assert_eq!(
        error(&["--enable-v2=maybe"]),
        "invalid boolean value \"maybe\" for --enable-v2: parse error"
    );
}

#[test]
fn help_and_version_are_distinct_outcomes() {
    assert!(matches!(parse(&["-h"]), Err(ConfigError::HelpRequested)));
    assert!(matches!(
        parse(&["--help"]),
        Err(ConfigError::HelpRequested)
    ));
    assert!(matches!(
        parse(&["--version"]),
        Err(ConfigError::VersionRequested)
    ));
    assert!(matches!(
        parse(&["--name", "a", "-version"]),
        Err(ConfigError::VersionRequested)
    ));
    assert!(parse(&["--version=false"]).is_ok());
    assert_eq!(parse(&["--version"]).unwrap_err().exit_code(), 0);
}

#[test]
fn environment_variables_set_flags() {
    let c = MemberConfig::from_args(
        ["--data-dir", "/tmp/x"],
        &env(&[
            ("ETCD_NAME", "infra2"),
            ("ETCD_INITIAL_CLUSTER", "infra2=http://127.0.0.1:22380"),
            ("ETCD_INITIAL_ADVERTISE_PEER_URLS", "http://127.0.0.1:22380"),
            ("ETCD_LISTEN_PEER_URLS", "http://127.0.0.1:22380"),
            ("ETCD_ELECTION_TIMEOUT", "2000"),
            ("ETCDCTL_API", "3"),
            ("HOME", "/root"),
        ]),
    )
    .unwrap();
    assert_eq!(c.name, "infra2");
    assert_eq!(c.initial_cluster_string(), "infra2=http://127.0.0.1:22380");
    assert_eq!(c.election_timeout, Duration::from_millis(2000));
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn flag_and_its_environment_variable_conflict_as_in_etcd() {
    let err = MemberConfig::from_args(["--name", "a"], &env(&[("ETCD_NAME", "b")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
    );
}

#[test]
fn unknown_environment_variables_warn() {
    let c = MemberConfig::from_args(
        Vec::<String>::new(),
        &env(&[
            ("ETCD_NAMEE", "x"),
            ("ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", "1m"),
        ]),
    )
    .unwrap();
    assert!(c
        .warnings
        .contains(&"unrecognized environment variable ETCD_NAMEE=x".to_owned()));
    assert!(c.warnings.contains(
        &"environment variable ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME (--experimental-corrupt-check-time) is not supported by localcluster; ignored"
            .to_owned()
    ));
}

#[test]
fn bad_environment_value_names_the_variable() {
    let err = MemberConfig::from_args(
        Vec::<String>::new(),
        &env(&[("ETCD_INITIAL_CLUSTER_STATE", "old")]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid value \"old\" for ETCD_INITIAL_CLUSTER_STATE: "),
        "{err}"
    );
}

#[test]
fn config_file_wins_over_flags_and_environment() {
    let file = yaml_file(
        "name: from-file\n\
         data-dir: /tmp/from-file\n\
         listen-peer-urls: http://127.0.0.1:12380\n\
         initial-advertise-peer-urls: http://127.0.0.1:12380\n\
         listen-client-urls: http://127.0.0.1:12379\n\
         advertise-client-urls: http://127.0.0.1:12379\n\
         initial-cluster: from-file=http://127.0.0.1:12380\n\
         heartbeat-interval: 50\n\
         election-timeout: 500\n\
         enable-v2: true\n",
    );
    let path = file.path().to_str().unwrap().to_owned();
    let c = MemberConfig::from_args(
        ["--name", "from-flag", "--config-file", &path, "--bogus"],
        &env(&[("ETCD_DATA_DIR", "/tmp/from-env"), ("ETCD_NAME", "clash")]),
    )
    .unwrap();
    assert_eq!(c.name, "from-file");
    assert_eq!(c.data_dir, PathBuf::from("/tmp/from-file"));
    assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
    assert_eq!(
        c.warnings,
        vec![
            "unknown flag --bogus ignored".to_owned(),
            format!("flag --name ignored because a config file is used ({path})"),
            format!(
                "environment variable ETCD_DATA_DIR ignored because a config file is used ({path})"
            ),
            format!(
                "environment variable ETCD_NAME ignored because a config file is used ({path})"
            ),
            "config file key enable-v2 is not supported by localcluster; ignored".to_owned(),
        ]
    );
}

#[test]
fn config_file_can_come_from_the_environment() {
    let file = yaml_file("name: envfile\n");
    let c = MemberConfig::from_args(
        Vec::<String>::new(),
        &env(&[("ETCD_CONFIG_FILE", file.path().to_str().unwrap())]),
    )
    .unwrap();
    assert_eq!(c.name, "envfile");
    assert_eq!(c.initial_cluster_string(), "envfile=http://localhost:2380");
    assert_eq!(c.data_dir, PathBuf::from("envfile.etcd"));
}

#[test]
fn config_file_keeps_default_advertise_when_only_listen_is_set() {
    // etcd applies the "--advertise-client-urls is required" rule to flags only.
    let file = yaml_file("listen-client-urls: http://127.0.0.1:2379\n");
    let c = MemberConfig::from_yaml_file(file.path()).unwrap();
    assert_eq!(urls(&c.listen_client_urls), "http://127.0.0.1:2379");
    assert_eq!(urls(&c.advertise_client_urls), "http://localhost:2379");
}

#[test]
fn config_file_values_are_validated() {
    let file = yaml_file("heartbeat-interval: 500\n");
    assert_eq!(
        MemberConfig::from_yaml_file(file.path())
            .unwrap_err()
            .to_string(),
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[500ms]"
    );
}

/// The path of a config file holding `contents`, and the error it gives.
fn config_file_error(contents: &str) -> (String, String) {
    let file = yaml_file(contents);
    let path = file.path().to_str().unwrap().to_owned();
    let err = MemberConfig::from_args(["--config-file", &path], &no_env())
        .unwrap_err()
        .to_string();
    (path, err)
}

#[test]
fn bad_config_file_names_file_and_line() {
    let (path, err) = config_file_error("name: a\nelection-timeout: soon\n");
    assert!(
        err.starts_with(&format!("invalid config file {path}: election-timeout: ")),
        "{err}"
    );
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn a_key_given_twice_in_a_config_file_names_both_lines() {
    let (path, err) =
        config_file_error("name: c9\n# the real one:\ndata-dir: /tmp/x\n\"name\": c1\n");
    assert_eq!(
        err,
        format!("invalid config file {path}: line 4: key \"name\" given again (first at line 1)")
    );
    // As etcd's sample file does, starting with a comment.
    let (path, err) = config_file_error("# etcd.conf.yml\n\nname: c9\nname: c1\n");
    assert_eq!(
        err,
        format!("invalid config file {path}: line 4: key \"name\" given again (first at line 3)")
    );
}

#[test]
fn quota_follows_etcd_meaning_of_zero_and_negative() {
    assert_eq!(
        parse(&["--quota-backend-bytes", "0"])
            .unwrap()
            .quota_backend_bytes,
        DEFAULT_QUOTA_BACKEND_BYTES
    );
    assert_eq!(
        parse(&["--quota-backend-bytes", "-1"])
            .unwrap()
            .quota_backend_bytes,
        u64::MAX
    );
    assert_eq!(
        parse(&["--quota-backend-bytes", "4096"])
            .unwrap()
            .quota_backend_bytes,
        4096
    );
    let big = parse(&["--quota-backend-bytes", "10737418240"]).unwrap();
    assert!(
        big.warnings
            .iter()
            .any(|w| w.starts_with("quota-backend-bytes 10737418240 exceeds")),
        "{:?}",
        big.warnings
    );
}

#[test]
fn max_concurrent_streams_is_unlimited_by_default_and_set_by_flag_env_or_file() {
    let defaults = parse(&["--data-dir", "d"]).unwrap();
    assert_eq!(defaults.max_concurrent_streams, u32::MAX);
    let flag = parse(&["--max-concurrent-streams", "300", "--data-dir", "d"]).unwrap();
    assert_eq!(flag.max_concurrent_streams, 300);
    assert!(flag.warnings.is_empty(), "{:?}", flag.warnings);
    // 0 is no limit to grpc-go, so to etcd; never a server that takes no call.
    let zero = parse(&["--max-concurrent-streams", "0", "--data-dir", "d"]).unwrap();
    assert_eq!(zero.max_concurrent_streams, u32::MAX);
    let from_env = MemberConfig::from_args(
        ["--data-dir", "d"],
        &env(&[("ETCD_MAX_CONCURRENT_STREAMS", "7")]),
    )
    .unwrap();
    assert_eq!(from_env.max_concurrent_streams, 7);
    let file = yaml_file("max-concurrent-streams: 1000\n");
    let path = file.path().to_str().unwrap().to_owned();
    let from_file = MemberConfig::from_args(["--config-file", &path], &no_env()).unwrap();
    assert_eq!(from_file.max_concurrent_streams, 1000);
    // A uint32 flag, as in etcd.
    assert_eq!(
        error(&["--max-concurrent-streams", "4294967296"]),
        "invalid value \"4294967296\" for flag --max-concurrent-streams: value out of range (expected an unsigned integer)"
    );
}

#[test]
fn oversized_requests_warn() {
    let c = parse(&["--max-request-bytes", "20971520", "--data-dir", "d"]).unwrap();
    assert_eq!(c.max_request_bytes, 20_971_520);
    assert_eq!(
        c.warnings,
        vec!["max-request-bytes 20971520 exceeds the recommended request limit 10485760"]
    );
}

#[test]
fn log_level_is_checked_and_lowercased() {
    assert_eq!(parse(&["--log-level", "DEBUG"]).unwrap().log_level, "debug");
    assert_eq!(
        error(&["--log-level", "loud"]),
        "unknown log level \"loud\" (valid: debug, info, warn, error, panic, fatal)"
    );
}

#[test]
fn logger_is_accepted() {
    assert!(parse(&["--logger", "zap", "--data-dir", "d"])
        .unwrap()
        .warnings
        .is_empty());
    let c = parse(&["--logger", "capnslog"]).unwrap();
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("--logger=capnslog ignored")));
}

#[test]
fn cluster_state_round_trips() {
    for state in [ClusterState::New, ClusterState::Existing] {
        assert_eq!(state.to_string().parse::<ClusterState>(), Ok(state));
    }
}

#[test]
fn validate_rejects_hand_built_configs_with_duplicate_members() {
    let mut c = MemberConfig::default();
    c.initial_cluster.push(c.initial_cluster[0].clone());
    assert_eq!(
        c.validate_bootstrap().unwrap_err().to_string(),
        "--initial-cluster lists member \"default\" more than once"
    );
}

#[test]
fn auto_compaction_and_progress_notify_flags_are_honoured() {
    use crate::compactor::AutoCompaction;
    let c = parse(&[
        "--auto-compaction-mode",
        "revision",
        "--auto-compaction-retention",
        "1000",
        "--experimental-watch-progress-notify-interval",
        "5s",
    ])
    .unwrap();
    assert!(matches!(
        c.auto_compaction,
        Some(AutoCompaction::Revision {
            retention: 1000,
            ..
        })
    ));
    assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(5));
    let d = parse(&[]).unwrap();
    assert_eq!(d.auto_compaction, None, "off by default, as in etcd");
    assert_eq!(d.watch_progress_notify_interval, Duration::from_secs(600));
    let e = parse(&[
        "--auto-compaction-mode",
        "hourly",
        "--auto-compaction-retention",
        "1",
    ]);
    assert_eq!(
        e.unwrap_err().to_string(),
        "unknown auto-compaction-mode \"hourly\""
    );
    let e = parse(&["--experimental-watch-progress-notify-interval", "soon"]);
    assert_eq!(
        e.unwrap_err().to_string(),
        "invalid value \"soon\" for flag --experimental-watch-progress-notify-interval: parse error"
    );
}

#[test]
fn strict_reconfig_check_is_on_by_default_and_a_boolean_flag() {
    assert!(parse(&[]).unwrap().strict_reconfig_check);
    assert!(
        !parse(&["--strict-reconfig-check=false"])
            .unwrap()
            .strict_reconfig_check
    );
    // Alone it means true and does not take the next argument.
    let c = parse(&["--strict-reconfig-check", "--name", "x"]).unwrap();
    assert!(c.strict_reconfig_check);
    assert_eq!(c.name, "x");
    let c = MemberConfig::from_args(
        Vec::<String>::new(),
        &env(&[("ETCD_STRICT_RECONFIG_CHECK", "false")]),
    )
    .unwrap();
    assert!(!c.strict_reconfig_check);
    let file = yaml_file("strict-reconfig-check: false\n");
    let c = parse(&["--config-file", file.path().to_str().unwrap()]).unwrap();
    assert!(!c.strict_reconfig_check);
    assert!(parse(&["--strict-reconfig-check=maybe"]).is_err());
}

#[test]
fn discovery_flags_are_honoured() {
    let c = parse(&[
        "--discovery-endpoints",
        "127.0.0.1:2379, 127.0.0.1:22379",
        "--discovery-token",
        "tok",
    ])
    .unwrap();
    assert_eq!(
        c.discovery_endpoints,
        vec!["127.0.0.1:2379", "127.0.0.1:22379"]
    );
    assert_eq!(c.discovery_token, "tok");
    assert!(
        c.warnings.iter().all(|w| !w.contains("discovery")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn flags_that_choose_the_cluster_are_refused_not_ignored() {
    // Ignored, --discovery would have each member bootstrap a cluster of its
    // own, and --force-new-cluster would leave a member waiting for a lost
    // quorum: one line saying so, and what to use instead.
    let url = "http://127.0.0.1:2379/v2/keys/_etcd/registry/abc";
    let err = parse(&["--name", "a", "--discovery", url]).unwrap_err();
    assert_eq!(err.exit_code(), 1);
    let text = err.to_string();
    assert!(
        text.starts_with("--discovery is not supported by localcluster: etcd's v2 discovery"),
        "{text}"
    );
    assert!(
        text.contains("--discovery-endpoints and --discovery-token"),
        "{text}"
    );
    assert!(error(&["--discovery-srv=example.com"]).contains("DNS SRV discovery"));
    let force = error(&["--force-new-cluster"]);
    assert!(force.contains("localcluster snapshot restore"), "{force}");
    let env_err = MemberConfig::from_args(
        Vec::<String>::new(),
        &env(&[("ETCD_FORCE_NEW_CLUSTER", "true")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        env_err.starts_with("ETCD_FORCE_NEW_CLUSTER (--force-new-cluster) is not supported"),
        "{env_err}"
    );
    let file = yaml_file(&format!("name: a\ndiscovery: {url}\n"));
    let file_err = parse(&["--config-file", file.path().to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(
        file_err.contains("key discovery is not supported by localcluster"),
        "{file_err}"
    );

    // As every other flag, they are moot beside --version or a config file.
    assert!(matches!(
        parse(&["--discovery", url, "--version"]),
        Err(ConfigError::VersionRequested)
    ));
    let file = yaml_file("name: a\n");
    assert!(parse(&[
        "--force-new-cluster",
        "--config-file",
        file.path().to_str().unwrap()
    ])
    .is_ok());

    // Off, or empty, they change nothing and need no warning beyond the usual.
    for args in [
        &["--force-new-cluster=false"][..],
        &["--force-new-cluster", "--force-new-cluster=false"],
        &["--discovery", ""],
        &["--discovery-srv="],
    ] {
        assert!(parse(args).is_ok(), "{args:?}");
    }
    let file = yaml_file("name: a\ndiscovery:\ndiscovery-srv: ''\nforce-new-cluster: false\n");
    let parsed = parse(&["--config-file", file.path().to_str().unwrap()]);
    assert!(parsed.is_ok(), "{parsed:?}");
}

#[test]
fn unsafe_no_fsync_is_a_go_boolean_flag() {
    assert!(!parse(&[]).unwrap().unsafe_no_fsync);
    // Alone it is true and does not swallow the next argument.
    let c = parse(&["--unsafe-no-fsync", "--name", "n1"]).unwrap();
    assert!(c.unsafe_no_fsync);
    assert_eq!(c.name, "n1");
    assert!(!parse(&["--unsafe-no-fsync=false"]).unwrap().unsafe_no_fsync);
    let env = HashMap::from([("ETCD_UNSAFE_NO_FSYNC".to_owned(), "true".to_owned())]);
    assert!(
        MemberConfig::from_args(Vec::<String>::new(), &env)
            .unwrap()
            .unsafe_no_fsync
    );
    assert!(parse(&["--unsafe-no-fsync=maybe"]).is_err());
}

#[test]
fn log_outputs_and_format_are_honoured() {
    let c = parse(&["--log-outputs", "stdout,/tmp/m.log", "--log-format", "json"]).unwrap();
    assert_eq!(c.log_outputs, vec!["stdout", "/tmp/m.log"]);
    assert_eq!(c.log_format, crate::config::LogFormat::Json);
    let c = parse(&[]).unwrap();
    assert_eq!(c.log_outputs, vec!["default"]);
    assert_eq!(c.log_format, crate::config::LogFormat::Console);
    assert!(matches!(
        parse(&["--log-format", "xml"]),
        Err(ConfigError::Invalid(m)) if m.contains("unknown log format")
    ));
}

#[test]
fn listen_metrics_urls_are_parsed() {
    let c = parse(&[
        "--listen-metrics-urls",
        "http://127.0.0.1:9101,http://127.0.0.1:9102",
    ])
    .unwrap();
    assert_eq!(
        urls(&c.listen_metrics_urls),
        "http://127.0.0.1:9101,http://127.0.0.1:9102"
    );
    assert!(parse(&[]).unwrap().listen_metrics_urls.is_empty());
}

#[test]
fn metrics_level_is_basic_or_extensive() {
    assert!(!parse(&[]).unwrap().extensive_metrics);
    assert!(
        parse(&["--metrics", "extensive"])
            .unwrap()
            .extensive_metrics
    );
    assert!(!parse(&["--metrics=basic"]).unwrap().extensive_metrics);
    assert!(matches!(
        parse(&["--metrics", "everything"]),
        Err(ConfigError::Invalid(m)) if m.contains("valid: basic, extensive")
    ));
}

#[test]
fn https_peer_urls_need_a_peer_certificate_or_auto_tls() {
    let urls = [
        "--listen-peer-urls",
        "https://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "https://127.0.0.1:2380",
        "--initial-cluster",
        "default=https://127.0.0.1:2380",
    ];
    assert_eq!(
        error(&urls),
        "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url https://127.0.0.1:2380 with HTTPS scheme"
    );
    let mut auto = urls.to_vec();
    auto.push("--peer-auto-tls");
    let c = parse(&auto).unwrap();
    assert!(c.peer_tls.auto_tls);
}

#[test]
fn tls_flags_are_read_and_checked_as_etcd_checks_them() {
    let c = parse(&[
        "--cert-file",
        "s.pem",
        "--key-file",
        "s-key.pem",
        "--trusted-ca-file",
        "ca.pem",
        "--client-cert-auth",
        "--client-crl-file=crl.pem",
    ])
    .unwrap();
    assert_eq!(c.client_tls.cert_file.as_deref(), Some(Path::new("s.pem")));
    assert!(c.client_tls.client_cert_auth);
    assert_eq!(c.client_tls.crl_file.as_deref(), Some(Path::new("crl.pem")));
    // The default http:// client URL ignores them, with etcd's warning.
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("scheme is HTTP while key and cert files are present")),
        "{:?}",
        c.warnings
    );
    assert!(error(&["--cert-file", "s.pem"]).contains("must be given together"));
    assert!(error(&["--client-cert-auth"]).contains("needs --trusted-ca-file"));
    assert!(error(&["--client-cert-auth=maybe"]).contains("--client-cert-auth"));
    assert!(error(&["--peer-cert-allowed-cn", "m1"]).contains("needs --peer-trusted-ca-file"));
    assert!(error(&["--client-crl-file", "crl.pem"]).contains("needs --trusted-ca-file"));
    // A CA alone verifies certificates: a CRL or an allowed CN applies.
    let parsed = parse(&["--client-crl-file", "c.pem", "--trusted-ca-file", "ca.pem"]);
    assert!(parsed.is_ok(), "{parsed:?}");
}

#[test]
fn auth_flags_set_bcrypt_cost_and_token_ttl() {
    let c = parse(&["--bcrypt-cost", "4", "--auth-token-ttl", "30"]).unwrap();
    assert_eq!(c.auth.bcrypt_cost, 4);
    assert_eq!(c.auth.token_ttl, Duration::from_secs(30));
    let d = parse(&[]).unwrap();
    assert_eq!(d.auth, crate::auth::AuthOptions::default());
}

#[test]
fn auth_flags_out_of_range_are_refused() {
    assert!(error(&["--bcrypt-cost", "3"]).contains("invalid bcrypt-cost"));
    assert!(error(&["--bcrypt-cost", "32"]).contains("invalid bcrypt-cost"));
    assert!(error(&["--auth-token", "oauth"]).contains("unknown token type"));
}

#[test]
fn jwt_auth_tokens_fall_back_to_simple_tokens_with_a_warning() {
    let c = parse(&[
        "--auth-token",
        "jwt,pub-key=a.pub,priv-key=a,sign-method=RS256",
    ])
    .unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("JWT tokens are not supported")),
        "{:?}",
        c.warnings
    );
}

/// Arbitrary command lines and environments: never a panic (parsing,
/// validation or derived values), and every refusal names what it refuses.
mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    /// Flag names: etcd's (except `config-file`, which would read a file),
    /// and made-up ones.
    fn flag_name() -> impl Strategy<Value = String> {
        let known: Vec<String> = flags::all_flags()
            .map(|(n, _)| n.to_string())
            .filter(|n| n != "config-file")
            .collect();
        prop_oneof![
            4 => proptest::sample::select(known),
            1 => "[a-z][a-z-]{0,10}",
        ]
    }

    fn flag_value() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,12}",
            "-?[0-9]{1,22}",
            "[0-9]{1,6}(ns|us|ms|s|m|h)",
            "(true|false|1|0|t|f|TRUE|yes)",
            "(http|https|unix|ftp)://[a-z0-9.:\\[\\]]{0,16}(,http://[a-z0-9.:]{0,12})?",
            "[a-z0-9]{1,4}=(http://[a-z0-9.:]{0,12})?(,[a-z0-9]{0,4}=.{0,8})?",
            Just(String::new()),
        ]
    }

    fn arg() -> impl Strategy<Value = Vec<String>> {
        prop_oneof![
            4 => (flag_name(), flag_value()).prop_map(|(n, v)| vec![format!("--{n}={v}")]),
            3 => (flag_name(), flag_value()).prop_map(|(n, v)| vec![format!("--{n}"), v]),
            1 => flag_name().prop_map(|n| vec![format!("-{n}")]),
            1 => ".{0,8}".prop_map(|s| vec![s]),
        ]
    }

    /// Builds, validates and derives everything a member start would.
    fn exercise(args: &[String], env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let config = MemberConfig::from_args(args, env)?;
        config.validate()?;
        config.validate_bootstrap()?;
        let _ = (config.election_ticks(), config.initial_cluster_string());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn arbitrary_flags_never_panic_and_bad_ones_are_named(
            args in proptest::collection::vec(arg(), 0..6),
        ) {
            let args: Vec<String> = args.into_iter().flatten().collect();
            if let Err(ConfigError::Flag(message)) = exercise(&args, &no_env()) {
                // The message quotes the offending argument or names its flag.
                let named = args.iter().any(|a| {
                    let name = a.trim_start_matches('-').split('=').next().unwrap_or("");
                    (!name.is_empty() && message.contains(name))
                        || message.contains(a.as_str())
                        || message.contains(&format!("{a:?}"))
                });
                prop_assert!(named, "{message:?} names none of {args:?}");
            }
        }

        #[test]
        fn arbitrary_environments_never_panic_and_bad_ones_are_named(
            vars in proptest::collection::vec((flag_name(), flag_value()), 0..6),
        ) {
            let env: HashMap<String, String> =
                vars.iter().map(|(n, v)| (env::env_key(n), v.clone())).collect();
            if let Err(ConfigError::Env(message)) = exercise(&[], &env) {
                let named = env.keys().any(|k| message.contains(k.as_str()));
                prop_assert!(named, "{message:?} names none of {env:?}");
            }
        }
    }
}

#[test]
fn backend_batch_defaults_to_etcds_and_zero_means_default() {
    let default = crate::apply::BackendBatch {
        interval: std::time::Duration::from_millis(100),
        limit: 10_000,
    };
    assert_eq!(parse(&[]).unwrap().backend_batch, default);
    let zeros = [
        "--backend-batch-interval",
        "0",
        "--backend-batch-limit",
        "0",
    ];
    assert_eq!(parse(&zeros).unwrap().backend_batch, default);
}

#[test]
fn backend_batch_comes_from_flags_environment_and_config_file() {
    let c = parse(&[
        "--backend-batch-interval",
        "1.5s",
        "--backend-batch-limit=500",
    ])
    .unwrap();
    assert_eq!(
        c.backend_batch.interval,
        std::time::Duration::from_millis(1500)
    );
    assert_eq!(c.backend_batch.limit, 500);

    let c = MemberConfig::from_args(
        Vec::<&str>::new(),
        &env(&[
            ("ETCD_BACKEND_BATCH_INTERVAL", "250ms"),
            ("ETCD_BACKEND_BATCH_LIMIT", "20"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.backend_batch.interval,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(c.backend_batch.limit, 20);

    // etcd's config file holds the interval as a Go duration: nanoseconds.
    let file = yaml_file("backend-batch-interval: 2000000000\nbackend-batch-limit: 7\n");
    let c = MemberConfig::from_yaml_file(file.path()).unwrap();
    assert_eq!(c.backend_batch.interval, std::time::Duration::from_secs(2));
    assert_eq!(c.backend_batch.limit, 7);
}

#[test]
fn bad_backend_batch_values_name_the_flag() {
    assert_eq!(
        error(&["--backend-batch-interval", "soon"]),
        "invalid value \"soon\" for flag --backend-batch-interval: parse error"
    );
    assert_eq!(
        error(&["--backend-batch-limit", "-1"]),
        "invalid value \"-1\" for flag --backend-batch-limit: parse error (expected an unsigned integer)"
    );
}
