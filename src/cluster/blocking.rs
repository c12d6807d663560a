//! A synchronous embedded cluster, for tests that are not async.
//!
//! [`LocalCluster`] owns the async [`super::LocalCluster`] and a small tokio
//! runtime (one thread) that drives its waits; every method blocks until done.
//! The members run on runtimes of their own either way. [`LocalCluster::block_on`]
//! runs async client code (such as the generated gRPC stubs) on the same
//! runtime.
//!
//! ```
//! use std::time::Duration;
//! use localcluster::blocking::LocalCluster;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut cluster = LocalCluster::builder().members(3).start_blocking()?;
//! let endpoints = cluster.endpoints().join(",");
//! // ... point the application under test at `endpoints` ...
//! let old = cluster.kill_leader()?;
//! let new = cluster.wait_leader(Duration::from_secs(5))?;
//! assert_ne!(old, new);
//! cluster.start(old)?;
//! cluster.wait_healthy(Duration::from_secs(5))?;
//! # Ok(()) }
//! ```
//!
//! It refuses to start on a thread of a tokio runtime (its workers, where the
//! runtime it owns could not be driven, and its blocking pool alike): starting
//! there fails with [`ClusterError::Runtime`]; use the async cluster instead.
//! Dropping it there is safe.

use std::future::Future;
use std::time::Duration;

use super::{ClusterError, LocalClusterBuilder, MemberInfo};
use crate::member::Member;
use crate::raft::NodeStatus;

/// An embedded cluster with a blocking API; see the [module docs](self).
#[derive(Debug)]
pub struct LocalCluster {
    inner: super::LocalCluster,
    runtime: Option<tokio::runtime::Runtime>,
}

