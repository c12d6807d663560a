//! Shared harness for the tests that run `localcluster member` as real processes
//! and drive them with the real `etcdctl`.
//!
//! A [`Cluster`] starts N members with etcd-style flags on free 127.0.0.1 ports,
//! each with its data dir and log file in one temporary directory. A member is
//! ready when its log (stderr, kept across restarts) shows etcd's milestone
//! `ready to serve client requests` after its latest start. The leader is found
//! through the Status RPC. [`Member`] kills (SIGKILL), stops (SIGTERM) and
//! restarts a member with the same flags. Every child is killed when its
//! [`Member`] is dropped, and when a test fails the members' logs are printed.
//!
//! `etcdctl` (3.4, `ETCDCTL_API=3`) runs with `--endpoints` set to the running
//! members; a test that needs it calls [`skip_without_etcdctl`] first: without
//! `etcdctl` that fails under `CI=true` and otherwise skips loudly.

#![allow(dead_code)]

pub mod background;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use localcluster::pb::etcdserverpb::StatusResponse;

pub const BIN: &str = env!("CARGO_BIN_EXE_localcluster");

/// The milestone etcd logs once a member serves clients.
pub const READY: &str = "ready to serve client requests";

/// Timings for tests that are not about timing: fast elections, still robust
/// on a loaded 2-core machine.
pub const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

/// How long a member may take to become ready, or a cluster to elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(40);

/// What a member logs when another program holds its port.
const PORT_TAKEN: &str = "Address already in use";

/// A free TCP port on 127.0.0.1 (bound and released; the member binds it next).
///
/// Taken below the kernel's ephemeral range, so that no outgoing connection
/// (a client, a peer stream, `etcdctl`) can be given it before the member
/// binds it, and never twice in one test process: each process walks the
/// range from a random start, skipping ports in use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    const LOW: u32 = 15000;
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low().max(LOW + 1000);
    let span = high - LOW;
    let start = *START.get_or_init(|| rand::random::<u32>() % span);
    for _ in 0..span {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The first port of the kernel's ephemeral range (32768 if unknown).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Process state letter from /proc/PID/stat, None if gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.chars().next()
}

