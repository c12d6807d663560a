//! etcd's HTTP endpoints on the client port: `GET /health`, `/livez`,
//! `/readyz`, `/version` and `/metrics`; [`metrics_router`] serves them but
//! `/version` on `--listen-metrics-urls`.
//!
//! `/health` answers as etcd does: unhealthy (503) while an alarm is raised
//! (`{"health":"false","reason":"ALARM NOSPACE"}`; `?exclude=NOSPACE` ignores
//! that alarm) or no leader is known (`RAFT NO LEADER`), and otherwise once a
//! linearizable read barrier through Raft succeeds (`QGET ERROR:...` if not).
//! `?serializable=true` skips the leader check and the barrier, so a member
//! cut off from its quorum still reports itself fit for serializable reads.
//! `/health` and `/version` answer GET alone ([`get_only`]), as etcd's do.
//!
//! `/livez` and `/readyz` are etcd's Kubernetes-style probes ([`run_probe`]). A
//! path nobody serves gets [`not_found`]: 404 for HTTP, as etcd's mux and
//! gateway answer, so a probe of a path the member lacks fails.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::{get, MethodRouter};
use axum::Router;

use super::Core;
use crate::apply::CLUSTER_VERSION;
use crate::pb::etcdserverpb::AlarmType;

/// Adds the HTTP routes to `router`, and [`not_found`] for every other path.
pub fn routes(router: Router, core: Arc<Core>) -> Router {
    metrics_routes(router, core)
        .route("/version", get_only(get(version)))
        .fallback(not_found)
}

/// `route` for GET alone, as etcd's `/health` and `/version` are: any other
/// method, HEAD included, gets Go's 405 (`Allow: GET`, `Method Not Allowed`).
fn get_only(route: MethodRouter) -> MethodRouter {
    route.head(method_not_allowed).fallback(method_not_allowed)
}

async fn method_not_allowed() -> impl axum::response::IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [
            ("allow", "GET"),
            ("content-type", "text/plain; charset=utf-8"),
            ("x-content-type-options", "nosniff"),
        ],
        "Method Not Allowed\n",
    )
}

/// The router of a `--listen-metrics-urls` listener: `/metrics`, `/health`,
/// `/livez` and `/readyz`.
pub fn metrics_router(core: Arc<Core>) -> Router {
    metrics_routes(Router::new(), core).fallback(not_found)
}

