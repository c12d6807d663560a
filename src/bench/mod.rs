//! `localcluster bench`: a load generator for any etcd v3 endpoints (localcluster
//! members or real etcd), in the spirit of etcd's `tools/benchmark`.
//!
//! `localcluster bench put|range|txn-put|mixed` sends `--total` requests (or
//! as many as fit in `--duration`, optionally paced at `--rate` per second)
//! from `--clients` concurrent clients over `--conns` gRPC connections, spread
//! over `--endpoints` round-robin ([`plan`]), with keys and values shaped by
//! [`keys`] ([`load`] runs them); it then prints throughput and latency
//! percentiles ([`summary`]) as text or, with `-w json`, as one JSON object.
//!
//! `localcluster bench watch` measures fan-out instead: `--watchers` watchers on
//! one prefix over `--streams` streams, `--clients` writers putting `--total`
//! keys under it; it reports deliveries per second and delivery latency
//! ([`watch`]).
//!
//! The connection flags (`--endpoints`, `--clients`, `--conns`, `--timeout`,
//! `-w`, and the TLS flags `--cacert`, `--cert`, `--key`,
//! `--insecure-skip-tls-verify`) are global: they go before or after the
//! operation's name. An `https://` endpoint is verified against the CA (flag,
//! or `ETCDCTL_CACERT`); without one the run is refused unless verification is
//! explicitly skipped.
//! The command exits 0 when every request succeeded, 1 when any failed (the
//! report is printed either way), 2 on bad arguments, when an endpoint cannot
//! be reached and when the report cannot be written.

pub mod conn;
pub mod keys;
pub mod load;
pub mod plan;
pub mod summary;
pub mod watch;

use std::time::Duration;

use serde::Serialize;

pub use summary::Summary;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("bad endpoint {0:?}: expected host:port or an http(s) URL")]
    BadEndpoint(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("a benchmark client failed: {0}")]
    Client(String),
    #[error("bad tls config: {0}")]
    Tls(String),
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
}

/// How to print the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteOut {
    /// Text for people.
    Simple,
    /// One JSON object.
    Json,
}

/// `localcluster bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Endpoints, comma-separated (host:port or http://host:port)
    #[arg(long, global = true, value_name = "LIST", default_value_t = crate::layout::endpoints())]
    pub endpoints: String,

    /// Concurrent clients (spread over the endpoints round-robin)
    #[arg(long, global = true, value_name = "N", default_value_t = 16)]
    pub clients: usize,

    /// gRPC connections (at least one per endpoint; clients share them)
    #[arg(long, global = true, value_name = "N", default_value_t = 1)]
    pub conns: usize,

    /// Dial and per-request timeout (e.g. 10s, 500ms)
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Output format
    #[arg(short = 'w', long = "write-out", global = true, value_enum, default_value_t = WriteOut::Simple)]
    pub write_out: WriteOut,

    /// Verify https servers with this CA bundle [default: $ETCDCTL_CACERT]
    #[arg(long, global = true, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,

    /// Client certificate for https servers [default: $ETCDCTL_CERT]
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<std::path::PathBuf>,

    /// Key of --cert [default: $ETCDCTL_KEY]
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<std::path::PathBuf>,

    /// Accept any certificate from https servers (no CA needed)
    #[arg(long, global = true)]
    pub insecure_skip_tls_verify: bool,

    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Write keys with Put
    Put(LoadArgs),
    /// Read keys with Range (linearizable unless --consistency s)
    Range(RangeArgs),
    /// Write keys with a Txn holding one Put
    TxnPut(LoadArgs),
    /// Reads and writes mixed by --read-ratio
    Mixed(MixedArgs),
    /// Deliver --total puts to --watchers watchers; events/s and latency
    Watch(WatchArgs),
}

