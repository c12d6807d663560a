//! `localcluster member` as real processes, killed and restarted the hard way:
//! durability across SIGKILL, leader failover under writes, a lagging follower
//! catching up from a snapshot, and how a member refuses (or accepts) its
//! configuration: etcd's flags, `ETCD_*` variables and `--config-file`.
//!
//! Reads are checked with the real `etcdctl`; bulk writes use the generated
//! gRPC client. See `common` for the harness.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, free_port, member_once, skip_without_etcdctl, Cluster, Member, FAST};
use localcluster::pb::etcdserverpb::PutRequest;

/// The keys under `prefix` as member `i` sees them (`--consistency=s` for a
/// serializable read of its local state).
fn keys_at(c: &Cluster, i: usize, prefix: &str, serializable: bool) -> BTreeSet<String> {
    let mut args = vec!["get", "--prefix", prefix, "--keys-only"];
    if serializable {
        args.push("--consistency=s");
    }
    c.etcdctl_at(i, &args)
        .ok()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Checks that member `i` has exactly `acked` under `prefix`: first its local
/// state once it caught up (serializable), then a linearizable read.
#[track_caller]
fn assert_has_all(c: &Cluster, i: usize, prefix: &str, acked: &BTreeSet<String>) {
    eventually(
        Duration::from_secs(20),
        &format!("m{i} to catch up"),
        || (keys_at(c, i, prefix, true) == *acked).then_some(()),
    );
    assert_eq!(
        keys_at(c, i, prefix, false),
        *acked,
        "linearizable read on m{i}"
    );
}

/// Puts `key` through etcdctl, which must acknowledge it.
fn put(c: &mut Cluster, key: &str, acked: &mut BTreeSet<String>) {
    assert_eq!(c.etcdctl(&["put", key, "v"]).ok(), "OK\n", "put {key}");
    acked.insert(key.to_string());
}

#[test]
fn acknowledged_keys_survive_sigkill_of_each_member_and_of_all() {
    if skip_without_etcdctl() {
        return;
    }
    // A small --snapshot-count so restarts also start from a compacted log.
    let mut c = Cluster::start(3, &["--snapshot-count", "10"]);
    let mut acked = BTreeSet::new();
    for n in 0..10 {
        put(&mut c, &format!("d/{n:03}"), &mut acked);
    }
    for i in 0..3 {
        c.kill9(i);
        c.wait_leader();
        for n in 0..5 {
            put(&mut c, &format!("d/{i}-{n:03}"), &mut acked);
        }
        c.restart(i);
        for j in 0..3 {
            assert_has_all(&c, j, "d/", &acked);
        }
    }

    for i in 0..3 {
        c.kill9(i);
    }
    c.start_all();
    for i in 0..3 {
        assert_has_all(&c, i, "d/", &acked);
    }
    put(&mut c, "d/after", &mut acked);
    for i in 0..3 {
        assert_has_all(&c, i, "d/", &acked);
    }
}

#[test]
fn killing_the_leader_elects_another_and_loses_no_acknowledged_write() {
    if skip_without_etcdctl() {
        return;
    }
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    let old_leader_id = c.members[leader].id();
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();

    // A writer cycling over every endpoint, recording what was acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    const TARGET: usize = 150;
    const MAX_ATTEMPTS: usize = 5000;
    let writer = {
        let acked = acked.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            common::block_on(async move {
                let mut clients = Vec::new();
                for e in &endpoints {
                    clients.push(
                        localcluster::client::kv(e, Duration::from_secs(3))
                            .await
                            .unwrap(),
                    );
                }
                let mut seq = 0;
                for attempt in 0..MAX_ATTEMPTS {
                    if acked.lock().unwrap().len() >= TARGET {
                        break;
                    }
                    let key = format!("w/{seq:05}");
                    let n = clients.len();
                    let client = &mut clients[attempt % n];
                    let put = client.put(PutRequest {
                        key: key.clone().into_bytes().into(),
                        value: b"v".to_vec().into(),
                        ..Default::default()
                    });
                    match tokio::time::timeout(Duration::from_secs(3), put).await {
                        Ok(Ok(_)) => {
                            acked.lock().unwrap().push(key);
                            seq += 1;
                        }
                        // Unacknowledged (maybe applied anyway): try the next key.
                        _ => {
                            seq += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                done.store(true, Ordering::SeqCst);
            })
        })
    };

    eventually(Duration::from_secs(30), "writes before the kill", || {
        (acked.lock().unwrap().len() >= 40).then_some(())
    });
    c.kill9(leader);
    let at_kill = acked.lock().unwrap().len();
    let new_leader = c.wait_leader();
    assert_ne!(new_leader, leader);
    assert_ne!(c.members[new_leader].id(), old_leader_id);
    writer.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(
        acked.len() >= TARGET,
        "writes did not continue after the leader died: {} acknowledged, {at_kill} before the kill",
        acked.len()
    );

    eprintln!(
        "{} writes acknowledged, {at_kill} before the leader was killed",
        acked.len()
    );
    for i in (0..3).filter(|&i| i != leader) {
        let present = keys_at(&c, i, "w/", false);
        let lost: Vec<_> = acked.difference(&present).collect();
        assert!(lost.is_empty(), "m{i} lost acknowledged writes {lost:?}");
    }
    c.restart(leader);
    let present = keys_at(&c, leader, "w/", false);
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "the old leader lost acknowledged writes {lost:?}"
    );
}

#[test]
fn a_follower_far_behind_catches_up_from_a_snapshot() {
    if skip_without_etcdctl() {
        return;
    }
    let mut c = Cluster::start(3, &["--snapshot-count", "20"]);
    let f = c.follower();
    assert!(c.members[f].terminate().success());

    let leader = c.wait_leader();
    let endpoint = c.members[leader].endpoint();
    common::block_on(async {
        let mut kv = localcluster::client::kv(&endpoint, Duration::from_secs(10))
            .await
            .unwrap();
        for n in 0..200 {
            kv.put(PutRequest {
                key: format!("s/{n:03}").into_bytes().into(),
                value: format!("value {n}").into_bytes().into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    });
    let expected: BTreeSet<String> = (0..200).map(|n| format!("s/{n:03}")).collect();

    c.restart(f);
    for i in 0..3 {
        assert_has_all(&c, i, "s/", &expected);
    }
    assert!(
        c.members[f]
            .current_log()
            .contains("restored state from a leader's snapshot"),
        "m{f} did not restore a snapshot:\n{}",
        c.members[f].current_log()
    );
    assert_eq!(
        c.etcdctl_at(f, &["get", "s/199"]).lines(),
        ["s/199", "value 199"]
    );

    // Same revision and same KV hash everywhere.
    let hashes = hashkv(&mut c);
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    // The simple format prints the same hash for each endpoint.
    let out = c.etcdctl(&["endpoint", "hashkv"]);
    assert_eq!(out.lines().len(), 3, "{out:#?}");
    for m in &c.members {
        let line = format!("{}, {}", m.endpoint(), hashes[0].1);
        assert!(out.lines().contains(&line.as_str()), "{out:#?}");
    }
}

#[test]
fn repeated_sigkills_under_writes_lose_nothing_and_members_converge() {
    if skip_without_etcdctl() {
        return;
    }
    // A small --snapshot-count, so restarted members often catch up from a
    // snapshot and the log is compacted while members die.
    let mut c = Cluster::start(3, &["--snapshot-count", "10"]);
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            common::block_on(async move {
                let mut seq = 0u64;
                let mut attempt = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    attempt += 1;
                    let e = &endpoints[attempt % endpoints.len()];
                    let Ok(mut kv) = localcluster::client::kv(e, Duration::from_secs(1)).await
                    else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    // A few writes per connection, then the next endpoint.
                    for _ in 0..20 {
                        let key = format!("x/{seq:06}");
                        seq += 1;
                        let put = kv.put(PutRequest {
                            key: key.clone().into_bytes().into(),
                            value: vec![b'v'; 100].into(),
                            ..Default::default()
                        });
                        match tokio::time::timeout(Duration::from_secs(3), put).await {
                            Ok(Ok(_)) => acked.lock().unwrap().push(key),
                            _ => break,
                        }
                    }
                }
            })
        })
    };
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        let victim = if round % 2 == 0 {
            c.wait_leader()
        } else {
            c.follower()
        };
        c.kill9(victim);
        std::thread::sleep(Duration::from_millis(500));
        c.restart(victim);
        c.wait_leader();
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    eprintln!("{} writes acknowledged", acked.len());
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );

    for i in 0..3 {
        let present = keys_at(&c, i, "x/", false);
        let lost: Vec<_> = acked.difference(&present).collect();
        assert!(lost.is_empty(), "m{i} lost acknowledged writes {lost:?}");
    }
    // A write that timed out may still be applied late; wait for it.
    eventually(Duration::from_secs(10), "equal HashKV everywhere", || {
        let hashes = hashkv(&mut c);
        (hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0])).then_some(())
    });
}

