//! etcd's authentication and authorization driven by the real `etcdctl` 3.4:
//! `user`, `role` and `auth` commands, `--user name:password`, permission
//! checks on keys, watches and leases, and the auth store surviving restarts.
//!
//! Members run with `--bcrypt-cost 4` (etcd's minimum) so password hashing
//! does not dominate the tests.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{skip_without_etcdctl, Cluster};

const FAST_BCRYPT: &[&str] = &["--bcrypt-cost", "4"];

/// Creates root (pw `rootpw`), alice (pw `alicepw`) with role `app` granting
/// readwrite on the prefix `app/`, and bob (pw `bobpw`) with no role; then
/// enables auth.
fn set_up_users(c: &mut Cluster) {
    assert_eq!(
        c.etcdctl(&["user", "add", "root:rootpw"]).ok(),
        "User root created\n"
    );
    assert_eq!(
        c.etcdctl(&["user", "add", "alice:alicepw"]).ok(),
        "User alice created\n"
    );
    assert_eq!(
        c.etcdctl(&["user", "add", "bob:bobpw"]).ok(),
        "User bob created\n"
    );
    assert_eq!(
        c.etcdctl(&["role", "add", "app"]).ok(),
        "Role app created\n"
    );
    assert_eq!(
        c.etcdctl(&[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix"
        ])
        .ok(),
        "Role app updated\n"
    );
    assert_eq!(
        c.etcdctl(&["user", "grant-role", "alice", "app"]).ok(),
        "Role app is granted to user alice\n"
    );
    // etcdctl creates the root role and grants it to root when AuthEnable
    // answers "root user does not have root role", as with etcd.
    assert_eq!(
        c.etcdctl(&["auth", "enable"]).ok(),
        "Authentication Enabled\n"
    );
}

