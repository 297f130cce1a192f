//! The chat webhook channel: `POST {url}` with `{"text": "…"}`, the body Slack's incoming
//! webhooks (and Mattermost, Rocket.Chat, Teams' Slack-compatible connectors) accept. The URL
//! usually holds a token, so it never appears in a log line or an error.

use std::fmt;

use super::SendError;
use super::delivery::{body_text, classify_status, network_error};
use crate::secret::Secret;

/// A configured webhook.
pub struct Webhook {
    http: reqwest::Client,
    url: Secret,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url).finish()
    }
}

impl Webhook {
    /// The channel for a configured URL, or `None`.
    pub fn new(url: Option<&Secret>, http: reqwest::Client) -> Option<Self> {
        url.map(|url| Self {
            http,
            url: url.clone(),
        })
    }

    /// Posts one message.
    pub async fn send(&self, text: &str) -> Result<String, SendError> {
        let resp = self
            .http
            .post(self.url.expose())
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await
            .map_err(|e| network_error(e, &self.url))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = body_text(resp).await;
        if status.is_success() {
            return Ok(format!("status={}", status.as_u16()));
        }
        let snippet: String = body.chars().take(200).collect();
        let reason = format!("HTTP {status}: {}", self.url.redact_in(&snippet));
        Err(classify_status(status, &headers, reason))
    }
}
