//! End-to-end tests of `localcluster bench put` and `bench watch` against a real one-member
//! cluster (the debug binary's `member` subcommand on free ports).

mod common;
use common::{free_port, Cluster};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_localcluster");

/// A member process, killed when dropped.
struct MemberProc {
    child: Child,
    client_port: u16,
    _dir: tempfile::TempDir,
}

impl MemberProc {
    fn start() -> MemberProc {
        let dir = tempfile::tempdir().unwrap();
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(BIN)
            .arg("member")
            .args(["--name", "b1"])
            .arg("--data-dir")
            .arg(dir.path().join("b1"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("b1={peer}")])
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        MemberProc {
            child,
            client_port,
            _dir: dir,
        }
    }

    /// Waits until `GET /health` answers 200 (a leader is known).
    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("member exited early: {status}");
            }
            if http_get_ok(self.client_port, "/health") {
                return;
            }
            assert!(Instant::now() < deadline, "member never became healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MemberProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.starts_with("HTTP/1.1 200")
}

/// Runs `localcluster ARGS`, which must succeed, and parses its JSON report.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn bench_put_writes_every_key_and_reports_json() {
    let mut member = MemberProc::start();
    member.wait_healthy();
    let endpoint = format!("127.0.0.1:{}", member.client_port);
    let v = bench_json(&[
        "bench",
        "put",
        "--total",
        "200",
        "--clients",
        "4",
        "--endpoints",
        &endpoint,
        "-w",
        "json",
        "--sequential-keys",
    ]);
    assert_eq!(v["benchmark"], "put");
    assert_eq!(v["requests"], 200);
    assert_eq!(v["ok"], 200);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["clients"], 4);
    assert_eq!(v["endpoints"][0], format!("http://{endpoint}"));
    assert!(v["rps"].as_f64().unwrap() > 0.0);
    let lat = &v["latency_ms"];
    let p50 = lat["p50"].as_f64().unwrap();
    let p99 = lat["p99"].as_f64().unwrap();
    let max = lat["max"].as_f64().unwrap();
    assert!(p50 <= p99 && p99 <= max, "percentiles out of order: {lat}");
}

