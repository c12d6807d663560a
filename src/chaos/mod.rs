//! Chaos: concurrent clients and injected faults against an embedded cluster,
//! with the resulting history checked for linearizability.
//!
//! [`run`] drives a [`LocalCluster`]: `clients` tasks read, write and
//! compare-and-set a few keys through random members (every value written is
//! unique), recording each operation's invocation, completion and result
//! ([`linearizable::Operation`]); an operation that fails or times out has an
//! unknown outcome (it may still commit). Meanwhile a nemesis injects one
//! fault at a time and repairs it: SIGKILL-like kills of the leader or of a
//! random member (then a restart), pauses (a frozen member, like SIGSTOP) and
//! partitions (the leader isolated from the majority). At the end the history
//! of each key is checked by [`linearizable::check`], and the revisions of
//! acknowledged writes must be distinct.

pub mod linearizable;
pub mod netns;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::cluster::LocalCluster;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::{
    request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use linearizable::{Op, Operation, Verdict};

/// The faults the nemesis picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Kill the leader, restart it after a while.
    KillLeader,
    /// Kill a random member, restart it after a while.
    KillRandom,
    /// Freeze a random member, then let it go on.
    Pause,
    /// Cut the leader off from the rest, then heal.
    IsolateLeader,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::KillLeader,
        Fault::KillRandom,
        Fault::Pause,
        Fault::IsolateLeader,
    ];
}

/// How a chaos run goes.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub duration: Duration,
    pub clients: usize,
    pub keys: usize,
    /// Faults to inject, one at a time; empty: none.
    pub faults: Vec<Fault>,
    /// How long a fault lasts, and the calm after it.
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
    /// Operations recorded (reads that failed are dropped: they changed nothing).
    pub operations: usize,
    /// Of which with an unknown outcome.
    pub unknown: usize,
    pub faults_injected: usize,
    /// Per key that is not linearizable, the operations around the violation.
    pub violations: Vec<(String, Vec<Operation>)>,
    /// Revisions acknowledged to two different writes.
    pub duplicate_revisions: Vec<i64>,
}

impl ChaosReport {
    /// Whether nothing was found.
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.duplicate_revisions.is_empty()
    }
}

/// `localcluster chaos`: rounds of [`run`] against a fresh embedded cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// How long to run in all (e.g. 60s, 10m)
    #[arg(long, default_value = "60s", value_parser = crate::bench::parse_duration)]
    pub duration: Duration,
    /// Length of one round: each round checks its own history, on fresh keys
    #[arg(long, default_value = "10s", value_parser = crate::bench::parse_duration)]
    pub round: Duration,
    /// Members of the embedded cluster
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Concurrent clients
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Keys the clients share
    #[arg(long, default_value_t = 3)]
    pub keys: usize,
    /// Faults, comma-separated: kill-leader, kill-random, pause, isolate-leader
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill-leader,kill-random,pause,isolate-leader"
    )]
    pub faults: Vec<FaultName>,
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
}

impl From<FaultName> for Fault {
    fn from(f: FaultName) -> Fault {
        match f {
            FaultName::KillLeader => Fault::KillLeader,
            FaultName::KillRandom => Fault::KillRandom,
            FaultName::Pause => Fault::Pause,
            FaultName::IsolateLeader => Fault::IsolateLeader,
        }
    }
}

/// Runs `localcluster chaos`; prints one line per round and a summary, and
/// returns the exit code: 0 without violations, 1 with any, 2 if the cluster
/// could not start.
pub async fn main(args: ChaosArgs) -> i32 {
    let mut cluster = match LocalCluster::builder().members(args.members).start().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("localcluster chaos: cannot start the cluster: {e}");
            return 2;
        }
    };
    let started = Instant::now();
    let (mut ops, mut unknown, mut faults, mut bad) = (0, 0, 0, 0);
    let mut round = 0;
    while started.elapsed() < args.duration {
        let cfg = ChaosConfig {
            duration: args
                .round
                .min(args.duration.saturating_sub(started.elapsed())),
            clients: args.clients,
            keys: args.keys,
            faults: args.faults.iter().map(|&f| f.into()).collect(),
            seed: args.seed.wrapping_add(round as u64),
            key_prefix: format!("chaos/{round}/"),
            ..Default::default()
        };
        let report = run(&mut cluster, &cfg).await;
        ops += report.operations;
        unknown += report.unknown;
        faults += report.faults_injected;
        println!(
            "round {round}: {} operations ({} unknown), {} faults, {} violations, {} duplicate revisions",
            report.operations,
            report.unknown,
            report.faults_injected,
            report.violations.len(),
            report.duplicate_revisions.len()
        );
        for (key, stuck) in &report.violations {
            println!("  NOT LINEARIZABLE: {key}; operations around the violation:");
            for o in stuck {
                println!("    {o:?}");
            }
        }
        if !report.duplicate_revisions.is_empty() {
            println!(
                "  revisions acknowledged twice: {:?}",
                report.duplicate_revisions
            );
        }
        bad += report.violations.len() + report.duplicate_revisions.len();
        round += 1;
        // Let the repaired cluster settle before the next round.
        let _ = cluster.wait_healthy(Duration::from_secs(30)).await;
    }
    println!(
        "chaos: {:.0}s, {round} rounds, {ops} operations checked ({unknown} unknown), {faults} faults injected, {bad} violations",
        started.elapsed().as_secs_f64()
    );
    let _ = cluster.shutdown().await;
    if bad == 0 {
        0
    } else {
        1
    }
}

