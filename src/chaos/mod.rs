//! Chaos: concurrent clients and injected faults against a cluster, with the
//! resulting history checked.
//!
//! [`run`] drives any [`Target`]: the embedded [`LocalCluster`] (faults
//! through its hooks) or a [`ProcessCluster`] of separate `localcluster
//! member` processes (faults as signals). During the run:
//!
//! - `clients` tasks ([`workload::client`]) read, write and compare-and-set a
//!   few registers and append to a few lists through random members (every
//!   value unique), recording each operation's invocation, completion and
//!   result; one that fails or times out has an unknown outcome (it may still
//!   commit);
//! - a lease client ([`workload::lease_client`]) grants short leases with
//!   keys attached, keeps some alive, lets some expire, revokes others, and
//!   probes the keys;
//! - one watcher per member ([`workload::watcher`]) watches the run's key
//!   prefix, reconnecting after faults from the revision after the last seen;
//! - the nemesis injects one [`Fault`] at a time and repairs it: SIGKILL of
//!   the leader or of a random member (then a start), SIGSTOP/SIGCONT-like
//!   pauses, graceful restarts, and network partitions (leader isolated,
//!   random majority/minority, bridge). Faults the target cannot do (network
//!   faults between loopback processes) are skipped and reported; processes
//!   on network-namespace hosts ([`NetnsLauncher`]) take them all.
//!
//! Timing is clock-independent: fault lengths come from the seed, and the
//! checks use only the client's monotonic clock, never a server's.
//!
//! Afterwards every fault is repaired and the history checked: each
//! register's history (ending with a final read) must be linearizable
//! ([`linearizable::check`]; a violation is shrunk to a minimal offending
//! history by [`shrink`]); each list must hold every acknowledged append once,
//! in an order consistent with real time ([`checks::check_list`]); no revision
//! may be acknowledged to two writes; every watch stream must be ordered,
//! without duplicates, and hold every acknowledged write
//! ([`checks::check_watch_order`], [`checks::check_watch_complete`]); no lease
//! key may vanish before its TTL ran out ([`checks::check_leases`]), and every
//! lease key must be gone once its lease ended.

pub mod checks;
pub mod linearizable;
pub mod netns;
pub mod process;
pub mod shrink;
pub mod target;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::cluster::LocalCluster;
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::RangeRequest;
use linearizable::{Op, Operation, Verdict};
pub use process::{Launcher, Loopback, NetnsLauncher, ProcessCluster};
pub use target::{Target, TargetError};
use workload::Run;

/// The faults the nemesis picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Kill the leader, restart it after a while.
    KillLeader,
    /// Kill a random member, restart it after a while.
    KillRandom,
    /// Freeze a random member, then let it go on.
    Pause,
    /// Cut the leader off from the rest, then heal.
    IsolateLeader,
    /// Stop a member gracefully (the leader half of the time) and start it again.
    Restart,
    /// Split the members at random into a majority and a minority, then heal.
    Partition,
    /// Split the others into two halves that only one member links, then heal.
    Bridge,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::KillLeader,
        Fault::KillRandom,
        Fault::Pause,
        Fault::IsolateLeader,
        Fault::Restart,
        Fault::Partition,
        Fault::Bridge,
    ];

    /// Whether the fault cuts network links.
    pub fn is_network(self) -> bool {
        matches!(
            self,
            Fault::IsolateLeader | Fault::Partition | Fault::Bridge
        )
    }

    /// The command line's name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillRandom => "kill-random",
            Fault::Pause => "pause",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Restart => "restart",
            Fault::Partition => "partition",
            Fault::Bridge => "bridge",
        }
    }
}

