//! TLS on the client and peer URLs, driven by the real `etcdctl` 3.4 with
//! `--cacert/--cert/--key`: `https://` clients and peers with certificates
//! from a test CA (made with rcgen), client-cert-auth refusing clients without
//! a certificate and naming auth users by certificate common name, a revoked
//! client certificate (CRL), a peer with a foreign certificate that never
//! joins, and auto-tls.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{etcdctl, eventually, free_port, member_once, skip_without_etcdctl, Member, FAST};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};

/// A test certificate authority writing PEM files into a directory.
struct Pki {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            issuer: Issuer::new(params, key),
        }
    }

    fn ca(&self) -> String {
        self.path(&format!("{}.pem", self.name))
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_string()
    }

    /// A certificate for 127.0.0.1/localhost with common name `cn`, usable by
    /// servers and clients; returns (cert, key) paths.
    fn issue(&self, stem: &str, cn: &str, serial: u64) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (format!("{stem}.pem"), format!("{stem}-key.pem"));
        std::fs::write(self.dir.join(&c), cert.pem()).unwrap();
        std::fs::write(self.dir.join(&k), key.serialize_pem()).unwrap();
        (self.path(&c), self.path(&k))
    }

    /// A CRL revoking `serials`.
    fn crl(&self, serials: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).unwrap();
        let file = format!("{}-crl.pem", self.name);
        std::fs::write(self.dir.join(&file), crl.pem().unwrap()).unwrap();
        self.path(&file)
    }
}

/// Flags of member `name` with the given schemes, ports and cluster.
fn member_args(
    dir: &Path,
    name: &str,
    (client_scheme, client_port): (&str, u16),
    (peer_scheme, peer_port): (&str, u16),
    initial_cluster: &str,
    state: &str,
    extra: &[String],
) -> Vec<String> {
    let client = format!("{client_scheme}://127.0.0.1:{client_port}");
    let peer = format!("{peer_scheme}://127.0.0.1:{peer_port}");
    let mut args: Vec<String> = [
        "--name",
        name,
        "--data-dir",
        dir.join(name).to_str().unwrap(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-token",
        &format!(
            "tls-{}",
            dir.file_name().unwrap_or_default().to_string_lossy()
        ),
        "--initial-cluster-state",
        state,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(FAST.iter().map(|s| s.to_string()));
    args.extend(extra.iter().cloned());
    args
}

/// Starts `n` members with https client URLs and `peer_scheme` peer URLs,
/// each given `extra(i)` flags; waits until each is ready.
fn start_cluster(
    dir: &Path,
    n: usize,
    peer_scheme: &str,
    extra: impl Fn(usize) -> Vec<String>,
) -> Vec<Member> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}={peer_scheme}://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<Member> = ports
        .iter()
        .enumerate()
        .map(|(i, &(cp, pp))| {
            let name = format!("m{i}");
            let args = member_args(
                dir,
                &name,
                ("https", cp),
                (peer_scheme, pp),
                &initial,
                "new",
                &extra(i),
            );
            Member::new(dir, &name, cp, pp, args)
        })
        .collect();
    for m in &mut members {
        m.spawn();
    }
    for m in &mut members {
        m.wait_ready();
    }
    members
}

/// A one-member https cluster that holds `k=v` and has registered a second
/// member `m1` (`member add`), whose ports and `--initial-cluster` are kept
/// here so a test can try to start it with certificates of its choice.
struct JoinSlot {
    members: Vec<Member>,
    ca: String,
    client_port: u16,
    peer_port: u16,
    peer_url: String,
    initial: String,
}

impl JoinSlot {
    /// Starts m0 with `first_flags` and registers m1.
    fn new(dir: &Path, ca: &str, first_flags: Vec<String>) -> JoinSlot {
        let members = start_cluster(dir, 1, "https", |_| first_flags.clone());
        let (client_port, peer_port) = (free_port(), free_port());
        let peer_url = format!("https://127.0.0.1:{peer_port}");
        let initial = format!(
            "m0=https://127.0.0.1:{},m1={peer_url}",
            members[0].peer_port
        );
        let slot = JoinSlot {
            members,
            ca: ca.to_string(),
            client_port,
            peer_port,
            peer_url,
            initial,
        };
        eventually(Duration::from_secs(20), "a put over https", || {
            slot.etcdctl(&["put", "k", "v"]).success().then_some(())
        });
        let add = format!("--peer-urls={}", slot.peer_url);
        slot.etcdctl(&["member", "add", "m1", &add]).ok();
        slot
    }

