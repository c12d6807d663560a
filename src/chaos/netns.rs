//! Test hosts on one machine: network namespaces joined by a private switch,
//! whose links the nemesis can cut, partition or make lossy.
//!
//! [`Hosts::create`] builds N "hosts", each a network namespace with its own
//! loopback and one interface `eth0` at `10.A.B.(i+1)/24`, and one more
//! namespace holding the switch: a Linux bridge `br0` with one veth port per
//! host. A control link joins the switch to the namespace of the caller (the
//! test), at `10.A.B.254`, so the test reaches every host at all times, like
//! the control node of a Jepsen run, whatever the hosts' own partitions.
//! Processes run on a host through [`Hosts::command`] (`ip netns exec`), and
//! a member listening on `0.0.0.0` there is reachable at [`Hosts::addr`].
//!
//! Faults are made with iproute2 only (`ip`, `tc`; no iptables/nftables):
//! - a cut between two hosts is a `blackhole` route to the other's /32 in
//!   each of the two namespaces, so no packet crosses in either direction;
//!   [`Hosts::partition`] cuts every pair of hosts that share no group (a
//!   host in two groups bridges them), [`Hosts::heal`] flushes those routes;
//! - packet loss on a host's link is a random drop in both directions: an
//!   HTB root qdisc whose classic-BPF classifier (`ld rand`) sends the given
//!   share of packets to a class whose `pfifo limit 0` drops all it gets
//!   (netem is not needed, which some kernels lack).
//!
//! Invariants: names are `lcnet-<pid>-<tag>-…`, unique per process and per
//! [`Hosts`]; the subnet is picked so that it overlaps no route of the
//! caller's namespace (creations are serialised by a file lock, so two sets
//! never pick the same one); everything is removed on drop (processes still running
//! on the hosts are killed first), also when a test panics; and namespaces
//! left behind by a process that died (SIGKILL) are removed by the next
//! [`Hosts::create`]. Creating namespaces needs root (CAP_SYS_ADMIN and
//! CAP_NET_ADMIN); [`Hosts::available`] says why it is not possible, so a
//! test can skip loudly.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use rand::Rng;

/// Prefix of every namespace this module creates.
const PREFIX: &str = "lcnet-";

/// Hosts fit in one /24; .254 is the control link.
const MAX_HOSTS: usize = 253;

/// Why a host operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A command could not be started (iproute2 not installed?).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A host index out of range.
    #[error("no host {index} (there are {len})")]
    NoSuchHost { index: usize, len: usize },
    /// Too many hosts for one /24.
    #[error("{0} hosts do not fit one subnet (at most {MAX_HOSTS})")]
    TooMany(usize),
    /// Every candidate subnet overlaps a route of the caller's namespace.
    #[error("no free 10.x.y.0/24 subnet for the test hosts")]
    NoSubnet,
    /// The lock that serialises creation could not be taken.
    #[error("cannot lock {0}")]
    Lock(String),
    /// A cut between a host and itself.
    #[error("cannot cut host {0} from itself")]
    SelfCut(usize),
}

/// Runs a command to its end; its stdout, or a typed error with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ip(args: &[&str]) -> Result<String, NetnsError> {
    run("ip", args)
}

fn tc(args: &[&str]) -> Result<String, NetnsError> {
    run("tc", args)
}

/// The names of the existing network namespaces.
fn namespaces() -> Result<Vec<String>, NetnsError> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Kills (SIGKILL) every process in namespace `ns`.
fn kill_all_in(ns: &str) {
    let Ok(pids) = ip(&["netns", "pids", ns]) else {
        return;
    };
    for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Removes the namespaces of processes that are gone (best effort), with
/// whatever still runs in them.
fn remove_stale() {
    let Ok(all) = namespaces() else { return };
    for ns in all {
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<u32>) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(&ns);
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

/// Takes the machine-wide lock that serialises [`Hosts::create`] (a file
/// lock in the temporary directory, released when the guard drops).
fn creation_lock() -> Result<nix::fcntl::Flock<std::fs::File>, NetnsError> {
    let path = std::env::temp_dir().join("localcluster-netns.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| NetnsError::Lock(format!("{}: {e}", path.display())))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| NetnsError::Lock(format!("{}: {e}", path.display())))
}

/// Parses `a.b.c.d/len` (or a bare address: /32) into (network, mask).
fn parse_prefix(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()?),
        None => (s, 32),
    };
    let addr: Ipv4Addr = addr.parse().ok()?;
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32))
    };
    Some((u32::from(addr) & mask, mask))
}