/// Waits up to `secs` for `pid` to be in `state` (a signal takes effect
/// asynchronously: a sleeper that gets SIGCONT runs for a moment before it
/// sleeps again). Returns the last state seen.
pub fn wait_state(pid: i32, state: char, secs: u64) -> Option<char> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let now = proc_state(pid);
        if now == Some(state) || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` runs (a zombie does not count).
pub fn alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Waits up to `secs` for `pid` to be gone.
pub fn wait_dead(pid: i32, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Retries `op` while it fails with a transient error (`Unavailable`: no
/// leader, leader changed, request timed out), as etcd clients do: on a
/// loaded machine a heartbeat can come late and an election start.
pub async fn retry<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

/// Runs a future to completion on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Whether the test must stop here for lack of `etcdctl`: panics when it is
/// missing under `CI=true`, else prints a loud skip notice and returns true.
pub fn skip_without_etcdctl() -> bool {
    let found = Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if found {
        return false;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("etcdctl is required under CI=true but is not installed");
    }
    // Straight to the file descriptor: the test harness captures eprintln!
    // of passing tests, and this must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: etcdctl not installed (install etcd-client; under CI=true this fails) ***\n"
    );
    true
}

/// What one command printed, and how it ended.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(self.success(), "command failed: {self:#?}");
        &self.stdout
    }

    /// Asserts failure and returns stderr.
    #[track_caller]
    pub fn err(&self) -> &str {
        assert!(!self.success(), "command unexpectedly succeeded: {self:#?}");
        &self.stderr
    }

    /// The lines of stdout.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// stdout parsed as JSON (`-w json`).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.stdout))
    }
}

/// Runs `cmd` to its end (killing it after `timeout`), feeding it `input`.
pub fn run(mut cmd: Command, input: Option<&str>, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        code: status.code(),
    }
}

/// `etcdctl ARGS` against `endpoints` (comma-separated `host:port`).
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_with_input(endpoints, args, None)
}

/// `etcdctl ARGS` against `endpoints`, with `input` on stdin.
pub fn etcdctl_with_input(endpoints: &str, args: &[&str], input: Option<&str>) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .arg(format!("--endpoints={endpoints}"))
        .args(args);
    run(cmd, input, Duration::from_secs(60))
}

/// Runs `localcluster member ARGS` to its end (for configurations that must be
/// refused); kills it after `timeout`.
pub fn member_once(dir: &Path, args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .arg("member")
        .args(args);
    run(cmd, None, timeout)
}

/// One `localcluster member` process, restartable with the same flags.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    /// The flags after `member`.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// stdout and stderr of every start, appended.
    pub log: PathBuf,
    cwd: PathBuf,
    child: Option<Child>,
    /// How the last process ended, if it ended by itself (not by the test).
    exited: Option<ExitStatus>,
    /// Log length when the current process started.
    log_start: u64,
}

impl Member {
    /// A member described by `args`, not started; its log goes to `<dir>/<name>.log`.
    pub fn new(
        dir: &Path,
        name: &str,
        client_port: u16,
        peer_port: u16,
        args: Vec<String>,
    ) -> Self {
        Member {
            name: name.to_string(),
            client_port,
            peer_port,
            data_dir: dir.join(name),
            args,
            env: Vec::new(),
            log: dir.join(format!("{name}.log")),
            cwd: dir.to_path_buf(),
            child: None,
            exited: None,
            log_start: 0,
        }
    }

    /// `127.0.0.1:PORT`, as etcdctl's `--endpoints` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Starts the process (it must not be running).
    pub fn spawn(&mut self) {
        assert!(!self.is_running(), "{} is already running", self.name);
        self.exited = None;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.log_start = log.metadata().unwrap().len();
        let child = Command::new(BIN)
            .current_dir(&self.cwd)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("member")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Whether the process is running (reaps it if it ended).
    pub fn is_running(&mut self) -> bool {
        let Some(c) = &mut self.child else {
            return false;
        };
        match c.try_wait().unwrap() {
            None => true,
            Some(status) => {
                self.exited = Some(status);
                self.child = None;
                false
            }
        }
    }

    /// "running", "exited: <status>" or "stopped by the test", for failure messages.
    pub fn state(&mut self) -> String {
        if self.is_running() {
            "running".into()
        } else if let Some(status) = self.exited {
            format!("exited by itself: {status}")
        } else {
            "stopped by the test".into()
        }
    }

    /// How the last process ended, if it ended by itself (reaps it first).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.exited
    }

    /// The whole log, over every start.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The log of the current (or last) start.
    pub fn current_log(&self) -> String {
        let mut f = match File::open(&self.log) {
            Ok(f) => f,
            Err(_) => return String::new(),
        };
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        let start = (self.log_start as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Waits until the current start logged [`READY`]; panics if the process
    /// ends first or takes too long.
    #[track_caller]
    pub fn wait_ready(&mut self) {
        if let Err(e) = self.try_wait_ready() {
            panic!("{e}");
        }
    }

    /// Like [`Member::wait_ready`], but returns why the member is not ready.
    pub fn try_wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.current_log();
            if log.contains(READY) {
                return Ok(());
            }
            if !self.is_running() {
                let state = self.state();
                return Err(format!(
                    "{} {state} before it was ready; its log:\n{log}",
                    self.name
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not ready after {START_TIMEOUT:?}; its log:\n{log}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM, without waiting.
    pub fn sigterm(&self) {
        let c = self.child.as_ref().expect("member not running");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }

    /// SIGTERM, then wait for the exit (SIGKILL after 20 s).
    pub fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        let mut c = self.child.take().expect("member not running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("{} ignored SIGTERM for 20 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit by itself (SIGKILL after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("member not running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{} still running after {timeout:?}; its log:\n{}",
                    self.name,
                    self.current_log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its Status, or `None` if it does not answer.
    pub fn status(&self) -> Option<StatusResponse> {
        block_on(localcluster::client::status(
            &self.endpoint(),
            Duration::from_secs(2),
        ))
    }

    /// Its member ID as reported by Status (waits for an answer).
    #[track_caller]
    pub fn id(&self) -> u64 {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(s) = self.status() {
                return s.header.unwrap().member_id;
            }
            assert!(
                Instant::now() < deadline,
                "{} never answered Status",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = self.state();
            eprintln!("{} was {state}", self.name);
        }
        self.kill9();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "----- last lines of {} ({}) -----",
                self.name,
                self.log.display()
            );
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// N members started together as one new cluster.
pub struct Cluster {
    pub members: Vec<Member>,
    pub token: String,
    // Dropped after the members (fields drop in order), so logs can be printed.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` members `m0..` with [`FAST`] timings followed by `extra`
    /// flags (a repeated flag's last value wins), and waits until every
    /// member is ready and a leader is known.
    ///
    /// A port is picked free but bound only by the member, a moment later; if
    /// another program takes it in between, the member cannot listen. The
    /// cluster is then started again, on other ports, a few times at most.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        const ATTEMPTS: usize = 3;
        for attempt in 1.. {
            let mut c = Cluster::new(n, extra);
            c.spawn_stopped();
            let waited = c.members.iter_mut().try_for_each(Member::try_wait_ready);
            // The member that lost its port may not be the one that failed
            // first (another can wait in vain for its quorum).
            let lost_port = c
                .members
                .iter()
                .find(|m| m.current_log().contains(PORT_TAKEN))
                .map(|m| m.name.clone());
            match (waited, lost_port) {
                (Ok(()), _) => {
                    c.wait_leader();
                    return c;
                }
                (Err(e), Some(name)) if attempt < ATTEMPTS => eprintln!(
                    "{e}\n({name} lost a port between its pick and its bind; \
                     starting the cluster again on other ports)"
                ),
                (Err(e), _) => panic!("{e}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Like [`Cluster::start`] but does not start anything.
    pub fn new(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let token = format!("itest-{}-{}", std::process::id(), free_port());
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, &(cp, pp))| {
                let name = format!("m{i}");
                let client = format!("http://127.0.0.1:{cp}");
                let peer = format!("http://127.0.0.1:{pp}");
                let data_dir = dir.path().join(&name);
                let mut args: Vec<String> = [
                    "--name",
                    &name,
                    "--data-dir",
                    data_dir.to_str().unwrap(),
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-token",
                    &token,
                    "--initial-cluster-state",
                    "new",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.extend(FAST.iter().map(|s| s.to_string()));
                args.extend(extra.iter().map(|s| s.to_string()));
                Member::new(dir.path(), &name, cp, pp, args)
            })
            .collect();
        Cluster {
            members,
            token,
            dir,
        }
    }

    /// Starts every member that is not running, then waits for all to be ready.
    pub fn start_all(&mut self) {
        self.spawn_stopped();
        for m in &mut self.members {
            m.wait_ready();
        }
        self.wait_leader();
    }

    /// Spawns every member that is not running, without waiting.
    fn spawn_stopped(&mut self) {
        for m in &mut self.members {
            if !m.is_running() {
                m.spawn();
            }
        }
    }

    /// Restarts member `i` with its flags and waits until it is ready.
    pub fn restart(&mut self, i: usize) {
        self.members[i].spawn();
        self.members[i].wait_ready();
    }

    /// Comma-separated endpoints of the running members.
    pub fn endpoints(&mut self) -> String {
        self.members
            .iter_mut()
            .filter_map(|m| m.is_running().then(|| m.endpoint()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl ARGS` against every running member.
    pub fn etcdctl(&mut self, args: &[&str]) -> Output {
        let endpoints = self.endpoints();
        etcdctl(&endpoints, args)
    }

    /// `etcdctl ARGS` against member `i` only.
    pub fn etcdctl_at(&self, i: usize, args: &[&str]) -> Output {
        etcdctl(&self.members[i].endpoint(), args)
    }

    /// `etcdctl ARGS` against every running member, with `input` on stdin.
    pub fn etcdctl_input(&mut self, args: &[&str], input: &str) -> Output {
        let endpoints = self.endpoints();
        etcdctl_with_input(&endpoints, args, Some(input))
    }

    /// Waits until every running member reports the same leader, itself one of
    /// the running members; returns its index.
    #[track_caller]
    pub fn wait_leader(&mut self) -> usize {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(i) = self.agreed_leader() {
                return i;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self
                    .members
                    .iter_mut()
                    .map(|m| {
                        let leader = m.status().map(|s| format!("{:x}", s.leader));
                        let state = m.state();
                        format!("{} ({state}): leader {leader:?}", m.name)
                    })
                    .collect();
                panic!("no agreed leader after {START_TIMEOUT:?}: {seen:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn agreed_leader(&mut self) -> Option<usize> {
        let mut leader = None;
        let mut ids = Vec::new();
        for m in &mut self.members {
            if !m.is_running() {
                ids.push(None);
                continue;
            }
            let s = m.status()?;
            if s.leader == 0 || leader.is_some_and(|l| l != s.leader) {
                return None;
            }
            leader = Some(s.leader);
            ids.push(Some(s.header?.member_id));
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }

    /// Index of some running member that is not the leader.
    pub fn follower(&mut self) -> usize {
        let leader = self.wait_leader();
        (0..self.members.len())
            .find(|&i| i != leader && self.members[i].is_running())
            .expect("no running follower")
    }

    pub fn kill9(&mut self, i: usize) {
        self.members[i].kill9();
    }
}

/// A plain HTTP/1.1 GET; returns the status code and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // Above what a member may take for a read through Raft (`/readyz`).
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response: {response:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line: {head:?}"));
    (code, body.to_string())
}

/// Decodes standard base64 (etcdctl's `-w json` prints keys and values so).
/// The value of `series` (its name and labels, as the exposition prints
/// them) in Prometheus text `text`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

pub fn base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base64: {text:?}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A base64 JSON field as text.
pub fn b64_str(v: &serde_json::Value) -> String {
    String::from_utf8(base64(v.as_str().unwrap_or_default())).unwrap()
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
#[track_caller]
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the test must stop here for lack of `curl`: panics when it is
/// missing under `CI=true`, else prints a loud skip notice and returns true.
pub fn skip_without_curl() -> bool {
    let found = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if found {
        return false;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("curl is required under CI=true but is not installed");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: curl not installed (install curl; under CI=true this fails) ***\n"
    );
    true
}

/// `curl -sS ARGS`; the output ends with the HTTP status code on its own
/// line (`-w '\n%{http_code}'`), split off into the returned pair.
pub fn curl(args: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args);
    let out = run(cmd, None, Duration::from_secs(40));
    assert!(out.success(), "curl {args:?} failed: {}", out.stderr);
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("no status code in curl output {:?}", out.stdout));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `curl -X POST URL -d BODY` against the JSON gateway; the status code and
/// the parsed JSON answer.
pub fn curl_post(url: &str, body: &str) -> (u16, serde_json::Value) {
    let (code, text) = curl(&["-X", "POST", url, "-d", body]);
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {url} {body}: not JSON ({e}): {text:?}"));
    (code, json)
}
