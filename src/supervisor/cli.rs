//! Command-line arguments of `localcluster start` and `localcluster run`.
//!
//! These are clap `Args` structs; the binary's own `Parser` embeds them in its
//! subcommands and hands them to [`super::start`] and [`super::run_client`].
//! Flags follow goreman where it has one (`-f`, `-e`, `-b`, `-p`, `-t`,
//! `--exit-on-error`).

use std::path::PathBuf;
use std::time::Duration;

/// goreman's default control port.
pub const DEFAULT_CONTROL_PORT: u16 = 8555;

/// When to colour the log prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// When stdout is a terminal and `NO_COLOR` is not set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `localcluster start`: run every process of a Procfile and supervise them.
#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// Procfile to run [default: ./Procfile, or the built-in cluster when absent]
    #[arg(short = 'f', long = "procfile", value_name = "FILE")]
    pub procfile: Option<PathBuf>,

    /// Env files for the processes (repeatable or comma-separated) [default: .env beside the Procfile]
    #[arg(short = 'e', long = "env", value_name = "FILE", value_delimiter = ',')]
    pub env_files: Vec<PathBuf>,

    /// Base of the PORT given to each process (plus 100 per process, in Procfile order)
    #[arg(
        short = 'b',
        long = "base-port",
        value_name = "PORT",
        default_value_t = 5000
    )]
    pub base_port: u16,

    /// Control port that `localcluster run` talks to: bound on 127.0.0.1 only
    /// (no authentication; connections from other addresses are refused)
    #[arg(short = 'p', long = "port", value_name = "PORT", env = "LOCALCLUSTER_PORT",
          default_value_t = DEFAULT_CONTROL_PORT)]
    pub port: u16,

    /// Seconds to wait after SIGTERM before sending SIGKILL
    #[arg(long = "timeout", value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,

    /// Print HH:MM:SS before each line
    #[arg(short = 't', long = "timestamps")]
    pub timestamps: bool,

    /// Stop everything (and exit non-zero) when a process exits non-zero
    #[arg(long = "exit-on-error")]
    pub exit_on_error: bool,

    /// Colour the log prefixes
    #[arg(long = "color", value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Data dir of the built-in cluster (used only when no Procfile is found)
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dir: Option<String>,

    /// Processes to start [default: all]; the others can be started later with `run start`
    #[arg(value_name = "PROCESS")]
    pub processes: Vec<String>,
}

/// What `localcluster run` asks the supervisor to do (also the `op` of a
/// control request, see [`super::control`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum RunCommand {
    /// Print the process names, one per line.
    List,
    /// Print a status table (or JSON with `-w json`).
    Status,
    /// Start stopped or exited processes (one that runs is left as it is).
    Start,
    /// Stop processes: SIGTERM, then SIGKILL after the timeout (one that is
    /// stopped is left as it is).
    Stop,
    /// Stop, then start again with the same command.
    Restart,
    /// Send SIGKILL at once.
    Kill,
    /// Send SIGSTOP to the process group.
    Pause,
    /// Send SIGCONT to the process group.
    Resume,
    /// Start every process that is not running.
    StartAll,
    /// Stop every running process.
    StopAll,
    /// Restart every process.
    RestartAll,
}

impl RunCommand {
    /// Whether the command takes process names (the `-all` ones and the
    /// read-only ones do not).
    pub fn takes_names(self) -> bool {
        matches!(
            self,
            RunCommand::Start
                | RunCommand::Stop
                | RunCommand::Restart
                | RunCommand::Kill
                | RunCommand::Pause
                | RunCommand::Resume
        )
    }
}

/// Output format of `run status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// JSON for programs.
    Json,
}

/// `localcluster run COMMAND [PROCESS...]`: drive a running supervisor.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Control port of the supervisor (on 127.0.0.1)
    #[arg(short = 'p', long = "port", value_name = "PORT", env = "LOCALCLUSTER_PORT",
          default_value_t = DEFAULT_CONTROL_PORT)]
    pub port: u16,

    /// Output format of `status`
    #[arg(short = 'w', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// What to do
    #[arg(value_enum)]
    pub command: RunCommand,

    /// Processes to act on; `leader` names the current Raft leader
    #[arg(value_name = "PROCESS")]
    pub processes: Vec<String>,
}

/// Parses a duration in seconds (`10`, `2.5`, or with an `s` suffix).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let n = s.strip_suffix('s').unwrap_or(s);
    let secs: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid duration"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        Start(StartArgs),
        Run(RunArgs),
    }

    #[test]
    fn start_flags_parse_like_goreman() {
        let cli = Cli::try_parse_from([
            "lc",
            "start",
            "-f",
            "P",
            "-e",
            "a.env,b.env",
            "-e",
            "c.env",
            "-b",
            "6000",
            "-p",
            "9000",
            "--timeout",
            "2",
            "-t",
            "--exit-on-error",
            "m1",
        ])
        .unwrap();
        let Cmd::Start(a) = cli.cmd else { panic!() };
        assert_eq!(a.procfile, Some(PathBuf::from("P")));
        assert_eq!(a.env_files.len(), 3);
        assert_eq!((a.base_port, a.port), (6000, 9000));
        assert_eq!(a.timeout, Duration::from_secs(2));
        assert!(a.timestamps && a.exit_on_error);
        assert_eq!(a.processes, vec!["m1".to_string()]);
    }

    #[test]
    fn run_accepts_options_after_the_command() {
        let cli = Cli::try_parse_from(["lc", "run", "status", "-w", "json", "-p", "1234"]).unwrap();
        let Cmd::Run(a) = cli.cmd else { panic!() };
        assert_eq!(a.command, RunCommand::Status);
        assert_eq!(a.output, OutputFormat::Json);
        assert_eq!(a.port, 1234);
        let cli = Cli::try_parse_from(["lc", "run", "stop-all"]).unwrap();
        let Cmd::Run(a) = cli.cmd else { panic!() };
        assert_eq!(a.command, RunCommand::StopAll);
    }

    #[test]
    fn seconds_accept_fractions_and_suffix() {
        assert_eq!(parse_seconds("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_seconds("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("x").is_err());
    }
}
