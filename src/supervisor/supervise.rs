//! The supervisor loop: the one owner of the process table.
//!
//! A single task ([`Supervisor::run`]) owns every process's state and is the
//! only place that spawns or signals children. It reacts to:
//!
//! * control messages ([`ControlMsg`]) from the control server,
//! * exit events from the per-child tasks ([`super::process::supervise_child`]),
//! * stop deadlines (SIGKILL after the timeout),
//! * SIGINT, SIGTERM or SIGHUP to the supervisor (first: stop everything
//!   gracefully; a second SIGINT or SIGTERM: SIGKILL everything). SIGHUP is
//!   there for a closed terminal or SSH session, as goreman and foreman take
//!   it, and never escalates (a closing terminal may send it twice).
//!
//! Being the only owner, it needs no locks. It never waits on a child or a
//! network peer inline: requests that must wait (stop, restart) get a
//! oneshot receiver that fires when the work is done.
//!
//! Lifecycle: the loop ends when nothing is alive and either shutdown was
//! requested, or no process is being held stopped by a `run stop` (so a
//! Procfile of one-shot commands ends by itself, like goreman, while
//! `run stop-all` keeps the supervisor waiting for `run start-all`).
//! Exit code: the failing process's code with `--exit-on-error`; 0 after a
//! signal; otherwise 0 if every process's last run exited 0, else 1.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::cli::RunCommand;
use super::logmux::LogHandle;
use super::process::{
    build_command, describe_exit, output_reader, signal_group, signal_name, supervise_child,
    ExitEvent, GroupGuard, ProcSpec, Spawner,
};
use super::status::{client_url_of, ProcState, ProcessStatus};

/// Fires when a requested action has completed, or with why it did not (a
/// start waiting for a stop to end, called off by a later stop).
pub type Done = oneshot::Receiver<Result<(), String>>;

/// A request from the control server.
pub enum ControlMsg {
    /// All process names, in Procfile order.
    Names(oneshot::Sender<Vec<String>>),
    /// A snapshot of the table (without cluster details).
    Status(oneshot::Sender<Vec<ProcessStatus>>),
    /// Act on processes (`names` empty for the `-all` commands). The reply is
    /// an error, or receivers that fire when the action completed.
    Act {
        op: RunCommand,
        names: Vec<String>,
        reply: oneshot::Sender<Result<Vec<Done>, String>>,
    },
}

/// Settings of the loop.
pub struct Settings {
    /// SIGTERM-to-SIGKILL grace period.
    pub timeout: Duration,
    /// Stop everything when a process exits non-zero.
    pub exit_on_error: bool,
}

/// Why the supervisor is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    Signal,
    Failure(i32),
}

struct Proc {
    spec: ProcSpec,
    client_url: Option<String>,
    state: ProcState,
    pid: Option<u32>,
    started_at: Option<Instant>,
    starts: u32,
    generation: u64,
    exit_code: Option<i32>,
    exit_signal: Option<String>,
    /// Exit of the last run counts as failure (for the exit code).
    failed: bool,
    /// Stopped on request: keeps the supervisor alive while stopped.
    held: bool,
    /// A stop/kill was requested for the current run.
    stop_requested: bool,
    /// Start again once the current run has exited.
    restart_pending: bool,
    kill_deadline: Option<Instant>,
    /// Stop and kill requests: fire when the current run has exited (with a
    /// restart pending, once the new run has started).
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// Requests (start, restart) that fire once the process has started
    /// again; a later stop or kill calls them off.
    start_waiters: Vec<oneshot::Sender<Result<(), String>>>,
}

/// The supervisor: process table plus what it needs to act.
pub struct Supervisor {
    procs: Vec<Proc>,
    settings: Settings,
    spawner: Spawner,
    guard: Option<GroupGuard>,
    log: LogHandle,
    events_tx: mpsc::UnboundedSender<ExitEvent>,
    events_rx: mpsc::UnboundedReceiver<ExitEvent>,
    children: JoinSet<()>,
    shutdown: Option<Shutdown>,
    forced: bool,
}

