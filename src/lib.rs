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
//! [`bench`] is the load generator behind `localcluster bench`; [`client`] is
//! the small etcd client those tools share. [`auth`] holds users, roles,
//! permissions and tokens; [`tls`] the TLS of the client and peer URLs.
//! [`lease`], [`membership`] and [`wait`] are the replicated lease table, the
//! replicated membership, and the request-ID/waiter plumbing between the API
//! and the state machine.

pub mod api;
pub mod apply;
pub mod auth;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod config;
pub mod identity;
pub mod layout;
pub mod lease;
pub mod member;
pub mod membership;
pub mod mvcc;
pub mod pb;
pub mod raft;
pub mod supervisor;
pub mod tls;
pub mod wait;

pub use cluster::blocking;
pub use cluster::{ClusterError, LocalCluster, LocalClusterBuilder, MemberInfo};
pub use config::MemberConfig;
pub use member::{Member, MemberError};
