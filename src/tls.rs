//! rustls server configuration for the webhook listener: TLS 1.2 and 1.3 only, ALPN h2 and
//! http/1.1, the ring crypto provider (no OpenSSL, no C toolchain beyond ring's own).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate/key pair that could not be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds no usable PEM item of the expected type.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the pair (for example a key that does not match the certificate).
    #[error("{cert} / {key}: {source}")]
    Rustls {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// The cause.
        source: rustls::Error,
    },
}

/// The crypto provider used everywhere in Gatehouse.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process-wide default provider (for outbound clients such as reqwest).
/// Harmless when a default is already installed.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a PEM certificate chain and private key and builds the server configuration.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        path: cert.to_path_buf(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    server_config_from_pem(&cert_pem, &key_pem, cert, key)
}

/// Builds the server configuration from PEM bytes; `cert`/`key` name the sources in errors.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.to_path_buf(),
            what: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert.to_path_buf(),
            what: "no CERTIFICATE block found".into(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        path: key.to_path_buf(),
        what: format!("no usable private key: {e}"),
    })?;
    let rustls_err = |source| TlsError::Rustls {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_err)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(rustls_err)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    #[test]
    fn loads_generated_pair_and_rejects_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = certs::ensure_dev_certs(dir.path()).unwrap();
        let cfg = load_server_config(&files.cert, &files.key).unwrap();
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        let other = tempfile::tempdir().unwrap();
        let (other_files, _) = certs::ensure_dev_certs(other.path()).unwrap();
        let err = load_server_config(&files.cert, &other_files.key).unwrap_err();
        assert!(matches!(err, TlsError::Rustls { .. }), "{err}");

        let err = load_server_config(&files.key, &files.key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.key"), "{err}");
        let err = load_server_config(&dir.path().join("nope.crt"), &files.key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.crt"), "{err}");
    }
}