/// How a chaos run goes.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub duration: Duration,
    pub clients: usize,
    /// Registers the clients share.
    pub keys: usize,
    /// Lists the clients append to (0: no appends).
    pub lists: usize,
    /// Whether a lease client runs.
    pub leases: bool,
    /// TTL of the leases granted (whole seconds).
    pub lease_ttl: Duration,
    /// Whether a watcher per member runs.
    pub watches: bool,
    /// Faults to inject, one at a time; empty: none.
    pub faults: Vec<Fault>,
    /// How long a fault lasts on average, and the calm after it.
    pub fault_period: Duration,
    /// Client-side timeout of one operation.
    pub op_timeout: Duration,
    pub seed: u64,
    /// Prefix of the keys the clients use (a run on fresh keys starts from an
    /// empty register).
    pub key_prefix: String,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            duration: Duration::from_secs(10),
            clients: 4,
            keys: 3,
            lists: 2,
            leases: true,
            lease_ttl: Duration::from_secs(2),
            watches: true,
            faults: Fault::ALL.to_vec(),
            fault_period: Duration::from_millis(800),
            op_timeout: Duration::from_secs(1),
            seed: 1,
            key_prefix: "chaos/".to_string(),
        }
    }
}

/// What a run did and found.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// Operations recorded: register operations, appends and list reads, lease
    /// operations (reads that failed are dropped: they changed nothing).
    pub operations: usize,
    /// Of which with an unknown outcome.
    pub unknown: usize,
    /// Register operations among `operations`.
    pub register_ops: usize,
    /// Appends among `operations`.
    pub appends: usize,
    /// Lease grants, keep-alives, revokes and key probes among `operations`.
    pub lease_ops: usize,
    /// Watch events received, over every watcher.
    pub watch_events: usize,
    /// Times a watcher had to open its stream again.
    pub watch_reconnects: usize,
    pub faults_injected: usize,
    /// Faults injected, by kind.
    pub injected: BTreeMap<Fault, usize>,
    /// Faults asked for that the target cannot inject (skipped).
    pub unsupported: Vec<Fault>,
    /// Per register that is not linearizable, a minimal offending history.
    pub violations: Vec<(String, Vec<Operation>)>,
    /// Revisions acknowledged to two different writes.
    pub duplicate_revisions: Vec<i64>,
    /// What the other checkers found (lists, watches, leases, recovery).
    pub problems: Vec<String>,
}

impl ChaosReport {
    /// Whether nothing was found.
    pub fn ok(&self) -> bool {
        self.violation_count() == 0
    }

    /// Everything found, counted once each.
    pub fn violation_count(&self) -> usize {
        self.violations.len() + self.duplicate_revisions.len() + self.problems.len()
    }
}

/// `localcluster chaos`: rounds of [`run`] against a fresh cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// How long to run in all (e.g. 60s, 10m)
    #[arg(long, default_value = "60s", value_parser = crate::bench::parse_duration)]
    pub duration: Duration,
    /// Length of one round: each round checks its own history, on fresh keys
    #[arg(long, default_value = "10s", value_parser = crate::bench::parse_duration)]
    pub round: Duration,
    /// Members of the cluster
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Concurrent clients
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Registers the clients share
    #[arg(long, default_value_t = 3)]
    pub keys: usize,
    /// Lists the clients append to
    #[arg(long, default_value_t = 2)]
    pub lists: usize,
    /// Faults, comma-separated: kill-leader, kill-random, pause,
    /// isolate-leader, restart, partition, bridge
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill-leader,kill-random,pause,isolate-leader,restart,partition,bridge"
    )]
    pub faults: Vec<FaultName>,
    /// Run the members as separate `localcluster member` processes (signals
    /// instead of in-process hooks; network faults are skipped unless --netns)
    #[arg(long)]
    pub processes: bool,
    /// With --processes: run each member on its own network-namespace host,
    /// so that network faults apply too (needs root)
    #[arg(long, requires = "processes")]
    pub netns: bool,
    /// Seed of the random choices (clients and nemesis)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// A fault as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultName {
    KillLeader,
    KillRandom,
    Pause,
    IsolateLeader,
    Restart,
    Partition,
    Bridge,
}

impl From<FaultName> for Fault {
    fn from(f: FaultName) -> Fault {
        match f {
            FaultName::KillLeader => Fault::KillLeader,
            FaultName::KillRandom => Fault::KillRandom,
            FaultName::Pause => Fault::Pause,
            FaultName::IsolateLeader => Fault::IsolateLeader,
            FaultName::Restart => Fault::Restart,
            FaultName::Partition => Fault::Partition,
            FaultName::Bridge => Fault::Bridge,
        }
    }
}

