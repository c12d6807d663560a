//! Backup and restore as etcd's runbook does it: `etcdctl snapshot save` from
//! a running cluster, `localcluster snapshot status` on the file, then
//! `localcluster snapshot restore` into the data dirs of a new 3-member
//! cluster that holds the same keys, revisions and `HashKV`. Damaged files are
//! refused.

mod common;
use common::{eventually, skip_without_etcdctl, Cluster, BIN};

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn localcluster(args: &[&str]) -> common::Output {
    let mut cmd = Command::new(BIN);
    cmd.env("RUST_BACKTRACE", "0").args(args);
    common::run(cmd, None, Duration::from_secs(60))
}

/// `(revision, hash)` of `etcdctl endpoint hashkv` at `endpoint`, at `rev` (0: current).
fn hashkv(endpoint: &str, rev: i64) -> (i64, u64) {
    let rev = format!("--rev={rev}");
    let out = common::etcdctl(endpoint, &["endpoint", "hashkv", &rev, "-w", "json"]).json();
    let h = &out[0]["HashKV"];
    (
        h["header"]["revision"].as_i64().unwrap(),
        h["hash"].as_u64().unwrap(),
    )
}

/// Every key and value, as `etcdctl get "" --prefix` prints them.
fn everything(cluster: &mut Cluster) -> String {
    cluster
        .etcdctl(&["get", "", "--prefix", "--consistency=s"])
        .ok()
        .to_string()
}

#[test]
fn a_saved_snapshot_restores_a_new_three_member_cluster_with_the_same_keys_and_hashkv() {
    if skip_without_etcdctl() {
        return;
    }
    let mut old = Cluster::start(3, &[]);
    for i in 0..30 {
        old.etcdctl(&["put", &format!("key/{i:02}"), &format!("v{i}")])
            .ok();
    }
    for i in 0..5 {
        old.etcdctl(&["put", &format!("key/{i:02}"), "overwritten"])
            .ok();
        old.etcdctl(&["del", &format!("key/{:02}", 29 - i)]).ok();
    }
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("backup.db");
    let at = old.members[0].endpoint();
    let out = common::etcdctl(&at, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(out.ok().contains("Snapshot saved at"), "{out:?}");
    let (rev, hash) = hashkv(&at, 0);
    let keys = everything(&mut old);

    // `snapshot status` reports the same revision and HashKV.
    let status: serde_json::Value = serde_json::from_str(
        localcluster(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]).ok(),
    )
    .unwrap();
    assert_eq!(status["revision"].as_i64(), Some(rev), "{status}");
    assert_eq!(status["hash"].as_u64(), Some(hash), "{status}");
    assert_eq!(status["totalKey"].as_i64(), Some(25), "{status}");
    drop(old);

    // Restore each member of a new cluster from the file, then start them.
    let mut new = Cluster::new(3, &[]);
    let initial_cluster = new.members[0]
        .args
        .iter()
        .skip_while(|a| *a != "--initial-cluster")
        .nth(1)
        .unwrap()
        .clone();
    for m in &new.members {
        let out = localcluster(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--name",
            &m.name,
            "--initial-cluster",
            &initial_cluster,
            "--initial-cluster-token",
            &new.token,
            "--initial-advertise-peer-urls",
            &m.peer_url(),
            "--data-dir",
            m.data_dir.to_str().unwrap(),
        ]);
        assert!(out.ok().contains("restored snapshot"), "{out:?}");
    }
    new.start_all();
    assert_eq!(everything(&mut new), keys);
    for m in &new.members {
        assert_eq!(hashkv(&m.endpoint(), rev), (rev, hash), "{}", m.name);
    }
    // The new cluster is a cluster of its own: three members, writable.
    let list = new.etcdctl(&["member", "list"]).ok().to_string();
    assert_eq!(list.lines().count(), 3, "{list}");
    new.etcdctl(&["put", "after-restore", "yes"]).ok();
    let at = new.members[2].endpoint();
    eventually(WAIT, "the write reaches every member", || {
        let out = common::etcdctl(
            &at,
            &[
                "get",
                "after-restore",
                "--consistency=s",
                "--print-value-only",
            ],
        );
        (out.stdout.trim() == "yes").then_some(())
    });
    let (after, _) = hashkv(&at, 0);
    assert_eq!(after, rev + 1, "revisions continue from the snapshot's");
}

#[test]
fn localcluster_saves_snapshots_too_and_a_truncated_or_corrupt_file_is_refused_with_a_clear_error()
{
    if skip_without_etcdctl() {
        return;
    }
    let mut cluster = Cluster::start(1, &[]);
    cluster.etcdctl(&["put", "k", "v"]).ok();
    let dir = cluster.dir.path().to_path_buf();
    let file = dir.join("good.db");
    let at = cluster.members[0].endpoint();
    common::etcdctl(&at, &["snapshot", "save", file.to_str().unwrap()]).ok();
    let good = std::fs::read(&file).unwrap();

    // `localcluster snapshot save` writes the same kind of file.
    let ours = dir.join("ours.db");
    let out = localcluster(&[
        "snapshot",
        "save",
        ours.to_str().unwrap(),
        "--endpoints",
        &at,
    ]);
    assert!(out.ok().contains("Snapshot saved at"), "{out:?}");
    let status = |f: &Path| {
        let out = localcluster(&["snapshot", "status", f.to_str().unwrap(), "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
        (
            v["revision"].as_i64(),
            v["hash"].as_u64(),
            v["totalKey"].as_i64(),
        )
    };
    assert_eq!(status(&ours), status(&file));
    assert_eq!(status(&ours).2, Some(1));

    let truncated = dir.join("truncated.db");
    std::fs::write(&truncated, &good[..good.len() - 100]).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x5a;
    let corrupt = dir.join("corrupt.db");
    std::fs::write(&corrupt, &flipped).unwrap();

    for bad in [&truncated, &corrupt] {
        let path = bad.to_str().unwrap();
        let err = localcluster(&["snapshot", "status", path])
            .err()
            .to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("is corrupt or truncated"), "{err}");
        let data_dir = dir.join("restored");
        let err = localcluster(&[
            "snapshot",
            "restore",
            path,
            "--name",
            "r1",
            "--initial-cluster",
            "r1=http://127.0.0.1:1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ])
        .err()
        .to_string();
        assert!(err.contains("is corrupt or truncated"), "{err}");
        assert!(!Path::new(&data_dir).exists(), "nothing is written");
    }
}
