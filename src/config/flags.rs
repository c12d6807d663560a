//! etcd's command-line flags: which exist, and how Go's `flag` package splits argv.
//!
//! The table answers, for every flag etcd 3.4–3.6 defines, whether localcluster
//! honours it ([`FlagKind::Setting`]), handles it specially (`--config-file`,
//! `--version`), accepts and ignores it with a warning ([`FlagKind::Unsupported`])
//! or, like etcd, silently drops a long-obsolete one ([`FlagKind::Obsolete`]).
//! Three unsupported flags that decide which cluster a member forms are refused
//! instead of ignored ([`refusal`]).
//! Whether a flag is boolean matters to the tokenizer: booleans never take the
//! next argument as their value.
//!
//! [`tokenize`] follows Go's `flag.FlagSet.Parse`: `-f`, `--f`, `-f=v`, `--f=v`,
//! `-f v`, `--f v`; a boolean stands alone or takes `=v`; `--` ends the flags;
//! `-h`/`-help` request help. Deviation by design: a flag etcd does not know is
//! not an error but a warning, and if written `--x value` it takes `value` when
//! that does not start with `-`. A positional argument is an error, worded as
//! etcd words it.

use super::error::ConfigError;
use super::settings::Setting;

/// What a known flag does in localcluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// Honoured: sets a member setting.
    Setting(Setting),
    /// `--config-file PATH`.
    ConfigFile,
    /// `--version` (boolean).
    Version,
    /// An etcd flag localcluster accepts but ignores, with a warning.
    Unsupported { boolean: bool },
    /// A flag etcd itself accepts and ignores (its `ignored` list); boolean-like.
    Obsolete,
}

impl FlagKind {
    /// Whether the flag is boolean (stands alone, never takes the next argument).
    pub fn is_boolean(self) -> bool {
        match self {
            FlagKind::Setting(s) => s.is_boolean(),
            FlagKind::Version | FlagKind::Obsolete | FlagKind::Unsupported { boolean: true } => {
                true
            }
            FlagKind::ConfigFile | FlagKind::Unsupported { boolean: false } => false,
        }
    }
}

/// etcd flags that take a value and that localcluster does not implement.
const UNSUPPORTED_VALUE_FLAGS: &[&str] = &[
    "listen-client-http-urls",
    "max-snapshots",
    "max-wals",
    "backend-bbolt-freelist-type",
    "grpc-keepalive-min-time",
    "grpc-keepalive-interval",
    "grpc-keepalive-timeout",
    "raft-read-timeout",
    "raft-write-timeout",
    "discovery",
    "discovery-fallback",
    "discovery-proxy",
    "discovery-srv",
    "discovery-srv-name",
    "discovery-dial-timeout",
    "discovery-request-timeout",
    "discovery-keepalive-time",
    "discovery-keepalive-timeout",
    "discovery-cert",
    "discovery-key",
    "discovery-cacert",
    "discovery-user",
    "discovery-password",
    "v2-deprecation",
    "client-cert-file",
    "client-key-file",
    "client-cert-allowed-hostname",
    "peer-client-cert-file",
    "peer-client-key-file",
    "peer-cert-allowed-hostname",
    "self-signed-cert-validity",
    "cipher-suites",
    "cors",
    "host-whitelist",
    "tls-min-version",
    "tls-max-version",
    "log-rotation-config-json",
    "log-package-levels",
    "proxy",
    "proxy-failure-wait",
    "proxy-refresh-interval",
    "proxy-dial-timeout",
    "proxy-write-timeout",
    "proxy-read-timeout",
    "feature-gates",
    "distributed-tracing-address",
    "distributed-tracing-service-name",
    "distributed-tracing-instance-id",
    "distributed-tracing-sampling-rate",
    "experimental-distributed-tracing-address",
    "experimental-distributed-tracing-service-name",
    "experimental-distributed-tracing-instance-id",
    "experimental-distributed-tracing-sampling-rate",
    "corrupt-check-time",
    "experimental-corrupt-check-time",
    "compact-hash-check-time",
    "experimental-compact-hash-check-time",
    "experimental-enable-v2v3",
    "compaction-batch-limit",
    "experimental-compaction-batch-limit",
    "compaction-sleep-interval",
    "experimental-compaction-sleep-interval",
    "downgrade-check-time",
    "experimental-downgrade-check-time",
    "warning-apply-duration",
    "experimental-warning-apply-duration",
    "warning-unary-request-duration",
    "experimental-warning-unary-request-duration",
    "bootstrap-defrag-threshold-megabytes",
    "experimental-bootstrap-defrag-threshold-megabytes",
    "max-learners",
    "experimental-max-learners",
    "snapshot-catchup-entries",
    "experimental-snapshot-catchup-entries",
    "experimental-backend-bbolt-freelist-type",
    "experimental-wait-cluster-ready-timeout",
    "experimental-lease-checkpoint-interval",
    "experimental-local-address",
];

