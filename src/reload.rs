//! Live reload of the serving certificate and the policy files, without a restart.
//!
//! Kubernetes updates a mounted Secret or ConfigMap by writing the new files into a fresh
//! hidden directory and swapping the `..data` symlink to it in one rename; the visible files
//! are symlinks through `..data`. inotify on such a tree is fiddly (the watched inode is
//! replaced, not written), so Gatehouse polls instead: every `reload_interval` it reads the
//! files (a few kilobytes) and compares a fingerprint of their contents with the last one seen.
//!
//! * A new certificate/key pair is parsed and checked (the key must match the certificate)
//!   before it is swapped into the TLS acceptor: new connections get it, connections already
//!   open keep theirs, so requests in flight are unaffected. A pair that fails the check is
//!   refused with an error log and the old pair keeps serving.
//! * A new set of policy files is parsed and validated whole; only a valid set replaces the old
//!   one, atomically (requests already being evaluated finish with the set they started with).
//!   An invalid set is refused with an error log naming the file, policy and field.
//!
//! Both are counted in `gatehouse_reloads_total{source,result}` and shown by
//! `gatehouse_reload_last_successful{source}` (0 while refused files are on disk).
//!
//! A refused version is not retried until the files change again. Reading a pair while it is
//! being swapped file by file (a writer that is not atomic) can see a new certificate with the
//! old key: the files are read again and the pair retried before it is called bad.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum_server::tls_rustls::RustlsConfig;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::api::AppState;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{self, LoadContext, LoadError, PolicySet};
use crate::tls;

/// How many times a pair that changed while being read is read again before giving up.
const SETTLE_ATTEMPTS: usize = 3;
/// Pause between those reads.
const SETTLE_PAUSE: Duration = Duration::from_millis(50);

/// What is being reloaded, as the `source` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The webhook's certificate and key.
    Tls,
    /// The policy files.
    Policies,
}

impl Source {
    /// `tls` or `policies`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Tls => "tls",
            Source::Policies => "policies",
        }
    }
}

/// Labels: what was reloaded and how it went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    source: String,
    result: String,
}

/// Labels: what was reloaded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

/// The reload metrics, registered in the server's registry.
#[derive(Clone)]
struct ReloadMetrics {
    reloads: Family<ReloadLabels, Counter>,
    last_successful: Family<SourceLabels, Gauge>,
    last_success_time: Family<SourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl ReloadMetrics {
    fn register(metrics: &Metrics) -> Self {
        let m = Self {
            reloads: Family::default(),
            last_successful: Family::default(),
            last_success_time: Family::default(),
        };
        metrics.with_registry(|r| {
            r.register(
                "reloads",
                "Reloads of changed certificate or policy files, by source (tls, policies) and result (success, failure)",
                m.reloads.clone(),
            );
            r.register(
                "reload_last_successful",
                "1 when the files on disk are the ones in force, 0 when the last change was refused and the previous version still serves",
                m.last_successful.clone(),
            );
            r.register(
                "reload_last_success_timestamp_seconds",
                "Unix time the files in force were loaded (at start or by the last successful reload)",
                m.last_success_time.clone(),
            );
        });
        m
    }

    fn labels(source: Source) -> SourceLabels {
        SourceLabels {
            source: source.as_str().to_owned(),
        }
    }

    fn loaded(&self, source: Source) {
        self.last_successful
            .get_or_create(&Self::labels(source))
            .set(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success_time
            .get_or_create(&Self::labels(source))
            .set(now);
    }

    fn result(&self, source: Source, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                source: source.as_str().to_owned(),
                result: if ok { "success" } else { "failure" }.to_owned(),
            })
            .inc();
        if ok {
            self.loaded(source);
        } else {
            self.last_successful
                .get_or_create(&Self::labels(source))
                .set(0);
        }
    }
}

/// A fingerprint of file contents (names and bytes). Only compared for equality, never stored
/// or shown, so key material is not kept around in another form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint(u64);

fn fingerprint<'a>(parts: impl IntoIterator<Item = (&'a Path, &'a [u8])>) -> Fingerprint {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (path, bytes) in parts {
        path.hash(&mut h);
        bytes.hash(&mut h);
    }
    Fingerprint(h.finish())
}

/// What the watcher last saw of one source.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Files with this content (loaded or refused).
    Content(Fingerprint),
    /// The files could not be read; the message.
    Unreadable(String),
}

/// The certificate and key files.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// Read certificate and key: the bytes and their fingerprint.
struct TlsRead {
    cert: Vec<u8>,
    key: Vec<u8>,
    print: Fingerprint,
}

