//! etcd's HTTP endpoints on the client port: `GET /health`, `GET /version` and
//! `GET /metrics`; [`metrics_router`] serves `/health` and `/metrics` alone on
//! `--listen-metrics-urls`.
//!
//! `/health` answers as etcd does: unhealthy (503) while an alarm is raised
//! (`{"health":"false","reason":"ALARM NOSPACE"}`; `?exclude=NOSPACE` ignores
//! that alarm) or no leader is known (`RAFT NO LEADER`), and otherwise once a
//! linearizable read barrier through Raft succeeds (`QGET ERROR:...` if not).
//! `?serializable=true` skips the leader check and the barrier, so a member
//! cut off from its quorum still reports itself fit for serializable reads.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::Core;
use crate::apply::CLUSTER_VERSION;
use crate::pb::etcdserverpb::AlarmType;

/// Adds the HTTP routes to `router`.
pub fn routes(router: Router, core: Arc<Core>) -> Router {
    metrics_routes(router, core).route("/version", get(version))
}

/// The router of a `--listen-metrics-urls` listener: `/metrics` and `/health`.
pub fn metrics_router(core: Arc<Core>) -> Router {
    metrics_routes(Router::new(), core)
}

fn metrics_routes(router: Router, core: Arc<Core>) -> Router {
    let health_core = core.clone();
    router
        .route(
            "/health",
            get(move |q: Query<HashMap<String, String>>| health(health_core.clone(), q.0)),
        )
        .route("/metrics", get(move || metrics(core.clone())))
}

type Answer = (StatusCode, [(&'static str, &'static str); 1], String);

async fn health(core: Arc<Core>, query: HashMap<String, String>) -> Answer {
    let answer = check_health(&core, query).await;
    if answer.0 == StatusCode::OK {
        core.metrics.health_success.inc();
    } else {
        core.metrics.health_failures.inc();
    }
    answer
}

async fn check_health(core: &Core, query: HashMap<String, String>) -> Answer {
    let json = [("content-type", "application/json")];
    let serializable = query.get("serializable").is_some_and(|v| v == "true");
    let excluded: Vec<&str> = query
        .get("exclude")
        .map(|v| v.split(',').collect())
        .unwrap_or_default();
    let st = core.raft.status();
    if st.paused {
        core.unpaused().await;
    }
    let unhealthy = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            format!(r#"{{"health":"false","reason":"{reason}"}}"#),
        )
    };
    let alarms: Vec<i32> = core
        .alarms
        .lock()
        .map(|a| a.iter().map(|x| x.alarm).collect())
        .unwrap_or_default();
    for alarm in alarms {
        let name = AlarmType::try_from(alarm)
            .map(|a| a.as_str_name())
            .unwrap_or("UNKNOWN");
        if excluded.contains(&name) {
            continue;
        }
        let reason = match name {
            "NOSPACE" | "CORRUPT" => format!("ALARM {name}"),
            _ => "ALARM UNKNOWN".to_owned(),
        };
        return unhealthy(&reason);
    }
    if !serializable && st.leader_id == 0 {
        return unhealthy("RAFT NO LEADER");
    }
    if !serializable {
        if let Err(e) = core.read_barrier().await {
            return unhealthy(&format!("QGET ERROR:{}", e.message()));
        }
    }
    (StatusCode::OK, json, r#"{"health":"true"}"#.to_string())
}

async fn metrics(core: Arc<Core>) -> ([(&'static str, &'static str); 1], String) {
    let m = &core.metrics;
    let st = core.raft.status();
    m.has_leader.set(i64::from(st.leader_id != 0));
    m.is_leader.set(i64::from(st.is_leader));
    m.is_learner
        .set(i64::from(st.learners.contains(&core.member_id)));
    m.proposals_committed.set(st.commit_index as i64);
    m.proposals_applied.set(st.applied_index as i64);
    let size = core.db_size();
    m.db_total_size.set(size);
    m.db_total_size_debugging.set(size);
    let in_use = core.db_size_in_use().await;
    m.db_total_size_in_use.set(in_use.min(size));
    ([("content-type", crate::metrics::CONTENT_TYPE)], m.encode())
}

async fn version() -> ([(&'static str, &'static str); 1], String) {
    let cluster: String = CLUSTER_VERSION
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
        + ".0";
    (
        [("content-type", "application/json")],
        format!(r#"{{"etcdserver":"{CLUSTER_VERSION}","etcdcluster":"{cluster}"}}"#),
    )
}
