//! The load generator's connections: gRPC unary calls written straight onto
//! an HTTP/2 connection (the `h2` crate).
//!
//! Why not tonic's `Channel` and generated clients: a `Channel` hands every
//! call to a buffer task, which hands it to hyper's client dispatcher, which
//! spawns one more task to send the request body; and a generated client
//! builds each call out of tonic's codec, body and streaming decoder, large
//! futures moved from one to the next. All of it in a process that shares
//! the cores with the members it measures (with a `Channel`, the load
//! generator took a fifth of the machine at 100 clients). Here the client's
//! own task frames the request (prost, behind gRPC's 5-byte prefix), opens
//! the stream, hands it to h2 in one `send_data` and reads the answer
//! ([`H2Channel::unary`]); one task per connection drives the connection
//! ([`Driver`]).
//!
//! What a `Channel` did that this keeps: the request's URI gets the
//! endpoint's scheme and authority; the connection is plain TCP or TLS as the
//! URL says, with small writes coalesced ([`crate::coalesce`]) and no Nagle
//! delay, and hyper's HTTP/2 client settings; connecting gives up after the
//! run's timeout, and so does each call, as tonic's `Timeout expired`
//! (counting its whole answer, where a `Channel` counted only until the
//! response headers); received bytes are given back to the flow-control
//! window as they are read.
//!
//! A [`Link`] is one of the run's connections as its clients share it. When
//! the connection takes no new call any more (it ended because its member
//! stopped or restarted, or the member sent GOAWAY), the first client whose
//! call fails after that dials again, and the link's other clients take the
//! new connection, as a `Channel` reconnects. A connection left after GOAWAY
//! keeps running until its calls in flight are answered. While the member
//! cannot be reached, calls fail at once (each counted as an error, as
//! grpc-go's fail-fast calls are); the link dials at most once per
//! [`REDIAL_PAUSE`], and a client that finds it paused waits out the pause
//! rather than spin through its requests. A dial can take up to the run's
//! timeout (a TLS handshake with a stopped member, SYNs dropped); the link's
//! failing clients wait for it. A member that is stopped but keeps its
//! connections (SIGSTOP) is not dialled again: its calls time out.
//!
//! What it does not do: streaming calls and compression (the load
//! benchmarks make only unary calls, and ask for no compression).

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, StatusCode, Uri};
use tonic::{Code, Status};

use crate::coalesce::CoalescingStream;

/// Errors of a dial.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper's HTTP/2 client settings, which tonic's `Channel` used: the receive
/// windows announced, streams opened before the server says how many it
/// takes, bytes buffered for sending, the size of headers accepted.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const INITIAL_SEND_STREAMS: usize = 100;
const SEND_BUFFER: usize = 1024 * 1024;
const HEADER_LIST: u32 = 16 * 1024;

/// One HTTP/2 connection to a member, for gRPC unary calls; cheap to clone
/// (every client of the connection holds one).
#[derive(Clone)]
pub struct H2Channel {
    send: h2::client::SendRequest<Bytes>,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
}

/// The task driving a connection's frames; stopping it (or dropping this)
/// closes the connection.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The least time between two dials of a link, whatever the first gave (a
/// dial can succeed and its connection die at once).
pub const REDIAL_PAUSE: Duration = Duration::from_millis(100);

type Tls = Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>;

/// One of a run's connections, shared by its clients, dialled again when it
/// takes no new call. Its connections close when the last holder (the run
/// and its clients) drops it.
pub struct Link {
    url: String,
    timeout: Duration,
    tls: Tls,
    current: tokio::sync::Mutex<Current>,
}

/// A link's connection: the channel its clients clone, the task driving it,
/// its number (each dial counts one), and the connections it replaced that
/// still answer calls in flight.
struct Current {
    channel: H2Channel,
    driver: Driver,
    epoch: u64,
    dialled_at: tokio::time::Instant,
    draining: Vec<Driver>,
}

