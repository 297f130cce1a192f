//! Delivering one message: the channel call, retries with exponential backoff and jitter on
//! network errors, 429 (honouring `Retry-After`) and 5xx, none on other answers; metrics and
//! one log line for the outcome.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::settings::RetryConfig;
use super::twilio::Twilio;
use super::webhook::Webhook;
use super::{NotifyMetrics, Outgoing, SendError, Via, mask};
use crate::secret::Secret;

/// Largest response body read from a channel (errors are short; the rest is ignored).
const MAX_BODY: usize = 64 * 1024;

/// The response body as text, at most [`MAX_BODY`] bytes.
pub async fn body_text(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_BODY.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// 429 and 5xx are worth another try (after `Retry-After` when given); other answers are not.
pub fn classify_status(status: StatusCode, headers: &HeaderMap, reason: String) -> SendError {
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        SendError::Retry {
            reason,
            after: retry_after(headers),
        }
    } else {
        SendError::Fatal { reason }
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A transport error (connect, TLS, timeout, reset): worth another try. The text carries the
/// error's causes but not the URL, and never `secret`.
pub fn network_error(e: reqwest::Error, secret: &Secret) -> SendError {
    let builder = e.is_builder();
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    let reason = secret.redact_in(&reason);
    if builder {
        SendError::Fatal { reason }
    } else {
        SendError::Retry {
            reason,
            after: None,
        }
    }
}

/// The wait before attempt `failures + 1`: `initial_backoff · 2^(failures-1)`, at most
/// `max_backoff`, with "equal jitter" (half fixed, half random) so many retries spread out.
pub fn backoff(retry: &RetryConfig, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1));
    let exp = retry
        .initial_backoff
        .saturating_mul(factor)
        .min(retry.max_backoff);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// The channels that talk to the outside.
#[derive(Debug, Default)]
pub struct Channels {
    /// Twilio, when configured.
    pub twilio: Option<Twilio>,
    /// The chat webhook, when configured.
    pub webhook: Option<Webhook>,
}

impl Channels {
    async fn send_once(&self, out: &Outgoing) -> Result<String, SendError> {
        let missing = |what: &str| SendError::Fatal {
            reason: format!("{what} is not configured"),
        };
        match out.target.via {
            Via::Twilio => {
                let twilio = self.twilio.as_ref().ok_or_else(|| missing("Twilio"))?;
                let to = out
                    .target
                    .to
                    .as_deref()
                    .ok_or_else(|| missing("a recipient"))?;
                twilio.send(to, &out.text).await
            }
            Via::Webhook => {
                let webhook = self
                    .webhook
                    .as_ref()
                    .ok_or_else(|| missing("the webhook"))?;
                webhook.send(&out.text).await
            }
            Via::Log => {
                super::log::send(&out.target, &out.text, &out.uid);
                Ok("logged".to_owned())
            }
        }
    }
}

/// What a delivery needs besides its message.
#[derive(Debug)]
pub struct Context {
    /// The channels.
    pub channels: Channels,
    /// The metrics.
    pub metrics: Arc<NotifyMetrics>,
    /// Retry settings.
    pub retry: RetryConfig,
}

/// Counts a message that never finished (its task was aborted at the drain deadline).
struct Unfinished<'a> {
    metrics: &'a NotifyMetrics,
    via: Via,
    uid: &'a str,
    done: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.dropped(self.via, "shutdown");
            tracing::warn!(
                channel = self.via.label(),
                uid = self.uid,
                "notification not delivered: the drain deadline passed"
            );
        }
    }
}

/// Delivers one message with retries; counts and logs the outcome.
pub async fn deliver(ctx: Arc<Context>, out: Outgoing) {
    let via = out.target.via;
    let mut guard = Unfinished {
        metrics: &ctx.metrics,
        via,
        uid: &out.uid,
        done: false,
    };
    let to = out.target.to.as_deref().map(mask).unwrap_or_default();
    let mut attempt = 1u32;
    loop {
        match ctx.channels.send_once(&out).await {
            Ok(detail) => {
                let latency = out.queued_at.elapsed();
                ctx.metrics.sent(via, latency);
                if via != Via::Log {
                    tracing::info!(
                        channel = via.label(),
                        to,
                        uid = out.uid,
                        attempts = attempt,
                        latency_ms = latency.as_millis() as u64,
                        detail,
                        "notification sent"
                    );
                }
                break;
            }
            Err(SendError::Retry { reason, after }) if attempt < ctx.retry.max_attempts => {
                let wait = match after {
                    Some(d) => d.min(ctx.retry.max_backoff),
                    None => backoff(&ctx.retry, attempt),
                };
                tracing::warn!(
                    channel = via.label(),
                    to,
                    uid = out.uid,
                    attempt,
                    retry_in_ms = wait.as_millis() as u64,
                    error = reason,
                    "notification attempt failed; retrying"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(SendError::Retry { reason, .. }) | Err(SendError::Fatal { reason }) => {
                ctx.metrics.failed(via);
                tracing::error!(
                    channel = via.label(),
                    to,
                    uid = out.uid,
                    attempts = attempt,
                    error = reason,
                    "notification failed"
                );
                break;
            }
        }
    }
    guard.done = true;
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use rstest::rstest;

    #[rstest]
    #[case(StatusCode::TOO_MANY_REQUESTS, true)]
    #[case(StatusCode::INTERNAL_SERVER_ERROR, true)]
    #[case(StatusCode::SERVICE_UNAVAILABLE, true)]
    #[case(StatusCode::BAD_REQUEST, false)]
    #[case(StatusCode::UNAUTHORIZED, false)]
    #[case(StatusCode::NOT_FOUND, false)]
    fn which_answers_are_retried(#[case] status: StatusCode, #[case] retried: bool) {
        let e = classify_status(status, &HeaderMap::new(), "x".into());
        assert_eq!(matches!(e, SendError::Retry { .. }), retried);
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        let r = RetryConfig {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let b1 = backoff(&r, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b3 = backoff(&r, 3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
            let b9 = backoff(&r, 9);
            assert!(b9 >= Duration::from_millis(500) && b9 <= Duration::from_millis(1000));
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(&r, 2)).collect();
        assert!(spread.len() > 1, "jitter varies the wait");
    }
}
