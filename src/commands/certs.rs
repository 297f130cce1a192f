//! `gatehouse certs`: a CA and a serving certificate for the webhook's Service, ready for a
//! Kubernetes TLS Secret and the webhook configuration's `caBundle`.
//!
//! The certificate carries every name the API server may use for the Service as a
//! subjectAltName (`NAME`, `NAME.NS`, `NAME.NS.svc`, `NAME.NS.svc.CLUSTER_DOMAIN`): API servers
//! since Kubernetes 1.19 ignore the Common Name.

use std::path::PathBuf;

use base64::Engine;
use clap::{Args, ValueEnum};

use crate::certs::{self, CertError, CertFiles, CertOptions, KeyAlgorithm};

/// Longest validity `--days` accepts (ten years).
pub const MAX_DAYS: u32 = 3650;

/// Key type on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyArg {
    /// ECDSA P-256 (default).
    Ecdsa,
    /// RSA 2048.
    Rsa,
}

impl From<KeyArg> for KeyAlgorithm {
    fn from(k: KeyArg) -> Self {
        match k {
            KeyArg::Ecdsa => KeyAlgorithm::EcdsaP256,
            KeyArg::Rsa => KeyAlgorithm::Rsa2048,
        }
    }
}

/// Options of `gatehouse certs`.
#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// The webhook's Service name.
    #[arg(long, value_name = "NAME")]
    pub service: String,
    /// The Service's namespace.
    #[arg(long, value_name = "NS")]
    pub namespace: String,
    /// Directory for ca.crt, tls.crt and tls.key (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Validity of the CA and the certificate, in days.
    #[arg(long, value_name = "N", default_value_t = 365)]
    pub days: u32,
    /// Key type of the CA and the certificate.
    #[arg(long, value_enum, default_value_t = KeyArg::Ecdsa)]
    pub key: KeyArg,
    /// The cluster's DNS domain.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Replace existing files in DIR.
    #[arg(long)]
    pub force: bool,
}

/// Why `gatehouse certs` could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum CertsCommandError {
    /// An option is unusable.
    #[error("{0}")]
    Usage(String),
    /// A file would be overwritten without `--force`.
    #[error("{0} already exists (use --force to replace it)")]
    Exists(PathBuf),
    /// Generating or writing failed.
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// The subjectAltNames for Service `service` in `namespace`.
pub fn service_sans(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{cluster_domain}"),
    ]
}

/// A DNS label as Kubernetes names Services and namespaces (RFC 1123, at most 63).
fn check_label(what: &str, value: &str) -> Result<(), CertsCommandError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(CertsCommandError::Usage(format!(
            "--{what} `{value}` is not a Kubernetes name (1-63 lower-case letters, digits and '-')"
        )))
    }
}

/// What [`run`] wrote.
#[derive(Debug)]
pub struct Written {
    /// The files.
    pub files: CertFiles,
    /// The names in the certificate.
    pub sans: Vec<String>,
    /// `ca.crt` base64-encoded, as the webhook configuration's `caBundle` takes it.
    pub ca_bundle: String,
}

/// Generates and writes the CA, certificate and key.
pub fn run(args: &CertsArgs) -> Result<Written, CertsCommandError> {
    check_label("service", &args.service)?;
    check_label("namespace", &args.namespace)?;
    if args.cluster_domain.is_empty()
        || args
            .cluster_domain
            .split('.')
            .any(|l| check_label("cluster-domain", l).is_err())
    {
        return Err(CertsCommandError::Usage(format!(
            "--cluster-domain `{}` is not a DNS domain",
            args.cluster_domain
        )));
    }
    if args.days == 0 || args.days > MAX_DAYS {
        return Err(CertsCommandError::Usage(format!(
            "--days {} is out of range: 1 to {MAX_DAYS}",
            args.days
        )));
    }
    if args.out.exists() && !args.out.is_dir() {
        return Err(CertsCommandError::Usage(format!(
            "--out {} is a file: --out names the directory for ca.crt, tls.crt and tls.key",
            args.out.display()
        )));
    }
    let files = CertFiles::in_dir(&args.out);
    if !args.force {
        for path in [&files.ca, &files.cert, &files.key] {
            if path.exists() {
                return Err(CertsCommandError::Exists(path.clone()));
            }
        }
    }
    let sans = service_sans(&args.service, &args.namespace, &args.cluster_domain);
    let bundle = certs::generate_with_key(
        &CertOptions {
            sans: sans.clone(),
            days: args.days,
            ca_name: format!("gatehouse CA for {}.{}", args.service, args.namespace),
        },
        args.key.into(),
    )?;
    files.write(&bundle)?;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(bundle.ca_pem.as_bytes());
    Ok(Written {
        files,
        sans,
        ca_bundle,
    })
}

