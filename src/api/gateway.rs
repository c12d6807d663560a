//! etcd's JSON gateway on the client port: `POST /v3/kv/put` and the other
//! grpc-gateway routes, so the `curl` recipes of etcd's documentation work.
//!
//! Like etcd's gateway, this is a gRPC client of the member's own services:
//! a JSON request becomes a gRPC call through the same router that serves
//! gRPC clients (so the same validation, errors, metrics and permission
//! checks apply; the `Authorization` header is passed on as the
//! `authorization` metadata etcd also reads a token from, and the
//! connection's request extensions, such as its peer address, are carried
//! over; a client certificate's common name is not, as in etcd, so under auth
//! a gateway caller shows a token), and the answer is turned back into JSON.
//! Nothing of a service's logic is repeated here.
//!
//! JSON as etcd 3.4's gateway writes it (proto3 JSON mapping, by pbjson): the
//! .proto field names (`create_revision`, `ID`, `peerURLs`), 64-bit integers
//! as strings, `bytes` as standard base64, enums by name, default values
//! left out. Requests accept both the .proto names and lowerCamelCase.
//! Errors: the HTTP status grpc-gateway maps the gRPC code to, and
//! `{"error":"...","message":"...","code":N}`.
//!
//! Streaming calls (`/v3/watch`, `/v3/lease/keepalive`,
//! `/v3/election/observe`, `/v3/maintenance/snapshot`) take the request body
//! as one or more JSON objects and answer with one `{"result":{...}}` line
//! per message (`{"error":{...}}` if the call fails). A watch stays open until
//! the HTTP client goes away, as with etcd; a keepalive ends after answering
//! its requests. The request body is read whole before the call starts. A
//! call that takes one request (`snapshot`, `observe`) reads an empty body
//! as an empty request, as etcd's gateway does (`curl -X POST
//! .../v3/maintenance/snapshot` works).
//!
//! Responses carry etcd's default CORS headers (any origin), and `OPTIONS`
//! preflights are answered, so browser pages can use the gateway.
//!
//! Adding a route is one line in [`routes`]. Every route is served under
//! `/v3` and, as etcd 3.4 does, under the deprecated `/v3beta`.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{Extensions, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};
use tower::ServiceExt;

use crate::pb::etcdserverpb as pb;
use crate::pb::{v3electionpb as el, v3lockpb as lk};

