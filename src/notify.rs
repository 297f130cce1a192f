//! Notifications: after each decision the handler hands the request to [`Notifier::notify`],
//! which matches the notification rules, builds an [`Event`] and puts it on a bounded queue
//! without waiting (a full queue drops the event and counts it). The [`Worker`] takes events
//! off the queue, forgets request uids it has seen (an API-server retry), applies storm control
//! per recipient, renders the text and delivers it with retries, a few deliveries at a time.
//! On shutdown it drains the queue until a deadline.
//!
//! Channels, one per file: `twilio` (SMS), `webhook` (chat), `log`; `message` renders the text.

pub(crate) mod delivery;
pub(crate) mod event;
pub(crate) mod log;
pub mod message;
pub mod rule;
pub mod settings;
pub(crate) mod storm;
pub(crate) mod twilio;
pub(crate) mod webhook;

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::policy::{Decision, PolicySet};
use delivery::{Channels, Context};
use message::Style;
use rule::{ChannelKind, EventKind, NotifyRule};
use settings::NotifyConfig;
use storm::{Admit, Storm, Summary};

/// An old and a new value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change<T> {
    /// Before (UPDATE, DELETE).
    pub old: Option<T>,
    /// After (CREATE, UPDATE).
    pub new: Option<T>,
}

/// A container's image before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChange {
    /// The container's name.
    pub container: String,
    /// The image in the old object.
    pub old: Option<String>,
    /// The image in the new object.
    pub new: Option<String>,
}

/// How a message leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// SMS through Twilio.
    Twilio,
    /// The chat webhook.
    Webhook,
    /// The log.
    Log,
}

impl Via {
    /// The `channel` label in metrics and logs: `sms`, `webhook`, `log`.
    pub fn label(self) -> &'static str {
        match self {
            Via::Twilio => "sms",
            Via::Webhook => "webhook",
            Via::Log => "log",
        }
    }
}

/// One destination of an event: storm control counts per target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The channel that delivers.
    pub via: Via,
    /// The SMS recipient.
    pub to: Option<String>,
    /// How the text is written.
    pub style: Style,
    /// Why a text is logged rather than sent (a channel without its settings).
    pub note: Option<&'static str>,
}

/// A decided admission worth a notification: the facts a message needs.
#[derive(Debug, Clone)]
pub struct Event {
    /// The request uid (notified once).
    pub uid: String,
    /// The headline: denied, created, updated or warned.
    pub primary: EventKind,
    /// `create`, `update`, `delete`, `connect`.
    pub operation: String,
    /// `Deployment app-ns/alpine-deploy`, `Deployment app-ns/web (scale)`.
    pub object: String,
    /// `userInfo.username`.
    pub user: String,
    /// `spec.replicas` before and after, for workloads and Scale.
    pub replicas: Option<Change<i64>>,
    /// Container images before and after.
    pub images: Vec<ImageChange>,
    /// The deny message.
    pub reason: Option<String>,
    /// Warning messages.
    pub warnings: Vec<String>,
    /// Where it goes.
    pub targets: Vec<Target>,
    /// When the admission was decided (delivery latency counts from here).
    pub at: std::time::Instant,
}

/// One rendered message for one target.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Where.
    pub target: Target,
    /// The text.
    pub text: String,
    /// The request uid (or `storm-summary`).
    pub uid: String,
    /// When its event was decided.
    pub queued_at: std::time::Instant,
}

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Network error, 429 or 5xx: try again (after `after` when the service said so).
    Retry {
        /// What happened (never a secret).
        reason: String,
        /// The service's `Retry-After`.
        after: Option<Duration>,
    },
    /// Any other answer: trying again would not help.
    Fatal {
        /// What happened (never a secret).
        reason: String,
    },
}

/// A phone number for logs: `+*******4567`.
pub fn mask(number: &str) -> String {
    let n = number.chars().count();
    if n <= 4 {
        return "*".repeat(n);
    }
    let tail: String = number.chars().skip(n - 4).collect();
    let head = if number.starts_with('+') { "+" } else { "" };
    format!("{head}{}{tail}", "*".repeat(n - 4 - head.len()))
}

/// Labels: a channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// `sms`, `webhook`, `log`.
    pub channel: String,
}