impl LocalCluster {
    /// Settings for a new cluster; finish with
    /// [`LocalClusterBuilder::start_blocking`].
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder::default()
    }

    /// Starts a cluster as [`LocalClusterBuilder::start`] does, blocking
    /// (what [`LocalClusterBuilder::start_blocking`] calls).
    pub fn new(builder: LocalClusterBuilder) -> Result<LocalCluster, ClusterError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(ClusterError::Runtime(std::io::Error::other(
                "the blocking cluster cannot start inside async code; use localcluster::LocalCluster",
            )));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let inner = runtime.block_on(builder.start())?;
        Ok(LocalCluster {
            inner,
            runtime: Some(runtime),
        })
    }

    /// Runs a future to completion on the cluster's runtime (for async
    /// clients in a sync test).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        match &self.runtime {
            Some(rt) => rt.block_on(f),
            // Only `drop` takes the runtime.
            None => unreachable!("the runtime lives as long as the cluster"),
        }
    }

    /// The async cluster inside, for its read-only queries.
    pub fn inner(&self) -> &super::LocalCluster {
        &self.inner
    }

    /// See [`super::LocalCluster::len`].
    pub fn len(&self) -> usize {
        self.inner.len()
    }
    /// See [`super::LocalCluster::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
    /// See [`super::LocalCluster::client_urls`].
    pub fn client_urls(&self) -> Vec<String> {
        self.inner.client_urls()
    }
    /// See [`super::LocalCluster::endpoints`].
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints()
    }
    /// See [`super::LocalCluster::member`] (panics if `i` is out of range).
    pub fn member(&self, i: usize) -> &MemberInfo {
        self.inner.member(i)
    }
    /// See [`super::LocalCluster::members`].
    pub fn members(&self) -> impl Iterator<Item = &MemberInfo> {
        self.inner.members()
    }
    /// See [`super::LocalCluster::index_of`].
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.inner.index_of(id)
    }
    /// See [`super::LocalCluster::is_paused`].
    pub fn is_paused(&self, i: usize) -> bool {
        self.inner.is_paused(i)
    }
    /// See [`super::LocalCluster::is_running`].
    pub fn is_running(&self, i: usize) -> bool {
        self.inner.is_running(i)
    }
    /// See [`super::LocalCluster::status`].
    pub fn status(&self, i: usize) -> Option<NodeStatus> {
        self.inner.status(i)
    }
    /// See [`super::LocalCluster::member_handle`].
    pub fn member_handle(&self, i: usize) -> Option<&Member> {
        self.inner.member_handle(i)
    }
    /// See [`super::LocalCluster::leader`].
    pub fn leader(&self) -> Option<usize> {
        self.inner.leader()
    }
    /// See [`super::LocalCluster::wait_leader`].
    pub fn wait_leader(&self, timeout: Duration) -> Result<usize, ClusterError> {
        self.block_on(self.inner.wait_leader(timeout))
    }
    /// See [`super::LocalCluster::wait_healthy`].
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), ClusterError> {
        self.block_on(self.inner.wait_healthy(timeout))
    }
    /// See [`super::LocalCluster::wait_converged`].
    pub fn wait_converged(&self, timeout: Duration) -> Result<(), ClusterError> {
        self.block_on(self.inner.wait_converged(timeout))
    }
    /// See [`super::LocalCluster::kill`].
    pub fn kill(&mut self, i: usize) -> Result<(), ClusterError> {
        self.inner.kill(i)
    }
    /// See [`super::LocalCluster::kill_leader`].
    pub fn kill_leader(&mut self) -> Result<usize, ClusterError> {
        self.inner.kill_leader()
    }
    /// See [`super::LocalCluster::stop`].
    pub fn stop(&mut self, i: usize) -> Result<(), ClusterError> {
        match self.runtime.as_ref() {
            Some(rt) => rt.block_on(self.inner.stop(i)),
            None => unreachable!("the runtime lives as long as the cluster"),
        }
    }
    /// See [`super::LocalCluster::add_member`].
    pub fn add_member(&mut self, learner: bool) -> Result<usize, ClusterError> {
        match self.runtime.as_ref() {
            Some(rt) => rt.block_on(self.inner.add_member(learner)),
            None => unreachable!("the runtime lives as long as the cluster"),
        }
    }
    /// See [`super::LocalCluster::promote_member`].
    pub fn promote_member(&mut self, i: usize) -> Result<(), ClusterError> {
        match self.runtime.as_ref() {
            Some(rt) => rt.block_on(self.inner.promote_member(i)),
            None => unreachable!("the runtime lives as long as the cluster"),
        }
    }
    /// See [`super::LocalCluster::remove_member`].
    pub fn remove_member(&mut self, i: usize) -> Result<(), ClusterError> {
        match self.runtime.as_ref() {
            Some(rt) => rt.block_on(self.inner.remove_member(i)),
            None => unreachable!("the runtime lives as long as the cluster"),
        }
    }
    /// See [`super::LocalCluster::start`].
    pub fn start(&mut self, i: usize) -> Result<(), ClusterError> {
        self.inner.start(i)
    }
    /// See [`super::LocalCluster::restart`].
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        match self.runtime.as_ref() {
            Some(rt) => rt.block_on(self.inner.restart(i)),
            None => unreachable!("the runtime lives as long as the cluster"),
        }
    }
    /// See [`super::LocalCluster::pause`].
    pub fn pause(&mut self, i: usize) -> Result<(), ClusterError> {
        self.inner.pause(i)
    }
    /// See [`super::LocalCluster::resume`].
    pub fn resume(&mut self, i: usize) -> Result<(), ClusterError> {
        self.inner.resume(i)
    }
    /// See [`super::LocalCluster::partition`].
    pub fn partition(&mut self, groups: &[&[usize]]) -> Result<(), ClusterError> {
        self.inner.partition(groups)
    }
    /// See [`super::LocalCluster::cut`].
    pub fn cut(&mut self, links: &[(usize, usize)]) -> Result<(), ClusterError> {
        self.inner.cut(links)
    }
    /// See [`super::LocalCluster::heal`].
    pub fn heal(&mut self) {
        self.inner.heal()
    }
    /// See [`super::LocalCluster::shutdown`].
    pub fn shutdown(mut self) -> Result<(), ClusterError> {
        self.inner.close()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Members first, then the runtime, in a way that never panics, even
        // inside async code (nothing runs on it any more).
        self.inner.kill_all();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
