//! A tower layer in front of the client gRPC services that counts every call
//! as go-grpc-prometheus does for etcd: `grpc_server_started_total` when it
//! arrives and `grpc_server_handled_total` with its status code when it ends.
//!
//! A call ends with its `grpc-status`: in the response headers for a
//! trailers-only answer (most errors), else in the trailers after the body.
//! A stream the client abandons before the trailers (a watch closed by its
//! client) counts as `Canceled`. Labels follow Go's names: `grpc_type` is
//! `unary`, `server_stream` or `bidi_stream`, `grpc_code` is e.g. `OK`,
//! `InvalidArgument`, `Canceled`. The bytes of gRPC calls in each direction
//! are counted too (`etcd_network_client_grpc_{received,sent}_bytes_total`),
//! and with `--metrics extensive` each call's duration
//! (`grpc_server_handling_seconds`).
//!
//! Two ways in, one count: client ports start a [`Call`] for each gRPC call
//! they route themselves ([`super::dispatch`]); the layer does the same for
//! the calls that go through the router (the JSON gateway's).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use prometheus::{Histogram, IntCounter, IntCounterVec};

use crate::metrics::Metrics;

/// How many distinct methods keep their counters cached; calls to paths
/// beyond (made-up ones) are still counted, only without the cache.
const MAX_CACHED_METHODS: usize = 256;

/// The layer; wraps a service answering gRPC requests.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    shared: Arc<Shared>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        GrpcMetricsLayer {
            shared: Arc::new(Shared {
                metrics,
                methods: RwLock::new(HashMap::new()),
            }),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`GrpcMetricsLayer`].
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// What every call shares: the member's metrics and, per method path, its
/// labelled counters, looked up once rather than at every call.
struct Shared {
    metrics: Metrics,
    methods: RwLock<HashMap<Box<str>, Arc<Method>>>,
}

impl Shared {
    /// The counters of the method a request path names, if it names one.
    fn method(&self, path: &str) -> Option<Arc<Method>> {
        let (service, name) = split_path(path)?;
        let cached = self
            .methods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .cloned();
        if cached.is_some() {
            return cached;
        }
        let method = Arc::new(Method::new(&self.metrics, service, name));
        let mut methods = self.methods.write().unwrap_or_else(PoisonError::into_inner);
        if methods.len() >= MAX_CACHED_METHODS {
            return Some(method);
        }
        Some(methods.entry(path.into()).or_insert(method).clone())
    }
}

/// `/service/method` split in two, when the path has that shape.
pub(super) fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// One method's labels and counters.
struct Method {
    kind: &'static str,
    service: Box<str>,
    name: Box<str>,
    /// `grpc_server_started_total`.
    started: IntCounter,
    /// `grpc_server_handled_total` by status code, each made when a call first
    /// ends with that code (so /metrics shows only the codes seen, as before).
    handled: [OnceLock<IntCounter>; 17],
    handled_by_code: IntCounterVec,
    /// `grpc_server_handling_seconds`, with `--metrics extensive`.
    handling: Option<Histogram>,
}

impl Method {
    fn new(metrics: &Metrics, service: &str, name: &str) -> Method {
        let kind = grpc_type(service, name);
        let labels = [kind, service, name];
        Method {
            kind,
            service: service.into(),
            name: name.into(),
            started: metrics.grpc_started.with_label_values(&labels),
            handled: std::array::from_fn(|_| OnceLock::new()),
            handled_by_code: metrics.grpc_handled.clone(),
            handling: metrics
                .grpc_handling
                .as_ref()
                .map(|h| h.with_label_values(&labels)),
        }
    }

    /// Counts a call ended with this gRPC status code.
    fn handled(&self, code: i32) {
        // Codes past the known ones are `Unknown`, as `code_name` says.
        let code = usize::try_from(code)
            .ok()
            .filter(|&c| c < self.handled.len())
            .unwrap_or(2);
        self.handled[code]
            .get_or_init(|| {
                self.handled_by_code.with_label_values(&[
                    self.kind,
                    &self.service,
                    &self.name,
                    code_name(code as i32),
                ])
            })
            .inc();
    }
}

/// The streaming kind of etcd's methods (all others are unary).
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") | ("v3electionpb.Election", "Observe") => {
            "server_stream"
        }
        _ => "unary",
    }
}

/// Go's name of a gRPC status code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