/// Labels: a channel and why a notification was dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `sms`, `webhook`, `log`.
    pub channel: String,
    /// `queue_full` or `shutdown`.
    pub reason: String,
}

type HistogramFamily = Family<ChannelLabels, Histogram, fn() -> Histogram>;

/// Notification metrics, in the shared registry.
#[derive(Debug)]
pub struct NotifyMetrics {
    queued: Family<ChannelLabels, Counter>,
    sent: Family<ChannelLabels, Counter>,
    failed: Family<ChannelLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    summarized: Family<ChannelLabels, Counter>,
    delivery_seconds: HistogramFamily,
}

fn delivery_histogram() -> Histogram {
    // 10 ms to about 80 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

impl NotifyMetrics {
    /// Creates the metrics and registers them in `metrics`' registry.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self {
            queued: Family::default(),
            sent: Family::default(),
            failed: Family::default(),
            dropped: Family::default(),
            summarized: Family::default(),
            delivery_seconds: Family::new_with_constructor(delivery_histogram),
        };
        metrics.with_registry(|r| {
            r.register(
                "notifications_queued",
                "Notifications put on the delivery queue, by channel",
                m.queued.clone(),
            );
            r.register(
                "notifications_sent",
                "Notifications delivered, by channel",
                m.sent.clone(),
            );
            r.register(
                "notifications_failed",
                "Notifications given up on after their attempts, by channel",
                m.failed.clone(),
            );
            r.register(
                "notifications_dropped",
                "Notifications dropped unsent (queue full, shutdown deadline), by channel and reason",
                m.dropped.clone(),
            );
            r.register(
                "notifications_summarized",
                "Notifications held back by storm control and folded into a summary, by channel",
                m.summarized.clone(),
            );
            r.register(
                "notification_delivery_seconds",
                "Time from the admission decision to the delivered notification, by channel",
                m.delivery_seconds.clone(),
            );
        });
        m
    }

    fn label(via: Via) -> ChannelLabels {
        ChannelLabels {
            channel: via.label().to_owned(),
        }
    }

    fn queued(&self, via: Via) {
        self.queued.get_or_create(&Self::label(via)).inc();
    }

    fn sent(&self, via: Via, latency: Duration) {
        self.sent.get_or_create(&Self::label(via)).inc();
        self.delivery_seconds
            .get_or_create(&Self::label(via))
            .observe(latency.as_secs_f64());
    }

    fn failed(&self, via: Via) {
        self.failed.get_or_create(&Self::label(via)).inc();
    }

    fn dropped(&self, via: Via, reason: &str) {
        self.dropped
            .get_or_create(&DropLabels {
                channel: via.label().to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    fn summarized(&self, via: Via) {
        self.summarized.get_or_create(&Self::label(via)).inc();
    }
}

/// Notifications could not be set up; the message names the setting or rule.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `notify.ca_file` could not be used.
    #[error("key `notify.ca_file`: {0}")]
    CaFile(String),
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client for notifications: {0}")]
    Http(String),
    /// A rule sends SMS but nobody would get it.
    #[error(
        "{source_file}: notification \"{rule}\": sends SMS but has no recipients: set GATEHOUSE_SMS_TO (notify.sms_to) or the rule's recipients"
    )]
    NoRecipients {
        /// The rule.
        rule: String,
        /// Its file.
        source_file: String,
    },
}

const NOTE_NO_TWILIO: &str =
    "SMS not sent: Twilio is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM)";
const NOTE_NO_RECIPIENT: &str =
    "SMS not sent: no recipient (set GATEHOUSE_SMS_TO or the rule's recipients)";
const NOTE_NO_WEBHOOK: &str = "webhook not sent: notify.webhook.url is not configured";

#[derive(Debug)]
struct Shared {
    tx: mpsc::Sender<Event>,
    metrics: Arc<NotifyMetrics>,
    sms_to: Vec<String>,
    twilio: bool,
    webhook: bool,
    ignored_update_fields: Vec<Vec<String>>,
    /// Events dropped so far (a full queue is logged at 1, 2, 4, 8… drops, not every time).
    drops: AtomicU64,
    /// Request uids already notified: an API-server retry is recognised before its event is
    /// built.
    dedupe: std::sync::Mutex<Dedupe>,
}

/// The handle the admission handler holds: cheap to clone, never blocks.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Shared>>,
}