#[test]
fn etcdctl_user_role_and_auth_commands_guard_keys_by_role() {
    if skip_without_etcdctl() {
        return;
    }
    let mut c = Cluster::start(3, FAST_BCRYPT);
    set_up_users(&mut c);

    // No credentials while auth is on.
    assert!(c
        .etcdctl(&["get", "foo"])
        .err()
        .contains("etcdserver: user name is empty"));
    // A wrong password.
    assert!(c
        .etcdctl(&["--user", "alice:nope", "get", "app/x"])
        .err()
        .contains("etcdserver: authentication failed, invalid user ID or password"));

    // Inside the role's prefix: allowed, on every member (tokens are replicated).
    assert_eq!(
        c.etcdctl(&["--user", "alice:alicepw", "put", "app/x", "1"])
            .ok(),
        "OK\n"
    );
    for i in 0..3 {
        assert_eq!(
            c.etcdctl_at(i, &["--user", "alice:alicepw", "get", "app/x"])
                .lines(),
            ["app/x", "1"]
        );
    }
    assert_eq!(
        c.etcdctl(&["--user", "alice:alicepw", "get", "app/", "--prefix"])
            .lines(),
        ["app/x", "1"]
    );
    // Outside it: etcd's permission error, for reads, writes, deletes and txns.
    for args in [
        &["put", "other", "1"][..],
        &["get", "other"],
        &["get", "", "--prefix"],
        &["del", "app/x", "--from-key"],
    ] {
        let mut full = vec!["--user", "alice:alicepw"];
        full.extend_from_slice(args);
        assert!(
            c.etcdctl(&full)
                .err()
                .contains("etcdserver: permission denied"),
            "{args:?}"
        );
    }
    let txn = c.etcdctl_input(
        &["--user", "alice:alicepw", "txn"],
        "\nput app/y 2\n\nput other 2\n\n",
    );
    assert!(txn.err().contains("etcdserver: permission denied"));
    // bob holds no role: nothing at all.
    assert!(c
        .etcdctl(&["--user", "bob:bobpw", "get", "app/x"])
        .err()
        .contains("etcdserver: permission denied"));
    // Administration needs the root role.
    assert!(c
        .etcdctl(&["--user", "alice:alicepw", "user", "list"])
        .err()
        .contains("etcdserver: permission denied"));
    assert!(c
        .etcdctl(&[
            "--user",
            "alice:alicepw",
            "member",
            "add",
            "x",
            "--peer-urls=http://127.0.0.1:1"
        ])
        .err()
        .contains("etcdserver: permission denied"));

    // root reads the store back as etcd prints it.
    let root = ["--user", "root:rootpw"];
    let with_root = |c: &mut Cluster, args: &[&str]| {
        let mut full = root.to_vec();
        full.extend_from_slice(args);
        c.etcdctl(&full)
    };
    assert_eq!(
        with_root(&mut c, &["user", "list"]).lines(),
        ["alice", "bob", "root"]
    );
    assert_eq!(
        with_root(&mut c, &["role", "list"]).lines(),
        ["app", "root"]
    );
    // (etcdctl 3.4 prints user and role lists as text or JSON, not as tables.)
    let users = with_root(&mut c, &["-w", "json", "user", "list"]).json();
    assert_eq!(
        users["users"],
        serde_json::json!(["alice", "bob", "root"]),
        "{users}"
    );
    assert_eq!(
        with_root(&mut c, &["user", "get", "alice"]).lines(),
        ["User: alice", "Roles: app"]
    );
    assert_eq!(
        with_root(&mut c, &["role", "get", "app"]).lines(),
        [
            "Role app",
            "KV Read:",
            "\t[app/, app0) (prefix app/)",
            "KV Write:",
            "\t[app/, app0) (prefix app/)"
        ]
    );
    // A user reads itself; not others.
    assert_eq!(
        c.etcdctl(&["--user", "alice:alicepw", "user", "get", "alice"])
            .lines(),
        ["User: alice", "Roles: app"]
    );
    assert!(c
        .etcdctl(&["--user", "alice:alicepw", "user", "get", "bob"])
        .err()
        .contains("etcdserver: permission denied"));

    // etcd's errors for names.
    assert!(with_root(&mut c, &["user", "add", "alice:x"])
        .err()
        .contains("etcdserver: user name already exists"));
    assert!(with_root(&mut c, &["user", "get", "carol"])
        .err()
        .contains("etcdserver: user name not found"));
    assert!(with_root(&mut c, &["role", "add", "app"])
        .err()
        .contains("etcdserver: role name already exists"));
    assert!(with_root(&mut c, &["user", "grant-role", "bob", "nope"])
        .err()
        .contains("etcdserver: role name not found"));
    assert!(with_root(&mut c, &["user", "delete", "root"])
        .err()
        .contains("etcdserver: invalid auth management"));

    // Revoking the permission takes effect at once.
    assert_eq!(
        with_root(
            &mut c,
            &["role", "revoke-permission", "app", "app/", "--prefix"]
        )
        .ok(),
        "Permission of range [app/, app0) is revoked from role app\n"
    );
    assert!(c
        .etcdctl(&["--user", "alice:alicepw", "get", "app/x"])
        .err()
        .contains("etcdserver: permission denied"));
    // A changed password: the old one no longer works.
    assert_eq!(
        c.etcdctl_input(
            &[
                "--user",
                "root:rootpw",
                "user",
                "passwd",
                "bob",
                "--interactive=false"
            ],
            "bobpw2\n"
        )
        .ok(),
        "Password updated\n"
    );
    assert!(c
        .etcdctl(&["--user", "bob:bobpw", "get", "x"])
        .err()
        .contains("authentication failed"));
    assert_eq!(
        with_root(&mut c, &["user", "revoke-role", "alice", "app"]).ok(),
        "Role app is revoked from user alice\n"
    );
    assert_eq!(
        with_root(&mut c, &["user", "delete", "bob"]).ok(),
        "User bob deleted\n"
    );
    assert_eq!(
        with_root(&mut c, &["role", "delete", "app"]).ok(),
        "Role app deleted\n"
    );

    // Disabled again: anyone may read.
    assert_eq!(
        with_root(&mut c, &["auth", "disable"]).ok(),
        "Authentication Disabled\n"
    );
    assert_eq!(c.etcdctl(&["get", "app/x"]).lines(), ["app/x", "1"]);
}

