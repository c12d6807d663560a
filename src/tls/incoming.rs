//! A TLS-terminating acceptor: accepts TCP connections and runs their TLS
//! handshakes concurrently (each bounded by a timeout), handing out the
//! connections whose handshake completed, with the common name of a verified
//! client certificate.
//!
//! Ownership: one accept task per listener, owning the handshake tasks in a
//! `JoinSet`; dropping the [`TlsIncoming`] aborts the accept task, which drops
//! (and aborts) the handshakes in flight. A failed handshake (no or an invalid
//! client certificate under client-cert-auth, plain HTTP on a TLS port) only
//! closes that connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection past its handshake.
pub struct Accepted {
    pub stream: TlsStream<TcpStream>,
    pub addr: SocketAddr,
    /// Common name of the client's verified certificate, if it sent one.
    pub client_cn: Option<String>,
}

/// Completed TLS connections of one listener.
pub struct TlsIncoming {
    rx: mpsc::Receiver<Accepted>,
    local: std::io::Result<SocketAddr>,
    task: JoinHandle<()>,
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsIncoming {
    /// Starts accepting on `listener` (call inside a tokio runtime).
    pub fn spawn(listener: TcpListener, config: Arc<ServerConfig>) -> TlsIncoming {
        let local = listener.local_addr();
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        TlsIncoming { rx, local, task }
    }

    /// The next connection; `None` once the accept task has ended.
    pub async fn next(&mut self) -> Option<Accepted> {
        self.rx.recv().await
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, tx: mpsc::Sender<Accepted>) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let tx = tx.clone();
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let client_cn = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(super::common_name);
                                let _ = tx.send(Accepted { stream, addr, client_cn }).await;
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(remote = %addr, error = %e, "rejected connection: TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::warn!(remote = %addr, "rejected connection: TLS handshake timed out");
                            }
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            _ = tx.closed() => return,
        }
    }
}
