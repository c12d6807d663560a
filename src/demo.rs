//! `localcluster demo failover`: kill the leader of a real 3-member cluster while a
//! client writes, and show what the client saw.
//!
//! ```text
//! localcluster demo failover                    # free ports, 300 writes, etcd's default timings
//! localcluster demo failover --writes 1000      # more writes (the leader dies after a third)
//! localcluster demo failover --ports default    # members on 2379/22379/32379, control port 8555,
//!                                               # so `localcluster run status` and etcdctl work alongside
//! localcluster demo failover --heartbeat-interval 20 --election-timeout 200   # faster failover
//! ```
//!
//! What it does, in order:
//! 1. writes a Procfile for three members (m1, m2, m3) into a temporary directory
//!    ([`Layout`]: free ports by default, or the standard ones) and runs it with the
//!    supervisor library, exactly as `localcluster start -f PROCFILE -p PORT` would:
//!    every member is a real `localcluster member` process (this very binary, by
//!    its path, so a renamed copy runs itself), and the members' log
//!    goes to `cluster.log` in that directory;
//! 2. waits, through the supervisor's control endpoint (`run status`), for one
//!    leader that every member agrees on;
//! 3. starts a writer: one client that puts `demo/failover/NNNNNN` keys one after
//!    the other, starting at the leader and moving to the next member after an error
//!    or a write left unanswered for max(election timeout, 500 ms), until `--writes`
//!    writes were acknowledged or two minutes passed;
//! 4. after a third of the writes (or of the two minutes), kills the leader with
//!    SIGKILL through the control endpoint (the `run kill leader` hook: the
//!    supervisor finds the leader with its cluster probe and answers once the
//!    process is reaped, which is time zero of the failover), then polls every
//!    member's `Status` every 10 ms until one that is not the old leader leads;
//! 5. prints the timeline as it happens (milliseconds since the demo started, and
//!    since the kill), then a summary: the old leader, the time until a new leader,
//!    the time until the next acknowledged write, and the final check: every
//!    acknowledged write is read back (linearizably) from the new leader with its
//!    value and revision, and revisions grew in acknowledgement order. It prints
//!    PASS or FAIL; FAIL exits 1 and keeps the temporary directory for inspection.
//!
//! Ownership and cleanup: the demo owns the supervisor task, and the supervisor owns
//! the member processes; the writer task lives in a `JoinSet` owned by the scenario.
//! On every way out — done, failure, Ctrl-C or SIGTERM (exit 130) — the supervisor is
//! told to stop, which stops every member (SIGTERM, SIGKILL after 5 s) before the
//! demo returns; a second Ctrl-C kills them at once. If the demo itself is killed,
//! the supervisor's own guarantees (PDEATHSIG and its orphan guard) kill the members.
//! Timings are what this machine measured on this run; they are shown, never checked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use localcluster::client::{url_of, StatusProbe};
use localcluster::layout::Layout;
use localcluster::pb::etcdserverpb::kv_client::KvClient;
use localcluster::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use localcluster::pb::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use localcluster::supervisor::cli::{ColorChoice, RunCommand, StartArgs, DEFAULT_CONTROL_PORT};
use localcluster::supervisor::control::{self, Request};
use localcluster::supervisor::status::{render_table, ProcessStatus};
use localcluster::supervisor::{self, ClusterProbe, Output};

/// Key prefix of the demo's writes.
const PREFIX: &str = "demo/failover/";
/// How long the writer may run in all.
const WRITER_BUDGET: Duration = Duration::from_secs(120);
/// Failed writes printed one by one; the rest are only counted.
const FAILURES_SHOWN: usize = 10;

/// `localcluster demo ...`
#[derive(Debug, clap::Subcommand)]
pub enum DemoCommand {
    /// Start a 3-member cluster, write continuously, SIGKILL the leader, and print
    /// the failover timeline and a check that every acknowledged write survived
    Failover(FailoverArgs),
}

/// Which ports the demo cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ports {
    /// The standard layout (clients 2379/22379/32379, peers 12380/22380/32380) and
    /// control port 8555.
    Default,
    /// Ports the OS hands out, so the demo never collides with a running cluster.
    Free,
}