impl Notifier {
    /// A notifier that sends nothing (offline review, router tests).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Publishes the notifications a decided request calls for. Never waits: a full queue
    /// drops the event (counted in `gatehouse_notifications_dropped_total`).
    pub fn notify(
        &self,
        req: &crate::admission::Review<'_>,
        decision: &Decision,
        policies: &PolicySet,
    ) {
        let Some(s) = &self.inner else { return };
        // Side effects never happen for dry runs (the webhook declares NoneOnDryRun).
        if req.dry_run || decision.excluded {
            return;
        }
        let rules = policies.notifications();
        if rules.is_empty() {
            return;
        }
        let mut kinds = event::kinds(req, decision);
        if kinds.is_empty() {
            return;
        }
        let mut fired: Vec<&NotifyRule> = rules.iter().filter(|r| r.fires(req, &kinds)).collect();
        if fired.is_empty() {
            return;
        }
        // Cleanup UPDATEs are not notified: nothing about an object being deleted (the garbage
        // collector removing a finalizer, once per retry), and no denial of a bookkeeping-only
        // UPDATE. Whether a bookkeeping-only UPDATE is `updated` is `ignore_update_fields`' call
        // below (by default it is not).
        {
            use crate::policy::cleanup::{Cleanup, classify};
            match decision.cleanup.or_else(|| classify(req)) {
                Some(Cleanup::BeingDeleted) => return,
                Some(Cleanup::Bookkeeping) if !decision.allowed() => return,
                _ => {}
            }
        }
        if kinds.contains(&EventKind::Updated)
            && fired.iter().any(|r| r.events.contains(&EventKind::Updated))
            && !event::meaningful_update(req, &s.ignored_update_fields)
        {
            kinds.retain(|k| *k != EventKind::Updated);
            fired.retain(|r| r.events.iter().any(|e| kinds.contains(e)));
            if fired.is_empty() {
                tracing::debug!(uid = %req.uid, "update changed only bookkeeping: not notified");
                return;
            }
        }
        let Some(primary) = event::primary(&kinds) else {
            return;
        };
        let targets = s.targets(&fired);
        // Under a flood the queue stays full: count the drop before building the event's text.
        if s.tx.capacity() == 0 {
            s.dropped_full(targets.iter().map(|t| t.via), &req.uid);
            return;
        }
        let first = s
            .dedupe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first_time(&req.uid, Instant::now());
        if !first {
            tracing::debug!(uid = %req.uid, "request uid already notified: not sent again");
            return;
        }
        let ev = Event {
            uid: req.uid.clone().into_owned(),
            primary,
            operation: event::operation(&req.operation).to_owned(),
            object: crate::admission::describe_object(req),
            user: req
                .user_info
                .username
                .as_deref()
                .unwrap_or_default()
                .to_owned(),
            replicas: event::replicas(req),
            images: event::images(req),
            reason: (!decision.allowed()).then(|| decision.deny_message()),
            warnings: decision
                .warnings
                .iter()
                .map(|f| f.message.clone())
                .collect(),
            targets,
            at: std::time::Instant::now(),
        };
        s.publish(ev);
    }
}

impl Shared {
    fn targets(&self, fired: &[&NotifyRule]) -> Vec<Target> {
        let mut out: Vec<Target> = Vec::new();
        let mut add = |t: Target| {
            if !out.contains(&t) {
                out.push(t);
            }
        };
        for rule in fired {
            for channel in &rule.channels {
                match channel {
                    ChannelKind::Sms => {
                        let to = if rule.recipients.is_empty() {
                            &self.sms_to
                        } else {
                            &rule.recipients
                        };
                        let (via, note) = if self.twilio {
                            (Via::Twilio, None)
                        } else {
                            (Via::Log, Some(NOTE_NO_TWILIO))
                        };
                        if to.is_empty() {
                            add(Target {
                                via: Via::Log,
                                to: None,
                                style: Style::Sms,
                                note: Some(if self.twilio {
                                    NOTE_NO_RECIPIENT
                                } else {
                                    NOTE_NO_TWILIO
                                }),
                            });
                        }
                        for n in to {
                            add(Target {
                                via,
                                to: Some(n.clone()),
                                style: Style::Sms,
                                note,
                            });
                        }
                    }
                    ChannelKind::Webhook => add(Target {
                        via: if self.webhook { Via::Webhook } else { Via::Log },
                        to: None,
                        style: Style::Chat,
                        note: (!self.webhook).then_some(NOTE_NO_WEBHOOK),
                    }),
                    ChannelKind::Log => add(Target {
                        via: Via::Log,
                        to: None,
                        style: Style::Chat,
                        note: None,
                    }),
                }
            }
        }
        out
    }

