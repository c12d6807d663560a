//! Consensus: one member's Raft node, built on the `raft` crate (tikv raft-rs).
//!
//! - [`storage`]: the Raft log in memory, what raft-rs reads through `raft::Storage`,
//!   made durable by [`wal`], an append-only write-ahead log (one record and one
//!   `fdatasync` per Ready).
//! - [`node`]: the single thread that owns `RawNode`, ticks it, steps peer messages,
//!   takes proposals and read-index requests, and drives the Ready loop: persist,
//!   send, apply (through [`StateMachine`]), advance.
//! - [`reads`]: linearizable reads waiting for the node's next read-index round,
//!   shared by the API and the node.
//! - [`legacy`]: moves a log of the old format (`raft.redb`) into [`wal`].
//! - [`transport`]: the streams between members on their peer URLs (framed as
//!   [`wire`] says; gRPC for probes and membership), with the fault hooks (drop
//!   messages to/from some peers) used by the embedded cluster.
//! - [`merge`]: folds the appends a peer's sender finds queued, when each
//!   continues the one before, into one.
//! - [`logger`]: forwards raft-rs's `slog` records into `tracing`.
//!
//! Nothing outside [`node`] touches `RawNode`; everything else talks to it through
//! [`node::RaftHandle`], a cheap clonable channel handle.

pub mod legacy;
pub mod logger;
pub mod merge;
pub mod node;
pub mod reads;
pub mod storage;
pub mod transport;
pub mod wal;
pub mod wire;

pub use node::{NodeStatus, RaftHandle, StateMachine};
pub use storage::{RaftStorage, SnapshotSource};
pub use wal::WalOptions;

/// The Raft log's directory name, in the member dir or under `--wal-dir`.
pub const LOG_DIR: &str = "raftlog";

/// Errors of the consensus layer.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// The log file cannot be opened, or is damaged.
    #[error(transparent)]
    DataFile(#[from] crate::disk::DataFileError),
    #[error("raft storage: {0}")]
    Db(String),
    #[error("raft storage: cannot decode record: {0}")]
    Decode(String),
    #[error("raft storage is corrupt: {0}")]
    Corrupt(String),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("state machine: {0}")]
    Apply(String),
    #[error("the raft node has stopped")]
    Stopped,
    #[error("leader changed")]
    LeaderChanged,
    /// raft-rs refused a proposal for a reason other than a missing leader.
    #[error("raft refused the proposal: {0}")]
    Refused(String),
}

impl RaftError {
    pub(crate) fn db(e: impl std::fmt::Display) -> Self {
        RaftError::Db(e.to_string())
    }
    pub(crate) fn decode(e: impl std::fmt::Display) -> Self {
        RaftError::Decode(e.to_string())
    }
}