/// etcd boolean flags that localcluster does not implement.
const UNSUPPORTED_BOOL_FLAGS: &[&str] = &[
    "initial-election-tick-advance",
    "enable-grpc-gateway",
    "socket-reuse-port",
    "socket-reuse-address",
    "pre-vote",
    "enable-v2",
    "peer-skip-client-san-verification",
    "experimental-peer-skip-client-san-verification",
    "enable-pprof",
    "enable-log-rotation",
    "disable-log-sampling",
    "enable-distributed-tracing",
    "experimental-enable-distributed-tracing",
    "experimental-initial-corrupt-check",
    "experimental-compact-hash-check-enabled",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
    "memory-mlock",
    "experimental-memory-mlock",
    "experimental-txn-mode-write-with-shared-buffer",
    "experimental-stop-grpc-service-on-defrag",
    "experimental-set-member-localaddr",
    "force-new-cluster",
    "discovery-insecure-transport",
    "discovery-insecure-skip-tls-verify",
    "debug",
];

/// Unsupported flags that are refused rather than ignored: each decides which
/// cluster a member joins, so a member started without it would form a
/// different cluster than the one asked for (three members told to find each
/// other by `--discovery` would each bootstrap a cluster of their own). Given
/// a non-empty value, or `true` for a boolean, they stop the start with the
/// reason and what to use instead (see [`refusal`]).
const REFUSED_FLAGS: &[(&str, &str)] = &[
    (
        "discovery",
        "etcd's v2 discovery protocol is not implemented, and without it each \
         member would bootstrap a cluster of its own; use --initial-cluster, or v3 \
         discovery with --discovery-endpoints and --discovery-token",
    ),
    (
        "discovery-srv",
        "DNS SRV discovery is not implemented, and without it each member would \
         bootstrap a cluster of its own; use --initial-cluster, or v3 discovery with \
         --discovery-endpoints and --discovery-token",
    ),
    (
        "force-new-cluster",
        "without it the member would rejoin its old cluster and wait for a quorum \
         that is gone; to recover from a lost quorum, restore a snapshot into a new \
         cluster with `localcluster snapshot restore` (README: Back up and restore)",
    ),
];

/// Why an unsupported flag given as `value` cannot be ignored (see
/// [`REFUSED_FLAGS`]); `None` for every other flag, and for an empty value or
/// a boolean that is false.
pub fn refusal(name: &str, value: &str) -> Option<&'static str> {
    let (_, reason) = REFUSED_FLAGS.iter().find(|(n, _)| *n == name)?;
    let given = match lookup(name) {
        Some(FlagKind::Unsupported { boolean: true }) => {
            super::values::parse_bool(value).unwrap_or(true)
        }
        _ => !value.trim().is_empty(),
    };
    given.then_some(*reason)
}

/// Flags etcd itself accepts and ignores (etcdmain's `ignored` list).
const OBSOLETE_FLAGS: &[&str] = &[
    "cluster-active-size",
    "cluster-remove-delay",
    "cluster-sync-interval",
    "config",
    "force",
    "max-result-buffer",
    "max-retry-attempts",
    "peer-heartbeat-interval",
    "peer-election-timeout",
    "retry-interval",
    "snapshot",
    "v",
    "vv",
];

/// Config-file keys etcd reads that are not flags (all unsupported here).
pub const FILE_ONLY_KEYS: &[&str] = &["discovery-config"];

/// Config-file sections holding the TLS settings (etcd's `securityConfig`).
pub const SECURITY_SECTIONS: &[&str] = &["client-transport-security", "peer-transport-security"];

/// Keys of a security section localcluster reads.
pub const SECURITY_KEYS: &[&str] = &[
    "cert-file",
    "key-file",
    "client-cert-auth",
    "trusted-ca-file",
    "auto-tls",
];

