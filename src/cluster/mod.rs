//! The embedded cluster: N real members in one process, with fault hooks, for
//! the integration tests of applications that use etcd.
//!
//! Every member is a real server ([`crate::member::Member`]) with its own
//! loopback client and peer ports and its own data dir, speaking etcd's v3 gRPC
//! API, so the application under test talks to it with its usual etcd client.
//! The test then breaks the cluster in controlled ways and checks how the
//! application copes:
//!
//! | hook | what happens | undone by |
//! |------|--------------|-----------|
//! | [`kill`](LocalCluster::kill) | the member dies at once, as on SIGKILL (only what was durable survives) | [`start`](LocalCluster::start) |
//! | [`stop`](LocalCluster::stop) | graceful stop: a leader hands leadership over first | [`start`](LocalCluster::start) |
//! | [`restart`](LocalCluster::restart) | graceful stop, then start again | — |
//! | [`pause`](LocalCluster::pause) | the member freezes, much as on SIGSTOP: no ticks, no answers (HTTP/2 pings still are) | [`resume`](LocalCluster::resume) |
//! | [`partition`](LocalCluster::partition) | Raft traffic between groups is dropped; clients still reach every member | [`heal`](LocalCluster::heal) |
//! | [`cut`](LocalCluster::cut) | Raft traffic between given pairs is dropped (e.g. a bridge: two halves that only one member links) | [`heal`](LocalCluster::heal) |
//! | [`kill_leader`](LocalCluster::kill_leader) | kills whichever member leads | [`start`](LocalCluster::start) |
//! | [`add_member`](LocalCluster::add_member) | `member add` (voter or learner), then the new member starts and joins | [`remove_member`](LocalCluster::remove_member) |
//! | [`promote_member`](LocalCluster::promote_member) | `member promote` of a learner | — |
//! | [`remove_member`](LocalCluster::remove_member) | `member remove`, then the member stops for good | — |
//!
//! A restarted member keeps its name, ID, ports and data dir, and catches up
//! from the leader.
//!
//! ```
//! use std::time::Duration;
//! use localcluster::LocalCluster;
//! use localcluster::pb::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Three members on free ports, data in a temporary directory.
//! let mut cluster = LocalCluster::builder().members(3).start().await?;
//! println!("etcdctl --endpoints {}", cluster.endpoints().join(","));
//!
//! // Any etcd client works; here the generated gRPC stubs.
//! let mut kv = KvClient::connect(cluster.client_urls()[0].clone()).await?;
//! kv.put(PutRequest { key: "k".into(), value: "v1".into(), ..Default::default() })
//!     .await?;
//!
//! // Kill the leader: the others elect a new one and writes go on.
//! let old = cluster.kill_leader()?;
//! let new = cluster.wait_leader(Duration::from_secs(5)).await?;
//! assert_ne!(old, new);
//! let mut kv = KvClient::connect(cluster.member(new).client_url.clone()).await?;
//! kv.put(PutRequest { key: "k".into(), value: "v2".into(), ..Default::default() })
//!     .await?;
//!
//! // Bring it back: it catches up from the new leader.
//! cluster.start(old)?;
//! cluster.wait_healthy(Duration::from_secs(5)).await?;
//! cluster.wait_converged(Duration::from_secs(5)).await?;
//! let r = KvClient::connect(cluster.member(old).client_url.clone())
//!     .await?
//!     .range(RangeRequest { key: b"k".to_vec(), ..Default::default() })
//!     .await?
//!     .into_inner();
//! assert_eq!(r.kvs[0].value, b"v2");
//! # Ok(()) }
//! ```
//!
//! Dropping the cluster (or [`LocalCluster::shutdown`]) kills every member,
//! closes every port and removes the temporary data; when `drop` returns the
//! ports can be bound again. Clusters share nothing, so tests that each start
//! one run in parallel. Tests that are not async use [`blocking::LocalCluster`].
//!
//! Timing: the defaults (heartbeat 20 ms, election timeout 200 ms, request
//! timeout 2 s) make elections take a few hundred milliseconds; a new cluster
//! is usually healthy within half a second. The builder changes all of them.
//!
//! Invariants: member `i` is always named `m{i}` and keeps its ID, URLs and
//! data dir for the life of the cluster (a removed member keeps its index); a
//! member that is not running holds no open file, and its ports stay bound
//! without listening until it starts again (a removed member's are let go);
//! the data of a temporary cluster is removed only after every member has
//! stopped.

