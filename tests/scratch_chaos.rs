mod common;
use common::Cluster;
use localcluster::pb::etcdserverpb::{PutRequest, RangeRequest};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn chaos() {
    let mut c = Cluster::start(3, &["--snapshot-count", "10"]);
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            common::block_on(async move {
                let mut seq = 0u64;
                let mut attempt = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    attempt += 1;
                    let e = &endpoints[attempt % endpoints.len()];
                    let Ok(mut kv) = localcluster::client::kv(e, Duration::from_secs(1)).await
                    else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    for _ in 0..20 {
                        let key = format!("x/{seq:06}");
                        seq += 1;
                        let put = kv.put(PutRequest {
                            key: key.clone().into_bytes(),
                            value: vec![b'v'; 100],
                            ..Default::default()
                        });
                        match tokio::time::timeout(Duration::from_secs(3), put).await {
                            Ok(Ok(_)) => acked.lock().unwrap().push(key),
                            _ => break,
                        }
                    }
                }
            })
        })
    };
    for round in 0..12 {
        std::thread::sleep(Duration::from_millis(700));
        let victim = if round % 2 == 0 {
            c.wait_leader()
        } else {
            c.follower()
        };
        eprintln!(
            "round {round}: kill m{victim} (acked {})",
            acked.lock().unwrap().len()
        );
        c.kill9(victim);
        std::thread::sleep(Duration::from_millis(700));
        c.restart(victim);
        c.wait_leader();
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    eprintln!("acked {}", acked.len());
    for i in 0..3 {
        let e = c.members[i].endpoint();
        let present: BTreeSet<String> = common::block_on(async {
            let mut kv = localcluster::client::kv(&e, Duration::from_secs(10))
                .await
                .unwrap();
            let r = kv
                .range(RangeRequest {
                    key: b"x/".to_vec(),
                    range_end: b"x0".to_vec(),
                    keys_only: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            r.kvs
                .into_iter()
                .map(|kv| String::from_utf8(kv.key).unwrap())
                .collect()
        });
        let lost: Vec<_> = acked.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "m{i} lost {} acked: {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    }
    let out = c.etcdctl(&["endpoint", "hashkv", "-w", "json"]);
    eprintln!("{}", out.stdout);
}