    /// etcdctl against m0, trusting the CA.
    fn etcdctl(&self, args: &[&str]) -> common::Output {
        let mut full = vec!["--cacert", self.ca.as_str()];
        full.extend_from_slice(args);
        etcdctl(&https_endpoints(&self.members), &full)
    }

    /// m1's flags with `extra` (its certificates).
    fn args(&self, dir: &Path, extra: &[String]) -> Vec<String> {
        member_args(
            dir,
            "m1",
            ("https", self.client_port),
            ("https", self.peer_port),
            &self.initial,
            "existing",
            extra,
        )
    }

    /// Runs m1 with `extra` to its end: it must fail to join.
    fn refused(&self, dir: &Path, extra: &[String]) -> common::Output {
        let args = self.args(dir, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = member_once(dir, &args, Duration::from_secs(30));
        assert!(!out.success(), "{out:#?}");
        out
    }

    /// Starts m1 afresh with `extra`; it must join and serve `k`.
    fn joins(&mut self, dir: &Path, extra: &[String]) {
        std::fs::remove_dir_all(dir.join("m1")).ok();
        let args = self.args(dir, extra);
        let mut m1 = Member::new(dir, "m1", self.client_port, self.peer_port, args);
        m1.spawn();
        m1.wait_ready();
        let one = format!("https://127.0.0.1:{}", self.client_port);
        eventually(
            Duration::from_secs(20),
            "the joined member to serve k",
            || {
                let out = etcdctl(&one, &["--cacert", &self.ca, "get", "k"]);
                (out.success() && out.lines() == ["k", "v"]).then_some(())
            },
        );
        self.members.push(m1);
    }
}

fn https_endpoints(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("https://127.0.0.1:{}", m.client_port))
        .collect::<Vec<_>>()
        .join(",")
}

fn flags(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
}

#[test]
fn etcdctl_over_https_puts_gets_and_lists_members_of_a_tls_cluster() {
    if skip_without_etcdctl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.issue("server", "server", 1);
    let ca = pki.ca();
    let members = start_cluster(dir.path(), 3, "https", |_| {
        flags(&[
            ("--cert-file", &cert),
            ("--key-file", &key),
            ("--peer-cert-file", &cert),
            ("--peer-key-file", &key),
            ("--peer-trusted-ca-file", &ca),
        ])
        .into_iter()
        .chain(["--peer-client-cert-auth".to_string()])
        .collect()
    });
    let endpoints = https_endpoints(&members);
    let tls = ["--cacert", ca.as_str()];
    let with = |args: &[&str]| {
        let mut full = tls.to_vec();
        full.extend_from_slice(args);
        etcdctl(&endpoints, &full)
    };
    // Put through the TLS client port, replicated over the TLS peer links.
    eventually(Duration::from_secs(20), "a put over https", || {
        with(&["put", "k", "v"]).success().then_some(())
    });
    for m in &members {
        let one = format!("https://127.0.0.1:{}", m.client_port);
        assert_eq!(
            etcdctl(&one, &["--cacert", &ca, "get", "k"]).lines(),
            ["k", "v"]
        );
    }
    let list = with(&["member", "list"]);
    let text = list.ok();
    assert_eq!(text.lines().count(), 3, "{text}");
    for m in &members {
        assert!(
            text.contains(&format!("https://127.0.0.1:{}", m.peer_port)),
            "{text}"
        );
        assert!(
            text.contains(&format!("https://127.0.0.1:{}", m.client_port)),
            "{text}"
        );
    }
    let status = with(&["endpoint", "status", "-w", "json"]).json();
    assert_eq!(status.as_array().unwrap().len(), 3, "{status}");
    // A client that does not trust the CA is refused by its own TLS check.
    assert!(!etcdctl(&endpoints, &["get", "k", "--dial-timeout", "2s"]).success());
    let health = with(&["endpoint", "health"]);
    assert!(
        health.stdout.contains("is healthy") || health.stderr.contains("is healthy"),
        "{health:#?}"
    );
}