pub mod blocking;
mod builder;
mod error;
mod membership;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::MemberConfig;
use crate::member::listen::{bind_unlistened, start_listening};
use crate::member::{Listeners, Member, Tuning};
use crate::raft::NodeStatus;

pub use builder::{
    LocalClusterBuilder, DEFAULT_ELECTION, DEFAULT_HEARTBEAT, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_START_TIMEOUT, DEFAULT_TOKEN,
};
pub use error::ClusterError;

/// How often the `wait_*` methods look at the members.
const POLL: Duration = Duration::from_millis(5);
/// How long `start` retries binding a port that is still held (by a socket a
/// peer or the kernel has not let go of yet).
const REBIND_PATIENCE: Duration = Duration::from_secs(3);

/// What does not change about a member of an embedded cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Index in the cluster (0-based).
    pub index: usize,
    /// `m{index}`.
    pub name: String,
    /// The Raft member ID, as etcd derives it (etcdctl prints it in hex).
    pub id: u64,
    /// Client URL, `http://127.0.0.1:PORT`.
    pub client_url: String,
    /// Peer URL, `http://127.0.0.1:PORT`.
    pub peer_url: String,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// The member's `--data-dir`.
    pub data_dir: PathBuf,
}

impl MemberInfo {
    /// The client endpoint as `127.0.0.1:PORT` (etcdctl's `--endpoints` form).
    pub fn endpoint(&self) -> String {
        self.client_addr.to_string()
    }

    /// The member ID in hex, as etcdctl prints it.
    pub fn id_hex(&self) -> String {
        format!("{:x}", self.id)
    }
}

/// One member's place in the cluster: fixed identity and, while it runs, the
/// member itself.
struct Slot {
    info: MemberInfo,
    config: MemberConfig,
    member: Option<Member>,
    paused: bool,
    /// Removed from the cluster by [`LocalCluster::remove_member`]: never runs again.
    removed: bool,
    /// While the member is down, its ports (see [`HeldPorts`]).
    held: HeldPorts,
}

/// A down member's ports, bound but not listening: a dial is refused as by a
/// dead process, and no other socket takes the port before the member starts
/// again. The ports come from the ephemeral range, which other tests'
/// listeners and every outgoing connection draw from.
#[derive(Default)]
struct HeldPorts {
    client: Option<socket2::Socket>,
    peer: Option<socket2::Socket>,
}

impl HeldPorts {
    /// Holds the ports of `info`; a port that cannot be bound now (a socket
    /// the system has not let go of) is bound again at the start.
    fn of(info: &MemberInfo) -> HeldPorts {
        HeldPorts {
            client: bind_unlistened(info.client_addr).ok(),
            peer: bind_unlistened(info.peer_addr).ok(),
        }
    }
}

/// Listens on a held port, or binds it again if it was not held.
fn reopen(
    name: &str,
    addr: SocketAddr,
    held: Option<socket2::Socket>,
) -> Result<std::net::TcpListener, ClusterError> {
    if let Some(Ok(listener)) = held.map(start_listening) {
        return Ok(listener);
    }
    rebind(name, addr)
}

impl Slot {
    /// The member if it runs and is not paused.
    fn live(&self) -> Option<&Member> {
        self.member.as_ref().filter(|_| !self.paused)
    }
}

/// A running embedded cluster. See the [module docs](self).
pub struct LocalCluster {
    slots: Vec<Slot>,
    /// Group of each member while partitioned.
    groups: Option<Vec<usize>>,
    /// Links cut by [`LocalCluster::cut`], as `(low, high)` index pairs.
    cuts: std::collections::BTreeSet<(usize, usize)>,
    tuning: Tuning,
    /// The temporary data dir; dropped (removed) after every member stopped,
    /// because `Drop` kills the members before the fields are dropped.
    temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("members", &self.describe())
            .finish()
    }
}

