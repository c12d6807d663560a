//! The closed-loop load behind `bench put`, `range`, `txn-put` and `mixed`.
//!
//! Each client is a tokio task making unary calls of the KV service on one
//! of the run's connections (see [`super::plan`] for their layout, [`super::conn`] for
//! what a connection is). Clients take request indexes from one
//! shared counter until the run is over: `total` requests taken, or
//! `duration` elapsed. With a `rate`, request `i` is not sent before
//! `start + i / rate`, so the whole run (not each client) keeps to the rate and
//! a slow server shows as latency, not as a lower offered load. Each client
//! keeps its own latency samples; they are merged into one [`Summary`] at the
//! end. A progress bar (requests done, per second) is drawn on standard error
//! when it is a terminal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;

use super::conn::{H2Channel, Link};
use super::keys::{self, KeyGen};
use super::plan::Plan;
use super::summary::Summary;
use super::BenchError;
use crate::pb::etcdserverpb::{
    request_op, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    TxnResponse,
};

/// The methods the benchmarks call.
const PUT: PathAndQuery = PathAndQuery::from_static("/etcdserverpb.KV/Put");
const RANGE: PathAndQuery = PathAndQuery::from_static("/etcdserverpb.KV/Range");
const TXN: PathAndQuery = PathAndQuery::from_static("/etcdserverpb.KV/Txn");

/// The request each benchmark sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// A Put of a key.
    Put,
    /// A Range of one key; `serializable` reads the member's local state.
    Range { serializable: bool },
    /// A Txn with no compare and one Put (etcd benchmark's `txn-put`).
    TxnPut,
    /// A Range with probability `read_ratio`, else a Put.
    Mixed { read_ratio: f64, serializable: bool },
}

impl Op {
    /// The benchmark's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Range { .. } => "range",
            Op::TxnPut => "txn-put",
            Op::Mixed { .. } => "mixed",
        }
    }
}

/// When a run ends, how fast it goes, and what it reads and writes.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Requests in all (`None`: until `duration`).
    pub total: Option<u64>,
    /// Wall time of the run (`None`: until `total`).
    pub duration: Option<Duration>,
    /// Requests per second for the whole run (`None`: as fast as possible).
    pub rate: Option<f64>,
    pub key_size: usize,
    pub val_size: usize,
    pub sequential: bool,
    pub key_space: u64,
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientResult {
    latencies: Vec<Duration>,
    /// Failures by error.
    errors: std::collections::BTreeMap<String, u64>,
}

/// What all clients share.
struct Shared {
    op: Op,
    spec: LoadSpec,
    value: Vec<u8>,
    next: AtomicU64,
    done: AtomicU64,
    start: Instant,
}

impl Shared {
    /// Whether the run's duration is over.
    fn over(&self) -> bool {
        self.spec
            .duration
            .is_some_and(|d| self.start.elapsed() >= d)
    }

    /// The index of the next request, or `None` once the run is over.
    fn take(&self) -> Option<u64> {
        if self.over() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match self.spec.total {
            Some(total) if i >= total => return None,
            _ => {}
        }
        // A request whose turn comes after the end of a timed run is not
        // waited for: with few requests per second and many clients, the
        // last turns would lengthen the run by clients/rate seconds.
        if let (Some(d), Some(at)) = (self.spec.duration, self.send_time(i)) {
            if at >= self.start + d {
                return None;
            }
        }
        Some(i)
    }

    /// When request `i` may be sent.
    fn send_time(&self, i: u64) -> Option<Instant> {
        self.spec
            .rate
            .map(|r| self.start + Duration::from_secs_f64(i as f64 / r))
    }
}

