//! The member's TLS setup, resolved once at start (so a bad certificate fails
//! the start, before anything listens): auto-tls certificates generated under
//! `<data-dir>/fixtures/{client,peer}`, the rustls server configs of the
//! `https://` client and peer listeners, and the client config this member
//! dials its peers with (presenting its peer certificate).

use std::io;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt as _;
use tokio::net::TcpListener;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_stream::wrappers::TcpListenerStream;

use super::MemberError;
use crate::config::{EtcdUrl, MemberConfig};
use crate::raft::transport::give_up_on_silence;
use crate::tls::incoming::TlsIncoming;
use crate::tls::stream::MaybeTlsStream;
use crate::tls::{self, TlsSettings};

/// TLS configs of one member.
pub(super) struct MemberTls {
    client_server: Option<Arc<ServerConfig>>,
    peer_server: Option<Arc<ServerConfig>>,
    /// `--peer-cert-allowed-cn`.
    pub peer_allowed_cn: Option<String>,
    /// For dialling `https://` peer URLs (also when joining a cluster).
    pub peer_client: Option<Arc<ClientConfig>>,
}

fn hosts(urls: &[&[EtcdUrl]]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in urls.iter().flat_map(|l| l.iter()) {
        let h = u.host().to_owned();
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

fn server(
    settings: &TlsSettings,
    urls: &[EtcdUrl],
) -> Result<Option<Arc<ServerConfig>>, MemberError> {
    if !urls.iter().any(EtcdUrl::is_https) {
        return Ok(None);
    }
    Ok(Some(tls::server_config(settings)?))
}

impl MemberTls {
    pub fn resolve(cfg: &MemberConfig) -> Result<MemberTls, MemberError> {
        let fixtures = cfg.data_dir.join("fixtures");
        let client = tls::auto::resolve(
            &cfg.client_tls,
            &fixtures.join("client"),
            &hosts(&[&cfg.listen_client_urls, &cfg.advertise_client_urls]),
        )?;
        let peer = tls::auto::resolve(
            &cfg.peer_tls,
            &fixtures.join("peer"),
            &hosts(&[&cfg.listen_peer_urls, &cfg.initial_advertise_peer_urls]),
        )?;
        let peers_https = cfg
            .initial_cluster
            .iter()
            .flat_map(|(_, urls)| urls.iter())
            .chain(&cfg.listen_peer_urls)
            .any(EtcdUrl::is_https);
        let peer_client = if peers_https || !peer.is_empty() {
            if peer.trusted_ca_file.is_none() && !peer.auto_tls {
                tracing::warn!(
                    "peer certificates are not verified: --peer-trusted-ca-file is not set"
                );
            }
            Some(tls::client_config(&peer)?)
        } else {
            None
        };
        Ok(MemberTls {
            client_server: server(&client, &cfg.listen_client_urls)?,
            peer_server: server(&peer, &cfg.listen_peer_urls)?,
            peer_allowed_cn: peer.allowed_cn.clone(),
            peer_client,
        })
    }

    /// The server config of the client listener for `url` (`None`: plain).
    pub fn client_server_for(&self, url: Option<&EtcdUrl>) -> Option<Arc<ServerConfig>> {
        url.is_some_and(EtcdUrl::is_https)
            .then(|| self.client_server.clone())
            .flatten()
    }

    /// The server config of the peer listener for `url` (`None`: plain).
    pub fn peer_server_for(&self, url: Option<&EtcdUrl>) -> Option<Arc<ServerConfig>> {
        url.is_some_and(EtcdUrl::is_https)
            .then(|| self.peer_server.clone())
            .flatten()
    }
}

/// The connections of a peer listener, for tonic: plain, or past their TLS
/// handshake (and, with `allowed_cn`, only those whose verified certificate
/// carries that common name). Raft traffic is many small messages: no Nagle
/// delay.
pub(super) fn peer_incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    allowed_cn: Option<String>,
) -> BoxStream<'static, Result<MaybeTlsStream, io::Error>> {
    match tls {
        None => TcpListenerStream::new(listener)
            .map(|s| {
                s.map(|s| {
                    let _ = s.set_nodelay(true);
                    give_up_on_silence(&s);
                    MaybeTlsStream::Plain(s)
                })
            })
            .boxed(),
        Some(config) => {
            let incoming = TlsIncoming::spawn(listener, config);
            futures::stream::unfold(incoming, move |mut incoming| {
                let allowed_cn = allowed_cn.clone();
                async move {
                    loop {
                        let a = incoming.next().await?;
                        match &allowed_cn {
                            Some(cn) if a.client_cn.as_ref() != Some(cn) => {
                                tracing::warn!(
                                    remote = %a.addr,
                                    common_name = ?a.client_cn,
                                    allowed = %cn,
                                    "rejected peer connection: certificate common name not allowed"
                                );
                            }
                            _ => {
                                give_up_on_silence(a.stream.get_ref().0);
                                return Some((
                                    Ok(MaybeTlsStream::Tls(Box::new(a.stream))),
                                    incoming,
                                ));
                            }
                        }
                    }
                }
            })
            .boxed()
        }
    }
}