/// Looks a flag name (without dashes) up. `None` for a flag etcd does not define.
pub fn lookup(name: &str) -> Option<FlagKind> {
    if let Some(setting) = Setting::from_flag_name(name) {
        return Some(FlagKind::Setting(setting));
    }
    match name {
        "config-file" => Some(FlagKind::ConfigFile),
        "version" => Some(FlagKind::Version),
        _ if UNSUPPORTED_VALUE_FLAGS.contains(&name) => {
            Some(FlagKind::Unsupported { boolean: false })
        }
        _ if UNSUPPORTED_BOOL_FLAGS.contains(&name) => {
            Some(FlagKind::Unsupported { boolean: true })
        }
        _ if OBSOLETE_FLAGS.contains(&name) => Some(FlagKind::Obsolete),
        _ => None,
    }
}

/// Every flag in the table with its kind (for environment variable lookup).
pub fn all_flags() -> impl Iterator<Item = (&'static str, FlagKind)> {
    let settings = Setting::ALL
        .into_iter()
        .map(|s| (s.flag_name(), FlagKind::Setting(s)));
    let special = [
        ("config-file", FlagKind::ConfigFile),
        ("version", FlagKind::Version),
    ];
    let value = UNSUPPORTED_VALUE_FLAGS
        .iter()
        .map(|n| (*n, FlagKind::Unsupported { boolean: false }));
    let boolean = UNSUPPORTED_BOOL_FLAGS
        .iter()
        .map(|n| (*n, FlagKind::Unsupported { boolean: true }));
    let obsolete = OBSOLETE_FLAGS.iter().map(|n| (*n, FlagKind::Obsolete));
    settings
        .chain(special)
        .chain(value)
        .chain(boolean)
        .chain(obsolete)
}

/// One flag as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFlag {
    /// Name without dashes.
    pub name: String,
    /// The value; `None` only for a boolean (or unknown) flag written alone.
    pub value: Option<String>,
}

/// Splits `args` into flags as Go's `flag` package does (see the module doc).
///
/// `is_boolean(name)` is `Some(true)` for a known boolean flag, `Some(false)`
/// for a known flag taking a value, `None` for an unknown flag.
pub fn tokenize<S: AsRef<str>>(
    args: &[S],
    is_boolean: impl Fn(&str) -> Option<bool>,
) -> Result<Vec<RawFlag>, ConfigError> {
    let mut flags = Vec::new();
    let mut rest = args.iter().map(AsRef::as_ref).peekable();
    while let Some(arg) = rest.next() {
        if arg.len() < 2 || !arg.starts_with('-') {
            return Err(not_a_flag(arg));
        }
        if arg == "--" {
            return match rest.next() {
                Some(positional) => Err(not_a_flag(positional)),
                None => Ok(flags),
            };
        }
        let body = arg.strip_prefix("--").unwrap_or(&arg[1..]);
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ConfigError::Flag(format!("bad flag syntax: {arg}")));
        }
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (body, None),
        };
        let known = is_boolean(name);
        if known.is_none() && (name == "help" || name == "h") {
            return Err(ConfigError::HelpRequested);
        }
        let value = match (known, inline) {
            (_, Some(value)) => Some(value),
            (Some(true), None) => None,
            (Some(false), None) => match rest.next() {
                Some(next) => Some(next.to_owned()),
                None => {
                    return Err(ConfigError::Flag(format!(
                        "flag needs an argument: --{name}"
                    )))
                }
            },
            (None, None) => rest
                .next_if(|next| !next.starts_with('-'))
                .map(str::to_owned),
        };
        flags.push(RawFlag {
            name: name.to_owned(),
            value,
        });
    }
    Ok(flags)
}

/// [`tokenize`] with etcd's flag table.
pub fn tokenize_etcd<S: AsRef<str>>(args: &[S]) -> Result<Vec<RawFlag>, ConfigError> {
    tokenize(args, |name| lookup(name).map(FlagKind::is_boolean))
}

fn not_a_flag(arg: &str) -> ConfigError {
    ConfigError::Flag(format!("{arg:?} is not a valid flag"))
}

