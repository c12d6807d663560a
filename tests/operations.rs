//! The operations of etcd's runbooks, done with the real `etcdctl` against
//! real member processes: growing a cluster (a learner added, started from
//! `etcdctl member add`'s output and promoted), shrinking it (the leader
//! included), `member update`, `move-leader`, migrating a member to a new
//! address with its data dir, and the refusals of etcd's strict
//! reconfiguration check.

mod common;
use common::{eventually, free_port, skip_without_etcdctl, Cluster, Member, FAST};

use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// The member ID `etcdctl member add` printed ("Member <hex> added to cluster <hex>").
fn added_id(out: &str) -> String {
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no member ID in {out:?}"))
        .to_string()
}

/// The `ETCD_*="..."` lines of `etcdctl member add`'s output, as variables.
fn recipe(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("ETCD_"))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// A new member started from the recipe `etcdctl member add` printed: the
/// `ETCD_*` variables as given, plus its listen URLs, data dir and the token.
fn member_from_recipe(dir: &Path, token: &str, name: &str, peer_port: u16, out: &str) -> Member {
    let env = recipe(out);
    assert!(
        env.iter().any(|(k, v)| k == "ETCD_NAME" && v == name),
        "{out}"
    );
    assert!(
        env.iter()
            .any(|(k, v)| k == "ETCD_INITIAL_CLUSTER_STATE" && v == "existing"),
        "{out}"
    );
    let client_port = free_port();
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let data_dir = dir.join(name);
    let mut args: Vec<String> = [
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-cluster-token",
        token,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(FAST.iter().map(|s| s.to_string()));
    let mut m = Member::new(dir, name, client_port, peer_port, args);
    m.env = env;
    m
}

/// `member list -w json` as (hex ID, name, is learner, peer URLs).
fn members(cluster: &mut Cluster) -> Vec<(String, String, bool, Vec<String>)> {
    let list = cluster.etcdctl(&["member", "list", "-w", "json"]).json();
    list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                format!("{:x}", m["ID"].as_u64().unwrap()),
                m["name"].as_str().unwrap_or_default().to_string(),
                m["isLearner"].as_bool().unwrap_or(false),
                m["peerURLs"]
                    .as_array()
                    .map(|a| a.iter().map(|u| u.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// Runs `etcdctl ARGS` at member `at` until it succeeds (a change may be
/// refused while a new member is still connecting or catching up).
fn until_ok(cluster: &mut Cluster, at: usize, args: &[&str]) -> String {
    eventually(WAIT, &format!("etcdctl {args:?}"), || {
        let out = cluster.etcdctl_at(at, args);
        out.success().then(|| out.stdout.clone())
    })
}

fn hex_id(m: &Member) -> String {
    format!("{:x}", m.id())
}

/// An ID as etcdctl prints it in its messages (`%16x`: padded with spaces).
fn printed(hex: &str) -> String {
    format!("{hex:>16}")
}

#[test]
fn a_cluster_grows_to_five_with_a_promoted_learner_and_shrinks_to_three_without_its_leader() {
    if skip_without_etcdctl() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    for i in 0..10 {
        cluster.etcdctl(&["put", &format!("k{i}"), "v"]).ok();
    }

    // A learner, started from `member add`'s recipe.
    let peer_port = free_port();
    let peer = format!("--peer-urls=http://127.0.0.1:{peer_port}");
    let out = cluster
        .etcdctl(&["member", "add", "m3", &peer, "--learner"])
        .ok()
        .to_string();
    let learner_id = added_id(&out);
    let dir = cluster.dir.path().to_path_buf();
    let mut learner = member_from_recipe(&dir, &cluster.token, "m3", peer_port, &out);
    learner.spawn();
    learner.wait_ready();
    let at = learner.endpoint();
    // A learner serves serializable reads only.
    eventually(WAIT, "the learner has the data", || {
        let out = common::etcdctl(&at, &["get", "k9", "--consistency=s", "--print-value-only"]);
        (out.success() && out.stdout.trim() == "v").then_some(())
    });
    let err = common::etcdctl(&at, &["get", "k9"]).err().to_string();
    assert!(
        err.contains("etcdserver: rpc not supported for learner"),
        "{err}"
    );
    let err = common::etcdctl(&at, &["put", "k", "v"]).err().to_string();
    assert!(
        err.contains("etcdserver: rpc not supported for learner"),
        "{err}"
    );
    cluster.members.push(learner);
    assert!(members(&mut cluster)
        .iter()
        .any(|(id, name, learner, _)| *id == learner_id && name == "m3" && *learner));

    // Promoted once in sync.
    let out = until_ok(&mut cluster, 0, &["member", "promote", &learner_id]);
    assert!(
        out.contains(&format!("Member {} promoted", printed(&learner_id))),
        "{out}"
    );

    // A fifth member, a voter from the start.
    let peer_port = free_port();
    let peer = format!("--peer-urls=http://127.0.0.1:{peer_port}");
    let out = until_ok(&mut cluster, 0, &["member", "add", "m4", &peer]);
    let mut fifth = member_from_recipe(&dir, &cluster.token, "m4", peer_port, &out);
    fifth.spawn();
    fifth.wait_ready();
    cluster.members.push(fifth);
    cluster.wait_leader();
    let list = members(&mut cluster);
    assert_eq!(list.len(), 5, "{list:?}");
    assert!(list
        .iter()
        .all(|(_, name, learner, _)| !learner && !name.is_empty()));
    cluster.etcdctl(&["put", "five", "yes"]).ok();

    // Shrink: first the leader, then one more; each removed member exits.
    for _ in 0..2 {
        let leader = cluster.wait_leader();
        let other = (0..cluster.members.len())
            .find(|&i| i != leader && cluster.members[i].is_running())
            .unwrap();
        let id = hex_id(&cluster.members[leader]);
        let out = until_ok(&mut cluster, other, &["member", "remove", &id]);
        assert!(
            out.contains(&format!("Member {} removed", printed(&id))),
            "{out}"
        );
        let status = cluster.members[leader].wait_exit(WAIT);
        assert!(status.success(), "a removed member exits cleanly: {status}");
        // It stops at once, as etcd's: no handover is tried.
        let log = cluster.members[leader].current_log();
        assert!(
            log.contains("skipped leadership transfer; local server was removed")
                && !log.contains("leadership transfer failed"),
            "{log}"
        );
        cluster.wait_leader();
    }
    let list = members(&mut cluster);
    assert_eq!(list.len(), 3, "{list:?}");
    let out = cluster.etcdctl(&["get", "five", "--print-value-only"]);
    assert_eq!(out.ok().trim(), "yes");
    cluster.etcdctl(&["put", "after", "shrink"]).ok();
    let out = cluster.etcdctl(&["get", "k", "--prefix", "--keys-only"]);
    assert_eq!(out.ok().split_whitespace().count(), 10);
}

#[test]
fn a_removed_member_restarted_on_its_data_dir_says_so_and_exits() {
    if skip_without_etcdctl() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    let said_so = |m: &Member| {
        let log = m.current_log();
        assert!(
            log.contains("the member has been permanently removed from the cluster")
                && log.contains("the data-dir used by this member must be removed."),
            "{log}"
        );
    };

    // Removed while it was down: its peers refuse its stream for that
    // reason, and it exits, as etcd's peers tell a removed member.
    let leader = cluster.wait_leader();
    let down = (0..3).find(|&i| i != leader).unwrap();
    let id = hex_id(&cluster.members[down]);
    assert!(cluster.members[down].terminate().success());
    until_ok(&mut cluster, leader, &["member", "remove", &id]);
    cluster.members[down].spawn();
    let status = cluster.members[down].wait_exit(WAIT);
    assert!(status.success(), "{status}");
    said_so(&cluster.members[down]);

    // Removed while it ran: it exits; restarted, its own log says so.
    let leader = cluster.wait_leader();
    let up = (0..3).find(|&i| i != leader && i != down).unwrap();
    let id = hex_id(&cluster.members[up]);
    until_ok(&mut cluster, leader, &["member", "remove", &id]);
    assert!(cluster.members[up].wait_exit(WAIT).success());
    cluster.members[up].spawn();
    let status = cluster.members[up].wait_exit(WAIT);
    assert!(status.success(), "{status}");
    said_so(&cluster.members[up]);

    // The cluster it left goes on.
    let out = cluster.etcdctl_at(leader, &["put", "k", "v"]);
    assert!(out.success(), "{}", out.stderr);
}

#[test]
fn a_member_whose_data_dir_was_lost_is_refused_as_already_bootstrapped() {
    if skip_without_etcdctl() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    let lost = cluster.follower();
    let id = hex_id(&cluster.members[lost]);
    assert!(cluster.members[lost].terminate().success());
    // Its data dir is gone; started again with the flags that bootstrapped
    // it, it would forget its vote and log, so it is refused, as in etcd.
    let data_dir = cluster.members[lost].data_dir.clone();
    std::fs::rename(&data_dir, data_dir.with_extension("lost")).unwrap();
    cluster.members[lost].spawn();
    let status = cluster.members[lost].wait_exit(WAIT);
    assert!(!status.success(), "{status}");
    let log = cluster.members[lost].current_log();
    assert!(
        log.contains(&format!("member {id} has already been bootstrapped")),
        "{log}"
    );
    // With its own data dir back, it rejoins.
    std::fs::remove_dir_all(&data_dir).ok();
    std::fs::rename(data_dir.with_extension("lost"), &data_dir).unwrap();
    cluster.members[lost].spawn();
    cluster.members[lost].wait_ready();
}

#[test]
fn peers_log_when_a_member_goes_away_and_comes_back() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    let gone = cluster.follower();
    let id = hex_id(&cluster.members[gone]);
    // etcd's lines, each once per change of state.
    let lines = |cluster: &Cluster, what: &str| {
        cluster.members[leader]
            .log_text()
            .lines()
            .filter(|l| l.contains(what) && l.contains(&format!("peer_id={id}")))
            .count()
    };
    // (Counted at least, not exactly: a stream may also break on its own
    // on a loaded machine.)
    let before = eventually(WAIT, "peer became active", || {
        let n = lines(&cluster, "peer became active");
        (n >= 1).then_some(n)
    });
    cluster.kill9(gone);
    eventually(WAIT, "peer became inactive", || {
        (lines(&cluster, "peer became inactive") >= 1).then_some(())
    });
    cluster.members[gone].spawn();
    cluster.members[gone].wait_ready();
    eventually(WAIT, "peer became active again", || {
        (lines(&cluster, "peer became active") > before).then_some(())
    });
    // Once per change: never inactive twice without active between.
    let inactive = lines(&cluster, "peer became inactive");
    assert!(
        inactive <= lines(&cluster, "peer became active"),
        "{inactive}"
    );
}

#[test]
fn member_update_and_move_leader_work_through_etcdctl() {
    if skip_without_etcdctl() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);

    // move-leader to a follower.
    let leader = cluster.wait_leader();
    let target = cluster.follower();
    let target_id = hex_id(&cluster.members[target]);
    let out = eventually(WAIT, "move-leader", || {
        let out = cluster.etcdctl(&["move-leader", &target_id]);
        out.success().then(|| out.stdout.clone())
    });
    assert!(
        out.contains(&format!(
            "Leadership transferred from {} to {target_id}",
            hex_id(&cluster.members[leader])
        )),
        "{out}"
    );
    assert_eq!(cluster.wait_leader(), target);
    // To an ID that is no voter: etcd's error.
    let out = cluster.etcdctl(&["move-leader", "1234"]);
    assert!(
        out.err().contains("etcdserver: bad leader transferee"),
        "{out:?}"
    );

    // member update changes the recorded peer URLs.
    let victim = (target + 1) % 3;
    let id = hex_id(&cluster.members[victim]);
    let new_peer = format!("http://127.0.0.1:{}", free_port());
    let out = cluster
        .etcdctl(&["member", "update", &id, &format!("--peer-urls={new_peer}")])
        .ok()
        .to_string();
    assert!(
        out.contains(&format!("Member {} updated", printed(&id))),
        "{out}"
    );
    let list = members(&mut cluster);
    let (_, _, _, urls) = list.iter().find(|(i, ..)| *i == id).unwrap();
    assert_eq!(urls, &vec![new_peer]);
}

#[test]
fn member_update_keeps_the_open_stream_until_the_member_restarts_at_its_new_url() {
    if skip_without_etcdctl() {
        return;
    }
    // Two members: every write needs the follower.
    let mut cluster = Cluster::start(2, &[]);
    let leader = cluster.wait_leader();
    let follower = 1 - leader;
    let id = hex_id(&cluster.members[follower]);
    let peer_port = free_port();
    let new_peer = format!("http://127.0.0.1:{peer_port}");
    let out = cluster.etcdctl_at(
        leader,
        &["member", "update", &id, &format!("--peer-urls={new_peer}")],
    );
    assert!(out.success(), "{}", out.stderr);
    // Nothing listens at the new URL yet: as in etcd, the stream that is up
    // carries on meanwhile, so writes still reach a quorum.
    for i in 0..3 {
        let out = cluster.etcdctl_at(leader, &["put", &format!("u{i}"), "v"]);
        assert!(out.success(), "put {i} after the update: {}", out.stderr);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Restarted at the new URL, it is reached there.
    assert!(cluster.members[follower].terminate().success());
    let m = &cluster.members[follower];
    let mut args = m.args.clone();
    for flag in ["--listen-peer-urls", "--initial-advertise-peer-urls"] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = new_peer.clone();
    }
    let home = m.data_dir.parent().unwrap().to_path_buf();
    let moved = Member::new(&home, &m.name.clone(), m.client_port, peer_port, args);
    cluster.members[follower] = moved;
    cluster.members[follower].spawn();
    cluster.members[follower].wait_ready();
    let out = eventually(WAIT, "a put after the restart", || {
        let out = cluster.etcdctl_at(leader, &["put", "after", "restart"]);
        out.success().then_some(out)
    });
    assert!(out.success());
}

#[test]
fn a_member_moves_to_a_new_address_with_its_data_dir_and_keeps_its_id_and_data() {
    if skip_without_etcdctl() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    for i in 0..20 {
        cluster
            .etcdctl(&["put", &format!("k{i}"), &format!("v{i}")])
            .ok();
    }
    let moving = cluster.follower();
    let id = hex_id(&cluster.members[moving]);

    // Stop it and copy its data dir to the "new machine".
    let status = cluster.members[moving].terminate();
    assert!(status.success(), "{status}");
    let old_dir = cluster.members[moving].data_dir.clone();
    let new_home = cluster.dir.path().join("new-machine");
    let new_dir = new_home.join(&cluster.members[moving].name);
    copy_dir(&old_dir, &new_dir);
    std::fs::remove_dir_all(&old_dir).unwrap();

    // Point the cluster at its new peer URL.
    let (client_port, peer_port) = (free_port(), free_port());
    let new_peer = format!("http://127.0.0.1:{peer_port}");
    let new_client = format!("http://127.0.0.1:{client_port}");
    let out = cluster
        .etcdctl(&["member", "update", &id, &format!("--peer-urls={new_peer}")])
        .ok()
        .to_string();
    assert!(out.contains("updated"), "{out}");

    // Start it there under the same name, with the copied data dir.
    let name = cluster.members[moving].name.clone();
    let mut args = cluster.members[moving].args.clone();
    let replace = |args: &mut Vec<String>, flag: &str, value: &str| {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.to_string();
    };
    replace(&mut args, "--data-dir", new_dir.to_str().unwrap());
    replace(&mut args, "--listen-client-urls", &new_client);
    replace(&mut args, "--advertise-client-urls", &new_client);
    replace(&mut args, "--listen-peer-urls", &new_peer);
    replace(&mut args, "--initial-advertise-peer-urls", &new_peer);
    std::fs::create_dir_all(&new_home).unwrap();
    let moved = Member::new(&new_home, &name, client_port, peer_port, args);
    cluster.members[moving] = moved;
    cluster.members[moving].spawn();
    cluster.members[moving].wait_ready();
    assert_eq!(hex_id(&cluster.members[moving]), id, "same member ID");
    cluster.wait_leader();

    // Same data, and it takes part in new writes.
    cluster.etcdctl(&["put", "after-move", "yes"]).ok();
    let at = cluster.members[moving].endpoint();
    eventually(WAIT, "the moved member has every key", || {
        let out = common::etcdctl(
            &at,
            &["get", "k", "--prefix", "--consistency=s", "-w", "json"],
        );
        let count = out
            .success()
            .then(|| out.json()["count"].as_i64().unwrap_or(0))?;
        let after = common::etcdctl(
            &at,
            &["get", "after-move", "--consistency=s", "--print-value-only"],
        );
        (count == 20 && after.stdout.trim() == "yes").then_some(())
    });
    let list = members(&mut cluster);
    let (_, listed_name, _, urls) = list.iter().find(|(i, ..)| *i == id).unwrap();
    assert_eq!(listed_name, &name);
    assert_eq!(urls, &vec![new_peer]);
    let endpoints: String = cluster.etcdctl(&["member", "list"]).ok().to_string();
    assert!(endpoints.contains(&new_client), "{endpoints}");
}

#[test]
fn reconfigurations_that_would_lose_quorum_or_promote_a_lagging_learner_are_refused() {
    if skip_without_etcdctl() {
        return;
    }
    let mut cluster = Cluster::start(1, &[]);

    // A learner that never started is not in sync with the leader.
    let out = cluster
        .etcdctl(&[
            "member",
            "add",
            "l1",
            &format!("--peer-urls=http://127.0.0.1:{}", free_port()),
            "--learner",
        ])
        .ok()
        .to_string();
    let learner = added_id(&out);
    let err = cluster
        .etcdctl(&["member", "promote", &learner])
        .err()
        .to_string();
    assert!(
        err.contains("etcdserver: can only promote a learner member which is in sync with leader"),
        "{err}"
    );

    // One member may grow to two (the second not started yet), but a third
    // voter would leave one started member of three.
    cluster
        .etcdctl(&[
            "member",
            "add",
            "v2",
            &format!("--peer-urls=http://127.0.0.1:{}", free_port()),
        ])
        .ok();
    let err = cluster
        .etcdctl(&[
            "member",
            "add",
            "v3",
            &format!("--peer-urls=http://127.0.0.1:{}", free_port()),
        ])
        .err()
        .to_string();
    assert!(
        err.contains("etcdserver: re-configuration failed due to not enough started members"),
        "{err}"
    );
}

#[test]
fn removing_a_voter_while_another_is_down_is_refused_as_unhealthy() {
    if skip_without_etcdctl() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    let down = (leader + 1) % 3;
    let asked = (leader + 2) % 3;
    cluster.kill9(down);
    let id = hex_id(&cluster.members[leader]);
    let err = eventually(WAIT, "the refusal", || {
        let out = cluster.etcdctl_at(asked, &["member", "remove", &id]);
        (!out.success() && out.stderr.contains("unhealthy")).then(|| out.stderr.clone())
    });
    assert!(err.contains("etcdserver: unhealthy cluster"), "{err}");
    assert_eq!(members(&mut cluster).len(), 3);
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

#[test]
fn with_strict_reconfig_check_off_a_removal_that_costs_the_quorum_is_accepted() {
    if skip_without_etcdctl() {
        return;
    }
    let mut cluster = Cluster::start(3, &["--strict-reconfig-check=false"]);
    let leader = cluster.wait_leader();
    let down = (leader + 1) % 3;
    let removed = (leader + 2) % 3;
    cluster.kill9(down);
    let id = hex_id(&cluster.members[removed]);
    let out = until_ok(&mut cluster, leader, &["member", "remove", &id]);
    assert!(
        out.contains(&format!("Member {} removed", printed(&id))),
        "{out}"
    );
}
