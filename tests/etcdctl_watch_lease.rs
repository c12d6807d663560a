//! The real `etcdctl` (3.4) against an embedded 3-member cluster: watches,
//! leases, compaction, locks and elections, as a user of etcd sees them, and
//! how long-running commands (`watch`, `lease keep-alive`, `lock`, `elect`)
//! ride through the death of the member they talk to.
//!
//! Long-running commands run in the background (`common::background`); each
//! test waits for the lines it expects, never for a fixed time.

mod common;

use std::time::Duration;

use common::background::Background;
use common::{etcdctl, skip_without_etcdctl};
use localcluster::blocking::LocalCluster;
use nix::sys::signal::Signal;

/// Generous bound for waits that end as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(20);

fn cluster() -> LocalCluster {
    LocalCluster::builder()
        .members(3)
        .start_blocking()
        .expect("cluster starts")
}

fn endpoints(c: &LocalCluster) -> String {
    c.endpoints().join(",")
}

/// The lease ID (hex) in `lease 694d77aa9e38260f granted with TTL(60s)`.
fn granted(out: &str) -> String {
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"lease"), "{out}");
    assert!(out.contains(" granted with TTL("), "{out}");
    words[1].to_string()
}

#[test]
fn watch_prints_puts_and_deletes_of_a_key_a_prefix_and_with_prev_kv() {
    if skip_without_etcdctl() {
        return;
    }
    let c = cluster();
    let ep = endpoints(&c);

    etcdctl(&ep, &["put", "w/a", "0"]).ok();
    // Watch from the next revision: nothing is missed however long etcdctl
    // takes to set its watch up.
    let rev = etcdctl(&ep, &["get", "w/a", "-w", "json"]).json()["header"]["revision"]
        .as_i64()
        .unwrap();
    let from = (rev + 1).to_string();
    let key = Background::etcdctl(&ep, &["watch", "--rev", &from, "w/a"]);
    let prefix = Background::etcdctl(&ep, &["watch", "--rev", &from, "--prefix", "w/"]);
    let prev = Background::etcdctl(&ep, &["watch", "--rev", &from, "--prev-kv", "w/a"]);

    etcdctl(&ep, &["put", "w/a", "1"]).ok();
    etcdctl(&ep, &["put", "w/b", "2"]).ok();
    etcdctl(&ep, &["del", "w/a"]).ok();

    let lines = key.wait_lines(6, WAIT);
    assert_eq!(lines, ["PUT", "w/a", "1", "DELETE", "w/a", ""]);
    let lines = prefix.wait_lines(9, WAIT);
    assert_eq!(
        lines,
        ["PUT", "w/a", "1", "PUT", "w/b", "2", "DELETE", "w/a", ""]
    );
    // --prev-kv prints the previous pair before the new one.
    let lines = prev.wait_lines(10, WAIT);
    assert_eq!(
        lines,
        ["PUT", "w/a", "0", "w/a", "1", "DELETE", "w/a", "1", "w/a", ""]
    );
}

#[test]
fn watch_from_a_revision_replays_history_and_fails_once_it_is_compacted() {
    if skip_without_etcdctl() {
        return;
    }
    let c = cluster();
    let ep = endpoints(&c);
    let first = etcdctl(&ep, &["put", "h/k", "v1", "-w", "json"]).json();
    let rev = first["header"]["revision"].as_i64().unwrap();
    etcdctl(&ep, &["put", "h/k", "v2"]).ok();
    etcdctl(&ep, &["put", "h/k", "v3"]).ok();

    let from = rev.to_string();
    let w = Background::etcdctl(&ep, &["watch", "--rev", &from, "h/k"]);
    let lines = w.wait_lines(9, WAIT);
    assert_eq!(
        lines,
        ["PUT", "h/k", "v1", "PUT", "h/k", "v2", "PUT", "h/k", "v3"]
    );
    drop(w);

    let last = etcdctl(&ep, &["get", "h/k", "-w", "json"]).json();
    let current = last["header"]["revision"].as_i64().unwrap();
    assert_eq!(
        etcdctl(&ep, &["compaction", &current.to_string()]).ok(),
        format!("compacted revision {current}\n")
    );
    // A watch from before the compaction is canceled as etcd cancels it.
    let mut w = Background::etcdctl(&ep, &["watch", "--rev", &from, "h/k"]);
    w.wait_exit(WAIT);
    let err = w.errors().join("\n");
    assert!(
        err.contains("watch was canceled (etcdserver: mvcc: required revision has been compacted)"),
        "{err}"
    );
    // In JSON: the compacted revision, and a header without a revision (as etcd's).
    let mut w = Background::etcdctl(&ep, &["watch", "--rev", &from, "h/k", "-w", "json"]);
    w.wait_exit(WAIT);
    let canceled: serde_json::Value = serde_json::from_str(&w.lines()[0]).unwrap();
    assert_eq!(canceled["CompactRevision"], current, "{canceled}");
    assert_eq!(canceled["Canceled"], true, "{canceled}");
    assert!(canceled["Header"].get("revision").is_none(), "{canceled}");
}

