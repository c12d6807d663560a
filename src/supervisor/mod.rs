//! A goreman/foreman-compatible process supervisor: `localcluster start`,
//! `localcluster run ...` and `localcluster procfile`.
//!
//! `start` reads a Procfile ([`procfile`]) and env files ([`envfile`]), runs
//! every command through `sh -c` in its own process group ([`process`]),
//! prints their output as `name | line` ([`logmux`]), and serves a control
//! endpoint on 127.0.0.1 ([`control`]) that `localcluster run` drives: list,
//! status ([`status`], cluster-aware through [`ClusterProbe`]), start, stop,
//! restart, kill, pause, resume. One task owns the process table
//! ([`supervise`]); Ctrl-C, SIGTERM, SIGHUP or the end of the log's reader
//! stops every child (SIGTERM, then SIGKILL after `--timeout`), a second
//! Ctrl-C or SIGTERM kills them at once, and no child outlives the supervisor
//! even when it is SIGKILLed.
//!
//! Ownership: [`start`] owns everything it creates — the log writer thread,
//! the spawner thread, the orphan guard, the control server task and the
//! supervisor loop (which owns one task per child) — and stops them all
//! before it returns. There is no global state.

pub mod cli;
pub mod control;
pub mod envfile;
pub mod logmux;
pub mod process;
pub mod procfile;
pub mod status;
pub mod supervise;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

pub use cli::{RunArgs, StartArgs};
pub use control::run_client;
pub use status::{ClusterProbe, MemberProbe};

use logmux::{Format, LogMux};
use process::{GroupGuard, ProcSpec, Spawner};
use procfile::Procfile;
use supervise::{Settings, Supervisor};

/// The Procfile `start` runs when there is no `./Procfile` and `-f` was not
/// given, with the banner printed as the first line of output.
#[derive(Debug, Clone)]
pub struct DefaultProcfile {
    /// Procfile text.
    pub text: String,
    /// First line printed, e.g. "no Procfile found; running the built-in
    /// 3-member cluster (data in ./.localcluster)".
    pub banner: String,
}

/// Why `start` could not begin supervising.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Procfile could not be read.
    #[error("cannot read {path}: {source}")]
    ReadProcfile {
        /// As given.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No Procfile and no built-in default.
    #[error("no Procfile found in {0} (use -f FILE)")]
    NoProcfile(String),
    /// The Procfile is malformed.
    #[error(transparent)]
    Procfile(#[from] procfile::ParseError),
    /// An env file is malformed or missing.
    #[error(transparent)]
    EnvFile(#[from] envfile::EnvFileError),
    /// A process named on the command line is not in the Procfile.
    #[error("unknown process {0:?} (not in the Procfile)")]
    UnknownProcess(String),
    /// The base port leaves no room for every process.
    #[error("base port {0} is too high for {1} processes (PORT goes up by 100 per process)")]
    PortOverflow(u16, usize),
    /// The control endpoint could not be bound.
    #[error(transparent)]
    Bind(#[from] control::BindError),
    /// Threads or the orphan guard could not be started.
    #[error("cannot start the supervisor: {0}")]
    Io(#[from] std::io::Error),
}

/// A Procfile ready to run.
#[derive(Debug)]
struct Loaded {
    procfile: Procfile,
    /// Where `.env` is looked for.
    dir: PathBuf,
    banner: Option<String>,
}

/// Picks and parses the Procfile: `-f FILE`, else `cwd/Procfile`, else the
/// built-in default (with its banner).
fn load_procfile(
    explicit: Option<&Path>,
    default: Option<DefaultProcfile>,
    cwd: &Path,
) -> Result<Loaded, StartError> {
    let read = |path: &Path, shown: String| -> Result<Loaded, StartError> {
        let text =
            std::fs::read_to_string(cwd.join(path)).map_err(|source| StartError::ReadProcfile {
                path: shown.clone(),
                source,
            })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => cwd.join(p),
            _ => cwd.to_path_buf(),
        };
        Ok(Loaded {
            procfile: Procfile::parse(&text, &shown)?,
            dir,
            banner: None,
        })
    };
    if let Some(path) = explicit {
        return read(path, path.display().to_string());
    }
    let path = cwd.join("Procfile");
    if path.exists() {
        return read(&path, "Procfile".to_string());
    }
    match default {
        Some(d) => Ok(Loaded {
            procfile: Procfile::parse(&d.text, "<built-in Procfile>")?,
            dir: cwd.to_path_buf(),
            banner: Some(d.banner),
        }),
        None => Err(StartError::NoProcfile(cwd.display().to_string())),
    }
}

/// Builds the specs of every process, in Procfile order.
fn specs(loaded: &Loaded, args: &StartArgs) -> Result<Vec<ProcSpec>, StartError> {
    let files = envfile::env_files_to_load(&args.env_files, &loaded.dir);
    let vars = envfile::load(&files)?;
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let base_path = vars
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.into())
        .or_else(|| std::env::var_os("PATH"));
    let path = envfile::child_path(exe_dir.as_deref(), base_path);
    let env = Arc::new(vars);
    let entries = &loaded.procfile.entries;
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let port = Procfile::port_of(args.base_port, i)
                .ok_or(StartError::PortOverflow(args.base_port, entries.len()))?;
            Ok(ProcSpec {
                name: e.name.clone(),
                command: e.command.clone(),
                port,
                env: Arc::clone(&env),
                path: path.clone(),
            })
        })
        .collect()
}