/// Runs the command for the binary: the base64 `caBundle` alone on stdout (so
/// `CA_BUNDLE=$(gatehouse certs ...)` works), what was written on stderr. Returns the exit code.
pub fn main(args: &CertsArgs) -> u8 {
    match run(args) {
        Ok(w) => {
            eprintln!(
                "gatehouse certs: wrote {}, {} and {} (key mode 0600; {} key, valid {} days) for {}",
                w.files.ca.display(),
                w.files.cert.display(),
                w.files.key.display(),
                KeyAlgorithm::from(args.key).as_str(),
                args.days,
                w.sans.join(", ")
            );
            eprintln!(
                "gatehouse certs: the CA's private key was not kept; the caBundle (base64 of ca.crt) follows on stdout"
            );
            if !super::print_line(&w.ca_bundle) {
                eprintln!(
                    "gatehouse certs: stdout is closed; the caBundle is base64 of {}",
                    w.files.ca.display()
                );
            }
            0
        }
        Err(e) => {
            eprintln!("gatehouse certs: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn args(service: &str, namespace: &str, out: PathBuf) -> CertsArgs {
        CertsArgs {
            service: service.into(),
            namespace: namespace.into(),
            out,
            days: 30,
            key: KeyArg::Ecdsa,
            cluster_domain: "cluster.local".into(),
            force: false,
        }
    }

    #[test]
    fn sans_cover_every_service_name() {
        assert_eq!(
            service_sans("gatehouse", "infra", "cluster.local"),
            vec![
                "gatehouse",
                "gatehouse.infra",
                "gatehouse.infra.svc",
                "gatehouse.infra.svc.cluster.local"
            ]
        );
    }

    #[rstest]
    #[case::upper("Gatehouse", "infra", "--service `Gatehouse`")]
    #[case::dot("gate.house", "infra", "--service `gate.house`")]
    #[case::empty_ns("gatehouse", "", "--namespace ``")]
    #[case::dash("gatehouse", "-infra", "--namespace `-infra`")]
    fn bad_names_are_refused(#[case] svc: &str, #[case] ns: &str, #[case] expected: &str) {
        let dir = tempfile::tempdir().unwrap();
        let err = run(&args(svc, ns, dir.path().into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[rstest]
    #[case(0)]
    #[case(MAX_DAYS + 1)]
    fn days_out_of_range_are_refused(#[case] days: u32) {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args("gatehouse", "infra", dir.path().into());
        a.days = days;
        let err = run(&a).unwrap_err().to_string();
        assert!(err.contains("--days"), "{err}");
    }

    #[test]
    fn existing_files_are_kept_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let a = args("gatehouse", "infra", dir.path().into());
        let first = run(&a).unwrap();
        let cert = std::fs::read(&first.files.cert).unwrap();
        let err = run(&a).unwrap_err().to_string();
        assert!(err.contains("ca.crt already exists"), "{err}");
        assert_eq!(std::fs::read(&first.files.cert).unwrap(), cert);
        let second = run(&CertsArgs { force: true, ..a }).unwrap();
        assert_ne!(std::fs::read(&second.files.cert).unwrap(), cert);
    }
}
