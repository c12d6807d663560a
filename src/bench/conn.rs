//! The load generator's connections: gRPC calls written straight onto an
//! HTTP/2 connection (the `h2` crate), under the generated `KvClient`.
//!
//! Why not tonic's `Channel`: a `Channel` hands every call to a buffer task,
//! which hands it to hyper's client dispatcher, which spawns one more task to
//! send the request body. Three hand-overs per request, in a process that
//! shares the cores with the members it measures; at 100 clients the load
//! generator took a fifth of the machine. Here the client's own task opens
//! the stream, writes the request and reads the answer, and one task per
//! connection drives the connection ([`Driver`]).
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
//! What it does not do: the answer is awaited only once the request body has
//! ended, which suits unary calls, all the benchmarks make.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::Frame;
use http_body_util::BodyExt as _;

use crate::coalesce::CoalescingStream;

/// Errors of a call, as tonic takes them.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper's HTTP/2 client settings, which tonic's `Channel` used: the receive
/// windows announced, streams opened before the server says how many it
/// takes, bytes buffered for sending, the size of headers accepted.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const INITIAL_SEND_STREAMS: usize = 100;
const SEND_BUFFER: usize = 1024 * 1024;
const HEADER_LIST: u32 = 16 * 1024;

/// One HTTP/2 connection to a member, as a tower service of gRPC requests;
/// cheap to clone (every client of the connection holds one).
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

impl tower::Service<Request<tonic::body::Body>> for H2Channel {
    type Response = Response<RecvBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<RecvBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let (mut head, body) = request.into_parts();
        // tonic gives the path; HTTP/2 also wants the scheme and authority.
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        let sent = Uri::from_parts(uri)
            .map_err(BoxError::from)
            .and_then(|uri| {
                head.uri = uri;
                let request = Request::from_parts(head, ());
                Ok(self.send.send_request(request, false)?)
            });
        let deadline = Box::pin(tokio::time::sleep(self.timeout));
        Box::pin(async move {
            let (response, mut stream) = sent?;
            let mut deadline = deadline;
            let call = async move {
                send_body(body, &mut stream).await?;
                Ok::<_, BoxError>(response.await?)
            };
            let response = tokio::select! {
                response = call => response?,
                () = &mut deadline => return Err(tonic::TimeoutExpired(()).into()),
            };
            // The same deadline holds for the rest of the answer.
            Ok(response.map(|recv| RecvBody {
                recv,
                data_done: false,
                deadline,
            }))
        })
    }
}

/// Writes `body` on `stream`, ending the stream with its last frame.
async fn send_body(
    body: tonic::body::Body,
    stream: &mut h2::SendStream<Bytes>,
) -> Result<(), BoxError> {
    let mut body = std::pin::pin!(body);
    // Held back one frame, so that the last one carries END_STREAM.
    let mut held: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                if let Some(previous) = held.replace(data) {
                    stream.send_data(previous, false)?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    if let Some(previous) = held.take() {
                        stream.send_data(previous, false)?;
                    }
                    stream.send_trailers(trailers)?;
                    return Ok(());
                }
            }
        }
    }
    stream.send_data(held.unwrap_or_default(), true)?;
    Ok(())
}

/// A response body: the stream's data, then its trailers (where gRPC puts
/// the call's status), unless the call's deadline comes first.
pub struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this.poll_recv(cx) {
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(tonic::TimeoutExpired(()).into()))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

impl RecvBody {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read, so the peer may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}
