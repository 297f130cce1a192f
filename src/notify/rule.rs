//! Notification rules, written in policy files under `notifications:`: which events, which
//! requests (a `match` block as policies have), which channels and recipients.

use crate::admission::Review;
use serde::Deserialize;

use crate::policy::LoadError;
use crate::policy::matching::{MatchSpec, Matcher};

use super::settings::is_e164;

/// What happened to a request, as rules name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// An allowed CREATE.
    Created,
    /// An allowed UPDATE that changed more than bookkeeping.
    Updated,
    /// A denied request (any operation).
    Denied,
    /// An allowed request that got warnings.
    Warned,
}

impl EventKind {
    /// `created`, `updated`, `denied`, `warned`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Denied => "denied",
            EventKind::Warned => "warned",
        }
    }
}

/// A channel as rules name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// SMS through Twilio (logged instead when Twilio is not configured).
    Sms,
    /// JSON POST with a Slack-compatible `text` (logged instead when no URL is configured).
    Webhook,
    /// The log only.
    Log,
}

impl ChannelKind {
    /// `sms`, `webhook`, `log`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Sms => "sms",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Log => "log",
        }
    }
}

/// A rule as written in a file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    name: String,
    #[serde(default)]
    description: Option<String>,
    events: Vec<EventKind>,
    #[serde(rename = "match")]
    match_spec: MatchSpec,
    #[serde(default)]
    channels: Vec<ChannelKind>,
    #[serde(default)]
    recipients: Vec<String>,
}

/// A notification rule ready to match.
#[derive(Debug, Clone)]
pub struct NotifyRule {
    /// Unique name, a DNS label.
    pub name: String,
    /// Free text for people.
    pub description: Option<String>,
    /// The events it fires on.
    pub events: Vec<EventKind>,
    /// Which requests.
    pub matcher: Matcher,
    /// Where to (default `[sms]`).
    pub channels: Vec<ChannelKind>,
    /// SMS recipients in E.164; empty: the configured `notify.sms_to`.
    pub recipients: Vec<String>,
    /// The file it came from.
    pub source: String,
}

impl NotifyRule {
    /// Whether the rule applies to this request for any of `events`.
    pub fn fires(&self, req: &Review<'_>, events: &[EventKind]) -> bool {
        self.events.iter().any(|e| events.contains(e)) && self.matcher.matches(req)
    }
}