/// Runs `localcluster chaos`; prints one line per round and a summary, and
/// returns the exit code: 0 without violations, 1 with any, 2 if the cluster
/// could not start.
pub async fn main(args: ChaosArgs) -> i32 {
    if args.processes {
        let program = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("localcluster chaos: cannot find my own executable: {e}");
                return 2;
            }
        };
        let timeout = Duration::from_secs(60);
        let started = if args.netns {
            if let Err(reason) = netns::Hosts::available() {
                eprintln!("localcluster chaos: --netns: {reason}");
                return 2;
            }
            match NetnsLauncher::new(args.members) {
                Ok(launcher) => {
                    ProcessCluster::start_with(program, args.members, Box::new(launcher), timeout)
                        .await
                }
                Err(e) => {
                    eprintln!("localcluster chaos: --netns: cannot create the test hosts: {e}");
                    return 2;
                }
            }
        } else {
            ProcessCluster::start(program, args.members, timeout).await
        };
        match started {
            Ok(mut cluster) => {
                println!(
                    "separate member processes{}; data and logs in {}",
                    if args.netns {
                        " on network-namespace hosts"
                    } else {
                        ""
                    },
                    cluster.dir().display()
                );
                let code = rounds(&mut cluster, &args).await;
                if code != 0 {
                    cluster.keep_dir();
                    eprintln!("member data and logs kept in {}", cluster.dir().display());
                }
                code
            }
            Err(e) => {
                eprintln!("localcluster chaos: cannot start the member processes: {e}");
                2
            }
        }
    } else {
        match LocalCluster::builder().members(args.members).start().await {
            Ok(mut cluster) => {
                let code = rounds(&mut cluster, &args).await;
                let _ = cluster.shutdown().await;
                code
            }
            Err(e) => {
                eprintln!("localcluster chaos: cannot start the cluster: {e}");
                2
            }
        }
    }
}

/// The rounds of `localcluster chaos` against `target`; the exit code.
async fn rounds<T: Target>(target: &mut T, args: &ChaosArgs) -> i32 {
    let started = Instant::now();
    let mut total = ChaosReport::default();
    let mut bad = 0;
    let mut round = 0;
    while started.elapsed() < args.duration {
        let cfg = ChaosConfig {
            duration: args
                .round
                .min(args.duration.saturating_sub(started.elapsed())),
            clients: args.clients,
            keys: args.keys,
            lists: args.lists,
            faults: args.faults.iter().map(|&f| f.into()).collect(),
            seed: args.seed.wrapping_add(round as u64),
            key_prefix: format!("chaos/{round}/"),
            ..Default::default()
        };
        let report = run(target, &cfg).await;
        println!(
            "round {round}: {} operations ({} unknown), {} watch events, {} faults, {} violations, {} duplicate revisions, {} other problems",
            report.operations,
            report.unknown,
            report.watch_events,
            report.faults_injected,
            report.violations.len(),
            report.duplicate_revisions.len(),
            report.problems.len(),
        );
        print_findings(&report);
        bad += report.violation_count();
        total.operations += report.operations;
        total.unknown += report.unknown;
        total.register_ops += report.register_ops;
        total.appends += report.appends;
        total.lease_ops += report.lease_ops;
        total.watch_events += report.watch_events;
        total.faults_injected += report.faults_injected;
        for (f, n) in report.injected {
            *total.injected.entry(f).or_default() += n;
        }
        for f in report.unsupported {
            if !total.unsupported.contains(&f) {
                total.unsupported.push(f);
            }
        }
        round += 1;
        // Let the repaired cluster settle before the next round.
        let _ = target.wait_healthy(Duration::from_secs(30)).await;
    }
    if !total.unsupported.is_empty() {
        let names: Vec<&str> = total.unsupported.iter().map(|f| f.name()).collect();
        println!(
            "note: skipped faults this target cannot inject: {}",
            names.join(", ")
        );
    }
    let kinds: Vec<String> = total
        .injected
        .iter()
        .map(|(f, n)| format!("{n} {}", f.name()))
        .collect();
    println!(
        "chaos: {:.0}s, {round} rounds, {} operations checked ({} unknown; {} register, {} appends, {} lease; {} watch events), {} faults injected ({}), {bad} violations",
        started.elapsed().as_secs_f64(),
        total.operations,
        total.unknown,
        total.register_ops,
        total.appends,
        total.lease_ops,
        total.watch_events,
        total.faults_injected,
        kinds.join(", "),
    );
    if bad == 0 {
        0
    } else {
        1
    }
}