/// The answer to a path no route serves, as etcd gives it: a gRPC call (by
/// its content type) fails with `Unimplemented` (grpc-go's `unknown service`),
/// a path under the gateway's prefixes gets grpc-gateway's 404 `Not Found`,
/// and anything else Go's 404 `404 page not found`.
pub async fn not_found(request: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let path = request.uri().path();
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        return tonic::Status::unimplemented(format!("unknown service {service}")).into_http();
    }
    let gateway = ["/v3/", "/v3beta/"].iter().any(|p| path.starts_with(p));
    let body = if gateway {
        "Not Found\n"
    } else {
        "404 page not found\n"
    };
    (
        StatusCode::NOT_FOUND,
        [
            ("content-type", "text/plain; charset=utf-8"),
            ("x-content-type-options", "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn metrics_routes(router: Router, core: Arc<Core>) -> Router {
    let health_core = core.clone();
    probe_routes(router, &core)
        .route(
            "/health",
            get_only(get(move |q: Query<HashMap<String, String>>| {
                health(health_core.clone(), q.0)
            })),
        )
        .route("/metrics", get(move || metrics(core.clone())))
}

/// A `/health` answer: the status and etcd's JSON.
type Answer = (StatusCode, String);

/// `GET /health`. etcd writes its JSON without a content type (Go's
/// sniffing names it `text/plain`), and an unhealthy one through Go's
/// `http.Error` (a newline after it, and `nosniff`).
async fn health(core: Arc<Core>, query: HashMap<String, String>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let (status, json) = check_health(&core, query).await;
    let text = ("content-type", "text/plain; charset=utf-8");
    if status == StatusCode::OK {
        core.metrics.health_success.inc();
        (status, [text], json).into_response()
    } else {
        core.metrics.health_failures.inc();
        let nosniff = ("x-content-type-options", "nosniff");
        (status, [text, nosniff], json + "\n").into_response()
    }
}

async fn check_health(core: &Core, query: HashMap<String, String>) -> Answer {
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
    (StatusCode::OK, r#"{"health":"true"}"#.to_string())
}

/// etcd's Kubernetes-style probes (etcd 3.5.11 and 3.4.29 on; kubeadm
/// points its liveness and readiness probes at them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// `/livez`: the member serves a serializable read.
    Live,
    /// `/readyz`: no CORRUPT alarm, reads go through, linearizable ones
    /// through Raft, and the member is a voter.
    Ready,
}

impl Probe {
    fn checks(self) -> &'static [&'static str] {
        match self {
            Probe::Live => &["serializable_read"],
            Probe::Ready => &[
                "data_corruption",
                "serializable_read",
                "linearizable_read",
                "non_learner",
            ],
        }
    }
}

/// Adds `/livez` and `/readyz`, and a path per check (`/readyz/linearizable_read`).
fn probe_routes(mut router: Router, core: &Arc<Core>) -> Router {
    for (probe, root) in [(Probe::Live, "/livez"), (Probe::Ready, "/readyz")] {
        let all = core.clone();
        router = router.route(
            root,
            get(move |q: Query<Vec<(String, String)>>| {
                let all = all.clone();
                async move {
                    let excluded =
                        |check: &&str| q.0.iter().any(|(k, v)| k == "exclude" && v == check);
                    let checks = probe.checks().iter().filter(|c| !excluded(c)).copied();
                    run_probe(&all, checks, &q.0).await
                }
            }),
        );
        for &check in probe.checks() {
            let one = core.clone();
            router = router.route(
                &format!("{root}/{check}"),
                get(move |q: Query<Vec<(String, String)>>| async move {
                    run_probe(&one, [check].into_iter(), &q.0).await
                }),
            );
        }
    }
    router
}

/// Runs `checks` and answers as etcd does: `ok` when all pass (after a
/// `[+]check ok` line each with `?verbose`); when one fails, 503 with a line
/// per check, `[-]check failed: why` for the failed ones.
async fn run_probe(
    core: &Core,
    checks: impl Iterator<Item = &'static str>,
    query: &[(String, String)],
) -> (StatusCode, [(&'static str, &'static str); 2], String) {
    let headers = [
        ("content-type", "text/plain; charset=utf-8"),
        ("x-content-type-options", "nosniff"),
    ];
    if core.raft.status().paused {
        core.unpaused().await;
    }
    let mut lines = String::new();
    let mut failed = false;
    for check in checks {
        match run_check(core, check).await {
            Ok(()) => lines.push_str(&format!("[+]{check} ok\n")),
            Err(why) => {
                failed = true;
                lines.push_str(&format!("[-]{check} failed: {why}\n"));
            }
        }
    }
    if failed {
        // Go's http.Error ends the text with one more newline.
        lines.push('\n');
        return (StatusCode::SERVICE_UNAVAILABLE, headers, lines);
    }
    if !query.iter().any(|(k, _)| k == "verbose") {
        lines.clear();
    }
    lines.push_str("ok\n");
    (StatusCode::OK, headers, lines)
}

/// One check of [`run_probe`], with etcd's reasons.
async fn run_check(core: &Core, check: &str) -> Result<(), String> {
    match check {
        "data_corruption" => {
            let corrupt = core
                .alarms
                .lock()
                .is_ok_and(|alarms| alarms.iter().any(|a| a.alarm == AlarmType::Corrupt as i32));
            match corrupt {
                true => Err("alarm activated: CORRUPT".to_owned()),
                false => Ok(()),
            }
        }
        "serializable_read" => {
            let opts = crate::mvcc::RangeOptions {
                limit: 1,
                keys_only: true,
                ..Default::default()
            };
            core.store
                .read()
                .and_then(|view| view.range(&[0], &[0], &opts))
                .map(drop)
                .map_err(|e| super::errors::from_mvcc(e).message().to_owned())
        }
        "linearizable_read" => {
            if core.raft.status().leader_id == 0 {
                return Err(super::errors::no_leader().message().to_owned());
            }
            core.read_barrier()
                .await
                .map_err(|e| e.message().to_owned())
        }
        "non_learner" => match core.is_learner() {
            true => Err("not supported for learner".to_owned()),
            false => Ok(()),
        },
        _ => Ok(()),
    }
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
    m.current_revision.set(core.store.current_revision());
    // etcd's gauge stays 0 until a first compaction.
    m.compact_revision.set(core.store.compact_revision().max(0));
    m.keys_total
        .set(i64::try_from(core.store.live_keys()).unwrap_or(i64::MAX));
    let cluster_version = core.membership.borrow().cluster_version.clone();
    m.set_cluster_version(&cluster_version);
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(path: &str, content_type: &str) -> (StatusCode, http::HeaderMap, String) {
        let request = axum::extract::Request::builder()
            .uri(path)
            .header("content-type", content_type)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = not_found(request).await;
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let body = String::from_utf8(bytes.to_vec()).unwrap();
        (parts.status, parts.headers, body)
    }

    #[tokio::test]
    async fn a_path_nobody_serves_is_404_for_http_and_unimplemented_for_grpc() {
        let (status, _, body) = answer("/readyz", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "404 page not found\n")
        );
        let (status, _, body) = answer("/v3/kv/nope", "application/json").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "Not Found\n")
        );

        // gRPC reports in its trailers-only answer, with HTTP 200.
        let (status, headers, _) = answer("/etcdserverpb.Other/Put", "application/grpc").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["grpc-status"], "12");
        // Percent-encoded, as gRPC carries it.
        assert_eq!(
            headers["grpc-message"],
            "unknown%20service%20etcdserverpb.Other"
        );
    }
}
