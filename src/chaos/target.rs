//! What the chaos nemesis needs from a cluster, whatever runs it.
//!
//! [`Target`] is implemented for the embedded [`LocalCluster`] (members in
//! this process, faults through its hooks) and for
//! [`ProcessCluster`](super::process::ProcessCluster) (members as separate
//! `localcluster member` processes, faults as signals). Every fault has an
//! undo: `kill`/`start`, `pause`/`resume`, `cut`/`partition` and `heal`;
//! `restart` is a graceful stop followed by a start. A target that cannot cut
//! network links says so through [`Target::supports_partitions`] and fails
//! `cut` with [`TargetError::Unsupported`]; the nemesis then skips those
//! faults.

use std::future::Future;
use std::time::Duration;

use crate::cluster::{ClusterError, LocalCluster};

/// Why a fault could not be injected or undone.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The target cannot do this at all (e.g. partitions on loopback processes).
    #[error("not supported by this target: {0}")]
    Unsupported(&'static str),
    /// A cut or heal between network-namespace hosts failed.
    #[error(transparent)]
    Network(#[from] super::netns::NetnsError),
    #[error("member {0} does not exist")]
    NoSuchMember(usize),
    #[error("member {0} is not running")]
    NotRunning(usize),
    #[error("member {0} is already running")]
    AlreadyRunning(usize),
    #[error("member {member}: {what}: {source}")]
    Process {
        member: usize,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("member {member}: signal {signal}: {source}")]
    Signal {
        member: usize,
        signal: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// A cluster the nemesis can break and repair. Member indexes are `0..len()`.
pub trait Target: Send + Sync {
    /// Number of members, running or not.
    fn len(&self) -> usize;
    /// Whether there are no members (never, for a started cluster).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every member's client URL, in index order.
    fn client_urls(&self) -> Vec<String>;
    /// The member that currently leads with a quorum behind it, if known.
    fn leader(&self) -> impl Future<Output = Option<usize>> + Send;
    /// Whether member `i` runs (a paused member runs).
    fn is_running(&self, i: usize) -> bool;
    /// Whether member `i` is paused.
    fn is_paused(&self, i: usize) -> bool;
    /// Kills member `i` at once, as SIGKILL.
    fn kill(&mut self, i: usize) -> Result<(), TargetError>;
    /// Starts a killed or stopped member again, with its data.
    fn start(&mut self, i: usize) -> Result<(), TargetError>;
    /// Stops member `i` gracefully, then starts it again.
    fn restart(&mut self, i: usize) -> impl Future<Output = Result<(), TargetError>> + Send;
    /// Freezes member `i`, as SIGSTOP.
    fn pause(&mut self, i: usize) -> Result<(), TargetError>;
    /// Undoes [`Target::pause`], as SIGCONT.
    fn resume(&mut self, i: usize) -> Result<(), TargetError>;
    /// Whether [`Target::cut`] and [`Target::partition`] can work.
    fn supports_partitions(&self) -> bool;
    /// Cuts the network links between each pair (both directions).
    fn cut(&mut self, links: &[(usize, usize)]) -> Result<(), TargetError>;
    /// Splits the members into groups that only talk inside themselves.
    fn partition(&mut self, groups: &[Vec<usize>]) -> Result<(), TargetError> {
        self.cut(&links_between(groups, self.len()))
    }
    /// Undoes every cut and partition.
    fn heal(&mut self);
    /// Members that stopped by themselves since the last call (a crash: the
    /// nemesis never stops one without undoing it), described; they count
    /// as stopped, so a repair starts them again.
    fn crashed(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Waits until every running, unpaused member follows one leader;
    /// false after `timeout`.
    fn wait_healthy(&self, timeout: Duration) -> impl Future<Output = bool> + Send;
}

/// The links that cross group boundaries, for `n` members; a member in no
/// group is alone.
pub fn links_between(groups: &[Vec<usize>], n: usize) -> Vec<(usize, usize)> {
    let group = |i: usize| groups.iter().position(|g| g.contains(&i));
    let mut links = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            if group(a).is_none() || group(a) != group(b) {
                links.push((a, b));
            }
        }
    }
    links
}

impl Target for LocalCluster {
    fn len(&self) -> usize {
        LocalCluster::len(self)
    }
    fn client_urls(&self) -> Vec<String> {
        LocalCluster::client_urls(self)
    }
    fn leader(&self) -> impl Future<Output = Option<usize>> + Send {
        std::future::ready(LocalCluster::leader(self))
    }
    fn is_running(&self, i: usize) -> bool {
        LocalCluster::is_running(self, i)
    }
    fn is_paused(&self, i: usize) -> bool {
        LocalCluster::is_paused(self, i)
    }
    fn kill(&mut self, i: usize) -> Result<(), TargetError> {
        Ok(LocalCluster::kill(self, i)?)
    }
    fn start(&mut self, i: usize) -> Result<(), TargetError> {
        Ok(LocalCluster::start(self, i)?)
    }
    async fn restart(&mut self, i: usize) -> Result<(), TargetError> {
        Ok(LocalCluster::restart(self, i).await?)
    }
    fn pause(&mut self, i: usize) -> Result<(), TargetError> {
        Ok(LocalCluster::pause(self, i)?)
    }
    fn resume(&mut self, i: usize) -> Result<(), TargetError> {
        Ok(LocalCluster::resume(self, i)?)
    }
    fn supports_partitions(&self) -> bool {
        true
    }
    fn cut(&mut self, links: &[(usize, usize)]) -> Result<(), TargetError> {
        Ok(LocalCluster::cut(self, links)?)
    }
    fn partition(&mut self, groups: &[Vec<usize>]) -> Result<(), TargetError> {
        let groups: Vec<&[usize]> = groups.iter().map(Vec::as_slice).collect();
        Ok(LocalCluster::partition(self, &groups)?)
    }
    fn heal(&mut self) {
        LocalCluster::heal(self)
    }
    async fn wait_healthy(&self, timeout: Duration) -> bool {
        LocalCluster::wait_healthy(self, timeout).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_between_groups_cross_group_boundaries_only() {
        let links = links_between(&[vec![0, 1], vec![2, 3, 4]], 5);
        assert_eq!(links, vec![(0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4)]);
        // A member in no group is cut from everyone.
        assert_eq!(links_between(&[vec![0, 1]], 3), vec![(0, 2), (1, 2)]);
    }
}
