//! Renders an event (or a storm summary) as a short text: what happened, to which object, by
//! whom, replicas, images (old -> new on update), the deny reason. An SMS stays within 2
//! segments (306 GSM-7 characters): the text is mapped to GSM-7's basic set and long parts
//! are shortened, never dropped.

use std::time::Duration;

use super::Event;
use super::rule::EventKind;
use super::storm::Summary;

/// Two concatenated GSM-7 segments of 153 characters each.
pub const SMS_LIMIT: usize = 306;
/// Enough for a chat message, still bounded.
pub const CHAT_LIMIT: usize = 2000;

/// How a text is written for its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Style {
    /// GSM-7 basic characters only, at most [`SMS_LIMIT`].
    Sms,
    /// Any Unicode, at most [`CHAT_LIMIT`].
    Chat,
}

impl Style {
    fn limit(self) -> usize {
        match self {
            Style::Sms => SMS_LIMIT,
            Style::Chat => CHAT_LIMIT,
        }
    }

    fn arrow(self) -> &'static str {
        match self {
            Style::Sms => " -> ",
            Style::Chat => " → ",
        }
    }

    fn ellipsis(self) -> &'static str {
        match self {
            Style::Sms => "...",
            Style::Chat => "…",
        }
    }
}

/// GSM 03.38 basic character set: one septet each (the extension table's `[]{}|~^\€` cost
/// two and are mapped to look-alikes instead).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// Whether every character of `text` is in GSM-7's basic set.
pub fn is_gsm7_basic(text: &str) -> bool {
    text.chars().all(|c| GSM7_BASIC.contains(c))
}

/// `text` in GSM-7's basic set: look-alikes for common characters, `?` for the rest.
pub fn to_gsm7(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if GSM7_BASIC.contains(c) {
            out.push(c);
            continue;
        }
        let sub = match c {
            '[' | '{' => "(",
            ']' | '}' => ")",
            '\\' | '|' => "/",
            '~' | '–' | '—' | '−' => "-",
            '^' | '`' | '‘' | '’' | '´' => "'",
            '“' | '”' | '„' => "\"",
            '€' => "EUR",
            '…' => "...",
            '→' => "->",
            '←' => "<-",
            '\t' => " ",
            c if c.is_control() => " ",
            _ => "?",
        };
        out.push_str(sub);
    }
    out
}

/// SMS segments a GSM-7 basic text takes: 1 up to 160 characters, else 153 per segment.
pub fn sms_segments(text: &str) -> usize {
    let n = text.chars().count();
    if n <= 160 { 1 } else { n.div_ceil(153) }
}

/// How a part may be shortened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trim {
    /// Never (labels, separators, numbers).
    Keep,
    /// Cut the end (reasons, user names).
    End,
    /// Cut the middle, keeping both ends (object names, image references: the tag matters).
    Middle,
}

struct Part {
    text: String,
    trim: Trim,
}

/// Parts shortened no further than this many characters.
const MIN_PART: usize = 12;

/// Builds a text out of parts and fits it into the style's limit.
struct Builder {
    style: Style,
    parts: Vec<Part>,
}

impl Builder {
    fn new(style: Style) -> Self {
        Self {
            style,
            parts: Vec::new(),
        }
    }

    fn push(&mut self, text: impl AsRef<str>, trim: Trim) {
        let text = match self.style {
            Style::Sms => to_gsm7(text.as_ref()),
            Style::Chat => text.as_ref().to_owned(),
        };
        self.parts.push(Part { text, trim });
    }

    fn keep(&mut self, text: impl AsRef<str>) {
        self.push(text, Trim::Keep);
    }