/// Parses the `notifications:` list of one file.
pub fn parse_rules(
    items: Vec<serde_yaml::Value>,
    source: &str,
) -> Result<Vec<NotifyRule>, LoadError> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let label = crate::policy::item_label(&item, "notification", i);
        let fail = |msg: String| LoadError::new(source, format!("{label}: {msg}"));
        let raw: RawRule = crate::policy::deserialize_item(item, fail)?;
        crate::policy::validate_name(&raw.name).map_err(|m| fail(format!("name: {m}")))?;
        if raw.events.is_empty() {
            return Err(fail(
                "events: name at least one of created, updated, denied, warned".into(),
            ));
        }
        let matcher = Matcher::compile(raw.match_spec).map_err(&fail)?;
        let channels = if raw.channels.is_empty() {
            vec![ChannelKind::Sms]
        } else {
            let mut c = raw.channels;
            c.sort();
            c.dedup();
            c
        };
        for (j, r) in raw.recipients.iter().enumerate() {
            if !is_e164(r) {
                return Err(fail(format!(
                    "recipients[{j}]: `{r}` is not an E.164 number such as +15551234567"
                )));
            }
        }
        if !raw.recipients.is_empty() && !channels.contains(&ChannelKind::Sms) {
            return Err(fail(
                "recipients: only the sms channel takes recipients".into(),
            ));
        }
        out.push(NotifyRule {
            name: raw.name,
            description: raw.description,
            events: raw.events,
            matcher,
            channels,
            recipients: raw.recipients,
            source: source.to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySet, parse_file};
    use rstest::rstest;

    #[test]
    fn shipped_defaults_notify_deployment_create_update_and_any_deny() {
        let set = PolicySet::load(None, vec![]).unwrap();
        let rules = set.notifications();
        let by_event = |e: EventKind| -> Vec<&str> {
            rules
                .iter()
                .filter(|r| r.events.contains(&e))
                .map(|r| r.name.as_str())
                .collect()
        };
        assert_eq!(by_event(EventKind::Created), vec!["deployment-created"]);
        assert_eq!(by_event(EventKind::Updated), vec!["deployment-updated"]);
        assert_eq!(by_event(EventKind::Denied), vec!["any-denied"]);
        assert!(
            rules
                .iter()
                .all(|r| r.channels == vec![ChannelKind::Sms] && r.recipients.is_empty())
        );
    }

    #[test]
    fn rules_parse_with_defaults() {
        let text = "
notifications:
  - name: prod-deploys
    events: [created, updated, warned]
    match: {resources: [apps/deployments], namespaces: {include: [prod-*]}}
    recipients: ['+15551234567']
  - name: chat
    events: [denied]
    match: {resources: ['*'], operations: ['*']}
    channels: [webhook, log, webhook]
";
        let (policies, rules) = parse_file(text, "n.yaml").unwrap();
        assert!(policies.is_empty());
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].channels, vec![ChannelKind::Sms]);
        assert_eq!(rules[0].recipients, vec!["+15551234567"]);
        assert_eq!(
            rules[1].channels,
            vec![ChannelKind::Webhook, ChannelKind::Log]
        );
    }

    #[rstest]
    #[case::unknown_event(
        "notifications:\n- name: n\n  events: [deleted]\n  match: {resources: ['*']}\n",
        "notification \"n\": events[0]: unknown variant `deleted`"
    )]
    #[case::no_events(
        "notifications:\n- name: n\n  events: []\n  match: {resources: ['*']}\n",
        "notification \"n\": events: name at least one"
    )]
    #[case::unknown_channel(
        "notifications:\n- name: n\n  events: [denied]\n  channels: [email]\n  match: {resources: ['*']}\n",
        "notification \"n\": channels[0]: unknown variant `email`"
    )]
    #[case::bad_number(
        "notifications:\n- name: n\n  events: [denied]\n  recipients: ['0151 234']\n  match: {resources: ['*']}\n",
        "notification \"n\": recipients[0]: `0151 234` is not an E.164 number"
    )]
    #[case::recipients_without_sms(
        "notifications:\n- name: n\n  events: [denied]\n  channels: [log]\n  recipients: ['+15551234567']\n  match: {resources: ['*']}\n",
        "recipients: only the sms channel"
    )]
    #[case::unknown_field(
        "notifications:\n- name: n\n  event: [denied]\n  match: {resources: ['*']}\n",
        "notification \"n\": event: unknown field `event`"
    )]
    #[case::missing_match(
        "notifications:\n- name: n\n  events: [denied]\n",
        "notification \"n\": missing field `match`"
    )]
    #[case::bad_match(
        "notifications:\n- name: n\n  events: [denied]\n  match: {resources: [Deployment]}\n",
        "notification \"n\": match.resources"
    )]
    #[case::bad_name(
        "notifications:\n- name: N_1\n  events: [denied]\n  match: {resources: ['*']}\n",
        "notification \"N_1\": name:"
    )]
    fn rule_errors_name_file_rule_and_field(#[case] text: &str, #[case] expected: &str) {
        let err = parse_file(text, "team.yaml").unwrap_err().to_string();
        assert!(err.starts_with("team.yaml: "), "{err}");
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
    }

    #[test]
    fn duplicate_rule_names_across_files_are_rejected() {
        let text = "notifications:\n- name: n\n  events: [denied]\n  match: {resources: ['*']}\n";
        let (_, mut a) = parse_file(text, "a.yaml").unwrap();
        let (_, b) = parse_file(text, "b.yaml").unwrap();
        a.extend(b);
        let err = PolicySet::new(vec![], vec![])
            .unwrap()
            .with_notifications(a)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "b.yaml: notification \"n\": name: already defined in a.yaml"
        );
    }
}