/// Adds the gateway routes to `router`; `grpc` serves the gRPC calls they
/// make. Request bodies up to `max_body` bytes are read (base64 and JSON make
/// a request about 4/3 of its binary size, so pass a multiple of
/// `--max-request-bytes`: the gRPC service then refuses what is too large
/// with etcd's own error).
#[rustfmt::skip]
pub fn routes(router: Router, grpc: Router, max_body: usize) -> Router {
    let g = Gateway { grpc };
    let gateway = Router::new()
        // KV
        .route("/kv/range", g.unary::<pb::RangeRequest, pb::RangeResponse>("/etcdserverpb.KV/Range"))
        .route("/kv/put", g.unary::<pb::PutRequest, pb::PutResponse>("/etcdserverpb.KV/Put"))
        .route("/kv/deleterange", g.unary::<pb::DeleteRangeRequest, pb::DeleteRangeResponse>("/etcdserverpb.KV/DeleteRange"))
        .route("/kv/txn", g.unary::<pb::TxnRequest, pb::TxnResponse>("/etcdserverpb.KV/Txn"))
        .route("/kv/compaction", g.unary::<pb::CompactionRequest, pb::CompactionResponse>("/etcdserverpb.KV/Compact"))
        // Watch
        .route("/watch", g.stream::<pb::WatchRequest, pb::WatchResponse>("/etcdserverpb.Watch/Watch", KeepOpen::Yes))
        // Lease (etcd serves some under /kv/lease/ too)
        .route("/lease/grant", g.unary::<pb::LeaseGrantRequest, pb::LeaseGrantResponse>("/etcdserverpb.Lease/LeaseGrant"))
        .route("/lease/revoke", g.unary::<pb::LeaseRevokeRequest, pb::LeaseRevokeResponse>("/etcdserverpb.Lease/LeaseRevoke"))
        .route("/kv/lease/revoke", g.unary::<pb::LeaseRevokeRequest, pb::LeaseRevokeResponse>("/etcdserverpb.Lease/LeaseRevoke"))
        .route("/lease/keepalive", g.stream::<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>("/etcdserverpb.Lease/LeaseKeepAlive", KeepOpen::No))
        .route("/lease/timetolive", g.unary::<pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse>("/etcdserverpb.Lease/LeaseTimeToLive"))
        .route("/kv/lease/timetolive", g.unary::<pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse>("/etcdserverpb.Lease/LeaseTimeToLive"))
        .route("/lease/leases", g.unary::<pb::LeaseLeasesRequest, pb::LeaseLeasesResponse>("/etcdserverpb.Lease/LeaseLeases"))
        .route("/kv/lease/leases", g.unary::<pb::LeaseLeasesRequest, pb::LeaseLeasesResponse>("/etcdserverpb.Lease/LeaseLeases"))
        // Cluster
        .route("/cluster/member/add", g.unary::<pb::MemberAddRequest, pb::MemberAddResponse>("/etcdserverpb.Cluster/MemberAdd"))
        .route("/cluster/member/remove", g.unary::<pb::MemberRemoveRequest, pb::MemberRemoveResponse>("/etcdserverpb.Cluster/MemberRemove"))
        .route("/cluster/member/update", g.unary::<pb::MemberUpdateRequest, pb::MemberUpdateResponse>("/etcdserverpb.Cluster/MemberUpdate"))
        .route("/cluster/member/list", g.unary::<pb::MemberListRequest, pb::MemberListResponse>("/etcdserverpb.Cluster/MemberList"))
        .route("/cluster/member/promote", g.unary::<pb::MemberPromoteRequest, pb::MemberPromoteResponse>("/etcdserverpb.Cluster/MemberPromote"))
        // Maintenance
        .route("/maintenance/alarm", g.unary::<pb::AlarmRequest, pb::AlarmResponse>("/etcdserverpb.Maintenance/Alarm"))
        .route("/maintenance/status", g.unary::<pb::StatusRequest, pb::StatusResponse>("/etcdserverpb.Maintenance/Status"))
        .route("/maintenance/defragment", g.unary::<pb::DefragmentRequest, pb::DefragmentResponse>("/etcdserverpb.Maintenance/Defragment"))
        .route("/maintenance/hash", g.unary::<pb::HashRequest, pb::HashResponse>("/etcdserverpb.Maintenance/Hash"))
        .route("/maintenance/hashkv", g.unary::<pb::HashKvRequest, pb::HashKvResponse>("/etcdserverpb.Maintenance/HashKV"))
        .route("/maintenance/snapshot", g.stream::<pb::SnapshotRequest, pb::SnapshotResponse>("/etcdserverpb.Maintenance/Snapshot", KeepOpen::One))
        .route("/maintenance/transfer-leadership", g.unary::<pb::MoveLeaderRequest, pb::MoveLeaderResponse>("/etcdserverpb.Maintenance/MoveLeader"))
        // Auth: the Auth service (users, roles, tokens).
        .route("/auth/enable", g.unary::<pb::AuthEnableRequest, pb::AuthEnableResponse>("/etcdserverpb.Auth/AuthEnable"))
        .route("/auth/disable", g.unary::<pb::AuthDisableRequest, pb::AuthDisableResponse>("/etcdserverpb.Auth/AuthDisable"))
        .route("/auth/status", g.unary::<pb::AuthStatusRequest, pb::AuthStatusResponse>("/etcdserverpb.Auth/AuthStatus"))
        .route("/auth/authenticate", g.unary::<pb::AuthenticateRequest, pb::AuthenticateResponse>("/etcdserverpb.Auth/Authenticate"))
        .route("/auth/user/add", g.unary::<pb::AuthUserAddRequest, pb::AuthUserAddResponse>("/etcdserverpb.Auth/UserAdd"))
        .route("/auth/user/get", g.unary::<pb::AuthUserGetRequest, pb::AuthUserGetResponse>("/etcdserverpb.Auth/UserGet"))
        .route("/auth/user/list", g.unary::<pb::AuthUserListRequest, pb::AuthUserListResponse>("/etcdserverpb.Auth/UserList"))
        .route("/auth/user/delete", g.unary::<pb::AuthUserDeleteRequest, pb::AuthUserDeleteResponse>("/etcdserverpb.Auth/UserDelete"))
        .route("/auth/user/changepw", g.unary::<pb::AuthUserChangePasswordRequest, pb::AuthUserChangePasswordResponse>("/etcdserverpb.Auth/UserChangePassword"))
        .route("/auth/user/grant", g.unary::<pb::AuthUserGrantRoleRequest, pb::AuthUserGrantRoleResponse>("/etcdserverpb.Auth/UserGrantRole"))
        .route("/auth/user/revoke", g.unary::<pb::AuthUserRevokeRoleRequest, pb::AuthUserRevokeRoleResponse>("/etcdserverpb.Auth/UserRevokeRole"))
        .route("/auth/role/add", g.unary::<pb::AuthRoleAddRequest, pb::AuthRoleAddResponse>("/etcdserverpb.Auth/RoleAdd"))
        .route("/auth/role/get", g.unary::<pb::AuthRoleGetRequest, pb::AuthRoleGetResponse>("/etcdserverpb.Auth/RoleGet"))
        .route("/auth/role/list", g.unary::<pb::AuthRoleListRequest, pb::AuthRoleListResponse>("/etcdserverpb.Auth/RoleList"))
        .route("/auth/role/delete", g.unary::<pb::AuthRoleDeleteRequest, pb::AuthRoleDeleteResponse>("/etcdserverpb.Auth/RoleDelete"))
        .route("/auth/role/grant", g.unary::<pb::AuthRoleGrantPermissionRequest, pb::AuthRoleGrantPermissionResponse>("/etcdserverpb.Auth/RoleGrantPermission"))
        .route("/auth/role/revoke", g.unary::<pb::AuthRoleRevokePermissionRequest, pb::AuthRoleRevokePermissionResponse>("/etcdserverpb.Auth/RoleRevokePermission"))
        // Lock and election
        .route("/lock/lock", g.unary::<lk::LockRequest, lk::LockResponse>("/v3lockpb.Lock/Lock"))
        .route("/lock/unlock", g.unary::<lk::UnlockRequest, lk::UnlockResponse>("/v3lockpb.Lock/Unlock"))
        .route("/election/campaign", g.unary::<el::CampaignRequest, el::CampaignResponse>("/v3electionpb.Election/Campaign"))
        .route("/election/proclaim", g.unary::<el::ProclaimRequest, el::ProclaimResponse>("/v3electionpb.Election/Proclaim"))
        .route("/election/leader", g.unary::<el::LeaderRequest, el::LeaderResponse>("/v3electionpb.Election/Leader"))
        .route("/election/observe", g.stream::<el::LeaderRequest, el::LeaderResponse>("/v3electionpb.Election/Observe", KeepOpen::One))
        .route("/election/resign", g.unary::<el::ResignRequest, el::ResignResponse>("/v3electionpb.Election/Resign"))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(cors));
    // etcd 3.4 also answers under the older /v3beta prefix.
    router
        .nest("/v3", gateway.clone())
        .nest("/v3beta", gateway)
}

