//! The seeds' deployment on separate hosts, with real network partitions.
//!
//! Each host is a network namespace made by [`Hosts`] (veth links to a
//! private bridge); on each runs a real `localcluster member` process the way
//! etcd's clustering guide deploys a static cluster: listening on `0.0.0.0`,
//! advertising its host's own address, with a static `--initial-cluster` of
//! those addresses. The test talks to every member over the control link
//! (always up, like a Jepsen control node) while the nemesis cuts the links
//! between hosts: the leader isolated, a majority/minority split, a bridge
//! (one host linked to both sides) and a lossy link. After healing, every
//! member must hold the same data (`HashKV` at one revision). And the chaos
//! runner against a [`ProcessCluster`] on such hosts ([`NetnsLauncher`]),
//! where network faults apply to member processes too.
//!
//! Creating namespaces needs root: without it the tests print a loud
//! `SKIPPED` notice, except under `CI=true`, where they fail. Member
//! processes are killed and the namespaces removed when a test ends, also
//! when it panics (drop guards: members first, then the hosts).

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{etcdctl, Output, BIN, READY};
use localcluster::chaos::linearizable::{check, Op, Operation, Verdict};
use localcluster::chaos::netns::Hosts;
use localcluster::chaos::workload::{execute, Outcome};
use localcluster::chaos::{self, ChaosConfig, Fault, NetnsLauncher, ProcessCluster};
use localcluster::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use localcluster::pb::etcdserverpb::HashKvRequest;
use rand::{Rng, SeedableRng};

/// How long anything may take to happen (an election, catching up).
const PATIENCE: Duration = Duration::from_secs(40);

/// Whether namespaces can be created here; if not, prints a loud skip
/// notice, or fails under `CI=true`.
fn namespaces_or_skip() -> bool {
    if let Err(reason) = Hosts::available() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("network namespaces are required under CI=true: {reason}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: {reason} (run as root; under CI=true this fails) ***\n"
        );
        return false;
    }
    true
}

/// Hosts for a test, or `None` after [`namespaces_or_skip`] skipped.
fn hosts_or_skip(n: usize) -> Option<Hosts> {
    namespaces_or_skip().then(|| Hosts::create(n).expect("create the test hosts"))
}

