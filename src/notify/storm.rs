//! Storm control: per recipient, the first `max` messages of a window go out one by one; the
//! rest of that window is held and becomes one summary when the window ends (or at shutdown).
//! A pure state machine: the caller passes the time, so tests need no clock.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use super::rule::EventKind;

/// What was held back in one window for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Messages held back.
    pub count: usize,
    /// How many of each kind.
    pub by_kind: BTreeMap<EventKind, usize>,
    /// The window's length.
    pub window: Duration,
    /// A one-line description of the latest held message.
    pub last: Option<String>,
}

/// The verdict for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it now.
    Send,
    /// Held for the window's summary.
    Held,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    sent: u32,
    held: Option<Summary>,
}

/// Windows per key (a channel and recipient).
#[derive(Debug)]
pub struct Storm<K> {
    max: u32,
    window: Duration,
    windows: HashMap<K, Window>,
}

impl<K: Hash + Eq + Clone> Storm<K> {
    /// `max` 0 turns storm control off (every message is sent).
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            windows: HashMap::new(),
        }
    }

    /// Counts a message for `key` and says whether it goes out now.
    pub fn admit(&mut self, key: &K, kind: EventKind, line: &str, now: Instant) -> Admit {
        if self.max == 0 {
            return Admit::Send;
        }
        let window = self.window;
        let w = self.windows.entry(key.clone()).or_insert(Window {
            start: now,
            sent: 0,
            held: None,
        });
        if now >= w.start + window && w.held.is_none() {
            // A fresh window (an expired one with something held is closed by `due` first).
            w.start = now;
            w.sent = 0;
        }
        if w.sent < self.max {
            w.sent += 1;
            return Admit::Send;
        }
        let held = w.held.get_or_insert_with(|| Summary {
            count: 0,
            by_kind: BTreeMap::new(),
            window,
            last: None,
        });
        held.count += 1;
        *held.by_kind.entry(kind).or_default() += 1;
        held.last = Some(line.to_owned());
        Admit::Held
    }

    /// When the next window with held messages ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.windows
            .values()
            .filter(|w| w.held.is_some())
            .map(|w| w.start + self.window)
            .min()
    }

    /// Summaries of every window that has ended by `now`; ended windows are forgotten.
    pub fn due(&mut self, now: Instant) -> Vec<(K, Summary)> {
        let window = self.window;
        let mut out = Vec::new();
        self.windows.retain(|key, w| {
            if now < w.start + window {
                return true;
            }
            if let Some(s) = w.held.take() {
                out.push((key.clone(), s));
            }
            false
        });
        out
    }

    /// Every held summary now (at shutdown).
    pub fn flush_all(&mut self) -> Vec<(K, Summary)> {
        let mut out = Vec::new();
        for (key, w) in self.windows.iter_mut() {
            if let Some(s) = w.held.take() {
                out.push((key.clone(), s));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_n_go_out_and_the_rest_become_one_summary_at_the_window_end() {
        let t0 = Instant::now();
        let mut s = Storm::new(5, WINDOW);
        let mut sent = 0;
        for i in 0..50 {
            let kind = if i % 10 == 9 {
                EventKind::Denied
            } else {
                EventKind::Created
            };
            let at = t0 + Duration::from_millis(i * 100);
            if s.admit(&"+1555", kind, &format!("web-{i}"), at) == Admit::Send {
                sent += 1;
            }
        }
        assert_eq!(sent, 5);
        assert_eq!(s.next_deadline(), Some(t0 + WINDOW));
        assert!(s.due(t0 + Duration::from_secs(59)).is_empty());
        let due = s.due(t0 + WINDOW);
        assert_eq!(due.len(), 1);
        let (key, summary) = &due[0];
        assert_eq!(*key, "+1555");
        assert_eq!(summary.count, 45);
        assert_eq!(summary.by_kind[&EventKind::Created], 40);
        assert_eq!(summary.by_kind[&EventKind::Denied], 5);
        assert_eq!(summary.last.as_deref(), Some("web-49"));
        assert_eq!(s.next_deadline(), None);
        // A new window starts afresh.
        assert_eq!(
            s.admit(&"+1555", EventKind::Created, "x", t0 + WINDOW),
            Admit::Send
        );
    }

    #[test]
    fn recipients_have_their_own_windows() {
        let t0 = Instant::now();
        let mut s = Storm::new(1, WINDOW);
        assert_eq!(s.admit(&"a", EventKind::Created, "1", t0), Admit::Send);
        assert_eq!(s.admit(&"b", EventKind::Created, "1", t0), Admit::Send);
        assert_eq!(s.admit(&"a", EventKind::Created, "2", t0), Admit::Held);
        assert_eq!(s.admit(&"b", EventKind::Created, "2", t0), Admit::Held);
        let mut flushed = s.flush_all();
        flushed.sort_by_key(|(k, _)| *k);
        assert_eq!(flushed.len(), 2);
        assert!(flushed.iter().all(|(_, s)| s.count == 1));
        assert!(s.flush_all().is_empty());
    }

    #[test]
    fn below_the_limit_nothing_is_held_and_zero_turns_it_off() {
        let t0 = Instant::now();
        let mut s = Storm::new(3, WINDOW);
        for i in 0..3 {
            assert_eq!(
                s.admit(&"a", EventKind::Created, "x", t0 + Duration::from_secs(i)),
                Admit::Send
            );
        }
        // The window has passed: a fresh one.
        assert_eq!(
            s.admit(&"a", EventKind::Created, "x", t0 + WINDOW * 2),
            Admit::Send
        );
        assert!(s.due(t0 + WINDOW * 4).is_empty());
        let mut off = Storm::new(0, WINDOW);
        for _ in 0..100 {
            assert_eq!(off.admit(&"a", EventKind::Created, "x", t0), Admit::Send);
        }
    }
}