impl Supervisor {
    /// A supervisor for `specs` (Procfile order); nothing is started yet.
    pub fn new(
        specs: Vec<ProcSpec>,
        settings: Settings,
        log: LogHandle,
        spawner: Spawner,
        guard: Option<GroupGuard>,
    ) -> Supervisor {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let procs = specs
            .into_iter()
            .map(|spec| Proc {
                client_url: client_url_of(&spec.command),
                spec,
                state: ProcState::Stopped,
                pid: None,
                started_at: None,
                starts: 0,
                generation: 0,
                exit_code: None,
                exit_signal: None,
                failed: false,
                held: false,
                stop_requested: false,
                restart_pending: false,
                kill_deadline: None,
                waiters: Vec::new(),
                start_waiters: Vec::new(),
            })
            .collect();
        Supervisor {
            procs,
            settings,
            spawner,
            guard,
            log,
            events_tx,
            events_rx,
            children: JoinSet::new(),
            shutdown: None,
            forced: false,
        }
    }

    /// Starts the processes at `start` (distinct indexes), then supervises
    /// until the end (see the module doc); returns the exit code. `shutdown`
    /// resolving acts like a first SIGINT (for embedding and tests).
    pub async fn run(
        mut self,
        start: &[usize],
        mut control: mpsc::Receiver<ControlMsg>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> i32 {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigint = signal(SignalKind::interrupt()).ok();
        let mut sigterm = signal(SignalKind::terminate()).ok();
        let mut sighup = signal(SignalKind::hangup()).ok();
        let shutdown = shutdown;
        tokio::pin!(shutdown);
        let mut shutdown_seen = false;
        for &i in start {
            // A failed start with --exit-on-error begins the shutdown:
            // nothing more is started then.
            if self.shutdown.is_some() {
                break;
            }
            if !self.procs[i].state.is_alive() {
                // A failure is logged, and may begin the shutdown.
                let _ = self.spawn(i).await;
            }
        }
        while !self.finished() {
            let deadline = self.next_deadline();
            tokio::select! {
                Some(msg) = control.recv() => self.on_control(msg).await,
                Some(ev) = self.events_rx.recv() => self.on_exit(ev).await,
                () = sleep_until(deadline), if deadline.is_some() => self.on_deadline().await,
                Some(()) = recv_signal(&mut sigint) => self.on_signal(true).await,
                Some(()) = recv_signal(&mut sigterm) => self.on_signal(true).await,
                // A closing terminal may send SIGHUP twice (the shell, then
                // the kernel): it never escalates to SIGKILL.
                Some(()) = recv_signal(&mut sighup) => self.on_signal(false).await,
                () = &mut shutdown, if !shutdown_seen => {
                    shutdown_seen = true;
                    self.on_signal(false).await;
                }
            }
        }
        // Every child has exited and been reported; their tasks are ending.
        while self.children.join_next().await.is_some() {}
        if let Some(guard) = self.guard.take() {
            guard.close().await;
        }
        match self.shutdown {
            Some(Shutdown::Failure(code)) => code,
            Some(Shutdown::Signal) => 0,
            None => i32::from(self.procs.iter().any(|p| p.failed)),
        }
    }

    fn finished(&self) -> bool {
        let alive = self
            .procs
            .iter()
            .any(|p| p.state.is_alive() || p.restart_pending);
        !alive && (self.shutdown.is_some() || !self.procs.iter().any(|p| p.held))
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.procs.iter().filter_map(|p| p.kill_deadline).min()
    }

    async fn spawn(&mut self, i: usize) -> Result<(), String> {
        let p = &mut self.procs[i];
        p.generation += 1;
        p.starts += 1;
        p.held = false;
        p.stop_requested = false;
        p.exit_code = None;
        p.exit_signal = None;
        p.failed = false;
        let prepared =
            build_command(&p.spec).and_then(|(cmd, pipe)| Ok((cmd, output_reader(pipe)?)));
        let spawned = match prepared {
            Ok((cmd, output)) => self.spawner.spawn(cmd).await.map(|c| (c, output)),
            Err(e) => Err(e),
        };
        match spawned {
            Ok((child, output)) => {
                let pid = child.id();
                let p = &mut self.procs[i];
                p.state = ProcState::Running;
                p.pid = pid;
                p.started_at = Some(Instant::now());
                let generation = p.generation;
                let note = match pid {
                    Some(pid) => format!("started with pid {pid}"),
                    None => "started".to_string(),
                };
                self.log.note(i, &note).await;
                let (log, events) = (self.log.clone(), self.events_tx.clone());
                self.children
                    .spawn(supervise_child(child, output, i, generation, log, events));
                self.sync_guard().await;
                Ok(())
            }
            Err(e) => {
                let p = &mut self.procs[i];
                p.state = ProcState::Exited;
                p.failed = true;
                let failure = format!("failed to start: {e}");
                let answer = format!("{}: {failure}", p.spec.name);
                self.log.note(i, &failure).await;
                self.after_failure(i).await;
                Err(answer)
            }
        }
    }

    async fn sync_guard(&mut self) {
        let pgids: Vec<u32> = self
            .procs
            .iter()
            .filter(|p| p.state.is_alive())
            .filter_map(|p| p.pid)
            .collect();
        if let Some(guard) = &mut self.guard {
            guard.update(&pgids).await;
        }
    }

    async fn on_exit(&mut self, ev: ExitEvent) {
        let Some(p) = self.procs.get_mut(ev.proc) else {
            return;
        };
        if ev.generation != p.generation || !p.state.is_alive() {
            return;
        }
        let requested = p.stop_requested;
        p.pid = None;
        p.started_at = None;
        p.kill_deadline = None;
        p.state = if requested {
            ProcState::Stopped
        } else {
            ProcState::Exited
        };
        let message = match &ev.status {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                p.exit_code = status.code();
                p.exit_signal = status.signal().map(signal_name);
                p.failed = !status.success();
                describe_exit(status)
            }
            Err(e) => {
                p.failed = true;
                format!("lost track of the process: {e}")
            }
        };
        let restart = p.restart_pending && self.shutdown.is_none();
        p.restart_pending = false;
        let waiters = std::mem::take(&mut p.waiters);
        let start_waiters = std::mem::take(&mut p.start_waiters);
        let failed = p.failed;
        self.log.note(ev.proc, &message).await;
        if ev.leftovers && !requested {
            let note = "it left processes running in its group; they were killed (SIGKILL)";
            self.log.note(ev.proc, note).await;
        }
        self.sync_guard().await;
        // Only a shutdown ends a pending start without a restart (a stop or
        // kill calls it off at once).
        let started = if restart {
            self.spawn(ev.proc).await
        } else {
            Err(self.called_off(ev.proc, "the shutdown"))
        };
        for w in start_waiters {
            let _ = w.send(started.clone());
        }
        for w in waiters {
            let _ = w.send(Ok(()));
        }
        if !requested && failed {
            self.after_failure(ev.proc).await;
        }
    }