/// How long a load runs, how fast, and on which keys.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Number of requests [default: 10000, or unlimited with --duration]
    #[arg(long, value_name = "N")]
    pub total: Option<u64>,

    /// Run for this long instead of a number of requests (e.g. 30s, 2m)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Requests per second for the whole run [default: as fast as possible]
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,

    /// Key size in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 8)]
    pub key_size: usize,

    /// Value size in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    pub val_size: usize,

    /// Use keys 0, 1, 2, ... (modulo the key space) instead of random keys
    #[arg(long)]
    pub sequential_keys: bool,

    /// Number of distinct keys [default: --total, or 100000 with --duration;
    /// etcd's benchmark defaults to 1]
    #[arg(long, alias = "key-space", value_name = "N")]
    pub key_space_size: Option<u64>,
}

/// Read consistency, as etcd's benchmark names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    /// Linearizable (through the leader's ReadIndex)
    L,
    /// Serializable (the member's local state)
    S,
}

/// `localcluster bench range`.
#[derive(Debug, Clone, clap::Args)]
pub struct RangeArgs {
    #[command(flatten)]
    pub load: LoadArgs,

    /// l: linearizable, s: serializable
    #[arg(long, value_enum, default_value_t = Consistency::L)]
    pub consistency: Consistency,
}

/// `localcluster bench mixed`.
#[derive(Debug, Clone, clap::Args)]
pub struct MixedArgs {
    #[command(flatten)]
    pub load: LoadArgs,

    /// Share of requests that are reads (0 to 1)
    #[arg(long, value_name = "R", default_value_t = 0.9)]
    pub read_ratio: f64,

    /// l: linearizable, s: serializable reads
    #[arg(long, value_enum, default_value_t = Consistency::L)]
    pub consistency: Consistency,
}

/// `localcluster bench watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Number of puts (each is delivered to every watcher)
    #[arg(long, value_name = "N", default_value_t = 2_000)]
    pub total: u64,

    /// Number of watchers, all on the same key prefix
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub watchers: usize,

    /// Watch streams the watchers are spread over (one gRPC connection each)
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub streams: usize,

    /// Key size in bytes (after the run's prefix)
    #[arg(long, value_name = "BYTES", default_value_t = 8)]
    pub key_size: usize,

    /// Value size in bytes (at least 8: the send time travels in it)
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    pub val_size: usize,
}

/// The machine-readable report of a `watch` run.
#[derive(Debug, Clone, Serialize)]
pub struct WatchReport {
    pub benchmark: &'static str,
    pub endpoints: Vec<String>,
    pub writers: usize,
    pub watchers: usize,
    pub streams: usize,
    pub total: u64,
    pub val_size: usize,
    /// Puts per second while writing.
    pub put_rps: f64,
    pub put_errors: u64,
    /// Deliveries: `rps` is events delivered per second, `latency_ms` from the
    /// send of a put to the arrival of its event at a watcher.
    #[serde(flatten)]
    pub summary: Summary,
}

/// `localcluster bench put`.
#[derive(Debug, Clone, clap::Args)]
pub struct PutArgs {
    /// Number of Put requests
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub total: u64,

    /// Key size in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 8)]
    pub key_size: usize,

    /// Value size in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    pub val_size: usize,

    /// Use keys 0, 1, 2, ... (modulo the key space) instead of random keys
    #[arg(long)]
    pub sequential_keys: bool,

    /// Number of distinct keys [default: --total; etcd's benchmark defaults to 1]
    #[arg(long, value_name = "N")]
    pub key_space_size: Option<u64>,
}

/// Accepts `10s`, `500ms`, `2m` or plain seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!("invalid duration {s:?} (expected e.g. 10s, 500ms)")),
    }
}

/// The machine-readable report of a `put`, `range`, `txn-put` or `mixed` run:
/// its settings and its summary.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub benchmark: &'static str,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    pub key_size: usize,
    pub val_size: usize,
    pub sequential_keys: bool,
    pub key_space_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serializable: Option<bool>,
    #[serde(flatten)]
    pub summary: Summary,
}

