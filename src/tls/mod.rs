//! TLS for the client and peer URLs (`https://`), as etcd configures it with
//! `--cert-file`/`--key-file`/`--trusted-ca-file`/`--client-cert-auth`/
//! `--client-crl-file`/`--auto-tls` and their `--peer-*` twins.
//!
//! - [`TlsSettings`]: one side's flags (client or peer), as configured.
//! - [`server_config`]: the rustls server side of a listener: its certificate,
//!   and with client-cert-auth, the CA (and CRL) that client certificates must
//!   chain to. ALPN offers `h2` and `http/1.1` (gRPC and `/health`).
//! - [`client_config`]: the rustls client side of a member dialling its peers:
//!   it presents the peer certificate (peers authenticate each other) and
//!   verifies theirs against the peer CA.
//! - [`auto`]: `--auto-tls`/`--peer-auto-tls` self-signed certificates.
//! - [`incoming`]: accepts TCP connections and completes TLS handshakes
//!   concurrently, so one slow client never holds up the others.
//! - [`stream`]: a connection that is plain or TLS.
//! - [`connector`]: dials `https://` URLs for tonic clients.
//!
//! Only the ring crypto provider is compiled in; every config is built with it
//! explicitly, so no process-wide default provider is needed.

pub mod auto;
pub mod connector;
pub mod incoming;
pub mod stream;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::WebPkiClientVerifier;

/// One side's TLS flags (client URLs, or peer URLs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `--cert-file` / `--peer-cert-file`: this member's certificate (PEM).
    pub cert_file: Option<PathBuf>,
    /// `--key-file` / `--peer-key-file`: its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// `--trusted-ca-file` / `--peer-trusted-ca-file`: CA bundle (PEM) that
    /// certificates of the other side must chain to; set, the other side must
    /// present one, as in etcd, with or without `client_cert_auth`.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-crl-file` / `--peer-crl-file`: revoked certificates (PEM).
    pub crl_file: Option<PathBuf>,
    /// `--client-cert-auth` / `--peer-client-cert-auth`: the other side must
    /// present a certificate signed by the trusted CA (which the CA alone
    /// already asks), and under auth a client's common name is its user.
    pub client_cert_auth: bool,
    /// `--auto-tls` / `--peer-auto-tls`: generate a self-signed certificate
    /// when none is given.
    pub auto_tls: bool,
    /// `--peer-cert-allowed-cn`: the common name a verified peer certificate
    /// must carry (peer side only).
    pub allowed_cn: Option<String>,
}

impl TlsSettings {
    /// Whether no certificate is configured (etcd's `TLSInfo.Empty`).
    pub fn is_empty(&self) -> bool {
        self.cert_file.is_none() && self.key_file.is_none()
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(String),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS key/cert must be provided")]
    NoCertificate,
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            path: display(path),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: display(path),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: display(path),
        reason: e.to_string(),
    })
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            path: display(path),
            reason: e.to_string(),
        })
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        store
            .add(cert)
            .map_err(|e| TlsError::Rustls(format!("{}: {e}", display(path))))?;
    }
    Ok(store)
}

fn identity(
    s: &TlsSettings,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    match (&s.cert_file, &s.key_file) {
        (Some(cert), Some(key)) => Ok((read_certs(cert)?, read_key(key)?)),
        _ => Err(TlsError::NoCertificate),
    }
}