#[test]
fn bench_watch_delivers_every_put_to_every_watcher() {
    let mut member = MemberProc::start();
    member.wait_healthy();
    let endpoint = format!("127.0.0.1:{}", member.client_port);
    let v = bench_json(&[
        "bench",
        "watch",
        "--total",
        "100",
        "--watchers",
        "20",
        "--streams",
        "3",
        "--clients",
        "4",
        "--endpoints",
        &endpoint,
        "-w",
        "json",
    ]);
    assert_eq!(v["benchmark"], "watch");
    assert_eq!(v["watchers"], 20);
    assert_eq!(v["ok"], 2000, "100 puts x 20 watchers: {v}");
    assert_eq!(v["errors"], 0);
    assert_eq!(v["put_errors"], 0);
    assert!(v["rps"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_watch_counts_a_failed_put_against_the_writers_not_as_lost_deliveries() {
    let mut member = MemberProc::start();
    member.wait_healthy();
    let endpoint = format!("127.0.0.1:{}", member.client_port);
    // Values over the request limit: every put is refused, so no event is
    // owed to any watcher.
    let out = Command::new(BIN)
        .args(["bench", "watch", "--total", "5", "--watchers", "2"])
        .args(["--val-size", "2000000", "--endpoints", &endpoint])
        .args(["-w", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["put_errors"], 5, "{v}");
    assert_eq!(v["errors"], 0, "no delivery was owed: {v}");
    assert_eq!(out.status.code(), Some(1), "the failed puts fail the run");
}

#[test]
fn bench_put_without_a_server_fails_with_one_line() {
    let port = free_port();
    let out = Command::new(BIN)
        .args(["bench", "put", "--total", "5", "--timeout", "1s"])
        .args(["--endpoints", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "stderr: {stderr}");
}

#[test]
fn bench_range_reads_answers_larger_than_a_connections_receive_window() {
    let mut member = MemberProc::start();
    member.wait_healthy();
    let endpoint = format!("127.0.0.1:{}", member.client_port);
    let one_key = ["--key-space-size", "1", "--sequential-keys"];
    let put = bench_json(
        &[
            &["bench", "put", "--total", "2", "--val-size", "1000000"][..],
            &one_key,
            &["--endpoints", &endpoint, "-w", "json"],
        ]
        .concat(),
    );
    assert_eq!(put["ok"], 2, "{put}");
    // 12 answers of 1 MB each over one connection: more than its 5 MiB
    // window, so the run only ends if read bytes are handed back to it.
    let range = bench_json(
        &[
            &["bench", "range", "--total", "12", "--clients", "2"][..],
            &one_key,
            &["--timeout", "20s", "--endpoints", &endpoint, "-w", "json"],
        ]
        .concat(),
    );
    assert_eq!(range["ok"], 12, "{range}");
    assert_eq!(range["errors"], 0, "{range}");
}

#[test]
fn bench_counts_refused_requests_as_errors_with_etcds_message() {
    let mut member = MemberProc::start();
    member.wait_healthy();
    let endpoint = format!("127.0.0.1:{}", member.client_port);
    let out = Command::new(BIN)
        .args(["bench", "put", "--total", "3", "--val-size", "2000000"])
        .args(["--endpoints", &endpoint])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("3 errors"), "stdout: {stdout}");
    assert!(
        stdout.contains(
            "Error distribution:\n  [3]\tInvalidArgument: etcdserver: request is too large"
        ),
        "stdout: {stdout}"
    );
}

#[test]
fn bench_whose_output_is_closed_fails_with_one_line_not_a_panic() {
    let port = free_port();
    // As `localcluster bench ... | head -0`: the reader is gone before the
    // first line (the run's description, written before it connects).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(["bench", "put", "--total", "5", "--timeout", "1s"])
        .args(["--endpoints", &format!("127.0.0.1:{port}")])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.starts_with("localcluster bench: cannot write the report: "),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn bench_gives_up_on_a_member_that_never_answers_after_the_timeout() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let mut member = MemberProc::start();
    member.wait_healthy();
    let endpoint = format!("127.0.0.1:{}", member.client_port);
    // Stopped, its kernel still accepts connections, but nothing answers.
    let pid = Pid::from_raw(member.child.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let out = Command::new(BIN)
        .args(["bench", "put", "--total", "2", "--timeout", "1s"])
        .args(["--endpoints", &endpoint])
        .output();
    kill(pid, Signal::SIGCONT).unwrap();
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(0 ok, 2 errors)"), "stdout: {stdout}");
    assert!(stdout.contains("Timeout expired"), "stdout: {stdout}");
}

/// A child process killed when dropped (a failed test leaves no run behind).
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The puts a member answered with OK since it started, from its metrics.
fn puts_answered(cluster: &Cluster) -> f64 {
    let (_, metrics) = common::http_get(&cluster.members[0].endpoint(), "/metrics");
    common::metric_value(&metrics, PUTS_ANSWERED).unwrap_or(0.0)
}

const PUTS_ANSWERED: &str = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;

#[test]
fn bench_goes_on_on_a_new_connection_after_its_member_restarts() {
    let mut cluster = Cluster::start(1, &[]);
    let endpoint = cluster.endpoints();
    let mut bench = Reaped(Some(
        Command::new(BIN)
            .args(["bench", "put", "--duration", "20s", "--rate", "100"])
            .args([
                "--clients",
                "4",
                "--conns",
                "2",
                "--timeout",
                "1s",
                "-w",
                "json",
            ])
            .args(["--endpoints", &endpoint])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_secs(1));
    let before = puts_answered(&cluster);
    cluster.kill9(0);
    cluster.restart(0);
    cluster.wait_leader();
    let running = bench.0.as_mut().unwrap().try_wait().unwrap().is_none();
    assert!(running, "the member took longer than the run to come back");
    let out = bench.0.take().unwrap().wait_with_output().unwrap();
    // It exits non-zero, as any run with errors does, and reports.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "stdout: {stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // Calls failed while the member was down: the restart came mid-run.
    assert!(report["errors"].as_u64().unwrap() > 0, "report: {report}");
    // The restarted member counts only the puts it answered itself: the
    // run went on to it, on connections dialled again, and took its
    // answers (all but those of calls in flight at the kill, one per
    // client at most, which the old member may have counted unsent).
    let taken = puts_answered(&cluster);
    assert!(
        taken > 0.0,
        "the restarted member took no put; bench said: {stdout}"
    );
    let ok = report["ok"].as_f64().unwrap();
    assert!(
        before + taken <= ok + 4.0,
        "{before} + {taken} answered, {ok} ok"
    );
}