/// Options of `localcluster demo failover`.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// Member and control ports
    #[arg(long, value_enum, default_value_t = Ports::Free)]
    pub ports: Ports,

    /// Acknowledged writes to make; the leader is killed after a third of them
    #[arg(long, value_name = "N", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(3..=10_000))]
    pub writes: u32,

    /// The members' --heartbeat-interval, in milliseconds
    #[arg(long = "heartbeat-interval", value_name = "MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// The members' --election-timeout, in milliseconds (at least 5 heartbeats)
    #[arg(long = "election-timeout", value_name = "MS", default_value_t = 1000)]
    pub election_ms: u64,
}

/// Runs a demo; returns the exit code.
pub async fn run(command: DemoCommand) -> anyhow::Result<i32> {
    match command {
        DemoCommand::Failover(args) => failover(args).await,
    }
}

/// What the scenario needs to know about the cluster.
struct Ctx {
    layout: Layout,
    names: Vec<String>,
    control_port: u16,
    election: Duration,
    writes: u32,
    log_path: PathBuf,
    /// Time zero of the timeline.
    t0: Instant,
}

impl Ctx {
    /// Prints one timeline line.
    fn say(&self, text: &str) {
        say(self.t0, text);
    }
}

fn say(t0: Instant, text: &str) {
    println!("{:>7} ms  {text}", t0.elapsed().as_millis());
}

/// `ms` between two instants (0 if `to` is earlier).
fn ms(from: Instant, to: Instant) -> u128 {
    to.saturating_duration_since(from).as_millis()
}

/// How the run ended.
enum Ended {
    Scenario(anyhow::Result<Report>),
    Interrupted,
    Supervisor(Result<Result<i32, supervisor::StartError>, tokio::task::JoinError>),
}

