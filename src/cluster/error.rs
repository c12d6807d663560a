//! Errors of the embedded cluster ([`super::LocalCluster`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::member::MemberError;

/// Why an embedded cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `members(0)` was asked for.
    #[error("a cluster needs at least one member")]
    NoMembers,
    /// The builder's settings make an invalid member configuration.
    #[error("invalid configuration for member {name}: {reason}")]
    Config { name: String, reason: String },
    /// A port could not be bound (taken by someone else, or a bad given port).
    #[error("member {name}: cannot listen on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A member failed to start.
    #[error("member {name} failed to start: {source}")]
    Start { name: String, source: MemberError },
    /// The data directory could not be created or removed.
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// An index past the last member.
    #[error("no member {index}: the cluster has {len} members")]
    NoSuchMember { index: usize, len: usize },
    /// The member is stopped or killed.
    #[error("member {0} is not running")]
    NotRunning(usize),
    /// `start` on a member that runs.
    #[error("member {0} is already running")]
    AlreadyRunning(usize),
    /// `kill_leader` while no member is a leader recognised by a quorum.
    #[error("the cluster has no leader")]
    NoLeader,
    /// `partition` got overlapping groups.
    #[error("invalid partition: {0}")]
    Partition(String),
    /// A wait ran out of time; `state` describes every member at that moment.
    #[error("timed out after {after:?} waiting for {what}; members: {state}")]
    Timeout {
        what: &'static str,
        after: Duration,
        state: String,
    },
    /// The cluster refused a membership change (etcd's message, e.g.
    /// `etcdserver: re-configuration failed due to not enough started members`).
    #[error("{0}")]
    Reconfig(String),
    /// The member was removed from the cluster; it cannot start again.
    #[error("member {0} was removed from the cluster")]
    Removed(usize),
    /// The blocking wrapper could not make its runtime.
    #[error("cannot start a tokio runtime: {0}")]
    Runtime(std::io::Error),
}
