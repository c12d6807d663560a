//! Crash safety with real `localcluster member` processes.
//!
//! - SIGKILL during heavy writes, then restart, over and over, for a single
//!   member and for a 3-member cluster: concurrent writers record every
//!   acknowledged put, and after every restart each one must still be
//!   readable (with its value, or a later one from the same writer), and
//!   revisions never go backwards; the cluster's members must end with the
//!   same `HashKV`.
//! - Corruption: a stopped member's `kv.redb` or Raft log segment
//!   (`raftlog/*.wal`) is truncated at a random length (short of the log's
//!   zeros ahead), or has a byte flipped at a random written offset (seeded);
//!   the member must either refuse to start with the one-line "data file ...
//!   is corrupt" error and exit 1, or start and serve exactly the data written
//!   before. Never a panic.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, Member, READY};
use localcluster::pb::etcdserverpb::kv_client::KvClient;
use localcluster::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use localcluster::pb::etcdserverpb::{HashKvRequest, PutRequest, RangeRequest};
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys per writer (each writer overwrites its own keys in turn).
const KEYS_PER_WRITER: u64 = 16;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn kv_client(endpoint: &str) -> Option<KvClient<Channel>> {
    localcluster::client::kv(endpoint, RPC_TIMEOUT).await.ok()
}

/// An acknowledged put: the writer's sequence number and the revision.
#[derive(Debug, Clone, Copy)]
struct Acked {
    seq: u64,
    revision: i64,
}

/// A running writer: its acknowledged puts and its next sequence number.
type Writer = tokio::task::JoinHandle<(Vec<(String, Acked)>, u64)>;

/// One writer: puts `crash/w<id>/k<n>` = `<id>:<seq>` with increasing `seq`
/// until `stop` or the first failure (a put that fails may still commit).
/// Returns every acknowledged put and the next sequence number.
async fn write(
    endpoint: String,
    id: usize,
    mut seq: u64,
    stop: Arc<AtomicBool>,
) -> (Vec<(String, Acked)>, u64) {
    let mut acked = Vec::new();
    let Some(mut kv) = kv_client(&endpoint).await else {
        return (acked, seq);
    };
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let key = format!("crash/w{id}/k{}", seq % KEYS_PER_WRITER);
        let put = kv.put(PutRequest {
            key: key.clone().into_bytes().into(),
            value: format!("{id}:{seq}").into_bytes().into(),
            ..Default::default()
        });
        match tokio::time::timeout(RPC_TIMEOUT, put).await {
            Ok(Ok(resp)) => {
                let revision = resp.into_inner().header.unwrap().revision;
                acked.push((key, Acked { seq, revision }));
            }
            _ => break,
        }
    }
    (acked, seq)
}

/// What the writers have had acknowledged: per key, the latest put.
#[derive(Default)]
struct History {
    latest: BTreeMap<String, Acked>,
    /// The highest revision ever acknowledged or read.
    max_revision: i64,
    next_seq: Vec<u64>,
}

impl History {
    fn new(writers: usize) -> Self {
        History {
            next_seq: vec![0; writers],
            ..Default::default()
        }
    }

    /// Runs one writer per endpoint (round robin) until `stop`.
    fn spawn_writers(
        &self,
        rt: &tokio::runtime::Runtime,
        endpoints: &[String],
        stop: &Arc<AtomicBool>,
    ) -> Vec<Writer> {
        (0..self.next_seq.len())
            .map(|id| {
                let endpoint = endpoints[id % endpoints.len()].clone();
                rt.spawn(write(endpoint, id, self.next_seq[id], stop.clone()))
            })
            .collect()
    }

    fn record(&mut self, rt: &tokio::runtime::Runtime, writers: Vec<Writer>) -> usize {
        let mut count = 0;
        for (id, w) in writers.into_iter().enumerate() {
            let (acked, next) = rt.block_on(w).unwrap();
            count += acked.len();
            self.next_seq[id] = next;
            for (key, a) in acked {
                self.max_revision = self.max_revision.max(a.revision);
                self.latest.insert(key, a);
            }
        }
        count
    }

