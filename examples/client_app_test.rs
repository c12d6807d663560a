//! How an application's integration tests use the embedded cluster.
//!
//! ```text
//! cargo run --example client_app_test
//! ```
//!
//! The "application" here is [`Inventory`], a tiny service that keeps stock
//! counts in etcd and reserves items with a compare-and-swap transaction,
//! talking to every endpoint it is given and moving on to the next one when a
//! member fails. `main` runs what would be its integration tests; in a real
//! project each scenario is a test in `tests/`, written the same way:
//!
//! ```ignore
//! #[tokio::test]
//! async fn reservations_survive_a_leader_failover() {
//!     let mut cluster = LocalCluster::builder().members(3).start().await.unwrap();
//!     let app = Inventory::connect(&cluster.client_urls()).unwrap();
//!     app.restock("widget", 10).await.unwrap();
//!     cluster.kill_leader().unwrap();
//!     assert!(app.reserve("widget").await.unwrap());
//!     assert_eq!(app.stock("widget").await.unwrap(), 9);
//! }
//! ```
//!
//! Each test gets its own cluster on free ports with temporary data, so the
//! tests run in parallel and leave nothing behind.

use std::time::{Duration, Instant};

use localcluster::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use localcluster::pb::etcdserverpb::kv_client::KvClient;
use localcluster::pb::etcdserverpb::request_op::Request as Op;
use localcluster::pb::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use localcluster::LocalCluster;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

// ---------------------------------------------------------------------------
// The application under test.
// ---------------------------------------------------------------------------

/// Stock counts in etcd under `stock/<item>`.
struct Inventory {
    endpoints: Vec<Channel>,
    /// How long one operation may keep retrying across endpoints.
    deadline: Duration,
}

impl Inventory {
    fn connect(urls: &[String]) -> Result<Inventory, tonic::transport::Error> {
        let endpoints = urls
            .iter()
            .map(|u| {
                Ok(Endpoint::from_shared(u.clone())?
                    .connect_timeout(Duration::from_millis(200))
                    .timeout(Duration::from_secs(1))
                    .connect_lazy())
            })
            .collect::<Result<_, tonic::transport::Error>>()?;
        Ok(Inventory {
            endpoints,
            deadline: Duration::from_secs(3),
        })
    }

