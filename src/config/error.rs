//! The one error type of member configuration.
//!
//! Every variant displays as a single readable line, worded like etcd's own
//! message where etcd has one, so it can be printed as is before exiting.
//! `--help` and `--version` are reported through this type too
//! ([`ConfigError::HelpRequested`], [`ConfigError::VersionRequested`]): they
//! end parsing early and the caller prints the text and exits with status 0.

use std::path::PathBuf;

/// Why a member configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `-h`, `-help` or `--help` was given: print the usage and exit 0.
    #[error("help requested")]
    HelpRequested,
    /// `--version` was given: print the version and exit 0.
    #[error("version requested")]
    VersionRequested,
    /// The command line is malformed or a flag has a bad value.
    #[error("{0}")]
    Flag(String),
    /// An `ETCD_*` environment variable has a bad value.
    #[error("{0}")]
    Env(String),
    /// A flag was given both on the command line and as its `ETCD_*` variable;
    /// etcd 3.4+ refuses to start in that case.
    #[error("conflicting environment variable {0:?} is shadowed by corresponding command-line flag (either unset environment variable or disable flag)")]
    ShadowedEnv(String),
    /// The `--config-file` could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    ReadConfigFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The `--config-file` is not valid YAML or has a bad value; `message`
    /// names the key and, where known, the line and column.
    #[error("invalid config file {}: {message}", .path.display())]
    ConfigFile { path: PathBuf, message: String },
    /// The values parsed, but do not make a valid member configuration.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// The process exit status etcd uses for this outcome: 0 for help and
    /// version, 2 for command-line syntax errors (Go's `flag` package), 1 for
    /// everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::HelpRequested | ConfigError::VersionRequested => 0,
            ConfigError::Flag(_) => 2,
            _ => 1,
        }
    }
}