    /// Every acknowledged put is readable at `endpoint` with its value or a
    /// later one of the same writer, and the store's revision has not gone
    /// back.
    async fn verify(&mut self, endpoint: &str) {
        let mut kv = kv_client(endpoint).await.expect("connect for reading");
        let resp = kv
            .range(RangeRequest {
                key: b"crash/".to_vec(),
                range_end: b"crash0".to_vec(),
                ..Default::default()
            })
            .await
            .expect("read every key")
            .into_inner();
        let revision = resp.header.unwrap().revision;
        assert!(
            revision >= self.max_revision,
            "{endpoint}: revision {revision} went back below {}",
            self.max_revision
        );
        self.max_revision = revision;
        let stored: BTreeMap<String, (u64, i64)> = resp
            .kvs
            .iter()
            .map(|kv| {
                let key = String::from_utf8(kv.key.clone()).unwrap();
                let value = String::from_utf8(kv.value.clone()).unwrap();
                let seq = value.split(':').nth(1).unwrap().parse().unwrap();
                (key, (seq, kv.mod_revision))
            })
            .collect();
        for (key, acked) in &self.latest {
            let Some(&(seq, mod_revision)) = stored.get(key) else {
                panic!("{endpoint}: acknowledged {key} (seq {}) is gone", acked.seq);
            };
            assert!(
                seq >= acked.seq,
                "{endpoint}: {key} holds seq {seq}, older than the acknowledged {}",
                acked.seq
            );
            if seq == acked.seq {
                assert_eq!(mod_revision, acked.revision, "{endpoint}: {key}");
            } else {
                assert!(mod_revision > acked.revision, "{endpoint}: {key}");
            }
        }
    }
}

/// Retries `verify` while a restarted cluster settles (a read may fail while
/// a leader is elected); the last attempt's failure is the test's.
fn verify_eventually(rt: &tokio::runtime::Runtime, history: &mut History, endpoint: &str) {
    for _ in 0..20 {
        let ok = rt.block_on(async {
            let mut kv = kv_client(endpoint).await?;
            let req = RangeRequest {
                key: b"crash/".to_vec(),
                limit: 1,
                ..Default::default()
            };
            tokio::time::timeout(RPC_TIMEOUT, kv.range(req))
                .await
                .ok()?
                .ok()
        });
        if ok.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(history.verify(endpoint));
}

#[test]
fn acknowledged_writes_survive_repeated_sigkill_of_a_single_member() {
    let rt = runtime();
    let mut cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    let mut history = History::new(4);
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let mut acked = 0;
    for _ in 0..8 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = history.spawn_writers(&rt, std::slice::from_ref(&endpoint), &stop);
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..400)));
        cluster.members[0].kill9();
        stop.store(true, Ordering::SeqCst);
        acked += history.record(&rt, writers);
        cluster.restart(0);
        verify_eventually(&rt, &mut history, &endpoint);
    }
    assert!(acked > 0, "no write was acknowledged");
    eprintln!("{acked} acknowledged puts over 8 SIGKILLs");
    assert!(!cluster.members[0].log_text().contains("panicked"));
}

#[test]
fn acknowledged_writes_survive_repeated_sigkill_in_a_cluster_and_members_converge() {
    let rt = runtime();
    let mut cluster = Cluster::start(3, &[]);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let mut history = History::new(6);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut acked = 0;
    for cycle in 0..6 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = history.spawn_writers(&rt, &endpoints, &stop);
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..400)));
        // Every third cycle the whole cluster crashes; otherwise one member.
        let victims: Vec<usize> = if cycle % 3 == 2 {
            vec![0, 1, 2]
        } else {
            vec![rng.gen_range(0..3)]
        };
        for &i in &victims {
            cluster.kill9(i);
        }
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::SeqCst);
        acked += history.record(&rt, writers);
        cluster.start_all();
        for e in &endpoints {
            verify_eventually(&rt, &mut history, e);
        }
    }
    assert!(acked > 0, "no write was acknowledged");
    eprintln!("{acked} acknowledged puts over 6 crash cycles");

    // Every member at the same revision holds the same history.
    let revision = history.max_revision;
    let hashes: Vec<(u32, i64)> = endpoints
        .iter()
        .map(|e| rt.block_on(hash_kv_at(e, revision)))
        .collect();
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "HashKV at revision {revision} differs: {hashes:?}"
    );
    for m in &cluster.members {
        assert!(!m.log_text().contains("panicked"), "{} panicked", m.name);
    }
}