/// The server side of a TLS listener configured by `s` (whose certificate
/// must be set: [`auto::resolve`] fills it in for auto-tls).
pub fn server_config(s: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certs, key) = identity(s)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    // As etcd's `TLSInfo.ServerConfig`: a trusted CA alone, without
    // `--client-cert-auth`, already requires a certificate it signed (the
    // flag adds only its common name as the user under auth).
    let builder = match &s.trusted_ca_file {
        Some(ca) => {
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
            if let Some(crl) = &s.crl_file {
                verifier = verifier.with_crls(read_crls(crl)?);
            }
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side used to dial peers: presents this member's certificate and
/// verifies the peer's against the trusted CA. With auto-tls (self-signed
/// certificates, no CA to check against) the peer's certificate is not
/// verified, as etcd does for `--peer-auto-tls`.
pub fn client_config(s: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &s.trusted_ca_file {
        Some(ca) if !s.auto_tls => builder.with_root_certificates(roots(ca)?),
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::AcceptAnyServer::new(provider()))),
    };
    // A certificate named but unusable is an error, not a connection
    // without one.
    let mut config = match identity(s) {
        Ok((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::Rustls(e.to_string()))?,
        Err(TlsError::NoCertificate) => builder.with_no_client_auth(),
        Err(e) => return Err(e),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client config that does not verify the server (for localcluster's own
/// probes of `https://` endpoints it has no CA for, like `etcdctl
/// --insecure-skip-tls-verify`).
pub fn insecure_client_config() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config(&TlsSettings {
        auto_tls: true,
        ..TlsSettings::default()
    })
}

/// The subject common name of the first certificate in `chain`.
pub fn common_name(chain: &[CertificateDer<'_>]) -> Option<String> {
    let first = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use rustls_pki_types::ServerName;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// Writes a CA and two leaf certificates (CN `server`, `alice`) into `dir`.
    fn pki(dir: &Path) -> (TlsSettings, TlsSettings) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.distinguished_name.push(DnType::CommonName, "ca");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |cn: &str| {
            let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{cn}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{cn}-key.pem")), key.serialize_pem()).unwrap();
            TlsSettings {
                cert_file: Some(dir.join(format!("{cn}.pem"))),
                key_file: Some(dir.join(format!("{cn}-key.pem"))),
                trusted_ca_file: Some(dir.join("ca.pem")),
                client_cert_auth: true,
                ..TlsSettings::default()
            }
        };
        (leaf("server"), leaf("alice"))
    }

    /// A handshake over an in-memory pipe: the client's certificate name as
    /// the server saw it, or the error.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<Option<String>, String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let (s, c) = tokio::join!(
            TlsAcceptor::from(server).accept(a),
            TlsConnector::from(client).connect(name, b)
        );
        c.map_err(|e| e.to_string())?;
        let s = s.map_err(|e| e.to_string())?;
        Ok(s.get_ref().1.peer_certificates().and_then(common_name))
    }

    #[tokio::test]
    async fn a_verified_client_certificate_yields_its_common_name() {
        let dir = tempfile::tempdir().unwrap();
        let (server, alice) = pki(dir.path());
        let cn = handshake(
            server_config(&server).unwrap(),
            client_config(&alice).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(cn.as_deref(), Some("alice"));
    }

    #[tokio::test]
    async fn client_cert_auth_refuses_a_client_without_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = pki(dir.path());
        let anonymous = TlsSettings {
            trusted_ca_file: server.trusted_ca_file.clone(),
            ..TlsSettings::default()
        };
        let result = handshake(
            server_config(&server).unwrap(),
            client_config(&anonymous).unwrap(),
        )
        .await;
        assert!(result.is_err(), "{result:?}");
    }

    #[tokio::test]
    async fn a_trusted_ca_alone_refuses_a_client_without_a_certificate_as_etcd_does() {
        let dir = tempfile::tempdir().unwrap();
        let (mut server, alice) = pki(dir.path());
        server.client_cert_auth = false;
        let anonymous = TlsSettings {
            trusted_ca_file: server.trusted_ca_file.clone(),
            ..TlsSettings::default()
        };
        let refused = handshake(
            server_config(&server).unwrap(),
            client_config(&anonymous).unwrap(),
        )
        .await;
        assert!(refused.is_err(), "{refused:?}");
        let cn = handshake(
            server_config(&server).unwrap(),
            client_config(&alice).unwrap(),
        )
        .await;
        assert_eq!(cn.unwrap().as_deref(), Some("alice"));
    }

    #[test]
    fn unreadable_files_are_named_in_the_error() {
        let s = TlsSettings {
            cert_file: Some("/nonexistent/cert.pem".into()),
            key_file: Some("/nonexistent/key.pem".into()),
            ..TlsSettings::default()
        };
        let err = server_config(&s).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
        // A client named a certificate: it must not dial without one.
        let err = client_config(&s).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }
}
