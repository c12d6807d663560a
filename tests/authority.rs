//! The real `etcdctl` 3.4 against a real 1-member cluster, through the client
//! listener's HTTP/2 shim (`localcluster::api::h2fix`): grpc-go sends a whole
//! URL (`http://127.0.0.1:PORT`) as `:authority` for `http://` endpoints and
//! `--cluster` commands, which h2 alone rejects with `RST_STREAM
//! PROTOCOL_ERROR`. Plain HTTP/1 (`GET /health`) must still work on the same
//! port.
//!
//! Each test starts its own member on listeners bound to 127.0.0.1:0. Without
//! `etcdctl` on PATH the etcdctl tests print a SKIP line and pass, unless
//! `CI=true`, where they fail.
//!
//! `shim_overhead` (ignored; `cargo test --test authority -- --ignored
//! --nocapture shim_overhead`) times sequential Range calls with and without
//! the shim, both from tonic (pass-through after the first header block) and
//! from a bare HTTP/2 client that sends a URL authority (re-encoding path).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use localcluster::member::{Listeners, Tuning};
use localcluster::{Member, MemberConfig};

/// A 1-member cluster and the runtime the test drives it with.
struct Cluster {
    member: Option<Member>,
    rt: tokio::runtime::Runtime,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let client = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = client.local_addr().unwrap().port();
        let cu = format!("http://127.0.0.1:{port}");
        let pu = format!("http://127.0.0.1:{}", peer.local_addr().unwrap().port());
        let data = dir.path().join("a");
        let args = [
            "--name".to_string(),
            "a".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            cu.clone(),
            "--advertise-client-urls".into(),
            cu,
            "--listen-peer-urls".into(),
            pu.clone(),
            "--initial-advertise-peer-urls".into(),
            pu.clone(),
            "--initial-cluster".into(),
            format!("a={pu}"),
        ];
        let cfg = MemberConfig::from_args(args, &Default::default()).unwrap();
        let listeners = Listeners {
            client: vec![client],
            peer: vec![peer],
        };
        let member = Member::start_with(&cfg, listeners, Tuning::default()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), member.wait_ready())
                .await
                .expect("member ready")
        });
        Cluster {
            member: Some(member),
            rt,
            port,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn member(&self) -> &Member {
        self.member.as_ref().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(m) = self.member.take() {
            m.kill();
        }
    }
}

/// Runs `etcdctl args...`; `None` (after a SKIP line) if it is not installed
/// and this is not CI.
fn etcdctl(args: &[&str]) -> Option<Output> {
    let out = Command::new("etcdctl")
        .args(["--dial-timeout=5s", "--command-timeout=10s"])
        .args(args)
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => Some(o),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "etcdctl is not installed (apt-get install etcd-client)"
            );
            eprintln!("SKIP: etcdctl not found on PATH; install etcd-client to run this test");
            None
        }
        Err(e) => panic!("cannot run etcdctl: {e}"),
    }
}

fn assert_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn etcdctl_endpoint_hashkv_with_url_endpoint_succeeds() {
    let c = Cluster::start();
    let ep = c.endpoint();
    let Some(out) = etcdctl(&["--endpoints", &ep, "endpoint", "hashkv"]) else {
        return;
    };
    let stdout = assert_ok(&out, "endpoint hashkv");
    assert!(stdout.starts_with(&format!("{ep}, ")), "{stdout}");
}

#[test]
fn etcdctl_endpoint_status_cluster_table_succeeds() {
    let c = Cluster::start();
    let ep = c.endpoint();
    let Some(out) = etcdctl(&[
        "--endpoints",
        &ep,
        "endpoint",
        "status",
        "--cluster",
        "-w",
        "table",
    ]) else {
        return;
    };
    let stdout = assert_ok(&out, "endpoint status --cluster");
    let id = format!("{:x}", c.member().id());
    assert!(stdout.contains(&ep) && stdout.contains(&id), "{stdout}");
    assert!(!stdout.contains("PROTOCOL_ERROR"), "{stdout}");
}

#[test]
fn etcdctl_put_get_and_hashkv_cluster_with_url_endpoint_succeed() {
    let c = Cluster::start();
    let ep = c.endpoint();
    let Some(out) = etcdctl(&["--endpoints", &ep, "put", "k", "v"]) else {
        return;
    };
    assert_eq!(assert_ok(&out, "put"), "OK\n");
    let out = etcdctl(&["--endpoints", &ep, "get", "k"]).unwrap();
    assert_eq!(assert_ok(&out, "get"), "k\nv\n");
    let out = etcdctl(&["--endpoints", &ep, "endpoint", "hashkv", "--cluster"]).unwrap();
    assert!(assert_ok(&out, "endpoint hashkv --cluster").starts_with(&ep));
}