/// Whether `10.a.b.0/24` overlaps one of the caller's routes (the default
/// route excepted).
fn subnet_in_use(routes: &str, a: u8, b: u8) -> bool {
    let net = u32::from(Ipv4Addr::new(10, a, b, 0));
    let mask24 = u32::MAX << 8;
    routes
        .lines()
        .filter_map(|l| {
            // `ip route show table all` lines may start with a route type.
            let mut words = l.split_whitespace();
            let first = words.next()?;
            let dst = match first {
                "unicast" | "local" | "broadcast" | "blackhole" | "unreachable" | "prohibit"
                | "multicast" | "throw" | "anycast" | "nat" => words.next()?,
                w => w,
            };
            parse_prefix(dst)
        })
        .any(|(n, m)| {
            let common = m & mask24;
            n & common == net & common
        })
}

/// N test hosts on one private switch; see the module docs. Everything is
/// removed when it is dropped.
pub struct Hosts {
    /// `lcnet-<pid>-<tag>`: the prefix of this set's namespaces.
    tag: String,
    /// The switch's namespace, once created.
    switch: Option<String>,
    /// The hosts' namespaces, in order.
    hosts: Vec<String>,
    /// The control link's end in the caller's namespace, once created.
    control_if: Option<String>,
    /// `10.A.B`.
    subnet: (u8, u8),
}

impl Hosts {
    /// Whether network namespaces (with veth links and a bridge) can be
    /// created here; `Err` says why not (no iproute2, not root, no kernel
    /// support), for a test to skip with that reason.
    pub fn available() -> Result<(), String> {
        if let Err(e) = ip(&["-V"]) {
            return Err(format!("iproute2 `ip` is not usable: {e}"));
        }
        let probe = format!(
            "{PREFIX}{}-probe{:04x}",
            std::process::id(),
            rand::thread_rng().gen::<u16>()
        );
        let result = (|| {
            ip(&["netns", "add", &probe])?;
            ip(&["-n", &probe, "link", "add", "br0", "type", "bridge"])?;
            ip(&[
                "-n", &probe, "link", "add", "va", "type", "veth", "peer", "name", "vb",
            ])?;
            ip(&["-n", &probe, "link", "set", "va", "master", "br0"])?;
            Ok::<_, NetnsError>(())
        })();
        let _ = ip(&["netns", "del", &probe]);
        result.map_err(|e| format!("cannot create network namespaces (root needed): {e}"))
    }

    /// Creates `n` hosts on a fresh switch, with a control link from the
    /// caller's namespace. Removes stale namespaces of dead processes first.
    pub fn create(n: usize) -> Result<Hosts, NetnsError> {
        if n > MAX_HOSTS {
            return Err(NetnsError::TooMany(n));
        }
        // One creation at a time on this machine (threads and processes), so
        // that two sets never pick the same tag or subnet.
        let _lock = creation_lock()?;
        remove_stale();
        let pid = std::process::id();
        let mut rng = rand::thread_rng();
        let existing = namespaces()?;
        let tag = loop {
            let t = format!("{PREFIX}{pid}-{:04x}", rng.gen::<u16>());
            if !existing.iter().any(|ns| ns.starts_with(&format!("{t}-"))) {
                break t;
            }
        };
        let routes = ip(&["-4", "route", "show", "table", "all"])?;
        let subnet = (0..64)
            .map(|_| (rng.gen_range(200..=249u8), rng.gen::<u8>()))
            .find(|&(a, b)| !subnet_in_use(&routes, a, b))
            .ok_or(NetnsError::NoSubnet)?;
        // Built step by step, so that a failure half-way is cleaned up by Drop.
        let mut hosts = Hosts {
            tag,
            switch: None,
            hosts: Vec::new(),
            control_if: None,
            subnet,
        };
        hosts.build(n)?;
        Ok(hosts)
    }