#[test]
fn interactive_watch_takes_watch_commands_from_stdin() {
    if skip_without_etcdctl() {
        return;
    }
    let c = cluster();
    let ep = endpoints(&c);
    etcdctl(&ep, &["put", "i/x", "old"]).ok();
    let rev = etcdctl(&ep, &["get", "i/x", "-w", "json"]).json()["header"]["revision"]
        .as_i64()
        .unwrap();
    let mut w = Background::etcdctl(&ep, &["watch", "-i"]);
    w.write(&format!("watch --rev {rev} --prefix i/\n"));
    let lines = w.wait_lines(3, WAIT);
    assert_eq!(lines, ["PUT", "i/x", "old"]);
    etcdctl(&ep, &["put", "i/y", "new"]).ok();
    let lines = w.wait_lines(6, WAIT);
    assert_eq!(lines[3..], ["PUT", "i/y", "new"]);
}

#[test]
fn leases_grant_attach_list_keep_alive_and_revoke_as_etcdctl_prints_them() {
    if skip_without_etcdctl() {
        return;
    }
    let c = cluster();
    let ep = endpoints(&c);

    // A long lease granted first is listed last: etcd lists leases soonest
    // to expire first.
    let long = granted(etcdctl(&ep, &["lease", "grant", "600"]).ok());
    // A short TTL: etcdctl renews every third of it, and notices a revoke
    // at the next renewal.
    let id = granted(etcdctl(&ep, &["lease", "grant", "6"]).ok());
    assert_eq!(
        etcdctl(&ep, &["put", "--lease", &id, "l/a", "1"]).ok(),
        "OK\n"
    );
    etcdctl(&ep, &["put", "--lease", &id, "l/b", "2"]).ok();
    let ttl = etcdctl(&ep, &["lease", "timetolive", &id, "--keys"]);
    let ttl = ttl.ok().trim();
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(6s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with("attached keys([l/a l/b])"), "{ttl}");
    let list = etcdctl(&ep, &["lease", "list"]);
    assert_eq!(list.lines(), ["found 2 leases", id.as_str(), long.as_str()]);

    // keep-alive prints each renewal; it stops once the lease is revoked.
    let mut ka = Background::etcdctl(&ep, &["lease", "keep-alive", &id]);
    ka.wait_for(WAIT, "a renewal", |l| {
        l.iter()
            .any(|l| l == &format!("lease {id} keepalived with TTL(6)"))
    });
    assert_eq!(
        etcdctl(&ep, &["lease", "revoke", &id]).ok(),
        format!("lease {id} revoked\n")
    );
    ka.wait_for(WAIT, "the end of the lease", |l| {
        l.iter()
            .any(|l| l == &format!("lease {id} expired or revoked."))
    });
    ka.wait_exit(WAIT);

    // Revoking deleted the attached keys.
    assert_eq!(etcdctl(&ep, &["get", "--prefix", "l/"]).ok(), "");
    assert_eq!(
        etcdctl(&ep, &["lease", "timetolive", &id]).ok(),
        format!("lease {id} already expired\n")
    );
    etcdctl(&ep, &["lease", "revoke", &long]).ok();
    assert_eq!(etcdctl(&ep, &["lease", "list"]).ok(), "found 0 leases\n");
    // An unknown lease is refused with etcd's message.
    let err = etcdctl(&ep, &["put", "--lease", "1234abcd", "l/c", "3"]);
    assert!(
        err.err().contains("etcdserver: requested lease not found"),
        "{err:?}"
    );
}

