//! `gatehouse serve`: run the webhook until SIGTERM/SIGINT.

use anyhow::Context;

use crate::config::Config;
use crate::policy;
use crate::server::{Server, shutdown_signal};
use crate::store::{self, StoreSettings};
use crate::token_admin::AdminServer;
use crate::{certs, tls};

/// Loads policies and TLS material, binds both listeners and serves until a signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let (policies, token_store) = super::load_policies(&config).await?;
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
    let mut server = Server::bind(&config, policies, tls_config)?;
    server.set_load_context(policy::LoadContext {
        token_store: token_store.clone(),
    });
    let addr = server.webhook_addr();
    tracing::info!(webhook = %addr, health = %server.health_addr(), "listening");
    // Registered even with no token policy yet: a live reload may bring one.
    server
        .state()
        .metrics
        .with_registry(|r| token_store.metrics().register(r));

    // The token endpoint for pipelines, when enabled: its own TLS listener on the same
    // certificate, issuing into the same store the policies use.
    let admin = match config.token_admin.listen {
        None => None,
        Some(_) => {
            let tokens = match token_store.tokens() {
                Some(t) => t.clone(),
                None => {
                    let settings = StoreSettings::from_config(&config);
                    store::open(&settings).await.with_context(|| {
                        format!("cannot open the token store ({})", settings.describe())
                    })?
                }
            };
            let admin = AdminServer::bind(
                &config,
                tokens,
                server.tls().clone(),
                server.state().metrics.clone(),
            )?;
            tracing::info!(addr = %admin.addr(), "token endpoint listening (POST /v1/tokens)");
            Some(admin)
        }
    };

    if let Some(ca) = dev_ca {
        let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() {
            "localhost".to_owned()
        } else {
            addr.ip().to_string()
        };
        say(format_args!(
            "Gatehouse is listening on https://{host}:{}/validate",
            addr.port()
        ));
        say(format_args!(
            "Development CA (trust it to call the webhook): {}",
            ca.display()
        ));
        if let Some(admin) = &admin {
            say(format_args!(
                "Token endpoint: https://{host}:{}/v1/tokens",
                admin.addr().port()
            ));
        }
        say(format_args!("Try it from the repository root:"));
        say(format_args!(
            "  curl --cacert {} -H 'Content-Type: application/json' --data-binary @examples/reviews/create-2-replicas.json https://{host}:{}/validate",
            ca.display(),
            addr.port()
        ));
    }
    // One signal stops every listener.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_task = admin
        .map(|admin| tokio::spawn(admin.run(wait(stopped.clone()), config.limits.shutdown_grace)));
    server.run(wait(stopped)).await?;
    if let Some(task) = admin_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "token endpoint stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "token endpoint task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(tokens) = token_store.tokens() {
        tokens.close().await;
    }
    Ok(())
}

/// One line for the person at the terminal; a closed stdout (`| head`) is not an error.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
