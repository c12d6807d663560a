//! Discovery bootstrap (etcd 3.5's v3 discovery): three members started with
//! `--discovery-endpoints` and `--discovery-token` instead of a static
//! `--initial-cluster` find each other through a running cluster, and a
//! fourth one is refused with etcd's `discovery: cluster is full`.

mod common;
use common::{free_port, member_once, skip_without_etcdctl, Cluster, Member, FAST};

use std::path::Path;
use std::time::Duration;

/// The flags of a member named `name` that bootstraps by discovery.
fn discovery_args(
    dir: &Path,
    name: &str,
    client_port: u16,
    peer_port: u16,
    discovery: &str,
    token: &str,
) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut args: Vec<String> = [
        "--name",
        name,
        "--data-dir",
        dir.join(name).to_str().unwrap(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--discovery-endpoints",
        discovery,
        "--discovery-token",
        token,
        "--initial-cluster-token",
        token,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(FAST.iter().map(|s| s.to_string()));
    args
}

#[test]
fn three_members_bootstrap_by_discovery_and_a_fourth_is_refused_as_the_cluster_is_full() {
    if skip_without_etcdctl() {
        return;
    }
    // The discovery service: any running etcd-compatible cluster.
    let service = localcluster::blocking::LocalCluster::builder()
        .members(1)
        .start_blocking()
        .unwrap();
    let discovery = service.endpoints()[0].clone();
    let token = format!("disc-{}-{}", std::process::id(), free_port());
    common::etcdctl(
        &discovery,
        &["put", &format!("/_etcd/registry/{token}/_config/size"), "3"],
    )
    .ok();

    let dir = tempfile::tempdir().unwrap();
    let members: Vec<Member> = (0..3)
        .map(|i| {
            let name = format!("m{i}");
            let (client_port, peer_port) = (free_port(), free_port());
            let args = discovery_args(
                dir.path(),
                &name,
                client_port,
                peer_port,
                &discovery,
                &token,
            );
            Member::new(dir.path(), &name, client_port, peer_port, args)
        })
        .collect();
    let mut cluster = Cluster {
        members,
        token: token.clone(),
        dir,
    };
    cluster.start_all();

    let list = cluster.etcdctl(&["member", "list", "-w", "json"]).json();
    let mut names: Vec<String> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["m0", "m1", "m2"]);
    cluster.etcdctl(&["put", "found", "each-other"]).ok();
    let out = cluster.etcdctl_at(2, &["get", "found", "--print-value-only"]);
    assert_eq!(out.ok().trim(), "each-other");

    // Each member registered under its ID, with name=peerURL.
    let registry = common::etcdctl(
        &discovery,
        &[
            "get",
            &format!("/_etcd/registry/{token}/members"),
            "--prefix",
        ],
    );
    for m in &mut cluster.members {
        let key = format!("/_etcd/registry/{token}/members/{:x}", m.id());
        let value = format!("{}={}", m.name, m.peer_url());
        let text = registry.ok();
        assert!(text.contains(&key) && text.contains(&value), "{text}");
    }

    // A fourth member with the same token is refused.
    let late = discovery_args(
        cluster.dir.path(),
        "m3",
        free_port(),
        free_port(),
        &discovery,
        &token,
    );
    let late: Vec<&str> = late.iter().map(String::as_str).collect();
    let out = member_once(cluster.dir.path(), &late, Duration::from_secs(30));
    let err = out.err();
    assert!(err.contains("discovery: cluster is full"), "{err}");
}
