//! One client listener serving gRPC (HTTP/2, with or without prior knowledge)
//! and plain HTTP/1 side by side, as etcd does on its client URLs.
//!
//! Connections come from [`super::listener`] (plain or TLS) and go through
//! [`super::h2fix`], which repairs the URL-shaped `:authority` etcd's Go
//! clients send and h2 would reject.
//!
//! `transport_status` gives an oversized request grpc-go's status
//! (`ResourceExhausted`) where tonic's would be `OutOfRange`.
//!
//! [`refusal`] (on the router, the `Refusal` layer; on the direct gRPC
//! path, `super::dispatch`) refuses a call before its service sees it, as
//! etcd's interceptors do: while this member is a learner, every call a
//! learner does not serve (all but `Status`, `Snapshot` and `Range`, whose
//! linearizable form `super::kv` refuses) with etcd's `etcdserver: rpc not
//! supported for learner`; and a call that requires a leader (`hasleader`
//! metadata) with `etcdserver: no leader` while none is known.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use futures::future::{ready, Either, Ready};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::AuthService;
use super::cluster::ClusterService;
use super::dispatch::Dispatch;
use super::election::ElectionService;
use super::kv::KvService;
use super::lease::LeaseService;
use super::listener::ClientListener;
use super::lock::LockService;
use super::maintenance::MaintenanceService;
use super::watch::WatchService;
use super::Core;
use crate::pb::etcdserverpb::auth_server::AuthServer;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;
use crate::pb::etcdserverpb::kv_server::KvServer;
use crate::pb::etcdserverpb::lease_server::LeaseServer;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::pb::etcdserverpb::watch_server::WatchServer;
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;

/// Bytes a gRPC frame may exceed `--max-request-bytes` by before the transport
/// itself refuses it (etcd allows the same overhead).
const GRPC_OVERHEAD: usize = 512 * 1024;

/// The member's gRPC services, each configured once (message size limits);
/// each is cheap to clone (it holds its handler in an `Arc`).
pub(super) struct Services {
    pub kv: KvServer<KvService>,
    pub watch: WatchServer<WatchService>,
    pub lease: LeaseServer<LeaseService>,
    pub cluster: ClusterServer<ClusterService>,
    pub maintenance: MaintenanceServer<MaintenanceService>,
    pub auth: AuthServer<AuthService>,
    pub lock: LockServer<LockService>,
    pub election: ElectionServer<ElectionService>,
}

impl Services {
    pub fn new(core: &Arc<Core>) -> Services {
        let max = max_body(core);
        // The services that take large requests: read up to `max`, answer
        // without a limit (a range may return the whole store).
        macro_rules! sized {
            ($server:ident, $service:ident) => {
                $server::new($service::new(core.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(usize::MAX)
            };
        }
        Services {
            kv: sized!(KvServer, KvService),
            watch: sized!(WatchServer, WatchService),
            lease: sized!(LeaseServer, LeaseService),
            cluster: sized!(ClusterServer, ClusterService),
            maintenance: sized!(MaintenanceServer, MaintenanceService),
            auth: AuthServer::new(AuthService::new(core.clone())),
            lock: LockServer::new(LockService::new(core.clone())),
            election: ElectionServer::new(ElectionService::new(core.clone())),
        }
    }

    /// The services as tonic routes.
    fn routes(self) -> tonic::service::Routes {
        tonic::service::Routes::new(self.kv)
            .add_service(self.cluster)
            .add_service(self.maintenance)
            .add_service(self.lease)
            .add_service(self.auth)
            .add_service(self.lock)
            .add_service(self.election)
            .add_service(self.watch)
    }
}

/// The largest gRPC message a member reads: `--max-request-bytes` and the
/// overhead etcd allows on top.
fn max_body(core: &Core) -> usize {
    // Saturating: `--max-request-bytes` may be as large as a u64 (no limit).
    core.limits.max_request_bytes.saturating_add(GRPC_OVERHEAD)
}

/// What a client port serves: gRPC calls straight to their service, the
/// rest through [`router`].
pub fn dispatch(core: Arc<Core>) -> super::dispatch::Dispatch {
    super::dispatch::Dispatch::new(core.clone(), router(core))
}

/// The router with every client service and HTTP endpoint. Client ports
/// route gRPC calls around it ([`dispatch`]); the JSON gateway calls the
/// services through it.
pub fn router(core: Arc<Core>) -> axum::Router {
    let max = max_body(&core);
    let grpc = Services::new(&core)
        .routes()
        .into_axum_router()
        .layer(tower::util::MapResponseLayer::new(
            transport_status as fn(Response) -> Response,
        ))
        .layer(RefusalLayer { core: core.clone() })
        .layer(super::grpc_metrics::GrpcMetricsLayer::new(
            core.metrics.clone(),
        ));
    let with_gateway = super::gateway::routes(grpc.clone(), grpc, max.saturating_mul(2));
    super::http::routes(with_gateway, core)
}

/// Why this member refuses a gRPC call before its service sees it, as
/// etcd's interceptors do: a learner serves only [`LEARNER_METHODS`], and a
/// call whose metadata requires a leader ([`super::leader_required`]) is
/// refused with `no leader` while none is known.
pub(super) fn refusal(core: &Core, path: &str, headers: &http::HeaderMap) -> Option<tonic::Status> {
    if core.is_learner() && !LEARNER_METHODS.contains(&path) {
        return Some(super::errors::not_supported_for_learner());
    }
    const KEY: http::HeaderName = http::HeaderName::from_static(super::REQUIRE_LEADER);
    let required = headers.get(&KEY).map(|v| v.as_bytes());
    if super::leader_required(required) && core.raft.leader_id() == 0 {
        return Some(super::errors::no_leader());
    }
    None
}

/// The gRPC methods a learner serves (etcd's `isRPCSupportedForLearner`).
pub(super) const LEARNER_METHODS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Snapshot",
];

/// Refuses the calls [`refusal`] refuses, on the router: a tower layer, so a
/// call costs one check (axum's `from_fn` cloned the inner route and boxed a
/// future on top of what every layered route costs).
#[derive(Clone)]
struct RefusalLayer {
    core: Arc<Core>,
}

impl<S> tower::Layer<S> for RefusalLayer {
    type Service = Refusal<S>;
    fn layer(&self, inner: S) -> Refusal<S> {
        Refusal {
            inner,
            core: self.core.clone(),
        }
    }
}

/// The service made by [`RefusalLayer`].
#[derive(Clone)]
struct Refusal<S> {
    inner: S,
    core: Arc<Core>,
}

impl<S> tower::Service<Request> for Refusal<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if let Some(refused) = refusal(&self.core, request.uri().path(), request.headers()) {
            return Either::Left(ready(Ok(refused.into_http())));
        }
        Either::Right(self.inner.call(request))
    }
}