#[test]
fn watches_and_leases_are_checked_under_auth() {
    if skip_without_etcdctl() {
        return;
    }
    let mut c = Cluster::start(1, FAST_BCRYPT);
    set_up_users(&mut c);
    let endpoints = c.endpoints();

    // A watch outside the role's range is canceled by the server.
    let denied = c.etcdctl(&["--user", "alice:alicepw", "watch", "other"]);
    assert!(
        denied.stdout.contains("etcdserver: permission denied")
            || denied.stderr.contains("etcdserver: permission denied"),
        "{denied:#?}"
    );
    // Without a user at all, etcd says so rather than "permission denied".
    let anonymous = c.etcdctl(&["watch", "other"]);
    assert!(
        format!("{}{}", anonymous.stdout, anonymous.stderr)
            .contains("rpc error: code = InvalidArgument desc = etcdserver: user name is empty"),
        "{anonymous:#?}"
    );

    // A watch inside it sees alice's put.
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--user", "alice:alicepw", "watch", "app/", "--prefix"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl watch");
    let stdout = watch.stdout.take().expect("watch stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Keep putting until the watch (which starts asynchronously) reports it.
    let mut seen = Vec::new();
    for i in 0..50 {
        c.etcdctl(&["--user", "alice:alicepw", "put", "app/w", &i.to_string()])
            .ok();
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
        if seen.iter().any(|l| l == "app/w") {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen.iter().any(|l| l == "PUT"), "{seen:?}");
    assert!(seen.iter().any(|l| l == "app/w"), "{seen:?}");

    // Leases: alice grants one and attaches a key in her range.
    let granted = c.etcdctl(&["--user", "alice:alicepw", "lease", "grant", "600"]);
    let id = granted
        .ok()
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    c.etcdctl(&[
        "--user",
        "alice:alicepw",
        "put",
        "app/leased",
        "v",
        "--lease",
        &id,
    ])
    .ok();
    // bob may not revoke it: that would delete alice's key.
    assert!(c
        .etcdctl(&["--user", "bob:bobpw", "lease", "revoke", &id])
        .err()
        .contains("etcdserver: permission denied"));
    assert!(c
        .etcdctl(&["--user", "bob:bobpw", "lease", "timetolive", &id, "--keys"])
        .err()
        .contains("etcdserver: permission denied"));
    assert_eq!(
        c.etcdctl(&["--user", "alice:alicepw", "lease", "revoke", &id])
            .ok(),
        format!("lease {id} revoked\n")
    );
    assert!(c
        .etcdctl(&["--user", "alice:alicepw", "get", "app/leased"])
        .ok()
        .is_empty());
}

#[test]
fn users_roles_and_the_enabled_flag_survive_a_restart() {
    if skip_without_etcdctl() {
        return;
    }
    let mut c = Cluster::start(1, FAST_BCRYPT);
    set_up_users(&mut c);
    c.etcdctl(&["--user", "alice:alicepw", "put", "app/k", "v"])
        .ok();

    let status = c.members[0].terminate();
    assert!(status.success(), "{status:?}");
    c.restart(0);
    c.wait_leader();

    assert!(c
        .etcdctl(&["get", "app/k"])
        .err()
        .contains("etcdserver: user name is empty"));
    assert_eq!(
        c.etcdctl(&["--user", "alice:alicepw", "get", "app/k"])
            .lines(),
        ["app/k", "v"]
    );
    assert!(c
        .etcdctl(&["--user", "alice:alicepw", "put", "k", "v"])
        .err()
        .contains("etcdserver: permission denied"));
    assert_eq!(
        c.etcdctl(&["--user", "root:rootpw", "user", "list"])
            .lines(),
        ["alice", "bob", "root"]
    );
}

#[test]
fn a_follower_restored_from_a_snapshot_enforces_the_same_users_and_roles() {
    if skip_without_etcdctl() {
        return;
    }
    let mut c = Cluster::start(3, &["--snapshot-count", "20", "--bcrypt-cost", "4"]);
    let f = c.follower();
    assert!(c.members[f].terminate().success());
    set_up_users(&mut c);

    // Enough writes (as root) that the leader compacts its log past the auth
    // entries: the follower can only learn them from a snapshot.
    let leader = c.wait_leader();
    let endpoint = c.members[leader].endpoint();
    common::block_on(async {
        use localcluster::pb::etcdserverpb::auth_client::AuthClient;
        use localcluster::pb::etcdserverpb::kv_client::KvClient;
        use localcluster::pb::etcdserverpb::{AuthenticateRequest, PutRequest};
        let channel = localcluster::client::connect(&endpoint, Duration::from_secs(10))
            .await
            .unwrap();
        let token = AuthClient::new(channel.clone())
            .authenticate(AuthenticateRequest {
                name: "root".into(),
                password: "rootpw".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let token: tonic::metadata::MetadataValue<_> = token.parse().unwrap();
        let mut kv = KvClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("token", token.clone());
            Ok(req)
        });
        for n in 0..200 {
            kv.put(PutRequest {
                key: format!("app/{n:03}").into_bytes().into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    });

    c.restart(f);
    let alice = ["--user", "alice:alicepw"];
    let at_f = |args: &[&str]| {
        let mut full = alice.to_vec();
        full.extend_from_slice(args);
        c.etcdctl_at(f, &full)
    };
    common::eventually(Duration::from_secs(20), "m{f} to catch up", || {
        let out = at_f(&["get", "app/199", "--consistency=s"]);
        (out.success() && out.lines() == ["app/199", "v"]).then_some(())
    });
    assert!(
        c.members[f]
            .current_log()
            .contains("restored state from a leader's snapshot"),
        "m{f} did not restore a snapshot:\n{}",
        c.members[f].current_log()
    );
    assert!(at_f(&["put", "other", "1"])
        .err()
        .contains("etcdserver: permission denied"));
    assert!(c
        .etcdctl_at(f, &["get", "app/099"])
        .err()
        .contains("etcdserver: user name is empty"));
}