/// `HashKV` at `revision` from one member, retried while it catches up.
async fn hash_kv_at(endpoint: &str, revision: i64) -> (u32, i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(channel) = localcluster::client::connect(endpoint, RPC_TIMEOUT).await {
            let mut m = MaintenanceClient::new(channel);
            if let Ok(r) = m.hash_kv(HashKvRequest { revision }).await {
                let r = r.into_inner();
                return (r.hash, r.compact_revision);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} gave no HashKV at {revision}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Corruption of a stopped member's files.

/// The keys written before the member was stopped, and their values.
fn sample_data() -> BTreeMap<String, String> {
    (0..120)
        .map(|i| {
            (
                format!("crash/k{i:03}"),
                format!("value-{i}-{}", "v".repeat(i % 50)),
            )
        })
        .collect()
}

/// How the member was stopped before its files were damaged.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Term,
    Kill,
}

/// A single member with [`sample_data`] written (each key overwritten once),
/// then stopped.
fn stopped_member_with_data(rt: &tokio::runtime::Runtime, stop: Stop) -> Cluster {
    let mut cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    rt.block_on(async {
        let mut kv = kv_client(&endpoint).await.unwrap();
        for (key, value) in sample_data() {
            for v in ["first", value.as_str()] {
                kv.put(PutRequest {
                    key: key.clone().into_bytes().into(),
                    value: v.as_bytes().to_vec().into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }
    });
    match stop {
        Stop::Term => assert!(cluster.members[0].terminate().success()),
        Stop::Kill => cluster.members[0].kill9(),
    }
    cluster
}

#[derive(Debug)]
enum Damage {
    /// Cut the file to this length.
    Truncate(u64),
    /// Flip the byte at this offset.
    Flip(u64),
    /// Flip one byte in every copy of this stored value, so that the live
    /// copy is hit for sure (stale copies sit in freed pages).
    FlipValue(String),
}

fn damage(path: &Path, what: &Damage) {
    match *what {
        Damage::Truncate(len) => {
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(len).unwrap();
        }
        Damage::Flip(at) => {
            let mut bytes = std::fs::read(path).unwrap();
            bytes[at as usize] ^= 0xff;
            std::fs::write(path, bytes).unwrap();
        }
        Damage::FlipValue(ref value) => {
            let mut bytes = std::fs::read(path).unwrap();
            let needle = value.as_bytes();
            let copies: Vec<usize> = bytes
                .windows(needle.len())
                .enumerate()
                .filter_map(|(i, w)| (w == needle).then_some(i))
                .collect();
            assert!(
                !copies.is_empty(),
                "{value} not found in {}",
                path.display()
            );
            for at in copies {
                bytes[at + needle.len() / 2] ^= 0x01;
            }
            std::fs::write(path, bytes).unwrap();
        }
    }
}

/// Starts the member on its damaged files: it must refuse with the clear
/// error and exit 1, or serve exactly [`sample_data`]. Returns whether it
/// refused.
/// The data after each of the first `n` puts of [`stopped_member_with_data`],
/// for every `n`.
fn earlier_data() -> Vec<BTreeMap<String, String>> {
    let mut state = BTreeMap::new();
    let mut states = vec![state.clone()];
    for (key, value) in sample_data() {
        for v in ["first".to_string(), value] {
            state.insert(key.clone(), v);
            states.push(state.clone());
        }
    }
    states
}

/// Starts `m` on its damaged `file`; whether it was refused. A member that
/// starts must serve [`sample_data`], or with `torn_log`, the data as of
/// some earlier put.
fn start_damaged(
    rt: &tokio::runtime::Runtime,
    m: &mut Member,
    file: &Path,
    torn_log: bool,
) -> bool {
    m.spawn();
    let deadline = Instant::now() + Duration::from_secs(40);
    let refused = loop {
        if m.current_log().contains(READY) {
            break false;
        }
        if let Some(status) = m.exit_status() {
            let log = m.current_log();
            assert_eq!(status.code(), Some(1), "{log}");
            let expected = format!(
                "localcluster member: data file {} is corrupt: ",
                file.display()
            );
            assert!(log.contains(&expected), "no clear error in:\n{log}");
            assert!(
                log.contains(
                    "restore from a snapshot or remove the member's data dir and re-add it"
                ),
                "{log}"
            );
            break true;
        }
        assert!(
            Instant::now() < deadline,
            "neither ready nor refused:\n{}",
            m.current_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    if !refused {
        let endpoint = m.endpoint();
        let stored = rt.block_on(async {
            let mut kv = kv_client(&endpoint).await.unwrap();
            let resp = kv
                .range(RangeRequest {
                    key: b"crash/".to_vec(),
                    range_end: b"crash0".to_vec(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            resp.kvs
                .into_iter()
                .map(|kv| {
                    (
                        String::from_utf8(kv.key).unwrap(),
                        String::from_utf8(kv.value).unwrap(),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        });
        let written = stored == sample_data() || (torn_log && earlier_data().contains(&stored));
        assert!(
            written,
            "started on a damaged {} and serves other data",
            file.display()
        );
        assert!(m.terminate().success());
    }
    let log = m.current_log();
    assert!(!log.contains("panicked"), "{log}");
    refused
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The Raft log's directory in the member dir.
const RAFT_LOG: &str = "raftlog";

/// The segment of a Raft log that a restart reads.
fn newest_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments.pop().expect("a raft log segment")
}

fn corruption_cases(file: &str, stop: Stop, seed: u64) {
    let rt = runtime();
    let mut cluster = stopped_member_with_data(&rt, stop);
    let data_dir = cluster.members[0].data_dir.clone();
    let pristine: PathBuf = cluster.dir.path().join("pristine");
    copy_dir(&data_dir, &pristine);
    let path = if file == RAFT_LOG {
        newest_segment(&data_dir.join("member").join(RAFT_LOG))
    } else {
        data_dir.join("member").join(file)
    };
    let bytes = std::fs::read(&path).unwrap();
    // Flips land on written bytes; most of a fresh file is zeros.
    let written: Vec<u64> = (0..bytes.len() as u64)
        .filter(|&i| bytes[i as usize] != 0)
        .collect();
    // Cuts of the Raft log land before its last written byte: it ends in
    // zeros written ahead of its records, and a cut there loses nothing.
    let cut_end = if file == RAFT_LOG {
        written.last().map_or(1, |&i| i + 1)
    } else {
        bytes.len() as u64
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cases = Vec::new();
    let data: Vec<String> = sample_data().into_values().collect();
    let rounds = if stop == Stop::Term { 3 } else { 2 };
    for _ in 0..rounds {
        cases.push(Damage::Truncate(rng.gen_range(0..cut_end)));
        cases.push(Damage::Flip(written[rng.gen_range(0..written.len())]));
    }
    cases.push(Damage::FlipValue(
        data[rng.gen_range(0..data.len())].clone(),
    ));
    let mut refused = 0;
    for case in &cases {
        std::fs::remove_dir_all(&data_dir).unwrap();
        copy_dir(&pristine, &data_dir);
        damage(&path, case);
        // A Raft log cut short looks like a torn write (as in etcd's WAL):
        // the member may start without its last records, and the puts they
        // held, when the store had not yet flushed them (after a SIGKILL).
        let torn_log = file == RAFT_LOG && matches!(case, Damage::Truncate(_));
        let was_refused = start_damaged(&rt, &mut cluster.members[0], &path, torn_log);
        // Every truncation of the store is refused (the Raft log takes a
        // record cut short for a torn write and starts without it), and so
        // is a damaged live value of a file closed cleanly; a random flip may
        // land in a free page of the store, and after a crash the store may
        // roll back a damaged last commit (the Raft log replays it).
        let must_refuse = match case {
            Damage::Truncate(_) => file != RAFT_LOG,
            Damage::Flip(_) => file == RAFT_LOG,
            Damage::FlipValue(_) => stop == Stop::Term || file == RAFT_LOG,
        };
        if must_refuse {
            assert!(was_refused, "{file}: started despite {case:?}");
        }
        refused += usize::from(was_refused);
    }
    eprintln!(
        "{file} ({stop:?}): refused {refused} of {} damaged starts",
        cases.len()
    );
}

#[test]
fn a_damaged_kv_file_is_refused_with_a_clear_error_or_serves_the_same_data() {
    corruption_cases("kv.redb", Stop::Term, 21);
}

#[test]
fn a_damaged_raft_file_is_refused_with_a_clear_error_or_serves_the_same_data() {
    corruption_cases(RAFT_LOG, Stop::Term, 22);
}

#[test]
fn a_damaged_kv_file_after_sigkill_is_refused_or_serves_the_same_data() {
    corruption_cases("kv.redb", Stop::Kill, 23);
}

#[test]
fn a_damaged_raft_file_after_sigkill_is_refused_or_serves_the_same_data() {
    corruption_cases(RAFT_LOG, Stop::Kill, 24);
}