#[test]
fn http1_health_still_works_on_the_client_port() {
    let c = Cluster::start();
    let mut s = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    assert!(resp.ends_with(r#"{"health":"true"}"#), "{resp}");
}

/// Sequential serializable Range calls (no Raft round trip, so mostly
/// transport) over one tonic connection; returns the elapsed time.
async fn tonic_ranges(endpoint: &str, n: usize) -> Duration {
    use localcluster::pb::etcdserverpb::RangeRequest;
    let mut kv = localcluster::client::kv(endpoint, Duration::from_secs(5))
        .await
        .unwrap();
    let req = RangeRequest {
        key: b"k".to_vec(),
        serializable: true,
        ..Default::default()
    };
    for _ in 0..50 {
        kv.range(req.clone()).await.unwrap();
    }
    let start = Instant::now();
    for _ in 0..n {
        kv.range(req.clone()).await.unwrap();
    }
    start.elapsed()
}

/// A bare HTTP/2 client that sends gRPC Range calls with any `:authority`
/// (tonic cannot send a URL there), one at a time.
struct RawH2 {
    s: TcpStream,
    enc: loona_hpack::Encoder<'static>,
    next_stream: u32,
}

impl RawH2 {
    fn connect(port: u16) -> RawH2 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = localcluster::api::h2fix::PREFACE.to_vec();
        hello.extend(Self::frame(0x4, 0, 0, &[])); // SETTINGS
        hello.extend(Self::frame(0x8, 0, 0, &(1u32 << 30).to_be_bytes())); // WINDOW_UPDATE
        s.write_all(&hello).unwrap();
        RawH2 {
            s,
            enc: loona_hpack::Encoder::new(),
            next_stream: 1,
        }
    }

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([ty, flags]);
        f.extend(stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// One Range call; returns once the response trailers arrived.
    fn range(&mut self, authority: &str, timeout_us: u32) {
        use prost::Message as _;
        let stream = self.next_stream;
        self.next_stream += 2;
        let timeout = format!("{timeout_us}u");
        let headers: [(&[u8], &[u8]); 8] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.KV/Range"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"grpc-go/1.26.0"),
            (b"te", b"trailers"),
            (b"grpc-timeout", timeout.as_bytes()),
        ];
        let block = self.enc.encode(headers);
        let msg = localcluster::pb::etcdserverpb::RangeRequest {
            key: b"k".to_vec(),
            serializable: true,
            ..Default::default()
        }
        .encode_to_vec();
        let mut body = vec![0];
        body.extend((msg.len() as u32).to_be_bytes());
        body.extend(msg);
        let mut out = Self::frame(0x1, 0x4, stream, &block);
        out.extend(Self::frame(0x0, 0x1, stream, &body));
        self.s.write_all(&out).unwrap();
        loop {
            let mut hdr = [0u8; 9];
            self.s.read_exact(&mut hdr).unwrap();
            let len = u32::from_be_bytes([0, hdr[0], hdr[1], hdr[2]]) as usize;
            let mut payload = vec![0; len];
            self.s.read_exact(&mut payload).unwrap();
            let (ty, flags) = (hdr[3], hdr[4]);
            let id = u32::from_be_bytes([hdr[5], hdr[6], hdr[7], hdr[8]]);
            match ty {
                0x4 if flags & 0x1 == 0 => {
                    self.s.write_all(&Self::frame(0x4, 0x1, 0, &[])).unwrap()
                }
                0x3 | 0x7 => panic!("stream reset or GOAWAY: {payload:?}"),
                0x1 if id == stream && flags & 0x1 != 0 => return,
                _ => {}
            }
        }
    }
}

/// `n` Range calls over one bare HTTP/2 connection; returns the elapsed time.
fn raw_ranges(port: u16, authority: &str, n: usize) -> Duration {
    let mut c = RawH2::connect(port);
    for i in 0..50 {
        c.range(authority, 5_000_000 - i);
    }
    let start = Instant::now();
    for i in 0..n as u32 {
        c.range(authority, 4_000_000 - i);
    }
    start.elapsed()
}

fn per_call(d: Duration, n: usize) -> String {
    format!("{:.0} us/call", d.as_secs_f64() * 1e6 / n as f64)
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn shim_overhead() {
    const N: usize = 2000;
    let c = Cluster::start();
    // The member's router served twice more on the test's runtime, where the
    // client runs too (the member's own port lives on the member's runtime,
    // so comparing against it would also measure cross-runtime wake-ups).
    let (servers, shim, plain) = c.rt.block_on(async {
        use axum::serve::ListenerExt;
        use localcluster::api::h2fix::H2FixListener;
        use std::future::IntoFuture;
        let router = localcluster::api::server::router(c.member().core().clone());
        let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shim = l1.local_addr().unwrap().port();
        let plain = l2.local_addr().unwrap().port();
        let l2 = l2.tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
        let servers = [
            tokio::spawn(axum::serve(H2FixListener::new(l1), router.clone()).into_future()),
            tokio::spawn(axum::serve(l2, router).into_future()),
        ];
        (servers, shim, plain)
    });
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    for round in 0..3 {
        // Alternate the order so neither side always runs first.
        let (a, b) = c.rt.block_on(async {
            if round % 2 == 0 {
                (
                    tonic_ranges(&url(shim), N).await,
                    tonic_ranges(&url(plain), N).await,
                )
            } else {
                let b = tonic_ranges(&url(plain), N).await;
                (tonic_ranges(&url(shim), N).await, b)
            }
        });
        println!(
            "round {round}: {N} tonic Range calls: shim (pass-through) {}, no shim {}",
            per_call(a, N),
            per_call(b, N)
        );
        let fine = format!("127.0.0.1:{shim}");
        let raw_rewrite = raw_ranges(shim, &url(shim), N);
        let raw_pass = raw_ranges(shim, &fine, N);
        let raw_plain = raw_ranges(plain, &fine, N);
        println!(
            "round {round}: {N} bare-h2 Range calls: shim re-encoding (URL authority) {}, \
             shim pass-through {}, no shim {}",
            per_call(raw_rewrite, N),
            per_call(raw_pass, N),
            per_call(raw_plain, N)
        );
    }
    for s in servers {
        s.abort();
    }
}
