//! Where a request on a client port goes: a gRPC call straight to its
//! service, anything else (the JSON gateway, `/health`, `/metrics`,
//! `/version`) through the axum router of [`super::server::router`].
//!
//! Why not the router for everything: axum matches the path and clones a
//! boxed route, and each layer on the gRPC routes boxes the call once more;
//! at tens of thousands of calls a second that was a sixth of a leader's CPU.
//! Here a call costs one match on its service name.
//!
//! A gRPC call goes through the same steps as on the router, in the same
//! order: it is counted ([`super::grpc_metrics`]), refused if this member is
//! a learner and the method is one a learner does not serve, or if the call
//! requires a leader and none is known ([`super::server::refusal`]), handed to its
//! tonic service, and a status the transport raised while reading the
//! request is rewritten as grpc-go raises it ([`super::server`]).
//!
//! Invariant: a path is served here only if it has the shape
//! `/service/method` and names one of the member's services (the service
//! answers a method it lacks with `Unimplemented`, as on the router); every
//! other path reaches the router, so the two never disagree on what they
//! serve.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use bytes::Bytes;
use futures::future::{BoxFuture, Either, Ready};
use http::{Request, Response};
use http_body_util::Either as EitherBody;
use tower::{Service, ServiceExt as _};

use tonic::server::NamedService;

use super::auth::AuthService;
use super::cluster::ClusterService;
use super::election::ElectionService;
use super::grpc_metrics::{split_path, Call, GrpcBody, GrpcMetricsLayer};
use super::kv::KvService;
use super::lease::LeaseService;
use super::listener::ClientAddr;
use super::lock::LockService;
use super::maintenance::MaintenanceService;
use super::server::Services;
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

/// A response body: a gRPC call's, or the router's.
pub type DispatchBody = EitherBody<GrpcBody<tonic::body::Body>, axum::body::Body>;

/// What a client port serves; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Dispatch {
    inner: Arc<Inner>,
}

struct Inner {
    /// The gRPC services, when this port serves them (not a metrics port).
    grpc: Option<Grpc>,
    http: axum::Router,
}

struct Grpc {
    services: Services,
    core: Arc<Core>,
    metrics: GrpcMetricsLayer,
}

impl Dispatch {
    /// A client port: the member's gRPC services, and `http` for the rest.
    pub fn new(core: Arc<Core>, http: axum::Router) -> Dispatch {
        let grpc = Grpc {
            services: Services::new(&core),
            metrics: GrpcMetricsLayer::new(core.metrics.clone()),
            core,
        };
        Dispatch {
            inner: Arc::new(Inner {
                grpc: Some(grpc),
                http,
            }),
        }
    }

    /// A port that serves `http` alone.
    pub fn http_only(http: axum::Router) -> Dispatch {
        Dispatch {
            inner: Arc::new(Inner { grpc: None, http }),
        }
    }

    /// This dispatch for the calls of one connection, whose far end is
    /// `client`.
    pub fn for_connection(&self, client: ClientAddr) -> ConnectionService {
        ConnectionService {
            dispatch: self.clone(),
            client,
        }
    }
}

/// A [`Dispatch`] serving one connection: every call carries the caller's
/// address as axum's `ConnectInfo` (what [`super::access`] reads).
pub struct ConnectionService {
    dispatch: Dispatch,
    client: ClientAddr,
}

type Routed = Result<Response<DispatchBody>, Infallible>;

impl<B> hyper::service::Service<Request<B>> for ConnectionService
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = Response<DispatchBody>;
    type Error = Infallible;
    type Future = Either<GrpcCall, BoxFuture<'static, Routed>>;

    fn call(&self, mut request: Request<B>) -> Self::Future {
        request
            .extensions_mut()
            .insert(ConnectInfo(self.client.clone()));
        let inner = &self.dispatch.inner;
        if let Some(grpc) = &inner.grpc {
            if let Some(call) = grpc.call(request.uri().path()) {
                return Either::Left(call.start(grpc, request));
            }
        }
        let routed = inner
            .http
            .clone()
            .oneshot(request.map(axum::body::Body::new));
        Either::Right(Box::pin(async move {
            let response = routed.await?;
            Ok(response.map(EitherBody::Right))
        }))
    }
}

/// The service a gRPC path names.
#[derive(Clone, Copy)]
enum Target {
    Kv,
    Watch,
    Lease,
    Cluster,
    Maintenance,
    Auth,
    Lock,
    Election,
}

