//! Short chaos runs (a few seconds per fault kind): concurrent reads, writes,
//! compare-and-sets, list appends, leases and watches while one kind of
//! fault is injected and repaired, then every checker must pass (see
//! `localcluster::chaos`): against embedded clusters for every fault kind,
//! and against separate member processes for kills, pauses and restarts;
//! the `localcluster chaos` command that runs the same for longer; and the
//! checkers themselves on synthetic histories.

use std::time::Duration;

use localcluster::chaos::checks::{self, KeyProbe, LeaseLife, WatchEvent};
use localcluster::chaos::{self, ChaosConfig, ChaosReport, Fault, ProcessCluster};
use localcluster::LocalCluster;

const BIN: &str = env!("CARGO_BIN_EXE_localcluster");

fn assert_clean(what: &str, report: &ChaosReport) {
    eprintln!(
        "{what}: {} operations ({} unknown), {} watch events ({} reconnects), {} faults {:?}",
        report.operations,
        report.unknown,
        report.watch_events,
        report.watch_reconnects,
        report.faults_injected,
        report.injected
    );
    if !report.ok() {
        chaos::print_findings(report);
    }
    assert!(
        report.ok(),
        "violations: {:#?}\nduplicate revisions: {:?}\nproblems: {:#?}",
        report.violations,
        report.duplicate_revisions,
        report.problems
    );
    assert!(report.operations > report.unknown, "{report:?}");
    assert!(report.appends > 0 && report.lease_ops > 0, "{report:?}");
    assert!(report.watch_events > 0, "{report:?}");
}

async fn run_with(fault: Fault, seed: u64) {
    let mut cluster = LocalCluster::builder().members(3).start().await.unwrap();
    let cfg = ChaosConfig {
        duration: Duration::from_secs(5),
        faults: vec![fault],
        fault_period: Duration::from_millis(700),
        seed,
        ..Default::default()
    };
    let report = chaos::run(&mut cluster, &cfg).await;
    assert_clean(&format!("{fault:?}"), &report);
    assert!(report.faults_injected >= 1, "{report:?}");
    assert!(report.unsupported.is_empty(), "{report:?}");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_while_the_leader_is_killed_and_restarted() {
    run_with(Fault::KillLeader, 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_while_random_members_are_killed_and_restarted() {
    run_with(Fault::KillRandom, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_while_members_are_paused() {
    run_with(Fault::Pause, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_while_the_leader_is_isolated() {
    run_with(Fault::IsolateLeader, 14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_while_members_restart_gracefully() {
    run_with(Fault::Restart, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_across_random_majority_minority_partitions() {
    run_with(Fault::Partition, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_across_bridge_partitions() {
    run_with(Fault::Bridge, 17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_stay_linearizable_through_kills_pauses_and_restarts() {
    let mut cluster = ProcessCluster::start(BIN, 3, Duration::from_secs(60))
        .await
        .unwrap();
    let cfg = ChaosConfig {
        duration: Duration::from_secs(7),
        faults: vec![
            Fault::KillLeader,
            Fault::KillRandom,
            Fault::Pause,
            Fault::Restart,
            Fault::Partition,
        ],
        fault_period: Duration::from_millis(700),
        seed: 21,
        ..Default::default()
    };
    let report = chaos::run(&mut cluster, &cfg).await;
    assert_clean("processes", &report);
    assert!(report.faults_injected >= 1, "{report:?}");
    // Loopback processes cannot be partitioned: skipped, and said so.
    assert_eq!(report.unsupported, vec![Fault::Partition]);
    assert!(!report.injected.contains_key(&Fault::Partition));
}

fn chaos_command(extra: &[&str]) {
    let out = std::process::Command::new(BIN)
        .arg("chaos")
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("round 0: "), "{stdout}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("chaos: ")
            && summary.contains(" operations checked (")
            && summary.contains(" faults injected (")
            && summary.ends_with(", 0 violations"),
        "{stdout}"
    );
}

#[test]
fn the_chaos_command_reports_rounds_and_exits_zero_without_violations() {
    chaos_command(&[
        "--duration",
        "4s",
        "--round",
        "2s",
        "--faults",
        "kill-leader,bridge",
    ]);
}

#[test]
fn the_chaos_command_runs_separate_processes_and_notes_skipped_faults() {
    let out = std::process::Command::new(BIN)
        .args([
            "chaos",
            "--processes",
            "--duration",
            "3s",
            "--round",
            "3s",
            "--faults",
            "pause,partition",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("skipped faults this target cannot inject: partition"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with(", 0 violations"), "{stdout}");
}

fn event(revision: i64, key: &str) -> WatchEvent {
    WatchEvent {
        revision,
        key: key.to_string(),
        value: Some(b"v".to_vec()),
    }
}

#[test]
fn the_watch_checkers_catch_gaps_duplicates_and_reordering() {
    let acked: Vec<(i64, String)> = (3..=5).map(|r| (r, "k".to_string())).collect();
    let good = [event(3, "k"), event(4, "k"), event(5, "k")];
    assert!(checks::check_watch_order(&good).is_empty());
    assert!(checks::check_watch_complete(&good, &acked).is_empty());
    let gap = [event(3, "k"), event(5, "k")];
    assert_eq!(checks::check_watch_complete(&gap, &acked).len(), 1);
    let dup = [event(3, "k"), event(4, "k"), event(4, "k"), event(5, "k")];
    assert_eq!(checks::check_watch_order(&dup).len(), 1);
    assert_eq!(checks::check_watch_complete(&dup, &acked).len(), 1);
    let back = [event(3, "k"), event(5, "k"), event(4, "k")];
    assert_eq!(checks::check_watch_order(&back).len(), 1);
}

#[test]
fn the_lease_checker_catches_a_key_gone_before_its_ttl() {
    let ms = |n: u64| n * 1_000_000;
    let lease = LeaseLife {
        id: 1,
        ttl: ms(2000),
        // Granted between 0 and 5 ms, kept alive between 1000 and 1010 ms.
        refreshes: vec![(0, ms(5)), (ms(1000), ms(1010))],
        revoked: None,
        keys: vec![("k".to_string(), ms(20))],
    };
    let probe = |at: u64, present| KeyProbe {
        key: "k".to_string(),
        invoked: ms(at),
        returned: ms(at + 2),
        present,
    };
    // Gone at 2500 ms: the keep-alive at 1000 ms holds it until 3000 ms.
    let early = checks::check_leases(std::slice::from_ref(&lease), &[probe(2500, false)], 0);
    assert_eq!(early.len(), 1, "{early:?}");
    assert!(checks::check_leases(&[lease], &[probe(3100, false)], 0).is_empty());
}

#[test]
fn a_violation_is_reported_as_a_minimal_history() {
    use localcluster::chaos::linearizable::{Op, Operation};
    let mut ops: Vec<Operation> = (1..=50u64)
        .map(|v| Operation {
            client: (v % 3) as usize,
            op: Op::Write(v),
            invoked: 10 * v,
            returned: Some(10 * v + 5),
        })
        .collect();
    // A stale read: 50 was acknowledged long before.
    ops.push(Operation {
        client: 9,
        op: Op::Read(Some(Some(49))),
        invoked: 1000,
        returned: Some(1001),
    });
    let min = chaos::shrink::history(None, &ops, 10_000);
    let lines: Vec<String> = min.iter().map(chaos::describe).collect();
    assert_eq!(min.len(), 3, "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("write 49")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("write 50")), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("client 9: read -> Some(49)")),
        "{lines:#?}"
    );
}