async fn failover(args: FailoverArgs) -> anyhow::Result<i32> {
    if args.heartbeat_ms == 0 || args.election_ms < 5 * args.heartbeat_ms {
        bail!(
            "--election-timeout ({} ms) must be at least 5 times --heartbeat-interval ({} ms), which must be > 0",
            args.election_ms,
            args.heartbeat_ms
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("localcluster-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let data_dir = dir.path().display().to_string();
    let (mut layout, control_port) = match args.ports {
        Ports::Default => (Layout::standard(&data_dir), DEFAULT_CONTROL_PORT),
        Ports::Free => {
            let layout = Layout::free(3, &data_dir).context("cannot pick free ports")?;
            (layout, free_port().context("cannot pick a free port")?)
        }
    };
    layout.token = "localcluster-demo".to_string();
    // The members are this very binary, whatever it is named.
    if let Some(exe) = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned))
    {
        layout.program = exe;
    }
    layout.extra_flags = format!(
        "--heartbeat-interval {} --election-timeout {}",
        args.heartbeat_ms, args.election_ms
    );
    let procfile = dir.path().join("Procfile");
    std::fs::write(&procfile, layout.procfile()).context("cannot write the Procfile")?;
    let log_path = dir.path().join("cluster.log");
    let log = std::fs::File::create(&log_path).context("cannot create the cluster log")?;

    let ctx = Ctx {
        names: layout.names(),
        layout,
        control_port,
        election: Duration::from_millis(args.election_ms),
        writes: args.writes,
        log_path,
        t0: Instant::now(),
    };
    println!(
        "localcluster demo failover: 3 members, {} writes, heartbeat {} ms, election timeout {} ms",
        args.writes, args.heartbeat_ms, args.election_ms
    );
    let members: Vec<String> = ctx
        .names
        .iter()
        .zip(&ctx.layout.ports)
        .map(|(n, (c, _))| format!("{n} 127.0.0.1:{c}"))
        .collect();
    println!(
        "cluster: {} (control port {control_port}: `localcluster run -p {control_port} status`)",
        members.join(", ")
    );
    println!("member logs: {}", ctx.log_path.display());

    let start_args = StartArgs {
        procfile: Some(procfile),
        env_files: vec![],
        base_port: 5000,
        port: control_port,
        timeout: Duration::from_secs(5),
        timestamps: false,
        exit_on_error: false,
        color: ColorChoice::Never,
        data_dir: None,
        processes: vec![],
    };
    let output = Output {
        out: Box::new(log),
        color: false,
    };
    let (stop_cluster, stop_requested) = oneshot::channel::<()>();
    let probe: Arc<dyn ClusterProbe> = Arc::new(StatusProbe);
    let mut sup = tokio::spawn(supervisor::start_with(
        start_args,
        None,
        Some(probe),
        output,
        async move {
            let _ = stop_requested.await;
        },
    ));
    ctx.say("supervisor started; starting m1, m2, m3");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let mut sup_finished = false;
    let ended = tokio::select! {
        report = scenario(&ctx) => Ended::Scenario(report),
        Ok(()) = tokio::signal::ctrl_c() => Ended::Interrupted,
        Some(()) = sigterm.recv() => Ended::Interrupted,
        result = &mut sup => {
            sup_finished = true;
            Ended::Supervisor(result)
        }
    };

    // Every way out stops the cluster first.
    if let Ended::Interrupted = ended {
        println!("interrupted: stopping the cluster (Ctrl-C again to kill it at once)");
    }
    let _ = stop_cluster.send(());
    if !sup_finished {
        match sup.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("localcluster demo: supervisor: {e}"),
            Err(e) => eprintln!("localcluster demo: supervisor task failed: {e}"),
        }
    }
    ctx.say("cluster stopped");

    let fail = |dir: tempfile::TempDir, why: String| {
        let kept = dir.keep();
        println!("FAIL: {why}");
        println!(
            "(kept {} for inspection; member logs in {})",
            kept.display(),
            kept.join("cluster.log").display()
        );
        1
    };
    let code = match ended {
        Ended::Interrupted => 130,
        Ended::Supervisor(Ok(Ok(_))) => fail(dir, "the supervisor stopped unexpectedly".into()),
        Ended::Supervisor(Ok(Err(e))) => {
            let hint = match args.ports {
                Ports::Default => {
                    " (is a cluster already running on the standard ports? try --ports free)"
                }
                Ports::Free => "",
            };
            return Err(anyhow!(e).context(format!("cannot run the cluster{hint}")));
        }
        Ended::Supervisor(Err(e)) => fail(dir, format!("the supervisor task failed: {e}")),
        Ended::Scenario(Err(e)) => fail(dir, format!("{e:#}")),
        Ended::Scenario(Ok(report)) => {
            report.print();
            match &report.problem {
                None => {
                    println!("PASS: {}", report.check);
                    0
                }
                Some(problem) => fail(dir, problem.clone()),
            }
        }
    };
    Ok(code)
}

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Sends one request to the supervisor.
async fn ask(ctx: &Ctx, op: RunCommand, names: &[&str]) -> anyhow::Result<control::Response> {
    let req = Request {
        op,
        names: names.iter().map(|n| n.to_string()).collect(),
    };
    let resp = control::request(ctx.control_port, &req).await?;
    if !resp.ok {
        bail!(
            "`run {}` failed: {}",
            control::op_name(op),
            resp.error.unwrap_or_default()
        );
    }
    Ok(resp)
}

/// The supervisor's status table, with the members' Raft details.
async fn status(ctx: &Ctx) -> anyhow::Result<Vec<ProcessStatus>> {
    ask(ctx, RunCommand::Status, &[])
        .await?
        .status
        .ok_or_else(|| anyhow!("`run status` answered without a table"))
}

/// The outcome of a completed scenario.
struct Report {
    old_leader: String,
    old_term: u64,
    /// Writes acknowledged when the kill was done.
    acked_at_kill: usize,
    new_leader: String,
    new_term: u64,
    /// Kill to new leader.
    election: Duration,
    /// Kill to the first acknowledged write issued after the kill.
    next_ack: Option<(Duration, u64, String)>,
    acked: usize,
    failed: usize,
    applied_anyway: usize,
    /// The final check, in words.
    check: String,
    /// The writer stopped at [`WRITER_BUDGET`] before making every write.
    budget_hit: bool,
    /// Why the run failed, if it did.
    problem: Option<String>,
}

