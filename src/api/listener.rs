//! The client listener: one `--listen-client-urls` address, plain (`http://`)
//! or TLS (`https://`), feeding [`super::server::serve`].
//!
//! Layering of a connection: TCP accept -> TLS handshake (for `https://`, see
//! [`crate::tls::incoming`]) -> [`CoalescingStream`] (responses that end
//! together share one write; above TLS, so they share its records too) ->
//! [`H2FixStream`] (the `:authority` shim, which must see decrypted HTTP/2) ->
//! hyper (HTTP/2 gRPC, or HTTP/1 for `/health`).
//! Each connection carries a [`ClientAddr`]: its remote address and, under TLS,
//! the common name of a verified client certificate, which the auth layer
//! reads (as etcd does with `--client-cert-auth`) through axum's `ConnectInfo`,
//! which `serve` puts in every request.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;

use super::h2fix::H2FixStream;
use crate::coalesce::CoalescingStream;
use crate::tls::incoming::TlsIncoming;
use crate::tls::stream::MaybeTlsStream;

/// Who is at the other end of a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    pub remote: SocketAddr,
    /// Common name of the verified client certificate (TLS only).
    pub cert_name: Option<String>,
}

/// One client listener (accepts through axum's `Listener` trait).
pub enum ClientListener {
    Plain(TcpListener),
    Tls(TlsIncoming),
}

impl ClientListener {
    /// Serves `listener` with TLS when `tls` is given (call inside a runtime).
    pub fn new(listener: TcpListener, tls: Option<Arc<ServerConfig>>) -> ClientListener {
        match tls {
            Some(config) => ClientListener::Tls(TlsIncoming::spawn(listener, config)),
            None => ClientListener::Plain(listener),
        }
    }
}

impl axum::serve::Listener for ClientListener {
    type Io = H2FixStream<CoalescingStream<MaybeTlsStream>>;
    type Addr = ClientAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self {
            ClientListener::Plain(l) => {
                // axum's impl retries on accept errors (and backs off on EMFILE).
                let (stream, remote) = axum::serve::Listener::accept(l).await;
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
                }
                let addr = ClientAddr {
                    remote,
                    cert_name: None,
                };
                (
                    H2FixStream::new(CoalescingStream::new(MaybeTlsStream::Plain(stream))),
                    addr,
                )
            }
            ClientListener::Tls(incoming) => match incoming.next().await {
                Some(a) => {
                    let addr = ClientAddr {
                        remote: a.addr,
                        cert_name: a.client_cn,
                    };
                    (
                        H2FixStream::new(CoalescingStream::new(MaybeTlsStream::Tls(Box::new(
                            a.stream,
                        )))),
                        addr,
                    )
                }
                // The accept task only ends when we are dropped; never return.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        let remote = match self {
            ClientListener::Plain(l) => l.local_addr()?,
            ClientListener::Tls(t) => t.local_addr()?,
        };
        Ok(ClientAddr {
            remote,
            cert_name: None,
        })
    }
}