impl Current {
    /// Whether the connection takes no new call: its task ended, or h2 holds
    /// an error for it (GOAWAY, reset, stream ids used up). A clone of the
    /// channel has no stream waiting to open, so asking registers nothing.
    fn closed(&self) -> bool {
        if self.driver.0.is_finished() {
            return true;
        }
        let mut send = self.channel.send.clone();
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        matches!(send.poll_ready(&mut cx), Poll::Ready(Err(_)))
    }
}

impl Link {
    /// Connects to `url` (see [`connect`]); an error here ends the run.
    pub async fn connect(url: &str, timeout: Duration, tls: Tls) -> Result<Link, BoxError> {
        let (channel, driver) = connect(url, timeout, tls.clone()).await?;
        Ok(Link {
            url: url.to_string(),
            timeout,
            tls,
            current: tokio::sync::Mutex::new(Current {
                channel,
                driver,
                epoch: 0,
                dialled_at: tokio::time::Instant::now(),
                draining: Vec::new(),
            }),
        })
    }

    /// The connection's channel and its number.
    pub async fn channel(&self) -> (H2Channel, u64) {
        let current = self.current.lock().await;
        (current.channel.clone(), current.epoch)
    }

    /// After a failed call on connection `epoch`: a newer connection if there
    /// is one or one can be dialled now; `None` if the connection still takes
    /// calls (the call failed for another reason), or the dial failed, or the
    /// link dialled less than [`REDIAL_PAUSE`] ago (then after waiting out
    /// the pause, so that the caller does not spin).
    pub async fn replace(&self, epoch: u64) -> Option<(H2Channel, u64)> {
        let mut current = self.current.lock().await;
        if current.epoch != epoch {
            return Some((current.channel.clone(), current.epoch));
        }
        if !current.closed() {
            return None;
        }
        let pause_over = current.dialled_at + REDIAL_PAUSE;
        if tokio::time::Instant::now() < pause_over {
            drop(current);
            tokio::time::sleep_until(pause_over).await;
            return None;
        }
        current.dialled_at = tokio::time::Instant::now();
        match connect(&self.url, self.timeout, self.tls.clone()).await {
            Ok((channel, driver)) => {
                let old = std::mem::replace(&mut current.driver, driver);
                current.draining.retain(|d| !d.0.is_finished());
                if !old.0.is_finished() {
                    current.draining.push(old);
                }
                current.channel = channel;
                current.epoch += 1;
                Some((current.channel.clone(), current.epoch))
            }
            Err(e) => {
                tracing::debug!(url = %self.url, error = %e, "bench could not reconnect");
                None
            }
        }
    }
}

/// Connects to `url` (`http://` or `https://`, with `tls` for the latter)
/// within `timeout`, which each call then also gets.
async fn connect(url: &str, timeout: Duration, tls: Tls) -> Result<(H2Channel, Driver), BoxError> {
    let uri: Uri = url.parse()?;
    let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url}: no host"))?;
    let handshake = async {
        let stream = crate::tls::connector::dial_uri(&uri, tls).await?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_max_send_streams(INITIAL_SEND_STREAMS)
            .max_send_buffer_size(SEND_BUFFER)
            .max_header_list_size(HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(CoalescingStream::new(stream))
            .await?;
        Ok::<_, BoxError>((send, connection))
    };
    let (send, connection) = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| format!("no connection within {timeout:?}"))??;
    let driver = Driver(tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "bench connection ended");
        }
    }));
    let channel = H2Channel {
        send,
        scheme,
        authority,
        timeout,
    };
    Ok((channel, driver))
}

impl H2Channel {
    /// One unary call: `request` to the method at `path`, its answer decoded.
    /// The whole call, answer included, must end within the run's timeout,
    /// or it fails as tonic's `Timeout expired`.
    pub async fn unary<Q, A>(&mut self, path: &PathAndQuery, request: &Q) -> Result<A, Status>
    where
        Q: prost::Message,
        A: prost::Message + Default,
    {
        match tokio::time::timeout(self.timeout, self.call(path, request)).await {
            Ok(answer) => answer,
            Err(_) => Err(Status::cancelled("Timeout expired")),
        }
    }