    /// Runs `op` on one endpoint after the other until it succeeds, fails for
    /// good, or the deadline passes. Only errors that mean "not done, try
    /// elsewhere" are retried.
    async fn with_retry<T, F, Fut>(&self, mut op: F) -> Result<T, Status>
    where
        F: FnMut(KvClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let mut i = 0;
        loop {
            let kv = KvClient::new(self.endpoints[i % self.endpoints.len()].clone());
            match op(kv).await {
                Err(e) if e.code() == Code::Unavailable && start.elapsed() < self.deadline => {
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    async fn restock(&self, item: &str, count: u32) -> Result<(), Status> {
        let key = format!("stock/{item}").into_bytes();
        self.with_retry(|mut kv| {
            let req = PutRequest {
                key: key.clone().into(),
                value: count.to_string().into_bytes().into(),
                ..Default::default()
            };
            async move { kv.put(req).await.map(|_| ()) }
        })
        .await
    }

    async fn stock(&self, item: &str) -> Result<u32, Status> {
        Ok(self.read(item).await?.0)
    }

    /// The count and the key's mod revision (0 if absent).
    async fn read(&self, item: &str) -> Result<(u32, i64), Status> {
        let key = format!("stock/{item}").into_bytes();
        let resp = self
            .with_retry(|mut kv| {
                let req = RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                };
                async move { kv.range(req).await }
            })
            .await?
            .into_inner();
        Ok(match resp.kvs.first() {
            Some(kv) => (
                std::str::from_utf8(&kv.value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                kv.mod_revision,
            ),
            None => (0, 0),
        })
    }

    /// Takes one item if any is left; false when out of stock. The decrement
    /// only applies if nobody changed the count since it was read.
    async fn reserve(&self, item: &str) -> Result<bool, Status> {
        let key = format!("stock/{item}").into_bytes();
        loop {
            let (count, rev) = self.read(item).await?;
            if count == 0 {
                return Ok(false);
            }
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: key.clone(),
                    target_union: Some(TargetUnion::ModRevision(rev)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(Op::RequestPut(PutRequest {
                        key: key.clone().into(),
                        value: ((count - 1).to_string().into_bytes()).into(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            let resp = self
                .with_retry(|mut kv| {
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await?
                .into_inner();
            if resp.succeeded {
                return Ok(true);
            }
            // Someone else changed it, or an attempt of ours that timed out
            // landed after all (then one reservation counts twice: the safe
            // direction for stock). Read again.
        }
    }
}

// ---------------------------------------------------------------------------
// Its integration tests.
// ---------------------------------------------------------------------------

const WAIT: Duration = Duration::from_secs(10);

/// Restock, reserve, run out.
async fn reservations_count_down_to_zero() -> anyhow::Result<()> {
    let cluster = LocalCluster::builder().members(3).start().await?;
    let app = Inventory::connect(&cluster.client_urls())?;
    app.restock("widget", 2).await?;
    anyhow::ensure!(app.reserve("widget").await?);
    anyhow::ensure!(app.reserve("widget").await?);
    anyhow::ensure!(!app.reserve("widget").await?, "reserved a third of two");
    anyhow::ensure!(app.stock("widget").await? == 0);
    Ok(())
}

/// The app keeps working when the leader dies, and the data is all there.
async fn reservations_survive_a_leader_failover() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::builder().members(3).start().await?;
    let app = Inventory::connect(&cluster.client_urls())?;
    app.restock("widget", 10).await?;
    let killed = cluster.kill_leader()?;
    anyhow::ensure!(app.reserve("widget").await?);
    anyhow::ensure!(app.stock("widget").await? == 9);
    // The killed member comes back and has the reservation too.
    cluster.start(killed)?;
    cluster.wait_healthy(WAIT).await?;
    cluster.wait_converged(WAIT).await?;
    let only_it = Inventory::connect(&[cluster.member(killed).client_url.clone()])?;
    anyhow::ensure!(only_it.stock("widget").await? == 9);
    Ok(())
}

/// Without a quorum the app reports an error (after its retry deadline)
/// instead of hanging, and recovers once the quorum is back.
async fn without_quorum_the_app_reports_errors_and_recovers() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::builder()
        .members(3)
        .request_timeout(Duration::from_millis(500))
        .start()
        .await?;
    let app = Inventory::connect(&cluster.client_urls())?;
    app.restock("widget", 1).await?;
    let leader = cluster.wait_leader(WAIT).await?;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &f in &followers {
        cluster.kill(f)?;
    }
    let started = Instant::now();
    let result = app.restock("widget", 5).await;
    anyhow::ensure!(result.is_err(), "a write without quorum succeeded");
    println!(
        "      without quorum: {:?} after {:?}",
        result.err().map(|e| e.message().to_string()),
        started.elapsed()
    );
    for &f in &followers {
        cluster.start(f)?;
    }
    cluster.wait_healthy(WAIT).await?;
    app.restock("widget", 5).await?;
    anyhow::ensure!(app.stock("widget").await? == 5);
    Ok(())
}

/// Two app instances racing for the last items never oversell.
async fn concurrent_reservations_never_oversell() -> anyhow::Result<()> {
    let cluster = LocalCluster::builder().members(3).start().await?;
    let urls = cluster.client_urls();
    Inventory::connect(&urls)?.restock("widget", 5).await?;
    let mut tasks = Vec::new();
    for i in 0..3 {
        // Each instance prefers a different member.
        let mut mine = urls.clone();
        mine.rotate_left(i);
        let app = Inventory::connect(&mine)?;
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            while app.reserve("widget").await? {
                got += 1;
            }
            Ok::<u32, Status>(got)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    anyhow::ensure!(total == 5, "reserved {total} of 5");
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut failed = 0;
    macro_rules! run {
        ($test:ident) => {{
            let started = Instant::now();
            match $test().await {
                Ok(()) => println!("ok    {} ({:?})", stringify!($test), started.elapsed()),
                Err(e) => {
                    failed += 1;
                    println!("FAIL  {}: {e:#}", stringify!($test));
                }
            }
        }};
    }
    run!(reservations_count_down_to_zero);
    run!(reservations_survive_a_leader_failover);
    run!(without_quorum_the_app_reports_errors_and_recovers);
    run!(concurrent_reservations_never_oversell);
    if failed > 0 {
        std::process::exit(1);
    }
}