/// Runs `op` over `endpoints` (URLs) laid out by `plan`.
pub async fn run(
    endpoints: &[String],
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    plan: &Plan,
    timeout: Duration,
    op: Op,
    spec: &LoadSpec,
) -> Result<Summary, BenchError> {
    // Owned here: the connections close when the run returns.
    let mut links = Vec::with_capacity(plan.conn_endpoints.len());
    for &e in &plan.conn_endpoints {
        let endpoint = &endpoints[e];
        let url = crate::client::url_of(endpoint);
        let link = Link::connect(&url, timeout, tls.clone())
            .await
            .map_err(|source| BenchError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        links.push(Arc::new(link));
    }

    let shared = Arc::new(Shared {
        op,
        spec: spec.clone(),
        value: keys::value(spec.val_size),
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        start: Instant::now(),
    });
    let progress = progress_bar(spec);
    let ticker = {
        let shared = Arc::clone(&shared);
        let bar = progress.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(shared.done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for &c in &plan.client_conns {
        tasks.spawn(client(Arc::clone(&links[c]), Arc::clone(&shared)));
    }

    let mut latencies = Vec::with_capacity(spec.total.unwrap_or(0) as usize);
    let mut errors = std::collections::BTreeMap::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(r) => {
                latencies.extend(r.latencies);
                for (error, count) in r.errors {
                    *errors.entry(error).or_insert(0) += count;
                }
            }
            Err(e) => failure = Some(BenchError::Client(e.to_string())),
        }
    }
    let elapsed = shared.start.elapsed();
    ticker.abort();
    progress.finish_and_clear();
    match failure {
        Some(e) => Err(e),
        None => Ok(Summary::new(latencies, errors, elapsed)),
    }
}

/// A bar of requests done (of `total`, when known), hidden unless standard
/// error is a terminal.
fn progress_bar(spec: &LoadSpec) -> indicatif::ProgressBar {
    let bar = match spec.total {
        Some(total) if spec.duration.is_none() => indicatif::ProgressBar::new(total),
        _ => indicatif::ProgressBar::new_spinner(),
    };
    let template = if spec.total.is_some() && spec.duration.is_none() {
        "{bar:40} {pos}/{len} requests, {per_sec}, {elapsed_precise}"
    } else {
        "{spinner} {pos} requests, {per_sec}, {elapsed_precise}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

async fn client(link: Arc<Link>, shared: Arc<Shared>) -> ClientResult {
    let (mut channel, mut epoch) = link.channel().await;
    let spec = &shared.spec;
    let mut keys = KeyGen::new(spec.key_size, spec.key_space, spec.sequential);
    // The client's own copy of the value: each put shares it (a reference
    // count of this client's, not one all clients contend for).
    let value = Bytes::copy_from_slice(&shared.value);
    let mut out = ClientResult::default();
    while let Some(i) = shared.take() {
        if let Some(at) = shared.send_time(i) {
            tokio::time::sleep_until(at.into()).await;
            if shared.over() {
                break;
            }
        }
        let key = keys.key(i);
        let t = Instant::now();
        let result = match shared.op {
            Op::Put => call::<PutResponse>(&mut channel, &PUT, &put(key, &value)).await,
            Op::Range { serializable } => {
                call::<RangeResponse>(&mut channel, &RANGE, &range(key, serializable)).await
            }
            Op::TxnPut => call::<TxnResponse>(&mut channel, &TXN, &txn_put(key, &value)).await,
            Op::Mixed {
                read_ratio,
                serializable,
            } => {
                if rand::random::<f64>() < read_ratio {
                    call::<RangeResponse>(&mut channel, &RANGE, &range(key, serializable)).await
                } else {
                    call::<PutResponse>(&mut channel, &PUT, &put(key, &value)).await
                }
            }
        };
        match result {
            Ok(()) => out.latencies.push(t.elapsed()),
            Err(status) => {
                let error = format!("{:?}: {}", status.code(), status.message());
                *out.errors.entry(error).or_insert(0) += 1;
                // The connection may have ended: go on on a new one.
                if let Some((newer_channel, newer)) = link.replace(epoch).await {
                    channel = newer_channel;
                    epoch = newer;
                }
            }
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    out
}

/// One call of the method at `path`, its answer of type `A` decoded and
/// dropped.
async fn call<A: prost::Message + Default>(
    channel: &mut H2Channel,
    path: &PathAndQuery,
    request: &impl prost::Message,
) -> Result<(), tonic::Status> {
    channel.unary::<_, A>(path, request).await.map(drop)
}

fn put(key: Vec<u8>, value: &Bytes) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.clone(),
        ..Default::default()
    }
}

fn range(key: Vec<u8>, serializable: bool) -> RangeRequest {
    RangeRequest {
        key,
        serializable,
        ..Default::default()
    }
}

fn txn_put(key: Vec<u8>, value: &Bytes) -> TxnRequest {
    TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put(key, value))),
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(total: Option<u64>, duration: Option<Duration>, rate: Option<f64>) -> Shared {
        Shared {
            op: Op::Put,
            spec: LoadSpec {
                total,
                duration,
                rate,
                key_size: 8,
                val_size: 8,
                sequential: true,
                key_space: 10,
            },
            value: Vec::new(),
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    #[test]
    fn a_run_ends_after_total_requests() {
        let s = shared(Some(3), None, None);
        let taken: Vec<u64> = std::iter::from_fn(|| s.take()).collect();
        assert_eq!(taken, vec![0, 1, 2]);
    }

    #[test]
    fn a_timed_run_ends_when_its_duration_is_over() {
        let s = shared(None, Some(Duration::ZERO), None);
        assert_eq!(s.take(), None);
        let s = shared(None, Some(Duration::from_secs(3600)), None);
        assert_eq!(s.take(), Some(0));
    }

    #[test]
    fn a_timed_run_at_a_rate_takes_no_request_whose_turn_comes_after_its_end() {
        let s = shared(None, Some(Duration::from_secs(1)), Some(5.0));
        let taken: Vec<u64> = std::iter::from_fn(|| s.take()).collect();
        assert_eq!(taken, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn the_rate_spaces_requests_over_the_whole_run() {
        let s = shared(Some(10), None, Some(4.0));
        assert_eq!(s.send_time(0), Some(s.start));
        assert_eq!(s.send_time(6), Some(s.start + Duration::from_millis(1500)));
        assert_eq!(shared(Some(1), None, None).send_time(5), None);
    }
}