/// One client's record: per key, its operations; and acknowledged write revisions.
type Record = (Vec<(usize, Operation)>, Vec<i64>);

/// Runs clients and the nemesis against `cluster` for `cfg.duration`, then
/// repairs every fault and checks the history.
pub async fn run(cluster: &mut LocalCluster, cfg: &ChaosConfig) -> ChaosReport {
    let urls = cluster.client_urls();
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..cfg.clients {
        clients.spawn(client(
            c,
            urls.clone(),
            cfg.clone(),
            start,
            deadline,
            cfg.seed.wrapping_mul(31).wrapping_add(c as u64),
        ));
    }
    let faults = nemesis(cluster, cfg, deadline).await;

    let mut by_key: BTreeMap<usize, Vec<Operation>> = BTreeMap::new();
    let mut revisions: HashMap<i64, usize> = HashMap::new();
    while let Some(joined) = clients.join_next().await {
        let Ok((ops, revs)) = joined else { continue };
        for (k, o) in ops {
            by_key.entry(k).or_default().push(o);
        }
        for r in revs {
            *revisions.entry(r).or_default() += 1;
        }
    }
    let mut report = ChaosReport {
        faults_injected: faults,
        ..Default::default()
    };
    for (k, ops) in &by_key {
        report.operations += ops.len();
        report.unknown += ops.iter().filter(|o| o.is_unknown()).count();
        if let Verdict::Violation { stuck } = linearizable::check(None, ops) {
            report.violations.push((key(&cfg.key_prefix, *k), stuck));
        }
    }
    let mut dups: Vec<i64> = revisions
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(r, _)| r)
        .collect();
    dups.sort_unstable();
    report.duplicate_revisions = dups;
    report
}

fn key(prefix: &str, k: usize) -> String {
    format!("{prefix}{k}")
}

/// Injects faults one at a time until `deadline`, repairing each; returns
/// how many it injected. Leaves every member running and connected.
async fn nemesis(cluster: &mut LocalCluster, cfg: &ChaosConfig, deadline: Instant) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut injected = 0;
    while Instant::now() + 2 * cfg.fault_period < deadline && !cfg.faults.is_empty() {
        tokio::time::sleep(cfg.fault_period).await;
        let fault = cfg.faults[rng.gen_range(0..cfg.faults.len())];
        let n = cluster.len();
        let leader = cluster.leader();
        let random = rng.gen_range(0..n);
        let done = match fault {
            Fault::KillLeader => leader.and_then(|l| cluster.kill(l).ok().map(|_| Some(l))),
            Fault::KillRandom => cluster.kill(random).ok().map(|_| Some(random)),
            Fault::Pause => cluster.pause(random).ok().map(|_| None),
            Fault::IsolateLeader => leader.and_then(|l| {
                let rest: Vec<usize> = (0..n).filter(|&i| i != l).collect();
                cluster.partition(&[&[l], &rest]).ok().map(|_| None)
            }),
        };
        if done.is_some() {
            injected += 1;
            tracing::info!(?fault, "chaos: fault injected");
        }
        tokio::time::sleep(cfg.fault_period).await;
        repair(cluster);
    }
    tokio::time::sleep_until(deadline.into()).await;
    repair(cluster);
    injected
}

/// Restarts killed members, resumes paused ones, heals partitions.
fn repair(cluster: &mut LocalCluster) {
    cluster.heal();
    for i in 0..cluster.len() {
        if cluster.is_paused(i) {
            let _ = cluster.resume(i);
        }
        if !cluster.is_running(i) {
            let _ = cluster.start(i);
        }
    }
}

