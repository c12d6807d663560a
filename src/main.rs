//! The `localcluster` command line.
//!
//! - `localcluster member [etcd flags]`: one etcd-compatible member.
//! - `localcluster start [-f Procfile]`: supervise a Procfile (by default the
//!   3-member cluster), with live hooks.
//! - `localcluster run CMD [NAME]`: drive a running supervisor.
//! - `localcluster procfile`: print the built-in 3-member Procfile.
//! - `localcluster bench put`: a load generator for any etcd endpoints.
//! - `localcluster snapshot save|status|restore`: backup snapshot files
//!   (see [`snapshot_cmd`]).
//! - `localcluster demo failover`: kill the leader under a writing client and time
//!   the failover (see [`demo`]).
//!
//! Invoked through a link named `etcd`, the binary behaves as `localcluster member`,
//! so scripts written for etcd run unchanged.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use localcluster::config::{help_text, ConfigError};
use localcluster::supervisor::{self, DefaultProcfile, RunArgs, StartArgs};
use localcluster::{Member, MemberConfig};

mod demo;
mod snapshot_cmd;

#[derive(Parser)]
#[command(
    name = "localcluster",
    version,
    about = "A real etcd-compatible cluster on one laptop, in a test suite, or across a few machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one etcd-compatible member; takes etcd's flags (`localcluster member --help`)
    #[command(disable_help_flag = true)]
    Member {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ETCD FLAGS"
        )]
        args: Vec<String>,
    },
    /// Run every process of a Procfile (default: ./Procfile, else the built-in 3-member cluster)
    Start(StartArgs),
    /// Drive a running `localcluster start`: list, status, start, stop, restart, kill, pause, resume
    Run(RunArgs),
    /// Print the built-in 3-member Procfile
    Procfile {
        /// Where the members keep their data
        #[arg(long, default_value = ".localcluster")]
        data_dir: String,
    },
    /// Demonstrations on a real local cluster
    #[command(subcommand)]
    Demo(demo::DemoCommand),
    /// Load-test etcd endpoints (localcluster or real etcd): `localcluster bench put --help`
    Bench(localcluster::bench::BenchArgs),
    /// Chaos test of an embedded cluster (or member processes): clients, injected faults, checked histories
    Chaos(localcluster::chaos::ChaosArgs),
    /// Backup snapshots: save one from a member, print a file's status, restore a new cluster's data dir from one
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCommand),
}

/// etcd's flags, when this process is a member: started as `etcd` (all its
/// arguments) or as `localcluster member` (those after `member`). A member
/// goes straight to them, without clap (which passes them through untouched
/// anyway): that spares a long-running member the building of every
/// subcommand's parser, code it would keep mapped for nothing.
fn member_args() -> Option<Vec<String>> {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "etcd")
    {
        return Some(args.collect());
    }
    let mut args = args.peekable();
    args.next_if(|a| a == "member")?;
    Some(args.collect())
}

fn main() -> ExitCode {
    localcluster::disk::quiet_caught_panics();
    if let Some(args) = member_args() {
        return ExitCode::from(member_main(args) as u8);
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Member { args } => member_main(args),
        Command::Start(args) => supervise(|| async {
            let data_dir = args
                .data_dir
                .clone()
                .unwrap_or_else(|| ".localcluster".into());
            let default = DefaultProcfile {
                text: localcluster::layout::procfile(&data_dir),
                banner: format!(
                    "no Procfile found; running the built-in 3-member cluster (data in ./{data_dir}; `localcluster procfile` prints it)"
                ),
            };
            supervisor::start(
                args,
                Some(default),
                Some(std::sync::Arc::new(localcluster::client::StatusProbe)),
            )
            .await
        }),
        Command::Run(args) => supervise(|| supervisor::run_client(args)),
        Command::Demo(command) => supervise(|| demo::run(command)),
        Command::Bench(args) => supervise(|| async { Ok(localcluster::bench::main(args).await) }),
        Command::Snapshot(command) => snapshot_cmd::run(command),
        Command::Chaos(args) => supervise(|| async { Ok(localcluster::chaos::main(args).await) }),
        Command::Procfile { data_dir } => print_stdout(&localcluster::layout::procfile(&data_dir)),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Writes `text` to stdout. A reader that went away first (`| head`, `| true`)
/// is not an error: the output was not wanted. Returns the exit code.
fn print_stdout(text: &str) -> i32 {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("localcluster: cannot write to stdout: {e}");
            1
        }
    }
}

