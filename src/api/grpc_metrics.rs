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

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;

use crate::metrics::Metrics;

/// The layer; wraps a service answering gRPC requests.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Metrics,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service made by [`GrpcMetricsLayer`].
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Metrics,
}

/// The labels of one call.
#[derive(Clone)]
struct Call {
    kind: &'static str,
    service: String,
    method: String,
}

impl Call {
    fn from_path(path: &str) -> Option<Call> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        Some(Call {
            kind: grpc_type(service, method),
            service: service.to_owned(),
            method: method.to_owned(),
        })
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
        let call = Call::from_path(req.uri().path());
        let metrics = self.metrics.clone();
        let req = if call.is_some() {
            let received = metrics.client_grpc_received.clone();
            req.map(|body| {
                Body::new(CountedBody {
                    inner: body,
                    bytes: received,
                })
            })
        } else {
            req
        };
        if let Some(c) = &call {
            metrics
                .grpc_started
                .with_label_values(&[c.kind, &c.service, &c.method])
                .inc();
        }
        let started = std::time::Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            let Some(call) = call else {
                return Ok(response);
            };
            let sent = metrics.client_grpc_sent.clone();
            let mut tracker = Tracker {
                metrics,
                call,
                started,
                done: false,
            };
            if let Some(code) = status_of(response.headers()) {
                tracker.finish(code);
            }
            let (parts, body) = response.into_parts();
            Ok(Response::from_parts(
                parts,
                Body::new(CountedBody {
                    inner: TrackedBody {
                        inner: body,
                        tracker,
                    },
                    bytes: sent,
                }),
            ))
        })
    }
}

/// Counts a call as handled exactly once.
struct Tracker {
    metrics: Metrics,
    call: Call,
    started: std::time::Instant,
    done: bool,
}

impl Tracker {
    fn finish(&mut self, code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        let c = &self.call;
        self.metrics
            .grpc_handled
            .with_label_values(&[c.kind, &c.service, &c.method, code_name(code)])
            .inc();
        if let Some(h) = &self.metrics.grpc_handling {
            h.with_label_values(&[c.kind, &c.service, &c.method])
                .observe(self.started.elapsed().as_secs_f64());
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
struct TrackedBody {
    inner: Body,
    tracker: Tracker,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
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
struct CountedBody<B> {
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
        let c = Call::from_path("/etcdserverpb.Watch/Watch").unwrap();
        assert_eq!(
            (c.kind, c.service.as_str(), c.method.as_str()),
            ("bidi_stream", "etcdserverpb.Watch", "Watch")
        );
        assert_eq!(
            Call::from_path("/etcdserverpb.KV/Range").unwrap().kind,
            "unary"
        );
        assert_eq!(
            Call::from_path("/etcdserverpb.Maintenance/Snapshot")
                .unwrap()
                .kind,
            "server_stream"
        );
        assert!(Call::from_path("/health").is_none());
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(1), "Canceled");
        assert_eq!(code_name(9), "FailedPrecondition");
    }
}