/// A client TLS configuration for the `https://` ones of `endpoints`, from
/// the TLS flags or, failing them, the variables `etcdctl` reads; `None` when
/// every endpoint is plain. The server is verified against the CA; without
/// one, only `--insecure-skip-tls-verify` lets the run go on (etcd's
/// benchmark would verify against the system's roots).
fn tls_of(
    args: &BenchArgs,
    endpoints: &[String],
) -> Result<Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>, BenchError> {
    if !endpoints.iter().any(|e| e.starts_with("https://")) {
        return Ok(None);
    }
    let given = |flag: &Option<std::path::PathBuf>, var: &str| {
        flag.clone().or_else(|| crate::client::etcdctl_file(var))
    };
    let settings = crate::tls::TlsSettings {
        trusted_ca_file: given(&args.cacert, "ETCDCTL_CACERT"),
        cert_file: given(&args.cert, "ETCDCTL_CERT"),
        key_file: given(&args.key, "ETCDCTL_KEY"),
        auto_tls: args.insecure_skip_tls_verify,
        ..Default::default()
    };
    if settings.trusted_ca_file.is_none() && !settings.auto_tls {
        return Err(BenchError::Tls(
            "https endpoints need --cacert (or ETCDCTL_CACERT), or --insecure-skip-tls-verify"
                .into(),
        ));
    }
    if settings.cert_file.is_some() != settings.key_file.is_some() {
        return Err(BenchError::Tls("--cert and --key go together".into()));
    }
    crate::tls::client_config(&settings)
        .map(Some)
        .map_err(|e| BenchError::Tls(e.to_string()))
}

/// Refuses a zero count given to `--{name}`.
fn positive(name: &str, v: u64) -> Result<(), BenchError> {
    if v == 0 {
        Err(BenchError::Invalid(format!("--{name} must be at least 1")))
    } else {
        Ok(())
    }
}

/// A validated load run.
#[derive(Debug, Clone)]
pub struct LoadRun {
    pub endpoints: Vec<String>,
    /// For the `https://` endpoints.
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    pub plan: plan::Plan,
    pub timeout: Duration,
    pub op: load::Op,
    pub spec: load::LoadSpec,
}

