//! Policy kind `labels`: required label keys, each with an optional pattern for its value, on
//! the object and/or on its pod template. The checking is shared with `annotations` in
//! `required_keys.rs`.

use kube::core::DynamicObject;
use kube::core::admission::AdmissionRequest;
use serde::Deserialize;

use super::Outcome;
use super::required_keys::{Field, RequiredKeys};

/// `params` of a `labels` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct Labels(RequiredKeys);

impl Labels {
    /// Checks the parameters and compiles the patterns.
    pub fn validate(&mut self) -> Result<(), String> {
        self.0.validate()
    }

    /// Evaluates the request's new object (DELETE and CONNECT pass).
    pub fn evaluate(&self, policy: &str, req: &AdmissionRequest<DynamicObject>) -> Outcome {
        self.0.evaluate(Field::Labels, policy, req)
    }
}