    /// A process failed on its own: with `--exit-on-error`, stop everything.
    async fn after_failure(&mut self, i: usize) {
        if !self.settings.exit_on_error || self.shutdown.is_some() {
            return;
        }
        let p = &self.procs[i];
        let code = match (p.exit_code, &p.exit_signal) {
            (Some(code), _) if code != 0 => code,
            _ => 1,
        };
        self.shutdown = Some(Shutdown::Failure(code));
        self.stop_all_for_shutdown().await;
    }

    async fn on_deadline(&mut self) {
        let now = Instant::now();
        let timeout = self.settings.timeout;
        for i in 0..self.procs.len() {
            let p = &mut self.procs[i];
            if p.kill_deadline.is_some_and(|d| d <= now) {
                p.kill_deadline = None;
                if let (true, Some(pid)) = (p.state.is_alive(), p.pid) {
                    let msg = format!(
                        "still running {}s after SIGTERM; sending SIGKILL",
                        timeout.as_secs_f64()
                    );
                    self.log.note(i, &msg).await;
                    let _ = signal_group(pid, Signal::SIGKILL);
                }
            }
        }
    }

    /// A request to stop everything: the first stops gracefully; a later one
    /// that may `escalate` (a second Ctrl-C or SIGTERM) kills at once.
    async fn on_signal(&mut self, escalate: bool) {
        if self.shutdown.is_none() {
            self.shutdown = Some(Shutdown::Signal);
            self.stop_all_for_shutdown().await;
        } else if escalate && !self.forced {
            self.forced = true;
            for i in 0..self.procs.len() {
                self.kill(i).await;
            }
        }
    }