impl LoadRun {
    /// Checks the arguments of a load benchmark (`command` is not `watch`).
    pub fn new(args: &BenchArgs) -> Result<LoadRun, BenchError> {
        let (load, op) = match &args.command {
            BenchCommand::Put(l) => (l, load::Op::Put),
            BenchCommand::TxnPut(l) => (l, load::Op::TxnPut),
            BenchCommand::Range(r) => (
                &r.load,
                load::Op::Range {
                    serializable: r.consistency == Consistency::S,
                },
            ),
            BenchCommand::Mixed(m) => {
                if !(0.0..=1.0).contains(&m.read_ratio) {
                    return Err(BenchError::Invalid(
                        "--read-ratio must be between 0 and 1".into(),
                    ));
                }
                (
                    &m.load,
                    load::Op::Mixed {
                        read_ratio: m.read_ratio,
                        serializable: m.consistency == Consistency::S,
                    },
                )
            }
            BenchCommand::Watch(_) => {
                return Err(BenchError::Invalid("watch is not a load benchmark".into()))
            }
        };
        let endpoints = plan::parse_endpoints(&args.endpoints)?;
        let total = match (load.total, load.duration) {
            (None, None) => Some(10_000),
            (total, _) => total,
        };
        if let Some(t) = total {
            positive("total", t)?;
        }
        if load.duration.is_some_and(|d| d.is_zero()) {
            return Err(BenchError::Invalid("--duration must be positive".into()));
        }
        if let Some(r) = load.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(BenchError::Invalid("--rate must be positive".into()));
            }
        }
        positive("clients", args.clients as u64)?;
        positive("conns", args.conns as u64)?;
        positive("key-size", load.key_size as u64)?;
        let key_space = load.key_space_size.unwrap_or(total.unwrap_or(100_000));
        positive("key-space-size", key_space)?;
        // More clients than requests would only open idle streams.
        let clients = match total {
            Some(t) => args.clients.min(usize::try_from(t).unwrap_or(usize::MAX)),
            None => args.clients,
        };
        let plan = plan::Plan::new(endpoints.len(), args.conns, clients);
        let tls = tls_of(args, &endpoints)?;
        Ok(LoadRun {
            endpoints,
            tls,
            plan,
            timeout: args.timeout,
            op,
            spec: load::LoadSpec {
                total,
                duration: load.duration,
                rate: load.rate,
                key_size: load.key_size,
                val_size: load.val_size,
                sequential: load.sequential_keys,
                key_space,
            },
        })
    }

    /// Runs the benchmark.
    pub async fn run(&self) -> Result<LoadReport, BenchError> {
        let summary = load::run(
            &self.endpoints,
            self.tls.clone(),
            &self.plan,
            self.timeout,
            self.op,
            &self.spec,
        )
        .await?;
        let (read_ratio, serializable) = match self.op {
            load::Op::Range { serializable } => (None, Some(serializable)),
            load::Op::Mixed {
                read_ratio,
                serializable,
            } => (Some(read_ratio), Some(serializable)),
            _ => (None, None),
        };
        Ok(LoadReport {
            benchmark: self.op.name(),
            endpoints: self.endpoints.clone(),
            clients: self.plan.client_conns.len(),
            conns: self.plan.conn_endpoints.len(),
            total: self.spec.total,
            duration_s: self.spec.duration.map(|d| d.as_secs_f64()),
            rate: self.spec.rate,
            key_size: self.spec.key_size,
            val_size: self.spec.val_size,
            sequential_keys: self.spec.sequential,
            key_space_size: self.spec.key_space,
            read_ratio,
            serializable,
            summary,
        })
    }

    /// The one-line description printed before a text report.
    fn describe(&self) -> String {
        let amount = match (self.spec.total, self.spec.duration) {
            (Some(t), None) => format!("{t} requests"),
            (None, Some(d)) => format!("{:.1}s", d.as_secs_f64()),
            (Some(t), Some(d)) => format!("{t} requests or {:.1}s", d.as_secs_f64()),
            (None, None) => String::new(),
        };
        let rate = self
            .spec
            .rate
            .map(|r| format!(" at {r} req/s"))
            .unwrap_or_default();
        let what = match self.op {
            load::Op::Range { serializable } | load::Op::Mixed { serializable, .. } => {
                if serializable {
                    ", serializable reads"
                } else {
                    ", linearizable reads"
                }
            }
            _ => "",
        };
        format!(
            "{}: {amount}{rate}, {} clients, {} connections to {} endpoint(s), {}-byte keys ({}, {} distinct), {}-byte values{what}",
            self.op.name(),
            self.plan.client_conns.len(),
            self.plan.conn_endpoints.len(),
            self.endpoints.len(),
            self.spec.key_size,
            if self.spec.sequential { "sequential" } else { "random" },
            self.spec.key_space,
            self.spec.val_size,
        )
    }
}

/// `localcluster bench ...`: runs the benchmark, prints its report on stdout and
/// returns the exit code (see the module doc).
pub async fn main(args: BenchArgs) -> i32 {
    match run_and_print(&args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("localcluster bench: {e}");
            2
        }
    }
}

