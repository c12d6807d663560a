//! localcluster: a real etcd-compatible cluster on one laptop, inside a test
//! suite, or across a few machines.
//!
//! The path of a write, module by module:
//! [`api`] (validate, propose) -> [`raft`] (replicate, commit) -> [`apply`]
//! (run the committed entry) -> [`mvcc`] (revisioned store) -> the waiting
//! [`api`] call gets the result. [`member`] wires one member together;
//! [`config`] turns etcd's flags into its configuration; [`identity`] derives
//! member and cluster IDs as etcd does. [`cluster`] runs N members in one
//! process with fault hooks, for applications' integration tests
//! ([`LocalCluster`], and [`blocking::LocalCluster`] for sync tests).
//! [`supervisor`] is the goreman-style Procfile runner behind `localcluster
//! start`/`run`; [`layout`] is the standard 3-member layout it runs by default;
//! [`bench`](mod@bench) is the load generator behind `localcluster bench`; [`client`] is
//! the small etcd client those tools share; [`backup`] saves, inspects and
//! restores snapshot files (`localcluster snapshot`). [`lease`], [`membership`] and
//! [`wait`] are the replicated lease table, the replicated membership, and the
//! request-ID/waiter plumbing between the API and the state machine.
//! [`chaos`] runs clients and injected faults against an embedded cluster or
//! separate member processes and checks the history (linearizability, lists,
//! watches, leases). [`compactor`] is etcd's auto-compaction (`--auto-compaction-mode`), run on
//! the leader.
//! [`auth`] holds users, roles, permissions and tokens; [`tls`] the TLS of
//! the client and peer URLs; `io_wrap` the write half shared by connection
//! wrappers. [`disk`] opens the redb files (fsyncs timed, or skipped under
//! `--unsafe-no-fsync`); [`metrics`] is a member's Prometheus registry;
//! [`logging`] and [`notify`] are the member process's log output and
//! systemd readiness notification.

// The module docs explain the internals and link to private items; those
// links resolve with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod api;
pub mod apply;
pub mod auth;
pub mod backup;
pub mod bench;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod coalesce;
pub mod codec;
pub mod compactor;
pub mod config;
pub mod disk;
pub mod identity;
mod io_wrap;
pub mod layout;
pub mod lease;
pub mod logging;
pub mod member;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod notify;
pub mod pb;
pub mod raft;
pub mod supervisor;
pub mod tls;
pub mod wait;

pub use cluster::blocking;
pub use cluster::{ClusterError, LocalCluster, LocalClusterBuilder, MemberInfo};
pub use config::MemberConfig;
pub use member::{Member, MemberError};