impl Report {
    fn print(&self) {
        println!();
        println!("summary");
        println!(
            "  old leader                        {} (term {}), killed after {} acknowledged writes",
            self.old_leader, self.old_term, self.acked_at_kill
        );
        println!(
            "  time until a new leader           {} ms ({}, term {})",
            self.election.as_millis(),
            self.new_leader,
            self.new_term
        );
        match &self.next_ack {
            Some((d, seq, via)) => println!(
                "  time until the next acked write   {} ms (#{seq} via {via})",
                d.as_millis()
            ),
            None => println!("  time until the next acked write   none was acknowledged"),
        }
        let mut writes = format!(
            "  writes                            {} acknowledged, {} failed or unanswered",
            self.acked, self.failed
        );
        if self.failed > 0 {
            writes.push_str(&format!(
                " (outcome unknown to the client; applied anyway: {})",
                self.applied_anyway
            ));
        }
        println!("{writes}");
        if self.budget_hit {
            println!(
                "                                    (the writer stopped at its {} s limit)",
                WRITER_BUDGET.as_secs()
            );
        }
    }
}

/// One write the writer made.
#[derive(Debug, Clone)]
struct Attempt {
    seq: u64,
    member: usize,
    started: Instant,
    ended: Instant,
    /// The revision of the write, or why it failed.
    result: Result<i64, String>,
}

fn key_of(seq: u64) -> String {
    format!("{PREFIX}{seq:06}")
}

fn value_of(seq: u64) -> String {
    format!("write {seq}")
}

/// A channel that connects on first use and reconnects after failures.
fn channel(url: &str, timeout: Duration) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url_of(url))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