/// Whether a streaming call's request side stays open after the body's
/// messages (a watch keeps watching) or closes (a keepalive answers and ends);
/// `One` for a call that takes a single request (server streaming), read as
/// etcd's gateway reads it: the body's first message, or an empty request
/// for an empty body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepOpen {
    Yes,
    No,
    One,
}

/// Makes the route handlers; `grpc` answers their calls.
struct Gateway {
    grpc: Router,
}

impl Gateway {
    fn unary<Req, Resp>(&self, path: &'static str) -> MethodRouter
    where
        Req: prost::Message + DeserializeOwned + Default + 'static,
        Resp: prost::Message + Serialize + Default + 'static,
    {
        let grpc = self.grpc.clone();
        post(
            move |headers: HeaderMap, extensions: Extensions, body: Bytes| {
                let grpc = grpc.clone();
                let from = Caller {
                    headers,
                    extensions,
                };
                async move { unary::<Req, Resp>(grpc, path, from, body).await }
            },
        )
        .options(preflight)
    }

    fn stream<Req, Resp>(&self, path: &'static str, keep_open: KeepOpen) -> MethodRouter
    where
        Req: prost::Message + DeserializeOwned + Default + 'static,
        Resp: prost::Message + Serialize + Default + 'static,
    {
        let grpc = self.grpc.clone();
        post(
            move |headers: HeaderMap, extensions: Extensions, body: Bytes| {
                let grpc = grpc.clone();
                let from = Caller {
                    headers,
                    extensions,
                };
                async move { streaming::<Req, Resp>(grpc, path, from, body, keep_open).await }
            },
        )
        .options(preflight)
    }
}

/// etcd's default CORS answer (`--cors '*'`): any origin may call the
/// gateway from a browser.
async fn cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    headers.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    response
}

/// A browser's CORS preflight: allowed (the headers come from [`cors`]).
async fn preflight() -> StatusCode {
    StatusCode::OK
}

/// One unary call: JSON in, JSON out.
async fn unary<Req, Resp>(grpc: Router, path: &'static str, from: Caller, body: Bytes) -> Response
where
    Req: prost::Message + DeserializeOwned + Default,
    Resp: prost::Message + Serialize + Default,
{
    let request: Req = match parse_first(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let body = Body::from(frame(&request));
    let response = call(grpc, path, from, body).await;
    if let Some(status) = failed(response.headers()) {
        return error_response(&status);
    }
    let collected = match response.into_body().collect().await {
        Ok(c) => c,
        Err(e) => return error_response(&Status::unavailable(e.to_string())),
    };
    if let Some(status) = collected.trailers().and_then(failed) {
        return error_response(&status);
    }
    let mut data = BytesMut::from(collected.to_bytes().as_ref());
    let message = match next_message::<Resp>(&mut data) {
        Ok(Some(m)) => m,
        Ok(None) => return error_response(&Status::internal("no response message")),
        Err(status) => return error_response(&status),
    };
    json_response(StatusCode::OK, to_json(&message))
}

/// One streaming call: the body's JSON objects in, `{"result":...}` lines out.
async fn streaming<Req, Resp>(
    grpc: Router,
    path: &'static str,
    from: Caller,
    body: Bytes,
    keep_open: KeepOpen,
) -> Response
where
    Req: prost::Message + DeserializeOwned + Default,
    Resp: prost::Message + Serialize + Default + 'static,
{
    // A call that takes one request reads it as a unary call does.
    let parsed = match keep_open {
        KeepOpen::One => parse_first(&body).map(|r| vec![r]),
        KeepOpen::Yes | KeepOpen::No => parse_requests(&body),
    };
    let requests: Vec<Req> = match parsed {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let frames = futures::stream::iter(
        requests
            .iter()
            .map(|r| Ok::<_, Infallible>(http_body::Frame::data(frame(r))))
            .collect::<Vec<_>>(),
    );
    let request_body = match keep_open {
        KeepOpen::Yes => Body::new(http_body_util::StreamBody::new(
            frames.chain(futures::stream::pending()),
        )),
        KeepOpen::No | KeepOpen::One => Body::new(http_body_util::StreamBody::new(frames)),
    };
    let response = call(grpc, path, from, request_body).await;
    if let Some(status) = failed(response.headers()) {
        return error_response(&status);
    }
    let lines = futures::stream::unfold(
        Some((response.into_body(), BytesMut::new())),
        |state| async move {
            let (mut body, mut buf) = state?;
            loop {
                match next_message::<Resp>(&mut buf) {
                    Ok(Some(m)) => {
                        let line = format!("{{\"result\":{}}}\n", to_json(&m));
                        return Some((Ok::<_, Infallible>(Bytes::from(line)), Some((body, buf))));
                    }
                    Ok(None) => {}
                    Err(status) => return Some((Ok(stream_error(&status)), None)),
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            return failed(trailers).map(|s| (Ok(stream_error(&s)), None));
                        }
                        if let Ok(data) = frame.into_data() {
                            buf.extend_from_slice(&data);
                        }
                    }
                    Some(Err(e)) => {
                        return Some((Ok(stream_error(&Status::unavailable(e.to_string()))), None))
                    }
                    None => return None,
                }
            }
        },
    );
    let mut response = Body::from_stream(lines).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// What the gateway passes on from the HTTP request to its gRPC call.
struct Caller {
    headers: HeaderMap,
    /// The connection's extensions (peer address, TLS details), so the
    /// services see the call as coming from the HTTP client's connection.
    extensions: Extensions,
}

/// Sends one gRPC request through `grpc`, passing on `Authorization` and
/// the HTTP request's extensions.
async fn call(grpc: Router, path: &'static str, from: Caller, body: Body) -> Response {
    let mut request = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = from.headers.get("authorization") {
        request = request.header("authorization", token.clone());
    }
    let mut request = match request.body(body) {
        Ok(r) => r,
        Err(e) => return error_response(&Status::internal(e.to_string())),
    };
    request.extensions_mut().extend(from.extensions);
    // A client certificate's common name never names the user of a gateway
    // call, as in etcd (its gateway dials the server with the server's own
    // certificate): under auth, a gateway caller shows a token.
    if let Some(info) = request
        .extensions_mut()
        .get_mut::<axum::extract::ConnectInfo<super::listener::ClientAddr>>()
    {
        info.0.cert_name = None;
    }
    match grpc.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The status in `headers` if it is not OK.
fn failed(headers: &HeaderMap) -> Option<Status> {
    Status::from_header_map(headers).filter(|s| s.code() != Code::Ok)
}

/// The first JSON object of a unary call's body, as grpc-gateway reads it
/// (whatever follows is not read); the empty request for an empty body.
fn parse_first<Req: DeserializeOwned + Default>(body: &[u8]) -> Result<Req, Status> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<Req>()
        .next()
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The JSON objects of a request body (none for an empty body).
fn parse_requests<Req: DeserializeOwned>(body: &[u8]) -> Result<Vec<Req>, Status> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<Req>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A message as one gRPC frame (uncompressed).
fn frame<M: prost::Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = message.encode(&mut out);
    out.freeze()
}

/// Takes the next whole gRPC frame off `buf` and decodes it.
fn next_message<M: prost::Message + Default>(buf: &mut BytesMut) -> Result<Option<M>, Status> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err(Status::internal("compressed response"));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return Ok(None);
    }
    buf.advance(5);
    let payload = buf.split_to(len);
    M::decode(payload.freeze())
        .map(Some)
        .map_err(|e| Status::internal(e.to_string()))
}

fn to_json<M: Serialize>(message: &M) -> String {
    // pbjson's impls serialize any message; a failure would be a bug there.
    serde_json::to_string(message).unwrap_or_else(|_| "{}".to_owned())
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

/// A failed unary call as grpc-gateway answers it.
fn error_response(status: &Status) -> Response {
    // Built by hand to keep grpc-gateway's key order.
    let message = json_string(status.message());
    let body = format!(
        r#"{{"error":{message},"message":{message},"code":{}}}"#,
        status.code() as i32
    );
    json_response(http_status(status.code()), body)
}

/// A failed streaming call's last line, as grpc-gateway writes it.
fn stream_error(status: &Status) -> Bytes {
    let http = http_status(status.code());
    Bytes::from(format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":{},\"http_status\":{}}}}}\n",
        status.code() as i32,
        http.as_u16(),
        json_string(status.message()),
        json_string(http.canonical_reason().unwrap_or_default()),
    ))
}

/// grpc-gateway's HTTP status for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::{event::EventType, Event, KeyValue};

