//! Certificate authority and serving certificate generation (rcgen, ring).
//!
//! Every serving certificate carries its names as subjectAltNames: Kubernetes API servers since
//! 1.19 ignore the Common Name ("x509: certificate relies on legacy Common Name field").

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use time::{Duration, OffsetDateTime};

/// Names the development certificate is valid for.
pub const DEV_SANS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// A CA certificate and a serving certificate and key it signed, all PEM.
#[derive(Debug, Clone)]
pub struct CertBundle {
    /// The CA certificate (what `caBundle` and `curl --cacert` take).
    pub ca_pem: String,
    /// The CA's private key; kept only when the caller wants to sign more later.
    pub ca_key_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct CertOptions {
    /// DNS names and IP addresses for the serving certificate.
    pub sans: Vec<String>,
    /// Validity in days from now.
    pub days: u32,
    /// Common name of the CA.
    pub ca_name: String,
}

/// The kind of key pair to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (small, fast; the default).
    #[default]
    EcdsaP256,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures, for environments that require RSA.
    Rsa2048,
}

/// RSA modulus size for [`KeyAlgorithm::Rsa2048`].
const RSA_BITS: usize = 2048;

impl KeyAlgorithm {
    /// A fresh key pair of this kind.
    ///
    /// ring (the only crypto backend Gatehouse links) can sign with RSA keys but cannot generate
    /// them, so RSA keys are generated with the RustCrypto `rsa` crate and handed to rcgen as
    /// PKCS#8; every signature is then made by ring. The `rsa` crate is used for nothing else.
    pub fn generate(self) -> Result<KeyPair, CertError> {
        match self {
            KeyAlgorithm::EcdsaP256 => Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?),
            KeyAlgorithm::Rsa2048 => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS)
                    .map_err(|e| CertError::KeyGen(e.to_string()))?;
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| CertError::KeyGen(e.to_string()))?;
                let pkcs8 = PrivatePkcs8KeyDer::from(der.as_bytes());
                Ok(KeyPair::from_pkcs8_der_and_sign_algo(
                    &pkcs8,
                    &rcgen::PKCS_RSA_SHA256,
                )?)
            }
        }
    }

    /// `ecdsa` or `rsa`, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa",
            KeyAlgorithm::Rsa2048 => "rsa",
        }
    }
}

/// Certificate generation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters (for example a name that is not a valid DNS name).
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The key pair could not be generated.
    #[error("cannot generate key pair: {0}")]
    KeyGen(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Generates a CA and a serving certificate signed by it, both ECDSA P-256.
pub fn generate(opts: &CertOptions) -> Result<CertBundle, CertError> {
    generate_with_key(opts, KeyAlgorithm::EcdsaP256)
}

/// Generates a CA and a serving certificate signed by it, both with keys of kind `key`.
pub fn generate_with_key(opts: &CertOptions, key: KeyAlgorithm) -> Result<CertBundle, CertError> {
    let now = OffsetDateTime::now_utc();
    let not_before = now - Duration::hours(1);
    let not_after = now + Duration::days(i64::from(opts.days.max(1)));

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut ca_dn = DistinguishedName::new();
    ca_dn.push(DnType::CommonName, opts.ca_name.clone());
    ca_dn.push(DnType::OrganizationName, "gatehouse");
    ca_params.distinguished_name = ca_dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = key.generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut params = CertificateParams::new(opts.sans.clone())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        opts.sans
            .first()
            .cloned()
            .unwrap_or_else(|| "gatehouse".into()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    let leaf_key = key.generate()?;
    let cert = params.signed_by(&leaf_key, &ca)?;

    Ok(CertBundle {
        ca_pem: ca.pem(),
        ca_key_pem,
        cert_pem: cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

/// Paths of a CA, certificate and key on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// `ca.crt`
    pub ca: PathBuf,
    /// `tls.crt`
    pub cert: PathBuf,
    /// `tls.key` (mode 0600)
    pub key: PathBuf,
}

impl CertFiles {
    /// The conventional file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    /// Writes the bundle: certificates 0644, the key 0600. The CA key is not written.
    pub fn write(&self, bundle: &CertBundle) -> Result<(), CertError> {
        for path in [&self.ca, &self.cert, &self.key] {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|source| CertError::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
        }
        write_file(&self.ca, bundle.ca_pem.as_bytes(), 0o644)?;
        write_file(&self.cert, bundle.cert_pem.as_bytes(), 0o644)?;
        write_file(&self.key, bundle.key_pem.as_bytes(), 0o600)?;
        Ok(())
    }
}

/// The development certificates in `data_dir/dev-certs`: reused when present, otherwise
/// generated for [`DEV_SANS`]. Returns the files and whether they were created now.
pub fn ensure_dev_certs(data_dir: &Path) -> Result<(CertFiles, bool), CertError> {
    let files = CertFiles::in_dir(&data_dir.join("dev-certs"));
    if files.ca.is_file() && files.cert.is_file() && files.key.is_file() {
        return Ok((files, false));
    }
    let bundle = generate(&CertOptions {
        sans: DEV_SANS.iter().map(|s| (*s).to_owned()).collect(),
        days: 365,
        ca_name: "gatehouse development CA".into(),
    })?;
    files.write(&bundle)?;
    Ok((files, true))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Write beside the target and rename, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_are_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (files, created) = ensure_dev_certs(dir.path()).unwrap();
        assert!(created);
        let first = fs::read_to_string(&files.cert).unwrap();
        let (_, created_again) = ensure_dev_certs(dir.path()).unwrap();
        assert!(!created_again);
        assert_eq!(first, fs::read_to_string(&files.cert).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn invalid_name_is_an_error() {
        let err = generate(&CertOptions {
            sans: vec!["caf\u{e9}.example".into()],
            days: 1,
            ca_name: "x".into(),
        });
        assert!(err.is_err());
    }
}