/// Prints every violation of a round, with minimal histories.
pub fn print_findings(report: &ChaosReport) {
    for (key, ops) in &report.violations {
        println!(
            "  NOT LINEARIZABLE: {key}; a minimal offending history ({} operations):",
            ops.len()
        );
        for o in ops {
            println!("    {}", describe(o));
        }
    }
    if !report.duplicate_revisions.is_empty() {
        println!(
            "  revisions acknowledged twice: {:?}",
            report.duplicate_revisions
        );
    }
    for p in &report.problems {
        println!("  {p}");
    }
}

/// One operation as a line: client, what, result, when (ms since the start).
pub fn describe(o: &Operation) -> String {
    let what = match &o.op {
        Op::Read(Some(v)) => format!("read -> {v:?}"),
        Op::Read(None) => "read -> ?".to_string(),
        Op::Write(v) => format!("write {v}"),
        Op::Cas { from, to, ok } => format!(
            "cas {from} -> {to}: {}",
            match ok {
                Some(true) => "ok",
                Some(false) => "failed",
                None => "?",
            }
        ),
    };
    let ms = |t: u64| t as f64 / 1e6;
    let who = if o.client == FINAL_READER {
        "after the repair".to_string()
    } else {
        format!("client {}", o.client)
    };
    match o.returned {
        Some(r) => format!(
            "{who}: {what}  [{:.1} ms .. {:.1} ms]",
            ms(o.invoked),
            ms(r)
        ),
        None => format!(
            "{who}: {what}  [{:.1} ms .. unknown outcome]",
            ms(o.invoked)
        ),
    }
}

/// The `client` of the final read of each register.
pub const FINAL_READER: usize = usize::MAX;
/// How many checks the shrinker may spend on one violation.
const SHRINK_BUDGET: usize = 4000;
/// How long a watcher may take to catch up once the run is over.
const WATCH_PATIENCE: Duration = Duration::from_secs(15);
/// How long final reads may take once every fault is repaired.
const RECOVERY: Duration = Duration::from_secs(30);
/// Timer slack forgiven when a lease key vanishes right at its deadline.
const LEASE_SLACK: Duration = Duration::from_millis(50);

