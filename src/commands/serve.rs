//! `gatehouse serve`: run the webhook until SIGTERM/SIGINT.

use anyhow::Context;

use crate::admission;
use crate::config::{Config, LogFormat};
use crate::notify::{self, rule::ChannelKind};
use crate::policy;
use crate::server::{Server, shutdown_signal};
use crate::store::{self, StoreSettings};
use crate::token_admin::AdminServer;
use crate::{certs, tls};

/// Loads policies and TLS material, binds both listeners and serves until a signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // One signal stops every listener. The handlers are in place before anything is printed,
    // so a SIGTERM sent as soon as the start summary shows stops the server cleanly.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (registered, handlers_ready) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut signal = Box::pin(shutdown_signal());
        // The first poll registers the SIGTERM and SIGINT handlers.
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(signal.as_mut(), cx))
        })
        .await;
        let _ = registered.send(());
        if first.is_pending() {
            signal.await;
        }
        let _ = stop.send(true);
    });
    let _ = handlers_ready.await;
    let (policies, token_store) = super::load_policies(&config).await?;
    policy::forward::preflight(policies.policies(), config.limits.request_timeout)?;
    let source = config.policies.as_ref().map_or_else(
        || policy::DEFAULT_POLICIES_NAME.to_owned(),
        |p| p.display().to_string(),
    );
    let summary_policies = summary_policies(&policies);
    let summary_rules = summary_rules(&policies, &config);

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

    let mut listeners = vec![
        format!("webhook https://{addr}/validate"),
        format!("health and metrics http://{}", server.health_addr()),
    ];
    if let Some(admin) = &admin {
        listeners.push(format!("token endpoint https://{}/v1/tokens", admin.addr()));
    }
    let summary = StartSummary {
        source: &source,
        replaces_defaults: config.policies.is_some(),
        policies: summary_policies,
        rules: summary_rules,
        twilio: twilio_summary(&config),
        excluded_namespaces: config.excluded_namespaces.clone(),
        listeners,
    };
    summary.emit(config.log_format);

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

/// What is in force, printed once at start.
struct StartSummary<'a> {
    source: &'a str,
    replaces_defaults: bool,
    /// `name (kind, action)`.
    policies: Vec<String>,
    /// `name: events …; channels …; N recipients (masked)`.
    rules: Vec<String>,
    twilio: String,
    excluded_namespaces: Vec<String>,
    listeners: Vec<String>,
}

impl StartSummary<'_> {
    /// The block as text lines.
    fn lines(&self) -> Vec<String> {
        let mut out = vec!["Gatehouse starts with:".to_owned()];
        let replaced = if self.replaces_defaults {
            "; `policies` replaces the embedded defaults, their notification rules included"
        } else {
            ""
        };
        out.push(format!(
            "  {} from {}{replaced}:",
            match self.policies.len() {
                1 => "1 policy".to_owned(),
                n => format!("{n} policies"),
            },
            self.source
        ));
        out.extend(self.policies.iter().map(|p| format!("    {p}")));
        out.push(format!(
            "  {}:",
            admission::plural(self.rules.len() as i64, "notification rule")
        ));
        out.extend(self.rules.iter().map(|r| format!("    {r}")));
        out.push(format!("  Twilio: {}", self.twilio));
        out.push(format!(
            "  excluded namespaces: {}",
            if self.excluded_namespaces.is_empty() {
                "none".to_owned()
            } else {
                self.excluded_namespaces.join(", ")
            }
        ));
        out.push(format!("  listening: {}", self.listeners.join("; ")));
        out
    }

    /// One block on stderr (text logs), or one JSON log event.
    fn emit(&self, format: LogFormat) {
        match format {
            LogFormat::Text => {
                use std::io::Write;
                let mut text = self.lines().join("\n");
                text.push('\n');
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            }
            LogFormat::Json => tracing::info!(
                policies_from = %self.source,
                policies = %self.policies.join("; "),
                notification_rules = %self.rules.join("; "),
                twilio = %self.twilio,
                excluded_namespaces = %self.excluded_namespaces.join(","),
                listening = %self.listeners.join("; "),
                "gatehouse starts"
            ),
        }
    }
}

fn summary_policies(policies: &policy::PolicySet) -> Vec<String> {
    policies
        .policies()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Each rule with its channels and whom its SMS go to: the rule's own recipients, else
/// `notify.sms_to` (`GATEHOUSE_SMS_TO`); numbers masked.
fn summary_rules(policies: &policy::PolicySet, config: &Config) -> Vec<String> {
    policies
        .notifications()
        .iter()
        .map(|r| {
            let events: Vec<&str> = r.events.iter().map(|e| e.as_str()).collect();
            let channels: Vec<&str> = r.channels.iter().map(|c| c.as_str()).collect();
            let mut line = format!(
                "{}: on {}; channels {}",
                r.name,
                events.join(", "),
                channels.join(", ")
            );
            if r.channels.contains(&ChannelKind::Sms) {
                let (to, whose) = if r.recipients.is_empty() {
                    (&config.notify.sms_to, "GATEHOUSE_SMS_TO")
                } else {
                    (&r.recipients, "the rule's own")
                };
                let masked: Vec<String> = to.iter().map(|n| notify::mask(n)).collect();
                line.push_str(&format!(
                    "; {} ({whose}{}{})",
                    admission::plural(to.len() as i64, "SMS recipient"),
                    if masked.is_empty() { "" } else { ": " },
                    masked.join(", ")
                ));
            }
            line
        })
        .collect()
}

fn twilio_summary(config: &Config) -> String {
    let t = &config.notify.twilio;
    if !t.is_configured() {
        return "not configured: SMS are written to the log instead".to_owned();
    }
    let sender = match (&t.from, &t.messaging_service_sid) {
        (Some(from), _) => format!("from {}", notify::mask(from)),
        (None, Some(_)) => "through a messaging service".to_owned(),
        (None, None) => "no sender".to_owned(),
    };
    format!("configured, {sender}, API {}", t.api_base)
}

/// One line for the person at the terminal; a closed stdout (`| head`) is not an error.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