/// One `localcluster member` process on one host; killed on drop.
struct NsMember {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl NsMember {
    fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for NsMember {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("----- last lines of {} -----", self.name);
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A static cluster, one member per host. Fields drop in order: the members
/// are killed before their hosts are removed.
struct Deployment {
    members: Vec<NsMember>,
    /// Member IDs, by host.
    ids: Vec<u64>,
    hosts: Hosts,
    _dir: tempfile::TempDir,
}

impl Deployment {
    /// Starts one member per host, as in the clustering guide, and waits
    /// until each serves clients and a leader is elected.
    fn start(hosts: Hosts) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let n = hosts.len();
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}=http://{}:2380", hosts.addr(i)))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("netns-{}", std::process::id());
        let mut members = Vec::new();
        for i in 0..n {
            let name = format!("m{i}");
            let addr = hosts.addr(i);
            let log = dir.path().join(format!("{name}.log"));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let child = hosts
                .command(i, BIN)
                .current_dir(dir.path())
                .env("NO_COLOR", "1")
                .env_remove("RUST_LOG")
                .arg("member")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args(["--listen-client-urls", "http://0.0.0.0:2379"])
                .args(["--advertise-client-urls", &format!("http://{addr}:2379")])
                .args(["--listen-peer-urls", "http://0.0.0.0:2380"])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://{addr}:2380"),
                ])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-token", &token])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
            members.push(NsMember {
                name,
                child: Some(child),
                log,
            });
        }
        let mut d = Deployment {
            members,
            ids: Vec::new(),
            hosts,
            _dir: dir,
        };
        for i in 0..n {
            d.wait_ready(i);
        }
        d.ids = (0..n)
            .map(|i| {
                let s = d.eventually(&format!("Status of m{i}"), || d.status(i));
                s.header.unwrap().member_id
            })
            .collect();
        d.wait_leader(&(0..n).collect::<Vec<_>>(), None);
        d
    }

    fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + PATIENCE;
        let m = &mut self.members[i];
        while !m.log_text().contains(READY) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited ({status}); its log:\n{}", m.name, m.log_text());
            }
            assert!(Instant::now() < deadline, "{} never got ready", m.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ADDR:2379` of member `i`, reached over the control link.
    fn endpoint(&self, i: usize) -> String {
        format!("{}:2379", self.hosts.addr(i))
    }

    fn status(&self, i: usize) -> Option<localcluster::pb::etcdserverpb::StatusResponse> {
        common::block_on(localcluster::client::status(
            &self.endpoint(i),
            Duration::from_secs(1),
        ))
    }

    /// Retries `f` until it gives a value; panics after [`PATIENCE`].
    #[track_caller]
    fn eventually<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the members `among` agree on a leader that is one of
    /// them (and not `not`); its index.
    #[track_caller]
    fn wait_leader(&self, among: &[usize], not: Option<usize>) -> usize {
        self.eventually(&format!("a leader among {among:?}"), || {
            let mut leaders = among
                .iter()
                .map(|&i| self.status(i).map(|s| s.leader))
                .collect::<Option<Vec<u64>>>()?;
            leaders.dedup();
            let [id] = leaders[..] else { return None };
            let leader = self.ids.iter().position(|&m| m == id)?;
            (among.contains(&leader) && Some(leader) != not).then_some(leader)
        })
    }

    /// `etcdctl put KEY VALUE` through `which`, retried until it succeeds;
    /// the revision it was written at.
    #[track_caller]
    fn put(&self, which: &[usize], key: &str, value: &str) -> i64 {
        let mut turn = 0;
        self.eventually(&format!("put {key} through {which:?}"), || {
            // One endpoint per attempt, in turn: a member that cannot reach
            // the leader just times out, another may succeed.
            let endpoint = self.endpoint(which[turn % which.len()]);
            turn += 1;
            let out = etcdctl(
                &endpoint,
                &["--command-timeout=2s", "put", key, value, "-w", "json"],
            );
            out.success()
                .then(|| out.json()["header"]["revision"].as_i64().unwrap())
        })
    }

    /// `etcdctl get KEY --consistency=s` at member `i`: its local value.
    fn local_value(&self, i: usize, key: &str) -> Option<String> {
        let out = etcdctl(
            &self.endpoint(i),
            &[
                "--command-timeout=2s",
                "get",
                key,
                "--print-value-only",
                "--consistency=s",
            ],
        );
        let value = out.ok().trim();
        (!value.is_empty()).then(|| value.to_string())
    }

    /// `HashKV` of member `i` at `rev`, once it has applied `rev`.
    fn hash_kv(&self, i: usize, rev: i64) -> Option<u32> {
        let applied = self.status(i)?.header?.revision;
        if applied < rev {
            return None;
        }
        common::block_on(async {
            let ch = localcluster::client::connect(&self.endpoint(i), Duration::from_secs(2))
                .await
                .ok()?;
            let resp = MaintenanceClient::new(ch)
                .hash_kv(HashKvRequest { revision: rev })
                .await
                .ok()?;
            Some(resp.into_inner().hash)
        })
    }

    /// Writes a marker through every member, then waits until all hold the
    /// same `HashKV` at its revision.
    #[track_caller]
    fn assert_converged(&self, marker: &str) {
        let all: Vec<usize> = (0..self.members.len()).collect();
        let rev = self.put(&all, marker, "1");
        let hashes: Vec<u32> = all
            .iter()
            .map(|&i| self.eventually(&format!("HashKV of m{i} at {rev}"), || self.hash_kv(i, rev)))
            .collect();
        assert!(
            hashes.windows(2).all(|w| w[0] == w[1]),
            "members diverge at revision {rev}: HashKV {hashes:?}"
        );
    }
}

/// Whether host `from` reaches host `to`: a TCP connection to a closed port
/// of `to` is refused (its kernel answered) rather than failing locally or
/// going unanswered.
fn reaches(hosts: &Hosts, from: usize, to: usize) -> bool {
    let mut probe = hosts.command(from, "bash");
    probe.args(["-c", &format!("exec 3<>/dev/tcp/{}/9", hosts.addr(to))]);
    let out = common::run(probe, None, Duration::from_secs(30));
    out.stderr.contains("Connection refused")
}

/// Whether the test (over the control link) reaches host `i`, as [`reaches`].
fn control_reaches(hosts: &Hosts, i: usize) -> bool {
    let addr = std::net::SocketAddr::from((hosts.addr(i), 9));
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(_) => panic!("something listens on {addr}"),
    }
}

#[test]
fn hosts_are_cut_partitioned_bridged_made_lossy_healed_and_removed() {
    let Some(hosts) = hosts_or_skip(3) else {
        return;
    };
    let pairs = [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)];
    let reachable = |hosts: &Hosts| -> Vec<(usize, usize)> {
        pairs
            .iter()
            .copied()
            .filter(|&(a, b)| reaches(hosts, a, b))
            .collect()
    };
    assert_eq!(reachable(&hosts), pairs);

    hosts.cut(0, 1).unwrap();
    assert_eq!(reachable(&hosts), [(0, 2), (2, 0), (1, 2), (2, 1)]);
    // The control link stays up whatever the hosts' cuts.
    assert!((0..3).all(|i| control_reaches(&hosts, i)));

    // A bridge: 1 reaches both sides, 0 and 2 do not reach each other.
    hosts.partition(&[&[0, 1], &[1, 2]]).unwrap();
    assert_eq!(reachable(&hosts), [(0, 1), (1, 0), (1, 2), (2, 1)]);

    // Isolated: 2 is in no group with the others.
    hosts.partition(&[&[0, 1], &[2]]).unwrap();
    assert_eq!(reachable(&hosts), [(0, 1), (1, 0)]);

    hosts.heal().unwrap();
    assert_eq!(reachable(&hosts), pairs);

    // All of host 0's packets lost: nothing answers, not even the control link.
    hosts.loss(0, 100).unwrap();
    assert!(!control_reaches(&hosts, 0));
    assert!(control_reaches(&hosts, 1));
    hosts.loss(0, 0).unwrap();
    assert!(control_reaches(&hosts, 0));
    hosts.loss(1, 100).unwrap();
    hosts.heal().unwrap();
    assert!(control_reaches(&hosts, 1));

    let names: Vec<String> = (0..3).map(|i| hosts.namespace(i).to_string()).collect();
    drop(hosts);
    let left = common::run(
        {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "list"]);
            c
        },
        None,
        Duration::from_secs(30),
    );
    for name in names {
        assert!(!left.stdout.contains(&name), "{name} left behind");
    }
}

/// Whether `out` is a refusal for lack of a leader or quorum.
fn refused(out: &Output) -> bool {
    let e = out.stderr.to_lowercase();
    !out.success()
        && (e.contains("no leader")
            || e.contains("timed out")
            || e.contains("deadline exceeded")
            || e.contains("leader changed"))
}

#[test]
fn three_host_deployment_isolated_leader_loses_writes_majority_elects_and_all_converge() {
    if common::skip_without_etcdctl() {
        return;
    }
    let Some(hosts) = hosts_or_skip(3) else {
        return;
    };
    let d = Deployment::start(hosts);
    let all = [0, 1, 2];
    d.put(&all, "before", "1");

    let old = d.wait_leader(&all, None);
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    d.hosts.partition(&[&[old], &rest]).unwrap();

    // The majority elects a leader of its own and serves writes.
    let new = d.wait_leader(&rest, Some(old));
    assert_ne!(new, old);
    d.put(&rest, "during", "2");

    // The isolated member refuses writes, and has not seen the majority's.
    let out = etcdctl(
        &d.endpoint(old),
        &["--command-timeout=3s", "put", "refused", "x"],
    );
    assert!(
        refused(&out),
        "the isolated member accepted a write: {out:#?}"
    );
    assert_eq!(d.local_value(old, "during"), None);

    // Healed: the old leader catches up, the refused write never happens,
    // and every member holds the same data.
    d.hosts.heal().unwrap();
    d.eventually("the healed member sees the majority's write", || {
        (d.local_value(old, "during").as_deref() == Some("2")).then_some(())
    });
    d.assert_converged("healed");
    for i in all {
        assert_eq!(d.local_value(i, "refused"), None, "m{i}");
        assert_eq!(d.local_value(i, "before").as_deref(), Some("1"), "m{i}");
    }
}

/// Registers (keys) the clients share: the history is checked key by key,
/// which keeps the check small even with many unknown outcomes.
const KEYS: usize = 4;

/// One client of the registers: random reads, writes of unique values and
/// compare-and-sets on random keys through random members until `stop`; its
/// operations, by key.
async fn register_client(
    id: usize,
    endpoints: Vec<String>,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(usize, Operation)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(id as u64);
    let mut history = Vec::new();
    // The last value seen or written, per key (0 is never written).
    let mut last = [0u64; KEYS];
    let mut counter = 0u64;
    let now = || start.elapsed().as_nanos() as u64;
    while !stop.load(Ordering::Relaxed) {
        counter += 1;
        let k = rng.gen_range(0..KEYS);
        let fresh = (id as u64 + 1) * 1_000_000 + counter;
        let op = match rng.gen_range(0..10) {
            0..=3 => Op::Read(None),
            4..=6 => Op::Write(fresh),
            _ => Op::Cas {
                from: last[k],
                to: fresh,
                ok: None,
            },
        };
        let endpoint = &endpoints[rng.gen_range(0..endpoints.len())];
        let invoked = now();
        let timeout = Duration::from_secs(1);
        let result = tokio::time::timeout(timeout, async {
            let channel = localcluster::client::connect(endpoint, timeout)
                .await
                .ok()?;
            execute(channel, format!("netns/register/{k}"), op.clone())
                .await
                .ok()
        })
        .await
        .ok()
        .flatten();
        let returned = Some(now());
        let (op, returned) = match (op, result) {
            (Op::Read(_), Some(Outcome::Read(v))) => {
                last[k] = v.unwrap_or(0);
                (Op::Read(Some(v)), returned)
            }
            // A failed read changed nothing.
            (Op::Read(_), _) => continue,
            (Op::Write(v), Some(Outcome::Written(_))) => {
                last[k] = v;
                (Op::Write(v), returned)
            }
            (Op::Cas { from, to, .. }, Some(Outcome::Cas(ok, _))) => {
                if ok {
                    last[k] = to;
                }
                (
                    Op::Cas {
                        from,
                        to,
                        ok: Some(ok),
                    },
                    returned,
                )
            }
            // Failed or timed out: it may still take effect.
            (op, _) => (op, None),
        };
        history.push((
            k,
            Operation {
                client: id,
                op,
                invoked,
                returned,
            },
        ));
    }
    history
}

#[test]
fn five_hosts_majority_minority_bridge_and_lossy_link_keep_a_register_linearizable() {
    if common::skip_without_etcdctl() {
        return;
    }
    let Some(hosts) = hosts_or_skip(5) else {
        return;
    };
    let d = Deployment::start(hosts);
    let all: Vec<usize> = (0..5).collect();
    let endpoints: Vec<String> = all.iter().map(|&i| d.endpoint(i)).collect();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let clients: Vec<_> = (0..3)
        .map(|c| rt.spawn(register_client(c, endpoints.clone(), start, stop.clone())))
        .collect();

    // Majority/minority: the majority elects (or keeps) a leader and serves
    // writes; the minority refuses them.
    let (minority, majority) = ([0, 1], [2, 3, 4]);
    d.hosts.partition(&[&minority, &majority]).unwrap();
    d.wait_leader(&majority, None);
    d.put(&majority, "split", "majority");
    // Refusals for lack of a leader are final; a timed-out write has an
    // unknown outcome (a proposal forwarded before the cut may still be
    // delivered and committed after healing).
    let mut refused_for_good = Vec::new();
    for i in minority {
        let key = format!("split/m{i}");
        let out = etcdctl(
            &d.endpoint(i),
            &["--command-timeout=2s", "put", &key, "minority"],
        );
        assert!(
            refused(&out),
            "minority member m{i} accepted a write: {out:#?}"
        );
        if out.stderr.contains("no leader") {
            refused_for_good.push(key);
        }
    }
    d.hosts.heal().unwrap();
    d.wait_leader(&all, None);

    // Bridge: host 2 reaches both sides, which cannot reach each other;
    // every member reaches a majority, so the cluster keeps serving writes.
    d.hosts.partition(&[&[0, 1, 2], &[2, 3, 4]]).unwrap();
    d.put(&all, "bridge", "served");
    std::thread::sleep(Duration::from_secs(2));
    d.hosts.heal().unwrap();

    // A lossy link: the leader's host drops a third of its packets, both
    // ways; the cluster still serves writes (TCP retransmits, or a new
    // leader is elected).
    let leader = d.wait_leader(&all, None);
    d.hosts.loss(leader, 30).unwrap();
    d.put(&all, "lossy", "served");
    std::thread::sleep(Duration::from_secs(2));
    d.hosts.heal().unwrap();
    d.wait_leader(&all, None);
    std::thread::sleep(Duration::from_secs(1));

    stop.store(true, Ordering::Relaxed);
    let mut by_key: Vec<Vec<Operation>> = vec![Vec::new(); KEYS];
    for (k, op) in rt
        .block_on(futures::future::join_all(clients))
        .into_iter()
        .flat_map(|h| h.unwrap())
    {
        by_key[k].push(op);
    }
    let acknowledged = by_key.iter().flatten().filter(|o| !o.is_unknown()).count();
    assert!(acknowledged > 0, "no operation succeeded: {by_key:?}");
    for (k, history) in by_key.iter().enumerate() {
        if let Verdict::Violation { stuck } = check(None, history) {
            panic!("register {k} is not linearizable; operations around the violation: {stuck:#?}");
        }
    }

    d.assert_converged("healed");
    for i in all {
        assert_eq!(
            d.local_value(i, "split").as_deref(),
            Some("majority"),
            "m{i}"
        );
        for key in &refused_for_good {
            assert_eq!(d.local_value(i, key), None, "m{i}: {key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_member_processes_in_namespaces_survives_partitions_and_kills() {
    if !namespaces_or_skip() {
        return;
    }
    let launcher = NetnsLauncher::new(3).expect("create the test hosts");
    // The cluster owns the hosts: its drop kills the members, then removes them.
    let mut cluster = ProcessCluster::start_with(BIN, 3, Box::new(launcher), PATIENCE)
        .await
        .unwrap();
    let cfg = ChaosConfig {
        duration: Duration::from_secs(6),
        faults: vec![
            Fault::IsolateLeader,
            Fault::Partition,
            Fault::Bridge,
            Fault::KillLeader,
            Fault::KillRandom,
        ],
        fault_period: Duration::from_millis(600),
        seed: 3,
        ..Default::default()
    };
    let report = chaos::run(&mut cluster, &cfg).await;
    eprintln!(
        "netns processes: {} operations ({} unknown), {} faults {:?}",
        report.operations, report.unknown, report.faults_injected, report.injected
    );
    if !report.ok() {
        cluster.keep_dir();
        chaos::print_findings(&report);
    }
    assert!(
        report.ok(),
        "{report:?}; logs in {}",
        cluster.dir().display()
    );
    assert!(report.operations > report.unknown, "{report:?}");
    assert!(report.unsupported.is_empty(), "{report:?}");
    let network = [Fault::IsolateLeader, Fault::Partition, Fault::Bridge];
    assert!(
        network.iter().any(|f| report.injected.contains_key(f)),
        "no network fault injected: {report:?}"
    );
}
