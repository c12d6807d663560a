//! Short chaos runs (a few seconds per fault kind) against embedded clusters:
//! concurrent reads, writes and compare-and-sets while one kind of fault is
//! injected and repaired, then the history must be linearizable and no
//! revision may be acknowledged twice (see `localcluster::chaos`); and the
//! `localcluster chaos` command that runs the same for longer.

use std::time::Duration;

use localcluster::chaos::{self, ChaosConfig, Fault};
use localcluster::LocalCluster;

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
    eprintln!(
        "{fault:?}: {} operations ({} unknown), {} faults",
        report.operations, report.unknown, report.faults_injected
    );
    assert!(
        report.ok(),
        "violations: {:#?}\nduplicate revisions: {:?}",
        report.violations,
        report.duplicate_revisions
    );
    assert!(report.faults_injected >= 1, "{report:?}");
    assert!(report.operations > report.unknown, "{report:?}");
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

#[test]
fn the_chaos_command_reports_rounds_and_exits_zero_without_violations() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_localcluster"))
        .args([
            "chaos",
            "--duration",
            "4s",
            "--round",
            "2s",
            "--faults",
            "kill-leader",
        ])
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
        summary.starts_with("chaos: ") && summary.ends_with(", 0 violations"),
        "{stdout}"
    );
}