impl TlsFiles {
    fn read(&self) -> Result<TlsRead, String> {
        let cert = std::fs::read(&self.cert)
            .map_err(|e| format!("{}: cannot read: {e}", self.cert.display()))?;
        let key = std::fs::read(&self.key)
            .map_err(|e| format!("{}: cannot read: {e}", self.key.display()))?;
        let print = fingerprint([
            (self.cert.as_path(), cert.as_slice()),
            (self.key.as_path(), key.as_slice()),
        ]);
        Ok(TlsRead { cert, key, print })
    }
}

/// Read policy files: (path, text) in load order, and their fingerprint.
struct PolicyRead {
    files: Vec<(PathBuf, String)>,
    print: Fingerprint,
}

fn read_policies(path: &Path) -> Result<PolicyRead, String> {
    let files = policy::policy_files(path).map_err(|e| e.to_string())?;
    let mut read = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
        read.push((file, text));
    }
    let print = fingerprint(read.iter().map(|(p, t)| (p.as_path(), t.as_bytes())));
    Ok(PolicyRead { files: read, print })
}

/// Runs `read` again after a short pause while it fails: a reader caught in the middle of a
/// swap can find a file missing for an instant.
fn read_settled<T>(read: impl Fn() -> Result<T, String>) -> Result<T, String> {
    let mut attempt = 1;
    loop {
        match read() {
            Err(_) if attempt < SETTLE_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(SETTLE_PAUSE);
            }
            other => return other,
        }
    }
}

/// Builds a policy set from files already read, exactly as [`PolicySet::load`] does from disk.
fn build_policy_set(
    files: &[(PathBuf, String)],
    excluded_namespaces: Vec<String>,
    ctx: &LoadContext,
) -> Result<PolicySet, LoadError> {
    let mut all = Vec::new();
    let mut rules = Vec::new();
    for (path, text) in files {
        let (policies, notifications) =
            policy::parse_file_with(text, &path.display().to_string(), ctx)?;
        all.extend(policies);
        rules.extend(notifications);
    }
    PolicySet::new(all, excluded_namespaces)?.with_notifications(rules)
}

/// Watches the configured certificate and policy files and swaps in valid new versions.
pub struct Reloader {
    interval: Duration,
    tls_files: Option<TlsFiles>,
    tls_seen: Option<Seen>,
    policies_path: Option<PathBuf>,
    policies_seen: Option<Seen>,
    excluded_namespaces: Vec<String>,
    /// What the policies were first loaded with (the token store), for reloaded sets.
    ctx: LoadContext,
    metrics: ReloadMetrics,
}

impl Reloader {
    /// A watcher for what `config` names: `tls_cert`/`tls_key` (when set) and `policies` (when
    /// set). `None` when `reload_interval` is 0 or there is nothing to watch. Takes the current
    /// contents as the version in force, so call it right after loading them.
    pub fn new(config: &Config, state: &AppState) -> Option<Self> {
        if config.reload_interval.is_zero() {
            return None;
        }
        let tls_files = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let policies_path = config.policies.clone();
        if tls_files.is_none() && policies_path.is_none() {
            return None;
        }
        let metrics = ReloadMetrics::register(&state.metrics);
        let tls_seen = tls_files.as_ref().map(|f| {
            metrics.loaded(Source::Tls);
            match f.read() {
                Ok(r) => Seen::Content(r.print),
                Err(e) => Seen::Unreadable(e),
            }
        });
        let policies_seen = policies_path.as_deref().map(|p| {
            metrics.loaded(Source::Policies);
            match read_policies(p) {
                Ok(r) => Seen::Content(r.print),
                Err(e) => Seen::Unreadable(e),
            }
        });
        Some(Self {
            interval: config.reload_interval,
            tls_files,
            tls_seen,
            policies_path,
            policies_seen,
            excluded_namespaces: config.excluded_namespaces.clone(),
            ctx: LoadContext::default(),
            metrics,
        })
    }

    /// Reloaded policies are built with `ctx` (the token store the first set was loaded with).
    pub fn set_load_context(&mut self, ctx: LoadContext) {
        self.ctx = ctx;
    }

    /// Polls every `reload_interval` until the task is aborted.
    pub async fn run(mut self, tls: RustlsConfig, state: AppState) {
        tracing::info!(
            interval = ?self.interval,
            tls = self.tls_files.is_some(),
            policies = self.policies_path.is_some(),
            "watching certificate and policy files for changes"
        );
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        loop {
            ticker.tick().await;
            let tls = tls.clone();
            let state = state.clone();
            // File reads and parsing are blocking work; keep them off the request threads.
            let joined = tokio::task::spawn_blocking(move || {
                self.check(&tls, &state);
                self
            })
            .await;
            match joined {
                Ok(me) => self = me,
                Err(e) => {
                    tracing::error!(error = %e, "the reload check failed; certificate and policy reload stopped");
                    return;
                }
            }
        }
    }