/// `(revision, hash)` of every member, from `etcdctl endpoint hashkv -w json`.
fn hashkv(c: &mut Cluster) -> Vec<(i64, u64)> {
    c.etcdctl(&["endpoint", "hashkv", "-w", "json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["HashKV"]["header"]["revision"].as_i64().unwrap(),
                e["HashKV"]["hash"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Flags for a one-member cluster named `name` on the given ports.
fn single_args(name: &str, data_dir: &Path, client: u16, peer: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client}");
    let peer = format!("http://127.0.0.1:{peer}");
    let mut args: Vec<String> = [
        "--name",
        name,
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
        &format!("{name}={peer}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(FAST.iter().map(|s| s.to_string()));
    args
}

/// A one-member cluster, not started.
fn single(dir: &Path, name: &str) -> Member {
    let (client, peer) = (free_port(), free_port());
    let args = single_args(name, &dir.join(name), client, peer);
    Member::new(dir, name, client, peer, args)
}

/// The lines of stderr that are not log records (the refusal itself).
fn message_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !(l.len() > 20 && l.as_bytes()[4] == b'-' && l.contains("Z ")))
        .collect()
}

/// Asserts a refusal: non-zero exit, no panic, exactly one message line
/// containing `needle`.
#[track_caller]
fn assert_refused(out: &common::Output, needle: &str) {
    let stderr = out.err();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines = message_lines(stderr);
    assert_eq!(lines.len(), 1, "expected one line, got {lines:#?}");
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Replaces the value of `flag` in `args`.
fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = value.to_string();
}

#[test]
fn a_name_missing_from_initial_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = single(dir.path(), "x");
    let mut args = m.args.clone();
    set_flag(
        &mut args,
        "--initial-cluster",
        &format!("y={},z=http://127.0.0.1:1", m.peer_url()),
    );
    let out = member_once(dir.path(), &strs(&args), Duration::from_secs(20));
    assert_refused(
        &out,
        "couldn't find local name \"x\" in the initial cluster configuration",
    );
}

#[test]
fn a_peer_url_not_matching_initial_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = single(dir.path(), "x");
    let mut args = m.args.clone();
    let other = format!("http://127.0.0.1:{}", free_port());
    set_flag(&mut args, "--initial-advertise-peer-urls", &other);
    let out = member_once(dir.path(), &strs(&args), Duration::from_secs(20));
    assert_refused(
        &out,
        &format!(
            "--initial-cluster has x={} but missing from --initial-advertise-peer-urls={other}",
            m.peer_url()
        ),
    );
}

#[test]
fn a_bad_flag_value_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = member_once(
        dir.path(),
        &["--name", "x", "--heartbeat-interval", "abc"],
        Duration::from_secs(20),
    );
    assert_ne!(out.code, Some(0));
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert!(
        out.stderr.contains("--heartbeat-interval") && out.stderr.contains("abc"),
        "{out:#?}"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a refused start created files"
    );
}

