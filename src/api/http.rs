//! etcd's HTTP endpoints on the client port: `GET /health` (healthy only while
//! a leader is known, as etcd answers `{"health":"true"}`) and `GET /version`.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::Core;
use crate::apply::CLUSTER_VERSION;

/// Adds the HTTP routes to `router`.
pub fn routes(router: Router, core: Arc<Core>) -> Router {
    let health_core = core.clone();
    router
        .route("/health", get(move || health(health_core.clone())))
        .route("/version", get(version))
}

async fn health(core: Arc<Core>) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let json = [("content-type", "application/json")];
    let st = core.raft.status();
    if st.paused {
        core.unpaused().await;
    }
    if st.leader_id != 0 {
        (StatusCode::OK, json, r#"{"health":"true"}"#.to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            r#"{"health":"false","reason":"RAFT NO LEADER"}"#.to_string(),
        )
    }
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
