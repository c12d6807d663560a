//! Python's `etcd3` client (grpcio) works unchanged against a 3-member
//! cluster: KV, txn, lease, watch, lock, members, status (see
//! `scripts/etcd3_smoke.py`). Optional: skipped, loudly, when `python3` cannot
//! import `etcd3` (`.ci/run` tries to install it; `LOCALCLUSTER_PYTHON` picks
//! another interpreter).

use std::process::Command;
use std::time::Duration;

use localcluster::LocalCluster;

fn python() -> String {
    std::env::var("LOCALCLUSTER_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn etcd3_available() -> bool {
    Command::new(python())
        .args(["-c", "import etcd3"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_etcd3_client_works_unchanged() {
    if !etcd3_available() {
        eprintln!(
            "*** SKIPPED: {} cannot import etcd3 (pip install etcd3 \"protobuf<3.21\") ***",
            python()
        );
        return;
    }
    let cluster = LocalCluster::builder().members(3).start().await.unwrap();
    cluster.wait_healthy(Duration::from_secs(20)).await.unwrap();
    let endpoint = cluster.member(1).endpoint();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/etcd3_smoke.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python()).arg(script).arg(endpoint).output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("etcd3 smoke test: ok"), "{stdout}");
}