impl Target {
    /// The service of `/service/method`, if it is one of the member's.
    fn of(path: &str) -> Option<Target> {
        let (service, _) = split_path(path)?;
        let target = |name| service == name;
        Some(if target(KvServer::<KvService>::NAME) {
            Target::Kv
        } else if target(WatchServer::<WatchService>::NAME) {
            Target::Watch
        } else if target(LeaseServer::<LeaseService>::NAME) {
            Target::Lease
        } else if target(ClusterServer::<ClusterService>::NAME) {
            Target::Cluster
        } else if target(MaintenanceServer::<MaintenanceService>::NAME) {
            Target::Maintenance
        } else if target(AuthServer::<AuthService>::NAME) {
            Target::Auth
        } else if target(LockServer::<LockService>::NAME) {
            Target::Lock
        } else if target(ElectionServer::<ElectionService>::NAME) {
            Target::Election
        } else {
            return None;
        })
    }
}

/// A gRPC call about to start: its service and its counters.
struct Start {
    target: Target,
    call: Call,
}

impl Grpc {
    /// Starts counting a call to `path` if one of the services serves it.
    fn call(&self, path: &str) -> Option<Start> {
        let target = Target::of(path)?;
        let call = self.metrics.start(path)?;
        Some(Start { target, call })
    }
}

impl Start {
    fn start<B>(self, grpc: &Grpc, request: Request<B>) -> GrpcCall
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let refused = super::server::refusal(&grpc.core, request.uri().path(), request.headers());
        let handled = if let Some(refused) = refused {
            Either::Left(futures::future::ready(Ok(refused.into_http())))
        } else {
            let request = self.call.request(request);
            let s = &grpc.services;
            Either::Right(match self.target {
                Target::Kv => s.kv.clone().call(request),
                Target::Watch => s.watch.clone().call(request),
                Target::Lease => s.lease.clone().call(request),
                Target::Cluster => s.cluster.clone().call(request),
                Target::Maintenance => s.maintenance.clone().call(request),
                Target::Auth => s.auth.clone().call(request),
                Target::Lock => s.lock.clone().call(request),
                Target::Election => s.election.clone().call(request),
            })
        };
        GrpcCall {
            handled,
            call: Some(self.call),
        }
    }
}

type TonicResult = Result<Response<tonic::body::Body>, Infallible>;

/// A gRPC call in progress: the service's answer, then counted and with its
/// transport status rewritten.
pub struct GrpcCall {
    handled: Either<Ready<TonicResult>, BoxFuture<'static, TonicResult>>,
    call: Option<Call>,
}

impl Future for GrpcCall {
    type Output = Routed;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Routed> {
        let this = &mut *self;
        let response = match Pin::new(&mut this.handled).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(never)) => match never {},
        };
        let response = super::server::transport_status(response);
        let response = match this.call.take() {
            Some(call) => call.response(response),
            // Polled again after it was ready: a caller's bug; answer as a
            // service that stopped would.
            None => return Poll::Ready(Ok(stopped())),
        };
        Poll::Ready(Ok(response.map(EitherBody::Left)))
    }
}

/// What a call polled past its end gets.
fn stopped() -> Response<DispatchBody> {
    tonic::Status::internal("call polled after its end")
        .into_http::<axum::body::Body>()
        .map(EitherBody::Right)
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn a_path_goes_to_the_service_it_names_and_only_then() {
        let target = |path| Target::of(path).map(|t| t as u8);
        assert_eq!(target("/etcdserverpb.KV/Put"), Some(Target::Kv as u8));
        assert_eq!(
            target("/etcdserverpb.Watch/Watch"),
            Some(Target::Watch as u8)
        );
        assert_eq!(target("/v3lockpb.Lock/Lock"), Some(Target::Lock as u8));
        assert_eq!(
            target("/v3electionpb.Election/Campaign"),
            Some(Target::Election as u8)
        );
        // A method the service lacks is still its to refuse (Unimplemented).
        assert_eq!(target("/etcdserverpb.KV/Nope"), Some(Target::Kv as u8));
        // Everything else is the router's: HTTP endpoints, the gateway,
        // other services, paths that are not /service/method.
        for path in [
            "/health",
            "/v3/kv/put",
            "/etcdserverpb.Other/Put",
            "/etcdserverpb.KV/",
            "/etcdserverpb.KV/Put/more",
            "/",
            "",
        ] {
            assert_eq!(target(path), None, "{path}");
        }
    }
}