/// Runs clients, watchers and the nemesis against `target` for
/// `cfg.duration`, then repairs every fault and checks the history.
pub async fn run<T: Target>(target: &mut T, cfg: &ChaosConfig) -> ChaosReport {
    let mut report = ChaosReport::default();
    let urls = target.client_urls();
    let start = Instant::now();
    let run = Run {
        urls: urls.clone(),
        cfg: cfg.clone(),
        start,
        deadline: start + cfg.duration,
    };
    // Watchers start after the revision the run starts from.
    let (until_tx, until_rx) = tokio::sync::watch::channel(None);
    let mut watchers = tokio::task::JoinSet::new();
    if cfg.watches {
        match current_revision(&urls, cfg.op_timeout, RECOVERY).await {
            Some(rev) => {
                for (m, url) in urls.iter().enumerate() {
                    watchers.spawn(workload::watcher(
                        m,
                        url.clone(),
                        cfg.key_prefix.clone(),
                        rev + 1,
                        until_rx.clone(),
                        WATCH_PATIENCE,
                    ));
                }
            }
            None => report
                .problems
                .push("no member answered before the run: watches not checked".into()),
        }
    }
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..cfg.clients {
        let seed = cfg.seed.wrapping_mul(31).wrapping_add(c as u64);
        clients.spawn(workload::client(c, run.clone(), seed));
    }
    let leases = cfg
        .leases
        .then(|| tokio::spawn(workload::lease_client(run.clone(), cfg.seed ^ 0x1ea5e)));

    nemesis(target, cfg, run.deadline, &mut report).await;

    let mut by_key: BTreeMap<usize, Vec<Operation>> = BTreeMap::new();
    let mut appends: BTreeMap<usize, Vec<checks::Append>> = BTreeMap::new();
    let mut list_reads: BTreeMap<usize, Vec<checks::ListRead>> = BTreeMap::new();
    let mut acknowledged: Vec<(i64, String)> = Vec::new();
    while let Some(joined) = clients.join_next().await {
        let Ok(rec) = joined else { continue };
        for (k, o) in rec.registers {
            by_key.entry(k).or_default().push(o);
        }
        for (l, a) in rec.appends {
            appends.entry(l).or_default().push(a);
        }
        for (l, r) in rec.list_reads {
            list_reads.entry(l).or_default().push(r);
        }
        acknowledged.extend(rec.acknowledged);
    }
    let lease_rec = match leases {
        Some(handle) => handle.await.ok(),
        None => None,
    };
    if let Some(l) = &lease_rec {
        acknowledged.extend(l.acknowledged.iter().cloned());
    }

    // Everything repaired: the cluster must serve again, with nothing lost.
    if !target.wait_healthy(RECOVERY).await {
        report.problems.push(format!(
            "the cluster was not healthy {RECOVERY:?} after the repair"
        ));
    }
    let finals = final_reads(&urls, cfg, &by_key, &appends).await;

    // Watchers: catch up to the last acknowledged write, then stop.
    let last = acknowledged.iter().map(|(r, _)| *r).max().unwrap_or(0);
    let _ = until_tx.send(Some(last));
    let mut streams = Vec::new();
    while let Some(joined) = watchers.join_next().await {
        if let Ok(w) = joined {
            streams.push(w);
        }
    }
    streams.sort_by_key(|w| w.member);

    // Registers, each ending with a final read.
    for (k, ops) in &mut by_key {
        report.register_ops += ops.len();
        report.unknown += ops.iter().filter(|o| o.is_unknown()).count();
        match finals.registers.get(k) {
            Some(&(value, at)) => ops.push(Operation {
                client: FINAL_READER,
                op: Op::Read(Some(value)),
                invoked: at,
                returned: Some(at + 1),
            }),
            None => report.problems.push(format!(
                "{}: no final read succeeded",
                workload::register_key(&cfg.key_prefix, *k)
            )),
        }
        if let Verdict::Violation { .. } = linearizable::check(None, ops) {
            let minimal = shrink::history(None, ops, SHRINK_BUDGET);
            report
                .violations
                .push((workload::register_key(&cfg.key_prefix, *k), minimal));
        }
    }
    // Lists.
    for (l, ops) in &appends {
        report.appends += ops.len();
        report.unknown += ops
            .iter()
            .filter(|a| a.outcome == checks::AppendOutcome::Unknown)
            .count();
        let key = workload::list_key(&cfg.key_prefix, *l);
        let Some(value) = finals.lists.get(l) else {
            report
                .problems
                .push(format!("{key}: no final read succeeded"));
            continue;
        };
        let reads = list_reads.get(l).map(Vec::as_slice).unwrap_or_default();
        for p in checks::check_list(ops, reads, value) {
            report.problems.push(format!("{key}: {p}"));
        }
    }
    report.operations =
        report.register_ops + report.appends + list_reads.values().map(Vec::len).sum::<usize>();
    // Revisions.
    let mut count: HashMap<i64, usize> = HashMap::new();
    for (r, _) in &acknowledged {
        *count.entry(*r).or_default() += 1;
    }
    let mut dups: Vec<i64> = count
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(r, _)| r)
        .collect();
    dups.sort_unstable();
    report.duplicate_revisions = dups;
    // Watches.
    let under_prefix: Vec<(i64, String)> = acknowledged
        .iter()
        .filter(|(_, k)| k.starts_with(&cfg.key_prefix))
        .cloned()
        .collect();
    for w in &streams {
        report.watch_events += w.events.len();
        report.watch_reconnects += w.reconnects;
        if w.compacted {
            report.problems.push(format!(
                "watch on member {}: history compacted before it caught up",
                w.member
            ));
            continue;
        }
        let found = checks::check_watch_order(&w.events)
            .into_iter()
            .chain(checks::check_watch_complete(&w.events, &under_prefix));
        for (n, p) in found.enumerate() {
            if n == 10 {
                report
                    .problems
                    .push(format!("watch on member {}: ... (more)", w.member));
                break;
            }
            report
                .problems
                .push(format!("watch on member {}: {p}", w.member));
        }
    }
    let all: Vec<Vec<checks::WatchEvent>> = streams.into_iter().map(|w| w.events).collect();
    report
        .problems
        .extend(checks::check_watch_agree(&all).into_iter().take(10));
    // Leases.
    if let Some(l) = lease_rec {
        report.lease_ops = l.operations;
        report.operations += l.operations;
        report.unknown += l.unknown;
        let slack = LEASE_SLACK.as_nanos() as u64;
        report
            .problems
            .extend(checks::check_leases(&l.leases, &l.probes, slack));
        if let Some(left) = lease_keys_left(&urls, cfg).await {
            report.problems.push(format!(
                "{left} lease keys still present {:?} after their leases ended",
                2 * cfg.lease_ttl + LEASE_GRACE
            ));
        }
    }
    report
}