fn status_of(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl GrpcMetricsLayer {
    /// Starts counting a call to `path`, when the path names a gRPC method
    /// (`/service/method`).
    pub(super) fn start(&self, path: &str) -> Option<Call> {
        self.shared.start(path)
    }
}

impl Shared {
    fn start(&self, path: &str) -> Option<Call> {
        let method = self.method(path)?;
        method.started.inc();
        Some(Call {
            method,
            started: std::time::Instant::now(),
            received: self.metrics.client_grpc_received.clone(),
            sent: self.metrics.client_grpc_sent.clone(),
        })
    }
}

/// One call being counted: its request bytes as they arrive, then its
/// response bytes and the status code it ends with.
pub(super) struct Call {
    method: Arc<Method>,
    started: std::time::Instant,
    received: IntCounter,
    sent: IntCounter,
}

impl Call {
    /// The request, its body bytes counted as the service reads them.
    pub(super) fn request<B>(&self, request: Request<B>) -> Request<CountedBody<B>> {
        let bytes = self.received.clone();
        request.map(|inner| CountedBody { inner, bytes })
    }

    /// The response, counted as handled when its status is known: at once
    /// for a trailers-only answer, else when its body yields the trailers
    /// (or goes away without them).
    pub(super) fn response<B>(self, response: Response<B>) -> Response<GrpcBody<B>> {
        let mut tracker = Tracker {
            method: self.method,
            started: self.started,
            done: false,
        };
        if let Some(code) = status_of(response.headers()) {
            tracker.finish(code);
        }
        let bytes = self.sent;
        response.map(|inner| CountedBody {
            inner: TrackedBody { inner, tracker },
            bytes,
        })
    }
}

/// A response body as [`Call::response`] hands it on.
pub type GrpcBody<B> = CountedBody<TrackedBody<B>>;

impl<S> tower::Service<Request<Body>> for GrpcMetricsService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(call) = self.shared.start(req.uri().path()) else {
            return Box::pin(self.inner.call(req));
        };
        let fut = self.inner.call(call.request(req).map(Body::new));
        Box::pin(async move { Ok(call.response(fut.await?).map(Body::new)) })
    }
}

/// Counts a call as handled exactly once.
struct Tracker {
    method: Arc<Method>,
    started: std::time::Instant,
    done: bool,
}

impl Tracker {
    fn finish(&mut self, code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        self.method.handled(code);
        if let Some(h) = &self.method.handling {
            h.observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // The body went away before the trailers: the client gave up.
        self.finish(1);
    }
}

/// The response body, watched for its trailers.
pub struct TrackedBody<B> {
    inner: B,
    tracker: Tracker,
}

impl<B> http_body::Body for TrackedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    this.tracker.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.tracker.finish(13),
            // Ended without trailers: tonic always sends them, so this is
            // a body the server cut short.
            Poll::Ready(None) => this.tracker.finish(2),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose data bytes are counted as they pass.
pub struct CountedBody<B> {
    inner: B,
    bytes: prometheus::IntCounter,
}

impl<B> http_body::Body for CountedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_labelled_like_go_grpc_prometheus() {
        let shared = GrpcMetricsLayer::new(Metrics::new("3.4.0", false).unwrap()).shared;
        let c = shared.method("/etcdserverpb.Watch/Watch").unwrap();
        assert_eq!(
            (c.kind, &*c.service, &*c.name),
            ("bidi_stream", "etcdserverpb.Watch", "Watch")
        );
        let kind = |path: &str| shared.method(path).unwrap().kind;
        assert_eq!(kind("/etcdserverpb.KV/Range"), "unary");
        assert_eq!(kind("/etcdserverpb.Maintenance/Snapshot"), "server_stream");
        assert!(shared.method("/health").is_none());
        assert!(shared.method("/a/b/c").is_none());
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(1), "Canceled");
        assert_eq!(code_name(9), "FailedPrecondition");
    }

    #[test]
    fn a_method_keeps_its_counters_and_counts_each_code_it_ends_with() {
        let metrics = Metrics::new("3.4.0", true).unwrap();
        let shared = GrpcMetricsLayer::new(metrics.clone()).shared;
        let a = shared.method("/etcdserverpb.KV/Put").unwrap();
        let b = shared.method("/etcdserverpb.KV/Put").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "looked up once, then cached");
        a.started.inc();
        a.handled(0);
        b.handled(0);
        b.handled(14);
        b.handled(99);
        let labels = ["unary", "etcdserverpb.KV", "Put"];
        let handled = |code| {
            metrics
                .grpc_handled
                .with_label_values(&[labels[0], labels[1], labels[2], code])
                .get()
        };
        assert_eq!(metrics.grpc_started.with_label_values(&labels).get(), 1);
        assert_eq!(handled("OK"), 2);
        assert_eq!(handled("Unavailable"), 1);
        assert_eq!(handled("Unknown"), 1, "codes beyond 16 are Unknown");
    }

    #[test]
    fn made_up_paths_are_counted_but_not_cached_beyond_the_limit() {
        let metrics = Metrics::new("3.4.0", false).unwrap();
        let shared = GrpcMetricsLayer::new(metrics.clone()).shared;
        for i in 0..MAX_CACHED_METHODS + 10 {
            shared.method(&format!("/x.Y/M{i}")).unwrap().started.inc();
        }
        assert_eq!(shared.methods.read().unwrap().len(), MAX_CACHED_METHODS);
        let last = format!("M{}", MAX_CACHED_METHODS + 9);
        let count = metrics
            .grpc_started
            .with_label_values(&["unary", "x.Y", &last]);
        assert_eq!(count.get(), 1);
    }
}
