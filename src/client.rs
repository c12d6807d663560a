//! A thin etcd client over the generated gRPC stubs, for localcluster's own tools
//! (the supervisor's cluster probe, `bench`, the failover demo, tests). Application
//! code should use a real etcd client; this only covers what the tools need.

use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::{Channel, Endpoint};

use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::pb::etcdserverpb::{StatusRequest, StatusResponse};
use crate::supervisor::{ClusterProbe, MemberProbe};

/// Normalises `host:port` or `http(s)://host:port` to a URL.
pub fn url_of(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Connects to one endpoint. An `https://` endpoint is dialled with
/// [`tools_tls`]; use [`connect_with`] to choose the TLS configuration.
pub async fn connect(
    endpoint: &str,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    connect_with(endpoint, timeout, tls_for(endpoint)).await
}

/// [`tools_tls`] for an `https://` endpoint; none for a plain one.
pub(crate) fn tls_for(
    endpoint: &str,
) -> Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>> {
    if url_of(endpoint).starts_with("https://") {
        tools_tls()
    } else {
        None
    }
}

/// The tonic endpoint of `endpoint`, with `timeout` for connecting and for
/// each request, and no Nagle delay.
fn tonic_endpoint(endpoint: &str, timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url_of(endpoint))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true))
}

/// The TLS of localcluster's own tools (supervisor probes, `bench`) for
/// `https://` endpoints, from the variables `etcdctl` reads: the server is
/// verified against `ETCDCTL_CACERT` and `ETCDCTL_CERT`/`ETCDCTL_KEY` are
/// presented when set; without `ETCDCTL_CACERT` the server's certificate is not
/// verified (like `etcdctl --insecure-skip-tls-verify`).
pub fn tools_tls() -> Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>> {
    let settings = crate::tls::TlsSettings {
        trusted_ca_file: etcdctl_file("ETCDCTL_CACERT"),
        cert_file: etcdctl_file("ETCDCTL_CERT"),
        key_file: etcdctl_file("ETCDCTL_KEY"),
        ..Default::default()
    };
    match crate::tls::client_config(&settings) {
        Ok(config) => Some(config),
        Err(e) => {
            tracing::warn!(error = %e, "ETCDCTL_CACERT/ETCDCTL_CERT/ETCDCTL_KEY unusable; not verifying servers");
            crate::tls::insecure_client_config().ok()
        }
    }
}

/// The file an `etcdctl` variable (`ETCDCTL_CACERT`...) names, if set.
pub(crate) fn etcdctl_file(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
}

/// Connects to one endpoint, over TLS with `tls` if it is `https://`.
pub async fn connect_with(
    endpoint: &str,
    timeout: Duration,
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
) -> Result<Channel, tonic::transport::Error> {
    crate::tls::connector::connect(&tonic_endpoint(endpoint, timeout)?, tls).await
}

/// A KV client for one endpoint.
pub async fn kv(
    endpoint: &str,
    timeout: Duration,
) -> Result<KvClient<Channel>, tonic::transport::Error> {
    Ok(KvClient::new(connect(endpoint, timeout).await?))
}

/// The `Status` of the member at `endpoint`.
pub async fn status(endpoint: &str, timeout: Duration) -> Option<StatusResponse> {
    let channel = connect(endpoint, timeout).await.ok()?;
    let mut client = MaintenanceClient::new(channel);
    client
        .status(StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// The supervisor's cluster probe: asks each member for its `Status`.
pub struct StatusProbe;

impl ClusterProbe for StatusProbe {
    fn probe(&self, client_url: String) -> BoxFuture<'static, Option<MemberProbe>> {
        Box::pin(async move {
            let s = status(&client_url, Duration::from_millis(700)).await?;
            let header = s.header.unwrap_or_default();
            Some(MemberProbe {
                member_id: header.member_id,
                leader_id: s.leader,
                raft_term: s.raft_term,
                raft_index: s.raft_index,
            })
        })
    }
}