#[test]
fn keys_of_an_expired_lease_vanish_together() {
    if skip_without_etcdctl() {
        return;
    }
    let c = cluster();
    let ep = endpoints(&c);
    let id = granted(etcdctl(&ep, &["lease", "grant", "2"]).ok());
    etcdctl(&ep, &["put", "--lease", &id, "x/a", "1"]).ok();
    let put = etcdctl(&ep, &["put", "--lease", &id, "x/b", "2", "-w", "json"]).json();
    let from = (put["header"]["revision"].as_i64().unwrap() + 1).to_string();
    let w = Background::etcdctl(
        &ep,
        &["watch", "--rev", &from, "--prefix", "x/", "-w", "json"],
    );
    common::eventually(WAIT, "lease expiry", || {
        etcdctl(&ep, &["get", "--prefix", "x/"])
            .ok()
            .is_empty()
            .then_some(())
    });
    // Both deletions arrive in one response, at one revision.
    w.wait_lines(1, WAIT);
    let resp: serde_json::Value = serde_json::from_str(&w.lines()[0]).unwrap();
    let events = resp["Events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{resp}");
    let revs: Vec<i64> = events
        .iter()
        .map(|e| e["kv"]["mod_revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revs[0], revs[1], "one revision for the whole lease: {resp}");
    assert!(events.iter().all(|e| e["type"] == 1), "deletes: {resp}");
}

#[test]
fn watch_and_keep_alive_ride_through_the_death_of_each_member() {
    if skip_without_etcdctl() {
        return;
    }
    let mut c = cluster();
    let ep = endpoints(&c);
    let id = granted(etcdctl(&ep, &["lease", "grant", "4"]).ok());
    let ka = Background::etcdctl(&ep, &["lease", "keep-alive", &id]);
    let w = Background::etcdctl(&ep, &["watch", "--prefix", "r/"]);
    ka.wait_lines(1, WAIT);

    let mut expected = Vec::new();
    for i in 0..3 {
        // etcdctl talks to one of the three; kill each in turn.
        c.kill(i).unwrap();
        let alive: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| c.member(j).endpoint())
            .collect();
        let key = format!("r/{i}");
        common::eventually(WAIT, "a put on the survivors", || {
            etcdctl(&alive.join(","), &["put", &key, "v"])
                .success()
                .then_some(())
        });
        expected.extend(["PUT".to_string(), key, "v".to_string()]);
        let n = expected.len();
        w.wait_for(WAIT, "the put, through another member", |l| l.len() >= n);
        // Longer than the TTL: the lease lives only if keep-alives got through.
        std::thread::sleep(Duration::from_secs(5));
        c.start(i).unwrap();
        c.wait_healthy(WAIT).unwrap();
    }
    // Duplicates could appear if a resumed watch replayed events; none may.
    assert_eq!(w.lines(), expected);
    let ttl = etcdctl(&ep, &["lease", "timetolive", &id]);
    assert!(
        ttl.ok()
            .starts_with(&format!("lease {id} granted with TTL(4s), remaining(")),
        "{ttl:?}"
    );
}

#[test]
fn lock_lets_one_holder_in_and_passes_on_when_it_lets_go_or_dies() {
    if skip_without_etcdctl() {
        return;
    }
    let c = cluster();
    let ep = endpoints(&c);

    let first = Background::etcdctl(&ep, &["lock", "--ttl", "2", "mylock"]);
    first.wait_lines(1, WAIT);
    assert!(
        first.lines()[0].starts_with("mylock/"),
        "{:?}",
        first.lines()
    );
    let second = Background::etcdctl(&ep, &["lock", "--ttl", "2", "mylock"]);
    let third = Background::etcdctl(&ep, &["lock", "--ttl", "2", "mylock"]);
    // Contenders wait while the lock is held (etcdctl prints the key once it
    // holds the lock).
    std::thread::sleep(Duration::from_secs(1));
    assert!(second.lines().is_empty() && third.lines().is_empty());

    // A holder that lets go (Ctrl-C) unlocks at once.
    first.signal(Signal::SIGINT);
    let deadline = std::time::Instant::now() + WAIT;
    // etcdctl prints the key of the lock it holds (and an empty line).
    while second.lines().is_empty() == third.lines().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no next holder: {:?} {:?} {:?} {:?} {:?} {:?}\n{}",
            first.lines(),
            first.errors(),
            second.lines(),
            second.errors(),
            third.lines(),
            third.errors(),
            etcdctl(&ep, &["get", "--prefix", "mylock", "-w", "json"]).stdout
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (holder, waiter) = if second.lines().is_empty() {
        (third, second)
    } else {
        (second, third)
    };
    // A holder that dies holds the lock until its session lease expires.
    holder.signal(Signal::SIGKILL);
    waiter.wait_lines(1, WAIT);
    assert!(waiter.lines()[0].starts_with("mylock/"));
    drop(holder);
}

#[test]
fn elect_campaigns_observes_and_changes_leader_when_the_holder_dies() {
    if skip_without_etcdctl() {
        return;
    }
    let c = cluster();
    let ep = endpoints(&c);

    let observer = Background::etcdctl(&ep, &["elect", "-l", "myelection"]);
    let p1 = Background::etcdctl(&ep, &["elect", "myelection", "p1"]);
    let lines = p1.wait_lines(2, WAIT);
    assert!(lines[0].starts_with("myelection/"), "{lines:?}");
    assert_eq!(lines[1], "p1");
    let p2 = Background::etcdctl(&ep, &["elect", "myelection", "p2"]);
    observer.wait_for(WAIT, "p1 observed", |l| l.iter().any(|l| l == "p1"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(p2.lines().is_empty(), "p2 waits while p1 leads");

    // p1 dies without resigning: its session lease (60 s in etcdctl) holds
    // the leadership until it ends; expiry is a revoke by the leader, done
    // here at once.
    p1.signal(Signal::SIGKILL);
    // The key holds the lease ID in plain hex; `lease revoke` prints it
    // zero-padded to 16 digits.
    let lease = lines[0].rsplit('/').next().unwrap().to_string();
    let id = u64::from_str_radix(&lease, 16).unwrap();
    assert_eq!(
        etcdctl(&ep, &["lease", "revoke", &lease]).ok(),
        format!("lease {id:016x} revoked\n")
    );
    let lines = p2.wait_lines(2, WAIT);
    assert_eq!(lines[1], "p2");
    observer.wait_for(WAIT, "p2 observed", |l| l.iter().any(|l| l == "p2"));

    // p2 resigns on Ctrl-C; nobody leads after it.
    p2.signal(Signal::SIGINT);
    let mut p2 = p2;
    p2.wait_exit(WAIT);
    drop(p1);
}
