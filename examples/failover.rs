//! Leader failover, measured: an in-process 3-member cluster, a writer that
//! keeps writing, and the leader killed under it.
//!
//! ```text
//! cargo run --example failover [-- --election-ms 200 --heartbeat-ms 20]
//! ```
//!
//! Prints a timeline: which member led, how long the cluster had no leader,
//! how long until the writer's next acknowledged write, and finally checks
//! that every acknowledged write is readable on every surviving member (a
//! write whose outcome the writer never learned may or may not be there).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use localcluster::pb::etcdserverpb::kv_client::KvClient;
use localcluster::pb::etcdserverpb::{PutRequest, RangeRequest};
use localcluster::LocalCluster;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// What the writer reports.
enum Event {
    Acked {
        seq: u64,
        at: Instant,
        revision: i64,
        member: usize,
    },
    Failed {
        seq: u64,
        at: Instant,
        member: usize,
        error: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut election_ms = 200;
    let mut heartbeat_ms = 20;
    let mut request_timeout_ms = 1000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--election-ms", Some(v)) => election_ms = v,
            ("--heartbeat-ms", Some(v)) => heartbeat_ms = v,
            ("--request-timeout-ms", Some(v)) => request_timeout_ms = v,
            _ => anyhow::bail!(
                "usage: failover [--election-ms N] [--heartbeat-ms N] [--request-timeout-ms N]"
            ),
        }
    }

    let t0 = Instant::now();
    let mut timeline: Vec<(Instant, String)> = Vec::new();
    let mut cluster = LocalCluster::builder()
        .members(3)
        .heartbeat_interval(Duration::from_millis(heartbeat_ms))
        .election_timeout(Duration::from_millis(election_ms))
        .request_timeout(Duration::from_millis(request_timeout_ms))
        .start()
        .await?;
    let old = cluster.wait_leader(Duration::from_secs(5)).await?;
    timeline.push((
        Instant::now(),
        format!(
            "cluster up on {} (heartbeat {heartbeat_ms} ms, election {election_ms} ms, request timeout {request_timeout_ms} ms); leader m{old}",
            cluster.endpoints().join(",")
        ),
    ));

    // The writer: one put at a time, to one member; on an error it moves on
    // to the next member, as an etcd client with several endpoints does.
    let channels: Vec<Channel> = cluster
        .client_urls()
        .into_iter()
        .map(|u| {
            Ok(Endpoint::from_shared(u)?
                .connect_timeout(Duration::from_millis(200))
                .timeout(Duration::from_millis(request_timeout_ms) * 2)
                .connect_lazy())
        })
        .collect::<Result<_, tonic::transport::Error>>()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let writer = tokio::spawn(write_loop(channels, old, tx, stop.clone()));

    // Half a second of writes, then the kill.
    let mut events = Vec::new();
    collect_for(&mut rx, &mut events, Duration::from_millis(500)).await;
    let kill_started = Instant::now();
    let killed = cluster.kill_leader()?;
    let killed_at = Instant::now();
    timeline.push((kill_started, format!("killing leader m{killed}")));
    timeline.push((killed_at, format!("m{killed} is dead")));
    let new = cluster.wait_leader(Duration::from_secs(10)).await?;
    let elected_at = Instant::now();
    timeline.push((
        elected_at,
        format!(
            "new leader m{new}, {} after the kill",
            millis(elected_at - killed_at)
        ),
    ));
    // Until the first write acknowledged after the kill, then a bit more.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events
        .iter()
        .any(|e| matches!(e, Event::Acked { at, .. } if *at > killed_at))
        && Instant::now() < deadline
    {
        collect_for(&mut rx, &mut events, Duration::from_millis(10)).await;
    }
    collect_for(&mut rx, &mut events, Duration::from_millis(300)).await;
    stop.cancel();
    writer.await?;
    while let Ok(ev) = rx.try_recv() {
        events.push(ev);
    }

    // The writes around the kill.
    let mut acked = BTreeMap::new();
    let mut first_after = None;
    let mut failures = 0;
    for ev in events {
        match ev {
            Event::Acked {
                seq,
                at,
                revision,
                member,
            } => {
                acked.insert(seq, revision);
                if at > killed_at && first_after.is_none() {
                    first_after = Some(at);
                    timeline.push((
                        at,
                        format!(
                            "first write acknowledged after the kill: #{seq} via m{member}, {} after the kill",
                            millis(at - killed_at)
                        ),
                    ));
                }
            }
            Event::Failed {
                seq,
                at,
                member,
                error,
            } => {
                failures += 1;
                timeline.push((at, format!("write #{seq} via m{member} failed: {error}")));
            }
        }
    }
    timeline.sort_by_key(|(at, _)| *at);
    for (at, what) in &timeline {
        println!("{:>9}  {what}", millis(at.saturating_duration_since(t0)));
    }
    if first_after.is_none() {
        anyhow::bail!("no write was acknowledged after the kill");
    }
    println!(
        "{:>9}  {} writes acknowledged, {failures} failed (a failed write may or may not have landed)",
        "",
        acked.len()
    );

    // Every acknowledged write is on every surviving member.
    cluster.wait_converged(Duration::from_secs(10)).await?;
    for i in (0..cluster.len()).filter(|&i| cluster.is_running(i)) {
        let mut kv = KvClient::connect(cluster.member(i).client_url.clone()).await?;
        let resp = kv
            .range(RangeRequest {
                key: b"w/".to_vec(),
                range_end: b"w0".to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let present: BTreeMap<u64, i64> = resp
            .kvs
            .iter()
            .filter_map(|kv| {
                let seq = std::str::from_utf8(&kv.key).ok()?.strip_prefix("w/")?;
                Some((seq.parse().ok()?, kv.mod_revision))
            })
            .collect();
        let missing: Vec<u64> = acked
            .iter()
            .filter(|(seq, rev)| present.get(seq) != Some(rev))
            .map(|(seq, _)| *seq)
            .collect();
        if !missing.is_empty() {
            anyhow::bail!("m{i} lacks acknowledged writes {missing:?}");
        }
        println!(
            "{:>9}  m{i}: every acknowledged write is there ({} keys in all)",
            "",
            present.len()
        );
    }
    cluster.shutdown().await?;
    Ok(())
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Moves the writer's events into `events` for `d`.
async fn collect_for(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    events: &mut Vec<Event>,
    d: Duration,
) {
    let until = tokio::time::Instant::now() + d;
    while let Ok(Some(ev)) = tokio::time::timeout_at(until, rx.recv()).await {
        events.push(ev);
    }
}

async fn write_loop(
    channels: Vec<Channel>,
    mut member: usize,
    events: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
) {
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        let mut kv = KvClient::new(channels[member].clone());
        let put = kv.put(PutRequest {
            key: format!("w/{seq:08}").into_bytes().into(),
            value: seq.to_string().into_bytes().into(),
            ..Default::default()
        });
        let result = tokio::select! {
            r = put => r,
            _ = stop.cancelled() => return,
        };
        let at = Instant::now();
        let ev = match result {
            Ok(resp) => Event::Acked {
                seq,
                at,
                revision: resp
                    .into_inner()
                    .header
                    .map(|h| h.revision)
                    .unwrap_or_default(),
                member,
            },
            Err(e) => {
                let ev = Event::Failed {
                    seq,
                    at,
                    member,
                    error: e.message().to_string(),
                };
                member = (member + 1) % channels.len();
                tokio::time::sleep(Duration::from_millis(10)).await;
                ev
            }
        };
        // A failed write is retried under a new number: its outcome is unknown.
        seq += 1;
        if events.send(ev).is_err() {
            return;
        }
    }
}