#[test]
fn client_cert_auth_refuses_clients_without_a_valid_certificate_and_names_users_by_cn() {
    if skip_without_etcdctl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let other = Pki::new(dir.path(), "other-ca");
    let (cert, key) = pki.issue("server", "server", 1);
    let (root_cert, root_key) = pki.issue("root", "root", 2);
    let (alice_cert, alice_key) = pki.issue("alice", "alice", 3);
    let (revoked_cert, revoked_key) = pki.issue("revoked", "alice", 4);
    let (rogue_cert, rogue_key) = other.issue("rogue", "root", 5);
    let ca = pki.ca();
    let crl = pki.crl(&[4]);
    let members = start_cluster(dir.path(), 1, "http", |_| {
        flags(&[
            ("--cert-file", &cert),
            ("--key-file", &key),
            ("--trusted-ca-file", &ca),
            ("--client-crl-file", &crl),
            ("--bcrypt-cost", "4"),
        ])
        .into_iter()
        .chain(["--client-cert-auth".to_string()])
        .collect()
    });
    let ep = https_endpoints(&members);
    let as_user = |cert: &str, key: &str, args: &[&str]| {
        let mut full = vec!["--cacert", ca.as_str(), "--cert", cert, "--key", key];
        full.extend_from_slice(args);
        etcdctl(&ep, &full)
    };
    eventually(Duration::from_secs(20), "a put with a client cert", || {
        as_user(&root_cert, &root_key, &["put", "k", "v"])
            .success()
            .then_some(())
    });
    // No certificate, a certificate of another CA, a revoked certificate: refused.
    let quick = [
        "get",
        "k",
        "--dial-timeout",
        "2s",
        "--command-timeout",
        "3s",
    ];
    let mut bare = vec!["--cacert", ca.as_str()];
    bare.extend_from_slice(&quick);
    assert!(!etcdctl(&ep, &bare).success());
    assert!(!as_user(&rogue_cert, &rogue_key, &quick).success());
    assert!(!as_user(&revoked_cert, &revoked_key, &quick).success());
    assert_eq!(
        as_user(&alice_cert, &alice_key, &["get", "k"]).lines(),
        ["k", "v"]
    );

    // localcluster's own client: with a certificate it is served, without refused.
    let url = ep.clone();
    let tls = localcluster::tls::client_config(&localcluster::tls::TlsSettings {
        trusted_ca_file: Some(ca.clone().into()),
        cert_file: Some(alice_cert.clone().into()),
        key_file: Some(alice_key.clone().into()),
        ..Default::default()
    })
    .unwrap();
    common::block_on(async {
        use localcluster::pb::etcdserverpb::maintenance_client::MaintenanceClient;
        use localcluster::pb::etcdserverpb::StatusRequest;
        let timeout = Duration::from_secs(5);
        let channel = localcluster::client::connect_with(&url, timeout, Some(tls))
            .await
            .unwrap();
        assert!(MaintenanceClient::new(channel)
            .status(StatusRequest {})
            .await
            .is_ok());
        assert!(localcluster::client::status(&url, timeout).await.is_none());
    });

    // With auth on, the certificate's common name is the user: no --user needed.
    let root = |args: &[&str]| as_user(&root_cert, &root_key, args);
    root(&["user", "add", "root:rootpw"]).ok();
    // alice logs in by certificate only.
    assert_eq!(
        root(&["user", "add", "alice", "--no-password"]).ok(),
        "User alice created\n"
    );
    root(&["role", "add", "app"]).ok();
    root(&[
        "role",
        "grant-permission",
        "app",
        "readwrite",
        "app/",
        "--prefix",
    ])
    .ok();
    root(&["user", "grant-role", "alice", "app"]).ok();
    assert_eq!(root(&["auth", "enable"]).ok(), "Authentication Enabled\n");
    assert_eq!(
        as_user(&alice_cert, &alice_key, &["put", "app/x", "1"]).ok(),
        "OK\n"
    );
    assert!(as_user(&alice_cert, &alice_key, &["put", "other", "1"])
        .err()
        .contains("etcdserver: permission denied"));
    assert!(as_user(&alice_cert, &alice_key, &["user", "list"])
        .err()
        .contains("etcdserver: permission denied"));
    assert_eq!(root(&["user", "list"]).lines(), ["alice", "root"]);
    assert!(as_user(
        &root_cert,
        &root_key,
        &["--user", "alice:guess", "get", "app/x"]
    )
    .err()
    .contains("etcdserver: authentication failed, invalid user ID or password"));
    assert_eq!(root(&["get", "app/x"]).lines(), ["app/x", "1"]);

    // Not through the JSON gateway: there a certificate's common name names
    // no user (as in etcd), so root's certificate alone reads nothing.
    if !common::skip_without_curl() {
        let url = format!("{}/v3/kv/range", ep.split(',').next().unwrap());
        let (code, body) = common::curl(&[
            "--cacert",
            &ca,
            "--cert",
            &root_cert,
            "--key",
            &root_key,
            "-X",
            "POST",
            &url,
            "-d",
            r#"{"key":"YXBwL3g="}"#,
        ]);
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("user name is empty"), "{body}");
    }
}