/// How long after its last keep-alive a lease's keys may stay, beyond twice
/// the TTL (a leader change extends a lease by a full TTL).
const LEASE_GRACE: Duration = Duration::from_secs(5);

/// The final value of every register and list, read once the cluster is
/// repaired, with when (run time) each read was invoked.
struct Finals {
    registers: BTreeMap<usize, (Option<u64>, u64)>,
    lists: BTreeMap<usize, Vec<u64>>,
}

async fn final_reads(
    urls: &[String],
    cfg: &ChaosConfig,
    registers: &BTreeMap<usize, Vec<Operation>>,
    lists: &BTreeMap<usize, Vec<checks::Append>>,
) -> Finals {
    let mut finals = Finals {
        registers: BTreeMap::new(),
        lists: BTreeMap::new(),
    };
    // Reads invoked after every operation of the run was invoked.
    let end = registers
        .values()
        .flatten()
        .map(|o| o.returned.unwrap_or(o.invoked).max(o.invoked))
        .max()
        .unwrap_or(0);
    for &k in registers.keys() {
        let key = workload::register_key(&cfg.key_prefix, k);
        if let Some(raw) = read_anywhere(urls, &key, cfg.op_timeout, RECOVERY).await {
            let value = raw.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
            finals.registers.insert(k, (value, end + 1));
        }
    }
    for &l in lists.keys() {
        let key = workload::list_key(&cfg.key_prefix, l);
        if let Some(raw) = read_anywhere(urls, &key, cfg.op_timeout, RECOVERY).await {
            finals
                .lists
                .insert(l, workload::decode_list(&raw.unwrap_or_default()));
        }
    }
    finals
}

