//! A cluster of separate `localcluster member` processes, for chaos runs that
//! break real processes: SIGKILL, SIGSTOP/SIGCONT, graceful SIGTERM restarts.
//!
//! [`ProcessCluster::start`] runs N members of one new cluster, each a child
//! process of `program` (the `localcluster` binary: tests pass
//! `env!("CARGO_BIN_EXE_localcluster")`, the CLI its own executable) with
//! etcd-style flags, its data dir and log file in a temporary directory. Where
//! a member runs and which addresses it uses comes from a [`Launcher`]: the
//! default [`Loopback`] runs every member directly on 127.0.0.1 free ports,
//! where links between members cannot be cut (partitions are reported as
//! unsupported). [`NetnsLauncher`] runs each member on its own test host (a
//! network namespace of [`Hosts`], through `ip netns exec`), listening on
//! `0.0.0.0` and advertising its host's address, and implements partitions
//! (groups, or single links for bridges) as cuts between hosts; launchers
//! plug in with [`ProcessCluster::start_with`]. The cluster owns its
//! launcher, so the hosts are removed only after every child is killed.
//!
//! Invariants: a restarted member keeps its name, addresses, flags and data
//! dir; every child is killed (SIGCONT first if stopped, then SIGKILL) and
//! reaped when the cluster is dropped, before the temporary data is removed
//! (unless [`ProcessCluster::keep_dir`] was called).

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;

use super::netns::{Hosts, NetnsError};
use super::target::{links_between, Target, TargetError};

/// How long a graceful stop may take before SIGKILL.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// Where and how each member process runs.
pub trait Launcher: Send + Sync {
    /// The command that runs `program` as member `i` (the member's flags are
    /// appended by the caller).
    fn command(&self, i: usize, program: &Path) -> Command;
    /// Member `i`'s client and peer addresses, as advertised.
    fn addrs(&self, i: usize) -> (SocketAddr, SocketAddr);
    /// The client and peer addresses member `i` listens on (by default the
    /// advertised ones).
    fn listen_addrs(&self, i: usize) -> (SocketAddr, SocketAddr) {
        self.addrs(i)
    }
    /// Whether links between members can be cut.
    fn supports_partitions(&self) -> bool {
        false
    }
    /// Cuts the links between each pair of members.
    fn cut(&self, _links: &[(usize, usize)]) -> Result<(), TargetError> {
        Err(TargetError::Unsupported("network partitions"))
    }
    /// Splits the `n` members into groups that only talk inside themselves
    /// (by default: cuts every link between groups).
    fn partition(&self, groups: &[Vec<usize>], n: usize) -> Result<(), TargetError> {
        self.cut(&links_between(groups, n))
    }
    /// Undoes every cut.
    fn heal(&self) {}
}

/// Every member on 127.0.0.1, on ports free when the launcher was made.
#[derive(Debug, Clone)]
pub struct Loopback {
    addrs: Vec<(SocketAddr, SocketAddr)>,
}

impl Loopback {
    /// Picks a free client and peer port for each of `n` members.
    pub fn new(n: usize) -> std::io::Result<Loopback> {
        let free = || -> std::io::Result<SocketAddr> {
            std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
        };
        let addrs = (0..n)
            .map(|_| Ok((free()?, free()?)))
            .collect::<std::io::Result<_>>()?;
        Ok(Loopback { addrs })
    }
}

impl Launcher for Loopback {
    fn command(&self, _i: usize, program: &Path) -> Command {
        Command::new(program)
    }
    fn addrs(&self, i: usize) -> (SocketAddr, SocketAddr) {
        self.addrs[i]
    }
}

/// Client port of every member on its own host.
const NETNS_CLIENT_PORT: u16 = 2379;
/// Peer port of every member on its own host.
const NETNS_PEER_PORT: u16 = 2380;

