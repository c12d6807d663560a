//! Dials `https://` URLs for tonic clients through rustls.
//!
//! tonic's own TLS is not used: the peer transport needs localcluster's
//! verifier for auto-tls peers, and one TLS stack (one crypto provider, one set
//! of PEM readers) serves both sides. `http://` URLs take tonic's plain path.

use std::io;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects `endpoint`: over TLS with `tls` when its URL is `https://` (an
/// `https://` URL without a config is refused), plainly otherwise.
pub async fn connect(
    endpoint: &Endpoint,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Channel, tonic::transport::Error> {
    if endpoint.uri().scheme_str() != Some("https") {
        return endpoint.connect().await;
    }
    let connector = tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move { Ok::<_, io::Error>(TokioIo::new(dial_tls(&uri, tls).await?)) }
    });
    endpoint.connect_with_connector(connector).await
}

/// A client connection, plain or TLS.
pub type ClientStream = Either<TlsStream<TcpStream>, TcpStream>;

/// Dials `uri`: TLS with `tls` for `https://` (refused without a config),
/// plain TCP otherwise; no delay on small writes either way.
pub async fn dial_uri(uri: &Uri, tls: Option<Arc<ClientConfig>>) -> io::Result<ClientStream> {
    if uri.scheme_str() == Some("https") {
        Ok(Either::Left(dial_tls(uri, tls).await?))
    } else {
        let (host, port) = host_port(uri, 80)?;
        Ok(Either::Right(dial(&host, port).await?))
    }
}

/// The TCP connection under `stream` (for socket options).
pub fn tcp_of(stream: &ClientStream) -> &TcpStream {
    match stream {
        Either::Left(tls) => tls.get_ref().0,
        Either::Right(tcp) => tcp,
    }
}

/// The host (without IPv6 brackets) and port of `uri`.
fn host_port(uri: &Uri, default_port: u16) -> io::Result<(String, u16)> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL without a host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(default_port)))
}

async fn dial(host: &str, port: u16) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn dial_tls(uri: &Uri, tls: Option<Arc<ClientConfig>>) -> io::Result<TlsStream<TcpStream>> {
    let tls = tls.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{uri}: https URL but no TLS configuration"),
        )
    })?;
    let (host, port) = host_port(uri, 443)?;
    let tcp = dial(&host, port).await?;
    let name =
        ServerName::try_from(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(tls).connect(name, tcp).await
}