#[test]
fn a_peer_without_a_certificate_of_the_peer_ca_never_joins() {
    if skip_without_etcdctl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let other = Pki::new(dir.path(), "other-ca");
    let (cert, key) = pki.issue("server", "server", 1);
    let (rogue_cert, rogue_key) = other.issue("rogue", "server", 2);
    let ca = pki.ca();
    let peer_flags = |cert: &str, key: &str| {
        let mut f = flags(&[
            ("--cert-file", cert),
            ("--key-file", key),
            ("--peer-cert-file", cert),
            ("--peer-key-file", key),
            ("--peer-trusted-ca-file", &ca),
        ]);
        f.push("--peer-client-cert-auth=true".to_string());
        f
    };
    let mut slot = JoinSlot::new(dir.path(), &ca, peer_flags(&cert, &key));

    // Its certificate is signed by another CA: the cluster refuses its
    // handshake, so it cannot even learn the membership.
    let out = slot.refused(dir.path(), &peer_flags(&rogue_cert, &rogue_key));
    assert!(
        out.stderr.contains("cannot reach the running cluster")
            || out.stdout.contains("cannot reach the running cluster"),
        "{out:#?}"
    );
    // The member stays unstarted (no name) in the list.
    let list = slot.etcdctl(&["member", "list", "-w", "json"]).json();
    let m1 = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["peerURLs"][0] == slot.peer_url.as_str())
        .cloned()
        .unwrap();
    assert!(m1.get("name").is_none() || m1["name"] == "", "{list}");

    // With a certificate of the peer CA it joins.
    slot.joins(dir.path(), &peer_flags(&cert, &key));
}

#[test]
fn auto_tls_serves_clients_that_skip_verification() {
    if skip_without_etcdctl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let members = start_cluster(dir.path(), 2, "https", |_| {
        vec!["--auto-tls".to_string(), "--peer-auto-tls".to_string()]
    });
    let ep = https_endpoints(&members);
    // etcdctl only applies --insecure-skip-tls-verify to a TLS config it was
    // asked to build: without --cacert/--cert that takes
    // --insecure-transport=false (as etcd's own auto-tls tests run it).
    let skip = ["--insecure-transport=false", "--insecure-skip-tls-verify"];
    eventually(Duration::from_secs(20), "a put with auto-tls", || {
        etcdctl(&ep, &[skip[0], skip[1], "put", "k", "v"])
            .success()
            .then_some(())
    });
    for m in &members {
        let one = format!("https://127.0.0.1:{}", m.client_port);
        assert_eq!(
            etcdctl(&one, &[skip[0], skip[1], "get", "k"]).lines(),
            ["k", "v"]
        );
        for side in ["client", "peer"] {
            let fixtures = m.data_dir.join("fixtures").join(side);
            assert!(fixtures.join("cert.pem").is_file(), "{fixtures:?}");
            assert!(fixtures.join("key.pem").is_file(), "{fixtures:?}");
        }
    }
    // A self-signed certificate does not verify.
    assert!(!etcdctl(
        &ep,
        &[
            "--insecure-transport=false",
            "get",
            "k",
            "--dial-timeout",
            "2s"
        ]
    )
    .success());
}

