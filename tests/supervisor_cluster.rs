//! End-to-end tests of a real 3-member cluster run by `localcluster start`, and of
//! `localcluster demo failover`.
//!
//! Each test writes its own Procfile ([`Layout::free`]: the standard 3-member
//! layout on free ports, with short Raft timings) into a temporary directory and
//! runs it with a free control port, so tests run in parallel and never touch a
//! cluster on the standard ports. The supervisor puts its own directory on the
//! children's PATH, so the Procfile's `localcluster member` is this build.
//!
//! etcdctl: when it is on PATH the writes and reads go through it as well; when it
//! is missing the test says so loudly and checks with `localcluster::client` only,
//! except on CI (`CI=true`), where a missing etcdctl fails the test.
//!
//! Liveness is read from `/proc/PID/stat` (a zombie counts as dead). Nothing here
//! asserts on timing; waits are bounded and fail with the output collected so far.

mod common;
use common::{free_port, wait_dead};

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use localcluster::layout::Layout;
use localcluster::pb::etcdserverpb::PutRequest;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_localcluster");
/// Short Raft timings so elections are quick.
const TIMINGS: &str = "--heartbeat-interval 20 --election-timeout 200";
const ALL: [&str; 3] = ["m1", "m2", "m3"];

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A child process whose stdout lines and stderr are collected by threads.
/// Dropping it SIGKILLs the child.
struct Spawned {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<String>>,
}