    /// One poll: reloads whatever changed.
    pub fn check(&mut self, tls: &RustlsConfig, state: &AppState) {
        self.check_tls(tls);
        self.check_policies(state);
    }

    fn check_tls(&mut self, acceptor: &RustlsConfig) {
        let Some(files) = self.tls_files.clone() else {
            return;
        };
        let mut read = match read_settled(|| files.read()) {
            Ok(r) => r,
            Err(e) => {
                self.unreadable(Source::Tls, e);
                return;
            }
        };
        if self.tls_seen == Some(Seen::Content(read.print)) {
            return;
        }
        let mut attempt = 1;
        let result = loop {
            match tls::server_config_from_pem(&read.cert, &read.key, &files.cert, &files.key) {
                Ok(cfg) => break Ok(cfg),
                Err(e) if attempt < SETTLE_ATTEMPTS => {
                    // Maybe caught between two writes: read again; retry only if it moved.
                    std::thread::sleep(SETTLE_PAUSE);
                    match files.read() {
                        Ok(again) if again.print != read.print => {
                            read = again;
                            attempt += 1;
                        }
                        _ => break Err(e.to_string()),
                    }
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        self.tls_seen = Some(Seen::Content(read.print));
        match result {
            Ok(cfg) => {
                acceptor.reload_from_config(cfg);
                self.metrics.result(Source::Tls, true);
                tracing::info!(
                    cert = %files.cert.display(),
                    key = %files.key.display(),
                    "certificate reloaded: new connections use the new certificate"
                );
            }
            Err(e) => {
                self.metrics.result(Source::Tls, false);
                tracing::error!(
                    error = %e,
                    "new certificate refused; the previous certificate keeps serving"
                );
            }
        }
    }

    fn check_policies(&mut self, state: &AppState) {
        let Some(path) = self.policies_path.clone() else {
            return;
        };
        let read = match read_settled(|| read_policies(&path)) {
            Ok(r) => r,
            Err(e) => {
                self.unreadable(Source::Policies, e);
                return;
            }
        };
        if self.policies_seen == Some(Seen::Content(read.print)) {
            return;
        }
        self.policies_seen = Some(Seen::Content(read.print));
        let built = build_policy_set(&read.files, self.excluded_namespaces.clone(), &self.ctx)
            .map_err(|e| e.to_string())
            .and_then(|set| {
                // A reload that brings the first one-time-token policy opens the store now;
                // a store that cannot be opened refuses the new set.
                let slot = &self.ctx.token_store;
                if slot.wanted() && slot.tokens().is_none() {
                    tokio::runtime::Handle::current()
                        .block_on(slot.open_if_wanted())
                        .map_err(|e| format!("cannot open the token store: {e}"))?;
                }
                Ok(set)
            });
        match built {
            Ok(set) => {
                let names: Vec<String> = set.policies().iter().map(|p| p.to_string()).collect();
                state.policies.store(Arc::new(set));
                self.metrics.result(Source::Policies, true);
                tracing::info!(
                    from = %path.display(),
                    policies = %names.join(", "),
                    "policies reloaded"
                );
            }
            Err(e) => {
                self.metrics.result(Source::Policies, false);
                tracing::error!(
                    error = %e,
                    "new policy files refused; the previous policies stay in force"
                );
            }
        }
    }

    /// Files that cannot be read (for example missing for a moment): the version in force stays;
    /// reported once per distinct problem.
    fn unreadable(&mut self, source: Source, message: String) {
        let seen = match source {
            Source::Tls => &mut self.tls_seen,
            Source::Policies => &mut self.policies_seen,
        };
        let now = Seen::Unreadable(message.clone());
        if seen.as_ref() == Some(&now) {
            return;
        }
        *seen = Some(now);
        self.metrics.result(source, false);
        tracing::error!(
            source = source.as_str(),
            error = %message,
            "cannot read the files to reload; what is in force keeps serving"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    fn state() -> AppState {
        AppState::new(PolicySet::load(None, vec![]).unwrap())
    }

    const MIN_5: &str = "- name: min-five\n  kind: replicas\n  match: {resources: [deployments]}\n  params: {min: 5}\n";

    fn metric(state: &AppState, line_start: &str) -> Option<String> {
        state
            .metrics
            .encode()
            .lines()
            .find(|l| l.starts_with(line_start))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
    }

    #[test]
    fn reload_interval_is_a_setting() {
        let env = |v: &str| vec![("GATEHOUSE_RELOAD_INTERVAL".to_owned(), v.to_owned())];
        let (c, _) = Config::load_from(None, env("250ms")).unwrap();
        assert_eq!(c.reload_interval, Duration::from_millis(250));
        let (c, _) = Config::load_from(None, env("0s")).unwrap();
        assert!(c.reload_interval.is_zero());
        assert_eq!(Config::default().reload_interval, Duration::from_secs(5));
        let err = Config::load_from(None, env("often"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("reload_interval"), "{err}");
    }

    #[test]
    fn nothing_to_watch_or_interval_zero_means_no_reloader() {
        let st = state();
        let config = Config::default();
        assert!(Reloader::new(&config, &st).is_none());
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            policies: Some(dir.path().to_path_buf()),
            reload_interval: Duration::ZERO,
            ..Config::default()
        };
        assert!(Reloader::new(&config, &st).is_none());
    }

    #[test]
    fn policy_changes_are_applied_when_valid_and_refused_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, MIN_5).unwrap();
        let st = AppState::new(PolicySet::load(Some(&file), vec![]).unwrap());
        let config = Config {
            policies: Some(dir.path().to_path_buf()),
            ..Config::default()
        };
        let mut r = Reloader::new(&config, &st).unwrap();
        let acceptor = {
            let (files, _) = certs::ensure_dev_certs(dir.path()).unwrap();
            RustlsConfig::from_config(tls::load_server_config(&files.cert, &files.key).unwrap())
        };

        // Unchanged: nothing happens.
        let before = st.policies.load_full();
        r.check(&acceptor, &st);
        assert!(Arc::ptr_eq(&before, &st.policies.load_full()));
        assert_eq!(metric(&st, "gatehouse_reloads_total"), None);

        std::fs::write(&file, MIN_5.replace("min: 5", "min: 7")).unwrap();
        r.check(&acceptor, &st);
        assert!(!Arc::ptr_eq(&before, &st.policies.load_full()));
        assert_eq!(
            metric(
                &st,
                "gatehouse_reloads_total{source=\"policies\",result=\"success\"}"
            ),
            Some("1".into())
        );

        let good = st.policies.load_full();
        std::fs::write(&file, MIN_5.replace("min: 5", "minimum: 7")).unwrap();
        r.check(&acceptor, &st);
        r.check(&acceptor, &st); // refused once, not again for the same content
        assert!(Arc::ptr_eq(&good, &st.policies.load_full()));
        assert_eq!(
            metric(
                &st,
                "gatehouse_reloads_total{source=\"policies\",result=\"failure\"}"
            ),
            Some("1".into())
        );
        assert_eq!(
            metric(&st, "gatehouse_reload_last_successful{source=\"policies\"}"),
            Some("0".into())
        );

        // Gone for a moment: reported once, the set in force stays.
        std::fs::remove_file(&file).unwrap();
        r.check(&acceptor, &st);
        r.check(&acceptor, &st);
        assert!(Arc::ptr_eq(&good, &st.policies.load_full()));
        assert_eq!(
            metric(
                &st,
                "gatehouse_reloads_total{source=\"policies\",result=\"failure\"}"
            ),
            Some("2".into())
        );
    }

    #[test]
    fn a_certificate_with_the_wrong_key_is_refused_and_a_good_pair_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = certs::ensure_dev_certs(&dir.path().join("a")).unwrap();
        let (b, _) = certs::ensure_dev_certs(&dir.path().join("b")).unwrap();
        let live = dir.path().join("live");
        std::fs::create_dir(&live).unwrap();
        let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
        std::fs::copy(&a.cert, &cert).unwrap();
        std::fs::copy(&a.key, &key).unwrap();
        let st = state();
        let config = Config {
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            ..Config::default()
        };
        let acceptor = RustlsConfig::from_config(tls::load_server_config(&cert, &key).unwrap());
        let mut r = Reloader::new(&config, &st).unwrap();
        let first = acceptor.get_inner();

        // b's certificate with a's key: refused (after re-reading), the old config stays.
        std::fs::copy(&b.cert, &cert).unwrap();
        r.check(&acceptor, &st);
        assert!(Arc::ptr_eq(&first, &acceptor.get_inner()));
        assert_eq!(
            metric(
                &st,
                "gatehouse_reloads_total{source=\"tls\",result=\"failure\"}"
            ),
            Some("1".into())
        );

        // Now the key too: taken.
        std::fs::copy(&b.key, &key).unwrap();
        r.check(&acceptor, &st);
        assert!(!Arc::ptr_eq(&first, &acceptor.get_inner()));
        assert_eq!(
            metric(
                &st,
                "gatehouse_reloads_total{source=\"tls\",result=\"success\"}"
            ),
            Some("1".into())
        );
        assert_eq!(
            metric(&st, "gatehouse_reload_last_successful{source=\"tls\"}"),
            Some("1".into())
        );
    }
}