    async fn call<Q, A>(&mut self, path: &PathAndQuery, request: &Q) -> Result<A, Status>
    where
        Q: prost::Message,
        A: prost::Message + Default,
    {
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path.clone())
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        let head = Request::post(uri)
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .body(())
            .map_err(|e| Status::internal(e.to_string()))?;
        let body = frame(request)?;

        std::future::poll_fn(|cx| self.send.poll_ready(cx))
            .await
            .map_err(h2_status)?;
        let (response, mut stream) = self.send.send_request(head, false).map_err(h2_status)?;
        stream.send_data(body, true).map_err(h2_status)?;
        let (head, mut recv) = response.await.map_err(h2_status)?.into_parts();
        // An error comes as headers alone ("trailers-only"), whatever the
        // HTTP status.
        if let Some(status) = grpc_status(&head.headers) {
            return Err(match status.code() {
                Code::Ok => Status::internal("the answer holds no message"),
                _ => status,
            });
        }
        if head.status != StatusCode::OK {
            return Err(http_status(head.status));
        }
        let message = read_message(&mut recv).await?;
        let trailers = recv.trailers().await.map_err(h2_status)?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(status) if status.code() == Code::Ok => unframe(&message),
            Some(status) => Err(status),
            None => Err(Status::internal("the answer has no grpc-status")),
        }
    }
}

/// The largest answer taken (tonic's default limit).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// An answer's data, its framed message whole. Each chunk is given back to
/// the flow-control window as it is read, so the peer may send as much
/// again. An answer in one chunk (most are) is not copied; a longer one is
/// gathered into a buffer of the size its prefix gives, and refused as soon
/// as its prefix announces more than [`MAX_ANSWER`].
async fn read_message(recv: &mut h2::RecvStream) -> Result<Bytes, Status> {
    let mut only: Option<Bytes> = None;
    let mut gathered = BytesMut::new();
    while let Some(data) = recv.data().await {
        let data = data.map_err(h2_status)?;
        let _ = recv.flow_control().release_capacity(data.len());
        // h2 passes on the empty frame that may end a stream.
        if data.is_empty() {
            continue;
        }
        if only.is_none() && gathered.is_empty() {
            only = Some(data);
            continue;
        }
        if let Some(first) = only.take() {
            let announced = first
                .first_chunk::<PREFIX>()
                .map_or(0, |p| u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize);
            if announced > MAX_ANSWER {
                return Err(too_large());
            }
            gathered.reserve((PREFIX + announced).max(first.len() + data.len()));
            gathered.extend_from_slice(&first);
        }
        gathered.extend_from_slice(&data);
        if gathered.len() > PREFIX + MAX_ANSWER {
            return Err(too_large());
        }
    }
    Ok(only.unwrap_or_else(|| gathered.freeze()))
}

fn too_large() -> Status {
    Status::out_of_range(format!("the answer is larger than {MAX_ANSWER} bytes"))
}

/// The call's status in `headers` (`grpc-status`, `grpc-message`), if they
/// carry one. Rich error details are left out: tonic panics on a malformed
/// `grpc-status-details-bin`, and no benchmark reads them.
fn grpc_status(headers: &http::HeaderMap) -> Option<Status> {
    const DETAILS: &str = "grpc-status-details-bin";
    if headers.contains_key(DETAILS) {
        let mut headers = headers.clone();
        headers.remove(DETAILS);
        return Status::from_header_map(&headers);
    }
    Status::from_header_map(headers)
}

/// The status of an answer with no `grpc-status` and an HTTP status other
/// than 200, as gRPC maps it (and tonic).
fn http_status(status: StatusCode) -> Status {
    let code = match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!("the member answered with HTTP status {status}"),
    )
}

/// gRPC's message prefix: a compression flag (0: none), then the message's
/// length, 4 bytes big-endian.
const PREFIX: usize = 5;