    async fn stop_all_for_shutdown(&mut self) {
        for i in 0..self.procs.len() {
            self.procs[i].restart_pending = false;
            if self.procs[i].state.is_alive() && !self.procs[i].stop_requested {
                self.terminate(i).await;
            }
        }
    }

    /// SIGTERM (and SIGCONT if paused) to the group; SIGKILL at the deadline.
    async fn terminate(&mut self, i: usize) {
        let timeout = self.settings.timeout;
        let p = &mut self.procs[i];
        let Some(pid) = p.pid else { return };
        let was_paused = p.state == ProcState::Paused;
        p.stop_requested = true;
        p.state = ProcState::Stopping;
        p.kill_deadline = Some(Instant::now() + timeout);
        self.log.note(i, "stopping (SIGTERM)").await;
        let _ = signal_group(pid, Signal::SIGTERM);
        if was_paused {
            let _ = signal_group(pid, Signal::SIGCONT);
        }
    }

    async fn kill(&mut self, i: usize) {
        let p = &mut self.procs[i];
        let Some(pid) = p.pid.filter(|_| p.state.is_alive()) else {
            return;
        };
        p.stop_requested = true;
        p.state = ProcState::Stopping;
        p.kill_deadline = None;
        self.log.note(i, "killing (SIGKILL)").await;
        let _ = signal_group(pid, Signal::SIGKILL);
    }

    async fn on_control(&mut self, msg: ControlMsg) {
        match msg {
            ControlMsg::Names(reply) => {
                let _ = reply.send(self.procs.iter().map(|p| p.spec.name.clone()).collect());
            }
            ControlMsg::Status(reply) => {
                let _ = reply.send(self.snapshot());
            }
            ControlMsg::Act { op, names, reply } => {
                let result = self.act(op, names).await;
                let _ = reply.send(result);
            }
        }
    }

    fn snapshot(&self) -> Vec<ProcessStatus> {
        let now = Instant::now();
        self.procs
            .iter()
            .map(|p| ProcessStatus {
                name: p.spec.name.clone(),
                pid: p.pid,
                state: p.state,
                uptime_secs: p.started_at.map(|t| now.duration_since(t).as_secs()),
                restarts: p.starts.saturating_sub(1),
                exit_code: p.exit_code,
                exit_signal: p.exit_signal.clone(),
                port: p.spec.port,
                client_url: p.client_url.clone(),
                member: None,
            })
            .collect()
    }