    /// Every part longer than a common cap is shortened to it, the cap chosen as large as
    /// the limit allows; if the fixed parts alone are too long the end is cut.
    fn finish(self) -> String {
        let limit = self.style.limit();
        let len = |p: &Part| p.text.chars().count();
        let total: usize = self.parts.iter().map(len).sum();
        if total <= limit {
            return self.parts.into_iter().map(|p| p.text).collect();
        }
        let size_at = |cap: usize| -> usize {
            self.parts
                .iter()
                .map(|p| match p.trim {
                    Trim::Keep => len(p),
                    _ => len(p).min(cap.max(MIN_PART)),
                })
                .sum()
        };
        let longest = self.parts.iter().map(len).max().unwrap_or(0);
        // The largest cap that fits (size_at grows with cap).
        let (mut lo, mut hi) = (0usize, longest);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if size_at(mid) <= limit {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let cap = lo.max(MIN_PART);
        let ellipsis = self.style.ellipsis();
        let mut out = String::new();
        for p in self.parts {
            if p.trim == Trim::Keep || len(&p) <= cap {
                out.push_str(&p.text);
            } else {
                out.push_str(&shorten(&p.text, cap, p.trim, ellipsis));
            }
        }
        if out.chars().count() > limit {
            let keep = limit - ellipsis.chars().count();
            out = out.chars().take(keep).collect::<String>() + ellipsis;
        }
        out
    }
}

/// `text` cut to `cap` characters with an ellipsis at the end or in the middle.
fn shorten(text: &str, cap: usize, trim: Trim, ellipsis: &str) -> String {
    let e = ellipsis.chars().count();
    let room = cap.saturating_sub(e);
    let chars: Vec<char> = text.chars().collect();
    match trim {
        Trim::Middle => {
            let tail = room / 2;
            let head = room - tail;
            let mut s: String = chars[..head].iter().collect();
            s.push_str(ellipsis);
            s.extend(&chars[chars.len() - tail..]);
            s
        }
        _ => {
            let mut s: String = chars[..room].iter().collect();
            s.push_str(ellipsis);
            s
        }
    }
}

fn prefix(cluster: Option<&str>) -> String {
    match cluster {
        Some(c) => format!("Gatehouse ({c}): "),
        None => "Gatehouse: ".to_owned(),
    }
}

/// Images listed in one message at most; the rest are counted.
const MAX_IMAGES: usize = 3;

/// The text for one event.
pub fn render(event: &Event, style: Style, cluster: Option<&str>) -> String {
    let mut b = Builder::new(style);
    b.keep(prefix(cluster));
    match event.primary {
        EventKind::Denied => {
            b.keep(format!("DENIED {} of ", event.operation));
            b.push(&event.object, Trim::Middle);
        }
        EventKind::Warned => {
            b.keep(format!("warning on {} of ", event.operation));
            b.push(&event.object, Trim::Middle);
        }
        EventKind::Created => {
            b.push(&event.object, Trim::Middle);
            b.keep(" created");
        }
        EventKind::Updated => {
            b.push(&event.object, Trim::Middle);
            b.keep(" updated");
        }
    }
    if !event.user.is_empty() {
        b.keep(" by ");
        b.push(&event.user, Trim::End);
    }

    let mut details = Vec::new();
    if let Some(r) = &event.replicas {
        details.push(match (r.old, r.new) {
            (Some(old), Some(new)) if old != new => {
                format!("replicas {old}{}{new}", style.arrow())
            }
            (_, Some(new)) => format!("replicas {new}"),
            (Some(old), None) => format!("replicas {old}"),
            (None, None) => String::new(),
        });
    }
    details.retain(|d| !d.is_empty());
    if !details.is_empty() {
        b.keep("\n");
        b.keep(details.join("; "));
    }
    images(&mut b, event, style, details.is_empty());

    if let Some(reason) = &event.reason {
        b.keep("\nReason: ");
        b.push(reason, Trim::End);
    }
    if let Some(first) = event.warnings.first() {
        b.keep("\nWarning: ");
        b.push(first, Trim::End);
        if event.warnings.len() > 1 {
            b.keep(format!(" (+{} more)", event.warnings.len() - 1));
        }
    }
    b.finish()
}

/// `image alpine:3.9.1` / `image alpine:3.9.1 -> alpine:3` / `images web nginx:1, sidecar
/// envoy:2 (+2 more)`: on an update where images changed, only the changed ones.
fn images(b: &mut Builder, event: &Event, style: Style, first_detail: bool) {
    let changed: Vec<_> = event.images.iter().filter(|i| i.old != i.new).collect();
    let shown: Vec<_> = if event.primary == EventKind::Updated && !changed.is_empty() {
        changed
    } else {
        event.images.iter().collect()
    };
    if shown.is_empty() {
        return;
    }
    b.keep(if first_detail { "\n" } else { "; " });
    let many = shown.len() > 1;
    b.keep(if many { "images " } else { "image " });
    for (i, img) in shown.iter().take(MAX_IMAGES).enumerate() {
        if i > 0 {
            b.keep(", ");
        }
        if many {
            b.push(format!("{} ", img.container), Trim::End);
        }
        match (&img.old, &img.new) {
            (Some(old), Some(new)) if old != new => {
                b.push(old, Trim::Middle);
                b.keep(style.arrow());
                b.push(new, Trim::Middle);
            }
            (_, Some(new)) => b.push(new, Trim::Middle),
            (Some(old), None) => b.push(old, Trim::Middle),
            (None, None) => {}
        }
    }
    if shown.len() > MAX_IMAGES {
        b.keep(format!(" (+{} more)", shown.len() - MAX_IMAGES));
    }
}

/// One line for an event inside a summary: `Deployment app-ns/web created by alice`.
pub fn one_line(event: &Event) -> String {
    let what = match event.primary {
        EventKind::Denied => format!("{} denied", event.operation),
        EventKind::Warned => format!("{} warned", event.operation),
        EventKind::Created => "created".to_owned(),
        EventKind::Updated => "updated".to_owned(),
    };
    if event.user.is_empty() {
        format!("{} {what}", event.object)
    } else {
        format!("{} {what} by {}", event.object, event.user)
    }
}

/// `2m`, `90s`, `1h`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s >= 1 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The storm summary: how many were held back, of which kinds, and the latest one.
pub(crate) fn render_summary(summary: &Summary, style: Style, cluster: Option<&str>) -> String {
    let mut b = Builder::new(style);
    b.keep(prefix(cluster));
    let noun = if summary.count == 1 {
        "notification"
    } else {
        "notifications"
    };
    b.keep(format!(
        "{} more {noun} in the last {} (storm control): ",
        summary.count,
        span(summary.window)
    ));
    let kinds: Vec<String> = summary
        .by_kind
        .iter()
        .map(|(k, n)| format!("{n} {}", k.as_str()))
        .collect();
    b.keep(kinds.join(", "));
    if let Some(last) = &summary.last {
        b.keep(". Latest: ");
        b.push(last, Trim::End);
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Change, ImageChange};
    use rstest::rstest;
    use std::collections::BTreeMap;

    fn event(primary: EventKind) -> Event {
        Event {
            uid: "u".into(),
            primary,
            operation: "create".into(),
            object: "Deployment app-ns/alpine-deploy".into(),
            user: "kubernetes-admin".into(),
            replicas: Some(Change {
                old: None,
                new: Some(3),
            }),
            images: vec![ImageChange {
                container: "alpine".into(),
                old: None,
                new: Some("alpine:3.9.1".into()),
            }],
            reason: None,
            warnings: vec![],
            targets: vec![],
            at: std::time::Instant::now(),
        }
    }

    #[test]
    fn created() {
        assert_eq!(
            render(&event(EventKind::Created), Style::Sms, None),
            "Gatehouse: Deployment app-ns/alpine-deploy created by kubernetes-admin\nreplicas 3; image alpine:3.9.1"
        );
    }

    #[test]
    fn updated_names_old_and_new_image_and_replicas() {
        let mut e = event(EventKind::Updated);
        e.operation = "update".into();
        e.replicas = Some(Change {
            old: Some(3),
            new: Some(5),
        });
        e.images = vec![
            ImageChange {
                container: "alpine".into(),
                old: Some("alpine:3.9.1".into()),
                new: Some("alpine:3".into()),
            },
            ImageChange {
                container: "sidecar".into(),
                old: Some("envoy:1".into()),
                new: Some("envoy:1".into()),
            },
        ];
        assert_eq!(
            render(&e, Style::Sms, Some("prod-eu")),
            "Gatehouse (prod-eu): Deployment app-ns/alpine-deploy updated by kubernetes-admin\nreplicas 3 -> 5; image alpine:3.9.1 -> alpine:3"
        );
        assert!(render(&e, Style::Chat, None).contains("alpine:3.9.1 → alpine:3"));
    }

    #[test]
    fn denied_carries_the_reason() {
        let mut e = event(EventKind::Denied);
        e.replicas = Some(Change {
            old: None,
            new: Some(2),
        });
        e.reason = Some(
            "Deployment app-ns/alpine-deploy asks for 2 replicas; policy min-replicas requires at least 3".into(),
        );
        assert_eq!(
            render(&e, Style::Sms, None),
            "Gatehouse: DENIED create of Deployment app-ns/alpine-deploy by kubernetes-admin\nreplicas 2; image alpine:3.9.1\nReason: Deployment app-ns/alpine-deploy asks for 2 replicas; policy min-replicas requires at least 3"
        );
    }

    #[rstest]
    #[case::long_reason(|e: &mut Event| e.reason = Some(format!("policy says {}", "no ".repeat(400))))]
    #[case::long_name(|e: &mut Event| e.object = format!("Deployment app-ns/{}", "a".repeat(253)))]
    #[case::long_user(|e: &mut Event| e.user = format!("system:serviceaccount:{}:deployer", "ns".repeat(60)))]
    #[case::many_images(|e: &mut Event| e.images = (0..40).map(|i| ImageChange {
        container: format!("c{i}"), old: None,
        new: Some(format!("registry.example.com/team/very/long/path/image-{i}:v1.2.3-{}", "x".repeat(40))),
    }).collect())]
    #[case::everything_long(|e: &mut Event| {
        e.object = format!("Deployment {}/{}", "n".repeat(63), "a".repeat(253));
        e.user = "u".repeat(300);
        e.reason = Some("r".repeat(3000));
        e.warnings = vec!["w".repeat(500); 3];
        e.images = (0..5).map(|i| ImageChange { container: "c".repeat(60) + &i.to_string(),
            old: Some("o".repeat(200)), new: Some("n".repeat(200)) }).collect();
    })]
    fn long_parts_are_trimmed_to_two_segments_never_dropped(#[case] edit: fn(&mut Event)) {
        for primary in [EventKind::Created, EventKind::Denied] {
            let mut e = event(primary);
            if primary == EventKind::Denied {
                e.reason = Some("policy min-replicas requires at least 3".into());
            }
            edit(&mut e);
            let text = render(&e, Style::Sms, Some("cluster-with-a-long-name"));
            assert!(
                text.chars().count() <= SMS_LIMIT,
                "{} chars: {text}",
                text.len()
            );
            assert!(is_gsm7_basic(&text), "{text}");
            assert!(sms_segments(&text) <= 2, "{text}");
            assert!(
                text.starts_with("Gatehouse (cluster-with-a-long-name): "),
                "{text}"
            );
            assert!(text.contains(" by "), "{text}");
            assert!(text.contains("image"), "{text}");
            if primary == EventKind::Denied {
                assert!(text.contains("Reason: "), "{text}");
            }
        }
    }

    #[test]
    fn middle_trim_keeps_the_image_tag() {
        let mut e = event(EventKind::Created);
        e.reason = Some("x".repeat(280));
        e.images[0].new = Some(format!(
            "registry.example.com/{}/app:v2.7.1",
            "p".repeat(120)
        ));
        let text = render(&e, Style::Sms, None);
        assert!(text.contains("...") && text.contains(":v2.7.1"), "{text}");
    }

    #[rstest]
    #[case("plain text", "plain text")]
    #[case("`code` [x] {y} a|b ~ ^", "'code' (x) (y) a/b - '")]
    #[case("old → new … “q” – €5", "old -> new ... \"q\" - EUR5")]
    #[case("Ünïcödé 日本", "Ün?cödé ??")]
    fn gsm7_mapping(#[case] input: &str, #[case] expected: &str) {
        let out = to_gsm7(input);
        assert_eq!(out, expected);
        assert!(is_gsm7_basic(&out));
    }

    #[rstest]
    #[case(0, 1)]
    #[case(160, 1)]
    #[case(161, 2)]
    #[case(306, 2)]
    #[case(307, 3)]
    fn segments(#[case] n: usize, #[case] expected: usize) {
        assert_eq!(sms_segments(&"a".repeat(n)), expected);
    }

    #[test]
    fn summary() {
        let s = Summary {
            count: 45,
            by_kind: BTreeMap::from([(EventKind::Created, 40), (EventKind::Denied, 5)]),
            window: Duration::from_secs(120),
            last: Some("Deployment app-ns/web-49 created by alice".into()),
        };
        assert_eq!(
            render_summary(&s, Style::Sms, None),
            "Gatehouse: 45 more notifications in the last 2m (storm control): 40 created, 5 denied. Latest: Deployment app-ns/web-49 created by alice"
        );
    }
}