#[test]
fn a_member_logs_etcds_milestones_that_scripts_wait_for() {
    let mut c = Cluster::start(1, &[]);
    let m = &c.members[0];
    let serving = format!(
        "serving client traffic insecurely; this is strongly discouraged! address=127.0.0.1:{}",
        m.client_port
    );
    let milestones = [
        serving.as_str(),
        "published local member to cluster",
        "ready to serve client requests",
        "enabled capabilities for version 3.5",
    ];
    let log = eventually(Duration::from_secs(20), "the milestones", || {
        let log = m.log_text();
        milestones.iter().all(|l| log.contains(l)).then_some(log)
    });
    // Addresses as etcd prints them, not as Rust debug-prints an Option.
    assert!(!log.contains("Some("), "{log}");
    c.kill9(0);
}

#[test]
fn help_version_and_procfile_into_a_closed_pipe_end_quietly() {
    // `| head` or `| true`: the reader is gone before anything is written.
    for args in [
        &["member", "--help"][..],
        &["member", "--version"],
        &["procfile"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    }
}

#[test]
fn member_help_and_version_are_etcds() {
    let dir = tempfile::tempdir().unwrap();
    let help = member_once(dir.path(), &["--help"], Duration::from_secs(20));
    assert_eq!(help.code, Some(0), "{help:#?}");
    assert!(help.stdout.contains("--initial-cluster"), "{help:#?}");
    let version = member_once(dir.path(), &["--version"], Duration::from_secs(20));
    assert_eq!(version.code, Some(0), "{version:#?}");
    // Scripts parse etcd's first line.
    assert!(
        version
            .stdout
            .starts_with("etcd Version: 3.5.0\nlocalcluster Version: "),
        "{version:#?}"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "help or version created files"
    );
}

#[test]
fn a_taken_client_port_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let m = single(dir.path(), "x");
    let mut args = m.args.clone();
    let url = format!("http://127.0.0.1:{port}");
    set_flag(&mut args, "--listen-client-urls", &url);
    set_flag(&mut args, "--advertise-client-urls", &url);
    let out = member_once(dir.path(), &strs(&args), Duration::from_secs(20));
    assert_refused(&out, &format!("cannot listen on {url}: "));
    assert_eq!(
        out.stderr.matches("Address already in use").count(),
        1,
        "{out:#?}"
    );
}

