//! End-to-end tests of `localcluster start` / `localcluster run` with real
//! child processes (`sh`, `sleep`, `trap`, ...).
//!
//! Each test runs its own supervisor in a temporary directory with a free
//! control port, so tests run in parallel. Liveness is checked through
//! `/proc/PID/stat` (a zombie counts as dead: it is only waiting for its
//! reaper).

mod common;
use common::{alive, free_port, wait_dead, wait_state};

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_localcluster");

fn command(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_remove("LOCALCLUSTER_PORT")
        .env_remove("NO_COLOR");
    c
}

/// A running supervisor whose stdout is collected line by line.
struct Sup {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    out: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Sup {
    /// Starts `localcluster start` on `procfile` (with `--timeout 2` unless
    /// `extra` sets it).
    fn start(procfile: &str, extra: &[&str]) -> Sup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Procfile"), procfile).unwrap();
        Sup::start_in(dir, extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Sup {
        let port = free_port();
        let mut cmd = command(dir.path());
        cmd.args(["start", "-p", &port.to_string()]);
        if !extra.contains(&"--timeout") {
            cmd.args(["--timeout", "2"]);
        }
        let mut child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\n')
                    .to_string();
                sink.lock().unwrap().push(text);
                line.clear();
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let err_sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            err_sink.lock().unwrap().push_str(&s);
        });
        Sup {
            child,
            port,
            dir,
            out,
            stderr,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// Waits until some output line satisfies `pred`; returns it.
    fn wait_line(&self, pred: impl Fn(&str) -> bool) -> String {
        self.wait_lines(|lines| lines.iter().find(|l| pred(l)).cloned())
    }

    /// Waits (at most 10 s) until `found` finds something in the output
    /// lines so far; returns it.
    fn wait_lines<T>(&self, found: impl Fn(&[String]) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = found(&self.lines()) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no matching line in:\n{}\nstderr:\n{}",
                self.lines().join("\n"),
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid the supervisor reported for `name`'s latest start.
    fn pid_of(&self, name: &str) -> i32 {
        self.pid_after(name, None)
    }

    /// The pid of `name`'s latest start, once that is another start than
    /// the one with pid `old`: a control command's answer can arrive before
    /// the log line of the start it made.
    fn pid_after(&self, name: &str, old: Option<i32>) -> i32 {
        self.wait_lines(|lines| {
            lines
                .iter()
                .rev()
                .find(|l| l.starts_with(&format!("{name} ")) && l.contains("started with pid"))
                .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
                .filter(|&pid| Some(pid) != old)
        })
    }

    fn run(&self, args: &[&str]) -> Output {
        command(self.dir.path())
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
            "run {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn status_json(&self) -> Vec<serde_json::Value> {
        let text = self.run_ok(&["status", "-w", "json"]);
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn status_of(&self, name: &str) -> serde_json::Value {
        self.status_json()
            .into_iter()
            .find(|r| r["name"] == name)
            .unwrap()
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Waits for the supervisor to exit (at most `secs`).
    fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "supervisor still running; output:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pids of every live process in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // state ppid pgrp ...
        if fields.get(2) == Some(&pgid.to_string().as_str()) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The process's name once the shell that started it has exec'd the program
/// (the pid is reported as soon as the shell runs; the exec follows).
fn exec_name(pid: i32) -> String {
    common::eventually(Duration::from_secs(5), "the shell to exec", || {
        Some(comm(pid)).filter(|name| name != "sh")
    })
}

#[test]
fn lines_are_prefixed_padded_and_kept_in_order_per_process() {
    let mut sup = Sup::start(
        "a: for i in 1 2 3 4 5 6 7 8 9 10; do echo a$i; done\n\
         long-name: for i in 1 2 3 4 5 6 7 8 9 10; do echo b$i >&2; done\n",
        &[],
    );
    let status = sup.wait_exit(10);
    assert!(status.success(), "{status:?}");
    let lines = sup.lines();
    let a: Vec<_> = lines.iter().filter(|l| l.starts_with("a ")).collect();
    let b: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("long-name "))
        .collect();
    let want_a: Vec<String> = (1..=10).map(|i| format!("a         | a{i}")).collect();
    let want_b: Vec<String> = (1..=10).map(|i| format!("long-name | b{i}")).collect();
    let got_a: Vec<_> = a
        .iter()
        .filter(|l| l.contains("| a"))
        .map(|s| s.to_string())
        .collect();
    let got_b: Vec<_> = b
        .iter()
        .filter(|l| l.contains("| b"))
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got_a, want_a);
    assert_eq!(got_b, want_b);
    assert!(
        lines.contains(&"a         | exited with code 0".to_string()),
        "{lines:#?}"
    );
    // Start comes first and exit last, for each process.
    assert!(a.first().unwrap().contains("started with pid"));
    assert_eq!(a.last().unwrap().as_str(), "a         | exited with code 0");
    // No colour when stdout is not a terminal.
    assert!(!lines.iter().any(|l| l.contains('\x1b')));
}

#[test]
fn stdout_and_stderr_share_one_pipe_so_their_lines_keep_their_order() {
    let mut sup = Sup::start(
        "mix: for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done\n",
        &[],
    );
    assert_eq!(sup.wait_exit(10).code(), Some(0));
    let got: Vec<String> = sup
        .lines()
        .into_iter()
        .filter(|l| l.contains("out") || l.contains("err"))
        .collect();
    let want: Vec<String> = (1..=5)
        .flat_map(|i| [format!("mix | out{i}"), format!("mix | err{i}")])
        .collect();
    assert_eq!(got, want);
}

#[test]
fn long_partial_and_invalid_lines_survive_whole() {
    let mut sup = Sup::start(
        "big: head -c 1048576 /dev/zero | tr '\\000' x; echo; printf 'tail without newline'\n\
         chatty: i=0; while [ $i -lt 3000 ]; do echo small$i; i=$((i+1)); done\n\
         bad: printf 'a\\377b\\n'\n",
        &["--color", "never"],
    );
    assert!(sup.wait_exit(20).success());
    let lines = sup.lines();
    for l in &lines {
        assert!(
            l.starts_with("big    | ") || l.starts_with("chatty | ") || l.starts_with("bad    | "),
            "line without prefix (interleaved?): {:?}",
            &l[..l.len().min(80)]
        );
    }
    let big = lines.iter().find(|l| l.len() > 1000).unwrap();
    assert_eq!(big.len(), "big    | ".len() + 1_048_576);
    assert!(big["big    | ".len()..].bytes().all(|b| b == b'x'));
    assert!(lines.contains(&"big    | tail without newline".to_string()));
    let chatty = lines
        .iter()
        .filter(|l| l.starts_with("chatty | small"))
        .count();
    assert_eq!(chatty, 3000);
    assert!(
        lines.contains(&"bad    | a\u{fffd}b".to_string()),
        "{:?}",
        lines
            .iter()
            .filter(|l| l.starts_with("bad"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn colour_and_timestamps_decorate_the_prefix() {
    let mut sup = Sup::start("one: echo hi\n", &["--color", "always", "-t"]);
    assert!(sup.wait_exit(10).success());
    let line = sup.wait_line(|l| l.ends_with("hi"));
    // ESC[36m HH:MM:SS one | ESC[0m hi
    assert!(line.starts_with("\x1b[36m"), "{line:?}");
    let rest = &line["\x1b[36m".len()..];
    assert_eq!(&rest[2..3], ":");
    assert_eq!(&rest[8..], " one | \x1b[0mhi");
}

#[test]
fn env_files_port_and_path_reach_the_children() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Procfile"),
        "first: echo \"port=$PORT foo=$FOO\"\n\
         second: echo \"port=$PORT path=$PATH\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".env"), "FOO=from-dotenv\n").unwrap();
    let mut sup = Sup::start_in(dir, &["-b", "7000"]);
    assert!(sup.wait_exit(10).success());
    sup.wait_line(|l| l == "first  | port=7000 foo=from-dotenv");
    let exe_dir = Path::new(BIN).parent().unwrap().display().to_string();
    sup.wait_line(|l| l.starts_with(&format!("second | port=7100 path={exe_dir}:")));

    // -e replaces .env; repeatable and comma-separated, later files win.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Procfile"), "p: echo \"$A $B $C\"\n").unwrap();
    std::fs::write(dir.path().join(".env"), "A=dotenv\n").unwrap();
    std::fs::write(dir.path().join("1.env"), "A=one\nB=one\n").unwrap();
    std::fs::write(dir.path().join("2.env"), "B=two\n").unwrap();
    std::fs::write(dir.path().join("3.env"), "C=three\n").unwrap();
    let mut sup = Sup::start_in(dir, &["-e", "1.env,2.env", "-e", "3.env"]);
    assert!(sup.wait_exit(10).success());
    sup.wait_line(|l| l == "p | one two three");
}

#[test]
fn bad_procfile_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Procfile"),
        "m1: sleep 1\n# c\nm1: sleep 2\n",
    )
    .unwrap();
    let out = command(dir.path())
        .args(["start", "-p", &free_port().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Procfile:3: duplicate process name \"m1\""),
        "{err}"
    );

    std::fs::write(dir.path().join("Other"), "ok: true\nnot a process line\n").unwrap();
    let out = command(dir.path())
        .args(["start", "-f", "Other", "-p", &free_port().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Other:2: expected \"name: command\""), "{err}");
}

#[test]
fn stop_kill_restart_and_start_drive_single_processes() {
    let sup = Sup::start(
        "sleeper: sleep 300\n\
         stubborn: trap 'echo ignoring TERM' TERM; while :; do sleep 0.1; done\n",
        &[],
    );
    let sleeper = sup.pid_of("sleeper");
    // A simple command is exec'd: the reported pid is the program itself.
    assert_eq!(exec_name(sleeper), "sleep");
    let stubborn = sup.pid_of("stubborn");
    assert_eq!(sup.run_ok(&["list"]), "sleeper\nstubborn\n");

    // stop: SIGTERM is enough for sleep.
    sup.run_ok(&["stop", "sleeper"]);
    assert!(wait_dead(sleeper, 5));
    let s = sup.status_of("sleeper");
    assert_eq!(s["state"], "stopped");
    assert_eq!(s["exit_signal"], "SIGTERM");
    assert!(s["pid"].is_null());

    // As goreman: stopping something stopped succeeds and changes nothing...
    sup.run_ok(&["stop", "sleeper"]);
    assert_eq!(sup.status_of("sleeper")["exit_signal"], "SIGTERM");
    // ...but killing it fails with one line.
    let out = sup.run(&["kill", "sleeper"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("sleeper is not running"), "{err}");

    // start after stop; starting what runs (with what does not) starts only
    // what does not, as goreman.
    sup.run_ok(&["start", "stubborn", "sleeper"]);
    let again = sup.pid_after("sleeper", Some(sleeper));
    assert_ne!(again, sleeper);
    assert!(alive(again));
    assert_eq!(sup.status_of("sleeper")["restarts"], 1);
    assert_eq!(sup.pid_of("stubborn"), stubborn);
    assert_eq!(sup.status_of("stubborn")["restarts"], 0);

    // stop escalates to SIGKILL after --timeout (2s) when TERM is ignored.
    let t = Instant::now();
    sup.run_ok(&["stop", "stubborn"]);
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    assert!(wait_dead(stubborn, 5));
    assert_eq!(sup.status_of("stubborn")["exit_signal"], "SIGKILL");
    sup.wait_line(|l| l.starts_with("stubborn | ") && l.contains("sending SIGKILL"));

    // restart: a new pid, restarts counted.
    sup.run_ok(&["restart", "sleeper"]);
    let third = sup.pid_after("sleeper", Some(again));
    assert!(third != again && alive(third) && wait_dead(again, 5));
    let s = sup.status_of("sleeper");
    assert_eq!(
        (s["state"].as_str(), s["restarts"].as_u64()),
        (Some("running"), Some(2))
    );

    // kill: at once, even for a process that ignores TERM.
    sup.run_ok(&["start", "stubborn"]);
    let stubborn = sup.pid_of("stubborn");
    sup.run_ok(&["kill", "stubborn"]);
    assert!(wait_dead(stubborn, 5));
    let s = sup.status_of("stubborn");
    assert_eq!(
        (s["state"].as_str(), s["exit_signal"].as_str()),
        (Some("stopped"), Some("SIGKILL"))
    );

    // unknown names fail, and nothing is done.
    let out = sup.run(&["stop", "sleeper", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown process \"nope\""));
    assert!(alive(third));
}

#[test]
fn pause_and_resume_stop_and_continue_the_group() {
    let sup = Sup::start("p: sleep 300\n", &[]);
    let pid = sup.pid_of("p");
    sup.run_ok(&["pause", "p"]);
    assert_eq!(wait_state(pid, 'T', 5), Some('T'));
    assert_eq!(sup.status_of("p")["state"], "paused");
    let out = sup.run(&["resume", "nope"]);
    assert!(!out.status.success());
    sup.run_ok(&["resume", "p"]);
    assert_eq!(wait_state(pid, 'S', 5), Some('S'));
    assert_eq!(sup.status_of("p")["state"], "running");
    let out = sup.run(&["resume", "p"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("p is not paused"));
    // A paused process can still be stopped (SIGTERM then SIGCONT).
    sup.run_ok(&["pause", "p"]);
    sup.run_ok(&["stop", "p"]);
    assert!(wait_dead(pid, 5));
    // SIGTERM did it (after SIGCONT); no escalation to SIGKILL was needed.
    assert_eq!(sup.status_of("p")["exit_signal"], "SIGTERM");
}

#[test]
fn stop_all_keeps_the_supervisor_up_for_start_all_and_restart_all() {
    let mut sup = Sup::start("a: sleep 300\nb: sleep 300\n", &[]);
    let (a, b) = (sup.pid_of("a"), sup.pid_of("b"));
    sup.run_ok(&["stop-all"]);
    assert!(wait_dead(a, 5) && wait_dead(b, 5));
    assert!(
        sup.child.try_wait().unwrap().is_none(),
        "supervisor must wait for start-all"
    );
    let states: Vec<_> = sup
        .status_json()
        .iter()
        .map(|r| r["state"].clone())
        .collect();
    assert_eq!(states, ["stopped", "stopped"]);
    sup.run_ok(&["start-all"]);
    let (a2, b2) = (sup.pid_after("a", Some(a)), sup.pid_after("b", Some(b)));
    assert!(a2 != a && b2 != b && alive(a2) && alive(b2));
    sup.run_ok(&["restart-all"]);
    let (a3, b3) = (sup.pid_after("a", Some(a2)), sup.pid_after("b", Some(b2)));
    assert!(a3 != a2 && b3 != b2 && alive(a3) && alive(b3));
    assert!(wait_dead(a2, 5) && wait_dead(b2, 5));
    let out = sup.run(&["stop-all", "a"]);
    assert!(!out.status.success());
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(10).code(), Some(0));
    assert!(!alive(a3) && !alive(b3));
}

#[test]
fn status_prints_a_table_and_json() {
    let sup = Sup::start("web: sleep 300\nfail: exit 3\n", &["-b", "6000"]);
    sup.wait_line(|l| l == "fail | exited with code 3");
    let table = sup.run_ok(&["status"]);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["NAME", "PID", "STATE", "UPTIME", "RESTARTS", "EXIT"]
    );
    assert_eq!(lines[1][0], "web");
    assert_eq!(lines[1][1], sup.pid_of("web").to_string());
    assert_eq!(lines[1][2..3], ["running"]);
    assert_eq!(lines[1][4..], ["0", "-"]);
    assert_eq!(lines[2], ["fail", "-", "exited", "-", "0", "3"]);

    let json = sup.status_json();
    assert_eq!(json.len(), 2);
    assert_eq!(json[0]["name"], "web");
    assert_eq!(json[0]["state"], "running");
    assert_eq!(json[0]["port"], 6000);
    assert!(json[0]["uptime_secs"].is_u64());
    assert_eq!(json[1]["state"], "exited");
    assert_eq!(json[1]["exit_code"], 3);
    assert_eq!(json[1]["port"], 6100);
}

#[test]
fn a_child_exiting_leaves_the_others_running() {
    let mut sup = Sup::start("ok: sleep 300\nbad: exit 1\n", &[]);
    let ok = sup.pid_of("ok");
    sup.wait_line(|l| l == "bad | exited with code 1");
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(ok));
    assert!(sup.child.try_wait().unwrap().is_none());
    sup.signal(libc::SIGINT);
    assert_eq!(sup.wait_exit(10).code(), Some(0));
    assert!(!alive(ok));
}

#[test]
fn exit_on_error_stops_everything_and_exits_non_zero() {
    let mut sup = Sup::start(
        "ok: sleep 300\nbad: sleep 0.3; exit 3\n",
        &["--exit-on-error"],
    );
    let ok = sup.pid_of("ok");
    let status = sup.wait_exit(10);
    assert_eq!(status.code(), Some(3));
    assert!(!alive(ok));
    sup.wait_line(|l| l == "ok  | stopping (SIGTERM)");
}

#[test]
fn sigint_sigterm_and_sighup_stop_every_child_gracefully_and_exit_zero() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let mut sup = Sup::start(
            "plain: sleep 300\n\
             graceful: trap 'echo got TERM; exit 0' TERM; while :; do sleep 0.1; done\n\
             compound: sleep 300 & echo \"bg $!\"; wait\n",
            &[],
        );
        let pids = [
            sup.pid_of("plain"),
            sup.pid_of("graceful"),
            sup.pid_of("compound"),
        ];
        let bg: i32 = sup
            .wait_line(|l| l.starts_with("compound | bg "))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        sup.signal(sig);
        let status = sup.wait_exit(10);
        assert_eq!(status.code(), Some(0), "signal {sig}");
        for pid in pids.into_iter().chain([bg]) {
            assert!(wait_dead(pid, 2), "pid {pid} survived signal {sig}");
        }
        sup.wait_line(|l| l == "graceful | got TERM");
    }
}

#[test]
fn a_name_given_twice_starts_once_and_ctrl_c_still_ends_the_supervisor() {
    let mut sup = Sup::start("web: sleep 300\nother: sleep 300\n", &["web", "web"]);
    let pid = sup.pid_of("web");
    sup.signal(libc::SIGINT);
    assert_eq!(sup.wait_exit(10).code(), Some(0));
    assert!(wait_dead(pid, 2));
    let started = sup
        .lines()
        .iter()
        .filter(|l| l.starts_with("web ") && l.contains("started with pid"))
        .count();
    assert_eq!(started, 1, "{:?}", sup.lines());
}

#[test]
fn a_closed_output_pipe_stops_everything_as_foreman_does() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Procfile"),
        "ticker: while :; do echo tick; sleep 0.1; done\n",
    )
    .unwrap();
    let port = free_port().to_string();
    let mut sup = command(dir.path())
        .args(["start", "-p", &port, "--timeout", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // `localcluster start | head -2`: read two lines, then close the pipe.
    let mut out = BufReader::new(sup.stdout.take().unwrap());
    let mut started = String::new();
    out.read_line(&mut started).unwrap();
    let pid: i32 = started.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let mut tick = String::new();
    out.read_line(&mut tick).unwrap();
    assert_eq!(tick.trim(), "ticker | tick");
    drop(out);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = sup.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = sup.kill();
            panic!("still running with nobody reading");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert!(wait_dead(pid, 2), "the ticker outlived the supervisor");
}

#[test]
fn what_a_process_leaves_running_in_its_group_is_killed_and_said_so() {
    let sup = Sup::start(
        "bg: sleep 300 & echo \"helper $!\"; exit 0\nkeep: sleep 300\n",
        &[],
    );
    let helper: i32 = sup
        .wait_line(|l| l.starts_with("bg   | helper "))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    sup.wait_lines(|lines| {
        let at = lines
            .iter()
            .position(|l| l == "bg   | exited with code 0")?;
        let next = lines.get(at + 1)?;
        (next == "bg   | it left processes running in its group; they were killed (SIGKILL)")
            .then_some(())
    });
    assert!(wait_dead(helper, 2), "the helper outlived its process");
}

#[test]
fn start_during_a_slow_stop_starts_the_process_again_once_it_has_exited() {
    let sup = Sup::start(
        "stubborn: trap 'echo ignoring TERM' TERM; while :; do sleep 0.1; done\n",
        &["--timeout", "2"],
    );
    let first = sup.pid_of("stubborn");
    std::thread::scope(|scope| {
        let stopping = scope.spawn(|| sup.run_ok(&["stop", "stubborn"]));
        sup.wait_line(|l| l == "stubborn | ignoring TERM");
        // The stop is waiting out its timeout: start answers once the
        // process has been killed and started again.
        sup.run_ok(&["start", "stubborn"]);
        let again = sup.pid_after("stubborn", Some(first));
        assert!(alive(again) && wait_dead(first, 5));
        assert_eq!(sup.status_of("stubborn")["state"], "running");
        stopping.join().unwrap();
    });
}

#[test]
fn a_second_sighup_does_not_cut_the_graceful_stop_short() {
    let mut sup = Sup::start(
        "graceful: trap 'sleep 3; echo got TERM; exit 0' TERM; while :; do sleep 0.1; done\n",
        &["--timeout", "20"],
    );
    let pid = sup.pid_of("graceful");
    // A closing terminal: the shell's SIGHUP, then the kernel's.
    let t = Instant::now();
    sup.signal(libc::SIGHUP);
    sup.wait_line(|l| l == "graceful | stopping (SIGTERM)");
    sup.signal(libc::SIGHUP);
    assert_eq!(sup.wait_exit(20).code(), Some(0));
    // Killed at the second SIGHUP, it would have ended well before its 3 s.
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    sup.wait_line(|l| l == "graceful | got TERM");
    assert!(wait_dead(pid, 2));
}

#[test]
fn a_stop_after_a_pending_start_keeps_the_process_stopped() {
    let sup = Sup::start(
        "stubborn: trap 'echo ignoring TERM' TERM; while :; do sleep 0.1; done\n\
         other: sleep 300\n",
        &["--timeout", "5"],
    );
    let first = sup.pid_of("stubborn");
    std::thread::scope(|scope| {
        let stopping = scope.spawn(|| sup.run_ok(&["stop", "stubborn"]));
        sup.wait_line(|l| l == "stubborn | ignoring TERM");
        // start (pending until it has exited), then stop again, well
        // within the 5 s the first stop waits: the later request wins. The
        // start is told so at once; the stops are answered once it is down.
        let starting = scope.spawn(|| sup.run(&["start", "stubborn"]));
        std::thread::sleep(Duration::from_millis(1500));
        sup.run_ok(&["stop", "stubborn"]);
        stopping.join().unwrap();
        let start = starting.join().unwrap();
        assert_eq!(start.status.code(), Some(1), "{start:?}");
        let said = String::from_utf8_lossy(&start.stderr);
        assert!(
            said.contains("stubborn: called off by a later stop"),
            "{said}"
        );
    });
    assert!(wait_dead(first, 5));
    assert_eq!(sup.status_of("stubborn")["state"], "stopped");
    assert_eq!(sup.status_of("stubborn")["restarts"], 0);
}

#[test]
fn a_second_sigint_kills_at_once() {
    let mut sup = Sup::start(
        "stubborn: trap '' TERM INT; while :; do sleep 0.1; done\n",
        &["--timeout", "60"],
    );
    let pid = sup.pid_of("stubborn");
    sup.signal(libc::SIGINT);
    sup.wait_line(|l| l == "stubborn | stopping (SIGTERM)");
    assert!(sup.child.try_wait().unwrap().is_none());
    sup.signal(libc::SIGINT);
    // With --timeout 60, exiting well before it shows the second Ctrl-C killed at once.
    assert_eq!(sup.wait_exit(20).code(), Some(0));
    assert!(wait_dead(pid, 5));
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_child_alive() {
    let mut sup = Sup::start(
        "simple: sleep 301\n\
         nested: sh -c 'sleep 302; echo unreachable'\n\
         compound: sleep 303 & sleep 304 & echo started; wait\n\
         piped: sleep 305 | cat\n",
        &[],
    );
    let leaders: Vec<i32> = ["simple", "nested", "compound", "piped"]
        .iter()
        .map(|n| sup.pid_of(n))
        .collect();
    sup.wait_line(|l| l == "compound | started");
    assert_eq!(exec_name(leaders[0]), "sleep");
    let mut everyone = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    for &leader in &leaders {
        // Wait until the group has its grandchildren.
        let mut members = group_members(leader);
        while members.len() < 2 && leader != leaders[0] && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            members = group_members(leader);
        }
        everyone.extend(members);
    }
    assert!(everyone.len() >= 8, "{everyone:?}");
    sup.signal(libc::SIGKILL);
    let _ = sup.wait_exit(5);
    for pid in everyone {
        assert!(
            wait_dead(pid, 3),
            "pid {pid} ({}) outlived the supervisor",
            comm(pid)
        );
    }
}

#[test]
fn a_missing_procfile_is_refused_in_one_line_that_gives_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path())
        .args(["start", "-f", "nonexist"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("localcluster: cannot read nonexist: "),
        "{err}"
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn run_without_a_supervisor_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path())
        .args(["run", "-p", &free_port().to_string(), "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach the supervisor"), "{err}");
}

#[test]
fn a_members_json_log_lines_are_prefixed_like_any_other() {
    let (client, peer) = (free_port(), free_port());
    let procfile = format!(
        "m1: {BIN} member --name m1 --data-dir m1.etcd --log-format json \
         --listen-client-urls http://127.0.0.1:{client} --advertise-client-urls http://127.0.0.1:{client} \
         --listen-peer-urls http://127.0.0.1:{peer} --initial-advertise-peer-urls http://127.0.0.1:{peer} \
         --initial-cluster m1=http://127.0.0.1:{peer}\n"
    );
    let mut sup = Sup::start(&procfile, &[]);
    let line = sup.wait_line(|l| l.contains("ready to serve client requests"));
    let json = line
        .strip_prefix("m1 | ")
        .unwrap_or_else(|| panic!("not prefixed: {line:?}"));
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    assert_eq!(v["msg"], "ready to serve client requests");
    assert_eq!(v["level"], "info");
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(20).success());
}