/// `member --version`, led by the line scripts parse, as etcd prints it
/// (`etcd Version: X.Y.Z`), with the etcd version whose API members serve.
fn version_text() -> String {
    // Go's names for the platform.
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "loongarch64" => "loong64",
        other => other,
    };
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    format!(
        "etcd Version: {}\nlocalcluster Version: {}\nGo OS/Arch: {os}/{arch}\n",
        localcluster::apply::CLUSTER_VERSION,
        env!("CARGO_PKG_VERSION"),
    )
}

/// Runs a supervisor entry point on a multi-threaded runtime.
fn supervise<F, Fut>(f: F) -> i32
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i32>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("localcluster: cannot start runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(f()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("localcluster: {}", one_line(&e));
            1
        }
    }
}

/// An error and its causes on one line, `outer: cause: root`, each said
/// once: an error whose message already ends with `: CAUSE` (as many do,
/// from std and other crates) does not print that cause twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line == text || line.ends_with(&format!(": {text}")) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `localcluster member`: parse etcd's flags, run the member until SIGINT/SIGTERM.
fn member_main(args: Vec<String>) -> i32 {
    let env: HashMap<String, String> = std::env::vars().collect();
    let cfg = match MemberConfig::from_args(&args, &env) {
        Ok(cfg) => cfg,
        Err(ConfigError::HelpRequested) => return print_stdout(&format!("{}\n", help_text())),
        Err(ConfigError::VersionRequested) => return print_stdout(&version_text()),
        Err(e) => {
            eprintln!("localcluster member: {e}");
            return e.exit_code();
        }
    };
    if let Err(e) = localcluster::logging::init(&cfg.log_level, cfg.log_format, &cfg.log_outputs) {
        eprintln!("localcluster member: {e}");
        return 1;
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    match run_member(cfg) {
        Ok(()) => 0,
        Err(e) => {
            // The library's errors already name their cause; `{:#}` would repeat it.
            eprintln!("localcluster member: {e}");
            1
        }
    }
}

fn run_member(cfg: MemberConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start runtime: {e}"))?;
    tracing::info!(
        name = %cfg.name,
        data_dir = %cfg.data_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "starting localcluster member"
    );
    // Started outside `block_on`: the member owns a runtime of its own.
    let member = Member::start(&cfg)?;
    rt.block_on(async {
        // systemd (Type=notify): READY=1 once the member serves, as etcd does.
        let notify_socket = std::env::var_os(localcluster::notify::NOTIFY_SOCKET);
        let ready = async {
            if notify_socket.is_none() {
                return std::future::pending().await;
            }
            member.wait_ready().await;
            match localcluster::notify::notify_ready(notify_socket.as_deref()) {
                Ok(true) => tracing::info!("notified systemd of readiness"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot notify systemd of readiness"),
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = ready => {}
            r = wait_for_signal() => {
                r?;
                tracing::info!(name = %cfg.name, "received signal; shutting down");
            }
            _ = member.removed() => {
                tracing::info!(name = %cfg.name, "removed from the cluster; shutting down");
            }
        }
        member.stop().await;
        tracing::info!(name = %cfg.name, "stopped");
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read Procfile: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("timed out waiting for the EOF marker")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("timed out waiting for EOF")]
    struct Bare(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once_and_none_is_lost() {
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let quoting = anyhow::Error::new(Quoting(missing));
        assert_eq!(one_line(&quoting), "cannot read Procfile: no such file");
        // A cause whose text appears earlier, but not at the end, is kept.
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "EOF");
        let outer = anyhow::Error::new(Outer(eof));
        assert_eq!(
            one_line(&outer),
            "timed out waiting for the EOF marker: EOF"
        );
        // Nor is one that only ends the outer message as a word.
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "EOF");
        let bare = anyhow::Error::new(Bare(eof));
        assert_eq!(one_line(&bare), "timed out waiting for EOF: EOF");
    }
}
