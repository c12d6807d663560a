//! A member's Prometheus metrics, under etcd's names so that existing
//! dashboards and alerts work unchanged.
//!
//! Each member owns one [`Metrics`] with its own registry (the embedded cluster
//! runs several members in one process, so nothing is global). The pieces that
//! produce a figure record it where it happens: the Raft node thread counts
//! leader changes, [`crate::disk`] times the log's fsyncs, the MVCC store times
//! its commits, the peer transport times its probes and counts its bytes, the
//! API counts proposals and gRPC calls. Figures that are a state rather than an event (leader known,
//! committed and applied indexes, database size) are sampled when scraped, by
//! the caller of [`Metrics::encode`].
//!
//! Served as Prometheus' text format (version 0.0.4) on `GET /metrics` of the
//! client URLs and of `--listen-metrics-urls`.

use crate::mvcc::{OpCounters, StoreMetrics};

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One member's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `etcd_server_has_leader`: 1 while a leader is known.
    pub has_leader: IntGauge,
    /// `etcd_server_is_leader`: 1 on the leader.
    pub is_leader: IntGauge,
    /// `etcd_server_is_learner`: 1 while this member is a learner.
    pub is_learner: IntGauge,
    /// `etcd_server_health_success` / `etcd_server_health_failures`: `/health` answers.
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    /// `etcd_server_quota_backend_bytes`.
    pub quota_backend_bytes: IntGauge,
    /// `etcd_server_id{server_id="<hex id>"} 1`.
    server_id: IntGaugeVec,
    /// `etcd_server_leader_changes_seen_total`.
    pub leader_changes: IntCounter,
    /// `etcd_server_proposals_committed_total` (a gauge in etcd: the commit index).
    pub proposals_committed: IntGauge,
    /// `etcd_server_proposals_applied_total` (a gauge in etcd: the applied index).
    pub proposals_applied: IntGauge,
    /// `etcd_server_proposals_pending`: proposals waiting for their application.
    pub proposals_pending: IntGauge,
    /// `etcd_server_proposals_failed_total`.
    pub proposals_failed: IntCounter,
    /// `etcd_mvcc_db_total_size_in_bytes`.
    pub db_total_size: IntGauge,
    /// `etcd_debugging_mvcc_db_total_size_in_bytes`: the same figure under the
    /// name etcd 3.4's Grafana dashboard reads.
    pub db_total_size_debugging: IntGauge,
    /// `etcd_mvcc_db_total_size_in_use_in_bytes`.
    pub db_total_size_in_use: IntGauge,
    /// `etcd_debugging_mvcc_current_revision`: the store's revision.
    pub current_revision: IntGauge,
    /// `etcd_debugging_mvcc_compact_revision`: the last compaction's revision.
    pub compact_revision: IntGauge,
    /// `etcd_debugging_mvcc_keys_total`: how many keys exist.
    pub keys_total: IntGauge,
    /// `etcd_mvcc_range_total`, `etcd_mvcc_put_total`,
    /// `etcd_mvcc_delete_total` and `etcd_mvcc_txn_total`, counted by the
    /// store (see [`OpCounters`]).
    pub mvcc_ops: OpCounters,
    /// `etcd_cluster_version{cluster_version="3.5"} 1`, once it is decided.
    cluster_version: IntGaugeVec,
    /// `etcd_network_client_grpc_received_bytes_total`.
    pub client_grpc_received: IntCounter,
    /// `etcd_network_client_grpc_sent_bytes_total`.
    pub client_grpc_sent: IntCounter,
    /// `etcd_disk_wal_fsync_duration_seconds`: fsyncs of the Raft log.
    pub wal_fsync: Histogram,
    /// `etcd_disk_backend_commit_duration_seconds`: commits of the MVCC store.
    pub backend_commit: Histogram,
    /// `etcd_network_peer_round_trip_time_seconds{To="<peer id>"}`.
    pub peer_rtt: HistogramVec,
    /// `etcd_network_peer_sent_bytes_total{To="<peer id>"}`.
    pub peer_sent: IntCounterVec,
    /// `etcd_network_peer_received_bytes_total{From="<peer id>"}`.
    pub peer_received: IntCounterVec,
    /// `grpc_server_started_total{grpc_type,grpc_service,grpc_method}`.
    pub grpc_started: IntCounterVec,
    /// `grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`.
    pub grpc_handled: IntCounterVec,
    /// `grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}`,
    /// with `--metrics extensive` only (as in etcd).
    pub grpc_handling: Option<HistogramVec>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh set of metrics in a registry of its own. `server_version` is
    /// reported as `etcd_server_version{server_version=...} 1`; `extensive`
    /// (`--metrics extensive`) adds the gRPC handling-time histograms.
    pub fn new(server_version: &str, extensive: bool) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let labelled =
            |name: &str, help: &str, label: &str| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let histogram = |name: &str, help: &str| -> Result<Histogram, prometheus::Error> {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(exponential_buckets(0.001, 2.0, 14)?),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let has_leader = gauge(
            "etcd_server_has_leader",
            "1 while this member knows a leader, else 0.",
        )?;
        let is_leader = gauge(
            "etcd_server_is_leader",
            "1 while this member is the leader, else 0.",
        )?;
        let is_learner = gauge(
            "etcd_server_is_learner",
            "1 while this member is a learner, else 0.",
        )?;
        let health_success = counter("etcd_server_health_success", "Healthy answers of /health.")?;
        let health_failures = counter(
            "etcd_server_health_failures",
            "Unhealthy answers of /health.",
        )?;
        let quota_backend_bytes = gauge(
            "etcd_server_quota_backend_bytes",
            "The backend quota in bytes (--quota-backend-bytes).",
        )?;
        let server_id = labelled(
            "etcd_server_id",
            "1, labelled with this member's ID in hex.",
            "server_id",
        )?;
        let leader_changes = counter(
            "etcd_server_leader_changes_seen_total",
            "New leaders this member has seen.",
        )?;
        let proposals_committed = gauge(
            "etcd_server_proposals_committed_total",
            "Raft log index committed (proposals committed).",
        )?;
        let proposals_applied = gauge(
            "etcd_server_proposals_applied_total",
            "Raft log index applied (proposals applied).",
        )?;
        let proposals_pending = gauge(
            "etcd_server_proposals_pending",
            "Proposals waiting for their result.",
        )?;
        let proposals_failed = counter(
            "etcd_server_proposals_failed_total",
            "Proposals refused by Raft, stopped or timed out.",
        )?;
        let db_total_size = gauge(
            "etcd_mvcc_db_total_size_in_bytes",
            "Bytes the database files take on disk.",
        )?;
        let db_total_size_debugging = gauge(
            "etcd_debugging_mvcc_db_total_size_in_bytes",
            "Bytes the database files take on disk.",
        )?;
        let db_total_size_in_use = gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Bytes of the database in use.",
        )?;
        let client_grpc_received = counter(
            "etcd_network_client_grpc_received_bytes_total",
            "Bytes received from gRPC clients.",
        )?;
        let client_grpc_sent = counter(
            "etcd_network_client_grpc_sent_bytes_total",
            "Bytes sent to gRPC clients.",
        )?;
        let wal_fsync = histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "Duration of the Raft log's fsyncs.",
        )?;
        let backend_commit = histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "Duration of the key-value store's commits.",
        )?;
        let peer_rtt = HistogramVec::new(
            HistogramOpts::new(
                "etcd_network_peer_round_trip_time_seconds",
                "Round trip of a probe to each peer.",
            )
            .buckets(exponential_buckets(0.0001, 2.0, 14)?),
            &["To"],
        )?;
        registry.register(Box::new(peer_rtt.clone()))?;
        let peer_sent = IntCounterVec::new(
            Opts::new(
                "etcd_network_peer_sent_bytes_total",
                "Bytes of Raft messages sent to each peer.",
            ),
            &["To"],
        )?;
        registry.register(Box::new(peer_sent.clone()))?;
        let peer_received = IntCounterVec::new(
            Opts::new(
                "etcd_network_peer_received_bytes_total",
                "Bytes of Raft messages received from each peer.",
            ),
            &["From"],
        )?;
        registry.register(Box::new(peer_received.clone()))?;
        let grpc_started = IntCounterVec::new(
            Opts::new("grpc_server_started_total", "gRPC calls started."),
            &["grpc_type", "grpc_service", "grpc_method"],
        )?;
        registry.register(Box::new(grpc_started.clone()))?;
        let grpc_handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "gRPC calls finished, by status code.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        registry.register(Box::new(grpc_handled.clone()))?;
        let grpc_handling = if extensive {
            let h = HistogramVec::new(
                HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "Time from a gRPC call's arrival to its status.",
                ),
                &["grpc_type", "grpc_service", "grpc_method"],
            )?;
            registry.register(Box::new(h.clone()))?;
            Some(h)
        } else {
            None
        };
        let current_revision = gauge(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of the store.",
        )?;
        let compact_revision = gauge(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction of the store.",
        )?;
        let keys_total = gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.")?;
        let mvcc_ops = OpCounters {
            ranges: counter(
                "etcd_mvcc_range_total",
                "Total number of ranges seen by this member.",
            )?,
            puts: counter(
                "etcd_mvcc_put_total",
                "Total number of puts seen by this member.",
            )?,
            deletes: counter(
                "etcd_mvcc_delete_total",
                "Total number of deletes seen by this member.",
            )?,
            txns: counter(
                "etcd_mvcc_txn_total",
                "Total number of txns seen by this member.",
            )?,
        };
        let cluster_version = labelled(
            "etcd_cluster_version",
            "1, labelled with the cluster's version (major.minor).",
            "cluster_version",
        )?;
        labelled(
            "etcd_server_version",
            "1, labelled with the API version this member serves.",
            "server_version",
        )?
        .with_label_values(&[server_version])
        .set(1);
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            has_leader,
            is_leader,
            is_learner,
            health_success,
            health_failures,
            quota_backend_bytes,
            server_id,
            leader_changes,
            proposals_committed,
            proposals_applied,
            proposals_pending,
            proposals_failed,
            db_total_size,
            db_total_size_debugging,
            db_total_size_in_use,
            current_revision,
            compact_revision,
            keys_total,
            mvcc_ops,
            cluster_version,
            client_grpc_received,
            client_grpc_sent,
            wal_fsync,
            backend_commit,
            peer_rtt,
            peer_sent,
            peer_received,
            grpc_started,
            grpc_handled,
            grpc_handling,
        })
    }

    /// What the MVCC store records: its commits' durations and its counts.
    pub fn store_metrics(&self) -> StoreMetrics {
        StoreMetrics {
            commit_seconds: Some(self.backend_commit.clone()),
            ops: Some(self.mvcc_ops.clone()),
        }
    }

    /// Records who this member is and its quota, once known.
    pub fn set_member(&self, member_id: u64, quota_bytes: u64) {
        self.server_id
            .with_label_values(&[&format!("{member_id:x}")])
            .set(1);
        self.quota_backend_bytes
            .set(i64::try_from(quota_bytes).unwrap_or(i64::MAX));
    }

    /// Records the cluster version (`3.5.0` is labelled `3.5`), as etcd does
    /// once its leader decided it; empty while undecided.
    pub fn set_cluster_version(&self, version: &str) {
        let major_minor: Vec<&str> = version.split('.').take(2).collect();
        if major_minor.len() == 2 {
            self.cluster_version.reset();
            self.cluster_version
                .with_label_values(&[&major_minor.join(".")])
                .set(1);
        }
    }

    /// Everything in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on a malformed family, which the
        // registry never holds; an empty answer is the safe fallback.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_etcds_metric_names() {
        let m = Metrics::new("3.4.0", false).unwrap();
        m.has_leader.set(1);
        m.leader_changes.inc();
        m.set_member(0x8e9e05c52164694d, 2 << 30);
        m.peer_rtt
            .with_label_values(&["8e9e05c52164694d"])
            .observe(0.001);
        m.grpc_handled
            .with_label_values(&["unary", "etcdserverpb.KV", "Range", "OK"])
            .inc();
        let text = m.encode();
        for name in [
            "etcd_server_has_leader 1",
            "etcd_server_is_leader 0",
            "etcd_server_leader_changes_seen_total 1",
            "etcd_server_proposals_committed_total 0",
            "etcd_server_proposals_applied_total 0",
            "etcd_server_proposals_pending 0",
            "etcd_server_proposals_failed_total 0",
            "etcd_mvcc_db_total_size_in_bytes 0",
            "etcd_debugging_mvcc_db_total_size_in_bytes 0",
            "etcd_mvcc_db_total_size_in_use_in_bytes 0",
            "etcd_network_client_grpc_received_bytes_total 0",
            "etcd_network_client_grpc_sent_bytes_total 0",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 0",
            "etcd_disk_backend_commit_duration_seconds_count 0",
            "etcd_network_peer_round_trip_time_seconds_count{To=\"8e9e05c52164694d\"} 1",
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
            "etcd_server_version{server_version=\"3.4.0\"} 1",
            "etcd_server_id{server_id=\"8e9e05c52164694d\"} 1",
            "etcd_server_quota_backend_bytes 2147483648",
            "etcd_server_is_learner 0",
            "etcd_server_health_success 0",
            "etcd_server_health_failures 0",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
    }

    #[test]
    fn extensive_adds_grpc_handling_histograms() {
        let basic = Metrics::new("3.4.0", false).unwrap();
        assert!(basic.grpc_handling.is_none());
        let m = Metrics::new("3.4.0", true).unwrap();
        m.grpc_handling
            .as_ref()
            .unwrap()
            .with_label_values(&["unary", "etcdserverpb.KV", "Put"])
            .observe(0.002);
        assert!(m.encode().contains(
            "grpc_server_handling_seconds_count{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1"
        ));
    }

    #[test]
    fn two_members_in_one_process_have_separate_metrics() {
        let a = Metrics::new("3.4.0", false).unwrap();
        let b = Metrics::new("3.4.0", false).unwrap();
        a.leader_changes.inc();
        assert!(b
            .encode()
            .contains("etcd_server_leader_changes_seen_total 0"));
    }
}