    /// Validates the whole request, then acts on every process in it.
    async fn act(&mut self, op: RunCommand, names: Vec<String>) -> Result<Vec<Done>, String> {
        use RunCommand as C;
        if self.shutdown.is_some() {
            return Err("shutting down".to_string());
        }
        let all = matches!(op, C::StartAll | C::StopAll | C::RestartAll);
        let targets: Vec<usize> = if all {
            (0..self.procs.len())
                .filter(|&i| {
                    let s = self.procs[i].state;
                    match op {
                        C::StartAll => !s.is_alive() || s == ProcState::Stopping,
                        C::StopAll => {
                            s.is_alive()
                                && (s != ProcState::Stopping || self.procs[i].restart_pending)
                        }
                        _ => true,
                    }
                })
                .collect()
        } else {
            let mut targets = Vec::new();
            for name in &names {
                let i = self
                    .procs
                    .iter()
                    .position(|p| &p.spec.name == name)
                    .ok_or_else(|| format!("unknown process {name:?}"))?;
                self.check(op, i)?;
                // As goreman: starting what runs, or stopping what is
                // stopped, succeeds and does nothing. What is being stopped
                // is started again once it has exited.
                let state = self.procs[i].state;
                let nothing_to_do = match op {
                    C::Start => state.is_alive() && state != ProcState::Stopping,
                    C::Stop => !state.is_alive(),
                    _ => false,
                };
                if !nothing_to_do && !targets.contains(&i) {
                    targets.push(i);
                }
            }
            targets
        };
        let mut done = Vec::new();
        for i in targets {
            let (tx, rx) = oneshot::channel();
            // A failed start under --exit-on-error begins the shutdown:
            // nothing more is started or signalled by this request then.
            if self.shutdown.is_some() {
                let _ = tx.send(Err(self.called_off(i, "the shutdown")));
                done.push(rx);
                continue;
            }
            match op {
                C::Start | C::StartAll if self.procs[i].state == ProcState::Stopping => {
                    // Answered once it has exited and started again.
                    self.procs[i].start_waiters.push(tx);
                    self.procs[i].restart_pending = true;
                }
                C::Start | C::StartAll => {
                    let _ = tx.send(self.spawn(i).await);
                }
                C::Stop | C::StopAll => {
                    // The latest request wins: a start or restart waiting
                    // for this stop to end is called off.
                    self.call_off_start(i, op);
                    self.procs[i].waiters.push(tx);
                    self.procs[i].held = true;
                    if self.procs[i].state != ProcState::Stopping {
                        self.terminate(i).await;
                    }
                }
                C::Kill => {
                    self.call_off_start(i, op);
                    self.procs[i].waiters.push(tx);
                    self.procs[i].held = true;
                    self.kill(i).await;
                }
                C::Restart | C::RestartAll => {
                    if self.procs[i].state.is_alive() {
                        self.procs[i].start_waiters.push(tx);
                        self.procs[i].restart_pending = true;
                        if self.procs[i].state != ProcState::Stopping {
                            self.terminate(i).await;
                        }
                    } else {
                        let _ = tx.send(self.spawn(i).await);
                    }
                }
                C::Pause => {
                    if let Some(pid) = self.procs[i].pid {
                        signal_group(pid, Signal::SIGSTOP).map_err(|e| e.to_string())?;
                        self.procs[i].state = ProcState::Paused;
                        self.log.note(i, "paused (SIGSTOP)").await;
                    }
                    let _ = tx.send(Ok(()));
                }
                C::Resume => {
                    if let Some(pid) = self.procs[i].pid {
                        signal_group(pid, Signal::SIGCONT).map_err(|e| e.to_string())?;
                        self.procs[i].state = ProcState::Running;
                        self.log.note(i, "resumed (SIGCONT)").await;
                    }
                    let _ = tx.send(Ok(()));
                }
                C::List | C::Status => {
                    let _ = tx.send(Ok(()));
                }
            }
            done.push(rx);
        }
        Ok(done)
    }

    /// A stop or kill (`op`) wins over a start or restart of process `i`
    /// still waiting for its previous run to end: that one is answered, at
    /// once, with an error saying so.
    fn call_off_start(&mut self, i: usize, op: RunCommand) {
        let why = self.called_off(i, &format!("a later {}", super::control::op_name(op)));
        let p = &mut self.procs[i];
        p.restart_pending = false;
        for w in p.start_waiters.drain(..) {
            let _ = w.send(Err(why.clone()));
        }
    }

    /// Why a start of process `i` did not happen: `by` called it off.
    fn called_off(&self, i: usize, by: &str) -> String {
        format!("{}: called off by {by}", self.procs[i].spec.name)
    }

    /// Whether `op` makes sense for process `i` in its current state.
    fn check(&self, op: RunCommand, i: usize) -> Result<(), String> {
        use RunCommand as C;
        let p = &self.procs[i];
        let name = &p.spec.name;
        let state = p.state;
        match op {
            C::Kill | C::Pause if !state.is_alive() => Err(format!("{name} is not running")),
            C::Pause if state != ProcState::Running => Err(format!("{name} is {}", state.as_str())),
            C::Resume if state != ProcState::Paused => Err(format!("{name} is not paused")),
            _ => Ok(()),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn recv_signal(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