#[test]
fn unknown_flags_are_accepted_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = single(dir.path(), "x");
    m.args
        .extend(["--enable-v2=true", "--foo-bar", "3"].map(String::from));
    m.spawn();
    m.wait_ready();
    let log = m.current_log();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("--foo-bar"))
        .unwrap_or_else(|| panic!("no warning about --foo-bar in:\n{log}"));
    assert!(warning.contains("unknown flag"), "{warning}");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("enable-v2")),
        "no warning about --enable-v2 in:\n{log}"
    );
    assert!(m.status().is_some());
}

#[test]
fn a_leader_stopped_with_its_whole_cluster_does_not_wait_for_a_handover() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    // As Ctrl-C under a supervisor: every member gets SIGTERM at once, so
    // no follower stays to take leadership over.
    for m in &c.members {
        m.sigterm();
    }
    for m in &mut c.members {
        m.wait_exit(Duration::from_secs(20));
    }
    let log = c.members[leader].current_log();
    assert!(
        !log.contains("leader transfer took too long"),
        "the leader waited out its handover:\n{log}"
    );
    // Whichever way it went (no transferee connected, the transferee gone,
    // or handed over before it left), the leader says so, as etcd does.
    assert!(
        log.contains("leadership transfer"),
        "the leader said nothing of its handover:\n{log}"
    );
}

#[test]
fn a_member_logs_the_leader_it_elects_as_etcd_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = single(dir.path(), "x");
    m.spawn();
    m.wait_ready();
    let id = m.id();
    let log = m.current_log();
    let line = format!("{id:x} elected leader {id:x} at term ");
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains(&line)),
        "no {line:?} in:\n{log}"
    );
}

#[test]
fn backend_batch_flags_are_taken_not_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = single(dir.path(), "x");
    m.args.extend(
        [
            "--backend-batch-interval",
            "20ms",
            "--backend-batch-limit=5",
        ]
        .map(String::from),
    );
    m.spawn();
    m.wait_ready();
    for i in 0..12 {
        etcd_put(&m, &format!("k{i}"), "v");
    }
    let log = m.current_log();
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("backend-batch")),
        "a warning about the backend batch flags in:\n{log}"
    );
}

#[test]
fn a_restart_ignores_changed_initial_flags_and_keeps_its_id() {
    if skip_without_etcdctl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut m = single(dir.path(), "x");
    m.spawn();
    m.wait_ready();
    let id = m.id();
    assert_eq!(etcd_put(&m, "r/k", "before"), "OK\n");
    assert!(m.terminate().success());

    // A different cluster, token state: all ignored, the data dir decides.
    let changed = format!("x={},y=http://127.0.0.1:1", m.peer_url());
    set_flag(&mut m.args, "--initial-cluster", &changed);
    m.args
        .extend(["--initial-cluster-state", "existing"].map(String::from));
    m.spawn();
    m.wait_ready();
    assert_eq!(m.id(), id);
    let out = common::etcdctl(&m.endpoint(), &["get", "r/k"]);
    assert_eq!(out.lines(), ["r/k", "before"]);
    let out = common::etcdctl(&m.endpoint(), &["member", "list"]);
    assert_eq!(
        out.lines(),
        [format!(
            "{id:x}, started, x, {}, {}, false",
            m.peer_url(),
            m.client_url()
        )]
    );
}

fn etcd_put(m: &Member, key: &str, value: &str) -> String {
    common::etcdctl(&m.endpoint(), &["put", key, value])
        .ok()
        .to_string()
}

