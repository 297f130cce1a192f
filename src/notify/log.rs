//! The `log` channel: the text goes to the log at info, as one line. It stands in for SMS
//! when Twilio is not configured and for the webhook when no URL is, so `gatehouse serve` on
//! its defaults shows what would be sent.

use super::Target;

/// Logs the text (newlines escaped) with the reason it is logged rather than sent.
pub fn send(target: &Target, text: &str, uid: &str) {
    tracing::info!(
        channel = target.via.label(),
        to = target.to.as_deref().map(super::mask).unwrap_or_default(),
        uid,
        text = ?text,
        "notification ({})",
        target.note.unwrap_or("log channel")
    );
}
