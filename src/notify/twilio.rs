//! The Twilio SMS channel: a small client for one call of Twilio's REST API v2010,
//! `POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json` with the form fields `To`,
//! `From` and/or `MessagingServiceSid`, and `Body`, authenticated with HTTP basic auth (the
//! Account SID and the Auth Token). 201 answers with the message resource; errors with
//! Twilio's error JSON (`code`, `message`, `more_info`, `status`).
//!
//! Written here rather than taken from a Twilio crate: those hard-code Twilio's host (so they
//! cannot be pointed at a test stand-in or a proxy) and pull in OpenSSL and a second HTTP
//! stack.

use std::fmt;

use serde::Deserialize;

use super::SendError;
use super::delivery::{body_text, classify_status, network_error};
use super::settings::TwilioConfig;
use crate::secret::Secret;

/// The path of the Messages list under the API base.
pub fn messages_path(account_sid: &str) -> String {
    format!("/2010-04-01/Accounts/{account_sid}/Messages.json")
}

/// A configured Twilio account.
pub struct Twilio {
    http: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: Secret,
    from: Option<String>,
    messaging_service_sid: Option<String>,
}

impl fmt::Debug for Twilio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Twilio")
            .field("url", &self.url)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &self.auth_token)
            .field("from", &self.from)
            .field("messaging_service_sid", &self.messaging_service_sid)
            .finish()
    }
}

/// The part of Twilio's message resource that is logged.
#[derive(Debug, Deserialize)]
struct MessageResource {
    sid: Option<String>,
    status: Option<String>,
}

/// Twilio's error body.
#[derive(Debug, Deserialize)]
struct TwilioError {
    code: Option<i64>,
    message: Option<String>,
    more_info: Option<String>,
}

impl Twilio {
    /// The client for a validated configuration, or `None` when Twilio is not configured.
    pub fn new(cfg: &TwilioConfig, http: reqwest::Client) -> Option<Self> {
        let (Some(account_sid), Some(auth_token)) = (&cfg.account_sid, &cfg.auth_token) else {
            return None;
        };
        Some(Self {
            http,
            url: format!(
                "{}{}",
                cfg.api_base.trim_end_matches('/'),
                messages_path(account_sid)
            ),
            account_sid: account_sid.clone(),
            auth_token: auth_token.clone(),
            from: cfg.from.clone(),
            messaging_service_sid: cfg.messaging_service_sid.clone(),
        })
    }

    /// Sends one SMS; returns the message SID and status Twilio answered with.
    pub async fn send(&self, to: &str, body: &str) -> Result<String, SendError> {
        let mut form: Vec<(&str, &str)> = vec![("To", to)];
        if let Some(from) = &self.from {
            form.push(("From", from));
        }
        if let Some(mg) = &self.messaging_service_sid {
            form.push(("MessagingServiceSid", mg));
        }
        form.push(("Body", body));
        let resp = self
            .http
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| network_error(e, &self.auth_token))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = body_text(resp).await;
        if status.is_success() {
            let m: Option<MessageResource> = serde_json::from_str(&text).ok();
            let sid = m.as_ref().and_then(|m| m.sid.clone()).unwrap_or_default();
            let st = m.and_then(|m| m.status).unwrap_or_default();
            return Ok(format!("sid={sid} status={st}"));
        }
        let detail = match serde_json::from_str::<TwilioError>(&text) {
            Ok(e) => format!(
                "Twilio error {}: {}{}",
                e.code.map_or_else(|| "?".to_owned(), |c| c.to_string()),
                e.message.unwrap_or_default(),
                e.more_info.map(|m| format!(" ({m})")).unwrap_or_default()
            ),
            Err(_) => text.chars().take(200).collect(),
        };
        // Whatever Twilio says, the token is not repeated in a log line.
        let reason = format!("HTTP {status}: {}", self.auth_token.redact_in(&detail));
        Err(classify_status(status, &headers, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token_and_the_url_is_twilios_path() {
        crate::tls::install_default_provider();
        let cfg = TwilioConfig {
            account_sid: Some(format!("AC{}", "0".repeat(32))),
            auth_token: Some(Secret::new("tok-123456")),
            from: Some("+15550001111".into()),
            api_base: "https://api.twilio.com/".into(),
            ..TwilioConfig::default()
        };
        let t = Twilio::new(&cfg, reqwest::Client::new()).unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains("tok-123456"), "{shown}");
        assert!(
            shown.contains(&format!(
                "https://api.twilio.com/2010-04-01/Accounts/AC{}/Messages.json",
                "0".repeat(32)
            )),
            "{shown}"
        );
        assert!(Twilio::new(&TwilioConfig::default(), reqwest::Client::new()).is_none());
    }
}