/// `message` as gRPC frames it on the wire.
fn frame(message: &impl prost::Message) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix_len = u32::try_from(len).map_err(|_| Status::internal("request too large"))?;
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    buf.put_u8(0);
    buf.put_u32(prefix_len);
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(buf.freeze())
}

/// The one message of a unary answer, from its framed bytes.
fn unframe<A: prost::Message + Default>(framed: &[u8]) -> Result<A, Status> {
    let Some((prefix, message)) = framed.split_first_chunk::<PREFIX>() else {
        return Err(Status::internal("the answer holds no message"));
    };
    if prefix[0] != 0 {
        return Err(Status::unimplemented("the answer is compressed"));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if message.len() != len {
        return Err(Status::internal(format!(
            "the answer's message is {} bytes, its prefix says {len}",
            message.len()
        )));
    }
    A::decode(message).map_err(|e| Status::internal(e.to_string()))
}

/// A call's h2 error: a connection that ended or is going away (GOAWAY from
/// the member that stops or restarts, or from h2 itself after a protocol
/// error) is `Unavailable`, as grpc-go reports a lost connection; a reset
/// stream takes the code tonic gives its reason.
fn h2_status(e: h2::Error) -> Status {
    if e.is_io() || e.is_go_away() {
        return Status::unavailable(e.to_string());
    }
    Status::from_error(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{PutRequest, PutResponse};
    use prost::Message as _;

    #[test]
    fn a_framed_message_unframes_to_itself() {
        let put = PutRequest {
            key: Bytes::from_static(b"k"),
            value: vec![7; 300].into(),
            ..Default::default()
        };
        let framed = frame(&put).unwrap();
        assert_eq!(framed[0], 0);
        assert_eq!(framed.len(), PREFIX + put.encoded_len());
        assert_eq!(unframe::<PutRequest>(&framed).unwrap(), put);
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        assert_eq!(
            unframe::<PutResponse>(b"").unwrap_err().code(),
            Code::Internal
        );
        assert_eq!(
            unframe::<PutResponse>(b"\0\0\0").unwrap_err().code(),
            Code::Internal
        );
        let compressed = [1, 0, 0, 0, 0];
        assert_eq!(
            unframe::<PutResponse>(&compressed).unwrap_err().code(),
            Code::Unimplemented
        );
        let short = [0, 0, 0, 0, 9, 1];
        assert_eq!(
            unframe::<PutResponse>(&short).unwrap_err().code(),
            Code::Internal
        );
        let long = [0, 0, 0, 0, 0, 1];
        assert_eq!(
            unframe::<PutResponse>(&long).unwrap_err().code(),
            Code::Internal
        );
        let empty = [0, 0, 0, 0, 0];
        assert_eq!(
            unframe::<PutResponse>(&empty).unwrap(),
            PutResponse::default()
        );
    }

    #[test]
    fn a_status_in_headers_is_read_and_malformed_details_do_not_panic() {
        let mut headers = http::HeaderMap::new();
        assert!(grpc_status(&headers).is_none());
        headers.insert("grpc-status", "3".parse().unwrap());
        headers.insert(
            "grpc-message",
            "etcdserver:%20request%20is%20too%20large".parse().unwrap(),
        );
        headers.insert("grpc-status-details-bin", "not base64!".parse().unwrap());
        let status = grpc_status(&headers).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "etcdserver: request is too large");
    }

    #[test]
    fn http_errors_map_to_grpc_codes_as_grpc_does() {
        let code = |s: u16| http_status(StatusCode::from_u16(s).unwrap()).code();
        assert_eq!(code(400), Code::Internal);
        assert_eq!(code(401), Code::Unauthenticated);
        assert_eq!(code(403), Code::PermissionDenied);
        assert_eq!(code(404), Code::Unimplemented);
        for unavailable in [429, 502, 503, 504] {
            assert_eq!(code(unavailable), Code::Unavailable);
        }
        assert_eq!(code(500), Code::Unknown);
    }
}