async fn scenario(ctx: &Ctx) -> anyhow::Result<Report> {
    let (rows, leader) = wait_for_leader(ctx).await?;
    let row_text: Vec<String> = rows
        .iter()
        .map(|r| {
            let role = r.member.as_ref().map_or("?", |m| m.role.as_str());
            format!("{} pid {} ({role})", r.name, r.pid.unwrap_or(0))
        })
        .collect();
    ctx.say(&format!("cluster up: {}", row_text.join(", ")));
    let term = rows[leader].member.as_ref().map_or(0, |m| m.raft_term);
    ctx.say(&format!("leader: {} (term {term})", ctx.names[leader]));

    let timeout = ctx.election.max(Duration::from_millis(500));
    let urls = ctx.layout.client_urls();
    let kvs = urls
        .iter()
        .map(|u| channel(u, timeout).map(KvClient::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let maintenance = urls
        .iter()
        .map(|u| channel(u, Duration::from_millis(200)).map(MaintenanceClient::new))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let (acked_tx, mut acked_rx) = watch::channel(0u32);
    let (kill_tx, kill_rx) = watch::channel(None::<Instant>);
    let mut tasks = JoinSet::new();
    let writer = Writer {
        clients: kvs,
        names: ctx.names.clone(),
        target: ctx.writes,
        timeout,
        t0: ctx.t0,
        acked: acked_tx,
        kill: kill_rx,
    };
    ctx.say(&format!(
        "writer started: {} writes to {PREFIX}NNNNNN, first via {} (the leader); after an error or {} ms without an answer it moves to the next member",
        ctx.writes,
        ctx.names[leader],
        timeout.as_millis()
    ));
    tasks.spawn(writer.run(leader));

    // The kill comes after a third of the writes, or of the writer's time budget.
    let kill_after = ctx.writes / 3;
    let waited = tokio::time::timeout(WRITER_BUDGET / 3, acked_rx.wait_for(|&n| n >= kill_after));
    let waited = match waited.await {
        Ok(Ok(n)) => Some(*n),
        Ok(Err(_)) => bail!("the writer stopped early"),
        Err(_) => None,
    };
    let acked_before_kill = waited.unwrap_or_else(|| *acked_rx.borrow());
    if acked_before_kill == 0 {
        bail!("no write was acknowledged before the kill");
    }

    // Kill the leader through the supervisor, as `localcluster run kill leader` does.
    // It answers once the process has been reaped: that is time zero of the failover.
    // The leader is looked up again first: it may have changed since the start.
    let (rows, leader) = wait_for_leader(ctx).await?;
    let old = rows[leader]
        .member
        .clone()
        .context("the leader's row has no status")?;
    ctx.say(&format!(
        "SIGKILL the leader, {} (term {}), through the supervisor (`localcluster run -p {} kill leader`); {acked_before_kill} writes acknowledged so far",
        ctx.names[leader],
        old.raft_term,
        ctx.control_port
    ));
    ask(ctx, RunCommand::Kill, &["leader"]).await?;
    let t_kill = Instant::now();
    let _ = kill_tx.send(Some(t_kill));
    let old_id = old.member_id;
    // Which process died, from the supervisor, while polling for a new leader.
    let gone = async {
        let after = status(ctx).await?;
        let killed = after
            .iter()
            .position(|r| !r.state.is_alive())
            .context("no member is down after `kill leader`")?;
        let row = after[killed].clone();
        if killed != leader {
            bail!(
                "`kill leader` killed {} but {} led a moment before: leadership moved during the kill; please run the demo again",
                row.name,
                ctx.names[leader]
            );
        }
        ctx.say(&format!(
            "{} is gone ({}, reaped by the supervisor): time zero of the failover",
            row.name,
            row.exit_signal
                .as_deref()
                .map_or_else(|| "exited".to_string(), |s| format!("killed by {s}")),
        ));
        Ok(row)
    };
    let (gone, elected) = tokio::join!(gone, wait_for_new_leader(ctx, &maintenance, old_id));
    let killed_row = gone?;
    let (new_leader, new_term, t_elected) = elected?;
    ctx.say(&format!(
        "new leader: {} (term {new_term}), +{} ms after the kill",
        ctx.names[new_leader],
        ms(t_kill, t_elected)
    ));

    let attempts = match tasks.join_next().await {
        Some(Ok(attempts)) => attempts,
        Some(Err(e)) => bail!("the writer failed: {e}"),
        None => bail!("the writer is missing"),
    };
    let acked: Vec<&Attempt> = attempts.iter().filter(|a| a.result.is_ok()).collect();
    let acked_at_kill = acked.iter().filter(|a| a.ended <= t_kill).count();
    let failed = attempts.len() - acked.len();
    let next_ack = acked.iter().find(|a| a.started >= t_kill).map(|a| {
        (
            a.ended.saturating_duration_since(t_kill),
            a.seq,
            ctx.names[a.member].clone(),
        )
    });

    println!();
    println!(
        "{}",
        render_table(&status(ctx).await.unwrap_or_default(), true).trim_end()
    );
    println!();

    ctx.say(&format!(
        "reading back every acknowledged write from {} (the new leader)",
        ctx.names[new_leader]
    ));
    let stored = read_all(KvClient::new(channel(&urls[new_leader], timeout)?)).await?;
    let verdict = verify(&attempts, &stored, &ctx.names[new_leader]);
    let problem = verdict.problem.or_else(|| {
        next_ack
            .is_none()
            .then(|| "no write issued after the kill was acknowledged".to_string())
    });

    Ok(Report {
        old_leader: killed_row.name.clone(),
        old_term: old.raft_term,
        acked_at_kill,
        new_leader: ctx.names[new_leader].clone(),
        new_term,
        election: t_elected.saturating_duration_since(t_kill),
        next_ack,
        acked: acked.len(),
        failed,
        applied_anyway: verdict.applied_anyway,
        check: verdict.check,
        problem,
        budget_hit: acked.len() < ctx.writes as usize,
    })
}

/// Waits until every member runs and agrees on one leader; returns the rows and
/// the leader's index.
async fn wait_for_leader(ctx: &Ctx) -> anyhow::Result<(Vec<ProcessStatus>, usize)> {
    let deadline = Instant::now() + Duration::from_secs(30) + 10 * ctx.election;
    loop {
        // The control endpoint may not be up yet: retry until the deadline.
        let polled = status(ctx).await;
        if let Ok(rows) = &polled {
            if let Some(r) = rows.iter().find(|r| !r.state.is_alive()) {
                // Let the log writer catch up with the member's last words.
                tokio::time::sleep(Duration::from_millis(200)).await;
                bail!(
                    "{} {} before the cluster came up; its last lines:\n{}",
                    r.name,
                    r.exit_signal.as_deref().map_or_else(
                        || format!("exited with code {}", r.exit_code.unwrap_or(-1)),
                        |s| format!("was killed by {s}")
                    ),
                    log_tail(&ctx.log_path, &r.name, 5)
                );
            }
            if let Some(i) = agreed_leader(rows) {
                return Ok((rows.clone(), i));
            }
        }
        if Instant::now() > deadline {
            let why = match polled {
                Ok(_) => "the members did not agree on a leader".to_string(),
                Err(e) => format!("{e:#}"),
            };
            bail!(
                "no leader after {} s: {why} (see {})",
                (deadline - ctx.t0).as_secs(),
                ctx.log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `n` lines of process `name` in the supervisor's log, indented.
fn log_tail(log: &std::path::Path, name: &str, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let prefix = format!("{name} |");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The index of the one member that leads, if every member answered, exactly one
/// says it leads, and all name it as their leader.
fn agreed_leader(rows: &[ProcessStatus]) -> Option<usize> {
    let members = rows
        .iter()
        .map(|r| r.member.as_ref())
        .collect::<Option<Vec<_>>>()?;
    let mut leaders = members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == "leader");
    let (i, leader) = leaders.next()?;
    if leaders.next().is_some() {
        return None;
    }
    members
        .iter()
        .all(|m| m.leader_id == leader.member_id)
        .then_some(i)
}

/// Polls every member every 10 ms until one says it leads and is not `old_id`
/// (the killed member does not answer); returns its index, term and when it was
/// seen.
async fn wait_for_new_leader(
    ctx: &Ctx,
    clients: &[MaintenanceClient<Channel>],
    old_id: u64,
) -> anyhow::Result<(usize, u64, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(10) + 20 * ctx.election;
    loop {
        let polls = clients.iter().enumerate().map(|(i, c)| {
            let mut c = c.clone();
            async move {
                let r =
                    tokio::time::timeout(Duration::from_millis(200), c.status(StatusRequest {}))
                        .await;
                (i, r)
            }
        });
        for (i, r) in futures::future::join_all(polls).await {
            if let Ok(Ok(resp)) = r {
                let s = resp.into_inner();
                let id = s.header.map_or(0, |h| h.member_id);
                if s.leader != 0 && s.leader != old_id && s.leader == id {
                    return Ok((i, s.raft_term, Instant::now()));
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no new leader within {} s of the kill (see {})",
                (deadline - ctx.t0).as_secs(),
                ctx.log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The client that writes continuously (see the module doc).
struct Writer {
    clients: Vec<KvClient<Channel>>,
    names: Vec<String>,
    target: u32,
    timeout: Duration,
    t0: Instant,
    /// Acknowledged writes so far.
    acked: watch::Sender<u32>,
    /// When the leader was killed, once it was.
    kill: watch::Receiver<Option<Instant>>,
}

impl Writer {
    /// Writes until `target` writes were acknowledged or [`WRITER_BUDGET`] ran
    /// out, starting at member `first`; returns every attempt in order.
    async fn run(self, first: usize) -> Vec<Attempt> {
        let n = self.clients.len();
        let deadline = Instant::now() + WRITER_BUDGET;
        let mut at = first;
        let mut attempts = Vec::new();
        let (mut acked, mut shown, mut acked_after_kill) = (0u32, 0usize, false);
        let mut seq = 0;
        while acked < self.target && Instant::now() < deadline {
            seq += 1;
            let request = PutRequest {
                key: key_of(seq).into_bytes().into(),
                value: value_of(seq).into_bytes().into(),
                ..PutRequest::default()
            };
            let mut client = self.clients[at].clone();
            let started = Instant::now();
            let result = match tokio::time::timeout(self.timeout, client.put(request)).await {
                Ok(Ok(resp)) => resp
                    .into_inner()
                    .header
                    .map(|h| h.revision)
                    .ok_or_else(|| "answer without a header".to_string()),
                Ok(Err(status)) => Err(describe(&status)),
                Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
            };
            let ended = Instant::now();
            let kill = *self.kill.borrow();
            let since_kill = |t: Instant| {
                kill.map_or_else(String::new, |k| {
                    format!(", +{} ms after the kill", ms(k, t))
                })
            };
            let failed = result.is_err();
            match &result {
                Ok(rev) => {
                    acked += 1;
                    let _ = self.acked.send(acked);
                    if kill.is_some_and(|k| started >= k) && !acked_after_kill {
                        acked_after_kill = true;
                        say(
                            self.t0,
                            &format!(
                                "first acknowledged write issued after the kill: #{seq} via {} (revision {rev}){}",
                                self.names[at],
                                since_kill(ended)
                            ),
                        );
                    }
                }
                Err(e) if shown < FAILURES_SHOWN => {
                    shown += 1;
                    say(
                        self.t0,
                        &format!(
                            "write #{seq} via {} failed: {e}{}; next: {}",
                            self.names[at],
                            since_kill(ended),
                            self.names[(at + 1) % n]
                        ),
                    );
                }
                Err(_) => {
                    if shown == FAILURES_SHOWN {
                        shown += 1;
                        say(self.t0, "(more failed writes; only counted from now on)");
                    }
                }
            }
            attempts.push(Attempt {
                seq,
                member: at,
                started,
                ended,
                result,
            });
            if failed {
                at = (at + 1) % n;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        say(
            self.t0,
            &format!(
                "writer done: {acked} acknowledged, {} failed or unanswered",
                attempts.len() - acked as usize
            ),
        );
        attempts
    }
}

/// A gRPC error in one short line.
fn describe(status: &tonic::Status) -> String {
    let message = status.message().lines().next().unwrap_or("").trim();
    let mut text = if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        message.to_string()
    };
    if text.len() > 100 {
        let mut cut = 100;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// Every key under [`PREFIX`] with its value and mod revision, read linearizably
/// a page at a time.
async fn read_all(
    mut client: KvClient<Channel>,
) -> anyhow::Result<std::collections::BTreeMap<String, (String, i64)>> {
    let mut out = std::collections::BTreeMap::new();
    let mut from = PREFIX.as_bytes().to_vec();
    let mut end = PREFIX.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    loop {
        let request = RangeRequest {
            key: from.clone(),
            range_end: end.clone(),
            limit: 1000,
            ..RangeRequest::default()
        };
        let resp = tokio::time::timeout(Duration::from_secs(30), client.range(request))
            .await
            .context("reading the writes back timed out")?
            .map_err(|s| anyhow!("reading the writes back failed: {}", describe(&s)))?
            .into_inner();
        for kv in &resp.kvs {
            out.insert(
                String::from_utf8_lossy(&kv.key).into_owned(),
                (
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.mod_revision,
                ),
            );
        }
        match resp.kvs.last() {
            Some(last) if resp.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// The final check.
struct Verdict {
    check: String,
    problem: Option<String>,
    applied_anyway: usize,
}

/// Checks that every acknowledged write is in `stored` with its value and
/// revision, that revisions grew in acknowledgement order, and that nothing the
/// writer never wrote is there.
fn verify(
    attempts: &[Attempt],
    stored: &std::collections::BTreeMap<String, (String, i64)>,
    reader: &str,
) -> Verdict {
    let (mut missing, mut wrong, mut unordered) = (Vec::new(), Vec::new(), Vec::new());
    let (mut acked, mut applied_anyway, mut last_rev) = (0, 0, 0);
    for a in attempts {
        let found = stored.get(&key_of(a.seq));
        match (&a.result, found) {
            (Ok(_), None) => missing.push(a.seq),
            (Ok(rev), Some((value, mod_rev))) if *value != value_of(a.seq) || mod_rev != rev => {
                wrong.push(a.seq)
            }
            (Ok(_), Some(_)) => {}
            (Err(_), Some(_)) => applied_anyway += 1,
            (Err(_), None) => {}
        }
        if let Ok(rev) = a.result {
            acked += 1;
            if rev <= last_rev {
                unordered.push(a.seq);
            }
            last_rev = rev;
        }
    }
    let strangers = stored.len().saturating_sub(
        attempts
            .iter()
            .filter(|a| stored.contains_key(&key_of(a.seq)))
            .count(),
    );
    if missing.is_empty() && wrong.is_empty() && unordered.is_empty() && strangers == 0 {
        return Verdict {
            check: format!(
                "all {acked} acknowledged writes are readable from {reader} (the new leader) with their values and revisions, which grew in acknowledgement order"
            ),
            problem: None,
            applied_anyway,
        };
    }
    let list = |seqs: &[u64]| {
        let shown: Vec<String> = seqs.iter().take(10).map(|s| format!("#{s}")).collect();
        let more = if seqs.len() > 10 { ", ..." } else { "" };
        format!("{}{more}", shown.join(", "))
    };
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "{} acknowledged writes are missing ({})",
            missing.len(),
            list(&missing)
        ));
    }
    if !wrong.is_empty() {
        problems.push(format!(
            "{} have another value or revision ({})",
            wrong.len(),
            list(&wrong)
        ));
    }
    if !unordered.is_empty() {
        problems.push(format!(
            "{} got a revision not above the previous acknowledged write's ({})",
            unordered.len(),
            list(&unordered)
        ));
    }
    if strangers > 0 {
        problems.push(format!(
            "{strangers} keys under {PREFIX} were never written"
        ));
    }
    Verdict {
        check: format!("FAILED on {reader}: {}", problems.join("; ")),
        problem: Some(format!(
            "reading back from {reader}: {}",
            problems.join("; ")
        )),
        applied_anyway,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(seq: u64, result: Result<i64, String>) -> Attempt {
        let now = Instant::now();
        Attempt {
            seq,
            member: 0,
            started: now,
            ended: now,
            result,
        }
    }

    fn stored(entries: &[(u64, i64)]) -> std::collections::BTreeMap<String, (String, i64)> {
        entries
            .iter()
            .map(|&(seq, rev)| (key_of(seq), (value_of(seq), rev)))
            .collect()
    }

    #[test]
    fn verification_passes_when_every_acked_write_is_there() {
        let attempts = [
            attempt(1, Ok(5)),
            attempt(2, Err("timeout".into())),
            attempt(3, Ok(7)),
        ];
        let v = verify(&attempts, &stored(&[(1, 5), (2, 6), (3, 7)]), "m2");
        assert!(v.problem.is_none(), "{}", v.check);
        assert_eq!(v.applied_anyway, 1);
        assert!(v
            .check
            .starts_with("all 2 acknowledged writes are readable from m2"));
    }

    #[test]
    fn verification_fails_on_lost_changed_reordered_or_stray_writes() {
        let attempts = [attempt(1, Ok(5)), attempt(2, Ok(4)), attempt(3, Ok(9))];
        let v = verify(&attempts, &stored(&[(1, 5), (2, 4)]), "m1");
        let p = v.problem.unwrap();
        assert!(p.contains("1 acknowledged writes are missing (#3)"), "{p}");
        assert!(
            p.contains("not above the previous acknowledged write's (#2)"),
            "{p}"
        );

        let mut s = stored(&[(1, 5), (2, 6)]);
        s.insert(key_of(3), ("other".into(), 9));
        s.insert(key_of(77), (value_of(77), 10));
        let attempts = [attempt(1, Ok(5)), attempt(2, Ok(6)), attempt(3, Ok(9))];
        let p = verify(&attempts, &s, "m1").problem.unwrap();
        assert!(p.contains("1 have another value or revision (#3)"), "{p}");
        assert!(
            p.contains("1 keys under demo/failover/ were never written"),
            "{p}"
        );
    }

    #[test]
    fn one_leader_counts_only_when_everyone_agrees() {
        use localcluster::supervisor::status::{MemberProbe, MemberStatus, ProcState};
        let row = |id: u64, leader: u64| ProcessStatus {
            name: format!("m{id}"),
            pid: Some(1),
            state: ProcState::Running,
            uptime_secs: Some(1),
            restarts: 0,
            exit_code: None,
            exit_signal: None,
            port: 5000,
            client_url: None,
            member: Some(MemberStatus::from(MemberProbe {
                member_id: id,
                leader_id: leader,
                raft_term: 2,
                raft_index: 5,
            })),
        };
        assert_eq!(agreed_leader(&[row(1, 2), row(2, 2), row(3, 2)]), Some(1));
        assert_eq!(agreed_leader(&[row(1, 2), row(2, 2), row(3, 0)]), None);
        assert_eq!(agreed_leader(&[row(1, 1), row(2, 2), row(3, 2)]), None);
        let mut down = row(3, 2);
        down.member = None;
        assert_eq!(agreed_leader(&[row(1, 2), row(2, 2), down]), None);
    }
}