/// Indices of the processes to start: those named, or all.
fn selection(procfile: &Procfile, names: &[String]) -> Result<Vec<usize>, StartError> {
    if names.is_empty() {
        return Ok((0..procfile.entries.len()).collect());
    }
    // A name given twice starts once, as in goreman; first mention first.
    let mut selected = Vec::new();
    for n in names {
        let i = procfile
            .entries
            .iter()
            .position(|e| &e.name == n)
            .ok_or_else(|| StartError::UnknownProcess(n.clone()))?;
        if !selected.contains(&i) {
            selected.push(i);
        }
    }
    Ok(selected)
}

/// Aborts a task if its owner is dropped before it finished.
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    /// Waits for the task to end.
    async fn join(mut self) {
        if let Some(handle) = self.0.as_mut() {
            let _ = handle.await;
        }
        self.0 = None;
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// `localcluster start`: supervise the Procfile until it is done or
/// interrupted; returns the process exit code (see [`supervise`]).
pub async fn start(
    args: StartArgs,
    default_procfile: Option<DefaultProcfile>,
    probe: Option<Arc<dyn ClusterProbe>>,
) -> anyhow::Result<i32> {
    let no_color = std::env::var("NO_COLOR").ok();
    let color = logmux::decide_color(
        args.color,
        std::io::stdout().is_terminal(),
        no_color.as_deref(),
    );
    let output = Output {
        out: Box::new(std::io::stdout()),
        color,
    };
    let never = std::future::pending();
    let code = start_with(args, default_procfile, probe, output, never).await?;
    Ok(code)
}

/// Where the multiplexed log goes.
pub struct Output {
    /// The writer (stdout for `start`).
    pub out: Box<dyn Write + Send>,
    /// Whether to colour the prefixes.
    pub color: bool,
}

/// [`start`] for embedding: the log goes to `output`, and `shutdown`
/// resolving stops everything like a first Ctrl-C would.
pub async fn start_with(
    args: StartArgs,
    default_procfile: Option<DefaultProcfile>,
    probe: Option<Arc<dyn ClusterProbe>>,
    output: Output,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<i32, StartError> {
    let cwd = std::env::current_dir()?;
    let loaded = load_procfile(args.procfile.as_deref(), default_procfile, &cwd)?;
    let selected = selection(&loaded.procfile, &args.processes)?;
    let specs = specs(&loaded, &args)?;
    let listener = control::bind(args.port).await?;

    let format = Format {
        names: specs.iter().map(|s| s.name.clone()).collect(),
        color: output.color,
        timestamps: args.timestamps,
    };
    let mux = LogMux::new(output.out, format)?;
    let log = mux.handle();
    if let Some(banner) = &loaded.banner {
        log.plain(banner).await;
    }
    let spawner = Spawner::new()?;
    let guard = GroupGuard::start()?;
    let (control_tx, control_rx) = mpsc::channel(64);
    let (stop_server, server_stopped) = watch::channel(false);
    let server = AbortOnDrop(Some(tokio::spawn(control::serve(
        listener,
        control_tx,
        probe,
        server_stopped,
    ))));
    let settings = Settings {
        timeout: args.timeout,
        exit_on_error: args.exit_on_error,
    };
    let supervisor = Supervisor::new(specs, settings, log, spawner, Some(guard));
    // The log's reader going away (`start | head`) stops everything too,
    // as in foreman: nobody would see the processes' output any more.
    let output_closed = mux.output_closed();
    let shutdown = async {
        tokio::select! {
            () = shutdown => {}
            () = output_closed => {}
        }
    };
    let code = supervisor.run(&selected, control_rx, shutdown).await;

    let _ = stop_server.send(true);
    server.join().await;
    mux.shutdown().await;
    Ok(code)
}

/// `localcluster procfile`: prints the built-in Procfile.
pub fn print_default_procfile(
    default: &DefaultProcfile,
    out: &mut impl Write,
) -> std::io::Result<()> {
    out.write_all(default.text.as_bytes())?;
    if !default.text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default() -> DefaultProcfile {
        DefaultProcfile {
            text: "m1: sleep 1\n".into(),
            banner: "no Procfile found; running the built-in".into(),
        }
    }

    #[test]
    fn procfile_in_cwd_wins_over_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Procfile"), "a: echo a\n").unwrap();
        let l = load_procfile(None, Some(default()), dir.path()).unwrap();
        assert_eq!(l.procfile.entries[0].name, "a");
        assert!(l.banner.is_none());
    }

    #[test]
    fn default_is_used_with_its_banner_when_no_procfile() {
        let dir = tempfile::tempdir().unwrap();
        let l = load_procfile(None, Some(default()), dir.path()).unwrap();
        assert_eq!(l.procfile.entries[0].name, "m1");
        assert_eq!(
            l.banner.as_deref(),
            Some("no Procfile found; running the built-in")
        );
        let e = load_procfile(None, None, dir.path()).unwrap_err();
        assert!(matches!(e, StartError::NoProcfile(_)));
    }

    #[test]
    fn explicit_procfile_must_exist_and_env_dir_is_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_procfile(
            Some(Path::new("nope/Procfile")),
            Some(default()),
            dir.path(),
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .starts_with("cannot read nope/Procfile"));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/P"), "x: true\n").unwrap();
        let l = load_procfile(Some(Path::new("sub/P")), None, dir.path()).unwrap();
        assert_eq!(l.dir, dir.path().join("sub"));
    }

    #[test]
    fn selection_refuses_unknown_names() {
        let pf = Procfile::parse("a: x\nb: y\n", "P").unwrap();
        assert_eq!(selection(&pf, &[]).unwrap(), vec![0, 1]);
        assert_eq!(selection(&pf, &["b".into()]).unwrap(), vec![1]);
        assert!(selection(&pf, &["c".into()]).is_err());
        let twice = ["b".into(), "a".into(), "b".into()];
        assert_eq!(selection(&pf, &twice).unwrap(), vec![1, 0]);
    }

    /// Member id = the URL's port; everybody says member 2 leads.
    struct FakeProbe;
    impl ClusterProbe for FakeProbe {
        fn probe(&self, url: String) -> futures::future::BoxFuture<'static, Option<MemberProbe>> {
            Box::pin(async move {
                let id: u64 = url.rsplit(':').next()?.parse().ok()?;
                Some(MemberProbe {
                    member_id: id,
                    leader_id: 2,
                    raft_term: 4,
                    raft_index: 100 + id,
                })
            })
        }
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    async fn ask(port: u16, op: cli::RunCommand, names: &[&str]) -> control::Response {
        let req = control::Request {
            op,
            names: names.iter().map(|n| n.to_string()).collect(),
        };
        control::request(port, &req).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leader_target_and_cluster_columns_use_the_probe() {
        use cli::RunCommand as C;
        let dir = tempfile::tempdir().unwrap();
        let procfile = dir.path().join("Procfile");
        let mut text = String::new();
        for i in 1..=3 {
            text.push_str(&format!(
                "m{i}: sh -c 'sleep 30' x --advertise-client-urls http://127.0.0.1:{i},http://127.0.0.1:9\n"
            ));
        }
        text.push_str("plain: sleep 30\n");
        std::fs::write(&procfile, text).unwrap();
        let port = free_port();
        let args = StartArgs {
            procfile: Some(procfile),
            env_files: vec![],
            base_port: 5000,
            port,
            timeout: std::time::Duration::from_secs(2),
            timestamps: false,
            exit_on_error: false,
            color: cli::ColorChoice::Never,
            data_dir: None,
            processes: vec![],
        };
        let buf = logmux::SharedBuf::default();
        let output = Output {
            out: Box::new(buf.clone()),
            color: false,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let probe: Arc<dyn ClusterProbe> = Arc::new(FakeProbe);
        let sup = tokio::spawn(start_with(args, None, Some(probe), output, async move {
            let _ = stopped.await;
        }));
        let mut tries = 0;
        while control::request(
            port,
            &control::Request {
                op: C::List,
                names: vec![],
            },
        )
        .await
        .is_err()
        {
            tries += 1;
            assert!(tries < 100, "control endpoint never came up");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        let status = ask(port, C::Status, &[]).await;
        assert_eq!(status.cluster, Some(true));
        let rows = status.status.unwrap();
        let roles: Vec<_> = rows
            .iter()
            .map(|r| r.member.as_ref().map(|m| (m.role.as_str(), m.raft_index)))
            .collect();
        assert_eq!(
            roles,
            vec![
                Some(("follower", 101)),
                Some(("leader", 102)),
                Some(("follower", 103)),
                None
            ]
        );
        let table = status::render_table(&rows, true);
        let m2: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(m2[6..], ["leader", "4", "102"], "{table}");

        let r = ask(port, C::Stop, &["leader"]).await;
        assert!(r.ok, "{r:?}");
        let rows = ask(port, C::Status, &[]).await.status.unwrap();
        assert_eq!(rows[1].state, status::ProcState::Stopped);
        assert_eq!(rows[0].state, status::ProcState::Running);

        let r = ask(port, C::Stop, &["leader"]).await;
        assert_eq!(r.error.as_deref(), Some("no leader found"));

        stop.send(()).unwrap();
        let code = sup.await.unwrap().unwrap();
        assert_eq!(code, 0);
        assert!(
            buf.text().contains("m2    | stopping (SIGTERM)"),
            "{}",
            buf.text()
        );
    }
}