/// Runs the benchmark and prints its report; a closed standard output (`|
/// head`) is an error like any other, not a panic.
async fn run_and_print(args: &BenchArgs) -> Result<i32, BenchError> {
    use std::io::{stdout, Write};
    match &args.command {
        BenchCommand::Watch(w) => {
            let endpoints = plan::parse_endpoints(&args.endpoints)?;
            positive("total", w.total)?;
            positive("watchers", w.watchers as u64)?;
            positive("streams", w.streams as u64)?;
            positive("clients", args.clients as u64)?;
            positive("key-size", w.key_size as u64)?;
            let spec = watch::WatchSpec {
                total: w.total,
                watchers: w.watchers,
                streams: w.streams.min(w.watchers),
                writers: args.clients,
                key_size: w.key_size,
                val_size: w.val_size.max(8),
            };
            if args.write_out == WriteOut::Simple {
                writeln!(
                    stdout(),
                    "watch: {} puts from {} writers, each delivered to {} watchers over {} streams on {} endpoint(s), {}-byte values",
                    spec.total, spec.writers, spec.watchers, spec.streams, endpoints.len(), spec.val_size
                )?;
            }
            let tls = tls_of(args, &endpoints)?;
            let out = watch::run(&endpoints, tls, args.timeout, &spec).await?;
            let report = WatchReport {
                benchmark: "watch",
                endpoints,
                writers: spec.writers,
                watchers: spec.watchers,
                streams: spec.streams,
                total: spec.total,
                val_size: spec.val_size,
                put_rps: out.put_rps,
                put_errors: out.put_errors,
                summary: out.deliveries,
            };
            match args.write_out {
                WriteOut::Simple => write!(
                    stdout(),
                    "\nPuts/sec: {:.1} ({} errors)\nDeliveries (events to watchers):\n{}",
                    report.put_rps,
                    report.put_errors,
                    report
                        .summary
                        .to_text()
                        .replace("Requests:     ", "Events:       ")
                        .replace("Requests/sec: ", "Events/sec:   ")
                )?,
                WriteOut::Json => match serde_json::to_string(&report) {
                    Ok(s) => writeln!(stdout(), "{s}")?,
                    Err(e) => {
                        return Err(BenchError::Invalid(format!("cannot encode report: {e}")))
                    }
                },
            }
            Ok(if report.summary.errors == 0 && report.put_errors == 0 {
                0
            } else {
                1
            })
        }
        _ => {
            let run = LoadRun::new(args)?;
            if args.write_out == WriteOut::Simple {
                writeln!(stdout(), "{}", run.describe())?;
            }
            let report = run.run().await?;
            match args.write_out {
                WriteOut::Simple => write!(stdout(), "\n{}", report.summary.to_text())?,
                WriteOut::Json => match serde_json::to_string(&report) {
                    Ok(s) => writeln!(stdout(), "{s}")?,
                    Err(e) => {
                        return Err(BenchError::Invalid(format!("cannot encode report: {e}")))
                    }
                },
            }
            Ok(if report.summary.errors == 0 { 0 } else { 1 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }
    #[derive(clap::Subcommand)]
    enum Top {
        Bench(BenchArgs),
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let mut argv = vec!["localcluster", "bench"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| match c.cmd {
            Top::Bench(b) => b,
        })
    }

    #[test]
    fn https_endpoints_are_verified_against_a_ca_or_explicitly_not_at_all() {
        let run = |extra: &[&str]| {
            let mut args = vec!["--endpoints", "https://127.0.0.1:1,127.0.0.1:2"];
            args.extend_from_slice(extra);
            args.push("put");
            LoadRun::new(&parse(&args).unwrap())
        };
        if std::env::var_os("ETCDCTL_CACERT").is_none() {
            let err = run(&[]).unwrap_err().to_string();
            assert!(err.contains("--insecure-skip-tls-verify"), "{err}");
        }
        // A CA that cannot be read is an error, never an unverified run.
        let err = run(&["--cacert", "/nonexistent/ca.pem"])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bad tls config: "), "{err}");
        assert!(run(&["--insecure-skip-tls-verify"]).unwrap().tls.is_some());
        let plain = parse(&["--endpoints", "127.0.0.1:1", "put"]).unwrap();
        assert!(LoadRun::new(&plain).unwrap().tls.is_none());
    }

    fn put_of(b: &BenchArgs) -> &LoadArgs {
        match &b.command {
            BenchCommand::Put(p) => p,
            other => panic!("not put: {other:?}"),
        }
    }

    #[test]
    fn watch_takes_its_own_flags_and_the_global_ones() {
        let b = parse(&[
            "watch",
            "--watchers",
            "50",
            "--streams",
            "5",
            "--clients",
            "4",
        ])
        .unwrap();
        assert_eq!(b.clients, 4);
        match &b.command {
            BenchCommand::Watch(w) => {
                assert_eq!((w.watchers, w.streams, w.total), (50, 5, 2_000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn put_defaults_match_the_documentation() {
        let b = parse(&["put"]).unwrap();
        assert_eq!(
            b.endpoints,
            "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
        );
        assert_eq!((b.clients, b.conns), (16, 1));
        assert_eq!(b.timeout, Duration::from_secs(10));
        assert_eq!(b.write_out, WriteOut::Simple);
        let p = put_of(&b);
        assert_eq!((p.total, p.key_size, p.val_size), (None, 8, 256));
        assert!(!p.sequential_keys);
        let run = LoadRun::new(&b).unwrap();
        assert_eq!(run.spec.total, Some(10_000));
        assert_eq!(run.spec.key_space, 10_000);
        assert_eq!(run.op, load::Op::Put);
        assert_eq!(run.plan.conn_endpoints.len(), 3);
        assert_eq!(run.plan.client_conns.len(), 16);
    }

    #[test]
    fn global_flags_go_before_or_after_the_operation() {
        let b = parse(&[
            "--endpoints",
            "a:1,b:2",
            "put",
            "--total",
            "200",
            "--clients",
            "4",
            "-w",
            "json",
            "--sequential-keys",
            "--key-size",
            "16",
            "--val-size",
            "1024",
            "--conns",
            "5",
            "--timeout",
            "500ms",
        ])
        .unwrap();
        assert_eq!(b.endpoints, "a:1,b:2");
        assert_eq!((b.clients, b.conns), (4, 5));
        assert_eq!(b.write_out, WriteOut::Json);
        assert_eq!(b.timeout, Duration::from_millis(500));
        let p = put_of(&b);
        assert_eq!((p.total, p.key_size, p.val_size), (Some(200), 16, 1024));
        assert!(p.sequential_keys);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["put", "-w", "yaml"]).is_err());
        assert!(parse(&["put", "--total", "-1"]).is_err());
        assert!(parse(&["put", "--timeout", "soon"]).is_err());
        assert!(parse(&["txn-put", "--duration", "0s"]).is_err());
        for args in [
            &["put", "--total", "0"][..],
            &["put", "--clients", "0"],
            &["put", "--key-size", "0"],
            &["--endpoints", ",", "put"],
            &["range", "--rate", "0"],
            &["mixed", "--read-ratio", "1.5"],
        ] {
            let b = parse(args).unwrap();
            assert!(LoadRun::new(&b).is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn clients_are_capped_at_the_number_of_requests() {
        let b = parse(&["put", "--total", "3", "--clients", "10"]).unwrap();
        let run = LoadRun::new(&b).unwrap();
        assert_eq!(run.plan.client_conns.len(), 3);
    }

    #[test]
    fn each_load_benchmark_names_its_request() {
        let op = |args: &[&str]| LoadRun::new(&parse(args).unwrap()).unwrap().op;
        assert_eq!(
            op(&["range"]),
            load::Op::Range {
                serializable: false
            }
        );
        assert_eq!(
            op(&["range", "--consistency", "s"]),
            load::Op::Range { serializable: true }
        );
        assert_eq!(op(&["txn-put"]), load::Op::TxnPut);
        assert_eq!(
            op(&["mixed", "--read-ratio", "0.5"]),
            load::Op::Mixed {
                read_ratio: 0.5,
                serializable: false
            }
        );
    }

    #[test]
    fn a_timed_run_has_no_request_count_unless_given_one() {
        let b = parse(&["put", "--duration", "30s", "--rate", "500"]).unwrap();
        let run = LoadRun::new(&b).unwrap();
        assert_eq!(run.spec.total, None);
        assert_eq!(run.spec.duration, Some(Duration::from_secs(30)));
        assert_eq!(run.spec.rate, Some(500.0));
        assert_eq!(run.spec.key_space, 100_000);
        assert_eq!(run.plan.client_conns.len(), 16);
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