impl LocalCluster {
    /// Settings for a new cluster (3 members, fast timings, temporary data).
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder::default()
    }

    /// Number of members, running or not.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every member's client URL (`http://127.0.0.1:PORT`), in index order,
    /// whether it runs or not, as an application would be configured.
    pub fn client_urls(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| s.info.client_url.clone())
            .collect()
    }

    /// Every member's client endpoint as `127.0.0.1:PORT`, in index order
    /// (join with `,` for `etcdctl --endpoints`).
    pub fn endpoints(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.info.endpoint()).collect()
    }

    /// Member `i`'s name, ID, URLs and data dir.
    ///
    /// # Panics
    /// If `i >= self.len()`, like slice indexing.
    pub fn member(&self, i: usize) -> &MemberInfo {
        &self.slots[i].info
    }

    /// Every member's [`MemberInfo`], in index order.
    pub fn members(&self) -> impl Iterator<Item = &MemberInfo> {
        self.slots.iter().map(|s| &s.info)
    }

    /// The index of the member with this Raft ID.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.slots.iter().position(|s| s.info.id == id)
    }

    /// Whether member `i` runs (paused members run).
    pub fn is_running(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| s.member.is_some())
    }

    /// Whether member `i` is paused.
    pub fn is_paused(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| s.paused)
    }

    /// Member `i`'s Raft status (leader, term, indexes), if it runs. A paused
    /// member's status is frozen.
    pub fn status(&self, i: usize) -> Option<NodeStatus> {
        self.slots.get(i)?.member.as_ref().map(|m| m.status())
    }

    /// The running member itself, for what the hooks do not cover (its
    /// [`Member::transfer_leader`], [`Member::watch_status`], ...).
    pub fn member_handle(&self, i: usize) -> Option<&Member> {
        self.slots.get(i)?.member.as_ref()
    }

    /// The index of the current leader: a running, unpaused member that is
    /// leader and that a quorum of the cluster (itself included) follows in
    /// its term, counting only members on its side of a
    /// [`partition`](LocalCluster::partition). A leader cut off in a minority
    /// is not counted, even before it and its former followers notice.
    pub fn leader(&self) -> Option<usize> {
        let statuses: Vec<Option<NodeStatus>> = self
            .slots
            .iter()
            .map(|s| s.live().map(|m| m.status()))
            .collect();
        statuses.iter().enumerate().find_map(|(i, st)| {
            let st = st.as_ref()?;
            if !st.is_leader {
                return None;
            }
            // A quorum of the voters as the leader knows them (learners and
            // removed members do not count).
            let quorum = st.voters.len() / 2 + 1;
            let followers = statuses
                .iter()
                .enumerate()
                .filter_map(|(j, o)| o.as_ref().map(|o| (j, o)))
                .filter(|(j, o)| o.leader_id == st.id && o.term == st.term && self.connected(*j, i))
                .filter(|(_, o)| st.voters.contains(&o.id))
                .count();
            (followers >= quorum).then_some(i)
        })
    }

    /// Waits until [`LocalCluster::leader`] names a member, and returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<usize, ClusterError> {
        self.poll("a leader", timeout, || self.leader()).await
    }

    /// Waits until the cluster is healthy: every running, unpaused member
    /// follows the same leader (one of them, recognised by a quorum) and has
    /// published itself, so it serves clients. Members that are stopped,
    /// killed or paused are not waited for; during a partition the cluster is
    /// not healthy until [`LocalCluster::heal`].
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), ClusterError> {
        self.poll("a healthy cluster", timeout, || {
            self.healthy().then_some(())
        })
        .await
    }

    fn healthy(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let leader_id = self.slots[leader].info.id;
        self.slots
            .iter()
            .filter_map(|s| s.live())
            .all(|m| m.is_ready() && m.status().leader_id == leader_id)
    }

    /// Waits until every running, unpaused member has applied the same Raft
    /// index, the leader's commit index: they then hold the same data. Useful
    /// after a restart or a heal, before comparing members. Concurrent writes
    /// can keep it from ever holding, and so does a partition (the minority
    /// cannot catch up before [`LocalCluster::heal`]).
    pub async fn wait_converged(&self, timeout: Duration) -> Result<(), ClusterError> {
        self.poll("every member to apply the same index", timeout, || {
            let leader = self.leader()?;
            let commit = self.status(leader)?.commit_index;
            self.slots
                .iter()
                .filter_map(|s| s.live())
                .all(|m| m.status().applied_index == commit)
                .then_some(())
        })
        .await
    }

    async fn poll<T>(
        &self,
        what: &'static str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Result<T, ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what,
                    after: timeout,
                    state: self.describe(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One line per member: state, leader, term, indexes (for error messages).
    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .slots
            .iter()
            .map(|s| match &s.member {
                None => format!("{} down", s.info.name),
                Some(m) => {
                    let st = m.status();
                    let leader = self
                        .index_of(st.leader_id)
                        .map(|i| format!("m{i}"))
                        .unwrap_or_else(|| "none".into());
                    format!(
                        "{} {}{}leader={} term={} commit={} applied={}",
                        s.info.name,
                        if st.is_leader { "LEADER " } else { "" },
                        if s.paused { "PAUSED " } else { "" },
                        leader,
                        st.term,
                        st.commit_index,
                        st.applied_index,
                    )
                }
            })
            .collect();
        parts.join("; ")
    }

    fn slot(&self, i: usize) -> Result<&Slot, ClusterError> {
        let len = self.slots.len();
        self.slots
            .get(i)
            .ok_or(ClusterError::NoSuchMember { index: i, len })
    }

    fn slot_mut(&mut self, i: usize) -> Result<&mut Slot, ClusterError> {
        let len = self.slots.len();
        self.slots
            .get_mut(i)
            .ok_or(ClusterError::NoSuchMember { index: i, len })
    }

    fn running(&self, i: usize) -> Result<&Member, ClusterError> {
        self.slot(i)?
            .member
            .as_ref()
            .ok_or(ClusterError::NotRunning(i))
    }

    /// Kills member `i` abruptly, as SIGKILL would: what it had made durable
    /// survives (applied state it had not flushed is applied again from the
    /// Raft log at the next start), in-flight requests fail, connections are
    /// dropped without a GOAWAY. Its files are released when this returns;
    /// its ports stay reserved for it, refusing dials, until
    /// [`LocalCluster::start`]. Blocks the calling thread until the member's
    /// tasks have ended (at most a few seconds).
    pub fn kill(&mut self, i: usize) -> Result<(), ClusterError> {
        let slot = self.slot_mut(i)?;
        let member = slot.member.take().ok_or(ClusterError::NotRunning(i))?;
        slot.paused = false;
        member.kill();
        slot.held = HeldPorts::of(&slot.info);
        Ok(())
    }

    /// Kills the current leader (see [`LocalCluster::leader`]) and returns its
    /// index. Fails with [`ClusterError::NoLeader`] when there is none; call
    /// [`LocalCluster::wait_leader`] first if one may be being elected.
    pub fn kill_leader(&mut self) -> Result<usize, ClusterError> {
        let leader = self.leader().ok_or(ClusterError::NoLeader)?;
        self.kill(leader)?;
        Ok(leader)
    }

    /// Stops member `i` gracefully: a leader first hands leadership to another
    /// member, then in-flight requests finish and applied state is flushed.
    /// A [paused](LocalCluster::pause) member cannot hand anything over: it
    /// is killed instead. Its ports stay reserved for it, as after
    /// [`kill`](LocalCluster::kill). Undo with [`LocalCluster::start`].
    pub async fn stop(&mut self, i: usize) -> Result<(), ClusterError> {
        let slot = self.slot_mut(i)?;
        let member = slot.member.take().ok_or(ClusterError::NotRunning(i))?;
        let paused = std::mem::replace(&mut slot.paused, false);
        if paused {
            member.kill();
        } else {
            member.stop().await;
        }
        slot.held = HeldPorts::of(&slot.info);
        Ok(())
    }

    /// Starts member `i` again after [`kill`](LocalCluster::kill) or
    /// [`stop`](LocalCluster::stop): same name, ID, ports and data dir. It
    /// rejoins with what it had and catches up from the leader; an active
    /// [`partition`](LocalCluster::partition) applies to it too. Returns once
    /// the member runs, not once it caught up (see
    /// [`LocalCluster::wait_healthy`], [`LocalCluster::wait_converged`]).
    ///
    /// The member's ports were reserved for it while it was down. If one
    /// could not be (a socket the system had not let go of yet), this blocks
    /// the calling thread for up to 3 s binding it again, then fails with
    /// [`ClusterError::Bind`].
    pub fn start(&mut self, i: usize) -> Result<(), ClusterError> {
        let blocked = self.blocked_for(i);
        let tuning = Tuning {
            blocked_peers: blocked,
            ..self.tuning.clone()
        };
        let slot = self.slot_mut(i)?;
        if slot.removed {
            return Err(ClusterError::Removed(i));
        }
        if slot.member.is_some() {
            return Err(ClusterError::AlreadyRunning(i));
        }
        let name = slot.info.name.clone();
        let held = std::mem::take(&mut slot.held);
        let client = reopen(&name, slot.info.client_addr, held.client)?;
        let peer = reopen(&name, slot.info.peer_addr, held.peer)?;
        let member = Member::start_with(
            &slot.config,
            Listeners {
                client: vec![client],
                peer: vec![peer],
            },
            tuning,
        )
        .map_err(|source| ClusterError::Start {
            name: name.clone(),
            source,
        })?;
        if member.id() != slot.info.id {
            return Err(ClusterError::Config {
                name,
                reason: format!(
                    "restarted with ID {:x}, expected {:x}",
                    member.id(),
                    slot.info.id
                ),
            });
        }
        slot.member = Some(member);
        slot.paused = false;
        Ok(())
    }

    /// Stops member `i` gracefully if it runs, then starts it again.
    pub async fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.slot(i)?.member.is_some() {
            self.stop(i).await?;
        }
        self.start(i)
    }

    /// Freezes member `i`, much as SIGSTOP would: it stops ticking, processing
    /// Raft messages and answering clients (their requests wait), while its
    /// sockets stay open. Unlike a stopped process, its connections still
    /// accept and answer HTTP/2 pings, so a client that detects hung servers
    /// by keepalive alone does not fail over. A paused leader is replaced
    /// after an election timeout. Undo with [`LocalCluster::resume`].
    pub fn pause(&mut self, i: usize) -> Result<(), ClusterError> {
        self.running(i)?.pause();
        self.slot_mut(i)?.paused = true;
        Ok(())
    }

    /// Undoes [`LocalCluster::pause`]: the member handles what queued up,
    /// steps down if it was a deposed leader, and catches up.
    pub fn resume(&mut self, i: usize) -> Result<(), ClusterError> {
        self.running(i)?.resume();
        self.slot_mut(i)?.paused = false;
        Ok(())
    }

    /// Splits the cluster's Raft traffic into `groups`: members talk only to
    /// members of their own group; a member in no group is alone. Clients
    /// still reach every member (a member cut off from the quorum answers
    /// writes with `etcdserver: no leader` or `etcdserver: request timed
    /// out`). Replaces any earlier partition; undo with
    /// [`LocalCluster::heal`].
    ///
    /// `cluster.partition(&[&[0], &[1, 2]])` isolates member 0.
    pub fn partition(&mut self, groups: &[&[usize]]) -> Result<(), ClusterError> {
        let n = self.slots.len();
        // Members in no group get a group of their own.
        let mut group_of: Vec<Option<usize>> = vec![None; n];
        for (g, members) in groups.iter().enumerate() {
            for &i in members.iter() {
                let slot = group_of
                    .get_mut(i)
                    .ok_or(ClusterError::NoSuchMember { index: i, len: n })?;
                if slot.is_some() {
                    return Err(ClusterError::Partition(format!(
                        "member {i} is in more than one group"
                    )));
                }
                *slot = Some(g);
            }
        }
        let mut next = groups.len();
        let groups: Vec<usize> = group_of
            .into_iter()
            .map(|g| {
                g.unwrap_or_else(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        self.groups = Some(groups);
        self.cuts.clear();
        self.block_all();
        Ok(())
    }

    /// Cuts the Raft links between each pair of `links` (both directions),
    /// leaving every other link up; clients still reach every member.
    /// Replaces any earlier partition or cut; undo with
    /// [`LocalCluster::heal`]. This expresses what groups cannot, such as a
    /// bridge: `cluster.cut(&[(0, 2)])` leaves 0 and 2 unable to talk while
    /// both talk to 1.
    pub fn cut(&mut self, links: &[(usize, usize)]) -> Result<(), ClusterError> {
        let n = self.slots.len();
        let mut cuts = std::collections::BTreeSet::new();
        for &(a, b) in links {
            for i in [a, b] {
                if i >= n {
                    return Err(ClusterError::NoSuchMember { index: i, len: n });
                }
            }
            if a != b {
                cuts.insert((a.min(b), a.max(b)));
            }
        }
        self.groups = None;
        self.cuts = cuts;
        self.block_all();
        Ok(())
    }

    /// Whether the Raft link between members `i` and `j` is up.
    fn connected(&self, i: usize, j: usize) -> bool {
        let group = |i: usize| self.groups.as_ref().and_then(|g| g.get(i).copied());
        group(i) == group(j) && !self.cuts.contains(&(i.min(j), i.max(j)))
    }

    /// Tells every running member which peers it is cut off from.
    fn block_all(&self) {
        for i in 0..self.slots.len() {
            let blocked = self.blocked_for(i);
            if let Some(m) = &self.slots[i].member {
                m.block_peers(blocked);
            }
        }
    }

    /// Undoes [`LocalCluster::partition`]: every member talks to every other
    /// again; the minority catches up from the majority's leader.
    pub fn heal(&mut self) {
        self.groups = None;
        self.cuts.clear();
        for s in &self.slots {
            if let Some(m) = &s.member {
                m.heal();
            }
        }
    }

    /// The IDs of the members whose link to member `i` is down (other
    /// partition group, or cut).
    fn blocked_for(&self, i: usize) -> Vec<u64> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(j, _)| !self.connected(i, *j))
            .map(|(_, s)| s.info.id)
            .collect()
    }

    /// Stops every member and removes the temporary data, reporting a failure
    /// to remove it (which `drop` cannot). Members are killed, not stopped
    /// gracefully: everything acknowledged is durable either way.
    pub async fn shutdown(mut self) -> Result<(), ClusterError> {
        self.close()
    }

    /// Kills every member, then removes the temporary data dir.
    fn close(&mut self) -> Result<(), ClusterError> {
        self.kill_all();
        match self.temp.take() {
            Some(temp) => {
                let path = temp.path().display().to_string();
                temp.close()
                    .map_err(|source| ClusterError::DataDir { path, source })
            }
            None => Ok(()),
        }
    }

    fn kill_all(&mut self) {
        for s in &mut self.slots {
            s.paused = false;
            if let Some(m) = s.member.take() {
                m.kill();
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
        // `temp` is dropped after this, removing the data of stopped members.
    }
}

/// Binds a member's old port again, waiting a little if it is still held.
fn rebind(name: &str, addr: SocketAddr) -> Result<std::net::TcpListener, ClusterError> {
    let deadline = Instant::now() + REBIND_PATIENCE;
    loop {
        match builder::bind(name, addr.port()) {
            Ok(l) => return Ok(l),
            Err(ClusterError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}
