//! `--auto-tls` and `--peer-auto-tls`: a self-signed certificate generated at
//! start (with rcgen) for the hosts of the listen URLs, written under the data
//! dir as etcd does (`fixtures/client`, `fixtures/peer`) and reused by later
//! starts. Clients cannot verify such a certificate (`etcdctl
//! --insecure-skip-tls-verify`); it encrypts, it does not authenticate.

use std::io::Write;
use std::path::Path;

use super::{display, TlsError, TlsSettings};

const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";

/// `s` with a certificate: as given, or (auto-tls without one) a self-signed
/// one in `dir` for `hosts`.
pub fn resolve(s: &TlsSettings, dir: &Path, hosts: &[String]) -> Result<TlsSettings, TlsError> {
    if !s.auto_tls || !s.is_empty() {
        return Ok(s.clone());
    }
    let cert = dir.join(CERT);
    let key = dir.join(KEY);
    if !(cert.is_file() && key.is_file()) {
        generate(dir, hosts)?;
        tracing::info!(cert = %cert.display(), "generated a self-signed certificate (auto-tls)");
    }
    // As etcd's `SelfCert`, which replaces the whole TLS setup: the CA (and
    // so client certificate checks) goes, as nothing verifies self-signed
    // certificates; traffic is encrypted, not authenticated.
    Ok(TlsSettings {
        cert_file: Some(cert),
        key_file: Some(key),
        trusted_ca_file: None,
        crl_file: None,
        client_cert_auth: false,
        allowed_cn: None,
        ..s.clone()
    })
}

fn generate(dir: &Path, hosts: &[String]) -> Result<(), TlsError> {
    let mut names: Vec<String> = hosts.to_vec();
    for default in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|h| h == default) {
            names.push(default.to_owned());
        }
    }
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| TlsError::Read {
        path: display(dir),
        reason: e.to_string(),
    })?;
    write(&dir.join(KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write(&dir.join(CERT), cert.pem().as_bytes(), 0o644)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| TlsError::Read {
        path: display(path),
        reason: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tls_generates_a_usable_certificate_once_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = TlsSettings {
            auto_tls: true,
            ..Default::default()
        };
        let resolved = resolve(&s, dir.path(), &["127.0.0.1".into()]).unwrap();
        let cert = std::fs::read(resolved.cert_file.as_ref().unwrap()).unwrap();
        assert!(super::super::server_config(&resolved).is_ok());
        let again = resolve(&s, dir.path(), &[]).unwrap();
        assert_eq!(std::fs::read(again.cert_file.unwrap()).unwrap(), cert);
    }

    #[test]
    fn a_generated_certificate_drops_the_ca_as_etcds_self_cert_does() {
        // With a CA kept, the server would ask every peer for a certificate
        // of that CA, which no self-signed certificate is: no peer would join.
        let dir = tempfile::tempdir().unwrap();
        let s = TlsSettings {
            auto_tls: true,
            trusted_ca_file: Some(dir.path().join("ca.pem")),
            client_cert_auth: true,
            ..Default::default()
        };
        let resolved = resolve(&s, dir.path(), &[]).unwrap();
        assert_eq!(resolved.trusted_ca_file, None);
        assert!(!resolved.client_cert_auth);
        assert!(super::super::server_config(&resolved).is_ok());
    }

    #[test]
    fn given_certificates_win_over_auto_tls() {
        let s = TlsSettings {
            auto_tls: true,
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve(&s, dir.path(), &[]).unwrap(), s);
    }
}