#[test]
fn peer_cert_allowed_cn_keeps_out_peers_with_another_common_name() {
    if skip_without_etcdctl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.issue("peer", "peer-ok", 1);
    let (intruder_cert, intruder_key) = pki.issue("intruder", "intruder", 2);
    let ca = pki.ca();
    let peer_flags = |cert: &str, key: &str| {
        let mut f = flags(&[
            ("--cert-file", cert),
            ("--key-file", key),
            ("--peer-cert-file", cert),
            ("--peer-key-file", key),
            ("--peer-trusted-ca-file", &ca),
            ("--peer-cert-allowed-cn", "peer-ok"),
        ]);
        f.push("--peer-client-cert-auth".to_string());
        f
    };
    let mut slot = JoinSlot::new(dir.path(), &ca, peer_flags(&cert, &key));

    // Signed by the peer CA, but not the allowed common name.
    slot.refused(dir.path(), &peer_flags(&intruder_cert, &intruder_key));
    let log = slot.members[0].current_log();
    assert!(log.contains("certificate common name not allowed"), "{log}");

    slot.joins(dir.path(), &peer_flags(&cert, &key));
}

#[test]
fn bench_puts_over_https_verifying_the_server_against_etcdctl_cacert() {
    // `bench` dials its own (write-coalescing) connections; over https they
    // verify the server with the CA that etcdctl's variable names.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.issue("server", "server", 1);
    let ca = pki.ca();
    let members = start_cluster(dir.path(), 1, "http", |_| {
        flags(&[("--cert-file", &cert), ("--key-file", &key)])
    });
    let endpoints = https_endpoints(&members);
    let bench = |ca: &str| {
        std::process::Command::new(common::BIN)
            .args(["bench", "put", "--endpoints", &endpoints])
            .args(["--total", "50", "--clients", "4", "-w", "json"])
            .env("ETCDCTL_CACERT", ca)
            .output()
            .unwrap()
    };
    let out = eventually(Duration::from_secs(20), "bench put over https", || {
        let out = bench(&ca);
        out.status.success().then_some(out)
    });
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["ok"], 50, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    // A CA that did not sign the server's certificate: refused.
    let other = Pki::new(dir.path(), "other").ca();
    let refused = bench(&other);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cannot connect"),
        "{refused:?}"
    );
}

#[test]
fn a_learner_is_promoted_through_a_follower_over_peer_tls() {
    if skip_without_etcdctl() {
        return;
    }
    // A follower asks the leader how far the learner got, on the leader's
    // peer URL: with a peer CA, only with its peer certificate.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.issue("server", "server", 1);
    let ca = pki.ca();
    let tls = |_: usize| {
        flags(&[
            ("--cert-file", &cert),
            ("--key-file", &key),
            ("--peer-cert-file", &cert),
            ("--peer-key-file", &key),
            ("--peer-trusted-ca-file", &ca),
        ])
    };
    let members = start_cluster(dir.path(), 2, "https", tls);
    let ep = https_endpoints(&members);
    let (client_port, peer_port) = (free_port(), free_port());
    let peer = format!("https://127.0.0.1:{peer_port}");
    let added = eventually(Duration::from_secs(20), "member add --learner", || {
        let out = etcdctl(
            &ep,
            &[
                "--cacert",
                &ca,
                "member",
                "add",
                "m2",
                &format!("--peer-urls={peer}"),
                "--learner",
            ],
        );
        out.success().then(|| out.stdout.clone())
    });
    let id = added.split_whitespace().nth(1).unwrap().to_string();
    let initial = format!(
        "m0=https://127.0.0.1:{},m1=https://127.0.0.1:{},m2={peer}",
        members[0].peer_port, members[1].peer_port
    );
    let args = member_args(
        dir.path(),
        "m2",
        ("https", client_port),
        ("https", peer_port),
        &initial,
        "existing",
        &tls(2),
    );
    let mut learner = Member::new(dir.path(), "m2", client_port, peer_port, args);
    learner.spawn();
    learner.wait_ready();

    // The voter that is not the leader.
    let follower = eventually(Duration::from_secs(20), "a follower", || {
        members.iter().find_map(|m| {
            let one = format!("https://127.0.0.1:{}", m.client_port);
            let status = etcdctl(&one, &["--cacert", &ca, "endpoint", "status", "-w", "json"]);
            let status = status.success().then(|| status.json())?;
            let s = &status[0]["Status"];
            let (me, leader) = (s["header"]["member_id"].as_u64()?, s["leader"].as_u64()?);
            (leader != 0 && me != leader).then_some(one)
        })
    });
    let out = eventually(Duration::from_secs(20), "member promote", || {
        let out = etcdctl(&follower, &["--cacert", &ca, "member", "promote", &id]);
        out.success().then_some(out)
    });
    assert!(out.stdout.contains("promoted"), "{}", out.stdout);
}
