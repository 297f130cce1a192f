//! Policy kind `annotations`: required annotation keys, each with an optional pattern for its
//! value, on the object and/or on its pod template. The checking is shared with `labels` in
//! `required_keys.rs`.

use kube::core::DynamicObject;
use kube::core::admission::AdmissionRequest;
use serde::Deserialize;

use super::Outcome;
use super::required_keys::{Field, RequiredKeys};

/// `params` of an `annotations` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct Annotations(RequiredKeys);

impl Annotations {
    /// Checks the parameters and compiles the patterns.
    pub fn validate(&mut self) -> Result<(), String> {
        self.0.validate()
    }

    /// Evaluates the request's new object (DELETE and CONNECT pass).
    pub fn evaluate(&self, policy: &str, req: &AdmissionRequest<DynamicObject>) -> Outcome {
        self.0.evaluate(Field::Annotations, policy, req)
    }
}