/// Rewrites a status the transport raised while reading a unary request (a
/// trailers-only answer) as grpc-go raises it: see
/// [`super::errors::from_transport`]. Streaming calls map theirs in the
/// handler.
pub(super) fn transport_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        if status.code() == tonic::Code::OutOfRange {
            let mapped = super::errors::from_transport(status);
            if mapped.code() != tonic::Code::OutOfRange {
                // Only fails on a message that is not a header value; ours are.
                let _ = mapped.add_header(response.headers_mut());
            }
        }
    }
    response
}

/// Serves `dispatch` on `listener` (TLS-terminated with `tls` when given) until
/// `shutdown` is cancelled, then lets every connection finish its calls
/// (HTTP/2 GOAWAY) and returns when they are gone. Call inside the member's
/// runtime.
///
/// A connection may carry `max_streams` calls at once (etcd's
/// `--max-concurrent-streams`, unlimited by default as in etcd; hyper alone
/// would hold a connection to 200 and make the rest of its calls wait in the
/// client).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    dispatch: Dispatch,
    shutdown: CancellationToken,
    max_streams: u32,
) {
    use axum::serve::Listener as _;

    let mut listener = ClientListener::new(listener, tls);
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http2().max_concurrent_streams(max_streams);
    let connections = TaskTracker::new();
    loop {
        let (io, client) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Every call learns who is at the other end (`access` reads it).
        let service = dispatch.for_connection(client);
        let (http, shutdown) = (http.clone(), shutdown.clone());
        connections.spawn(async move {
            let connection = http.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::trace!(error = %e, "client connection ended");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use super::serve;
    use crate::api::dispatch::Dispatch;

    /// SETTINGS_MAX_CONCURRENT_STREAMS, in HTTP/2's numbering.
    const MAX_CONCURRENT_STREAMS: u16 = 3;

    /// Opens an HTTP/2 connection to a server started with `max_streams` and
    /// returns the stream limit its first SETTINGS frame announces, if any;
    /// then stops the server and checks that it returns.
    async fn announced_stream_limit(max_streams: u32) -> Option<u32> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            None,
            Dispatch::http_only(axum::Router::new()),
            shutdown.clone(),
            max_streams,
        ));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
        conn.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let mut head = [0u8; 9];
        conn.read_exact(&mut head).await.unwrap();
        assert_eq!(head[3], 4, "the server's first frame is its SETTINGS");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await.unwrap();

        shutdown.cancel();
        drop(conn);
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns once its connections are gone")
            .unwrap();
        payload
            .chunks_exact(6)
            .find(|s| u16::from_be_bytes([s[0], s[1]]) == MAX_CONCURRENT_STREAMS)
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    }

    #[tokio::test]
    async fn every_call_knows_the_address_of_its_caller() {
        use axum::extract::ConnectInfo;

        use crate::api::listener::ClientAddr;

        let router = axum::Router::new().route(
            "/who",
            axum::routing::get(|ConnectInfo(who): ConnectInfo<ClientAddr>| async move {
                who.remote.to_string()
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            None,
            Dispatch::http_only(router),
            shutdown.clone(),
            10,
        ));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let me = conn.local_addr().unwrap();
        conn.write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.ends_with(&me.to_string()),
            "{answer} does not end with {me}"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns once its connections are gone")
            .unwrap();
    }

    #[tokio::test]
    async fn a_connection_carries_as_many_calls_as_max_concurrent_streams_says() {
        assert_eq!(announced_stream_limit(300).await, Some(300));
    }

    #[tokio::test]
    async fn by_default_a_connection_is_not_held_to_hypers_200_calls() {
        // etcd's default, math.MaxUint32: no limit worth announcing.
        let limit = announced_stream_limit(u32::MAX).await;
        assert!(matches!(limit, None | Some(u32::MAX)), "{limit:?}");
    }
}