/// A linearizable read of `key` through the members in turn until one
/// answers; `Some(None)` if the key does not exist, `None` if none answered
/// within `patience`.
async fn read_anywhere(
    urls: &[String],
    key: &str,
    timeout: Duration,
    patience: Duration,
) -> Option<Option<Vec<u8>>> {
    let deadline = Instant::now() + patience;
    for url in urls.iter().cycle() {
        let read = async {
            let mut kv = KvClient::new(crate::client::connect(url, timeout).await.ok()?);
            let resp = kv
                .range(RangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            Some(resp.kvs.into_iter().next().map(|kv| kv.value))
        };
        if let Ok(Some(v)) = tokio::time::timeout(timeout, read).await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The cluster's current revision, through any member.
async fn current_revision(urls: &[String], timeout: Duration, patience: Duration) -> Option<i64> {
    let deadline = Instant::now() + patience;
    for url in urls.iter().cycle() {
        let read = async {
            let mut kv = KvClient::new(crate::client::connect(url, timeout).await.ok()?);
            let resp = kv
                .range(RangeRequest {
                    key: b"\0".to_vec(),
                    count_only: true,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            resp.header.map(|h| h.revision)
        };
        if let Ok(Some(v)) = tokio::time::timeout(timeout, read).await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Waits until no lease key of the run is left; how many remain if some
/// still do after twice the TTL plus [`LEASE_GRACE`].
async fn lease_keys_left(urls: &[String], cfg: &ChaosConfig) -> Option<i64> {
    let prefix = workload::lease_prefix(&cfg.key_prefix);
    let deadline = Instant::now() + 2 * cfg.lease_ttl + LEASE_GRACE;
    let mut left = None;
    for url in urls.iter().cycle() {
        let count = async {
            let mut kv = KvClient::new(crate::client::connect(url, cfg.op_timeout).await.ok()?);
            let resp = kv
                .range(RangeRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: workload::prefix_end(&prefix),
                    count_only: true,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            Some(resp.count)
        };
        if let Ok(Some(n)) = tokio::time::timeout(cfg.op_timeout, count).await {
            if n == 0 {
                return None;
            }
            left = Some(n);
        }
        if Instant::now() > deadline {
            return Some(left.unwrap_or(-1));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    left
}

/// Injects faults one at a time until `deadline`, repairing each; counts
/// them in `report`. Leaves every member running and connected.
async fn nemesis<T: Target>(
    target: &mut T,
    cfg: &ChaosConfig,
    deadline: Instant,
    report: &mut ChaosReport,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let can_cut = target.supports_partitions();
    let faults: Vec<Fault> = cfg
        .faults
        .iter()
        .copied()
        .filter(|f| can_cut || !f.is_network())
        .collect();
    report.unsupported = cfg
        .faults
        .iter()
        .copied()
        .filter(|f| !can_cut && f.is_network())
        .collect();
    report.unsupported.dedup();
    let period = |rng: &mut rand::rngs::StdRng| cfg.fault_period.mul_f64(rng.gen_range(0.5..1.5));
    while Instant::now() + 2 * cfg.fault_period < deadline && !faults.is_empty() {
        tokio::time::sleep(period(&mut rng)).await;
        let fault = faults[rng.gen_range(0..faults.len())];
        if inject(target, fault, &mut rng).await {
            report.faults_injected += 1;
            *report.injected.entry(fault).or_default() += 1;
            tracing::info!(?fault, "chaos: fault injected");
        }
        tokio::time::sleep(period(&mut rng)).await;
        report.problems.extend(target.crashed());
        repair(target);
    }
    tokio::time::sleep_until(deadline.into()).await;
    report.problems.extend(target.crashed());
    repair(target);
}

/// Injects one fault; whether it took.
async fn inject<T: Target>(target: &mut T, fault: Fault, rng: &mut rand::rngs::StdRng) -> bool {
    let n = target.len();
    let leader = target.leader().await;
    let random = rng.gen_range(0..n);
    let mut shuffled: Vec<usize> = (0..n).collect();
    rand::seq::SliceRandom::shuffle(shuffled.as_mut_slice(), rng);
    match fault {
        Fault::KillLeader => leader.is_some_and(|l| target.kill(l).is_ok()),
        Fault::KillRandom => target.kill(random).is_ok(),
        Fault::Pause => target.pause(random).is_ok(),
        Fault::Restart => {
            let who = match leader {
                Some(l) if rng.gen_bool(0.5) => l,
                _ => random,
            };
            target.restart(who).await.is_ok()
        }
        Fault::IsolateLeader => leader.is_some_and(|l| {
            let rest: Vec<usize> = (0..n).filter(|&i| i != l).collect();
            target.partition(&[vec![l], rest]).is_ok()
        }),
        Fault::Partition => {
            // A random minority (at least one member) against the rest.
            let minority = rng.gen_range(1..=(n.saturating_sub(1) / 2).max(1));
            let (small, big) = shuffled.split_at(minority.min(n));
            target.partition(&[small.to_vec(), big.to_vec()]).is_ok()
        }
        Fault::Bridge => {
            if n < 3 {
                return false;
            }
            // shuffled[0] links the two halves of the others.
            let others = &shuffled[1..];
            let (left, right) = others.split_at(others.len() / 2);
            let links: Vec<(usize, usize)> = left
                .iter()
                .flat_map(|&a| right.iter().map(move |&b| (a, b)))
                .collect();
            target.cut(&links).is_ok()
        }
    }
}

/// Restarts killed members, resumes paused ones, heals partitions.
fn repair<T: Target>(target: &mut T) {
    target.heal();
    for i in 0..target.len() {
        if target.is_paused(i) {
            let _ = target.resume(i);
        }
        if !target.is_running(i) {
            let _ = target.start(i);
        }
    }
}