/// Every member on its own network-namespace host (see the
/// [module docs](self)): listens on `0.0.0.0:2379`/`2380` there, advertises
/// the host's address; cuts and partitions are cuts between hosts.
#[derive(Debug)]
pub struct NetnsLauncher {
    hosts: Hosts,
}

impl NetnsLauncher {
    /// Creates `n` hosts (needs root; [`Hosts::available`] says why not).
    pub fn new(n: usize) -> Result<NetnsLauncher, NetnsError> {
        Ok(NetnsLauncher {
            hosts: Hosts::create(n)?,
        })
    }

    /// The hosts the members run on.
    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }
}

impl Launcher for NetnsLauncher {
    fn command(&self, i: usize, program: &Path) -> Command {
        self.hosts.command(i, program)
    }
    fn addrs(&self, i: usize) -> (SocketAddr, SocketAddr) {
        let ip = self.hosts.addr(i).into();
        (
            SocketAddr::new(ip, NETNS_CLIENT_PORT),
            SocketAddr::new(ip, NETNS_PEER_PORT),
        )
    }
    fn listen_addrs(&self, _i: usize) -> (SocketAddr, SocketAddr) {
        let any = std::net::Ipv4Addr::UNSPECIFIED.into();
        (
            SocketAddr::new(any, NETNS_CLIENT_PORT),
            SocketAddr::new(any, NETNS_PEER_PORT),
        )
    }
    fn supports_partitions(&self) -> bool {
        true
    }
    fn cut(&self, links: &[(usize, usize)]) -> Result<(), TargetError> {
        for &(a, b) in links {
            self.hosts.cut(a, b)?;
        }
        Ok(())
    }
    fn partition(&self, groups: &[Vec<usize>], _n: usize) -> Result<(), TargetError> {
        let groups: Vec<&[usize]> = groups.iter().map(Vec::as_slice).collect();
        Ok(self.hosts.partition(&groups)?)
    }
    fn heal(&self) {
        if let Err(e) = self.hosts.heal() {
            tracing::warn!(error = %e, "chaos: cannot heal the test hosts");
        }
    }
}

/// One member process, restartable with the same flags.
struct Proc {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    client_url: String,
}

/// N `localcluster member` processes forming one cluster. See the
/// [module docs](self).
pub struct ProcessCluster {
    program: PathBuf,
    launcher: Box<dyn Launcher>,
    procs: Vec<Proc>,
    // Dropped after the children are killed (see `Drop`).
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for ProcessCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCluster")
            .field("program", &self.program)
            .field("dir", &self.dir.path())
            .field("members", &self.procs.len())
            .finish()
    }
}

impl ProcessCluster {
    /// Starts `n` members of `program` on loopback and waits (up to
    /// `timeout`) until they elect a leader.
    pub async fn start(
        program: impl Into<PathBuf>,
        n: usize,
        timeout: Duration,
    ) -> Result<ProcessCluster, TargetError> {
        let launcher = Loopback::new(n).map_err(|source| TargetError::Process {
            member: 0,
            what: "choose ports",
            source,
        })?;
        Self::start_with(program, n, Box::new(launcher), timeout).await
    }

