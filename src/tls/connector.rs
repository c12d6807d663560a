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
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;
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
        async move {
            let tls = tls.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{uri}: https URL but no TLS configuration"),
                )
            })?;
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL without a host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = TlsConnector::from(tls).connect(name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    endpoint.connect_with_connector(connector).await
}
