//! The MVCC apply path, measured without Raft or the network: puts in batches,
//! then one delete of every key, first straight on a [`Store`], then through
//! the state machine ([`Applier::apply`] with encoded Raft entries).
//!
//! ```text
//! cargo run --release --example mvcc_bench [-- KEYS [BATCH [VALUE_BYTES]]]
//! ```
//!
//! Defaults: 100000 keys of 8 bytes (big-endian numbers, as `bench put
//! --sequential-keys`), batches of 100 requests, 256-byte values. Each batch
//! waits uncommitted in the store's pending redb transaction (as the applier's
//! batches do between flushes); the delete is committed with fsync. Prints
//! wall-clock figures only; it checks nothing but that the delete removed
//! every key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use localcluster::apply::Applier;
use localcluster::auth::{Auth, AuthOptions};
use localcluster::mvcc::{RangeOptions, Store};
use localcluster::pb::etcdserverpb::{DeleteRangeRequest, PutRequest};
use localcluster::pb::lcraftpb::{request::Op, Request};
use localcluster::raft::StateMachine as _;
use localcluster::wait::Waiters;
use prost::Message as _;
use raft::prelude::{ConfState, Entry, EntryType};

fn key(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

/// CPU time (user + system) of the calling thread: unlike wall time it
/// hardly changes when other processes compete for the cores.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is valid on Linux.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Wall and CPU time since it was started.
struct Timer(Instant, Duration);

impl Timer {
    fn start() -> Self {
        Timer(Instant::now(), thread_cpu())
    }

    fn report(&self, n: u64) -> String {
        let wall = self.0.elapsed();
        let cpu = thread_cpu().saturating_sub(self.1);
        format!(
            "wall {:>7.1} ms  cpu {:>7.1} ms  ({:.2} us/key cpu)",
            wall.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e6 / n.max(1) as f64
        )
    }
}

fn count(store: &Store) -> i64 {
    let opts = RangeOptions {
        count_only: true,
        ..Default::default()
    };
    store
        .read()
        .and_then(|v| v.range(b"\0", b"\0", &opts))
        .map(|r| r.count)
        .unwrap_or(-1)
}

/// Puts and deletes through the store's own API.
fn bench_store(keys: u64, batch: u64, value: &[u8]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("kv.redb"))?;
    let start = Timer::start();
    let mut n = 0;
    while n < keys {
        let mut b = store.batch()?;
        b.set_durable(false);
        for _ in 0..batch.min(keys - n) {
            let mut rt = b.txn()?;
            rt.put(&key(n), value, 0, false, false)?;
            let _ = rt.end();
            n += 1;
        }
        b.set_meta("applied", &n.to_be_bytes())?;
        b.commit()?;
    }
    store.flush()?;
    println!("store   put {keys} keys         {}", start.report(keys));

    let start = Timer::start();
    let mut b = store.batch()?;
    let mut rt = b.txn()?;
    let deleted = rt.delete_range(b"\0", b"\0")?;
    let (_, events) = rt.end();
    b.commit()?;
    println!(
        "store   delete {} keys      {}  ({} events)",
        deleted.len(),
        start.report(keys),
        events.len()
    );
    anyhow::ensure!(count(&store) == 0, "keys left after the delete");
    Ok(())
}

fn entry(index: u64, op: Op) -> Entry {
    let req = Request {
        id: index,
        op: Some(op),
        auth_info: None,
    };
    let mut e = Entry::default();
    e.set_entry_type(EntryType::EntryNormal);
    e.index = index;
    e.term = 2;
    e.data = req.encode_to_vec().into();
    e
}

/// Puts and deletes as committed Raft entries through the state machine.
fn bench_applier(keys: u64, batch: u64, value: &[u8]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(dir.path().join("kv.redb"))?);
    let auth = Arc::new(Auth::new(&AuthOptions::default()));
    let (mut applier, _membership) =
        Applier::open(store.clone(), 1, Arc::new(Waiters::default()), auth)?;
    let mut no_conf = |_: &raft::prelude::ConfChangeV2| Ok(ConfState::default());
    let mut index = 1;
    let start = Timer::start();
    let mut n = 0;
    while n < keys {
        let mut entries = Vec::new();
        for _ in 0..batch.min(keys - n) {
            index += 1;
            let put = PutRequest {
                key: key(n).into(),
                value: value.to_vec().into(),
                ..Default::default()
            };
            entries.push(entry(index, Op::Put(put)));
            n += 1;
        }
        applier.apply(entries, &mut no_conf)?;
        applier.flush(false)?;
    }
    applier.flush(true)?;
    println!("applier put {keys} keys         {}", start.report(keys));

    for prev_kv in [false, true] {
        if prev_kv {
            // Put everything back for the second delete.
            let mut n = 0;
            while n < keys {
                let mut entries = Vec::new();
                for _ in 0..batch.min(keys - n) {
                    index += 1;
                    let put = PutRequest {
                        key: key(n).into(),
                        value: value.to_vec().into(),
                        ..Default::default()
                    };
                    entries.push(entry(index, Op::Put(put)));
                    n += 1;
                }
                applier.apply(entries, &mut no_conf)?;
            }
            applier.flush(true)?;
        }
        index += 1;
        let del = DeleteRangeRequest {
            key: vec![0],
            range_end: vec![0],
            prev_kv,
        };
        let start = Timer::start();
        applier.apply(vec![entry(index, Op::DeleteRange(del))], &mut no_conf)?;
        applier.flush(true)?;
        println!(
            "applier delete {keys} keys {:<5} {}",
            if prev_kv { "+prev" } else { "" },
            start.report(keys)
        );
        anyhow::ensure!(count(&store) == 0, "keys left after the delete");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let keys = args.first().copied().unwrap_or(100_000);
    let batch = args.get(1).copied().unwrap_or(100).max(1);
    let value = vec![b'v'; args.get(2).copied().unwrap_or(256) as usize];
    println!(
        "{keys} keys, batches of {batch}, {}-byte values",
        value.len()
    );
    bench_store(keys, batch, &value)?;
    bench_applier(keys, batch, &value)?;
    Ok(())
}
