//! `gatehouse serve`: run the webhook until SIGTERM/SIGINT.

use anyhow::Context;

use crate::config::Config;
use crate::policy::{self, PolicySet};
use crate::server::{Server, shutdown_signal};
use crate::{certs, tls};

/// Loads policies and TLS material, binds both listeners and serves until a signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let policies = PolicySet::load(
        config.policies.as_deref(),
        config.excluded_namespaces.clone(),
    )?;
    policy::forward::preflight(policies.policies(), config.limits.request_timeout)?;
    let source = config.policies.as_ref().map_or_else(
        || policy::DEFAULT_POLICIES_NAME.to_owned(),
        |p| p.display().to_string(),
    );
    for p in policies.policies() {
        tracing::info!(policy = %p, from = %source, "policy loaded");
    }

    let (cert, key, dev_ca) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), None),
        _ => {
            let (files, created) = certs::ensure_dev_certs(&config.data_dir)
                .context("cannot prepare the development certificate")?;
            tracing::info!(
                dir = %config.data_dir.join("dev-certs").display(),
                created,
                "no tls_cert/tls_key configured: using the development CA and certificate (localhost only)"
            );
            (files.cert, files.key, Some(files.ca))
        }
    };
    let tls_config = tls::load_server_config(&cert, &key)?;
    let server = Server::bind(&config, policies, tls_config)?;
    let addr = server.webhook_addr();
    tracing::info!(webhook = %addr, health = %server.health_addr(), "listening");

    if let Some(ca) = dev_ca {
        let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() {
            "localhost".to_owned()
        } else {
            addr.ip().to_string()
        };
        println!(
            "Gatehouse is listening on https://{host}:{}/validate",
            addr.port()
        );
        println!(
            "Development CA (trust it to call the webhook): {}",
            ca.display()
        );
        println!("Try it from the repository root:");
        println!(
            "  curl --cacert {} -H 'Content-Type: application/json' --data-binary @examples/reviews/create-2-replicas.json https://{host}:{}/validate",
            ca.display(),
            addr.port()
        );
    }
    server.run(shutdown_signal()).await?;
    Ok(())
}