    fn build(&mut self, n: usize) -> Result<(), NetnsError> {
        let sw = format!("{}-sw", self.tag);
        ip(&["netns", "add", &sw])?;
        self.switch = Some(sw.clone());
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let h = format!("{}-h{i}", self.tag);
            ip(&["netns", "add", &h])?;
            self.hosts.push(h.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &h,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &h, "link", "set", "lo", "up"])?;
            let addr = format!("{}/24", self.addr(i));
            ip(&["-n", &h, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &h, "link", "set", "eth0", "up"])?;
        }
        // The control link: its end here is named after the pid and tag
        // (interface names have at most 15 bytes).
        let short = &self.tag[self.tag.len() - 4..];
        let ctl = format!("lc{}x{short}", std::process::id());
        ip(&[
            "link", "add", &ctl, "type", "veth", "peer", "name", "ctl", "netns", &sw,
        ])?;
        self.control_if = Some(ctl.clone());
        ip(&["-n", &sw, "link", "set", "ctl", "master", "br0", "up"])?;
        let addr = format!("{}/24", self.control_addr());
        ip(&["addr", "add", &addr, "dev", &ctl])?;
        ip(&["link", "set", &ctl, "up"])?;
        Ok(())
    }

    /// How many hosts there are.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are no hosts.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `i`'s address. Panics if `i` is out of range, like indexing.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        assert!(
            i < self.hosts.len(),
            "no host {i} (there are {})",
            self.len()
        );
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, i as u8 + 1)
    }

    /// The address of the caller's end of the control link.
    pub fn control_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, 254)
    }

    /// Host `i`'s namespace name (for `ip netns exec`, `ip -n`).
    pub fn namespace(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// A command that runs `program` on host `i` (`ip netns exec NS
    /// program`; `ip` execs the program, so the child is the program itself).
    /// Panics if `i` is out of range.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i]]).arg(program);
        cmd
    }

    fn check(&self, i: usize) -> Result<&str, NetnsError> {
        self.hosts
            .get(i)
            .map(String::as_str)
            .ok_or(NetnsError::NoSuchHost {
                index: i,
                len: self.hosts.len(),
            })
    }

    /// Cuts hosts `a` and `b` from each other, both directions (other cuts stay).
    pub fn cut(&self, a: usize, b: usize) -> Result<(), NetnsError> {
        let (na, nb) = (self.check(a)?, self.check(b)?);
        if a == b {
            return Err(NetnsError::SelfCut(a));
        }
        for (ns, peer) in [(na, b), (nb, a)] {
            let dst = format!("{}/32", self.addr(peer));
            ip(&["-n", ns, "route", "replace", "blackhole", &dst])?;
        }
        Ok(())
    }

    /// Heals, then cuts every pair of hosts that share no group: hosts in
    /// different groups cannot reach each other, a host in several groups
    /// reaches all of them (a bridge), a host in no group reaches none.
    pub fn partition(&self, groups: &[&[usize]]) -> Result<(), NetnsError> {
        for &i in groups.iter().flat_map(|g| g.iter()) {
            self.check(i)?;
        }
        self.heal()?;
        let n = self.len();
        for a in 0..n {
            for b in a + 1..n {
                if !groups.iter().any(|g| g.contains(&a) && g.contains(&b)) {
                    self.cut(a, b)?;
                }
            }
        }
        Ok(())
    }

    /// Drops `percent` of the packets (0 to 100) on host `i`'s link, both
    /// directions, at random; 0 restores the link.
    pub fn loss(&self, i: usize, percent: u32) -> Result<(), NetnsError> {
        let h = self.check(i)?.to_string();
        let sw = self.switch.clone().unwrap_or_default();
        let port = format!("p{i}");
        for (ns, dev) in [(h.as_str(), "eth0"), (sw.as_str(), port.as_str())] {
            let shown = tc(&["-n", ns, "qdisc", "show", "dev", dev])?;
            if shown.contains("htb 1:") {
                tc(&["-n", ns, "qdisc", "del", "dev", dev, "root"])?;
            }
            if percent == 0 {
                continue;
            }
            tc(&[
                "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1",
            ])?;
            for class in ["1:1", "1:2"] {
                tc(&[
                    "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", class, "htb",
                    "rate", "10gbit", "quantum", "60000",
                ])?;
            }
            tc(&[
                "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:2", "handle", "2:", "pfifo",
                "limit", "0",
            ])?;
            let program = drop_program(percent);
            tc(&[
                "-n", ns, "filter", "add", "dev", dev, "parent", "1:", "protocol", "all", "prio",
                "1", "bpf", "bytecode", &program, "classid", "1:2",
            ])?;
        }
        Ok(())
    }

    /// Removes every cut and every loss.
    pub fn heal(&self) -> Result<(), NetnsError> {
        for (i, h) in self.hosts.iter().enumerate() {
            let cuts = ip(&["-n", h, "-4", "route", "show", "type", "blackhole"])?;
            if !cuts.trim().is_empty() {
                ip(&["-n", h, "-4", "route", "flush", "type", "blackhole"])?;
            }
            // Without tc there can be no loss to clear.
            match self.loss(i, 0) {
                Err(NetnsError::Spawn { .. }) => {}
                other => other?,
            }
        }
        Ok(())
    }
}

