//! Prometheus metrics: the few that matter for an admission webhook.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels: the decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allowed`, `warned`, `audited`, `denied`, `excluded`.
    pub decision: String,
}

/// Labels: a policy and what it found.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The policy's name.
    pub policy: String,
    /// `pass` or the policy's action when violated (`deny`, `warn`, `audit`).
    pub result: String,
}

/// Labels: a policy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyNameLabels {
    /// The policy's name.
    pub policy: String,
}

/// Labels: why a request was rejected before evaluation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `malformed`, `too_large`, `timeout`, `panic`.
    pub reason: String,
}

/// The registry and the metrics in it.
/// The decision labels of `gatehouse_admissions_total`.
const DECISIONS: [&str; 5] = ["allowed", "denied", "warned", "audited", "excluded"];
/// The result labels of `gatehouse_policy_evaluations_total`.
const RESULTS: [&str; 4] = ["pass", "deny", "warn", "audit"];

/// `gatehouse_policy_evaluations_total` counters of one policy set, by policy name and result.
#[derive(Debug)]
pub struct PolicyCounters(HashMap<String, [Counter; 4]>);

impl PolicyCounters {
    /// Counts one evaluation of `policy` with `result` (`pass`, `deny`, `warn`, `audit`).
    pub fn count(&self, policy: &str, result: &str) {
        if let (Some(c), Some(i)) = (
            self.0.get(policy),
            RESULTS.iter().position(|r| *r == result),
        ) {
            c[i].inc();
        }
    }
}

pub struct Metrics {
    registry: Mutex<Registry>,
    decision_counters: [Counter; 5],
    /// The counters of the policy set last seen (held with it, so it is recognised).
    policy_cache: Mutex<Option<(Arc<crate::policy::PolicySet>, Arc<PolicyCounters>)>>,
    /// Admissions answered, by decision.
    pub admissions: Family<DecisionLabels, Counter>,
    /// Policy evaluations, by policy and result.
    pub policy_results: Family<PolicyLabels, Counter>,
    /// Policies that could not be evaluated.
    pub policy_errors: Family<PolicyNameLabels, Counter>,
    /// Requests rejected before evaluation.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Decode + evaluate + encode time of one admission.
    pub evaluation_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let admissions = Family::<DecisionLabels, Counter>::default();
        let policy_results = Family::<PolicyLabels, Counter>::default();
        let policy_errors = Family::<PolicyNameLabels, Counter>::default();
        let rejected = Family::<ReasonLabels, Counter>::default();
        // 5 µs to about 5 s.
        let evaluation_seconds = Histogram::new(exponential_buckets(0.000_005, 4.0, 11));
        registry.register(
            "admissions",
            "Admission reviews answered, by decision",
            admissions.clone(),
        );
        registry.register(
            "policy_evaluations",
            "Policy evaluations, by policy and result",
            policy_results.clone(),
        );
        registry.register(
            "policy_errors",
            "Policies that failed to evaluate",
            policy_errors.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests rejected before policy evaluation, by reason",
            rejected.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to decode, evaluate and encode one admission review",
            evaluation_seconds.clone(),
        );
        let decision_counters = DECISIONS.map(|d| {
            admissions
                .get_or_create(&DecisionLabels {
                    decision: d.to_owned(),
                })
                .clone()
        });
        Self {
            registry: Mutex::new(registry),
            decision_counters,
            policy_cache: Mutex::new(None),
            admissions,
            policy_results,
            policy_errors,
            rejected,
            evaluation_seconds,
        }
    }

    /// Lets other modules add their metrics.
    /// The admissions counter for a decision label (`allowed`, `denied`, `warned`, `audited`,
    /// `excluded`), resolved once: the hot path does not build label sets.
    pub fn admission(&self, decision: &'static str) -> &Counter {
        let i = DECISIONS.iter().position(|d| *d == decision).unwrap_or(0);
        &self.decision_counters[i]
    }

    /// Counters for every policy of a set, by policy name, resolved once per policy set (the
    /// set in force changes only on reload).
    pub fn policy_counters(&self, set: &Arc<crate::policy::PolicySet>) -> Arc<PolicyCounters> {
        let mut cache = self.policy_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, c)) = cache.as_ref()
            && Arc::ptr_eq(cached, set)
        {
            return c.clone();
        }
        let counters: HashMap<String, [Counter; 4]> = set
            .policies()
            .iter()
            .map(|p| {
                let get = |result: &str| {
                    self.policy_results
                        .get_or_create(&PolicyLabels {
                            policy: p.name.clone(),
                            result: result.to_owned(),
                        })
                        .clone()
                };
                (p.name.clone(), RESULTS.map(get))
            })
            .collect();
        let c = Arc::new(PolicyCounters(counters));
        *cache = Some((set.clone(), c.clone()));
        c
    }

    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut guard = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    /// Counts a request rejected before evaluation.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let guard = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &guard);
        out
    }
}