#[test]
fn a_restart_ignores_the_initial_cluster_token_but_not_another_members_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = single(dir.path(), "x");
    m.args
        .extend(["--initial-cluster-token", "first"].map(String::from));
    m.spawn();
    m.wait_ready();
    let id = m.id();
    assert!(m.terminate().success());

    // As etcd: once bootstrapped, the --initial-* flags are ignored, so a
    // guide's restart that leaves the token out (or gives another) works.
    for token in [Some("second"), None] {
        let original = m.args.clone();
        match token {
            Some(t) => set_flag(&mut m.args, "--initial-cluster-token", t),
            None => {
                let at = m
                    .args
                    .iter()
                    .position(|a| a == "--initial-cluster-token")
                    .unwrap();
                m.args.drain(at..at + 2);
            }
        }
        m.spawn();
        m.wait_ready();
        assert_eq!(m.id(), id, "token {token:?}");
        assert!(m.terminate().success());
        m.args = original;
    }
    assert!(
        m.log_text()
            .contains("the server is already initialized as member before"),
        "{}",
        m.log_text()
    );

    // The same data dir under another name.
    let mut args = single_args("z", &m.data_dir, m.client_port, m.peer_port);
    args.extend(["--initial-cluster-token", "first"].map(String::from));
    let out = member_once(dir.path(), &strs(&args), Duration::from_secs(20));
    assert_refused(&out, "belongs to member \"x\"");

    // The original flags still work.
    m.spawn();
    m.wait_ready();
}

#[test]
fn a_config_file_with_etcds_keys_configures_the_member() {
    if skip_without_etcdctl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let yaml = format!(
        "# etcd.conf.yml\n\
         name: 'from-file'\n\
         data-dir: {data}\n\
         listen-peer-urls: http://127.0.0.1:{peer}\n\
         listen-client-urls: http://127.0.0.1:{client}\n\
         initial-advertise-peer-urls: http://127.0.0.1:{peer}\n\
         advertise-client-urls: http://127.0.0.1:{client}\n\
         initial-cluster: from-file=http://127.0.0.1:{peer}\n\
         initial-cluster-token: 'file-token'\n\
         initial-cluster-state: 'new'\n\
         heartbeat-interval: 50\n\
         election-timeout: 500\n\
         snapshot-count: 10000\n\
         max-request-bytes: 1048576\n\
         enable-v2: false\n\
         log-level: info\n",
        data = dir.path().join("data").display()
    );
    let file = dir.path().join("etcd.yml");
    std::fs::write(&file, yaml).unwrap();
    let mut m = Member::new(
        dir.path(),
        "from-file",
        client,
        peer,
        vec!["--config-file".into(), file.to_str().unwrap().into()],
    );
    m.spawn();
    m.wait_ready();
    assert!(dir.path().join("data").join("member").is_dir());
    let out = common::etcdctl(&m.endpoint(), &["member", "list"]);
    assert_eq!(
        out.lines(),
        [format!(
            "{:x}, started, from-file, {}, {}, false",
            m.id(),
            m.peer_url(),
            m.client_url()
        )]
    );
    assert_eq!(etcd_put(&m, "f/k", "v"), "OK\n");
}

#[test]
fn etcd_environment_variables_configure_the_member() {
    if skip_without_etcdctl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let mut m = Member::new(dir.path(), "from-env", client, peer, Vec::new());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    m.env = [
        ("ETCD_NAME", "from-env".to_string()),
        (
            "ETCD_DATA_DIR",
            dir.path().join("env-data").display().to_string(),
        ),
        ("ETCD_LISTEN_CLIENT_URLS", client_url.clone()),
        ("ETCD_ADVERTISE_CLIENT_URLS", client_url.clone()),
        ("ETCD_LISTEN_PEER_URLS", peer_url.clone()),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", peer_url.clone()),
        ("ETCD_INITIAL_CLUSTER", format!("from-env={peer_url}")),
        ("ETCD_INITIAL_CLUSTER_TOKEN", "env-token".to_string()),
        ("ETCD_HEARTBEAT_INTERVAL", "50".to_string()),
        ("ETCD_ELECTION_TIMEOUT", "500".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    m.spawn();
    m.wait_ready();
    assert!(dir.path().join("env-data").join("member").is_dir());
    let out = common::etcdctl(&m.endpoint(), &["member", "list"]);
    assert_eq!(
        out.lines(),
        [format!(
            "{:x}, started, from-env, {peer_url}, {client_url}, false",
            m.id()
        )]
    );
    assert_eq!(etcd_put(&m, "e/k", "v"), "OK\n");
}