/// A classic-BPF classifier program (`tc ... bpf bytecode`) that matches
/// `percent`% of the packets at random: `ld rand; jge T, keep; ret -1
/// (match); keep: ret 0 (no match)`.
fn drop_program(percent: u32) -> String {
    if percent >= 100 {
        return "1,6 0 0 4294967295".to_string();
    }
    let threshold = (u64::from(percent) << 32) / 100;
    // SKF_AD_OFF (-0x1000) + SKF_AD_RANDOM (56), as an unsigned 32-bit offset.
    let ld_rand = 0xffff_f000u32 + 56;
    format!("4,32 0 0 {ld_rand},53 1 0 {threshold},6 0 0 4294967295,6 0 0 0")
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_all_in(h);
        }
        if let Some(ctl) = &self.control_if {
            let _ = ip(&["link", "del", ctl]);
        }
        for h in &self.hosts {
            let _ = ip(&["netns", "del", h]);
        }
        if let Some(sw) = &self.switch {
            let _ = ip(&["netns", "del", sw]);
        }
    }
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts")
            .field("namespaces", &self.hosts)
            .field(
                "subnet",
                &format!("10.{}.{}.0/24", self.subnet.0, self.subnet.1),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subnet_is_in_use_when_a_route_overlaps_it() {
        let routes = "default via 172.16.0.1 dev eth0\n\
                      10.200.0.0/16 dev x proto kernel\n\
                      local 10.211.7.5 dev y table local\n\
                      172.16.0.0/24 dev eth0\n";
        assert!(subnet_in_use(routes, 200, 3));
        assert!(subnet_in_use(routes, 211, 7));
        assert!(!subnet_in_use(routes, 211, 8));
        assert!(!subnet_in_use(routes, 201, 0));
        assert!(subnet_in_use("10.0.0.0/8 dev z\n", 230, 1));
    }

    #[test]
    fn the_drop_program_matches_the_requested_share() {
        assert_eq!(drop_program(100), "1,6 0 0 4294967295");
        assert!(drop_program(50).contains(",53 1 0 2147483648,"));
        assert!(drop_program(0).contains(",53 1 0 0,"));
    }
}