    /// Counts an event dropped because the queue is full (logged at 1, 2, 4, 8… drops).
    fn dropped_full(&self, vias: impl Iterator<Item = Via>, uid: &str) {
        vias.for_each(|v| self.metrics.dropped(v, "queue_full"));
        let n = self.drops.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                uid,
                dropped_so_far = n,
                "notification queue is full: event dropped (see gatehouse_notifications_dropped_total)"
            );
        }
    }

    fn publish(&self, ev: Event) {
        let vias: Vec<Via> = ev.targets.iter().map(|t| t.via).collect();
        let uid = ev.uid.clone();
        match self.tx.try_send(ev) {
            Ok(()) => vias.into_iter().for_each(|v| self.metrics.queued(v)),
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped_full(vias.into_iter(), &uid),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                vias.into_iter()
                    .for_each(|v| self.metrics.dropped(v, "shutdown"));
                tracing::warn!(uid, "notifications are shutting down: event dropped");
            }
        }
    }
}

/// Request uids seen recently, so an API-server retry is notified once. Each uid is stored
/// once (shared by the set and the queue).
#[derive(Debug)]
struct Dedupe {
    window: Duration,
    seen: HashSet<std::sync::Arc<str>>,
    order: VecDeque<(Instant, std::sync::Arc<str>)>,
    /// What the remembered uids take, as counted by [`Dedupe::cost`].
    bytes: usize,
}

/// Uids remembered at most, whatever the window.
const DEDUPE_MAX: usize = 100_000;
/// Memory the remembered uids may take at most, whatever the window (uids are at most 128
/// bytes, so this holds at least 87 000 of the longest).
const DEDUPE_MAX_BYTES: usize = 16 * 1024 * 1024;

impl Dedupe {
    fn new(window: Duration) -> Self {
        Self {
            window,
            seen: HashSet::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }

    /// What remembering `uid` costs: its bytes plus the allocation, set and queue entries.
    fn cost(uid: &str) -> usize {
        uid.len() + 64
    }

    /// True the first time a uid is seen within the window.
    fn first_time(&mut self, uid: &str, now: Instant) -> bool {
        let cost = Self::cost(uid);
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) >= self.window
                || self.order.len() >= DEDUPE_MAX
                || self.bytes + cost > DEDUPE_MAX_BYTES
            {
                if let Some((_, old)) = self.order.pop_front() {
                    self.bytes -= Self::cost(&old);
                    self.seen.remove(&old);
                }
            } else {
                break;
            }
        }
        if self.seen.contains(uid) {
            return false;
        }
        let uid: std::sync::Arc<str> = uid.into();
        self.seen.insert(uid.clone());
        self.order.push_back((now, uid));
        self.bytes += cost;
        true
    }
}

/// Takes events off the queue and delivers them; see the module docs.
pub struct Worker {
    rx: mpsc::Receiver<Event>,
    ctx: Arc<Context>,
    concurrency: usize,
    drain_timeout: Duration,
    storm_max: u32,
    storm_window: Duration,
    cluster: Option<String>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("channels", &self.ctx.channels)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

fn http_client(cfg: &NotifyConfig) -> Result<reqwest::Client, SetupError> {
    let mut b = reqwest::Client::builder()
        .timeout(cfg.request_timeout)
        .connect_timeout(cfg.request_timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| SetupError::CaFile(format!("cannot read {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| SetupError::CaFile(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(SetupError::CaFile(format!(
                "{} holds no PEM certificate",
                path.display()
            )));
        }
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| SetupError::Http(e.to_string()))
}