    /// Starts `n` members placed by `launcher`; waits for a leader.
    pub async fn start_with(
        program: impl Into<PathBuf>,
        n: usize,
        launcher: Box<dyn Launcher>,
        timeout: Duration,
    ) -> Result<ProcessCluster, TargetError> {
        let dir = tempfile::Builder::new()
            .prefix("localcluster-chaos-")
            .tempdir()
            .map_err(|source| TargetError::Process {
                member: 0,
                what: "create the data dir",
                source,
            })?;
        let token = format!(
            "chaos-{}-{}",
            std::process::id(),
            launcher.addrs(0).1.port()
        );
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}=http://{}", launcher.addrs(i).1))
            .collect::<Vec<_>>()
            .join(",");
        let procs = (0..n)
            .map(|i| {
                let (client, peer) = launcher.addrs(i);
                let client = format!("http://{client}");
                let peer = format!("http://{peer}");
                let (listen_client, listen_peer) = launcher.listen_addrs(i);
                let listen_client = format!("http://{listen_client}");
                let listen_peer = format!("http://{listen_peer}");
                let data_dir = dir.path().join(format!("m{i}"));
                let args = [
                    "member",
                    "--name",
                    &format!("m{i}"),
                    "--data-dir",
                    &data_dir.to_string_lossy(),
                    "--listen-client-urls",
                    &listen_client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &listen_peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-token",
                    &token,
                    "--initial-cluster-state",
                    "new",
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                Proc {
                    args,
                    log: dir.path().join(format!("m{i}.log")),
                    child: None,
                    paused: false,
                    client_url: client,
                }
            })
            .collect();
        let mut cluster = ProcessCluster {
            program: program.into(),
            launcher,
            procs,
            dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        if !cluster.wait_healthy(timeout).await {
            return Err(TargetError::Process {
                member: 0,
                what: "start",
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no healthy cluster within {timeout:?}; logs in {}",
                        cluster.dir.path().display()
                    ),
                ),
            });
        }
        Ok(cluster)
    }

    /// The directory holding the members' data dirs and logs (`m{i}.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the data dirs and logs after the cluster is dropped (to look
    /// into a violation); the members are still killed.
    pub fn keep_dir(&mut self) {
        self.dir.disable_cleanup(true);
    }

    /// Member `i`'s process ID while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs.get(i)?.child.as_ref().map(Child::id)
    }

    fn proc_mut(&mut self, i: usize) -> Result<&mut Proc, TargetError> {
        self.procs.get_mut(i).ok_or(TargetError::NoSuchMember(i))
    }

    fn spawn(&mut self, i: usize) -> Result<(), TargetError> {
        let mut cmd = self.launcher.command(i, &self.program);
        let p = self.proc_mut(i)?;
        if p.child.is_some() {
            return Err(TargetError::AlreadyRunning(i));
        }
        let io = |source| TargetError::Process {
            member: i,
            what: "spawn",
            source,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .map_err(io)?;
        let child = cmd
            .args(&p.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(io)?;
        p.child = Some(child);
        p.paused = false;
        Ok(())
    }

    fn signal(&mut self, i: usize, signal: Signal) -> Result<(), TargetError> {
        let p = self.proc_mut(i)?;
        let child = p.child.as_ref().ok_or(TargetError::NotRunning(i))?;
        send_signal(Pid::from_raw(child.id() as i32), signal).map_err(|source| {
            TargetError::Signal {
                member: i,
                signal: signal.as_str(),
                source,
            }
        })
    }

    /// Whether member `i`'s process is alive (reaps it if it exited).
    fn alive(&mut self, i: usize) -> bool {
        let Some(p) = self.procs.get_mut(i) else {
            return false;
        };
        let Some(child) = &mut p.child else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            _ => {
                p.child = None;
                p.paused = false;
                false
            }
        }
    }

    /// SIGTERM, then wait for the exit (SIGKILL after [`STOP_PATIENCE`]).
    async fn stop(&mut self, i: usize) -> Result<(), TargetError> {
        if self.procs.get(i).is_some_and(|p| p.paused) {
            self.resume(i)?;
        }
        self.signal(i, Signal::SIGTERM)?;
        let deadline = Instant::now() + STOP_PATIENCE;
        while self.alive(i) {
            if Instant::now() > deadline {
                return self.kill(i);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn kill_all(&mut self) {
        for p in &mut self.procs {
            if let Some(mut child) = p.child.take() {
                let pid = Pid::from_raw(child.id() as i32);
                if p.paused {
                    let _ = send_signal(pid, Signal::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            p.paused = false;
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        self.kill_all();
        self.launcher.heal();
    }
}

impl Target for ProcessCluster {
    fn len(&self) -> usize {
        self.procs.len()
    }

    fn client_urls(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.client_url.clone()).collect()
    }

    async fn leader(&self) -> Option<usize> {
        let statuses = self.statuses().await;
        let ids: Vec<Option<(u64, u64, u64)>> = statuses;
        let quorum = self.procs.len() / 2 + 1;
        ids.iter().enumerate().find_map(|(i, s)| {
            let (me, leader, term) = (*s)?;
            if me != leader {
                return None;
            }
            let followers = ids
                .iter()
                .flatten()
                .filter(|(_, l, t)| *l == me && *t == term)
                .count();
            (followers >= quorum).then_some(i)
        })
    }

    fn is_running(&self, i: usize) -> bool {
        self.procs.get(i).is_some_and(|p| p.child.is_some())
    }

    fn is_paused(&self, i: usize) -> bool {
        self.procs.get(i).is_some_and(|p| p.paused)
    }

    fn kill(&mut self, i: usize) -> Result<(), TargetError> {
        let p = self.proc_mut(i)?;
        let mut child = p.child.take().ok_or(TargetError::NotRunning(i))?;
        p.paused = false;
        let io = |source| TargetError::Process {
            member: i,
            what: "kill",
            source,
        };
        child.kill().map_err(io)?;
        child.wait().map_err(io)?;
        Ok(())
    }

    fn start(&mut self, i: usize) -> Result<(), TargetError> {
        if self.alive(i) {
            return Err(TargetError::AlreadyRunning(i));
        }
        self.spawn(i)
    }

    async fn restart(&mut self, i: usize) -> Result<(), TargetError> {
        if self.alive(i) {
            self.stop(i).await?;
        }
        self.spawn(i)
    }

    fn pause(&mut self, i: usize) -> Result<(), TargetError> {
        self.signal(i, Signal::SIGSTOP)?;
        self.proc_mut(i)?.paused = true;
        Ok(())
    }

    fn resume(&mut self, i: usize) -> Result<(), TargetError> {
        self.signal(i, Signal::SIGCONT)?;
        self.proc_mut(i)?.paused = false;
        Ok(())
    }

    fn supports_partitions(&self) -> bool {
        self.launcher.supports_partitions()
    }

    fn cut(&mut self, links: &[(usize, usize)]) -> Result<(), TargetError> {
        self.launcher.cut(links)
    }

    fn partition(&mut self, groups: &[Vec<usize>]) -> Result<(), TargetError> {
        self.launcher.partition(groups, self.procs.len())
    }

    fn heal(&mut self) {
        self.launcher.heal()
    }

    fn crashed(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, p) in self.procs.iter_mut().enumerate() {
            let Some(child) = &mut p.child else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                out.push(format!(
                    "member m{i} exited by itself ({status}); see {}",
                    p.log.display()
                ));
                p.child = None;
                p.paused = false;
            }
        }
        out
    }

    async fn wait_healthy(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let live: Vec<&Option<(u64, u64, u64)>> = statuses
                .iter()
                .enumerate()
                .filter(|(i, _)| self.is_running(*i) && !self.is_paused(*i))
                .map(|(_, s)| s)
                .collect();
            let leader = live.first().and_then(|s| s.map(|(_, l, _)| l));
            let healthy = leader.is_some_and(|l| {
                l != 0
                    && live.iter().all(|s| s.is_some_and(|(_, sl, _)| sl == l))
                    && statuses.iter().flatten().any(|(me, _, _)| *me == l)
            });
            if healthy {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl ProcessCluster {
    /// Each running, unpaused member's `(member ID, leader ID, term)`, if it
    /// answers Status within a short time.
    async fn statuses(&self) -> Vec<Option<(u64, u64, u64)>> {
        let asks = self.procs.iter().map(|p| {
            let url = p.client_url.clone();
            let live = p.child.is_some() && !p.paused;
            async move {
                if !live {
                    return None;
                }
                let s = crate::client::status(&url, Duration::from_millis(500)).await?;
                Some((s.header?.member_id, s.leader, s.raft_term))
            }
        });
        futures::future::join_all(asks).await
    }
}