impl Spawned {
    fn new(mut cmd: Command) -> Spawned {
        let mut child = cmd
            .env_remove("LOCALCLUSTER_PORT")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                sink.lock().unwrap().push(text);
                line.clear();
            }
        });
        let err = Arc::new(Mutex::new(String::new()));
        let err_sink = Arc::clone(&err);
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            err_sink.lock().unwrap().push_str(&s);
        });
        Spawned { child, out, err }
    }

    fn lines(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    fn dump(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.lines().join("\n"),
            self.err.lock().unwrap()
        )
    }

    /// Waits (at most `secs`) until some output line satisfies `pred`; returns it.
    fn wait_line(&self, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no matching line\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Waits for the child to exit (at most `secs`).
    fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads catch the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {secs} s\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 3-member cluster on free ports under `localcluster start`.
struct Cluster {
    sup: Spawned,
    port: u16,
    layout: Layout,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a cluster and waits until every member answers. A member that
    /// could not bind its port (some other process took the free port in the
    /// meantime) means a fresh start on new ports, at most three times.
    fn start() -> Cluster {
        for _ in 0..3 {
            let c = Cluster::start_once();
            if c.wait_up() {
                return c;
            }
            eprintln!(
                "a member's port was taken; retrying on new ports\n{}",
                c.sup.dump()
            );
        }
        panic!("three clusters in a row could not bind their ports");
    }

    /// Waits until every member answers the probe; false if a member exited
    /// because its port was taken.
    fn wait_up(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(rows) = self.try_status() {
                if rows.iter().all(|r| r["member"].is_object()) {
                    return true;
                }
                if rows.iter().any(|r| r["state"] == "exited") {
                    // Let the member's last words reach the log.
                    std::thread::sleep(Duration::from_millis(300));
                    let text = self.sup.lines().join("\n");
                    assert!(
                        text.contains("cannot listen on"),
                        "a member exited\n{}",
                        self.sup.dump()
                    );
                    return false;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the members did not come up\n{}",
                self.sup.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_once() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut layout = Layout::free(3, &data.display().to_string()).unwrap();
        layout.extra_flags = TIMINGS.to_string();
        let procfile = dir.path().join("Procfile");
        std::fs::write(&procfile, layout.procfile()).unwrap();
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir.path()).args([
            "start",
            "-f",
            &procfile.display().to_string(),
            "-p",
            &port.to_string(),
            "--timeout",
            "5",
            "--color",
            "never",
        ]);
        Cluster {
            sup: Spawned::new(cmd),
            port,
            layout,
            dir,
        }
    }

    fn index(&self, name: &str) -> usize {
        ALL.iter().position(|n| *n == name).unwrap()
    }

    /// `host:port` of member `name`.
    fn endpoint(&self, name: &str) -> String {
        format!("127.0.0.1:{}", self.layout.ports[self.index(name)].0)
    }

    fn endpoints(&self, names: &[&str]) -> String {
        names
            .iter()
            .map(|n| self.endpoint(n))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .current_dir(self.dir.path())
            .env_remove("LOCALCLUSTER_PORT")
            .args(["run", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap()
    }

    /// `run ARGS`, which must succeed; returns its stdout.
    fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "run {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.sup.dump()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `run status -w json`, or None while the control endpoint is not up.
    fn try_status(&self) -> Option<Vec<Value>> {
        let out = self.run(&["status", "-w", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        Some(v.as_array().unwrap().clone())
    }

    fn status(&self) -> Vec<Value> {
        self.try_status().expect("run status failed")
    }

    fn row(&self, name: &str) -> Value {
        self.status()
            .into_iter()
            .find(|r| r["name"] == name)
            .unwrap()
    }

    /// Waits until the members `among` all run and agree on one leader among
    /// them; returns its name and term.
    fn wait_leader(&self, among: &[&str]) -> (String, u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(rows) = self.try_status() {
                if let Some(found) = agreed_leader(&rows, among) {
                    return found;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {among:?}; last status: {:?}\n{}",
                self.try_status(),
                self.sup.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pids(&self) -> Vec<i32> {
        self.status()
            .iter()
            .map(|r| i32::try_from(r["pid"].as_u64().expect("member not running")).unwrap())
            .collect()
    }
}

/// The leader's name and term, if every member in `among` runs, answered the
/// probe and names the same member of `among` as leader, which says it leads.
fn agreed_leader(rows: &[Value], among: &[&str]) -> Option<(String, u64)> {
    let rows: Vec<&Value> = rows
        .iter()
        .filter(|r| among.iter().any(|n| r["name"] == *n))
        .collect();
    let members: Vec<&Value> = rows
        .iter()
        .map(|r| Some(&r["member"]).filter(|m| m.is_object()))
        .collect::<Option<_>>()?;
    let leaders: Vec<usize> = (0..rows.len())
        .filter(|&i| members[i]["role"] == "leader")
        .collect();
    let [i] = leaders[..] else { return None };
    let id = &members[i]["member_id"];
    members.iter().all(|m| m["leader_id"] == *id).then(|| {
        (
            rows[i]["name"].as_str().unwrap().to_string(),
            members[i]["raft_term"].as_u64().unwrap(),
        )
    })
}

/// The real etcdctl, or None after a loud note when it is missing (on CI a
/// missing etcdctl fails the test).
fn etcdctl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("etcdctl"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "etcdctl is required on CI (apt-get install etcd-client)"
        );
        eprintln!(
            "\n*** SKIPPING the etcdctl checks: etcdctl is not on PATH \
             (apt-get install etcd-client); checking with localcluster::client only ***\n"
        );
    }
    found
}

/// Runs etcdctl (API v3) against `endpoints`; returns its output.
fn etcdctl_run(bin: &Path, endpoints: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints, "--command-timeout=5s"])
        .args(args)
        .output()
        .unwrap()
}

/// Puts `key` through etcdctl, trying up to three times (a client retries
/// during an election too); panics if none succeeded.
fn etcdctl_put(bin: &Path, endpoints: &str, key: &str, value: &str) {
    let mut errors = Vec::new();
    for _ in 0..3 {
        let out = etcdctl_run(bin, endpoints, &["put", key, value]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
            return;
        }
        errors.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    panic!("etcdctl put {key} failed three times: {errors:?}");
}

/// Puts `key` through localcluster::client at `endpoint`; returns the revision.
fn client_put(endpoint: &str, key: &str, value: &str) -> i64 {
    block_on(async {
        let mut kv = localcluster::client::kv(endpoint, Duration::from_secs(5))
            .await
            .unwrap();
        let resp = kv
            .put(PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                ..PutRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        resp.header.unwrap().revision
    })
}

/// The `Status` of the member at `endpoint`.
fn member_status(endpoint: &str) -> Option<localcluster::pb::etcdserverpb::StatusResponse> {
    block_on(localcluster::client::status(
        endpoint,
        Duration::from_secs(2),
    ))
}

#[test]
fn killing_the_leader_elects_a_new_one_and_the_restarted_member_catches_up() {
    let etcdctl = etcdctl();
    let c = Cluster::start();
    let (old_leader, old_term) = c.wait_leader(&ALL);
    client_put(&c.endpoint(&old_leader), "before", "0");

    c.run_ok(&["kill", "leader"]);
    let rows = c.status();
    let down: Vec<&Value> = rows.iter().filter(|r| r["state"] != "running").collect();
    assert_eq!(down.len(), 1, "{rows:?}");
    assert_eq!(down[0]["state"], "stopped");
    assert_eq!(down[0]["exit_signal"], "SIGKILL");
    let killed = down[0]["name"].as_str().unwrap().to_string();
    let survivors: Vec<&str> = ALL.into_iter().filter(|n| *n != killed).collect();

    let (new_leader, new_term) = c.wait_leader(&survivors);
    assert_ne!(new_leader, killed);
    assert!(new_term > old_term, "term {old_term} -> {new_term}");

    // Writes succeed on the two survivors.
    for i in 0..10 {
        client_put(
            &c.endpoint(&new_leader),
            &format!("after/{i}"),
            &format!("v{i}"),
        );
    }
    if let Some(bin) = &etcdctl {
        let eps = c.endpoints(&survivors);
        etcdctl_put(bin, &eps, "after/etcdctl", "yes");
        let out = etcdctl_run(
            bin,
            &eps,
            &["get", "after/", "--prefix", "--print-value-only"],
        );
        assert!(out.status.success(), "{out:?}");
        let values = String::from_utf8_lossy(&out.stdout);
        assert_eq!(values.lines().count(), 11, "{values}");
        assert!(values.lines().any(|l| l == "yes"), "{values}");
    }
    let last_rev = client_put(&c.endpoint(&new_leader), "after/last", "done");

    // The killed member comes back and catches up.
    c.run_ok(&["start", &killed]);
    let row = c.row(&killed);
    assert_eq!(row["state"], "running");
    assert_eq!(row["restarts"], 1);
    let back = c.endpoint(&killed);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let revision = member_status(&back)
            .and_then(|s| s.header)
            .map(|h| h.revision);
        if revision == Some(last_rev) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{killed} stuck at revision {revision:?}, want {last_rev}\n{}",
            c.sup.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ours = member_status(&back).unwrap();
    let theirs = member_status(&c.endpoint(&new_leader)).unwrap();
    assert_eq!(
        ours.header.unwrap().revision,
        theirs.header.unwrap().revision
    );
    if let Some(bin) = &etcdctl {
        let out = etcdctl_run(
            bin,
            &back,
            &["get", "after/", "--prefix", "--consistency=s", "-w", "json"],
        );
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["count"], 12, "{v}");
        assert_eq!(v["header"]["revision"], last_rev, "{v}");
    }
}

#[test]
fn status_table_and_json_show_role_term_and_index_for_members() {
    let c = Cluster::start();
    c.wait_leader(&ALL);
    // A re-election may happen between two calls: retry until a table shows
    // exactly one leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    let table = loop {
        let table = c.run_ok(&["status"]);
        let leaders = table
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(6) == Some("leader"))
            .count();
        if leaders == 1 || Instant::now() > deadline {
            break table;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PID", "STATE", "UPTIME", "RESTARTS", "EXIT", "ROLE", "TERM", "INDEX"],
        "{table}"
    );
    let mut roles = Vec::new();
    for (line, name) in lines.zip(ALL) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), 9, "{table}");
        assert_eq!((cells[0], cells[2]), (name, "running"), "{table}");
        assert!(["leader", "follower"].contains(&cells[6]), "{table}");
        assert!(cells[7].parse::<u64>().unwrap() >= 1, "{table}");
        assert!(cells[8].parse::<u64>().unwrap() >= 1, "{table}");
        roles.push(cells[6]);
    }
    assert_eq!(roles.len(), 3, "{table}");
    assert_eq!(
        roles.iter().filter(|r| **r == "leader").count(),
        1,
        "{table}"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = c.status();
        if agreed_leader(&rows, &ALL).is_some() || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(rows.len(), 3);
    let mut ids = Vec::new();
    for r in &rows {
        let m = &r["member"];
        assert!(
            ["leader", "follower"].contains(&m["role"].as_str().unwrap()),
            "{r}"
        );
        assert!(m["raft_term"].as_u64().unwrap() >= 1, "{r}");
        assert!(m["raft_index"].as_u64().unwrap() >= 1, "{r}");
        assert_ne!(m["member_id"].as_u64().unwrap(), 0, "{r}");
        assert!(r["client_url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"));
        ids.push(m["member_id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{rows:?}");
    let leaders: Vec<&Value> = rows
        .iter()
        .filter(|r| r["member"]["role"] == "leader")
        .collect();
    assert_eq!(leaders.len(), 1, "{rows:?}");
    let leader_id = &leaders[0]["member"]["member_id"];
    assert!(rows.iter().all(|r| r["member"]["leader_id"] == *leader_id));
}

#[test]
fn sigint_and_sigterm_stop_every_member_with_a_clean_shutdown() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut c = Cluster::start();
        c.wait_leader(&ALL);
        let pids = c.pids();
        c.sup.signal(sig);
        let status = c.sup.wait_exit(30);
        assert_eq!(status.code(), Some(0), "signal {sig}\n{}", c.sup.dump());
        for pid in pids {
            assert!(wait_dead(pid, 5), "member pid {pid} survived signal {sig}");
        }
        for name in ALL {
            let prefix = format!("{name} | ");
            for want in ["received signal; shutting down", "INFO stopped"] {
                c.sup
                    .wait_line(5, |l| l.starts_with(&prefix) && l.contains(want));
            }
            c.sup
                .wait_line(5, |l| l == format!("{name} | exited with code 0"));
        }
    }
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_member_alive() {
    let mut c = Cluster::start();
    c.wait_leader(&ALL);
    let pids = c.pids();
    c.sup.signal(libc::SIGKILL);
    let _ = c.sup.wait_exit(5);
    for pid in pids {
        assert!(
            wait_dead(pid, 5),
            "member pid {pid} outlived the supervisor"
        );
    }
    // Their ports are free again.
    for (client, peer) in &c.layout.ports {
        for port in [client, peer] {
            std::net::TcpListener::bind(("127.0.0.1", *port))
                .unwrap_or_else(|e| panic!("port {port} still taken: {e}"));
        }
    }
}

/// `PROGRAM demo failover ARGS` with its temporary directory under `tmp`.
fn demo(program: &Path, tmp: &Path, args: &[&str]) -> Spawned {
    let mut cmd = Command::new(program);
    cmd.current_dir(tmp)
        .env("TMPDIR", tmp)
        .args(["demo", "failover"])
        .args(args);
    Spawned::new(cmd)
}

/// Starts the demo and waits until its cluster is up; returns it and the member
/// pids it printed (`cluster up: m1 pid 123 (leader), ...`). A member that could
/// not bind its free port means another try, at most three.
fn start_demo(program: &Path, tmp: &Path, args: &[&str]) -> (Spawned, Vec<i32>) {
    for _ in 0..3 {
        let mut d = demo(program, tmp, args);
        let line = d.wait_line(60, |l| {
            l.contains("cluster up: ") || l.starts_with("FAIL: ")
        });
        if line.starts_with("FAIL: ") {
            d.wait_exit(30);
            let text = d.lines().join("\n");
            assert!(text.contains("cannot listen on"), "{}", d.dump());
            eprintln!("a member's port was taken; retrying\n{text}");
            // The failed run kept its directory for inspection.
            for entry in std::fs::read_dir(tmp).unwrap() {
                let _ = std::fs::remove_dir_all(entry.unwrap().path());
            }
            continue;
        }
        let pids: Vec<i32> = line
            .split(" pid ")
            .skip(1)
            .map(|s| s.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 3, "{line}");
        return (d, pids);
    }
    panic!("three demos in a row could not bind their ports");
}

#[test]
fn demo_failover_elects_a_new_leader_and_every_acked_write_is_readable() {
    let tmp = tempfile::tempdir().unwrap();
    // Run under another name, in a directory of its own: the members must
    // still be this binary, found by its path rather than as `localcluster`.
    let bin_dir = tempfile::tempdir().unwrap();
    let renamed = bin_dir.path().join("lc-renamed");
    if std::fs::hard_link(BIN, &renamed).is_err() {
        std::fs::copy(BIN, &renamed).unwrap();
    }
    let (mut d, pids) = start_demo(
        &renamed,
        tmp.path(),
        &[
            "--writes",
            "60",
            "--heartbeat-interval",
            "20",
            "--election-timeout",
            "200",
        ],
    );
    let status = d.wait_exit(180);
    assert!(status.success(), "{}", d.dump());
    let text = d.lines().join("\n");
    assert!(text.contains("SIGKILL the leader, m"), "{text}");
    assert!(text.contains("(`localcluster run -p "), "{text}");
    assert!(text.contains("killed by SIGKILL"), "{text}");
    assert!(text.contains(" new leader: m"), "{text}");
    assert!(text.contains("time until a new leader"), "{text}");
    assert!(text.contains("time until the next acked write"), "{text}");
    assert!(
        d.lines().last().is_some_and(
            |l| l.starts_with("PASS: all ") && l.contains("acknowledged writes are readable")
        ),
        "{text}"
    );
    for pid in pids {
        assert!(wait_dead(pid, 5), "member pid {pid} outlived the demo");
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the demo left {left:?}");
}

#[test]
fn demo_failover_stops_its_cluster_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, pids) = start_demo(
        Path::new(BIN),
        tmp.path(),
        &[
            "--writes",
            "10000",
            "--heartbeat-interval",
            "20",
            "--election-timeout",
            "200",
        ],
    );
    d.wait_line(30, |l| l.contains("writer started"));
    d.signal(libc::SIGINT);
    let status = d.wait_exit(60);
    assert_eq!(status.code(), Some(130), "{}", d.dump());
    d.wait_line(1, |l| l.starts_with("interrupted: stopping the cluster"));
    for pid in pids {
        assert!(wait_dead(pid, 5), "member pid {pid} outlived the demo");
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the demo left {left:?}");
}

#[test]
fn a_member_whose_port_is_taken_fails_with_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = taken.local_addr().unwrap().port();
    let peer = free_port();
    let out = Command::new(BIN)
        .args([
            "member",
            "--name",
            "m1",
            "--data-dir",
            &dir.path().join("m1").display().to_string(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("m1=http://127.0.0.1:{peer}"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
