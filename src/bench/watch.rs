//! `bench watch`: how fast a cluster fans writes out to many watchers.
//!
//! `watchers` watchers, spread over `streams` Watch streams (each stream on
//! its own gRPC connection, streams spread over the endpoints round-robin),
//! all watch one key prefix. `clients` writers then put `total` keys under
//! that prefix as fast as they can, so every watcher must receive every one of
//! the `total` events: `watchers × total` deliveries in all.
//!
//! Each value starts with the time its put was sent (nanoseconds since the
//! run began), so a watcher measures each delivery's latency, from the send
//! of the put to the arrival of its event, with no shared clock but the
//! process's own. The run ends when every watcher has seen the event of every
//! put that succeeded (a failed put is the writers' error, not a lost
//! delivery), when its stream ends, or when `timeout` passes with nothing new
//! delivered; deliveries still missing then count as errors. The summary
//! counts deliveries, not puts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::keys::KeyGen;
use super::summary::Summary;
use super::BenchError;
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::watch_client::WatchClient;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};

/// The prefix every key of the run shares.
pub const PREFIX: &[u8] = b"\xffbench-watch/";

/// What to measure.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// Puts, hence events per watcher.
    pub total: u64,
    pub watchers: usize,
    pub streams: usize,
    /// Concurrent writers.
    pub writers: usize,
    pub key_size: usize,
    pub val_size: usize,
}

/// Deliveries, with the put throughput alongside.
#[derive(Debug, Clone)]
pub struct WatchOutcome {
    /// Over deliveries: `requests` is `watchers × total`, `rps` events/s.
    pub deliveries: Summary,
    /// Puts per second while writing.
    pub put_rps: f64,
    pub put_errors: u64,
}

/// Runs the benchmark over `endpoints` (URLs).
pub async fn run(
    endpoints: &[String],
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    timeout: Duration,
    spec: &WatchSpec,
) -> Result<WatchOutcome, BenchError> {
    let connect = |e: &String| {
        let e = e.clone();
        let tls = tls.clone();
        async move {
            crate::client::connect_with(&e, timeout, tls)
                .await
                .map_err(|source| BenchError::Connect {
                    endpoint: e.clone(),
                    source: source.into(),
                })
        }
    };
    let start = Instant::now();
    let mut range_end = PREFIX.to_vec();
    if let Some(last) = range_end.last_mut() {
        *last += 1;
    }

    // Open every stream and create every watcher before the first put.
    let streams = spec.streams.clamp(1, spec.watchers.max(1));
    // How many puts succeeded, once the writers are done: what each watcher
    // waits for.
    let (puts_ok_tx, puts_ok) = tokio::sync::watch::channel::<Option<u64>>(None);
    let mut watch_tasks = tokio::task::JoinSet::new();
    for s in 0..streams {
        let channel = connect(&endpoints[s % endpoints.len()]).await?;
        let here = (0..spec.watchers).filter(|w| w % streams == s).count();
        let (tx, rx) = mpsc::channel(here.max(1));
        for _ in 0..here {
            let create = WatchCreateRequest {
                key: PREFIX.to_vec(),
                range_end: range_end.clone(),
                ..Default::default()
            };
            let _ = tx
                .send(WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(create)),
                })
                .await;
        }
        let mut stream = WatchClient::new(channel)
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(|e| BenchError::Client(format!("watch: {e}")))?
            .into_inner();
        // Wait for every watcher of the stream to be created.
        let mut created = 0;
        while created < here {
            match tokio::time::timeout(timeout, stream.message()).await {
                Ok(Ok(Some(r))) if r.created => created += 1,
                Ok(Ok(Some(_))) => {}
                _ => {
                    return Err(BenchError::Client(
                        "watch stream closed while creating".into(),
                    ))
                }
            }
        }
        let here = here as u64;
        let most = here * spec.total;
        let mut puts_ok = puts_ok.clone();
        watch_tasks.spawn(async move {
            let _keep_open = tx;
            let mut latencies = Vec::with_capacity(most as usize);
            loop {
                let expected = (*puts_ok.borrow()).map(|ok| here * ok);
                if expected.is_some_and(|e| latencies.len() as u64 >= e) {
                    break;
                }
                let msg = tokio::select! {
                    m = tokio::time::timeout(timeout, stream.message()) => match m {
                        Ok(Ok(Some(m))) => m,
                        _ => break,
                    },
                    // The writers are done: see whether that was all.
                    changed = puts_ok.changed(), if expected.is_none() => match changed {
                        Ok(()) => continue,
                        Err(_) => break, // the run itself ended
                    },
                };
                let now = start.elapsed();
                for ev in msg.events {
                    let sent = ev
                        .kv
                        .as_ref()
                        .and_then(|kv| kv.value.get(..8))
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                        .unwrap_or(0);
                    latencies.push(now.saturating_sub(Duration::from_nanos(sent)));
                }
            }
            (latencies, here)
        });
    }

    // The writers.
    let next = Arc::new(AtomicU64::new(0));
    let put_start = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..spec.writers.max(1) {
        let channel: Channel = connect(&endpoints[w % endpoints.len()]).await?;
        let next = Arc::clone(&next);
        let spec = spec.clone();
        writers.spawn(async move {
            let mut kv = KvClient::new(channel);
            let mut keys = KeyGen::new(spec.key_size, spec.total, true);
            let mut errors = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= spec.total {
                    return errors;
                }
                let mut key = PREFIX.to_vec();
                key.extend(keys.key(i));
                let mut value = vec![b'v'; spec.val_size.max(8)];
                let sent = start.elapsed().as_nanos() as u64;
                value[..8].copy_from_slice(&sent.to_be_bytes());
                let req = PutRequest {
                    key: key.into(),
                    value: value.into(),
                    ..Default::default()
                };
                if kv.put(req).await.is_err() {
                    errors += 1;
                }
            }
        });
    }
    let mut put_errors = 0;
    while let Some(r) = writers.join_next().await {
        put_errors += r.map_err(|e| BenchError::Client(e.to_string()))?;
    }
    let put_elapsed = put_start.elapsed();
    let puts_ok = spec.total.saturating_sub(put_errors);
    let _ = puts_ok_tx.send(Some(puts_ok));

    let mut latencies = Vec::new();
    let mut missing = 0;
    while let Some(r) = watch_tasks.join_next().await {
        let (l, watchers) = r.map_err(|e| BenchError::Client(e.to_string()))?;
        missing += (watchers * puts_ok).saturating_sub(l.len() as u64);
        latencies.extend(l);
    }
    let elapsed = put_start.elapsed();
    let mut lost = std::collections::BTreeMap::new();
    if missing > 0 {
        lost.insert("the event never arrived".to_string(), missing);
    }
    Ok(WatchOutcome {
        deliveries: Summary::new(latencies, lost, elapsed),
        put_rps: puts_ok as f64 / put_elapsed.as_secs_f64().max(1e-9),
        put_errors,
    })
}
