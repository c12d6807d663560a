//! Building the data dir of a member of a new cluster from a backup snapshot
//! (what `etcdutl snapshot restore` does for etcd).
//!
//! The snapshot's key-value data is restored as it was, revisions included, so
//! the new cluster answers `HashKV` at the snapshot's revision exactly as the
//! old one did. Everything that belonged to the old cluster is replaced: the
//! membership and Raft configuration come from `--initial-cluster`, the member
//! and cluster IDs are derived from it and `--initial-cluster-token` as for any
//! new cluster, and the Raft log starts afresh. Every member of the new cluster
//! is restored from the same file with its own `--name` and
//! `--initial-advertise-peer-urls`; each then starts with the same flags as a
//! restart of its data dir.
//!
//! Invariant: the identity record, which marks a data dir as complete, is
//! written last; after a restore that failed half way, the data dir must be
//! deleted (a second restore refuses a data dir that is not empty).

use std::path::PathBuf;
use std::sync::Arc;

use prost::Message as _;
use raft::prelude::ConfState;

use super::bootstrap::{derive_identity, initial_membership};
use super::MemberError;
use crate::apply::Applier;
use crate::config::MemberConfig;
use crate::mvcc::Store;
use crate::pb::lcraftpb::Identity;
use crate::raft::RaftStorage;
use crate::wait::Waiters;

/// The Raft log and MVCC store files of a data dir, as [`super::Member`] opens them.
pub(super) fn data_files(cfg: &MemberConfig) -> (PathBuf, PathBuf) {
    let member_dir = cfg.data_dir.join("member");
    let wal_dir = cfg.wal_dir.clone().unwrap_or_else(|| member_dir.clone());
    (
        wal_dir.join(crate::raft::LOG_DIR),
        member_dir.join("kv.redb"),
    )
}

/// Creates `cfg.data_dir` holding `snapshot`'s data as member `cfg.name` of
/// the new cluster `cfg.initial_cluster`; returns the member's identity.
/// Refuses a data dir that already exists and is not empty.
pub fn restore_data_dir(cfg: &MemberConfig, snapshot: &[u8]) -> Result<Identity, MemberError> {
    cfg.validate_bootstrap()
        .map_err(|e| MemberError::Config(e.to_string()))?;
    let taken = std::fs::read_dir(&cfg.data_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if taken {
        return Err(MemberError::DataDir(format!(
            "data-dir {:?} exists",
            cfg.data_dir.display().to_string()
        )));
    }
    let identity = derive_identity(cfg)?;
    let (raft_path, kv_path) = data_files(cfg);
    for path in [&raft_path, &kv_path] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                MemberError::DataDir(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
    }
    let store = Arc::new(Store::open(&kv_path)?);
    store.restore(snapshot)?;
    let auth = Arc::new(crate::auth::Auth::new(&cfg.auth));
    let (mut applier, _) = Applier::open(
        store,
        identity.member_id,
        Arc::new(Waiters::default()),
        auth,
    )?;
    let membership = initial_membership(cfg, identity.cluster_id)?;
    let cs = ConfState::from((
        membership.members.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![],
    ));
    applier.bootstrap(membership, &cs)?;
    let mut storage = RaftStorage::open(&raft_path)?;
    storage.bootstrap(&identity.encode_to_vec(), cs)?;
    Ok(identity)
}
