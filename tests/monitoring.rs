//! Running members in production: Prometheus `/metrics` (client URLs and
//! `--listen-metrics-urls`), `/health` with alarms and `?serializable=true`,
//! systemd's `Type=notify` readiness (a fake `NOTIFY_SOCKET`), zap-style JSON
//! logs to files, `--unsafe-no-fsync`, and the example unit and config file in
//! `scripts/`. HTTP is checked with the real `curl`, writes with the real
//! `etcdctl`; both fail under `CI=true` when missing and skip loudly otherwise.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::{
    curl, eventually, free_port, metric_value, skip_without_curl, skip_without_etcdctl, Cluster,
};

#[test]
fn metrics_use_etcds_names_on_client_and_metrics_urls() {
    if skip_without_etcdctl() || skip_without_curl() {
        return;
    }
    let metrics_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let mut c = Cluster::start(
        1,
        &[
            "--listen-metrics-urls",
            &metrics_url,
            "--metrics",
            "extensive",
        ],
    );
    c.etcdctl(&["put", "k", "v"]).ok();
    c.etcdctl(&["get", "k"]).ok();
    // Once the leader decided it, as in etcd.
    let version = r#"etcd_cluster_version{cluster_version="3.5"}"#;
    eventually(Duration::from_secs(20), "etcd_cluster_version", || {
        let (_, text) = curl(&[&format!("{}/metrics", c.members[0].client_url())]);
        (metric_value(&text, version) == Some(1.0)).then_some(())
    });

    for base in [c.members[0].client_url(), metrics_url] {
        let (code, text) = curl(&[&format!("{base}/metrics")]);
        assert_eq!(code, 200, "{text}");
        assert_eq!(metric_value(&text, "etcd_server_has_leader"), Some(1.0));
        assert_eq!(metric_value(&text, "etcd_server_is_leader"), Some(1.0));
        assert!(metric_value(&text, "etcd_server_leader_changes_seen_total").unwrap() >= 1.0);
        assert!(metric_value(&text, "etcd_server_proposals_committed_total").unwrap() >= 1.0);
        assert!(metric_value(&text, "etcd_server_proposals_applied_total").unwrap() >= 1.0);
        // The member's own proposals (cluster version, ...) may still be in
        // flight on a loaded machine, or have failed during start-up.
        assert!(metric_value(&text, "etcd_server_proposals_pending").is_some());
        assert!(metric_value(&text, "etcd_server_proposals_failed_total").is_some());
        assert!(metric_value(&text, "etcd_mvcc_db_total_size_in_bytes").unwrap() > 0.0);
        assert!(metric_value(&text, "etcd_disk_wal_fsync_duration_seconds_count").unwrap() > 0.0);
        assert!(
            metric_value(&text, "etcd_disk_backend_commit_duration_seconds_count").unwrap() > 0.0
        );
        assert!(metric_value(&text, "process_resident_memory_bytes").unwrap() > 0.0);
        assert!(metric_value(&text, "etcd_debugging_mvcc_db_total_size_in_bytes").unwrap() > 0.0);
        assert_eq!(metric_value(&text, "etcd_server_is_learner"), Some(0.0));
        assert!(metric_value(&text, "etcd_debugging_mvcc_current_revision").unwrap() >= 2.0);
        assert_eq!(
            metric_value(&text, "etcd_debugging_mvcc_compact_revision"),
            Some(0.0)
        );
        // One key; the put and the get counted.
        assert_eq!(
            metric_value(&text, "etcd_debugging_mvcc_keys_total"),
            Some(1.0)
        );
        assert!(metric_value(&text, "etcd_mvcc_put_total").unwrap() >= 1.0);
        assert!(metric_value(&text, "etcd_mvcc_range_total").unwrap() >= 1.0);
        assert_eq!(metric_value(&text, "etcd_mvcc_delete_total"), Some(0.0));
        assert_eq!(metric_value(&text, "etcd_mvcc_txn_total"), Some(0.0));
        let id = format!(r#"etcd_server_id{{server_id="{:x}"}}"#, c.members[0].id());
        assert_eq!(metric_value(&text, &id), Some(1.0), "{text}");
        assert!(
            metric_value(&text, "etcd_network_client_grpc_received_bytes_total").unwrap() > 0.0
        );
        assert!(metric_value(&text, "etcd_network_client_grpc_sent_bytes_total").unwrap() > 0.0);
        assert_eq!(
            metric_value(
                &text,
                r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert!(text.contains("# TYPE etcd_disk_wal_fsync_duration_seconds histogram"));
        // --metrics extensive: each call's duration too.
        assert_eq!(
            metric_value(
                &text,
                r#"grpc_server_handling_seconds_count{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#
            ),
            Some(1.0)
        );
    }
    // Nothing stays pending once the member is idle.
    let url = format!("{}/metrics", c.members[0].client_url());
    eventually(Duration::from_secs(20), "no pending proposal", || {
        let (_, text) = curl(&[&url]);
        (metric_value(&text, "etcd_server_proposals_pending") == Some(0.0)).then_some(())
    });

    // A proposal applied with an error (no such lease) is not a failed one.
    let failed = |c: &Cluster| {
        let (_, text) = curl(&[&format!("{}/metrics", c.members[0].client_url())]);
        metric_value(&text, "etcd_server_proposals_failed_total").unwrap()
    };
    let before = failed(&c);
    let revoke = c.etcdctl(&["lease", "revoke", "123"]);
    assert!(
        revoke.stderr.contains("requested lease not found"),
        "{revoke:?}"
    );
    assert_eq!(failed(&c), before);

    // The metrics listener serves /health too, but not the client API.
    let (code, body) = curl(&[&format!("http://127.0.0.1:{metrics_port}/health")]);
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true"}"#));
    let (code, body) = curl(&[&format!("http://127.0.0.1:{metrics_port}/readyz")]);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _) = curl(&[&format!("http://127.0.0.1:{metrics_port}/version")]);
    assert_eq!(code, 404);
}

#[test]
fn peer_round_trip_times_and_traffic_are_measured_per_peer() {
    if skip_without_curl() {
        return;
    }
    let c = Cluster::start(2, &[]);
    let peer_id = format!("{:x}", c.members[1].id());
    let url = format!("{}/metrics", c.members[0].client_url());
    let series = format!(r#"etcd_network_peer_round_trip_time_seconds_count{{To="{peer_id}"}}"#);
    eventually(Duration::from_secs(20), "a peer RTT sample", || {
        let (_, text) = curl(&[&url]);
        metric_value(&text, &series).filter(|n| *n >= 1.0)
    });
    let (_, text) = curl(&[&url]);
    let sent = format!(r#"etcd_network_peer_sent_bytes_total{{To="{peer_id}"}}"#);
    let received = format!(r#"etcd_network_peer_received_bytes_total{{From="{peer_id}"}}"#);
    assert!(metric_value(&text, &sent).unwrap_or(0.0) > 0.0, "{text}");
    assert!(
        metric_value(&text, &received).unwrap_or(0.0) > 0.0,
        "{text}"
    );
}

#[test]
fn health_reports_a_nospace_alarm_unless_excluded() {
    if skip_without_etcdctl() || skip_without_curl() {
        return;
    }
    // A quota below the empty database's size: the first write raises NOSPACE.
    let mut c = Cluster::start(1, &["--quota-backend-bytes", "1"]);
    let put = c.etcdctl(&["put", "k", "v"]);
    assert!(!put.success());
    assert!(
        put.stderr
            .contains("etcdserver: mvcc: database space exceeded"),
        "{}",
        put.stderr
    );
    let base = c.members[0].client_url();
    let (code, body) = curl(&[&format!("{base}/health")]);
    assert_eq!(code, 503);
    // Through Go's `http.Error`, as etcd answers: a newline after the JSON.
    assert_eq!(
        body,
        "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n"
    );
    let (code, body) = curl(&[&format!("{base}/health?exclude=NOSPACE")]);
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true"}"#));
}

#[test]
fn health_serializable_answers_without_a_leader() {
    if skip_without_curl() {
        return;
    }
    let mut c = Cluster::start(3, &[]);
    let survivor = c.follower();
    for i in 0..3 {
        if i != survivor {
            c.kill9(i);
        }
    }
    let base = c.members[survivor].client_url();
    // While the old leader is still believed in, the read fails instead
    // (`QGET ERROR:...`, as etcd says); then the leader is known lost.
    let code = eventually(Duration::from_secs(20), "RAFT NO LEADER", || {
        let (code, body) = curl(&[&format!("{base}/health")]);
        (body == "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}\n").then_some(code)
    });
    assert_eq!(code, 503);
    let (code, body) = curl(&[&format!("{base}/health?serializable=true")]);
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true"}"#));
}

#[test]
fn systemd_notify_socket_gets_ready_once_the_member_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(2, &[]);
    // Member 0: a filesystem socket; member 1: an abstract one (`@name`).
    let path = dir.path().join("notify.sock");
    let by_path = UnixDatagram::bind(&path).unwrap();
    c.members[0]
        .env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    let name = format!("localcluster-itest-{}-{}", std::process::id(), free_port());
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
    };
    let by_name = UnixDatagram::bind_addr(&addr).unwrap();
    c.members[1]
        .env
        .push(("NOTIFY_SOCKET".into(), format!("@{name}")));
    c.start_all();
    for (i, socket) in [by_path, by_name].iter().enumerate() {
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        // Sent after, never before, the member served (the log line
        // about it follows the datagram).
        let log = eventually(Duration::from_secs(10), "the notification log line", || {
            let log = c.members[i].current_log();
            log.contains("notified systemd of readiness").then_some(log)
        });
        let ready_at = log.find(common::READY).unwrap();
        assert!(log.find("notified systemd of readiness").unwrap() > ready_at);
    }
}

#[test]
fn json_logs_go_to_every_log_output_in_zaps_shape() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("member.log");
    let file_arg = file.display().to_string();
    let outputs = format!("stderr,{file_arg}");
    let c = Cluster::start(1, &["--log-format", "json", "--log-outputs", &outputs]);
    let text = std::fs::read_to_string(&file).unwrap();
    let ready = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .find(|v| v["msg"] == common::READY)
        .unwrap_or_else(|| panic!("no ready line in {text}"));
    assert_eq!(ready["level"], "info");
    assert_eq!(ready["name"], "m0");
    // zap's shape: kebab-case keys, URLs as an array.
    assert_eq!(
        ready["client-urls"],
        serde_json::json!([c.members[0].client_url()])
    );
    assert!(ready["ts"].as_str().unwrap().ends_with('Z'));
    assert!(ready["caller"].as_str().unwrap().contains(".rs:"));
    // stderr (the harness's log) got the same lines.
    assert!(c.members[0]
        .current_log()
        .contains(r#""msg":"ready to serve client requests""#));
}

#[test]
fn unsafe_no_fsync_member_serves_and_keeps_data_across_a_restart() {
    if skip_without_etcdctl() {
        return;
    }
    let mut c = Cluster::start(1, &["--unsafe-no-fsync"]);
    assert!(c.members[0].current_log().contains("--unsafe-no-fsync"));
    c.etcdctl(&["put", "k", "kept"]).ok();
    c.members[0].terminate();
    c.restart(0);
    c.wait_leader();
    assert_eq!(
        c.etcdctl(&["get", "k", "--print-value-only"]).ok().trim(),
        "kept"
    );
}

#[test]
fn example_config_file_in_scripts_is_accepted() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/etcd.yml");
    let cfg = localcluster::MemberConfig::from_yaml_file(&path).unwrap();
    assert_eq!(cfg.name, "m1");
    assert_eq!(cfg.initial_cluster.len(), 3);
    assert_eq!(cfg.log_format, localcluster::config::LogFormat::Json);
    assert_eq!(cfg.listen_metrics_urls.len(), 1);
    assert!(!cfg.unsafe_no_fsync);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/localcluster.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("--config-file /etc/localcluster/etcd.yml"));
}
