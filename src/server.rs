//! The two listeners: HTTPS for the webhook (rustls) and plain HTTP for health and metrics,
//! each served by [`crate::conn::serve`] with its own connection caps and timers; graceful
//! shutdown of both.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;

use crate::api::{self, AppState, RouteLimits};
use crate::config::{Config, Limits};
use crate::conn::{self, ListenerLimits};
use crate::limits::BodyRate;
use crate::notify;
use crate::policy::{LoadContext, PolicySet};
use crate::reload::Reloader;

/// Listening sockets, bound and ready to serve.
pub struct Server {
    state: AppState,
    webhook: TcpListener,
    health: TcpListener,
    tls: RustlsConfig,
    limits: Limits,
    reloader: Option<Reloader>,
    notify_worker: notify::Worker,
    notify_drain: Duration,
}

/// The server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be opened.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Notifications could not be set up.
    #[error(transparent)]
    Notify(#[from] notify::SetupError),
}

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    addr: SocketAddr,
    what: &'static str,
    source: std::io::Error,
}

fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, BindError> {
    let err = |source| BindError { addr, what, source };
    let listener = TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

impl Server {
    /// Binds both listeners (port 0 picks a free port) and sets up notifications and the
    /// live reload of the certificate and policy files. Raises the open-file limit to its
    /// hard limit first and fits the connection caps of every listener below it.
    pub fn bind(
        config: &Config,
        policies: PolicySet,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<Self, StartError> {
        let limits = fitted_limits(config, true);
        let mut state = AppState::new(policies);
        let (notifier, notify_worker) =
            notify::setup(&config.notify, &state.policies.load(), &state.metrics)?;
        state.notifier = notifier;
        let reloader = Reloader::new(config, &state);
        Ok(Self {
            state,
            webhook: bind(config.listen, "webhook, TLS")?,
            health: bind(config.health_listen, "health and metrics")?,
            tls: RustlsConfig::from_config(tls),
            limits,
            reloader,
            notify_worker,
            notify_drain: config.notify.drain_timeout,
        })
    }

    /// Reloaded policy files are built with `ctx` (the token store the first set used).
    pub fn set_load_context(&mut self, ctx: LoadContext) {
        if let Some(r) = self.reloader.as_mut() {
            r.set_load_context(ctx);
        }
    }

    /// The webhook listener's address.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The health listener's address.
    pub fn health_addr(&self) -> SocketAddr {
        self.health
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The shared state (policies, metrics, readiness).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The TLS configuration handle (for reloading the certificate).
    pub fn tls(&self) -> &RustlsConfig {
        &self.tls
    }

    /// Serves until `shutdown` completes. Then: marks itself not ready and keeps serving for
    /// `limits.shutdown_delay` (so the Service stops routing here first), stops accepting,
    /// lets in-flight requests finish for up to `limits.shutdown_grace`, and delivers queued
    /// notifications for up to `notify.drain_timeout`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Server {
            state,
            webhook,
            health,
            tls,
            limits,
            reloader,
            notify_worker,
            notify_drain,
        } = self;
        let reload_task = reloader.map(|r| tokio::spawn(r.run(tls.clone(), state.clone())));
        let (stop_notify, notify_stopped) = tokio::sync::oneshot::channel::<()>();
        let notify_task = tokio::spawn(notify_worker.run(async {
            let _ = notify_stopped.await;
        }));

        let app = api::Webhook::new(
            state.clone(),
            RouteLimits::from_config(&limits),
            BodyRate::from_config(&limits),
        );
        let (stop_webhook, webhook_stopped) = tokio::sync::oneshot::channel::<()>();
        let webhook_task = tokio::spawn(conn::serve(
            tokio::net::TcpListener::from_std(webhook)?,
            Some(tls),
            app,
            ListenerLimits::webhook(&limits),
            state.metrics.clone(),
            async {
                let _ = webhook_stopped.await;
            },
            limits.shutdown_grace,
        ));

        let (stop_health, health_stopped) = tokio::sync::oneshot::channel::<()>();
        let health_task = tokio::spawn(conn::serve(
            tokio::net::TcpListener::from_std(health)?,
            None,
            api::health_router(state.clone()),
            ListenerLimits::health(&limits),
            state.metrics.clone(),
            async {
                let _ = health_stopped.await;
            },
            Duration::from_secs(2),
        ));

        shutdown.await;
        state.ready.store(false, Ordering::Relaxed);
        if let Some(task) = reload_task {
            task.abort();
        }
        if !limits.shutdown_delay.is_zero() {
            tracing::info!(delay = ?limits.shutdown_delay, "not ready; serving on while the Service drops this endpoint");
            tokio::time::sleep(limits.shutdown_delay).await;
        }
        tracing::info!(grace = ?limits.shutdown_grace, "shutting down: no new connections, finishing in-flight requests");
        let _ = stop_webhook.send(());
        let result = match webhook_task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        // Admissions are done: deliver what they queued, up to notify.drain_timeout.
        let _ = stop_notify.send(());
        let _ = tokio::time::timeout(notify_drain + Duration::from_secs(2), notify_task).await;
        let _ = stop_health.send(());
        let _ = tokio::time::timeout(Duration::from_secs(4), health_task).await;
        tracing::info!("stopped");
        result
    }
}

/// The configured limits with the connection caps of the listeners in use lowered when
/// together they would not leave room below the open-file limit (raised to its hard limit
/// first). The same answer every time, so each listener can ask; `log` says the change once.
pub fn fitted_limits(config: &Config, log: bool) -> Limits {
    let mut limits = config.limits.clone();
    fit_to_open_files(&mut limits, config.token_admin.listen.is_some(), log);
    limits
}

fn fit_to_open_files(limits: &mut Limits, token_admin: bool, log: bool) {
    let open_files = crate::rlimit::raise_nofile();
    let before = limits.clone();
    let Limits {
        max_connections,
        health_max_connections,
        token_admin_max_connections,
        ..
    } = limits;
    let mut caps: Vec<(&str, &mut usize)> = vec![
        ("max_connections", max_connections),
        ("health_max_connections", health_max_connections),
    ];
    if token_admin {
        caps.push(("token_admin_max_connections", token_admin_max_connections));
    }
    if !crate::rlimit::fit_caps(open_files, &mut caps, log) {
        return;
    }
    // A per-source cap keeps its share of its listener's cap.
    let share = |per_source: usize, cap: usize, was: usize| {
        (per_source.min(was) as u128 * cap as u128 / was.max(1) as u128).max(1) as usize
    };
    limits.max_connections_per_source = share(
        before.max_connections_per_source,
        limits.max_connections,
        before.max_connections,
    );
    limits.health_max_connections_per_source = share(
        before.health_max_connections_per_source,
        limits.health_max_connections,
        before.health_max_connections,
    );
    limits.token_admin_max_connections_per_source = share(
        before.token_admin_max_connections_per_source,
        limits.token_admin_max_connections,
        before.token_admin_max_connections,
    );
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received SIGINT"),
        _ = term => tracing::info!("received SIGTERM"),
    }
}