/// One client: random operations on random keys through random members.
async fn client(
    id: usize,
    urls: Vec<String>,
    cfg: ChaosConfig,
    start: Instant,
    deadline: Instant,
    seed: u64,
) -> Record {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ops = Vec::new();
    let mut revs = Vec::new();
    let mut counter = 0u64;
    // The last value this client saw or wrote on each key.
    let mut last: HashMap<usize, u64> = HashMap::new();
    let mut conns: HashMap<usize, tonic::transport::Channel> = HashMap::new();
    let now = |t: Instant| t.duration_since(start).as_nanos() as u64;
    while Instant::now() < deadline {
        let k = rng.gen_range(0..cfg.keys.max(1));
        let m = rng.gen_range(0..urls.len());
        counter += 1;
        let fresh = (id as u64 + 1) * 1_000_000_000 + counter;
        let op = match rng.gen_range(0..10) {
            0..=3 => Op::Read(None),
            4..=6 => Op::Write(fresh),
            // A CAS mostly targets the value last read or written on this
            // key; value 0 is never written, so a CAS from it must fail.
            _ => Op::Cas {
                from: match last.get(&k) {
                    Some(&v) if rng.gen_bool(0.8) => v,
                    _ => 0,
                },
                to: fresh,
                ok: None,
            },
        };
        let invoked = now(Instant::now());
        let channel = match conns.get(&m) {
            Some(ch) => Some(ch.clone()),
            None => crate::client::connect(&urls[m], cfg.op_timeout)
                .await
                .ok()
                .inspect(|ch| {
                    conns.insert(m, ch.clone());
                }),
        };
        let result = match channel {
            Some(ch) => {
                tokio::time::timeout(cfg.op_timeout, execute(ch, &key(&cfg.key_prefix, k), &op))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            None => None,
        };
        let returned = Some(now(Instant::now()));
        let recorded = match (op, result) {
            (Op::Read(_), Some(Outcome::Read(v))) => Some((Op::Read(Some(v)), returned)),
            // A failed read changed nothing: not recorded.
            (Op::Read(_), _) => None,
            (Op::Write(v), Some(Outcome::Written(rev))) => {
                revs.push(rev);
                Some((Op::Write(v), returned))
            }
            (Op::Cas { from, to, .. }, Some(Outcome::Cas(ok, rev))) => {
                if ok {
                    revs.push(rev);
                }
                let ok = Some(ok);
                Some((Op::Cas { from, to, ok }, returned))
            }
            (op, _) => {
                // Failed or timed out: it may still take effect.
                conns.remove(&m);
                Some((op, None))
            }
        };
        if let Some((op, returned)) = recorded {
            let value = match op {
                Op::Read(Some(v)) => v,
                Op::Write(v) => Some(v),
                Op::Cas {
                    to, ok: Some(true), ..
                } => Some(to),
                _ => None,
            };
            if let Some(v) = value {
                last.insert(k, v);
            }
            ops.push((
                k,
                Operation {
                    client: id,
                    op,
                    invoked,
                    returned,
                },
            ));
        }
    }
    (ops, revs)
}

enum Outcome {
    Read(Option<u64>),
    Written(i64),
    Cas(bool, i64),
}

async fn execute(
    channel: tonic::transport::Channel,
    key: &str,
    op: &Op,
) -> Result<Outcome, tonic::Status> {
    let mut kv = crate::pb::etcdserverpb::kv_client::KvClient::new(channel);
    let k = key.as_bytes().to_vec();
    match op {
        Op::Read(_) => {
            let resp = kv
                .range(RangeRequest {
                    key: k,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let v = resp
                .kvs
                .first()
                .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok());
            Ok(Outcome::Read(v))
        }
        Op::Write(v) => {
            let resp = kv
                .put(PutRequest {
                    key: k,
                    value: v.to_string().into_bytes(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok(Outcome::Written(
                resp.header.map(|h| h.revision).unwrap_or_default(),
            ))
        }
        Op::Cas { from, to, .. } => {
            let resp = kv
                .txn(TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Value as i32,
                        key: k.clone(),
                        target_union: Some(TargetUnion::Value(from.to_string().into_bytes())),
                        ..Default::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: k,
                            value: to.to_string().into_bytes(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                })
                .await?
                .into_inner();
            Ok(Outcome::Cas(
                resp.succeeded,
                resp.header.map(|h| h.revision).unwrap_or_default(),
            ))
        }
    }
}
