//! The floor for the load benchmark: the same stack as Gatehouse (axum + axum-server + rustls
//! with ring, the same TLS configuration) answering every POST with a fixed allowed review,
//! without reading the request. Whatever Gatehouse costs beyond this is its own work.
//!
//! Usage: `cargo run --release --example floor -- ADDR CERT KEY`

use std::net::TcpListener;

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;
use axum_server::tls_rustls::RustlsConfig;

const ANSWER: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"00000000-0000-0000-0000-000000000000","allowed":true,"status":{}}}"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, cert, key] = args.as_slice() else {
        return Err("usage: floor ADDR CERT KEY".into());
    };
    let tls = gatehouse::tls::load_server_config(cert.as_ref(), key.as_ref())?;
    let listener = TcpListener::bind(addr.as_str())?;
    listener.set_nonblocking(true)?;
    // The body is taken (as Gatehouse must) but not parsed.
    let app = Router::new().route(
        "/validate",
        post(|_body: Bytes| async { ([(header::CONTENT_TYPE, "application/json")], ANSWER) }),
    );
    eprintln!("floor listening on {}", listener.local_addr()?);
    // SIGTERM ends it normally (bench/instructions.sh reads callgrind's counts at exit).
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        term.recv().await;
        stopper.shutdown();
    });
    axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(tls))?
        .handle(handle)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}