/// The `--help` text: the flags localcluster honours, with etcd's defaults.
pub fn help_text() -> String {
    let mut text = String::from(
        "Flags (etcd-compatible; each may also be set as ETCD_<FLAG_NAME> in the environment):\n",
    );
    for setting in Setting::ALL {
        let (default, description) = setting.help();
        text.push_str(&format!(
            "  --{} '{}'\n      {}\n",
            setting.flag_name(),
            default,
            description
        ));
    }
    text.push_str(
        "  --config-file ''\n      Path to an etcd YAML configuration file. If given, other flags and ETCD_* variables are ignored.\n",
    );
    text.push_str("  --version\n      Print the version and exit.\n");
    text.push_str(
        "\nOther etcd flags are accepted and ignored with a warning, except --discovery and\n\
         --discovery-srv (without them each member would bootstrap a cluster of its own)\n\
         and --force-new-cluster (restore a snapshot instead), which are refused.\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tok(args: &[&str]) -> Result<Vec<RawFlag>, ConfigError> {
        tokenize_etcd(args)
    }

    fn flag(name: &str, value: Option<&str>) -> RawFlag {
        RawFlag {
            name: name.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn all_four_go_spellings_give_the_same_flag() {
        for args in [
            &["--name=infra0"][..],
            &["--name", "infra0"],
            &["-name", "infra0"],
            &["-name=infra0"],
        ] {
            assert_eq!(
                tok(args).unwrap(),
                vec![flag("name", Some("infra0"))],
                "{args:?}"
            );
        }
    }

    #[test]
    fn value_flag_takes_next_argument_even_if_it_starts_with_a_dash() {
        assert_eq!(
            tok(&["--name", "-x"]).unwrap(),
            vec![flag("name", Some("-x"))]
        );
        assert_eq!(tok(&["--name="]).unwrap(), vec![flag("name", Some(""))]);
    }

    #[test]
    fn value_flag_at_the_end_needs_an_argument() {
        assert_eq!(
            tok(&["--name"]).unwrap_err().to_string(),
            "flag needs an argument: --name"
        );
    }

    #[test]
    fn boolean_flags_stand_alone_or_take_inline_values() {
        assert_eq!(
            tok(&["--enable-v2", "--name", "a", "--version=false"]).unwrap(),
            vec![
                flag("enable-v2", None),
                flag("name", Some("a")),
                flag("version", Some("false"))
            ]
        );
        // Go does not let a boolean consume the next argument.
        assert_eq!(
            tok(&["--enable-pprof", "true"]).unwrap_err().to_string(),
            "\"true\" is not a valid flag"
        );
    }

    #[test]
    fn unknown_flag_takes_next_argument_unless_it_looks_like_a_flag() {
        assert_eq!(
            tok(&["--frobnicate", "7", "--name", "a"]).unwrap(),
            vec![flag("frobnicate", Some("7")), flag("name", Some("a"))]
        );
        assert_eq!(
            tok(&["--frobnicate", "--name", "a"]).unwrap(),
            vec![flag("frobnicate", None), flag("name", Some("a"))]
        );
        assert_eq!(
            tok(&["--frobnicate"]).unwrap(),
            vec![flag("frobnicate", None)]
        );
    }

    #[test]
    fn positional_arguments_are_errors_worded_like_etcd() {
        assert_eq!(
            tok(&["start"]).unwrap_err().to_string(),
            "\"start\" is not a valid flag"
        );
        assert_eq!(
            tok(&["--name", "a", "x"]).unwrap_err().to_string(),
            "\"x\" is not a valid flag"
        );
        assert_eq!(
            tok(&["-"]).unwrap_err().to_string(),
            "\"-\" is not a valid flag"
        );
        assert_eq!(
            tok(&["--", "x"]).unwrap_err().to_string(),
            "\"x\" is not a valid flag"
        );
        assert_eq!(
            tok(&["--name", "a", "--"]).unwrap(),
            vec![flag("name", Some("a"))]
        );
    }

    #[test]
    fn bad_flag_syntax_is_reported() {
        for bad in ["---name", "--=x", "-=x"] {
            assert_eq!(
                tok(&[bad]).unwrap_err().to_string(),
                format!("bad flag syntax: {bad}")
            );
        }
    }

    #[test]
    fn help_flags_request_help() {
        for args in [
            &["-h"][..],
            &["--help"],
            &["-help"],
            &["--name", "a", "-h"],
            &["--help=1"],
        ] {
            assert!(
                matches!(tok(args), Err(ConfigError::HelpRequested)),
                "{args:?}"
            );
        }
        assert_eq!(tok(&["-h"]).unwrap_err().exit_code(), 0);
    }

    #[test]
    fn table_knows_etcd_flags_and_their_types() {
        assert_eq!(lookup("name"), Some(FlagKind::Setting(Setting::Name)));
        assert_eq!(lookup("config-file"), Some(FlagKind::ConfigFile));
        assert_eq!(
            lookup("auto-compaction-retention"),
            Some(FlagKind::Setting(Setting::AutoCompactionRetention))
        );
        assert_eq!(
            lookup("watch-progress-notify-interval"),
            Some(FlagKind::Setting(Setting::WatchProgressNotifyInterval))
        );
        assert_eq!(
            lookup("experimental-corrupt-check-time"),
            Some(FlagKind::Unsupported { boolean: false })
        );
        assert_eq!(
            lookup("enable-v2"),
            Some(FlagKind::Unsupported { boolean: true })
        );
        assert_eq!(lookup("v"), Some(FlagKind::Obsolete));
        assert_eq!(lookup("no-such-flag"), None);
        let names: Vec<&str> = all_flags().map(|(n, _)| n).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "a flag is listed twice");
    }

    #[test]
    fn help_text_lists_every_supported_flag() {
        let help = help_text();
        for setting in Setting::ALL {
            assert!(help.contains(&format!("--{} ", setting.flag_name())));
        }
    }

    /// How a generated flag is written.
    #[derive(Debug, Clone, Copy)]
    enum Style {
        DoubleEq,
        DoubleSpace,
        SingleEq,
        SingleSpace,
    }

    fn arb_flag() -> impl Strategy<Value = (RawFlag, Style)> {
        let style = prop_oneof![
            Just(Style::DoubleEq),
            Just(Style::DoubleSpace),
            Just(Style::SingleEq),
            Just(Style::SingleSpace)
        ];
        let value_flag = (
            prop::sample::select(vec![
                "name",
                "initial-cluster",
                "heartbeat-interval",
                "cert-file",
                "config-file",
            ]),
            ".{0,12}",
        )
            .prop_map(|(n, v)| flag(n, Some(&v)));
        let bool_flag = (
            prop::sample::select(vec!["enable-v2", "version", "force-new-cluster", "v"]),
            prop::option::of(prop::sample::select(vec!["true", "false", "1", "0"])),
        )
            .prop_map(|(n, v)| flag(n, v));
        let unknown_flag = ("x[a-z-]{0,8}", prop::option::of("[a-zA-Z0-9=,:/.]{1,12}"))
            .prop_map(|(n, v)| flag(&n, v.as_deref()));
        (prop_oneof![value_flag, bool_flag, unknown_flag], style)
    }

    fn render(raw: &RawFlag, style: Style) -> Vec<String> {
        let dashes = match style {
            Style::DoubleEq | Style::DoubleSpace => "--",
            Style::SingleEq | Style::SingleSpace => "-",
        };
        let boolean = lookup(&raw.name).map(FlagKind::is_boolean);
        match (&raw.value, style) {
            (None, _) => vec![format!("{dashes}{}", raw.name)],
            // Booleans can only carry a value inline.
            (Some(v), _) if boolean == Some(true) => vec![format!("{dashes}{}={v}", raw.name)],
            (Some(v), Style::DoubleEq | Style::SingleEq) => {
                vec![format!("{dashes}{}={v}", raw.name)]
            }
            (Some(v), _) => vec![format!("{dashes}{}", raw.name), v.clone()],
        }
    }

    proptest! {
        #[test]
        fn tokenizer_recovers_what_was_rendered(flags in proptest::collection::vec(arb_flag(), 0..8)) {
            let args: Vec<String> = flags.iter().flat_map(|(raw, style)| render(raw, *style)).collect();
            let expected: Vec<RawFlag> = flags.into_iter().map(|(raw, _)| raw).collect();
            prop_assert_eq!(tokenize_etcd(&args).unwrap(), expected);
        }

        #[test]
        fn tokenizer_never_panics(args in proptest::collection::vec(".{0,10}", 0..6)) {
            let _ = tokenize_etcd(&args);
        }
    }
}
