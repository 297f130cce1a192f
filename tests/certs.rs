//! `gatehouse certs`: the certificates it writes verify for every Service DNS name against the
//! CA with rustls' standard webpki verifier (which, like Kubernetes since 1.19, reads names only
//! from subjectAltNames), a CN-only certificate fails that same check, and the pair serves the
//! real webhook over TLS under the Service name.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use rstest::rstest;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

const SERVICE: &str = "gatehouse";
const NAMESPACE: &str = "infra";

fn service_names() -> Vec<String> {
    vec![
        SERVICE.to_owned(),
        format!("{SERVICE}.{NAMESPACE}"),
        format!("{SERVICE}.{NAMESPACE}.svc"),
        format!("{SERVICE}.{NAMESPACE}.svc.cluster.local"),
    ]
}

fn certs_cmd(out: &Path, key: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args([
            "certs",
            "--service",
            SERVICE,
            "--namespace",
            NAMESPACE,
            "--days",
            "30",
            "--key",
            key,
            "--out",
        ])
        .arg(out)
        .env_remove("GATEHOUSE_LISTEN")
        .output()
        .expect("run gatehouse certs")
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// rustls' standard server certificate verifier trusting only `ca`.
fn verifier(ca: &[CertificateDer<'static>]) -> Arc<WebPkiServerVerifier> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).expect("add CA");
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), gatehouse::tls::provider())
        .build()
        .expect("verifier")
}

fn verify(
    v: &WebPkiServerVerifier,
    leaf: &CertificateDer<'_>,
    name: &str,
) -> Result<(), rustls::Error> {
    let server_name = ServerName::try_from(name.to_owned()).expect("server name");
    v.verify_server_cert(leaf, &[], &server_name, &[], UnixTime::now())
        .map(|_| ())
}

#[rstest]
#[case::ecdsa("ecdsa")]
#[case::rsa("rsa")]
fn certs_verify_for_every_service_name_and_carry_sans(#[case] key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let run = certs_cmd(&out, key);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");

    // Files and modes: the key is private, nothing else is written (no CA key).
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["ca.crt", "tls.crt", "tls.key"]);
    let mode = |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("tls.key"), 0o600);
    assert_eq!(mode("tls.crt"), 0o644);

    // stdout is the caBundle alone: base64 of ca.crt.
    let stdout = String::from_utf8(run.stdout).unwrap();
    let ca_pem = std::fs::read(out.join("ca.crt")).unwrap();
    assert_eq!(
        stdout.trim_end(),
        base64::engine::general_purpose::STANDARD.encode(&ca_pem)
    );
    assert_eq!(stdout.lines().count(), 1);

    let ca = pem_certs(&out.join("ca.crt"));
    let chain = pem_certs(&out.join("tls.crt"));
    assert_eq!((ca.len(), chain.len()), (1, 1));
    let leaf = &chain[0];

    // The SAN extension holds exactly the four Service names.
    let parsed = webpki::EndEntityCert::try_from(leaf).expect("parse leaf");
    let sans: Vec<&str> = parsed.valid_dns_names().collect();
    assert_eq!(sans, service_names());

    // The standard verifier accepts each of them against the CA ...
    let v = verifier(&ca);
    for name in service_names() {
        verify(&v, leaf, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // ... and refuses a name that is not in the certificate, and an unrelated CA.
    let err = verify(&v, leaf, "gatehouse.other.svc").unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            ) | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        ),
        "{err:?}"
    );
    let other = tempfile::tempdir().unwrap();
    assert!(certs_cmd(other.path(), "ecdsa").status.success());
    // (Same issuer name, other key: webpki finds the candidate and the signature fails.)
    let err = verify(
        &verifier(&pem_certs(&other.path().join("ca.crt"))),
        leaf,
        "gatehouse.infra.svc",
    )
    .unwrap_err();
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

/// Runs without any configuration (even with a broken GATEHOUSE_* environment, which is for
/// `serve`), refuses to overwrite, and keeps stdout for the caBundle alone.
#[test]
fn certs_needs_no_config_and_never_overwrites_silently() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args([
                "certs",
                "--service",
                "gatehouse",
                "--namespace",
                "infra",
                "--out",
            ])
            .arg(dir.path())
            .args(extra)
            .env("GATEHOUSE_LISTEN", "not-an-address")
            .output()
            .unwrap()
    };
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let key = std::fs::read(dir.path().join("tls.key")).unwrap();

    let again = run(&[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(again.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("ca.crt already exists (use --force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dir.path().join("tls.key")).unwrap(), key);

    let forced = run(&["--force"]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read(dir.path().join("tls.key")).unwrap(), key);

    let bad = run(&["--force", "--days", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--days 0 is out of range"));
}

/// What the original design's openssl script made: the Service name only in the subject's
/// Common Name. The same verifier refuses it for that very name, as Kubernetes API servers
/// since 1.19 do ("x509: certificate relies on legacy Common Name field").
#[test]
fn a_cn_only_certificate_fails_the_same_check() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "legacy CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let name = format!("{SERVICE}.{NAMESPACE}.svc");
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, &name);
    let leaf = params
        .signed_by(&KeyPair::generate().unwrap(), &ca)
        .unwrap();
    let leaf_der = leaf.der().clone();

    let parsed = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    assert_eq!(parsed.valid_dns_names().count(), 0, "no SANs");

    let v = verifier(&[ca.der().clone()]);
    for n in service_names() {
        let err = verify(&v, &leaf_der, &n).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. }
                ) | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
            ),
            "{n}: {err:?}"
        );
    }
}

/// The generated pair (both key types) serves the real webhook; a client that knows only the
/// CA and connects by the Service's DNS name gets an answer.
#[rstest]
#[case::ecdsa("ecdsa")]
#[case::rsa("rsa")]
#[tokio::test]
async fn the_generated_pair_serves_the_webhook_under_the_service_name(#[case] key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    assert!(certs_cmd(&out, key).status.success());
    let server = common::TestServer::start().await;
    // TestServer starts with a pair of its own; serve the generated one instead.
    server.tls.reload_from_config(
        gatehouse::tls::load_server_config(&out.join("tls.crt"), &out.join("tls.key")).unwrap(),
    );
    let ca = std::fs::read_to_string(out.join("ca.crt")).unwrap();
    let tls = common::client_tls(
        &ca,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &[b"h2", b"http/1.1"],
    );
    let host = format!("{SERVICE}.{NAMESPACE}.svc");
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve(&host, server.addr)
        .no_proxy()
        .build()
        .unwrap();
    let resp = client
        .post(format!("https://{host}:{}/validate", server.addr.port()))
        .header("content-type", "application/json")
        .body(common::read("examples/reviews/create-2-replicas.json"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{key}: {e:?}"));
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["response"]["allowed"], false);
}