    #[test]
    fn json_is_etcds_gateway_json() {
        let resp = pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: 15118495548433857066,
                member_id: 1,
                revision: 2,
                raft_term: 2,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            count: 1,
            more: false,
        };
        assert_eq!(
            to_json(&resp),
            r#"{"header":{"cluster_id":"15118495548433857066","member_id":"1","revision":"2","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
        let grant = pb::LeaseGrantResponse {
            header: None,
            id: 7,
            ttl: 60,
            error: String::new(),
        };
        assert_eq!(to_json(&grant), r#"{"ID":"7","TTL":"60"}"#);
        let event = Event {
            r#type: EventType::Delete as i32,
            kv: None,
            prev_kv: None,
        };
        assert_eq!(to_json(&event), r#"{"type":"DELETE"}"#);
    }

    #[test]
    fn requests_accept_proto_and_camel_case_names() {
        let r: Vec<pb::RangeRequest> =
            parse_requests(br#"{"key":"Zm9v","range_end":"Zm9w","keysOnly":true,"limit":"5"}"#)
                .unwrap();
        assert_eq!(r[0].key, b"foo");
        assert_eq!(r[0].range_end, b"fop");
        assert!(r[0].keys_only);
        assert_eq!(r[0].limit, 5);
        let two: Vec<pb::WatchRequest> =
            parse_requests(br#"{"create_request":{"key":"YQ=="}} {"progress_request":{}}"#)
                .unwrap();
        assert_eq!(two.len(), 2);
        assert!(parse_requests::<pb::RangeRequest>(b"").unwrap().is_empty());
        let bad = parse_requests::<pb::RangeRequest>(br#"{"limit":x}"#).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
    }

    #[test]
    fn frames_round_trip() {
        let put = pb::PutRequest {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        };
        let mut buf = BytesMut::from(frame(&put).as_ref());
        buf.extend_from_slice(&frame(&put)[..3]);
        assert_eq!(next_message::<pb::PutRequest>(&mut buf).unwrap(), Some(put));
        assert_eq!(next_message::<pb::PutRequest>(&mut buf).unwrap(), None);
    }

    #[test]
    fn errors_map_to_grpc_gateway_statuses() {
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let line = stream_error(&Status::not_found("etcdserver: requested lease not found"));
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"error\":{\"grpc_code\":5,\"http_code\":404,\"message\":\"etcdserver: requested lease not found\",\"http_status\":\"Not Found\"}}\n"
        );
    }
}
