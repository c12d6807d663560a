//! `bench put`: `total` Put requests from `clients` concurrent clients.
//!
//! Each client is a tokio task with its own `KvClient` over one of the run's
//! connections (see [`super::plan`]). Clients take request indexes from one shared
//! counter until `total` are taken, so the run ends when the last request
//! completes, whichever client it belongs to. Each client keeps its own latency
//! samples; they are merged into one [`Summary`] at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use super::keys::{self, KeyGen};
use super::plan::Plan;
use super::summary::Summary;
use super::BenchError;
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::PutRequest;

/// What to write.
#[derive(Debug, Clone)]
pub struct PutSpec {
    pub total: u64,
    pub key_size: usize,
    pub val_size: usize,
    pub sequential: bool,
    pub key_space: u64,
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientResult {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs the benchmark over `endpoints` (URLs) laid out by `plan`.
pub async fn run(
    endpoints: &[String],
    plan: &Plan,
    timeout: Duration,
    spec: &PutSpec,
) -> Result<Summary, BenchError> {
    let mut channels: Vec<Channel> = Vec::with_capacity(plan.conn_endpoints.len());
    for &e in &plan.conn_endpoints {
        let endpoint = &endpoints[e];
        let channel = crate::client::connect(endpoint, timeout)
            .await
            .map_err(|source| BenchError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        channels.push(channel);
    }

    let value = Arc::new(keys::value(spec.val_size));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for &c in &plan.client_conns {
        let kv = KvClient::new(channels[c].clone());
        let value = Arc::clone(&value);
        let next = Arc::clone(&next);
        let spec = spec.clone();
        tasks.spawn(client(kv, value, next, spec));
    }

    let mut latencies = Vec::with_capacity(spec.total as usize);
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let r = joined.map_err(|e| BenchError::Client(e.to_string()))?;
        latencies.extend(r.latencies);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let elapsed = start.elapsed();
    Ok(Summary::new(latencies, errors, first_error, elapsed))
}

async fn client(
    mut kv: KvClient<Channel>,
    value: Arc<Vec<u8>>,
    next: Arc<AtomicU64>,
    spec: PutSpec,
) -> ClientResult {
    let mut keys = KeyGen::new(spec.key_size, spec.key_space, spec.sequential);
    let mut out = ClientResult::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= spec.total {
            return out;
        }
        let req = PutRequest {
            key: keys.key(i),
            value: value.as_ref().clone(),
            ..Default::default()
        };
        let t = Instant::now();
        match kv.put(req).await {
            Ok(_) => out.latencies.push(t.elapsed()),
            Err(status) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!("{:?}: {}", status.code(), status.message()));
                }
            }
        }
    }
}