/// Builds the handle and the worker from the configuration; checks that the rules in
/// `policies` can be served (an SMS rule needs recipients once Twilio is configured).
pub(crate) fn setup(
    cfg: &NotifyConfig,
    policies: &PolicySet,
    metrics: &Metrics,
) -> Result<(Notifier, Worker), SetupError> {
    let needs_http = cfg.twilio.is_configured() || cfg.webhook.url.is_some();
    let http = if needs_http {
        Some(http_client(cfg)?)
    } else {
        None
    };
    let channels = Channels {
        twilio: http
            .clone()
            .and_then(|h| twilio::Twilio::new(&cfg.twilio, h)),
        webhook: http.and_then(|h| webhook::Webhook::new(cfg.webhook.url.as_ref(), h)),
    };
    let rules = policies.notifications();
    let uses = |c: ChannelKind| rules.iter().any(|r| r.channels.contains(&c));
    if channels.twilio.is_some()
        && cfg.sms_to.is_empty()
        && let Some(r) = rules
            .iter()
            .find(|r| r.channels.contains(&ChannelKind::Sms) && r.recipients.is_empty())
    {
        return Err(SetupError::NoRecipients {
            rule: r.name.clone(),
            source_file: r.source.clone(),
        });
    }
    if uses(ChannelKind::Sms) && channels.twilio.is_none() {
        tracing::info!(
            "Twilio is not configured: SMS notifications are written to the log instead (set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM and GATEHOUSE_SMS_TO to send them)"
        );
    }
    if uses(ChannelKind::Webhook) && channels.webhook.is_none() {
        tracing::warn!(
            "a notification rule uses the webhook channel but notify.webhook.url is not set: those notifications are written to the log instead"
        );
    }
    for r in rules {
        let events: Vec<&str> = r.events.iter().map(|e| e.as_str()).collect();
        let chans: Vec<&str> = r.channels.iter().map(|c| c.as_str()).collect();
        tracing::info!(
            rule = %r.name,
            events = %events.join(","),
            channels = %chans.join(","),
            // SMS go to the rule's own recipients, else to GATEHOUSE_SMS_TO.
            recipients = if r.recipients.is_empty() && r.channels.contains(&ChannelKind::Sms) {
                cfg.sms_to.len()
            } else {
                r.recipients.len()
            },
            from = %r.source,
            "notification rule loaded"
        );
    }
    let nm = Arc::new(NotifyMetrics::register(metrics));
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let shared = Shared {
        tx,
        metrics: nm.clone(),
        sms_to: cfg.sms_to.clone(),
        twilio: channels.twilio.is_some(),
        webhook: channels.webhook.is_some(),
        ignored_update_fields: event::parse_pointers(&cfg.ignore_update_fields),
        drops: AtomicU64::new(0),
        dedupe: std::sync::Mutex::new(Dedupe::new(cfg.dedupe_window)),
    };
    let worker = Worker {
        rx,
        ctx: Arc::new(Context {
            channels,
            metrics: nm,
            retry: cfg.retry.clone(),
        }),
        concurrency: cfg.concurrency,
        drain_timeout: cfg.drain_timeout,
        storm_max: cfg.storm.max_messages,
        storm_window: cfg.storm.window,
        cluster: cfg.cluster.clone(),
    };
    Ok((
        Notifier {
            inner: Some(Arc::new(shared)),
        },
        worker,
    ))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Worker {
    /// Delivers until `shutdown` completes, then drains: no new events, everything queued and
    /// held (storm summaries) goes out until `notify.drain_timeout`; what is left then is
    /// dropped and counted.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut storm: Storm<Target> = Storm::new(self.storm_max, self.storm_window);
        let mut ready: VecDeque<Outgoing> = VecDeque::new();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut deadline: Option<Instant> = None;
        let mut rx_done = false;
        tokio::pin!(shutdown);
        loop {
            if deadline.is_some() && rx_done {
                for (target, summary) in storm.flush_all() {
                    ready.push_back(self.summary(target, &summary));
                }
            }
            while tasks.len() < self.concurrency {
                let Some(out) = ready.pop_front() else { break };
                tasks.spawn(delivery::deliver(self.ctx.clone(), out));
            }
            if deadline.is_some() && rx_done && ready.is_empty() && tasks.is_empty() {
                tracing::info!("notifications drained");
                break;
            }
            let storm_at = storm.next_deadline();
            tokio::select! {
                biased;
                _ = &mut shutdown, if deadline.is_none() => {
                    deadline = Some(Instant::now() + self.drain_timeout);
                    self.rx.close();
                    tracing::info!(
                        queued = self.rx.len() + ready.len(),
                        in_flight = tasks.len(),
                        timeout = ?self.drain_timeout,
                        "draining notifications"
                    );
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.give_up(&mut storm, &mut ready, &mut tasks).await;
                    break;
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined && e.is_panic() {
                        tracing::error!("a notification delivery panicked");
                    }
                }
                _ = sleep_until(storm_at), if storm_at.is_some() && deadline.is_none() => {
                    for (target, summary) in storm.due(Instant::now()) {
                        ready.push_back(self.summary(target, &summary));
                    }
                }
                ev = self.rx.recv(), if !rx_done && ready.len() < self.concurrency => match ev {
                    Some(ev) => self.handle(ev, &mut storm, &mut ready),
                    None => rx_done = true,
                },
            }
        }
    }

    fn handle(&self, ev: Event, storm: &mut Storm<Target>, ready: &mut VecDeque<Outgoing>) {
        let now = Instant::now();
        for (target, summary) in storm.due(now) {
            ready.push_back(self.summary(target, &summary));
        }
        let line = message::one_line(&ev);
        for target in &ev.targets {
            match storm.admit(target, ev.primary, &line, now) {
                Admit::Send => ready.push_back(Outgoing {
                    text: message::render(&ev, target.style, self.cluster.as_deref()),
                    target: target.clone(),
                    uid: ev.uid.clone(),
                    queued_at: ev.at,
                }),
                Admit::Held => {
                    self.ctx.metrics.summarized(target.via);
                    tracing::debug!(
                        uid = ev.uid,
                        channel = target.via.label(),
                        "storm control: held for the summary"
                    );
                }
            }
        }
    }

    fn summary(&self, target: Target, summary: &Summary) -> Outgoing {
        Outgoing {
            text: message::render_summary(summary, target.style, self.cluster.as_deref()),
            target,
            uid: "storm-summary".to_owned(),
            queued_at: std::time::Instant::now(),
        }
    }

    /// The drain deadline passed: abort deliveries in flight and count everything unsent.
    async fn give_up(
        &mut self,
        storm: &mut Storm<Target>,
        ready: &mut VecDeque<Outgoing>,
        tasks: &mut JoinSet<()>,
    ) {
        let m = &self.ctx.metrics;
        let mut left = tasks.len();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        for out in ready.drain(..) {
            m.dropped(out.target.via, "shutdown");
            left += 1;
        }
        for (target, _) in storm.flush_all() {
            m.dropped(target.via, "shutdown");
            left += 1;
        }
        while let Ok(ev) = self.rx.try_recv() {
            for t in &ev.targets {
                m.dropped(t.via, "shutdown");
                left += 1;
            }
        }
        tracing::warn!(
            undelivered = left,
            "notification drain deadline passed: exiting with notifications undelivered"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_masked_in_logs() {
        assert_eq!(mask("+15551234567"), "+*******4567");
        assert_eq!(mask("1234"), "****");
    }

    #[test]
    fn the_window_is_bounded_in_bytes_as_well_as_entries() {
        let t0 = Instant::now();
        let mut d = Dedupe::new(Duration::from_secs(600));
        let uid = |i: usize| format!("{i:0>128}");
        let fits = DEDUPE_MAX_BYTES / Dedupe::cost(&uid(0));
        for i in 0..fits + 10 {
            assert!(d.first_time(&uid(i), t0));
        }
        assert!(d.bytes <= DEDUPE_MAX_BYTES, "{}", d.bytes);
        assert_eq!(d.order.len(), fits);
        assert_eq!(d.seen.len(), fits);
        // The oldest were forgotten to make room; the newest are still known.
        assert!(!d.first_time(&uid(fits + 9), t0));
        assert!(d.first_time(&uid(0), t0));
    }

    #[test]
    fn a_uid_is_notified_once_within_the_window() {
        let t0 = Instant::now();
        let mut d = Dedupe::new(Duration::from_secs(60));
        assert!(d.first_time("a", t0));
        assert!(!d.first_time("a", t0 + Duration::from_secs(1)));
        assert!(d.first_time("b", t0 + Duration::from_secs(1)));
        assert!(d.first_time("a", t0 + Duration::from_secs(61)));
    }
}
